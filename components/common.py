"""Cross-cutting interfaces every component uses, written once (as Azure Verified Modules do).

Private endpoint + private DNS zone group, diagnostic settings to Log Analytics, role assignments,
tags and resource locks. A component never re-implements one of these inline.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum

import pulumi
from pulumi_azure_native import authorization, monitor, network


class PublicNetworkAccess(StrEnum):
    """Whether a service answers on its public endpoint; the platform's services are reached through private
    endpoints, so every default is Disabled (the exposure policy blocks Enabled in prod)."""

    DISABLED = "Disabled"
    ENABLED = "Enabled"


# Built-in Azure role definition GUIDs (stable across tenants).
ROLE_KEY_VAULT_SECRETS_USER = "4633458b-17de-408a-b874-0445c86b69e6"
ROLE_KEY_VAULT_SECRETS_OFFICER = "b86a8fe4-44ce-4948-aee5-eccb2c155cd7"
ROLE_AKS_RBAC_CLUSTER_ADMIN = "b1ff04bb-8a4e-4dc4-8eb5-8693973ce19b"
ROLE_NETWORK_CONTRIBUTOR = "4d97b98b-1d4f-4787-a291-c67834d212e7"
ROLE_ACR_PULL = "7f951dda-4ed3-4680-a7ca-43fe172d538d"
# https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
ROLE_STORAGE_BLOB_DATA_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"
ROLE_STORAGE_BLOB_DATA_CONTRIBUTOR = "ba92f5b4-2d11-453d-a403-e96b0029c9fe"


STANDARD_TAG_NAMES = ("environment", "owner", "cost-center", "managed-by", "workload")

# Azure's tag limits, for the strictest resource this toolkit tags
# (https://learn.microsoft.com/azure/azure-resource-manager/management/tag-resources#limitations):
# names are case-insensitive, at most 512 characters and free of < > % & \ ? /; values at most 256 characters;
# Front Door rejects # and : in names; Azure DNS and Private DNS zones reject spaces and parentheses in names,
# names starting with a digit, and more than 15 tags; the prefixes microsoft, azure and windows are reserved.
MAX_TAGS_PER_RESOURCE = 15
MAX_TAG_NAME_LENGTH = 512
MAX_TAG_VALUE_LENGTH = 256
_FORBIDDEN_TAG_NAME_CHARS = set('<>%&\\?/#:() ')
_RESERVED_TAG_PREFIXES = ("microsoft", "azure", "windows")


def tag_problems(extra: Mapping[str, str]) -> dict[str, str]:
    """Why each extra tag (by name, "" for the whole set) would be rejected by Azure or weaken the standard tags."""
    problems: dict[str, str] = {}
    standard = {n.lower() for n in STANDARD_TAG_NAMES}
    for name, value in extra.items():
        bad_chars = sorted(set(name) & _FORBIDDEN_TAG_NAME_CHARS)
        if name.lower() in standard:
            problems[name] = (f"overrides the standard tag '{name.lower()}' (tag names are case-insensitive); "
                              f"allowed: a tag name other than {', '.join(STANDARD_TAG_NAMES)}")
        elif not 1 <= len(name) <= MAX_TAG_NAME_LENGTH:
            problems[name] = f"tag name is {len(name)} characters; allowed: 1-{MAX_TAG_NAME_LENGTH}"
        elif bad_chars:
            shown = " ".join(repr(c) for c in bad_chars)
            problems[name] = (f"tag name contains {shown}; allowed: letters, digits, '-', '_', '.' "
                              "(Azure rejects < > % & \\ ? / everywhere, # : in Front Door, spaces and "
                              "parentheses in DNS zones)")
        elif name[0].isdigit():
            problems[name] = "tag name starts with a digit (Azure DNS zones reject it); allowed: a letter first"
        elif name.lower().startswith(_RESERVED_TAG_PREFIXES):
            problems[name] = ("tag name starts with a prefix Azure reserves; allowed: a name not starting with "
                              f"{', '.join(_RESERVED_TAG_PREFIXES)}")
        elif len(value) > MAX_TAG_VALUE_LENGTH:
            problems[name] = f"value is {len(value)} characters; allowed: at most {MAX_TAG_VALUE_LENGTH}"
    allowed_extra = MAX_TAGS_PER_RESOURCE - len(STANDARD_TAG_NAMES)
    if len(extra) > allowed_extra:
        problems[""] = (f"{len(extra)} tags plus {len(STANDARD_TAG_NAMES)} standard tags make "
                        f"{len(extra) + len(STANDARD_TAG_NAMES)}; allowed: at most {allowed_extra} extra tags "
                        f"(private DNS zones take {MAX_TAGS_PER_RESOURCE} tags)")
    return problems


def standard_tags(*, environment: str, owner: str, cost_center: str, extra: Mapping[str, str] | None = None
                  ) -> dict[str, str]:
    """The tags every taggable resource carries (the tagging policy checks the same keys).

    Extra tags add to the standard ones and can never replace them: a stack's `environment` tag is what
    cost reports and policies key on, so an override would mislabel every resource silently.
    """
    problems = tag_problems(extra or {})
    if problems:
        raise ValueError("; ".join(f"extra tag {name!r}: {why}" if name else why for name, why in problems.items()))
    return {"environment": environment, "owner": owner, "cost-center": cost_center, "managed-by": "pulumi",
            "workload": "inferforge", **(extra or {})}


def role_definition_id(subscription_id: pulumi.Input[str], role_guid: str) -> pulumi.Output[str]:
    """Full ARM id of a built-in role definition in the given subscription."""
    return pulumi.Output.concat(
        "/subscriptions/", subscription_id, "/providers/Microsoft.Authorization/roleDefinitions/", role_guid
    )


def role_assignment(
    name: str,
    *,
    scope: pulumi.Input[str],
    principal_id: pulumi.Input[str],
    subscription_id: pulumi.Input[str],
    role_guid: str,
    parent: pulumi.Resource,
    principal_type: str = "ServicePrincipal",
    description: str | None = None,
) -> authorization.RoleAssignment:
    """Grant a built-in role at the narrowest scope the caller gives (never the subscription)."""
    return authorization.RoleAssignment(
        name,
        scope=scope,
        principal_id=principal_id,
        # Setting principal_type avoids the replication-delay failure when the identity is brand new.
        principal_type=principal_type,
        role_definition_id=role_definition_id(subscription_id, role_guid),
        description=description,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def private_endpoint(
    name: str,
    *,
    resource_group_name: pulumi.Input[str],
    location: pulumi.Input[str],
    subnet_id: pulumi.Input[str],
    target_resource_id: pulumi.Input[str],
    group_id: str,
    private_dns_zone_id: pulumi.Input[str],
    tags: Mapping[str, str],
    parent: pulumi.Resource,
) -> network.PrivateEndpoint:
    """A private endpoint to `target_resource_id` plus the DNS zone group that registers its A record."""
    endpoint = network.PrivateEndpoint(
        name,
        private_endpoint_name=name,
        resource_group_name=resource_group_name,
        location=location,
        subnet=network.SubnetArgs(id=subnet_id),
        custom_network_interface_name=f"{name}-nic",
        private_link_service_connections=[
            network.PrivateLinkServiceConnectionArgs(
                name=f"{name}-connection",
                private_link_service_id=target_resource_id,
                group_ids=[group_id],
            )
        ],
        tags=dict(tags),
        opts=pulumi.ResourceOptions(parent=parent),
    )
    network.PrivateDnsZoneGroup(
        f"{name}-dns",
        private_dns_zone_group_name="default",
        private_endpoint_name=endpoint.name,
        resource_group_name=resource_group_name,
        private_dns_zone_configs=[
            network.PrivateDnsZoneConfigArgs(name=group_id, private_dns_zone_id=private_dns_zone_id)
        ],
        opts=pulumi.ResourceOptions(parent=endpoint),
    )
    return endpoint


@dataclass(frozen=True)
class DiagnosticCategories:
    """Which logs and metrics a resource type sends; the categories differ per service."""

    log_category_groups: Sequence[str] = ("allLogs",)
    log_categories: Sequence[str] = ()
    metrics: bool = True


ALL_LOGS_AND_METRICS = DiagnosticCategories()
METRICS_ONLY = DiagnosticCategories(log_category_groups=(), metrics=True)
LOGS_ONLY = DiagnosticCategories(metrics=False)


def diagnostic_settings(
    name: str,
    *,
    resource_id: pulumi.Input[str],
    workspace_id: pulumi.Input[str],
    parent: pulumi.Resource,
    categories: DiagnosticCategories = ALL_LOGS_AND_METRICS,
) -> monitor.DiagnosticSetting:
    """Send a resource's logs and metrics to the stack's Log Analytics workspace."""
    log_setting = monitor.DiagnosticsLogSettingsArgs
    logs = [log_setting(category_group=group, enabled=True) for group in categories.log_category_groups]
    logs += [log_setting(category=category, enabled=True) for category in categories.log_categories]
    metrics = ([monitor.DiagnosticsMetricSettingsArgs(category="AllMetrics", enabled=True)]
               if categories.metrics else None)
    return monitor.DiagnosticSetting(
        f"{name}-diag",
        name=f"{name}-to-log-analytics",
        resource_uri=resource_id,
        workspace_id=workspace_id,
        # Resource-specific tables are cheaper to query and retain than the legacy AzureDiagnostics table.
        log_analytics_destination_type="Dedicated",
        logs=logs or None,
        metrics=metrics,
        opts=pulumi.ResourceOptions(parent=parent),
    )


def resource_lock(name: str, *, scope_resource: pulumi.CustomResource, parent: pulumi.Resource) -> None:
    """CanNotDelete lock so a stateful resource survives a mistaken `pulumi destroy` (prod only)."""
    from pulumi_azure_native import authorization as auth

    auth.ManagementLockByScope(
        f"{name}-lock",
        lock_name=f"{name}-cannot-delete",
        level="CanNotDelete",
        scope=scope_resource.id,
        notes="Created by inferforge: remove the lock deliberately before deleting this resource.",
        opts=pulumi.ResourceOptions(parent=parent),
    )
