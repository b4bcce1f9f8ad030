"""PostgreSQL Flexible Server with pgvector, private access only, Entra ID auth.

pgvector is two steps (CONVENTIONS §3): the server parameter `azure.extensions` must allow VECTOR
(done here, as a `Configuration`), then each database still needs `CREATE EXTENSION vector`. The
server has no public endpoint, so the second step runs in-cluster as a Kubernetes Job
(components/pgvector_extension.py) authenticated as its own workload identity, which this component
makes a PostgreSQL Entra administrator.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
import pulumi_random as random
from pulumi_azure_native import dbforpostgresql, keyvault

from . import package
from .common import diagnostic_settings, resource_lock
from .limits import limited
from .naming import UNIQUE_SUFFIX_LEN


class PostgresVersion(StrEnum):
    """PostgreSQL major version of the flexible server."""

    V13 = "13"
    V14 = "14"
    V15 = "15"
    V16 = "16"
    V17 = "17"


ADMIN_LOGIN = "inferforgeadmin"


@package.schema_args
@dataclass
class EntraAdmin:
    """An Entra principal made PostgreSQL administrator."""

    object_id: pulumi.Input[str]
    """Object id of the principal (a user-assigned identity's principal id), the admin's identity in Entra."""
    principal_name: pulumi.Input[str]
    """Its name as PostgreSQL sees it: the role name the principal logs in with."""
    principal_type: str = "ServicePrincipal"
    """ServicePrincipal: workloads authenticate as managed identities, never as human users or groups."""


@package.schema_args
@dataclass
class PostgresPgvectorArgs:
    """Arguments of `PostgresPgvector`."""

    resource_group_name: pulumi.Input[str]
    """Resource group of the server."""
    location: pulumi.Input[str]
    """Azure region."""
    name_prefix: str
    """CAF prefix (`psql-<workload>-<env>`); a random suffix makes the host name globally unique."""
    tenant_id: pulumi.Input[str]
    """Entra tenant for Entra ID authentication."""
    delegated_subnet_id: pulumi.Input[str]
    """Subnet delegated to flexible servers: private access, the server gets no public endpoint."""
    private_dns_zone_id: pulumi.Input[str]
    """Private DNS zone the server registers its name in."""
    log_analytics_workspace_id: pulumi.Input[str]
    """Workspace for PostgreSQL logs and metrics."""
    entra_admins: Sequence[EntraAdmin]
    """Entra administrators (the schema Job's identity, never the serving one: it gets a data-only role)."""
    database_name: str = limited("app", pattern=r"^[a-z_][a-z0-9_]{0,62}$")
    """The application database."""
    version: PostgresVersion = PostgresVersion.V16
    """PostgreSQL major version (pgvector is available on 13+)."""
    sku_name: str = limited("Standard_B1ms", pattern=r"^Standard_[A-Za-z0-9_]+$")
    """Compute size; burstable for dev, general purpose for prod."""
    sku_tier: str = "Burstable"
    """Burstable, GeneralPurpose or MemoryOptimized (HA needs GeneralPurpose or MemoryOptimized)."""
    storage_size_gb: int = limited(32, ge=32, le=32768)
    """Storage; auto-grow is on so a full disk never takes the server read-only."""
    backup_retention_days: int = limited(7, ge=7, le=35)
    """7 days in dev; prod keeps 35 (the maximum)."""
    geo_redundant_backup: bool = False
    """Backups copied to the paired region (prod)."""
    zone_redundant_ha: bool = False
    """Standby in another availability zone with automatic failover (prod)."""
    password_auth: bool = False
    """Password auth off by default: Entra tokens only. When on (dev), the generated password lives
    only in Key Vault and as a secret output."""
    key_vault_id: pulumi.Input[str] | None = None
    """Vault that stores the admin password when password auth is on."""
    key_vault_name: pulumi.Input[str] | None = None
    """Name of that vault (the ARM secret resource addresses the vault by name)."""
    replica_of: pulumi.Input[str] | None = None
    """ARM id of a primary server in another region: this server is its asynchronous read replica (createMode
    Replica; RPO = the replication lag). Promotion is never automatic: `az postgres flexible-server replica promote`
    (README, Disaster recovery). Geo-redundant backup and HA are the primary's settings, not a replica's."""
    virtual_endpoint_name: str | None = limited(None, pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    """With `replica_of`: a virtual endpoint on the primary whose writer name follows a promotion, so connection
    strings stay the same across a switchover (`<name>.writer.postgres.database.azure.com`)."""
    primary_server_name: pulumi.Input[str] | None = None
    """With `virtual_endpoint_name`: the primary's server name (the endpoint is the primary's child)."""
    primary_resource_group_name: pulumi.Input[str] | None = None
    """With `virtual_endpoint_name`: the primary's resource group."""
    lock: bool = False
    """CanNotDelete lock (prod)."""
    tags: Mapping[str, str] = field(default_factory=dict)
    """Tags required by the tagging policy."""


class PostgresPgvector(pulumi.ComponentResource):
    """A private, TLS-only PostgreSQL Flexible Server that allows the VECTOR extension."""

    server_id: pulumi.Output[str]
    """ARM id of the flexible server."""
    fqdn: pulumi.Output[str]
    """Private FQDN of the server (resolves in the VNet's private DNS zone)."""
    database_name: str
    """The application database."""
    admin_password: pulumi.Output[str] | None
    """Generated password, only when password auth is on (kept in Key Vault; off in every shipped stack)."""

    def __init__(self, name: str, args: PostgresPgvectorArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(PostgresPgvectorArgs, args)
        super().__init__("inferforge:index:PostgresPgvector", name, None,
                         package.aliased(opts, "inferforge:data:PostgresPgvector"))
        child = pulumi.ResourceOptions(parent=self)
        suffix = random.RandomString(f"{name}-suffix", length=UNIQUE_SUFFIX_LEN, special=False, upper=False,
                                     numeric=True, opts=child)

        self.admin_password = None
        password_inputs: dict[str, object] = {}
        if args.password_auth:
            if args.key_vault_name is None:
                raise ValueError("PostgresPgvectorArgs.key_vault_name is required when password_auth is on: "
                                 "the generated password is stored only in Key Vault")
            password = random.RandomPassword(f"{name}-admin-password", length=32, special=True,
                                             override_special="-_.~", min_lower=2, min_upper=2, min_numeric=2,
                                             opts=child)
            self.admin_password = pulumi.Output.secret(password.result)
            password_inputs = {"administrator_login": ADMIN_LOGIN,
                               "administrator_login_password": self.admin_password}

        self.server = dbforpostgresql.Server(
            f"{name}-server",
            server_name=pulumi.Output.concat(args.name_prefix, "-", suffix.result),
            resource_group_name=args.resource_group_name,
            location=args.location,
            version=args.version,
            sku=dbforpostgresql.SkuArgs(name=args.sku_name, tier=args.sku_tier),
            storage=dbforpostgresql.StorageArgs(storage_size_gb=args.storage_size_gb, auto_grow="Enabled"),
            **({} if args.replica_of is not None else {
                "backup": dbforpostgresql.BackupArgs(
                    backup_retention_days=args.backup_retention_days,
                    geo_redundant_backup="Enabled" if args.geo_redundant_backup else "Disabled",
                ),
                "high_availability": dbforpostgresql.HighAvailabilityArgs(
                    mode="ZoneRedundant" if args.zone_redundant_ha else "Disabled",
                ),
            }),
            network=dbforpostgresql.NetworkArgs(
                delegated_subnet_resource_id=args.delegated_subnet_id,
                private_dns_zone_arm_resource_id=args.private_dns_zone_id,
                public_network_access="Disabled",
            ),
            auth_config=dbforpostgresql.AuthConfigArgs(
                active_directory_auth="Enabled",
                password_auth="Enabled" if args.password_auth else "Disabled",
                tenant_id=args.tenant_id,
            ),
            create_mode="Replica" if args.replica_of is not None else "Create",
            **({"source_server_resource_id": args.replica_of} if args.replica_of is not None else {}),
            tags=dict(args.tags),
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["administratorLoginPassword"]),
            **password_inputs,
        )

        # The service answers ServerBusy to parallel parameter updates: apply them one after another.
        parameters = {
            "azure.extensions": "VECTOR",
            "require_secure_transport": "ON",
            "ssl_min_protocol_version": "TLSv1.2",
        }
        previous: pulumi.Resource | None = None
        for parameter, value in parameters.items():
            previous = dbforpostgresql.Configuration(
                f"{name}-config-{parameter.replace('.', '-').replace('_', '-')}",
                configuration_name=parameter,
                server_name=self.server.name,
                resource_group_name=args.resource_group_name,
                value=value,
                source="user-override",
                opts=pulumi.ResourceOptions(parent=self.server, depends_on=[previous] if previous else None),
            )

        admins = []
        for index, admin in enumerate(args.entra_admins):
            # Admins are added one at a time for the same ServerBusy reason.
            admins.append(dbforpostgresql.AdministratorsMicrosoftEntra(
                f"{name}-entra-admin-{index}",
                object_id=admin.object_id,
                principal_name=admin.principal_name,
                principal_type=admin.principal_type,
                tenant_id=args.tenant_id,
                server_name=self.server.name,
                resource_group_name=args.resource_group_name,
                opts=pulumi.ResourceOptions(parent=self.server, depends_on=[previous] if previous else None),
            ))
            previous = admins[-1]

        self.database = dbforpostgresql.Database(
            f"{name}-database",
            database_name=args.database_name,
            server_name=self.server.name,
            resource_group_name=args.resource_group_name,
            charset="UTF8",
            collation="en_US.utf8",
            opts=pulumi.ResourceOptions(parent=self.server, depends_on=[previous] if previous else None),
        )
        self.database_name = args.database_name

        if self.admin_password is not None:
            keyvault.Secret(
                f"{name}-admin-password-secret",
                secret_name="postgres-admin-password",
                vault_name=args.key_vault_name,
                resource_group_name=args.resource_group_name,
                properties=keyvault.SecretPropertiesArgs(value=self.admin_password, content_type="password"),
                tags=dict(args.tags),
                opts=child,
            )

        if args.replica_of is not None and args.virtual_endpoint_name is not None:
            if args.primary_server_name is None or args.primary_resource_group_name is None:
                raise ValueError("PostgresPgvectorArgs.primary_server_name and primary_resource_group_name are "
                                 "required with virtual_endpoint_name: the endpoint is the primary's child")
            self.virtual_endpoint = dbforpostgresql.VirtualEndpoint(
                f"{name}-virtual-endpoint",
                virtual_endpoint_name=args.virtual_endpoint_name,
                server_name=args.primary_server_name,
                resource_group_name=args.primary_resource_group_name,
                endpoint_type="ReadWrite",
                members=[self.server.name],
                opts=pulumi.ResourceOptions(parent=self.server),
            )
        diagnostic_settings(f"{name}-server", resource_id=self.server.id,
                            workspace_id=args.log_analytics_workspace_id, parent=self)
        if args.lock:
            resource_lock(f"{name}-server", scope_resource=self.server, parent=self)

        self.fqdn = self.server.fully_qualified_domain_name
        self.server_id = self.server.id
        outputs: dict[str, object] = {"server_id": self.server_id, "fqdn": self.fqdn,
                                      "database_name": self.database_name}
        if self.admin_password is not None:
            outputs["admin_password"] = self.admin_password
        self.register_outputs(outputs)
