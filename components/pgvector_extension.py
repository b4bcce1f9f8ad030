"""PgvectorExtension: run ``CREATE EXTENSION IF NOT EXISTS vector`` in the application database, in-cluster,
and give the serving identity a least-privilege database role.

Why a Kubernetes Job
--------------------
pgvector is two steps on Azure Database for PostgreSQL Flexible Server: the server parameter
``azure.extensions`` must allow ``VECTOR`` (a ``dbforpostgresql.Configuration``, done by the Postgres
component), then each database still needs ``CREATE EXTENSION vector``. The second step is SQL, and the
server only has private access in a delegated subnet, so whoever runs ``pulumi up`` usually cannot reach
it. The AKS cluster can, so the step runs there as a Job that Pulumi creates and waits for
(pulumi-kubernetes awaits Job completion, so a failed step fails ``pulumi up``).

Mechanism (no password anywhere)
--------------------------------
1. The Job's ServiceAccount carries ``azure.workload.identity/client-id`` (+ tenant id); its pod has the
   ``azure.workload.identity/use: "true"`` label, so the AKS workload-identity webhook projects a
   federated service-account token and the ``AZURE_*`` variables into the containers.
2. Init container ``get-token`` (Azure CLI image): ``az login --service-principal --federated-token``
   as that identity, then ``az account get-access-token --resource-type oss-rdbms`` writes an Entra
   access token for PostgreSQL into a ``medium: Memory`` emptyDir (it never touches disk).
3. Container ``psql`` (PostgreSQL client image) connects as the identity's Entra principal name with
   the token as password, ``sslmode=require`` (or ``verify-full``), and runs
   ``CREATE EXTENSION IF NOT EXISTS vector`` with ``ON_ERROR_STOP``: idempotent, safe to re-run. The
   webhook is told to skip this container (``azure.workload.identity/skip-containers``): it needs the
   database token, not the federated one.

Serving role (least privilege)
------------------------------
With ``app_role_name`` / ``app_principal_object_id`` set, the Job (as the Entra admin) first
creates a database role for the *serving* identity in the ``postgres`` database with
``pgaadauth_create_principal_with_oid(role, object id, 'service', isAdmin => false, isMfa => false)``
(https://learn.microsoft.com/azure/postgresql/flexible-server/how-to-manage-azure-ad-users), only if
it does not exist yet, then in the application database: schema ``app_schema`` (owned by the admin),
USAGE on it, SELECT/INSERT/UPDATE/DELETE on its tables and USAGE/SELECT on its sequences (now and,
through default privileges, for tables the admin creates later), CONNECT on the database. With
``embedding_dimensions`` set, the Job also creates the RAG table ``<app_schema>.embeddings`` (document
id, chunk index, content, metadata, model, ``vector(N)``) with an HNSW ``vector_cosine_ops`` index,
and fails if an existing table's vector has another dimension. No CREATE,
no admin membership, no superuser: the Job fails if the role has any of them. The Job's own identity
must be dedicated (not the serving one); the ``postgres-admin-not-serving-identity`` policy checks it.

Prerequisites the stack wires (this component creates none of them): the identity is a PostgreSQL
Entra administrator of the server (``entra_principal_name`` is its principal name there); it has a
federated credential whose subject is :attr:`PgvectorExtensionArgs.federated_subject`; the
``azure.extensions`` configuration and the database exist (pass them in ``opts.depends_on``); the
namespace exists. Use a dedicated identity, not the inference one: a database admin credential does
not belong on the serving pods. Images are digest-pinned; the prod policy pack only admits the
platform's ACR (``k8s-allowed-registry``), so import them first, e.g.
``az acr import -n <acr> --source mcr.microsoft.com/azure-cli:<ver> --image mirror/azure-cli:<ver>`` and
``az acr import -n <acr> --source docker.io/library/postgres:17 --image mirror/postgres:17``.

Re-runs and TTL: the Job is auto-named, so changing its spec makes Pulumi create a fresh Job (a re-run)
before deleting the old one. ``ttl_seconds_after_finished`` lets Kubernetes garbage-collect the
finished Job; after that a ``pulumi refresh`` sees it gone and the next ``up`` runs it again, which is
harmless because the statement is idempotent.

Scheduling: the cluster's only untainted capacity may be none at all (system pool tainted
``CriticalAddonsOnly``, GPU pools tainted ``sku=gpu``). By default the Job tolerates
``CriticalAddonsOnly`` so this few-second, tiny pod runs on the system pool instead of waking a GPU
node; pass ``tolerations=()`` when a general user pool exists.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import pulumi
import pulumi_kubernetes as k8s

from . import package
from .egress_endpoints import ENTRA_ID_IPV4_RANGES
from .kubernetes import (
    NON_ROOT_UID,
    WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION,
    WORKLOAD_IDENTITY_USE_LABEL,
    KubernetesArgsError,
    NodeTaint,
    check_cidr,
    check_dns_label,
    check_range,
    dns_egress_rule,
    fail,
    federated_credential_subject,
    kubernetes_provider,
    name_of,
    public_ip_block,
    reported_as,
    restricted_container_security,
)


class SslMode(StrEnum):
    """libpq ``sslmode`` of the extension job's connection (TLS is required either way)."""

    REQUIRE = "require"
    VERIFY_FULL = "verify-full"

WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION = "azure.workload.identity/tenant-id"
WORKLOAD_IDENTITY_SKIP_CONTAINERS_ANNOTATION = "azure.workload.identity/skip-containers"
POSTGRES_PORT = 5432
# pgvector indexes `vector` columns of at most 2,000 dimensions (HNSW and IVFFlat, pgvector >= 0.7).
MAX_HNSW_DIMENSIONS = 2000
TOKEN_DIR = "/run/pgtoken"

_PINNED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9.:/_-]*@sha256:[0-9a-f]{64}$")
_TAGGED_IMAGE = re.compile(r"^[a-z0-9][a-z0-9.:/_-]*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?$")

# The token step: log in as the federated identity, write a PostgreSQL access token readable only by us.
GET_TOKEN_SCRIPT = (
    'az login --service-principal --username "$AZURE_CLIENT_ID" --tenant "$AZURE_TENANT_ID" '
    '--federated-token "$(cat "$AZURE_FEDERATED_TOKEN_FILE")" --allow-no-subscriptions --output none\n'
    "umask 077\n"
    f"az account get-access-token --resource-type oss-rdbms --query accessToken --output tsv > {TOKEN_DIR}/token\n"
)
# The SQL step: idempotent, fails the pod (and so the Job and `pulumi up`) on any SQL error.
CREATE_EXTENSION_SCRIPT = (
    f'PGPASSWORD="$(cat {TOKEN_DIR}/token)" exec psql -X -v ON_ERROR_STOP=1 '
    "-c 'CREATE EXTENSION IF NOT EXISTS vector;' "
    "-c \"SELECT extname, extversion FROM pg_extension WHERE extname = 'vector';\"\n"
)


