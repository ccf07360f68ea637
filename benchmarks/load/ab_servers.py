"""A/B of service configurations at one client: the same requests to several servers.

Starts one real server (``python -m jdt_service``) per variant, each with its own extra
options, writes one label pair (as ``run_load.py`` does), then repeats a round: five library
calls (``score_files`` in this process), then five ``POST /v1/scores`` to each server in turn,
over one keep-alive ``http.client`` connection per server. Every variant thus sees the same
background load, and the medians' differences are the configurations' (this machine's noise
between separate runs is larger than the effects measured here).

    python benchmarks/load/ab_servers.py --variant threads=--no-idle-inline --variant loop=
    python benchmarks/load/ab_servers.py --size 256 --rounds 40 --variant a= --variant b=...

A variant is ``NAME=OPTIONS`` (the options split on spaces; empty: the defaults).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_common import free_port
from run_load import SingleClient, multipart_body, stop_servers, wait_until_up, write_pair

from monai_jdt.scoring import ScoringOptions, score_files
from monai_jdt.scoring.allocator import tune_allocator

BLOCK = 5


def start(options: list[str], env: dict[str, str], work: Path) -> tuple[subprocess.Popen, str]:
    """A server with ``options`` on a free port, its uploads under ``work``: (process, url)."""
    port = free_port()
    command = [sys.executable, "-m", "jdt_service", "--port", str(port), "--device", "cpu"]
    command += ["--temp-dir", str(work), *options]
    return subprocess.Popen(command, env=env), f"http://127.0.0.1:{port}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", required=True, help="NAME=OPTIONS")
    parser.add_argument("--size", type=int, default=128, help="side of the cube (voxels)")
    parser.add_argument("--rounds", type=int, default=80, help=f"rounds of {BLOCK} per variant")
    args = parser.parse_args()
    tune_allocator()  # as the server does
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env["JDT_LOG_LEVEL"] = "warning"
    work = Path(tempfile.mkdtemp(prefix="jdt-ab-"))
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    clients: dict[str, SingleClient] = {}
    try:
        for spec in args.variant:
            name, _, options = spec.partition("=")
            servers[name] = start(options.split(), env, work)
        for _, url in servers.values():
            wait_until_up(url)
        pred, ref = write_pair(work, args.size)
        body, ctype = multipart_body(pred, ref)
        clients = {name: SingleClient(url, "stdlib") for name, (_, url) in servers.items()}
        options = ScoringOptions(device="cpu")
        for name, client in clients.items():  # warm-up; never time error responses
            for _ in range(BLOCK):
                if (status := client.post(body, ctype)) != 200:
                    raise RuntimeError(f"variant {name} answered {status} to the warm-up")
        times: dict[str, list[float]] = {"library": [], **{name: [] for name in clients}}
        for _ in range(args.rounds):
            for _ in range(BLOCK):
                started = time.perf_counter()
                score_files(pred, ref, options)
                times["library"].append(time.perf_counter() - started)
            for name, client in clients.items():
                for _ in range(BLOCK):
                    started = time.perf_counter()
                    status = client.post(body, ctype)
                    times[name].append(time.perf_counter() - started)
                    if status != 200:
                        raise RuntimeError(f"variant {name} answered {status}")
        library = statistics.median(times["library"])
        print(f"{args.size}^3, {args.rounds * BLOCK} calls each (p50 / library - 1):")
        for name, values in times.items():
            p50 = statistics.median(values)
            print(f"  {name:>12}: p50 {p50 * 1e3:6.2f} ms  {p50 / library - 1:+.1%}")
    finally:
        for client in clients.values():
            client.close()
        stop_servers([process for process, _ in servers.values()], work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
