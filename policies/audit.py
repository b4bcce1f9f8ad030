"""Audit: the subscription's Activity Log is kept where the platform's other logs are."""

from __future__ import annotations

from pulumi_policy import ReportViolation, Severity, StackValidationArgs

from .common import as_list, is_true, resources_of, stack_policy

SUBSCRIPTION_DIAGNOSTIC = "azure-native:monitor:SubscriptionDiagnosticSetting"
WORKSPACE = "azure-native:operationalinsights:Workspace"
# Who changed what, and what Azure Policy and Defender said about it: the categories an investigation needs.
REQUIRED_CATEGORIES = ("Administrative", "Security", "Policy")


def _activity_log_export(args: StackValidationArgs, report: ReportViolation) -> None:
    # A stack that owns a Log Analytics workspace (the platform) must send the Activity Log there; a stack of
    # only Kubernetes objects (or a component on its own) has nowhere to send it.
    if not resources_of(args.resources, WORKSPACE):
        return
    settings = resources_of(args.resources, SUBSCRIPTION_DIAGNOSTIC)
    exported: set[str] = set()
    for setting in settings:
        if not setting.props.get("workspaceId"):
            continue
        exported.update(str(log.get("category")) for log in as_list(setting.props.get("logs"))
                        if is_true(log.get("enabled")))
    missing = [c for c in REQUIRED_CATEGORIES if c not in exported]
    if missing:
        report(f"no subscription diagnostic setting sends the Activity Log categories {', '.join(missing)} to a "
               "Log Analytics workspace (without it, who changed what is kept 90 days and not queryable with the "
               "rest of the platform's logs).")


monitor_activity_log_export = stack_policy(
    name="monitor-activity-log-export",
    description="A stack with a Log Analytics workspace exports the subscription's Activity Log (Administrative, "
    "Security, Policy at least) to a workspace.",
    severity=Severity.MEDIUM,
    remediation="Keep observability.activityLogExport true (components/audit.py creates a "
    "monitor.SubscriptionDiagnosticSetting); the deploying identity needs Monitoring Contributor on the "
    "subscription.",
    check=_activity_log_export,
)

POLICIES = [monitor_activity_log_export]
