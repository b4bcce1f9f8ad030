"""Entra sign-in to PostgreSQL and Redis (gateway/azure_auth.py), proven with servers that check the
password: a PostgreSQL role under scram and a Redis ACL user, whose passwords play the tokens. Only the
token itself (Entra's, for the workload identity) is faked, at its boundary: the credential object."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import psycopg
import pytest
import redis
from psycopg_pool import AsyncConnectionPool, PoolTimeout
from redis.exceptions import AuthenticationError, ResponseError

from gateway.azure_auth import (
    POSTGRES_SCOPE,
    REDIS_SCOPE,
    RedisTokenCredentials,
    entra_token_source,
    postgres_connection_kwargs,
)
from gateway.limits import connect


@dataclass
class AccessToken:
    token: str
    expires_on: int


class Credential:
    """Stands in for DefaultAzureCredential: hands out the tokens it is given, counting calls."""

    def __init__(self, *tokens: str, lifetime_s: int = 3600) -> None:
        self.tokens = list(tokens)
        self.lifetime_s = lifetime_s
        self.scopes: list[str] = []

    def get_token(self, scope: str) -> AccessToken:
        self.scopes.append(scope)
        return AccessToken(self.tokens.pop(0), int(time.time()) + self.lifetime_s)


def test_tokens_are_cached_until_five_minutes_before_they_expire() -> None:
    long_lived = Credential("a", "b")
    source = entra_token_source(POSTGRES_SCOPE, long_lived)
    assert asyncio.run(source()) == "a" and asyncio.run(source()) == "a"
    assert long_lived.scopes == [POSTGRES_SCOPE]
    short_lived = Credential("a", "b", lifetime_s=200)  # inside the refresh margin: fetched again
    source = entra_token_source(REDIS_SCOPE, short_lived)
    assert [asyncio.run(source()), asyncio.run(source())] == ["a", "b"]


def test_the_pool_signs_each_new_postgres_connection_in_with_a_current_token(postgres) -> None:
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute("DROP ROLE IF EXISTS gateway_identity")
        conn.execute("CREATE ROLE gateway_identity LOGIN PASSWORD 'token-1' IN ROLE password_users")
    url = postgres.url.replace("postgres@", "gateway_identity@")

    async def open_with(credential: Credential) -> str:
        pool = AsyncConnectionPool(url, min_size=1, max_size=1, open=False, timeout=5, reconnect_timeout=1,
                                   kwargs=postgres_connection_kwargs(entra_token_source(POSTGRES_SCOPE, credential)))
        try:
            await pool.open(wait=True, timeout=3)
            async with pool.connection() as conn:
                return (await (await conn.execute("SELECT current_user")).fetchone())[0]
        finally:
            await pool.close()

    assert asyncio.run(open_with(Credential("token-1"))) == "gateway_identity"
    with pytest.raises(PoolTimeout):  # a stale token never opens a connection
        asyncio.run(open_with(Credential("stale-token", "stale-token", "stale-token", "stale-token")))
    with pytest.raises(psycopg.OperationalError, match="password"):  # the server really checks it
        psycopg.connect(url, password="wrong", connect_timeout=3)


def test_redis_connections_sign_in_as_the_identity_with_a_current_token(redis_url: str) -> None:
    admin = redis.Redis.from_url(redis_url)
    admin.execute_command("ACL", "SETUSER", "gateway-object-id", "on", ">token-1", "~*", "+@all")
    try:
        async def ping(credential: Credential) -> bool:
            client = connect(redis_url, 2.0, RedisTokenCredentials(
                "gateway-object-id", entra_token_source(REDIS_SCOPE, credential)))
            try:
                await client.set("probe", "1")
                return await client.ping()
            finally:
                await client.aclose()

        assert asyncio.run(ping(Credential("token-1"))) is True
        with pytest.raises((AuthenticationError, ResponseError)):
            asyncio.run(ping(Credential("stale-token")))
    finally:
        admin.execute_command("ACL", "DELUSER", "gateway-object-id")
