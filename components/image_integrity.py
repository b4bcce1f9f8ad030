"""Admission of signed images only: Ratify (Notation verifier, Key Vault trust store) behind Azure Policy's Gatekeeper.

The route Microsoft documents for AKS ("Securing AKS workloads: validating container image signatures with Ratify
and Azure Policy", learn.microsoft.com/azure/container-registry/container-registry-tutorial-verify-with-ratify-aks):
the AKS Azure Policy add-on runs Gatekeeper (AksCluster `azure_policy`), Ratify is installed by Helm into
`gatekeeper-system` as Gatekeeper's external data provider, and a custom Azure Policy definition in mode
`Microsoft.Kubernetes.Data` carries the ConstraintTemplate that asks Ratify about every image of a Pod; assigned to
the cluster with effect Deny, a Pod whose image has no signature that verifies against the trust policy is refused.
(AKS "image integrity", `securityProfile.imageIntegrity`, is a preview of the same Ratify and Azure Policy pieces
managed by AKS; this component installs them itself so the configuration is in the code.)

Ratify authenticates with workload identity (service account `gatekeeper-system/ratify-admin`): AcrPull on the
registry (to read signatures, granted through the registry's `pull_principal_ids`) and Key Vault Secrets User on the
vault holding the signing certificate (the certificate chain is read through its secret). The ConstraintTemplate is
embedded (Base64Encoded), so the policy add-on fetches nothing from the Internet through the egress firewall.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import pulumi
import pulumi_kubernetes as k8s
from pulumi_azure_native import authorization

from . import package

RATIFY_NAMESPACE = "gatekeeper-system"
RATIFY_SERVICE_ACCOUNT = "ratify-admin"
RATIFY_SUBJECT = f"system:serviceaccount:{RATIFY_NAMESPACE}:{RATIFY_SERVICE_ACCOUNT}"
# Azure Policy for Kubernetes leaves these alone by default; Ratify itself runs in gatekeeper-system.
EXCLUDED_NAMESPACES = ("kube-system", "gatekeeper-system", "azure-arc")

# Ratify's default Gatekeeper template (ratify library/default/template.yaml), asking the external data
# provider about every container, init container and ephemeral container image of a Pod.
_REGO = """package ratifyverification

remote_data := response {
  images := [img | img = input.review.object.spec.containers[_].image]
  images_init := [img | img = input.review.object.spec.initContainers[_].image]
  images_ephemeral := [img | img = input.review.object.spec.ephemeralContainers[_].image]
  all_images := array.concat(array.concat(images_init, images_ephemeral), images)
  response := external_data({"provider": "ratify-provider", "keys": all_images})
}

violation[{"msg": msg}] {
  general_violation[{"result": msg}]
}

general_violation[{"result": result}] {
  err := remote_data.system_error
  err != ""
  result := sprintf("System error calling external data provider: %s", [err])
}

general_violation[{"result": result}] {
  count(remote_data.errors) > 0
  result := sprintf("Error validating one or more images: %s", remote_data.errors)
}

