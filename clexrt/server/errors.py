"""Errors in OpenAI's shape, and the guard in front of every route (API key, body size).

Every error is ``{"error": {"message", "type", "param", "code"}}`` with a 4xx status for the
client's mistakes (never a 500 and never a dead worker): malformed JSON and invalid fields 400,
an unknown model 404, a missing or wrong key 401, a body over the limit 413, a full queue 503
with Retry-After.
"""
from __future__ import annotations

import hmac
import json

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import ClexError, ContextFullError
from .scheduler import QueueFull

__all__ = ["error_body", "error_response", "Guard", "install_handlers", "ApiError",
           "PUBLIC_PATHS"]

# llama-server's routes that need no key
PUBLIC_PATHS = frozenset({"/health", "/v1/health"})
_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
          404: "not_found_error", 405: "invalid_request_error", 413: "invalid_request_error",
          422: "invalid_request_error", 503: "unavailable_error"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.code, self.param = status, message, code, param
        self.headers = headers


def error_body(status: int, message: str, code: str | None = None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": _TYPES.get(status, "server_error"),
                      "param": param, "code": code}}


def error_response(status: int, message: str, code: str | None = None, param: str | None = None,
                   headers: dict | None = None) -> JSONResponse:
    return JSONResponse(error_body(status, message, code, param), status_code=status,
                        headers=headers)


def as_api_error(e: BaseException) -> ApiError:
    """What an exception from preparing or running a request means for the client."""
    if isinstance(e, ApiError):
        return e
    if isinstance(e, QueueFull):
        return ApiError(503, str(e), "server_busy", headers={"Retry-After": "1"})
    if isinstance(e, ContextFullError):
        return ApiError(400, str(e), "context_length_exceeded")
    if isinstance(e, (ClexError, ValueError, TypeError, KeyError)):
        return ApiError(400, str(e) or type(e).__name__, "invalid_request")
    return ApiError(500, f"internal error: {type(e).__name__}: {e}", "internal_error")


def _validation_message(e: RequestValidationError) -> tuple[str, str | None]:
    errs = e.errors()
    if not errs:
        return "invalid request", None
    first = errs[0]
    if first.get("type") == "json_invalid":
        return "the body is not valid JSON", None
    loc = [str(x) for x in first.get("loc", ()) if x != "body"]
    where = ".".join(loc) or None
    return f"{where + ': ' if where else ''}{first.get('msg', 'invalid value')}", where


def install_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        msg, where = _validation_message(e)
        return error_response(400, msg, "invalid_request", where)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return error_response(e.status_code, str(e.detail), None, None, getattr(e, "headers", None))

    @app.exception_handler(ApiError)
    async def _api(request: Request, e: ApiError):
        return error_response(e.status, e.message, e.code, e.param, e.headers)

    @app.exception_handler(Exception)
    async def _other(request: Request, e: Exception):
        a = as_api_error(e)
        return error_response(a.status, a.message, a.code, a.param, a.headers)


async def _send_json(send, status: int, body: dict, headers: list | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())] + (headers or [])})
    await send({"type": "http.response.body", "body": data})


class Guard:
    """ASGI middleware: the API key (``Authorization: Bearer KEY`` or ``X-Api-Key``, compared
    with hmac.compare_digest) and the body limit (the body is read here, at most `max_body`
    bytes, then handed on; later messages such as a disconnect pass through)."""

    def __init__(self, app, api_key: str | None = None, max_body: int = 8 << 20):
        self.app = app
        self.key = api_key.encode() if api_key else None
        self.max_body = int(max_body)

    def _authorized(self, scope) -> bool:
        if self.key is None or scope.get("path") in PUBLIC_PATHS:
            return True
        headers = dict(scope.get("headers") or ())
        auth = headers.get(b"authorization", b"")
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else headers.get(b"x-api-key", b"")
        return hmac.compare_digest(given, self.key)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await _send_json(send, 401, error_body(401, "invalid or missing API key",
                                                          "invalid_api_key"),
                                    [(b"www-authenticate", b"Bearer")])
        headers = dict(scope.get("headers") or ())
        too_big = error_body(413, f"the request body is over {self.max_body} bytes",
                             "request_too_large")
        try:
            if int(headers.get(b"content-length", b"0") or 0) > self.max_body:
                return await _send_json(send, 413, too_big)
        except ValueError:
            return await _send_json(send, 400, error_body(400, "bad Content-Length"))
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":
                return                              # gone before the body arrived
            chunks.append(msg.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_body:
                return await _send_json(send, 413, too_big)
            if not msg.get("more_body"):
                break
        body, given = b"".join(chunks), False

        async def replay():
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
