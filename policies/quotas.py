"""Quotas and cost: which GPU sizes, how many GPU nodes, how many inference replicas."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import (
    PolicyConfigSchema,
    ReportViolation,
    ResourceValidationArgs,
    Severity,
    StackValidationArgs,
)

from .common import (
    as_list,
    as_number,
    config_int,
    config_list,
    is_true,
    lookup,
    resource_policy,
    stack_policy,
)
from .workloads import command_line, containers, gpu_quantity, pod_spec, runs_inference_server

AKS = "azure-native:containerservice:ManagedCluster"
AGENT_POOL = "azure-native:containerservice:AgentPool"
SCALERS = {
    "kubernetes:autoscaling/v2:HorizontalPodAutoscaler",
    "kubernetes:autoscaling/v1:HorizontalPodAutoscaler",
    "kubernetes:keda.sh/v1alpha1:ScaledObject",
}
SCALABLE = {"kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet"}

DEFAULT_GPU_SIZES = [
    "Standard_NC24ads_A100_v4",
    "Standard_NC48ads_A100_v4",
    "Standard_NC96ads_A100_v4",
    "Standard_NC40ads_H100_v5",
    "Standard_NC80adis_H100_v5",
    "Standard_ND96asr_v4",
    "Standard_ND96amsr_A100_v4",
    "Standard_ND96isr_H100_v5",
]


def is_gpu_size(vm_size: Any) -> bool:
    """Azure's GPU sizes are the N-series (NC, ND, NG, NV): ``Standard_N...``."""
    return isinstance(vm_size, str) and vm_size.lower().startswith("standard_n")


def _pools(args_type: str, props: Mapping[str, Any], name: str) -> Iterator[tuple[str, Mapping[str, Any]]]:
    if args_type == AGENT_POOL:
        yield f"agent pool '{name}'", props
    elif args_type == AKS:
        for pool in as_list(props.get("agentPoolProfiles")):
            if isinstance(pool, Mapping):
                yield f"agent pool profile '{pool.get('name')}'", pool


def max_nodes(pool: Mapping[str, Any]) -> int:
    """The most nodes a pool can run: maxCount when autoscaling, else its fixed count."""
    count = as_number(pool.get("count")) or 0.0
    if is_true(pool.get("enableAutoScaling")):
        count = max(count, as_number(pool.get("maxCount")) or 0.0)
    return int(count)


def _gpu_vm_size(args: ResourceValidationArgs, report: ReportViolation) -> None:
    allowed = {s.lower() for s in config_list(args.get_config(), "allowedGpuVmSizes") if isinstance(s, str)}
    for label, pool in _pools(args.resource_type, args.props, args.name):
        size = pool.get("vmSize")
        if is_gpu_size(size) and size.lower() not in allowed:
            report(
                f"{label} uses GPU size {size!r}, which is not in the allowed list "
                f"{sorted(config_list(args.get_config(), 'allowedGpuVmSizes'))}."
            )


def _gpu_pool_nodes(args: ResourceValidationArgs, report: ReportViolation) -> None:
    limit = config_int(args.get_config(), "maxNodesPerPool")
    for label, pool in _pools(args.resource_type, args.props, args.name):
        if is_gpu_size(pool.get("vmSize")) and max_nodes(pool) > limit:
            report(f"{label} can grow to {max_nodes(pool)} GPU nodes; at most {limit} are allowed per pool.")


def _gpu_stack_nodes(args: StackValidationArgs, report: ReportViolation) -> None:
    limit = config_int(args.get_config(), "maxNodesPerStack")
    total = 0
    parts = []
    for resource in args.resources:
        for label, pool in _pools(resource.resource_type, resource.props, resource.name):
            if is_gpu_size(pool.get("vmSize")):
                total += max_nodes(pool)
                parts.append(f"{label}: {max_nodes(pool)}")
    if total > limit:
        report(f"the stack can run {total} GPU nodes ({'; '.join(parts)}); at most {limit} are allowed.")


def is_inference_workload(resource_type: str, props: Mapping[str, Any]) -> bool:
    """A workload that runs the inference server or asks for GPUs."""
    spec = pod_spec(resource_type, props)
    if spec is None:
        return False
    for _, container in containers(spec, include_init=False):
        if runs_inference_server(command_line(container)):
            return True
        if gpu_quantity(container, "limits"):
            return True
    return False


