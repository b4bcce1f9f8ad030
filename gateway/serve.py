"""`python -m gateway serve`: wire the state stores, the upstreams and the checks, then run uvicorn."""

from __future__ import annotations

import argparse
import asyncio
import logging
from pathlib import Path

import uvicorn
from psycopg.conninfo import make_conninfo
from psycopg_pool import AsyncConnectionPool

from . import metrics
from .app import Gateway, GatewaySettings, create_app
from .azure_auth import (
    CONNECTION_MAX_AGE_S,
    POSTGRES_SCOPE,
    entra_token_source,
    postgres_connection_kwargs,
)
from .cache import ResponseCache
from .entra import ENTRA_JWKS, EntraSettings, EntraValidator
from .keys import load_pepper
from .limits import Limiter
from .limits import connect as connect_redis
from .routing import UpstreamSpec, check_routes, split_weight
from .safety import AzureContentSafety, LocalRules, SafetyProvider, managed_identity_token
from .store import Store
from .upstream import Upstream, UpstreamUnreachable

log = logging.getLogger("gateway.serve")

REDIS_TIMEOUT_S = 0.5  # fail fast: a request waits at most this long on a Redis that is gone


def _safety(args: argparse.Namespace) -> SafetyProvider | None:
    from .cli import UsageError

    if args.safety == "local":
        if not args.safety_rules:
            raise UsageError("--safety local needs --safety-rules FILE")
        from .safety import SafetyConfigError

        try:
            return LocalRules.from_file(args.safety_rules)
        except SafetyConfigError as exc:
            raise UsageError(str(exc)) from exc
    if args.safety == "azure":
        if not args.safety_endpoint:
            raise UsageError("--safety azure needs --safety-endpoint https://<resource>.cognitiveservices.azure.com")
        return AzureContentSafety(args.safety_endpoint, managed_identity_token())
    return None


def _entra(args: argparse.Namespace) -> EntraValidator | None:
    from .cli import UsageError

    if not args.entra_tenant_id:
        if args.entra_audience:
            raise UsageError("--entra-audience needs at least one --entra-tenant-id")
        return None
    if not args.entra_audience:
        raise UsageError("--entra-tenant-id needs --entra-audience (the gateway's application ID URI)")
    return EntraValidator(EntraSettings(tuple(args.entra_tenant_id), args.entra_audience,
                                        args.entra_jwks_url or ENTRA_JWKS,
                                        refresh_cooldown_s=args.entra_jwks_refresh_cooldown))


def upstream_routes(flags: list[tuple[str, str]]) -> dict[str, list[UpstreamSpec]]:
    """The `--upstream` flags by model, checked (gateway/routing.py); UsageError naming the problem."""
    from .cli import UsageError

    specs = []
    for model, target in flags:
        split = split_weight(target)
        assert split is not None  # the flag's type checked the syntax
        url, weight, version, weighted = split
        specs.append(UpstreamSpec(model, url, weight, version, weighted))
    try:
        return check_routes(specs)
    except ValueError as exc:
        raise UsageError(str(exc)) from exc


async def _describe_upstreams(upstreams: list[Upstream]) -> None:
    """Each upstream's model card (its `created` stamps the weights it loaded: part of the cache key)."""
    for up in upstreams:
        try:
            response = await up.get("/v1/models")
            cards = response.json().get("data", []) if response.status == 200 else []
        except (UpstreamUnreachable, ValueError):
            cards = []
        card = next((c for c in cards if c.get("id") == up.name), None)
        if card:
            up.created = int(card.get("created") or 0)
            up.revision = f"{card.get('root') or up.name}@{up.created}"
            if up.version != "stable":  # a canary's answers never fill (nor come from) the stable server's cache
                up.revision += f"#{up.version}"
        else:
            log.warning("upstream %s at %s did not describe the model yet; cache keys use its URL", up.name, up.url)
            up.revision = up.url


