"""Bring-your-own spoke (issue 15.1, landing-zone fit): a landing zone's VNet and subnets, none created."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from inferforge.policies.offline import config_path_for, evaluate, format_text, has_mandatory
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_stack, validate_stack

from tests.platform.conftest import of_type, one
from tests.stack_overrides import WITH_WORKLOADS

AKS = "azure-native:containerservice:ManagedCluster"
POOL = "azure-native:containerservice:AgentPool"
SERVICE = "kubernetes:core/v1:Service"
HUB_VNET = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-hub/providers/" \
           "Microsoft.Network/virtualNetworks/vnet-hub"
SPOKE = "/subscriptions/44444444-4444-4444-4444-444444444444/resourceGroups/rg-lz-spoke/providers/" \
        "Microsoft.Network/virtualNetworks/vnet-lz-spoke"
SUBNETS = {"aks": "snet-lz-aks", "privateEndpoints": "snet-lz-pe", "postgres": "snet-lz-pg",
           "privateLink": "snet-lz-pls"}
CREATED_BY_A_SPOKE_STACK = [
    "azure-native:network:VirtualNetwork", "azure-native:network:Subnet", "azure-native:network:NetworkSecurityGroup",
    "azure-native:network:VirtualNetworkPeering", "azure-native:network:RouteTable", "azure-native:network:Route",
    "azure-native:network:AzureFirewall",
]


def byo(**network: Any) -> dict[str, Any]:
    """dev with the landing zone's spoke and hub (central firewall; its public IP for the public API server)."""
    return {
        "network": {"existingVnetId": SPOKE, "existingSubnets": SUBNETS, **network},
        "hub": {"firewallPrivateIp": "10.0.1.4", "firewallPublicIp": "198.51.100.7", "vnetId": HUB_VNET},
        "egress": {"allowedFqdns": []},
    }


def subnet_id(key: str) -> str:
    return f"{SPOKE}/subnets/{SUBNETS[key]}"


@pytest.fixture(scope="module")
def platform():
    return render_stack("dev", byo())


@pytest.fixture(scope="module")
def full():
    return render_stack("dev", {**WITH_WORKLOADS, **byo()})


def problems(overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack("dev", overrides)
    return "\n".join(caught.value.problems)


def test_no_network_resource_of_the_spoke_is_registered(full):
    for type_ in CREATED_BY_A_SPOKE_STACK:
        assert of_type(full, type_) == [], type_


def test_everything_lands_in_the_given_subnets(full):
    assert {p["vnetSubnetID"] for p in one(full, AKS).inputs["agentPoolProfiles"]} == {subnet_id("aks")}
    assert {p.inputs["vnetSubnetID"] for p in of_type(full, POOL)} == {subnet_id("aks")}
    assert one(full, AKS).inputs["networkProfile"]["outboundType"] == "userDefinedRouting"
    endpoints = of_type(full, "azure-native:network:PrivateEndpoint")
    assert endpoints and {e.inputs["subnet"]["id"] for e in endpoints} == {subnet_id("privateEndpoints")}
    server = one(full, "azure-native:dbforpostgresql:Server").inputs
    assert server["network"]["delegatedSubnetResourceId"] == subnet_id("postgres")
    # The inference Service names the landing zone's subnets for its internal LB and its Private Link Service.
    annotations = next(s.inputs["metadata"]["annotations"] for s in of_type(full, SERVICE)
                       if "service.beta.kubernetes.io/azure-pls-create" in s.inputs["metadata"].get("annotations", {}))
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal-subnet"] == "snet-lz-aks"
    assert annotations["service.beta.kubernetes.io/azure-pls-ip-configuration-subnet"] == "snet-lz-pls"
    # Network Contributor for the cluster on the two subnets AKS creates LB/PLS objects in.
    scopes = {a.inputs["scope"] for a in of_type(full, "azure-native:authorization:RoleAssignment")}
    assert {subnet_id("aks"), subnet_id("privateLink")} <= scopes


def test_private_dns_zones_link_to_the_existing_vnet_unless_central(platform):
    links = of_type(platform, "azure-native:privatedns:VirtualNetworkLink")
    assert len(links) == 5 and {link.inputs["virtualNetwork"]["id"] for link in links} == {SPOKE}
    kv_zone = "/subscriptions/33333333-3333-3333-3333-333333333333/resourceGroups/rg-dns/providers/" \
              "Microsoft.Network/privateDnsZones/privatelink.vaultcore.azure.net"
    overrides = byo()
    overrides["hub"]["privateDnsZoneIds"] = {"keyVault": kv_zone}  # no dnsServers: the spoke's DNS is the LZ's
    central = render_stack("dev", overrides)
    zones = {z.inputs["privateZoneName"] for z in of_type(central, "azure-native:privatedns:PrivateZone")}
    assert "privatelink.vaultcore.azure.net" not in zones and len(zones) == 4


def test_byo_stack_plans_with_no_mandatory_violation(full):
    violations = evaluate(full, config_path_for("dev"), "dev")
    assert not has_mandatory(violations), format_text(violations, "dev")


def test_byo_node_subnet_without_udr_still_fails_the_route_policy(full):
    broken = []
    for r in full:
        if r.type == AKS:
            inputs = {**r.inputs, "networkProfile": {**r.inputs["networkProfile"], "outboundType": "loadBalancer"}}
            r = dataclasses.replace(r, inputs=inputs)
        broken.append(r)
    failed = {v.policy_name for v in evaluate(broken, config_path_for("dev"), "dev")
              if v.enforcement_level == "mandatory"}
    assert {"aks-outbound-udr", "aks-subnet-default-route-to-firewall"} <= failed


def test_partial_or_unfit_byo_config_is_named():
    assert "inferforge:network.existingSubnets: is not set while existingVnetId is" in problems(
        {**byo(), "network": {"existingVnetId": SPOKE}})
    assert "inferforge:network.existingVnetId: is not set while existingSubnets is" in problems(
        {**byo(), "network": {"existingSubnets": SUBNETS}})
    partial = {k: v for k, v in SUBNETS.items() if k != "postgres"}
    assert "inferforge:network.existingSubnets.postgres: required key is missing" in problems(
        {**byo(), "network": {"existingVnetId": SPOKE, "existingSubnets": partial}})
    assert "inferforge:network.existingSubnets: names repeat" in problems(
        byo(existingSubnets={**SUBNETS, "privateLink": "snet-lz-aks"}))
    assert "inferforge:network.existingVnetId:" in problems(byo(existingVnetId=HUB_VNET.replace("virtualNetworks",
                                                                                                "routeTables")))
    no_hub = {k: v for k, v in byo().items() if k != "hub"}
    assert "inferforge:network.existingVnetId: is set while hub is not" in problems(no_hub)
    with_dns = byo()
    with_dns["hub"]["dnsServers"] = ["10.0.1.4"]
    assert "inferforge:hub.dnsServers: is set while network.existingVnetId is" in problems(with_dns)
    # The declared prefixes still drive the internal LB check.
    assert "inferforge:inference.internalLoadBalancerIp" in problems(
        {**byo(aksSubnet="10.20.8.0/22"), "egress": {"allowedFqdns": [], "firewall": {"subnet": "10.20.7.0/26"}}})