general_violation[{"result": result}] {
  subject_validation := remote_data.responses[_]
  subject_validation[1].isSuccess == false
  result := sprintf("Subject failed verification: %s", [subject_validation[0]])
}
"""
CONSTRAINT_KIND = "RatifyVerification"


def constraint_template_yaml() -> str:
    """The Gatekeeper ConstraintTemplate the policy definition embeds."""
    rego = "\n".join(f"          {line}" if line else "" for line in _REGO.splitlines())
    return (f"apiVersion: templates.gatekeeper.sh/v1beta1\nkind: ConstraintTemplate\nmetadata:\n"
            f"  name: {CONSTRAINT_KIND.lower()}\nspec:\n  crd:\n    spec:\n      names:\n"
            f"        kind: {CONSTRAINT_KIND}\n  targets:\n    - target: admission.k8s.gatekeeper.sh\n"
            f"      rego: |\n{rego}\n")


class AdmissionEffect(StrEnum):
    """What Azure Policy does with a Pod whose images do not verify."""

    DENY = "Deny"
    AUDIT = "Audit"


@package.schema_args
@dataclass
class ImageIntegrityArgs:
    """Arguments of `ImageIntegrity`."""

    cluster_id: pulumi.Input[str]
    """ARM id of the AKS cluster (the policy assignment's scope); its Azure Policy add-on must be on."""
    subscription_id: pulumi.Input[str]
    """Subscription that holds the custom policy definition."""
    definition_name: str
    """Name of the custom policy definition (unique in the subscription, e.g. `ratify-<workload>-<env>`)."""
    identity_client_id: pulumi.Input[str]
    """Client id of Ratify's workload identity (federated to `gatekeeper-system/ratify-admin`)."""
    tenant_id: pulumi.Input[str]
    """Entra tenant of the identity and of the vault."""
    key_vault_uri: pulumi.Input[str]
    """Vault holding the signing certificate (the trust store Ratify verifies against)."""
    certificate_name: str
    """Name of the signing certificate in the vault (the release workflow signs with its key)."""
    registry_login_server: pulumi.Input[str]
    """Registry whose images the trust policy covers (`<name>.azurecr.io`)."""
    chart: str
    """Ratify's Helm chart as an OCI reference, mirrored into the platform registry (`oci://.../helm/ratify`)."""
    chart_version: str
    """Chart version to install."""
    image_repository: pulumi.Input[str]
    """Ratify's image, mirrored into the platform registry (`<login server>/mirror/ratify`)."""
    image_tag: str
    """Ratify image tag, with `@sha256:...` pinned where the stack runs images by digest."""
    crd_image_repository: pulumi.Input[str]
    """Ratify's CRD job image, mirrored likewise (`<login server>/mirror/ratify-crds`)."""
    effect: AdmissionEffect = AdmissionEffect.DENY
    """Deny refuses unverified Pods; Audit only reports them (the policy pack requires Deny where mandatory)."""
    trusted_identities: Sequence[str] = ("*",)
    """Signer identities trusted (`x509.subject: ...`); `*` trusts any certificate chaining to the vault's."""
    excluded_namespaces: Sequence[str] = EXCLUDED_NAMESPACES
    """Namespaces admission does not check (the system's own)."""


def _definition_rule(excluded: Sequence[str]) -> dict:
    template = base64.b64encode(constraint_template_yaml().encode()).decode()
    return {
        "if": {"field": "type", "in": ["Microsoft.ContainerService/managedClusters",
                                       "AKS Engine", "Microsoft.Kubernetes/connectedClusters"]},
        "then": {"effect": "[parameters('effect')]", "details": {
            "templateInfo": {"sourceType": "Base64Encoded", "content": template},
            "apiGroups": [""], "kinds": ["Pod"], "excludedNamespaces": list(excluded)}},
    }


class ImageIntegrity(pulumi.ComponentResource):
    """Ratify + an Azure Policy assignment: the cluster admits only images whose Notation signature verifies."""

    assignment_id: pulumi.Output[str]
    """ARM id of the policy assignment (workloads wait for it)."""

    def __init__(self, name: str, args: ImageIntegrityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(ImageIntegrityArgs, args)
        super().__init__("inferforge:index:ImageIntegrity", name, None, opts)
        registry_scope = pulumi.Output.from_input(args.registry_login_server)
        self.release = k8s.helm.v3.Release(
            f"{name}-ratify",
            name="ratify",
            chart=args.chart,
            version=args.chart_version,
            namespace=RATIFY_NAMESPACE,
            create_namespace=False,  # the Azure Policy add-on owns gatekeeper-system
            atomic=True,
            values={
                "image": {"repository": args.image_repository, "crdRepository": args.crd_image_repository,
                          "tag": args.image_tag},
                "provider": {"enableMutation": False},
                "featureFlags": {"RATIFY_CERT_ROTATION": True},
                "serviceAccount": {"name": RATIFY_SERVICE_ACCOUNT},
                "azureWorkloadIdentity": {"clientId": args.identity_client_id},
                "oras": {"authProviders": {"azureWorkloadIdentityEnabled": True}},
                "azurekeyvault": {"enabled": True, "vaultURI": args.key_vault_uri, "tenantId": args.tenant_id,
                                  "certificates": [{"name": args.certificate_name}]},
                "notation": {"trustPolicies": [{
                    "name": "inferforge",
                    "registryScopes": [registry_scope.apply(lambda server: f"{server}/*")],
                    "trustStores": ["ca:azurekeyvault"],
                    "trustedIdentities": list(args.trusted_identities),
                    "signatureVerification": {"level": "strict"},
                }]},
            },
            # The Kubernetes provider comes with `opts` (a component's provider reaches its Kubernetes children).
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.definition = authorization.PolicyDefinition(
            f"{name}-definition",
            policy_definition_name=args.definition_name,
            display_name="inferforge: only images whose Notation signature Ratify verifies",
            description="Refuses Pods whose images Ratify cannot verify against the Key Vault trust store.",
            mode="Microsoft.Kubernetes.Data",
            policy_type="Custom",
            parameters={"effect": {"type": "String", "allowedValues": ["Deny", "Audit", "Disabled"],
                                   "defaultValue": "Deny"}},
            policy_rule=_definition_rule(args.excluded_namespaces),
            metadata=json.loads('{"category": "Kubernetes"}'),
            opts=pulumi.ResourceOptions(parent=self),
        )
        # After Ratify: with Deny and no provider answering, every Pod would be refused ("System error").
        self.assignment = authorization.PolicyAssignment(
            f"{name}-assignment",
            policy_assignment_name=f"{args.definition_name}-deny"[:64],
            display_name="inferforge: signed images only",
            scope=args.cluster_id,
            policy_definition_id=self.definition.id,
            parameters={"effect": authorization.ParameterValuesValueArgs(value=str(args.effect))},
            enforcement_mode="Default",
            opts=pulumi.ResourceOptions(parent=self, depends_on=[self.release]),
        )
        self.assignment_id = self.assignment.id
        self.register_outputs({"assignment_id": self.assignment_id})
