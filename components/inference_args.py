"""InferenceService's arguments: `InferenceServiceArgs`, where the weights come from, autoscaling, and every
check of them (the component's module docstring, components/inference_service.py, says why each default).

The server's own settings are `InferenceServiceArgs.serving`, declared once in inference/settings.py.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
from inferforge.inference import defaults as serving_defaults
from inferforge.inference import settings as serving
from inferforge.inference.settings import ServingSettings

from . import package
from .egress_endpoints import ENTRA_ID_IPV4_RANGES
from .kubernetes import (
    NON_ROOT_UID,
    KubernetesArgsError,
    NodeTaint,
    check_cidr,
    check_dns_label,
    check_range,
    fail,
    federated_credential_subject,
    reported_as,
)
from .limits import limits_of

SERVING_PORT = serving_defaults.PORT
"""Port the inference server listens on (``--port``); also the metrics port."""
SERVER_UID = NON_ROOT_UID
"""Non-root UID the inference image runs as."""
MIN_HOST_MEMORY_PER_RANK_GIB = 2
"""Host RAM each tensor-parallel rank needs outside /dev/shm (Python, CUDA context, staging)."""
MAX_TP_SIZE = serving.MAX_TP_SIZE
"""Largest tensor-parallel group one pod can hold (8 GPUs per Azure ND node)."""

# Await timeout the pulumi-kubernetes provider reads when no custom timeout is given; CustomTimeouts in
# resource options take precedence (https://github.com/pulumi/pulumi-kubernetes/issues/672). Both are set.
PULUMI_TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
_GIT_SHA = re.compile(r"^[0-9a-f]{40}$")
MODEL_MOUNT = "/models"
"""Where the weights' volume is mounted in the server container."""
_K8S_VERSION = re.compile(r"^1\.\d{2}$")

class ServingMetric(StrEnum):
    """A server metric KEDA can scale on (vLLM's names)."""

    NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
    NUM_REQUESTS_RUNNING = "vllm:num_requests_running"


class InferenceServiceConfigError(KubernetesArgsError):
    """Invalid InferenceService arguments; the message names the field, the value and what is allowed."""


def shm_problem(shm_gib: int, memory_gib: int, tp_size: int, *, keys: tuple[str, str, str]) -> str | None:
    """Why a /dev/shm of `shm_gib` does not fit a `memory_gib` container limit with `tp_size` ranks, or None.

    The one check of this rule (module docstring, "Memory arithmetic"): the component and the stack config
    (stacks/config.py, which names its YAML keys through `keys`: shm, memory, tp) both call it.
    """
    shm_key, memory_key, tp_key = keys
    most = memory_gib - MIN_HOST_MEMORY_PER_RANK_GIB * tp_size
    if shm_gib <= most:
        return None
    return (f"{shm_gib} leaves {memory_gib - shm_gib} GiB of {memory_key} {memory_gib} for {tp_size} tensor-parallel "
            f"rank(s), which need {MIN_HOST_MEMORY_PER_RANK_GIB} GiB each outside /dev/shm (charged to the memory "
            f"limit); allowed: {shm_key} <= {memory_key} - {MIN_HOST_MEMORY_PER_RANK_GIB} x {tp_key} = {most}")


@dataclass(frozen=True)
class PvcModelSource:
    """Weights on a PersistentVolumeClaim (Azure Blob/Files CSI), mounted read-only: the default."""

    storage_class: str = "azureblob-fuse-premium"
    """CSI storage class for a dynamically provisioned claim; blobfuse is mounted by the node, no pod egress."""
    size_gib: int = 256
    """Requested capacity of a dynamically provisioned claim."""
    existing_claim: str | None = None
    """Name of a pre-created claim (static PV onto an existing container); None provisions a new one."""
    sub_path: str = ""
    """Directory inside the volume that holds the model (config.json, safetensors); '' is the root."""

    @reported_as(InferenceServiceConfigError)
    def validate(self) -> None:
        """Reject claim settings Kubernetes or the mount would refuse later."""
        if self.existing_claim is not None:
            check_dns_label("model_source.existing_claim", self.existing_claim, max_len=253)
        else:
            check_dns_label("model_source.storage_class", self.storage_class, max_len=253)
            check_range("model_source.size_gib", self.size_gib, 1)
        if self.sub_path.startswith("/") or ".." in self.sub_path.split("/"):
            raise fail("model_source.sub_path", self.sub_path, "must be a relative path without '..'")


