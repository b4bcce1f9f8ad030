"""What `pulumi install` / a first `pulumi up` installs: the program directory's requirements, platform only.

Pulumi's Python host (pip toolchain) runs `pip install -r requirements.txt` in the program directory
(`main:` in Pulumi.yaml) and resolves `virtualenv:` against the project root (pulumi/pulumi
sdk/python/toolchain/pip.go: InstallDependencies, resolveVirtualEnvironmentPath).
"""

from __future__ import annotations

import ast
import re
import sys
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[2]
PROJECT = yaml.safe_load((REPO / "Pulumi.yaml").read_text())
PROGRAM_DIR = REPO / PROJECT["main"]
ML_PACKAGES = {"torch", "deepspeed", "transformers", "safetensors", "tokenizers", "accelerate", "triton"}


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~\[;@ ]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def requirement_names(path: Path, seen: frozenset[Path] = frozenset()) -> set[str]:
    """Package names a requirements file pins, following `-r` includes relative to the including file (pip)."""
    assert path.is_file(), f"{path.relative_to(REPO)} does not exist"
    names: set[str] = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if line.startswith(("-r ", "--requirement ")):
            nested = (path.parent / line.split(maxsplit=1)[1]).resolve()
            assert nested not in seen, f"include cycle at {nested}"
            names |= requirement_names(nested, seen | {path.resolve()})
        elif not line.startswith("-"):
            names.add(_name(line))
    return names


def test_the_program_directory_has_its_own_requirements():
    assert (PROGRAM_DIR / "requirements.txt").is_file(), (
        f"Pulumi installs {PROJECT['main']}requirements.txt (main: {PROJECT['main']}); it is missing")


def test_program_requirements_are_exactly_the_platform_set():
    assert requirement_names(PROGRAM_DIR / "requirements.txt") == requirement_names(REPO / "requirements-platform.txt")


def test_program_requirements_pull_no_ml_packages():
    program = requirement_names(PROGRAM_DIR / "requirements.txt")
    platform = requirement_names(REPO / "requirements-platform.txt")
    inference_only = requirement_names(REPO / "requirements.txt") - platform
    assert inference_only >= {"torch", "deepspeed"}, "requirements.txt no longer lists the inference set"
    assert not program & (ML_PACKAGES | inference_only), f"deploy machine would install {program & inference_only}"


def test_pip_resolves_the_include_from_the_program_directory(monkeypatch):
    # The very parser `pip install -r requirements.txt` uses, run where Pulumi runs it (cwd = program dir).
    from pip._internal.network.session import PipSession
    from pip._internal.req.req_file import parse_requirements

    monkeypatch.chdir(PROGRAM_DIR)
    parsed = {_name(r.requirement) for r in parse_requirements("requirements.txt", session=PipSession())}
    assert parsed == requirement_names(REPO / "requirements-platform.txt")


def test_virtualenv_is_the_project_roots_venv():
    virtualenv = PROJECT["runtime"]["options"]["virtualenv"]
    assert not Path(virtualenv).is_absolute()
    # Resolved against the project root (where Pulumi.yaml is), the same .venv the README sets up.
    assert (REPO / virtualenv).resolve() == (REPO / ".venv").resolve()


def _third_party_imports(root: Path) -> set[str]:
    modules: set[str] = set()
    for source in root.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                modules |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                modules.add(node.module.split(".")[0])
    local = {p.name for p in REPO.iterdir() if p.is_dir()}
    return {m for m in modules if m not in sys.stdlib_module_names and m not in local}


def _closure(names: set[str]) -> set[str]:
    """The distributions `names` install, with their dependencies (as installed here)."""
    todo, done = list(names), set()
    while todo:
        name = todo.pop()
        if name in done:
            continue
        done.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return done


def test_everything_the_program_and_plan_import_is_installed_by_the_program_requirements():
    provided = _closure(requirement_names(PROGRAM_DIR / "requirements.txt"))
    distributions = metadata.packages_distributions()
    missing = {}
    for module in sorted(set().union(*(_third_party_imports(REPO / d) for d in ("stacks", "components", "policies")))):
        dists = {_name(d) for d in distributions.get(module, [module])}
        if not dists & provided:
            missing[module] = sorted(dists)
    assert not missing, f"imported but not installed by {PROJECT['main']}requirements.txt: {missing}"
