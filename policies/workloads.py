"""Workloads: Kubernetes pod specs are unprivileged, bounded, probed, and run pinned images.

The checks read the pod template of Deployments, StatefulSets, DaemonSets, Jobs, CronJobs and bare
Pods as pulumi-kubernetes registers them (the Kubernetes object itself, camelCase).

GPU rule: a container that runs the inference server (``python -m inference serve``, possibly
launched through ``deepspeed``/``torchrun``) must request and limit ``nvidia.com/gpu`` equal to its
tensor-parallel size, read from the ``--tp-size N`` (or ``--tp-size=N``) argument in its command or
args; without that argument the server runs with tensor-parallel size 1. One TP group per pod:
fewer GPUs than ranks cannot start, more GPUs sit idle.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterator, Mapping
from typing import Any

from pulumi_policy import PolicyConfigSchema, ReportViolation, ResourceValidationArgs, Severity

from .common import as_list, as_number, config_list, is_true, lookup, resource_policy

POD_SPEC_PATHS = {
    "kubernetes:apps/v1:Deployment": "spec.template.spec",
    "kubernetes:apps/v1:StatefulSet": "spec.template.spec",
    "kubernetes:apps/v1:DaemonSet": "spec.template.spec",
    "kubernetes:apps/v1:ReplicaSet": "spec.template.spec",
    "kubernetes:batch/v1:Job": "spec.template.spec",
    "kubernetes:batch/v1:CronJob": "spec.jobTemplate.spec.template.spec",
    "kubernetes:core/v1:Pod": "spec",
}
# Readiness only makes sense for pods that serve; a Job's pod runs to completion.
LONG_RUNNING = {
    "kubernetes:apps/v1:Deployment",
    "kubernetes:apps/v1:StatefulSet",
    "kubernetes:apps/v1:DaemonSet",
    "kubernetes:apps/v1:ReplicaSet",
    "kubernetes:core/v1:Pod",
}
GPU_RESOURCE = "nvidia.com/gpu"
DEFAULT_TP_SIZE = 1

_DIGEST = re.compile(r"@sha256:[0-9a-f]{64}$")


def gpu_quantity(container: Mapping[str, Any], section: str) -> float | None:
    """``resources.<section>['nvidia.com/gpu']`` as a number (Kubernetes quantities may be strings)."""
    value = (lookup(container, f"resources.{section}") or {}).get(GPU_RESOURCE)
    if isinstance(value, str):
        return float(value) if value.strip().isdigit() else None
    return as_number(value)


def pod_spec(args_type: str, props: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod spec inside a workload object, or None for other types."""
    path = POD_SPEC_PATHS.get(args_type)
    if path is None:
        return None
    spec = lookup(props, path)
    return spec if isinstance(spec, Mapping) else None


def containers(
    spec: Mapping[str, Any], *, include_init: bool = True
) -> Iterator[tuple[str, Mapping[str, Any]]]:
    """(label, container) for each container of a pod spec, init containers included by default."""
    groups = ["containers", "initContainers"] if include_init else ["containers"]
    for group in groups:
        for index, container in enumerate(as_list(spec.get(group))):
            if isinstance(container, Mapping):
                label = container.get("name") or f"{group}[{index}]"
                kind = "init container" if group == "initContainers" else "container"
                yield f"{kind} '{label}'", container


def command_line(container: Mapping[str, Any]) -> list[str]:
    """The container's command followed by its args, as strings."""
    return [str(t) for t in [*as_list(container.get("command")), *as_list(container.get("args"))]]


def runs_inference_server(tokens: list[str]) -> bool:
    """Whether a command line starts the inference server (``-m inference serve``)."""
    for index, token in enumerate(tokens[:-1]):
        if token == "-m" and tokens[index + 1] == "inference" and "serve" in tokens[index + 2 :]:
            return True
    return False


def tp_size(tokens: list[str]) -> int | None:
    """The ``--tp-size`` value on a command line; DEFAULT_TP_SIZE when absent, None when malformed."""
    for index, token in enumerate(tokens):
        value: str | None = None
        if token == "--tp-size" and index + 1 < len(tokens):
            value = tokens[index + 1]
        elif token.startswith("--tp-size="):
            value = token.split("=", 1)[1]
        elif token == "--tp-size":
            return None
        if value is not None:
            return int(value) if value.isdigit() and int(value) > 0 else None
    return DEFAULT_TP_SIZE


def _workload(args: ResourceValidationArgs) -> Mapping[str, Any] | None:
    return pod_spec(args.resource_type, args.props)


