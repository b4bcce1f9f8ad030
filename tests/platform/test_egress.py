"""Deny-by-default egress (issue 15.1): UDR through the egress firewall, its rules, the allow-list, the hub option."""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_stack, validate_stack

from tests.platform.conftest import of_type, one

AKS = "azure-native:containerservice:ManagedCluster"
SUBNET = "azure-native:network:Subnet"
FIREWALL = "azure-native:network:AzureFirewall"
POLICY = "azure-native:network:FirewallPolicy"
RULES = "azure-native:network:FirewallPolicyRuleCollectionGroup"
ROUTE = "azure-native:network:Route"
ROUTE_TABLE = "azure-native:network:RouteTable"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
HUB_VNET = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-hub/providers/" \
           "Microsoft.Network/virtualNetworks/vnet-hub"
KV_ZONE = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-dns/providers/" \
          "Microsoft.Network/privateDnsZones/privatelink.vaultcore.azure.net"


def problems(overrides: dict[str, Any], stack: str = "dev") -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack(stack, overrides)
    return "\n".join(caught.value.problems)


def subnet(resources, name: str):
    return next(s for s in of_type(resources, SUBNET) if s.inputs["subnetName"] == name).inputs


def app_rules(resources) -> dict[str, dict[str, Any]]:
    collections = one(resources, RULES).inputs["ruleCollections"]
    return {rule["name"]: rule for c in collections if c["name"] == "aks-application" for rule in c["rules"]}


def network_rules(resources) -> dict[str, dict[str, Any]]:
    collections = one(resources, RULES).inputs["ruleCollections"]
    return {rule["name"]: rule for c in collections if c["name"] == "aks-network" for rule in c["rules"]}


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_aks_egress_is_user_defined_routing_to_the_firewall(stack, request):
    resources = request.getfixturevalue(stack)
    assert one(resources, AKS).inputs["networkProfile"]["outboundType"] == "userDefinedRouting"
    table = one(resources, ROUTE_TABLE)
    assert subnet(resources, "snet-aks")["routeTable"]["id"] == table.id
    assert table.inputs["disableBgpRoutePropagation"] is True
    route = one(resources, ROUTE)
    assert (route.inputs["addressPrefix"], route.inputs["nextHopType"]) == ("0.0.0.0/0", "VirtualAppliance")
    # The next hop is the firewall's private IP: the first usable address of AzureFirewallSubnet.
    firewall_subnet = ipaddress.ip_network(subnet(resources, "AzureFirewallSubnet")["addressPrefix"])
    assert route.inputs["nextHopIpAddress"] == str(firewall_subnet[4])
    # Only the node subnet is routed through the firewall; private endpoint traffic stays in the VNet.
    assert all("routeTable" not in s.inputs for s in of_type(resources, SUBNET) if s.inputs["subnetName"] != "snet-aks")


def test_prod_firewall_is_standard_with_threat_intel_deny_across_zones(prod):
    policy = one(prod, POLICY).inputs
    assert (policy["sku"]["tier"], policy["threatIntelMode"]) == ("Standard", "Deny")
    assert policy["dnsSettings"]["enableProxy"] is True
    firewall = one(prod, FIREWALL).inputs
    assert firewall["sku"] == {"name": "AZFW_VNet", "tier": "Standard"}
    assert firewall["zones"] == ["1", "2", "3"]
    assert firewall["firewallPolicy"]["id"] == one(prod, POLICY).id
    assert "managementIpConfiguration" not in firewall


def test_dev_firewall_is_basic_with_its_management_subnet(dev):
    policy = one(dev, POLICY).inputs
    assert (policy["sku"]["tier"], policy["threatIntelMode"]) == ("Basic", "Alert")
    firewall = one(dev, FIREWALL).inputs
    assert firewall["managementIpConfiguration"]["subnet"]["id"] == next(
        s.id for s in of_type(dev, SUBNET) if s.inputs["subnetName"] == "AzureFirewallManagementSubnet")


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_firewall_allows_what_aks_documents_from_the_node_subnet_only(stack, request):
    resources = request.getfixturevalue(stack)
    rules = app_rules(resources)
    assert rules["aks-required"]["fqdnTags"] == ["AzureKubernetesService"]
    assert rules["entra-id"]["targetFqdns"] == ["login.microsoftonline.com"]
    assert {"nvidia.github.io", "us.download.nvidia.com"} <= set(rules["gpu-driver"]["targetFqdns"])
    assert "westeurope.handler.control.monitor.azure.com" in rules["azure-monitor"]["targetFqdns"]
    node_subnet = subnet(resources, "snet-aks")["addressPrefix"]
    assert all(rule["sourceAddresses"] == [node_subnet] for rule in rules.values())
    assert "allow-list" not in rules  # the shipped stacks add nothing beyond AKS's needs


def test_public_api_server_gets_the_tunnel_ports_and_a_private_one_does_not(dev, prod):
    tunnel = network_rules(dev)
    assert tunnel["aks-tunnel-udp"]["destinationPorts"] == ["1194"]
    assert tunnel["aks-tunnel-tcp"]["destinationAddresses"] == ["AzureCloud.westeurope"]
    assert network_rules(prod) == {}


