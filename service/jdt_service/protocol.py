"""The HTTP/1.1 protocol the service runs on: uvicorn's h11 protocol with three bounds.

uvicorn (with either parser) never closes a connection that has not sent complete request
headers: an idle socket, or headers sent a byte at a time, stays open forever, and enough of
them exhaust the file descriptors. httptools (uvicorn's default when installed) also
accepts request heads of any size. :class:`BoundedH11Protocol` adds, per connection:

* a **header timeout**: a connection that has not sent complete request headers within
  ``header_timeout`` seconds of opening (or of its previous response) gets
  ``408 Request Timeout`` and is closed;
* a **head size limit**: h11 buffers at most ``max_header_bytes`` of an incomplete head
  (its ``max_incomplete_event_size``, which :func:`jdt_service.server.run` sets to it), and a
  head past it gets ``431 Request Header Fields
  Too Large`` (uvicorn would say 400), so a 64 MiB header line is refused after 64 KiB;
* a **connection cap**: past ``max_connections`` open connections, a new one gets ``503``
  with ``Retry-After`` and is closed at once.

It also tells the app when uvicorn begins a graceful shutdown (before uvicorn waits for the
requests in flight): it sets the ``asyncio.Event`` the app keeps in its lifespan state under
:data:`STOPPING_STATE`, so long polls (``GET /v1/jobs/{id}?wait=``) answer at once instead of
holding the shutdown.

The limits come from :class:`jdt_service.settings.Settings` (``JDT_*``, which
:func:`jdt_service.server.run` exports for every worker process), read once per process.
"""

from __future__ import annotations

import asyncio
import functools
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from jdt_service.settings import Settings

__all__ = ["STOPPING_STATE", "BoundedH11Protocol", "raw_error"]

#: the lifespan-state key of the ``asyncio.Event`` set when the server starts shutting down
STOPPING_STATE = "jdt_stopping"


@functools.cache
def _settings() -> Settings:
    return Settings()


def raw_error(status: int, reason: str, code: str, message: str, retry_after: int = 0) -> bytes:
    """A complete ``Connection: close`` error response in the service's JSON error shape."""
    body = json.dumps({"detail": {"code": code, "message": message}}).encode()
    head = [
        f"HTTP/1.1 {status} {reason}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if retry_after:
        head.append(f"retry-after: {retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout, a head size limit and a connection cap."""

    def __init__(self, config: Any, *args: Any, settings: Settings | None = None, **kwargs: Any):
        self.limits = settings or _settings()
        super().__init__(config, *args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        over_cap = len(self.connections) >= self.limits.max_connections
        super().connection_made(transport)
        if over_cap:
            self._refuse(
                raw_error(
                    503,
                    "Service Unavailable",
                    "too_many_connections",
                    f"the server has {self.limits.max_connections} open connections",
                    self.limits.retry_after,
                )
            )
            return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:  # the request's head is complete
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self.conn.their_state is h11.IDLE:
            self._start_header_timer()  # the next request's head must come in time too

    def shutdown(self) -> None:
        stopping = self.app_state.get(STOPPING_STATE)
        if isinstance(stopping, asyncio.Event):
            stopping.set()
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        buffered, _ = self.conn.trailing_data
        if len(buffered) > self.limits.max_header_bytes:
            self._refuse(
                raw_error(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request head is larger than {self.limits.max_header_bytes} bytes",
                )
            )
            return
        super().send_400_response(msg)

    def _start_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.transport.is_closing() or self.conn.their_state is not h11.IDLE:
            return
        self._refuse(
            raw_error(
                408,
                "Request Timeout",
                "header_timeout",
                f"the request headers did not arrive within {self.limits.header_timeout:g} s",
            )
        )

    def _refuse(self, response: bytes) -> None:
        self._cancel_header_timer()
        self._unset_keepalive_if_required()
        if not self.transport.is_closing():
            self.transport.write(response)
            self.transport.close()
