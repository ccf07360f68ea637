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
  Too Large`` (uvicorn would say 400), so a 64 MiB header line is refused after 64 KiB; a
  head that arrived whole in one read (up to the 256 KiB asyncio reads at once) is held to
  the same limit once parsed;
* a **connection cap**: past ``max_connections`` open connections, a new one gets ``503``
  with ``Retry-After`` and is closed at once.

Two stricter rules about the request itself:

* a request with both ``Content-Length`` and ``Transfer-Encoding`` gets ``400
  malformed_request`` and the connection is closed (RFC 9112 section 6.1: h11 would read the
  body as chunked and keep the connection open, so a front proxy that honours
  ``Content-Length`` instead would see a different next request: request smuggling);
* every request h11 cannot parse (a bad or duplicate ``Content-Length``, a
  ``Transfer-Encoding`` other than ``chunked``, a bad request line or header) gets ``400
  malformed_request`` in the service's JSON error shape, not uvicorn's plain text.

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
#: the ``detail.code`` of a request that is not valid HTTP/1.1
MALFORMED_REQUEST = "malformed_request"


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


class _StrictConnection(h11.Connection):
    """h11's connection, refusing a request that declares both ``Content-Length`` and
    ``Transfer-Encoding`` (h11 would frame its body by ``Transfer-Encoding``), and a complete
    head larger than ``max_head`` bytes (h11 bounds only an incomplete one)."""

    #: set when the last request was refused for having both
    both_lengths = False
    #: set when the last request was refused for its head's size
    head_too_large = False

    def __init__(self, max_incomplete_event_size: int, max_head: int) -> None:
        super().__init__(h11.SERVER, max_incomplete_event_size)
        self.max_head = max_head

    def next_event(self) -> h11.Event | type[h11.NEED_DATA] | type[h11.PAUSED]:
        event = super().next_event()
        if isinstance(event, h11.Request):
            names = {name for name, _ in event.headers}  # lower case in h11
            if b"content-length" in names and b"transfer-encoding" in names:
                self.both_lengths = True
                raise h11.RemoteProtocolError("both Content-Length and Transfer-Encoding")
            # the head as h11 parsed it: request line and "name: value" lines with their CRLFs
            size = len(event.method) + len(event.target) + 12
            size += sum(len(name) + len(value) + 4 for name, value in event.headers) + 2
            if size > self.max_head:
                self.head_too_large = True
                raise h11.RemoteProtocolError("request head too large")
        return event


class BoundedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol plus a header timeout, a head size limit and a connection cap."""

    def __init__(self, config: Any, *args: Any, settings: Settings | None = None, **kwargs: Any):
        self.limits = settings or _settings()
        super().__init__(config, *args, **kwargs)
        # as uvicorn builds its connection; server.run sets the size to max_header_bytes
        size = config.h11_max_incomplete_event_size or self.limits.max_header_bytes
        self.conn = _StrictConnection(size, self.limits.max_header_bytes)
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
        """uvicorn's answer to a request h11 refused (``msg`` is uvicorn's fixed text, which
        is logged): ``431`` past the head size limit, else ``400 malformed_request``, in the
        service's JSON error shape; the connection is closed after it."""
        buffered, _ = self.conn.trailing_data
        too_large = isinstance(self.conn, _StrictConnection) and self.conn.head_too_large
        if too_large or len(buffered) > self.limits.max_header_bytes:
            self._refuse(
                raw_error(
                    431,
                    "Request Header Fields Too Large",
                    "headers_too_large",
                    f"the request head is larger than {self.limits.max_header_bytes} bytes",
                )
            )
            return
        self._cancel_header_timer()
        self._drop_cycle()
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            # the app's response has begun (the request body went bad after it): no room
            # for another one; uvicorn's own 400 would raise here
            self.transport.close()
            return
        if isinstance(self.conn, _StrictConnection) and self.conn.both_lengths:
            message = (
                "the request has both Content-Length and Transfer-Encoding; send one "
                "(RFC 9112 section 6.1)"
            )
        else:
            message = (
                "the request is not valid HTTP/1.1 (its request line, a header, "
                "Content-Length, Transfer-Encoding or the chunked framing)"
            )
        body = json.dumps({"detail": {"code": MALFORMED_REQUEST, "message": message}}).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
        ]
        # through h11 as uvicorn does, so that its state knows a response was sent
        for event in (
            h11.Response(status_code=400, headers=headers, reason=b"Bad Request"),
            h11.Data(data=body),
            h11.EndOfMessage(),
        ):
            self.transport.write(self.conn.send(event) or b"")
        self.transport.close()

    def _drop_cycle(self) -> None:
        """The request the app may be running sees its connection closed now, as after
        ``connection_lost`` (which runs only on a later turn of the loop): its response is
        dropped, not sent after this one (an ``Exception in ASGI application`` error line in
        the log for every such request), and its next ``receive()`` is a disconnect."""
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()

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
