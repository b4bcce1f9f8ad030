"""API key format and keyed hashing.

A key reads `ifg_<id>_<secret>`: the id (12 hex characters) is public, names the key in usage, audit
and revocation, and finds its row; the secret is 32 random bytes. PostgreSQL stores only
HMAC-SHA256(pepper, key): a database dump alone cannot be used to call the gateway nor to test
guesses offline, since the pepper lives in Key Vault (mounted into the pod), not in the database.
The key itself is shown once, at creation.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets

KEY_PREFIX = "ifg_"
KEY_PATTERN = re.compile(r"^ifg_([0-9a-f]{12})_([A-Za-z0-9_-]{43})$")
PEPPER_ENV = "INFERFORGE_GATEWAY_KEY_PEPPER"
MIN_PEPPER_LENGTH = 32


class PepperError(ValueError):
    """The key pepper is missing or too short."""


def load_pepper(path: str | None) -> bytes:
    """The pepper from a file (a Key Vault secret mounted by the CSI driver) or the environment."""
    if path:
        try:
            value = open(path, encoding="utf-8").read().strip()  # noqa: SIM115
        except OSError as exc:
            raise PepperError(f"cannot read --key-pepper-file {path}: {exc.strerror or exc}") from exc
        source = f"--key-pepper-file {path}"
    else:
        value = os.environ.get(PEPPER_ENV, "").strip()
        source = f"${PEPPER_ENV}"
        if not value:
            raise PepperError(f"no key pepper: set {PEPPER_ENV} or pass --key-pepper-file (at least "
                              f"{MIN_PEPPER_LENGTH} random characters, e.g. `openssl rand -hex 32`)")
    if len(value) < MIN_PEPPER_LENGTH:
        raise PepperError(f"{source} is {len(value)} characters; it must be at least {MIN_PEPPER_LENGTH}")
    return value.encode()


def new_key() -> tuple[str, str]:
    """A fresh (key id, full key)."""
    key_id = secrets.token_hex(6)
    return key_id, f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"


def key_id_of(presented: str) -> str | None:
    """The id part of a well-formed key, or None."""
    match = KEY_PATTERN.match(presented)
    return match.group(1) if match else None


def key_hash(pepper: bytes, key: str) -> bytes:
    return hmac.new(pepper, key.encode(), hashlib.sha256).digest()


def matches(pepper: bytes, presented: str, stored_hash: bytes) -> bool:
    """Constant-time comparison of the presented key's keyed hash with the stored one."""
    return hmac.compare_digest(key_hash(pepper, presented), stored_hash)
