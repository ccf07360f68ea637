"""The job runner: its own failures (a bug fails the job, it is not retried forever), the
memory window of the cases in flight, and a reference set changed while its job waited."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import select

from jdt_service.db import CaseResult, Job, ReferenceSet, open_database, utcnow
from jdt_service.jobs import claim_job, reference_cases
from jdt_service.jobs_runner import JobRunner
from jdt_service.settings import Settings
from monai_jdt.scoring import ScoringOptions


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


class _CountingPool(ThreadPoolExecutor):
    """A thread pool that records the most cases submitted and not yet finished (each takes
    at least 0.1 s, so cases submitted together overlap)."""

    def __init__(self) -> None:
        super().__init__(4)
        self.outstanding = 0
        self.most = 0
        self._lock = threading.Lock()

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        with self._lock:
            self.outstanding += 1
            self.most = max(self.most, self.outstanding)

        def slow():  # type: ignore[no-untyped-def]
            time.sleep(0.1)
            return fn(*args, **kwargs)

        future = super().submit(slow)
        future.add_done_callback(lambda _: self._done())
        return future

    def _done(self) -> None:
        with self._lock:
            self.outstanding -= 1


@pytest.mark.parametrize(("budget_mib", "most"), [(100, 1), (100 * 1024, 6)])
def test_job_cases_in_flight_fit_the_job_memory_budget(
    tmp_path: Path, budget_mib: int, most: int, label_pair, write_nifti
) -> None:
    """A uint8 case's estimate is 88 MiB: with a 100 MiB budget the cases run one at a time
    (each still runs), with a large one all six are handed to the pool at once."""
    settings = Settings(
        device="cpu",
        temp_dir=tmp_path,
        data_dir=tmp_path / "data",
        job_memory_budget_bytes=budget_mib * 2**20,
    )
    (tmp_path / "job" / "predictions").mkdir(parents=True)
    (tmp_path / "refs").mkdir()
    cases = []
    for i in range(6):
        pred, ref = label_pair((16, 16, 12), labels=3, seed=i)
        write_nifti(tmp_path / "job" / "predictions" / f"c{i}.nii.gz", pred)
        write_nifti(tmp_path / "refs" / f"c{i}.nii.gz", ref)
        cases.append([f"c{i}", f"c{i}.nii.gz", f"c{i}.nii.gz"])
    job = Job(id="j", folder=str(tmp_path / "job"), references_folder=str(tmp_path / "refs"))
    db = open_database(settings.data_dir, None)
    runner = JobRunner(db, settings)
    pool = _CountingPool()
    runner._executor = pool
    outcomes: dict[str, dict] = {}  # type: ignore[type-arg]
    try:
        held = runner._score(
            job, cases, ScoringOptions(), lambda case, out: outcomes.setdefault(case, out) or True
        )
    finally:
        pool.shutdown()
        db.dispose()
    assert held and sorted(outcomes) == [f"c{i}" for i in range(6)]
    assert all("report" in out for out in outcomes.values())
    assert pool.most == most


def test_a_queued_job_on_a_set_changed_since_fails_instead_of_scoring(
    tmp_path: Path, label_pair, write_nifti
) -> None:
    """The folder was checked when the job was submitted; edited while the job waited, the
    job fails with what changed rather than scoring the edited files."""
    refs = tmp_path / "refs"
    (tmp_path / "job" / "predictions").mkdir(parents=True)
    refs.mkdir()
    for i in range(2):
        pred, ref = label_pair((12, 10, 8), labels=2, seed=i)
        write_nifti(tmp_path / "job" / "predictions" / f"c{i}.nii.gz", pred)
        write_nifti(refs / f"c{i}.nii.gz", ref)
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", job_workers=1)
    db = open_database(settings.data_dir, None)
    with db.session.begin() as session:
        session.add(ReferenceSet(id="s", name="s", version="v", folder=str(refs)))
        session.flush()
        for row in reference_cases(refs, settings.max_voxels):
            row.set_id = "s"
            session.add(row)
        session.add(
            Job(
                id="j",
                team="team-a",
                status="queued",
                reference_set_id="s",
                folder=str(tmp_path / "job"),
                references_folder=str(refs),
                options={},
                cases=[[f"c{i}", f"c{i}.nii.gz", f"c{i}.nii.gz"] for i in range(2)],
                unpaired={"predictions": [], "references": []},
                cases_total=2,
                created_at=utcnow(),
            )
        )
    write_nifti(refs / "c1.nii.gz", label_pair((12, 10, 8), labels=2, seed=9)[1])  # edited
    runner = JobRunner(db, settings)
    try:
        job = claim_job(db, runner.worker, lease_s=60)
        assert job is not None
        runner._run(job)
        with db.session() as session:
            after = session.get(Job, "j")
            scored = session.scalars(select(CaseResult).where(CaseResult.job_id == "j")).all()
    finally:
        runner.stop()
        db.dispose()
    assert after is not None and after.status == "failed"
    assert after.error is not None and "'c1.nii.gz' was modified" in after.error
    assert not scored
