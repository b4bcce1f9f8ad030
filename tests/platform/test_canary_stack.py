"""A canary in the stack config (issue 24 item 5): a second server version of a model beside the stable one,
rendered as its own InferenceService, with the gateway told the shares; bad shares are config errors naming the key."""

from __future__ import annotations

import copy
import os
from typing import Any
from unittest import mock

import pytest
from inferforge.gateway.cli import build_parser
from inferforge.stacks.config import ConfigError
from inferforge.stacks.render import render_stack, validate_stack

from tests.platform.conftest import of_type, one
from tests.policies.conftest import run_pack
from tests.stack_overrides import WITH_WORKLOADS, _digest

CANARY_DIGEST = _digest("inferforge/inference:canary")


def with_canary(canary: dict[str, Any] | None = None, **top: Any) -> dict[str, Any]:
    overrides = copy.deepcopy(WITH_WORKLOADS)
    overrides["inference"]["canary"] = canary if canary is not None else {
        "image": {"repository": "inferforge/inference", "tag": "0.2.0", "digest": CANARY_DIGEST},
        "traffic": {"stable": 95, "canary": 5}}
    overrides.update(top)
    return overrides


@pytest.fixture(scope="module")
def canary_dev() -> list[Any]:
    return render_stack("dev", with_canary())


def test_a_canary_renders_a_second_server_beside_the_stable_one(canary_dev) -> None:
    stable = one(canary_dev, "kubernetes:apps/v1:Deployment", "inference-deployment").inputs
    canary = one(canary_dev, "kubernetes:apps/v1:Deployment", "inference-canary-inference-deployment").inputs
    assert (stable["metadata"]["name"], stable["metadata"]["namespace"]) == ("inference", "inference")
    assert (canary["metadata"]["name"], canary["metadata"]["namespace"]) == ("inference-canary", "inference-canary")
    (stable_server,) = stable["spec"]["template"]["spec"]["containers"]
    (canary_server,) = canary["spec"]["template"]["spec"]["containers"]
    assert canary_server["image"].endswith("inferforge/inference@" + CANARY_DIGEST)
    assert stable_server["image"] != canary_server["image"]
    # The same model with the same settings: everything but the image is the stable server's.
    assert {k: v for k, v in canary_server.items() if k != "image"} == \
        {k: v for k, v in stable_server.items() if k != "image"}
    assert canary["spec"]["replicas"] == 1
    assert canary["spec"]["template"]["metadata"]["labels"]["inferforge.io/version"] == "canary"


def test_the_canary_has_its_own_service_pdb_and_network_policy_admitting_only_the_gateway(canary_dev) -> None:
    service = one(canary_dev, "kubernetes:core/v1:Service", "inference-canary-inference-svc").inputs
    assert service["spec"]["type"] == "ClusterIP" and service["metadata"]["namespace"] == "inference-canary"
    pdb = one(canary_dev, "kubernetes:policy/v1:PodDisruptionBudget", "inference-canary-inference-pdb").inputs
    assert pdb["spec"]["selector"]["matchLabels"]["app.kubernetes.io/instance"] == "inference-canary"
    policy = one(canary_dev, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "inference-canary-inference-netpol")
    peers = [peer for rule in policy.inputs["spec"]["ingress"] for peer in rule["from"]]
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers} == {
        "gateway", "kube-system"}
    credentials = of_type(canary_dev, "azure-native:managedidentity:FederatedIdentityCredential")
    subjects = {c.inputs["subject"] for c in credentials if c.inputs["resourceName"].endswith("-inference")}
    assert "system:serviceaccount:inference-canary:inference" in subjects


def test_the_gateway_is_told_both_versions_with_their_shares_and_may_reach_both(canary_dev) -> None:
    (container,) = one(canary_dev, "kubernetes:apps/v1:Deployment", "gateway-deployment").inputs[
        "spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    with mock.patch.dict(os.environ, env):
        args = build_parser().parse_args(container["args"])
    model = validate_stack("dev", with_canary()).inference.model_name
    assert args.upstream == [(model, "http://inference.inference.svc.cluster.local:80@95:stable"),
                             (model, "http://inference-canary.inference-canary.svc.cluster.local:80@5:canary")]
    egress = one(canary_dev, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "gateway-netpol").inputs["spec"]["egress"]
    model_rule = next(rule for rule in egress if rule["ports"][0]["port"] == 8000)
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in model_rule["to"]} == {
        "inference", "inference-canary"}


def test_the_rendered_canary_stack_passes_the_whole_policy_pack(canary_dev) -> None:
    violations = run_pack(canary_dev, "dev")
    assert not violations, "; ".join(f"{v.policy_name}: {v.message}" for v in violations)


def problems(overrides: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as caught:
        validate_stack("dev", overrides)
    return "\n".join(caught.value.problems)


IMAGE = {"repository": "inferforge/inference", "digest": CANARY_DIGEST}


@pytest.mark.parametrize(("canary", "message"), [
    ({"image": IMAGE, "traffic": {"stable": 90, "canary": 5}},
     "inferforge:inference.canary.traffic: shares sum to 95 (stable 90, canary 5); allowed: shares summing to 100"),
    ({"image": IMAGE, "traffic": {"stable": 95, "beta": 5}},
     "inferforge:inference.canary.traffic.beta: unknown version; allowed: stable, canary"),
    ({"image": IMAGE, "traffic": {"stable": 120, "canary": -20}},
     "inferforge:inference.canary.traffic.stable: share 120 is out of range; allowed: 0-100"),
    ({"image": IMAGE, "traffic": {"stable": 100}},
     "inferforge:inference.canary.traffic: no share for canary"),
    ({"image": {"repository": "inferforge/inference", "tag": "0.2.0"}, "traffic": {"stable": 95, "canary": 5}},
     "inferforge:inference.canary.image.digest: is not set"),
    ({"image": IMAGE, "traffic": {"stable": 95, "canary": 5}, "namespace": "inference"},
     "inferforge:inference.canary.namespace: 'inference' is also inference.namespace"),
])
def test_a_bad_canary_is_a_config_error_naming_the_key(canary, message) -> None:
    assert message in problems(with_canary(canary))


def test_a_canary_needs_the_gateway() -> None:
    text = problems(with_canary(gateway={**WITH_WORKLOADS["gateway"], "enabled": False}))
    assert "inferforge:inference.canary: is set but gateway.enabled is false" in text
