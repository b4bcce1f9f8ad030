"""Node hardening: host-side encryption and ephemeral OS disks on every AKS pool."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import ReportViolation, ResourceValidationArgs, Severity

from .common import as_list, is_true, resource_policy, same

AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"


def _pools(args: ResourceValidationArgs) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(pool name, pool properties) for inline profiles of a cluster or a separate AgentPool."""
    if args.resource_type == AGENT_POOL:
        yield str(args.props.get("agentPoolName", args.name)), args.props
        return
    for pool in as_list(args.props.get("agentPoolProfiles")):
        yield str(pool.get("name")), pool


def _encryption_at_host(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for name, pool in _pools(args):
        if not is_true(pool.get("enableEncryptionAtHost")):
            report(f"agent pool '{name}' has enableEncryptionAtHost {pool.get('enableEncryptionAtHost')!r}; it must "
                   "be true (temp disks, disk caches and ephemeral OS disks are otherwise unencrypted on the host).")


def _ephemeral_os_disk(args: ResourceValidationArgs, report: ReportViolation) -> None:
    for name, pool in _pools(args):
        if not same(pool.get("osDiskType"), "Ephemeral"):
            report(f"agent pool '{name}' has osDiskType {pool.get('osDiskType')!r}; it must be 'Ephemeral' "
                   "(pinned: left out, AKS picks per VM size and may leave a managed OS disk behind).")


aks_encryption_at_host = resource_policy(
    name="aks-encryption-at-host",
    description="Every AKS node pool encrypts at the host (temp disk, caches, ephemeral OS disk).",
    severity=Severity.HIGH,
    remediation="Set enableEncryptionAtHost=true on every pool (aks.encryptionAtHost); register the subscription "
    "feature Microsoft.Compute/EncryptionAtHost once (README, first-time steps).",
    resource_types=[AKS, AGENT_POOL],
    check=_encryption_at_host,
)

aks_ephemeral_os_disk = resource_policy(
    name="aks-ephemeral-os-disk",
    description="Every AKS node pool pins an ephemeral OS disk.",
    severity=Severity.MEDIUM,
    remediation="Set osDiskType='Ephemeral' with an osDiskSizeGB that fits the VM's temp disk "
    "(components/vm_local_disks.py; config checks the numbers).",
    resource_types=[AKS, AGENT_POOL],
    check=_ephemeral_os_disk,
)

POLICIES = [aks_encryption_at_host, aks_ephemeral_os_disk]
