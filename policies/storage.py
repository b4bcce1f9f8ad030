"""Storage: accounts private, and every Blob volume a workload mounts reachable and readable from the nodes.

Behind the deny-by-default egress firewall (components/egress.py), a Blob volume mounts only if blobfuse on the
node reaches the account without the firewall: through a private endpoint whose `privatelink.blob.core.windows.net`
zone resolves the account's name in the VNet. A dynamically provisioned `azureblob-*` claim gets a new public
account in the node resource group instead, which the firewall blocks unless it allows `*.blob.core.windows.net`.
With MSI auth (no account key) the mounting identity also needs a Storage Blob Data role on the account or
container. Mocks accept all of this; each gap would show only as a pod stuck in ContainerCreating.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, ResourceValidationArgs, Severity, StackValidationArgs

from .common import as_list, lookup, references, resource_policy, resources_of, same, stack_policy, walk
from .exposure import private_endpoint_check
from .workloads import pod_spec

STORAGE_ACCOUNT = "azure-native:storage:StorageAccount"
BLOB_CONTAINER = "azure-native:storage:BlobContainer"
PRIVATE_ENDPOINT = "azure-native:network:PrivateEndpoint"
DNS_ZONE_GROUP = "azure-native:network:PrivateDnsZoneGroup"
PRIVATE_ZONE = "azure-native:privatedns:PrivateZone"
ZONE_LINK = "azure-native:privatedns:VirtualNetworkLink"
ROLE_ASSIGNMENT = "azure-native:authorization:RoleAssignment"
AKS = "azure-native:containerservice:ManagedCluster"
FIREWALL_RULES = "azure-native:network:FirewallPolicyRuleCollectionGroup"
PVC = "kubernetes:core/v1:PersistentVolumeClaim"
PV = "kubernetes:core/v1:PersistentVolume"
STORAGE_CLASS = "kubernetes:storage.k8s.io/v1:StorageClass"

BLOB_CSI_DRIVER = "blob.csi.azure.com"
BLOB_DNS_ZONE = "privatelink.blob.core.windows.net"
PUBLIC_BLOB_FQDN = "*.blob.core.windows.net"
# Storage Blob Data Reader, Contributor, Owner: the roles that may read blobs with an Entra token.
# https://learn.microsoft.com/azure/role-based-access-control/built-in-roles/storage
BLOB_READ_ROLES = ("2a2b9908-6ea1-4ae2-8e65-a410df84e7d1", "ba92f5b4-2d11-453d-a403-e96b0029c9fe",
                   "b7e6dc6d-f1e8-4753-8033-0f276bb0955b")


# --- storage accounts -----------------------------------------------------------------------------


def _account_public_network(args: ResourceValidationArgs, report: ReportViolation) -> None:
    access = args.props.get("publicNetworkAccess")
    if not same(access, "Disabled"):
        report(f"publicNetworkAccess is {access!r}; it must be 'Disabled' (Azure enables it when it is left out).")
    action = lookup(args.props, "networkRuleSet.defaultAction")
    if not same(action, "Deny"):
        report(f"networkRuleSet.defaultAction is {action!r}; it must be 'Deny'.")
    if args.props.get("allowBlobPublicAccess") is not False:
        report(f"allowBlobPublicAccess is {args.props.get('allowBlobPublicAccess')!r}; it must be false "
               "(anonymous reads of containers set to public).")


# --- Blob volumes used by workloads ---------------------------------------------------------------


def _used_claims(resources: Iterable[PolicyResource]) -> set[tuple[str, str]]:
    """(namespace, claim name) of every PersistentVolumeClaim a workload's pod spec mounts."""
    used = set()
    for resource in resources:
        spec = pod_spec(resource.resource_type, resource.props)
        if spec is None:
            continue
        namespace = str(lookup(resource.props, "metadata.namespace") or "default")
        for volume in as_list(spec.get("volumes")):
            claim = lookup(volume, "persistentVolumeClaim.claimName")
            if isinstance(claim, str):
                used.add((namespace, claim))
    return used


def _claim_key(claim: PolicyResource) -> tuple[str, str]:
    return (str(lookup(claim.props, "metadata.namespace") or "default"), str(lookup(claim.props, "metadata.name")))


