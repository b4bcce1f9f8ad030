"""The pack itself: metadata every policy must carry, and the entry point the Pulumi CLI runs."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap

import pytest
from inferforge.policies.pack import ALL_POLICIES, PACK_NAME
from pulumi_policy import ResourceValidationPolicy, StackValidationPolicy

from .conftest import REPO

NAME = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)+$")


@pytest.mark.parametrize("policy", ALL_POLICIES, ids=lambda p: p.name)
def test_every_policy_is_documented_for_a_reviewer(policy) -> None:
    assert NAME.match(policy.name), "names are <service>-<rule> in kebab case"
    assert isinstance(policy, ResourceValidationPolicy | StackValidationPolicy)
    assert policy.severity is not None
    assert f"[severity: {policy.severity.value}]" in policy.description
    assert len(policy.description) > 40
    assert policy.remediation_steps and len(policy.remediation_steps) > 20


@pytest.mark.parametrize("policy", [p for p in ALL_POLICIES if p.config_schema], ids=lambda p: p.name)
def test_every_config_property_has_a_default_and_a_description(policy) -> None:
    for key, schema in policy.config_schema.properties.items():
        assert "default" in schema, f"{policy.name}.{key} has no default"
        assert schema.get("description"), f"{policy.name}.{key} has no description"


def test_policy_names_are_unique() -> None:
    names = [p.name for p in ALL_POLICIES]
    assert len(names) == len(set(names))


def test_the_cli_entry_point_builds_the_pack_from_inside_the_pack_directory() -> None:
    # The CLI runs `python -m pulumi.policy <addr> <pack dir>` with the pack dir as working directory,
    # which calls runpy.run_path(dir): a top-level script with only the pack dir importable. PolicyPack
    # would start a gRPC server and block, so it is replaced by a recorder here.
    script = textwrap.dedent(
        """
        import runpy, sys
        import pulumi_policy
        built = {}
        class Recorder:
            def __init__(self, **kwargs):
                built.update(kwargs)
        pulumi_policy.PolicyPack = Recorder
        sys.path[0] = "."
        runpy.run_path(".", run_name="__main__")
        print(built["name"], len(built["policies"]), built["enforcement_level"].value)
        print(sorted(m for m in sys.modules if m == "policies" or m.startswith("policies.")))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO / "policies", capture_output=True, text=True, timeout=60
    )

    assert result.returncode == 0, result.stderr
    first, second = result.stdout.splitlines()
    assert first == f"{PACK_NAME} {len(ALL_POLICIES)} mandatory"
    assert second == "[]", "the pack must not depend on the repository root being importable"


def test_policy_project_file_declares_the_python_runtime_with_the_packs_own_virtualenv() -> None:
    import yaml

    project = yaml.safe_load((REPO / "policies" / "PulumiPolicy.yaml").read_text())

    assert project["runtime"]["name"] == "python"
    venv = project["runtime"]["options"]["virtualenv"]
    assert not venv.startswith(("..", "/")), "a published or copied pack has no ../.venv"
    assert (REPO / "policies" / "requirements.txt").read_text().count("pulumi-policy==") == 1


def _normalized(distribution: str) -> str:
    return re.sub(r"[-_.]+", "-", distribution.strip()).lower()


def _pins(path) -> dict[str, str]:
    pins = {}
    for line in path.read_text().splitlines():
        name, sep, version = line.partition("==")
        if sep and not line.startswith("#"):
            pins[_normalized(name)] = version.strip()
    return pins


def test_the_packs_requirements_cover_its_imports_at_the_platforms_versions() -> None:
    import ast
    import importlib.metadata

    pack_pins = _pins(REPO / "policies" / "requirements.txt")
    platform_pins = _pins(REPO / "requirements-platform.txt")
    assert {n: v for n, v in pack_pins.items() if platform_pins.get(n) != v} == {}

    # Every third-party module the pack's files import comes from a pinned distribution (or its dependencies).
    allowed = set(pack_pins)
    for name in list(pack_pins):
        for requirement in importlib.metadata.requires(name) or []:
            allowed.add(_normalized(re.split(r"[ ;<>=!~\[(]", requirement, maxsplit=1)[0]))
    distributions = importlib.metadata.packages_distributions()
    missing = set()
    for source in (REPO / "policies").glob("*.py"):
        if source.name == "offline.py":  # the offline evaluator runs inside the project, not in the pack's venv
            continue
        for node in ast.walk(ast.parse(source.read_text())):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else [])
            for module in modules:
                top = module.split(".")[0]
                if top in sys.stdlib_module_names or top == "__future__":
                    continue
                if not {_normalized(d) for d in distributions.get(top, [top])} & allowed:
                    missing.add(f"{source.name}: {module}")
    assert missing == set()


def _policies_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "policies", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120)


def test_python_m_policies_help_prints_usage_and_exits_instead_of_serving() -> None:
    result = _policies_cli("--help")

    assert result.returncode == 0
    assert result.stdout.startswith("usage: python -m policies")
    assert "--policy-pack policies" in result.stdout


def test_python_m_policies_list_names_every_policy_with_its_enforcement() -> None:
    import json

    result = _policies_cli("list", "--json")

    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert set(rows) == {p.name for p in ALL_POLICIES}
    assert rows["keyvault-public-network-disabled"]["enforcement"]["prod"] == "mandatory"


def test_python_m_policies_with_unknown_arguments_exits_2_with_usage() -> None:
    result = _policies_cli("serve-now")

    assert result.returncode == 2
    assert "error: unknown arguments: serve-now" in result.stderr and "usage:" in result.stderr


def test_readme_lists_every_policy() -> None:
    readme = (REPO / "policies" / "README.md").read_text()
    missing = [p.name for p in ALL_POLICIES if f"| `{p.name}` |" not in readme]
    assert not missing, f"policies/README.md does not list {missing}"
