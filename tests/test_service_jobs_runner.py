"""The job runner: its own failures (a bug fails the job, it is not retried forever), the
memory window of the cases in flight, dead worker processes, and a reference set changed
while its job waited."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import nibabel as nib
import numpy as np
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
def new_runner() -> Iterator[Callable[[Settings], JobRunner]]:
    """``new_runner(settings)``: a runner (not started) on a fresh database of
    ``settings.data_dir``; stopped and its database closed after the test."""
    made: list[JobRunner] = []

    def make(settings: Settings) -> JobRunner:
        made.append(JobRunner(open_database(settings.data_dir, None), settings))
        return made[-1]

    yield make
    for runner in made:
        runner.stop()
        runner.db.dispose()


@pytest.fixture
def runner(tmp_path: Path, new_runner: Callable[[Settings], JobRunner]) -> JobRunner:
    """A runner (not started) on a fresh SQLite database holding one queued job, ``job``."""
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", job_workers=1)
    made = new_runner(settings)
    _queued_job(made.db, "job")
    return made


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


def _score_cases(
    runner: JobRunner, job: Job, cases: list[list[str]]
) -> tuple[bool, dict[str, dict]]:  # type: ignore[type-arg]
    """``runner._score`` of the cases with default options: whether the job is still held,
    and the outcome of each case (each must be handed over once)."""
    outcomes: dict[str, dict] = {}  # type: ignore[type-arg]

    def collect(case: str, outcome: dict) -> bool:  # type: ignore[type-arg]
        assert case not in outcomes, f"{case} handed over twice"
        outcomes[case] = outcome
        return True

    return runner._score(job, cases, ScoringOptions(), collect), outcomes


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
    tmp_path: Path, budget_mib: int, most: int, label_pair, write_nifti, new_runner
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
    runner = new_runner(settings)
    pool = _CountingPool()
    runner._executor = pool
    try:
        held, outcomes = _score_cases(runner, job, cases)
    finally:
        pool.shutdown()
    assert held and sorted(outcomes) == [f"c{i}" for i in range(6)]
    assert all("report" in out for out in outcomes.values())
    assert pool.most == most


def test_a_queued_job_on_a_set_changed_since_fails_instead_of_scoring(
    tmp_path: Path, label_pair, write_nifti, new_runner
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
    runner = new_runner(settings)
    db = runner.db
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
    job = claim_job(db, runner.worker, lease_s=60)
    assert job is not None
    runner._run(job)
    with db.session() as session:
        after = session.get(Job, "j")
        scored = session.scalars(select(CaseResult).where(CaseResult.job_id == "j")).all()
    assert after is not None and after.status == "failed"
    assert after.error is not None and "'c1.nii.gz' was modified" in after.error
    assert not scored
    # its predictions go, as a done or cancelled job's do (JDT_KEEP_PREDICTIONS unset)
    assert not (tmp_path / "job" / "predictions").exists()


def _six_cases(tmp_path: Path, label_pair, write_nifti, n: int = 6) -> tuple[Job, list[list[str]]]:  # type: ignore[no-untyped-def]
    (tmp_path / "job" / "predictions").mkdir(parents=True, exist_ok=True)
    (tmp_path / "refs").mkdir(exist_ok=True)
    cases = []
    for i in range(n):
        pred, ref = label_pair((16, 16, 12), labels=3, seed=i)
        write_nifti(tmp_path / "job" / "predictions" / f"c{i}.nii.gz", pred)
        write_nifti(tmp_path / "refs" / f"c{i}.nii.gz", ref)
        cases.append([f"c{i}", f"c{i}.nii.gz", f"c{i}.nii.gz"])
    job = Job(id="j", folder=str(tmp_path / "job"), references_folder=str(tmp_path / "refs"))
    return job, cases


def test_cases_of_an_earlier_job_still_running_count_against_the_budget(
    tmp_path: Path, label_pair, write_nifti, new_runner
) -> None:
    """A cancelled job's case that cannot be stopped keeps its memory until it ends: the next
    job's cases wait for it instead of starting from an empty budget."""
    settings = Settings(
        device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data",
        job_memory_budget_bytes=100 * 2**20,
    )  # fmt: skip
    job, cases = _six_cases(tmp_path, label_pair, write_nifti, n=2)
    runner = new_runner(settings)
    pool = _CountingPool()
    runner._executor = pool
    earlier: Future[dict] = Future()  # type: ignore[type-arg]
    earlier.set_running_or_notify_cancel()
    runner._flight[earlier] = 90 * 2**20  # an 88 MiB case more would not fit 100 MiB
    earlier.add_done_callback(runner._landed)  # as _submit registers it
    ended_at: list[float] = []

    def end_earlier() -> None:
        ended_at.append(time.monotonic())
        earlier.set_result({})

    threading.Timer(0.5, end_earlier).start()
    submitted_at: list[float] = []
    submit = pool.submit

    def timed_submit(fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
        submitted_at.append(time.monotonic())
        return submit(fn, *args, **kwargs)

    pool.submit = timed_submit  # type: ignore[method-assign]
    try:
        held, outcomes = _score_cases(runner, job, cases)
    finally:
        pool.shutdown()
    assert held and sorted(outcomes) == ["c0", "c1"]
    assert ended_at and min(submitted_at) >= ended_at[0]
    assert not runner._flight


class _BreakingPool(ThreadPoolExecutor):
    """A pool whose case ``c1`` always ends as if its worker process had been killed; with
    ``slow_c0``, on one thread whose case ``c0`` takes 0.3 s, so the cases after it still wait
    in the pool's queue when ``c1``'s end is seen."""

    def __init__(self, counts: dict[str, int], slow_c0: bool = False) -> None:
        super().__init__(1 if slow_c0 else 2)
        self.counts = counts
        self.slow_c0 = slow_c0

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        self.counts[args[0]] = self.counts.get(args[0], 0) + 1
        if args[0] == "c1":
            future: Future[dict] = Future()  # type: ignore[type-arg]
            future.set_exception(BrokenProcessPool("a worker died"))
            return future
        if args[0] == "c0" and self.slow_c0:

            def slow():  # type: ignore[no-untyped-def]
                time.sleep(0.3)
                return fn(*args, **kwargs)

            return super().submit(slow)
        return super().submit(fn, *args, **kwargs)


def test_a_worker_killed_breaks_no_later_job(
    tmp_path: Path, label_pair, write_nifti, monkeypatch: pytest.MonkeyPatch, new_runner
) -> None:
    """A dead worker process breaks the process pool and every case on it: they are run again
    on a fresh pool one at a time, alone, and only the case that breaks it then fails
    (worker_lost); the others are scored."""
    import jdt_service.jobs_runner as jobs_runner

    counts: dict[str, int] = {}
    pools: list[_BreakingPool] = []

    def fresh_pool(settings: Settings) -> tuple[_BreakingPool, None]:
        pools.append(_BreakingPool(counts))
        return pools[-1], None

    monkeypatch.setattr(jobs_runner, "make_executor", fresh_pool)
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data")
    job, cases = _six_cases(tmp_path, label_pair, write_nifti, n=3)
    runner = new_runner(settings)
    try:
        held, outcomes = _score_cases(runner, job, cases)
        assert held
    finally:
        for pool in pools:
            pool.shutdown()
    assert counts["c1"] == 2 and len(pools) >= 2  # once more, on a fresh pool
    assert outcomes["c1"]["code"] == "worker_lost"
    assert "report" in outcomes["c0"] and "report" in outcomes["c2"]


def test_cases_still_queued_on_a_dropped_pool_are_not_lost(
    tmp_path: Path, label_pair, write_nifti, monkeypatch: pytest.MonkeyPatch, new_runner
) -> None:
    """Dropping the pool of a dead worker cancelled the cases still in its queue: a future
    cancelled so is never reported by ``concurrent.futures.wait``, and the job waited for it
    for ever, renewing its lease (here, with no job row, it lost it after a third of the
    lease). They now run."""
    import jdt_service.jobs_runner as jobs_runner

    counts: dict[str, int] = {}
    pools: list[_BreakingPool] = []

    def fresh_pool(settings: Settings) -> tuple[_BreakingPool, None]:
        pools.append(_BreakingPool(counts, slow_c0=True))
        return pools[-1], None

    monkeypatch.setattr(jobs_runner, "make_executor", fresh_pool)
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", job_lease=3)
    job, cases = _six_cases(tmp_path, label_pair, write_nifti, n=3)
    runner = new_runner(settings)
    try:
        held, outcomes = _score_cases(runner, job, cases)
    finally:
        for pool in pools:
            pool.shutdown()
    assert held
    assert sorted(outcomes) == ["c0", "c1", "c2"] and "report" in outcomes["c2"]
    assert outcomes["c1"]["code"] == "worker_lost"


def _running(pid: int) -> bool:
    """Whether process ``pid`` exists and has not ended (a zombie has)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in status


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
def test_job_workers_end_when_the_service_is_killed(tmp_path: Path) -> None:
    """A killed service (SIGKILL, the out-of-memory killer) left its job workers and their
    forkserver running, idle, for ever."""
    settings = f"device='cpu', job_workers=1, temp_dir={str(tmp_path)!r}"
    script = (
        "import os, time\n"
        "from jdt_service.jobs_runner import make_executor\n"
        "from jdt_service.settings import Settings\n"
        f"pool, _ = make_executor(Settings({settings}, data_dir={str(tmp_path / 'd')!r}))\n"
        "worker = pool.submit(os.getpid).result(timeout=120)\n"
        "forkserver = pool.submit(os.getppid).result(timeout=120)\n"
        "print(worker, forkserver, flush=True)\n"
        "time.sleep(600)\n"
    )
    service = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    pids: list[int] = []
    try:
        assert service.stdout is not None
        pids = [int(pid) for pid in service.stdout.readline().split()]
        assert len(pids) == 2 and all(_running(pid) for pid in pids)
        service.kill()
        service.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(_running(pid) for pid in pids):
            time.sleep(0.1)
        assert not [pid for pid in pids if _running(pid)]
    finally:
        service.kill()
        for pid in pids:
            if _running(pid):
                os.kill(pid, signal.SIGKILL)


def test_a_worker_killed_between_jobs_leaves_the_next_job_scored(tmp_path: Path) -> None:
    """The real process pool: a worker killed while idle (the OOM killer) made every later
    job of the replica fail with BrokenProcessPool."""
    import os
    import signal

    from fastapi.testclient import TestClient

    from jdt_service.app import create_app

    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data")
    rng = np.random.default_rng(0)
    ref = (rng.random((12, 10, 8)) < 0.3).astype(np.uint8)
    buffers = {}
    for name in ("a", "b"):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(f"{name}.nii.gz", nib.Nifti1Image(ref, np.eye(4)).to_bytes())
        buffers[name] = buffer.getvalue()

    def job(client: TestClient) -> dict:  # type: ignore[type-arg]
        files = {
            "predictions": ("p.zip", buffers["a"], "application/zip"),
            "references": ("r.zip", buffers["a"], "application/zip"),
        }
        made = client.post("/v1/jobs", files=files)
        assert made.status_code == 202, made.text
        for _ in range(60):
            body: dict = client.get(f"/v1/jobs/{made.json()['id']}?wait=5").json()  # type: ignore[type-arg]
            if body["status"] in ("done", "failed"):
                return body
        raise AssertionError(body)

    with TestClient(create_app(settings)) as client:
        assert job(client)["status"] == "done"
        pool = client.app.state.jobs_runner._executor  # type: ignore[attr-defined]
        os.kill(next(iter(pool._processes)), signal.SIGKILL)
        time.sleep(0.5)
        for _ in range(2):
            after = job(client)
            assert after["status"] == "done", after


class _DelayedPool(ThreadPoolExecutor):
    """Each case takes ``delays[case]`` seconds before it is scored."""

    def __init__(self, delays: dict[str, float]) -> None:
        super().__init__(len(delays))
        self.delays = delays

    def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def, override]
        def slow():  # type: ignore[no-untyped-def]
            time.sleep(self.delays[args[0]])
            return fn(*args, **kwargs)

        return super().submit(slow)


def test_a_case_that_ends_while_another_is_stored_is_stored_at_once(
    tmp_path: Path, label_pair, write_nifti, new_runner
) -> None:
    """c2 ends while c1's commit runs: it left the in-flight map then, and was only collected
    after the slow c0 (6 s), so progress lagged and a takeover would score it again."""
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data")
    job, cases = _six_cases(tmp_path, label_pair, write_nifti, n=3)
    runner = new_runner(settings)
    pool = _DelayedPool({"c0": 4.0, "c1": 0.1, "c2": 0.3})
    runner._executor = pool
    start = time.monotonic()
    stored: dict[str, float] = {}

    def on_done(case: str, outcome: dict) -> bool:  # type: ignore[type-arg]
        stored[case] = time.monotonic() - start
        time.sleep(0.5)  # a slow commit
        return True

    try:
        assert runner._score(job, cases, ScoringOptions(), on_done)
    finally:
        pool.shutdown()
    assert stored["c2"] < 2.0 < stored["c0"], stored


def test_a_worker_killed_mid_case_fails_only_that_case(tmp_path: Path, new_runner) -> None:
    """The real process pool, one worker, four cases; the worker is killed while c0 (a slow
    case: noise pairing 1024 ids in a million ways, ~3 s) runs, then again while c0 runs
    alone on the fresh pool: only c0 fails (worker_lost); the three cases that waited on the
    broken pool are scored (the break had counted a loss against each)."""
    import os
    import signal

    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", job_workers=1)
    rng = np.random.default_rng(1)
    (tmp_path / "job" / "predictions").mkdir(parents=True)
    (tmp_path / "refs").mkdir()
    cases = []
    for i in range(4):
        side = 256 if i == 0 else 16
        for folder in (tmp_path / "job" / "predictions", tmp_path / "refs"):
            volume = rng.integers(0, 1024, (side, side, side)).astype(np.uint16)
            nib.save(nib.Nifti1Image(volume, np.eye(4)), folder / f"c{i}.nii")
        cases.append([f"c{i}", f"c{i}.nii", f"c{i}.nii"])
    job = Job(id="j", folder=str(tmp_path / "job"), references_folder=str(tmp_path / "refs"))
    runner = new_runner(settings)
    killed: list[object] = []

    def killer() -> None:
        """Twice: wait for a pool (not one killed before) with its worker up, 1.5 s more, kill."""
        deadline = time.monotonic() + 60
        while len(killed) < 2 and time.monotonic() < deadline:
            pool = runner._executor
            workers = getattr(pool, "_processes", None) if pool not in killed else None
            if workers:
                time.sleep(1.5)
                os.kill(next(iter(workers)), signal.SIGKILL)
                killed.append(pool)
            time.sleep(0.05)

    threading.Thread(target=killer, daemon=True).start()
    held, outcomes = _score_cases(runner, job, cases)
    assert held and len(killed) == 2
    assert outcomes["c0"]["code"] == "worker_lost"
    assert all("report" in outcomes[f"c{i}"] for i in (1, 2, 3)), outcomes


def test_a_dask_cluster_takes_every_case_at_once_from_the_first_job(
    tmp_path: Path, label_pair, write_nifti, monkeypatch: pytest.MonkeyPatch, new_runner
) -> None:
    """The budget is the local pool's: on a Dask cluster (its client made with the executor,
    on the first job) every case is submitted at once, the first job too."""
    import jdt_service.jobs_runner as jobs_runner

    pool = _CountingPool()
    monkeypatch.setattr(jobs_runner, "make_executor", lambda settings: (pool, object()))
    settings = Settings(
        device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data",
        job_memory_budget_bytes=100 * 2**20,
    )  # fmt: skip
    job, cases = _six_cases(tmp_path, label_pair, write_nifti)
    runner = new_runner(settings)
    try:
        held, outcomes = _score_cases(runner, job, cases)
        assert held
    finally:
        pool.shutdown()
        runner._client = None  # the fake client: nothing to close
    assert len(outcomes) == 6 and pool.most == 6
