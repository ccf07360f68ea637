"""The bounded HTTP protocol tells the app when a graceful shutdown begins, and answers the
requests h11 refuses (or that declare two body lengths) with a JSON ``400`` and a close."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from uvicorn.server import ServerState

from jdt_service.protocol import STOPPING_STATE, BoundedH11Protocol
from jdt_service.settings import Settings


async def _app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    raise AssertionError("no request is sent")


def test_shutdown_sets_the_stopping_event_of_the_lifespan_state(tmp_path: Path) -> None:
    """uvicorn's ``Server.shutdown`` calls ``shutdown()`` on every open connection before it
    waits for the requests in flight; the protocol then sets the app's stopping event."""

    async def run() -> bool:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(_app, lifespan="off")
        config.load()
        state = ServerState()
        stopping = asyncio.Event()
        settings = Settings(temp_dir=tmp_path, data_dir=tmp_path / "data")
        server = await loop.create_server(
            lambda: BoundedH11Protocol(
                config, state, {STOPPING_STATE: stopping}, settings=settings
            ),
            "127.0.0.1",
            0,
        )
        port = server.sockets[0].getsockname()[1]
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        for _ in range(100):  # until the server side has accepted the connection
            if state.connections:
                break
            await asyncio.sleep(0.01)
        assert not stopping.is_set()
        for connection in list(state.connections):
            connection.shutdown()
        writer.close()
        server.close()
        await server.wait_closed()
        return stopping.is_set()

    assert asyncio.run(run())


# ---------------------------------------------------------------- requests h11 refuses


async def _echo(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """Reads the whole body and answers ``200`` with its length."""
    if scope["type"] != "http":
        return
    size, more = 0, True
    while more:
        message = await receive()
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _answer_at_once(scope: Any, receive: Any, send: Any) -> None:
    """Answers 405 without reading the body (as a route that takes none)."""
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"2")]
    await send({"type": "http.response.start", "status": 405, "headers": headers})
    await send({"type": "http.response.body", "body": b"no"})


def _exchange(tmp_path: Path, request: bytes, app: Any = _echo) -> bytes:
    """Everything a real ``BoundedH11Protocol`` server running ``app`` answers to ``request``
    (sent in one write) until it closes the connection (or 5 s pass)."""

    async def run() -> bytes:
        loop = asyncio.get_running_loop()
        config = uvicorn.Config(app, lifespan="off", log_config=None)  # logs reach caplog
        config.load()
        state = ServerState()
        settings = Settings(temp_dir=tmp_path, data_dir=tmp_path / "data")
        server = await loop.create_server(
            lambda: BoundedH11Protocol(config, state, {}, settings=settings), "127.0.0.1", 0
        )
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        answer = b""
        try:
            while chunk := await asyncio.wait_for(reader.read(65536), 5):
                answer += chunk
        except (asyncio.TimeoutError, ConnectionError):
            answer += b"<not closed>"
        writer.close()
        server.close()
        await server.wait_closed()
        return answer

    return asyncio.run(run())


def _responses(answer: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """The responses in ``answer``: status, headers (lower-case names), body."""
    found = []
    while answer.startswith(b"HTTP/1.1 "):
        head, _, rest = answer.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = dict(line.lower().split(": ", 1) for line in lines[1:])
        size = int(headers["content-length"])
        found.append((int(lines[0].split()[1]), headers, rest[:size]))
        answer = rest[size:]
    assert answer in (b"", b"<not closed>"), answer[:200]
    return found


def test_well_formed_pipelined_requests_are_all_served(tmp_path: Path) -> None:
    request = (
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\nabcd"
        b"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    answers = _responses(_exchange(tmp_path, request))
    assert [(status, body) for status, _, body in answers] == [
        (200, b"4"),
        (200, b"3"),
        (200, b"0"),
    ]


def test_content_length_with_transfer_encoding_is_400_and_closes(tmp_path: Path) -> None:
    """RFC 9112 section 6.1: h11 frames such a body as chunked and keeps the connection; a
    proxy that honours Content-Length would read the next request elsewhere (smuggling)."""
    smuggled = b"GET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"
    for order in (
        b"Content-Length: 4\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n",
    ):
        request = b"POST /a HTTP/1.1\r\nHost: x\r\n" + order + b"\r\n0\r\n\r\n" + smuggled
        answer = _exchange(tmp_path, request)
        assert not answer.endswith(b"<not closed>")
        [(status, headers, body)] = _responses(answer)  # the next request is not served
        assert status == 400 and headers["connection"] == "close"
        assert headers["content-type"] == "application/json"
        detail = json.loads(body)["detail"]
        assert detail["code"] == "malformed_request"
        assert "Content-Length and Transfer-Encoding" in detail["message"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"GET /a b HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET /a HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
        b"GET /\r\n\r\n",  # HTTP/0.9
        b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
    ids=["negative-cl", "two-cl", "te-gzip", "te-xchunked", "space", "nul", "http09", "chunk"],
)
def test_protocol_errors_are_400_in_the_json_error_shape(
    tmp_path: Path, request_bytes: bytes
) -> None:
    answer = _exchange(tmp_path, request_bytes)
    assert not answer.endswith(b"<not closed>")
    [(status, headers, body)] = _responses(answer)
    assert status == 400 and headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    detail = json.loads(body)["detail"]
    assert detail["code"] == "malformed_request" and "not valid HTTP/1.1" in detail["message"]


def test_a_body_that_breaks_after_the_app_answered_logs_no_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The app answers before reading a chunked body whose framing then breaks: the client
    gets the one 400, and the app's own answer is dropped instead of raising inside uvicorn
    (an error line in the log for every such request)."""
    request = b"POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3;x\nabc\r\n"
    with caplog.at_level(logging.WARNING):
        answer = _exchange(tmp_path, request, _answer_at_once)
    statuses = [status for status, _, _ in _responses(answer)]
    assert statuses in ([400], [405]), answer[:300]
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]
