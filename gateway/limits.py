"""Exact, atomic limits across replicas: one Redis Lua call admits a request, one settles it.

Admission reserves the request's exact prompt tokens plus the completion tokens it may produce
(`max_tokens` x choices, capped) against every limit of every scope (the tenant's, and the API key's
where it has its own) in one script, so concurrent requests on any number of replicas can never
reserve past a limit together (the failure LiteLLM users report as budgets overrun by concurrency).
A monthly budget does not refuse a request it can partly serve: the completion allowance is cut to
what is left, the gateway lowers `max_tokens` to it, and the model stops the stream at the budget
with `finish_reason: "length"`. Settlement replaces the reservation with the real usage (refunding
what was not generated) and frees the concurrency slot.

Windows: requests and tokens per minute count in fixed one-minute windows (keys expire after);
concurrency is a sorted set of request leases that expire (a replica that dies cannot leak slots
for longer than the lease); the month is a counter per calendar month (UTC). Every key of a tenant
carries the hash tag `{t:<tenant>}`, so the script's keys share one slot on a clustered Redis.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.credentials import CredentialProvider
from redis.exceptions import RedisError

from .model import Caller

WINDOW_MS = 60_000
LEASE_MS = 15 * 60_000  # longer than any request the gateway lets run (the upstream timeout)
MONTH_TTL_S = 40 * 86_400

_ADMIT = """
local now = tonumber(ARGV[1])
local prompt = tonumber(ARGV[3])
local allow = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local reset_ms = tonumber(ARGV[6])
local lease = tonumber(ARGV[7])
local month_ttl = tonumber(ARGV[8])
if redis.call('EXISTS', KEYS[1]) == 1 then return {'revoked', 0, 0, 0, 0} end
local scopes = (#KEYS - 1) / 4
local function limits(i)
  local a = 9 + i * 4
  return tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
end
-- Pass 1: the monthly budgets cut the completion allowance (or refuse when not one token is left).
for i = 0, scopes - 1 do
  local rpm, tpm, conc, monthly = limits(i)
  if monthly > 0 then
    local used = tonumber(redis.call('GET', KEYS[2 + i * 4 + 3]) or '0')
    local left = monthly - used - prompt
    if left < n then return {'budget', i, 0, monthly, math.max(monthly - used, 0)} end
    if allow > left then allow = left - (left % n) end
  end
end
local reserve = prompt + allow
-- Pass 2: rates and concurrency, with the final reservation.
local remaining_requests, remaining_tokens = -1, -1
for i = 0, scopes - 1 do
  local k = 2 + i * 4
  local rpm, tpm, conc, monthly = limits(i)
  if rpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[k]) or '0')
    if used + 1 > rpm then return {'rpm', i, reset_ms, rpm, 0} end
    if i == 0 then remaining_requests = rpm - used - 1 end
  end
  if conc > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 2], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 2]) >= conc then return {'concurrency', i, 1000, conc, 0} end
  end
  if tpm > 0 then
    local used = tonumber(redis.call('GET', KEYS[k + 1]) or '0')
    if used + reserve > tpm then return {'tpm', i, reset_ms, tpm, math.max(tpm - used, 0)} end
    if i == 0 then remaining_tokens = tpm - used - reserve end
  end
end
-- Pass 3: reserve everywhere (the month is always counted for the tenant, so a budget set
-- mid-month starts from the real figure).
for i = 0, scopes - 1 do
  local k = 2 + i * 4
  local rpm, tpm, conc, monthly = limits(i)
  if rpm > 0 then
    redis.call('INCR', KEYS[k])
    redis.call('PEXPIRE', KEYS[k], reset_ms + 1000)
  end
  if tpm > 0 then
    redis.call('INCRBY', KEYS[k + 1], reserve)
    redis.call('PEXPIRE', KEYS[k + 1], reset_ms + 1000)
  end
  if conc > 0 then
    redis.call('ZADD', KEYS[k + 2], now + lease, ARGV[2])
    redis.call('PEXPIRE', KEYS[k + 2], lease)
  end
  if monthly >= 0 and i == 0 then
    redis.call('INCRBY', KEYS[k + 3], reserve)
    redis.call('EXPIRE', KEYS[k + 3], month_ttl)
  end
end
return {'ok', allow, reserve, remaining_requests, remaining_tokens}
"""

_SETTLE = """
local delta = tonumber(ARGV[2])
local scopes = #KEYS / 4
for i = 0, scopes - 1 do
  local k = 1 + i * 4
  if delta ~= 0 then
    if redis.call('EXISTS', KEYS[k + 1]) == 1 then redis.call('INCRBY', KEYS[k + 1], delta) end
    if redis.call('EXISTS', KEYS[k + 3]) == 1 then redis.call('INCRBY', KEYS[k + 3], delta) end
  end
  redis.call('ZREM', KEYS[k + 2], ARGV[1])
