"""Run the service with uvicorn: ``monai-jdt serve`` and ``python -m jdt_service``.

:func:`add_arguments` adds one option per :class:`~jdt_service.settings.Settings` field
(``--max-queue`` for ``JDT_MAX_QUEUE``; the type, choices, default and help come from the
field), except the env-only ones (API keys); :func:`run` merges them over the ``JDT_*``
environment and starts uvicorn (loopback ``127.0.0.1:8000`` by default). The merged settings
are exported back to ``JDT_*`` so that every worker process builds the same app through
:func:`jdt_service.app.create_app`.

Before start-up, :func:`run` checks that the port is free (exit status 2 with "port N is in
use" otherwise) and raises the soft open-file limit towards ``max_connections``. uvicorn
runs :class:`jdt_service.protocol.BoundedH11Protocol` (h11 with a header timeout, a head
size limit and a connection cap) and logs in the service's format. uvicorn handles SIGTERM
and SIGINT: it stops accepting connections and lets requests in flight finish (up to the
request timeout; scoring threads are daemons and never hold the process longer); it then
re-raises the signal, which :func:`run` turns into exit status 0.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import signal
import socket
import sys
import threading
import typing
from types import FrameType

from pydantic import ValidationError

from jdt_service.logs import configure_logging, uvicorn_log_config
from jdt_service.settings import ENV_ONLY, Settings

__all__ = ["add_arguments", "main", "run"]

logger = logging.getLogger("jdt_service")

#: open files a process needs besides its connections (uploads, logs, libraries)
_SPARE_FDS = 64


def _default_text(value: object) -> str:
    """A default as the docs and the environment spell it (``true``, ``none``)."""
    if value is None or value == []:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one ``--option`` per setting; each overrides its ``JDT_*`` variable when given. The
    environment-only settings (the keys) are named in the parser's epilog."""
    for name, field in Settings.model_fields.items():
        if name in ENV_ONLY:
            continue
        default = field.get_default(call_default_factory=True)
        description = (field.description or "").rstrip(".").replace("%", "%%")
        variable = f"JDT_{name.upper()}"
        # a default the description states ("default: the system temp dir") is not repeated
        told = "(default:" in description
        where = variable if told else f"{variable}, default {_default_text(default)}"
        kwargs: dict[str, typing.Any] = {"dest": name, "help": f"{description} ({where})"}
        if typing.get_origin(field.annotation) is typing.Literal:
            kwargs["choices"] = list(typing.get_args(field.annotation))
        elif field.annotation is bool:  # --flag / --no-flag, as the CLI's other booleans
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["metavar"] = name.upper()
        parser.add_argument("--" + name.replace("_", "-"), **kwargs)
    keys = ", ".join(f"JDT_{name.upper()}" for name in sorted(ENV_ONLY))
    parser.epilog = (
        f"{keys}: from the environment only (a key on a command line shows in ps); "
        "with none set, /v1/* needs no key."
    )


def settings_from_args(args: argparse.Namespace) -> Settings:
    """The environment's settings with the options given on the command line on top
    (validated by ``Settings``: the options arrive as text)."""
    overrides = {
        name: value
        for name in Settings.model_fields
        if (value := getattr(args, name, None)) is not None
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


def _bind_error(host: str, port: int) -> str | None:
    """Why ``host:port`` cannot be bound now (``None`` when it can), checked as uvicorn binds."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        return f"cannot resolve host {host!r}: {exc.strerror}"
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return f"port {port} is in use (on {host}); stop the other server or use --port"
            return f"cannot bind {host}:{port}: {exc.strerror}"
    return None


def _data_dir_error(settings: Settings) -> str | None:
    """Why the jobs' SQLite database cannot live in ``JDT_DATA_DIR`` (``None`` when it can, or
    when ``JDT_DATABASE_URL`` names another database)."""
    if settings.database_url:
        return None
    folder = settings.data_dir
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"cannot create the data folder {folder} (JDT_DATA_DIR): {exc.strerror}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return (
            f"the data folder {folder} (JDT_DATA_DIR) is not writable by this user: mount a "
            "volume there (a read-only root needs one) or set JDT_DATA_DIR / JDT_DATABASE_URL"
        )
    return None


def _raise_fd_limit(settings: Settings) -> None:
    """Raise the soft open-file limit to fit ``max_connections`` (up to the hard limit)."""
    import resource

    needed = settings.max_connections + _SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        if target < needed:
            logger.warning(
                "the open-file limit is %d, below JDT_MAX_CONNECTIONS + %d = %d: raise the hard "
                "limit (ulimit -Hn, LimitNOFILE=, docker --ulimit nofile=) or lower "
                "JDT_MAX_CONNECTIONS",
                target,
                _SPARE_FDS,
                needed,
            )


def run(args: argparse.Namespace) -> int:
    """Start uvicorn with the merged settings; return the exit status (0 after SIGTERM,
    2 for an invalid setting, a port that cannot be bound or a data folder that cannot be
    written)."""
    import uvicorn

    from jdt_service.protocol import BoundedH11Protocol

    try:
        settings = settings_from_args(args)
    except ValidationError as exc:
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            print(f"monai-jdt serve: invalid setting {where}: {err['msg']}", file=sys.stderr)
        return 2
    problem = _bind_error(settings.host, settings.port) or _data_dir_error(settings)
    if problem is not None:
        print(f"monai-jdt serve: {problem}", file=sys.stderr)
        return 2
    configure_logging(settings)
    logging.captureWarnings(True)
    _raise_fd_limit(settings)
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
            log_config=uvicorn_log_config(settings),
            access_log=False,
            http=BoundedH11Protocol,
            h11_max_incomplete_event_size=settings.max_header_bytes,
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
