"""Key Vault: RBAC-only, purge-protected, private (no public network path), with a private endpoint."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
import pulumi_random as random
from pulumi_azure_native import keyvault

from . import package
from .common import PublicNetworkAccess, diagnostic_settings, private_endpoint, resource_lock
from .limits import limited
from .naming import UNIQUE_SUFFIX_LEN


class KeyVaultSku(StrEnum):
    """Key Vault pricing tier."""

    STANDARD = "standard"
    PREMIUM = "premium"


@package.schema_args
@dataclass
class KeyVaultArgs:
    """Arguments of `KeyVault`. Every security-relevant property is set explicitly: azure-native's
    client-side defaults are insecure for some of them (public access enabled, access policies)."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the vault."""
    location: pulumi.Input[str]
    """Azure region."""
    name_prefix: str
    """CAF name prefix (`kv-<workload>-<env>`); a stable random suffix makes it globally unique."""
    tenant_id: pulumi.Input[str]
    """Entra tenant that authorizes data-plane access."""
    private_endpoint_subnet_id: pulumi.Input[str]
    """Subnet of the vault's private endpoint."""
    private_dns_zone_id: pulumi.Input[str]
    """`privatelink.vaultcore.azure.net` zone the endpoint registers in."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for audit logs."""
    sku: KeyVaultSku = KeyVaultSku.STANDARD
    """premium adds HSM-backed keys; secrets-only workloads need standard."""
    soft_delete_retention_days: int = limited(90, ge=7, le=90)
    """Maximum retention, so a deleted secret can be recovered for the longest window."""
    public_network_access: PublicNetworkAccess = PublicNetworkAccess.DISABLED
    """Disabled: reachable only through the private endpoint. The exposure policy blocks Enabled in prod."""
    lock: bool = False
    """CanNotDelete lock (prod): purge protection already blocks purge; the lock blocks delete."""
    generated_secrets: Sequence[str] = ()
    """Secrets born in the vault with a random 64-character value (e.g. the gateway's API-key pepper): no
    human ever handles them; the value is also in the stack's state, encrypted as a secret."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class KeyVault(pulumi.ComponentResource):
    """An Azure Key Vault that only Entra RBAC principals can read, over a private endpoint."""

    vault_id: pulumi.Output[str]
    """ARM id of the vault (scope of role assignments)."""
    vault_name: pulumi.Output[str]
    """Name of the vault (prefix plus a stable random suffix)."""
    vault_uri: pulumi.Output[str]
    """Data-plane URI of the vault (`https://<name>.vault.azure.net/`)."""

    def __init__(self, name: str, args: KeyVaultArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(KeyVaultArgs, args)
        super().__init__("inferforge:index:KeyVault", name, None, package.aliased(opts, "inferforge:security:KeyVault"))
        suffix = random.RandomString(f"{name}-suffix", length=UNIQUE_SUFFIX_LEN, special=False, upper=False,
                                     numeric=True, opts=pulumi.ResourceOptions(parent=self))
        self.vault = keyvault.Vault(
            f"{name}-vault",
            vault_name=pulumi.Output.concat(args.name_prefix, "-", suffix.result),
            resource_group_name=args.resource_group_name,
            location=args.location,
            properties=keyvault.VaultPropertiesArgs(
                tenant_id=args.tenant_id,
                sku=keyvault.SkuArgs(family="A", name=args.sku),
                enable_rbac_authorization=True,
                access_policies=[],
                enable_soft_delete=True,
                soft_delete_retention_in_days=args.soft_delete_retention_days,
                enable_purge_protection=True,
                public_network_access=args.public_network_access,
                network_acls=keyvault.NetworkRuleSetArgs(
                    default_action="Deny",
                    # "None": not even trusted Azure services bypass the firewall.
                    bypass="None",
                    ip_rules=[],
                    virtual_network_rules=[],
                ),
                enabled_for_deployment=False,
                enabled_for_disk_encryption=False,
                enabled_for_template_deployment=False,
            ),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self),
        )
        private_endpoint(
            f"{name}-pe",
            resource_group_name=args.resource_group_name,
            location=args.location,
            subnet_id=args.private_endpoint_subnet_id,
            target_resource_id=self.vault.id,
            group_id="vault",
            private_dns_zone_id=args.private_dns_zone_id,
            tags=args.tags,
            parent=self,
        )
        diagnostic_settings(f"{name}-vault", resource_id=self.vault.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self)
        if args.lock:
            resource_lock(f"{name}-vault", scope_resource=self.vault, parent=self)

        for secret_name in args.generated_secrets:
            value = random.RandomPassword(f"{name}-{secret_name}-value", length=64, special=False,
                                          opts=pulumi.ResourceOptions(parent=self))
            keyvault.Secret(f"{name}-{secret_name}", secret_name=secret_name, vault_name=self.vault.name,
                            resource_group_name=args.resource_group_name,
                            properties=keyvault.SecretPropertiesArgs(value=pulumi.Output.secret(value.result),
                                                                     content_type="generated"),
                            tags=dict(args.tags), opts=pulumi.ResourceOptions(parent=self))

        self.vault_id = self.vault.id
        self.vault_name = self.vault.name
        self.vault_uri = self.vault.properties.apply(lambda p: p.vault_uri)
        self.register_outputs({"vault_id": self.vault_id, "vault_name": self.vault_name,
                               "vault_uri": self.vault_uri})
