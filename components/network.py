"""Network: the VNet, its subnets (each with an NSG) and the private DNS zones of private endpoints.

`ExistingNetwork` is the bring-your-own spoke of a landing zone: the same outputs, only the DNS zones created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import network, privatedns

from . import package
from .common import METRICS_ONLY, DiagnosticCategories, diagnostic_settings

# Private DNS zones for the private endpoints this platform creates (Azure public cloud).
KEY_VAULT_DNS_ZONE = "privatelink.vaultcore.azure.net"
MANAGED_REDIS_DNS_ZONE = "privatelink.redis.azure.net"
# https://learn.microsoft.com/azure/private-link/private-endpoint-dns#containers
CONTAINER_REGISTRY_DNS_ZONE = "privatelink.azurecr.io"
# https://learn.microsoft.com/azure/private-link/private-endpoint-dns#storage (group `blob`: the model store)
BLOB_DNS_ZONE = "privatelink.blob.core.windows.net"

NSG_LOG_CATEGORIES = DiagnosticCategories(log_category_groups=("allLogs",), metrics=False)


@package.schema_args
@dataclass
class NetworkArgs:
    """Arguments of `Network`. Address prefixes are validated (inside the VNet, no overlap) by stacks/config."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the network."""
    location: pulumi.Input[str]
    """Azure region."""
    vnet_name: str
    """CAF name of the VNet."""
    address_space: str
    """VNet CIDR."""
    aks_subnet_prefix: str
    """Subnet for AKS nodes (Azure CNI overlay: pods get overlay IPs, so a /22-/20 is plenty)."""
    private_endpoint_subnet_prefix: str
    """Subnet for private endpoints of Key Vault, Managed Redis, the container registry and the model store."""
    postgres_subnet_prefix: str
    """Subnet delegated to Microsoft.DBforPostgreSQL/flexibleServers (private access, no public IP)."""
    private_link_subnet_prefix: str
    """Subnet of the Private Link Service that fronts the AKS internal load balancer for Front Door."""
    postgres_dns_zone_name: str
    """Private DNS zone of the PostgreSQL server; must end in `.postgres.database.azure.com`."""
    serving_port: int = 8000
    """Port of the inference service; the only port the PLS subnet may reach on AKS nodes."""
    log_analytics_workspace_id: pulumi.Input[str] | None = None
    """Workspace for NSG and VNet diagnostics (None disables them, only for unit tests)."""
    aks_route_table_id: pulumi.Input[str] | None = None
    """Route table of the AKS subnet (default route to the egress firewall); None leaves Azure's system routes."""
    existing_dns_zone_ids: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Central private DNS zones (hub and spoke) by key (`key_vault`, `redis`, `postgres`, `blob`); not created here."""
    dns_servers: Sequence[str] = ()
    """Custom DNS servers (a hub's resolver for central zones); empty keeps Azure-provided DNS."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


def private_dns_zones(name: str, postgres_zone_name: str, existing: Mapping[str, pulumi.Input[str]], *,
                      resource_group_name: pulumi.Input[str], vnet_id: pulumi.Input[str], link_name: str,
                      tags: Mapping[str, str], parent: pulumi.Resource) -> dict[str, pulumi.Output[str]]:
    """The private endpoints' DNS zone ids: each one from `existing` (a hub's central zone), else a new zone linked
    to the VNet."""
    zone_ids: dict[str, pulumi.Output[str]] = {}
    for key, zone_name in {
        "key_vault": KEY_VAULT_DNS_ZONE,
        "redis": MANAGED_REDIS_DNS_ZONE,
        "container_registry": CONTAINER_REGISTRY_DNS_ZONE,
        "blob": BLOB_DNS_ZONE,
        "postgres": postgres_zone_name,
    }.items():
        if key in existing:
            # A landing zone's central zone, already linked to the hub; records still come from the zone groups.
            zone_ids[key] = pulumi.Output.from_input(existing[key])
            continue
        zone = privatedns.PrivateZone(
            f"{name}-dns-{key}",
            private_zone_name=zone_name,
            resource_group_name=resource_group_name,
            location="Global",
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=parent),
        )
        privatedns.VirtualNetworkLink(
            f"{name}-dns-{key}-link",
            virtual_network_link_name=link_name,
            private_zone_name=zone.name,
            resource_group_name=resource_group_name,
            location="Global",
            virtual_network=privatedns.SubResourceArgs(id=vnet_id),
            # Records come from private endpoint DNS zone groups, not VM auto-registration.
            registration_enabled=False,
            tags=dict(tags),
            opts=pulumi.ResourceOptions(parent=zone),
        )
        zone_ids[key] = zone.id
    return zone_ids


