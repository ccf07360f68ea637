"""What a job worker process (or a Dask worker) runs for one case.

Kept apart from the service modules so a worker imports only the scoring core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_jdt.scoring import CaseReport, ScoringOptions
from monai_jdt.scoring.cluster import score_case

__all__ = ["score_job_case"]


def score_job_case(
    case_id: str, prediction: Path, reference: Path, options: ScoringOptions
) -> dict[str, Any]:
    """``{"report": CaseReport.to_dict()}``, or ``{"code", "message"}`` for a case that fails
    (see :func:`monai_jdt.scoring.cluster.score_case`): what a ``case_results`` row stores."""
    outcome = score_case(case_id, prediction, reference, options)
    if isinstance(outcome, CaseReport):
        return {"report": outcome.to_dict()}
    return {"code": outcome.code, "message": outcome.message}