@dataclass(frozen=True)
class DownloadModelSource:
    """Weights downloaded from the Hugging Face Hub by an init container into a node-local emptyDir."""

    repo_id: str
    """Hub repository, e.g. ``Qwen/Qwen2.5-7B-Instruct``."""
    revision: str
    """Commit SHA (40 hex) of the repository: a branch name would let the served weights change silently."""
    size_gib: int = 64
    """sizeLimit of the emptyDir that holds the weights (node ephemeral disk)."""
    egress_cidrs: Sequence[str] = ("0.0.0.0/0",)
    """Where the download may go on 443 (the Hub's CDN has no stable ranges); private ranges always excluded."""

    @reported_as(InferenceServiceConfigError)
    def validate(self) -> None:
        """Reject unpinned revisions and malformed repository ids."""
        if not (isinstance(self.repo_id, str) and re.match(r"^[\w.-]+/[\w.-]+$", self.repo_id)):
            raise fail("model_source.repo_id", self.repo_id, "must look like 'owner/name'")
        if not (isinstance(self.revision, str) and _GIT_SHA.match(self.revision)):
            raise fail("model_source.revision", self.revision, "must be a 40-hex commit SHA, not a branch or tag")
        check_range("model_source.size_gib", self.size_gib, 1)
        if not self.egress_cidrs:
            raise fail("model_source.egress_cidrs", self.egress_cidrs, "needs at least one CIDR")
        for cidr in self.egress_cidrs:
            check_cidr("model_source.egress_cidrs", cidr)


_STORAGE_ACCOUNT = re.compile(r"^[a-z0-9]{3,24}$")
_BLOB_CONTAINER = re.compile(r"^[a-z0-9](?!.*--)[a-z0-9-]{1,61}[a-z0-9]$")
BLOB_CSI_DRIVER = "blob.csi.azure.com"
# The options of AKS's built-in azureblob-fuse-premium class (attribute/entry caches, no listing on mount,
# bounded file cache; https://github.com/kubernetes-sigs/blob-csi-driver/blob/master/deploy/example/blobfuse-mi/README.md)
# plus `-o ro`. allow_other lets the server's non-root UID read a mount that blobfuse2 makes as root.
BLOBFUSE_READ_ONLY_MOUNT_OPTIONS = (
    "-o allow_other", "-o ro", "--file-cache-timeout-in-seconds=120", "--use-attr-cache=true",
    "--cancel-list-on-mount-seconds=10", "-o attr_timeout=120", "-o entry_timeout=120", "-o negative_timeout=120",
    "--log-level=LOG_WARNING", "--cache-size-mb=1000",
)