def _deny_internet_inbound() -> network.SecurityRuleArgs:
    # Explicit, so the intent survives someone adding an allow rule at a lower priority number later.
    return network.SecurityRuleArgs(
        name="deny-internet-inbound", priority=4000, direction="Inbound", access="Deny", protocol="*",
        source_address_prefix="Internet", source_port_range="*",
        destination_address_prefix="*", destination_port_range="*",
    )


class Network(pulumi.ComponentResource):
    """VNet with four subnets, an NSG on each, and private DNS zones linked to the VNet."""

    vnet_id: pulumi.Output[str]
    """ARM id of the VNet."""
    subnet_ids: dict[str, pulumi.Output[str]]
    """Subnet ids by key: `aks`, `private-endpoints`, `postgres`, `private-link`."""
    dns_zone_ids: dict[str, pulumi.Output[str]]
    """Private DNS zone ids by key: `key_vault`, `redis`, `container_registry`, `blob`, `postgres`."""

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(NetworkArgs, args)
        super().__init__("inferforge:index:Network", name, None, package.aliased(opts, "inferforge:network:Network"))
        tags = dict(args.tags)
        child = pulumi.ResourceOptions(parent=self)

        self.vnet = network.VirtualNetwork(
            f"{name}-vnet",
            virtual_network_name=args.vnet_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            address_space=network.AddressSpaceArgs(address_prefixes=[args.address_space]),
            dhcp_options=network.DhcpOptionsArgs(dns_servers=list(args.dns_servers)) if args.dns_servers else None,
            # Subnets are separate resources; leaving them out here keeps the VNet from fighting them.
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["subnets"]),
        )

        nsg_rules: dict[str, Sequence[network.SecurityRuleArgs]] = {
            "aks": [
                network.SecurityRuleArgs(
                    name="allow-private-link-to-serving", priority=200, direction="Inbound", access="Allow",
                    protocol="Tcp", source_address_prefix=args.private_link_subnet_prefix, source_port_range="*",
                    destination_address_prefix=args.aks_subnet_prefix,
                    destination_port_range=str(args.serving_port),
                ),
                _deny_internet_inbound(),
            ],
            "private-endpoints": [_deny_internet_inbound()],
            "postgres": [_deny_internet_inbound()],
            "private-link": [_deny_internet_inbound()],
        }
        prefixes = {
            "aks": args.aks_subnet_prefix,
            "private-endpoints": args.private_endpoint_subnet_prefix,
            "postgres": args.postgres_subnet_prefix,
            "private-link": args.private_link_subnet_prefix,
        }
        self.subnet_ids = {}
        self.nsgs: dict[str, network.NetworkSecurityGroup] = {}
        previous: pulumi.Resource | None = None
        for key, prefix in prefixes.items():
            nsg = network.NetworkSecurityGroup(
                f"{name}-nsg-{key}",
                network_security_group_name=f"nsg-{args.vnet_name.removeprefix('vnet-')}-{key}",
                resource_group_name=args.resource_group_name,
                location=args.location,
                security_rules=list(nsg_rules[key]),
                tags=tags,
                opts=child,
            )
            self.nsgs[key] = nsg
            subnet = network.Subnet(
                f"{name}-snet-{key}",
                subnet_name=f"snet-{key}",
                resource_group_name=args.resource_group_name,
                virtual_network_name=self.vnet.name,
                address_prefix=prefix,
                network_security_group=network.NetworkSecurityGroupArgs(id=nsg.id),
                # No implicit outbound IP: egress goes through the AKS load balancer / NAT explicitly.
                default_outbound_access=False,
                delegations=[network.DelegationArgs(
                    name="postgres-flexible-server",
                    service_name="Microsoft.DBforPostgreSQL/flexibleServers",
                )] if key == "postgres" else None,
                # The PLS subnet must turn off PLS network policies so the PLS can take NAT IPs there.
                private_link_service_network_policies="Disabled" if key == "private-link" else "Enabled",
                private_endpoint_network_policies="Enabled",
                route_table=network.RouteTableArgs(id=args.aks_route_table_id)
                if key == "aks" and args.aks_route_table_id is not None else None,
                # Azure rejects concurrent subnet writes on one VNet (AnotherOperationInProgress): chain them.
                opts=pulumi.ResourceOptions(parent=self, depends_on=[previous] if previous else None),
            )
            previous = subnet
            self.subnet_ids[key] = subnet.id

        self.dns_zone_ids = private_dns_zones(name, args.postgres_dns_zone_name, args.existing_dns_zone_ids,
                                              resource_group_name=args.resource_group_name, vnet_id=self.vnet.id,
                                              link_name=f"link-{args.vnet_name}", tags=tags, parent=self)

        if args.log_analytics_workspace_id is not None:
            diagnostic_settings(f"{name}-vnet", resource_id=self.vnet.id,
                                workspace_id=args.log_analytics_workspace_id, parent=self, categories=METRICS_ONLY)
            for key, nsg in self.nsgs.items():
                diagnostic_settings(f"{name}-nsg-{key}", resource_id=nsg.id,
                                    workspace_id=args.log_analytics_workspace_id, parent=self,
                                    categories=NSG_LOG_CATEGORIES)

        self.vnet_id = self.vnet.id
        self.register_outputs({"vnet_id": self.vnet_id, "subnet_ids": self.subnet_ids,
                               "dns_zone_ids": self.dns_zone_ids})


