"""One mapping from gateway failures to OpenAI-shaped error responses.

Every error has the body ``{"error": {"message", "type", "code"}}``, so stock SDKs parse it: 401 for
missing or bad credentials, 404 for a model the caller may not use (OpenAI does not say whether it
exists), 429 with Retry-After and ``x-ratelimit-*`` headers for limits (stock SDKs back off on it),
400 for bad requests and blocked content, 502/503 for an upstream or state store that failed.
"""

from __future__ import annotations

import json

from starlette.responses import Response

MAX_QUOTED_CHARS = 64


def clip(text: str, limit: int = MAX_QUOTED_CHARS) -> str:
    """Client input quoted in a message, cut so a hostile value never comes back whole."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


class GatewayError(Exception):
    """An error with an HTTP status, an OpenAI error `type` and a machine-readable `code`."""

    def __init__(self, status: int, message: str, type_: str, code: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, dict[str, str]]:
        return {"error": {"message": self.message, "type": self.type, "code": self.code}}

    def response(self, request_id: str | None = None) -> Response:
        headers = dict(self.headers)
        if request_id:
            headers["X-Request-Id"] = request_id
        return Response(json.dumps(self.body()), status_code=self.status, media_type="application/json",
                        headers=headers)


def unauthorized(message: str) -> GatewayError:
    return GatewayError(401, message, "invalid_request_error", "invalid_api_key",
                        {"WWW-Authenticate": 'Bearer realm="inferforge-gateway"'})


def bad_request(message: str, code: str = "invalid_request") -> GatewayError:
    return GatewayError(400, message, "invalid_request_error", code)


def model_not_found(model: str) -> GatewayError:
    return GatewayError(404, f"The model `{clip(model)}` does not exist or you do not have access to it.",
                        "invalid_request_error", "model_not_found")


def content_filtered(category: str, where: str) -> GatewayError:
    return GatewayError(400, f"The {where} was blocked by the content filter (category: {category}).",
                        "invalid_request_error", "content_filter")


def unavailable(message: str, code: str, retry_after: int = 1) -> GatewayError:
    return GatewayError(503, message, "server_error", code, {"Retry-After": str(retry_after)})


def upstream_failed(message: str) -> GatewayError:
    return GatewayError(502, message, "server_error", "upstream_error")