def _used_blob_volumes(resources: Sequence[PolicyResource]) -> tuple[list[PolicyResource], list[PolicyResource]]:
    """(dynamically provisioned Blob claims, static Blob PVs) that a workload of the stack mounts."""
    used = _used_claims(resources)
    claims = [c for c in resources_of(resources, PVC) if _claim_key(c) in used]
    blob_classes = {str(lookup(r.props, "metadata.name")) for r in resources_of(resources, STORAGE_CLASS)
                    if r.props.get("provisioner") == BLOB_CSI_DRIVER}
    dynamic = [c for c in claims if not lookup(c.props, "spec.volumeName") and (
        str(lookup(c.props, "spec.storageClassName") or "").startswith("azureblob")
        or lookup(c.props, "spec.storageClassName") in blob_classes)]
    bound_names = {str(lookup(c.props, "spec.volumeName")) for c in claims if lookup(c.props, "spec.volumeName")}
    static = []
    for volume in resources_of(resources, PV):
        if lookup(volume.props, "spec.csi.driver") != BLOB_CSI_DRIVER:
            continue
        claim_ref = (str(lookup(volume.props, "spec.claimRef.namespace") or "default"),
                     str(lookup(volume.props, "spec.claimRef.name") or ""))
        if str(lookup(volume.props, "metadata.name")) in bound_names or claim_ref in used:
            static.append(volume)
    return dynamic, static


def _firewall_allows(resources: Sequence[PolicyResource], fqdn: str) -> bool:
    return any(key == "targetFqdns" and any(same(f, fqdn) for f in as_list(value))
               for rules in resources_of(resources, FIREWALL_RULES) for _, key, value in walk(rules.props))


def _account_named(resources: Sequence[PolicyResource], name: Any) -> PolicyResource | None:
    for account in resources_of(resources, STORAGE_ACCOUNT):
        if isinstance(name, str) and same(account.props.get("accountName"), name):
            return account
    return None


def _zone_is_blob(group: PolicyResource, resources: Sequence[PolicyResource]) -> bool:
    """The DNS zone group registers in a privatelink.blob zone: one of the stack's (linked to a VNet) or a hub's."""
    own_zones = [z for z in resources_of(resources, PRIVATE_ZONE) if references(group, "privateDnsZoneConfigs", z)]
    if own_zones:
        links = resources_of(resources, ZONE_LINK)
        return any(same(z.props.get("privateZoneName"), BLOB_DNS_ZONE)
                   and any(references(link, "privateZoneName", z) for link in links) for z in own_zones)
    # A landing zone's central zone arrives as a literal id (already linked to the hub's resolver).
    return any(str(config.get("privateDnsZoneId", "")).lower().endswith(f"/privatednszones/{BLOB_DNS_ZONE}")
               for config in as_list(group.props.get("privateDnsZoneConfigs")))


def _private_blob_path_problems(account: PolicyResource, resources: Sequence[PolicyResource]) -> list[str]:
    problems = []
    if not same(account.props.get("publicNetworkAccess"), "Disabled"):
        problems.append(f"its publicNetworkAccess is {account.props.get('publicNetworkAccess')!r}, so the nodes "
                        "would go out through the egress firewall, which allows no storage FQDN")
    endpoints = [pe for pe in resources_of(resources, PRIVATE_ENDPOINT)
                 if references(pe, "privateLinkServiceConnections", account)
                 and any("blob" in [str(g) for g in as_list(c.get("groupIds"))]
                         for c in as_list(pe.props.get("privateLinkServiceConnections")))]
    if not endpoints:
        problems.append("it has no private endpoint with group 'blob'")
    else:
        groups = [g for g in resources_of(resources, DNS_ZONE_GROUP)
                  if any(references(g, "privateEndpointName", pe) for pe in endpoints)]
        if not any(_zone_is_blob(g, resources) for g in groups):
            problems.append(f"its blob private endpoint registers in no {BLOB_DNS_ZONE} zone linked to the VNet, "
                            "so the nodes resolve the account's public address")
    return problems