@dataclass(frozen=True)
class VnetRef:
    """The VNet's id and name, as outputs (what the program reads of a created or an existing VNet)."""

    id: pulumi.Output[str]
    name: pulumi.Output[str]


@package.schema_args
@dataclass
class ExistingNetworkArgs:
    """Arguments of `ExistingNetwork`: a landing zone's spoke, created and peered by the platform team."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the private DNS zones this stack creates."""
    vnet_id: str
    """ARM id of the existing spoke VNet."""
    subnet_names: Mapping[str, str]
    """Existing subnets by key (`aks`, `private-endpoints`, `postgres`, `private-link`), inside that VNet."""
    postgres_dns_zone_name: str
    """Private DNS zone of the PostgreSQL server; must end in `.postgres.database.azure.com`."""
    existing_dns_zone_ids: Mapping[str, pulumi.Input[str]] = field(default_factory=dict)
    """Central private DNS zones by key; the others are created here and linked to the existing VNet."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class ExistingNetwork(pulumi.ComponentResource):
    """A bring-your-own spoke: the same outputs as `Network`, but no VNet, subnet, NSG, route or peering is
    registered. Their NSGs, the postgres delegation, the PLS subnet's network policies and the node subnet's
    route to the hub firewall are the landing zone's (README, Hub and spoke)."""

    vnet_id: pulumi.Output[str]
    """ARM id of the VNet."""
    subnet_ids: dict[str, pulumi.Output[str]]
    """Subnet ids by key: `aks`, `private-endpoints`, `postgres`, `private-link`."""
    dns_zone_ids: dict[str, pulumi.Output[str]]
    """Private DNS zone ids by key: `key_vault`, `redis`, `container_registry`, `blob`, `postgres`."""

    def __init__(self, name: str, args: ExistingNetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ExistingNetworkArgs, args)
        super().__init__("inferforge:index:ExistingNetwork", name, None,
                         package.aliased(opts, "inferforge:network:ExistingNetwork"))
        expected = {"aks", "private-endpoints", "postgres", "private-link"}
        if set(args.subnet_names) != expected:
            raise ValueError(f"ExistingNetworkArgs.subnet_names needs exactly {sorted(expected)}")
        self.vnet = VnetRef(id=pulumi.Output.from_input(args.vnet_id),
                            name=pulumi.Output.from_input(args.vnet_id.rstrip("/").rsplit("/", 1)[-1]))
        self.subnet_ids = {key: pulumi.Output.from_input(f"{args.vnet_id}/subnets/{subnet}")
                           for key, subnet in args.subnet_names.items()}
        self.dns_zone_ids = private_dns_zones(name, args.postgres_dns_zone_name, args.existing_dns_zone_ids,
                                              resource_group_name=args.resource_group_name, vnet_id=args.vnet_id,
                                              link_name=f"link-{args.vnet_id.rsplit('/', 1)[-1]}",
                                              tags=args.tags, parent=self)
        self.vnet_id = self.vnet.id
        self.register_outputs({"vnet_id": self.vnet_id, "subnet_ids": self.subnet_ids,
                               "dns_zone_ids": self.dns_zone_ids})
