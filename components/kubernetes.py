"""Kubernetes building blocks shared by the in-cluster components, written once.

InferenceService, PgvectorExtension and NvidiaDevicePlugin all validate their arguments the same way
(errors name the field, the value and what is allowed), refuse the ambient kubeconfig, run restricted
containers and write the same NetworkPolicy rules. What they share lives here, as components/common.py
holds what the Azure components share; a component never re-implements one of these inline.

Argument checks raise :class:`KubernetesArgsError`; a component re-raises them as its own error type
with :func:`reported_as`, so callers catch one type per component and the message is unchanged.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import pulumi
import pulumi_kubernetes as k8s

NON_ROOT_UID = 10001
"""UID (and GID) our restricted containers run as: the inference image's user, never root."""

WORKLOAD_IDENTITY_USE_LABEL = "azure.workload.identity/use"
"""Pod label that makes the AKS workload-identity webhook project a federated token into the pod."""
WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION = "azure.workload.identity/client-id"
"""ServiceAccount annotation naming the user-assigned identity the federated token is exchanged for."""

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_TAINT = re.compile(
    r"^(?P<key>[A-Za-z0-9./_-]+)(=(?P<value>[A-Za-z0-9._-]*))?:(?P<effect>NoSchedule|PreferNoSchedule|NoExecute)$"
)
# Ranges the public-HTTPS rule never reaches: RFC 1918 (in-VNet traffic has its own, narrower rules),
# link-local (IMDS / wireserver: the node's identity) and the RFC 6598 shared space.
_NON_PUBLIC_V4 = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16", "100.64.0.0/10")


class KubernetesArgsError(ValueError):
    """Invalid arguments of an in-cluster component; the message names the field, the value and what is allowed."""


def fail(field_name: str, value: object, allowed: str) -> KubernetesArgsError:
    """The error for one bad argument (raise it): ``<field>=<value> is invalid: <allowed>``."""
    return KubernetesArgsError(f"{field_name}={value!r} is invalid: {allowed}")


@contextmanager
def reported_as(error: type[KubernetesArgsError]) -> Iterator[None]:
    """Re-raise a shared check's :class:`KubernetesArgsError` as the component's ``error``, same message."""
    try:
        yield
    except error:
        raise
    except KubernetesArgsError as shared:
        raise error(str(shared)) from None


def check_dns_label(field_name: str, value: str, max_len: int = 63) -> None:
    """Require a DNS-1123 label (object names, namespaces) of at most ``max_len`` characters."""
    if not (isinstance(value, str) and len(value) <= max_len and _DNS_LABEL.match(value)):
        raise fail(field_name, value, f"must be a DNS-1123 label (lowercase alphanumerics and '-', "
                                      f"at most {max_len} characters)")


def check_cidr(field_name: str, value: str) -> ipaddress.IPv4Network:
    """Require an IPv4 CIDR with no host bits set; returns the parsed network."""
    try:
        network = ipaddress.ip_network(value, strict=True)
    except ValueError as error:
        raise fail(field_name, value, f"must be an IPv4 CIDR such as 10.10.0.0/24 ({error})") from None
    if not isinstance(network, ipaddress.IPv4Network):
        raise fail(field_name, value, "must be an IPv4 CIDR")
    return network


def check_range(field_name: str, value: int, low: int, high: int | None = None) -> None:
    """Require an integer (not a bool) in ``[low, high]`` (``high`` None: no upper bound)."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low or (high is not None and value > high):
        bounds = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise fail(field_name, value, f"must be an integer {bounds}")


def federated_credential_subject(namespace: str, service_account_name: str) -> str:
    """The ``subject`` a workload identity's federated credential must carry for this ServiceAccount."""
    return f"system:serviceaccount:{namespace}:{service_account_name}"


@dataclass(frozen=True)
class NodeTaint:
    """One node taint, parsed from the AKS ``key=value:Effect`` form (AgentPool ``node_taints``)."""

    key: str
    value: str | None
    effect: str

    @classmethod
    def parse(cls, text: str, field_name: str = "gpu_taints") -> NodeTaint:
        """Parse ``sku=gpu:NoSchedule``; errors name ``field_name``."""
        match = _TAINT.match(text) if isinstance(text, str) else None
        if not match:
            raise fail(field_name, text, "each taint must look like key=value:NoSchedule "
                                         "(effect NoSchedule, PreferNoSchedule or NoExecute)")
        return cls(key=match["key"], value=match["value"], effect=match["effect"])

    def toleration(self) -> k8s.core.v1.TolerationArgs:
        """The toleration that lets a pod onto nodes with this taint."""
        if self.value is None:
            return k8s.core.v1.TolerationArgs(key=self.key, operator="Exists", effect=self.effect)
        return k8s.core.v1.TolerationArgs(key=self.key, operator="Equal", value=self.value, effect=self.effect)


