"""The Kubernetes side of the stack: the NVIDIA device plugin, the inference service and the pgvector Job.

Every image comes from the platform registry (its login server + the configured repository + digest);
the workloads wait for the kubelet identity's AcrPull grant, so no pod starts before it may pull.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from inferforge.components.aks import GPU_TAINT
from inferforge.components.gateway import AiGateway, AiGatewayArgs
from inferforge.components.gpu_device_plugin import NvidiaDevicePlugin, NvidiaDevicePluginArgs
from inferforge.components.identity import WorkloadIdentity
from inferforge.components.inference_service import (
    DownloadModelSource,
    InferenceService,
    InferenceServiceArgs,
    KedaAutoscaling,
    ModelSource,
    ModelStoreSource,
    PvcModelSource,
    ServingSettings,
)
from inferforge.components.keyvault import KeyVault
from inferforge.components.pgvector_extension import PgvectorExtension, PgvectorExtensionArgs
from inferforge.components.postgres import PostgresPgvector
from inferforge.components.redis import ManagedRedis

from .config import InferenceConfig, PlatformConfig

PGVECTOR_SERVICE_ACCOUNT = "pgvector-init"
GATEWAY_SERVICE_ACCOUNT = "gateway"
GATEWAY_MIGRATION_SERVICE_ACCOUNT = "gateway-migrate"
INFERENCE_SERVICE_NAME = "inference"
CANARY_SERVICE_NAME = "inference-canary"


def federated_subjects(cfg: PlatformConfig) -> list[str]:
    """Service accounts that run as the inference (serving) identity: the model servers' only."""
    return [f"system:serviceaccount:{namespace}:{model.service_account}" for _, model in cfg.served_models
            for namespace in (model.namespace, model.canary_namespace) if namespace is not None]


def schema_job_subjects(cfg: PlatformConfig) -> list[str]:
    """Service accounts that run as the schema identity (the PostgreSQL Entra admin): the pgvector Job's, and
    with the gateway its migration and admin pods'."""
    subjects = [f"system:serviceaccount:{cfg.front_model[1].namespace}:{PGVECTOR_SERVICE_ACCOUNT}"]
    if cfg.gateway.enabled:
        subjects.append(f"system:serviceaccount:{cfg.gateway.namespace}:{GATEWAY_MIGRATION_SERVICE_ACCOUNT}")
    return subjects


def gateway_subjects(cfg: PlatformConfig) -> list[str]:
    """Service accounts that run as the gateway identity: the gateway pods' only."""
    return [f"system:serviceaccount:{cfg.gateway.namespace}:{GATEWAY_SERVICE_ACCOUNT}"]


@dataclass(frozen=True)
class ModelStoreMount:
    """What the model-store volume needs from the platform: where the container is and who mounts it."""

    resource_group: str
    kubelet_identity_client_id: pulumi.Input[str]


def _model_source(cfg: PlatformConfig, inference: InferenceConfig, store: ModelStoreMount | None) -> ModelSource:
    source = inference.model_source
    if source.kind == "modelStore":
        if store is None:
            raise ValueError("modelSource.kind is 'modelStore' but no model store was created")
        return ModelStoreSource(storage_account=cfg.model_store_account, resource_group=store.resource_group,
                                identity_client_id=store.kubelet_identity_client_id,
                                container_name=cfg.model_store.container_name, sub_path=source.sub_path,
                                size_gib=source.size_gi)
    if source.kind == "download":
        return DownloadModelSource(repo_id=source.repo_id or "", revision=source.revision or "",
                                   size_gib=source.size_gi)
    return PvcModelSource(storage_class=source.storage_class, size_gib=source.size_gi,
                          existing_claim=source.existing_claim, sub_path=source.sub_path)


