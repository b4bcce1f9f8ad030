"""`python -m gateway`: each command on a real PostgreSQL (and Redis where it needs one), and every
bad input refused with exit status 2 and one line naming it, with nothing changed."""

from __future__ import annotations

import datetime as dt
import json
import os

import psycopg
import pytest

from gateway import keys as api_keys
from gateway.schema import MIGRATIONS, ensure_partitions
from tests.gateway.conftest import GATEWAY_ENV, PEPPER, cli, create_key, create_tenant


def tenant_count(database: str) -> int:
    with psycopg.connect(database) as conn:
        return conn.execute("SELECT count(*) FROM tenants").fetchone()[0]


def test_migrate_is_idempotent(database: str) -> None:
    again = cli("migrate", "--database-url", database)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == f"schema at version {len(MIGRATIONS)} (was {len(MIGRATIONS)})"


def test_migrate_grants_the_serving_role_reads_of_keys_and_inserts_of_usage_only(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE ROLE gateway_app LOGIN")
    assert cli("migrate", "--database-url", database, "--grant-to", "gateway_app").returncode == 0
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT table_name, privilege_type FROM information_schema.role_table_grants "
                            "WHERE grantee = 'gateway_app' ORDER BY 1, 2").fetchall()
    assert rows == [("api_keys", "SELECT"), ("audit_events", "INSERT"), ("gateway_schema", "SELECT"),
                    ("tenants", "SELECT"), ("usage_records", "INSERT")]


def test_tenants_create_update_and_list(database: str) -> None:
    create_tenant(database, "team-a", "--rpm", "60", "--tpm", "1000", "--max-concurrent", "4",
                  "--monthly-tokens", "5000000", "--cache", models="llama,qwen")
    updated = cli("tenants", "update", "team-a", "--rpm", "120", "--no-cache", "--database-url", database)
    assert updated.returncode == 0, updated.stderr
    listed = json.loads(cli("tenants", "list", "--json", "--database-url", database).stdout)
    assert listed == [{"id": 1, "name": "team-a", "models": ["llama", "qwen"], "rpm": 120, "tpm": 1000,
                       "max_concurrent": 4, "monthly_tokens": 5000000, "cache_enabled": False, "fail_open": False,
                       "safety_threshold": 4, "safety_fail_open": False, "entra_app_ids": []}]


def test_a_key_is_printed_once_on_the_last_line_and_stored_only_as_its_keyed_hash(database: str) -> None:
    create_tenant(database, "team-a")
    result = cli("keys", "create", "--tenant", "team-a", "--name", "ci", "--database-url", database)
    assert result.returncode == 0, result.stderr
    key = result.stdout.strip().splitlines()[-1]
    key_id = api_keys.key_id_of(key)
    assert key_id is not None
    with psycopg.connect(database) as conn:
        stored = conn.execute("SELECT id, key_hash FROM api_keys").fetchall()
        everything = str(conn.execute("SELECT t::text FROM api_keys t").fetchall())
    assert stored == [(key_id, api_keys.key_hash(PEPPER.encode(), key))]
    secret = api_keys.KEY_PATTERN.match(key).group(2)  # 43 characters, which may contain "_" themselves
    assert secret not in everything
    assert not api_keys.matches(b"q" * 40, key, stored[0][1])  # another pepper: no match


def test_usage_prints_this_months_totals_per_tenant(database: str) -> None:
    create_tenant(database, "team-a")
    with psycopg.connect(database) as conn:  # last month's partition, for a row the report must leave out
        ensure_partitions(conn, dt.date.today() - dt.timedelta(days=40), 1)
        conn.execute("INSERT INTO usage_records VALUES ('r1', now(), 'team-a', 'key:x', 'x', 'm', 'chat', 10, 0, 5, "
                     "1.0, 2.0, 200, false, 'stop'), ('r2', now(), 'team-a', 'key:x', 'x', 'm', 'chat', 7, 0, 3, "
                     "1.0, 2.0, 200, true, 'stop'), ('old', now() - interval '40 days', 'team-a', 'key:x', 'x', "
                     "'m', 'chat', 1000, 0, 1000, 1, 2, 200, false, 'stop')")
    result = cli("usage", "--json", "--database-url", database)
    assert result.returncode == 0, result.stderr
    (row,) = json.loads(result.stdout)
    assert {k: row[k] for k in ("tenant", "requests", "prompt_tokens", "completion_tokens", "cache_hits")} == \
        {"tenant": "team-a", "requests": 2, "prompt_tokens": 17, "completion_tokens": 8, "cache_hits": 1}


