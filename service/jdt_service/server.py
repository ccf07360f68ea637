"""Run the service with uvicorn: ``monai-jdt serve`` and ``python -m jdt_service``.

:func:`add_arguments` adds the serve options to an ``argparse`` parser; :func:`run` merges
them over the ``JDT_*`` environment and starts uvicorn (loopback ``127.0.0.1:8000`` by
default). The merged settings are exported back to ``JDT_*`` so that every worker process
builds the same app through :func:`jdt_service.app.create_app`. uvicorn handles SIGTERM and
SIGINT: it stops accepting connections and lets requests in flight finish (up to the request
timeout); it then re-raises the signal, which :func:`run` turns into exit status 0.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from types import FrameType

from pydantic import ValidationError

from jdt_service.logs import configure_logging
from jdt_service.settings import Settings

__all__ = ["add_arguments", "main", "run"]

logger = logging.getLogger("jdt_service")

#: argparse destination -> Settings field, for the options that override settings
_OVERRIDES = {
    "host": "host",
    "port": "port",
    "workers": "workers",
    "device": "device",
    "max_upload_bytes": "max_upload_bytes",
    "max_voxels": "max_voxels",
    "max_concurrency": "max_concurrency",
    "max_queue": "max_queue",
    "request_timeout": "request_timeout",
    "temp_dir": "temp_dir",
    "log_level": "log_level",
    "log_format": "log_format",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve`` options; each overrides its ``JDT_*`` variable when given."""
    add = parser.add_argument
    add("--host", help="bind address (JDT_HOST, default 127.0.0.1: loopback only)")
    add("--port", type=int, help="TCP port (JDT_PORT, default 8000)")
    add("--workers", type=int, help="uvicorn worker processes (JDT_WORKERS, default 1)")
    add("--device", help="auto, cpu, cuda or cuda:N (JDT_DEVICE, default auto)")
    add("--max-upload-bytes", type=int, help="largest file accepted (JDT_MAX_UPLOAD_BYTES)")
    add("--max-voxels", type=int, help="largest volume accepted, in voxels (JDT_MAX_VOXELS)")
    add("--max-concurrency", type=int, help="scoring jobs at once (JDT_MAX_CONCURRENCY)")
    add("--max-queue", type=int, help="requests waiting before 503 (JDT_MAX_QUEUE)")
    add("--request-timeout", type=float, help="seconds per request (JDT_REQUEST_TIMEOUT)")
    add("--temp-dir", help="where uploads are written (JDT_TEMP_DIR)")
    add(
        "--log-level",
        choices=["debug", "info", "warning", "error", "critical"],
        help="JDT_LOG_LEVEL, default info",
    )
    add("--log-format", choices=["json", "text"], help="JDT_LOG_FORMAT, default json")


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the options given on the command line on top."""
    overrides = {
        field: getattr(args, dest)
        for dest, field in _OVERRIDES.items()
        if getattr(args, dest, None) is not None
    }
    return Settings(**overrides)


def _export(settings: Settings) -> None:
    """Write the merged settings to ``JDT_*`` so worker processes read the same ones."""
    for name, value in settings.model_dump().items():
        if value is None:
            continue
        text = ",".join(value) if isinstance(value, list) else str(value)
        os.environ[f"JDT_{name.upper()}"] = text


class _Stopped(Exception):
    """SIGTERM / SIGINT arrived (re-raised by uvicorn once it has shut down gracefully)."""


def _stop(signum: int, frame: FrameType | None) -> None:
    raise _Stopped(signum)


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the merged settings; return the exit status (0 after SIGTERM)."""
    import uvicorn

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"monai-jdt serve: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return 2
    configure_logging(settings)
    if not settings.is_loopback and not settings.api_keys:
        logger.warning(
            "binding %s without API keys: anyone who can reach this address can upload volumes; "
            "set JDT_API_KEYS to require 'Authorization: Bearer KEY'",
            settings.host,
        )
    _export(settings)
    in_main_thread = threading.current_thread() is threading.main_thread()
    signals = (signal.SIGTERM, signal.SIGINT) if in_main_thread else ()
    previous = {sig: signal.signal(sig, _stop) for sig in signals}
    try:
        uvicorn.run(
            "jdt_service.app:create_app",
            factory=True,
            host=settings.host,
            port=settings.port,
            workers=settings.workers,
            log_level=settings.log_level,
            access_log=False,
            timeout_graceful_shutdown=int(settings.request_timeout) + 1,
        )
    except _Stopped:
        logger.info("stopped by signal after a graceful shutdown")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m jdt_service [options]``."""
    parser = argparse.ArgumentParser(
        prog="python -m jdt_service", description="Run the monai-jdt scoring service."
    )
    add_arguments(parser)
    return run(parser.parse_args(argv))
