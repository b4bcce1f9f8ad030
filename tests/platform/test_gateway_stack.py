"""The AI gateway in the rendered stacks (components/gateway.py, stacks/workloads.py): Front Door reaches
the models only through it, it runs redundantly and least-privileged, and what it is told to run parses
with its own command line."""

from __future__ import annotations

import json
import os
from typing import Any
from unittest import mock

import kubernetes_validate
import pytest
import yaml
from inferforge.gateway.cli import build_parser
from inferforge.stacks.config import ConfigError, parse_stack_config
from inferforge.stacks.render import REPO_ROOT, render_stack

from tests.platform.conftest import of_type, one
from tests.platform.test_inference_service import integral
from tests.stack_overrides import WITH_WORKLOADS

CLUSTER_VERSION = "1.33"
GATEWAY_OBJECTS = {"Namespace", "ServiceAccount", "Deployment", "Service", "HorizontalPodAutoscaler",
                   "PodDisruptionBudget", "NetworkPolicy", "Job", "CronJob"}


def gateway_objects(resources: list[Any]) -> list[dict[str, Any]]:
    return [integral(dict(r.inputs)) for r in resources
            if r.type.startswith("kubernetes:") and r.urn.split("::")[-1].startswith("gateway-")]


def pod_spec(resources: list[Any], name: str) -> dict[str, Any]:
    return one(resources, "kubernetes:apps/v1:Deployment", name).inputs["spec"]["template"]["spec"]


def test_every_gateway_object_is_schema_valid_for_the_cluster_version(prod) -> None:
    objects = gateway_objects(prod)
    assert {o["kind"] for o in objects} >= GATEWAY_OBJECTS | {"SecretProviderClass"}
    for manifest in objects:
        if manifest["kind"] in GATEWAY_OBJECTS:
            kubernetes_validate.validate(manifest, CLUSTER_VERSION, strict=True)


def test_front_door_reaches_the_gateway_and_the_model_server_is_cluster_internal(prod) -> None:
    origin = one(prod, "azure-native:cdn:AFDOrigin")
    gateway = one(prod, "kubernetes:core/v1:Service", "gateway-svc")
    assert gateway.urn in origin.dependencies and gateway.inputs["spec"]["type"] == "LoadBalancer"
    server = one(prod, "kubernetes:core/v1:Service", "inference-svc").inputs
    assert server["spec"]["type"] == "ClusterIP" and not server["metadata"].get("annotations")
    ingress = one(prod, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "inference-netpol").inputs["spec"]["ingress"]
    peers = [peer for rule in ingress for peer in rule["from"]]
    assert not [p for p in peers if "ipBlock" in p]  # no address range: not the PLS, not the nodes
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in peers} == \
        {"gateway", "kube-system"}  # the gateway, and the metrics scraper


def test_the_gateway_runs_redundantly_spread_and_autoscaled(prod) -> None:
    deployment = one(prod, "kubernetes:apps/v1:Deployment", "gateway-deployment").inputs["spec"]
    assert deployment["replicas"] >= 2
    spread = deployment["template"]["spec"]["topologySpreadConstraints"]
    keys = {c["topologyKey"]: c["whenUnsatisfiable"] for c in spread}
    assert keys == {"topology.kubernetes.io/zone": "ScheduleAnyway", "kubernetes.io/hostname": "DoNotSchedule"}
    hpa = one(prod, "kubernetes:autoscaling/v2:HorizontalPodAutoscaler", "gateway-hpa").inputs["spec"]
    assert hpa["minReplicas"] == deployment["replicas"] and hpa["maxReplicas"] > hpa["minReplicas"]
    assert hpa["scaleTargetRef"]["name"] == "gateway"
    pdb = one(prod, "kubernetes:policy/v1:PodDisruptionBudget", "gateway-pdb").inputs["spec"]
    assert pdb["maxUnavailable"] == 1