def _blob_volume_reachable(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = list(args.resources)
    if not resources_of(resources, AKS):
        return  # a component rendered alone: no nodes, no egress path to judge
    dynamic, static = _used_blob_volumes(resources)
    for claim in dynamic:
        if not _firewall_allows(resources, PUBLIC_BLOB_FQDN):
            report(f"PersistentVolumeClaim '{claim.name}' is provisioned by the Blob CSI driver "
                   f"(storageClassName {lookup(claim.props, 'spec.storageClassName')!r}), which creates a storage "
                   f"account with a public endpoint; no egress firewall rule of this stack allows {PUBLIC_BLOB_FQDN}, "
                   "so the volume can never mount.", claim.urn)
    for volume in static:
        name = lookup(volume.props, "spec.csi.volumeAttributes.storageAccount")
        account = _account_named(resources, name)
        if account is None:
            report(f"PersistentVolume '{volume.name}' mounts storage account {name!r}, which is not a storage "
                   "account of this stack: whether the nodes can reach it privately cannot be checked.", volume.urn)
            continue
        problems = _private_blob_path_problems(account, resources)
        group_name = lookup(volume.props, "spec.csi.volumeAttributes.resourceGroup")
        account_group = account.props.get("resourceGroupName")
        if isinstance(account_group, str) and not same(group_name, account_group):
            problems.append(f"the PV's volumeAttributes.resourceGroup is {group_name!r}, not the account's "
                            f"{account_group!r} (the driver then looks in the node resource group)")
        for problem in problems:
            report(f"PersistentVolume '{volume.name}' mounts storage account '{name}', but {problem}.", volume.urn)


def _mounts_with_msi(volume: PolicyResource) -> bool:
    attributes = lookup(volume.props, "spec.csi.volumeAttributes")
    return isinstance(attributes, Mapping) and any(
        str(k).lower() == "azurestorageauthtype" and same(v, "msi") for k, v in attributes.items())


def _blob_volume_identity_can_read(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = list(args.resources)
    clusters = resources_of(resources, AKS)
    if not clusters:
        return
    grants = [a for a in resources_of(resources, ROLE_ASSIGNMENT)
              if str(a.props.get("roleDefinitionId", "")).lower().endswith(BLOB_READ_ROLES)
              and any(references(a, "principalId", c) for c in clusters)]
    for volume in _used_blob_volumes(resources)[1]:
        if not _mounts_with_msi(volume):
            continue
        account = _account_named(resources, lookup(volume.props, "spec.csi.volumeAttributes.storageAccount"))
        if account is None:
            continue  # reported by k8s-blob-volume-reachable
        container = lookup(volume.props, "spec.csi.volumeAttributes.containerName")
        containers = [c for c in resources_of(resources, BLOB_CONTAINER) if references(c, "accountName", account)
                      and same(c.props.get("containerName"), container)]
        scopes = [account, *containers]
        if not any(references(a, "scope", s) for a in grants for s in scopes):
            report(f"PersistentVolume '{volume.name}' mounts container {container!r} of '{account.name}' with MSI "
                   "auth, but no Storage Blob Data Reader/Contributor/Owner role assignment scoped to the account or "
                   "container is granted to the cluster's (kubelet) identity: blobfuse2 gets 403 and the pod never "
                   "starts.", volume.urn)


storage_public_network_disabled = resource_policy(
    name="storage-public-network-disabled",
    description="Storage accounts have public network access disabled, deny by default and allow no anonymous "
    "blob access; clients reach them through a private endpoint.",
    severity=Severity.CRITICAL,
    remediation="Set publicNetworkAccess='Disabled', networkRuleSet.defaultAction='Deny' and "
    "allowBlobPublicAccess=false (components/model_store.py); upload from a machine with a route to the private "
    "endpoint.",
    resource_types=[STORAGE_ACCOUNT],
    check=_account_public_network,
)

storage_private_endpoint = stack_policy(
    name="storage-private-endpoint",
    description="Every storage account has a private endpoint in the stack.",
    severity=Severity.HIGH,
    remediation="Create the account through components/model_store.py, which adds a private endpoint (group "
    "'blob') and its privatelink.blob.core.windows.net DNS zone group.",
    check=private_endpoint_check(STORAGE_ACCOUNT, "Storage account"),
)

k8s_blob_volume_reachable = stack_policy(
    name="k8s-blob-volume-reachable",
    description="Every Blob volume a workload mounts is reachable from the nodes behind the egress firewall: a "
    "static PV on a private storage account of the stack with a blob private endpoint registered in a "
    "privatelink.blob.core.windows.net zone, or a dynamic claim only where the firewall allows the public "
    "storage FQDN.",
    severity=Severity.HIGH,
    remediation="Use inference.modelSource.kind modelStore (a static PV on components/model_store.py's private "
    "account), or an existingClaim on an account with a blob private endpoint and DNS zone.",
    check=_blob_volume_reachable,
)

k8s_blob_volume_identity_can_read = stack_policy(
    name="k8s-blob-volume-identity-can-read",
    description="A Blob PV that mounts with managed identity (MSI) has a Storage Blob Data role for the cluster's "
    "identity on its storage account or container.",
    severity=Severity.HIGH,
    remediation="Pass the kubelet identity to components/model_store.py (reader_principal_ids), which grants "
    "Storage Blob Data Reader on the models container.",
    check=_blob_volume_identity_can_read,
)

POLICIES = [
    storage_public_network_disabled,
    storage_private_endpoint,
    k8s_blob_volume_reachable,
    k8s_blob_volume_identity_can_read,
]
