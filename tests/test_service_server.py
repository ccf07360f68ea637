"""The real server: ``python -m jdt_service`` (uvicorn) as a subprocess on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

pytestmark = pytest.mark.slow


def scores_form(prediction: bytes, reference: bytes) -> tuple[bytes, str]:
    """The multipart body of a ``/v1/scores`` upload of two files, and its Content-Type."""
    files = {"prediction": ("p", prediction), "reference": ("r", reference)}
    request = httpx.Request("POST", "http://127.0.0.1/v1/scores", files=files)
    return request.read(), request.headers["content-type"]


class Server:
    def __init__(
        self, temp: Path, log: Path, *extra: str, port: int, program: list[str] | None = None
    ):
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.temp = temp
        self.log = log
        cmd = [sys.executable, *(program or ["-m", "jdt_service"])]
        cmd += ["--port", str(self.port), "--device", "cpu"]
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

    def kill(self) -> None:
        """End the process if a failed test left it running."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


@pytest.fixture
def start_server() -> Iterator[Callable[..., Server]]:
    """``start_server(...)``: a :class:`Server` that is killed after the test whatever its
    outcome (a test that fails before it stops its server left it running)."""
    started: list[Server] = []

    def start(*args: Any, **kwargs: Any) -> Server:
        started.append(Server(*args, **kwargs))
        return started[-1]

    yield start
    for srv in started:
        srv.kill()


@pytest.fixture(scope="module")
def server(tmp_path_factory, free_port) -> Iterator[Server]:
    base = tmp_path_factory.mktemp("server")
    (base / "uploads").mkdir()
    srv = Server(
        base / "uploads",
        base / "server.log",
        *("--max-concurrency", "2", "--max-queue", "16"),
        port=free_port(),
    )
    yield srv
    srv.stop()


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    assert httpx.get(server.url + "/readyz").json()["status"] == "ready"


def test_real_upload(server: Server, dice_f64, label_pair, nifti_bytes, emptied) -> None:
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
    assert emptied(server.temp) == []


