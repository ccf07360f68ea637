"""The bounded HTTP protocol tells the app when a graceful shutdown begins."""

from __future__ import annotations

import asyncio
from pathlib import Path

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
