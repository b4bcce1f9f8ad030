"""Network: the VNet, its subnets (each with an NSG) and the private DNS zones of private endpoints."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import network, privatedns

from components.common import METRICS_ONLY, DiagnosticCategories, diagnostic_settings

# Private DNS zones for the private endpoints this platform creates (Azure public cloud).
KEY_VAULT_DNS_ZONE = "privatelink.vaultcore.azure.net"
MANAGED_REDIS_DNS_ZONE = "privatelink.redis.azure.net"
# https://learn.microsoft.com/azure/private-link/private-endpoint-dns#containers
CONTAINER_REGISTRY_DNS_ZONE = "privatelink.azurecr.io"
# https://learn.microsoft.com/azure/private-link/private-endpoint-dns#storage (group `blob`: the model store)
BLOB_DNS_ZONE = "privatelink.blob.core.windows.net"

NSG_LOG_CATEGORIES = DiagnosticCategories(log_category_groups=("allLogs",), metrics=False)


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


def _deny_internet_inbound() -> network.SecurityRuleArgs:
    # Explicit, so the intent survives someone adding an allow rule at a lower priority number later.
    return network.SecurityRuleArgs(
        name="deny-internet-inbound", priority=4000, direction="Inbound", access="Deny", protocol="*",
        source_address_prefix="Internet", source_port_range="*",
        destination_address_prefix="*", destination_port_range="*",
    )


class Network(pulumi.ComponentResource):
    """VNet with four subnets, an NSG on each, and private DNS zones linked to the VNet."""

    vnet: network.VirtualNetwork
    subnet_ids: dict[str, pulumi.Output[str]]
    dns_zone_ids: dict[str, pulumi.Output[str]]

    def __init__(self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("inferforge:network:Network", name, None, opts)
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

        self.dns_zone_ids = {}
        for key, zone_name in {
            "key_vault": KEY_VAULT_DNS_ZONE,
            "redis": MANAGED_REDIS_DNS_ZONE,
            "container_registry": CONTAINER_REGISTRY_DNS_ZONE,
            "blob": BLOB_DNS_ZONE,
            "postgres": args.postgres_dns_zone_name,
        }.items():
            if key in args.existing_dns_zone_ids:
                # A landing zone's central zone, already linked to the hub; records still come from the zone groups.
                self.dns_zone_ids[key] = pulumi.Output.from_input(args.existing_dns_zone_ids[key])
                continue
            zone = privatedns.PrivateZone(
                f"{name}-dns-{key}",
                private_zone_name=zone_name,
                resource_group_name=args.resource_group_name,
                location="Global",
                tags=tags,
                opts=child,
            )
            privatedns.VirtualNetworkLink(
                f"{name}-dns-{key}-link",
                virtual_network_link_name=f"link-{args.vnet_name}",
                private_zone_name=zone.name,
                resource_group_name=args.resource_group_name,
                location="Global",
                virtual_network=privatedns.SubResourceArgs(id=self.vnet.id),
                # Records come from private endpoint DNS zone groups, not VM auto-registration.
                registration_enabled=False,
                tags=tags,
                opts=pulumi.ResourceOptions(parent=zone),
            )
            self.dns_zone_ids[key] = zone.id

        if args.log_analytics_workspace_id is not None:
            diagnostic_settings(f"{name}-vnet", resource_id=self.vnet.id,
                                workspace_id=args.log_analytics_workspace_id, parent=self, categories=METRICS_ONLY)
            for key, nsg in self.nsgs.items():
                diagnostic_settings(f"{name}-nsg-{key}", resource_id=nsg.id,
                                    workspace_id=args.log_analytics_workspace_id, parent=self,
                                    categories=NSG_LOG_CATEGORIES)

        self.register_outputs({"vnet_id": self.vnet.id, "subnet_ids": self.subnet_ids,
                               "dns_zone_ids": self.dns_zone_ids})
