"""Egress: cluster traffic leaves only through the egress firewall, and pods only where they need to go."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    PolicyResource,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from .common import as_list, lookup, references, require_value, resource_policy, resources_of, same, stack_policy

AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
SUBNET = "azure-native:network:Subnet"
ROUTE_TABLE = "azure-native:network:RouteTable"
ROUTE = "azure-native:network:Route"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"

_DEFAULT_ROUTES = {"0.0.0.0/0", "::/0"}
_SUBNET_ID = re.compile(r"(?i)^/subscriptions/[0-9a-f-]{36}/resourceGroups/[^/]+/providers/Microsoft\.Network/"
                        r"virtualNetworks/(?P<vnet>[^/]+)/subnets/(?P<subnet>[^/]+)$")


def _node_subnets(cluster: PolicyResource, resources: list[PolicyResource]) -> list[PolicyResource]:
    """Subnets the cluster's pools (inline profiles and separate AgentPools) put nodes in."""
    subnets = [s for s in resources_of(resources, SUBNET) if references(cluster, "agentPoolProfiles", s)]
    for pool in resources_of(resources, AGENT_POOL):
        if references(pool, "resourceName", cluster) or same(pool.props.get("resourceName"), cluster.props.get(
                "resourceName")):
            subnets += [s for s in resources_of(resources, SUBNET)
                        if references(pool, "vnetSubnetID", s) and s not in subnets]
    return subnets


def _landing_zone_subnet_ids(cluster: PolicyResource, resources: list[PolicyResource]) -> list[str]:
    """The cluster's node subnet ids if every pool names a literal subnet id outside this stack (a landing zone's
    spoke); else []. A literal id of a subnet this stack declares does not count: its route table is checkable."""
    pool_ids = [p.get("vnetSubnetID") for p in as_list(cluster.props.get("agentPoolProfiles"))]
    pool_ids += [pool.props.get("vnetSubnetID") for pool in resources_of(resources, AGENT_POOL)
                 if references(pool, "resourceName", cluster)
                 or same(pool.props.get("resourceName"), cluster.props.get("resourceName"))]
    declared = {(str(s.props.get("virtualNetworkName", "")).lower(), str(s.props.get("subnetName", "")).lower())
                for s in resources_of(resources, SUBNET)}
    ids = []
    for subnet_id in pool_ids:
        match = _SUBNET_ID.match(subnet_id) if isinstance(subnet_id, str) else None
        if match is None or (match["vnet"].lower(), match["subnet"].lower()) in declared:
            return []
        ids.append(subnet_id)
    return ids


def _default_routes(table: PolicyResource, resources: list[PolicyResource]) -> Iterator[Mapping[str, Any]]:
    """The table's 0.0.0.0/0 routes: inline ones and separate Route resources naming the table."""
    for route in as_list(table.props.get("routes")):
        if route.get("addressPrefix") in _DEFAULT_ROUTES:
            yield route
    for route in resources_of(resources, ROUTE):
        linked = references(route, "routeTableName", table) or same(
            route.props.get("routeTableName"), table.props.get("routeTableName"))
        if linked and route.props.get("addressPrefix") in _DEFAULT_ROUTES:
            yield route.props


