"""One error shape for every failure: ``{"detail": {"code": ..., "message": ...}}``.

The scoring core's :class:`~monai_jdt.scoring.errors.ScoringError` subclasses carry a stable
``code``; :data:`SCORING_STATUS` maps each to its HTTP status (the core knows nothing of
HTTP), and the options an error names are spelled as form fields. :class:`ApiError` carries
status and code for failures that only the HTTP layer knows (auth, limits, malformed
multipart). The handlers installed by
:func:`install_error_handlers` turn FastAPI's own errors (404, 405, request validation) into
the same shape, so a client parses one thing.
"""

from __future__ import annotations

from collections.abc import Mapping

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from monai_jdt.scoring import errors as scoring
from monai_jdt.scoring.errors import ScoringError

__all__ = [
    "SCORING_STATUS",
    "ApiError",
    "error_response",
    "install_error_handlers",
    "scoring_codes_by_status",
    "scoring_message",
    "scoring_status",
]

#: HTTP status of each scoring error class (subclasses inherit it); 422 for the others
SCORING_STATUS: dict[type[ScoringError], int] = {
    scoring.NotNiftiError: 415,
    scoring.UnsupportedDataTypeError: 415,
    scoring.VolumeTooLargeError: 413,
}

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


def scoring_status(error: type[ScoringError]) -> int:
    """The HTTP status of a scoring error class (the nearest mapped base class, else 422)."""
    for cls in error.__mro__:
        if cls in SCORING_STATUS:
            return SCORING_STATUS[cls]
    return 422


def scoring_codes_by_status() -> dict[int, list[str]]:
    """Every ``ScoringError`` subclass's code, by HTTP status (for the OpenAPI description)."""
    codes: dict[int, list[str]] = {}
    pending = list(ScoringError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending.extend(cls.__subclasses__())
        names = codes.setdefault(scoring_status(cls), [])
        if cls.code not in names:
            names.append(cls.code)
    return codes


def scoring_message(err: ScoringError) -> str:
    """The error's message, with the form fields that bear on it (``options``) named."""
    fields = [name for name in err.options if name in _form_fields()]
    if not fields or all(name in err.message for name in fields):
        return err.message
    shown = ", ".join(fields)
    return f"{err.message} (form field{'s' * (len(fields) > 1)}: {shown})"


def _form_fields() -> frozenset[str]:
    from jdt_service.forms import OPTION_FIELDS

    return frozenset(OPTION_FIELDS)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(request, exc.status, exc.code, exc.message, exc.headers)


async def _scoring_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ScoringError)
    return error_response(request, scoring_status(type(exc)), exc.code, scoring_message(exc))


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
