"""Errors of the HTTP API: one JSON shape, `{"error": {"code", "message"}}`."""

from __future__ import annotations

import logging

import msgspec
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from wakeful.runtime import (
    ConcurrencyError,
    InvalidAddress,
    InvalidPayload,
    NotFound,
    PayloadTooLarge,
    StoreClosed,
    UnknownEntityType,
    WakefulError,
)

log = logging.getLogger("wakeful.http")


class HTTPError(Exception):
    """An answer other than success, with a stable machine-readable `code`."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}


class ErrorDetail(msgspec.Struct):
    code: str
    message: str


class Error(msgspec.Struct):
    error: ErrorDetail


_encode = msgspec.json.Encoder().encode


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> Response:
    return Response(
        _encode(Error(ErrorDetail(code, message))),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def translate(exc: BaseException) -> HTTPError:
    """The HTTP answer for an error raised while serving a request."""
    if isinstance(exc, HTTPError):
        return exc
    if isinstance(exc, HTTPException):  # routing: unknown path, wrong method
        code = _STATUS_CODES.get(exc.status_code, "error")
        message = exc.detail
        if exc.status_code == 404:
            message = "no such endpoint; see GET /openapi.json for the API"
        elif exc.status_code == 405:
            allowed = (exc.headers or {}).get("Allow", "")
            message = f"method not allowed here; allowed: {allowed or 'none'}"
        return HTTPError(exc.status_code, code, message, dict(exc.headers or {}))
    if isinstance(exc, UnknownEntityType):
        return HTTPError(404, "unknown_type", str(exc))
    if isinstance(exc, NotFound):
        return HTTPError(404, "not_found", str(exc))
    if isinstance(exc, InvalidAddress):
        return HTTPError(400, "invalid_address", str(exc))
    if isinstance(exc, PayloadTooLarge):
        return HTTPError(413, "payload_too_large", str(exc))
    if isinstance(exc, InvalidPayload):
        return HTTPError(400, "invalid_payload", str(exc))
    if isinstance(exc, ConcurrencyError):
        return HTTPError(409, "conflict", str(exc))
    if isinstance(exc, StoreClosed):
        return HTTPError(503, "unavailable", str(exc))
    if isinstance(exc, TimeoutError):
        return HTTPError(504, "timeout", "the store did not answer in time; retry")
    if isinstance(exc, WakefulError):
        return HTTPError(500, "error", str(exc))
    if isinstance(exc, ValueError):
        return HTTPError(400, "invalid_request", str(exc))
    return HTTPError(500, "internal", "internal error; the server log has the details")


async def handle(request: Request, exc: Exception) -> Response:
    """Starlette exception handler: every error becomes the JSON shape."""
    err = translate(exc)
    if err.status >= 500:
        log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
    return error_response(err.status, err.code, err.message, err.headers)
