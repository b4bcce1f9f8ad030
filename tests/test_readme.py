"""The README stays true: its config and component references match the code, its commands match CI."""

from __future__ import annotations

import dataclasses
import importlib
from pathlib import Path

from inferforge.components import reference
from inferforge.stacks.config_reference import BEGIN, END, config_reference_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_reference_matches_the_pydantic_model():
    block = README[README.index(BEGIN): README.index(END) + len(END)]
    assert block == config_reference_markdown(), "run: python -m stacks.config_reference --write"


def test_component_reference_matches_the_components():
    block = README[README.index(reference.BEGIN): README.index(reference.END) + len(reference.END)]
    assert block == reference.component_reference_markdown(), "run: python -m components.reference --write"


def test_every_component_input_says_what_it_is_and_why():
    docs = [reference.document(c) for c in reference.discover()]
    assert reference.undocumented_inputs(docs) == [], "add a docstring under each field listed"


def test_component_reference_covers_every_component_and_field():
    docs = {d.name: d for d in (reference.document(c) for c in reference.discover())}
    # The scan is not allowed to miss a component the stacks use, or a field of its Args.
    for name in ("Network", "KeyVault", "PostgresPgvector", "ManagedRedis", "FrontDoor", "AksCluster",
                 "InferenceService", "PgvectorExtension", "ContainerRegistry", "Observability"):
        assert name in docs
    for doc in docs.values():
        args = reference.args_class(next(c for c in reference.discover() if c.__name__ == doc.name))
        assert [f.name for f in doc.inputs] == [f.name for f in dataclasses.fields(args)]
        assert doc.type_token.startswith("inferforge:") and doc.outputs
    assert docs["KeyVault"].type_token == "inferforge:index:KeyVault"
    assert ("GpuPoolArgs" in dict(docs["AksCluster"].nested))


def test_undocumented_field_is_reported(tmp_path, monkeypatch):
    source = tmp_path / "undocumented_component.py"
    source.write_text(
        "from dataclasses import dataclass\n"
        "from typing import Literal\n"
        "import pulumi\n\n"
        "@dataclass\nclass ThingArgs:\n"
        "    size: int = 1\n"
        "    \"\"\"Documented.\"\"\"\n"
        "    mode: Literal['a', 'b'] = 'a'\n\n"
        "class Thing(pulumi.ComponentResource):\n"
        "    def __init__(self, name: str, args: ThingArgs, opts=None) -> None:\n"
        "        super().__init__('inferforge:test:Thing', name, None, opts)\n"
        "        self.register_outputs({'size': args.size})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    module = importlib.import_module("undocumented_component")
    doc = reference.document(module.Thing)
    assert doc.type_token == "inferforge:test:Thing"
    assert [(f.name, f.type, f.default) for f in doc.inputs] == [("size", "int", "`1`"),
                                                                  ("mode", "`a` | `b`", "`'a'`")]
    assert reference.undocumented_inputs([doc]) == ["Thing: ThingArgs.mode"]
    assert "`a` \\| `b`" in "\n".join(reference._input_table(doc.inputs))


def test_config_reference_lists_every_key_the_validation_tests_use():
    for key in ("inferforge:aks.gpuPools[].maxCount", "inferforge:aks.gpuPools[].vmSize",
                "inferforge:network.aksSubnet", "inferforge:inference.tpSize", "inferforge:workload"):
        assert f"`{key}`" in README


def test_ci_runs_the_readme_test_command_after_the_readme_setup():
    quick_start = README[README.index("## Quick start"):README.index("## Architecture")]
    commands = [line.split("#")[0].strip() for line in quick_start.splitlines() if line.startswith(("bash ", ".venv/"))]
    setup, tests = commands[0], commands[1]
    ci = (REPO / ".ci" / "run").read_text()
    assert setup.startswith("bash .ci/setup") and "bash .ci/setup" in ci
    assert tests in ci
