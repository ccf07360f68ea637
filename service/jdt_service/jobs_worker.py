"""What a job worker process (or a Dask worker) runs for one case.

Kept apart from the service modules so a worker imports only the scoring core.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from monai_jdt.scoring import ScoringError, ScoringOptions, score_files

__all__ = ["score_case"]


def score_case(
    case_id: str, prediction: Path, reference: Path, options: ScoringOptions
) -> dict[str, Any]:
    """``{"report": CaseReport.to_dict()}``, or ``{"code", "message"}`` for a case that fails
    as ``score-dir`` records it (a :class:`ScoringError`, or ``unreadable`` for an OS error)."""
    try:
        return {"report": score_files(prediction, reference, options, case_id=case_id).to_dict()}
    except ScoringError as err:
        return {"code": err.code, "message": err.message}
    except OSError as err:
        return {"code": "unreadable", "message": f"{case_id}: {err.strerror or err}"}
