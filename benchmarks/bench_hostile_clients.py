"""Hostile clients against a real ``python -m jdt_service`` on 127.0.0.1: status, time, RSS.

For each attack a fresh server is started from the source tree given (``--source``, the
checkout whose ``plugin/`` and ``service/`` are put on ``PYTHONPATH``), so the same script
measures the code before and after a change. Settings are passed as ``JDT_*`` variables (an
older server ignores the ones it does not know). The peak RSS is the server's ``VmHWM``
after the attack, minus the one after start-up. Prints one JSON object per attack.

    python benchmarks/bench_hostile_clients.py --source /path/to/checkout [--only item7]
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import free_port, status_bytes

_RUNAWAY = """
import sys, threading
import jdt_service.app as app_module

def runaway(*args, **kwargs):
    threading.Event().wait()  # a scoring job that never ends

try:  # a service with a scorer dependency
    from jdt_service.dependencies import get_scorer
    build = app_module.create_app
    def create_app(settings=None):
        app = build(settings)
        app.dependency_overrides[get_scorer] = lambda: runaway
        return app
    app_module.create_app = create_app
except ImportError:  # an older service calls score_files from its router
    import jdt_service.routers.scores as scores
    scores.score_files = runaway
from jdt_service.server import main
sys.exit(main(sys.argv[1:]))
"""


def nifti(array: np.ndarray) -> bytes:
    return gzip.compress(nib.Nifti1Image(array, np.eye(4)).to_bytes(), compresslevel=1)


class Server:
    def __init__(self, source: Path, env: dict[str, str], runaway: bool = False) -> None:
        self.temp = Path(tempfile.mkdtemp(prefix="bench-hostile-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        program = ["-c", _RUNAWAY] if runaway else ["-m", "jdt_service"]
        cmd = [sys.executable, *program, "--port", str(self.port), "--device", "cpu"]
        cmd += ["--temp-dir", str(self.temp), "--log-format", "json"]
        full_env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
        full_env.update(env)
        full_env["PYTHONPATH"] = f"{source / 'plugin'}:{source / 'service'}"
        self.log = self.temp.with_suffix(".log")
        self.proc = subprocess.Popen(
            cmd, env=full_env, stdout=self.log.open("wb"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
        self.base_rss = status_bytes("VmHWM", self.proc.pid)

    def peak_mib(self) -> float:
        return round((status_bytes("VmHWM", self.proc.pid) - self.base_rss) / 2**20, 1)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def read_status(sock: socket.socket, timeout: float) -> int:
    sock.settimeout(timeout)
    try:
        data = sock.recv(64)
    except (TimeoutError, ConnectionResetError):
        return 0
    return int(data.split()[1]) if data.startswith(b"HTTP/1.1") else 0


def health_ms(url: str) -> float:
    started = time.perf_counter()
    try:
        httpx.get(url + "/healthz", timeout=30)
    except httpx.TransportError:
        return -1.0
    return round(1000 * (time.perf_counter() - started), 1)


def item6(srv: Server) -> dict[str, Any]:
    shape = (256, 256, 256)
    labels = (np.arange(np.prod(shape)) % 3).reshape(shape).astype(np.float64)
    files = {"prediction": ("p", nifti(labels)), "reference": ("r", nifti(labels))}
    statuses: list[int] = []

    def post() -> None:
        statuses.append(httpx.post(srv.url + "/v1/scores", files=files, timeout=300).status_code)

    started = time.perf_counter()
    threads = [threading.Thread(target=post) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return {"status": sorted(statuses), "s": round(time.perf_counter() - started, 2)}


def item7(srv: Server) -> dict[str, Any]:
    sock = socket.create_connection(("127.0.0.1", srv.port))
    health: list[float] = []

    def send() -> None:
        with contextlib.suppress(OSError):
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Huge: " + b"a" * (64 << 20))

    started = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    for _ in range(5):
        health.append(health_ms(srv.url))
    sender.join()
    status = read_status(sock, 30)
    sock.close()
    return {
        "status": status,
        "s": round(time.perf_counter() - started, 2),
        "healthz_ms_max": max(health),
    }


def item8(srv: Server) -> dict[str, Any]:
    socks = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(1000)]
    time.sleep(4)
    closed = 0
    for s in socks:
        s.setblocking(False)
        try:
            closed += s.recv(1) != b"x"  # data (408) or EOF: the server closed it
        except BlockingIOError:
            pass
        except OSError:
            closed += 1
    health = health_ms(srv.url)
    for s in socks:
        s.close()
    return {"idle_sockets": 1000, "closed_by_server_after_4s": closed, "healthz_ms": health}


def item9(srv: Server) -> dict[str, Any]:
    head = (
        b"POST /v1/scores HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n"
        b"Content-Type: multipart/form-data; boundary=slow\r\n\r\n--slow\r\n"
    )
    slow = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(6)]
    for s in slow:
        s.sendall(head)
    time.sleep(0.5)
    pred = (np.arange(64**3) % 3).reshape(64, 64, 64).astype(np.uint8)
    files = {"prediction": ("p", nifti(pred)), "reference": ("r", nifti(pred))}
    started = time.perf_counter()
    r = httpx.post(srv.url + "/v1/scores", files=files, timeout=60)
    elapsed = round(time.perf_counter() - started, 2)
    slow_status = [read_status(s, 10) for s in slow]
    for s in slow:
        s.close()
    return {"status_of_a_normal_upload": r.status_code, "s": elapsed, "slow_bodies": slow_status}


def item10(srv: Server) -> dict[str, Any]:
    pred = (np.arange(32**3) % 3).reshape(32, 32, 32).astype(np.uint8)
    request = httpx.Request(
        "POST", srv.url, files={"prediction": ("p", nifti(pred)), "reference": ("r", nifti(pred))}
    )
    form = request.read()
    head = (
        "POST /v1/scores HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
        f"Content-Type: {request.headers['content-type']}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", srv.port))
    sent = [0]

    def send() -> None:
        try:
            sock.sendall(head + f"{len(form):x}\r\n".encode() + form + b"\r\n")
            chunk = b"10000\r\n" + b"\0" * 65536 + b"\r\n"
            for _ in range(3072):
                sock.sendall(chunk)
                sent[0] += 65536
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass

    started = time.perf_counter()
    sender = threading.Thread(target=send)
    sender.start()
    status = read_status(sock, 120)
    elapsed = round(time.perf_counter() - started, 2)
    sock.close()
    sender.join()
    return {"status": status, "s": elapsed, "epilogue_mib_sent": round(sent[0] / 2**20, 1)}


def item11(srv: Server) -> dict[str, Any]:
    pred = (np.arange(16**3) % 3).reshape(16, 16, 16).astype(np.uint8)
    files = {"prediction": ("p", nifti(pred)), "reference": ("r", nifti(pred))}
    status = httpx.post(srv.url + "/v1/scores", files=files, timeout=60).status_code
    started = time.perf_counter()
    srv.proc.send_signal(signal.SIGTERM)
    try:
        code = srv.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        code = None
        srv.proc.kill()
        srv.proc.wait()
    elapsed = round(time.perf_counter() - started, 2)
    left = [p.name for p in srv.temp.iterdir()]
    return {"request": status, "exit": code, "sigterm_to_exit_s": elapsed, "left": len(left)}


def boundary(srv: Server) -> dict[str, Any]:
    b = "b" * 300
    body = f'--{b}\r\nContent-Disposition: form-data; name="prediction"\r\n\r\nx\r\n--{b}--\r\n'
    r = httpx.post(
        srv.url + "/v1/scores",
        content=body.encode(),
        headers={"Content-Type": f"multipart/form-data; boundary={b}"},
    )
    return {"status": r.status_code}


ATTACKS: dict[str, tuple[Callable[[Server], dict[str, Any]], dict[str, str], bool]] = {
    "item6": (item6, {"JDT_MAX_JOB_BYTES": str(256 << 20)}, False),
    "item7": (item7, {}, False),
    "item8": (item8, {"JDT_HEADER_TIMEOUT": "2", "JDT_MAX_CONNECTIONS": "2000"}, False),
    "item9": (
        item9,
        {
            "JDT_MAX_CONCURRENCY": "2",
            "JDT_MAX_QUEUE": "4",
            "JDT_MIN_UPLOAD_RATE": "2000",
            "JDT_HEADER_TIMEOUT": "2",
        },
        False,
    ),
    "item10": (item10, {}, False),
    "item11": (item11, {"JDT_REQUEST_TIMEOUT": "3"}, True),
    "boundary": (boundary, {}, False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, required=True)
    parser.add_argument("--only", nargs="*", choices=list(ATTACKS))
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 8192), hard))
    for name in args.only or ATTACKS:
        attack, env, runaway = ATTACKS[name]
        srv = Server(args.source.resolve(), env, runaway)
        try:
            result = attack(srv)
            if srv.proc.poll() is None:
                result["peak_rss_mib"] = srv.peak_mib()
        finally:
            srv.stop()
        print(json.dumps({"attack": name, **result}), flush=True)


if __name__ == "__main__":
    main()
