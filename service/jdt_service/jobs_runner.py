"""The job runner of one replica: a thread that claims jobs and scores their cases.

Cases run on a bounded process pool of ``JDT_JOB_WORKERS`` processes (started by a
``forkserver`` that has imported the scoring core, so a worker starts in milliseconds),
separate from the threads of ``POST /v1/scores``, so a large job never starves the
interactive API; with ``JDT_DASK_SCHEDULER`` they run on a Dask cluster instead. The runner
thread only waits and writes to the database:

* every finished case is one ``case_results`` row, committed with the job's progress and a
  fresh heartbeat in one transaction, and only while this replica still holds the job;
* a job found cancelled or deleted (the conditional update matches no row) stops at once:
  its waiting cases are cancelled; at shutdown the job goes back to the queue;
* at the end the summary is stored, the job is ``done`` and its predictions are deleted
  (unless ``JDT_KEEP_PREDICTIONS``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import uuid
from concurrent.futures import FIRST_COMPLETED, Executor, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

from sqlalchemy import select, update

from jdt_service.db import AuditEntry, CaseResult, Database, Job, utcnow
from jdt_service.jobs import claim_job, job_options, job_result, remove_folder
from jdt_service.jobs_worker import score_job_case
from jdt_service.settings import Settings
from monai_jdt.scoring import ScoringError

__all__ = ["JobRunner", "make_executor"]

log = logging.getLogger("jdt_service.jobs")
_POLL_S = 0.5


def make_executor(settings: Settings) -> tuple[Executor, Any]:
    """``(executor, dask client or None)``: a Dask executor when a scheduler is configured,
    else a process pool of ``job_workers`` processes."""
    if settings.dask_scheduler:
        from distributed import Client

        client = Client(settings.dask_scheduler)
        return client.get_executor(pure=False), client
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["monai_jdt.scoring", "jdt_service.jobs_worker"])
    return ProcessPoolExecutor(settings.job_workers, mp_context=context), None


class JobRunner:
    """Claims and runs jobs until :meth:`stop`; one per app."""

    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        self.worker = f"{os.uname().nodename[:20]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._executor: Executor | None = None
        self._client: Any = None

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
                self._run(job)
            except Exception:  # keep the runner alive; the job is retried after its lease
                log.exception("job runner error")
                self._stop.wait(_POLL_S)

    def _held(self, session: Any, job_id: str) -> Any:
        return update(Job).where(
            Job.id == job_id, Job.claimed_by == self.worker, Job.status == "running"
        )

    def _heartbeat(self, job_id: str) -> bool:
        with self.db.session.begin() as session:
            done = session.execute(self._held(session, job_id).values(heartbeat_at=utcnow()))
            return bool(done.rowcount == 1)  # type: ignore[attr-defined]

    def _fail(self, job: Job, message: str) -> None:
        with self.db.session.begin() as session:
            session.execute(
                self._held(session, job.id).values(
                    status="failed", error=message, finished_at=utcnow()
                )
            )
        self.db.audit(job.team, "job.failed", job_id=job.id)

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
        predictions = Path(job.folder) / "predictions"
        references = Path(job.references_folder)
        pool = self._pool()
        pending: dict[Future[dict[str, Any]], str] = {}
        for case, pred_name, ref_name in job.cases:
            if case not in done:
                future = pool.submit(
                    score_job_case, case, predictions / pred_name, references / ref_name, options
                )
                pending[future] = case
        held = True
        while pending and held and not self._stop.is_set():
            finished, _ = wait(
                list(pending), timeout=self.settings.job_lease / 3, return_when=FIRST_COMPLETED
            )
            if not finished:
                held = self._heartbeat(job.id)
            for future in finished:
                case = pending.pop(future)
                held = held and self._commit(job.id, case, future.result())
        if not held or self._stop.is_set():
            for future in pending:
                future.cancel()
            if held:
                self._release(job.id)
            return
        self._finish(job)

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

    def _finish(self, job: Job) -> None:
        summary = job_result(self.db, job, self.settings).summary
        # every case is stored: the predictions can go before the job is marked done (a crash
        # in between resumes with no case left to score)
        if not self.settings.keep_predictions:
            remove_folder(Path(job.folder) / "predictions")
        with self.db.session.begin() as session:
            held = session.execute(
                self._held(session, job.id).values(
                    status="done", summary=summary, finished_at=utcnow(), heartbeat_at=utcnow()
                )
            )
            finished = held.rowcount == 1  # type: ignore[attr-defined]
            if finished:  # recorded with the status, so a client that sees done sees it too
                session.add(
                    AuditEntry(
                        team=job.team, action="job.done", job_id=job.id, cases=len(job.cases)
                    )
                )