# With a serving role: create the Entra principal's role in `postgres` (where the pgaadauth functions
# live) unless it exists, then the extension, schema and grants in the application database. psql
# variables are not expanded inside dollar-quoted bodies, so they travel as session settings.
SERVER_ROLE_SQL = """\
SELECT pgaadauth_create_principal_with_oid(:'app_role', :'app_oid', 'service', false, false)
 WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'app_role');
"""
SERVER_GRANTS_SQL = """\
CREATE EXTENSION IF NOT EXISTS vector;
SELECT set_config('inferforge.app_role', :'app_role', false), set_config('inferforge.app_schema', :'app_schema', false),
       set_config('inferforge.embedding_dimensions', :'embedding_dimensions', false);
DO $$
DECLARE
  app_role text := current_setting('inferforge.app_role');
  app_schema text := current_setting('inferforge.app_schema');
  embedding_dimensions integer := current_setting('inferforge.embedding_dimensions')::integer;
  embedding_type text;
BEGIN
  IF to_regnamespace(app_schema) IS NULL AND NOT has_database_privilege(current_database(), 'CREATE') THEN
    RAISE EXCEPTION 'role % may not create schema % in database % (owner %): run the Job as an Entra admin of '
      'a database owned by azure_pg_admin, or create the schema first', current_user, app_schema, current_database(),
      (SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database());
  END IF;
  EXECUTE format('CREATE SCHEMA IF NOT EXISTS %I', app_schema);
  IF embedding_dimensions > 0 THEN
    -- RAG chunks and their embeddings (POST /v1/embeddings vectors are L2-normalised: cosine distance).
    EXECUTE format('CREATE TABLE IF NOT EXISTS %I.embeddings ('
      'id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
      'document_id text NOT NULL, '
      'chunk_index integer NOT NULL DEFAULT 0, '
      'content text NOT NULL, '
      'metadata jsonb NOT NULL DEFAULT ''{}''::jsonb, '
      'model text NOT NULL, '
      'embedding vector(%s) NOT NULL, '
      'created_at timestamptz NOT NULL DEFAULT now(), '
      'UNIQUE (document_id, chunk_index, model))', app_schema, embedding_dimensions);
    SELECT format_type(a.atttypid, a.atttypmod) INTO embedding_type FROM pg_attribute a
     WHERE a.attrelid = format('%I.embeddings', app_schema)::regclass AND a.attname = 'embedding'
       AND NOT a.attisdropped;
    IF embedding_type IS DISTINCT FROM format('vector(%s)', embedding_dimensions) THEN
      RAISE EXCEPTION '%.embeddings.embedding is % but the configured dimension is %: re-embed into a new table '
        'or change inference.embeddingDimensions back', app_schema, embedding_type, embedding_dimensions;
    END IF;
    EXECUTE format('CREATE INDEX IF NOT EXISTS embeddings_embedding_hnsw ON %I.embeddings '
                   'USING hnsw (embedding vector_cosine_ops)', app_schema);
  END IF;
  IF has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') THEN
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', current_database(), app_role);
  END IF;
  EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', app_schema, app_role);
  EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I', app_schema, app_role);
  EXECUTE format('GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA %I TO %I', app_schema, app_role);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I',
                 app_schema, app_role);
  EXECUTE format('ALTER DEFAULT PRIVILEGES IN SCHEMA %I GRANT USAGE, SELECT ON SEQUENCES TO %I', app_schema, app_role);
  IF NOT has_database_privilege(app_role, current_database(), 'CONNECT') THEN
    RAISE EXCEPTION 'role % cannot connect to database %', app_role, current_database();
  END IF;
  IF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = app_role
             AND (rolsuper OR rolcreaterole OR rolcreatedb OR rolbypassrls OR rolreplication))
     OR has_schema_privilege(app_role, app_schema, 'CREATE')
     OR has_database_privilege(app_role, current_database(), 'CREATE')
     OR EXISTS (SELECT 1 FROM pg_auth_members m JOIN pg_roles g ON g.oid = m.roleid
                JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = app_role AND g.rolname = 'azure_pg_admin') THEN
    RAISE EXCEPTION 'role % has more than data access (admin, superuser or CREATE)', app_role;
  END IF;
END
$$;
"""
SERVER_ROLE_SCRIPT = (
    f'export PGPASSWORD="$(cat {TOKEN_DIR}/token)"\n'
    'psql -X -v ON_ERROR_STOP=1 -d postgres -v app_role="$APP_ROLE" -v app_oid="$APP_OBJECT_ID" <<\'SQL\'\n'
    f"{SERVER_ROLE_SQL}SQL\n"
    'exec psql -X -v ON_ERROR_STOP=1 -v app_role="$APP_ROLE" -v app_schema="$APP_SCHEMA" '
    '-v embedding_dimensions="$EMBEDDING_DIMENSIONS" <<\'SQL\'\n'
    f"{SERVER_GRANTS_SQL}SQL\n"
)