@pytest.mark.parametrize(("args", "message"), [
    (["tenants", "create", "Team_A", "--models", "m"], "tenant name"),
    (["tenants", "create", "team", "--models", ","], "comma-separated list of model names"),
    (["tenants", "create", "team", "--models", "m", "--rpm", "-1"], "whole number >= 0"),
    (["tenants", "create", "team", "--models", "m", "--tpm", "many"], "whole number >= 0"),
    (["tenants", "create", "team", "--models", "m", "--safety-threshold", "9"], "severity 1-7"),
    (["tenants", "create", "team", "--models", "m", "--entra-app-ids", "not-a-guid"], "GUIDs"),
    (["tenants", "create", "team"], "--models"),
    (["keys", "create", "--tenant", "team", "--rpm", "x"], "whole number >= 0"),
])
def test_bad_arguments_exit_2_naming_the_argument(database: str, args: list[str], message: str) -> None:
    result = cli(*args, "--database-url", database)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert tenant_count(database) == 0


def test_an_unknown_tenant_exits_2(database: str) -> None:
    for args in (["keys", "create", "--tenant", "nobody"], ["tenants", "update", "nobody", "--rpm", "1"]):
        result = cli(*args, "--database-url", database)
        assert result.returncode == 2 and "unknown tenant 'nobody'" in result.stderr


def test_a_duplicate_tenant_exits_2_and_changes_nothing(database: str) -> None:
    create_tenant(database, "team-a", "--rpm", "5")
    result = cli("tenants", "create", "team-a", "--models", "x", "--rpm", "9", "--database-url", database)
    assert result.returncode == 2 and "already exists" in result.stderr
    listed = json.loads(cli("tenants", "list", "--json", "--database-url", database).stdout)
    assert listed[0]["rpm"] == 5


def test_unreachable_database_and_redis_exit_2_naming_them(database: str, redis_url: str) -> None:
    gone_db = "postgresql://postgres@127.0.0.1:1/none"
    for args in (["migrate"], ["tenants", "list"], ["usage"]):
        result = cli(*args, "--database-url", gone_db)
        assert result.returncode == 2 and "cannot reach the database" in result.stderr, args
    create_tenant(database, "team-a")
    key = create_key(database, "team-a")
    revoke = cli("keys", "revoke", key, "--database-url", database, "--redis-url", "redis://127.0.0.1:1/0")
    assert revoke.returncode == 2 and "cannot reach Redis" in revoke.stderr
    with psycopg.connect(database) as conn:  # refused before anything changed
        assert conn.execute("SELECT revoked_at FROM api_keys").fetchone()[0] is None
    serve = cli("serve", "--upstream", "m=http://127.0.0.1:9", "--database-url", database, "--redis-url",
                "redis://127.0.0.1:1/0")
    assert serve.returncode == 2 and "cannot reach Redis" in serve.stderr


def test_revoking_an_unknown_key_exits_2(database: str, redis_url: str) -> None:
    result = cli("keys", "revoke", "0123456789ab", "--database-url", database, "--redis-url", redis_url)
    assert result.returncode == 2 and "unknown key" in result.stderr


