"""The real server: ``python -m jdt_service`` (uvicorn) as a subprocess on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.slow


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, temp: Path, log: Path, *extra: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp = temp
        self.log = log
        cmd = [sys.executable, "-m", "jdt_service", "--port", str(self.port), "--device", "cpu"]
        cmd += ["--temp-dir", str(temp), "--log-format", "json", *extra]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
        self.proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, log.read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        raise AssertionError("server did not start:\n" + log.read_text())

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("server")
    (base / "uploads").mkdir()
    srv = Server(
        base / "uploads", base / "server.log", "--max-concurrency", "2", "--max-queue", "16"
    )
    yield srv
    srv.stop()


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


def test_real_upload(server: Server, dice_f64, label_pair, nifti_bytes) -> None:
    pred, ref = label_pair((20, 16, 12), seed=11)
    r = httpx.post(
        server.url + "/v1/scores",
        files={
            "prediction": ("p.nii.gz", nifti_bytes(pred)),
            "reference": ("r.nii.gz", nifti_bytes(ref)),
        },
        timeout=60,
    )
    assert r.status_code == 200, r.text
    rows = {row["label"]: row for row in r.json()["labels"]}
    assert rows[1]["dice"] == pytest.approx(dice_f64(pred, ref, 1), abs=1e-6)
    assert list(server.temp.iterdir()) == []


def test_sixteen_concurrent_uploads_are_all_correct(
    server: Server, dice_f64, label_pair, nifti_bytes
) -> None:
    pairs = [label_pair((16, 16, 12), seed=100 + i) for i in range(16)]

    async def drive() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=server.url, timeout=120) as client:
            return await asyncio.gather(
                *(
                    client.post(
                        "/v1/scores",
                        files={
                            "prediction": ("p", nifti_bytes(p)),
                            "reference": ("r", nifti_bytes(q)),
                        },
                        data={"case_id": f"case-{i}"},
                    )
                    for i, (p, q) in enumerate(pairs)
                )
            )

    responses = asyncio.run(drive())
    assert [r.status_code for r in responses] == [200] * 16
    for (pred, ref), r in zip(pairs, responses, strict=True):
        rows = {row["label"]: row for row in r.json()["labels"]}
        for label in (1, 2):
            assert rows[label]["dice"] == pytest.approx(dice_f64(pred, ref, label), abs=1e-6)
    assert list(server.temp.iterdir()) == []


def test_client_that_disconnects_mid_upload_leaves_no_file(server: Server) -> None:
    boundary = "cutcutcut"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="prediction"; filename="p"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    body_length = len(head) + 10_000_000
    request = (
        f"POST /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {body_length}\r\n"
        f"Content-Type: multipart/form-data; boundary={boundary}\r\n\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(request + head + b"\x1f\x8b" + b"\x00" * 200_000)
        deadline = time.monotonic() + 10
        while not any(server.temp.rglob("*.upload")) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any(server.temp.rglob("*.upload")), "the upload never reached the temp dir"
    deadline = time.monotonic() + 10
    while list(server.temp.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert list(server.temp.iterdir()) == []
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    tmp_path: Path, label_pair, nifti_bytes
) -> None:
    (tmp_path / "uploads").mkdir()
    srv = Server(tmp_path / "uploads", tmp_path / "server.log")
    assert httpx.get(srv.url + "/v1/info").json()["device"] == "cpu"
    pred, ref = label_pair((10, 9, 8), seed=5)
    request = httpx.Request(
        "POST",
        srv.url + "/v1/scores",
        files={"prediction": ("p", nifti_bytes(pred)), "reference": ("r", nifti_bytes(ref))},
    )
    body = request.read()
    head = f"POST /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += f"Content-Type: {request.headers['content-type']}\r\nConnection: close\r\n\r\n"
    with socket.create_connection(("127.0.0.1", srv.port)) as sock:
        sock.sendall(head.encode() + body[:100])  # the request is in flight...
        time.sleep(0.5)
        srv.proc.send_signal(signal.SIGTERM)  # ...when the server is told to stop
        time.sleep(0.5)
        sock.sendall(body[100:])
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
    assert b'"dice"' in answer
    assert srv.proc.wait(timeout=30) == 0
    log = (tmp_path / "server.log").read_text()
    assert "Traceback" not in log
    assert "Finished server process" in log
    with pytest.raises(httpx.TransportError):
        httpx.get(srv.url + "/healthz", timeout=1)
    assert list((tmp_path / "uploads").iterdir()) == []
