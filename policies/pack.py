"""The pack's registry: every policy object, in one importable list.

``__main__.py`` hands this list to ``PolicyPack`` (which starts a gRPC server and blocks), and the
offline evaluator runs the very same objects, so both paths enforce identical rules.
"""

from __future__ import annotations

from pulumi_policy import EnforcementLevel, Policy

from . import (
    admission,
    audit,
    cost,
    edge,
    egress,
    encryption,
    exposure,
    gateway,
    identity,
    nodes,
    prerequisites,
    quotas,
    registry,
    resilience,
    storage,
    tagging,
    workloads,
)

PACK_NAME = "inferforge"
# Without a config file every policy blocks: an unconfigured run fails safe. The per-stack files in
# policies/config/ relax what each environment allows.
PACK_ENFORCEMENT_LEVEL = EnforcementLevel.MANDATORY
PACK_DESCRIPTION = (
    "inferforge platform guardrails: private data services, TLS everywhere, Entra ID identity, GPU "
    "quotas, prod resilience, tagging, WAF at the edge, hardened Kubernetes workloads, a private registry, "
    "a private model store whose Blob volumes the nodes can reach and read, the AI gateway as the only and "
    "redundant way to the models, a cap on the monthly cost estimate, and the apply-time prerequisites AKS needs "
    "(AcrPull, GPU device plugin, Blob "
    "CSI, LB/PLS permissions)."
)

ALL_POLICIES: list[Policy] = [
    *exposure.POLICIES,
    *encryption.POLICIES,
    *identity.POLICIES,
    *quotas.POLICIES,
    *resilience.POLICIES,
    *tagging.POLICIES,
    *edge.POLICIES,
    *workloads.POLICIES,
    *registry.POLICIES,
    *storage.POLICIES,
    *prerequisites.POLICIES,
    *egress.POLICIES,
    *nodes.POLICIES,
    *audit.POLICIES,
    *gateway.POLICIES,
    *cost.POLICIES,
    *admission.POLICIES,
]

_names = [policy.name for policy in ALL_POLICIES]
if len(_names) != len(set(_names)):
    raise RuntimeError(
        f"duplicate policy names in the pack: {sorted({n for n in _names if _names.count(n) > 1})}"
    )
