"""Audit: the subscription's Activity Log in Log Analytics, and the alerts an operator must hear about.

Alerts (each goes to one action group that emails the configured receivers):

* **5xx rate**: metric alert on the Front Door profile's ``Percentage5XX`` (Microsoft.Cdn/profiles).
* **Queue depth**: Prometheus rule on ``vllm:num_requests_waiting`` (the server's queue gauge, inference/metrics.py)
  in an Azure Monitor workspace, created only when one is configured: this stack does not create managed
  Prometheus, and Container Insights does not collect the server's metrics into Log Analytics.
* **GPU pool at max**: log alert over Container Insights' ``KubeNodeInventory``: a GPU pool whose node count
  stayed at its autoscaler ``maxCount`` for the whole window (the autoscaler can add no capacity).
* **Key Vault access denied**: log alert on Key Vault audit logs (``AZKVAuditLogs``, or ``AzureDiagnostics``
  when a vault logs there) with HTTP 403 / ``Forbidden``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import alertsmanagement, monitor

from . import package

# Every Activity Log category (https://learn.microsoft.com/azure/azure-monitor/essentials/activity-log-schema).
ACTIVITY_LOG_CATEGORIES = ("Administrative", "Security", "ServiceHealth", "Alert", "Recommendation", "Policy",
                           "Autoscale", "ResourceHealth")
QUEUE_METRIC = "vllm:num_requests_waiting"
FRONT_DOOR_5XX_METRIC = "Percentage5XX"


# Window sizes a log alert accepts, in minutes (the service takes a fixed set of durations).
LOG_ALERT_WINDOWS = (5, 10, 15, 30, 45, 60, 120, 180, 360, 720, 1440)


def _iso_minutes(minutes: int) -> str:
    if minutes not in LOG_ALERT_WINDOWS:
        raise ValueError(f"window of {minutes} minutes; allowed: {', '.join(map(str, LOG_ALERT_WINDOWS))}")
    return f"PT{minutes // 60}H" if minutes >= 60 else f"PT{minutes}M"


def gpu_pool_at_max_query(cluster_name: str, pool_max_counts: Mapping[str, int]) -> str:
    """KQL: pools whose node count never dropped below maxCount in the window (one row per pool at max)."""
    rows = ", ".join(f'"{pool}", {count}' for pool, count in sorted(pool_max_counts.items()))
    return "\n".join([
        "KubeNodeInventory",
        f'| where ClusterName =~ "{cluster_name}"',
        '| extend pool = tostring(parse_json(Labels)[0]["agentpool"])',
        "| summarize nodes = dcount(Computer) by pool, bin(TimeGenerated, 5m)",
        "| summarize minNodes = min(nodes) by pool",
        f"| join kind=inner (datatable(pool: string, maxCount: long) [{rows}]) on pool",
        "| where minNodes >= maxCount",
    ])


KEY_VAULT_DENIED_QUERY = "\n".join([
    "union isfuzzy=true",
    "  (AZKVAuditLogs | where HttpStatusCode == 403 or ResultSignature == \"Forbidden\"),",
    "  (AzureDiagnostics | where ResourceProvider == \"MICROSOFT.KEYVAULT\"",
    "     | where httpStatusCode_d == 403 or ResultSignature == \"Forbidden\")",
    "| summarize denied = count() by _ResourceId",
])


def gateway_rules(namespace: str, error_rate_percent: float) -> list[tuple[str, str, str, int, str]]:
    """(alert, PromQL, for, severity, description) of the gateway's rules, on its own metrics (gateway/metrics.py)."""
    selector = f'namespace="{namespace}"'
    return [
        ("GatewayBudgetExhausted",
         f"sum by (tenant) (increase(inferforge_gateway_budget_exhausted_total{{{selector}}}[15m])) > 0", "PT0M", 3,
         "A tenant's monthly token budget is spent: its requests are refused or cut short."),
        ("GatewayErrorRateHigh",
         f'sum(rate(inferforge_gateway_requests_total{{{selector},status=~"5.."}}[5m])) / '
         f"sum(rate(inferforge_gateway_requests_total{{{selector}}}[5m])) > {error_rate_percent / 100:g}", "PT5M", 1,
         f"More than {error_rate_percent:g}% of the gateway's answers are 5xx."),
        ("GatewayRedisDown", f"min(inferforge_gateway_redis_up{{{selector}}}) == 0", "PT2M", 1,
         "A gateway replica cannot reach Redis: fail-closed tenants get 503, fail-open tenants run unmetered."),
        # A model's canary (a second server version, gateway/routing.py): silent while no model has one.
        ("GatewayCanaryErrorRateHigh",
         f'sum by (model) (rate(inferforge_gateway_upstream_requests_total{{{selector},version="canary",'
         f'status=~"5.."}}[5m])) / sum by (model) (rate(inferforge_gateway_upstream_requests_total{{{selector},'
         f'version="canary"}}[5m])) > {error_rate_percent / 100:g}', "PT5M", 2,
         f"More than {error_rate_percent:g}% of a model's canary answers are 5xx: check it and roll it back "
         "(`python -m stacks canary check`, README: Canary releases)."),
    ]


