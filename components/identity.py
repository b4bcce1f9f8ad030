"""Workload identity: an Entra identity for pods, federated with their Kubernetes service account."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import pulumi
from pulumi_azure_native import managedidentity

from . import package
from .common import ROLE_KEY_VAULT_SECRETS_USER, role_assignment


@package.schema_args
@dataclass
class WorkloadIdentityArgs:
    """Arguments of `WorkloadIdentity`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the identity."""
    location: pulumi.Input[str]
    """Azure region."""
    identity_name: str
    """CAF name (`id-<workload>-<env>-inference`, `id-<workload>-<env>-pgschema`)."""
    oidc_issuer_url: pulumi.Input[str]
    """The AKS cluster's OIDC issuer; only tokens it signs can be exchanged."""
    federated_subjects: Sequence[str]
    """`system:serviceaccount:<namespace>:<name>` of each service account that may use the identity
    (the inference pods for one, the pgvector schema Job for the other); each subject pins exactly one."""
    subscription_id: pulumi.Input[str]
    """Subscription, to build the built-in role definition id."""
    key_vault_id: pulumi.Input[str] | None = None
    """Vault whose secrets (API keys) the pods read: Key Vault Secrets User on this vault only. None
    (the default) grants nothing: an identity gets only the data-plane access it is given."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class WorkloadIdentity(pulumi.ComponentResource):
    """User-assigned identity + federated credential + least-privilege data-plane grants.

    Redis data access is granted by the ManagedRedis component's access policy assignment for
    `principal_id` (Managed Redis authorizes data access there, not through Azure RBAC).
    """

    client_id: pulumi.Output[str]
    """Client id of the identity (the pod's `azure.workload.identity/client-id` annotation)."""
    principal_id: pulumi.Output[str]
    """Principal (object) id of the identity, for role and access policy assignments."""
    tenant_id: pulumi.Output[str]
    """Entra tenant of the identity."""
    identity_name: pulumi.Output[str]
    """Name of the user-assigned identity."""

    def __init__(self, name: str, args: WorkloadIdentityArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(WorkloadIdentityArgs, args)
        super().__init__("inferforge:index:WorkloadIdentity", name, None,
                         package.aliased(opts, "inferforge:identity:WorkloadIdentity"))
        self.identity = managedidentity.UserAssignedIdentity(
            f"{name}-identity",
            resource_name_=args.identity_name,
            resource_group_name=args.resource_group_name,
            location=args.location,
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        previous: pulumi.Resource | None = None
        for subject in args.federated_subjects:
            service_account = subject.rsplit(":", 2)
            previous = managedidentity.FederatedIdentityCredential(
                f"{name}-federation-{service_account[-2]}-{service_account[-1]}",
                federated_identity_credential_resource_name=f"fic-{service_account[-2]}-{service_account[-1]}",
                resource_name_=self.identity.name,
                resource_group_name=args.resource_group_name,
                issuer=args.oidc_issuer_url,
                subject=subject,
                audiences=["api://AzureADTokenExchange"],
                # Entra rejects concurrent federated-credential writes on one identity.
                opts=pulumi.ResourceOptions(parent=self.identity, depends_on=[previous] if previous else None),
            )
        if args.key_vault_id is not None:
            role_assignment(
                f"{name}-kv-secrets-user",
                scope=args.key_vault_id,
                principal_id=self.identity.principal_id,
                subscription_id=args.subscription_id,
                role_guid=ROLE_KEY_VAULT_SECRETS_USER,
                parent=self,
                description="inferforge inference pods read their API keys",
            )
        self.client_id = self.identity.client_id
        self.principal_id = self.identity.principal_id
        self.tenant_id = self.identity.tenant_id
        self.identity_name = self.identity.name
        self.register_outputs({"client_id": self.client_id, "principal_id": self.principal_id,
                               "identity_name": self.identity_name})