def inference_service_args(cfg: PlatformConfig, inference: InferenceConfig, *, identity_client_id: pulumi.Input[str],
                           key_vault_uri: pulumi.Input[str], redis_host: pulumi.Input[str] | None,
                           redis_port: int, serving_port: int, login_server: str,
                           model_store: ModelStoreMount | None = None) -> InferenceServiceArgs:
    """Map one validated model section (`inference`, or an entry of `models`) onto the component's typed args."""
    autoscaling = None
    if inference.autoscaling.enabled:
        autoscaling = KedaAutoscaling(
            prometheus_server_address=inference.autoscaling.prometheus_server_address or "",
            min_replicas=inference.autoscaling.min_replicas, max_replicas=inference.autoscaling.max_replicas,
            metric=inference.autoscaling.metric, target_per_replica=inference.autoscaling.target_per_replica)
    period = 10
    return InferenceServiceArgs(
        model_name=inference.model_name,
        image_registry=login_server,
        image_repository=inference.image.repository,
        image_digest=inference.image.digest,
        image_tag=inference.image.tag,
        workload_identity_client_id=identity_client_id,
        keyvault_url=key_vault_uri,
        api_keys_secret_name=inference.api_key_secret_name,
        redis_host=redis_host,
        redis_port=redis_port,
        pls_name=cfg.names.private_link_service,
        pls_subnet_name=cfg.network.subnet_names()["private-link"],
        pls_subnet_cidr=cfg.network.private_link_subnet,
        node_cidr=cfg.network.aks_subnet,
        private_endpoint_subnet_cidr=cfg.network.private_endpoint_subnet,
        internal_lb_subnet_name=cfg.network.subnet_names()["aks"],
        # Static frontend IP: Front Door's origin host name is this address (the PLS NATs to it).
        internal_lb_ip=inference.internal_load_balancer_ip,
        gpu_node_labels={"inferforge.io/pool": inference.gpu_pool},
        namespace=inference.namespace,
        service_account_name=inference.service_account,
        kubernetes_version=cfg.aks.kubernetes_version,
        serving=ServingSettings(**inference.args()),  # the section embeds the declaration (inference/settings.py)
        replicas=inference.replicas,
        cpu=inference.cpu,
        memory_limit_gib=inference.memory_gi,
        shm_size_gib=inference.shm_size_gi,
        model_source=_model_source(cfg, inference, model_store),
        startup_period_s=period,
        startup_failure_threshold=max(1, inference.startup_timeout_seconds // period),
        prestop_sleep_s=inference.pre_stop_sleep_seconds,
        # 15 s of headroom after preStop + drain for the process to exit before SIGKILL.
        termination_grace_period_s=inference.pre_stop_sleep_seconds + inference.drain_timeout_s + 15,
        service_port=80,
        gateway_namespace=cfg.gateway.namespace if cfg.gateway.enabled else None,
        autoscaling=autoscaling,
        labels={"inferforge.io/environment": cfg.environment},
    )


def gateway_args(cfg: PlatformConfig, *, identity: WorkloadIdentity, schema_identity: WorkloadIdentity,
                 tenant_id: pulumi.Input[str], vault: KeyVault, postgres: PostgresPgvector, redis: ManagedRedis,
                 login_server: str) -> AiGatewayArgs:
    """Map the validated `gateway` config section (and the platform it runs on) onto the component's args."""
    gateway, inference = cfg.gateway, cfg.front_model[1]
    models = [model for _, model in cfg.served_models]
    return AiGatewayArgs(
        image_registry=login_server, image_repository=gateway.image.repository, image_digest=gateway.image.digest,
        image_tag=gateway.image.tag,
        upstreams={m.model_name: f"http://{INFERENCE_SERVICE_NAME}.{m.namespace}.svc.cluster.local:80" for m in models},
        upstream_namespaces=[ns for m in models for ns in (m.namespace, m.canary_namespace) if ns is not None],
        canary_upstreams={m.model_name: f"http://{CANARY_SERVICE_NAME}.{m.canary_namespace}.svc.cluster.local:80"
                          for m in models if m.canary is not None},
        canary_shares={m.model_name: m.canary.traffic["canary"] for m in models if m.canary is not None},
        workload_identity_client_id=identity.client_id, workload_identity_principal_id=identity.principal_id,
        migration_identity_client_id=schema_identity.client_id, migration_principal_name=cfg.names.schema_identity,
        migration_identity_principal_id=schema_identity.principal_id,
        tenant_id=tenant_id, key_vault_name=vault.vault_name, postgres_host=postgres.fqdn,
        postgres_database=postgres.database_name, postgres_role=cfg.names.gateway_identity,
        redis_host=redis.host_name, redis_port=redis.port,
        pls_name=cfg.names.private_link_service, pls_subnet_name=cfg.network.subnet_names()["private-link"],
        pls_subnet_cidr=cfg.network.private_link_subnet, node_cidr=cfg.network.aks_subnet,
        private_endpoint_subnet_cidr=cfg.network.private_endpoint_subnet,
        postgres_subnet_cidr=cfg.network.postgres_subnet,
        internal_lb_subnet_name=cfg.network.subnet_names()["aks"],
        # The platform's private origin: Front Door reaches the gateway at this address through the PLS.
        internal_lb_ip=inference.internal_load_balancer_ip,
        namespace=gateway.namespace, service_account_name=GATEWAY_SERVICE_ACCOUNT,
        migration_service_account_name=GATEWAY_MIGRATION_SERVICE_ACCOUNT,
        upstream_key_secret_name=inference.api_key_secret_name,
        kubernetes_version=cfg.aks.kubernetes_version,
        entra_tenant_ids=gateway.entra.tenant_ids, entra_audience=gateway.entra.audience,
        labels={"inferforge.io/environment": cfg.environment},
        **gateway.args())


# ---- canary: the second server version of a model (issue 24 item 5) ------------------------------------------

def canary_service_args(inference: InferenceConfig, stable: InferenceServiceArgs) -> InferenceServiceArgs:
    """The canary's args: the stable server's (same model, settings, weights, pool) with the canary's image,
    replica count, Deployment name and namespace; a fixed replica count (the canary's load is its share)."""
    canary = inference.canary
    assert canary is not None and inference.canary_namespace is not None
    return dataclasses.replace(
        stable, image_repository=canary.image.repository, image_digest=canary.image.digest,
        image_tag=canary.image.tag, name=CANARY_SERVICE_NAME, namespace=inference.canary_namespace,
        replicas=canary.replicas, autoscaling=None, labels={**stable.labels, "inferforge.io/version": "canary"})


def canary_servers(cfg: PlatformConfig, stable: list[InferenceServiceArgs], can_pull: pulumi.ResourceOptions,
                   device_plugin: pulumi.Resource) -> list[InferenceService]:
    """An InferenceService per model with a canary, beside its stable one (its own namespace, Service, PDB and
    NetworkPolicy: the gateway is its only client, as for the stable server)."""
    return [InferenceService(
        f"inference-canary-{model.namespace}", canary_service_args(model, args),
        opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(depends_on=[device_plugin])))
        for (_, model), args in zip(cfg.served_models, stable, strict=True) if model.canary is not None]


