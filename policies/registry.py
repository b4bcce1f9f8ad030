"""Container registry: private, no shared credentials, no anonymous pulls, reachable through a private endpoint."""

from __future__ import annotations

from pulumi_policy import ReportViolation, ResourceValidationArgs, Severity

from .common import lookup, resource_policy, same, stack_policy
from .exposure import private_endpoint_check

REGISTRY = "azure-native:containerregistry:Registry"


def _public_network(args: ResourceValidationArgs, report: ReportViolation) -> None:
    access = args.props.get("publicNetworkAccess")
    if not same(access, "Disabled"):
        report(f"publicNetworkAccess is {access!r}; it must be 'Disabled' (the service enables it when it is "
               "left out).")
    action = lookup(args.props, "networkRuleSet.defaultAction")
    if not same(action, "Deny"):
        report(f"networkRuleSet.defaultAction is {action!r}; it must be 'Deny'.")


def _admin_user(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.props.get("adminUserEnabled") is not False:
        report(f"adminUserEnabled is {args.props.get('adminUserEnabled')!r}; it must be false (a shared, "
               "static registry credential).")


def _anonymous_pull(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.props.get("anonymousPullEnabled") is True:
        report("anonymousPullEnabled is true: anyone who reaches the registry can pull its images.")


def _premium(args: ResourceValidationArgs, report: ReportViolation) -> None:
    sku = lookup(args.props, "sku.name")
    if not same(sku, "Premium"):
        report(f"sku.name is {sku!r}; private endpoints need 'Premium'.")


acr_public_network_disabled = resource_policy(
    name="acr-public-network-disabled",
    description="Container registries have public network access disabled and deny by default; AKS pulls "
    "through the private endpoint.",
    severity=Severity.HIGH,
    remediation="Set publicNetworkAccess='Disabled' and networkRuleSet.defaultAction='Deny'; push from inside "
    "the VNet or `az acr import` (a control-plane copy that needs no public endpoint).",
    resource_types=[REGISTRY],
    check=_public_network,
)

acr_admin_user_disabled = resource_policy(
    name="acr-admin-user-disabled",
    description="Container registries have the admin user disabled; pulls and pushes use Entra identities.",
    severity=Severity.HIGH,
    remediation="Set adminUserEnabled=false; grant AcrPull to the AKS kubelet identity and AcrPush to CI.",
    resource_types=[REGISTRY],
    check=_admin_user,
)

acr_anonymous_pull_disabled = resource_policy(
    name="acr-anonymous-pull-disabled",
    description="Container registries do not allow anonymous (unauthenticated) pulls.",
    severity=Severity.HIGH,
    remediation="Set anonymousPullEnabled=false.",
    resource_types=[REGISTRY],
    check=_anonymous_pull,
)

acr_premium_sku = resource_policy(
    name="acr-premium-sku",
    description="Container registries use the Premium SKU, the one that supports private endpoints.",
    severity=Severity.MEDIUM,
    remediation="Set sku.name='Premium'.",
    resource_types=[REGISTRY],
    check=_premium,
)

acr_private_endpoint = stack_policy(
    name="acr-private-endpoint",
    description="Every container registry has a private endpoint (group 'registry') in the stack.",
    severity=Severity.HIGH,
    remediation="Create the registry through components/registry.py, which adds the private endpoint and "
    "its privatelink.azurecr.io DNS zone group.",
    check=private_endpoint_check(REGISTRY, "Container registry"),
)

POLICIES = [
    acr_public_network_disabled,
    acr_admin_user_disabled,
    acr_anonymous_pull_disabled,
    acr_premium_sku,
    acr_private_endpoint,
]
