"""The AI gateway as the only way in: model servers behind it, and the gateway itself redundant.

A stack that runs the gateway (a workload whose command serves the gateway with `--upstream` model
servers) means every request should be authenticated per tenant, limited and metered; a model server
reachable past it (its own load balancer, or a NetworkPolicy that admits address ranges rather than
the gateway's namespace) would let a caller skip all of that. And a gateway that is a single pod, or
that an autoscaler or a node drain can bring below two, takes every model down with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from pulumi_policy import PolicyResource, ReportViolation, Severity, StackValidationArgs

from .common import as_list, as_number, lookup, resources_of, stack_policy
from .workloads import command_line, containers, pod_spec, runs_inference_server

DEPLOYMENT = "kubernetes:apps/v1:Deployment"
SERVICE = "kubernetes:core/v1:Service"
NETWORK_POLICY = "kubernetes:networking.k8s.io/v1:NetworkPolicy"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
PDB = "kubernetes:policy/v1:PodDisruptionBudget"
MIN_GATEWAY_REPLICAS = 2


def runs_gateway(tokens: list[str]) -> bool:
    """The gateway's serve command: `python -m gateway serve ... --upstream M=URL` (or the image's entrypoint
    with `serve --upstream ...` as its arguments)."""
    return "serve" in tokens and any(t == "--upstream" or t.startswith("--upstream=") for t in tokens)


def _runs(resource: PolicyResource, predicate: Any) -> bool:
    spec = pod_spec(resource.resource_type, resource.props)
    return spec is not None and any(predicate(command_line(c)) for _, c in containers(spec))


def _namespace(resource: PolicyResource) -> str | None:
    return lookup(resource.props, "metadata.namespace")


def _pod_labels(resource: PolicyResource) -> Mapping[str, str]:
    return lookup(resource.props, "spec.template.metadata.labels") or {}


def _selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def _model_servers(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    return [r for r in resources_of(resources, DEPLOYMENT) if _runs(r, runs_inference_server)]


def _gateways(resources: Sequence[PolicyResource]) -> list[PolicyResource]:
    return [r for r in resources_of(resources, DEPLOYMENT) if _runs(r, runs_gateway)]


def _behind_gateway(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = args.resources
    gateways = _gateways(resources)
    if not gateways:
        return
    gateway_namespaces = {_namespace(g) for g in gateways}
    for server in _model_servers(resources):
        labels, namespace = _pod_labels(server), _namespace(server)
        for service in resources_of(resources, SERVICE):
            if _namespace(service) != namespace or not _selects(lookup(service.props, "spec.selector"), labels):
                continue
            kind = lookup(service.props, "spec.type") or "ClusterIP"
            if kind in ("LoadBalancer", "NodePort"):
                report(f"Service '{service.name}' exposes model server '{server.name}' as {kind}: with the AI "
                       "gateway in the stack, clients must reach the model only through it (type ClusterIP).",
                       service.urn)
        guarded = False
        for policy in resources_of(resources, NETWORK_POLICY):
            if _namespace(policy) != namespace or not _selects(
                    lookup(policy.props, "spec.podSelector.matchLabels"), labels):
                continue
            guarded = True
            for rule in as_list(lookup(policy.props, "spec.ingress")):
                for peer in as_list(rule.get("from")):
                    if "ipBlock" in peer:
                        allowed = ", ".join(sorted(filter(None, gateway_namespaces)))
                        report(f"NetworkPolicy '{policy.name}' admits {peer['ipBlock'].get('cidr')} to model server "
                               f"'{server.name}': only the gateway's namespace ({allowed}) and the metrics scraper "
                               "may reach it.", policy.urn)
        if not guarded:
            report(f"Model server '{server.name}' has no NetworkPolicy: any pod could call it past the gateway.",
                   server.urn)


def _redundant(args: StackValidationArgs, report: ReportViolation) -> None:
    resources = args.resources
    for gateway in _gateways(resources):
        name, namespace, labels = lookup(gateway.props, "metadata.name"), _namespace(gateway), _pod_labels(gateway)
        replicas = as_number(lookup(gateway.props, "spec.replicas"))
        if replicas is None or replicas < MIN_GATEWAY_REPLICAS:
            report(f"Gateway Deployment '{gateway.name}' runs {replicas if replicas is not None else 1:.0f} "
                   f"replica(s); at least {MIN_GATEWAY_REPLICAS} keep every model reachable through a node or zone "
                   "loss.", gateway.urn)
        scalers = [h for h in resources_of(resources, HPA) if _namespace(h) == namespace
                   and lookup(h.props, "spec.scaleTargetRef.name") == name
                   and lookup(h.props, "spec.scaleTargetRef.kind") == "Deployment"]
        if not scalers:
            report(f"Gateway Deployment '{gateway.name}' has no HorizontalPodAutoscaler: a traffic peak queues at "
                   "the front door of every model.", gateway.urn)
        for scaler in scalers:
            floor = as_number(lookup(scaler.props, "spec.minReplicas"))
            if floor is None or floor < MIN_GATEWAY_REPLICAS:
                report(f"HorizontalPodAutoscaler '{scaler.name}' may scale the gateway down to "
                       f"{floor if floor is not None else 1:.0f} replica(s); minReplicas must be at least "
                       f"{MIN_GATEWAY_REPLICAS}.", scaler.urn)
        budgets = [p for p in resources_of(resources, PDB) if _namespace(p) == namespace
                   and _selects(lookup(p.props, "spec.selector.matchLabels"), labels)]
        if not budgets:
            report(f"Gateway Deployment '{gateway.name}' has no PodDisruptionBudget: a node upgrade may evict "
                   "every replica at once.", gateway.urn)


k8s_model_servers_behind_gateway = stack_policy(
    name="k8s-model-servers-behind-gateway",
    description="When the stack runs the AI gateway, model servers are reachable only through it: their "
    "Services are cluster-internal and their NetworkPolicies admit the gateway's namespace, not address ranges.",
    severity=Severity.HIGH,
    remediation="Pass the gateway's namespace as InferenceServiceArgs.gateway_namespace (the stack does when "
    "gateway.enabled is true): the Service becomes ClusterIP and ingress is limited to the gateway's pods.",
    check=_behind_gateway,
)

k8s_gateway_redundant = stack_policy(
    name="k8s-gateway-redundant",
    description="The AI gateway runs at least two replicas, with a HorizontalPodAutoscaler whose floor is at "
    "least two and a PodDisruptionBudget.",
    severity=Severity.HIGH,
    remediation="Use components/gateway.py (replicas >= 2, an HPA with minReplicas = replicas, a PDB of "
    "maxUnavailable 1).",
    check=_redundant,
)

POLICIES = [k8s_model_servers_behind_gateway, k8s_gateway_redundant]
