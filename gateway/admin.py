"""Tenant and key administration (the CLI's `tenants`, `keys` and `usage`): synchronous PostgreSQL.

Every change is one transaction and writes an audit event (decision `admin`) in it, so a change
and its record land together or not at all.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

import psycopg
from psycopg.rows import dict_row

from . import keys as api_keys
from .model import TENANT_COLUMNS, Tenant
from .schema import ensure_partitions
from .showback import ModelUsage


class AdminError(ValueError):
    """A change that cannot be made (unknown tenant, duplicate name, unknown key)."""


def _audit(conn: psycopg.Connection, action: str, reason: str, tenant: str | None) -> None:
    now = dt.datetime.now(dt.UTC)
    ensure_partitions(conn, now.date(), 1)
    conn.execute(
        "INSERT INTO audit_events (event_id, created_at, tenant, principal, action, decision, reason) "
        "VALUES (%s, %s, %s, %s, %s, 'admin', %s)",
        (uuid.uuid4(), now, tenant, "cli", action, reason))


def get_tenant(conn: psycopg.Connection, name: str) -> Tenant:
    with conn.cursor(row_factory=dict_row) as cur:
        row = cur.execute(f"SELECT {', '.join(TENANT_COLUMNS)} FROM tenants WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise AdminError(f"unknown tenant {name!r}; `python -m gateway tenants list` shows the tenants")
    return Tenant.from_row(row)


def create_tenant(database_url: str, name: str, models: list[str], **options: Any) -> Tenant:
    with psycopg.connect(database_url) as conn, conn.transaction():
        if conn.execute("SELECT 1 FROM tenants WHERE name = %s", (name,)).fetchone():
            raise AdminError(f"tenant {name!r} already exists; use `tenants update`")
        columns = ["name", "models", *options]
        conn.execute(f"INSERT INTO tenants ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})",
                     (name, models, *options.values()))
        _audit(conn, "tenant.create", f"models={','.join(models)}", name)
        return get_tenant(conn, name)


def update_tenant(database_url: str, name: str, **changes: Any) -> Tenant:
    with psycopg.connect(database_url) as conn, conn.transaction():
        get_tenant(conn, name)
        if changes:
            sets = ", ".join(f"{column} = %s" for column in changes)
            conn.execute(f"UPDATE tenants SET {sets}, updated_at = now() WHERE name = %s", (*changes.values(), name))
            _audit(conn, "tenant.update", "changed=" + ",".join(sorted(changes)), name)
        return get_tenant(conn, name)


def list_tenants(database_url: str) -> list[Tenant]:
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(f"SELECT {', '.join(TENANT_COLUMNS)} FROM tenants ORDER BY name").fetchall()
    return [Tenant.from_row(row) for row in rows]


def create_key(database_url: str, pepper: bytes, tenant_name: str, name: str | None = None,
               rpm: int = 0, tpm: int = 0) -> tuple[str, str]:
    """A new key for the tenant: (key id, the key). Only its keyed hash is stored."""
    key_id, key = api_keys.new_key()
    with psycopg.connect(database_url) as conn, conn.transaction():
        tenant = get_tenant(conn, tenant_name)
        conn.execute("INSERT INTO api_keys (id, tenant_id, key_hash, name, rpm, tpm) VALUES (%s, %s, %s, %s, %s, %s)",
                     (key_id, tenant.id, api_keys.key_hash(pepper, key), name, rpm, tpm))
        _audit(conn, "key.create", f"key_id={key_id}", tenant_name)
    return key_id, key


def revoke_key(database_url: str, key_or_id: str) -> tuple[str, str]:
    """Mark a key revoked in PostgreSQL; returns (key id, tenant name) for the Redis revocation."""
    key_id = api_keys.key_id_of(key_or_id) or key_or_id
    with psycopg.connect(database_url) as conn, conn.transaction():
        row = conn.execute("SELECT t.name FROM api_keys k JOIN tenants t ON t.id = k.tenant_id WHERE k.id = %s",
                           (key_id,)).fetchone()
        if row is None:
            raise AdminError(f"unknown key {api_keys.KEY_PREFIX}{key_id[:12]}...; pass the key or its 12-character id")
        conn.execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s", (key_id,))
        _audit(conn, "key.revoke", f"key_id={key_id}", row[0])
    return key_id, row[0]


def _month_bounds(month: dt.date | None) -> tuple[dt.date, dt.date]:
    first = (month or dt.datetime.now(dt.UTC).date()).replace(day=1)
    upper = first.replace(year=first.year + 1, month=1) if first.month == 12 else first.replace(month=first.month + 1)
    return first, upper


def usage_by_model(database_url: str, month: dt.date | None = None) -> list[ModelUsage]:
    """Each tenant's use of each model in the month (default: the current one, UTC), for showback."""
    first, upper = _month_bounds(month)
    with psycopg.connect(database_url) as conn:
        rows = conn.execute(
            "SELECT tenant, model, count(*), coalesce(sum(prompt_tokens), 0), coalesce(sum(cached_tokens), 0), "
            "coalesce(sum(completion_tokens), 0), count(*) FILTER (WHERE cache_hit), "
            # A response-cache hit computed nothing on the model; the rest computed their uncached prompt + output.
            "coalesce(sum(prompt_tokens - cached_tokens + completion_tokens) FILTER (WHERE NOT cache_hit), 0) "
            "FROM usage_records WHERE created_at >= %s AND created_at < %s GROUP BY tenant, model "
            "ORDER BY tenant, model", (first, upper)).fetchall()
    return [ModelUsage(*(row[:2]), *(int(v) for v in row[2:])) for row in rows]


def usage_totals(database_url: str, month: dt.date | None = None) -> list[dict[str, Any]]:
    """Per-tenant totals of the month (default: the current one, UTC)."""
    first, upper = _month_bounds(month)
    with psycopg.connect(database_url) as conn, conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            "SELECT tenant, count(*) AS requests, coalesce(sum(prompt_tokens), 0) AS prompt_tokens, "
            "coalesce(sum(completion_tokens), 0) AS completion_tokens, "
            "coalesce(sum(cached_tokens), 0) AS cached_tokens, "
            "count(*) FILTER (WHERE cache_hit) AS cache_hits "
            "FROM usage_records WHERE created_at >= %s AND created_at < %s GROUP BY tenant ORDER BY tenant",
            (first, upper)).fetchall()
    return [{**row, "month": first.isoformat()[:7]} | {k: int(v) for k, v in row.items() if k != "tenant"}
            for row in rows]
