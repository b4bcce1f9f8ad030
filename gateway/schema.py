"""The gateway's PostgreSQL schema: versioned migrations and monthly partitions.

`migrate` is idempotent: it applies the migrations a database lacks, in order, each in its own
transaction, under an advisory lock (two migration Jobs started together cannot race), then makes
sure the usage and audit partitions exist for this month and the next PARTITION_MONTHS_AHEAD.
Usage records and audit events are partitioned by month, so retention is `DROP TABLE` of a month's
partition, not a slow DELETE; the gateway's own role only inserts into them.

Neither table has a column for prompt or completion text: the gateway never persists user input.
"""

from __future__ import annotations

import datetime as dt

import psycopg
from psycopg import sql

# A constant key for pg_advisory_xact_lock: "ifg-migrate" as an int64.
_MIGRATION_LOCK = 0x6966672D6D696772
PARTITION_MONTHS_AHEAD = 3
PARTITIONED_TABLES = ("usage_records", "audit_events")

MIGRATIONS: list[str] = [
    # 1: tenants, keys, usage, audit.
    """
    CREATE TABLE tenants (
        id bigserial PRIMARY KEY,
        name text NOT NULL UNIQUE CHECK (name ~ '^[a-z0-9][a-z0-9-]{0,62}$'),
        models text[] NOT NULL,
        rpm integer NOT NULL DEFAULT 0 CHECK (rpm >= 0),
        tpm bigint NOT NULL DEFAULT 0 CHECK (tpm >= 0),
        max_concurrent integer NOT NULL DEFAULT 0 CHECK (max_concurrent >= 0),
        monthly_tokens bigint NOT NULL DEFAULT 0 CHECK (monthly_tokens >= 0),
        cache_enabled boolean NOT NULL DEFAULT false,
        fail_open boolean NOT NULL DEFAULT false,
        safety_threshold smallint NOT NULL DEFAULT 4 CHECK (safety_threshold BETWEEN 1 AND 7),
        safety_fail_open boolean NOT NULL DEFAULT false,
        entra_app_ids text[] NOT NULL DEFAULT '{}',
        created_at timestamptz NOT NULL DEFAULT now(),
        updated_at timestamptz NOT NULL DEFAULT now()
    );
    CREATE TABLE api_keys (
        id text PRIMARY KEY,
        tenant_id bigint NOT NULL REFERENCES tenants(id),
        key_hash bytea NOT NULL,
        name text,
        rpm integer NOT NULL DEFAULT 0 CHECK (rpm >= 0),
        tpm bigint NOT NULL DEFAULT 0 CHECK (tpm >= 0),
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    );
    CREATE INDEX api_keys_tenant ON api_keys (tenant_id);
    CREATE TABLE usage_records (
        request_id text NOT NULL,
        created_at timestamptz NOT NULL,
        tenant text NOT NULL,
        principal text NOT NULL,
        key_id text,
        model text NOT NULL,
        endpoint text NOT NULL,
        prompt_tokens integer NOT NULL,
        cached_tokens integer NOT NULL,
        completion_tokens integer NOT NULL,
        ttft_ms double precision,
        latency_ms double precision NOT NULL,
        status smallint NOT NULL,
        cache_hit boolean NOT NULL,
        finish_reason text,
        PRIMARY KEY (request_id, created_at)
    ) PARTITION BY RANGE (created_at);
    CREATE INDEX usage_records_tenant ON usage_records (tenant, created_at);
    CREATE TABLE audit_events (
        event_id uuid NOT NULL,
        created_at timestamptz NOT NULL,
        request_id text,
        tenant text,
        principal text,
        action text NOT NULL,
        decision text NOT NULL CHECK (decision IN ('allow', 'deny', 'error', 'admin')),
        reason text NOT NULL,
        model text,
        status smallint,
        PRIMARY KEY (event_id, created_at)
    ) PARTITION BY RANGE (created_at);
    """,
]


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def next_month(day: dt.date) -> dt.date:
    first = month_start(day)
    return (first.replace(year=first.year + 1, month=1) if first.month == 12
            else first.replace(month=first.month + 1))