end
return 1
"""


REDIS_CONNECTIONS = 64


def connect(url: str, timeout_s: float, credentials: CredentialProvider | None = None) -> aioredis.Redis:
    """A client whose pool waits for a free connection (up to the timeout) rather than failing at
    its size: under a burst, requests queue for Redis instead of being refused. `credentials`
    signs each new connection in (Entra tokens on Azure Managed Redis, gateway/azure_auth.py)."""
    extra: dict[str, Any] = {"credential_provider": credentials} if credentials is not None else {}
    pool = aioredis.BlockingConnectionPool.from_url(url, max_connections=REDIS_CONNECTIONS, timeout=timeout_s,
                                                    socket_connect_timeout=timeout_s, socket_timeout=timeout_s,
                                                    **extra)
    return aioredis.Redis(connection_pool=pool)


class LimiterUnavailable(Exception):
    """Redis could not be reached or answered with an error."""


@dataclass(frozen=True)
class Refusal:
    """Why a request was refused: which limit, its value, and when to retry."""

    reason: str  # revoked | rpm | tpm | concurrency | budget
    scope: str  # tenant | key
    limit: int
    remaining: int
    retry_after_ms: int


@dataclass
class Reservation:
    """An admitted request's hold on the counters, settled exactly once."""

    request_id: str
    keys: list[str]
    prompt_tokens: int
    completion_allowance: int  # all choices together
    reserved: int
    remaining_requests: int = -1
    remaining_tokens: int = -1
    reset_ms: int = 0
    enforced: bool = True  # False when admitted open while Redis was down
    settled: bool = field(default=False, repr=False)


def tenant_tag(tenant: str) -> str:
    return f"ifg:{{t:{tenant}}}"


def revoked_key(tenant: str, key_id: str) -> str:
    return f"{tenant_tag(tenant)}:revoked:{key_id}"


def month_id(now_s: float) -> str:
    return time.strftime("%Y%m", time.gmtime(now_s))


class Limiter:
    """Admission and settlement against Redis; every failure of Redis is a LimiterUnavailable."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self._admit = client.register_script(_ADMIT)
        self._settle = client.register_script(_SETTLE)

    def _scopes(self, caller: Caller, minute: int, month: str) -> tuple[list[str], list[int]]:
        tag, tenant = tenant_tag(caller.tenant.name), caller.tenant
        keys = [f"{tag}:rpm:t:{minute}", f"{tag}:tpm:t:{minute}", f"{tag}:conc:t", f"{tag}:month:{month}"]
        limits = [tenant.rpm, tenant.tpm, tenant.max_concurrent, tenant.monthly_tokens]
        key_rpm, key_tpm = caller.key_limits.get("rpm", 0), caller.key_limits.get("tpm", 0)
        if caller.key_id and (key_rpm or key_tpm):
            scope = f"k:{caller.key_id}"
            keys += [f"{tag}:rpm:{scope}:{minute}", f"{tag}:tpm:{scope}:{minute}", f"{tag}:conc:{scope}",
                     f"{tag}:month:{scope}:{month}"]
            limits += [key_rpm, key_tpm, 0, -1]
        return keys, limits

    async def admit(self, caller: Caller, request_id: str, prompt_tokens: int, completion_wanted: int,
                    choices: int = 1, now_s: float | None = None) -> Reservation | Refusal:
        now_s = time.time() if now_s is None else now_s
        now_ms = int(now_s * 1000)
        minute = now_ms // WINDOW_MS
        reset_ms = (minute + 1) * WINDOW_MS - now_ms
        keys, limits = self._scopes(caller, minute, month_id(now_s))
        revoked = revoked_key(caller.tenant.name, caller.key_id or "-")
        args = [now_ms, request_id, prompt_tokens, completion_wanted, max(choices, 1), reset_ms, LEASE_MS,
                MONTH_TTL_S, *limits]
        try:
            result = await self._admit(keys=[revoked, *keys], args=args)
        except RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc
        verdict = result[0].decode() if isinstance(result[0], bytes) else result[0]
        if verdict != "ok":
            scope = "tenant" if int(result[1]) == 0 else "key"
            return Refusal(verdict, scope, int(result[3]), int(result[4]), int(result[2]))
        return Reservation(request_id, keys, prompt_tokens, int(result[1]), int(result[2]),
                           int(result[3]), int(result[4]), reset_ms)

    async def settle(self, reservation: Reservation, used_tokens: int) -> None:
        """Replace the reservation by the real usage (prompt + completion) and free the slot."""
        if reservation.settled or not reservation.enforced:
            return
        reservation.settled = True
        try:
            await self._settle(keys=reservation.keys, args=[reservation.request_id, used_tokens - reservation.reserved])
        except RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc

    async def revoke(self, tenant: str, key_id: str) -> None:
        try:
            await self.redis.set(revoked_key(tenant, key_id), "1")
        except RedisError as exc:
            raise LimiterUnavailable(str(exc)) from exc


def open_reservation(request_id: str, prompt_tokens: int, completion_wanted: int) -> Reservation:
    """What a fail-open tenant gets while Redis is down: nothing counted, nothing to settle."""
    return Reservation(request_id, [], prompt_tokens, completion_wanted, prompt_tokens + completion_wanted,
                       enforced=False)
