"""Exposure and egress: data services private, no Internet-wide inbound rules, a fenced AKS API."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)
from pulumi_policy.proxy import UnknownValueError

from .common import (
    as_list,
    config_list,
    is_true,
    lookup,
    references,
    require_value,
    resource_policy,
    resources_of,
    same,
    stack_policy,
)

VAULT = "azure-native:keyvault:Vault"
POSTGRES = "azure-native:dbforpostgresql:Server"
REDIS = "azure-native:redisenterprise:RedisEnterprise"
NSG = "azure-native:network:NetworkSecurityGroup"
NSG_RULE = "azure-native:network:SecurityRule"
AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
PRIVATE_ENDPOINT = "azure-native:network:PrivateEndpoint"
FIREWALL = "azure-native:network:AzureFirewall"
PUBLIC_IP = "azure-native:network:PublicIPAddress"

# Source prefixes that mean "anyone on the Internet" in an NSG rule.
_ANY_SOURCES = {"*", "any", "internet", "0.0.0.0", "0.0.0.0/0", "::/0", "::"}


def _keyvault_public_network(args: ResourceValidationArgs, report: ReportViolation) -> None:
    access = lookup(args.props, "properties.publicNetworkAccess")
    if not same(access, "disabled"):
        report(
            f"properties.publicNetworkAccess is {access!r}; it must be 'disabled' "
            "(azure-native fills in 'enabled' when it is left out)."
        )
    default_action = lookup(args.props, "properties.networkAcls.defaultAction")
    if not same(default_action, "Deny"):
        report(f"properties.networkAcls.defaultAction is {default_action!r}; it must be 'Deny'.")



def _postgres_private_access(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not lookup(args.props, "network.delegatedSubnetResourceId"):
        report(
            "network.delegatedSubnetResourceId is not set: the server is not injected into the "
            "delegated PostgreSQL subnet (VNet integration)."
        )
    if not lookup(args.props, "network.privateDnsZoneArmResourceId"):
        report(
            "network.privateDnsZoneArmResourceId is not set: clients in the VNet cannot resolve the "
            "server's private address."
        )



def private_endpoint_check(target_type: str, service: str) -> Any:
    def check(args: StackValidationArgs, report: ReportViolation) -> None:
        endpoints = resources_of(args.resources, PRIVATE_ENDPOINT)
        for target in resources_of(args.resources, target_type):
            connected = any(
                references(pe, "privateLinkServiceConnections", target)
                or references(pe, "manualPrivateLinkServiceConnections", target)
                for pe in endpoints
            )
            if not connected:
                report(
                    f"{service} '{target.name}' has no private endpoint whose "
                    "privateLinkServiceConnections point at it.",
                    target.urn,
                )

    return check


def _rules_of(args: ResourceValidationArgs) -> list[tuple[str, Mapping[str, Any]]]:
    if args.resource_type == NSG:
        rules = as_list(args.props.get("securityRules"))
        return [(str(rule.get("name", f"securityRules[{i}]")), rule) for i, rule in enumerate(rules)]
    return [(args.name, args.props)]


def _nsg_inbound(args: ResourceValidationArgs, report: ReportViolation) -> None:
    tags = [t for t in config_list(args.get_config(), "allowedSourceServiceTags") if isinstance(t, str)]
    allowed_tags = {tag.lower() for tag in tags}
    for rule_name, rule in _rules_of(args):
        if not same(rule.get("direction"), "Inbound") or not same(rule.get("access"), "Allow"):
            continue
        sources = [rule.get("sourceAddressPrefix"), *as_list(rule.get("sourceAddressPrefixes"))]
        for source in sources:
            if not isinstance(source, str):
                continue
            if source.lower() in allowed_tags:
                continue
            if source.strip().lower() in _ANY_SOURCES:
                report(
                    f"rule '{rule_name}' allows inbound traffic from {source!r} (anyone on the "
                    f"Internet); only the service tags {tags} may be opened."
                )


def _within(cidr: str, allowed: list[str]) -> bool:
    try:
        network = ipaddress.ip_network(cidr, strict=False)
    except ValueError:
        return False
    for candidate in allowed:
        try:
            allowed_net = ipaddress.ip_network(candidate, strict=False)
        except ValueError:
            continue
        if network.version == allowed_net.version and network.subnet_of(allowed_net):  # type: ignore[arg-type]
            return True
    return False


def _stack_egress_addresses(aks: Any, resources: Any) -> tuple[list[str], int]:
    """Known public IPs of this stack's Azure Firewalls that the cluster's API access profile was computed from.

    Nodes of a public cluster behind the egress firewall reach the API server from the firewall's public IP,
    which must therefore be an authorized range (https://learn.microsoft.com/azure/aks/limit-egress-traffic).
    That address exists only once Azure allocates it, so it is recognised by provenance: a public IP resource
    attached to a firewall of this stack and feeding ``apiServerAccessProfile``. Returns its known addresses
    (empty during a preview) and how many such public IPs there are.
    """
    firewall_ips = set()
    for firewall in resources_of(resources, FIREWALL):
        firewall_ips.update(dep.urn for dep in firewall.property_dependencies.get("ipConfigurations", []))
    feeding = [dep for dep in aks.property_dependencies.get("apiServerAccessProfile", [])
               if dep.resource_type == PUBLIC_IP and dep.urn in firewall_ips]
    addresses = []
    for pip in feeding:
        try:
            address = pip.props.get("ipAddress")
        except UnknownValueError:
            address = None
        if isinstance(address, str):
            addresses.append(f"{address}/32")
    return addresses, len(feeding)


def _aks_api_server(args: StackValidationArgs, report: ReportViolation) -> None:
    config = args.get_config()
    for aks in resources_of(args.resources, AKS):
        profile = aks.props.get("apiServerAccessProfile") or {}
        if is_true(lookup(profile, "enablePrivateCluster")):
            continue
        if config.get("requirePrivateCluster", True):
            report(
                "apiServerAccessProfile.enablePrivateCluster is not true: the Kubernetes API server has "
                "a public endpoint, which this environment does not allow.",
                aks.urn,
            )
            continue
        ranges = [r for r in as_list(lookup(profile, "authorizedIPRanges")) if isinstance(r, str)]
        allowed = [r for r in config_list(config, "allowedAuthorizedIpRanges") if isinstance(r, str)]
        if not ranges:
            report(
                "the API server is public and apiServerAccessProfile.authorizedIPRanges is empty, so any "
                "address on the Internet can reach it.",
                aks.urn,
            )
            continue
        egress_addresses, egress_ips = _stack_egress_addresses(aks, args.resources)
        # Without a known address (offline or preview), allow as many single-host ranges as firewall IPs.
        spare = egress_ips - len(egress_addresses)
        for cidr in ranges:
            if _within(cidr, allowed) or cidr in egress_addresses:
                continue
            if spare > 0 and cidr.endswith("/32"):
                spare -= 1
                continue
            report(
                f"authorized IP range {cidr!r} is not inside the ranges this environment allows "
                f"({allowed or 'none configured'}) and is not this stack's egress firewall address.",
                aks.urn,
            )


def _no_node_public_ip(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type == AGENT_POOL:
        if is_true(args.props.get("enableNodePublicIP")):
            report("enableNodePublicIP is true: every node of this pool gets a public IP address.")
        return
    for pool in as_list(args.props.get("agentPoolProfiles")):
        if is_true(pool.get("enableNodePublicIP")):
            report(f"agent pool '{pool.get('name')}' has enableNodePublicIP true.")


keyvault_public_network_disabled = resource_policy(
    name="keyvault-public-network-disabled",
    description="Key Vaults refuse traffic from public networks (public network access disabled, "
    "network ACL default action Deny).",
    severity=Severity.CRITICAL,
    remediation="Set properties.publicNetworkAccess='disabled' and properties.networkAcls.defaultAction="
    "'Deny' on the vault (components/keyvault.py); reach it through its private endpoint.",
    resource_types=[VAULT],
    check=_keyvault_public_network,
)

keyvault_private_endpoint = stack_policy(
    name="keyvault-private-endpoint",
    description="Every Key Vault is reachable through a private endpoint connected to it.",
    severity=Severity.HIGH,
    remediation="Create a network.PrivateEndpoint (group 'vault') whose privateLinkServiceConnections "
    "use the vault's id, with a DNS zone group for privatelink.vaultcore.azure.net.",
    check=private_endpoint_check(VAULT, "Key Vault"),
)

postgres_public_network_disabled = resource_policy(
    name="postgres-public-network-disabled",
    description="PostgreSQL flexible servers have public network access disabled.",
    severity=Severity.CRITICAL,
    remediation="Set network.publicNetworkAccess='Disabled' on the flexible server.",
    resource_types=[POSTGRES],
    check=require_value("network.publicNetworkAccess", "Disabled"),
)

postgres_private_access = resource_policy(
    name="postgres-private-access",
    description="PostgreSQL flexible servers are injected into the delegated subnet (VNet integration) "
    "with a private DNS zone.",
    severity=Severity.HIGH,
    remediation="Set network.delegatedSubnetResourceId to the subnet delegated to "
    "Microsoft.DBforPostgreSQL/flexibleServers and network.privateDnsZoneArmResourceId to the "
    "privatelink.postgres.database.azure.com zone linked to the VNet.",
    resource_types=[POSTGRES],
    check=_postgres_private_access,
)

redis_public_network_disabled = resource_policy(
    name="redis-public-network-disabled",
    description="Azure Managed Redis clusters have public network access disabled.",
    severity=Severity.CRITICAL,
    remediation="Set publicNetworkAccess='Disabled' on the redisenterprise cluster; clients connect "
    "through its private endpoint.",
    resource_types=[REDIS],
    check=require_value("publicNetworkAccess", "Disabled"),
)

redis_private_endpoint = stack_policy(
    name="redis-private-endpoint",
    description="Every Azure Managed Redis cluster is reachable through a private endpoint.",
    severity=Severity.HIGH,
    remediation="Create a network.PrivateEndpoint (group 'redisEnterprise') whose "
    "privateLinkServiceConnections use the cluster's id, with a DNS zone group for "
    "privatelink.redis.azure.net.",
    check=private_endpoint_check(REDIS, "Managed Redis cluster"),
)

nsg_no_internet_inbound = resource_policy(
    name="nsg-no-internet-inbound",
    description="No network security group rule allows inbound traffic from the Internet or any "
    "source ('*', 'Internet', 'Any', 0.0.0.0/0), except from allowed service tags such as "
    "AzureFrontDoor.Backend.",
    severity=Severity.CRITICAL,
    remediation="Narrow the rule's source to a specific range or service tag (AzureFrontDoor.Backend "
    "for the edge), or remove it; private traffic needs no Internet rule.",
    resource_types=[NSG, NSG_RULE],
    check=_nsg_inbound,
    config_schema=PolicyConfigSchema(
        properties={
            "allowedSourceServiceTags": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["AzureFrontDoor.Backend"],
                "description": "Service tags that inbound allow rules may use as their source.",
            }
        }
    ),
)

aks_api_server_restricted = stack_policy(
    name="aks-api-server-restricted",
    description="The AKS API server is private (prod), or public only to configured authorized IP "
    "ranges (dev) plus the stack's own egress firewall address.",
    severity=Severity.HIGH,
    remediation="Set apiServerAccessProfile.enablePrivateCluster=true; where a public API is allowed, "
    "set apiServerAccessProfile.authorizedIPRanges to ranges inside the policy's "
    "allowedAuthorizedIpRanges (the egress firewall's public IP is added by components/aks.py).",
    check=_aks_api_server,
    config_schema=PolicyConfigSchema(
        properties={
            "requirePrivateCluster": {
                "type": "boolean",
                "default": True,
                "description": "Require a private API server (no public endpoint at all).",
            },
            "allowedAuthorizedIpRanges": {
                "type": "array",
                "items": {"type": "string"},
                "default": [],
                "description": "CIDRs that a public API server's authorizedIPRanges must fall in.",
            },
        }
    ),
)

aks_no_node_public_ip = resource_policy(
    name="aks-no-node-public-ip",
    description="AKS nodes get no public IP addresses.",
    severity=Severity.HIGH,
    remediation="Set enableNodePublicIP=false (or leave it unset) on every agent pool; egress goes "
    "through the cluster's outbound path.",
    resource_types=[AKS, AGENT_POOL],
    check=_no_node_public_ip,
)

POLICIES = [
    keyvault_public_network_disabled,
    keyvault_private_endpoint,
    postgres_public_network_disabled,
    postgres_private_access,
    redis_public_network_disabled,
    redis_private_endpoint,
    nsg_no_internet_inbound,
    aks_api_server_restricted,
    aks_no_node_public_ip,
]