def test_the_gateway_command_parses_with_its_own_cli_and_signs_in_with_entra(prod) -> None:
    (container,) = pod_spec(prod, "gateway-deployment")["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["INFERFORGE_GATEWAY_DATABASE_AUTH"] == env["INFERFORGE_GATEWAY_REDIS_AUTH"] == "entra"
    assert env["INFERFORGE_GATEWAY_DATABASE_URL"].startswith("postgresql://id-inferforge-prod-gateway@")
    assert env["INFERFORGE_GATEWAY_DATABASE_URL"].endswith("?sslmode=require")
    assert env["INFERFORGE_GATEWAY_REDIS_URL"].startswith("rediss://") and ":10000/0" in env[
        "INFERFORGE_GATEWAY_REDIS_URL"]
    with mock.patch.dict(os.environ, env):
        args = build_parser().parse_args(container["args"])
    assert args.command == "serve" and args.host == "0.0.0.0"
    assert args.upstream == [("qwen2.5-32b-instruct", "http://inference.inference.svc.cluster.local:80")]
    assert args.schema == "gateway" and args.redis_username == env["INFERFORGE_GATEWAY_REDIS_USERNAME"]
    assert args.key_pepper_file == "/mnt/secrets/gateway-key-pepper"
    assert args.upstream_api_key_file == "/mnt/secrets/inference-api-keys"


def identity_of(resource: Any, prop: str) -> set[str]:
    """Names of the managed identities a property of `resource` was computed from."""
    return {urn.rsplit("::", 1)[1] for urn in resource.property_dependencies.get(prop, [])
            if "UserAssignedIdentity" in urn}


def test_the_gateway_reads_its_secrets_from_key_vault_as_its_own_identity(prod) -> None:
    kind = "kubernetes:secrets-store.csi.x-k8s.io/v1:SecretProviderClass"
    gateway, admin = one(prod, kind, "gateway-secrets"), one(prod, kind, "gateway-admin-secrets")
    assert identity_of(gateway, "spec") == {"gateway-identity-identity"}
    assert identity_of(admin, "spec") == {"schema-identity-identity"}
    objects = gateway.inputs["spec"]["parameters"]["objects"]
    assert "objectName: gateway-key-pepper" in objects and "objectName: inference-api-keys" in objects
    assert "inference-api-keys" not in admin.inputs["spec"]["parameters"]["objects"]  # the admin never holds it
    assert one(prod, "azure-native:keyvault:Secret").inputs["secretName"] == "gateway-key-pepper"


def test_the_migration_runs_as_the_database_admin_and_grants_the_gateway_role(prod) -> None:
    job = one(prod, "kubernetes:batch/v1:Job", "gateway-migrate").inputs["spec"]["template"]["spec"]
    cron = one(prod, "kubernetes:batch/v1:CronJob", "gateway-migrate-daily").inputs["spec"]
    assert cron["jobTemplate"]["spec"]["template"]["spec"]["containers"] == job["containers"]
    assert job["serviceAccountName"] == "gateway-migrate" and job["restartPolicy"] == "Never"
    (container,) = job["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["INFERFORGE_GATEWAY_DATABASE_URL"].startswith("postgresql://id-inferforge-prod-pgschema@")
    with mock.patch.dict(os.environ, env):
        args = build_parser().parse_args(container["args"])
    assert args.command == "migrate" and args.grant_to == "id-inferforge-prod-gateway"
    assert args.entra_principal_oid  # the gateway identity's object id, known once it exists
    assert identity_of(one(prod, "kubernetes:batch/v1:Job", "gateway-migrate"), "spec") >= {
        "gateway-identity-identity"}
    deployment = one(prod, "kubernetes:apps/v1:Deployment", "gateway-deployment")
    assert one(prod, "kubernetes:batch/v1:Job", "gateway-migrate").urn in deployment.dependencies


def test_the_gateway_egress_reaches_only_what_it_calls(prod) -> None:
    egress = one(prod, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "gateway-netpol").inputs["spec"]["egress"]
    ports = {(p["port"], tuple(sorted(str(peer) for peer in rule["to"]))) for rule in egress for p in rule["ports"]}
    destinations = {port for port, _ in ports}
    assert destinations == {53, 8000, 443, 10000, 5432}
    model_rule = next(rule for rule in egress if rule["ports"][0]["port"] == 8000)
    assert [p["namespaceSelector"]["matchLabels"] for p in model_rule["to"]] == [
        {"kubernetes.io/metadata.name": "inference"}]


def test_the_admin_pod_overrides_are_a_restricted_pod_as_the_admin_identity() -> None:
    # The stack output an operator passes to `kubectl run --overrides` to create tenants and keys.
    from inferforge.components.gateway import _admin_overrides

    overrides = _admin_overrides([{"name": "X", "value": "y"}], "gateway-migrate", "gateway")
    spec = overrides["spec"]
    assert spec["serviceAccountName"] == "gateway-migrate" and spec["automountServiceAccountToken"] is False
    (container,) = spec["containers"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert spec["volumes"][0]["csi"]["volumeAttributes"]["secretProviderClass"] == "gateway-admin-secrets"
    json.dumps(overrides)


def test_without_the_gateway_the_model_server_is_fronted_directly_again() -> None:
    resources = render_stack("dev", {**WITH_WORKLOADS, "gateway": {"enabled": False}})
    assert not [r for r in resources if r.name.startswith("gateway-")]
    server = one(resources, "kubernetes:core/v1:Service", "inference-svc")
    assert server.inputs["spec"]["type"] == "LoadBalancer"
    assert server.urn in one(resources, "azure-native:cdn:AFDOrigin").dependencies
    assert "azure-native:keyvault:Secret" not in {r.type for r in resources}


@pytest.mark.parametrize(("gateway", "message"), [
    ({"replicas": 1}, "inferforge:gateway.replicas"),
    ({"replicas": 4, "maxReplicas": 3}, "inferforge:gateway.maxReplicas: must be >= replicas (4), got 3"),
    ({"entra": {"tenantIds": ["11111111-2222-3333-4444-555555555555"]}}, "inferforge:gateway.entra.audience: is "
                                                                          "required when tenantIds is set"),
    ({"entra": {"tenantIds": ["common"]}}, "not an Entra tenant id"),
    ({"contentSafetyEndpoint": "http://cs.example"}, "inferforge:gateway.contentSafetyEndpoint"),
    ({"replica": 3}, "inferforge:gateway.replica"),
])
def test_bad_gateway_config_names_the_key(gateway: dict[str, Any], message: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw["inferforge:gateway"] = gateway
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw)
    assert message in str(err.value)


def dev_model() -> dict[str, Any]:
    """The dev stack's `inference` section as shipped, with the workloads' digests: a `models` entry."""
    section = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]["inferforge:inference"]
    pinned = WITH_WORKLOADS["inference"]
    return {**section, "image": {**section["image"], **pinned["image"]}, "pgvectorJob": pinned["pgvectorJob"]}


def second_model() -> dict[str, Any]:
    first = dev_model()
    return {**{k: v for k, v in first.items() if k != "pgvectorJob"}, "modelName": "llama-3.1-8b-instruct",
            "namespace": "llama", "replicas": 2}


def without_inference(overrides: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in overrides.items() if k != "inference"}


def render_models(tmp_path: Any, models: list[dict[str, Any]]) -> list[Any]:
    """The dev stack with `models` in place of its `inference` section (a stack file of its own: overrides
    merge into the shipped file, which has `inference`)."""
    document = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())
    document["config"].pop("inferforge:inference")
    (tmp_path / "Pulumi.dev.yaml").write_text(yaml.safe_dump(document))
    (tmp_path / "Pulumi.yaml").write_text((REPO_ROOT / "Pulumi.yaml").read_text())
    return render_stack("dev", {**without_inference(WITH_WORKLOADS), "models": models}, root=tmp_path)


def test_several_models_are_several_servers_behind_one_gateway(tmp_path) -> None:
    resources = render_models(tmp_path, [dev_model(), second_model()])
    servers = {r.name: r.inputs for r in of_type(resources, "kubernetes:apps/v1:Deployment")
               if r.name != "gateway-deployment"}
    assert set(servers) == {"inference-deployment", "inference-llama-deployment"}
    assert servers["inference-llama-deployment"]["metadata"]["namespace"] == "llama"
    assert servers["inference-llama-deployment"]["spec"]["replicas"] == 2
    (container,) = pod_spec(resources, "gateway-deployment")["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    with mock.patch.dict(os.environ, env):
        args = build_parser().parse_args(container["args"])
    assert sorted(args.upstream) == [
        ("llama-3.1-8b-instruct", "http://inference.llama.svc.cluster.local:80"),
        ("qwen2.5-7b-instruct", "http://inference.inference.svc.cluster.local:80")]
    egress = one(resources, "kubernetes:networking.k8s.io/v1:NetworkPolicy", "gateway-netpol").inputs["spec"]["egress"]
    model_rule = next(rule for rule in egress if rule["ports"][0]["port"] == 8000)
    assert {p["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"] for p in model_rule["to"]} == {
        "inference", "llama"}
    services = {r.name: r.inputs["spec"]["type"] for r in of_type(resources, "kubernetes:core/v1:Service")}
    assert services == {"gateway-svc": "LoadBalancer", "inference-svc": "ClusterIP", "inference-llama-svc": "ClusterIP"}
    credentials = of_type(resources, "azure-native:managedidentity:FederatedIdentityCredential")
    subjects = {c.inputs["subject"] for c in credentials if c.inputs["resourceName"].endswith("-inference")}
    assert subjects == {"system:serviceaccount:inference:inference", "system:serviceaccount:llama:inference"}


def test_the_single_inference_section_renders_exactly_as_a_list_of_one(tmp_path) -> None:
    single = render_stack("dev", WITH_WORKLOADS)
    as_list = render_models(tmp_path, [dev_model()])
    assert [(r.urn, r.inputs) for r in as_list] == [(r.urn, r.inputs) for r in single]


@pytest.mark.parametrize(("change", "message"), [
    (lambda m, raw: m[1].update(modelName=m[0]["modelName"]),
     "inferforge:models[1].modelName: 'qwen2.5-7b-instruct' is also models[0].modelName"),
    (lambda m, raw: m[1].update(namespace="inference"), "inferforge:models[1].namespace: 'inference' is also"),
    (lambda m, raw: raw.update({"inferforge:gateway": {"enabled": False}}),
     "inferforge:models: lists 2 models but gateway.enabled is false"),
    (lambda m, raw: m[1].update(gpuPool="nope"), "inferforge:models[1].gpuPool: 'nope' is not a pool"),
    (lambda m, raw: raw.update({"inferforge:inference": {"replicas": 2}}), "inferforge:inference: is set beside"),
])
def test_bad_model_lists_name_the_entry(change: Any, message: str) -> None:
    raw = yaml.safe_load((REPO_ROOT / "Pulumi.dev.yaml").read_text())["config"]
    raw.pop("inferforge:inference")
    models = [dev_model(), second_model()]
    change(models, raw)
    raw["inferforge:models"] = models
    with pytest.raises(ConfigError) as err:
        parse_stack_config(raw)
    assert message in str(err.value)
