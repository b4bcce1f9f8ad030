"""NvidiaDevicePlugin: the DaemonSet that makes `nvidia.com/gpu` schedulable on the GPU pools.

AKS installs the NVIDIA driver on GPU nodes (`gpuProfile.driver: Install`), but the driver alone does
not advertise GPUs to the kubelet: until a device plugin registers, a pod requesting `nvidia.com/gpu`
stays Pending. AKS documents deploying NVIDIA's device plugin DaemonSet for that:
https://learn.microsoft.com/azure/aks/use-nvidia-gpu ("Manually install the NVIDIA device plugin")

The pod spec follows NVIDIA's static manifest (deployments/static/nvidia-device-plugin.yml in
https://github.com/NVIDIA/k8s-device-plugin): one container that registers a socket in the kubelet's
device-plugin directory (a hostPath), `system-node-critical` priority, `FAIL_ON_INIT_ERROR=false`,
no privilege escalation and no capabilities. What differs, and why:

* Scheduling: it runs only on our GPU pools (required node affinity on `inferforge.io/pool`), and
  tolerates their taints (`sku=gpu:NoSchedule`) besides NVIDIA's `nvidia.com/gpu` one.
* The image comes from the platform registry (a mirror, pinned by digest in prod), not nvcr.io.
* seccomp RuntimeDefault, resource requests and limits, and its own namespace. The namespace enforces the
  `privileged` Pod Security level because the pod needs a hostPath, which `baseline` forbids; it
  still warns and audits at `baseline`, and the policy pack keeps every other workload restricted.
* It runs as root (UID 0), as upstream does: the kubelet's device-plugin directory is root-owned and
  the plugin creates its socket there. It has no HTTP endpoint, so no readiness probe. Both are
  listed exemptions (`exemptWorkloads`) of the pack's run-as-non-root and readiness-probe policies.
* The root filesystem is left writable, as upstream leaves it: a read-only root has not been tried
  with the plugin on a GPU node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_kubernetes as k8s

from . import package
from .kubernetes import NodeTaint, check_dns_label, kubernetes_provider, name_of

DEVICE_PLUGIN_DIR = "/var/lib/kubelet/device-plugins"
POOL_LABEL = "inferforge.io/pool"


@package.schema_args
@dataclass
class NvidiaDevicePluginArgs:
    """Arguments of :class:`NvidiaDevicePlugin`."""

    image: str
    """Device plugin image from the platform registry (a mirror of nvcr.io/nvidia/k8s-device-plugin)."""
    gpu_pools: Sequence[str]
    """Names of the GPU node pools (`inferforge.io/pool` label values) the plugin must run on."""
    gpu_taints: Sequence[str] = ("sku=gpu:NoSchedule",)
    """Taints of those pools in AKS `key=value:Effect` form; each becomes a toleration."""
    namespace: str = "gpu-device-plugin"
    """Namespace created for the plugin (Pod Security `privileged`, see module docstring)."""
    name: str = "nvidia-device-plugin"
    """Name of the DaemonSet."""
    kubernetes_version: str = "1.33"
    """Cluster minor version that pins the Pod Security Standard version labels."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every object."""

    def validate(self) -> None:
        """Reject settings the cluster would refuse later."""
        check_dns_label("namespace", self.namespace)
        check_dns_label("name", self.name)
        if not self.gpu_pools:
            raise ValueError("NvidiaDevicePluginArgs.gpu_pools needs at least one GPU pool name")
        for taint in self.gpu_taints:
            NodeTaint.parse(taint, "gpu_taints")


