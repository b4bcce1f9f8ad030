"""The gateway policies on the real rendered prod stack: compliant as rendered, and each break raises exactly
the policy that guards it, with the whole pack evaluated (no other policy fires)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from inferforge.policies.offline import evaluate

from tests.policies.conftest import CONFIG_DIR, break_property

DEPLOYMENT = "kubernetes:apps/v1:Deployment"


def pack_violations(resources: list[Any]) -> list[tuple[str, str]]:
    return sorted({(v.policy_name, v.resource_name or "") for v in evaluate(resources, CONFIG_DIR / "prod.json",
                                                                             "prod")})


def named(name: str) -> Callable[[Any], bool]:
    return lambda r: r.name == name


def drop(name: str) -> Callable[[list[Any]], list[Any]]:
    return lambda resources: [r for r in resources if r.name != name]


def mutate(name: str, change: Callable[[dict[str, Any]], None]) -> Callable[[list[Any]], list[Any]]:
    return lambda resources: break_property(resources, named(name), change)


def _ingress_from_the_nodes(inputs: dict[str, Any]) -> None:
    inputs["spec"]["ingress"][0]["from"].append({"ipBlock": {"cidr": "10.30.0.0/21"}})


BREAKS = [
    ("the model server gets its own load balancer", "k8s-model-servers-behind-gateway",
     mutate("inference-svc", lambda i: i["spec"].__setitem__("type", "LoadBalancer"))),
    ("the model server's ingress admits an address range", "k8s-model-servers-behind-gateway",
     mutate("inference-netpol", _ingress_from_the_nodes)),
    ("the model server has no NetworkPolicy", "k8s-model-servers-behind-gateway", drop("inference-netpol")),
    ("one gateway replica", "k8s-gateway-redundant",
     mutate("gateway-deployment", lambda i: i["spec"].__setitem__("replicas", 1))),
    ("the autoscaler may go down to one", "k8s-gateway-redundant",
     mutate("gateway-hpa", lambda i: i["spec"].__setitem__("minReplicas", 1))),
    ("no autoscaler", "k8s-gateway-redundant", drop("gateway-hpa")),
    ("no disruption budget", "k8s-gateway-redundant", drop("gateway-pdb")),
]


def test_the_rendered_prod_stack_passes_the_whole_pack(prod_resources) -> None:
    assert pack_violations(prod_resources) == []


@pytest.mark.parametrize(("case", "expected", "breaking"), BREAKS, ids=[b[0] for b in BREAKS])
def test_each_break_raises_exactly_the_policy_that_guards_it(prod_resources, case: str, expected: str,
                                                             breaking: Callable[[list[Any]], list[Any]]) -> None:
    violations = pack_violations(breaking(list(prod_resources)))
    assert {name for name, _ in violations} == {expected}, case


def test_without_a_gateway_a_fronting_model_server_is_fine(prod_resources) -> None:
    no_gateway = [r for r in prod_resources if not r.name.startswith("gateway-")]
    exposed = break_property(no_gateway, named("inference-svc"), lambda i: i["spec"].__setitem__("type",
                                                                                                  "LoadBalancer"))
    assert "k8s-model-servers-behind-gateway" not in {name for name, _ in pack_violations(exposed)}