def test_sixteen_concurrent_uploads_are_all_correct(
    server: Server, dice_f64, label_pair, nifti_bytes, emptied
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
    assert emptied(server.temp) == []


def test_client_that_disconnects_mid_upload_leaves_no_file(server: Server, emptied) -> None:
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
    assert emptied(server.temp) == []
    assert httpx.get(server.url + "/healthz").status_code == 200


def test_malformed_requests_log_json_lines_only(server: Server) -> None:
    """A form with the wrong boundary makes python_multipart log a warning: none reaches the
    log as bare text. A request with both body lengths gets a JSON 400 and a close."""
    start = server.log.stat().st_size
    body = b'--OTHER\r\nContent-Disposition: form-data; name="prediction"\r\n\r\nx\r\n'
    r = httpx.post(
        server.url + "/v1/scores",
        content=body,
        headers={"content-type": "multipart/form-data; boundary=XBOUNDARYX"},
        timeout=10,
    )
    assert r.status_code == 400 and r.json()["detail"]["code"] == "malformed_multipart"
    with socket.create_connection(("127.0.0.1", server.port)) as sock:
        sock.sendall(
            b"POST /v1/scores HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v1/info HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 400") and answer.count(b"HTTP/1.1 ") == 1, answer
    assert b'"malformed_request"' in answer
    time.sleep(0.5)  # the request's log line is written after its answer
    with server.log.open("rb") as log:
        log.seek(start)
        lines = log.read().decode().splitlines()
    assert lines and all(json.loads(line) for line in lines), lines  # every line is JSON
    assert any(json.loads(line).get("error_code") == "malformed_multipart" for line in lines)


def test_sigterm_finishes_the_request_in_flight_then_exits_0(
    tmp_path: Path, label_pair, nifti_bytes, free_port, start_server
) -> None:
    (tmp_path / "uploads").mkdir()
    srv = start_server(tmp_path / "uploads", tmp_path / "server.log", port=free_port())
    assert httpx.get(srv.url + "/v1/info").json()["device"] == "cpu"
    pred, ref = label_pair((10, 9, 8), seed=5)
    body, content_type = scores_form(nifti_bytes(pred), nifti_bytes(ref))
    head = f"POST /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
    head += f"Content-Type: {content_type}\r\nConnection: close\r\n\r\n"
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


# ---------------------------------------------------------------- clients that hold the service


def read_response(sock: socket.socket, timeout: float = 10) -> bytes:
    """What the server sends until it closes the connection (or ``timeout`` passes)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


@pytest.fixture(scope="module")
def strict_server(tmp_path_factory, free_port) -> Iterator[Server]:
    """Short header timeout, few connections, one scoring slot and no queue."""
    base = tmp_path_factory.mktemp("strict")
    (base / "uploads").mkdir()
    srv = Server(
        base / "uploads",
        base / "server.log",
        *("--header-timeout", "1", "--max-connections", "40", "--min-upload-rate", "2000"),
        *("--max-concurrency", "1", "--max-queue", "0", "--max-uploads", "8"),
        port=free_port(),
    )
    yield srv
    srv.stop()


def test_idle_and_slow_header_connections_are_closed(strict_server: Server) -> None:
    idle = [socket.create_connection(("127.0.0.1", strict_server.port)) for _ in range(20)]
    slow = socket.create_connection(("127.0.0.1", strict_server.port))
    line = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100

    def trickle() -> None:  # one byte every 0.1 s: the head would take 12 s
        try:
            for i in range(len(line)):
                slow.sendall(line[i : i + 1])
                time.sleep(0.1)
        except OSError:
            pass  # closed by the server

    sender = threading.Thread(target=trickle)
    sender.start()
    assert httpx.get(strict_server.url + "/healthz", timeout=5).status_code == 200
    answers = [read_response(s) for s in [*idle, slow]]
    sender.join(timeout=15)
    for sock in [*idle, slow]:
        sock.close()
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert b'"header_timeout"' in answers[-1]
    assert httpx.get(strict_server.url + "/healthz", timeout=5).status_code == 200


def test_connections_past_the_cap_get_503_at_once(strict_server: Server) -> None:
    socks = [socket.create_connection(("127.0.0.1", strict_server.port)) for _ in range(45)]
    try:
        answers = [read_response(s, timeout=5) for s in socks]
    finally:
        for sock in socks:
            sock.close()
    refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
    assert len(refused) >= 5 and all(b"too_many_connections" in a for a in refused)
    assert all(a.startswith((b"HTTP/1.1 503", b"HTTP/1.1 408")) for a in answers)
    assert httpx.get(strict_server.url + "/healthz", timeout=5).status_code == 200


def test_huge_header_is_431_and_others_are_served(strict_server: Server) -> None:
    sock = socket.create_connection(("127.0.0.1", strict_server.port))
    sent = [0]

    def send_huge() -> None:  # a 64 MiB header line
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Huge: ")
            for _ in range(1024):
                sock.sendall(b"a" * 65536)
                sent[0] += 65536
        except OSError:
            pass

    sender = threading.Thread(target=send_huge)
    sender.start()
    assert httpx.get(strict_server.url + "/healthz", timeout=5).status_code == 200
    answer = read_response(sock)
    sender.join(timeout=30)
    sock.close()
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b'"headers_too_large"' in answer
    assert sent[0] < 64 << 20  # refused long before the end


@pytest.mark.parametrize("size", [66_000, 120_000, 200_000])
def test_a_head_sent_whole_is_held_to_the_same_limit(strict_server: Server, size: int) -> None:
    """h11 bounds only a head still incomplete: one of up to ~128 KiB that arrived in one
    read was served (200) past the 64 KiB limit."""
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: "
    request = head + b"a" * (size - len(head) - 4) + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        sock.sendall(request)
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
    assert b'"headers_too_large"' in answer
    small = head + b"a" * 60_000 + b"\r\n\r\n"  # under the limit: served
    with socket.create_connection(("127.0.0.1", strict_server.port)) as sock:
        sock.sendall(small)
        assert read_response(sock).startswith(b"HTTP/1.1 200")


def test_slow_bodies_do_not_hold_the_scoring_slot(
    strict_server: Server, label_pair, nifti_bytes
) -> None:
    head = (
        b"POST /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=slow\r\n\r\n--slow\r\n"
    )
    slow = [socket.create_connection(("127.0.0.1", strict_server.port)) for _ in range(4)]
    stop = threading.Event()

    def trickle() -> None:  # 4 bytes/s each, far below the 2000 bytes/s minimum
        try:
            for sock in slow:
                sock.sendall(head)
            while not stop.wait(0.25):
                for sock in slow:
                    sock.sendall(b"C")
        except OSError:
            pass

    sender = threading.Thread(target=trickle)
    sender.start()
    time.sleep(0.3)  # the slow uploads are admitted first
    pred, ref = label_pair((10, 9, 8), seed=21)
    r = httpx.post(
        strict_server.url + "/v1/scores",
        files={"prediction": ("p", nifti_bytes(pred)), "reference": ("r", nifti_bytes(ref))},
        timeout=30,
    )
    answers = [read_response(sock) for sock in slow]
    stop.set()
    sender.join(timeout=10)
    for sock in slow:
        sock.close()
    assert r.status_code == 200, r.text  # the one slot was free: uploads do not hold it
    assert all(a.startswith(b"HTTP/1.1 408") for a in answers), {a[:40] for a in answers}
    assert all(b'"upload_too_slow"' in a for a in answers)


def test_chunked_epilogue_is_refused_before_its_end(
    strict_server: Server, label_pair, nifti_bytes, emptied
) -> None:
    pred, ref = label_pair((10, 9, 8), seed=22)
    form, content_type = scores_form(nifti_bytes(pred), nifti_bytes(ref))
    head = (
        "POST /v1/scores HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", strict_server.port))
    sent = [0]

    def send() -> None:  # the form, then up to 192 MiB of epilogue
        try:
            sock.sendall(head + f"{len(form):x}\r\n".encode() + form + b"\r\n")
            chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
            for _ in range(3072):
                sock.sendall(chunk)
                sent[0] += 65536
        except OSError:
            pass

    sender = threading.Thread(target=send)
    sender.start()
    answer = read_response(sock, timeout=30)
    sock.close()
    sender.join(timeout=30)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"upload_too_large"' in answer
    assert sent[0] < 192 << 20
    assert emptied(strict_server.temp) == []


_RUNAWAY = """
import sys, threading
import jdt_service.app as app_module
from jdt_service.dependencies import get_scorer
from jdt_service.server import main

build = app_module.create_app

def runaway(*args, **kwargs):
    threading.Event().wait()  # a scoring job that never ends

def create_app(settings=None):
    app = build(settings)
    app.dependency_overrides[get_scorer] = lambda: runaway
    return app

app_module.create_app = create_app
sys.exit(main(sys.argv[1:]))
"""


def test_sigterm_with_a_runaway_job_exits_and_start_up_removes_stale_folders(
    tmp_path: Path, label_pair, nifti_bytes, free_port, start_server
) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    dead = uploads / "jdt-4194305-left"  # above Linux's largest pid: that process is gone
    (dead / "sub").mkdir(parents=True)
    (dead / "prediction.nii.gz").write_bytes(b"left by a killed server")
    alive = uploads / f"jdt-{os.getpid()}-inuse"  # a live process's folder stays
    alive.mkdir()
    srv = start_server(
        uploads,
        tmp_path / "server.log",
        "--request-timeout",
        "2",
        port=free_port(),
        program=["-c", _RUNAWAY],
    )
    assert not dead.exists() and alive.exists()
    pred, ref = label_pair((10, 9, 8), seed=23)
    files = {"prediction": ("p", nifti_bytes(pred)), "reference": ("r", nifti_bytes(ref))}
    r = httpx.post(srv.url + "/v1/scores", files=files, timeout=30)
    assert r.status_code == 504  # the job runs on, past its request
    assert len([p for p in uploads.iterdir() if p != alive]) == 1  # its files are still there
    srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(timeout=30) == 0  # before: the runaway thread kept the process alive
    assert [p.name for p in uploads.iterdir()] == [alive.name]
    lines = (tmp_path / "server.log").read_text().splitlines()
    assert lines and all(json.loads(line) for line in lines)  # every line is JSON
    assert any(json.loads(line)["msg"].startswith("Uvicorn running") for line in lines)


def test_port_in_use_exits_2_before_start_up(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
        done = subprocess.run(
            [sys.executable, "-m", "jdt_service", "--port", str(port), "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
    assert done.returncode == 2
    assert f"port {port} is in use" in done.stderr
    assert "startup" not in (done.stdout + done.stderr).lower()


def test_a_data_folder_it_cannot_write_exits_2_before_start_up(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("a file where the data folder should be")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env["JDT_DATA_DIR"] = str(blocked / "data")
    done = subprocess.run(
        [sys.executable, "-m", "jdt_service", "--port", "0", "--log-format", "json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert done.returncode == 2, done.stderr
    assert "JDT_DATA_DIR" in done.stderr and str(blocked / "data") in done.stderr
    assert "traceback" not in (done.stdout + done.stderr).lower()
