"""The gateway end to end, for real: two `python -m gateway serve` replicas in front of the real
inference server on the tiny model, with real Redis and PostgreSQL on 127.0.0.1, called by the
stock OpenAI SDK and by httpx."""

from __future__ import annotations

import asyncio
import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import openai
import psycopg
import pytest
import redis

from tests.gateway.conftest import MODEL, Replica, cli, create_key, create_tenant
from tests.gateway.jwks import APP_ID, AUDIENCE, OTHER_TENANT_ID, TENANT_ID, Issuer
from tests.gateway.services import RedisServer, free_port

pytestmark = pytest.mark.slow

CHAT = [{"role": "user", "content": "Tell me about tensor parallelism"}]


def sdk(replica: Replica, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{replica.url}/v1", api_key=key, max_retries=0, timeout=60)


def post(replica: Replica, key: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{replica.url}{path}", json=body, timeout=60,
                      headers={"Authorization": f"Bearer {key}", **headers})


def usage_rows(database: str, wait_for: int = 1, timeout: float = 10) -> list[dict[str, Any]]:
    """The usage records, once at least `wait_for` have been flushed (writes are batched)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            rows = cur.execute("SELECT * FROM usage_records ORDER BY created_at").fetchall()
        if len(rows) >= wait_for or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


def audit_rows(database: str, until: Any = None, timeout: float = 10) -> list[dict[str, Any]]:
    """The audit events, once `until(events)` holds (writes are batched)."""
    deadline = time.monotonic() + timeout
    while True:
        with psycopg.connect(database) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
            events = cur.execute("SELECT * FROM audit_events ORDER BY created_at").fetchall()
        if until is None or until(events) or time.monotonic() > deadline:
            return events
        time.sleep(0.1)


def denials(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["decision"] == "deny"]


@pytest.fixture()
def team(database: str) -> str:
    create_tenant(database, "team-a", "--rpm", "1000", "--tpm", "1000000")
    return create_key(database, "team-a")


@pytest.fixture()
def replicas(database: str, redis_url: str, start_gateway: Any) -> list[Replica]:
    return [start_gateway(database, redis_url), start_gateway(database, redis_url)]


# ---- the proxied API ------------------------------------------------------------------------------


def test_stock_client_gets_chat_completions_and_streams_through_the_gateway(
        database: str, team: str, replicas: list[Replica], model_server: str) -> None:
    client = sdk(replicas[0], team)
    whole = client.chat.completions.create(model=MODEL, messages=CHAT, max_tokens=6, temperature=0)
    direct = httpx.post(f"{model_server}/v1/chat/completions", timeout=60,
                        json={"model": MODEL, "messages": CHAT, "max_tokens": 6, "temperature": 0},
                        headers={"Authorization": f"Bearer {'u' * 40}"}).json()
    assert whole.choices[0].message.content == direct["choices"][0]["message"]["content"]
    chunks = list(sdk(replicas[1], team).chat.completions.create(
        model=MODEL, messages=CHAT, max_tokens=6, temperature=0, stream=True, stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == whole.usage.total_tokens
    # Only the usage chunk the client asked for: the upstream's per-chunk counts are stripped.
    assert all(c.usage is None for c in chunks[:-1])
    completion = client.completions.create(model=MODEL, prompt="Hello", max_tokens=4, temperature=0)
    assert completion.usage.completion_tokens == 4
    rows = usage_rows(database, 3)
    assert [(r["endpoint"], r["completion_tokens"], r["status"]) for r in rows] == [
        ("chat", whole.usage.completion_tokens, 200), ("chat", whole.usage.completion_tokens, 200),
        ("completions", 4, 200)]
    assert rows[0]["prompt_tokens"] == whole.usage.prompt_tokens
    assert all(r["tenant"] == "team-a" and r["principal"].startswith("key:") for r in rows)
    assert all(r["ttft_ms"] is not None and r["latency_ms"] >= r["ttft_ms"] for r in rows)


def test_a_canary_gets_its_share_and_each_answer_names_the_version_that_served_it(
        database: str, redis_url: str, team: str, start_gateway: Any, model_server: str) -> None:
    # Two versions of the model (the same server twice: what counts here is the gateway's routing).
    replica = start_gateway(database, redis_url, upstreams=[
        f"{MODEL}={model_server}@50:stable", f"{MODEL}={model_server}/@50:canary"])
    seen = []
    for stream in (False, True) * 6:
        answer = post(replica, team, "/v1/chat/completions", {"model": MODEL, "messages": CHAT, "max_tokens": 2,
                                                              "stream": stream})
        assert answer.status_code == 200
        seen.append(answer.headers["x-inferforge-model-version"])
    assert set(seen) == {"stable", "canary"}
    def counted(version: str) -> float:
        prefix = f'inferforge_gateway_upstream_requests_total{{model="{MODEL}",status="200",version="{version}"}}'
        lines = [line for line in exposition.splitlines() if line.startswith(prefix)]
        return float(lines[0].split()[-1]) if lines else 0.0

    deadline = time.monotonic() + 10  # recorded after each answer is sent
    while True:
        exposition = httpx.get(f"{replica.url}/metrics").text
        if [counted("stable"), counted("canary")] == [seen.count("stable"), seen.count("canary")] \
                or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert [counted("stable"), counted("canary")] == [seen.count("stable"), seen.count("canary")]
    for version in ("stable", "canary"):
        assert f'inferforge_gateway_upstream_latency_seconds_count{{model="{MODEL}",version="{version}"}}' \
            in exposition


def test_models_lists_only_what_the_tenant_may_call_and_others_are_404(database: str, team: str,
                                                                          replicas: list[Replica]) -> None:
    create_tenant(database, "team-b", models="other-model")
    other = create_key(database, "team-b")
    assert [m.id for m in sdk(replicas[0], team).models.list()] == [MODEL]
    assert [m.id for m in sdk(replicas[0], other).models.list()] == []
    for key, model in ((other, MODEL), (team, "not-served")):
        with pytest.raises(openai.NotFoundError) as err:
            sdk(replicas[0], key).chat.completions.create(model=model, messages=CHAT, max_tokens=2)
        assert err.value.body["code"] == "model_not_found"
    missing = post(replicas[0], team, "/v1/chat/completions", {"messages": CHAT})
    assert missing.status_code == 400 and missing.json()["error"]["code"] == "model_required"


def test_credentials_are_checked_on_every_route_but_the_probes(team: str, replicas: list[Replica]) -> None:
    gw = replicas[0]
    for path in ("/health", "/ready", "/metrics"):
        assert httpx.get(f"{gw.url}{path}").status_code == 200
    wrong_last = "B" if team.endswith("A") else "A"  # one character off: the right id, a wrong secret
    for headers in ({}, {"Authorization": "Bearer ifg_000000000000_" + "x" * 43}, {"Authorization": "Basic abc"},
                    {"Authorization": f"Bearer {team[:-1]}{wrong_last}"}, {"Authorization": "Bearer not-a-key"}):
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("GET", "/v1/unknown")):
            response = httpx.request(method, f"{gw.url}{path}", headers=headers, json={})
            assert response.status_code == 401, (headers, path)
            assert response.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(f"{gw.url}/v1/unknown", headers={"Authorization": f"Bearer {team}"}).status_code == 404


def test_bad_requests_get_a_400_naming_the_problem(team: str, replicas: list[Replica]) -> None:
    gw = replicas[0]
    not_json = httpx.post(f"{gw.url}/v1/completions", content=b"{", headers={"Authorization": f"Bearer {team}"})
    assert not_json.status_code == 400 and "JSON" in not_json.json()["error"]["message"]
    bad_field = post(gw, team, "/v1/chat/completions", {"model": MODEL, "messages": "hi"})
    assert bad_field.status_code == 400 and "messages" in bad_field.json()["error"]["message"]
    bad_tokens = post(gw, team, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -1})
    assert bad_tokens.status_code == 400 and "max_tokens" in bad_tokens.json()["error"]["message"]


def test_a_revoked_key_is_refused_on_every_replica_within_a_second(database: str, redis_url: str, team: str,
                                                                    replicas: list[Replica]) -> None:
    for gw in replicas:  # both replicas now hold the key in their lookup cache
        assert post(gw, team, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 1}).status_code == 200
    result = cli("keys", "revoke", team, "--database-url", database, "--redis-url", redis_url)
    assert result.returncode == 0, result.stderr
    revoked_at = time.monotonic()
    for gw in replicas:
        response = post(gw, team, "/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 1})
        assert response.status_code == 401 and "revoked" in response.json()["error"]["message"]
    assert time.monotonic() - revoked_at < 1.0
    assert any(e["action"] == "key.revoke" and e["decision"] == "admin" for e in audit_rows(database))


# ---- limits ---------------------------------------------------------------------------------------


def test_rate_limit_refusals_are_openai_429s_with_retry_after_and_ratelimit_headers(
        database: str, replicas: list[Replica]) -> None:
    create_tenant(database, "small", "--rpm", "2")
    key = create_key(database, "small")
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    first = post(replicas[0], key, "/v1/completions", body)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert post(replicas[1], key, "/v1/completions", body).status_code == 200
    refused = post(replicas[0], key, "/v1/completions", body)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError):
        sdk(replicas[1], key).completions.create(**body)
    denied = denials(audit_rows(database, until=denials))
    assert denied and denied[0]["reason"] == "rpm:tenant" and denied[0]["tenant"] == "small"


def test_two_hundred_concurrent_requests_on_two_replicas_never_overspend_the_budget(
        database: str, redis_url: str, replicas: list[Replica]) -> None:
    budget, max_tokens = 600, 8
    create_tenant(database, "budgeted", "--monthly-tokens", str(budget))
    key = create_key(database, "budgeted")

    async def one(client: httpx.AsyncClient, i: int) -> httpx.Response:
        return await client.post(f"{replicas[i % 2].url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                                 json={"model": MODEL, "prompt": f"request {i}", "max_tokens": max_tokens,
                                       "ignore_eos": True, "stream": i % 3 == 0})

    async def burst() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=200)) as client:
            return await asyncio.gather(*(one(client, i) for i in range(200)))

    responses = asyncio.run(burst())
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 429} and statuses.count(200) >= 10 and statuses.count(429) >= 100
    assert all(r.json()["error"]["code"] == "insufficient_quota" for r in responses if r.status_code == 429)
    rows = usage_rows(database, statuses.count(200))
    spent = sum(r["prompt_tokens"] + r["completion_tokens"] for r in rows)
    assert spent <= budget  # reserved atomically: not even one request over
    assert spent > budget - (max_tokens + 8)  # and the budget was used, not refused early
    month = time.strftime("%Y%m", time.gmtime())
    assert int(redis.Redis.from_url(redis_url).get(f"ifg:{{t:budgeted}}:month:{month}")) == spent


def test_a_stream_is_charged_exactly_and_stops_at_the_budget(database: str, redis_url: str,
                                                           replicas: list[Replica]) -> None:
    prompt = [{"role": "user", "content": "Count"}]
    create_tenant(database, "stream", "--monthly-tokens", "100000")
    key = create_key(database, "stream")
    chunks = list(sdk(replicas[0], key).chat.completions.create(
        model=MODEL, messages=prompt, max_tokens=20, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    usage = chunks[-1].usage
    row = usage_rows(database, 1)[0]
    assert (row["prompt_tokens"], row["completion_tokens"]) == (usage.prompt_tokens, usage.completion_tokens) == \
        (usage.prompt_tokens, 20)
    month = time.strftime("%Y%m", time.gmtime())
    assert int(redis.Redis.from_url(redis_url).get(f"ifg:{{t:stream}}:month:{month}")) == usage.total_tokens
    # A budget with 5 tokens left after the prompt: the stream ends there with finish_reason length.
    cli("tenants", "update", "stream", "--monthly-tokens", str(usage.total_tokens + usage.prompt_tokens + 5),
        "--database-url", database)
    time.sleep(5.5)  # the replicas' tenant cache (5 s) picks the new budget up
    cut = list(sdk(replicas[1], key).chat.completions.create(
        model=MODEL, messages=prompt, max_tokens=20, stream=True, stream_options={"include_usage": True},
        extra_body={"ignore_eos": True}))
    assert [c.choices[0].finish_reason for c in cut if c.choices][-1] == "length"
    assert cut[-1].usage.completion_tokens == 5
    refused = post(replicas[0], key, "/v1/chat/completions", {"model": MODEL, "messages": prompt, "max_tokens": 5})
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "insufficient_quota"


def test_a_client_that_disconnects_mid_stream_is_charged_what_was_generated(database: str, redis_url: str,
                                                                             replicas: list[Replica]) -> None:
    create_tenant(database, "leaver")
    key = create_key(database, "leaver")
    seen = 0
    with httpx.stream("POST", f"{replicas[0].url}/v1/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": MODEL, "prompt": "Go on", "max_tokens": 200, "ignore_eos": True,
                            "stream": True}, timeout=60) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                seen += 1
                if seen == 3:
                    break  # leave without reading the rest
    row = usage_rows(database, 1)[0]
    assert row["completion_tokens"] >= 3
    month = time.strftime("%Y%m", time.gmtime())
    charged = int(redis.Redis.from_url(redis_url).get(f"ifg:{{t:leaver}}:month:{month}"))
    assert charged == row["prompt_tokens"] + row["completion_tokens"]
    if row["completion_tokens"] < 200:
        assert row["status"] == 499  # it left before the end


# ---- identity: Entra tokens -----------------------------------------------------------------------


@pytest.fixture()
def issuer() -> Iterator[Issuer]:
    entra = Issuer()
    entra.add_key("k1")
    yield entra
    entra.close()


def test_entra_tokens_are_checked_for_signature_algorithm_issuer_audience_expiry_and_tenant(
        database: str, redis_url: str, start_gateway: Any, issuer: Issuer) -> None:
    create_tenant(database, "entra-team", "--entra-app-ids", APP_ID)
    gw = start_gateway(database, redis_url, "--entra-tenant-id", TENANT_ID, "--entra-audience", AUDIENCE,
                       "--entra-jwks-url", issuer.url)
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    assert post(gw, issuer.token(), "/v1/completions", body).status_code == 200
    now = int(time.time())
    header, payload, _ = issuer.token().split(".")
    refused = {
        "expired": issuer.token(exp=now - 3600, iat=now - 7200, nbf=now - 7200),
        "wrong audience": issuer.token(aud="api://someone-else"),
        "wrong tenant": issuer.token(tid=OTHER_TENANT_ID),
        "issuer of another tenant": issuer.token(iss=f"https://login.microsoftonline.com/{OTHER_TENANT_ID}/v2.0"),
        "alg none": jwt.encode(json.loads(jwt.utils.base64url_decode(payload)), None, algorithm="none",
                               headers={"kid": "k1"}),
        "HS256 with the public key": _hs256_confused(issuer),
        "unknown application": issuer.token(azp="bbbbbbbb-bbbb-cccc-dddd-eeeeeeeeeeee"),
        "tampered payload": f"{header}.{payload[:-4]}AAAA.{issuer.token().split('.')[2]}",
    }
    for case, token in refused.items():
        response = post(gw, token, "/v1/completions", body)
        assert response.status_code == 401, case
        assert response.json()["error"]["code"] == "invalid_api_key", case
    rows = usage_rows(database, 1)
    assert rows[0]["principal"] == "entra:00000000-0000-0000-0000-0000000000a1"
    assert rows[0]["tenant"] == "entra-team"


def _hs256_confused(issuer: Issuer) -> str:
    """The classic confusion: an HMAC 'signature' keyed with the RSA public key the JWKS publishes."""
    import base64
    import hashlib
    import hmac

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    payload = b64(json.dumps({"iss": f"https://login.microsoftonline.com/{TENANT_ID}/v2.0", "aud": AUDIENCE,
                              "tid": TENANT_ID, "oid": "x", "azp": APP_ID, "exp": now + 600}).encode())
    signature = hmac.new(issuer.public_pem("k1"), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64(signature)}"


def test_a_rolled_entra_signing_key_is_fetched_on_its_first_unknown_kid(database: str, redis_url: str,
                                                                        start_gateway: Any, issuer: Issuer) -> None:
    create_tenant(database, "entra-team", "--entra-app-ids", APP_ID)
    gw = start_gateway(database, redis_url, "--entra-tenant-id", TENANT_ID, "--entra-audience", AUDIENCE,
                       "--entra-jwks-url", issuer.url, "--entra-jwks-refresh-cooldown", "1")
    body = {"model": MODEL, "prompt": "a", "max_tokens": 1}
    assert post(gw, issuer.token("k1"), "/v1/completions", body).status_code == 200
    issuer.add_key("k2")  # Entra publishes a new key and starts signing with it
    time.sleep(1.1)  # past the refresh cooldown
    fetches = issuer.fetches
    assert post(gw, issuer.token("k2"), "/v1/completions", body).status_code == 200
    assert issuer.fetches == fetches + 1
    # Keys nobody published are refused, and a burst of them costs at most one more fetch.
    for kid in ("k3", "k4", "k5", "k6"):
        issuer.add_key(kid, publish=False)
        assert post(gw, issuer.token(kid), "/v1/completions", body).status_code == 401
    assert issuer.fetches <= fetches + 2


# ---- privacy ----------------------------------------------------------------------------------------


def test_prompts_appear_in_no_table_and_no_redis_key_or_value(database: str, redis_url: str, start_gateway: Any,
                                                              tmp_path: Any) -> None:
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"rules": [{"category": "Violence", "pattern": "forbidden-word", "severity": 6}]}))
    gw = start_gateway(database, redis_url, "--safety", "local", "--safety-rules", str(rules))
    create_tenant(database, "private", "--cache", "--rpm", "100", "--tpm", "100000", "--monthly-tokens", "1000000")
    key = create_key(database, "private")
    canaries = [f"canary{secrets.token_hex(8)}" for _ in range(6)]
    client = sdk(gw, key)
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": canaries[0]}], max_tokens=3,
                                   temperature=0)
    list(client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": canaries[1]}],
                                        max_tokens=3, temperature=0, stream=True))
    client.completions.create(model=MODEL, prompt=f"{canaries[2]} more", max_tokens=3, seed=1)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=f"{canaries[3]} forbidden-word", max_tokens=3)
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model=MODEL, prompt=canaries[4], max_tokens=3, suffix="!")  # the server refuses it
    client.completions.create(model=MODEL, prompt=canaries[5], max_tokens=3, temperature=0)  # cached now
    client.completions.create(model=MODEL, prompt=canaries[5], max_tokens=3, temperature=0)  # a hit
    # Six admitted requests (the blocked prompt never was): the last one, the cache hit, must be flushed too.
    rows = usage_rows(database, 6)
    assert len(rows) == 6 and sum(r["cache_hit"] for r in rows) == 1
    dump = _database_text(database) + _redis_text(redis_url)
    assert len(dump) > 1000  # the dump really holds the records
    for canary in canaries:
        assert canary not in dump


def _database_text(database: str) -> str:
    with psycopg.connect(database) as conn:
        tables = [r[0] for r in conn.execute(
            "SELECT format('%I.%I', schemaname, tablename) FROM pg_tables WHERE schemaname = 'public'")]
        return "\n".join(str(row) for table in tables for row in conn.execute(f"SELECT t::text FROM {table} t"))


def _redis_text(url: str) -> str:
    client = redis.Redis.from_url(url)
    out = []
    for key in client.scan_iter("*"):
        kind = client.type(key).decode()
        if kind == "string":
            value: Any = client.get(key)
        elif kind == "zset":
            value = client.zrange(key, 0, -1)
        else:
            raise AssertionError(f"the gateway writes strings and sorted sets only, found a {kind} at {key!r}")
        out.append(f"{key!r} {value!r}")
    return "\n".join(out)


# ---- Redis outage ---------------------------------------------------------------------------------


def test_redis_down_gives_each_tenant_its_fail_mode_and_the_gateway_recovers_by_itself(
        database: str, start_gateway: Any) -> None:
    own = RedisServer(free_port()).start()
    try:
        gw = start_gateway(database, own.url)
        create_tenant(database, "closed", "--rpm", "100")
        create_tenant(database, "open", "--rpm", "100", "--fail-open")
        closed, opened = create_key(database, "closed"), create_key(database, "open")
        body = {"model": MODEL, "prompt": "a", "max_tokens": 2}
        assert post(gw, closed, "/v1/completions", body).status_code == 200
        own.stop()
        down = post(gw, closed, "/v1/completions", body)
        assert down.status_code == 503 and down.json()["error"]["code"] == "limits_unavailable"
        assert down.headers["retry-after"] == "1"
        assert post(gw, opened, "/v1/completions", body).status_code == 200
        metrics = httpx.get(f"{gw.url}/metrics").text
        assert "inferforge_gateway_redis_up 0.0" in metrics
        assert 'inferforge_gateway_admitted_without_limits_total{tenant="open"} 1.0' in metrics
        own.start()  # same port: the gateway reconnects on its next call
        assert post(gw, closed, "/v1/completions", body).status_code == 200
        assert "inferforge_gateway_redis_up 1.0" in httpx.get(f"{gw.url}/metrics").text
    finally:
        own.stop()


# ---- response cache ---------------------------------------------------------------------------------


def test_the_response_cache_answers_deterministic_repeats_per_tenant_and_replays_streams(
        database: str, replicas: list[Replica]) -> None:
    create_tenant(database, "cached", "--cache")
    create_tenant(database, "uncached")
    cached, other = create_key(database, "cached"), create_key(database, "uncached")
    body = {"model": MODEL, "messages": CHAT, "max_tokens": 5, "temperature": 0}
    first = post(replicas[0], cached, "/v1/chat/completions", body)
    assert "x-cache" not in first.headers
    hit = post(replicas[1], cached, "/v1/chat/completions", body)  # the cache is shared by the replicas
    assert hit.headers["x-cache"] == "hit"
    assert hit.json()["choices"] == first.json()["choices"] and hit.json()["id"] != first.json()["id"]
    streamed = list(sdk(replicas[0], cached).chat.completions.create(**body, stream=True,
                                                                        stream_options={"include_usage": True}))
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == \
        first.json()["choices"][0]["message"]["content"]
    assert streamed[-1].usage.completion_tokens == first.json()["usage"]["completion_tokens"]
    assert "x-cache" not in post(replicas[0], other, "/v1/chat/completions", body).headers  # another tenant
    no_store = post(replicas[0], cached, "/v1/chat/completions", body, **{"Cache-Control": "no-store"})
    assert "x-cache" not in no_store.headers
    sampled = {**body, "temperature": 1.0}
    post(replicas[0], cached, "/v1/chat/completions", sampled)
    assert "x-cache" not in post(replicas[0], cached, "/v1/chat/completions", sampled).headers
    changed = post(replicas[0], cached, "/v1/chat/completions", {**body, "max_tokens": 4})
    assert "x-cache" not in changed.headers
    rows = usage_rows(database, 8)  # eight requests, every one admitted
    assert len(rows) == 8
    hits = [r for r in rows if r["cache_hit"]]
    assert len(hits) == 2 and all(r["cached_tokens"] == r["prompt_tokens"] + r["completion_tokens"] for r in hits)


# ---- content safety ----------------------------------------------------------------------------------


def test_local_content_rules_block_prompts_with_a_400_and_output_with_content_filter(
        database: str, redis_url: str, start_gateway: Any, tmp_path: Any) -> None:
    rules = tmp_path / "rules.json"
    # The tiny model writes letters; prompts of digits only pass the rule, its output does not.
    rules.write_text(json.dumps({"rules": [{"category": "Violence", "pattern": "[a-z]{2}", "severity": 6},
                                           {"category": "Hate", "pattern": "[0-9]{3}", "severity": 2}]}))
    gw = start_gateway(database, redis_url, "--safety", "local", "--safety-rules", str(rules))
    create_tenant(database, "safe")
    key = create_key(database, "safe")
    client = sdk(gw, key)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "attack now"}],
                                       max_tokens=4)
    assert err.value.body["code"] == "content_filter" and "Violence" in err.value.body["message"]
    digits = [{"role": "user", "content": "12 34 56"}]
    whole = client.chat.completions.create(model=MODEL, messages=digits, max_tokens=12, temperature=0,
                                           extra_body={"ignore_eos": True})
    assert whole.choices[0].finish_reason == "content_filter" and whole.choices[0].message.content is None
    chunks = list(client.chat.completions.create(model=MODEL, messages=digits, max_tokens=12, temperature=0,
                                                 stream=True, extra_body={"ignore_eos": True}))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"
    # Below the tenant's threshold (default 4), the milder category passes.
    assert post(gw, key, "/v1/completions", {"model": MODEL, "prompt": "999 1", "max_tokens": 1}).status_code == 200
    denied = [e["reason"] for e in denials(audit_rows(database, until=denials))]
    assert "content_filter:prompt:Violence" in denied


def test_without_token_limits_usage_is_still_charged_exactly_and_max_tokens_capped(
        database: str, redis_url: str, start_gateway: Any) -> None:
    # No token limit: admission reserves nothing (no prompt count), settlement still charges the real usage.
    gw = start_gateway(database, redis_url, "--max-tokens-cap", "5")
    create_tenant(database, "requests-only", "--rpm", "100")
    key = create_key(database, "requests-only")
    whole = sdk(gw, key).completions.create(model=MODEL, prompt="Hello there", max_tokens=50,
                                             extra_body={"ignore_eos": True})
    assert whole.usage.completion_tokens == 5  # the cap still applies
    chunks = list(sdk(gw, key).chat.completions.create(model=MODEL, messages=CHAT, max_tokens=4, stream=True,
                                                       stream_options={"include_usage": True},
                                                       extra_body={"ignore_eos": True}))
    rows = usage_rows(database, 2)
    assert [(r["prompt_tokens"], r["completion_tokens"]) for r in rows] == [
        (whole.usage.prompt_tokens, 5), (chunks[-1].usage.prompt_tokens, 4)]
    month = time.strftime("%Y%m", time.gmtime())
    assert int(redis.Redis.from_url(redis_url).get(f"ifg:{{t:requests-only}}:month:{month}")) == sum(
        r["prompt_tokens"] + r["completion_tokens"] for r in rows)
