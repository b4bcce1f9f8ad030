"""InferenceService under Pulumi's mock runtime: schema-valid objects, GPU wiring, secure defaults, validation.

Every Kubernetes object the component registers is turned back into a manifest (the mocked inputs are
the object itself, camelCase, with apiVersion/kind) and validated against the Kubernetes OpenAPI schema
of the cluster version with kubernetes-validate in strict mode (unknown fields fail too).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jsonschema
import kubernetes_validate
import pulumi
import pulumi_kubernetes as k8s
import pytest
from inferforge.components.inference_service import (
    DownloadModelSource,
    InferenceService,
    InferenceServiceArgs,
    InferenceServiceConfigError,
    KedaAutoscaling,
    PvcModelSource,
    ServingSettings,
)
from inferforge.components.limits import ArgsOutOfLimits
from inferforge.policies.offline import config_path_for, evaluate
from inferforge.stacks.render import RenderedResource, render_program

CLUSTER_VERSION = "1.33"
PROD_DIGEST = "sha256:" + "0123456789abcdef" * 4
INTERNAL_LB_IP = "10.20.0.250"


def render(build: Callable[[k8s.Provider], object]) -> list[RenderedResource]:
    """Run ``build(provider)`` under the stacks' mocks, with a Kubernetes provider; return what it registered."""

    def program() -> None:
        provider = k8s.Provider("aks", kubeconfig="{}")  # the stack builds it from the AKS credentials
        build(provider)

    return render_program(program)


