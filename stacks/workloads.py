"""The Kubernetes side of the stack: the NVIDIA device plugin, the inference service and the pgvector Job.

Every image comes from the platform registry (its login server + the configured repository + digest);
the workloads wait for the kubelet identity's AcrPull grant, so no pod starts before it may pull.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
from inferforge.components.aks import GPU_TAINT
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
)
from inferforge.components.keyvault import KeyVault
from inferforge.components.pgvector_extension import PgvectorExtension, PgvectorExtensionArgs
from inferforge.components.postgres import PostgresPgvector
from inferforge.components.redis import ManagedRedis

from .config import PlatformConfig

PGVECTOR_SERVICE_ACCOUNT = "pgvector-init"


def federated_subjects(cfg: PlatformConfig) -> list[str]:
    """Service accounts that run as the inference (serving) identity: the server's only."""
    return [f"system:serviceaccount:{cfg.inference.namespace}:{cfg.inference.service_account}"]


def schema_job_subjects(cfg: PlatformConfig) -> list[str]:
    """Service accounts that run as the schema identity (the PostgreSQL Entra admin): the pgvector Job's only."""
    return [f"system:serviceaccount:{cfg.inference.namespace}:{PGVECTOR_SERVICE_ACCOUNT}"]


@dataclass(frozen=True)
class ModelStoreMount:
    """What the model-store volume needs from the platform: where the container is and who mounts it."""

    resource_group: str
    kubelet_identity_client_id: pulumi.Input[str]


def _model_source(cfg: PlatformConfig, store: ModelStoreMount | None) -> ModelSource:
    source = cfg.inference.model_source
    if source.kind == "modelStore":
        if store is None:
            raise ValueError("inference.modelSource.kind is 'modelStore' but no model store was created")
        return ModelStoreSource(storage_account=cfg.model_store_account, resource_group=store.resource_group,
                                identity_client_id=store.kubelet_identity_client_id,
                                container_name=cfg.model_store.container_name, sub_path=source.sub_path,
                                size_gib=source.size_gi)
    if source.kind == "download":
        return DownloadModelSource(repo_id=source.repo_id or "", revision=source.revision or "",
                                   size_gib=source.size_gi)
    return PvcModelSource(storage_class=source.storage_class, size_gib=source.size_gi,
                          existing_claim=source.existing_claim, sub_path=source.sub_path)


def inference_service_args(cfg: PlatformConfig, *, identity_client_id: pulumi.Input[str],
                           key_vault_uri: pulumi.Input[str], redis_host: pulumi.Input[str] | None,
                           redis_port: int, serving_port: int, login_server: str,
                           model_store: ModelStoreMount | None = None) -> InferenceServiceArgs:
    """Map the validated `inference` config section onto the component's typed args."""
    inference = cfg.inference
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
        internal_lb_ip=cfg.inference.internal_load_balancer_ip,
        gpu_node_labels={"inferforge.io/pool": inference.gpu_pool},
        namespace=inference.namespace,
        service_account_name=inference.service_account,
        kubernetes_version=cfg.aks.kubernetes_version,
        tp_size=inference.tp_size,
        dtype=inference.dtype,
        max_batch_size=inference.max_batch_size,
        max_model_len=inference.max_model_len,
        embeddings=None if inference.embeddings == "off" else inference.embeddings,
        embeddings_pooling=inference.embeddings_pooling,
        tool_call_parser=inference.tool_call_parser,
        replicas=inference.replicas,
        cpu=inference.cpu,
        memory_limit_gib=inference.memory_gi,
        shm_size_gib=inference.shm_size_gi,
        model_source=_model_source(cfg, model_store),
        startup_period_s=period,
        startup_failure_threshold=max(1, inference.startup_timeout_seconds // period),
        prestop_sleep_s=inference.pre_stop_sleep_seconds,
        drain_timeout_s=inference.drain_timeout_seconds,
        # 15 s of headroom after preStop + drain for the process to exit before SIGKILL.
        termination_grace_period_s=inference.pre_stop_sleep_seconds + inference.drain_timeout_seconds + 15,
        service_port=80,
        autoscaling=autoscaling,
        labels={"inferforge.io/environment": cfg.environment},
    )


@dataclass(frozen=True)
class Workloads:
    """What the program needs from the in-cluster side: stack outputs and the Service behind the PLS."""

    outputs: dict[str, Any]
    inference: InferenceService


def deploy_workloads(cfg: PlatformConfig, *, provider: k8s.Provider, identity: WorkloadIdentity,
                     schema_identity: WorkloadIdentity, vault: KeyVault, postgres: PostgresPgvector,
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
    inference = InferenceService("inference", inference_service_args(
        cfg, identity_client_id=identity.client_id, key_vault_uri=vault.vault_uri, redis_host=redis.host_name,
        redis_port=redis.port, serving_port=serving_port, login_server=login_server, model_store=model_store),
        # nvidia.com/gpu exists only once the device plugin runs on the GPU nodes.
        opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(depends_on=[device_plugin])))
    pgvector_job = cfg.inference.pgvector_job
    PgvectorExtension("pgvector", PgvectorExtensionArgs(
        namespace=cfg.inference.namespace,
        host=postgres.fqdn,
        database=postgres.database_name,
        # The Job runs as the schema identity (the Entra admin) and gives the serving identity a data-only role.
        entra_principal_name=cfg.names.schema_identity,
        client_id=schema_identity.client_id,
        tenant_id=schema_identity.tenant_id,
        app_role_name=cfg.names.identity,
        app_principal_object_id=identity.principal_id,
        embedding_dimensions=cfg.inference.embedding_dimensions,
        azure_cli_image=pgvector_job.azure_cli_image.reference(login_server),
        postgres_client_image=pgvector_job.postgres_client_image.reference(login_server),
        postgres_subnet_cidr=cfg.network.postgres_subnet,
        service_account_name=PGVECTOR_SERVICE_ACCOUNT,
    ), opts=pulumi.ResourceOptions.merge(can_pull, pulumi.ResourceOptions(
        depends_on=[inference, postgres, schema_identity])))
    return Workloads(outputs={"inferenceNamespace": inference.namespace, "inferenceService": inference.service_name,
                              "postgresServerRole": cfg.names.identity},
                     inference=inference)