def test_a_missing_or_short_pepper_exits_2(database: str, tmp_path) -> None:
    create_tenant(database, "team-a")
    env = {k: v for k, v in GATEWAY_ENV.items() if k != "INFERFORGE_GATEWAY_KEY_PEPPER"}
    missing = cli("keys", "create", "--tenant", "team-a", "--database-url", database, env=env)
    assert missing.returncode == 2 and "INFERFORGE_GATEWAY_KEY_PEPPER" in missing.stderr
    short = tmp_path / "pepper"
    short.write_text("short")
    result = cli("keys", "create", "--tenant", "team-a", "--key-pepper-file", str(short), "--database-url", database,
                 env=env)
    assert result.returncode == 2 and "at least 32" in result.stderr


def test_serve_refuses_inconsistent_options_before_listening(database: str, redis_url: str, tmp_path) -> None:
    base = ["serve", "--database-url", database, "--redis-url", redis_url]
    cases = [
        (["--upstream", "m"], "MODEL=http(s)://host:port"),
        (["--upstream", "m=http://a:1", "--upstream", "m=http://b:1"], "names a model twice"),
        (["--upstream", "m=http://a:1@90:stable", "--upstream", "m=http://b:1@5:canary"], "weights sum to 95"),
        (["--upstream", "m=http://a:1", "--safety", "local"], "--safety-rules"),
        (["--upstream", "m=http://a:1", "--safety", "azure"], "--safety-endpoint"),
        (["--upstream", "m=http://a:1", "--entra-tenant-id", "11111111-2222-3333-4444-555555555555"],
         "--entra-audience"),
        (["--upstream", "m=http://a:1", "--entra-tenant-id", "common"], "Entra tenant id"),
        (["--upstream", "m=http://a:1", "--cache-ttl", "0"], "--cache-ttl: expected a whole number >= 1"),
    ]
    bad_rules = tmp_path / "rules.json"
    bad_rules.write_text(json.dumps({"rules": [{"category": "Hate", "pattern": "(", "severity": 6}]}))
    cases.append((["--upstream", "m=http://a:1", "--safety", "local", "--safety-rules", str(bad_rules)],
                  "rules[0].pattern is not a valid regular expression"))
    for extra, message in cases:
        result = cli(*base, *extra)
        assert result.returncode == 2, extra
        assert message in result.stderr and "Traceback" not in result.stderr, (extra, result.stderr)


def test_a_database_without_the_schema_is_named(postgres) -> None:
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE empty_{os.getpid()}")
    url = postgres.url.rsplit("/", 1)[0] + f"/empty_{os.getpid()}"
    result = cli("tenants", "list", "--database-url", url)
    assert result.returncode == 2 and "python -m gateway migrate" in result.stderr