def _first_key(path: str) -> str:
    """The first key of a key file in the model server's format (one per line or comma-separated, `#`
    comments): the gateway presents one of the keys the servers accept, so the same Key Vault secret serves both."""
    from .cli import UsageError

    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read --upstream-api-key-file {path}: {exc.strerror or exc}") from exc
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        for key in line.split(","):
            if key.strip():
                return key.strip()
    raise UsageError(f"--upstream-api-key-file {path} holds no key")


async def _renew_redis_sign_ins(client: object) -> None:
    """Close idle Redis connections every CONNECTION_MAX_AGE_S: the next ones sign in with a new token."""
    while True:
        await asyncio.sleep(CONNECTION_MAX_AGE_S)
        await client.connection_pool.disconnect(inuse_connections=False)  # type: ignore[attr-defined]


def serve(args: argparse.Namespace) -> int:
    from .cli import check_redis, redis_credentials

    credentials = redis_credentials(args)
    check_redis(args.redis_url, credentials)
    pepper = load_pepper(args.key_pepper_file)
    safety = _safety(args)
    entra = _entra(args)
    upstream_key = _first_key(args.upstream_api_key_file) if args.upstream_api_key_file else None
    routes = upstream_routes(args.upstream)

    state: dict[str, object] = {}

    async def startup() -> None:
        sign_in = {}
        if args.database_auth == "entra":
            sign_in = {"kwargs": postgres_connection_kwargs(entra_token_source(POSTGRES_SCOPE)),
                       "max_lifetime": CONNECTION_MAX_AGE_S}
        conninfo = args.database_url if args.schema == "public" else make_conninfo(
            args.database_url, options=f"-c search_path={args.schema}")
        pool = AsyncConnectionPool(conninfo, min_size=1, max_size=10, open=False, **sign_in)
        await pool.open(wait=True, timeout=10)
        redis_client = connect_redis(args.redis_url, REDIS_TIMEOUT_S, credentials)
        if credentials is not None:
            state["redis_renewal"] = asyncio.create_task(_renew_redis_sign_ins(redis_client))
        store = Store(pool)
        store.start()
        for name, specs in routes.items():
            for spec in specs:
                # Each version is its own upstream: its own connections, model card and tokenizer pin.
                upstream = Upstream(name, spec.url, upstream_key, count_locally=args.prompt_count == "local",
                                    version=spec.version)
                upstream.open()
                gateway.add_upstream(upstream, spec.weight)
        await _describe_upstreams(gateway.all_upstreams())
        if args.prompt_count == "local":
            # Before the first request where the servers answer; a server that cannot is counted through
            # /tokenize, and its tokenizer is loaded later when one of its answers names its hash. One at a
            # time: the files pass through /tmp (a 64 MiB emptyDir in the pod; a large tokenizer.json is ~35 MB).
            for up in gateway.all_upstreams():
                await up.load_counter()
        gateway.store = store
        gateway.limiter = Limiter(redis_client)
        gateway.cache = ResponseCache(redis_client, ttl_s=args.cache_ttl)
        metrics.REDIS_UP.set(1)
        state.update(pool=pool, redis=redis_client, store=store)

    async def shutdown() -> None:
        if "redis_renewal" in state:
            state["redis_renewal"].cancel()  # type: ignore[attr-defined]
        await gateway.finish_background()
        await state["store"].close()  # type: ignore[attr-defined]
        for up in gateway.all_upstreams():
            await up.close()
        await state["redis"].aclose()  # type: ignore[attr-defined]
        await state["pool"].close()  # type: ignore[attr-defined]

    gateway = Gateway(store=None, limiter=None, cache=None, upstreams={}, pepper=pepper,  # type: ignore[arg-type]
                      settings=GatewaySettings(max_tokens_cap=args.max_tokens_cap, upstream_api_key=upstream_key),
                      entra=entra, safety=safety)
    app = create_app(gateway, on_startup=[startup], on_shutdown=[shutdown])
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning", access_log=False,
                loop="uvloop", http="httptools", timeout_graceful_shutdown=30)
    return 0
