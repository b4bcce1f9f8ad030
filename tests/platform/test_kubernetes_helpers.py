"""components/kubernetes.py: the one home of what the in-cluster components share."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from inferforge.components.inference_service import InferenceServiceConfigError, PvcModelSource
from inferforge.components.kubernetes import KubernetesArgsError, NodeTaint, check_range, reported_as
from inferforge.components.pgvector_extension import PgvectorExtensionConfigError

COMPONENTS = Path(__file__).resolve().parents[2] / "components"


def test_no_component_imports_another_modules_private_names() -> None:
    private = []
    for path in sorted(COMPONENTS.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                private += [f"{path.name}: from {'.' * node.level}{node.module} import {alias.name}"
                            for alias in node.names if alias.name.startswith("_")]
    assert private == []


def test_a_shared_check_fails_as_the_components_own_error_with_the_same_message() -> None:
    with pytest.raises(InferenceServiceConfigError, match=r"model_source.size_gib=0 is invalid: must be an integer"):
        PvcModelSource(size_gib=0).validate()

    @reported_as(PgvectorExtensionConfigError)
    def check() -> None:
        NodeTaint.parse("gpu", "tolerations")

    with pytest.raises(PgvectorExtensionConfigError, match=r"tolerations='gpu' is invalid: each taint"):
        check()


def test_shared_checks_raise_the_shared_error_type() -> None:
    with pytest.raises(KubernetesArgsError, match=r"replicas=True is invalid: must be an integer at least 1"):
        check_range("replicas", True, 1)  # a bool is not a count
    assert issubclass(InferenceServiceConfigError, KubernetesArgsError)
    assert issubclass(PgvectorExtensionConfigError, KubernetesArgsError)