def test_migrate_into_a_schema_and_the_serving_role_can_do_only_its_job(database: str) -> None:
    with psycopg.connect(database, autocommit=True) as conn:
        conn.execute("CREATE ROLE gw_serving LOGIN")
    result = cli("migrate", "--schema", "gateway", "--grant-to", "gw_serving", "--database-url", database)
    assert result.returncode == 0, result.stderr
    create_tenant(database, "team-a", "--schema", "gateway")
    serving = database.replace("postgres@", "gw_serving@") + "?options=-csearch_path%3Dgateway"
    with psycopg.connect(serving, autocommit=True) as conn:
        assert conn.execute("SELECT name FROM tenants").fetchall() == [("team-a",)]
        conn.execute("INSERT INTO usage_records (request_id, created_at, tenant, principal, model, endpoint, "
                     "prompt_tokens, cached_tokens, completion_tokens, latency_ms, status, cache_hit) "
                     "VALUES ('r', now(), 'team-a', 'p', 'm', 'chat', 1, 0, 1, 1, 200, false)")
        for forbidden in ("INSERT INTO tenants (name, models) VALUES ('x', '{m}')", "SELECT * FROM usage_records",
                          "UPDATE api_keys SET revoked_at = NULL", "DELETE FROM audit_events",
                          "CREATE TABLE gateway.extra (id int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(forbidden)


def test_connection_flags_default_to_the_environment(database: str) -> None:
    env = {**GATEWAY_ENV, "INFERFORGE_GATEWAY_DATABASE_URL": database}
    create = cli("tenants", "create", "team-a", "--models", "m", env=env)
    assert create.returncode == 0, create.stderr
    assert "team-a" in cli("tenants", "list", env=env).stdout
    assert "--database-url" in cli("tenants", "list").stderr  # and without it, the flag is required


def test_creating_an_entra_role_needs_azures_pgaadauth(database: str) -> None:
    result = cli("migrate", "--grant-to", "gw", "--entra-principal-oid", "11111111-2222-3333-4444-555555555555",
                 "--database-url", database)
    assert result.returncode == 2 and "pgaadauth" in result.stderr
    alone = cli("migrate", "--entra-principal-oid", "11111111-2222-3333-4444-555555555555",
                "--database-url", database)
    assert alone.returncode == 2 and "--grant-to" in alone.stderr


def test_usage_charges_each_tenant_its_share_of_the_tokens_each_model_computed(database: str) -> None:
    """Showback (issue 23): a model's monthly cost split by computed tokens (uncached prompt + completion),
    response-cache hits free, an unused model's cost left unallocated, a model without a cost named."""
    create_tenant(database, "team-a")
    create_tenant(database, "team-b")
    rows = [  # (request, tenant, model, prompt, cached, completion, cache hit)
        ("a1", "team-a", "llama", 100, 20, 20, False),   # computes 100
        ("a2", "team-a", "llama", 500, 0, 500, True),    # a response-cache hit: computes nothing
        ("b1", "team-b", "llama", 250, 0, 50, False),    # computes 300
        ("b2", "team-b", "qwen", 10, 0, 10, False),      # qwen has no cost given
    ]
    with psycopg.connect(database) as conn:
        for request, tenant, model, prompt, cached, completion, hit in rows:
            conn.execute("INSERT INTO usage_records VALUES (%s, now(), %s, 'key:x', 'x', %s, 'chat', %s, %s, %s, "
                         "1.0, 2.0, 200, %s, 'stop')", (request, tenant, model, prompt, cached, completion, hit))
    result = cli("usage", "--json", "--model-cost", "llama=1000", "--model-cost", "mistral=250",
                 "--database-url", database)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    by_tenant = {t["tenant"]: t for t in report["tenants"]}
    assert by_tenant["team-a"]["models"]["llama"]["computed_tokens"] == 100
    assert by_tenant["team-b"]["models"]["llama"]["computed_tokens"] == 300
    assert (by_tenant["team-a"]["cost"], by_tenant["team-b"]["cost"]) == (250.0, 750.0)  # 1000 x 1/4, x 3/4
    assert by_tenant["team-b"]["models"]["qwen"]["cost"] is None
    assert report["unallocated"] == {"mistral": 250.0} and report["unpriced_models"] == ["qwen"]
    text = cli("usage", "--model-cost", "llama=1000", "--database-url", database)
    assert "team-a: requests=2" in text.stdout and "cost=250.00 (llama 25.0%)" in text.stdout
    assert "unpriced: qwen" in text.stdout
    # Last month has no rows: the same costs stay unallocated.
    last = (dt.date.today().replace(day=1) - dt.timedelta(days=1)).strftime("%Y-%m")
    with psycopg.connect(database) as conn:
        ensure_partitions(conn, dt.date.today() - dt.timedelta(days=40), 1)
    empty = json.loads(cli("usage", "--json", "--month", last, "--model-cost", "llama=10",
                           "--database-url", database).stdout)
    assert empty == {"tenants": [], "unallocated": {"llama": 10.0}, "unpriced_models": [],
                     "model_costs": {"llama": 10.0}}


@pytest.mark.parametrize(("args", "message"), [
    (["--model-cost", "llama"], "expected MODEL=COST"),
    (["--model-cost", "llama=-3"], "expected MODEL=COST"),
    (["--model-cost", "llama=1", "--model-cost", "llama=2"], "names a model twice"),
    (["--month", "2026-13"], "expected a month as YYYY-MM"),
])
def test_bad_usage_arguments_exit_2_naming_them(database: str, args: list[str], message: str) -> None:
    result = cli("usage", *args, "--database-url", database)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
