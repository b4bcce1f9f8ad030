"""Container registry: the one place AKS pulls images from (ours and mirrored third-party ones).

Premium, because private endpoints (and trusted-services access, zone redundancy) are Premium
features. Private by default: public network access disabled, a private endpoint registered in
`privatelink.azurecr.io`, the admin user (a shared static credential) and anonymous pull off. AKS
pulls with its kubelet identity, which gets AcrPull on this registry only.

Getting images in without a public endpoint (README, "Images"): `az acr import` copies from public
registries and from other Azure registries through Azure's control plane, so mirroring third-party
images needs no network path to this registry; the trusted-services bypass is what lets an import from
another Azure registry (e.g. a build registry used by `az acr build`) reach a network-restricted one.
https://learn.microsoft.com/azure/container-registry/container-registry-import-images
https://learn.microsoft.com/azure/container-registry/allow-access-trusted-services
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import containerregistry

from . import package
from .common import (
    ROLE_ACR_PULL,
    PublicNetworkAccess,
    diagnostic_settings,
    private_endpoint,
    resource_lock,
    role_assignment,
)

SKU = "Premium"


def login_server(registry_name: str) -> str:
    """The registry's login server in Azure public cloud: the lowercase name under azurecr.io.

    Known before the registry exists, so image references (and the policies that check them) are
    plain strings at plan time.
    https://learn.microsoft.com/azure/container-registry/container-registry-get-started-portal
    """
    return f"{registry_name.lower()}.azurecr.io"


@package.schema_args
@dataclass
class ContainerRegistryArgs:
    """Arguments of `ContainerRegistry`; defaults are the secure choice."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the registry."""
    location: pulumi.Input[str]
    """Azure region."""
    registry_name: str
    """Globally unique name (5-50 alphanumerics); the login server is `<name>.azurecr.io`."""
    subscription_id: pulumi.Input[str]
    """Subscription of the AcrPull role definition."""
    private_endpoint_subnet_id: pulumi.Input[str]
    """Subnet of the registry's private endpoint."""
    private_dns_zone_id: pulumi.Input[str]
    """`privatelink.azurecr.io` zone the endpoint registers its records in (registry + data endpoints)."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for repository and login audit logs."""
    pull_principal_ids: Sequence[pulumi.Input[str]] = ()
    """Principals that get AcrPull (the AKS kubelet identity): pull only, nothing else."""
    public_network_access: PublicNetworkAccess = PublicNetworkAccess.DISABLED
    """Disabled: only the private endpoint (and `az acr import`, a control-plane copy) reaches it."""
    replica_locations: Sequence[str] = ()
    """Other regions that get a geo-replica (a `Replication` each, Premium): a regional AKS pulls from its local
    replica through the same login server, and the images survive the loss of the home region."""
    lock: bool = False
    """CanNotDelete lock (prod): the images the cluster runs live here."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class ContainerRegistry(pulumi.ComponentResource):
    """A Premium, private Azure Container Registry that the AKS kubelet identity may pull from."""

    registry_id: pulumi.Output[str]
    """ARM id of the registry."""
    login_server: str
    """Registry host images are pulled from (`<name>.azurecr.io`)."""

    def __init__(self, name: str, args: ContainerRegistryArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ContainerRegistryArgs, args)
        super().__init__("inferforge:index:ContainerRegistry", name, None,
                         package.aliased(opts, "inferforge:containers:ContainerRegistry"))
        self.registry = containerregistry.Registry(
            f"{name}-registry",
            registry_name=args.registry_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=containerregistry.SkuArgs(name=SKU),
            admin_user_enabled=False,
            anonymous_pull_enabled=False,
            public_network_access=args.public_network_access,
            network_rule_set=containerregistry.NetworkRuleSetArgs(default_action="Deny", ip_rules=[]),
            # Trusted Azure services (ACR import from another registry, ACR Tasks) may still reach it.
            network_rule_bypass_options="AzureServices",
            data_endpoint_enabled=False,
            # Premium replicates across the region's availability zones at no extra charge; a zone outage
            # must not stop node pools from pulling (https://learn.microsoft.com/azure/container-registry/zone-redundancy).
            zone_redundancy="Enabled",
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.replications = [
            containerregistry.Replication(
                f"{name}-replica-{location}",
                replication_name=location,
                registry_name=self.registry.name,
                resource_group_name=args.resource_group_name,
                location=location,
                zone_redundancy="Enabled",
                region_endpoint_enabled=True,
                tags=dict(args.tags),
                opts=pulumi.ResourceOptions(parent=self.registry),
            )
            for location in args.replica_locations
        ]
        private_endpoint(
            f"{name}-pe",
            resource_group_name=args.resource_group_name,
            location=args.location,
            subnet_id=args.private_endpoint_subnet_id,
            target_resource_id=self.registry.id,
            group_id="registry",
            private_dns_zone_id=args.private_dns_zone_id,
            tags=args.tags,
            parent=self,
        )
        diagnostic_settings(f"{name}-registry", resource_id=self.registry.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self)
        self.pull_role_assignments = [
            role_assignment(
                f"{name}-acrpull-{index}", scope=self.registry.id, principal_id=principal,
                subscription_id=args.subscription_id, role_guid=ROLE_ACR_PULL, parent=self,
                description="AKS kubelet identity pulls the platform's images")
            for index, principal in enumerate(args.pull_principal_ids)
        ]
        if args.lock:
            resource_lock(f"{name}-registry", scope_resource=self.registry, parent=self)

        self.login_server = login_server(args.registry_name)
        self.registry_id = self.registry.id
        self.register_outputs({"registry_id": self.registry_id, "login_server": self.login_server})
