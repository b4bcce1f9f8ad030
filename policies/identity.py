"""Identity: Entra ID and RBAC everywhere, shared keys and passwords off."""

from __future__ import annotations

from pulumi_policy import ReportViolation, ResourceValidationArgs, Severity, StackValidationArgs
from pulumi_policy.proxy import UnknownValueError

from .common import (
    is_true,
    links,
    lookup,
    references,
    require_true,
    require_value,
    resource_policy,
    resources_of,
    same,
    stack_policy,
)

VAULT = "azure-native:keyvault:Vault"
AKS = "azure-native:containerservice:ManagedCluster"
REDIS_DATABASE = "azure-native:redisenterprise:Database"
POSTGRES = "azure-native:dbforpostgresql:Server"
POSTGRES_ENTRA_ADMIN = "azure-native:dbforpostgresql:AdministratorsMicrosoftEntra"
IDENTITY = "azure-native:managedidentity:UserAssignedIdentity"
FEDERATED_CREDENTIAL = "azure-native:managedidentity:FederatedIdentityCredential"
# Long-running pods: what serves traffic. A Job (the schema Job) is a one-shot and may be an admin.
SERVING_WORKLOADS = ("kubernetes:apps/v1:Deployment", "kubernetes:apps/v1:StatefulSet",
                     "kubernetes:apps/v1:DaemonSet")


def _keyvault_rbac(args: ResourceValidationArgs, report: ReportViolation) -> None:
    value = lookup(args.props, "properties.enableRbacAuthorization")
    if not is_true(value):
        report(
            f"properties.enableRbacAuthorization is {value!r}; it must be true (access policies are "
            "not auditable per identity; azure-native defaults this to false)."
        )


def _keyvault_purge_protection(args: ResourceValidationArgs, report: ReportViolation) -> None:
    purge = lookup(args.props, "properties.enablePurgeProtection")
    if not is_true(purge):
        report(f"properties.enablePurgeProtection is {purge!r}; it must be true.")
    soft_delete = lookup(args.props, "properties.enableSoftDelete")
    if soft_delete is False:
        report("properties.enableSoftDelete is false; purge protection needs soft delete on.")



