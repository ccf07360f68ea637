"""Load benchmark of the scoring service against the library call on the same files.

Starts the real server (``python -m jdt_service``, uvicorn) on a free loopback port, writes
128^3 and 256^3 label pairs (.nii.gz, uint8, 4 labels: ellipsoids and a prediction whose
boundaries are shifted), then for each size:

* at 1 client, alternates ``monai_jdt.scoring.score_files`` in this process and
  ``POST /v1/scores`` on the same files from one keep-alive client, httpx or ``http.client``
  (``--client``), so both see the same background load; with ``--bare``, the same against
  ``bare_server.py`` (the same work in a bare asyncio server, scoring on a worker thread or on
  its event loop: the floor of any Python server; in a one-route FastAPI app; and that app
  answering without scoring: the framework's floor for the upload);
* at more clients, drives ``POST /v1/scores`` concurrently with ``hey`` (``apt-get install
  hey``) or, without it, httpx on asyncio (bodies are encoded once): throughput, p50 / p99
  latency, error count;
* reads the server's peak RSS (``VmHWM`` of ``/proc/<pid>/status``) after each run.

The HTTP overhead at concurrency 1 is ``p50 latency / library median - 1``. The library calls
run with the allocator thresholds the service sets (``monai_jdt.scoring.allocator``).

    python benchmarks/load/run_load.py                     # both sizes, 1 and 8 clients
    python benchmarks/load/run_load.py --sizes 128 --requests 10 --json out.json
    python benchmarks/load/run_load.py --clients 1 --repeats 100 --client stdlib --bare
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import gzip
import http.client
import io
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import free_port, status_bytes

from monai_jdt.scoring import ScoringOptions, score_files
from monai_jdt.scoring.allocator import tune_allocator

#: ``--bare`` variants: their ``bare_server.py --mode`` and how they are printed
BARE_MODES = {
    "bare": ("thread", "bare server"),
    "bare_inline": ("inline", "bare server, inline"),
    "bare_fastapi": ("fastapi", "one-route FastAPI app"),
    "bare_fastapi_empty": ("fastapi-empty", "one-route FastAPI app, no scoring (its floor)"),
}


def label_pair(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Reference: three ellipsoids (labels 1-3) in a cube of side n; prediction: shifted."""
    rng = np.random.default_rng(seed)
    grid = np.indices((n, n, n), dtype=np.float32) / n
    ref = np.zeros((n, n, n), np.uint8)
    pred = np.zeros((n, n, n), np.uint8)
    for label in (1, 2, 3):
        centre = rng.uniform(0.3, 0.7, 3).astype(np.float32)
        radii = rng.uniform(0.1, 0.25, 3).astype(np.float32)
        shift = rng.uniform(-0.02, 0.02, 3).astype(np.float32)
        for out, c in ((ref, centre), (pred, centre + shift)):
            d = sum(((grid[i] - c[i]) / radii[i]) ** 2 for i in range(3))
            out[d <= 1.0] = label
    return pred, ref


def write_pair(directory: Path, n: int, kind: str = "labels") -> tuple[Path, Path]:
    """The pair as .nii.gz; ``kind="probabilities"`` makes the prediction a float32 map of
    label 1 (with noise) against the reference mask of label 1 as float32."""
    pred, ref = label_pair(n)
    if kind == "probabilities":
        noise = np.random.default_rng(1).uniform(0.0, 0.2, pred.shape).astype(np.float32)
        pred = np.abs((pred == 1).astype(np.float32) - noise)
        ref = (ref == 1).astype(np.float32)
    paths = []
    for name, array in (("pred", pred), ("ref", ref)):
        path = directory / f"{name}_{n}.nii.gz"
        raw = nib.Nifti1Image(array, np.eye(4)).to_bytes()
        path.write_bytes(gzip.compress(raw, compresslevel=6))
        paths.append(path)
    return paths[0], paths[1]


def stats(latencies: list[float], statuses: list[int], wall: float) -> dict:
    ordered = sorted(latencies)
    return {
        "requests": len(ordered),
        "errors": sum(status != 200 for status in statuses),
        "throughput_rps": len(ordered) / wall,
        "p50_s": statistics.median(ordered),
        "p99_s": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
    }


