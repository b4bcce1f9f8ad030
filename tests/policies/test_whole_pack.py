"""Every break of the real rendered prod stack, through the whole pack: it raises exactly the policies that guard
it and no other, and every policy of the pack (the k8s-* ones included) has at least one break it catches.

The break tables live beside the tests of their concern (test_azure_policies, test_storage, test_workloads,
test_hardening_policies, test_gateway_policies); each case runs here once, against ``prod_resources`` (the prod
stack with its workloads, rendered by the real program under mocks), with policies/config/prod.json.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import pytest
from inferforge.policies.pack import ALL_POLICIES

from . import test_azure_policies as azure
from . import test_gateway_policies as gateway
from . import test_hardening_policies as hardening
from . import test_storage as storage
from . import test_workloads as workloads
from .conftest import assert_only, break_property, fired, run_pack

Mutation = Callable[[list[Any]], list[Any]]
NSG = "azure-native:network:NetworkSecurityGroup"
POSTGRES = "azure-native:dbforpostgresql:Server"
POOL = "azure-native:containerservice:AgentPool"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"


@dataclass(frozen=True)
class Break:
    case: str
    expected: frozenset[str]  # every policy that guards this break; empty: a boundary the pack must accept
    mutation: Mutation


def _guards(name: str, case: str, also: dict[str, set[str]]) -> frozenset[str]:
    return frozenset({name, *also.get(case, set())})


# Breaks that more than one policy guards, by design (the second policy is named in the case's own table).
ALSO_RAISED: dict[str, set[str]] = {
    # The storage account behind the model volume: public or without its endpoint, the nodes' Blob mount breaks.
    "public network access on": {"k8s-blob-volume-reachable"},
    "no private endpoint": {"k8s-blob-volume-reachable"},
    # A pool of 10 is over the per-pool cap (4) and, alone, over the stack's (8); at 10 H100 nodes the stack's
    # monthly estimate is also over prod's cost cap (which 8 nodes, the stack's node cap, stay under).
    "pool of 10": {"aks-gpu-stack-max-nodes", "stack-monthly-cost-cap"},
    "stack of 9": {"aks-gpu-pool-max-nodes"},
    # No limits at all also drops the nvidia.com/gpu limit the TP size needs.
    "no limits": {"k8s-gpu-limit-matches-tp"},
}
# BLOB_VOLUME_BROKEN repeats two STORAGE_BROKEN mutations under another name; they run once, above.
_SAME_AS_STORAGE = {"account made public", "no blob private endpoint"}


def _inference_deployment(mutate: Callable[[dict[str, Any]], None], drop_timeouts: bool) -> Mutation:
    def mutation(resources: list[Any]) -> list[Any]:
        out = break_property(resources, lambda r: r.name == "inference-deployment", mutate)
        if drop_timeouts:  # the annotation is what the provider reads when no CustomTimeouts are registered
            out = [replace(r, custom_timeouts={}) if r.name == "inference-deployment" else r for r in out]
        return out

    return mutation


def _inference_netpol(mutate: Callable[[dict[str, Any]], None]) -> Mutation:
    return lambda resources: break_property(resources, lambda r: r.name == "inference-netpol", mutate)


# --- breaks defined here: members of deny sets and limits at their boundary ----------------------------------

# Every source prefix that means "anyone on the Internet" (policies/exposure.py _ANY_SOURCES), spelled as a user
# would; each one, alone, must be caught.
INTERNET_SOURCES = ["*", "Any", "Internet", "internet", "0.0.0.0", "0.0.0.0/0", "::/0", "::", " Internet "]


def _inbound_from(prefix: str, as_list: bool) -> Mutation:
    def mutate(inputs: dict[str, Any]) -> None:
        rule = {"name": "allow-https", "direction": "Inbound", "access": "Allow", "protocol": "Tcp",
                "sourcePortRange": "*", "destinationAddressPrefix": "*", "destinationPortRange": "443",
                "priority": 4000}
        rule.update({"sourceAddressPrefixes": ["10.0.0.0/8", prefix]} if as_list else {"sourceAddressPrefix": prefix})
        inputs.setdefault("securityRules", []).append(rule)

    return lambda resources: break_property(resources, lambda r: r.type == NSG, mutate)


def _extra_gpu_pools(*max_counts: int) -> Mutation:
    """Copies of the stack's GPU pool (maxCount 4), one per entry, autoscaling up to that many nodes."""

    def mutation(resources: list[Any]) -> list[Any]:
        (pool,) = [r for r in resources if r.type == POOL]
        assert pool.inputs["maxCount"] == 4
        copies = [replace(pool, name=f"{pool.name}-{n}", urn=f"{pool.urn}-{n}",
                          inputs={**pool.inputs, "agentPoolName": f"gpu{n}", "maxCount": count})
                  for n, count in enumerate(max_counts)]
        return [*resources, *copies]

    return mutation


