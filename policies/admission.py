"""Admission: a cluster that runs workloads admits only images whose signature verifies (Ratify + Azure Policy)."""

from __future__ import annotations

from pulumi_policy import ReportViolation, Severity, StackValidationArgs

from .common import is_true, lookup, resources_of, same, stack_policy

AKS = "azure-native:containerservice:ManagedCluster"
POLICY_DEFINITION = "azure-native:authorization:PolicyDefinition"
POLICY_ASSIGNMENT = "azure-native:authorization:PolicyAssignment"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
WORKLOAD_TYPES = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:DaemonSet", "kubernetes:apps/v1:StatefulSet",
                  "kubernetes:batch/v1:Job", "kubernetes:batch/v1:CronJob", "kubernetes:core/v1:Pod")


def _verifies_signatures(definition) -> bool:
    """A Kubernetes-mode definition whose Gatekeeper template asks Ratify (the external data provider)."""
    details = lookup(definition.props, "policyRule.then.details") or {}
    template = details.get("templateInfo") or {}
    return same(definition.props.get("mode"), "Microsoft.Kubernetes.Data") and bool(template.get("content")
                                                                                   or template.get("url"))


def _signature_admission(args: StackValidationArgs, report: ReportViolation) -> None:
    workloads = resources_of(args.resources, *WORKLOAD_TYPES)
    clusters = resources_of(args.resources, AKS)
    if not workloads or not clusters:
        # The first phase (nothing runs yet), or workloads deployed into a cluster this stack does not create:
        # admission is configured where the cluster is.
        return
    ratify = [r for r in resources_of(args.resources, HELM_RELEASE) if str(r.props.get("chart", "")).endswith("ratify")]
    strict = [r for r in ratify if all(same(lookup(p, "signatureVerification.level"), "strict")
                                       for p in lookup(r.props, "values.notation.trustPolicies") or [{}])]
    definitions = {r.urn for r in resources_of(args.resources, POLICY_DEFINITION) if _verifies_signatures(r)}
    for cluster in clusters:
        if not is_true(lookup(cluster.props, "addonProfiles.azurepolicy.enabled")):
            report(f"cluster runs {len(workloads)} workloads but its Azure Policy add-on is off, so nothing checks "
                   "image signatures at admission (an unsigned or tampered image would run).", cluster.urn)
    if not strict:
        report("no Ratify release with a strict Notation trust policy: Gatekeeper has no verifier to ask, so "
               "image signatures are not checked at admission.")
    assigned = [a for a in resources_of(args.resources, POLICY_ASSIGNMENT)
                if definitions & {d.urn for d in a.dependencies}]
    if not any(same(lookup(a.props, "parameters.effect.value"), "Deny") for a in assigned):
        effects = sorted({str(lookup(a.props, "parameters.effect.value")) for a in assigned})
        report("no policy assignment with effect Deny of the signature-verification definition"
               f"{' (found: ' + ', '.join(effects) + ')' if effects else ''}: unverified images are admitted.")


aks_image_signature_enforced = stack_policy(
    name="aks-image-signature-enforced",
    description="A cluster that runs workloads refuses images whose Notation signature does not verify: Azure "
    "Policy add-on on, Ratify installed with a strict trust policy, and its policy assigned with effect Deny.",
    severity=Severity.HIGH,
    remediation="Keep AksClusterArgs.azure_policy true and deploy components/image_integrity.py (config "
    "aks.imageIntegrity, effect Deny); sign every image the stack runs (README: Releases).",
    check=_signature_admission,
)

POLICIES = [aks_image_signature_enforced]
