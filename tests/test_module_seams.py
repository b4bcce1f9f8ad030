"""No module reaches into another's private names: what one module uses of another is a public seam.

A private name (one leading underscore) is its module's to change; a caller elsewhere would break with it
unnoticed. Checked over every module of the five packages by reading their source (no import needed).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "stacks", "policies", "inference", "gateway", "provider", "inferforge")
ALLOWED = {
    # The SDK's lazy module object becomes an instance of this very class (`adopt`), which sets its own state.
    ("stacks/sdk_loading.py", "module._camel_case_files"): "the class's own attribute, on the adopted module",
    ("stacks/sdk_loading.py", "module._fully_loaded"): "the class's own attribute, on the adopted module",
    # DeepSpeed's accelerator object names itself only in this attribute (no public accessor), and the check
    # compares it with the name DeepSpeed's build recorded (inference/shm_op.py).
    ("inference/shm_op.py", "accelerator._name"): "DeepSpeed's, not ours; no public accessor exists",
}


def _modules() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (REPO / package).rglob("*.py")
                  if "venv" not in p.relative_to(REPO).parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def private_uses(source: str) -> list[tuple[int, str]]:
    """(line, what) for each use of another module's private name in `source`: a `from ours import _x`, or
    `obj._x` on a name that is not `self`/`cls`, a class of this module, or an imported third-party module."""
    tree = ast.parse(source)
    external: set[str] = set()
    found: list[tuple[int, str]] = []
    own_classes = {node.name for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            ours = node.level > 0 or (node.module or "").split(".")[0] in PACKAGES
            for alias in node.names:
                if ours and _private(alias.name):
                    found.append((node.lineno, f"from {'.' * node.level}{node.module or ''} import {alias.name}"))
                if not ours:
                    external.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] not in PACKAGES:
                    external.add((alias.asname or alias.name).split(".")[0])
    allowed_owners = external | own_classes | {"self", "cls"}
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and _private(node.attr) and isinstance(node.value, ast.Name)
                and node.value.id not in allowed_owners):
            found.append((node.lineno, f"{node.value.id}.{node.attr}"))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(REPO)))
def test_no_module_uses_another_modules_private_names(path: Path) -> None:
    where = str(path.relative_to(REPO))
    uses = [f"{where}:{line}: {what}" for line, what in private_uses(path.read_text())
            if (where, what) not in ALLOWED]
    assert uses == [], "make the name public (it is a seam) or keep the use inside its module"


@pytest.mark.parametrize(("source", "expected"), [
    ("from .server import _parse\n", ["from .server import _parse"]),
    ("from inferforge.policies.exposure import _check\n", ["from inferforge.policies.exposure import _check"]),
    ("def handler(server):\n    return server._parse(1)\n", ["server._parse"]),
    ("import os\nos._exit(1)\n", []),  # the standard library's, not ours
    ("class A:\n    def f(self):\n        return self._x, A._y\n", []),
    ("from .server import parse_body, __version__\n", []),
])
def test_the_rule_finds_what_it_claims(source: str, expected: list[str]) -> None:
    assert [what for _, what in private_uses(source)] == expected


def _module_names() -> list[str]:
    names = []
    for path in _modules():
        parts = path.relative_to(REPO).with_suffix("").parts
        if parts[-1] == "__main__" or parts[0] in ("provider", "inferforge"):
            continue  # entry points run on import; the provider's needs the Pulumi host
        names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


def test_every_module_imports() -> None:
    """A moved name breaks its importers at import time: every module of the packages is imported (the benchmarks
    and probes included, which no other test imports), in a fresh interpreter, so that no module this test process
    already holds under its other name (`inferforge.gateway.metrics` beside `gateway.metrics`) registers twice."""
    import json
    import subprocess
    import sys

    script = ("import importlib, json, sys\n"
              "failed = {}\n"
              "for name in json.loads(sys.argv[1]):\n"
              "    try:\n"
              "        importlib.import_module(name)\n"
              "    except Exception as exc:\n"
              "        failed[name] = f'{type(exc).__name__}: {exc}'\n"
              "print(json.dumps(failed))\n")
    names = _module_names()
    assert len(names) > 100
    result = subprocess.run([sys.executable, "-c", script, json.dumps(names)], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == {}
