"""The scoring pool's daemon threads: last-idle-first dispatch, order, limits, shutdown."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import CancelledError

import pytest

from jdt_service.scoring_pool import _DaemonThreads


def _current_thread() -> str:
    return threading.current_thread().name


def test_calls_one_after_another_run_on_the_thread_that_went_idle_last() -> None:
    threads = _DaemonThreads(3, "t")
    try:
        names = [threads.submit(_current_thread).result(timeout=5) for _ in range(20)]
        assert set(names) == {"t-0"}  # no round-robin over idle threads, no new threads
        assert threads._started == 1
    finally:
        threads.shutdown()


def test_concurrent_calls_use_up_to_size_threads_and_the_rest_wait_in_order() -> None:
    threads = _DaemonThreads(2, "t")
    release = threading.Event()
    started: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> str:
        with lock:
            started.append(i)
        release.wait(5)
        return _current_thread()

    try:
        futures = [threads.submit(lambda i=i: job(i)) for i in range(6)]
        deadline = time.monotonic() + 5
        while len(started) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.05)
        assert sorted(started) == [0, 1]  # two run, four wait
        release.set()
        names = [f.result(timeout=5) for f in futures]
        assert started[2:] == sorted(started[2:])  # the waiting ones start in order
        assert set(names) == {"t-0", "t-1"}
        assert threads._started == 2
    finally:
        threads.shutdown()


def test_an_exception_reaches_the_caller_and_the_thread_stays() -> None:
    threads = _DaemonThreads(1, "t")

    def boom() -> None:
        raise ValueError("bad case")

    try:
        with pytest.raises(ValueError, match="bad case"):
            threads.submit(boom).result(timeout=5)
        assert threads.submit(_current_thread).result(timeout=5) == "t-0"
    finally:
        threads.shutdown()


def test_a_stop_iteration_reaches_an_awaiting_request_as_an_error() -> None:
    """asyncio refuses StopIteration as a future's exception: the request awaiting a call
    that raised it (a bare ``next()``) would wait forever."""
    threads = _DaemonThreads(1, "t")

    def bare_next() -> None:
        next(iter(()))

    async def request() -> None:
        await asyncio.wrap_future(threads.submit(bare_next))

    try:
        with pytest.raises(RuntimeError, match="StopIteration"):
            asyncio.run(asyncio.wait_for(request(), 5))
    finally:
        threads.shutdown()


def test_shutdown_cancels_waiting_calls_and_a_later_call_starts_fresh_threads() -> None:
    threads = _DaemonThreads(1, "t")
    release = threading.Event()
    running = threads.submit(lambda: release.wait(5))
    waiting = threads.submit(_current_thread)
    threads.shutdown()
    assert waiting.cancelled()
    with pytest.raises(CancelledError):
        waiting.result(timeout=1)
    release.set()
    assert running.result(timeout=5) is True  # the running call ends normally
    assert threads.submit(_current_thread).result(timeout=5) == "t-0"  # a fresh thread
    threads.shutdown()


def test_a_call_cancelled_while_waiting_is_skipped() -> None:
    threads = _DaemonThreads(1, "t")
    release = threading.Event()
    ran: list[str] = []
    try:
        first = threads.submit(lambda: release.wait(5))
        skipped = threads.submit(lambda: ran.append("skipped"))
        after = threads.submit(lambda: ran.append("after"))
        assert skipped.cancel()
        release.set()
        first.result(timeout=5)
        after.result(timeout=5)
        assert ran == ["after"]
    finally:
        threads.shutdown()
