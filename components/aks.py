"""AKS: Entra-only, workload identity, Azure CNI overlay + network policy, and separate GPU node pools.

GPU pools are separate `containerservice.AgentPool` resources rather than inline profiles: inline
profiles make every change touch all pools (CONVENTIONS §3). GPU pools run Ubuntu (Azure Linux
rejects A100/H100 sizes), carry the `sku=gpu:NoSchedule` taint, and may scale to zero in dev.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
from pulumi_azure_native import containerservice

from . import package
from .common import ROLE_NETWORK_CONTRIBUTOR, DiagnosticCategories, diagnostic_settings, role_assignment
from .gpu_sizes import GPU_VM_SIZES
from .limits import limited


class OsDiskType(StrEnum):
    """Where a node's OS disk lives."""

    EPHEMERAL = "Ephemeral"
    MANAGED = "Managed"


class OutboundType(StrEnum):
    """How node egress leaves the cluster."""

    LOAD_BALANCER = "loadBalancer"
    USER_DEFINED_ROUTING = "userDefinedRouting"


class AksSkuTier(StrEnum):
    """AKS control-plane tier (Standard and Premium carry the uptime SLA)."""

    FREE = "Free"
    STANDARD = "Standard"
    PREMIUM = "Premium"


class UpgradeChannel(StrEnum):
    """AKS automatic Kubernetes upgrade channel."""

    PATCH = "patch"
    STABLE = "stable"
    RAPID = "rapid"
    NODE_IMAGE = "node-image"
    NONE = "none"


class NodeOsUpgradeChannel(StrEnum):
    """AKS automatic node OS upgrade channel."""

    NODE_IMAGE = "NodeImage"
    SECURITY_PATCH = "SecurityPatch"
    UNMANAGED = "Unmanaged"
    NONE = "None"

GPU_TAINT = "sku=gpu:NoSchedule"
SYSTEM_TAINT = "CriticalAddonsOnly=true:NoSchedule"

# kube-audit is the biggest and most expensive stream; kube-audit-admin keeps the writes that matter.
AKS_LOG_CATEGORIES = DiagnosticCategories(
    log_category_groups=(),
    log_categories=("kube-apiserver", "kube-audit-admin", "kube-controller-manager", "cluster-autoscaler",
                    "guard"),
)


@package.schema_args
@dataclass
class GpuPoolArgs:
    """One GPU node pool."""

    name: str
    """Pool name (Linux: 1-12 lowercase alphanumerics)."""
    vm_size: str
    """A GPU size from components/gpu_sizes.py."""
    min_count: int
    """Autoscaler floor; 0 lets an idle dev pool cost nothing."""
    max_count: int
    """Autoscaler ceiling (the quota policy caps it)."""
    os_disk_size_gb: int = 256
    """Room for container images and model caches (an ephemeral disk must fit the VM's temp disk)."""
    os_disk_type: OsDiskType = OsDiskType.EPHEMERAL
    """Ephemeral: the OS disk lives on the VM's local disk (no managed disk to leak, faster reimage)."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra node labels; `inferforge.io/pool` is always set so workloads can target the pool."""
    zones: Sequence[str] | None = None
    """Availability zones (prod spreads GPU nodes when the size is zonal in the region)."""


