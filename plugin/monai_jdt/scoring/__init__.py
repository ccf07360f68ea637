"""Scoring of segmentations: per-label Dice / Jaccard / precision / recall / Tversky of a
prediction against a reference, from arrays or NIfTI files, and dataset summaries with the
fine-grained mIoU^D / ^I / ^C.

Public API (also used by the service)::

    options = ScoringOptions(labels=parse_labels("1=liver,2=spleen"))
    report = score_files("pred.nii.gz", "ref.nii.gz", options)   # or score_arrays(p, r, ...)
    report.to_dict()                                               # JSON-safe, SCHEMA_VERSION
    summarize([report, ...])                                       # dataset summary

See docs/scoring.md for the JSON schema and which path runs where.

The names are imported on first use (PEP 562), so ``import monai_jdt.scoring`` costs little:
scoring label maps never imports torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai_jdt.scoring.arrays import score_arrays
    from monai_jdt.scoring.confusion import ConfusionMatrix, confusion_matrix
    from monai_jdt.scoring.errors import (
        AffineMismatchError,
        CorruptFileError,
        InvalidOptionError,
        NegativeLabelError,
        NonFiniteValuesError,
        NonIntegerLabelsError,
        NotNiftiError,
        ProbabilityRangeError,
        ScoringError,
        ShapeMismatchError,
        TooManyLabelsError,
        UnsupportedDataTypeError,
        VolumeTooLargeError,
    )
    from monai_jdt.scoring.files import case_id_from_path, score_files
    from monai_jdt.scoring.folders import CaseFailure, DirectoryResult, pair_cases, score_directory
    from monai_jdt.scoring.nifti import NiftiInfo, inspect_nifti
    from monai_jdt.scoring.options import METRICS, ScoringOptions, parse_labels
    from monai_jdt.scoring.report import SCHEMA_VERSION, CaseReport, LabelScore
    from monai_jdt.scoring.summary import summarize

#: public name -> the module that defines it
_MODULES = {
    "score_arrays": "monai_jdt.scoring.arrays",
    "ConfusionMatrix": "monai_jdt.scoring.confusion",
    "confusion_matrix": "monai_jdt.scoring.confusion",
    "AffineMismatchError": "monai_jdt.scoring.errors",
    "CorruptFileError": "monai_jdt.scoring.errors",
    "InvalidOptionError": "monai_jdt.scoring.errors",
    "NegativeLabelError": "monai_jdt.scoring.errors",
    "NonFiniteValuesError": "monai_jdt.scoring.errors",
    "NonIntegerLabelsError": "monai_jdt.scoring.errors",
    "NotNiftiError": "monai_jdt.scoring.errors",
    "ProbabilityRangeError": "monai_jdt.scoring.errors",
    "ScoringError": "monai_jdt.scoring.errors",
    "ShapeMismatchError": "monai_jdt.scoring.errors",
    "TooManyLabelsError": "monai_jdt.scoring.errors",
    "UnsupportedDataTypeError": "monai_jdt.scoring.errors",
    "VolumeTooLargeError": "monai_jdt.scoring.errors",
    "case_id_from_path": "monai_jdt.scoring.files",
    "score_files": "monai_jdt.scoring.files",
    "CaseFailure": "monai_jdt.scoring.folders",
    "DirectoryResult": "monai_jdt.scoring.folders",
    "pair_cases": "monai_jdt.scoring.folders",
    "score_directory": "monai_jdt.scoring.folders",
    "NiftiInfo": "monai_jdt.scoring.nifti",
    "inspect_nifti": "monai_jdt.scoring.nifti",
    "METRICS": "monai_jdt.scoring.options",
    "ScoringOptions": "monai_jdt.scoring.options",
    "parse_labels": "monai_jdt.scoring.options",
    "SCHEMA_VERSION": "monai_jdt.scoring.report",
    "CaseReport": "monai_jdt.scoring.report",
    "LabelScore": "monai_jdt.scoring.report",
    "summarize": "monai_jdt.scoring.summary",
}


__all__ = [
    "METRICS",
    "SCHEMA_VERSION",
    "AffineMismatchError",
    "CaseFailure",
    "CaseReport",
    "ConfusionMatrix",
    "CorruptFileError",
    "DirectoryResult",
    "InvalidOptionError",
    "LabelScore",
    "NegativeLabelError",
    "NiftiInfo",
    "NonFiniteValuesError",
    "NonIntegerLabelsError",
    "NotNiftiError",
    "ProbabilityRangeError",
    "ScoringError",
    "ScoringOptions",
    "ShapeMismatchError",
    "TooManyLabelsError",
    "UnsupportedDataTypeError",
    "VolumeTooLargeError",
    "case_id_from_path",
    "confusion_matrix",
    "inspect_nifti",
    "pair_cases",
    "parse_labels",
    "score_arrays",
    "score_directory",
    "score_files",
    "summarize",
]


def __getattr__(name: str) -> Any:
    if name not in _MODULES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_MODULES[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_MODULES])
