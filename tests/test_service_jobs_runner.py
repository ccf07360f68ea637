"""The job runner's handling of its own failures: a bug fails the job, it is not retried forever."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from jdt_service.db import Job, open_database, utcnow
from jdt_service.jobs import claim_job
from jdt_service.jobs_runner import JobRunner
from jdt_service.settings import Settings


def _queued_job(db, job_id: str) -> None:  # type: ignore[no-untyped-def]
    with db.session.begin() as session:
        session.add(
            Job(
                id=job_id,
                team="team-a",
                status="queued",
                folder="/nonexistent",
                references_folder="/nonexistent",
                options={},
                cases=[["c0", "p.nii.gz", "r.nii.gz"]],
                unpaired={"predictions": [], "references": []},
                cases_total=1,
                created_at=utcnow(),
            )
        )


@pytest.fixture
def runner(tmp_path: Path) -> Iterator[JobRunner]:
    """A runner (not started) on a fresh SQLite database holding one claimed job, ``job``."""
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", job_workers=1)
    db = open_database(settings.data_dir, None)
    runner = JobRunner(db, settings)
    _queued_job(db, "job")
    try:
        yield runner
    finally:
        runner.stop()
        db.dispose()


def test_a_bug_while_running_a_job_fails_it_with_where_it_was_raised(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    finished: list[None] = []  # on_finished wakes the long polls of GET /v1/jobs/{id}?wait=
    runner.on_finished = lambda: finished.append(None)
    job = claim_job(runner.db, runner.worker, lease_s=60)
    assert job is not None

    def broken(job: Job) -> None:
        raise TypeError("a message that may quote a case: secret-patient-name")

    monkeypatch.setattr(runner, "_run", broken)
    runner._run_or_fail(job)
    with runner.db.session() as session:
        after = session.get(Job, "job")
    assert after is not None and after.status == "failed" and after.finished_at is not None
    assert after.error is not None and "TypeError at " in after.error
    assert "test_service_jobs_runner.py" in after.error  # where, relative to sys.path
    assert "secret-patient-name" not in after.error
    assert claim_job(runner.db, "next", lease_s=60) is None  # not handed out again
    assert len(finished) == 1


def test_a_database_error_keeps_the_job_for_a_later_retry(
    runner: JobRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import OperationalError

    job = claim_job(runner.db, runner.worker, lease_s=60)
    assert job is not None

    def database_down(job: Job) -> None:
        raise OperationalError("SELECT 1", {}, Exception("connection refused"))

    monkeypatch.setattr(runner, "_run", database_down)
    with pytest.raises(OperationalError):
        runner._run_or_fail(job)
    with runner.db.session() as session:
        after = session.get(Job, "job")
    assert after is not None and after.status == "running"  # taken over after its lease
