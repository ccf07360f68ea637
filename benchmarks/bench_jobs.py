"""Evaluation jobs against ``score-dir``: the cost of the database and the runner.

Writes ``--cases`` label-map pairs (``--size``, ``--labels`` labels as random blocks with 10 %
of the voxels changed in the prediction) as ``.nii.gz``, then times, best of ``--repeat``:

  score-dir   ``score_directory(..., workers=W)`` in this process (threads), alternating with
              the job runs;
  job         a real service (``python -m jdt_service``, as ``monai-jdt serve``, on 127.0.0.1,
              ``JDT_JOB_WORKERS=W``, SQLite) with the references as a server-side reference
              set: from ``POST /v1/jobs`` (the predictions zip streamed from its file; upload and
              unpacking included) until ``GET /v1/jobs/{id}?wait=60`` (a long poll) says ``done``.

  burst       ``--burst`` jobs (default 20) submitted at once by 4 teams, each the first
              ``--burst-cases`` cases: the wall time until all are done and the peak resident
              memory of the server and its worker processes (summed, sampled every 0.1 s).

The runner's and the database's cost per case is ``(job run - score-dir) / cases``, where the
job run is the job's time from its 202 to ``done`` (the upload and unpacking, which score-dir
does not do, are reported apart). Run:
``python benchmarks/bench_jobs.py --cases 100 --size 256,256,256 --labels 6`` (the issue's
size; the default is smaller).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import free_port

from monai_jdt.scoring import score_directory


def write_cases(folder: Path, cases: int, shape: tuple[int, ...], labels: int) -> None:
    rng = np.random.default_rng(0)
    (folder / "preds").mkdir(parents=True)
    (folder / "refs").mkdir(parents=True)
    block = tuple(max(1, s // 4) for s in shape)
    coarse = rng.integers(
        0, labels, size=tuple(-(-s // b) for s, b in zip(shape, block, strict=True))
    )
    ref = np.kron(coarse, np.ones(block, dtype=np.uint8))[tuple(slice(0, s) for s in shape)]
    ref = ref.astype(np.uint8)
    for i in range(cases):
        pred = ref.copy()
        flip = rng.random(shape) < 0.1
        pred[flip] = rng.integers(0, labels, size=int(flip.sum()), dtype=np.uint8)
        for name, array in (("preds", pred), ("refs", ref)):
            nib.save(nib.Nifti1Image(array, np.eye(4)), folder / name / f"case_{i:03d}.nii.gz")


TEAMS = 4
ADMIN = {"Authorization": "Bearer admin-key"}


def team(t: int) -> dict[str, str]:
    return {"Authorization": f"Bearer key-{t % TEAMS}"}


def session_rss(session: int) -> int:
    """Summed resident bytes of the processes of one session (the server and its workers)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == session:  # field 6 of /proc/PID/stat: the session id
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # field 24: rss in pages
    return total


def zip_of(paths: list[Path], target: Path) -> Path:
    """Write ``paths`` into the zip ``target`` (stored: the volumes are gzip already)."""
    with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as archive:
        for path in paths:
            archive.write(path, path.name)
    return target


def post_job(url: str, set_id: str, archive: Path, headers: dict[str, str]) -> httpx.Response:
    """POST ``archive`` as a job's predictions, streamed from its file as a user's client does.

    (Passing the archive as one ``bytes`` object instead makes httpcore's socket write loop
    copy the unsent rest after every ``send``: quadratic, seconds for a few hundred MB.)
    """
    with open(archive, "rb") as handle:
        return httpx.post(
            url + "/v1/jobs",
            data={"reference_set": set_id},
            files={"predictions": ("p.zip", handle, "application/zip")},
            headers=headers,
            timeout=600,
        )


def wait_done(url: str, location: str, headers: dict[str, str]) -> None:
    """Long-poll the job (``?wait=60``) until it is done: the answer comes when it ends."""
    while httpx.get(url + location + "?wait=60", headers=headers, timeout=90).json()["status"] != (
        "done"
    ):
        pass