def _aks_entra_rbac(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_true(lookup(args.props, "aadProfile.managed")):
        report("aadProfile.managed is not true: the cluster is not integrated with Entra ID.")
    if not is_true(lookup(args.props, "aadProfile.enableAzureRBAC")):
        report("aadProfile.enableAzureRBAC is not true: Kubernetes authorization is not Azure RBAC.")


def _aks_workload_identity(args: ResourceValidationArgs, report: ReportViolation) -> None:
    if not is_true(lookup(args.props, "securityProfile.workloadIdentity.enabled")):
        report("securityProfile.workloadIdentity.enabled is not true.")
    if not is_true(lookup(args.props, "oidcIssuerProfile.enabled")):
        report("oidcIssuerProfile.enabled is not true (workload identity federation needs the issuer).")




def _postgres_password_auth(args: ResourceValidationArgs, report: ReportViolation) -> None:
    value = lookup(args.props, "authConfig.passwordAuth")
    if not same(value, "Disabled"):
        report(
            f"authConfig.passwordAuth is {value!r}; it must be 'Disabled' (the service enables "
            "password auth when it is left out)."
        )


def _serving_subject_matchers(args: StackValidationArgs) -> list[tuple[str | None, str]]:
    """(namespace or None when not known yet, service account) of every serving workload's pods."""
    matchers = []
    for workload in resources_of(args.resources, *SERVING_WORKLOADS):
        spec = lookup(workload.props, "spec.template.spec") or {}
        account = spec.get("serviceAccountName") or spec.get("serviceAccount") or "default"
        try:
            namespace = lookup(workload.props, "metadata.namespace") or "default"
        except UnknownValueError:  # a namespace created in the same update is unknown during preview
            namespace = None
        matchers.append((namespace, str(account)))
    return matchers


def _postgres_admin_not_serving(args: StackValidationArgs, report: ReportViolation) -> None:
    matchers = _serving_subject_matchers(args)

    def serves(subject: object) -> bool:
        parts = str(subject).split(":")
        if len(parts) != 4 or parts[:2] != ["system", "serviceaccount"]:
            return False
        return any(account == parts[3] and namespace in (None, parts[2]) for namespace, account in matchers)

    identities = resources_of(args.resources, IDENTITY)
    serving = {}
    for credential in resources_of(args.resources, FEDERATED_CREDENTIAL):
        if serves(credential.props.get("subject")):
            for identity in identities:
                if links(credential, "resourceName", identity, "resourceName"):
                    serving[identity.urn] = (identity, credential.props.get("subject"))
    for admin in resources_of(args.resources, POSTGRES_ENTRA_ADMIN):
        for identity, subject in serving.values():
            if references(admin, "objectId", identity) or links(admin, "principalName", identity, "resourceName"):
                report(f"PostgreSQL Entra administrator '{admin.name}' is identity "
                       f"'{identity.props.get('resourceName', identity.name)}', which serving pods use "
                       f"(federated to {subject}): a compromised server would own the database.", admin.urn)


keyvault_rbac_authorization = resource_policy(
    name="keyvault-rbac-authorization",
    description="Key Vaults use Azure RBAC for data-plane authorization, not access policies.",
    severity=Severity.HIGH,
    remediation="Set properties.enableRbacAuthorization=true and grant roles such as 'Key Vault "
    "Secrets User' to identities.",
    resource_types=[VAULT],
    check=_keyvault_rbac,
)

keyvault_purge_protection = resource_policy(
    name="keyvault-purge-protection",
    description="Key Vaults have purge protection (and soft delete) on, so deleted secrets can be "
    "recovered and cannot be purged early.",
    severity=Severity.HIGH,
    remediation="Set properties.enablePurgeProtection=true and keep properties.enableSoftDelete=true.",
    resource_types=[VAULT],
    check=_keyvault_purge_protection,
)

aks_local_accounts_disabled = resource_policy(
    name="aks-local-accounts-disabled",
    description="AKS clusters have local accounts disabled, so every access goes through Entra ID.",
    severity=Severity.HIGH,
    remediation="Set disableLocalAccounts=true on the managed cluster.",
    resource_types=[AKS],
    check=require_true("disableLocalAccounts", "no static admin kubeconfig"),
)

aks_entra_rbac = resource_policy(
    name="aks-entra-rbac",
    description="AKS clusters use managed Entra ID integration with Azure RBAC for Kubernetes authorization.",
    severity=Severity.HIGH,
    remediation="Set aadProfile={managed: true, enableAzureRBAC: true} on the managed cluster.",
    resource_types=[AKS],
    check=_aks_entra_rbac,
)

aks_workload_identity = resource_policy(
    name="aks-workload-identity",
    description="AKS clusters enable the OIDC issuer and workload identity, so pods use federated "
    "managed identities instead of stored secrets.",
    severity=Severity.MEDIUM,
    remediation="Set securityProfile.workloadIdentity.enabled=true and oidcIssuerProfile.enabled=true.",
    resource_types=[AKS],
    check=_aks_workload_identity,
)

redis_access_keys_disabled = resource_policy(
    name="redis-access-keys-disabled",
    description="Azure Managed Redis databases have access-key authentication disabled (Entra ID "
    "access policy assignments only).",
    severity=Severity.HIGH,
    remediation="Set accessKeysAuthentication='Disabled' on the redisenterprise database and grant "
    "identities an access policy assignment.",
    resource_types=[REDIS_DATABASE],
    check=require_value("accessKeysAuthentication", "Disabled", "Entra ID only"),
)

postgres_entra_auth = resource_policy(
    name="postgres-entra-auth",
    description="PostgreSQL flexible servers accept Microsoft Entra ID authentication.",
    severity=Severity.HIGH,
    remediation="Set authConfig.activeDirectoryAuth='Enabled' (with tenantId) and add an Entra "
    "administrator.",
    resource_types=[POSTGRES],
    check=require_value("authConfig.activeDirectoryAuth", "Enabled"),
)

postgres_password_auth_disabled = resource_policy(
    name="postgres-password-auth-disabled",
    description="PostgreSQL flexible servers have password authentication disabled (Entra ID only).",
    severity=Severity.HIGH,
    remediation="Set authConfig.passwordAuth='Disabled'; applications connect with their workload "
    "identity token.",
    resource_types=[POSTGRES],
    check=_postgres_password_auth,
)

postgres_admin_not_serving_identity = stack_policy(
    name="postgres-admin-not-serving-identity",
    description="No identity that serving pods (Deployments, StatefulSets, DaemonSets) run as, through a "
    "federated credential for their service account, is a PostgreSQL Entra administrator: the server gets "
    "a data-only database role, and only a dedicated schema Job holds the admin identity.",
    severity=Severity.HIGH,
    remediation="Make a separate user-assigned identity, federated only to the schema Job's service account, "
    "the AdministratorsMicrosoftEntra; give the serving identity a role with "
    "pgaadauth_create_principal_with_oid and only the grants it needs (components/pgvector_extension.py).",
    check=_postgres_admin_not_serving,
)

POLICIES = [
    keyvault_rbac_authorization,
    keyvault_purge_protection,
    aks_local_accounts_disabled,
    aks_entra_rbac,
    aks_workload_identity,
    redis_access_keys_disabled,
    postgres_entra_auth,
    postgres_password_auth_disabled,
    postgres_admin_not_serving_identity,
]