class NvidiaDevicePlugin(pulumi.ComponentResource):
    """NVIDIA's device plugin as a DaemonSet on the GPU pools only."""

    daemon_set_name: pulumi.Output[str]
    """Name of the device plugin DaemonSet."""
    namespace: str
    """Namespace of the device plugin."""

    def __init__(self, name: str, args: NvidiaDevicePluginArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(NvidiaDevicePluginArgs, args)
        args.validate()
        provider = kubernetes_provider(opts, "NvidiaDevicePlugin")
        super().__init__("inferforge:index:NvidiaDevicePlugin", name, None,
                         package.aliased(opts, "inferforge:compute:NvidiaDevicePlugin"))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        selector = {"app.kubernetes.io/name": "nvidia-device-plugin", "app.kubernetes.io/instance": name}
        labels = {**selector, "app.kubernetes.io/part-of": "inferforge", "app.kubernetes.io/managed-by": "pulumi",
                  **args.labels}
        version = f"v{args.kubernetes_version}"
        pod_security = {"pod-security.kubernetes.io/enforce": "privileged",
                        "pod-security.kubernetes.io/enforce-version": version,
                        "pod-security.kubernetes.io/audit": "baseline",
                        "pod-security.kubernetes.io/audit-version": version,
                        "pod-security.kubernetes.io/warn": "baseline",
                        "pod-security.kubernetes.io/warn-version": version}
        namespace = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.namespace, labels={**labels, **pod_security}),
            opts=child,
        )
        core = k8s.core.v1
        tolerations = [NodeTaint.parse(t).toleration() for t in args.gpu_taints]
        tolerations.append(core.TolerationArgs(key="nvidia.com/gpu", operator="Exists", effect="NoSchedule"))
        self.daemon_set = k8s.apps.v1.DaemonSet(
            f"{name}-daemonset",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=args.name, namespace=name_of(namespace), labels=labels),
            spec=k8s.apps.v1.DaemonSetSpecArgs(
                selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                update_strategy=k8s.apps.v1.DaemonSetUpdateStrategyArgs(type="RollingUpdate"),
                template=core.PodTemplateSpecArgs(
                    metadata=k8s.meta.v1.ObjectMetaArgs(labels=labels),
                    spec=core.PodSpecArgs(
                        priority_class_name="system-node-critical",
                        automount_service_account_token=False,
                        enable_service_links=False,
                        tolerations=tolerations,
                        affinity=core.AffinityArgs(node_affinity=core.NodeAffinityArgs(
                            required_during_scheduling_ignored_during_execution=core.NodeSelectorArgs(
                                node_selector_terms=[core.NodeSelectorTermArgs(match_expressions=[
                                    core.NodeSelectorRequirementArgs(key=POOL_LABEL, operator="In",
                                                                     values=sorted(args.gpu_pools))])]))),
                        security_context=core.PodSecurityContextArgs(
                            seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault")),
                        containers=[core.ContainerArgs(
                            name="nvidia-device-plugin-ctr",
                            image=args.image,
                            image_pull_policy="IfNotPresent",
                            env=[core.EnvVarArgs(name="FAIL_ON_INIT_ERROR", value="false")],
                            resources=core.ResourceRequirementsArgs(
                                requests={"cpu": "50m", "memory": "64Mi"},
                                limits={"cpu": "200m", "memory": "128Mi"}),
                            security_context=core.SecurityContextArgs(
                                allow_privilege_escalation=False,
                                privileged=False,
                                capabilities=core.CapabilitiesArgs(drop=["ALL"]),
                                seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault"),
                            ),
                            volume_mounts=[core.VolumeMountArgs(name="kubelet-device-plugins-dir",
                                                                mount_path=DEVICE_PLUGIN_DIR)],
                            termination_message_policy="FallbackToLogsOnError",
                        )],
                        volumes=[core.VolumeArgs(
                            name="kubelet-device-plugins-dir",
                            host_path=core.HostPathVolumeSourceArgs(path=DEVICE_PLUGIN_DIR, type="Directory"))],
                    ),
                ),
            ),
            opts=child,
        )
        # The plugin needs no network: it talks to the kubelet over a Unix socket in the hostPath and to the
        # driver through /dev, and mounts no API token. Deny all traffic to and from its pods.
        k8s.networking.v1.NetworkPolicy(
            f"{name}-deny-all",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{args.name}-deny-all", namespace=name_of(namespace),
                                                labels=labels),
            spec=k8s.networking.v1.NetworkPolicySpecArgs(
                pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
                policy_types=["Ingress", "Egress"]),
            opts=child,
        )
        self.daemon_set_name = name_of(self.daemon_set)
        self.namespace = args.namespace
        self.register_outputs({"daemon_set_name": self.daemon_set_name, "namespace": self.namespace})
