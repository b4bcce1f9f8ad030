"""Egress, node and audit policies (issue 15): our own stacks comply; one broken property is caught."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from .conftest import assert_only, break_property, of_type, run_policy, set_path, stack_entry

AKS = "azure-native:containerservice:ManagedCluster"
POOL = "azure-native:containerservice:AgentPool"
SUBNET = "azure-native:network:Subnet"
ROUTE = "azure-native:network:Route"
PUBLIC_IP = "azure-native:network:PublicIPAddress"
ACTIVITY_LOG = "azure-native:monitor:SubscriptionDiagnosticSetting"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"

Mutation = Callable[[list[Any]], list[Any]]


def _set(type_token: str, path: str, value: Any) -> Mutation:
    return lambda resources: break_property(resources, of_type(type_token), set_path(path, value))


def _mutate(match: Callable[[Any], bool], mutate: Callable[[dict[str, Any]], None]) -> Mutation:
    return lambda resources: break_property(resources, match, mutate)


def _drop(predicate: Callable[[Any], bool]) -> Mutation:
    def mutation(resources: list[Any]) -> list[Any]:
        kept = [r for r in resources if not predicate(r)]
        assert len(kept) < len(resources)
        return kept

    return mutation


def _system_pool(key: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        inputs["agentPoolProfiles"][0][key] = value

    return mutate


def _aks_subnet(r: Any) -> bool:
    return r.type == SUBNET and r.inputs.get("subnetName") == "snet-aks"


def _only_activity_categories(*categories: str) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        inputs["logs"] = [log for log in inputs["logs"] if log["category"] in categories]

    return mutate


# policy -> (case, mutation of the prod stack); test_whole_pack.py runs them (dev has the same posture: the
# enforcement test below).
HARDENING_BROKEN: list[tuple[str, str, Mutation]] = [
    ("aks-outbound-udr", "public load balancer egress", _set(AKS, "networkProfile.outboundType", "loadBalancer")),
    ("aks-subnet-default-route-to-firewall", "no route table on the node subnet",
     _mutate(_aks_subnet, lambda i: i.pop("routeTable"))),
    ("aks-subnet-default-route-to-firewall", "default route to the Internet",
     _set(ROUTE, "nextHopType", "Internet")),
    ("aks-subnet-default-route-to-firewall", "no default route", _drop(lambda r: r.type == ROUTE)),
    ("aks-encryption-at-host", "system pool not encrypted at host",
     _mutate(of_type(AKS), _system_pool("enableEncryptionAtHost", False))),
    ("aks-encryption-at-host", "GPU pool unset",
     _mutate(of_type(POOL), lambda i: i.pop("enableEncryptionAtHost"))),
    ("aks-ephemeral-os-disk", "system pool managed OS disk",
     _mutate(of_type(AKS), _system_pool("osDiskType", "Managed"))),
    ("aks-ephemeral-os-disk", "GPU pool OS disk type not pinned",
     _mutate(of_type(POOL), lambda i: i.pop("osDiskType"))),
    ("monitor-activity-log-export", "no activity log export", _drop(lambda r: r.type == ACTIVITY_LOG)),
    ("monitor-activity-log-export", "security category dropped",
     _mutate(of_type(ACTIVITY_LOG), _only_activity_categories("Administrative", "Policy"))),
]

NEW_AZURE_POLICIES = sorted({name for name, _, _ in HARDENING_BROKEN})


@pytest.mark.parametrize("stack", ["dev", "prod"])
@pytest.mark.parametrize("name", [*NEW_AZURE_POLICIES, "k8s-networkpolicy-egress-restricted"])
def test_same_posture_in_dev_and_prod(name: str, stack: str) -> None:
    import json

    from .conftest import CONFIG_DIR

    config = json.loads((CONFIG_DIR / f"{stack}.json").read_text())
    entry = config.get(name, config.get("all"))
    level = entry.get("enforcementLevel", config.get("all")) if isinstance(entry, dict) else entry
    assert level == "mandatory"


# --- the API server exception for the stack's own egress firewall ---------------------------------------


def _dev_ranges(ranges: list[str]) -> Mutation:
    return _set(AKS, "apiServerAccessProfile.authorizedIPRanges", ranges)


def test_dev_firewall_address_is_the_only_extra_authorized_range(dev_resources, tmp_path) -> None:
    config = stack_entry("dev", "aks-api-server-restricted")
    (aks,) = [r for r in dev_resources if r.type == AKS]
    ranges = list(aks.inputs["apiServerAccessProfile"]["authorizedIPRanges"])
    assert run_policy("aks-api-server-restricted", dev_resources, tmp_path, config) == []

    # A second single host that is not the firewall's address is refused.
    widened = _dev_ranges([*ranges, "192.0.2.10/32"])(dev_resources)
    assert_only(widened, "dev", {"aks-api-server-restricted"})


def test_dev_firewall_address_without_provenance_is_refused(dev_resources, tmp_path) -> None:
    # The same /32, but not computed from a firewall public IP of this stack (typed in by hand).
    unlinked = []
    for r in dev_resources:
        if r.type == AKS:
            deps = {k: v for k, v in r.property_dependencies.items() if k != "apiServerAccessProfile"}
            r = replace(r, property_dependencies=deps)
        unlinked.append(r)
    assert_only(unlinked, "dev", {"aks-api-server-restricted"})


def test_known_firewall_address_must_match_exactly(dev_resources, tmp_path) -> None:
    # As in `pulumi up`, where the public IP's address is known: only that /32 passes.
    (aks,) = [r for r in dev_resources if r.type == AKS]
    firewall_range = aks.inputs["apiServerAccessProfile"]["authorizedIPRanges"][-1]
    known = break_property(dev_resources, lambda r: r.type == PUBLIC_IP and r.name == "egress-firewall-pip",
                           set_path("ipAddress", firewall_range.removesuffix("/32")))
    config = stack_entry("dev", "aks-api-server-restricted")
    assert run_policy("aks-api-server-restricted", known, tmp_path, config) == []
    moved = break_property(known, lambda r: r.type == PUBLIC_IP and r.name == "egress-firewall-pip",
                           set_path("ipAddress", "192.0.2.99"))
    assert run_policy("aks-api-server-restricted", moved, tmp_path, config)


# --- pod egress ----------------------------------------------------------------------------------------------


def _egress_rule(index: int, rule: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def mutate(inputs: dict[str, Any]) -> None:
        inputs["spec"]["egress"][index] = rule

    return mutate


# Mutations of a NetworkPolicy's inputs; test_whole_pack.py applies them to the prod stack's inference-netpol.
POD_EGRESS_BROKEN = {
    "0.0.0.0/0 minus private ranges": _egress_rule(2, {
        "to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "169.254.0.0/16"]}}],
        "ports": [{"protocol": "TCP", "port": 443}]}),
    "rule without destinations": _egress_rule(2, {"ports": [{"protocol": "TCP", "port": 443}]}),
    "a /4 range": _egress_rule(2, {"to": [{"ipBlock": {"cidr": "32.0.0.0/4"}}]}),
    "egress not restricted": lambda i: i["spec"].__setitem__("policyTypes", ["Ingress"]),
}


def test_inference_service_network_policy_complies(inference_service_resources, tmp_path) -> None:
    assert run_policy("k8s-networkpolicy-egress-restricted", inference_service_resources, tmp_path) == []


@pytest.mark.parametrize("stack", ["dev", "prod"])
def test_stack_network_policies_comply(stack: str, request, tmp_path) -> None:
    resources = request.getfixturevalue(f"{stack}_resources")
    # The inference service, the pgvector Job, the device plugin (deny all), the gateway and its migration.
    assert len([r for r in resources if r.type == NETWORK_POLICY]) == 5
    assert run_policy("k8s-networkpolicy-egress-restricted", resources, tmp_path) == []


def test_mutations_do_not_leak_into_the_shared_fixture(dev_resources) -> None:
    before = copy.deepcopy([r.inputs for r in dev_resources])
    for _, _, mutation in HARDENING_BROKEN:
        mutation(dev_resources)
    assert [r.inputs for r in dev_resources] == before