@dataclass(frozen=True)
class Workloads:
    """What the program needs from the in-cluster side: stack outputs and the Service behind the PLS."""

    outputs: dict[str, Any]
    inference: InferenceService
    """The first model's server (the one Front Door reaches when there is no gateway)."""
    models: list[InferenceService]
    """Every model's server, in config order."""
    gateway: AiGateway | None
    canaries: list[InferenceService] = dataclasses.field(default_factory=list)
    """The canary servers (a second version of a model beside its stable one), in config order."""

    @property
    def front_service(self) -> k8s.core.v1.Service:
        """The Service behind the Private Link Service (Front Door's origin): the gateway's when there is one."""
        return self.gateway.service if self.gateway is not None else self.inference.service


def deploy_workloads(cfg: PlatformConfig, *, provider: k8s.Provider, identity: WorkloadIdentity,
                     schema_identity: WorkloadIdentity, gateway_identity: WorkloadIdentity | None,
                     tenant_id: pulumi.Input[str], vault: KeyVault, postgres: PostgresPgvector,
                     redis: ManagedRedis, serving_port: int, login_server: str,
                     model_store: ModelStoreMount | None = None,
                     depends_on: Sequence[pulumi.Resource] = ()) -> Workloads:
    """Register the in-cluster workloads; `depends_on` holds what must exist before any pod starts (AcrPull,
    the kubelet identity's read access to the model store)."""
    can_pull = pulumi.ResourceOptions(provider=provider, depends_on=list(depends_on))
    device_plugin = NvidiaDevicePlugin("gpu-device-plugin", NvidiaDevicePluginArgs(
        image=cfg.aks.nvidia_device_plugin_image.reference(login_server),
        gpu_pools=[p.name for p in cfg.aks.gpu_pools],
        gpu_taints=[GPU_TAINT],
        kubernetes_version=cfg.aks.kubernetes_version,
    ), opts=can_pull)
    server_args = [inference_service_args(
        cfg, model, identity_client_id=identity.client_id, key_vault_uri=vault.vault_uri,
        redis_host=redis.host_name, redis_port=redis.port, serving_port=serving_port, login_server=login_server,
        model_store=model_store) for _, model in cfg.served_models]
    servers = [InferenceService(
        # The first model keeps the name a one-model stack always had (its resources keep their URNs).
        "inference" if index == 0 else f"inference-{model.namespace}", args,
        # nvidia.com/gpu exists only once the device plugin runs on the GPU nodes.
        opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(depends_on=[device_plugin])))
        for index, ((_, model), args) in enumerate(zip(cfg.served_models, server_args, strict=True))]
    canaries = canary_servers(cfg, server_args, can_pull, device_plugin)
    inference, front = servers[0], cfg.front_model[1]
    pgvector_job = front.pgvector_job
    PgvectorExtension("pgvector", PgvectorExtensionArgs(
        namespace=front.namespace,
        host=postgres.fqdn,
        database=postgres.database_name,
        # The Job runs as the schema identity (the Entra admin) and gives the serving identity a data-only role.
        entra_principal_name=cfg.names.schema_identity,
        client_id=schema_identity.client_id,
        tenant_id=schema_identity.tenant_id,
        app_role_name=cfg.names.identity,
        app_principal_object_id=identity.principal_id,
        embedding_dimensions=front.embedding_dimensions,
        azure_cli_image=pgvector_job.azure_cli_image.reference(login_server),
        postgres_client_image=pgvector_job.postgres_client_image.reference(login_server),
        postgres_subnet_cidr=cfg.network.postgres_subnet,
        service_account_name=PGVECTOR_SERVICE_ACCOUNT,
    ), opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(
        depends_on=[inference, postgres, schema_identity])))
    outputs: dict[str, Any] = {"inferenceNamespace": inference.namespace, "inferenceService": inference.service_name,
                               "postgresServerRole": cfg.names.identity}
    gateway = None
    if gateway_identity is not None:
        gateway = AiGateway("gateway", gateway_args(
            cfg, identity=gateway_identity, schema_identity=schema_identity, tenant_id=tenant_id, vault=vault,
            postgres=postgres, redis=redis, login_server=login_server),
            # The migration signs in as the PostgreSQL Entra admin, which exists with the server.
            opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(
                depends_on=[*servers, *canaries, postgres, redis, gateway_identity, schema_identity])))
        outputs.update({"gatewayNamespace": gateway.namespace, "gatewayService": gateway.service_name,
                        "gatewayAdminPodOverrides": gateway.admin_pod_overrides})
    if len(servers) > 1:
        outputs["modelNamespaces"] = {model.model_name: model.namespace for _, model in cfg.served_models}
    if canaries:
        outputs["canaryNamespaces"] = {model.model_name: model.canary_namespace for _, model in cfg.served_models
                                       if model.canary is not None}
    return Workloads(outputs=outputs, inference=inference, models=servers, gateway=gateway, canaries=canaries)
