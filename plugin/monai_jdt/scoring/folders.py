"""Folders of cases: a folder of predictions scored against a folder of references.

Files pair by case id, the file name without ``.nii.gz`` / ``.nii`` (the same name in both
folders, as nnU-Net does). Cases are scored by a pool of threads: the label-map path spends
most of its time inflating gzip in C without the GIL, so threads keep every core busy without
the start-up cost of processes. A case with bad input becomes a ``CaseFailure`` (its error code
and message); the others are still scored, and the CSV gives it a row with its error code.

``FolderOptions`` holds the options of a folder run besides the per-case ``ScoringOptions``
(one definition each, from which ``monai-jdt score-dir`` derives its flags).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TextIO

from pydantic import Field

from monai_jdt.scoring.errors import InvalidOptionError, ScoringError
from monai_jdt.scoring.files import NIFTI_SUFFIXES, case_id_from_path, score_files
from monai_jdt.scoring.options import DEFAULT_OPTIONS, Exposure, OptionsModel, ScoringOptions
from monai_jdt.scoring.report import SCHEMA_VERSION, CaseReport, DatasetReport
from monai_jdt.scoring.summary import summarize

__all__ = [
    "CaseFailure",
    "DirectoryResult",
    "FolderOptions",
    "csv_rows",
    "pair_cases",
    "score_directory",
    "write_csv",
]


class FolderOptions(OptionsModel):
    """How a folder of cases is run (besides how each case is scored).

    Raises:
        InvalidOptionError: a bad value (``.option`` names it).
    """

    workers: Annotated[int | None, Field(ge=1), Exposure(form=False, metavar="N")] = Field(
        default=None, description="Cases scored at once. Default: the number of CPUs."
    )
    worst_q: Annotated[
        float, Field(gt=0, le=100, allow_inf_nan=False), Exposure(form=False, metavar="PCT")
    ] = Field(
        default=10.0, description="Percentage of worst cases for the worst-case means, in (0, 100]."
    )


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be scored: its error's code and message, and the options that
    bear on it (``ScoringError.options``, for the front end to name)."""

    case_id: str
    code: str
    message: str
    options: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, str]:
        return {"case_id": self.case_id, "code": self.code, "message": self.message}


@dataclass
class DirectoryResult:
    """Everything ``score-dir`` found: reports, failures, unpaired files."""

    reports: list[CaseReport]
    failures: list[CaseFailure]
    unpaired_predictions: list[str]
    unpaired_references: list[str]
    worst_q: float = 10.0
    summary: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.reports.sort(key=lambda r: r.case_id or "")
        self.failures.sort(key=lambda f: f.case_id)
        self.summary = summarize(self.reports, self.worst_q)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe: the summary, every case report, the failures and the unpaired files,
        laid out by ``DatasetReport``."""
        report = DatasetReport.model_validate(
            {
                "schema_version": SCHEMA_VERSION,
                "summary": self.summary,
                "cases": [report.to_dict() for report in self.reports],
                "failures": [failure.to_dict() for failure in self.failures],
                "unpaired": {
                    "predictions": self.unpaired_predictions,
                    "references": self.unpaired_references,
                },
            }
        )
        return report.model_dump(mode="json", exclude_unset=True)


def _nifti_files(folder: Path, role: str) -> dict[str, Path]:
    if folder.is_file():
        raise InvalidOptionError(
            f"the {role} folder {str(folder)!r} is a file, not a folder; "
            "use `monai-jdt score PRED REF` for one case."
        )
    if not folder.is_dir():
        raise InvalidOptionError(f"the {role} folder {str(folder)!r} does not exist.")
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.name.endswith(NIFTI_SUFFIXES):
            continue
        case = case_id_from_path(path)
        if case in files:
            raise InvalidOptionError(
                f"case {case!r} has two files in the {role} folder: {files[case].name} and "
                f"{path.name}."
            )
        files[case] = path
    return files


def pair_cases(
    predictions: str | os.PathLike[str], references: str | os.PathLike[str]
) -> tuple[list[tuple[str, Path, Path]], list[str], list[str]]:
    """``(pairs, unpaired prediction files, unpaired reference files)``; pairs are
    ``(case id, prediction path, reference path)`` sorted by case id."""
    preds = _nifti_files(Path(predictions), "prediction")
    refs = _nifti_files(Path(references), "reference")
    pairs = [(case, preds[case], refs[case]) for case in sorted(preds.keys() & refs.keys())]
    return (
        pairs,
        sorted(preds[c].name for c in preds.keys() - refs.keys()),
        sorted(refs[c].name for c in refs.keys() - preds.keys()),
    )


def score_directory(
    predictions: str | os.PathLike[str],
    references: str | os.PathLike[str],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    workers: int | None = None,
    worst_q: float = 10.0,
    progress: Callable[[CaseReport | CaseFailure], None] | None = None,
) -> DirectoryResult:
    """Score every paired case of two folders with ``workers`` threads (default: CPU count).

    ``progress`` is called once per finished case (from the calling thread).

    Raises:
        InvalidOptionError: a bad ``workers`` / ``worst_q`` (checked before anything is read),
            a folder that is missing or a file, or a case with two files in one folder.
    """
    run = FolderOptions(workers=workers, worst_q=worst_q)
    pairs, unpaired_preds, unpaired_refs = pair_cases(predictions, references)
    workers = run.workers if run.workers is not None else (os.cpu_count() or 1)

    def one(case: str, pred: Path, ref: Path) -> CaseReport | CaseFailure:
        try:
            return score_files(pred, ref, options, case_id=case)
        except ScoringError as err:
            return CaseFailure(case, err.code, err.message, err.options)
        except OSError as err:
            return CaseFailure(case, "unreadable", f"{case}: {err.strerror or err}")

    reports: list[CaseReport] = []
    failures: list[CaseFailure] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(one, *pair) for pair in pairs]
        for future in as_completed(futures):
            outcome = future.result()
            if isinstance(outcome, CaseReport):
                reports.append(outcome)
            else:
                failures.append(outcome)
            if progress is not None:
                progress(outcome)
    return DirectoryResult(reports, failures, unpaired_preds, unpaired_refs, run.worst_q)


def csv_rows(
    reports: Sequence[CaseReport], failures: Sequence[CaseFailure] = ()
) -> Iterator[dict[str, Any]]:
    """One flat row per (case, label): ``case_id``, the label's JSON fields, ``reasons`` joined
    by ``; ``, and an empty ``error``; then one row per failed case with its ``error`` code
    (and its message in ``reasons``), so a reader of the CSV alone sees every case."""
    for report in reports:
        for row in report.labels:
            flat = {"case_id": report.case_id, **row.to_dict()}
            flat["reasons"] = "; ".join(f"{k}: {v}" for k, v in row.reasons.items())
            yield {**flat, "error": None}
    for failure in failures:
        yield {"case_id": failure.case_id, "reasons": failure.message, "error": failure.code}


def write_csv(
    reports: Sequence[CaseReport], stream: TextIO, failures: Sequence[CaseFailure] = ()
) -> None:
    """Write ``csv_rows`` (nulls and missing fields as empty cells) with a header line: the
    fields of every row, in order of first appearance."""
    rows = list(csv_rows(reports, failures))
    fields = list(dict.fromkeys(["case_id", "label", "name", *(k for r in rows for k in r)]))
    writer = csv.DictWriter(stream, fieldnames=fields, lineterminator="\n", restval="")
    writer.writeheader()
    writer.writerows(rows)
