"""What a job worker process (or a Dask worker) runs for one case, and how a job worker
process starts.

Kept apart from the service modules so a worker imports only the scoring core and the
per-case limits (:mod:`jdt_service.job_memory`).
"""

from __future__ import annotations

import os
import select
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdt_service.job_memory import boundary_refusal, job_bytes, job_bytes_refusal
from monai_jdt.scoring import CaseReport, ScoringError, ScoringOptions
from monai_jdt.scoring.allocator import tune_allocator
from monai_jdt.scoring.cluster import score_case
from monai_jdt.scoring.sitk_formats import VolumeInfo, inspect_volume

__all__ = ["CaseLimits", "score_job_case", "start_worker"]

_WATCH_POLL_S = 1.0  # where the kernel has no pidfd_open (not Linux 5.3+)


def start_worker(service_pid: int) -> None:
    """The job pool's initializer: the service's allocator thresholds
    (:mod:`monai_jdt.scoring.allocator`), and a thread that ends this worker when the service
    process ``service_pid`` ends. A forkserver's workers outlive a killed parent (SIGKILL,
    the out-of-memory killer): idle for ever, holding their memory, and holding the
    forkserver alive with them."""
    tune_allocator()
    threading.Thread(
        target=_exit_with, args=(service_pid,), name="jdt-service-watch", daemon=True
    ).start()


def _exit_with(pid: int) -> None:
    """Wait for process ``pid`` to end, then end this process at once."""
    try:
        handle = os.pidfd_open(pid)
    except (AttributeError, OSError):  # no pidfd here, or ``pid`` has ended already
        while _exists(pid):
            time.sleep(_WATCH_POLL_S)
    else:
        select.select([handle], [], [])  # readable once the process has ended
    os._exit(1)


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process took the id: ours has ended
        return False
    return True


@dataclass(frozen=True)
class CaseLimits:
    """The service's bounds on one case, as on ``POST /v1/scores``: ``max_job_bytes``
    (``JDT_MAX_JOB_BYTES``, code ``job_too_large``) and ``max_boundary_voxels``
    (``JDT_MAX_BOUNDARY_VOXELS``, code ``boundary_too_large``)."""

    max_job_bytes: int
    max_boundary_voxels: int

    def refusal(
        self, prediction: Path, reference: Path, options: ScoringOptions
    ) -> dict[str, str] | None:
        """``{"code", "message"}`` when the two headers break a limit, else None (also when
        a header cannot be read: scoring then reports that error as ``score-dir`` does)."""
        infos = _headers(prediction, reference, options)
        return None if infos is None else self._refused(infos, options)

    def memory_bytes(self, prediction: Path, reference: Path, options: ScoringOptions) -> int:
        """The case's memory estimate (:func:`jdt_service.job_memory.job_bytes`); 0 for a
        case that fails on its headers or is refused by :meth:`refusal`, which allocates
        nothing."""
        infos = _headers(prediction, reference, options)
        if infos is None or self._refused(infos, options) is not None:
            return 0
        return job_bytes(*infos, options)

    def _refused(
        self, infos: tuple[VolumeInfo, VolumeInfo], options: ScoringOptions
    ) -> dict[str, str] | None:
        boundary = boundary_refusal(*infos, options, self.max_boundary_voxels)
        if boundary is not None:
            return {"code": "boundary_too_large", "message": boundary}
        memory = job_bytes_refusal(job_bytes(*infos, options), self.max_job_bytes)
        if memory is not None:
            return {"code": "job_too_large", "message": memory}
        return None


def _headers(
    prediction: Path, reference: Path, options: ScoringOptions
) -> tuple[VolumeInfo, VolumeInfo] | None:
    """The two headers, or None when one cannot be read."""
    try:
        return (
            inspect_volume(prediction, options.max_voxels),
            inspect_volume(reference, options.max_voxels),
        )
    except (ScoringError, OSError):
        return None


def score_job_case(
    case_id: str, prediction: Path, reference: Path, options: ScoringOptions, limits: CaseLimits
) -> dict[str, Any]:
    """``{"report": CaseReport.to_dict()}``, or ``{"code", "message"}`` for a case that fails
    (see :func:`monai_jdt.scoring.cluster.score_case`) or breaks ``limits`` (checked on the
    headers before any voxel is read): what a ``case_results`` row stores."""
    refused = limits.refusal(prediction, reference, options)
    if refused is not None:
        return {"code": refused["code"], "message": f"{case_id}: {refused['message']}"}
    outcome = score_case(case_id, prediction, reference, options)
    if isinstance(outcome, CaseReport):
        return {"report": outcome.to_dict()}
    return {"code": outcome.code, "message": outcome.message}
