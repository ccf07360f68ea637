"""The scoring pool: bounded uploads, bounded scoring jobs, and a memory budget.

A request goes through two admissions, each with its own bound:

1. **upload** (:meth:`ScoringPool.admit`), before any byte of the body is read: at most
   ``max_uploads`` bodies are received at once, and none is accepted while the scoring queue
   is full (503 ``server_busy`` + ``Retry-After`` at once). The admission holds a private work
   directory, ``jdt-<pid>-*`` under the temp dir, for the uploads. The archives of the
   evaluation jobs take the same upload places (:meth:`ScoringPool.upload_place`).
2. **job** (:meth:`Admission.run`), once the files are on disk and their headers read: the
   job's memory estimate (:mod:`jdt_service.job_memory`) must fit ``max_job_bytes`` (413
   ``job_too_large``) and what the jobs in flight leave of the memory budget (503
   ``server_busy``), and at most ``max_concurrency + max_queue`` jobs wait or run (503). A
   slow upload therefore never holds a scoring slot.

Jobs run on ``max_concurrency`` *daemon* threads, so the device is never oversubscribed, the
event loop does not score while other requests wait, and a job that cannot be stopped (the
scoring core has no cancellation point) never holds the process at exit: shutdown takes at most
the request timeout, whatever the jobs do. The one exception is a job of a few milliseconds on
an idle server (:attr:`Admission.alone`), which its route may run on the event loop
(``Admission.run(..., inline=True)``): the hand-off to a thread and back would cost about a
twentieth of it. Each job goes to the thread that went idle last, so that at low load one thread
runs case after case with its cache warm. A request that times out or whose client goes away
while its job still runs keeps its place and memory until the thread ends, and its files are
deleted then; a job still waiting in the queue is cancelled instead. A released work directory
is deleted on a cleanup thread, so its deletion (a few file-system calls, 0.1-0.4 ms on the
event loop) is not on the response's path. On shutdown the work directories of jobs still
running and those not yet deleted are deleted, and on start-up those left by processes of this
service that are gone (killed) are removed (:meth:`ScoringPool.remove_stale_workdirs`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import re
import shutil
import tempfile
import threading
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from jdt_service.errors import ApiError
from jdt_service.job_memory import job_bytes_refusal
from jdt_service.service_metrics import ServiceMetrics
from jdt_service.settings import Settings

__all__ = ["WORKDIR_PREFIX", "Admission", "ScoringPool", "process_exists"]

T = TypeVar("T")
logger = logging.getLogger("jdt_service")

WORKDIR_PREFIX = "jdt-"
_WORKDIR = re.compile(rf"^{WORKDIR_PREFIX}(\d+)-")


def process_exists(pid: int) -> bool:
    """Whether a process of that pid runs on this host (another user's counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


class _DaemonThreads:
    """``size`` daemon threads that run submitted calls in order (a minimal executor).

    ``ThreadPoolExecutor`` joins its threads at interpreter exit, so one runaway job would
    keep a stopped server alive; these threads end with the process.

    A call goes to the thread that went idle last, so at low load one thread runs case after
    case with its cache and malloc arena warm. Handing calls out round-robin (what a shared
    queue does) costs 0.3 ms at 128³ and 1.2 ms at 256³ per request on two threads.
    Threads start as calls need them, up to ``size``; calls beyond wait in order.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size = size
        self.name = name
        self._lock = threading.Lock()
        self._pending: deque[tuple[Future[Any], Callable[[], Any]]] = deque()
        self._idle: list[queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None]] = []
        self._started = 0
        self._generation = 0  # a shutdown starts a new one; older threads end

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        future: Future[T] = Future()
        with self._lock:
            if self._idle:
                inbox = self._idle.pop()  # the thread that went idle last
            elif self._started < self.size:
                inbox = queue.SimpleQueue()
                self._started += 1
                thread = threading.Thread(
                    target=self._work,
                    args=(inbox, self._generation),
                    name=f"{self.name}-{self._started - 1}",
                    daemon=True,
                )
                thread.start()
            else:
                self._pending.append((future, fn))
                return future
        inbox.put((future, fn))
        return future

    def _work(
        self,
        inbox: queue.SimpleQueue[tuple[Future[Any], Callable[[], Any]] | None],
        generation: int,
    ) -> None:
        item = inbox.get()
        while item is not None:
            future, fn = item
            if future.set_running_or_notify_cancel():
                try:
                    result = fn()
                except StopIteration:  # an asyncio future refuses it, and the request would
                    # wait forever; a bug, so it reaches the request as one
                    future.set_exception(RuntimeError(f"StopIteration escaped {fn!r}"))
                except BaseException as exc:  # handed to the awaiting request
                    future.set_exception(exc)
                else:
                    future.set_result(result)
            with self._lock:
                if generation != self._generation:
                    return  # shut down while this call ran
                if self._pending:
                    item = self._pending.popleft()
                    continue
                self._idle.append(inbox)
            item = inbox.get()

    def shutdown(self) -> None:
        """Cancel the waiting calls and let the threads end after their current one."""
        with self._lock:
            pending, self._pending = self._pending, deque()
            idle, self._idle = self._idle, []
            self._started = 0
            self._generation += 1
        for future, _ in pending:
            future.cancel()
        for inbox in idle:
            inbox.put(None)


class ScoringPool:
    """The upload and job admissions, the memory budget and the scoring threads of one app."""

    def __init__(self, settings: Settings, metrics: ServiceMetrics) -> None:
        self.max_concurrency = settings.max_concurrency
        self.capacity = settings.max_concurrency + settings.max_queue
        self.max_uploads = settings.max_uploads
        self.max_job_bytes = settings.max_job_bytes
        self.memory_budget = settings.memory_budget
        self.retry_after = settings.retry_after
        self.temp_dir = settings.temp_dir
        self.metrics = metrics
        self._threads = _DaemonThreads(settings.max_concurrency, "jdt-score")
        self._cleanup = _DaemonThreads(1, "jdt-cleanup")
        self._lock = threading.Lock()
        self._open: set[Admission] = set()
        self._deleting: set[Path] = set()  # released work directories not yet deleted
        self._uploads = 0
        self._jobs = 0
        self._running = 0
        self._reserved = 0

    @property
    def admitted(self) -> int:
        """Requests admitted and not yet released (uploading, waiting or scoring)."""
        return len(self._open)

    @property
    def deleting(self) -> int:
        """Released work directories the cleanup thread has not deleted yet."""
        return len(self._deleting)

    @property
    def reserved_bytes(self) -> int:
        """The memory estimates of the jobs waiting or running."""
        return self._reserved

    def _busy(self, why: str) -> ApiError:
        return ApiError(
            503,
            "server_busy",
            f"{why}; retry in {self.retry_after} s",
            headers={"Retry-After": str(self.retry_after)},
        )

    def _take_upload(self) -> None:
        """Take one of the ``max_uploads`` places (the lock held), or raise 503."""
        if self._uploads >= self.max_uploads:
            raise self._busy(f"{self.max_uploads} uploads are being received")
        self._uploads += 1

    def admit(self) -> Admission:
        """Admit one upload, or raise 503 ``server_busy`` with ``Retry-After`` when full."""
        with self._lock:
            if self._jobs >= self.capacity:
                raise self._busy(
                    f"all {self.max_concurrency} scoring slots and the queue are in use"
                )
            self._take_upload()
        try:
            workdir = Path(
                tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-", dir=self.temp_dir)
            )
        except BaseException:
            with self._lock:
                self._uploads -= 1
            raise
        admission = Admission(self, workdir)
        with self._lock:
            self._open.add(admission)
        return admission

    @contextmanager
    def upload_place(self) -> Iterator[None]:
        """Hold one of the ``max_uploads`` places while a body that is scored elsewhere (the
        archives of ``/v1/jobs`` and ``/v1/reference-sets``, whose cases run on the job pool)
        is received; raise 503 ``server_busy`` with ``Retry-After`` when all are taken."""
        with self._lock:
            self._take_upload()
        try:
            yield
        finally:
            self._end_upload()

    def _start_job(self, memory_bytes: int) -> None:
        """Turn an upload into a job: reserve its place and memory (413 / 503 if they miss)."""
        limit = min(self.max_job_bytes, self.memory_budget)
        refusal = job_bytes_refusal(memory_bytes, limit)
        if refusal is not None:
            raise ApiError(413, "job_too_large", refusal)
        with self._lock:
            if self._jobs >= self.capacity:
                raise self._busy(
                    f"all {self.max_concurrency} scoring slots and the queue are in use"
                )
            if self._reserved + memory_bytes > self.memory_budget:
                raise self._busy(
                    f"the jobs in flight hold {self._reserved / 2**20:.0f} MiB of the "
                    f"{self.memory_budget / 2**20:.0f} MiB budget and this one needs "
                    f"{memory_bytes / 2**20:.0f} MiB"
                )
            self._jobs += 1
            self._reserved += memory_bytes
            self._publish()

    def _job_running(self, delta: int) -> None:
        with self._lock:
            self._running += delta
            self._publish()

    def _release(self, admission: Admission, uploading: bool, memory_bytes: int | None) -> None:
        """Give back the admission's places and memory; its directory goes to the cleanup
        thread (and is deleted at the latest on :meth:`shutdown`)."""
        workdir = admission.workdir
        with self._lock:
            self._open.discard(admission)
            self._deleting.add(workdir)
            if uploading:
                self._uploads -= 1
            if memory_bytes is not None:
                self._jobs -= 1
                self._reserved -= memory_bytes
            self._publish()

        def delete() -> None:
            shutil.rmtree(workdir, ignore_errors=True)
            with self._lock:
                self._deleting.discard(workdir)

        self._cleanup.submit(delete)

    def _end_upload(self) -> None:
        with self._lock:
            self._uploads -= 1

    def _publish(self) -> None:
        self.metrics.jobs_running.set(self._running)
        self.metrics.queue_depth.set(self._jobs - self._running)

    def remove_stale_workdirs(self) -> int:
        """Delete the ``jdt-<pid>-*`` work directories of processes that no longer exist."""
        base = Path(tempfile.gettempdir() if self.temp_dir is None else self.temp_dir)
        removed = 0
        try:
            entries = list(base.iterdir())
        except OSError:
            return 0
        for entry in entries:
            match = _WORKDIR.match(entry.name)
            if match and entry.is_dir() and not process_exists(int(match.group(1))):
                shutil.rmtree(entry, ignore_errors=True)
                removed += 1
        if removed:
            logger.info("removed %d stale upload folder(s) from %s", removed, base)
        return removed

    def shutdown(self) -> None:
        """Cancel queued jobs and delete every open or released work directory (running jobs
        end with the process). A later job starts fresh threads (an app may be started again,
        as in tests)."""
        self._threads.shutdown()
        self._cleanup.shutdown()
        with self._lock:
            workdirs = [admission.workdir for admission in self._open] + list(self._deleting)
            self._deleting.clear()
        for workdir in workdirs:
            shutil.rmtree(workdir, ignore_errors=True)


class Admission:
    """One admitted request: its work directory, its upload place and at most one job.

    Use as ``async with pool.admit() as adm:``; leaving the block releases the places and the
    memory and hands the directory to the cleanup thread now, or when the job's thread ends if
    it still runs.
    """

    def __init__(self, pool: ScoringPool, workdir: Path) -> None:
        self.pool = pool
        self.workdir = workdir
        self._uploading = True
        self._memory_bytes: int | None = None
        self._job: Future[Any] | None = None

    @property
    def alone(self) -> bool:
        """Whether this is the only request the pool holds (no other upload, archives
        included) and no scoring thread runs a job (one whose request has gone): no other
        request waits for the event loop's time."""
        pool = self.pool
        return pool._open == {self} and pool._uploads == int(self._uploading) and pool._running == 0

    async def run(self, fn: Callable[[], T], memory_bytes: int, *, inline: bool = False) -> T:
        """Run ``fn`` on a scoring thread (after waiting for a free slot) and return its result;
        with ``inline``, in the calling thread, the event loop's: only for a job of a few
        milliseconds while the admission is :attr:`alone`.

        The upload place is given back first; ``memory_bytes`` (the job's estimate) is
        reserved until the job ends. Raises 413 ``job_too_large`` or 503 ``server_busy``.
        """
        if self._job is not None or self._memory_bytes is not None:
            raise RuntimeError("an admission runs one job")
        self.pool._start_job(memory_bytes)
        self._memory_bytes = memory_bytes
        if self._uploading:
            self._uploading = False
            self.pool._end_upload()

        def job() -> T:
            self.pool._job_running(+1)
            try:
                return fn()
            finally:
                self.pool._job_running(-1)

        if inline:
            return job()
        future = self.pool._threads.submit(job)
        self._job = future
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
        self.pool._release(self, self._uploading, self._memory_bytes)
        self._uploading = False
        self._memory_bytes = None
