"""The gateway's HTTP service: authenticate -> count -> admit -> cache -> safety -> proxy -> settle.

Routes: `POST /v1/chat/completions` and `POST /v1/completions` (proxied to the upstream named by
the request's `model`), `GET /v1/models` (what the caller may use), and the public probes `/health`,
`/ready` and `/metrics`. Every other path needs a credential too (fail closed).

Settlement of a stream runs in a task of its own: when the client disconnects, Starlette cancels the
response generator, and work awaited in its `finally` would be cancelled with it; the tokens the
upstream generated until then (its per-chunk usage) are still charged.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import random
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import cache as response_cache
from . import errors, metrics
from .counting import LOCAL_MAX_BODY_BYTES
from .entra import EntraValidator, TokenError
from .flight import Flight
from .keys import key_id_of, matches
from .limits import Limiter, LimiterUnavailable, Refusal, Reservation, open_reservation
from .model import Caller
from .routing import STABLE, VERSION_HEADER, Router
from .safety import SafetyProvider, SafetyUnavailable
from .store import Store, UsageRecord, audit_event
from .stream import StreamRelay
from .upstream import Upstream, UpstreamStream, UpstreamUnreachable

log = logging.getLogger("gateway")

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
MAX_BODY_BYTES = 16 * 1024 * 1024
ENDPOINTS = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


@dataclass
class GatewaySettings:
    max_tokens_cap: int = 4096
    upstream_api_key: str | None = None
    default_max_tokens: dict[str, int | None] = field(
        default_factory=lambda: {"completions": 16, "chat": None})


def _json_response(body: dict[str, Any], request_id: str, status: int = 200,
                   headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body, separators=(",", ":")), status_code=status, media_type="application/json",
                    headers={"X-Request-Id": request_id, **(headers or {})})


def _refusal_error(refusal: Refusal) -> errors.GatewayError:
    retry_s = max(1, -(-refusal.retry_after_ms // 1000))
    headers = {"Retry-After": str(retry_s)}
    if refusal.reason == "rpm":
        headers.update({"x-ratelimit-limit-requests": str(refusal.limit), "x-ratelimit-remaining-requests": "0",
                        "x-ratelimit-reset-requests": f"{retry_s}s"})
    elif refusal.reason == "tpm":
        headers.update({"x-ratelimit-limit-tokens": str(refusal.limit),
                        "x-ratelimit-remaining-tokens": str(refusal.remaining),
                        "x-ratelimit-reset-tokens": f"{retry_s}s"})
    scope = "your API key's" if refusal.scope == "key" else "your tenant's"
    if refusal.reason == "budget":
        del headers["Retry-After"]  # waiting a few seconds does not help; the next month does
        return errors.GatewayError(
            429, f"You exceeded {scope} monthly token budget ({refusal.limit} tokens; {refusal.remaining} left, "
            "less than this prompt needs).", "insufficient_quota", "insufficient_quota", headers)
    if refusal.reason == "revoked":
        return errors.unauthorized("This API key has been revoked.")
    what = {"rpm": f"requests per minute ({refusal.limit})", "tpm": f"tokens per minute ({refusal.limit}; "
            f"{refusal.remaining} left in this window, the request reserves its prompt plus max_tokens)",
            "concurrency": f"concurrent requests ({refusal.limit})"}[refusal.reason]
    return errors.GatewayError(429, f"Rate limit reached for {scope} {what}. Retry after {retry_s} s.",
                               "requests", "rate_limit_exceeded", headers)


def _choice_texts(response: dict[str, Any]) -> dict[int, str]:
    texts: dict[int, str] = {}
    for choice in response.get("choices") or []:
        message = choice.get("message")
        text = (message or {}).get("content") if message is not None else choice.get("text")
        texts[choice.get("index", 0)] = text or ""
    return texts


def _prompt_text(body: dict[str, Any]) -> str:
    """The text a content check reads from a request: message contents (text parts) or prompts."""
    parts: list[str] = []
    for message in body.get("messages") or []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        parts.append(prompt)
    elif isinstance(prompt, list):
        parts.extend(p for p in prompt if isinstance(p, str))
    return "\n".join(parts)


class Gateway:
    def __init__(self, *, store: Store, limiter: Limiter, cache: response_cache.ResponseCache,
                 upstreams: dict[str, Upstream], pepper: bytes, settings: GatewaySettings,
                 entra: EntraValidator | None = None, safety: SafetyProvider | None = None,
                 rng: random.Random | None = None) -> None:
        self.store = store
        self.limiter = limiter
        self.cache = cache
        self.upstreams = upstreams
        # A model with several server versions (a canary): each version's upstream and weight (gateway/routing.py).
        self.versions: dict[str, dict[str, Upstream]] = {}
        self.router = Router({}, rng)
        self.pepper = pepper
        self.settings = settings
        self.entra = entra
        self.safety = safety
        self._background: set[asyncio.Task] = set()

    # ---- routing ----------------------------------------------------------------------------

    def add_upstream(self, upstream: Upstream, weight: int = 100) -> None:
        """Serve `upstream` as one version of its model with `weight` percent of the model's requests."""
        model = upstream.name
        self.versions.setdefault(model, {})[upstream.version] = upstream
        self.router.weights.setdefault(model, [])
        if weight > 0:
            self.router.weights[model].append((upstream.version, weight))
        # The model's face (/v1/models, readiness): its stable version, else the first one named.
        if upstream.version == STABLE or model not in self.upstreams:
            self.upstreams[model] = upstream

    def all_upstreams(self) -> list[Upstream]:
        seen = {id(up): up for up in self.upstreams.values()}
        seen.update({id(up): up for versions in self.versions.values() for up in versions.values()})
        return list(seen.values())

    def route(self, model: str, upstream: Upstream) -> Upstream:
        """The version of `model` that serves this request (by weight), or its one upstream."""
        versions = self.versions.get(model)
        if not versions or len(versions) == 1:
            return upstream
        return versions.get(self.router.pick(model), upstream)

    # ---- identity ---------------------------------------------------------------------------

    async def authenticate(self, request: Request) -> Caller:
        header = request.headers.get("authorization", "")
        scheme, _, credential = header.partition(" ")
        if scheme.lower() != "bearer" or not credential.strip():
            raise errors.unauthorized("Missing credentials: send `Authorization: Bearer <API key or Entra token>`.")
        credential = credential.strip()
        if credential.startswith("ifg_"):
            key_id = key_id_of(credential)
            record = await self.store.key(key_id) if key_id else None
            if record is None or not matches(self.pepper, credential, record.key_hash):
                raise errors.unauthorized("Incorrect API key provided.")
            if record.revoked:
                raise errors.unauthorized("This API key has been revoked.")
            return Caller(record.tenant, f"key:{record.key_id}", record.key_id,
                          {"rpm": record.rpm, "tpm": record.tpm})
        if self.entra is None:
            raise errors.unauthorized("Incorrect API key provided.")
        try:
            identity = await self.entra.validate(credential)
        except TokenError as exc:
            raise errors.unauthorized(f"Invalid Entra ID token: {exc}.") from exc
        tenant = await self.store.tenant_for_app(identity.app_id)
        if tenant is None:
            raise errors.unauthorized("The token's client application is not registered with any gateway tenant.")
        return Caller(tenant, f"entra:{identity.object_id}")

    # ---- counting ---------------------------------------------------------------------------

    async def _tokenize(self, upstream: Upstream, payload: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await upstream.post("/tokenize", payload)
        except UpstreamUnreachable as exc:
            metrics.UPSTREAM_ERRORS.labels(upstream.name, upstream.version).inc()
            raise errors.upstream_failed(f"The model `{upstream.name}` could not be reached.") from exc
        if response.status == 400:
            # The model server refused the request's shape; its message names the field.
            raise errors.GatewayError(400, response.json().get("error", {}).get("message", "invalid request"),
                                      "invalid_request_error", "invalid_request")
        if response.status != 200:
            metrics.UPSTREAM_ERRORS.labels(upstream.name, upstream.version).inc()
            raise errors.upstream_failed(f"The model `{upstream.name}` could not count the prompt "
                                         f"({response.status}).")
        return response.json()

    async def count_prompt(self, upstream: Upstream, endpoint: str, body: dict[str, Any],
                           body_bytes: int = 0) -> tuple[int, int, int]:
        """(prompt tokens, number of prompts, the model's context length), exactly as the model counts:
        in-process with the model's own tokenizer when the gateway holds a copy the server vouches for
        (gateway.counting), else through the model server's /tokenize."""
        counter = upstream.counter
        if counter is not None and body_bytes <= LOCAL_MAX_BODY_BYTES:
            counted = counter.count(endpoint, body)
            if counted is not None:
                metrics.COUNTED_LOCALLY.inc()
                return counted
        metrics.COUNTED_UPSTREAM.inc()
        if endpoint == "chat":
            payload = {k: body[k] for k in ("messages", "tools", "add_generation_prompt", "continue_final_message")
                       if k in body}
            result = await self._tokenize(upstream, payload)
            return int(result["count"]), 1, int(result["max_model_len"])
        prompt = body.get("prompt")
        if isinstance(prompt, str):
            prompts: list[Any] = [prompt]
        elif isinstance(prompt, list) and prompt and all(isinstance(p, int) for p in prompt):
            prompts = [prompt]
        elif isinstance(prompt, list) and prompt:
            prompts = prompt
        else:
            raise errors.bad_request("prompt must be a string, a list of strings, or token ids")
        texts = [p for p in prompts if isinstance(p, str)]
        counted = await asyncio.gather(*(self._tokenize(upstream, {"prompt": t}) for t in texts)) if texts else []
        if texts:
            max_model_len = int(counted[0]["max_model_len"])
        else:
            max_model_len = int((await self._tokenize(upstream, {"prompt": ""}))["max_model_len"])
        total = sum(int(c["count"]) for c in counted)
        for p in prompts:
            if isinstance(p, list):
                total += len(p)
            elif not isinstance(p, str):
                raise errors.bad_request("prompt must be a string, a list of strings, or token ids")
        return total, len(prompts), max_model_len

    # ---- admission --------------------------------------------------------------------------

    async def admit(self, flight: Flight, prompt_tokens: int, completion_wanted: int, choices: int) -> Reservation:
        caller = flight.caller
        assert caller is not None
        try:
            outcome = await self.limiter.admit(caller, flight.request_id, prompt_tokens, completion_wanted, choices)
            metrics.REDIS_UP.set(1)
        except LimiterUnavailable as exc:
            metrics.REDIS_UP.set(0)
            metrics.REDIS_ERRORS.inc()
            if not caller.tenant.fail_open:
                self._audit(flight, "deny", "limits_unavailable", 503)
                raise errors.unavailable("The gateway cannot check your limits right now; retry shortly.",
                                         "limits_unavailable") from exc
            metrics.FAILED_OPEN.labels(metrics.tenant_label(caller.tenant.name)).inc()
            log.warning("redis unavailable, admitting fail-open tenant %s: %s", caller.tenant.name, str(exc)[:200])
            return open_reservation(flight.request_id, prompt_tokens, completion_wanted)
        if isinstance(outcome, Refusal):
            tenant = metrics.tenant_label(caller.tenant.name)
            metrics.REFUSED.labels(tenant, outcome.reason).inc()
            if outcome.reason == "budget":
                metrics.BUDGET_EXHAUSTED.labels(tenant).inc()
            error = _refusal_error(outcome)
            self._audit(flight, "deny", f"{outcome.reason}:{outcome.scope}", error.status)
            raise error
        return outcome

    @staticmethod
    def _rate_headers(flight: Flight) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the tenant's per-minute limits, on every admitted answer."""
        reservation, tenant = flight.reservation, flight.caller.tenant if flight.caller else None
        headers: dict[str, str] = {}
        if reservation is None or tenant is None:
            return headers
        reset = f"{max(1, -(-reservation.reset_ms // 1000))}s"
        if tenant.rpm and reservation.remaining_requests >= 0:
            headers.update({"x-ratelimit-limit-requests": str(tenant.rpm),
                            "x-ratelimit-remaining-requests": str(reservation.remaining_requests),
                            "x-ratelimit-reset-requests": reset})
        if tenant.tpm and reservation.remaining_tokens >= 0:
            headers.update({"x-ratelimit-limit-tokens": str(tenant.tpm),
                            "x-ratelimit-remaining-tokens": str(reservation.remaining_tokens),
                            "x-ratelimit-reset-tokens": reset})
        return headers

    async def _settle(self, flight: Flight) -> None:
        if flight.reservation is None:
            return
        used = 0 if flight.cache_hit else flight.prompt_tokens + flight.completion_tokens
        try:
            await self.limiter.settle(flight.reservation, used)
        except LimiterUnavailable as exc:
            metrics.REDIS_UP.set(0)
            metrics.REDIS_ERRORS.inc()
            log.warning("settlement of %s failed (its reservation stands until the window ends): %s",
                        flight.request_id, str(exc)[:200])

    # ---- records ----------------------------------------------------------------------------

    def _audit(self, flight: Flight, decision: str, reason: str, status: int) -> None:
        caller = flight.caller
        self.store.record_audit(audit_event(
            ENDPOINTS_ACTION[flight.endpoint], decision, reason, request_id=flight.request_id,
            tenant=caller.tenant.name if caller else None, principal=caller.principal if caller else None,
            model=flight.model or None, status=status))

    def _record(self, flight: Flight) -> None:
        caller = flight.caller
        if caller is None:
            return
        tenant = metrics.tenant_label(caller.tenant.name)
        metrics.REQUESTS.labels(tenant, flight.model, str(flight.status)).inc()
        if flight.version:  # reached a model server version: the canary's numbers beside the stable one's
            metrics.UPSTREAM_REQUESTS.labels(flight.model, flight.version, str(flight.status)).inc()
            if not flight.cache_hit:
                metrics.UPSTREAM_LATENCY.labels(flight.model, flight.version).observe(
                    time.monotonic() - flight.started)
        if not flight.cache_hit:
            metrics.TOKENS.labels(tenant, flight.model, "prompt").inc(flight.prompt_tokens)
            metrics.TOKENS.labels(tenant, flight.model, "completion").inc(flight.completion_tokens)
        self.store.record_usage(UsageRecord(
            flight.request_id, dt.datetime.now(dt.UTC), caller.tenant.name, caller.principal, caller.key_id,
            flight.model, flight.endpoint, flight.prompt_tokens, flight.cached_tokens, flight.completion_tokens,
            flight.ttft_ms, (time.monotonic() - flight.started) * 1000, flight.status, flight.cache_hit,
            flight.finish_reason))

    async def _finish(self, flight: Flight) -> None:
        flight.finished = True  # settled and recorded once, whichever path gets here first
        await self._settle(flight)
        self._record(flight)
        self._audit(flight, "allow", "completed" if flight.status < 400 else f"status_{flight.status}", flight.status)

    def finish_later(self, flight: Flight, response: UpstreamStream | None = None) -> None:
        flight.finished = True  # from now on only this task settles and records the request

        async def close_then_finish() -> None:
            try:
                if response is not None:
                    await response.close()
            finally:
                await self._finish(flight)

        task = asyncio.ensure_future(close_then_finish())
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def finish_background(self) -> None:
        """Wait for the responses still closing and their settlement and records (shutdown)."""
        await asyncio.gather(*self._background, return_exceptions=True)

    # ---- safety -----------------------------------------------------------------------------

    async def blocked_category(self, caller: Caller, text: str, stage: str) -> str | None:
        """The category that blocks this text for the caller's tenant, or None."""
        if self.safety is None or not text:
            return None
        try:
            verdict = await self.safety.analyze(text)
        except SafetyUnavailable as exc:
            if caller.tenant.safety_fail_open:
                log.warning("content safety unavailable, letting %s through for a fail-open tenant", stage)
                return None
            raise errors.unavailable("Content safety is unavailable; retry shortly.", "content_safety_unavailable") \
                from exc
        category = verdict.blocked_category(caller.tenant.safety_threshold)
        if category is not None:
            metrics.SAFETY.labels(stage, category).inc()
        return category

    # ---- the proxied endpoints ----------------------------------------------------------------

    def _upstream_headers(self, request_id: str | None) -> dict[str, str]:
        headers = {"Content-Type": "application/json"}
        if self.settings.upstream_api_key:
            headers["Authorization"] = f"Bearer {self.settings.upstream_api_key}"
        if request_id:
            headers["X-Request-Id"] = request_id
        return headers

    async def _read_body(self, request: Request, flight: Flight) -> tuple[dict[str, Any], bytes]:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
            raise errors.GatewayError(413, f"Request body over {MAX_BODY_BYTES} bytes.", "invalid_request_error",
                                      "request_too_large")
        parts, size = [], 0
        async for part in request.stream():
            parts.append(part)
            size += len(part)
            if size > MAX_BODY_BYTES:
                raise errors.GatewayError(413, f"Request body over {MAX_BODY_BYTES} bytes.",
                                          "invalid_request_error", "request_too_large")
        raw = b"".join(parts)
        flight.body_bytes = len(raw)
        try:
            body = json.loads(raw)
        except ValueError as exc:
            raise errors.bad_request("The request body is not valid JSON.") from exc
        if not isinstance(body, dict):
            raise errors.bad_request("The request body must be a JSON object.")
        return body, raw

    async def proxy(self, request: Request) -> Response:
        endpoint = ENDPOINTS[request.url.path]
        flight = Flight(f"gw-{uuid.uuid4().hex}", endpoint, time.monotonic())
        try:
            response = await self._proxy(request, flight)
            if flight.version:
                response.headers[VERSION_HEADER] = flight.version
            return response
        except errors.GatewayError as error:
            flight.status = error.status
            if flight.reservation is not None and not flight.finished:
                await self._finish(flight)
            elif flight.reservation is None:
                # Refused before admission (credentials, request, limits, a state store down): counted here,
                # as admitted requests are when they finish, so the 5xx and 429 rates see every answer.
                tenant = metrics.tenant_label(flight.caller.tenant.name if flight.caller else None)
                metrics.REQUESTS.labels(tenant, flight.model, str(error.status)).inc()
                if error.status == 401:
                    self._audit(flight, "deny", error.code, 401)
            response = error.response(flight.request_id)
            if flight.version:
                response.headers[VERSION_HEADER] = flight.version
            return response

    async def _proxy(self, request: Request, flight: Flight) -> Response:
        flight.caller = caller = await self.authenticate(request)
        body, raw = await self._read_body(request, flight)
        received = body
        model = body.get("model")
        if not isinstance(model, str) or not model:
            raise errors.bad_request("`model` is required: one of the models GET /v1/models lists.", "model_required")
        flight.model = model
        upstream = self.upstreams.get(model)
        if upstream is None or model not in caller.tenant.models:
            self._audit(flight, "deny", "model_not_allowed", 404)
            raise errors.model_not_found(model)
        # The version is chosen before anything is counted: the count uses that version's tokenizer, the
        # cache key its revision.
        upstream = self.route(model, upstream)
        flight.version = upstream.version
        stream = body.get("stream") is True
        stream_options = body.get("stream_options") if isinstance(body.get("stream_options"), dict) else {}
        wants_usage = stream and bool(stream_options.get("include_usage"))
        wants_continuous = wants_usage and bool(stream_options.get("continuous_usage_stats"))

        # The response cache, before anything is counted: a hit costs no tokens.
        cache_key = None
        if caller.tenant.cache_enabled and response_cache.cacheable(body, request.headers.get("cache-control")):
            cache_key = response_cache.cache_key(caller.tenant.name, upstream.revision, body)
            cached = await self.cache.get(cache_key)
            metrics.CACHE.labels("hit" if cached else "miss").inc()
            if cached is not None:
                return await self._cache_hit(flight, cached, stream, wants_usage)

        blocked = await self.blocked_category(caller, _prompt_text(body), "prompt")
        if blocked is not None:
            self._audit(flight, "deny", f"content_filter:prompt:{blocked}", 400)
            flight.status = 400
            raise errors.content_filtered(blocked, "prompt")

        if self._limits_tokens(caller):
            prompt_tokens, prompts, max_model_len = await self.count_prompt(upstream, flight.endpoint, body,
                                                                            flight.body_bytes)
            choices = self._choices(body) * prompts
            wanted = self._completion_wanted(body, flight.endpoint, prompt_tokens // max(prompts, 1), max_model_len)
            flight.prompt_tokens = prompt_tokens
            flight.reservation = reservation = await self.admit(flight, prompt_tokens, wanted * choices, choices)
            per_choice = reservation.completion_allowance // choices
            if per_choice < wanted or self._requested_max_tokens(body) is None:
                body = self._with_max_tokens(body, per_choice)
        else:
            # No token limit applies to this caller: nothing to reserve, so no count before admission (one
            # round trip less); requests and concurrency are admitted, and the usage is settled exactly after.
            flight.reservation = await self.admit(flight, 0, 0, 1)
            requested, cap = self._requested_max_tokens(body), self.settings.max_tokens_cap
            if isinstance(requested, int) and not isinstance(requested, bool) and requested > cap:
                body = self._with_max_tokens(body, cap)
        if stream:
            body = {**body, "stream_options": {**stream_options, "include_usage": True,
                                               "continuous_usage_stats": True}}
        # A body the gateway did not change is forwarded as it came (no second serialisation).
        payload: dict[str, Any] | bytes = raw if body is received else body
        metrics.OVERHEAD.observe(time.monotonic() - flight.started)
        if stream:
            return await self._stream(flight, upstream, payload, wants_usage, wants_continuous, cache_key)
        return await self._whole(flight, upstream, payload, cache_key)

    @staticmethod
    def _limits_tokens(caller: Caller) -> bool:
        """Whether a token limit (per minute or per month, the tenant's or the key's) applies to the caller."""
        tenant = caller.tenant
        return bool(tenant.tpm or tenant.monthly_tokens or caller.key_limits.get("tpm"))

    @staticmethod
    def _choices(body: dict[str, Any]) -> int:
        n = body.get("n", 1)
        return n if isinstance(n, int) and n >= 1 else 1

    @staticmethod
    def _requested_max_tokens(body: dict[str, Any]) -> int | None:
        for name in ("max_completion_tokens", "max_tokens"):
            value = body.get(name)
            if value is not None:
                return value
        return None

    def _completion_wanted(self, body: dict[str, Any], endpoint: str, longest_prompt: int, max_model_len: int) -> int:
        requested = self._requested_max_tokens(body)
        if requested is None:
            requested = self.settings.default_max_tokens.get(endpoint)
        room = max(max_model_len - longest_prompt, 0)
        if requested is None:
            return max(min(self.settings.max_tokens_cap, room), 0)
        if not isinstance(requested, int) or isinstance(requested, bool) or requested < 0:
            raise errors.bad_request("max_tokens must be a non-negative integer")
        return min(requested, self.settings.max_tokens_cap, room) if room else requested

    @staticmethod
    def _with_max_tokens(body: dict[str, Any], per_choice: int) -> dict[str, Any]:
        body = {**body, "max_tokens": per_choice}
        if "max_completion_tokens" in body:
            body["max_completion_tokens"] = per_choice
        return body

    async def _cache_hit(self, flight: Flight, cached: dict[str, Any], stream: bool, wants_usage: bool) -> Response:
        flight.cache_hit = True
        usage = cached.get("usage") or {}
        flight.prompt_tokens = int(usage.get("prompt_tokens", 0))
        flight.completion_tokens = int(usage.get("completion_tokens", 0))
        flight.cached_tokens = flight.prompt_tokens + flight.completion_tokens
        # Counted against requests per minute and concurrency, not tokens (none were generated).
        flight.reservation = await self.admit(flight, 0, 0, 1)
        await self._finish(flight)
        if stream:
            return StreamingResponse(iter(response_cache.replay_stream(cached, flight.request_id, wants_usage)),
                                     media_type="text/event-stream",
                                     headers={"X-Request-Id": flight.request_id, "X-Cache": "hit"})
        return _json_response(response_cache.replay(cached, flight.request_id), flight.request_id,
                              headers={"X-Cache": "hit"})

    async def _whole(self, flight: Flight, upstream: Upstream, body: dict[str, Any] | bytes,
                     cache_key: str | None) -> Response:
        assert flight.caller is not None
        try:
            try:
                response = await upstream.post(_PATHS[flight.endpoint], body, flight.request_id)
            except UpstreamUnreachable as exc:
                metrics.UPSTREAM_ERRORS.labels(upstream.name, upstream.version).inc()
                raise errors.upstream_failed(f"The model `{upstream.name}` could not be reached.") from exc
            flight.ttft_ms = (time.monotonic() - flight.started) * 1000
            if response.status != 200:
                flight.status = response.status
                flight.prompt_tokens = 0  # nothing was generated; the reservation is refunded
                retry = {"Retry-After": response.headers["retry-after"]} if "retry-after" in response.headers else {}
                return Response(response.body, status_code=response.status, media_type="application/json",
                                headers={"X-Request-Id": flight.request_id, **retry})
            data = response.json()
            usage = data.get("usage") or {}
            flight.prompt_tokens = int(usage.get("prompt_tokens", flight.prompt_tokens))
            flight.completion_tokens = int(usage.get("completion_tokens", 0))
            flight.cached_tokens = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
            filtered = False
            for choice in data.get("choices") or []:
                text = _choice_texts({"choices": [choice]}).get(choice.get("index", 0), "")
                if await self.blocked_category(flight.caller, text, "output"):
                    filtered = True
                    choice["finish_reason"] = "content_filter"
                    if "message" in choice:
                        choice["message"] = {"role": "assistant", "content": None}
                    else:
                        choice["text"] = ""
            reasons = [c.get("finish_reason") for c in data.get("choices") or []]
            flight.finish_reason = reasons[0] if reasons else None
            if cache_key and not filtered:
                await self.cache.put(cache_key, data)
                metrics.CACHE.labels("store").inc()
            if filtered:
                return _json_response(data, flight.request_id, headers=self._rate_headers(flight))
            # Unchanged: the upstream's own bytes, not a second serialisation of what was just parsed.
            return Response(response.body, media_type="application/json",
                            headers={"X-Request-Id": flight.request_id, **self._rate_headers(flight)})
        except errors.GatewayError as error:
            flight.status = error.status
            raise
        finally:
            # Settling and recording happen after the answer is sent: the client never waits on them.
            self.finish_later(flight)

    async def _stream(self, flight: Flight, upstream: Upstream, body: dict[str, Any] | bytes, wants_usage: bool,
                      wants_continuous: bool, cache_key: str | None) -> Response:
        try:
            response = await upstream.stream(_PATHS[flight.endpoint], body, flight.request_id)
        except UpstreamUnreachable as exc:
            metrics.UPSTREAM_ERRORS.labels(upstream.name, upstream.version).inc()
            flight.prompt_tokens = 0
            raise errors.upstream_failed(f"The model `{upstream.name}` could not be reached.") from exc
        if response.status != 200:
            content = await response.read()
            await response.close()
            flight.status = response.status
            flight.prompt_tokens = 0
            await self._finish(flight)
            return Response(content, status_code=response.status, media_type="application/json",
                            headers={"X-Request-Id": flight.request_id})
        relay = StreamRelay(self, flight, response, wants_usage, wants_continuous, cache_key)
        return StreamingResponse(relay.events(), media_type="text/event-stream",
                                 headers={"X-Request-Id": flight.request_id, "Cache-Control": "no-cache",
                                          **self._rate_headers(flight)})

    # ---- other routes -----------------------------------------------------------------------

    async def models(self, request: Request) -> Response:
        try:
            caller = await self.authenticate(request)
        except errors.GatewayError as error:
            return error.response()
        data = [{"id": name, "object": "model", "created": up.created, "owned_by": "inferforge"}
                for name, up in sorted(self.upstreams.items()) if name in caller.tenant.models]
        return JSONResponse({"object": "list", "data": data})

    async def health(self, request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(self, request: Request) -> Response:
        return JSONResponse({"status": "ready", "models": sorted(self.upstreams)})

    async def metrics_route(self, request: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    async def not_found(self, request: Request) -> Response:
        try:
            await self.authenticate(request)
        except errors.GatewayError as error:
            return error.response()
        return errors.GatewayError(404, f"No route {errors.clip(request.url.path)}.", "invalid_request_error",
                                   "not_found").response()


_PATHS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
ENDPOINTS_ACTION = {"chat": "chat.completions", "completions": "completions"}


def create_app(gateway: Gateway, on_startup: list[Callable[[], Awaitable[None]]] | None = None,
               on_shutdown: list[Callable[[], Awaitable[None]]] | None = None) -> Starlette:
    routes = [
        Route("/v1/chat/completions", gateway.proxy, methods=["POST"]),
        Route("/v1/completions", gateway.proxy, methods=["POST"]),
        Route("/v1/models", gateway.models, methods=["GET"]),
        Route("/health", gateway.health, methods=["GET"]),
        Route("/ready", gateway.ready, methods=["GET"]),
        Route("/metrics", gateway.metrics_route, methods=["GET"]),
    ]

    async def not_found(request: Request, exc: Exception) -> Response:
        return await gateway.not_found(request)

    async def internal_error(request: Request, exc: Exception) -> Response:
        # The one place an unexpected failure becomes a response: OpenAI-shaped, no details leaked.
        log.exception("unhandled error on %s", request.url.path)
        return errors.GatewayError(500, "The gateway failed to process the request.", "server_error",
                                   "internal_error").response()

    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        for hook in on_startup or []:
            await hook()
        yield
        for hook in on_shutdown or []:
            await hook()

    return Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found, Exception: internal_error},
                     lifespan=asynccontextmanager(lifespan))
