"""One error shape for every failure: ``{"detail": {"code": ..., "message": ...}}``.

The scoring core's :class:`~monai_jdt.scoring.errors.ScoringError` subclasses already carry
``code`` and ``http_status``; :class:`ApiError` does the same for failures that only the HTTP
layer knows (auth, limits, malformed multipart). The handlers installed by
:func:`install_error_handlers` turn FastAPI's own errors (404, 405, request validation) into
the same shape, so a client parses one thing.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monai_jdt.scoring.errors import ScoringError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

_HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
}


class ApiError(Exception):
    """A failure of the HTTP layer, answered with ``status`` and ``{"code", "message"}``."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})


def error_response(
    request: Request, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """The JSON error response; also records ``code`` for the request's log line."""
    request.state.error_code = code
    return JSONResponse(
        {"detail": {"code": code, "message": message}}, status_code=status, headers=headers
    )


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _scoring_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScoringError)
    detail = exc.to_detail()
    return error_response(request, exc.http_status, detail["code"], detail["message"])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = _HTTP_CODES.get(exc.status_code, "http_error")
    message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
    return error_response(request, exc.status_code, code, message, exc.headers)


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()))
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return error_response(request, 422, "validation_error", "; ".join(parts) or "invalid request")


def install_error_handlers(app: FastAPI) -> None:
    """Route every error kind to the one JSON shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(ScoringError, _scoring_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