class PgvectorExtensionConfigError(KubernetesArgsError):
    """Invalid PgvectorExtension arguments; the message names the field, the value and what is allowed."""


@package.schema_args
@dataclass
class PgvectorExtensionArgs:
    """Arguments of :class:`PgvectorExtension`; defaults are the secure choice."""

    namespace: str
    """Existing namespace the Job runs in; part of the federated credential subject."""
    host: pulumi.Input[str]
    """PostgreSQL server FQDN (private DNS), e.g. ``psql-inferforge-prod.postgres.database.azure.com``."""
    database: pulumi.Input[str]
    """Application database that gets the extension."""
    entra_principal_name: pulumi.Input[str]
    """Principal name of the identity as registered as a PostgreSQL Entra admin (the psql user)."""
    client_id: pulumi.Input[str]
    """Client id of that user-assigned identity (ServiceAccount annotation; no secret)."""
    tenant_id: pulumi.Input[str]
    """Entra tenant of the identity."""
    azure_cli_image: str
    """Azure CLI image by digest (``mcr.microsoft.com/azure-cli@sha256:...``)."""
    postgres_client_image: str
    """Image with ``psql`` by digest (e.g. ``postgres@sha256:...``)."""
    postgres_subnet_cidr: str
    """Delegated PostgreSQL subnet: the only in-VNet egress the Job gets (TCP 5432)."""
    allow_image_tags: bool = False
    """Off by default: a tag can change what runs with database-admin rights; dev may allow it."""
    app_role_name: pulumi.Input[str] | None = None
    """Database role for the serving identity (its Entra principal name); None: only the extension."""
    app_principal_object_id: pulumi.Input[str] | None = None
    """Entra object (principal) id of the serving identity; the role maps to it (``pgaadauth``)."""
    app_schema: str = "rag"
    """Schema of the RAG tables: the serving role gets data access there, never CREATE."""
    embedding_dimensions: int | None = None
    """Dimension of ``<app_schema>.embeddings.embedding`` (the embedding model's output), which gets
    an HNSW cosine index; None: no table. At most 2000: pgvector's HNSW limit for ``vector``
    (https://supabase.com/docs/guides/ai/vector-indexes). Needs the serving role (app_role_name)."""
    service_account_name: str = "pgvector-init"
    """ServiceAccount of the Job; part of the federated credential subject."""
    ssl_mode: SslMode = SslMode.REQUIRE
    """TLS always; verify-full also checks the server name (needs the Azure root CAs in the client image)."""
    backoff_limit: int = 4
    """Pod retries: covers a webhook/DNS/token race right after the cluster comes up."""
    active_deadline_s: int = 600
    """Whole-Job deadline, so a hung connection fails `pulumi up` instead of blocking it."""
    ttl_seconds_after_finished: int = 86400
    """Finished Job garbage-collected after a day (logs kept long enough to read a failure)."""
    tolerations: Sequence[str] = ("CriticalAddonsOnly=true:NoSchedule",)
    """Taints (AKS ``key=value:Effect``) the pod tolerates; default lets it run on the system pool."""
    entra_egress_cidrs: Sequence[str] = ENTRA_ID_IPV4_RANGES
    """Public ranges for the Entra ID token exchange on 443; private and link-local (IMDS) excluded."""
    labels: Mapping[str, str] = field(default_factory=dict)
    """Extra labels on every object."""

    def __post_init__(self) -> None:
        self.validate()

    @property
    def federated_subject(self) -> str:
        """Subject of the federated credential the identity needs for the Job's ServiceAccount."""
        return federated_credential_subject(self.namespace, self.service_account_name)

    @reported_as(PgvectorExtensionConfigError)
    def validate(self) -> None:
        """Check every argument; raise :class:`PgvectorExtensionConfigError` naming the first bad one."""
        check_dns_label("namespace", self.namespace)
        check_dns_label("service_account_name", self.service_account_name, max_len=253)
        for name in ("azure_cli_image", "postgres_client_image"):
            image = getattr(self, name)
            if _PINNED_IMAGE.match(image or ""):
                continue
            if not self.allow_image_tags:
                raise fail(name, image, "must be pinned by digest (<repository>@sha256:<64 hex>); tags are "
                                        "only accepted when allow_image_tags is true (dev)")
            if not _TAGGED_IMAGE.match(image or ""):
                raise fail(name, image, "must be an image reference such as registry/repository:tag")
        if (self.app_role_name is None) != (self.app_principal_object_id is None):
            raise fail("app_role_name", self.app_role_name, "and app_principal_object_id must be set together "
                                                            "(the role maps to that Entra object id)")
        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", self.app_schema or ""):
            raise fail("app_schema", self.app_schema, "must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, "
                                                      "at most 63 characters)")
        if self.embedding_dimensions is not None:
            check_range("embedding_dimensions", self.embedding_dimensions, 1, MAX_HNSW_DIMENSIONS)
            if self.app_role_name is None:
                raise fail("embedding_dimensions", self.embedding_dimensions,
                           "needs app_role_name (the table is created in app_schema with the serving role)")
        if self.ssl_mode not in ("require", "verify-full"):
            raise fail("ssl_mode", self.ssl_mode, "must be 'require' or 'verify-full' (TLS is mandatory)")
        check_cidr("postgres_subnet_cidr", self.postgres_subnet_cidr)
        if not self.entra_egress_cidrs:
            raise fail("entra_egress_cidrs", self.entra_egress_cidrs, "needs at least one CIDR")
        for cidr in self.entra_egress_cidrs:
            check_cidr("entra_egress_cidrs", cidr)
        check_range("backoff_limit", self.backoff_limit, 0, 10)
        check_range("active_deadline_s", self.active_deadline_s, 30)
        check_range("ttl_seconds_after_finished", self.ttl_seconds_after_finished, 0)
        for taint in self.tolerations:
            NodeTaint.parse(taint, "tolerations")