@package.schema_args
@dataclass
class AuditArgs:
    """Arguments of `Audit`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the action group and alert rules."""
    location: str
    """Region of the log alert rules (the workspace's)."""
    name_base: str
    """`<workload>-<env>`, for CAF names (`ag-`, `alert-`) and the subscription diagnostic setting."""
    workspace_id: pulumi.Input[str]
    """Log Analytics workspace: Activity Log destination and scope of the log alerts."""
    email_receivers: Sequence[str]
    """Who gets every alert (validated addresses)."""
    cluster_name: str
    """AKS cluster name as Container Insights records it (KubeNodeInventory.ClusterName)."""
    gpu_pool_max_counts: Mapping[str, int]
    """GPU pool name -> autoscaler maxCount, from config."""
    front_door_profile_id: pulumi.Input[str] | None = None
    """Front Door profile whose 5xx percentage is watched; None (no Front Door yet) skips that alert."""
    error_rate_percent: float = 5
    """Alert when more than this share of Front Door responses are 5xx (15-minute average)."""
    gpu_pool_at_max_minutes: int = 30
    """How long a pool must sit at maxCount before it alerts."""
    queue_depth_threshold: int = 16
    """Alert when more requests than this wait, summed over the inference pods, for 5 minutes."""
    inference_namespaces: Sequence[str] = ("inference",)
    """Namespaces of the model servers' pods, one per served model (label on the Prometheus series); the queue
    alert fires per namespace, so one model's backlog is not hidden by another's idle pods."""
    gateway_namespace: str | None = None
    """Namespace of the AI gateway's pods; set (with a Prometheus workspace), its alerts are added: a tenant's
    monthly budget spent, gateway 5xx above ``error_rate_percent``, Redis unreachable."""
    prometheus_workspace_id: str | None = None
    """Azure Monitor workspace holding the server's Prometheus metrics; None skips the queue-depth rule."""
    activity_log_export: bool = True
    """Export the subscription's Activity Log (who changed what, policy and security events) to the workspace."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class Audit(pulumi.ComponentResource):
    """Activity Log export plus the stack's alert rules and their action group."""

    action_group_id: pulumi.Output[str]
    """ARM id of the action group every alert notifies."""
    alert_names: list[str]
    """Keys of the alert rules created (e.g. `frontdoor-5xx`, `gpu-pool-at-max`)."""

    def __init__(self, name: str, args: AuditArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(AuditArgs, args)
        super().__init__("inferforge:index:Audit", name, None, package.aliased(opts, "inferforge:observability:Audit"))
        child = pulumi.ResourceOptions(parent=self)
        tags = dict(args.tags)
        base = args.name_base

        if args.activity_log_export:
            # Subscription scope: the deploying identity needs Monitoring Contributor (or Owner) on the subscription.
            monitor.SubscriptionDiagnosticSetting(
                f"{name}-activity-log",
                name=f"activity-log-to-log-{base}",
                workspace_id=args.workspace_id,
                logs=[monitor.SubscriptionLogSettingsArgs(category=c, enabled=True) for c in ACTIVITY_LOG_CATEGORIES],
                opts=child,
            )

        self.action_group = monitor.ActionGroup(
            f"{name}-action-group",
            action_group_name=f"ag-{base}-ops",
            resource_group_name=args.resource_group_name,
            location="Global",
            group_short_name=f"ops{base.replace('-', '')}"[:12],
            enabled=True,
            email_receivers=[monitor.MicrosoftCommonEmailReceiverArgs(
                name=f"email-{i}", email_address=address, use_common_alert_schema=True)
                for i, address in enumerate(args.email_receivers)],
            tags=tags,
            opts=child,
        )
        group_id = self.action_group.id
        self.alerts = {}

        if args.front_door_profile_id is not None:
            self.alerts["frontdoor-5xx"] = self._front_door_5xx(name, args, group_id, tags, child)

        def log_alert(key: str, description: str, query: str, window_minutes: int, severity: int
                      ) -> monitor.ScheduledQueryRule:
            return monitor.ScheduledQueryRule(
                f"{name}-{key}",
                rule_name=f"alert-{base}-{key}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                kind="LogAlert",
                description=description,
                display_name=description,
                severity=severity,
                enabled=True,
                scopes=[args.workspace_id],
                evaluation_frequency="PT5M",
                window_size=_iso_minutes(window_minutes),
                criteria=monitor.ScheduledQueryRuleCriteriaArgs(all_of=[monitor.ConditionArgs(
                    query=query, time_aggregation="Count", operator="GreaterThan", threshold=0,
                    failing_periods=monitor.ConditionFailingPeriodsArgs(
                        number_of_evaluation_periods=1, min_failing_periods_to_alert=1))]),
                actions=monitor.ActionsArgs(action_groups=[group_id]),
                # The tables appear with the first data (new cluster, first vault access); validating the query
                # before then would fail the deployment.
                skip_query_validation=True,
                tags=tags,
                opts=child,
            )

        self.alerts["gpu-pool-at-max"] = log_alert(
            "gpu-pool-at-max", f"A GPU pool stayed at its maxCount for {args.gpu_pool_at_max_minutes} minutes.",
            gpu_pool_at_max_query(args.cluster_name, args.gpu_pool_max_counts), args.gpu_pool_at_max_minutes, 2)
        self.alerts["keyvault-denied"] = log_alert(
            "keyvault-denied", "Key Vault denied a request (HTTP 403).", KEY_VAULT_DENIED_QUERY, 5, 2)

        def prometheus_rules(key: str, group: str, description: str,
                             rules: list[tuple[str, str, str, int, str]]) -> alertsmanagement.PrometheusRuleGroup:
            return alertsmanagement.PrometheusRuleGroup(
                f"{name}-{key}",
                rule_group_name=f"prg-{base}-{group}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                scopes=[args.prometheus_workspace_id],
                cluster_name=args.cluster_name,
                interval="PT1M",
                enabled=True,
                description=description,
                rules=[alertsmanagement.PrometheusRuleArgs(
                    alert=alert, expression=expression, for_=for_, severity=severity, enabled=True,
                    annotations={"description": text},
                    actions=[alertsmanagement.PrometheusRuleGroupActionArgs(action_group_id=group_id)])
                    for alert, expression, for_, severity, text in rules],
                tags=tags,
                opts=child,
            )

        if args.prometheus_workspace_id is not None:
            self.alerts["queue-depth"] = prometheus_rules("queue-depth", "inference", "Inference serving alerts.", [(
                "InferenceQueueDepthHigh",
                f'sum by (namespace) ({QUEUE_METRIC}{{namespace=~"{"|".join(args.inference_namespaces)}"}}) '
                f'> {args.queue_depth_threshold}',
                "PT5M", 2, "Requests are queuing in a model's inference servers (the namespace says which).")])
            if args.gateway_namespace is not None:
                self.alerts["gateway"] = prometheus_rules("gateway", "gateway", "AI gateway alerts.", gateway_rules(
                    args.gateway_namespace, args.error_rate_percent))
        self.action_group_id = pulumi.Output.from_input(group_id)
        self.alert_names = list(self.alerts)
        self.register_outputs({"action_group_id": self.action_group_id, "alert_names": self.alert_names})

    @staticmethod
    def _front_door_5xx(name: str, args: AuditArgs, group_id: pulumi.Input[str], tags: dict[str, str],
                        child: pulumi.ResourceOptions) -> monitor.MetricAlert:
        base = args.name_base
        return monitor.MetricAlert(
            f"{name}-frontdoor-5xx",
            rule_name=f"alert-{base}-frontdoor-5xx",
            resource_group_name=args.resource_group_name,
            location="global",
            description=f"More than {args.error_rate_percent}% of Front Door responses are 5xx.",
            severity=1,
            enabled=True,
            scopes=[args.front_door_profile_id],
            evaluation_frequency="PT5M",
            window_size="PT15M",
            criteria=monitor.MetricAlertSingleResourceMultipleMetricCriteriaArgs(
                odata_type="Microsoft.Azure.Monitor.SingleResourceMultipleMetricCriteria",
                all_of=[monitor.MetricCriteriaArgs(
                    name="percentage-5xx", criterion_type="StaticThresholdCriterion",
                    metric_namespace="Microsoft.Cdn/profiles", metric_name=FRONT_DOOR_5XX_METRIC,
                    operator="GreaterThan", threshold=args.error_rate_percent, time_aggregation="Average")]),
            actions=[monitor.MetricAlertActionArgs(action_group_id=group_id)],
            auto_mitigate=True,
            tags=tags,
            opts=child,
        )
