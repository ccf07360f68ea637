"""What a job worker process (or a Dask worker) runs for one case.

Kept apart from the service modules so a worker imports only the scoring core and the
per-case limits (:mod:`jdt_service.job_memory`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jdt_service.job_memory import boundary_refusal, job_bytes, job_bytes_refusal
from monai_jdt.scoring import CaseReport, ScoringError, ScoringOptions
from monai_jdt.scoring.cluster import score_case
from monai_jdt.scoring.sitk_formats import VolumeInfo, inspect_volume

__all__ = ["CaseLimits", "score_job_case"]


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