def _subnet_routes_to_appliance(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = list(args.resources)
    for cluster in resources_of(resources, AKS):
        subnets = _node_subnets(cluster, resources)
        external = [] if subnets else _landing_zone_subnet_ids(cluster, resources)
        if external and same(lookup(cluster.props, "networkProfile.outboundType"), "userDefinedRouting"):
            # A landing zone's spoke (network.existingVnetId): its route table is the platform team's, and AKS
            # refuses userDefinedRouting unless the subnet's 0.0.0.0/0 goes to an appliance, not the Internet
            # (https://learn.microsoft.com/azure/aks/egress-udr).
            continue
        if external:
            report(f"node subnet '{external[0].rsplit('/', 1)[-1]}' is a landing zone's (not in this stack) and "
                   "networkProfile.outboundType is not userDefinedRouting: egress bypasses the hub firewall.",
                   cluster.urn)
            continue
        if not subnets:
            report("the cluster's node subnet is not a subnet of this stack, so its route table cannot be checked; "
                   "node pools must use a subnet whose default route goes to the egress firewall.", cluster.urn)
        for subnet in subnets:
            tables = [t for t in resources_of(resources, ROUTE_TABLE)
                      if lookup(subnet.props, "routeTable.id") and references(subnet, "routeTable", t)]
            if not tables:
                report(f"node subnet '{subnet.props.get('subnetName')}' has no route table of this stack: its "
                       "default route is Azure's, straight to the Internet.", subnet.urn)
                continue
            for table in tables:
                routes = list(_default_routes(table, resources))
                if not routes:
                    report(f"route table '{table.props.get('routeTableName')}' of node subnet "
                           f"'{subnet.props.get('subnetName')}' has no 0.0.0.0/0 route.", table.urn)
                for route in routes:
                    if not same(route.get("nextHopType"), "VirtualAppliance") or not route.get("nextHopIpAddress"):
                        report(f"route table '{table.props.get('routeTableName')}' sends 0.0.0.0/0 to "
                               f"{route.get('nextHopType')!r}; it must go to the egress firewall "
                               "(nextHopType VirtualAppliance with its private IP).", table.urn)


def _peers(rule: Mapping[str, Any]) -> list[Any]:
    return as_list(rule.get("to"))


def _network_policy_egress(args: ResourceValidationArgs, report: ReportViolation) -> None:
    min_prefix = int(args.get_config().get("minPrefixLength", 8))
    spec = args.props.get("spec") or {}
    types = [str(t) for t in as_list(spec.get("policyTypes"))]
    if types and "Egress" not in types:
        report("spec.policyTypes leaves out Egress: the selected pods may connect anywhere.")
        return
    for index, rule in enumerate(as_list(spec.get("egress"))):
        peers = _peers(rule)
        if not peers:
            report(f"spec.egress[{index}] has no 'to': it allows every destination.")
            continue
        for peer in peers:
            cidr = lookup(peer, "ipBlock.cidr")
            if not isinstance(cidr, str):
                continue
            try:
                network = ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                report(f"spec.egress[{index}] ipBlock {cidr!r} is not a CIDR.")
                continue
            if network.prefixlen < min_prefix:
                report(f"spec.egress[{index}] allows {cidr} (a /{network.prefixlen}, broader than /{min_prefix}); "
                       "open only the subnets and published ranges the workload needs (excepts do not narrow "
                       "it enough).")


aks_outbound_user_defined_routing = resource_policy(
    name="aks-outbound-udr",
    description="AKS egress follows the node subnet's routes to the egress firewall (outboundType "
    "userDefinedRouting), not a public load balancer.",
    severity=Severity.HIGH,
    remediation="Set networkProfile.outboundType='userDefinedRouting' and route the node subnet's 0.0.0.0/0 to "
    "the egress firewall (components/egress.py).",
    resource_types=[AKS],
    check=require_value("networkProfile.outboundType", "userDefinedRouting",
                        "a public load balancer lets nodes and pods reach any Internet address"),
)

aks_subnet_default_route_to_firewall = stack_policy(
    name="aks-subnet-default-route-to-firewall",
    description="Every AKS node subnet of the stack has a route table whose 0.0.0.0/0 route goes to a virtual "
    "appliance (the egress firewall). A landing zone's node subnet (network.existingVnetId, outside the stack) "
    "passes with outboundType userDefinedRouting: its route table is the platform team's responsibility, and AKS "
    "itself rejects that outbound type unless the subnet's default route goes to an appliance.",
    severity=Severity.HIGH,
    remediation="Associate the node subnet with the route table from components/egress.py (EgressRouteTable) "
    "and add its default route to the firewall's private IP; for a landing zone's subnet, set outboundType "
    "userDefinedRouting and have the platform team route its 0.0.0.0/0 to the hub firewall.",
    check=_subnet_routes_to_appliance,
)

k8s_network_policy_egress_restricted = resource_policy(
    name="k8s-networkpolicy-egress-restricted",
    description="Kubernetes NetworkPolicies restrict egress: every rule names its destinations and none opens "
    "0.0.0.0/0 or a range broader than the configured prefix length.",
    severity=Severity.HIGH,
    remediation="List only the destinations the workload needs (private endpoint subnets by CIDR and port, kube-dns, "
    "Entra ID's published ranges); Internet egress beyond that goes through the firewall's FQDN rules.",
    resource_types=[NETWORK_POLICY],
    check=_network_policy_egress,
    config_schema=PolicyConfigSchema(properties={
        "minPrefixLength": {"type": "integer", "minimum": 0, "maximum": 32, "default": 8,
                            "description": "Broadest ipBlock allowed in an egress rule (prefix length)."},
    }),
)

POLICIES = [aks_outbound_user_defined_routing, aks_subnet_default_route_to_firewall,
            k8s_network_policy_egress_restricted]