def integral(value: Any) -> Any:
    """Mocked inputs travel as protobuf Structs (every number a double); Kubernetes wants integers."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [integral(v) for v in value]
    return value


def manifests(resources: list[RenderedResource]) -> dict[str, dict[str, Any]]:
    """Kubernetes objects by kind (one of each kind in these renders)."""
    out: dict[str, dict[str, Any]] = {}
    for resource in resources:
        if resource.type.startswith("kubernetes:"):
            manifest = integral(dict(resource.inputs))
            assert manifest["kind"] not in out, f"two {manifest['kind']} objects"
            out[manifest["kind"]] = manifest
    return out


# A hand-written subset of KEDA's ScaledObject CRD schema (keda.sh/v1alpha1): the fields we set, with
# the types and required keys the CRD declares. kubernetes-validate ships only built-in kinds.
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": {"type": "object", "required": ["name", "namespace"]},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {
                    "type": "object", "required": ["name"], "additionalProperties": False,
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "name": {"type": "string"}, "envSourceContainerName": {"type": "string"}}},
                "minReplicaCount": {"type": "integer"},
                "maxReplicaCount": {"type": "integer"},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "advanced": {"type": "object", "properties": {"horizontalPodAutoscalerConfig": {
                    "type": "object", "properties": {"behavior": {"type": "object", "properties": {
                        "scaleDown": {"type": "object", "additionalProperties": False, "properties": {
                            "stabilizationWindowSeconds": {"type": "integer", "minimum": 0, "maximum": 3600},
                            "policies": {"type": "array", "items": {
                                "type": "object", "required": ["type", "value", "periodSeconds"],
                                "properties": {"type": {"enum": ["Pods", "Percent"]},
                                               "value": {"type": "integer", "exclusiveMinimum": 0},
                                               "periodSeconds": {"type": "integer", "minimum": 1,
                                                                 "maximum": 1800}}}}}}}}}}}},
                "triggers": {"type": "array", "minItems": 1, "items": {
                    "type": "object", "required": ["type", "metadata"], "additionalProperties": False,
                    "properties": {
                        "type": {"type": "string"}, "name": {"type": "string"},
                        "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                        "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                        "authenticationRef": {"type": "object", "required": ["name"],
                                              "properties": {"name": {"type": "string"},
                                                             "kind": {"type": "string"}}}}}},
            },
        },
    },
}


SERVING_NAMES = {f.name for f in dataclasses.fields(ServingSettings)}


def prod_args(**overrides: Any) -> InferenceServiceArgs:
    """Prod-shaped arguments: digest-pinned image, tp 2, PVC weights, autoscaling. Overrides named as a serving
    setting (tp_size, drain_timeout_s, ...) go into `serving`."""
    values: dict[str, Any] = dict(
        model_name="qwen2.5-7b-instruct",
        image_registry="crinferforgeprod.azurecr.io",
        image_repository="inferforge/inference",
        image_digest=PROD_DIGEST,
        workload_identity_client_id="00000000-0000-0000-0000-000000000001",
        keyvault_url="https://kv-inferforge-prod.vault.azure.net/",
        pls_name="pls-inferforge-prod",
        pls_subnet_name="snet-pls",
        pls_subnet_cidr="10.20.3.0/24",
        node_cidr="10.20.0.0/22",
        private_endpoint_subnet_cidr="10.20.4.0/24",
        gpu_node_labels={"inferforge.io/pool": "gpua100"},
        redis_host="redis-inferforge-prod.westeurope.redis.azure.net",
        memory_limit_gib=96,
        shm_size_gib=16,
        replicas=2,
        autoscaling=KedaAutoscaling(prometheus_server_address="https://amw-inferforge.prometheus.monitor.azure.com",
                                    min_replicas=2, max_replicas=4, authentication_ref="keda-azure-monitor"),
    )
    chosen = {name: overrides.pop(name) for name in list(overrides) if name in SERVING_NAMES}
    values.update(overrides)
    values.setdefault("serving", ServingSettings(**{"tp_size": 2, **chosen}))
    return InferenceServiceArgs(**values)


def render_service(args: InferenceServiceArgs) -> list[RenderedResource]:
    return render(lambda provider: InferenceService("inference", args, pulumi.ResourceOptions(provider=provider)))


def server_container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def prod() -> dict[str, dict[str, Any]]:
    return manifests(render_service(prod_args()))


# ------------------------------------------------------------------------------------------- schema
@pytest.mark.parametrize("model_source", [PvcModelSource(), PvcModelSource(existing_claim="weights-static"),
                                          DownloadModelSource(repo_id="Qwen/Qwen2.5-7B-Instruct",
                                                              revision="a" * 40)],
                         ids=["pvc-dynamic", "pvc-static", "download"])
def test_every_rendered_object_validates_against_the_cluster_openapi_schema(model_source: object) -> None:
    objects = manifests(render_service(prod_args(model_source=model_source)))

    builtin = {kind: m for kind, m in objects.items() if kind != "ScaledObject"}
    for manifest in builtin.values():
        kubernetes_validate.validate(manifest, CLUSTER_VERSION, strict=True)
    jsonschema.validate(objects["ScaledObject"], SCALED_OBJECT_SCHEMA)
    expected = {"Namespace", "ServiceAccount", "Deployment", "Service", "PodDisruptionBudget", "NetworkPolicy"}
    assert expected <= set(builtin)
    assert ("PersistentVolumeClaim" in builtin) == (model_source == PvcModelSource())


def test_schema_validation_catches_a_broken_object(prod: dict[str, dict[str, Any]]) -> None:
    broken = integral(prod["Deployment"])
    broken["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = ["64Gi"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, CLUSTER_VERSION, strict=True)
    so = dict(prod["ScaledObject"], spec={**prod["ScaledObject"]["spec"], "triggers": [{"type": "prometheus",
                                                                                         "metadata": {"x": 4}}]})
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(so, SCALED_OBJECT_SCHEMA)


def test_every_kubernetes_child_uses_the_provider_passed_in_opts() -> None:
    resources = render_service(prod_args())
    children = [r for r in resources if r.type.startswith("kubernetes:")]
    assert children and all(r.provider and "pulumi:providers:kubernetes::aks::" in r.provider for r in children)
    assert [r.type for r in resources if r.type.startswith("inferforge:")] == ["inferforge:index:InferenceService"]


def test_component_refuses_to_run_without_an_explicit_kubernetes_provider() -> None:
    with pytest.raises(InferenceServiceConfigError, match="explicit pulumi_kubernetes.Provider"):
        render(lambda _provider: InferenceService("inference", prod_args()))


# ---------------------------------------------------------------------------------------- GPU wiring
def test_gpu_count_tolerations_affinity_shm_and_memory_follow_the_args() -> None:
    args = prod_args(tp_size=4, memory_limit_gib=200, shm_size_gib=32, gpu_taints=("sku=gpu:NoSchedule",
                                                                                   "nvidia.com/gpu:NoSchedule"))
    objects = manifests(render_service(args))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    container = server_container(objects)

    assert container["resources"]["requests"]["nvidia.com/gpu"] == "4"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"
    assert container["command"][container["command"].index("--tp-size") + 1] == "4"
    assert pod["tolerations"] == [
        {"key": "sku", "operator": "Equal", "value": "gpu", "effect": "NoSchedule"},
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
    ]
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "inferforge.io/pool", "operator": "In", "values": ["gpua100"]}]}]
    shm = next(v for v in pod["volumes"] if v["name"] == "dshm")
    assert shm["emptyDir"] == {"medium": "Memory", "sizeLimit": "32Gi"}
    assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
    # /dev/shm is tmpfs charged to the container: the memory limit is the whole budget, shm included.
    assert container["resources"]["limits"]["memory"] == "200Gi"
    assert container["resources"]["requests"]["memory"] == container["resources"]["limits"]["memory"]


def test_probes_and_grace_period_follow_the_args() -> None:
    args = prod_args(startup_period_s=15, startup_failure_threshold=160, readiness_period_s=5,
                     liveness_period_s=30, liveness_failure_threshold=4, prestop_sleep_s=20,
                     drain_timeout_s=120, termination_grace_period_s=150)
    objects = manifests(render_service(args))
    container = server_container(objects)
    pod = objects["Deployment"]["spec"]["template"]["spec"]

    assert container["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert container["startupProbe"]["periodSeconds"] * container["startupProbe"]["failureThreshold"] == 2400
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert container["readinessProbe"]["periodSeconds"] == 5
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert (container["livenessProbe"]["periodSeconds"], container["livenessProbe"]["failureThreshold"]) == (30, 4)
    assert container["lifecycle"]["preStop"] == {"sleep": {"seconds": 20}}
    assert container["command"][container["command"].index("--drain-timeout") + 1] == "120"
    assert pod["terminationGracePeriodSeconds"] == 150
    # A rollout is only "stuck" once the model had its whole load budget.
    assert objects["Deployment"]["spec"]["progressDeadlineSeconds"] > 2400


def test_server_command_matches_the_inference_cli(prod: dict[str, dict[str, Any]]) -> None:
    command = server_container(prod)["command"]
    assert command[:4] == ["python", "-m", "inference", "serve"]
    assert "--enable-prefix-caching" in command  # the one boolean flag: on by default
    command = [part for part in command if part != "--enable-prefix-caching"]
    flags = dict(zip(command[4::2], command[5::2], strict=True))
    assert flags == {
        "--model-dir": "/models", "--model-name": "qwen2.5-7b-instruct", "--tp-size": "2", "--dtype": "bfloat16",
        "--host": "0.0.0.0", "--port": "8000", "--api-keys-keyvault-url": "https://kv-inferforge-prod.vault.azure.net/",
        "--api-keys-secret": "inference-api-keys", "--drain-timeout": "60",
        "--max-batch-size": "64", "--max-waiting": "128", "--tool-call-parser": "hermes",
        "--gpu-memory-utilization": "0.9", "--block-size": "16", "--embeddings": "off",
    }
    assert "--allow-unauthenticated" not in command


# ----------------------------------------------------------------------------------- secure defaults
def test_containers_run_non_root_read_only_without_privileges(prod: dict[str, dict[str, Any]]) -> None:
    pod = prod["Deployment"]["spec"]["template"]["spec"]
    context = server_container(prod)["securityContext"]
    assert context == {
        "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "allowPrivilegeEscalation": False,
        "privileged": False, "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    mounts = {m["mountPath"]: m for m in server_container(prod)["volumeMounts"]}
    assert {"/tmp", "/cache", "/dev/shm", "/models"} == set(mounts)  # writable paths are emptyDirs
    assert mounts["/models"]["readOnly"] is True
    assert not any("hostPath" in v for v in pod["volumes"])


def test_namespace_enforces_the_restricted_pod_security_standard(prod: dict[str, dict[str, Any]]) -> None:
    labels = prod["Namespace"]["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    assert labels["pod-security.kubernetes.io/enforce-version"] == "v1.33"


def test_identity_is_federated_and_no_secret_is_stored_in_kubernetes() -> None:
    resources = render_service(prod_args())
    objects = manifests(resources)
    annotations = objects["ServiceAccount"]["metadata"]["annotations"]
    assert annotations == {"azure.workload.identity/client-id": "00000000-0000-0000-0000-000000000001"}
    template = objects["Deployment"]["spec"]["template"]
    assert template["metadata"]["labels"]["azure.workload.identity/use"] == "true"
    assert template["spec"]["serviceAccountName"] == objects["ServiceAccount"]["metadata"]["name"]
    assert not [r for r in resources if r.type in ("kubernetes:core/v1:Secret", "kubernetes:core/v1:ConfigMap")]
    env = {e["name"]: e["value"] for e in server_container(objects)["env"]}
    assert env["INFERFORGE_REDIS_HOST"] == "redis-inferforge-prod.westeurope.redis.azure.net"
    assert env["INFERFORGE_REDIS_PORT"] == "10000"
    assert prod_args().federated_subject == "system:serviceaccount:inference:inference"


def test_image_is_pinned_by_digest_in_prod(prod: dict[str, dict[str, Any]]) -> None:
    assert server_container(prod)["image"] == f"crinferforgeprod.azurecr.io/inferforge/inference@{PROD_DIGEST}"


def test_dev_may_run_a_tag_only_when_tags_are_allowed() -> None:
    args = prod_args(image_digest=None, image_tag="0.1.0-dev", allow_image_tags=True)
    assert args.image == "crinferforgeprod.azurecr.io/inferforge/inference:0.1.0-dev"


def test_service_is_an_internal_load_balancer_with_a_private_link_service(prod: dict[str, dict[str, Any]]) -> None:
    service = prod["Service"]
    annotations = service["metadata"]["annotations"]
    assert annotations == {
        "service.beta.kubernetes.io/azure-load-balancer-internal": "true",
        "service.beta.kubernetes.io/azure-pls-create": "true",
        "service.beta.kubernetes.io/azure-pls-name": "pls-inferforge-prod",
        "service.beta.kubernetes.io/azure-pls-ip-configuration-subnet": "snet-pls",
        "service.beta.kubernetes.io/azure-pls-ip-configuration-ip-address-count": "1",
        "service.beta.kubernetes.io/azure-pls-proxy-protocol": "false",
    }
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["spec"]["ports"] == [{"name": "http", "protocol": "TCP", "port": 80, "targetPort": "http"}]
    assert service["spec"]["selector"] == prod["Deployment"]["spec"]["selector"]["matchLabels"]


def test_a_static_internal_ip_is_requested_through_the_azure_annotation() -> None:
    objects = manifests(render_service(prod_args(internal_lb_ip="10.20.0.250", internal_lb_subnet_name="snet-aks")))
    annotations = objects["Service"]["metadata"]["annotations"]
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-ipv4"] == "10.20.0.250"
    assert annotations["service.beta.kubernetes.io/azure-load-balancer-internal-subnet"] == "snet-aks"
    assert "loadBalancerIP" not in objects["Service"]["spec"]


def test_network_policy_admits_only_the_load_balancer_path_and_the_scraper(prod: dict[str, dict[str, Any]]) -> None:
    spec = prod["NetworkPolicy"]["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    assert spec["podSelector"]["matchLabels"] == prod["Deployment"]["spec"]["selector"]["matchLabels"]
    sources = [peer for rule in spec["ingress"] for peer in rule["from"]]
    assert {"ipBlock": {"cidr": "10.20.3.0/24"}} in sources and {"ipBlock": {"cidr": "10.20.0.0/22"}} in sources
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}} in sources
    assert all(rule["ports"] == [{"protocol": "TCP", "port": 8000}] for rule in spec["ingress"])


def test_network_policy_egress_is_dns_private_endpoints_and_entra_never_imds(
        prod: dict[str, dict[str, Any]]) -> None:
    dns, private_endpoints, entra = prod["NetworkPolicy"]["spec"]["egress"]
    assert dns["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    assert {p["port"] for p in dns["ports"]} == {53}
    assert private_endpoints["to"] == [{"ipBlock": {"cidr": "10.20.4.0/24"}}]
    assert {p["port"] for p in private_endpoints["ports"]} == {443, 10000}
    # Issue 15: 443 only to Entra ID's published ranges (the firewall's FQDN rule is the gate), never 0.0.0.0/0.
    blocks = [peer["ipBlock"] for peer in entra["to"]]
    assert [b["cidr"] for b in blocks] == ["20.190.128.0/18", "40.126.0.0/18"]
    assert all("except" not in b for b in blocks)
    assert entra["ports"] == [{"protocol": "TCP", "port": 443}]


def test_pdb_limits_disruption_without_blocking_node_upgrades(prod: dict[str, dict[str, Any]]) -> None:
    spec = prod["PodDisruptionBudget"]["spec"]
    assert spec["maxUnavailable"] == 1
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    assert spec["selector"] == prod["Deployment"]["spec"]["selector"]


def test_autoscaling_uses_a_serving_metric_and_leaves_replicas_to_keda(prod: dict[str, dict[str, Any]]) -> None:
    scaled = prod["ScaledObject"]["spec"]
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "inference"}
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (2, 4)
    (trigger,) = scaled["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"]["query"].startswith("sum(vllm:num_requests_waiting{")
    assert trigger["metadata"]["threshold"] == "4"
    assert all(t["type"] not in ("cpu", "memory") for t in scaled["triggers"])
    assert "replicas" not in prod["Deployment"]["spec"]


def test_fixed_replicas_without_autoscaling() -> None:
    objects = manifests(render_service(prod_args(autoscaling=None, replicas=3)))
    assert objects["Deployment"]["spec"]["replicas"] == 3
    assert "ScaledObject" not in objects


def test_download_source_uses_an_init_container_and_opens_only_https() -> None:
    source = DownloadModelSource(repo_id="Qwen/Qwen2.5-7B-Instruct", revision="b" * 40, size_gib=40)
    objects = manifests(render_service(prod_args(model_source=source)))
    pod = objects["Deployment"]["spec"]["template"]["spec"]
    (init,) = pod["initContainers"]
    assert init["command"] == ["hf", "download", "Qwen/Qwen2.5-7B-Instruct", "--revision", "b" * 40,
                               "--local-dir", "/models/model"]
    assert init["securityContext"]["readOnlyRootFilesystem"] is True
    assert next(v for v in pod["volumes"] if v["name"] == "model")["emptyDir"] == {"sizeLimit": "40Gi"}
    assert "PersistentVolumeClaim" not in objects
    command = server_container(objects)["command"]
    assert command[command.index("--model-dir") + 1] == "/models/model"


def test_pvc_source_mounts_the_claim_read_only(prod: dict[str, dict[str, Any]]) -> None:
    pod = prod["Deployment"]["spec"]["template"]["spec"]
    model = next(v for v in pod["volumes"] if v["name"] == "model")
    assert model["persistentVolumeClaim"] == {"claimName": "inference-model", "readOnly": True}
    assert prod["PersistentVolumeClaim"]["spec"]["storageClassName"] == "azureblob-fuse-premium"
    assert "initContainers" not in pod


def test_outputs_name_namespace_service_deployment_pls_and_load_balancer_ip() -> None:
    outputs: dict[str, Any] = {}

    def build(provider: k8s.Provider) -> None:
        service = InferenceService("inference", prod_args(internal_lb_ip=INTERNAL_LB_IP),
                                   pulumi.ResourceOptions(provider=provider))
        pulumi.Output.all(service.namespace, service.service_name, service.deployment_name,
                          service.pls_name, service.load_balancer_ip).apply(lambda v: outputs.update(values=v))

    render(build)
    assert outputs["values"] == ["inference", "inference", "inference", "pls-inferforge-prod", INTERNAL_LB_IP]


# ------------------------------------------------------------------------------------------ bad args
@pytest.mark.parametrize(("overrides", "message"), [
    ({"tp_size": 0}, r"serving.tp_size=0 is invalid: allowed: >= 1 and <= 8"),
    ({"tp_size": 16}, r"serving.tp_size=16 is invalid"),
    ({"dtype": "fp8"}, r"serving.dtype='fp8' is invalid: allowed: one of auto, bfloat16, float16, float32"),
    ({"tp_size": 2, "embeddings": "served"}, r"serving.embeddings='served' is invalid: serving.embeddings served "
                                             r"with serving.tp_size 2"),
    ({"serving": {"tp_size": 2}}, r"serving=\{'tp_size': 2\} is invalid: must be a ServingSettings"),
    ({"image_digest": None}, r"image_digest=None is invalid: a digest \(sha256:<64 hex>\) is required"),
    ({"image_digest": "sha256:abc"}, r"image_digest='sha256:abc' is invalid: must be 'sha256:' followed by 64"),
    ({"image_digest": None, "image_tag": "latest"}, r"tags are only accepted when allow_image_tags"),
    ({"prestop_sleep_s": 30, "drain_timeout_s": 90, "termination_grace_period_s": 100},
     r"termination_grace_period_s=100 is invalid: must be >= prestop_sleep_s \(30\) \+ serving.drain_timeout_s "
     r"\(90\) = 120"),
    ({"memory_limit_gib": 16, "shm_size_gib": 16},
     r"shm_size_gib=16 is invalid: 16 leaves 0 GiB of memory_limit_gib 16 for 2 tensor-parallel rank\(s\), "
     r"which need 2 GiB each outside /dev/shm"),
    ({"startup_period_s": 5, "startup_failure_threshold": 6}, r"startup_failure_threshold=6 is invalid"),
    ({"gpu_taints": ("sku=gpu",)}, r"gpu_taints='sku=gpu' is invalid"),
    ({"gpu_node_labels": {}}, r"gpu_node_labels=\{\} is invalid"),
    ({"node_cidr": "10.20.0.1/22"}, r"node_cidr='10.20.0.1/22' is invalid: must be an IPv4 CIDR"),
    ({"namespace": "Inference"}, r"namespace='Inference' is invalid: must be a DNS-1123 label"),
    ({"pls_visibility": ("my-subscription",)}, r"pls_visibility='my-subscription' is invalid"),
    ({"internal_lb_ip": "20.1.2.3"}, r"internal_lb_ip='20.1.2.3' is invalid: must be a private address"),
    ({"model_source": DownloadModelSource(repo_id="Qwen/Qwen2.5-7B-Instruct", revision="main")},
     r"model_source.revision='main' is invalid: must be a 40-hex commit SHA"),
    ({"autoscaling": KedaAutoscaling(prometheus_server_address="https://p", min_replicas=0)},
     r"autoscaling.min_replicas=0 is invalid"),
    ({"autoscaling": KedaAutoscaling(prometheus_server_address="https://p", min_replicas=3, max_replicas=2)},
     r"autoscaling.max_replicas=2 is invalid"),
])
def test_bad_args_are_rejected_with_a_message_naming_field_and_rule(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(InferenceServiceConfigError, match=message):
        prod_args(**overrides)


def test_args_mutated_after_construction_are_checked_again_before_deploying() -> None:
    args = prod_args()
    args.serving.tp_size = 9
    # The declared bound (inference/settings.py), checked for every caller as each component's limits are.
    with pytest.raises(ArgsOutOfLimits, match=r"ServingSettings.tp_size=9 is invalid: allowed: >= 1 and <= 8"):
        render_service(args)
    args = prod_args()
    args.replicas = 0
    with pytest.raises(InferenceServiceConfigError, match="replicas=0"):
        render_service(args)



# ------------------------------------------------------------------------------------------ policies
def test_prod_shaped_output_passes_the_policy_pack_with_the_prod_config() -> None:
    violations = evaluate(render_service(prod_args()), config_path_for("prod"), "prod")
    assert [(v.policy_name, v.message) for v in violations] == []


def test_policy_pack_rejects_a_scaled_object_that_queries_azure_monitor_unauthenticated() -> None:
    unauthenticated = prod_args(autoscaling=KedaAutoscaling(
        prometheus_server_address="https://amw-inferforge.prometheus.monitor.azure.com", min_replicas=2,
        max_replicas=4))
    violations = evaluate(render_service(unauthenticated), config_path_for("prod"), "prod")
    assert {v.policy_name for v in violations} == {"keda-addon-and-authentication"}


def test_deployment_waits_as_long_as_node_join_image_pull_and_model_load() -> None:
    args = prod_args()  # startup 10 s x 180, 2..4 replicas, surge 1
    create, update = args.await_timeouts_s
    assert create == 900 + 600 + 1800
    assert update == 900 + 4 * (600 + 1800)
    deployment = next(r for r in render_service(args) if r.type == "kubernetes:apps/v1:Deployment")
    assert deployment.inputs["metadata"]["annotations"]["pulumi.com/timeoutSeconds"] == str(create)
    assert deployment.inputs["spec"]["progressDeadlineSeconds"] == create


def test_policy_pack_rejects_a_tag_pinned_image_under_the_prod_config() -> None:
    dev_image = prod_args(image_digest=None, image_tag="0.1.0-dev", allow_image_tags=True)
    violations = evaluate(render_service(dev_image), config_path_for("prod"), "prod")
    assert {v.policy_name for v in violations} == {"k8s-image-digest-pinned"}
