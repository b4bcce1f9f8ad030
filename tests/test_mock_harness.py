"""One mock harness: stacks/render.py's render_program (Azure-shaped answers from stacks/mocks.py) renders the
plan and every test's components; no test module keeps a mock-recording copy of its own."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def test_no_test_module_defines_its_own_pulumi_mocks() -> None:
    copies = []
    for path in sorted(TESTS.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).endswith("Mocks") for base in node.bases):
                copies.append(f"{path.relative_to(TESTS)}: class {node.name}")
            if isinstance(node, ast.FunctionDef) and node.name == "new_resource":
                copies.append(f"{path.relative_to(TESTS)}: def new_resource")
    assert copies == [], "render through inferforge.stacks.render.render_program instead"
