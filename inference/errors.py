"""One mapping from failures to OpenAI-style error responses.

Every error the server returns has the body ``{"error": {"message", "type", "code"}}`` and a status
from this module (validation -> 400, auth -> 401, unknown model -> 404, overloaded -> 429 with
Retry-After, draining -> 503, internal -> 500), so clients and dashboards see one shape.
"""

from __future__ import annotations

import json
import logging
import math

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from .engine_api import EngineDeadError, EngineShuttingDownError, QueueFullError

log = logging.getLogger("inference.errors")


# Error messages quote client input only this far (a model name, a field path, a validator's
# message), so a hostile value never comes back whole.
MAX_QUOTED_CHARS = 64
MAX_DETAIL_CHARS = 240


def _clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class APIError(Exception):
    """An error with a known HTTP status, OpenAI error `type` and machine-readable `code`."""

    def __init__(
        self,
        status: int,
        message: str,
        type_: str,
        code: str,
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}

    def to_body(self) -> dict[str, dict[str, str]]:
        """The OpenAI-style JSON body of this error."""
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def to_response(self) -> Response:
        """The HTTP response of this error."""
        return Response(
            json.dumps(self.to_body()),
            status_code=self.status,
            media_type="application/json",
            headers=self.headers,
        )


def bad_request(message: str, code: str = "invalid_request") -> APIError:
    """400: the request is malformed or a parameter is out of range."""
    return APIError(400, message, "invalid_request_error", code)


def model_not_found(requested: str, served: str) -> APIError:
    """404: the request names a model this server does not serve."""
    return APIError(
        404,
        f"The model `{_clip(requested)}` does not exist. This server serves `{served}`.",
        "invalid_request_error",
        "model_not_found",
    )


def unauthorized(message: str) -> APIError:
    """401: missing or wrong API key; WWW-Authenticate tells clients which scheme to use."""
    return APIError(
        401, message, "authentication_error", "invalid_api_key", headers={"WWW-Authenticate": "Bearer"}
    )


def not_found(path: str) -> APIError:
    """404 for an unknown route."""
    return APIError(404, f"No route {path}.", "invalid_request_error", "not_found")


def method_not_allowed(method: str, path: str) -> APIError:
    """405 for a known route with the wrong method."""
    return APIError(405, f"Method {method} is not allowed on {path}.", "invalid_request_error",
                    "method_not_allowed")


def queue_full(retry_after_s: float) -> APIError:
    """429: admission refused because the waiting queue is full; Retry-After in whole seconds."""
    seconds = max(1, math.ceil(retry_after_s))
    return APIError(
        429,
        f"The server is at capacity (waiting queue full); retry after {seconds}s.",
        "rate_limit_error",
        "queue_full",
        headers={"Retry-After": str(seconds)},
    )


def draining() -> APIError:
    """503: the server is shutting down and admits no new requests."""
    return APIError(
        503,
        "The server is shutting down and not accepting new requests; retry on another replica.",
        "service_unavailable_error",
        "draining",
        headers={"Retry-After": "1"},
    )


def engine_dead() -> APIError:
    """503: a rank died or a collective timed out; the process is about to exit."""
    return APIError(
        503,
        "The inference engine failed and the server is restarting; retry later.",
        "service_unavailable_error",
        "engine_unavailable",
    )


def internal_error() -> APIError:
    """500 without internals: details go to the log, never to the client."""
    return APIError(500, "Internal server error.", "internal_error", "internal_error")


def from_validation_error(exc: ValidationError) -> APIError:
    """400 naming every offending field and what is allowed, in one message."""
    parts = []
    for err in exc.errors(include_url=False, include_input=False):
        where = ".".join(str(p) for p in err["loc"]) or "body"
        parts.append(f"{_clip(where)}: {_clip(err['msg'], MAX_DETAIL_CHARS)}")
    return bad_request("Invalid request: " + "; ".join(parts), code="invalid_parameter")


def from_engine_exception(exc: BaseException) -> APIError | None:
    """Map the engine contract's admission/failure exceptions; None if `exc` is not one of them."""
    if isinstance(exc, QueueFullError):
        return queue_full(exc.retry_after_s)
    if isinstance(exc, EngineShuttingDownError):
        return draining()
    if isinstance(exc, EngineDeadError):
        return engine_dead()
    return None


async def handle_exception(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: known errors keep their status, anything else is a logged 500."""
    if isinstance(exc, APIError):
        return exc.to_response()
    if isinstance(exc, ValidationError):
        return from_validation_error(exc).to_response()
    mapped = from_engine_exception(exc)
    if mapped is not None:
        return mapped.to_response()
    log.exception("unhandled error", extra={"path": request.url.path})
    return internal_error().to_response()
