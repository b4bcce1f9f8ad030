"""The gateway policies on the real rendered prod stack. Their breaks (BREAKS) run through the whole pack in
test_whole_pack.py, which checks that each raises exactly the policy that guards it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

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


# (case, the policy that guards it, mutation of the prod stack); test_whole_pack.py runs them through the whole pack.
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


def test_without_a_gateway_a_fronting_model_server_is_fine(prod_resources) -> None:
    no_gateway = [r for r in prod_resources if not r.name.startswith("gateway-")]
    exposed = break_property(no_gateway, named("inference-svc"), lambda i: i["spec"].__setitem__("type",
                                                                                                  "LoadBalancer"))
    assert "k8s-model-servers-behind-gateway" not in {name for name, _ in pack_violations(exposed)}