@dataclass(frozen=True)
class ModelStoreSource:
    """Weights in the platform's private model store: a static, read-only Blob PV bound to a claim of this service.

    The PV names the storage account and container (no dynamic provisioning, so no public account appears in
    the node resource group), mounts with blobfuse2 (``protocol: fuse2``) and authenticates with the kubelet
    identity through the node's IMDS (``AzureStorageAuthType: MSI``), so no account key exists anywhere
    (https://github.com/kubernetes-sigs/blob-csi-driver/blob/master/docs/driver-parameters.md, "Static
    Provisioning"). The account is reached through its private endpoint, never through the egress firewall.
    """

    storage_account: str
    """Storage account of the model store (components/model_store.py)."""
    resource_group: str
    """Resource group of that account (the CSI driver defaults to the node resource group otherwise)."""
    identity_client_id: pulumi.Input[str]
    """Client id of the AKS kubelet identity, which holds Storage Blob Data Reader on the container."""
    container_name: str = "models"
    """Blob container with one directory per model."""
    sub_path: str = ""
    """Directory inside the container that holds the model (config.json, safetensors); '' is the root."""
    size_gib: int = 256
    """Nominal capacity of the PV and claim (Blob has no quota; Kubernetes needs a number to bind them)."""

    @reported_as(InferenceServiceConfigError)
    def validate(self) -> None:
        """Reject names Azure or Kubernetes would refuse later."""
        if not (isinstance(self.storage_account, str) and _STORAGE_ACCOUNT.match(self.storage_account)):
            raise fail("model_source.storage_account", self.storage_account, "must be 3-24 lowercase alphanumerics")
        if not (isinstance(self.container_name, str) and _BLOB_CONTAINER.match(self.container_name)):
            raise fail("model_source.container_name", self.container_name,
                       "must be 3-63 lowercase letters, digits and single hyphens")
        if not (isinstance(self.resource_group, str) and self.resource_group):
            raise fail("model_source.resource_group", self.resource_group, "must name the account's resource group")
        check_range("model_source.size_gib", self.size_gib, 1)
        if self.sub_path.startswith("/") or ".." in self.sub_path.split("/"):
            raise fail("model_source.sub_path", self.sub_path, "must be a relative path without '..'")


ModelSource = ModelStoreSource | PvcModelSource | DownloadModelSource


@package.schema_args
@dataclass(frozen=True)
class KedaAutoscaling:
    """Scale replicas on a serving metric through a KEDA ScaledObject with a Prometheus trigger."""

    prometheus_server_address: str
    """Prometheus query endpoint KEDA reads (e.g. the Azure Monitor workspace's query URL)."""
    min_replicas: int = 1
    """Floor; at least 1 because a queue metric cannot grow while no pod is serving (no scale from zero)."""
    max_replicas: int = 2
    """Ceiling; bounded by the GPU pool's max node count."""
    metric: ServingMetric = ServingMetric.NUM_REQUESTS_WAITING
    """Serving metric summed over the pods; queue depth reacts before latency degrades."""
    target_per_replica: int = 4
    """Desired metric value per replica (AverageValue): replicas = ceil(sum / target)."""
    authentication_ref: str | None = None
    """Name of a KEDA TriggerAuthentication (e.g. azure-workload identity for Azure Monitor); None = none."""
    polling_interval_s: int = 30
    """How often KEDA evaluates the query."""
    scale_down_stabilization_s: int = 600
    """Window before removing a replica: a GPU pod costs minutes of model load to bring back."""

    @reported_as(InferenceServiceConfigError)
    def validate(self) -> None:
        """Reject bounds that cannot work."""
        if not (isinstance(self.prometheus_server_address, str)
                and self.prometheus_server_address.startswith(("https://", "http://"))):
            raise fail("autoscaling.prometheus_server_address", self.prometheus_server_address,
                       "must be an http(s) URL of the Prometheus query API")
        check_range("autoscaling.min_replicas", self.min_replicas, 1)
        check_range("autoscaling.max_replicas", self.max_replicas, self.min_replicas)
        check_range("autoscaling.target_per_replica", self.target_per_replica, 1)
        check_range("autoscaling.polling_interval_s", self.polling_interval_s, 5)
        check_range("autoscaling.scale_down_stabilization_s", self.scale_down_stabilization_s, 0, 3600)
        if self.authentication_ref is not None:
            check_dns_label("autoscaling.authentication_ref", self.authentication_ref, max_len=253)


# The server's settings are declared once (inference/settings.py, torch- and Pulumi-free); this makes them a
# schema type for other Pulumi languages, as KedaAutoscaling is.
package.schema_args(ServingSettings)


