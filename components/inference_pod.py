"""InferenceService's pod: the server container (its command, environment, resources, probes), the weights'
volume or download, and the Deployment that runs it on the GPU pool (components/inference_service.py)."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_kubernetes as k8s
from inferforge.inference import settings as serving
from inferforge.inference.settings import (  # noqa: F401 - the component's public names for the choices
    Dtype,
    Embeddings,
    EmbeddingsPooling,
    ServingSettings,
    ToolCallParser,
)

from .inference_args import (
    MODEL_MOUNT,
    SERVER_UID,
    SERVING_PORT,
    DownloadModelSource,
    InferenceServiceArgs,
)
from .kubernetes import (
    WORKLOAD_IDENTITY_USE_LABEL,
    NodeTaint,
    restricted_container_security,
)

TMP_MOUNT = "/tmp"
CACHE_MOUNT = "/cache"
SHM_MOUNT = "/dev/shm"



def server_command(args: InferenceServiceArgs) -> list[pulumi.Input[str]]:
    """The server's command in the pod: its flags, every serving setting included."""
    return [
        "python", "-m", "inference", "serve",
        "--model-dir", args.model_dir,
        "--model-name", args.model_name,
        "--host", "0.0.0.0",
        "--port", str(SERVING_PORT),
        "--api-keys-keyvault-url", args.keyvault_url,
        "--api-keys-secret", args.api_keys_secret_name,
        # Every serving setting, defaults included: the pod runs what the plan shows, whatever image it pulls.
        *serving.to_argv(args.serving, type(args.serving)),
    ]

def server_env(args: InferenceServiceArgs) -> list[k8s.core.v1.EnvVarArgs]:
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

def volumes(args: InferenceServiceArgs, claim: str | None) -> list[k8s.core.v1.VolumeArgs]:
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

def scratch_mounts() -> list[k8s.core.v1.VolumeMountArgs]:
    return [
        k8s.core.v1.VolumeMountArgs(name="tmp", mount_path=TMP_MOUNT),
        k8s.core.v1.VolumeMountArgs(name="cache", mount_path=CACHE_MOUNT),
    ]

def download_init_container(args: InferenceServiceArgs) -> k8s.core.v1.ContainerArgs:
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
                       *scratch_mounts()],
        security_context=restricted_container_security(),
        termination_message_policy="FallbackToLogsOnError",
    )

def server_container(args: InferenceServiceArgs) -> k8s.core.v1.ContainerArgs:
    gpus = str(args.serving.tp_size)
    resources = {"cpu": str(args.cpu), "memory": f"{args.memory_limit_gib}Gi", "nvidia.com/gpu": gpus}
    disk = args.tmp_size_gib + args.cache_size_gib
    if isinstance(args.model_source, DownloadModelSource):
        disk += args.model_source.size_gib
    http = k8s.core.v1.HTTPGetActionArgs
    return k8s.core.v1.ContainerArgs(
        name="server",
        image=args.image,
        image_pull_policy="IfNotPresent",
        command=server_command(args),
        ports=[k8s.core.v1.ContainerPortArgs(name="http", container_port=SERVING_PORT, protocol="TCP")],
        env=server_env(args),
        resources=k8s.core.v1.ResourceRequirementsArgs(
            # Requests = limits: Guaranteed QoS; GPUs must be equal anyway (extended resource).
            requests={**resources, "ephemeral-storage": f"{disk}Gi"},
            limits={**resources, "ephemeral-storage": f"{disk}Gi"},
        ),
        volume_mounts=[
            k8s.core.v1.VolumeMountArgs(name="dshm", mount_path=SHM_MOUNT),
            *scratch_mounts(),
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

def deployment_spec(args: InferenceServiceArgs, claim: str | None, *, labels: Mapping[str, str],
                    selector: Mapping[str, str]) -> k8s.apps.v1.DeploymentSpecArgs:
    """The GPU Deployment's spec: the pod on the GPU pool, its probes, volumes and rollout."""
    taints = [NodeTaint.parse(t) for t in args.gpu_taints]
    init_containers = None if claim is not None else [download_init_container(args)]
    pod_labels = {**labels, WORKLOAD_IDENTITY_USE_LABEL: "true"}
    return k8s.apps.v1.DeploymentSpecArgs(
        # With KEDA the HPA owns the replica count; setting it here would fight the autoscaler.
        replicas=None if args.autoscaling is not None else args.replicas,
        revision_history_limit=5,
        # A rollout is not "stuck" while a GPU node joins, the image pulls and the model loads: the
        # same budget as Pulumi's create wait, or the controller would fail the rollout first.
        progress_deadline_seconds=args.await_timeouts_s[0],
        selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
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
                    label_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector))],
                init_containers=init_containers,
                containers=[server_container(args)],
                volumes=volumes(args, claim),
            ),
        ),
    )
