"""Bearer API keys: where they come from (a local file or Azure Key Vault) and the ASGI middleware.

Key format (file or Key Vault secret value): keys separated by newlines and/or commas; surrounding
whitespace is ignored, and in files blank lines and lines starting with `#` are comments. Each key
must be at least MIN_KEY_LENGTH characters. Several keys allow rotation without downtime: add the
new key, roll clients, remove the old one (the server reads the keys at start, so roll the pods).

Only SHA-256 digests of the keys are kept in memory, and a presented key is compared against every
digest with `hmac.compare_digest`, so neither the comparison time nor the loop position reveals
which bytes (or which key) matched.

The middleware fails closed: every path needs a valid key except the exact public paths
(`/health`, `/ready`, `/metrics`, which probes and Prometheus call without credentials); unknown
paths are checked too, so a new route can never be public by accident.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable
from pathlib import Path
from urllib.parse import urlparse

from starlette.types import ASGIApp, Receive, Scope, Send

from .errors import unauthorized

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
MIN_KEY_LENGTH = 16


class KeyLoadError(Exception):
    """The configured key source could not be read or holds no valid key."""


def parse_keys(text: str, source: str) -> list[str]:
    """Split a key list (newline and/or comma separated, `#` comment lines) and check each key."""
    keys: list[str] = []
    for line in text.splitlines():
        if line.strip().startswith("#"):
            continue
        keys.extend(k.strip() for k in line.split(",") if k.strip())
    if not keys:
        raise KeyLoadError(f"{source} contains no API keys (expected one key per line or comma-separated)")
    short = [i for i, k in enumerate(keys, 1) if len(k) < MIN_KEY_LENGTH]
    if short:
        raise KeyLoadError(
            f"{source}: key(s) number {', '.join(map(str, short))} are shorter than "
            f"{MIN_KEY_LENGTH} characters; use long random keys (e.g. `openssl rand -hex 32`)"
        )
    return keys


def load_keys_from_file(path: str | Path) -> list[str]:
    """Keys from a local file (development)."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise KeyLoadError(f"cannot read API keys file {path}: {exc.strerror or exc}") from exc
    return parse_keys(text, f"API keys file {path}")


SecretReader = Callable[[str, str], str | None]


def _read_key_vault_secret(vault_url: str, secret_name: str) -> str | None:
    """Read one secret with DefaultAzureCredential (workload identity in AKS, az login locally)."""
    from azure.identity import DefaultAzureCredential
    from azure.keyvault.secrets import SecretClient

    with DefaultAzureCredential() as credential, SecretClient(vault_url, credential) as client:
        return client.get_secret(secret_name).value


def load_keys_from_key_vault(
    vault_url: str, secret_name: str, read_secret: SecretReader = _read_key_vault_secret
) -> list[str]:
    """Keys from one Key Vault secret; `read_secret` is injectable so tests need no Azure."""
    from azure.core.exceptions import AzureError

    parsed = urlparse(vault_url)
    if parsed.scheme != "https" or not parsed.hostname:
        raise KeyLoadError(
            f"Key Vault URL {vault_url!r} is not valid; expected https://<vault-name>.vault.azure.net/"
        )
    source = f"Key Vault secret {secret_name!r} in {vault_url}"
    try:
        value = read_secret(vault_url, secret_name)
    except AzureError as exc:
        # The message of azure-core errors names the cause (not found, forbidden, no credential)
        # and never contains the secret value.
        raise KeyLoadError(f"cannot read {source}: {type(exc).__name__}: {exc}") from exc
    return parse_keys(value or "", source)


def _digest(key: str | bytes) -> bytes:
    return hashlib.sha256(key.encode() if isinstance(key, str) else key).digest()


class APIKeys:
    """The accepted keys, held only as SHA-256 digests."""

    def __init__(self, keys: Iterable[str]) -> None:
        self._digests = [_digest(k) for k in keys]
        if not self._digests:
            raise ValueError("APIKeys needs at least one key")

    def __len__(self) -> int:
        return len(self._digests)

    def verify(self, presented: bytes) -> bool:
        """Constant-time check of a presented key against every accepted key."""
        candidate = _digest(presented)
        matched = False
        for digest in self._digests:
            # No early exit: the time taken does not depend on which key matched.
            matched |= hmac.compare_digest(candidate, digest)
        return matched


def bearer_token(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """The token of an `Authorization: Bearer <token>` header, if any."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


class APIKeyMiddleware:
    """Pure ASGI middleware (no response buffering, so streaming stays streaming)."""

    def __init__(self, app: ASGIApp, keys: APIKeys | None) -> None:
        self.app = app
        self.keys = keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self.keys is None or scope["path"] in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        token = bearer_token(scope["headers"])
        if token is None:
            error = unauthorized("Missing API key: send it as 'Authorization: Bearer <key>'.")
        elif not self.keys.verify(token):
            error = unauthorized("Invalid API key.")
        else:
            await self.app(scope, receive, send)
            return
        await error.to_response()(scope, receive, send)
