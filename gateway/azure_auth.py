"""Entra ID sign-in to the platform's PostgreSQL and Azure Managed Redis, with the pod's workload identity.

Both services run with password and access-key authentication off (the platform's secure default), so
the gateway presents Entra access tokens instead: to PostgreSQL as the password of its Entra role
(checked when a connection opens; the pool retires connections well before a token's hour is up) and
to Redis through an access policy assignment, as the password of the user named by the identity's
object id. Tokens come from DefaultAzureCredential (the federated workload-identity token in AKS),
cached until five minutes before they expire; the blocking token call runs off the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

from redis.credentials import CredentialProvider

POSTGRES_SCOPE = "https://ossrdbms-aad.database.windows.net/.default"
REDIS_SCOPE = "https://redis.azure.com/.default"
REFRESH_BEFORE_EXPIRY_S = 300
# New connections get new tokens; retiring pooled ones this often keeps every connection's sign-in
# younger than any token it used (Entra's access tokens live 60-90 minutes).
CONNECTION_MAX_AGE_S = 30 * 60

TokenSource = Callable[[], Awaitable[str]]


def entra_token_source(scope: str, credential: Any = None) -> TokenSource:
    """Access tokens for `scope` from the given credential (default: DefaultAzureCredential), cached."""
    cached: dict[str, Any] = {"token": "", "expires_on": 0.0}
    lock = asyncio.Lock()

    async def token() -> str:
        async with lock:
            if cached["expires_on"] - REFRESH_BEFORE_EXPIRY_S > time.time():
                return cached["token"]
            nonlocal credential
            if credential is None:
                from azure.identity import DefaultAzureCredential

                credential = DefaultAzureCredential()
            access = await asyncio.to_thread(credential.get_token, scope)
            cached.update(token=access.token, expires_on=float(access.expires_on))
            return access.token

    return token


def postgres_connection_kwargs(token: TokenSource) -> Callable[[], Awaitable[dict[str, Any]]]:
    """psycopg_pool's `kwargs` callable: each new connection signs in with a current token."""

    async def kwargs() -> dict[str, Any]:
        return {"password": await token()}

    return kwargs


class RedisTokenCredentials(CredentialProvider):
    """redis-py credentials: the identity's object id as the user, a current token as the password."""

    def __init__(self, username: str, token: TokenSource) -> None:
        self.username = username
        self.token = token

    def get_credentials(self) -> tuple[str, str]:
        raise RuntimeError("the gateway's Redis client is asynchronous; get_credentials_async is used")

    async def get_credentials_async(self) -> tuple[str, str]:
        return self.username, await self.token()
