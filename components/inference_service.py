"""InferenceService: the tensor-parallel LLM server on the AKS GPU pool, reachable only through Front Door.

Kubernetes provider
-------------------
Every child is created with the ``pulumi_kubernetes.Provider`` passed in ``opts`` (``provider=`` or
``providers={"kubernetes": ...}``); the component refuses to run without one, so it never deploys into
whatever cluster an ambient ``~/.kube/config`` points at. The stack builds that provider from the AKS
cluster's credentials. AKS with local accounts disabled (our setting) hands out only an Entra ID
kubeconfig (``containerservice.list_managed_cluster_user_credentials``, the ``listClusterUserCredential``
action) whose user entry execs ``kubelogin``; it has to be converted to a non-interactive login mode
before Pulumi can use it: ``kubelogin convert-kubeconfig -l azurecli`` on a workstation, or ``-l
workloadidentity`` in CI (GitHub OIDC federated to a deployment identity). ``kubelogin`` must be on the
PATH of whoever runs ``pulumi up``; the deploying principal needs an AKS RBAC role on the cluster.

What is created (type ``inferforge:inference:InferenceService``)
-----------------------------------------------------------------
Namespace, ServiceAccount, Deployment, Service (internal LoadBalancer + Private Link Service),
PodDisruptionBudget, NetworkPolicy, optionally a PersistentVolume(Claim) for the weights and a KEDA
``ScaledObject``.

Pod security: the namespace enforces the ``restricted`` Pod Security Standard. GPU pods are compatible
with it: the NVIDIA device plugin hands the GPU device nodes to the container through the runtime, so
the pod needs no privileged mode, host paths or added capabilities, and every volume we use (emptyDir,
PVC, the projected token the workload-identity webhook adds) is on the restricted allow-list. Baseline
would only be needed for pods that mount host paths (e.g. the GPU operator's own driver pods, which live
in their own namespace).

Identity: the ServiceAccount carries ``azure.workload.identity/client-id`` and the pods the
``azure.workload.identity/use: "true"`` label, so the AKS webhook projects a federated token and the
server's ``DefaultAzureCredential`` exchanges it with Entra ID for Key Vault (API keys) and Managed Redis
tokens. No secret is stored in Kubernetes; the pod does not even mount a Kubernetes API token
(``automountServiceAccountToken: false``; the webhook's token is a separate projected volume). The
federated credential on the identity must use :func:`federated_credential_subject`.

Memory arithmetic: ``/dev/shm`` is a ``medium: Memory`` emptyDir, i.e. tmpfs charged to the pod's
memory cgroup. The container's memory limit is therefore ``memory_limit_gib`` which must hold both the
shared memory NCCL/PyTorch put in ``/dev/shm`` (up to ``shm_size_gib``) and the processes themselves:
``process budget = memory_limit_gib - shm_size_gib``. We require that budget to be at least
``MIN_HOST_MEMORY_PER_RANK_GIB`` per tensor-parallel rank (each rank is a Python process with a CUDA
context and host-side staging buffers), otherwise a full ``/dev/shm`` OOM-kills the server.
Requests equal limits for CPU, memory and GPUs, giving the pod the Guaranteed QoS class (last to be
evicted under node pressure; a restart costs a full model load).

Model weights (``model_source``); the platform stacks use :class:`ModelStoreSource`:

* :class:`ModelStoreSource`: a static, read-only Blob PV on the platform's private model store
  (components/model_store.py), bound to this service's claim, mounted by blobfuse2 on the node with the
  kubelet identity (MSI, no account key). The account is reached through its private endpoint, so the
  egress firewall is never on the path.
* :class:`PvcModelSource`: PVC on the Azure Blob CSI driver (``azureblob-fuse-premium``) or Azure Files,
  mounted read-only. A dynamically provisioned account has a public endpoint the nodes reach through the
  egress firewall, so the stack config refuses it unless that FQDN is allowed (stacks/config.py).
  The mount is done by the CSI driver on the node, so the pod needs no egress to storage, nothing is
  downloaded at start (fast restarts and scale-out) and the weights are pinned in storage you control.
  Cost: someone uploads the weights once (``azcopy`` into the provisioned container, or a static PV
  for an existing container via ``existing_claim``), and blobfuse reads at storage throughput.
* :class:`DownloadModelSource`: an init container (same image, ``hf download`` of a pinned revision)
  fills a node-local emptyDir. Simple and needs no storage account, but every pod start re-downloads,
  the pod must reach the Hugging Face CDN on 443 (a NetworkPolicy cannot name an FQDN, so that means
  public HTTPS egress for the whole pod), and gated models would need a token.

Network: the Service is an internal Standard Load Balancer with an AKS-managed Private Link Service
(``azure-pls-*`` annotations, proxy protocol off so the server sees plain HTTP); Front Door Premium's
private-link origin targets that PLS, whose private endpoint connection must then be approved (see
docs). ``externalTrafficPolicy: Local`` keeps the PLS NAT address as the source, so the NetworkPolicy
admits the serving port from the PLS subnet and the node subnet (kube-proxy/LB path) only, plus the
metrics scraper's namespace. Egress is DNS (kube-dns), the private-endpoint subnet (Key Vault 443,
Managed Redis ``redis_port``) and HTTPS to Entra ID for the workload-identity token exchange.
Entra ID (``login.microsoftonline.com``) cannot be named by FQDN in a NetworkPolicy, so that rule admits
TCP 443 only to ``entra_egress_cidrs``, by default Entra ID's published IPv4 ranges
(components/egress_endpoints.py); any private and link-local range inside a configured CIDR is excepted,
so the pod never reaches IMDS (169.254.169.254) to borrow the node's kubelet identity. Beyond the pod, the
node subnet's default route sends that traffic to the egress firewall, whose FQDN rule for
``login.microsoftonline.com`` is the authoritative gate (components/egress.py). The image registry needs no
pod rule: the kubelet pulls images, through the registry's private endpoint.

Autoscaling (optional, :class:`KedaAutoscaling`) scales on a serving metric (queue depth or running
requests from Prometheus), never on CPU: a GPU server's CPU usage says nothing about its load.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
import pulumi_kubernetes as k8s
from inferforge.inference import defaults as serving_defaults

from . import package
from .egress_endpoints import ENTRA_ID_IPV4_RANGES
from .kubernetes import (
    NON_ROOT_UID,
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    WORKLOAD_IDENTITY_USE_LABEL,
    KubernetesArgsError,
    NodeTaint,
    check_cidr,
    check_dns_label,
    check_range,
    dns_egress_rule,
    fail,
    federated_credential_subject,
    kubernetes_provider,
    name_of,
    pod_security_labels,
    private_link_service_annotations,
    public_ip_block,
    reported_as,
    restricted_container_security,
)

SERVING_PORT = serving_defaults.PORT
"""Port the inference server listens on (``--port``); also the metrics port."""
SERVER_UID = NON_ROOT_UID
"""Non-root UID the inference image runs as."""
MIN_HOST_MEMORY_PER_RANK_GIB = 2
"""Host RAM each tensor-parallel rank needs outside /dev/shm (Python, CUDA context, staging)."""
MAX_TP_SIZE = 8
"""Largest tensor-parallel group one pod can hold (8 GPUs per Azure ND node)."""

# Await timeout the pulumi-kubernetes provider reads when no custom timeout is given; CustomTimeouts in
# resource options take precedence (https://github.com/pulumi/pulumi-kubernetes/issues/672). Both are set.
PULUMI_TIMEOUT_ANNOTATION = "pulumi.com/timeoutSeconds"

_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
_REGISTRY = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]+)?$")
_REPOSITORY = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*$")
_GIT_SHA = re.compile(r"^[0-9a-f]{40}$")
_K8S_VERSION = re.compile(r"^1\.\d{2}$")

class Dtype(StrEnum):
    """Weights/activation dtype of the server (``--dtype``)."""

    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"
    FLOAT32 = "float32"


class ServingMetric(StrEnum):
    """A server metric KEDA can scale on (vLLM's names)."""

    NUM_REQUESTS_WAITING = "vllm:num_requests_waiting"
    NUM_REQUESTS_RUNNING = "vllm:num_requests_running"


class Embeddings(StrEnum):
    """Where ``/v1/embeddings`` comes from."""

    SERVED = "served"
    """Pooled hidden states of the served model (``--embeddings served``)."""


class EmbeddingsPooling(StrEnum):
    """How token states become one embedding vector (``--embeddings-pooling``)."""

    MEAN = "mean"
    LAST = "last"


class ToolCallParser(StrEnum):
    """The tool-call syntax the model writes (``--tool-call-parser``)."""

    HERMES = "hermes"
    LLAMA3_JSON = "llama3_json"
    MISTRAL = "mistral"


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
    # Serving defaults come from inference/defaults.py (shared with the server CLI and the stack config) and
    # are always passed as container arguments, so the pod runs what the plan shows whatever image it pulls.
    tp_size: int = serving_defaults.TP_SIZE
    """Tensor-parallel size: GPUs per pod (requests = limits) and ranks the server launches."""
    dtype: Dtype = Dtype(serving_defaults.DTYPE)
    """Weights/activation dtype (``--dtype``)."""
    max_batch_size: int = serving_defaults.MAX_BATCH_SIZE
    """Server's running-batch cap (``--max-batch-size``): KV-cache slots preallocated on every GPU."""
    max_waiting: int = serving_defaults.MAX_WAITING
    """Server's waiting-queue cap (``--max-waiting``); beyond it clients get 429."""
    max_model_len: int | None = None
    """Context length cap (``--max-model-len``); None: the model's max_position_embeddings, lowered to what the
    KV pool holds."""
    embeddings: Embeddings | None = None
    """``/v1/embeddings`` from the served model's pooled hidden states (``--embeddings served``, TP 1 only);
    None serves no embeddings (the endpoint answers 404)."""
    embeddings_pooling: EmbeddingsPooling = EmbeddingsPooling(serving_defaults.EMBEDDINGS_POOLING_SERVED)
    """How token states become one vector (``--embeddings-pooling``): the last token's suits decoder models."""
    tool_call_parser: ToolCallParser = ToolCallParser(serving_defaults.TOOL_CALL_PARSER)
    """The tool-call syntax the model writes (``--tool-call-parser``)."""
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
    drain_timeout_s: int = serving_defaults.DRAIN_TIMEOUT_S
    """Server drain after SIGTERM (``--drain-timeout``): in-flight generations finish."""
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
        check_range("tp_size", self.tp_size, 1, MAX_TP_SIZE)
        if self.embeddings not in (None, "served"):
            raise fail("embeddings", self.embeddings, "must be None or 'served'")
        if self.embeddings == "served" and self.tp_size != 1:
            raise fail("embeddings", self.embeddings, "'served' pools the model's own states on one rank: "
                       "tp_size must be 1")
        if self.embeddings_pooling not in ("mean", "last"):
            raise fail("embeddings_pooling", self.embeddings_pooling, "must be 'mean' or 'last'")
        if self.tool_call_parser not in ("hermes", "llama3_json", "mistral"):
            raise fail("tool_call_parser", self.tool_call_parser, "must be 'hermes', 'llama3_json' or 'mistral'")
        if self.dtype not in ("bfloat16", "float16", "float32"):
            raise fail("dtype", self.dtype, "must be bfloat16, float16 or float32")
        for name in ("max_batch_size", "max_waiting", "max_model_len"):
            if getattr(self, name) is not None:
                check_range(name, getattr(self, name), 1)
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
        problem = shm_problem(self.shm_size_gib, self.memory_limit_gib, self.tp_size,
                              keys=("shm_size_gib", "memory_limit_gib", "tp_size"))
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
        check_range("drain_timeout_s", self.drain_timeout_s, 0)
        check_range("termination_grace_period_s", self.termination_grace_period_s, 1)
        needed = self.prestop_sleep_s + self.drain_timeout_s
        if self.termination_grace_period_s < needed:
            raise fail("termination_grace_period_s", self.termination_grace_period_s,
                       f"must be >= prestop_sleep_s ({self.prestop_sleep_s}) + drain_timeout_s "
                       f"({self.drain_timeout_s}) = {needed}, or the kubelet kills the server mid-drain")

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


MODEL_MOUNT = "/models"
TMP_MOUNT = "/tmp"
CACHE_MOUNT = "/cache"
SHM_MOUNT = "/dev/shm"


def _first_ingress_ip(status: object) -> str | None:
    """``status.loadBalancer.ingress[0].ip`` of a Service, or None before the cloud provider assigned it."""
    ingress = getattr(getattr(status, "load_balancer", None), "ingress", None) if status is not None else None
    return ingress[0].ip if ingress else None


class InferenceService(pulumi.ComponentResource):
    """The inference Deployment on the GPU pool behind an internal LB + Private Link Service."""

    namespace: pulumi.Output[str]
    """Namespace of the service."""
    service_name: pulumi.Output[str]
    """Name of the internal load-balancer Service."""
    deployment_name: pulumi.Output[str]
    """Name of the GPU Deployment."""
    service_account_name: pulumi.Output[str]
    """ServiceAccount the pods run as (federated with the workload identity)."""
    pls_name: pulumi.Output[str]
    """Name of the Private Link Service AKS creates for the load balancer (Front Door's origin)."""
    load_balancer_ip: pulumi.Output[str | None]
    """Private IP of the internal load balancer, once assigned."""
    federated_subject: str
    """Subject the identity's federated credential must carry for the ServiceAccount."""

    def __init__(self, name: str, args: InferenceServiceArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(InferenceServiceArgs, args)
        args.validate()  # dataclasses can be mutated after __post_init__; check what is actually deployed
        provider = kubernetes_provider(opts, "InferenceService", InferenceServiceConfigError)
        super().__init__("inferforge:index:InferenceService", name, None,
                         package.aliased(opts, "inferforge:inference:InferenceService"))
        self._args = args
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        # Named objects cannot be created before their predecessor is gone.
        replace_named = pulumi.ResourceOptions(parent=self, provider=provider, delete_before_replace=True)

        self._labels = {
            "app.kubernetes.io/name": "inferforge-inference",
            "app.kubernetes.io/instance": args.name,
            "app.kubernetes.io/part-of": "inferforge",
            "app.kubernetes.io/managed-by": "pulumi",
            **args.labels,
        }
        self._selector = {"app.kubernetes.io/name": "inferforge-inference", "app.kubernetes.io/instance": args.name}

        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.namespace, labels={**self._labels, **pod_security_labels(args.kubernetes_version)}),
            opts=child,
        )
        ns_name = name_of(namespace)
        self._ns = ns_name

        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=self._meta(args.service_account_name, annotations={
                WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: args.workload_identity_client_id,
            }),
            automount_service_account_token=False,
            opts=child,
        )

        claim = self._model_claim(name, child)
        create_s, update_s = args.await_timeouts_s
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=self._meta(args.name, annotations={PULUMI_TIMEOUT_ANNOTATION: str(create_s)}),
            spec=self._deployment_spec(claim),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(
                depends_on=[service_account],
                custom_timeouts=pulumi.CustomTimeouts(create=f"{create_s}s", update=f"{update_s}s"))),
        )

        service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata=self._meta(args.name, annotations=self._service_annotations()),
            spec=k8s.core.v1.ServiceSpecArgs(
                type="LoadBalancer" if args.gateway_namespace is None else "ClusterIP",
                # Local keeps the PLS NAT address as source (the NetworkPolicy admits it) and skips a hop.
                external_traffic_policy="Local" if args.gateway_namespace is None else None,
                selector=self._selector,
                ports=[k8s.core.v1.ServicePortArgs(name="http", protocol="TCP", port=args.service_port,
                                                   target_port="http")],
            ),
            opts=replace_named,
        )

        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=self._meta(args.name),
            spec=k8s.policy.v1.PodDisruptionBudgetSpecArgs(
                max_unavailable=args.pdb_max_unavailable,
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
                # A crash-looping pod must not block node upgrades forever.
                unhealthy_pod_eviction_policy="AlwaysAllow",
            ),
            opts=replace_named,
        )

        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=self._meta(args.name),
            spec=self._network_policy_spec(),
            opts=replace_named,
        )

        if args.autoscaling is not None:
            self._scaled_object(name, child)

        self.namespace = ns_name
        self.service = service
        self.service_name = name_of(service)
        self.deployment_name = name_of(deployment)
        self.service_account_name = name_of(service_account)
        self.pls_name = pulumi.Output.from_input(args.pls_name)
        # Front Door's private-link origin needs the ILB's private IP as host name; Pulumi's Service await
        # fills status once the cloud provider assigned it (the PLS is created alongside).
        self.load_balancer_ip = service.status.apply(_first_ingress_ip)
        self.federated_subject = args.federated_subject
        self.register_outputs({
            "namespace": self.namespace,
            "service_name": self.service_name,
            "deployment_name": self.deployment_name,
            "service_account_name": self.service_account_name,
            "pls_name": self.pls_name,
            "load_balancer_ip": self.load_balancer_ip,
            "federated_subject": self.federated_subject,
        })

    # ----------------------------------------------------------------------------------------- helpers
    def _meta(self, name: str, annotations: Mapping[str, pulumi.Input[str]] | None = None
              ) -> k8s.meta.v1.ObjectMetaArgs:
        return k8s.meta.v1.ObjectMetaArgs(name=name, namespace=self._ns, labels=self._labels,
                                          annotations=dict(annotations) if annotations else None)

    def _service_annotations(self) -> dict[str, str]:
        args = self._args
        if args.gateway_namespace is not None:
            return {}
        return private_link_service_annotations(
            pls_name=args.pls_name, pls_subnet_name=args.pls_subnet_name, nat_ip_count=args.pls_nat_ip_count,
            visibility=args.pls_visibility, internal_lb_subnet_name=args.internal_lb_subnet_name,
            internal_lb_ip=args.internal_lb_ip)

    def _model_claim(self, name: str, child: pulumi.ResourceOptions) -> str | None:
        source = self._args.model_source
        if isinstance(source, ModelStoreSource):
            return self._model_store_claim(name, source, child)
        if not isinstance(source, PvcModelSource):
            return None
        if source.existing_claim is not None:
            return source.existing_claim
        claim_name = f"{self._args.name}-model"
        k8s.core.v1.PersistentVolumeClaim(
            f"{name}-model-pvc",
            metadata=self._meta(claim_name),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                # RWX so operators can populate it (azcopy/one-off job); the server mounts it read-only.
                access_modes=["ReadWriteMany"],
                storage_class_name=source.storage_class,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests={"storage": f"{source.size_gib}Gi"}),
            ),
            # Deleting a dynamically provisioned claim deletes its blob container (reclaim policy Delete),
            # i.e. the uploaded weights: keep it in the cluster when the stack lets go of it.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(retain_on_delete=True)),
        )
        return claim_name

    def _model_store_claim(self, name: str, source: ModelStoreSource, child: pulumi.ResourceOptions) -> str:
        """A static PV on the model store's container, reserved for (and bound to) this service's claim."""
        args = self._args
        claim_name = f"{args.name}-model"
        # PVs are cluster-scoped: namespace + service name keep two services' volumes apart.
        volume_name = f"{args.namespace}-{args.name}-model"
        capacity = {"storage": f"{source.size_gib}Gi"}
        volume = k8s.core.v1.PersistentVolume(
            f"{name}-model-pv",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=volume_name, labels=self._labels),
            spec=k8s.core.v1.PersistentVolumeSpecArgs(
                capacity=capacity,
                # ReadOnlyMany makes the driver add `-o ro` to the blobfuse2 mount itself (NodeStageVolume).
                access_modes=["ReadOnlyMany"],
                # The weights belong to the store, not to the cluster: deleting the PV never touches the container.
                persistent_volume_reclaim_policy="Retain",
                storage_class_name="",
                mount_options=list(BLOBFUSE_READ_ONLY_MOUNT_OPTIONS),
                claim_ref=k8s.core.v1.ObjectReferenceArgs(namespace=args.namespace, name=claim_name),
                csi=k8s.core.v1.CSIPersistentVolumeSourceArgs(
                    driver=BLOB_CSI_DRIVER,
                    read_only=True,
                    # Unique per PV in the cluster ('#' is reserved by the driver, '/' not allowed).
                    volume_handle=f"{source.storage_account}_{source.container_name}_{volume_name}",
                    volume_attributes={
                        "resourceGroup": source.resource_group,
                        "storageAccount": source.storage_account,
                        "containerName": source.container_name,
                        "protocol": "fuse2",
                        "AzureStorageAuthType": "MSI",
                        "AzureStorageIdentityClientID": source.identity_client_id,
                    },
                ),
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )
        k8s.core.v1.PersistentVolumeClaim(
            f"{name}-model-pvc",
            metadata=self._meta(claim_name),
            spec=k8s.core.v1.PersistentVolumeClaimSpecArgs(
                access_modes=["ReadOnlyMany"],
                # "" (not unset): the cluster's default class must not provision a volume for this claim.
                storage_class_name="",
                volume_name=volume_name,
                resources=k8s.core.v1.VolumeResourceRequirementsArgs(requests=capacity),
            ),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=[volume],
                                                                            delete_before_replace=True)),
        )
        return claim_name

    def _server_command(self) -> list[pulumi.Input[str]]:
        args = self._args
        command: list[pulumi.Input[str]] = [
            "python", "-m", "inference", "serve",
            "--model-dir", args.model_dir,
            "--model-name", args.model_name,
            "--tp-size", str(args.tp_size),
            "--dtype", args.dtype,
            "--host", "0.0.0.0",
            "--port", str(SERVING_PORT),
            "--api-keys-keyvault-url", args.keyvault_url,
            "--api-keys-secret", args.api_keys_secret_name,
            "--drain-timeout", str(args.drain_timeout_s),
            "--max-batch-size", str(args.max_batch_size),
            "--max-waiting", str(args.max_waiting),
        ]
        if args.max_model_len is not None:
            command += ["--max-model-len", str(args.max_model_len)]
        if args.embeddings is not None:
            command += ["--embeddings", args.embeddings, "--embeddings-pooling", args.embeddings_pooling]
        command += ["--tool-call-parser", args.tool_call_parser]
        return command

    def _server_env(self) -> list[k8s.core.v1.EnvVarArgs]:
        args = self._args
        env = {
            "HOME": TMP_MOUNT,
            "HF_HOME": f"{CACHE_MOUNT}/huggingface",
            "XDG_CACHE_HOME": CACHE_MOUNT,
            "TORCH_EXTENSIONS_DIR": f"{CACHE_MOUNT}/torch_extensions",  # DeepSpeed JIT-builds ops here
            "TRITON_CACHE_DIR": f"{CACHE_MOUNT}/triton",
            "HF_HUB_OFFLINE": "1",  # the weights are local; the server never talks to the Hub
            "HF_HUB_DISABLE_TELEMETRY": "1",
        }
        env_vars = [k8s.core.v1.EnvVarArgs(name=k, value=v) for k, v in env.items()]
        if args.redis_host is not None:
            env_vars += [
                k8s.core.v1.EnvVarArgs(name="INFERFORGE_REDIS_HOST", value=args.redis_host),
                k8s.core.v1.EnvVarArgs(name="INFERFORGE_REDIS_PORT", value=str(args.redis_port)),
                k8s.core.v1.EnvVarArgs(name="INFERFORGE_REDIS_TLS", value="true"),
            ]
        return env_vars

    def _volumes(self, claim: str | None) -> list[k8s.core.v1.VolumeArgs]:
        args = self._args
        volumes = [
            k8s.core.v1.VolumeArgs(name="dshm", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                medium="Memory", size_limit=f"{args.shm_size_gib}Gi")),
            k8s.core.v1.VolumeArgs(name="tmp", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                size_limit=f"{args.tmp_size_gib}Gi")),
            k8s.core.v1.VolumeArgs(name="cache", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                size_limit=f"{args.cache_size_gib}Gi")),
        ]
        if claim is not None:
            volumes.append(k8s.core.v1.VolumeArgs(
                name="model",
                persistent_volume_claim=k8s.core.v1.PersistentVolumeClaimVolumeSourceArgs(claim_name=claim,
                                                                                          read_only=True)))
        else:
            assert isinstance(args.model_source, DownloadModelSource)
            volumes.append(k8s.core.v1.VolumeArgs(name="model", empty_dir=k8s.core.v1.EmptyDirVolumeSourceArgs(
                size_limit=f"{args.model_source.size_gib}Gi")))
        return volumes

    def _scratch_mounts(self) -> list[k8s.core.v1.VolumeMountArgs]:
        return [
            k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=TMP_MOUNT),
            k8s.core.v1.VolumeMountArgs(name="cache", mount_path=CACHE_MOUNT),
        ]

    def _download_init_container(self) -> k8s.core.v1.ContainerArgs:
        args = self._args
        source = args.model_source
        assert isinstance(source, DownloadModelSource)
        return k8s.core.v1.ContainerArgs(
            name="download-model",
            image=args.image,
            image_pull_policy="IfNotPresent",
            command=["hf", "download", source.repo_id, "--revision", source.revision,
                     "--local-dir", args.model_dir],
            env=[k8s.core.v1.EnvVarArgs(name="HOME", value=TMP_MOUNT),
                 k8s.core.v1.EnvVarArgs(name="HF_HOME", value=f"{CACHE_MOUNT}/huggingface"),
                 k8s.core.v1.EnvVarArgs(name="HF_HUB_DISABLE_TELEMETRY", value="1")],
            resources=k8s.core.v1.ResourceRequirementsArgs(requests={"cpu": "2", "memory": "4Gi"},
                                                           limits={"cpu": "2", "memory": "4Gi"}),
            volume_mounts=[k8s.core.v1.VolumeMountArgs(name="model", mount_path=MODEL_MOUNT),
                           *self._scratch_mounts()],
            security_context=restricted_container_security(),
            termination_message_policy="FallbackToLogsOnError",
        )

    def _server_container(self) -> k8s.core.v1.ContainerArgs:
        args = self._args
        gpus = str(args.tp_size)
        resources = {"cpu": str(args.cpu), "memory": f"{args.memory_limit_gib}Gi", "nvidia.com/gpu": gpus}
        disk = args.tmp_size_gib + args.cache_size_gib
        if isinstance(args.model_source, DownloadModelSource):
            disk += args.model_source.size_gib
        http = k8s.core.v1.HTTPGetActionArgs
        return k8s.core.v1.ContainerArgs(
            name="server",
            image=args.image,
            image_pull_policy="IfNotPresent",
            command=self._server_command(),
            ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=SERVING_PORT, protocol="TCP")],
            env=self._server_env(),
            resources=k8s.core.v1.ResourceRequirementsArgs(
                # Requests = limits: Guaranteed QoS; GPUs must be equal anyway (extended resource).
                requests={**resources, "ephemeral-storage": f"{disk}Gi"},
                limits={**resources, "ephemeral-storage": f"{disk}Gi"},
            ),
            volume_mounts=[
                k8s.core.v1.VolumeMountArgs(name="dshm", mount_path=SHM_MOUNT),
                *self._scratch_mounts(),
                k8s.core.v1.VolumeMountArgs(name="model", mount_path=MODEL_MOUNT, read_only=True),
            ],
            # Startup waits on /ready (model loaded on every rank), so liveness never kills a loading pod
            # whatever the server does with /health during the load.
            startup_probe=k8s.core.v1.ProbeArgs(
                http_get=http(path="/ready", port="http"), period_seconds=args.startup_period_s,
                failure_threshold=args.startup_failure_threshold, timeout_seconds=5),
            readiness_probe=k8s.core.v1.ProbeArgs(
                http_get=http(path="/ready", port="http"), period_seconds=args.readiness_period_s,
                failure_threshold=3, timeout_seconds=5),
            liveness_probe=k8s.core.v1.ProbeArgs(
                http_get=http(path="/health", port="http"), period_seconds=args.liveness_period_s,
                failure_threshold=args.liveness_failure_threshold, timeout_seconds=5),
            # The kubelet's sleep action needs no shell or binary in the image.
            lifecycle=k8s.core.v1.LifecycleArgs(pre_stop=k8s.core.v1.LifecycleHandlerArgs(
                sleep=k8s.core.v1.SleepActionArgs(seconds=args.prestop_sleep_s))),
            security_context=restricted_container_security(),
            termination_message_policy="FallbackToLogsOnError",
        )

    def _deployment_spec(self, claim: str | None) -> k8s.apps.v1.DeploymentSpecArgs:
        args = self._args
        taints = [NodeTaint.parse(t) for t in args.gpu_taints]
        init_containers = None if claim is not None else [self._download_init_container()]
        pod_labels = {**self._labels, WORKLOAD_IDENTITY_USE_LABEL: "true"}
        return k8s.apps.v1.DeploymentSpecArgs(
            # With KEDA the HPA owns the replica count; setting it here would fight the autoscaler.
            replicas=None if args.autoscaling is not None else args.replicas,
            revision_history_limit=5,
            # A rollout is not "stuck" while a GPU node joins, the image pulls and the model loads: the
            # same budget as Pulumi's create wait, or the controller would fail the rollout first.
            progress_deadline_seconds=args.await_timeouts_s[0],
            selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
            strategy=k8s.apps.v1.DeploymentStrategyArgs(
                type="RollingUpdate",
                rolling_update=k8s.apps.v1.RollingUpdateDeploymentArgs(
                    max_surge=args.rollout_max_surge, max_unavailable=0 if args.rollout_max_surge else 1),
            ),
            template=k8s.core.v1.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels=pod_labels,
                    annotations={"prometheus.io/scrape": "true", "prometheus.io/port": str(SERVING_PORT),
                                 "prometheus.io/path": "/metrics"},
                ),
                spec=k8s.core.v1.PodSpecArgs(
                    service_account_name=args.service_account_name,
                    automount_service_account_token=False,
                    enable_service_links=False,
                    termination_grace_period_seconds=args.termination_grace_period_s,
                    security_context=k8s.core.v1.PodSecurityContextArgs(
                        run_as_non_root=True, run_as_user=SERVER_UID, run_as_group=SERVER_UID,
                        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
                    ),
                    tolerations=[t.toleration() for t in taints],
                    affinity=k8s.core.v1.AffinityArgs(node_affinity=k8s.core.v1.NodeAffinityArgs(
                        required_during_scheduling_ignored_during_execution=k8s.core.v1.NodeSelectorArgs(
                            node_selector_terms=[k8s.core.v1.NodeSelectorTermArgs(match_expressions=[
                                k8s.core.v1.NodeSelectorRequirementArgs(key=k, operator="In", values=[v])
                                for k, v in sorted(args.gpu_node_labels.items())
                            ])]))),
                    topology_spread_constraints=[k8s.core.v1.TopologySpreadConstraintArgs(
                        max_skew=1, topology_key="topology.kubernetes.io/zone",
                        when_unsatisfiable="ScheduleAnyway",
                        label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector))],
                    init_containers=init_containers,
                    containers=[self._server_container()],
                    volumes=self._volumes(claim),
                ),
            ),
        )

    def _network_policy_spec(self) -> k8s.networking.v1.NetworkPolicySpecArgs:
        args = self._args
        np = k8s.networking.v1
        serving_port = [np.NetworkPolicyPortArgs(protocol="TCP", port=SERVING_PORT)]
        https = [np.NetworkPolicyPortArgs(protocol="TCP", port=443)]
        egress_public = {cidr: None for cidr in args.entra_egress_cidrs}
        if isinstance(args.model_source, DownloadModelSource):
            egress_public.update({cidr: None for cidr in args.model_source.egress_cidrs})
        return np.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=self._selector),
            policy_types=["Ingress", "Egress"],
            ingress=[
                # Front Door -> Private Link Service (NAT in the PLS subnet) -> internal LB -> node -> pod; or,
                # behind the gateway, the gateway's pods only.
                np.NetworkPolicyIngressRuleArgs(
                    from_=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.pls_subnet_cidr)),
                           np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.node_cidr))]
                    if args.gateway_namespace is None else
                    [np.NetworkPolicyPeerArgs(namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": args.gateway_namespace}))],
                    ports=serving_port),
                np.NetworkPolicyIngressRuleArgs(
                    from_=[np.NetworkPolicyPeerArgs(namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                        match_labels={"kubernetes.io/metadata.name": args.metrics_scraper_namespace}))],
                    ports=serving_port),
            ],
            egress=[
                dns_egress_rule(),
                # Key Vault (443) and Managed Redis (TLS port) through their private endpoints only.
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.private_endpoint_subnet_cidr))],
                    ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=443),
                           np.NetworkPolicyPortArgs(protocol="TCP", port=args.redis_port)]),
                # Entra ID token exchange (and the Hub download, if chosen): public HTTPS, never IMDS.
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=public_ip_block(cidr)) for cidr in egress_public],
                    ports=https),
            ],
        )

    def _scaled_object(self, name: str, child: pulumi.ResourceOptions) -> None:
        args = self._args
        scaling = args.autoscaling
        assert scaling is not None
        query = (f'sum({scaling.metric}{{namespace="{args.namespace}",'
                 f'pod=~"{args.name}-[a-z0-9]+-[a-z0-9]+"}})')
        trigger: dict[str, object] = {
            "type": "prometheus",
            "metricType": "AverageValue",
            # KEDA trigger metadata values are strings by schema.
            "metadata": {"serverAddress": scaling.prometheus_server_address, "query": query,
                         "threshold": str(scaling.target_per_replica)},
        }
        if scaling.authentication_ref is not None:
            trigger["authenticationRef"] = {"name": scaling.authentication_ref}
        k8s.apiextensions.CustomResource(
            f"{name}-scaledobject",
            api_version="keda.sh/v1alpha1",
            kind="ScaledObject",
            metadata=self._meta(args.name),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": args.name},
                "minReplicaCount": scaling.min_replicas,
                "maxReplicaCount": scaling.max_replicas,
                "pollingInterval": scaling.polling_interval_s,
                "advanced": {"horizontalPodAutoscalerConfig": {"behavior": {"scaleDown": {
                    "stabilizationWindowSeconds": scaling.scale_down_stabilization_s,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 300}],
                }}}},
                "triggers": [trigger],
            },
            opts=child,
        )