def post_httpx(url: str, body: bytes, ctype: str, clients: int, total: int) -> tuple:
    """``total`` POSTs from ``clients`` concurrent httpx clients: (latencies, statuses, wall)."""
    latencies: list[float] = []
    statuses: list[int] = []

    async def client(ac: httpx.AsyncClient, n: int) -> None:
        for _ in range(n):
            start = time.perf_counter()
            r = await ac.post("/v1/scores", content=body, headers={"Content-Type": ctype})
            latencies.append(time.perf_counter() - start)
            statuses.append(r.status_code)

    async def run() -> float:
        async with httpx.AsyncClient(base_url=url, timeout=600) as ac:
            start = time.perf_counter()
            await asyncio.gather(*(client(ac, total // clients) for _ in range(clients)))
            return time.perf_counter() - start

    wall = asyncio.run(run())
    return latencies, statuses, wall


def post_hey(url: str, body: bytes, ctype: str, clients: int, total: int) -> tuple:
    """The same with ``hey`` (Go; one process, keep-alive): per-request times from its CSV."""
    with tempfile.NamedTemporaryFile(suffix=".bin") as f:
        f.write(body)
        f.flush()
        cmd = ["hey", "-n", str(total), "-c", str(clients), "-m", "POST", "-T", ctype]
        cmd += ["-D", f.name, "-t", "600", "-o", "csv", url + "/v1/scores"]
        start = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        wall = time.perf_counter() - start
    rows = list(csv.DictReader(io.StringIO(out)))
    return [float(r["response-time"]) for r in rows], [int(r["status-code"]) for r in rows], wall


DRIVERS = {"httpx": post_httpx, "hey": post_hey}


class SingleClient:
    """One keep-alive connection that POSTs a body and returns the status: ``httpx.Client``
    (``kind="httpx"``) or the standard library's ``http.client`` (``"stdlib"``, the client
    under ``requests`` and ``urllib3``, about 0.3 ms per request lighter on this machine)."""

    def __init__(self, url: str, kind: str) -> None:
        self.kind = kind
        if kind == "httpx":
            self._httpx = httpx.Client(base_url=url, timeout=600)
        else:
            host, port = url.removeprefix("http://").split(":")
            self._conn = http.client.HTTPConnection(host, int(port), timeout=600)

    def post(self, body: bytes, ctype: str) -> int:
        headers = {"Content-Type": ctype}
        if self.kind == "httpx":
            return self._httpx.post("/v1/scores", content=body, headers=headers).status_code
        self._conn.request("POST", "/v1/scores", body=body, headers=headers)
        response = self._conn.getresponse()
        response.read()
        return response.status

    def close(self) -> None:
        if self.kind == "httpx":
            self._httpx.close()
        else:
            self._conn.close()


def interleaved(
    pred: Path, ref: Path, url: str, repeats: int, client_kind: str = "httpx", block: int = 5
) -> tuple[float, dict]:
    """Library calls and single-client HTTP requests in alternating blocks of ``block``.

    Alternating puts both under the same background load (this machine is shared), so the
    ratio of their medians is the HTTP overhead. The requests go through one persistent
    connection (keep-alive, :class:`SingleClient`), as a script scoring case after case
    would send them. Returns (library median s, HTTP stats).
    """
    options = ScoringOptions(device="cpu")
    body, ctype = multipart_body(pred, ref)
    lib: list[float] = []
    latencies: list[float] = []
    statuses: list[int] = []
    client = SingleClient(url, client_kind)

    def post() -> None:
        start = time.perf_counter()
        status = client.post(body, ctype)
        latencies.append(time.perf_counter() - start)
        statuses.append(status)

    try:
        score_files(pred, ref, options)  # warm-up, both sides
        post()
        if statuses[0] != 200:  # never time error responses as if they were scores
            raise RuntimeError(f"{url}/v1/scores answered {statuses[0]} to the warm-up request")
        latencies.clear()
        statuses.clear()
        for _ in range(max(1, repeats // block)):
            for _ in range(block):
                start = time.perf_counter()
                score_files(pred, ref, options)
                lib.append(time.perf_counter() - start)
            for _ in range(block):
                post()
    finally:
        client.close()
    return statistics.median(lib), stats(latencies, statuses, sum(latencies))


def round_trip_floor(url: str, n: int = 50) -> float:
    """Median time of ``GET /healthz``: what any request costs in HTTP alone on this machine."""
    with httpx.Client(base_url=url) as client:
        times = []
        for _ in range(n):
            start = time.perf_counter()
            client.get("/healthz")
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def multipart_body(pred: Path, ref: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = []
    for field, path in (("prediction", pred), ("reference", ref)):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{field}.nii.gz"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
            + path.read_bytes()
            + b"\r\n"
        )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, f"multipart/form-data; boundary={boundary}"


def wait_until_up(url: str | None, tries: int = 300) -> None:
    """Wait (0.2 s steps) until ``GET url/healthz`` answers 200; nothing for ``None``."""
    if url is None:
        return
    for _ in range(tries):
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.2)


def stop_servers(processes: list[subprocess.Popen[bytes]], work: Path) -> None:
    """SIGTERM each server and wait for it; delete the volumes written into ``work``, then
    ``work`` itself, or say what the servers left there."""
    for process in processes:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=60)
    for path in work.glob("*.nii.gz"):
        path.unlink()
    leftovers = list(work.iterdir())
    work.rmdir() if not leftovers else print(f"leftover files in {work}: {leftovers}")


def peak_rss_mib(pid: int) -> float:
    return status_bytes("VmHWM", pid) / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=8, help="requests per client (>1)")
    parser.add_argument("--repeats", type=int, default=15, help="library/HTTP pairs at 1 client")
    parser.add_argument("--max-concurrency", type=int, default=2)
    parser.add_argument("--max-queue", type=int, default=16)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--kind", choices=["labels", "probabilities"], default="labels")
    parser.add_argument(
        "--driver",
        choices=sorted(DRIVERS),
        default="hey" if shutil.which("hey") else "httpx",
        help="load client (default: hey when installed: apt-get install hey)",
    )
    parser.add_argument(
        "--client",
        choices=["httpx", "stdlib"],
        default="httpx",
        help="the one client at concurrency 1: httpx.Client or http.client (both keep-alive)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="at 1 client, also time bare_server.py in its four modes (the same work without "
        "the service: no framework, on a thread or inline; a one-route FastAPI app; that app "
        "without scoring)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    tune_allocator()  # as the server does: the library call is timed in the same regime
    post = DRIVERS[args.driver]

    work = Path(tempfile.mkdtemp(prefix="jdt-load-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env["JDT_LOG_LEVEL"] = "warning"
    server = subprocess.Popen(
        [sys.executable, "-m", "jdt_service", "--port", str(port), "--device", args.device,
         "--max-concurrency", str(args.max_concurrency), "--max-queue", str(args.max_queue),
         "--temp-dir", str(work)],
        env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    bare: dict[str, tuple[subprocess.Popen[bytes], str]] = {}  # variant: (process, url)
    if args.bare:
        script = Path(__file__).with_name("bare_server.py")
        for variant, (mode, _) in BARE_MODES.items():
            bare_port = free_port()
            command = [sys.executable, str(script), "--port", str(bare_port), "--mode", mode]
            bare[variant] = subprocess.Popen(command, env=env), f"http://127.0.0.1:{bare_port}"
    try:
        for address in (url, *(bare_url for _, bare_url in bare.values())):
            wait_until_up(address)
        idle_rss = peak_rss_mib(server.pid)
        floor = round_trip_floor(url)
        results = []
        print(
            f"driver {args.driver}; server idle peak RSS {idle_rss:.0f} MiB; "
            f"max_concurrency={args.max_concurrency}; "
            f"GET /healthz round trip p50 {floor * 1e3:.2f} ms (the HTTP floor)"
        )
        for n in args.sizes:
            pred, ref = write_pair(work, n, args.kind)
            body, ctype = multipart_body(pred, ref)
            print(f"{n}^3: upload {len(body) / 1e6:.2f} MB")
            for clients in args.clients:
                if clients == 1:
                    lib, row = interleaved(pred, ref, url, args.repeats, args.client)
                    for variant, (_, bare_url) in bare.items():
                        bare_lib, bare_row = interleaved(
                            pred, ref, bare_url, args.repeats, args.client
                        )
                        row[f"{variant}_p50_s"] = bare_row["p50_s"]
                        row[f"{variant}_library_s"] = bare_lib
                        row[f"{variant}_overhead"] = bare_row["p50_s"] / bare_lib - 1
                        row[f"{variant}_errors"] = bare_row["errors"]
                else:
                    post(url, body, ctype, clients, clients)  # warm-up
                    row = stats(*post(url, body, ctype, clients, clients * args.requests))
                row.update(size=n, clients=clients, library_s=lib)
                row.update(peak_rss_mib=peak_rss_mib(server.pid), overhead=row["p50_s"] / lib - 1)
                results.append(row)
                print(
                    f"  clients={clients}: {row['throughput_rps']:.2f} req/s, "
                    f"p50 {row['p50_s'] * 1e3:.1f} ms, p99 {row['p99_s'] * 1e3:.1f} ms, "
                    f"errors {row['errors']}/{row['requests']}, "
                    f"peak RSS {row['peak_rss_mib']:.0f} MiB"
                    + (
                        f"; library {lib * 1e3:.1f} ms, HTTP overhead {row['overhead']:+.1%}"
                        if clients == 1
                        else ""
                    )
                )
                for variant in bare if clients == 1 else ():
                    print(
                        f"  {BARE_MODES[variant][1]}, 1 client: p50 "
                        f"{row[f'{variant}_p50_s'] * 1e3:.1f} ms; library "
                        f"{row[f'{variant}_library_s'] * 1e3:.1f} ms, "
                        f"p50 / library - 1 = {row[f'{variant}_overhead']:+.1%}, "
                        f"errors {row[f'{variant}_errors']}/{row['requests']}"
                    )
        if args.json:
            summary = {"driver": args.driver, "client": args.client, "idle_rss_mib": idle_rss}
            summary["healthz_p50_s"] = floor
            summary["runs"] = results
            args.json.write_text(json.dumps(summary, indent=2))
    finally:
        stop_servers([server, *(process for process, _ in bare.values())], work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