def partition_name(table: str, month: dt.date) -> str:
    return f"{table}_y{month.year:04d}m{month.month:02d}"


def ensure_partitions(conn: psycopg.Connection, start: dt.date, months: int) -> list[str]:
    """Create the monthly partitions from `start`'s month for `months` months; returns their names."""
    created = []
    month = month_start(start)
    for _ in range(months):
        upper = next_month(month)
        for table in PARTITIONED_TABLES:
            name = partition_name(table, month)
            conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF {} FOR VALUES FROM ({}) TO ({})").format(
                sql.Identifier(name), sql.Identifier(table), sql.Literal(month.isoformat()),
                sql.Literal(upper.isoformat())))
            created.append(name)
        month = upper
    return created


def schema_version(conn: psycopg.Connection) -> int:
    conn.execute("CREATE TABLE IF NOT EXISTS gateway_schema (version integer PRIMARY KEY, "
                 "applied_at timestamptz NOT NULL DEFAULT now())")
    row = conn.execute("SELECT coalesce(max(version), 0) FROM gateway_schema").fetchone()
    return int(row[0]) if row else 0


class MigrationError(Exception):
    """The migration cannot run as asked (a role it should create cannot be created here)."""


def create_entra_role(database_url: str, role: str, object_id: str) -> bool:
    """Create `role` for an Entra object id unless it exists (Azure's pgaadauth, in the `postgres` database,
    where its functions live); True when created."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    server = make_conninfo(**{**conninfo_to_dict(database_url), "dbname": "postgres", "options": ""})
    with psycopg.connect(server, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
            return False
        if conn.execute("SELECT to_regproc('pgaadauth_create_principal_with_oid')").fetchone()[0] is None:
            raise MigrationError(f"cannot create role {role!r} for Entra object {object_id}: this server has no "
                                 "pgaadauth (Azure Database for PostgreSQL with Entra authentication has it)")
        conn.execute("SELECT pgaadauth_create_principal_with_oid(%s, %s, 'service', false, false)", (role, object_id))
        return True


def migrate(database_url: str, grant_to: str | None = None, today: dt.date | None = None,
            schema_name: str = "public", entra_principal_oid: str | None = None) -> tuple[int, int]:
    """Bring the database to the latest schema; returns (version before, version after)."""
    if grant_to and entra_principal_oid:
        create_entra_role(database_url, grant_to, entra_principal_oid)
    with psycopg.connect(database_url, autocommit=False) as conn:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            if schema_name != "public":
                conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema_name)))
                conn.execute(sql.SQL("SET LOCAL search_path TO {}").format(sql.Identifier(schema_name)))
            before = schema_version(conn)
            for version, statement in enumerate(MIGRATIONS, start=1):
                if version <= before:
                    continue
                conn.execute(statement)
                conn.execute("INSERT INTO gateway_schema (version) VALUES (%s)", (version,))
            ensure_partitions(conn, today or dt.datetime.now(dt.UTC).date(), PARTITION_MONTHS_AHEAD + 1)
            if grant_to:
                grant_gateway_role(conn, grant_to, schema_name)
        return before, len(MIGRATIONS)


def grant_gateway_role(conn: psycopg.Connection, role: str, schema_name: str = "public") -> None:
    """The serving role reads tenants and keys and appends usage and audit rows, nothing more."""
    ident = sql.Identifier(role)
    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(sql.Identifier(schema_name), ident))
    conn.execute(sql.SQL("GRANT SELECT ON tenants, api_keys TO {}").format(ident))
    conn.execute(sql.SQL("GRANT INSERT ON usage_records, audit_events TO {}").format(ident))
    conn.execute(sql.SQL("GRANT SELECT ON gateway_schema TO {}").format(ident))
