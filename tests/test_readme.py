"""The README stays true: its config reference matches the model, its commands match CI."""

from __future__ import annotations

from pathlib import Path

from stacks.config_reference import BEGIN, END, config_reference_markdown

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()


def test_config_reference_matches_the_pydantic_model():
    block = README[README.index(BEGIN): README.index(END) + len(END)]
    assert block == config_reference_markdown(), "run: python -m stacks.config_reference --write"


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