def test_allow_list_becomes_one_https_rule():
    resources = render_stack("prod", {"egress": {"allowedFqdns": ["huggingface.co", "*.hf.co"]}})
    rule = app_rules(resources)["allow-list"]
    assert rule["targetFqdns"] == ["huggingface.co", "*.hf.co"]
    assert rule["protocols"] == [{"protocolType": "Https", "port": 443}]


@pytest.mark.parametrize("fqdn", ["https://huggingface.co", "*", "10.0.0.1", "huggingface.co/models", "a..b.com",
                                  "Example.COM", "huggingface.co:443"])
def test_allow_list_rejects_what_is_not_a_host_name(fqdn):
    text = problems({"egress": {"allowedFqdns": [fqdn]}})
    assert "inferforge:egress.allowedFqdns" in text and "is not a host name; allowed: a lowercase FQDN" in text


def test_firewall_subnet_must_fit_the_vnet_beside_the_others():
    assert ("inferforge:egress.firewall.subnet: 10.99.0.0/26 lies outside network.addressSpace 10.20.0.0/16; "
            "allowed: a subnet inside 10.20.0.0/16") in problems({"egress": {"firewall": {"subnet": "10.99.0.0/26"}}})
    assert "inferforge:egress.firewall.subnet: 10.20.4.0/26 overlaps network.privateEndpointSubnet 10.20.4.0/24" in \
        problems({"egress": {"firewall": {"subnet": "10.20.4.0/26"}}})
    assert "is smaller than /26" in problems({"egress": {"firewall": {"subnet": "10.20.7.0/27"}}})


def test_basic_firewall_cannot_deny_on_threat_intel():
    text = problems({"egress": {"firewall": {"threatIntelMode": "Deny"}}})
    assert "inferforge:egress.firewall.threatIntelMode: Deny is not available on skuTier Basic" in text


def hub(**extra: Any) -> dict[str, Any]:
    return {"hub": {"firewallPrivateIp": "10.0.1.4", "firewallPublicIp": "198.51.100.7", "vnetId": HUB_VNET,
                    **extra}, "egress": {"allowedFqdns": []}}


def test_hub_mode_routes_to_the_hub_firewall_and_creates_none():
    resources = render_stack("dev", hub(dnsServers=["10.0.1.4"], privateDnsZoneIds={"keyVault": KV_ZONE}))
    assert of_type(resources, FIREWALL) == [] and of_type(resources, POLICY) == []
    assert one(resources, ROUTE).inputs["nextHopIpAddress"] == "10.0.1.4"
    peering = one(resources, "azure-native:network:VirtualNetworkPeering").inputs
    assert peering["remoteVirtualNetwork"]["id"] == HUB_VNET and peering["allowForwardedTraffic"] is True
    ranges = one(resources, AKS).inputs["apiServerAccessProfile"]["authorizedIPRanges"]
    assert ranges == ["203.0.113.0/24", "198.51.100.7/32"]
    # The central Key Vault zone is used, not created; the others are still the stack's own.
    zones = {z.inputs["privateZoneName"] for z in of_type(resources, "azure-native:privatedns:PrivateZone")}
    assert "privatelink.vaultcore.azure.net" not in zones and "privatelink.redis.azure.net" in zones
    dns_group = next(g for g in of_type(resources, "azure-native:network:PrivateDnsZoneGroup")
                     if g.name.startswith("keyvault"))
    assert dns_group.inputs["privateDnsZoneConfigs"][0]["privateDnsZoneId"] == KV_ZONE
    assert one(resources, "azure-native:network:VirtualNetwork").inputs["dhcpOptions"]["dnsServers"] == ["10.0.1.4"]


def test_hub_config_mistakes_are_named():
    assert "inferforge:hub.firewallPublicIp: is not set while aks.privateCluster is false" in problems(
        {"hub": {"firewallPrivateIp": "10.0.1.4", "vnetId": HUB_VNET}})
    assert "inferforge:egress.allowedFqdns: lists 1 FQDNs while hub is set" in problems(
        {**hub(), "egress": {"allowedFqdns": ["example.com"]}})
    assert "inferforge:hub.dnsServers: is empty while privateDnsZoneIds is set" in problems(
        hub(privateDnsZoneIds={"keyVault": KV_ZONE}))
    assert "is not privatelink.vaultcore.azure.net" in problems(
        hub(dnsServers=["10.0.1.4"], privateDnsZoneIds={"keyVault": KV_ZONE.replace("vaultcore", "blob.core")}))
    assert "'10.0.1' is not an IPv4 address" in problems(hub(firewallPrivateIp="10.0.1"))


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_pod_network_policies_open_no_broad_public_range(stack, request):
    for policy in of_type(request.getfixturevalue(stack), NETWORK_POLICY):
        for rule in policy.inputs["spec"].get("egress", []):  # none: deny all egress
            assert rule["to"], f"{policy.name}: an egress rule without 'to' allows everything"
            for peer in rule["to"]:
                if "ipBlock" in peer:
                    assert ipaddress.ip_network(peer["ipBlock"]["cidr"]).prefixlen >= 18, (policy.name, peer)
