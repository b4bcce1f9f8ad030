"""Entra ID access tokens: RS256 only, signature from the tenant's JWKS, issuer, audience, expiry and
an allow-list of Entra tenant ids, all checked before any claim is believed.

The algorithm is fixed by the gateway, never taken from the token, which refuses `alg: none` and the
HS256 confusion (an attacker signing with the public key as an HMAC secret). Signing keys come from
the JWKS URL through PyJWT's client, cached, and fetched again when a token names a `kid` the cache
does not hold (Entra rolls its keys), at most once per `refresh_cooldown_s`. The caller's client
application (`azp`, or `appid` in v1 tokens) selects the gateway tenant; the principal is the
token's object id (`oid`).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import jwt
from jwt import PyJWKClient

ENTRA_ISSUER_V2 = "https://login.microsoftonline.com/{tid}/v2.0"
ENTRA_ISSUER_V1 = "https://sts.windows.net/{tid}/"
ENTRA_JWKS = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
LEEWAY_S = 60


class TokenError(Exception):
    """The token is not acceptable; the message says why without echoing the token."""


@dataclass(frozen=True)
class EntraSettings:
    tenant_ids: tuple[str, ...]
    audience: str
    jwks_url: str = ENTRA_JWKS
    # The shortest time between two JWKS fetches forced by unknown `kid`s: a rolled key is picked up
    # on its first token after this, and tokens with random kids cannot make the gateway hammer Entra.
    refresh_cooldown_s: float = 5.0
    issuer_templates: tuple[str, ...] = (ENTRA_ISSUER_V2, ENTRA_ISSUER_V1)


@dataclass(frozen=True)
class EntraIdentity:
    tenant_id: str
    object_id: str
    app_id: str


class EntraValidator:
    def __init__(self, settings: EntraSettings) -> None:
        self.settings = settings
        self._jwks = PyJWKClient(settings.jwks_url, cache_keys=True, lifespan=3600, timeout=5,
                                 cooldown_duration=settings.refresh_cooldown_s)

    def _validate(self, token: str) -> EntraIdentity:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise TokenError("malformed token") from exc
        if header.get("alg") != "RS256":
            raise TokenError(f"token algorithm {str(header.get('alg'))[:16]!r} is not accepted; only RS256")
        try:
            key = self._jwks.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as exc:
            raise TokenError(f"no signing key for the token: {str(exc)[:120]}") from exc
        except jwt.PyJWTError as exc:  # the client parses the token too: a mangled one fails there
            raise TokenError("malformed token") from exc
        try:
            claims = jwt.decode(token, key=key.key, algorithms=["RS256"], audience=self.settings.audience,
                                leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud", "tid", "oid"]})
        except jwt.ExpiredSignatureError as exc:
            raise TokenError("token expired") from exc
        except jwt.InvalidAudienceError as exc:
            raise TokenError("token audience is not this gateway's") from exc
        except jwt.PyJWTError as exc:
            raise TokenError(f"invalid token: {str(exc)[:120]}") from exc
        tid = str(claims["tid"])
        if tid not in self.settings.tenant_ids:
            raise TokenError("token's Entra tenant is not allowed")
        if claims["iss"] not in {template.format(tid=tid) for template in self.settings.issuer_templates}:
            raise TokenError("token issuer does not match its Entra tenant")
        app_id = str(claims.get("azp") or claims.get("appid") or "")
        if not app_id:
            raise TokenError("token names no client application (azp/appid)")
        return EntraIdentity(tid, str(claims["oid"]), app_id)

    async def validate(self, token: str) -> EntraIdentity:
        # The JWKS fetch (rare: cached) is blocking I/O; keep it off the event loop.
        return await asyncio.to_thread(self._validate, token)
