"""InferenceService's network: the Service's internal load balancer + Private Link Service annotations, and the
NetworkPolicy that admits only Front Door's path (or the gateway) and the metrics scraper."""

from __future__ import annotations

from collections.abc import Mapping

import pulumi_kubernetes as k8s
from inferforge.inference.settings import (  # noqa: F401 - the component's public names for the choices
    Dtype,
    Embeddings,
    EmbeddingsPooling,
    ServingSettings,
    ToolCallParser,
)

from .inference_args import SERVING_PORT, DownloadModelSource, InferenceServiceArgs
from .kubernetes import (
    dns_egress_rule,
    private_link_service_annotations,
    public_ip_block,
)


def service_annotations(args: InferenceServiceArgs) -> dict[str, str]:
    if args.gateway_namespace is not None:
        return {}
    return private_link_service_annotations(
        pls_name=args.pls_name, pls_subnet_name=args.pls_subnet_name, nat_ip_count=args.pls_nat_ip_count,
        visibility=args.pls_visibility, internal_lb_subnet_name=args.internal_lb_subnet_name,
        internal_lb_ip=args.internal_lb_ip)

def network_policy_spec(args: InferenceServiceArgs, selector: Mapping[str, str]
                        ) -> k8s.networking.v1.NetworkPolicySpecArgs:
    """Ingress from Front Door's PLS path (or the gateway) and the scraper; egress to DNS, the private
    endpoints and Entra ID only."""
    np = k8s.networking.v1
    serving_port = [np.NetworkPolicyPortArgs(protocol="TCP", port=SERVING_PORT)]
    https = [np.NetworkPolicyPortArgs(protocol="TCP", port=443)]
    egress_public = {cidr: None for cidr in args.entra_egress_cidrs}
    if isinstance(args.model_source, DownloadModelSource):
        egress_public.update({cidr: None for cidr in args.model_source.egress_cidrs})
    return np.NetworkPolicySpecArgs(
        pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=selector),
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



def first_ingress_ip(status: object) -> str | None:
    """``status.loadBalancer.ingress[0].ip`` of a Service, or None before the cloud provider assigned it."""
    ingress = getattr(getattr(status, "load_balancer", None), "ingress", None) if status is not None else None
    return ingress[0].ip if ingress else None