class PgvectorExtension(pulumi.ComponentResource):
    """A one-shot in-cluster Job that enables pgvector in the application database with an Entra token."""

    app_role_name: str
    """PostgreSQL role of the application (the Entra principal the Job connects as)."""
    job_name: pulumi.Output[str]
    """Name of the one-shot Job that runs `CREATE EXTENSION vector`."""
    service_account_name: pulumi.Output[str]
    """ServiceAccount the Job runs as (federated with the workload identity)."""
    federated_subject: str
    """Subject the identity's federated credential must carry for the Job's ServiceAccount."""

    def __init__(self, name: str, args: PgvectorExtensionArgs, opts: pulumi.ResourceOptions | None = None) -> None:
        args = package.from_inputs(PgvectorExtensionArgs, args)
        args.validate()
        provider = kubernetes_provider(opts, "PgvectorExtension", PgvectorExtensionConfigError)
        super().__init__("inferforge:index:PgvectorExtension", name, None,
                         package.aliased(opts, "inferforge:data:PgvectorExtension"))
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        selector = {"app.kubernetes.io/name": "inferforge-pgvector", "app.kubernetes.io/instance": name}
        labels = {**selector, "app.kubernetes.io/part-of": "inferforge", "app.kubernetes.io/managed-by": "pulumi",
                  **args.labels}

        service_account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=k8s.meta.v1.ObjectMetaArgs(
                name=args.service_account_name, namespace=args.namespace, labels=labels,
                annotations={WORKLOAD_IDENTITY_CLIENT_ID_ANNOTATION: args.client_id,
                             WORKLOAD_IDENTITY_TENANT_ID_ANNOTATION: args.tenant_id}),
            automount_service_account_token=False,
            opts=child,
        )

        policy = k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=k8s.meta.v1.ObjectMetaArgs(name=f"{name}-pgvector", namespace=args.namespace, labels=labels),
            spec=self._network_policy_spec(args, selector),
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(delete_before_replace=True)),
        )

        job = k8s.batch.v1.Job(
            f"{name}-job",
            # Auto-named: a spec change creates a new Job (a re-run) before the old one is deleted.
            metadata=k8s.meta.v1.ObjectMetaArgs(namespace=args.namespace, labels=labels),
            spec=self._job_spec(args, labels),
            # The policy must exist first, or the pod would start under whatever the namespace allows.
            # Pulumi waits for completion: give it the Job's own deadline plus room to pull and schedule,
            # so the Job (not Pulumi's default 10 min) decides failure.
            opts=pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(
                depends_on=[service_account, policy],
                custom_timeouts=pulumi.CustomTimeouts(create=f"{args.active_deadline_s + 300}s",
                                                      update=f"{args.active_deadline_s + 300}s"))),
        )

        self.job_name = name_of(job)
        self.service_account_name = name_of(service_account)
        self.app_role_name = args.app_role_name
        self.federated_subject = args.federated_subject
        self.register_outputs({
            "app_role_name": self.app_role_name,
            "job_name": self.job_name,
            "service_account_name": self.service_account_name,
            "federated_subject": self.federated_subject,
        })

    @staticmethod
    def _job_spec(args: PgvectorExtensionArgs, labels: Mapping[str, str]) -> k8s.batch.v1.JobSpecArgs:
        core = k8s.core.v1
        token_mount = core.VolumeMountArgs(name="pgtoken", mount_path=TOKEN_DIR)
        tmp_mount = core.VolumeMountArgs(name="tmp", mount_path="/tmp")
        get_token = core.ContainerArgs(
            name="get-token",
            image=args.azure_cli_image,
            image_pull_policy="IfNotPresent",
            command=["/bin/sh", "-ec", GET_TOKEN_SCRIPT],
            env=[core.EnvVarArgs(name="HOME", value="/tmp"),
                 core.EnvVarArgs(name="AZURE_CONFIG_DIR", value="/tmp/azure"),  # root FS is read-only
                 core.EnvVarArgs(name="AZURE_CORE_COLLECT_TELEMETRY", value="false"),
                 core.EnvVarArgs(name="PYTHONDONTWRITEBYTECODE", value="1")],
            resources=core.ResourceRequirementsArgs(requests={"cpu": "250m", "memory": "512Mi"},
                                                    limits={"cpu": "500m", "memory": "512Mi"}),
            volume_mounts=[token_mount, tmp_mount],
            security_context=restricted_container_security(),
            termination_message_policy="FallbackToLogsOnError",
        )
        psql = core.ContainerArgs(
            name="psql",
            image=args.postgres_client_image,
            image_pull_policy="IfNotPresent",
            command=["/bin/sh", "-ec",
                     SERVER_ROLE_SCRIPT if args.app_role_name is not None else CREATE_EXTENSION_SCRIPT],
            env=[*PgvectorExtension._app_role_env(args),
                 core.EnvVarArgs(name="PGHOST", value=args.host),
                 core.EnvVarArgs(name="PGPORT", value=str(POSTGRES_PORT)),
                 core.EnvVarArgs(name="PGDATABASE", value=args.database),
                 core.EnvVarArgs(name="PGUSER", value=args.entra_principal_name),
                 core.EnvVarArgs(name="PGSSLMODE", value=args.ssl_mode),
                 core.EnvVarArgs(name="PGCONNECT_TIMEOUT", value="30"),
                 core.EnvVarArgs(name="PGAPPNAME", value="inferforge-pgvector"),
                 core.EnvVarArgs(name="HOME", value="/tmp")],
            resources=core.ResourceRequirementsArgs(requests={"cpu": "100m", "memory": "128Mi"},
                                                    limits={"cpu": "250m", "memory": "128Mi"}),
            volume_mounts=[core.VolumeMountArgs(name="pgtoken", mount_path=TOKEN_DIR, read_only=True), tmp_mount],
            security_context=restricted_container_security(),
            termination_message_policy="FallbackToLogsOnError",
        )
        return k8s.batch.v1.JobSpecArgs(
            backoff_limit=args.backoff_limit,
            active_deadline_seconds=args.active_deadline_s,
            ttl_seconds_after_finished=args.ttl_seconds_after_finished,
            template=core.PodTemplateSpecArgs(
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    labels={**labels, WORKLOAD_IDENTITY_USE_LABEL: "true"},
                    annotations={WORKLOAD_IDENTITY_SKIP_CONTAINERS_ANNOTATION: "psql"},
                ),
                spec=core.PodSpecArgs(
                    restart_policy="Never",
                    service_account_name=args.service_account_name,
                    automount_service_account_token=False,
                    enable_service_links=False,
                    security_context=core.PodSecurityContextArgs(
                        run_as_non_root=True, run_as_user=NON_ROOT_UID, run_as_group=NON_ROOT_UID,
                        seccomp_profile=core.SeccompProfileArgs(type="RuntimeDefault")),
                    node_selector={"kubernetes.io/os": "linux"},
                    tolerations=[NodeTaint.parse(t).toleration() for t in args.tolerations] or None,
                    init_containers=[get_token],
                    containers=[psql],
                    volumes=[
                        # Memory-backed: the database token never lands on the node's disk.
                        core.VolumeArgs(name="pgtoken", empty_dir=core.EmptyDirVolumeSourceArgs(
                            medium="Memory", size_limit="1Mi")),
                        core.VolumeArgs(name="tmp", empty_dir=core.EmptyDirVolumeSourceArgs(size_limit="256Mi")),
                    ],
                ),
            ),
        )

    @staticmethod
    def _app_role_env(args: PgvectorExtensionArgs) -> list[k8s.core.v1.EnvVarArgs]:
        if args.app_role_name is None:
            return []
        return [k8s.core.v1.EnvVarArgs(name="APP_ROLE", value=args.app_role_name),
                k8s.core.v1.EnvVarArgs(name="APP_OBJECT_ID", value=args.app_principal_object_id),
                k8s.core.v1.EnvVarArgs(name="APP_SCHEMA", value=args.app_schema),
                # 0: no embeddings table.
                k8s.core.v1.EnvVarArgs(name="EMBEDDING_DIMENSIONS", value=str(args.embedding_dimensions or 0))]

    @staticmethod
    def _network_policy_spec(args: PgvectorExtensionArgs, selector: Mapping[str, str]
                             ) -> k8s.networking.v1.NetworkPolicySpecArgs:
        np = k8s.networking.v1
        return np.NetworkPolicySpecArgs(
            pod_selector=k8s.meta.v1.LabelSelectorArgs(match_labels=dict(selector)),
            # Ingress listed with no rules: nothing may connect to the Job's pod.
            policy_types=["Ingress", "Egress"],
            egress=[
                dns_egress_rule(),
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=np.IPBlockArgs(cidr=args.postgres_subnet_cidr))],
                    ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=POSTGRES_PORT)]),
                np.NetworkPolicyEgressRuleArgs(
                    to=[np.NetworkPolicyPeerArgs(ip_block=public_ip_block(c)) for c in args.entra_egress_cidrs],
                    ports=[np.NetworkPolicyPortArgs(protocol="TCP", port=443)]),
            ],
        )
