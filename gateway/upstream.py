"""The model servers behind the gateway, reached over HTTP with aiohttp.

aiohttp rather than httpx on this path: measured against the same model server's /tokenize on this
machine, a request costs ~0.7 ms with aiohttp against ~1.3-2.2 ms with httpx's async client, and
every proxied request makes two (count, then generate). Streams are read line by line as they
arrive; closing a stream early closes its connection, which the model server takes as the client
leaving (it aborts the generation and frees the batch slot).

With in-process counting on (gateway.counting), an upstream also holds a copy of the model server's
tokenizer (`counter`), loaded from its `GET /tokenizer` and pinned by the hash the server sends on
every answer: an answer with another hash, or none, drops the copy at once (counts go through
/tokenize) and loads the server's current one in the background (at most every RELOAD_COOLDOWN_S).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from .counting import LocalCounter, tokenizer_bundle

log = logging.getLogger("gateway.upstream")

HASH_HEADER = tokenizer_bundle.HASH_HEADER
RELOAD_COOLDOWN_S = 10.0
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 600.0  # one generation may take minutes; the stream's chunks come much more often


class UpstreamUnreachable(Exception):
    """The model server could not be reached or broke the connection."""


@dataclass
class UpstreamResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class UpstreamStream:
    """An open streamed response: `lines()` yields its lines; `close()` ends it (aborting upstream)."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.status = response.status
        self.headers = response.headers

    async def lines(self) -> AsyncIterator[str]:
        try:
            async for raw in self.response.content:
                yield raw.decode("utf-8").rstrip("\r\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(str(exc)) from exc

    async def read(self) -> bytes:
        return await self.response.read()

    async def close(self) -> None:
        self.response.close()


@dataclass
class Upstream:
    """One model deployment, known only by its URL (and the revision it reports)."""

    name: str
    url: str
    api_key: str | None = None
    revision: str = ""
    created: int = 0
    version: str = "stable"
    """Which of the model's server versions this is (gateway/routing.py): `stable`, or e.g. `canary`."""
    session: aiohttp.ClientSession | None = field(default=None, repr=False)
    # In-process counting (gateway.counting): on when `count_locally`; `counter` is None until loaded and
    # whenever the server's answers stop vouching for it.
    count_locally: bool = False
    counter: LocalCounter | None = field(default=None, repr=False)
    _loading: asyncio.Task | None = field(default=None, repr=False)
    _last_load: float = field(default=-RELOAD_COOLDOWN_S, repr=False)

    def observe(self, reported_hash: str | None) -> None:
        """The tokenizer hash an answer of the server carried: drop the copy if it differs, load if needed."""
        if not self.count_locally:
            return
        counter = self.counter
        if counter is not None:
            if counter.hash == reported_hash:
                return
            self.counter = None
            log.warning("upstream %s reports tokenizer %s, not the %s the gateway counts with: counting through "
                        "/tokenize until the new one is loaded", self.name, (reported_hash or "none")[:16],
                        counter.hash[:16])
        if reported_hash is not None and self._loading is None \
                and time.monotonic() - self._last_load >= RELOAD_COOLDOWN_S:
            self._loading = asyncio.get_running_loop().create_task(self.load_counter())

    async def load_counter(self) -> bool:
        """Fetch the server's tokenizer bundle and load it (off the event loop); False when it cannot be."""
        self._last_load = time.monotonic()
        try:
            try:
                response = await self.get("/tokenizer")
            except UpstreamUnreachable as exc:
                log.warning("upstream %s: tokenizer not fetched (%s); counting through /tokenize", self.name, exc)
                return False
            if response.status != 200:
                log.warning("upstream %s: GET /tokenizer answered %s; counting through /tokenize",
                            self.name, response.status)
                return False
            try:
                counter = await asyncio.to_thread(LocalCounter.from_bundle, response.json())
            except Exception as exc:  # a malformed or tampered bundle, a tokenizer transformers cannot load
                log.warning("upstream %s: tokenizer not loaded (%s); counting through /tokenize",
                            self.name, str(exc)[:300])
                return False
            reported = response.headers.get(HASH_HEADER)
            if reported != counter.hash:  # the answer must vouch for the bundle it carried
                log.warning("upstream %s: tokenizer bundle %s came with hash header %s; not used",
                            self.name, counter.hash[:16], (reported or "none")[:16])
                return False
            self.counter = counter
            log.info("upstream %s: counting prompts in-process with tokenizer %s", self.name, counter.hash[:16])
            return True
        finally:
            self._loading = None

    def open(self) -> None:
        timeout = aiohttp.ClientTimeout(total=None, connect=CONNECT_TIMEOUT_S, sock_read=READ_TIMEOUT_S)
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        self.session = aiohttp.ClientSession(timeout=timeout, headers=headers, json_serialize=_compact,
                                             connector=aiohttp.TCPConnector(limit=2000, ttl_dns_cache=60))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:
            self.open()
        assert self.session is not None
        return self.session

    async def get(self, path: str) -> UpstreamResponse:
        try:
            async with self._session().get(f"{self.url}{path}") as response:
                return UpstreamResponse(response.status, _headers(response), await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(str(exc)) from exc

    async def post(self, path: str, body: dict[str, Any] | bytes, request_id: str | None = None) -> UpstreamResponse:
        """POST a JSON body: a dict is serialised; bytes (a client's body the gateway left as it was) go as they are."""
        try:
            async with self._session().post(f"{self.url}{path}", **_body(body, request_id)) as response:
                answer = UpstreamResponse(response.status, _headers(response), await response.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(str(exc)) from exc
        self.observe(answer.headers.get(HASH_HEADER))
        return answer

    async def stream(self, path: str, body: dict[str, Any] | bytes, request_id: str | None = None) -> UpstreamStream:
        try:
            response = await self._session().post(f"{self.url}{path}", **_body(body, request_id))
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UpstreamUnreachable(str(exc)) from exc
        self.observe(response.headers.get(HASH_HEADER))
        return UpstreamStream(response)


def _headers(response: aiohttp.ClientResponse) -> dict[str, str]:
    """The answer's headers, names in lower case (HTTP names are case-insensitive)."""
    return {name.lower(): value for name, value in response.headers.items()}


def _body(body: dict[str, Any] | bytes, request_id: str | None) -> dict[str, Any]:
    if isinstance(body, bytes):
        return {"data": body, "headers": {"Content-Type": "application/json", **_id(request_id)}}
    return {"json": body, "headers": _id(request_id)}


def _id(request_id: str | None) -> dict[str, str]:
    return {"X-Request-Id": request_id} if request_id else {}


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))
