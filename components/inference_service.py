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

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s
from inferforge.inference.settings import (  # noqa: F401 - the component's public names for the choices
    Dtype,
    Embeddings,
    EmbeddingsPooling,
    ServingSettings,
    ToolCallParser,
)

from . import package
from .inference_args import (  # noqa: F401 - the component's public names, as before the split
    BLOB_CSI_DRIVER,
    BLOBFUSE_READ_ONLY_MOUNT_OPTIONS,
    MAX_TP_SIZE,
    MIN_HOST_MEMORY_PER_RANK_GIB,
    MODEL_MOUNT,
    PULUMI_TIMEOUT_ANNOTATION,
    SERVER_UID,
    SERVING_PORT,
    DownloadModelSource,
    InferenceServiceArgs,
    InferenceServiceConfigError,
    KedaAutoscaling,
    ModelSource,
    ModelStoreSource,
    PvcModelSource,
    ServingMetric,
    shm_problem,
)
from .inference_network import first_ingress_ip, network_policy_spec, service_annotations
from .inference_pod import deployment_spec
from .kubernetes import (
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    kubernetes_provider,
    name_of,
    pod_security_labels,
)


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
            spec=deployment_spec(args, claim, labels=self._labels, selector=self._selector),
            opts=pulumi.ResourceOptions.merge(replace_named, pulumi.ResourceOptions(
                depends_on=[service_account],
                custom_timeouts=pulumi.CustomTimeouts(create=f"{create_s}s", update=f"{update_s}s"))),
        )

        service = k8s.core.v1.Service(
            f"{name}-svc",
            metadata=self._meta(args.name, annotations=service_annotations(args)),
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
            spec=network_policy_spec(args, self._selector),
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
        self.load_balancer_ip = service.status.apply(first_ingress_ip)
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