def burst(url: str, set_id: str, archive: Path, jobs: int, session: int) -> tuple[float, int]:
    """Submit ``jobs`` jobs from 4 teams at once; (seconds until all done, peak RSS bytes)."""
    peak = session_rss(session)
    start = time.perf_counter()

    def submit(t: int) -> httpx.Response:
        """POST one job; a 503 (all upload places taken) is retried after its Retry-After."""
        while True:
            response = post_job(url, set_id, archive, team(t))
            if response.status_code != 503:
                return response
            time.sleep(float(response.headers.get("retry-after", "1")))

    with ThreadPoolExecutor(jobs) as pool:
        submitted = list(pool.map(submit, range(jobs)))
        for response in submitted:
            response.raise_for_status()
        waits = [
            pool.submit(wait_done, url, r.headers["location"], team(t))
            for t, r in enumerate(submitted)
        ]
        while not all(w.done() for w in waits):
            peak = max(peak, session_rss(session))
            time.sleep(0.1)
        for w in waits:
            w.result()
    return time.perf_counter() - start, peak


def time_job(
    base: Path, workers: int, repeat: int, burst_jobs: int, burst_cases: int
) -> tuple[list[float], list[tuple[float, float]], tuple[float, int]]:
    """``score-dir`` seconds and the job's ``(submit -> done, submit -> 202)`` seconds, run
    alternately ``repeat`` times (after a first job that also starts the worker processes), so
    both see the same background load; then the burst's ``(seconds, peak RSS)``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    env.update(
        JDT_DEVICE="cpu",
        JDT_DATA_DIR=str(base / "data"),
        JDT_REFERENCE_ROOT=str(base),
        JDT_JOB_WORKERS=str(workers),
        JDT_LOG_LEVEL="warning",
        JDT_MAX_UPLOAD_BYTES=str(8 << 30),
        JDT_API_KEYS=",".join(f"team-{t}:key-{t}" for t in range(TEAMS)),
        JDT_ADMIN_KEYS="admin-key",
    )
    server = subprocess.Popen(
        [sys.executable, "-m", "jdt_service", "--port", str(port)], env=env, start_new_session=True
    )
    try:
        for _ in range(600):
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        made = httpx.post(
            url + "/v1/reference-sets",
            files={"name": (None, "bench"), "folder": (None, "refs")},
            headers=ADMIN,
            timeout=600,
        )
        made.raise_for_status()
        predictions = sorted((base / "preds").iterdir())
        archive = zip_of(predictions, base / "predictions.zip")
        direct: list[float] = []
        times: list[tuple[float, float]] = []
        for run in range(repeat + 1):  # run 0 warms both up (imports, worker processes)
            start = time.perf_counter()
            score_directory(base / "preds", base / "refs", workers=workers)
            if run:
                direct.append(time.perf_counter() - start)
            start = time.perf_counter()
            job = post_job(url, made.json()["id"], archive, team(0))
            job.raise_for_status()
            submitted = time.perf_counter() - start
            wait_done(url, job.headers["location"], team(0))
            times.append((time.perf_counter() - start, submitted))
        small = zip_of(predictions[:burst_cases], base / "burst.zip")
        return direct, times[1:], burst(url, made.json()["id"], small, burst_jobs, server.pid)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=20)
    parser.add_argument("--size", default="128,128,128")
    parser.add_argument("--labels", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--burst", type=int, default=20)
    parser.add_argument("--burst-cases", type=int, default=5)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.size.split(","))
    with tempfile.TemporaryDirectory(prefix="jdt-bench-jobs-") as tmp:
        base = Path(tmp)
        write_cases(base, args.cases, shape, args.labels)
        direct, job, (burst_s, burst_rss) = time_job(
            base, args.workers, args.repeat, args.burst, args.burst_cases
        )
    runs = [done - submitted for done, submitted in job]  # 202 -> done: the runner's part
    best_direct, best_run = min(direct), min(runs)
    best_job, submit = min(job)
    print(f"{args.cases} cases of {shape}, {args.labels} labels, {args.workers} workers")
    print(
        "runs (score-dir | job submit -> 202 -> done), s: "
        + "; ".join(f"{d:.2f} | {j[1]:.2f} -> {j[0]:.2f}" for d, j in zip(direct, job, strict=True))
    )
    print(f"score-dir --workers {args.workers}:       {best_direct:.2f} s")
    print(f"job run (202 -> done):        {best_run:.2f} s  ({best_run / best_direct:.2f}x)")
    print(f"job, submit -> done:          {best_job:.2f} s  ({best_job / best_direct:.2f}x)")
    print(f"  of which upload + unpack (until 202): {submit:.2f} s")
    print(f"runner + database per case:  {(best_run - best_direct) / args.cases * 1000:+.1f} ms")
    print(
        f"burst: {args.burst} jobs x {args.burst_cases} cases from {TEAMS} teams: all done in "
        f"{burst_s:.1f} s, peak RSS of server + workers {burst_rss / 2**20:.0f} MiB"
    )
    print(f"load average: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