@package.schema_args
@dataclass
class InferenceServiceArgs:
    """Arguments of :class:`InferenceService`; defaults are the secure, production-shaped choice."""

    model_name: str
    """Name clients send as ``model`` (``--model-name``)."""
    image_registry: str
    """Registry host of the server image, e.g. ``crinferforgeprod.azurecr.io`` (AKS pulls with kubelet identity)."""
    image_repository: str
    """Repository of the server image inside the registry."""
    workload_identity_client_id: pulumi.Input[str]
    """Client id of the user-assigned identity federated with this ServiceAccount (no secret in the cluster)."""
    keyvault_url: pulumi.Input[str]
    """Key Vault URI holding the API keys; keys never become a Kubernetes Secret."""
    pls_name: str
    """Name of the Private Link Service AKS creates; the platform derives Front Door's origin target from it."""
    pls_subnet_name: str
    """Subnet (same VNet) where the PLS allocates its NAT IPs."""
    pls_subnet_cidr: str
    """CIDR of that subnet: PLS-NATed Front Door traffic arrives from it, so ingress admits it."""
    node_cidr: str
    """AKS node subnet CIDR: load-balancer traffic relayed by kube-proxy arrives from node addresses."""
    private_endpoint_subnet_cidr: str
    """Subnet of the Key Vault and Managed Redis private endpoints: the only in-VNet egress allowed."""
    gpu_node_labels: Mapping[str, str]
    """Labels of the GPU pool (e.g. ``{"inferforge.io/pool": "gpu"}``), required node affinity: GPUs only there."""
    image_digest: str | None = None
    """``sha256:<64 hex>`` image digest; required unless ``allow_image_tags`` so prod runs exactly what was tested."""
    image_tag: str | None = None
    """Mutable tag, honoured only when ``allow_image_tags`` (dev); a digest wins when both are set."""
    allow_image_tags: bool = False
    """Off by default: tags can be moved under a running deployment, digests cannot."""
    api_keys_secret_name: str = "inference-api-keys"
    """Key Vault secret holding the API keys (``--api-keys-secret``)."""
    redis_host: pulumi.Input[str] | None = None
    """Managed Redis hostname (private endpoint); passed as env, authenticated with Entra, no access key."""
    redis_port: int = 10000
    """Managed Redis TLS port (10000); also the only Redis port the egress policy opens."""
    name: str = "inference"
    """Base name of the Kubernetes objects and the ``app.kubernetes.io/instance`` label."""
    namespace: str = "inference"
    """Namespace created for the service; part of the federated credential subject."""
    service_account_name: str = "inference"
    """ServiceAccount name; part of the federated credential subject."""
    kubernetes_version: str = "1.33"
    """Cluster minor version; pins the Pod Security Standard version so upgrades cannot loosen it silently."""
    serving: ServingSettings = field(default_factory=ServingSettings)
    """The server's settings (tensor parallelism, dtype, batch, context and KV cache limits, embeddings, tool calls,
    drain), each passed to the pod as its flag; tp_size is also the GPUs each pod requests."""
    replicas: int = 1
    """Pods (one TP group each) when autoscaling is off; ignored (left to KEDA) when it is on."""
    cpu: int = 8
    """CPU cores, requests = limits (Guaranteed QoS: last to be evicted)."""
    memory_limit_gib: int = 64
    """Container memory limit = request, *including* /dev/shm (see module docstring arithmetic)."""
    shm_size_gib: int = 8
    """sizeLimit of the /dev/shm Memory emptyDir, counted inside ``memory_limit_gib``."""
    tmp_size_gib: int = 4
    """sizeLimit of the /tmp emptyDir (the root filesystem is read-only)."""
    cache_size_gib: int = 16
    """sizeLimit of the cache emptyDir (HF_HOME, DeepSpeed/Triton JIT caches)."""
    gpu_taints: Sequence[str] = ("sku=gpu:NoSchedule",)
    """GPU pool taints in AKS ``key=value:Effect`` form; each becomes a toleration."""
    model_source: ModelSource = package.python_only(default_factory=PvcModelSource)
    """Where the weights come from; a read-only PVC by default (no pod egress, nothing downloaded at start)."""
    startup_period_s: int = 10
    """startupProbe period; ``period x failure_threshold`` is the model-load budget."""
    startup_failure_threshold: int = 180
    """startupProbe failures tolerated (180 x 10 s = 30 min for large checkpoints on blobfuse)."""
    readiness_period_s: int = 10
    """readinessProbe period on /ready."""
    liveness_period_s: int = 20
    """livenessProbe period on /health."""
    liveness_failure_threshold: int = 3
    """Consecutive /health failures before the kubelet restarts the container."""
    prestop_sleep_s: int = 15
    """preStop sleep so the load balancer stops routing before SIGTERM starts the drain."""
    termination_grace_period_s: int = 15 + serving_defaults.DRAIN_TIMEOUT_S + 15
    """Must be >= preStop + drain, or the kubelet SIGKILLs mid-generation; default preStop + drain + 15 s to exit."""
    service_port: int = 80
    """Port of the internal load balancer (Front Door's origin HTTP port over Private Link)."""
    pls_visibility: Sequence[str] = ()
    """Subscriptions that may see/request the PLS; empty keeps the provider default (RBAC only)."""
    pls_nat_ip_count: int = 1
    """NAT IPs the PLS allocates in its subnet (1-8)."""
    internal_lb_subnet_name: str | None = None
    """Subnet for the internal LB frontend; None uses the node subnet."""
    internal_lb_ip: str | None = None
    """Static private IP of the ILB frontend (Front Door's origin host name); None lets Azure pick one."""
    gateway_namespace: str | None = None
    """Namespace of the AI gateway in front of this server (components/gateway.py). Set, the Service is
    cluster-internal (ClusterIP, no load balancer, no PLS) and only the gateway's pods may call it; None exposes
    the server itself through the internal LB + PLS."""
    metrics_scraper_namespace: str = "kube-system"
    """Namespace of the Prometheus scraper (AKS managed Prometheus runs ama-metrics in kube-system)."""
    entra_egress_cidrs: Sequence[str] = ENTRA_ID_IPV4_RANGES
    """Public ranges for the Entra ID token exchange on 443; private and link-local (IMDS) always excluded."""
    pdb_max_unavailable: int = 1
    """PodDisruptionBudget maxUnavailable: node upgrades drain one GPU pod at a time and never deadlock."""
    rollout_max_surge: int = 1
    """Extra pods during a rollout (needs spare GPU capacity; 0 trades availability for GPUs)."""
    autoscaling: KedaAutoscaling | None = None
    """KEDA autoscaling on a serving metric; None keeps a fixed replica count."""
    node_provision_budget_s: int = 900
    """Time for a GPU node to join (scale-up from zero, NVIDIA driver install) before a pod can start."""
    image_pull_budget_s: int = 600
    """Time to pull the server image (CUDA + PyTorch + DeepSpeed: many GB) onto a fresh node."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every object (e.g. environment)."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def federated_subject(self) -> str:
        """Subject of the federated credential the identity needs for this ServiceAccount."""
        return federated_credential_subject(self.namespace, self.service_account_name)

    @property
    def image(self) -> str:
        """The image reference the Deployment runs (digest-pinned unless tags are allowed)."""
        base = f"{self.image_registry}/{self.image_repository}"
        if self.image_digest is not None:
            return f"{base}@{self.image_digest}"
        return f"{base}:{self.image_tag}"

    @property
    def startup_budget_s(self) -> int:
        """Seconds the startup probe waits for the model to load on every rank."""
        return self.startup_period_s * self.startup_failure_threshold

    @property
    def await_timeouts_s(self) -> tuple[int, int]:
        """(create, update) seconds Pulumi waits for the Deployment to become available.

        Create: a node may have to join, then the image pulls and the model loads (startup budget).
        Update: the rolling update replaces pods `rollout_max_surge` at a time, each pulling and loading.
        Pulumi's default for a Deployment is 10 minutes, shorter than one model load.
        """
        per_pod = self.image_pull_budget_s + self.startup_budget_s
        pods = self.autoscaling.max_replicas if self.autoscaling is not None else self.replicas
        rounds = -(-pods // max(1, self.rollout_max_surge))
        return self.node_provision_budget_s + per_pod, self.node_provision_budget_s + rounds * per_pod

    @property
    def model_dir(self) -> str:
        """Path of the model directory inside the container."""
        if isinstance(self.model_source, PvcModelSource | ModelStoreSource) and self.model_source.sub_path:
            return f"{MODEL_MOUNT}/{self.model_source.sub_path.strip('/')}"
        if isinstance(self.model_source, DownloadModelSource):
            return f"{MODEL_MOUNT}/model"
        return MODEL_MOUNT

    @reported_as(InferenceServiceConfigError)
    def validate(self) -> None:
        """Check every argument; raise :class:`InferenceServiceConfigError` naming the first bad one."""
        self._validate_image()
        for name in ("name", "namespace", "service_account_name"):
            check_dns_label(name, getattr(self, name))
        if not isinstance(self.model_name, str) or not self.model_name.strip():
            raise fail("model_name", self.model_name, "must be a non-empty string")
        if not _K8S_VERSION.match(self.kubernetes_version):
            raise fail("kubernetes_version", self.kubernetes_version, "must be a minor version like '1.33'")
        self._validate_serving()
        check_range("replicas", self.replicas, 1)
        check_range("cpu", self.cpu, 1)
        self._validate_memory()
        self._validate_probes()
        self._validate_network()
        if not self.gpu_node_labels:
            raise fail("gpu_node_labels", self.gpu_node_labels, "needs at least one label of the GPU pool")
        if not self.gpu_taints:
            raise fail("gpu_taints", self.gpu_taints, "needs the GPU pool's taint (e.g. sku=gpu:NoSchedule)")
        for taint in self.gpu_taints:
            NodeTaint.parse(taint)
        self.model_source.validate()
        check_range("node_provision_budget_s", self.node_provision_budget_s, 0)
        check_range("image_pull_budget_s", self.image_pull_budget_s, 0)
        check_range("pdb_max_unavailable", self.pdb_max_unavailable, 1)
        check_range("rollout_max_surge", self.rollout_max_surge, 0)
        if self.autoscaling is not None:
            self.autoscaling.validate()

    def _validate_serving(self) -> None:
        # Bounds and choices as the declaration states them (inference/settings.py).
        chosen = self.serving
        if not isinstance(chosen, ServingSettings):
            raise fail("serving", chosen, "must be a ServingSettings (inference/settings.py)")
        for setting in serving.settings_fields(type(chosen)):
            limits = limits_of(setting)
            problem = limits.problem(getattr(chosen, setting.name)) if limits else None
            if problem:
                raise fail(f"serving.{setting.name}", getattr(chosen, setting.name), problem)
        for name, value, allowed in serving.choice_problems(chosen, type(chosen)):
            raise fail(f"serving.{name}", value, f"allowed: {allowed}")
        problem = serving.embeddings_problem(chosen.embeddings, chosen.tp_size,
                                             {"embeddings": "serving.embeddings", "tp_size": "serving.tp_size"})
        if problem:
            raise fail("serving.embeddings", chosen.embeddings, problem)

    def _validate_image(self) -> None:
        if not (isinstance(self.image_registry, str) and _REGISTRY.match(self.image_registry)):
            raise fail("image_registry", self.image_registry, "must be a registry host such as myacr.azurecr.io")
        if not (isinstance(self.image_repository, str) and _REPOSITORY.match(self.image_repository)):
            raise fail("image_repository", self.image_repository, "must be a lowercase repository path")
        if self.image_digest is not None and not _DIGEST.match(self.image_digest):
            raise fail("image_digest", self.image_digest, "must be 'sha256:' followed by 64 lowercase hex digits")
        if self.image_digest is None:
            if not self.allow_image_tags:
                raise fail("image_digest", None, "a digest (sha256:<64 hex>) is required; tags are only "
                                                  "accepted when allow_image_tags is true (dev)")
            if self.image_tag is None or not _TAG.match(self.image_tag):
                raise fail("image_tag", self.image_tag, "must be a Docker tag when no digest is given")

    def _validate_memory(self) -> None:
        check_range("memory_limit_gib", self.memory_limit_gib, 1)
        check_range("shm_size_gib", self.shm_size_gib, 1)
        check_range("tmp_size_gib", self.tmp_size_gib, 1)
        check_range("cache_size_gib", self.cache_size_gib, 1)
        problem = shm_problem(self.shm_size_gib, self.memory_limit_gib, self.serving.tp_size,
                              keys=("shm_size_gib", "memory_limit_gib", "serving.tp_size"))
        if problem:
            raise fail("shm_size_gib", self.shm_size_gib, problem)

    def _validate_probes(self) -> None:
        check_range("startup_period_s", self.startup_period_s, 1)
        check_range("startup_failure_threshold", self.startup_failure_threshold, 1)
        if self.startup_budget_s < 60:
            raise fail("startup_failure_threshold", self.startup_failure_threshold,
                       f"startup_period_s x startup_failure_threshold = {self.startup_budget_s}s; a model "
                       "load needs at least 60s")
        check_range("readiness_period_s", self.readiness_period_s, 1)
        check_range("liveness_period_s", self.liveness_period_s, 1)
        check_range("liveness_failure_threshold", self.liveness_failure_threshold, 1)
        check_range("prestop_sleep_s", self.prestop_sleep_s, 0)
        check_range("termination_grace_period_s", self.termination_grace_period_s, 1)
        needed = self.prestop_sleep_s + self.serving.drain_timeout_s
        if self.termination_grace_period_s < needed:
            raise fail("termination_grace_period_s", self.termination_grace_period_s,
                       f"must be >= prestop_sleep_s ({self.prestop_sleep_s}) + serving.drain_timeout_s "
                       f"({self.serving.drain_timeout_s}) = {needed}, or the kubelet kills the server mid-drain")

    def _validate_network(self) -> None:
        check_dns_label("pls_name", self.pls_name, max_len=80)
        if not (isinstance(self.pls_subnet_name, str) and re.match(r"^[\w.-]{1,80}$", self.pls_subnet_name)):
            raise fail("pls_subnet_name", self.pls_subnet_name, "must be an Azure subnet name")
        for name in ("pls_subnet_cidr", "node_cidr", "private_endpoint_subnet_cidr"):
            check_cidr(name, getattr(self, name))
        if not self.entra_egress_cidrs:
            raise fail("entra_egress_cidrs", self.entra_egress_cidrs, "needs at least one CIDR")
        for cidr in self.entra_egress_cidrs:
            check_cidr("entra_egress_cidrs", cidr)
        check_range("redis_port", self.redis_port, 1, 65535)
        check_range("service_port", self.service_port, 1, 65535)
        check_range("pls_nat_ip_count", self.pls_nat_ip_count, 1, 8)
        if self.gateway_namespace is not None:
            check_dns_label("gateway_namespace", self.gateway_namespace)
        check_dns_label("metrics_scraper_namespace", self.metrics_scraper_namespace)
        if self.internal_lb_ip is not None:
            try:
                address = ipaddress.IPv4Address(self.internal_lb_ip)
            except ValueError:
                raise fail("internal_lb_ip", self.internal_lb_ip, "must be an IPv4 address") from None
            if not address.is_private:
                raise fail("internal_lb_ip", self.internal_lb_ip, "must be a private address (internal LB)")
        for subscription in self.pls_visibility:
            if subscription != "*" and not re.match(r"^[0-9a-f]{8}(-[0-9a-f]{4}){3}-[0-9a-f]{12}$", subscription):
                raise fail("pls_visibility", subscription, "entries must be subscription GUIDs or '*'")