@package.schema_args
@dataclass
class AksClusterArgs:
    """Arguments of `AksCluster`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the cluster resource."""
    location: pulumi.Input[str]
    """Azure region."""
    cluster_name: str
    """CAF name (`aks-<workload>-<env>`), also the DNS prefix."""
    node_resource_group: str
    """Name of the AKS-managed resource group (nodes, load balancers, the Private Link Service)."""
    tenant_id: pulumi.Input[str]
    """Entra tenant for cluster authentication."""
    node_subnet_id: pulumi.Input[str]
    """Subnet for node NICs (pods use the overlay CIDR)."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for Container Insights and control-plane logs."""
    gpu_pools: Sequence[GpuPoolArgs]
    """GPU node pools, each its own AgentPool resource."""
    kubernetes_version: str = limited("1.33", pattern=r"^1\.\d{2}(\.\d+)?$")
    """Control-plane version; patch upgrades follow the upgrade channel."""
    admin_group_object_ids: Sequence[str] = ()
    """Entra groups that get cluster-admin through Azure RBAC."""
    system_vm_size: str = limited("Standard_D4ds_v5", pattern=r"^Standard_[A-Za-z0-9_]+$")
    """System pool VM size."""
    system_min_count: int = limited(1, ge=1, le=100)
    """System pool autoscaler floor (prod: 3, one per zone)."""
    system_max_count: int = limited(3, ge=1, le=100)
    """System pool autoscaler ceiling."""
    system_zones: Sequence[str] | None = None
    """Zones of the system pool (prod: all three)."""
    system_os_disk_size_gb: int = 128
    """System pool OS disk; an ephemeral disk must fit the VM's temp disk."""
    system_os_disk_type: OsDiskType = OsDiskType.EPHEMERAL
    """Ephemeral OS disk on the system pool too."""
    encryption_at_host: bool = True
    """Encrypt temp disks, caches and ephemeral OS disks on the host; needs the subscription feature
    Microsoft.Compute/EncryptionAtHost registered once (README, first-time steps)."""
    outbound_type: OutboundType = OutboundType.USER_DEFINED_ROUTING
    """userDefinedRouting: node egress follows the node subnet's route table (default route to the firewall);
    AKS creates no outbound public IP."""
    egress_public_ip: pulumi.Input[str] | None = None
    """Public address egress leaves from (the firewall's); added to a public API server's authorized ranges,
    because nodes reach it through the firewall."""
    outbound_dependencies: Sequence[pulumi.Resource] = package.python_only(default=())
    """What must exist before the cluster: AKS checks the subnet's default route at creation."""
    private_cluster: bool = True
    """Private API server: reachable only from the VNet. A dev stack may instead use authorized ranges."""
    authorized_ip_ranges: Sequence[str] = ()
    """CIDRs allowed to reach a public API server (dev); ignored for a private cluster."""
    sku_tier: AksSkuTier = AksSkuTier.STANDARD
    """Standard gives the uptime SLA; Free is fine for dev."""
    upgrade_channel: UpgradeChannel = UpgradeChannel.PATCH
    """Automatic control-plane upgrades within the minor version."""
    node_os_upgrade_channel: NodeOsUpgradeChannel = NodeOsUpgradeChannel.NODE_IMAGE
    """Weekly node images carry OS security fixes."""
    pod_cidr: str = "192.168.0.0/16"
    """Overlay pod CIDR (not routable in the VNet, so it may repeat across clusters)."""
    service_cidr: str = "172.16.0.0/16"
    """Kubernetes service CIDR."""
    dns_service_ip: str = "172.16.0.10"
    """kube-dns service IP inside service_cidr."""
    blob_csi_driver: bool = False
    """Enable the Azure Blob CSI driver (and its `azureblob-*` storage classes); needed for Blob-backed PVCs."""
    azure_policy: bool = True
    """The Azure Policy add-on (Gatekeeper): image signature admission (`ImageIntegrity`) is enforced through it."""
    network_contributor_subnet_ids: Sequence[pulumi.Input[str]] = ()
    """Subnets where AKS itself creates network objects (internal LB frontend, Private Link Service NAT
    IPs): the cluster identity gets Network Contributor on each, which ARM deployments do not grant."""
    subscription_id: pulumi.Input[str] | None = None
    """Subscription of the role definitions (needed with `network_contributor_subnet_ids`)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


def _authorized_ranges(args: AksClusterArgs) -> pulumi.Input[list[str]]:
    """A public API server's authorized ranges, plus the egress address nodes reach it from.

    https://learn.microsoft.com/azure/aks/limit-egress-traffic: with authorized ranges and a firewall,
    the firewall's public IP must be in the ranges.
    """
    ranges = list(args.authorized_ip_ranges)
    if args.egress_public_ip is None:
        return ranges
    return pulumi.Output.from_input(args.egress_public_ip).apply(lambda ip: [*ranges, f"{ip}/32"])


class AksCluster(pulumi.ComponentResource):
    """A secure-by-default AKS cluster with a tainted system pool and GPU user pools."""

    cluster_name: pulumi.Output[str]
    """Name of the managed cluster."""
    cluster_id: pulumi.Output[str]
    """ARM id of the managed cluster."""
    oidc_issuer_url: pulumi.Output[str]
    """OIDC issuer of the cluster: federated credentials of workload identities trust it."""
    kubelet_identity_object_id: pulumi.Output[str]
    """Object id of the kubelet identity (AcrPull on the registry, Storage Blob Data Reader on the model store)."""
    kubelet_identity_client_id: pulumi.Output[str]
    """Client id of the kubelet identity (blobfuse2 on the nodes authenticates as it)."""
    identity_principal_id: pulumi.Output[str]
    """Principal id of the cluster identity (Network Contributor on the LB and Private Link subnets)."""
    gpu_pool_names: list[str]
    """Names of the GPU node pools, in the order of `gpu_pools`."""

    def __init__(self, name: str, args: AksClusterArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(AksClusterArgs, args)
        super().__init__("inferforge:index:AksCluster", name, None,
                         package.aliased(opts, "inferforge:compute:AksCluster"))
        tags = dict(args.tags)
        self.cluster = containerservice.ManagedCluster(
            f"{name}-cluster",
            resource_name_=args.cluster_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            dns_prefix=args.cluster_name,
            kubernetes_version=args.kubernetes_version,
            node_resource_group=args.node_resource_group,
            sku=containerservice.ManagedClusterSKUArgs(name="Base", tier=args.sku_tier),
            identity=containerservice.ManagedClusterIdentityArgs(type="SystemAssigned"),
            enable_rbac=True,
            disable_local_accounts=True,
            aad_profile=containerservice.ManagedClusterAADProfileArgs(
                managed=True, enable_azure_rbac=True, tenant_id=args.tenant_id,
                admin_group_object_ids=list(args.admin_group_object_ids),
            ),
            oidc_issuer_profile=containerservice.ManagedClusterOIDCIssuerProfileArgs(enabled=True),
            security_profile=containerservice.ManagedClusterSecurityProfileArgs(
                workload_identity=containerservice.ManagedClusterSecurityProfileWorkloadIdentityArgs(enabled=True),
                image_cleaner=containerservice.ManagedClusterSecurityProfileImageCleanerArgs(
                    enabled=True, interval_hours=48),
            ),
            api_server_access_profile=containerservice.ManagedClusterAPIServerAccessProfileArgs(
                enable_private_cluster=args.private_cluster,
                enable_private_cluster_public_fqdn=False,
                authorized_ip_ranges=None if args.private_cluster else _authorized_ranges(args),
            ),
            network_profile=containerservice.ContainerServiceNetworkProfileArgs(
                network_plugin="azure",
                network_plugin_mode="overlay",
                network_dataplane="cilium",
                network_policy="cilium",
                load_balancer_sku="standard",
                outbound_type=args.outbound_type,
                pod_cidr=args.pod_cidr,
                service_cidr=args.service_cidr,
                dns_service_ip=args.dns_service_ip,
            ),
            addon_profiles={
                "azureKeyvaultSecretsProvider": containerservice.ManagedClusterAddonProfileArgs(
                    enabled=True, config={"enableSecretRotation": "true", "rotationPollInterval": "2m"}),
                "azurepolicy": containerservice.ManagedClusterAddonProfileArgs(enabled=args.azure_policy),
                "omsagent": containerservice.ManagedClusterAddonProfileArgs(
                    enabled=True, config={"logAnalyticsWorkspaceResourceID": args.log_analytics_workspace_id,
                                          "useAADAuth": "true"}),
            },
            # The built-in azureblob-* storage classes exist only with the driver enabled:
            # https://learn.microsoft.com/azure/aks/azure-blob-csi#enable-csi-driver-on-a-new-or-existing-aks-cluster
            storage_profile=containerservice.ManagedClusterStorageProfileArgs(
                blob_csi_driver=containerservice.ManagedClusterStorageProfileBlobCSIDriverArgs(
                    enabled=args.blob_csi_driver)),
            auto_upgrade_profile=containerservice.ManagedClusterAutoUpgradeProfileArgs(
                upgrade_channel=args.upgrade_channel, node_os_upgrade_channel=args.node_os_upgrade_channel),
            agent_pool_profiles=[containerservice.ManagedClusterAgentPoolProfileArgs(
                name="system",
                mode="System",
                type="VirtualMachineScaleSets",
                vm_size=args.system_vm_size,
                os_type="Linux",
                os_sku="AzureLinux",
                count=args.system_min_count,
                enable_auto_scaling=True,
                min_count=args.system_min_count,
                max_count=args.system_max_count,
                availability_zones=list(args.system_zones) if args.system_zones else None,
                node_taints=[SYSTEM_TAINT],
                vnet_subnet_id=args.node_subnet_id,
                enable_node_public_ip=False,
                enable_encryption_at_host=args.encryption_at_host,
                os_disk_type=args.system_os_disk_type,
                os_disk_size_gb=args.system_os_disk_size_gb,
                max_pods=50,
            )],
            tags=tags,
            # Inline system pool changes go through the cluster; GPU pools are separate resources.
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["agentPoolProfiles[0].count"],
                                        depends_on=list(args.outbound_dependencies) or None),
        )

        self.gpu_pools = {}
        for pool in args.gpu_pools:
            size = GPU_VM_SIZES[pool.vm_size]
            self.gpu_pools[pool.name] = containerservice.AgentPool(
                f"{name}-pool-{pool.name}",
                agent_pool_name=pool.name,
                resource_name_=self.cluster.name,
                resource_group_name=args.resource_group_name,
                mode="User",
                type="VirtualMachineScaleSets",
                vm_size=pool.vm_size,
                os_type="Linux",
                # Ubuntu: Azure Linux rejects A100/H100 sizes, so every GPU pool uses one OS image family.
                os_sku="Ubuntu",
                os_disk_size_gb=pool.os_disk_size_gb,
                os_disk_type=pool.os_disk_type,
                enable_encryption_at_host=args.encryption_at_host,
                # Pinned like the system pool's (left out, the default depends on the network plugin).
                max_pods=50,
                count=pool.min_count,
                enable_auto_scaling=True,
                min_count=pool.min_count,
                max_count=pool.max_count,
                scale_down_mode="Delete",
                availability_zones=list(pool.zones) if pool.zones else None,
                node_taints=[GPU_TAINT],
                node_labels={"inferforge.io/pool": pool.name, "inferforge.io/gpu": size.gpu_model,
                             **dict(pool.labels)},
                # AKS installs the NVIDIA driver; fixed at creation, like the MIG profile.
                gpu_profile=containerservice.GPUProfileArgs(driver="Install"),
                vnet_subnet_id=args.node_subnet_id,
                enable_node_public_ip=False,
                orchestrator_version=args.kubernetes_version,
                tags=tags,
                # The autoscaler owns the live count.
                opts=pulumi.ResourceOptions(parent=self, ignore_changes=["count"]),
            )

        diagnostic_settings(f"{name}-cluster", resource_id=self.cluster.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self, categories=AKS_LOG_CATEGORIES)

        self.identity_principal_id = self.cluster.identity.apply(lambda i: i.principal_id if i else "")
        # AKS creates the internal LB frontend and the Private Link Service (NAT IPs in its subnet) with the
        # cluster identity; in subnets it did not create, that identity needs Network Contributor, which
        # `az aks create` grants for the node subnet but an ARM/Pulumi deployment does not.
        # https://learn.microsoft.com/azure/aks/internal-lb#before-you-begin
        # https://learn.microsoft.com/azure/aks/configure-azure-cni#prerequisites
        if args.network_contributor_subnet_ids and args.subscription_id is None:
            raise ValueError("AksClusterArgs.network_contributor_subnet_ids needs subscription_id")
        self.network_role_assignments = [
            role_assignment(f"{name}-network-contributor-{index}", scope=subnet_id,
                            principal_id=self.identity_principal_id, subscription_id=args.subscription_id or "",
                            role_guid=ROLE_NETWORK_CONTRIBUTOR, parent=self,
                            description="AKS cluster identity manages its internal LB and Private Link Service here")
            for index, subnet_id in enumerate(args.network_contributor_subnet_ids)
        ]
        self.oidc_issuer_url = self.cluster.oidc_issuer_profile.apply(lambda p: p.issuer_url if p else "")
        self.kubelet_identity_object_id = self.cluster.identity_profile.apply(
            lambda p: (p or {}).get("kubeletidentity").object_id if (p or {}).get("kubeletidentity") else "")
        # blobfuse2 on the nodes authenticates to the model store as this identity (components/model_store.py).
        self.kubelet_identity_client_id = self.cluster.identity_profile.apply(
            lambda p: (p or {}).get("kubeletidentity").client_id if (p or {}).get("kubeletidentity") else "")
        self.cluster_name = self.cluster.name
        self.cluster_id = self.cluster.id
        self.gpu_pool_names = list(self.gpu_pools)
        self.register_outputs({"cluster_name": self.cluster_name, "cluster_id": self.cluster_id,
                               "oidc_issuer_url": self.oidc_issuer_url,
                               "gpu_pool_names": self.gpu_pool_names})
