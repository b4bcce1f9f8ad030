"""Whole stacks through the offline evaluator with their shipped enforcement config."""

from __future__ import annotations

import pytest
from inferforge.policies.offline import config_path_for, evaluate, format_text, has_mandatory

from .conftest import assert_only


def test_shipped_prod_stack_has_no_mandatory_violation(prod_resources) -> None:
    violations = evaluate(prod_resources, config_path_for("prod"), "prod")

    assert not has_mandatory(violations), format_text(violations, "prod")


def test_shipped_prod_first_phase_has_no_mandatory_violation(prod_platform_resources) -> None:
    violations = evaluate(prod_platform_resources, config_path_for("prod"), "prod")

    assert not has_mandatory(violations), format_text(violations, "prod")
    assert not any(r.type.startswith("kubernetes:") for r in prod_platform_resources if r.custom)


def test_shipped_dev_stack_has_no_mandatory_violation(dev_resources) -> None:
    violations = evaluate(dev_resources, config_path_for("dev"), "dev")

    assert not has_mandatory(violations), format_text(violations, "dev")


@pytest.mark.parametrize(
    ("overrides", "policy"),
    [
        ({"keyVault": {"publicNetworkAccess": "Enabled"}}, "keyvault-public-network-disabled"),
        ({"redis": {"publicNetworkAccess": "Enabled"}}, "redis-public-network-disabled"),
        ({"frontDoor": {"wafMode": "Detection"}}, "frontdoor-waf-prevention-mode"),
    ],
    ids=["keyvault-public", "redis-public", "waf-detection"],
)
def test_weakened_prod_config_is_blocked_naming_the_policy(overrides, policy) -> None:
    from inferforge.stacks.render import render_stack

    from tests.stack_overrides import WITH_WORKLOADS

    violations = assert_only(render_stack("prod", {**WITH_WORKLOADS, **overrides}), "prod", {policy})

    assert {v.enforcement_level for v in violations} == {"mandatory"}