def _inference_replicas(args: StackValidationArgs, report: ReportViolation) -> None:
    limit = config_int(args.get_config(), "maxReplicas")
    workloads = {}
    for resource in args.resources:
        if resource.resource_type in SCALABLE and is_inference_workload(
            resource.resource_type, resource.props
        ):
            name = lookup(resource.props, "metadata.name") or resource.name
            workloads[name] = resource
            replicas = as_number(lookup(resource.props, "spec.replicas"))
            if replicas is not None and replicas > limit:
                report(
                    f"spec.replicas is {int(replicas)}; at most {limit} inference replicas are allowed.",
                    resource.urn,
                )
    for resource in args.resources:
        if resource.resource_type not in SCALERS:
            continue
        target = lookup(resource.props, "spec.scaleTargetRef.name")
        if target not in workloads:
            continue
        # HorizontalPodAutoscaler calls it maxReplicas, KEDA's ScaledObject maxReplicaCount.
        maximum = as_number(
            lookup(resource.props, "spec.maxReplicas") or lookup(resource.props, "spec.maxReplicaCount")
        )
        if maximum is not None and maximum > limit:
            report(
                f"autoscaler for '{target}' allows {int(maximum)} replicas; at most {limit} are allowed.",
                resource.urn,
            )


aks_gpu_vm_size_allowed = resource_policy(
    name="aks-gpu-vm-size-allowed",
    description="GPU node pools use only the VM sizes approved for this environment.",
    severity=Severity.MEDIUM,
    remediation="Pick a vmSize from the policy's allowedGpuVmSizes, or get the size approved and "
    "added to policies/config/<stack>.json.",
    resource_types=[AKS, AGENT_POOL],
    check=_gpu_vm_size,
    config_schema=PolicyConfigSchema(
        properties={
            "allowedGpuVmSizes": {
                "type": "array",
                "items": {"type": "string"},
                "default": DEFAULT_GPU_SIZES,
                "description": "GPU VM sizes node pools may use.",
            }
        }
    ),
)

aks_gpu_pool_max_nodes = resource_policy(
    name="aks-gpu-pool-max-nodes",
    description="A GPU node pool cannot grow beyond the configured number of nodes (count, or "
    "maxCount when autoscaling).",
    severity=Severity.MEDIUM,
    remediation="Lower the pool's maxCount (or count), or raise maxNodesPerPool with budget approval.",
    resource_types=[AKS, AGENT_POOL],
    check=_gpu_pool_nodes,
    config_schema=PolicyConfigSchema(
        properties={
            "maxNodesPerPool": {
                "type": "integer",
                "minimum": 0,
                "default": 4,
                "description": "Most nodes one GPU pool may scale to.",
            }
        }
    ),
)

aks_gpu_stack_max_nodes = stack_policy(
    name="aks-gpu-stack-max-nodes",
    description="All GPU node pools of the stack together cannot grow beyond the configured number of nodes.",
    severity=Severity.MEDIUM,
    remediation="Lower the GPU pools' maxCount, remove a pool, or raise maxNodesPerStack with budget "
    "approval.",
    check=_gpu_stack_nodes,
    config_schema=PolicyConfigSchema(
        properties={
            "maxNodesPerStack": {
                "type": "integer",
                "minimum": 0,
                "default": 8,
                "description": "Most GPU nodes all pools of the stack may scale to together.",
            }
        }
    ),
)

k8s_inference_max_replicas = stack_policy(
    name="k8s-inference-max-replicas",
    description="Inference Deployments/StatefulSets (and their autoscalers) stay within the configured "
    "number of replicas.",
    severity=Severity.MEDIUM,
    remediation="Lower spec.replicas or the autoscaler's maxReplicas, or raise maxReplicas with budget "
    "approval.",
    check=_inference_replicas,
    config_schema=PolicyConfigSchema(
        properties={
            "maxReplicas": {
                "type": "integer",
                "minimum": 0,
                "default": 4,
                "description": "Most replicas an inference workload may run.",
            }
        }
    ),
)

POLICIES = [
    aks_gpu_vm_size_allowed,
    aks_gpu_pool_max_nodes,
    aks_gpu_stack_max_nodes,
    k8s_inference_max_replicas,
]
