"""Bounded scoring: at most ``max_concurrency`` jobs run, at most ``max_queue`` more wait.

A request is *admitted* before its body is read (so a full server answers 503 with
``Retry-After`` at once instead of accepting another upload) and holds a private work
directory for its uploads. Its scoring job runs on a dedicated thread pool whose size is the
concurrency limit, so the device is never oversubscribed and the event loop never scores.

The admission, and the work directory with it, is released when the job's thread finishes:
a request that times out or whose client goes away while its job still runs keeps counting
against the limits (the thread cannot be killed) and its files are deleted when the thread
ends. A job still waiting in the queue is cancelled instead.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import TypeVar

from jdt_service.errors import ApiError
from jdt_service.metrics import ServiceMetrics

__all__ = ["Admission", "ScoringPool"]

T = TypeVar("T")


class ScoringPool:
    """The scoring threads and the admission count shared by all requests of one app."""

    def __init__(
        self,
        max_concurrency: int,
        max_queue: int,
        retry_after: int,
        metrics: ServiceMetrics,
        temp_dir: Path | None = None,
    ) -> None:
        self.max_concurrency = max_concurrency
        self.capacity = max_concurrency + max_queue
        self.retry_after = retry_after
        self.temp_dir = temp_dir
        self.metrics = metrics
        self._executor: ThreadPoolExecutor | None = None  # started by the first job
        self._lock = threading.Lock()
        self._admitted = 0
        self._running = 0

    @property
    def admitted(self) -> int:
        """Requests admitted and not yet released (uploading, waiting or scoring)."""
        return self._admitted

    def admit(self) -> Admission:
        """Reserve a place, or raise 503 ``server_busy`` with ``Retry-After`` when full."""
        with self._lock:
            if self._admitted >= self.capacity:
                raise ApiError(
                    503,
                    "server_busy",
                    f"all {self.max_concurrency} scoring slots and the queue are in use; "
                    f"retry in {self.retry_after} s",
                    headers={"Retry-After": str(self.retry_after)},
                )
            self._admitted += 1
            self._publish()
        try:
            workdir = Path(tempfile.mkdtemp(prefix="jdt-", dir=self.temp_dir))
        except BaseException:
            self._release()
            raise
        return Admission(self, workdir)

    def shutdown(self) -> None:
        """Stop the threads; queued jobs are cancelled, running ones finish in the background.

        A later job starts a fresh thread pool (an app may be started again, as in tests).
        """
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)

    def _submit(self, fn: Callable[[], T]) -> Future[T]:
        def job() -> T:
            self._job_started()
            try:
                return fn()
            finally:
                self._job_ended()

        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self.max_concurrency, thread_name_prefix="jdt-score"
                )
            return self._executor.submit(job)

    def _job_started(self) -> None:
        with self._lock:
            self._running += 1
            self._publish()

    def _job_ended(self) -> None:
        with self._lock:
            self._running -= 1
            self._publish()

    def _release(self) -> None:
        with self._lock:
            self._admitted -= 1
            self._publish()

    def _publish(self) -> None:
        self.metrics.jobs_running.set(self._running)
        self.metrics.queue_depth.set(self._admitted - self._running)


class Admission:
    """One admitted request: its work directory and at most one scoring job.

    Use as ``async with pool.admit() as adm:``; leaving the block releases the place and
    deletes the directory now, or when the job's thread ends if it is still running.
    """

    def __init__(self, pool: ScoringPool, workdir: Path) -> None:
        self.pool = pool
        self.workdir = workdir
        self._job: Future[object] | None = None

    async def run(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on a scoring thread (after waiting for a free slot) and return its result."""
        if self._job is not None:
            raise RuntimeError("an admission runs one job")
        future = self.pool._submit(fn)
        self._job = future  # type: ignore[assignment]
        return await asyncio.wrap_future(future)

    async def __aenter__(self) -> Admission:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        job = self._job
        if job is not None and not job.done() and not job.cancel():
            job.add_done_callback(lambda _: self._finish())
        else:
            self._finish()

    def _finish(self) -> None:
        shutil.rmtree(self.workdir, ignore_errors=True)
        self.pool._release()
