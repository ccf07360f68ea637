"""Structured logging: one line per request, JSON or ``key=value`` text.

:class:`RequestLogMiddleware` gives each request an id (the client's ``X-Request-ID`` when it
is a short safe token, a fresh one otherwise), echoes it in the response, counts the bytes in
and out, times the request, updates the request metrics and writes one line to the
``jdt_service.access`` logger. The line holds only what handlers put in ``request.state``
through :data:`LOG_FIELDS` (sizes, voxels, timings, device, error code) and never file
names, header text or image content.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import traceback
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from jdt_service.service_metrics import ServiceMetrics
from jdt_service.settings import Settings

__all__ = [
    "LOG_FIELDS",
    "JsonFormatter",
    "RequestLogMiddleware",
    "TextFormatter",
    "configure_logging",
    "relative_path",
    "uvicorn_log_config",
    "where_raised",
]

#: ``request.state`` attributes copied into the request's log line when set.
LOG_FIELDS = (
    "error_code",
    "prediction_bytes",
    "reference_bytes",
    "voxels",
    "queue_s",
    "score_s",
    "device",
    "gpu_fallback",
    "job_bytes",
)
#: methods kept as metric labels (anything else is "other": clients choose the method)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_SAFE_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_HANDLER_NAME = "jdt_service"


def relative_path(filename: str) -> str:
    """``filename`` relative to the ``sys.path`` entry it lies under (``jdt_service/app.py``
    rather than ``/.../site-packages/jdt_service/app.py``); unchanged when under none."""
    best = ""
    for entry in sys.path:
        root = os.path.abspath(entry or os.curdir) + os.sep
        if filename.startswith(root) and len(root) > len(best):
            best = root
    return filename[len(best) :] if best else filename


def where_raised(exc: BaseException) -> str:
    """``Type at package/file.py:line`` of the frame that raised ``exc`` (not its message,
    which may quote paths or content)."""
    frames = traceback.extract_tb(exc.__traceback__)
    if not frames:
        return type(exc).__name__
    return f"{type(exc).__name__} at {relative_path(frames[-1].filename)}:{frames[-1].lineno}"


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields: dict[str, Any] = dict(getattr(record, "jdt", {}))
    if record.exc_info and record.exc_info[1] is not None:
        fields["exc"] = where_raised(record.exc_info[1])
    return fields


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message and the record's ``jdt`` fields
    (an exception adds ``exc``: its type and where it was raised)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(_fields(record))
        return json.dumps(line, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``LEVEL logger message key=value ...`` for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        pairs = " ".join(f"{k}={v}" for k, v in _fields(record).items())
        return f"{record.levelname} {record.name} {record.getMessage()} {pairs}".rstrip()


def uvicorn_log_config(settings: Settings) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for uvicorn's loggers in the service's format, so that
    every line of the log (uvicorn's start-up and shutdown lines, Python warnings) has it;
    uvicorn's access log stays off (the service writes its own).

    ``python_multipart`` (the form parser) logs a warning for each malformed body before it
    raises; without a handler those lines reached stderr as bare text (logging's
    ``lastResort``). They are dropped below ``ERROR``: each one repeats a failure the client
    already gets as ``400 malformed_multipart`` and the request's line already records
    (``error_code``), a client can send them at will, and their text quotes the client's
    bytes and header values (``Unknown Content-Type: ...``), which the log never holds.
    What remains (errors) has the service's handler and format."""
    formatter = JsonFormatter if settings.log_format == "json" else TextFormatter
    level = settings.log_level.upper()
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"service": {"()": f"{formatter.__module__}.{formatter.__qualname__}"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "service",
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            "uvicorn.access": {"handlers": [], "level": "WARNING", "propagate": False},
            "py.warnings": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
            "python_multipart": {"handlers": ["stderr"], "level": "ERROR", "propagate": False},
        },
    }


def configure_logging(settings: Settings) -> None:
    """Send the ``jdt_service`` loggers to stderr at the configured level and format."""
    logger = logging.getLogger("jdt_service")
    logger.setLevel(settings.log_level.upper())
    for handler in list(logger.handlers):
        if handler.get_name() == _HANDLER_NAME:
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if settings.log_format == "json" else TextFormatter())
    logger.addHandler(handler)


class RequestLogMiddleware:
    """Pure ASGI middleware: request id, byte counts, timing, metrics and the log line."""

    def __init__(self, app: ASGIApp, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics
        self.logger = logging.getLogger("jdt_service.access")

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if _SAFE_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"] = request_id
        counts = {"in": 0, "out": 0, "status": 0, "disconnected": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                counts["in"] += len(message.get("body", b""))
            elif message["type"] == "http.disconnect":
                counts["disconnected"] = True
            return message

        async def tagging_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                counts["status"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-request-id", request_id.encode("latin-1")),
                ]
            elif message["type"] == "http.response.body":
                counts["out"] += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, counting_receive, tagging_send)
        except Exception as exc:
            if counts["status"]:
                raise
            # A bug, not bad input. Its text may quote paths or content: log the type and
            # where it was raised, not the message.
            self.logger.error(
                "unhandled %s", where_raised(exc), extra={"jdt": {"request_id": request_id}}
            )
            state["error_code"] = "internal_error"
            body = json.dumps(
                {"detail": {"code": "internal_error", "message": "internal error (this is a bug)"}}
            ).encode()
            await tagging_send(
                {
                    "type": "http.response.start",
                    "status": 500,
                    "headers": [
                        (b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()),
                    ],
                }
            )
            await tagging_send({"type": "http.response.body", "body": body})
        finally:
            elapsed = time.perf_counter() - started
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            status = counts["status"] or 499  # nothing sent: the client went away
            method = scope["method"] if scope["method"] in _METHODS else "other"
            self.metrics.requests.labels(method, route_path, str(status)).inc()
            self.metrics.latency.labels(route_path).observe(elapsed)
            fields: dict[str, Any] = {
                "request_id": request_id,
                "method": scope["method"],
                "route": route_path,
                "status": status,
                "duration_s": round(elapsed, 4),
                "bytes_in": counts["in"],
                "bytes_out": counts["out"],
            }
            if counts["disconnected"] and not counts["status"]:
                fields["client_disconnected"] = True
            for name in LOG_FIELDS:
                if name in state:
                    fields[name] = state[name]
            if "error_code" in state:
                self.metrics.errors.labels(state["error_code"]).inc()
            self.logger.info("request", extra={"jdt": fields})
