"""Scoring of segmentations: per-label Dice / Jaccard / precision / recall / Tversky of a
prediction against a reference, from arrays or NIfTI files, and dataset summaries with the
fine-grained mIoU^D / ^I / ^C.

Public API (also used by the service)::

    options = ScoringOptions(labels=parse_labels("1=liver,2=spleen"))
    report = score_files("pred.nii.gz", "ref.nii.gz", options)   # or score_arrays(p, r, ...)
    report.to_dict()                                               # JSON-safe, SCHEMA_VERSION
    summarize([report, ...])                                       # dataset summary

See docs/scoring.md for the JSON schema and which path runs where.
"""

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