def kubernetes_provider(opts: pulumi.ResourceOptions | None, component: str,
                        error: type[KubernetesArgsError] = KubernetesArgsError) -> k8s.Provider:
    """The explicit Kubernetes provider from ``opts``; refuse the ambient kubeconfig (raises ``error``)."""
    if opts is not None:
        if isinstance(opts.provider, k8s.Provider):
            return opts.provider
        providers = opts.providers
        if isinstance(providers, Mapping) and isinstance(providers.get("kubernetes"), k8s.Provider):
            return providers["kubernetes"]
        if isinstance(providers, Sequence):
            for candidate in providers:
                if isinstance(candidate, k8s.Provider):
                    return candidate
    raise error(
        f"{component} needs an explicit pulumi_kubernetes.Provider in opts (provider=...) built from the AKS "
        "cluster credentials; refusing to deploy to the ambient kubeconfig")


def restricted_container_security() -> k8s.core.v1.SecurityContextArgs:
    """A container security context that passes the ``restricted`` Pod Security Standard, read-only root."""
    return k8s.core.v1.SecurityContextArgs(
        run_as_non_root=True,
        run_as_user=NON_ROOT_UID,
        run_as_group=NON_ROOT_UID,
        allow_privilege_escalation=False,
        privileged=False,
        read_only_root_filesystem=True,
        capabilities=k8s.core.v1.CapabilitiesArgs(drop=["ALL"]),
        seccomp_profile=k8s.core.v1.SeccompProfileArgs(type="RuntimeDefault"),
    )


def dns_egress_rule() -> k8s.networking.v1.NetworkPolicyEgressRuleArgs:
    """Egress to the cluster DNS (kube-dns in kube-system) on port 53, UDP and TCP."""
    np = k8s.networking.v1
    return np.NetworkPolicyEgressRuleArgs(
        to=[np.NetworkPolicyPeerArgs(
            namespace_selector=k8s.meta.v1.LabelSelectorArgs(
                match_labels={"kubernetes.io/metadata.name": "kube-system"}),
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels={"k8s-app": "kube-dns"}))],
        ports=[np.NetworkPolicyPortArgs(protocol="UDP", port=53), np.NetworkPolicyPortArgs(protocol="TCP", port=53)],
    )


def public_ip_block(cidr: str) -> k8s.networking.v1.IPBlockArgs:
    """An ipBlock for ``cidr`` minus every private/link-local range inside it (never IMDS)."""
    network = ipaddress.ip_network(cidr)
    excluded = [r for r in _NON_PUBLIC_V4 if ipaddress.ip_network(r).subnet_of(network)  # type: ignore[arg-type]
                and ipaddress.ip_network(r) != network]
    return k8s.networking.v1.IPBlockArgs(cidr=cidr, except_=excluded or None)


def name_of(resource: k8s.core.v1.Namespace | k8s.core.v1.Service | k8s.core.v1.ServiceAccount
            | k8s.apps.v1.Deployment | k8s.apps.v1.DaemonSet | k8s.batch.v1.Job) -> pulumi.Output[str]:
    """metadata.name of a created object as an Output, so consumers depend on its creation."""
    return resource.metadata.apply(lambda meta: meta.name)


def pod_security_labels(kubernetes_version: str, level: str = "restricted") -> dict[str, str]:
    """Namespace labels enforcing (and auditing, warning) a Pod Security Standard, pinned to the cluster's
    minor version so an upgrade cannot loosen it silently."""
    labels: dict[str, str] = {}
    for mode in ("enforce", "audit", "warn"):
        labels[f"pod-security.kubernetes.io/{mode}"] = level
        labels[f"pod-security.kubernetes.io/{mode}-version"] = f"v{kubernetes_version}"
    return labels


def private_link_service_annotations(*, pls_name: str, pls_subnet_name: str, nat_ip_count: int,
                                     visibility: Sequence[str] = (), internal_lb_subnet_name: str | None = None,
                                     internal_lb_ip: str | None = None) -> dict[str, str]:
    """Annotations of a LoadBalancer Service that make AKS create an internal LB with a Private Link Service
    (Front Door Premium's private origin)."""
    prefix = "service.beta.kubernetes.io/"
    annotations = {
        f"{prefix}azure-load-balancer-internal": "true",
        f"{prefix}azure-pls-create": "true",
        f"{prefix}azure-pls-name": pls_name,
        f"{prefix}azure-pls-ip-configuration-subnet": pls_subnet_name,
        f"{prefix}azure-pls-ip-configuration-ip-address-count": str(nat_ip_count),
        # Front Door speaks plain HTTP to the origin; PROXY v2 headers would break it.
        f"{prefix}azure-pls-proxy-protocol": "false",
    }
    if visibility:
        annotations[f"{prefix}azure-pls-visibility"] = " ".join(visibility)
    if internal_lb_subnet_name:
        annotations[f"{prefix}azure-load-balancer-internal-subnet"] = internal_lb_subnet_name
    if internal_lb_ip:
        # spec.loadBalancerIP is deprecated; the Azure cloud provider reads this annotation.
        annotations[f"{prefix}azure-load-balancer-ipv4"] = internal_lb_ip
    return annotations
