"""The Lua admission and settlement against a real Redis: every limit at its boundary, the budget
cut, refunds, key scopes, and concurrent admissions that cannot overspend together."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from gateway.limits import Limiter, LimiterUnavailable, Refusal, Reservation, connect, month_id, tenant_tag
from gateway.model import Caller, Tenant

NOW = 1_796_000_000.0  # a fixed instant 20 s into a minute window


def caller(name: str = "team", key_id: str | None = None, key_limits: dict[str, int] | None = None,
           **limits: int) -> Caller:
    return Caller(Tenant(id=1, name=name, models=("m",), **limits), f"key:{key_id}", key_id, key_limits or {})


def run(coro):
    return asyncio.run(coro)


async def _with_limiter(redis_url: str, body):
    client = connect(redis_url, 5.0)
    try:
        return await body(Limiter(client), client)
    finally:
        await client.aclose()


def test_requests_per_minute_admit_exactly_the_limit_then_refuse_with_the_window_reset(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        who = caller(rpm=3)
        outcomes = [await lim.admit(who, f"r{i}", 5, 5, now_s=NOW) for i in range(4)]
        return outcomes

    outcomes = run(_with_limiter(redis_url, body))
    assert [isinstance(o, Reservation) for o in outcomes] == [True, True, True, False]
    assert [o.remaining_requests for o in outcomes[:3]] == [2, 1, 0]
    refusal = outcomes[3]
    assert isinstance(refusal, Refusal) and (refusal.reason, refusal.scope, refusal.limit) == ("rpm", "tenant", 3)
    assert refusal.retry_after_ms == 40_000  # the rest of the minute


def test_next_minute_window_admits_again(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        who = caller(rpm=1)
        first = await lim.admit(who, "a", 1, 1, now_s=NOW)
        same = await lim.admit(who, "b", 1, 1, now_s=NOW + 39)
        later = await lim.admit(who, "c", 1, 1, now_s=NOW + 41)
        return first, same, later

    first, same, later = run(_with_limiter(redis_url, body))
    assert isinstance(first, Reservation) and isinstance(same, Refusal) and isinstance(later, Reservation)


def test_tokens_per_minute_reserve_prompt_plus_max_tokens_and_settle_refunds_the_unused(redis_url: str) -> None:
    async def body(lim: Limiter, client):
        who = caller(tpm=100)
        first = await lim.admit(who, "a", 30, 30, now_s=NOW)  # reserves 60
        refused = await lim.admit(who, "b", 20, 30, now_s=NOW)  # 60 + 50 > 100
        fits = await lim.admit(who, "c", 10, 30, now_s=NOW)  # 60 + 40 = 100: exactly at the limit
        await lim.settle(first, 30 + 5)  # only 5 of 30 generated: 25 back
        after = await lim.admit(who, "d", 5, 20, now_s=NOW)  # 75 + 25 = 100
        minute = int(NOW * 1000) // 60_000
        used = int(await client.get(f"{tenant_tag('team')}:tpm:t:{minute}"))
        return first, refused, fits, after, used

    first, refused, fits, after, used = run(_with_limiter(redis_url, body))
    assert isinstance(first, Reservation) and first.reserved == 60
    assert isinstance(refused, Refusal) and refused.reason == "tpm" and refused.remaining == 40
    assert isinstance(fits, Reservation) and fits.remaining_tokens == 0
    assert isinstance(after, Reservation)
    assert used == 100


def test_concurrency_slots_free_on_settle_and_expire_with_their_lease(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        who = caller(max_concurrent=2)
        a = await lim.admit(who, "a", 1, 1, now_s=NOW)
        b = await lim.admit(who, "b", 1, 1, now_s=NOW)
        c = await lim.admit(who, "c", 1, 1, now_s=NOW)
        await lim.settle(a, 2)
        d = await lim.admit(who, "d", 1, 1, now_s=NOW)
        # A replica that died never settles: its slot comes back when the lease ends.
        e = await lim.admit(who, "e", 1, 1, now_s=NOW + 15 * 60 + 1)
        return a, b, c, d, e

    a, b, c, d, e = run(_with_limiter(redis_url, body))
    assert isinstance(c, Refusal) and c.reason == "concurrency" and c.limit == 2
    assert isinstance(d, Reservation) and isinstance(e, Reservation)


def test_monthly_budget_cuts_the_allowance_to_what_is_left_then_refuses(redis_url: str) -> None:
    async def body(lim: Limiter, client):
        who = caller(monthly_tokens=100)
        full = await lim.admit(who, "a", 20, 50, now_s=NOW)  # 70 reserved, 30 left
        cut = await lim.admit(who, "b", 10, 50, now_s=NOW)  # 20 left for the completion
        none_left = await lim.admit(who, "c", 1, 5, now_s=NOW)
        month = int(await client.get(f"{tenant_tag('team')}:month:{month_id(NOW)}"))
        return full, cut, none_left, month

    full, cut, none_left, month = run(_with_limiter(redis_url, body))
    assert isinstance(full, Reservation) and full.completion_allowance == 50
    assert isinstance(cut, Reservation) and cut.completion_allowance == 20 and cut.reserved == 30
    assert isinstance(none_left, Refusal) and none_left.reason == "budget" and none_left.remaining == 0
    assert month == 100


def test_budget_cut_keeps_choices_equal(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        return await lim.admit(caller(monthly_tokens=20), "a", 3, 3 * 10, choices=3, now_s=NOW)

    cut = run(_with_limiter(redis_url, body))
    assert isinstance(cut, Reservation) and cut.completion_allowance == 15  # 17 left, 5 per choice


def test_a_budget_with_no_token_per_choice_left_refuses(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        return await lim.admit(caller(monthly_tokens=10), "a", 9, 10, choices=2, now_s=NOW)

    refused = run(_with_limiter(redis_url, body))
    assert isinstance(refused, Refusal) and refused.reason == "budget"


def test_key_scope_limits_apply_beside_the_tenant_limits(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        keyed = caller(key_id="k1", key_limits={"rpm": 1}, rpm=10)
        other = caller(key_id="k2", rpm=10)
        return [await lim.admit(keyed, "a", 1, 1, now_s=NOW), await lim.admit(keyed, "b", 1, 1, now_s=NOW),
                await lim.admit(other, "c", 1, 1, now_s=NOW)]

    a, b, c = run(_with_limiter(redis_url, body))
    assert isinstance(a, Reservation) and isinstance(c, Reservation)
    assert isinstance(b, Refusal) and (b.reason, b.scope) == ("rpm", "key")


def test_revoked_key_marker_refuses_before_any_counter_moves(redis_url: str) -> None:
    async def body(lim: Limiter, client):
        who = caller(key_id="k1", rpm=5)
        await lim.revoke("team", "k1")
        refused = await lim.admit(who, "a", 1, 1, now_s=NOW)
        keys = sorted(k.decode() for k in await client.keys("*"))
        return refused, keys

    refused, keys = run(_with_limiter(redis_url, body))
    assert isinstance(refused, Refusal) and refused.reason == "revoked"
    assert keys == [f"{tenant_tag('team')}:revoked:k1"]


def test_limits_of_other_tenants_are_separate(redis_url: str) -> None:
    async def body(lim: Limiter, _):
        return [await lim.admit(caller("a", rpm=1), "1", 1, 1, now_s=NOW),
                await lim.admit(caller("b", rpm=1), "2", 1, 1, now_s=NOW)]

    assert all(isinstance(o, Reservation) for o in run(_with_limiter(redis_url, body)))


def test_two_hundred_concurrent_admissions_never_reserve_past_the_budget(redis_url: str) -> None:
    async def body(lim: Limiter, client):
        who = caller(monthly_tokens=1000)
        outcomes = await asyncio.gather(*(lim.admit(who, f"r{i}", 7, 16, now_s=NOW) for i in range(200)))
        month = int(await client.get(f"{tenant_tag('team')}:month:{month_id(NOW)}"))
        return outcomes, month

    outcomes, month = run(_with_limiter(redis_url, body))
    admitted = [o for o in outcomes if isinstance(o, Reservation)]
    assert sum(o.reserved for o in admitted) == month <= 1000
    assert 1000 - month < 7 + 1  # what is left cannot hold another prompt and one token
    assert any(o.completion_allowance < 16 for o in admitted)  # the last one was cut to the budget


def test_settlement_is_applied_once(redis_url: str) -> None:
    async def body(lim: Limiter, client):
        who = caller(monthly_tokens=1000)
        res = await lim.admit(who, "a", 10, 10, now_s=NOW)
        await lim.settle(res, 12)
        await lim.settle(res, 12)
        return int(await client.get(f"{tenant_tag('team')}:month:{month_id(NOW)}"))

    assert run(_with_limiter(redis_url, body)) == 12


def test_an_unreachable_redis_is_limiter_unavailable() -> None:
    async def body():
        client = aioredis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
        try:
            await Limiter(client).admit(caller(rpm=1), "a", 1, 1)
        finally:
            await client.aclose()

    with pytest.raises(LimiterUnavailable):
        run(body())
