"""Bare servers: the least an HTTP server in Python adds to a score (the service's floor).

``--mode thread`` (default): a bare asyncio HTTP/1.1 server (no framework, no limits, no
logging, no checks of the request: for benchmarks only, never expose it) that answers
``POST /v1/scores`` with the same work as the service: the two multipart parts go to files in
a fresh temporary folder, ``monai_jdt.scoring.score_files`` scores them on a worker thread,
the report goes back as JSON and the folder is deleted. ``GET`` answers ``ok``.
``--mode inline``: the same, scoring on the event loop itself (no thread hand-off at all).
``--mode fastapi``: a one-route FastAPI app under uvicorn (h11) doing that same work, scoring
on FastAPI's thread pool: what the framework costs without the service's bounds, auth,
logging and metrics. ``--mode fastapi-empty``: that route reading the body and answering
``{}`` without scoring: the framework's own floor for the upload. ``run_load.py --bare``
drives them all alongside the real service.

    python benchmarks/load/bare_server.py --port 8800 [--mode inline|fastapi|fastapi-empty]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from monai_jdt.scoring import ScoringOptions, score_files
from monai_jdt.scoring.allocator import tune_allocator

_OPTIONS = ScoringOptions(device="cpu")
_SCORER = ThreadPoolExecutor(1)


def score_body(body: bytes, boundary: bytes) -> bytes:
    """The report of the two file parts of a multipart ``body``, as JSON bytes."""
    folder = Path(tempfile.mkdtemp(prefix="jdt-bare-"))
    try:
        paths = []
        for index, part in enumerate(body.split(b"--" + boundary)[1:3]):
            path = folder / f"{index}.nii.gz"
            path.write_bytes(part.split(b"\r\n\r\n", 1)[1][:-2])  # part headers, final CRLF
            paths.append(path)
        return json.dumps(score_files(paths[0], paths[1], _OPTIONS).to_dict()).encode()
    finally:
        shutil.rmtree(folder)


def fastapi_app(score: bool) -> FastAPI:
    """The one-route FastAPI app of ``--mode fastapi`` (``score``) / ``fastapi-empty``."""
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b"ok")

    @app.post("/v1/scores")
    async def scores(request: Request) -> Response:
        body = await request.body()
        if not score:
            return Response(b"{}", media_type="application/json")
        boundary = request.headers["content-type"].split("boundary=", 1)[1].encode()
        report = await run_in_threadpool(score_body, body, boundary)
        return Response(report, media_type="application/json")

    return app


class _Connection(asyncio.Protocol):
    inline = False  # score on the event loop instead of the worker thread

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.buffer = b""
        self.answering: set[asyncio.Task[None]] = set()

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = dict(line.lower().split(": ", 1) for line in lines[1:])
            length = int(headers.get("content-length", 0))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            if length == 0:
                self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
            else:
                boundary = headers["content-type"].split("boundary=", 1)[1].encode()
                task = asyncio.ensure_future(self._answer(body, boundary))
                self.answering.add(task)  # one request at a time per connection (no pipelining)
                task.add_done_callback(self.answering.discard)

    async def _answer(self, body: bytes, boundary: bytes) -> None:
        if self.inline:
            report = score_body(body, boundary)
        else:
            loop = asyncio.get_running_loop()
            report = await loop.run_in_executor(_SCORER, score_body, body, boundary)
        head = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
        self.transport.write(head + b"content-length: %d\r\n\r\n" % len(report) + report)


async def serve(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(_Connection, "127.0.0.1", port)
    await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--mode", choices=["thread", "inline", "fastapi", "fastapi-empty"], default="thread"
    )
    args = parser.parse_args()
    tune_allocator()  # the service's malloc settings, so the scoring costs the same
    if args.mode.startswith("fastapi"):
        import uvicorn

        app = fastapi_app(score=args.mode == "fastapi")
        uvicorn.run(app, host="127.0.0.1", port=args.port, http="h11", log_level="warning")
        return
    _Connection.inline = args.mode == "inline"
    asyncio.run(serve(args.port))


if __name__ == "__main__":
    main()
