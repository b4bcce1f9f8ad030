"""Audit (issue 15.5): Activity Log export and the alerts an operator must hear about, created by the stack."""

from __future__ import annotations

import pytest
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_stack, validate_stack

from tests.platform.conftest import of_type, one

AMW = ("/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/rg-mon/providers/"
       "Microsoft.Monitor/accounts/amw-inferforge-prod")


def alert(resources, rule_name_suffix: str):
    rules = [r for r in resources if r.type in ("azure-native:monitor:MetricAlert",
                                                "azure-native:monitor:ScheduledQueryRule")
             and r.inputs["ruleName"].endswith(rule_name_suffix)]
    assert len(rules) == 1, [r.name for r in rules]
    return rules[0].inputs


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_activity_log_goes_to_the_workspace(stack, request):
    resources = request.getfixturevalue(stack)
    setting = one(resources, "azure-native:monitor:SubscriptionDiagnosticSetting").inputs
    assert setting["workspaceId"] == one(resources, "azure-native:operationalinsights:Workspace").id
    enabled = {log["category"] for log in setting["logs"] if log["enabled"]}
    assert {"Administrative", "Security", "Policy", "ServiceHealth", "ResourceHealth"} <= enabled


def test_action_group_emails_the_configured_receivers(prod):
    group = one(prod, "azure-native:monitor:ActionGroup").inputs
    assert [r["emailAddress"] for r in group["emailReceivers"]] == ["platform-oncall@example.com"]
    assert len(group["groupShortName"]) <= 12


def test_front_door_5xx_rate_alert(prod):
    rule = alert(prod, "-frontdoor-5xx")
    (criterion,) = rule["criteria"]["allOf"]
    assert (criterion["metricNamespace"], criterion["metricName"]) == ("Microsoft.Cdn/profiles", "Percentage5XX")
    assert (criterion["operator"], criterion["threshold"]) == ("GreaterThan", 5)
    assert criterion["timeAggregation"] == "Average"
    assert rule["scopes"] == [one(prod, "azure-native:cdn:Profile").id]
    assert rule["actions"][0]["actionGroupId"] == one(prod, "azure-native:monitor:ActionGroup").id


def test_gpu_pool_at_max_alert_compares_node_counts_with_the_configured_max(prod):
    rule = alert(prod, "-gpu-pool-at-max")
    (condition,) = rule["criteria"]["allOf"]
    assert condition["query"].startswith("KubeNodeInventory")
    assert 'ClusterName =~ "aks-inferforge-prod"' in condition["query"]
    assert 'datatable(pool: string, maxCount: long) ["gpuh100", 4]' in condition["query"]
    assert "minNodes >= maxCount" in condition["query"]
    assert (condition["operator"], condition["threshold"]) == ("GreaterThan", 0)
    assert rule["windowSize"] == "PT30M"
    assert rule["scopes"] == [one(prod, "azure-native:operationalinsights:Workspace").id]


def test_key_vault_access_denied_alert(prod):
    (condition,) = alert(prod, "-keyvault-denied")["criteria"]["allOf"]
    assert "AZKVAuditLogs" in condition["query"] and "HttpStatusCode == 403" in condition["query"]
    assert 'ResultSignature == "Forbidden"' in condition["query"]


def test_queue_depth_rule_needs_an_azure_monitor_workspace(prod):
    assert of_type(prod, "azure-native:alertsmanagement:PrometheusRuleGroup") == []
    resources = render_stack("prod", {"observability": {"alerts": {"prometheusWorkspaceId": AMW,
                                                                   "queueDepthThreshold": 32}}})
    group = one(resources, "azure-native:alertsmanagement:PrometheusRuleGroup").inputs
    assert group["scopes"] == [AMW]
    (rule,) = group["rules"]
    assert rule["expression"] == 'sum by (namespace) (vllm:num_requests_waiting{namespace=~"inference"}) > 32'
    assert rule["for"] == "PT5M"


def test_the_queue_alert_watches_every_models_namespace_separately(tmp_path):
    """Several models: one rule grouped by namespace over all of them, so one model's backlog is not averaged away
    by another's idle pods (it watched the first model's namespace alone)."""
    import yaml

    from tests.platform.test_gateway_stack import REPO_ROOT, dev_model, second_model, without_inference
    from tests.stack_overrides import WITH_WORKLOADS

    document = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())
    document["config"].pop("inferforge:inference")
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    resources = render_stack("dev", {**without_inference(WITH_WORKLOADS), "models": [dev_model(), second_model()],
                                      "observability": {"alerts": {"prometheusWorkspaceId": AMW}}}, root=tmp_path)
    (rule,) = one(resources, "azure-native:alertsmanagement:PrometheusRuleGroup", "audit-queue-depth").inputs["rules"]
    assert rule["expression"] == 'sum by (namespace) (vllm:num_requests_waiting{namespace=~"inference|llama"}) > 16'


@pytest.mark.parametrize("address", ["oncall", "a@b", "x@example.com\nBcc: y@example.com", "@example.com"])
def test_bad_email_receiver_is_rejected(address):
    with pytest.raises(ConfigError) as caught:
        validate_stack("prod", {"observability": {"alerts": {"emailReceivers": [address]}}})
    assert "inferforge:observability.alerts.emailReceivers" in "\n".join(caught.value.problems)
    assert "is not an email address; allowed: name@example.com" in "\n".join(caught.value.problems)


def test_gateway_alerts_watch_metrics_the_gateway_really_exports():
    import importlib
    import re
    import sys

    from prometheus_client import REGISTRY

    # The one copy of the module this process holds: the gateway's tests import it as `gateway.metrics`, and a
    # second copy under `inferforge.gateway.metrics` would register the same metric names twice.
    gateway_metrics = sys.modules.get("gateway.metrics") or importlib.import_module("inferforge.gateway.metrics")

    from tests.stack_overrides import WITH_WORKLOADS

    resources = render_stack("prod", {**WITH_WORKLOADS, "observability": {"alerts": {
        "prometheusWorkspaceId": AMW, "errorRatePercent": 2}}})
    group = one(resources, "azure-native:alertsmanagement:PrometheusRuleGroup", "audit-gateway").inputs
    rules = {r["alert"]: r for r in group["rules"]}
    assert set(rules) == {"GatewayBudgetExhausted", "GatewayErrorRateHigh", "GatewayRedisDown",
                          "GatewayCanaryErrorRateHigh"}
    assert "> 0.02" in rules["GatewayErrorRateHigh"]["expression"]
    assert 'version="canary"' in rules["GatewayCanaryErrorRateHigh"]["expression"]
    assert "> 0.02" in rules["GatewayCanaryErrorRateHigh"]["expression"]
    exported = {sample.name for metric in REGISTRY.collect() for sample in metric.samples}
    assert gateway_metrics.REQUESTS  # the module registered its metrics in this process
    for rule in rules.values():
        assert 'namespace="gateway"' in rule["expression"]
        for name in re.findall(r"inferforge_gateway_\w+", rule["expression"]):
            assert name in exported or f"{name}_total" in exported or name.removesuffix("_total") in {
                m.name for m in REGISTRY.collect()}, name
