"""`python -m gateway` (console script `inferforge-gateway`): migrate, serve, tenants, keys, usage.

Bad arguments, an unreachable Redis or database, and an unknown tenant or key exit 2 with one line
naming what was wrong; nothing is changed when a check fails.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import logging
import os
import re
import sys
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlparse

TENANT_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class UsageError(Exception):
    """A command-line problem: printed as one line, exit status 2."""


def _non_negative(value: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0 = no limit), got {value!r}") from None
    if number < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0 (0 = no limit), got {value!r}")
    return number


def _positive(value: str) -> int:
    number = _non_negative(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value!r}")
    return number


def _threshold(value: str) -> int:
    number = _non_negative(value)
    if not 1 <= number <= 7:
        raise argparse.ArgumentTypeError(f"expected a severity 1-7 (Azure AI Content Safety's scale), got {value!r}")
    return number


def _tenant_name(value: str) -> str:
    if not TENANT_NAME.match(value):
        raise argparse.ArgumentTypeError(
            f"tenant name {value[:64]!r} must be 1-63 lowercase letters, digits or '-', "
            "starting with a letter or digit")
    return value


def _model_list(value: str) -> list[str]:
    models = [m.strip() for m in value.split(",") if m.strip()]
    if not models:
        raise argparse.ArgumentTypeError("expected a comma-separated list of model names, e.g. --models llama,qwen")
    return models


def _model_cost(value: str) -> tuple[str, float]:
    model, sep, amount = value.partition("=")
    try:
        cost = float(amount)
    except ValueError:
        cost = -1.0
    if not sep or not model.strip() or not cost >= 0 or cost == float("inf"):
        raise argparse.ArgumentTypeError(f"expected MODEL=COST (the model's serving cost this month, a number >= 0), "
                                         f"got {value[:64]!r}")
    return model.strip(), cost


def _month(value: str) -> dt.date:
    try:
        return dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a month as YYYY-MM, got {value[:32]!r}") from None


def _id_list(value: str) -> list[str]:
    ids = [m.strip().lower() for m in value.split(",") if m.strip()]
    bad = [i for i in ids if not UUID.match(i)]
    if bad:
        raise argparse.ArgumentTypeError(f"expected Entra application (client) ids as GUIDs, got {bad[0][:64]!r}")
    return ids


def _schema_name(value: str) -> str:
    if not re.match(r"^[a-z_][a-z0-9_]{0,62}$", value):
        raise argparse.ArgumentTypeError(f"expected a schema name (lowercase letters, digits, _), got {value[:64]!r}")
    return value


def _guid(value: str) -> str:
    if not UUID.match(value.lower()):
        raise argparse.ArgumentTypeError(f"expected an Entra tenant id (a GUID), got {value[:64]!r}")
    return value.lower()


def _url(schemes: tuple[str, ...]):
    def parse(value: str) -> str:
        parsed = urlparse(value)
        if parsed.scheme not in schemes or not parsed.netloc:
            raise argparse.ArgumentTypeError(f"expected a URL starting with {' or '.join(s + '://' for s in schemes)}")
        return value
    return parse


def _upstream(value: str) -> tuple[str, str]:
    """MODEL=URL, or MODEL=URL@WEIGHT[:VERSION] for one of several versions (gateway/routing.py)."""
    from .routing import split_weight

    name, sep, target = value.partition("=")
    split = split_weight(target)
    parsed = urlparse(split[0]) if split else None
    if split is None or not sep or not name or parsed is None or parsed.scheme not in ("http", "https") \
            or not parsed.netloc:
        raise argparse.ArgumentTypeError(f"expected MODEL=http(s)://host:port, or MODEL=http(s)://host:port@WEIGHT"
                                         f":VERSION (weight 0-100, version lowercase letters, digits, -), "
                                         f"got {value[:80]!r}")
    url, _, suffix = target.rpartition("@") if split[3] else (target, "", "")
    return name, url.rstrip("/") + (f"@{suffix}" if suffix else "")


ENV_PREFIX = "INFERFORGE_GATEWAY_"


def _from_env(flag: str, **kwargs: Any) -> dict[str, Any]:
    """argparse settings of a connection flag whose default comes from INFERFORGE_GATEWAY_<FLAG>: the pod
    (and the admin pod the stack describes) set them once, so commands run there name only what they do."""
    env = ENV_PREFIX + flag.removeprefix("--").upper().replace("-", "_")
    value = os.environ.get(env)
    help_text = kwargs.pop("help", "")
    required = kwargs.pop("required", False) and value is None
    if "default" in kwargs and value is None:
        value = kwargs.pop("default")
    else:
        kwargs.pop("default", None)
    return {"default": value, "required": required, "help": f"{help_text} (env {env})", **kwargs}


def build_parser() -> argparse.ArgumentParser:
    db = argparse.ArgumentParser(add_help=False)
    db.add_argument("--database-url", **_from_env("--database-url", required=True,
                    type=_url(("postgresql", "postgres")),
                    help="PostgreSQL URL, e.g. postgresql://gateway@host:5432/app?sslmode=require"))
    db.add_argument("--database-auth", **_from_env("--database-auth", choices=["url", "entra"], default="url",
                    help="url: credentials in the URL or libpq's environment; entra: the workload identity's "
                         "Entra token as the password of the URL's user (Azure, password auth off)"))
    db.add_argument("--schema", **_from_env("--schema", type=_schema_name, default="public",
                    help="PostgreSQL schema of the gateway's tables (default public)"))
    rd = argparse.ArgumentParser(add_help=False)
    rd.add_argument("--redis-url", **_from_env("--redis-url", required=True, type=_url(("redis", "rediss")),
                    help="Redis URL, e.g. rediss://host:10000/0 (Azure Managed Redis: TLS on 10000)"))
    rd.add_argument("--redis-auth", **_from_env("--redis-auth", choices=["url", "entra"], default="url",
                    help="url: credentials in the URL (or none); entra: the workload identity's Entra token, "
                         "as the user --redis-username (Azure Managed Redis access policy assignment)"))
    rd.add_argument("--redis-username", **_from_env(
        "--redis-username", help="with --redis-auth entra: the identity's object (principal) id"))
    pepper = argparse.ArgumentParser(add_help=False)
    pepper.add_argument("--key-pepper-file", **_from_env(
        "--key-pepper-file", help="file holding the API-key pepper (else $INFERFORGE_GATEWAY_KEY_PEPPER)"))

    parser = argparse.ArgumentParser(prog="python -m gateway", description="inferforge AI gateway")
    commands = parser.add_subparsers(dest="command", required=True)

    migrate = commands.add_parser("migrate", parents=[db], help="create or upgrade the schema (idempotent)")
    migrate.add_argument("--grant-to", help="PostgreSQL role of the serving gateway: read keys, write usage")
    migrate.add_argument("--entra-principal-oid", type=_guid,
                         help="with --grant-to on Azure: create that role for this Entra object id if missing "
                              "(pgaadauth_create_principal_with_oid, run in the server's postgres database)")

    serve = commands.add_parser("serve", parents=[db, rd, pepper], help="serve the gateway")
    serve.add_argument("--upstream", action="append", type=_upstream, required=True,
                       metavar="MODEL=URL[@WEIGHT:VERSION]",
                       help="a model and its server's base URL (repeat for several models); a model served by "
                            "several versions (a canary) names each as MODEL=URL@WEIGHT:VERSION, weights summing "
                            "to 100, e.g. llama=http://a@95:stable llama=http://b@5:canary")
    serve.add_argument("--upstream-api-key-file", help="file with the key the model servers accept from the gateway")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1; 0.0.0.0 in a pod)")
    serve.add_argument("--port", type=int, default=8080, help="listening port (default 8080)")
    serve.add_argument("--max-tokens-cap", type=_non_negative, default=4096,
                       help="the most completion tokens one choice may reserve (default 4096)")
    serve.add_argument("--entra-tenant-id", action="append", default=[], type=_guid,
                       help="an Entra tenant whose access tokens are accepted (repeat for several)")
    serve.add_argument("--entra-audience", help="the audience (application ID URI) tokens must be issued for")
    serve.add_argument("--entra-jwks-url", help="JWKS URL (default Entra's common discovery keys)")
    serve.add_argument("--entra-jwks-refresh-cooldown", type=_non_negative, default=5, metavar="SECONDS",
                       help="least time between JWKS fetches forced by an unknown key id (default 5)")
    serve.add_argument("--safety", choices=["none", "local", "azure"], default="none",
                       help="content safety provider (default none)")
    serve.add_argument("--safety-rules", help="rules file for --safety local")
    serve.add_argument("--safety-endpoint", type=_url(("https", "http")),
                       help="Azure AI Content Safety endpoint for --safety azure")
    serve.add_argument("--prompt-count", **_from_env(
        "--prompt-count", choices=["local", "upstream"], default="local",
        help="how prompts are counted before admission: local (default), in-process with each model's own "
             "tokenizer and chat template fetched from its server (GET /tokenizer, pinned by hash; /tokenize "
             "whenever that cannot count with certainty); upstream, always the model server's /tokenize"))
    serve.add_argument("--cache-ttl", type=_positive, default=3600, help="response cache TTL in seconds (>= 1)")

    tenants = commands.add_parser("tenants", help="create, update or list tenants")
    tenant_commands = tenants.add_subparsers(dest="tenant_command", required=True)
    for verb in ("create", "update"):
        sub = tenant_commands.add_parser(verb, parents=[db])
        sub.add_argument("name", type=_tenant_name)
        sub.add_argument("--models", type=_model_list, required=verb == "create",
                         help="models the tenant may call, comma-separated")
        for flag, what in (("--rpm", "requests per minute"), ("--tpm", "tokens per minute"),
                           ("--max-concurrent", "concurrent requests"), ("--monthly-tokens", "tokens per month")):
            sub.add_argument(flag, type=_non_negative, help=f"{what} (0 = no limit)")
        sub.add_argument("--cache", action=argparse.BooleanOptionalAction, help="response cache for this tenant")
        sub.add_argument("--fail-open", action=argparse.BooleanOptionalAction,
                         help="admit without limits while Redis is down (default: refuse, 503)")
        sub.add_argument("--safety-threshold", type=_threshold, help="severity that blocks content (default 4)")
        sub.add_argument("--safety-fail-open", action=argparse.BooleanOptionalAction,
                         help="let content through while the safety provider is down (default: refuse)")
        sub.add_argument("--entra-app-ids", type=_id_list, help="Entra client application ids of this tenant")
    listing = tenant_commands.add_parser("list", parents=[db])
    listing.add_argument("--json", action="store_true")

    keys = commands.add_parser("keys", help="create or revoke API keys")
    key_commands = keys.add_subparsers(dest="key_command", required=True)
    create = key_commands.add_parser("create", parents=[db, pepper])
    create.add_argument("--tenant", required=True, type=_tenant_name)
    create.add_argument("--name", help="a label for the key (who holds it)")
    create.add_argument("--rpm", type=_non_negative, default=0, help="this key's own requests per minute")
    create.add_argument("--tpm", type=_non_negative, default=0, help="this key's own tokens per minute")
    revoke = key_commands.add_parser("revoke", parents=[db, rd])
    revoke.add_argument("key", help="the key, or its 12-character id")

    usage = commands.add_parser("usage", parents=[db], help="per-tenant totals of a month, and their cost")
    usage.add_argument("--json", action="store_true")
    usage.add_argument("--month", type=_month, help="YYYY-MM (default: the current month, UTC)")
    usage.add_argument("--model-cost", type=_model_cost, action="append", default=[], metavar="MODEL=COST",
                       help="the model's serving cost this month (its GPU pool's: the bill, or `python -m stacks "
                            "plan --json`); each tenant is charged its share of the tokens the model computed")
    return parser


def _tenant_options(args: argparse.Namespace) -> dict[str, Any]:
    mapping = {"models": "models", "rpm": "rpm", "tpm": "tpm", "max_concurrent": "max_concurrent",
               "monthly_tokens": "monthly_tokens", "cache": "cache_enabled", "fail_open": "fail_open",
               "safety_threshold": "safety_threshold", "safety_fail_open": "safety_fail_open",
               "entra_app_ids": "entra_app_ids"}
    return {column: getattr(args, attr) for attr, column in mapping.items() if getattr(args, attr) is not None}


def _database_conninfo(args: argparse.Namespace) -> str:
    """The database URL, with a current Entra token as its password under --database-auth entra."""
    from psycopg.conninfo import make_conninfo

    url = make_conninfo(args.database_url, options=f"-c search_path={args.schema}") \
        if args.schema != "public" else args.database_url
    if args.database_auth != "entra":
        return url
    from .azure_auth import POSTGRES_SCOPE, entra_token_source

    try:
        token = asyncio.run(entra_token_source(POSTGRES_SCOPE)())
    except Exception as exc:  # azure-identity raises its own hierarchy; any failure means no sign-in
        raise UsageError(f"--database-auth entra: no Entra token for PostgreSQL: {str(exc)[:200]}") from exc
    return make_conninfo(url, password=token)


def redis_credentials(args: argparse.Namespace) -> Any:
    if args.redis_auth != "entra":
        return None
    if not args.redis_username:
        raise UsageError("--redis-auth entra needs --redis-username (the identity's object id)")
    from .azure_auth import REDIS_SCOPE, RedisTokenCredentials, entra_token_source

    return RedisTokenCredentials(args.redis_username, entra_token_source(REDIS_SCOPE))


def _check_database(url: str) -> None:
    import psycopg

    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        raise UsageError(f"cannot reach the database at --database-url: {str(exc).strip().splitlines()[0][:200]}") \
            from exc


def _check_schema(url: str) -> None:
    import psycopg

    with psycopg.connect(url) as conn:
        if conn.execute("SELECT to_regclass('gateway_schema')").fetchone()[0] is None:
            raise UsageError("the database has no gateway schema; run `python -m gateway migrate` first")


def check_redis(url: str, credentials: Any = None) -> None:
    from redis.exceptions import RedisError

    from .limits import connect

    async def ping() -> None:
        client = connect(url, 3.0, credentials)
        try:
            await client.ping()
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError) as exc:
        raise UsageError(f"cannot reach Redis at --redis-url: {str(exc)[:200]}") from exc


def _print_tenants(tenants: list[Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps([t.to_json() for t in tenants], indent=2))
        return
    for t in tenants:
        print(f"{t.name}: models={','.join(t.models)} rpm={t.rpm} tpm={t.tpm} max_concurrent={t.max_concurrent} "
              f"monthly_tokens={t.monthly_tokens} cache={'on' if t.cache_enabled else 'off'} "
              f"fail_open={'yes' if t.fail_open else 'no'}")


def run(args: argparse.Namespace) -> int:
    from . import admin, schema, showback
    from .keys import PepperError, load_pepper

    database = _database_conninfo(args)
    if args.command == "migrate":
        _check_database(database)
        if args.entra_principal_oid and not args.grant_to:
            raise UsageError("--entra-principal-oid needs --grant-to (the role to create for that object id)")
        try:
            before, after = schema.migrate(database, grant_to=args.grant_to, schema_name=args.schema,
                                           entra_principal_oid=args.entra_principal_oid)
        except schema.MigrationError as exc:
            raise UsageError(str(exc)) from exc
        print(f"schema at version {after} (was {before})")
        return 0
    _check_database(database)
    _check_schema(database)
    try:
        if args.command == "serve":
            from .serve import serve

            return serve(args)
        if args.command == "tenants":
            if args.tenant_command == "list":
                _print_tenants(admin.list_tenants(database), args.json)
            elif args.tenant_command == "create":
                options = _tenant_options(args)
                tenant = admin.create_tenant(database, args.name, options.pop("models"), **options)
                _print_tenants([tenant], False)
            else:
                _print_tenants([admin.update_tenant(database, args.name, **_tenant_options(args))], False)
            return 0
        if args.command == "keys":
            if args.key_command == "create":
                pepper = load_pepper(args.key_pepper_file)
                key_id, key = admin.create_key(database, pepper, args.tenant, args.name, args.rpm, args.tpm)
                print(f"created key {key_id} for tenant {args.tenant}; it is shown once, store it now:")
                print(key)
                return 0
            credentials = redis_credentials(args)
            check_redis(args.redis_url, credentials)
            key_id, tenant = admin.revoke_key(database, args.key)
            asyncio.run(_revoke_in_redis(args.redis_url, tenant, key_id, credentials))
            print(f"revoked key {key_id} of tenant {tenant}")
            return 0
        if args.command == "usage":
            totals = admin.usage_totals(database, args.month)
            costs = dict(args.model_cost)
            if len(costs) != len(args.model_cost):
                raise UsageError("--model-cost names a model twice; give each model's cost once")
            report = showback.allocate(admin.usage_by_model(database, args.month), costs) if costs else None
            if args.json:
                if report is not None:  # each tenant's totals, with its models' tokens, shares and cost
                    by_tenant = {t["tenant"]: t for t in report["tenants"]}
                    totals = [{**row, "cost": by_tenant[row["tenant"]]["cost"],
                               "models": by_tenant[row["tenant"]]["models"]} for row in totals]
                    print(json.dumps({"tenants": totals, "unallocated": report["unallocated"],
                                      "unpriced_models": report["unpriced_models"],
                                      "model_costs": report["model_costs"]}, indent=2))
                else:
                    print(json.dumps(totals, indent=2))
            else:
                _print_usage(totals, report)
            return 0
    except (admin.AdminError, PepperError) as exc:
        raise UsageError(str(exc)) from exc
    raise UsageError(f"unknown command {args.command}")


def _print_usage(totals: list[dict[str, Any]], report: dict[str, Any] | None) -> None:
    costs = {t["tenant"]: t for t in report["tenants"]} if report is not None else {}
    for row in totals:
        line = (f"{row['month']} {row['tenant']}: requests={row['requests']} prompt={row['prompt_tokens']} "
                f"completion={row['completion_tokens']} cached={row['cached_tokens']}")
        if row["tenant"] in costs:
            models = costs[row["tenant"]]["models"]
            shares = ", ".join(f"{model} {entry['share']:.1%}" for model, entry in models.items())
            line += f" cost={costs[row['tenant']]['cost']:.2f} ({shares})"
        print(line)
    if report is not None:
        for model, cost in report["unallocated"].items():
            print(f"unallocated: {model} {cost:.2f} (no tokens computed this month)")
        for model in report["unpriced_models"]:
            print(f"unpriced: {model} (no --model-cost given)")


async def _revoke_in_redis(url: str, tenant: str, key_id: str, credentials: Any = None) -> None:
    from .limits import Limiter, connect

    client = connect(url, 3.0, credentials)
    try:
        await Limiter(client).revoke(tenant, key_id)
    finally:
        await client.aclose()


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per upstream call is noise, not a log
    args = build_parser().parse_args(argv)
    try:
        return run(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"error: {exc.name} is not installed; install the gateway extra: pip install 'inferforge[gateway]'",
              file=sys.stderr)
        return 2
