"""Real servers (uvicorn subprocesses on 127.0.0.1): a job survives SIGKILL, and two replicas
on one PostgreSQL never run the same job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from monai_jdt.scoring import ScoringOptions, score_directory

pytestmark = pytest.mark.slow

KEY = {"Authorization": "Bearer ka"}
ADMIN = {"Authorization": "Bearer adm"}


class Server:
    """``uvicorn jdt_service.app:create_app --factory`` in its own process group."""

    def __init__(self, base: Path, name: str, env: dict[str, str], port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = base / f"{name}.log"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
        clean.update(
            JDT_DEVICE="cpu",
            JDT_API_KEYS="team-a:ka",
            JDT_ADMIN_KEYS="adm",
            JDT_TEMP_DIR=str(base),
            JDT_LOG_LEVEL="warning",
            **env,
        )
        cmd = [sys.executable, "-m", "uvicorn", "jdt_service.app:create_app", "--factory"]
        cmd += ["--host", "127.0.0.1", "--port", str(self.port)]
        self.proc = subprocess.Popen(
            cmd,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            env=clean,
            start_new_session=True,
        )
        for _ in range(600):
            assert self.proc.poll() is None, self.log.read_text()
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.log.read_text())

    def kill(self) -> None:
        """SIGKILL the server and its worker processes, as an OOM killer or a crash would."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.kill()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)  # leftover workers, if any


def status(server: Server, job_id: str, wait: float = 0) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(
        f"{server.url}/v1/jobs/{job_id}?wait={wait}", headers=KEY, timeout=wait + 60
    ).json()
    return body


def wait_done(server: Server, job_id: str) -> dict[str, Any]:
    """Long-poll ``server`` until the job ends (also one another replica runs: the poll
    reads the job again every second)."""
    for _ in range(10):
        body = status(server, job_id, wait=30)
        if body["status"] in ("done", "failed", "cancelled"):
            return body
    raise AssertionError(f"job {job_id} did not finish: {body}")


@pytest.fixture
def servers() -> Iterator[list[Server]]:
    started: list[Server] = []
    yield started
    for server in started:
        server.stop()


def _submit(server: Server, archive: bytes, set_id: str) -> str:
    """Submit the predictions ``archive`` (a zip) against reference set ``set_id``; the job id."""
    response = httpx.post(
        f"{server.url}/v1/jobs",
        data={"reference_set": set_id},
        files={"predictions": ("p.zip", archive, "application/zip")},
        headers=KEY,
        timeout=60,
    )
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


def _server_set(server: Server, folder: str) -> str:
    response = httpx.post(
        f"{server.url}/v1/reference-sets",
        files={"name": (None, "refs"), "folder": (None, folder)},
        headers=ADMIN,
        timeout=60,
    )
    assert response.status_code == 201, response.text
    set_id: str = response.json()["id"]
    return set_id


def test_sigkill_mid_job_resumes_to_the_uninterrupted_report(
    tmp_path: Path, servers: list[Server], case_files, archive_bytes, strip_timing, free_port
) -> None:
    preds, refs = case_files(30, shape=(64, 64, 48), labels=6, seed=100)
    root = tmp_path / "root"
    for folder, files in ((root / "refs", refs), (tmp_path / "preds", preds)):
        folder.mkdir(parents=True)
        for name, data in files.items():
            (folder / name).write_bytes(data)
    env = {
        "JDT_DATA_DIR": str(tmp_path / "data"),
        "JDT_REFERENCE_ROOT": str(root),
        "JDT_JOB_WORKERS": "1",
        "JDT_JOB_LEASE": "2",
    }
    first = Server(tmp_path, "first", env, free_port())
    servers.append(first)
    set_id = _server_set(first, "refs")
    job_id = _submit(first, archive_bytes(preds), set_id)
    for _ in range(3000):
        done = status(first, job_id)["progress"]["cases_done"]
        if done >= 2:
            break
        time.sleep(0.02)
    first.kill()
    second = Server(tmp_path, "second", env, free_port())
    servers.append(second)
    interrupted = status(second, job_id)
    assert 2 <= interrupted["progress"]["cases_done"] < 30, interrupted  # killed mid-job
    final = wait_done(second, job_id)
    assert final["status"] == "done"
    assert final["progress"] == {"cases_done": 30, "cases_total": 30, "failures": 0}
    report = httpx.get(f"{second.url}/v1/jobs/{job_id}/report", headers=KEY, timeout=60).json()
    expected = score_directory(tmp_path / "preds", root / "refs", ScoringOptions(), workers=2)
    assert strip_timing(report) == strip_timing(expected.to_dict())
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'jobs.sqlite3'}")
    with engine.connect() as conn:
        claims = conn.execute(
            text("SELECT count(*) FROM audit_log WHERE action = 'job.claim'")
        ).scalar()
        scorers = conn.execute(text("SELECT count(DISTINCT scored_by) FROM case_results")).scalar()
    engine.dispose()
    assert claims == 2  # claimed by the first server, taken over by the second
    assert scorers == 2  # the cases scored before the kill were kept


def test_two_replicas_on_one_postgresql_never_share_a_job(
    tmp_path: Path,
    servers: list[Server],
    pg_server: str,
    case_files,
    archive_bytes,
    free_port,
    new_database,
) -> None:
    preds, refs = case_files(4, seed=200)
    root = tmp_path / "root"
    (root / "refs").mkdir(parents=True)
    for name, data in refs.items():
        (root / "refs" / name).write_bytes(data)
    url = new_database(pg_server, "replicas")
    env = {
        "JDT_DATABASE_URL": url,
        "JDT_DATA_DIR": str(tmp_path / "data"),
        "JDT_REFERENCE_ROOT": str(root),
        "JDT_JOB_WORKERS": "1",
    }
    servers.extend([Server(tmp_path, name, env, free_port()) for name in ("a", "b")])
    set_id = _server_set(servers[0], "refs")
    archive = archive_bytes(preds)
    jobs = [_submit(servers[i % 2], archive, set_id) for i in range(8)]
    for job_id in jobs:
        assert wait_done(servers[1], job_id)["status"] == "done"
    for server in servers:
        server.stop()
    engine = create_engine(url)
    with engine.connect() as conn:
        claims = dict(
            conn.execute(
                text(
                    "SELECT job_id, count(*) FROM audit_log WHERE action = 'job.claim' "
                    "GROUP BY job_id"
                )
            ).all()
        )
        scorers = dict(
            conn.execute(
                text("SELECT job_id, count(DISTINCT scored_by) FROM case_results GROUP BY job_id")
            ).all()
        )
        rows = conn.execute(text("SELECT count(*) FROM case_results")).scalar()
    engine.dispose()
    assert claims == dict.fromkeys(jobs, 1)
    assert scorers == dict.fromkeys(jobs, 1)
    assert rows == 8 * 4
