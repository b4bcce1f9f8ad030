"""The state of one proxied request (gateway/app.py and the stream relay share it)."""

from __future__ import annotations

from dataclasses import dataclass

from .limits import Reservation
from .model import Caller


@dataclass
class Flight:
    """One request on its way through the gateway: what the usage record and audit event need."""

    request_id: str
    endpoint: str
    started: float
    caller: Caller | None = None
    model: str = ""
    version: str = ""  # the model server version that serves it (gateway/routing.py), once chosen
    body_bytes: int = 0
    reservation: Reservation | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    ttft_ms: float | None = None
    cache_hit: bool = False
    finish_reason: str | None = None
    status: int = 200
    finished: bool = False