LOCAL_BREAKS: list[Break] = [
    *(Break(f"inbound from {p!r}{' in a list' if as_list else ''}", frozenset({"nsg-no-internet-inbound"}),
            _inbound_from(p, as_list)) for p in INTERNET_SOURCES for as_list in (False, True)),
    Break("inbound from a private range is fine", frozenset(), _inbound_from("10.20.0.0/16", False)),
    Break("postgres without its private DNS zone", frozenset({"postgres-private-access"}),
          lambda rs: break_property(rs, lambda r: r.type == POSTGRES,
                                    lambda i: i["network"].pop("privateDnsZoneArmResourceId"))),
    Break("GPU pool of 5 (cap 4)", frozenset({"aks-gpu-pool-max-nodes"}),
          lambda rs: break_property(rs, lambda r: r.type == POOL, lambda i: i.__setitem__("maxCount", 5))),
    Break("GPU pools 4 + 4 = the stack cap of 8", frozenset(), _extra_gpu_pools(4)),
    Break("GPU pools 4 + 4 + 1 (stack cap 8)", frozenset({"aks-gpu-stack-max-nodes"}), _extra_gpu_pools(4, 1)),
    Break("Azure Policy add-on off (no admission)", frozenset({"aks-image-signature-enforced"}),
          lambda rs: break_property(rs, lambda r: r.type == "azure-native:containerservice:ManagedCluster",
                                    lambda i: i["addonProfiles"]["azurepolicy"].__setitem__("enabled", False))),
    Break("signature admission only audits", frozenset({"aks-image-signature-enforced"}),
          lambda rs: break_property(rs, lambda r: r.type == "azure-native:authorization:PolicyAssignment",
                                    lambda i: i["parameters"]["effect"].__setitem__("value", "Audit"))),
    Break("Ratify trust policy permissive", frozenset({"aks-image-signature-enforced"}),
          lambda rs: break_property(rs, lambda r: r.type == "kubernetes:helm.sh/v3:Release",
                                    lambda i: i["values"]["notation"]["trustPolicies"][0]["signatureVerification"]
                                    .__setitem__("level", "permissive"))),
    Break("8 inference replicas (cap 8)", frozenset(),
          _inference_deployment(lambda i: i["spec"].__setitem__("replicas", 8), drop_timeouts=False)),
]


BREAKS: list[Break] = [
    *(Break(case, _guards(name, case, ALSO_RAISED), mutation) for name, case, mutation in azure.BROKEN),
    *(Break(case, _guards(name, case, ALSO_RAISED), mutation) for name, case, mutation in storage.BLOB_VOLUME_BROKEN
      if case not in _SAME_AS_STORAGE),
    *(Break(case, _guards(name, case, ALSO_RAISED),
            _inference_deployment(mutate, drop_timeouts=case in workloads.WITHOUT_CUSTOM_TIMEOUTS))
      for case, (name, mutate) in workloads.BROKEN.items()),
    *(Break(f"pod egress: {case}", frozenset({"k8s-networkpolicy-egress-restricted"}), _inference_netpol(mutate))
      for case, mutate in hardening.POD_EGRESS_BROKEN.items()),
    *(Break(case, frozenset({name}), mutation) for case, name, mutation in gateway.BREAKS),
    *LOCAL_BREAKS,
]


def test_case_names_are_unique() -> None:
    cases = [b.case for b in BREAKS]
    assert sorted({c for c in cases if cases.count(c) > 1}) == []


def test_every_policy_of_the_pack_has_a_break_it_catches() -> None:
    caught = set().union(*(b.expected for b in BREAKS))
    assert sorted({p.name for p in ALL_POLICIES} - caught) == []
    assert len(ALL_POLICIES) == 71


@pytest.mark.parametrize("stack", ["dev", "test", "prod"])
@pytest.mark.parametrize("phase", ["resources", "platform_resources"])
def test_the_rendered_stack_passes_the_whole_pack_with_no_violation_at_all(stack: str, phase: str, request) -> None:
    # Not even an advisory one: the breaks below rely on a quiet baseline.
    violations = run_pack(request.getfixturevalue(f"{stack}_{phase}"), stack)
    assert [(v.policy_name, v.resource_name, v.message) for v in violations] == []


@pytest.mark.parametrize("brk", BREAKS, ids=[b.case for b in BREAKS])
def test_a_break_raises_exactly_the_policies_that_guard_it(brk: Break, prod_resources) -> None:
    violations = assert_only(brk.mutation(list(prod_resources)), "prod", brk.expected, brk.case)
    assert all(v.enforcement_level == "mandatory" for v in violations)


def test_breaks_do_not_leak_into_the_shared_fixture(prod_resources) -> None:
    import copy

    before = copy.deepcopy([r.inputs for r in prod_resources])
    for brk in BREAKS:
        brk.mutation(list(prod_resources))
    assert [r.inputs for r in prod_resources] == before
    assert fired(run_pack(prod_resources, "prod")) == set()
