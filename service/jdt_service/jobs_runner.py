"""The job runner of one replica: a thread that claims jobs and scores their cases.

Cases run on a bounded process pool of ``JDT_JOB_WORKERS`` processes (started by a
``forkserver`` that has imported the scoring core, so a worker starts in milliseconds, with
the allocator thresholds of :mod:`monai_jdt.scoring.allocator`, and ends when the service
process ends, also when it is killed: :func:`jdt_service.jobs_worker.start_worker`),
separate from the threads of ``POST /v1/scores``, so a large job never starves the
interactive API; the cases in flight fit ``JDT_JOB_MEMORY_BUDGET_BYTES`` by their memory
estimates. With ``JDT_DASK_SCHEDULER`` they run on a Dask cluster instead. The runner
thread only waits and writes to the database:

* every finished case is one ``case_results`` row, committed with the job's progress and a
  fresh heartbeat in one transaction, and only while this replica still holds the job;
* a job found cancelled or deleted (the conditional update matches no row) stops at once:
  its waiting cases are cancelled; at shutdown the job goes back to the queue;
* once every case is stored, the dataset's label set is decided
  (:func:`monai_jdt.scoring.folders.complete_label_set`, as ``score-dir`` decides it): the
  cases that lack a label of it and cannot be completed from their rows are scored again on
  the whole set, on the same pool, while their predictions still exist, and the completed
  reports replace the rows in one transaction; a replica that dies on the way does it again
  (completing complete rows changes nothing);
* then its predictions are deleted (unless ``JDT_KEEP_PREDICTIONS``), and the summary is
  stored with the status ``done``.

Each case is held to the limits of ``POST /v1/scores`` (:class:`~jdt_service.jobs_worker.
CaseLimits`): a case past them fails with the same code, and the job goes on.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import DBAPIError

from jdt_service.db import (
    AuditEntry,
    CaseResult,
    Database,
    Job,
    ReferenceCase,
    ReferenceSet,
    utcnow,
)
from jdt_service.jobs import (
    case_outcome,
    claim_job,
    job_options,
    job_result,
    reference_changes,
    reference_set_changed,
    remove_folder,
)
from jdt_service.jobs_worker import CaseLimits, score_job_case, start_worker
from jdt_service.logs import where_raised
from jdt_service.settings import Settings
from monai_jdt.scoring import CaseFailure, CaseReport, DirectoryResult, ScoringError, ScoringOptions
from monai_jdt.scoring.folders import complete_label_set

__all__ = ["JobRunner", "make_executor"]

log = logging.getLogger("jdt_service.jobs")
_POLL_S = 0.5

#: a finished case's outcome (``score_job_case``'s dict) -> whether the job is still held
_OnDone = Callable[[str, dict[str, Any]], bool]


class _JobLost(Exception):
    """The job was cancelled, deleted or taken over while its label set was completed."""


def make_executor(settings: Settings) -> tuple[Executor, Any]:
    """``(executor, dask client or None)``: a Dask executor when a scheduler is configured,
    else a process pool of ``job_workers`` processes."""
    if settings.dask_scheduler:
        from distributed import Client

        client = Client(settings.dask_scheduler)
        return client.get_executor(pure=False), client
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["monai_jdt.scoring", "jdt_service.jobs_worker"])
    pool = ProcessPoolExecutor(
        settings.job_workers,
        mp_context=context,
        initializer=start_worker,  # allocator thresholds; ends with the service
        initargs=(os.getpid(),),
    )
    return pool, None


class JobRunner:
    """Claims and runs jobs until :meth:`stop`; one per app."""

    def __init__(
        self, db: Database, settings: Settings, on_finished: Callable[[], None] | None = None
    ) -> None:
        """``on_finished`` is called (on the runner's thread) after a job of this replica is
        stored as ``done`` or ``failed``."""
        self.db = db
        self.settings = settings
        self.on_finished = on_finished
        self.worker = f"{os.uname().nodename[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: Executor | None = None
        self._client: Any = None
        # the cases on the pool, of any job, with their memory estimates (until each ends)
        self._flight: dict[Future[dict[str, Any]], int] = {}
        self._flight_lock = threading.Lock()
        self.limits = CaseLimits(settings.max_job_bytes, settings.max_boundary_voxels)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="jdt-jobs", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Look for work now (a job was submitted)."""
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if self._client is not None:  # a Dask executor: closing the client cancels its tasks
            self._client.close()
        elif self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    def _pool(self) -> Executor:
        if self._executor is None:
            self._executor, self._client = make_executor(self.settings)
        return self._executor

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                job = claim_job(self.db, self.worker, self.settings.job_lease)
                if job is None:
                    self._wake.wait(_POLL_S)
                    self._wake.clear()
                    continue
                self.db.audit(job.team, "job.claim", job_id=job.id)
                self._run_or_fail(job)
            except Exception:  # keep the runner alive; the job is retried after its lease
                log.exception("job runner error")
                self._stop.wait(_POLL_S)

    def _run_or_fail(self, job: Job) -> None:
        """Run ``job``; a bug while running it fails the job instead of retrying it forever.

        A database error (the database down or restarting) propagates: the job keeps its
        claim and is taken over after its lease, when the database answers again. Any other
        exception would recur on every retry, so the job is marked ``failed`` with where the
        error was raised (never its message, which may quote a case).

        Raises:
            sqlalchemy.exc.DBAPIError: from the database.
        """
        try:
            self._run(job)
        except DBAPIError:
            raise
        except Exception as exc:
            log.exception("job runner error")
            self._fail(job, f"internal error while running the job ({where_raised(exc)})")

    def _held(self, session: Any, job_id: str) -> Any:
        return update(Job).where(
            Job.id == job_id, Job.claimed_by == self.worker, Job.status == "running"
        )

    def _heartbeat(self, job_id: str) -> bool:
        with self.db.session.begin() as session:
            done = session.execute(self._held(session, job_id).values(heartbeat_at=utcnow()))
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def _fail(self, job: Job, message: str) -> None:
        """Mark the job failed (while this runner holds it) and delete its predictions, as
        a done or cancelled job's are, unless ``keep_predictions``."""
        with self.db.session.begin() as session:
            held = session.execute(
                self._held(session, job.id).values(
                    status="failed", error=message, finished_at=utcnow()
                )
            )
        if held.rowcount == 1 and not self.settings.keep_predictions:  # type: ignore[attr-defined]
            remove_folder(Path(job.folder) / "predictions")  # another runner's job keeps them
        self.db.audit(job.team, "job.failed", job_id=job.id)
        self._finished()

    def _finished(self) -> None:
        if self.on_finished is not None:
            self.on_finished()

    def _run(self, job: Job) -> None:
        try:
            options = job_options(job.options, self.settings)
        except ScoringError as err:
            self._fail(job, err.message)
            return
        with self.db.session() as session:
            done = set(
                session.scalars(select(CaseResult.case_id).where(CaseResult.job_id == job.id))
            )
            registered = list(
                session.scalars(
                    select(ReferenceCase).where(ReferenceCase.set_id == job.reference_set_id)
                )
            )
            ref_set = (
                None
                if job.reference_set_id is None
                else session.get(ReferenceSet, job.reference_set_id)
            )
        if job.reference_set_id is not None:  # checked at submission; it may have changed since
            folder = Path(job.references_folder)
            owned = ref_set is None or ref_set.owned  # a deleted set: its own folder, gone
            root = folder if owned else self.settings.reference_root or folder
            changes = reference_changes(folder, registered, root)
            if changes:
                self._fail(job, reference_set_changed(job.reference_set_id, changes))
                return
        todo = [case for case in job.cases if case[0] not in done]
        held = self._score(job, todo, options, lambda case, out: self._commit(job.id, case, out))
        if held and not self._stop.is_set():
            self._finish(job, options)

    def _score(
        self, job: Job, cases: Sequence[Sequence[str]], options: ScoringOptions, on_done: _OnDone
    ) -> bool:
        """Score ``(case, prediction file, reference file)`` triples on the pool, handing each
        outcome to ``on_done`` as it comes and renewing the lease while none does.

        On the local process pool a case is submitted only when its memory estimate
        (:meth:`CaseLimits.memory_bytes`) fits ``job_memory_budget`` with those of every case
        in flight (of this job, or of a cancelled one still running), or alone when none is in
        flight; a Dask cluster, whose workers have their own memory, takes them all at once.
        A worker process that dies (killed, e.g. by the out-of-memory killer) breaks the pool
        and every case on it: a fresh pool takes them again one at a time, alone, so that a
        case that breaks it once more is known, and fails with code ``worker_lost``. Returns
        whether the job is still held (and the runner not stopping); when not, the cases in
        flight are cancelled and, at shutdown, the job goes back to the queue.
        """
        predictions = Path(job.folder) / "predictions"
        references = Path(job.references_folder)
        self._pool()  # the executor decides the budget: none on a Dask cluster
        budget = self.settings.job_memory_budget if self._client is None else None
        waiting = deque((case, predictions / p, references / r) for case, p, r in cases)
        suspects: deque[tuple[str, Path, Path]] = deque()  # on a pool that broke: run alone
        needs: dict[str, int] = {}  # memory estimates, read when a case comes first in line
        pending: dict[Future[dict[str, Any]], tuple[tuple[str, Path, Path], Executor, bool]] = {}

        def need(item: tuple[str, Path, Path]) -> int:
            if item[0] not in needs:
                needs[item[0]] = (
                    0 if budget is None else self.limits.memory_bytes(item[1], item[2], options)
                )
            return needs[item[0]]

        def submit_what_fits() -> None:
            if suspects:  # one at a time, with nothing else of this job beside it
                if not pending:
                    item = suspects.popleft()
                    future, pool = self._submit(item, options, need(item))
                    pending[future] = (item, pool, True)
                return
            while waiting:
                item = waiting[0]
                fits = self._flight_bytes() + need(item) <= budget if budget is not None else True
                if self._flight and not fits:
                    return
                waiting.popleft()
                future, pool = self._submit(item, options, need(item))
                pending[future] = (item, pool, False)

        submit_what_fits()
        held = True
        renew = self.settings.job_lease / 3
        beat = time.monotonic()  # the last heartbeat (a stored case renews it too)
        while (pending or waiting or suspects) and held and not self._stop.is_set():
            with self._flight_lock:
                watched = set(pending) | set(self._flight)
            finished, _ = wait(watched, timeout=renew, return_when=FIRST_COMPLETED)
            # a case of another job that ends only frees its memory
            ours = [future for future in finished if future in pending]
            if ours:
                beat = time.monotonic()
            elif time.monotonic() - beat >= renew:
                held, beat = self._heartbeat(job.id), time.monotonic()
            for future in ours:
                item, pool, alone = pending.pop(future)
                if not isinstance(future.exception(), BrokenProcessPool):
                    held = held and on_done(item[0], future.result())
                    continue
                self._discard_pool(pool)
                if not alone:
                    suspects.append(item)  # lost with the pool: to be run again, alone
                    continue
                outcome = {
                    "code": "worker_lost",
                    "message": f"{item[0]}: the worker process scoring this case stopped while "
                    "it ran alone (killed, e.g. by the out-of-memory killer)",
                }
                held = held and on_done(item[0], outcome)
            if held:
                submit_what_fits()
        if not held or self._stop.is_set():
            for future in pending:
                future.cancel()
            if held:
                self._release(job.id)
            return False
        return True

    def _submit(
        self, item: tuple[str, Path, Path], options: ScoringOptions, need: int
    ) -> tuple[Future[dict[str, Any]], Executor]:
        """Submit one case (to a fresh pool if the current one is broken), its estimate
        ``need`` counted in flight until it ends."""
        pool = self._pool()
        try:
            future = pool.submit(score_job_case, *item, options, self.limits)
        except BrokenProcessPool:  # a worker died while the pool was idle
            self._discard_pool(pool)
            pool = self._pool()
            future = pool.submit(score_job_case, *item, options, self.limits)
        with self._flight_lock:
            self._flight[future] = need
        future.add_done_callback(self._landed)
        return future, pool

    def _landed(self, future: Future[dict[str, Any]]) -> None:
        with self._flight_lock:
            self._flight.pop(future, None)

    def _flight_bytes(self) -> int:
        with self._flight_lock:
            return sum(self._flight.values())

    def _discard_pool(self, pool: Executor) -> None:
        """Drop a broken process pool (the next case starts a fresh one). Its cases are not
        cancelled: a broken process pool has failed them all already, and a future cancelled
        by ``shutdown(cancel_futures=True)`` is never reported by ``concurrent.futures.wait``,
        so a case still queued would have held its job for ever."""
        if self._executor is pool:
            log.warning("a job worker process died (out of memory?); starting a new pool")
            pool.shutdown(wait=False)
            self._executor = None

    def _release(self, job_id: str) -> None:
        """Give a job back to the queue at shutdown: the next replica resumes it at once."""
        with self.db.session.begin() as session:
            session.execute(
                self._held(session, job_id).values(
                    status="queued", claimed_by=None, heartbeat_at=None
                )
            )

    def _commit(self, job_id: str, case: str, outcome: dict[str, Any]) -> bool:
        """Store one case and the job's progress in one transaction, if the job is held."""
        failed = "report" not in outcome
        with self.db.session.begin() as session:
            held = session.execute(
                self._held(session, job_id).values(
                    cases_done=Job.cases_done + 1,
                    failures=Job.failures + int(failed),
                    heartbeat_at=utcnow(),
                )
            )
            if held.rowcount != 1:  # type: ignore[attr-defined]
                return False
            session.add(
                CaseResult(
                    job_id=job_id,
                    case_id=case,
                    report=outcome.get("report"),
                    code=outcome.get("code"),
                    message=outcome.get("message"),
                    scored_by=self.worker,
                )
            )
        return True

    def _complete(self, job: Job, options: ScoringOptions) -> DirectoryResult | None:
        """Put every stored case on the dataset's one label set (see the module docstring);
        the job's result, or None when the job was lost on the way."""
        stored = job_result(self.db, job, self.settings)
        files = {case: (case, pred, ref) for case, pred, ref in job.cases}

        def rescore(cases: Sequence[str], wider: ScoringOptions) -> list[CaseReport | CaseFailure]:
            outcomes: dict[str, dict[str, Any]] = {}

            def collect(case: str, outcome: dict[str, Any]) -> bool:
                outcomes[case] = outcome
                return self._heartbeat(job.id)

            if not self._score(job, [files[case] for case in cases], wider, collect):
                raise _JobLost
            return [case_outcome(case, outcome, wider) for case, outcome in outcomes.items()]

        try:
            reports, failures = complete_label_set(stored.reports, options, rescore)
        except _JobLost:
            return None
        kept = {id(report) for report in stored.reports}  # complete already: returned as is
        changed: dict[str, dict[str, Any]] = {
            r.case_id or "": {"report": r.to_dict()} for r in reports if id(r) not in kept
        }
        changed.update({f.case_id: {"code": f.code, "message": f.message} for f in failures})
        if changed and not self._store_completed(job.id, changed, len(failures)):
            return None
        return DirectoryResult(
            reports,
            failures + stored.failures,
            stored.unpaired_predictions,
            stored.unpaired_references,
        )

    def _store_completed(
        self, job_id: str, changed: dict[str, dict[str, Any]], new_failures: int
    ) -> bool:
        """Replace the rows of ``changed`` cases in one transaction, if the job is held."""
        with self.db.session.begin() as session:
            held = session.execute(
                self._held(session, job_id).values(
                    failures=Job.failures + new_failures, heartbeat_at=utcnow()
                )
            )
            if held.rowcount != 1:  # type: ignore[attr-defined]
                return False
            for case, outcome in changed.items():
                session.execute(
                    update(CaseResult)
                    .where(CaseResult.job_id == job_id, CaseResult.case_id == case)
                    .values(
                        report=outcome.get("report"),
                        code=outcome.get("code"),
                        message=outcome.get("message"),
                    )
                )
        return True

    def _finish(self, job: Job, options: ScoringOptions) -> None:
        result = self._complete(job, options)
        if result is None:
            return
        # every case is stored on its label set: the predictions can go before the job is
        # marked done (a crash in between resumes with no case left to score)
        if not self.settings.keep_predictions:
            remove_folder(Path(job.folder) / "predictions")
        with self.db.session.begin() as session:
            held = session.execute(
                self._held(session, job.id).values(
                    status="done",
                    summary=result.summary,
                    finished_at=utcnow(),
                    heartbeat_at=utcnow(),
                )
            )
            finished = held.rowcount == 1  # type: ignore[attr-defined]
            if finished:  # recorded with the status, so a client that sees done sees it too
                session.add(
                    AuditEntry(
                        team=job.team, action="job.done", job_id=job.id, cases=len(job.cases)
                    )
                )
        if finished:
            self._finished()
