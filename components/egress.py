"""Deny-by-default egress: the AKS subnet's route table and the Azure Firewall its default route points to.

Design
------
AKS runs with ``outboundType: userDefinedRouting``: it creates no outbound public IP, and every packet a node
(or a pod, SNATed to its node) sends outside the VNet follows the node subnet's route table, whose only
route, ``0.0.0.0/0 -> VirtualAppliance``, goes to the firewall's private IP. Traffic inside the VNet (private
endpoints of Key Vault, Redis, the registry; the delegated PostgreSQL subnet) keeps the more specific VNet
system route and never touches the firewall. The firewall denies everything that no rule allows, and its
rules allow only what AKS documents as required plus the stack's allow-list:

* https://learn.microsoft.com/azure/aks/outbound-rules-control-egress (required network and FQDN rules)
* https://learn.microsoft.com/azure/aks/limit-egress-traffic (the Azure Firewall setup: the
  ``AzureKubernetesService`` FQDN tag application rule, the 1194/UDP and 9000/TCP network rules to
  ``AzureCloud.<region>`` for a public API server, the firewall public IP in a public API server's
  authorized ranges, the ``0.0.0.0/0`` route to the firewall's private IP).

Rules left out on purpose: ``ntp.ubuntu.com:123`` (not required for nodes provisioned after March 2021, and
a network FQDN rule needs the DNS proxy Basic lacks), ghcr.io / Docker Hub (images come from the platform's
registry through its private endpoint, system images from MCR via the FQDN tag).

SKU (https://learn.microsoft.com/azure/firewall/features-by-sku): Basic has application FQDN rules, FQDN and
service tags, but threat intelligence in alert mode only, no DNS proxy, 250 Mbps and a second (management)
subnet and public IP. Standard adds threat-intel Deny, DNS proxy and 30 Gbps; Premium adds TLS inspection
and IDPS. The same rules work on every tier, so dev can run Basic (cheapest; the egress allow-list, the
posture that matters here, is identical) and prod Standard or Premium with threat intelligence in Deny.

Hub and spoke: with a central firewall, the stack creates only the route table and points the default
route at the hub firewall's private IP (and peers the spoke to the hub VNet); the rules then live in the hub.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
from pulumi_azure_native import network

from . import package
from .common import diagnostic_settings
from .egress_endpoints import AKS_FQDN_TAG, ENTRA_FQDNS, GPU_DRIVER_FQDNS, azure_monitor_fqdns


class FirewallTier(StrEnum):
    """Azure Firewall SKU tier."""

    BASIC = "Basic"
    STANDARD = "Standard"
    PREMIUM = "Premium"


class ThreatIntelMode(StrEnum):
    """What the firewall does with traffic to known-malicious addresses."""

    ALERT = "Alert"
    DENY = "Deny"


@package.schema_args
@dataclass
class EgressRouteTableArgs:
    """Arguments of `EgressRouteTable`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the route table."""
    location: pulumi.Input[str]
    """Azure region."""
    route_table_name: str
    """CAF name (`rt-<workload>-<env>-aks`)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class EgressRouteTable(pulumi.ComponentResource):
    """The node subnet's route table; created before the subnet, its default route added once the next hop exists."""

    route_table_id: pulumi.Output[str]
    """ARM id of the node subnet's route table."""

    def __init__(self, name: str, args: EgressRouteTableArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(EgressRouteTableArgs, args)
        super().__init__("inferforge:index:EgressRouteTable", name, None,
                         package.aliased(opts, "inferforge:network:EgressRouteTable"))
        self._name = name
        self._args = args
        self.route_table = network.RouteTable(
            f"{name}-rt",
            route_table_name=args.route_table_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            # Gateway-propagated routes (a 0.0.0.0/0 learned from on-premises) must not bypass the firewall.
            disable_bgp_route_propagation=True,
            tags=dict(args.tags),
            # Routes are separate resources (the default route waits for the firewall's private IP).
            opts=pulumi.ResourceOptions(parent=self, ignore_changes=["routes"]),
        )
        self.route_table_id = self.route_table.id
        self.register_outputs({"route_table_id": self.route_table_id})

    def route_default_to(self, next_hop_ip: pulumi.Input[str]) -> network.Route:
        """0.0.0.0/0 -> the firewall (a VirtualAppliance next hop): the only way out of the node subnet."""
        return network.Route(
            f"{self._name}-default",
            route_name="default-to-firewall",
            route_table_name=self.route_table.name,
            resource_group_name=self._args.resource_group_name,
            address_prefix="0.0.0.0/0",
            next_hop_type="VirtualAppliance",
            next_hop_ip_address=next_hop_ip,
            opts=pulumi.ResourceOptions(parent=self),
        )


@package.schema_args
@dataclass
class EgressFirewallArgs:
    """Arguments of `EgressFirewall`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the firewall, its policy and public IPs."""
    location: str
    """Azure region (also the `AzureCloud.<region>` tag and the regional Azure Monitor endpoints)."""
    virtual_network_name: pulumi.Input[str]
    """VNet that gets the AzureFirewallSubnet (and AzureFirewallManagementSubnet for Basic)."""
    firewall_name: str
    """CAF name (`afw-...`)."""
    policy_name: str
    """CAF name of the firewall policy (`afwp-...`)."""
    public_ip_name: str
    """CAF name of the egress public IP (`pip-...`)."""
    subnet_prefix: str
    """AzureFirewallSubnet prefix (/26 or larger)."""
    source_prefixes: Sequence[str]
    """Where allowed traffic may come from: the AKS node subnet (pod traffic is SNATed to node IPs)."""
    sku_tier: FirewallTier = FirewallTier.STANDARD
    """Basic for dev cost, Standard/Premium for prod (module docstring)."""
    threat_intel_mode: ThreatIntelMode = ThreatIntelMode.DENY
    """Deny drops traffic to known-malicious addresses and domains; Basic supports Alert only."""
    management_subnet_prefix: str | None = None
    """AzureFirewallManagementSubnet prefix (/26), required by Basic."""
    management_public_ip_name: str | None = None
    """Management public IP name, required by Basic."""
    zones: Sequence[str] | None = None
    """Availability zones of the firewall and its public IPs (prod: all three)."""
    public_api_server: bool = False
    """Open the node-to-control-plane tunnel ports (1194/UDP, 9000/TCP); not needed for private clusters."""
    allowed_fqdns: Sequence[str] = ()
    """Extra HTTPS destinations (the stack's allow-list); validated by stacks/config."""
    log_analytics_workspace_id: pulumi.Input[str] | None = None
    """Workspace for the firewall's logs (every allowed and denied flow)."""
    subnet_dependencies: Sequence[pulumi.Resource] = package.python_only(default=())
    """Resources to wait for before adding subnets (Azure rejects concurrent subnet writes on one VNet)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


def _app_rule(name: str, sources: Sequence[str], *, fqdns: Sequence[str] = (), fqdn_tags: Sequence[str] = (),
              http: bool = False) -> network.ApplicationRuleArgs:
    protocols = [network.FirewallPolicyRuleApplicationProtocolArgs(protocol_type="Https", port=443)]
    if http:
        protocols.append(network.FirewallPolicyRuleApplicationProtocolArgs(protocol_type="Http", port=80))
    return network.ApplicationRuleArgs(
        name=name, rule_type="ApplicationRule", source_addresses=list(sources), protocols=protocols,
        target_fqdns=list(fqdns) or None, fqdn_tags=list(fqdn_tags) or None)


def _network_rule(name: str, sources: Sequence[str], *, protocol: str, destinations: Sequence[str],
                  port: int) -> network.NetworkRuleArgs:
    return network.NetworkRuleArgs(
        name=name, rule_type="NetworkRule", source_addresses=list(sources), ip_protocols=[protocol],
        destination_addresses=list(destinations), destination_ports=[str(port)])


def firewall_rule_collections(args: EgressFirewallArgs) -> list[object]:
    """The allow rules: AKS's required egress, GPU driver hosts, Entra ID, Azure Monitor and the allow-list."""
    sources = list(args.source_prefixes)
    network_rules = []
    if args.public_api_server:
        region_tag = f"AzureCloud.{args.location}"
        network_rules = [_network_rule("aks-tunnel-udp", sources, protocol="UDP", destinations=[region_tag], port=1194),
                         _network_rule("aks-tunnel-tcp", sources, protocol="TCP", destinations=[region_tag], port=9000)]
    app_rules = [
        _app_rule("aks-required", sources, fqdn_tags=[AKS_FQDN_TAG], http=True),
        _app_rule("gpu-driver", sources, fqdns=GPU_DRIVER_FQDNS),
        _app_rule("entra-id", sources, fqdns=ENTRA_FQDNS),
        _app_rule("azure-monitor", sources, fqdns=azure_monitor_fqdns(args.location)),
    ]
    if args.allowed_fqdns:
        app_rules.append(_app_rule("allow-list", sources, fqdns=args.allowed_fqdns))
    collections: list[object] = []
    if network_rules:
        collections.append(network.FirewallPolicyFilterRuleCollectionArgs(
            name="aks-network", priority=200, rule_collection_type="FirewallPolicyFilterRuleCollection",
            action=network.FirewallPolicyFilterRuleCollectionActionArgs(type="Allow"), rules=network_rules))
    collections.append(network.FirewallPolicyFilterRuleCollectionArgs(
        name="aks-application", priority=300, rule_collection_type="FirewallPolicyFilterRuleCollection",
        action=network.FirewallPolicyFilterRuleCollectionActionArgs(type="Allow"), rules=app_rules))
    return collections


class EgressFirewall(pulumi.ComponentResource):
    """Azure Firewall with a policy that allows only AKS's documented egress and the stack's allow-list."""

    private_ip: pulumi.Output[str]
    """Private IP of the firewall: the next hop of the node subnet's default route."""
    public_ip_address: pulumi.Output[str]
    """Public egress IP of the firewall (allow-list it at destinations that filter by source)."""
    firewall_id: pulumi.Output[str]
    """ARM id of the firewall."""

    def __init__(self, name: str, args: EgressFirewallArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(EgressFirewallArgs, args)
        super().__init__("inferforge:index:EgressFirewall", name, None,
                         package.aliased(opts, "inferforge:network:EgressFirewall"))
        basic = args.sku_tier == "Basic"
        if basic and not (args.management_subnet_prefix and args.management_public_ip_name):
            raise ValueError("Azure Firewall Basic needs management_subnet_prefix and management_public_ip_name")
        if basic and args.threat_intel_mode == "Deny":
            raise ValueError("Azure Firewall Basic supports threat intelligence in Alert mode only")
        tags = dict(args.tags)
        zones = list(args.zones) if args.zones else None

        subnet = network.Subnet(
            f"{name}-snet",
            subnet_name="AzureFirewallSubnet",  # the name Azure requires
            resource_group_name=args.resource_group_name,
            virtual_network_name=args.virtual_network_name,
            address_prefix=args.subnet_prefix,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(args.subnet_dependencies) or None),
        )
        management_subnet = None
        if basic:
            management_subnet = network.Subnet(
                f"{name}-mgmt-snet",
                subnet_name="AzureFirewallManagementSubnet",
                resource_group_name=args.resource_group_name,
                virtual_network_name=args.virtual_network_name,
                address_prefix=args.management_subnet_prefix,
                opts=pulumi.ResourceOptions(parent=self, depends_on=[subnet]),
            )

        def public_ip(suffix: str, ip_name: str) -> network.PublicIPAddress:
            return network.PublicIPAddress(
                f"{name}-{suffix}",
                public_ip_address_name=ip_name,
                resource_group_name=args.resource_group_name,
                location=args.location,
                sku=network.PublicIPAddressSkuArgs(name="Standard", tier="Regional"),
                public_ip_allocation_method="Static",
                public_ip_address_version="IPv4",
                zones=zones,
                tags=tags,
                opts=pulumi.ResourceOptions(parent=self),
            )

        self.public_ip = public_ip("pip", args.public_ip_name)
        management_ip = public_ip("mgmt-pip", args.management_public_ip_name or "") if basic else None

        self.policy = network.FirewallPolicy(
            f"{name}-policy",
            firewall_policy_name=args.policy_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=network.FirewallPolicySkuArgs(tier=args.sku_tier),
            threat_intel_mode=args.threat_intel_mode,
            # DNS proxy (Standard/Premium) makes FQDN resolution consistent between clients and the firewall.
            dns_settings=None if basic else network.DnsSettingsArgs(enable_proxy=True),
            intrusion_detection=network.FirewallPolicyIntrusionDetectionArgs(mode="Deny")
            if args.sku_tier == "Premium" else None,
            tags=tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        rules = network.FirewallPolicyRuleCollectionGroup(
            f"{name}-rules",
            rule_collection_group_name="aks-egress",
            firewall_policy_name=self.policy.name,
            resource_group_name=args.resource_group_name,
            priority=200,
            rule_collections=firewall_rule_collections(args),
            opts=pulumi.ResourceOptions(parent=self.policy),
        )

        self.firewall = network.AzureFirewall(
            f"{name}-firewall",
            azure_firewall_name=args.firewall_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            sku=network.AzureFirewallSkuArgs(name="AZFW_VNet", tier=args.sku_tier),
            firewall_policy=network.SubResourceArgs(id=self.policy.id),
            ip_configurations=[network.AzureFirewallIPConfigurationArgs(
                name="egress", subnet=network.SubResourceArgs(id=subnet.id),
                public_ip_address=network.SubResourceArgs(id=self.public_ip.id))],
            management_ip_configuration=network.AzureFirewallIPConfigurationArgs(
                name="management", subnet=network.SubResourceArgs(id=management_subnet.id),
                public_ip_address=network.SubResourceArgs(id=management_ip.id))
            if management_subnet is not None and management_ip is not None else None,
            zones=zones,
            tags=tags,
            # The rules must exist before traffic is routed through the firewall.
            opts=pulumi.ResourceOptions(parent=self, depends_on=[rules]),
        )
        self.private_ip = self.firewall.ip_configurations.apply(
            lambda configs: (configs or [])[0].private_ip_address if configs else None)  # type: ignore[arg-type]
        self.public_ip_address = self.public_ip.ip_address  # type: ignore[assignment]
        if args.log_analytics_workspace_id is not None:
            diagnostic_settings(f"{name}-firewall", resource_id=self.firewall.id,
                                workspace_id=args.log_analytics_workspace_id, parent=self)
        self.firewall_id = self.firewall.id
        self.register_outputs({"private_ip": self.private_ip, "public_ip_address": self.public_ip_address,
                               "firewall_id": self.firewall_id})


@dataclass
class HubPeeringArgs:
    """Arguments of `hub_peering`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the spoke VNet."""
    virtual_network_name: pulumi.Input[str]
    """The spoke (this stack's) VNet."""
    hub_vnet_id: str
    """ARM id of the hub VNet; the hub owner creates the hub-to-spoke side."""


def hub_peering(name: str, args: HubPeeringArgs, parent: pulumi.Resource | None = None
                ) -> network.VirtualNetworkPeering:
    """Spoke-to-hub peering that accepts forwarded traffic (the hub firewall returns traffic it forwarded)."""
    return network.VirtualNetworkPeering(
        f"{name}-to-hub",
        virtual_network_peering_name="to-hub",
        resource_group_name=args.resource_group_name,
        virtual_network_name=args.virtual_network_name,
        remote_virtual_network=network.SubResourceArgs(id=args.hub_vnet_id),
        allow_virtual_network_access=True,
        allow_forwarded_traffic=True,
        allow_gateway_transit=False,
        use_remote_gateways=False,
        opts=pulumi.ResourceOptions(parent=parent),
    )