def exempt(args: ResourceValidationArgs) -> bool:
    """Whether the workload is in the policy's `exemptWorkloads` list ("<namespace>/<name>")."""
    namespace = lookup(args.props, "metadata.namespace")
    name = lookup(args.props, "metadata.name")
    wanted = {str(w) for w in config_list(args.get_config(), "exemptWorkloads")}
    return f"{namespace}/{name}" in wanted


EXEMPT_WORKLOADS_SCHEMA = {
    "type": "array",
    "items": {"type": "string", "pattern": "^[a-z0-9-]+/[a-z0-9.-]+$"},
    "default": [],
    "description": "Workloads ('<namespace>/<name>') that cannot meet this rule, each justified where it is "
    "listed (e.g. the NVIDIA device plugin writes its socket into a root-owned kubelet directory).",
}


def _no_privileged(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    for label, container in containers(spec):
        if is_true(lookup(container, "securityContext.privileged")):
            report(f"{label} runs privileged (securityContext.privileged: true).")
        if is_true(lookup(container, "securityContext.allowPrivilegeEscalation")):
            report(f"{label} sets securityContext.allowPrivilegeEscalation: true.")


def _no_host_namespaces(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if is_true(spec.get(field)):
            report(f"the pod spec sets {field}: true, sharing the node's namespace.")


def _run_as_non_root(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None or exempt(args):
        return
    pod_non_root = lookup(spec, "securityContext.runAsNonRoot")
    pod_user = as_number(lookup(spec, "securityContext.runAsUser"))
    for label, container in containers(spec):
        # A container's securityContext overrides the pod's.
        non_root = lookup(container, "securityContext.runAsNonRoot", pod_non_root)
        user = as_number(lookup(container, "securityContext.runAsUser"))
        user = pod_user if user is None else user
        if not is_true(non_root):
            report(f"{label} does not set runAsNonRoot: true (pod or container securityContext).")
        if user == 0:
            report(f"{label} runs as user 0 (root).")


def _resources(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    config = args.get_config()
    wanted = {
        "requests": config_list(config, "requiredRequests"),
        "limits": config_list(config, "requiredLimits"),
    }
    for label, container in containers(spec):
        for section, names in wanted.items():
            present = lookup(container, f"resources.{section}") or {}
            missing = [name for name in names if name not in present]
            if missing:
                report(f"{label} has no resources.{section} for {', '.join(missing)}.")


def _readiness(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if args.resource_type not in LONG_RUNNING:
        return
    spec = _workload(args)
    if spec is None or exempt(args):
        return
    for label, container in containers(spec, include_init=False):
        if not isinstance(container.get("readinessProbe"), Mapping):
            report(f"{label} has no readinessProbe, so traffic reaches it before it can serve.")


def _registry_of(image: str) -> str:
    first = image.split("/", 1)[0]
    # Docker's rule: the first path component is a registry host only if it looks like one.
    if "/" in image and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def _allowed_registry(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    patterns = [p for p in config_list(args.get_config(), "allowedRegistries") if isinstance(p, str)]
    for label, container in containers(spec):
        image = container.get("image")
        if not isinstance(image, str) or not image:
            report(f"{label} has no image.")
            continue
        registry = _registry_of(image)
        if not any(fnmatch.fnmatchcase(registry.lower(), p.lower()) for p in patterns):
            report(f"{label} pulls {image!r} from {registry!r}, which is not one of {patterns}.")


def _digest_pinned(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    for label, container in containers(spec):
        image = container.get("image")
        if not isinstance(image, str) or not _DIGEST.search(image):
            report(f"{label} image {image!r} is not pinned by digest (@sha256:<64 hex>).")


def _gpu_matches_tp(args: ResourceValidationArgs, report: ReportViolation) -> None:
    spec = _workload(args)
    if spec is None:
        return
    for label, container in containers(spec, include_init=False):
        tokens = command_line(container)
        if not runs_inference_server(tokens):
            continue
        size = tp_size(tokens)
        if size is None:
            report(f"{label} has a --tp-size that is not a positive integer: {tokens}.")
            continue
        for section in ("limits", "requests"):
            gpus = gpu_quantity(container, section)
            if section == "requests" and gpus is None:
                continue  # Kubernetes defaults extended-resource requests to the limit.
            if gpus != size:
                shown = "none" if gpus is None else int(gpus)
                report(
                    f"{label} runs tensor-parallel size {size} but resources.{section}"
                    f"['{GPU_RESOURCE}'] is {shown}; it must be {size}."
                )


WORKLOAD_TYPES = list(POD_SPEC_PATHS)

k8s_no_privileged = resource_policy(
    name="k8s-no-privileged",
    description="No container runs privileged or may escalate privileges.",
    severity=Severity.CRITICAL,
    remediation="Remove securityContext.privileged and set securityContext.allowPrivilegeEscalation="
    "false; GPU access needs the device plugin's nvidia.com/gpu resource, not privileged mode.",
    resource_types=WORKLOAD_TYPES,
    check=_no_privileged,
)

k8s_no_host_namespaces = resource_policy(
    name="k8s-no-host-namespaces",
    description="Pods do not share the node's network, PID or IPC namespaces.",
    severity=Severity.HIGH,
    remediation="Remove hostNetwork, hostPID and hostIPC from the pod spec (or set them false).",
    resource_types=WORKLOAD_TYPES,
    check=_no_host_namespaces,
)

k8s_run_as_non_root = resource_policy(
    name="k8s-run-as-non-root",
    description="Every container runs as a non-root user (runAsNonRoot: true, runAsUser not 0).",
    severity=Severity.HIGH,
    remediation="Set securityContext.runAsNonRoot=true and a non-zero runAsUser on the pod (or each "
    "container), and build the image with a non-root USER.",
    resource_types=WORKLOAD_TYPES,
    check=_run_as_non_root,
    config_schema=PolicyConfigSchema(properties={"exemptWorkloads": EXEMPT_WORKLOADS_SCHEMA}),
)

k8s_resources_required = resource_policy(
    name="k8s-resources-required",
    description="Every container declares resource requests and limits, so the scheduler can place "
    "it and one pod cannot starve a node.",
    severity=Severity.MEDIUM,
    remediation="Set resources.requests and resources.limits (cpu and memory) on every container, "
    "including init containers.",
    resource_types=WORKLOAD_TYPES,
    check=_resources,
    config_schema=PolicyConfigSchema(
        properties={
            "requiredRequests": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["cpu", "memory"],
                "description": "Resource names every container must request.",
            },
            "requiredLimits": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["cpu", "memory"],
                "description": "Resource names every container must limit.",
            },
        }
    ),
)

k8s_readiness_probe = resource_policy(
    name="k8s-readiness-probe",
    description="Every serving container (Deployment, StatefulSet, DaemonSet, Pod) has a readiness probe.",
    severity=Severity.MEDIUM,
    remediation="Add a readinessProbe (the inference server answers on /ready once the model is loaded).",
    resource_types=sorted(LONG_RUNNING),
    check=_readiness,
    config_schema=PolicyConfigSchema(properties={"exemptWorkloads": EXEMPT_WORKLOADS_SCHEMA}),
)

k8s_allowed_registry = resource_policy(
    name="k8s-allowed-registry",
    description="Container images come from the allowed registries only.",
    severity=Severity.HIGH,
    remediation="Push the image to the platform's Azure Container Registry and reference it from there.",
    resource_types=WORKLOAD_TYPES,
    check=_allowed_registry,
    config_schema=PolicyConfigSchema(
        properties={
            "allowedRegistries": {
                "type": "array",
                "items": {"type": "string"},
                "default": ["*.azurecr.io"],
                "description": "Registry host patterns (fnmatch, e.g. '*.azurecr.io') images may use.",
            }
        }
    ),
)

k8s_image_digest_pinned = resource_policy(
    name="k8s-image-digest-pinned",
    description="Container images are pinned by digest (@sha256:...), so what runs is exactly what "
    "was reviewed.",
    severity=Severity.MEDIUM,
    remediation="Reference images as registry/repo@sha256:<digest> (resolve the tag at build time).",
    resource_types=WORKLOAD_TYPES,
    check=_digest_pinned,
)

k8s_gpu_limit_matches_tp = resource_policy(
    name="k8s-gpu-limit-matches-tp",
    description="An inference server container requests and limits exactly as many nvidia.com/gpu as "
    "its tensor-parallel size (--tp-size, default 1): one TP group per pod.",
    severity=Severity.HIGH,
    remediation="Set resources.limits['nvidia.com/gpu'] (and requests, if given) to the --tp-size "
    "passed to `python -m inference serve`.",
    resource_types=WORKLOAD_TYPES,
    check=_gpu_matches_tp,
)

POLICIES = [
    k8s_no_privileged,
    k8s_no_host_namespaces,
    k8s_run_as_non_root,
    k8s_resources_required,
    k8s_readiness_probe,
    k8s_allowed_registry,
    k8s_image_digest_pinned,
    k8s_gpu_limit_matches_tp,
]
