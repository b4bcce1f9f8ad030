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


def test_shipped_test_stack_passes_its_policies_in_both_phases(test_resources, test_platform_resources) -> None:
    for resources in (test_resources, test_platform_resources):
        violations = evaluate(resources, config_path_for("test"), "test")
        assert not has_mandatory(violations), format_text(violations, "test")


def test_test_policy_config_keeps_prods_posture_with_smaller_quotas() -> None:
    import json

    from .conftest import CONFIG_DIR

    test, prod = (json.loads((CONFIG_DIR / f"{s}.json").read_text()) for s in ("test", "prod"))
    # Nothing prod enforces is disabled or advisory in test: the same rules, only the quotas differ.
    assert test["all"] == prod["all"] == "mandatory"
    assert not [name for name, entry in test.items() if entry in ("disabled", "advisory")
                or isinstance(entry, dict) and entry.get("enforcementLevel") in ("disabled", "advisory")]
    assert test["aks-api-server-restricted"] == prod["aks-api-server-restricted"] == {"requirePrivateCluster": True}
    assert test["aks-system-pool-zones"] == prod["aks-system-pool-zones"]
    assert set(test["aks-gpu-vm-size-allowed"]["allowedGpuVmSizes"]) < set(
        prod["aks-gpu-vm-size-allowed"]["allowedGpuVmSizes"])
    assert test["aks-gpu-stack-max-nodes"]["maxNodesPerStack"] < prod["aks-gpu-stack-max-nodes"]["maxNodesPerStack"]
    assert test["stack-monthly-cost-cap"]["maxMonthlyUsd"] < prod["stack-monthly-cost-cap"]["maxMonthlyUsd"]
