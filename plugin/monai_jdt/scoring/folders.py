"""Folders of cases: a folder of predictions scored against a folder of references.

Files pair by case id, the file name without its ending (``.nii.gz``, ``.nii``, ``.nrrd``,
``.mha``...; the same name in both folders, as nnU-Net does, whatever the formats). Cases are
scored by a pool of threads: the label-map path spends most of its time inflating gzip in C
without the GIL, so threads keep every core busy without the start-up cost of processes. A
case with bad input becomes a ``CaseFailure`` (its error code and message); the others are
still scored, and the CSV gives it a row with its error code.

``FolderOptions`` holds the options of a folder run besides the per-case ``ScoringOptions``
(one definition each, from which ``monai-jdt score-dir`` derives its flags).
"""

from __future__ import annotations

import csv
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TextIO

from pydantic import Field

from monai_jdt.scoring.errors import InvalidOptionError, ScoringError
from monai_jdt.scoring.files import VOLUME_SUFFIXES, case_id_from_path, score_files
from monai_jdt.scoring.nifti import file_ending
from monai_jdt.scoring.options import DEFAULT_OPTIONS, Exposure, OptionsModel, ScoringOptions
from monai_jdt.scoring.report import SCHEMA_VERSION, CaseReport, DatasetReport
from monai_jdt.scoring.summary import dataset_labels, summarize, with_label_set

__all__ = [
    "CaseFailure",
    "DirectoryResult",
    "FolderOptions",
    "case_files",
    "complete_label_set",
    "csv_rows",
    "dataset_result",
    "pair_cases",
    "score_case",
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
    summary_format: Annotated[Literal["monai-jdt", "nnunet"], Exposure(form=False)] = Field(
        default="monai-jdt",
        description="Layout of the JSON written (-o, --json): monai-jdt (this project's report) "
        "or nnunet (nnU-Net v2's summary.json: metric_per_case, mean, foreground_mean; needs "
        "the metrics dice and jaccard).",
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
    """Everything ``score-dir`` found: reports, failures, unpaired files; ``files`` maps each
    scored case id to its ``(prediction, reference)`` paths."""

    reports: list[CaseReport]
    failures: list[CaseFailure]
    unpaired_predictions: list[str]
    unpaired_references: list[str]
    worst_q: float = 10.0
    summary: dict[str, Any] = field(init=False)
    files: dict[str, tuple[str, str]] = field(default_factory=dict)

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


def case_files(folder: Path, role: str) -> dict[str, Path]:
    """The volume files of ``folder`` by case id (hidden files and other endings skipped).

    Raises:
        InvalidOptionError: the folder (named as the ``role`` folder, e.g. ``reference``) is
            missing or a file, or a case has two files in it.
    """
    if folder.is_file():
        raise InvalidOptionError(
            f"the {role} folder {str(folder)!r} is a file, not a folder; "
            "use `monai-jdt score PRED REF` for one case."
        )
    if not folder.is_dir():
        raise InvalidOptionError(
            f"the {role} folder {str(folder)!r} "
            + ("is not a folder." if os.path.lexists(folder) else "does not exist.")
        )
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or file_ending(path.name, VOLUME_SUFFIXES) is None:
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
    preds = case_files(Path(predictions), "prediction")
    refs = case_files(Path(references), "reference")
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

    The dataset is scored on one label set (``complete_label_set``): every case gets a row for
    each of its labels, absent-from-both rows following ``options.empty``; cases that lack a
    label which may be in their reference (requested labels) are scored a
    second time on the whole set. ``progress`` is called once per case of the first pass
    (from the calling thread).

    Raises:
        InvalidOptionError: a bad ``workers`` / ``worst_q`` (checked before anything is read),
            a folder that is missing or a file, or a case with two files in one folder.
    """
    run = FolderOptions(workers=workers, worst_q=worst_q)
    pairs, unpaired_preds, unpaired_refs = pair_cases(predictions, references)
    threads = run.workers if run.workers is not None else (os.cpu_count() or 1)

    def score(
        triples: list[tuple[str, Path, Path]],
        wider: ScoringOptions,
        each: Callable[[CaseReport | CaseFailure], None] | None,
    ) -> list[CaseReport | CaseFailure]:
        return _score_pairs(triples, wider, threads, each)

    unpaired = (unpaired_preds, unpaired_refs)
    return dataset_result(pairs, unpaired, options, score, run.worst_q, progress)


#: scores ``(case, prediction, reference)`` triples with some options, calling the progress
#: callback (if any) once per outcome: threads here, Dask tasks in ``monai_jdt.scoring.cluster``
PairScorer = Callable[
    [
        list[tuple[str, Path, Path]],
        ScoringOptions,
        Callable[[CaseReport | CaseFailure], None] | None,
    ],
    list[CaseReport | CaseFailure],
]


def dataset_result(
    pairs: list[tuple[str, Path, Path]],
    unpaired: tuple[list[str], list[str]],
    options: ScoringOptions,
    score: PairScorer,
    worst_q: float,
    progress: Callable[[CaseReport | CaseFailure], None] | None = None,
) -> DirectoryResult:
    """The result of the paired cases of two folders (and their ``unpaired`` predictions and
    references), whatever scores the cases: the first pass (with ``progress``), then
    ``complete_label_set`` (its second pass through the same ``score``), so that threads and
    a Dask cluster give one result."""
    paths = {case: (pred, ref) for case, pred, ref in pairs}
    outcomes = score(pairs, options, progress)

    def rescore(cases: Sequence[str], wider: ScoringOptions) -> list[CaseReport | CaseFailure]:
        return score([(c, *paths[c]) for c in cases], wider, None)

    reports, failures = complete_label_set(
        [o for o in outcomes if isinstance(o, CaseReport)], options, rescore
    )
    failures += [o for o in outcomes if isinstance(o, CaseFailure)]
    files = {case: (str(pred), str(ref)) for case, pred, ref in pairs}
    return DirectoryResult(reports, failures, *unpaired, worst_q, files=files)


def complete_label_set(
    reports: Sequence[CaseReport],
    options: ScoringOptions,
    rescore: Callable[[Sequence[str], ScoringOptions], list[CaseReport | CaseFailure]],
) -> tuple[list[CaseReport], list[CaseFailure]]:
    """The reports of a dataset on one label set (``summary.dataset_labels``), and the cases
    that failed on it.

    Every report gets a row for each label of the set, absent-from-both rows following
    ``options.empty`` (``summary.with_label_set``). Cases that lack a label which may be in
    their reference (requested labels) are handed to ``rescore(case ids,
    options on the whole set)``; their new reports keep ``options`` and their first notes, and
    flag the labels not asked for ``requested=False``. For every front end that scores a
    dataset (``score_directory``, the service's dataset jobs).
    """
    labels, unrequested = dataset_labels(reports, options)
    complete: list[CaseReport] = []
    again: dict[str, CaseReport] = {}
    for report in reports:
        filled = with_label_set(report, labels, options)
        if filled is None:
            again[report.case_id or ""] = report
        else:
            complete.append(filled)
    failures: list[CaseFailure] = []
    if not again:
        return complete, failures
    wider = options.replace(labels={label: options.label_name(label) for label in labels})
    for outcome in rescore(list(again), wider):
        if isinstance(outcome, CaseFailure):
            failures.append(outcome)
            continue
        rows = tuple(
            dataclasses.replace(row, requested=row.label not in unrequested)
            for row in outcome.labels
        )
        first = again[outcome.case_id or ""]
        complete.append(
            dataclasses.replace(outcome, labels=rows, options=options, notes=first.notes)
        )
    return complete, failures


def score_case(
    case_id: str, prediction: Path, reference: Path, options: ScoringOptions
) -> CaseReport | CaseFailure:
    """Score one pair; a case with bad input becomes a :class:`CaseFailure` (its error code,
    or ``unreadable`` for an OS error) instead of raising, as ``score-dir`` records it."""
    try:
        return score_files(prediction, reference, options, case_id=case_id)
    except ScoringError as err:
        return CaseFailure(case_id, err.code, err.message, err.options)
    except OSError as err:
        return CaseFailure(case_id, "unreadable", f"{case_id}: {err.strerror or err}")


def _score_pairs(
    pairs: list[tuple[str, Path, Path]],
    options: ScoringOptions,
    workers: int,
    progress: Callable[[CaseReport | CaseFailure], None] | None,
) -> list[CaseReport | CaseFailure]:
    """Score ``(case, prediction, reference)`` triples in ``workers`` threads; bad input
    becomes a ``CaseFailure``."""
    outcomes: list[CaseReport | CaseFailure] = []
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = [pool.submit(score_case, *pair, options) for pair in pairs]
        try:
            for future in as_completed(futures):
                outcome = future.result()
                outcomes.append(outcome)
                if progress is not None:
                    progress(outcome)
        except BaseException:  # Ctrl-C: leaving the pool waited for every queued case
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return outcomes


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


#: how a cell a spreadsheet would run as a formula starts (OWASP, "CSV Injection")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _as_text(value: object) -> object:
    """``value``, with a ``'`` put before text that starts as a formula (a case id from a file
    named ``=HYPERLINK(...).nii.gz``), so that a spreadsheet shows it as text."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def write_csv(
    reports: Sequence[CaseReport], stream: TextIO, failures: Sequence[CaseFailure] = ()
) -> None:
    """Write ``csv_rows`` (nulls and missing fields as empty cells, text that starts as a
    formula behind a ``'``) with a header line: the fields of every row, in order of first
    appearance."""
    rows = [{k: _as_text(v) for k, v in row.items()} for row in csv_rows(reports, failures)]
    fields = list(dict.fromkeys(["case_id", "label", "name", *(k for r in rows for k in r)]))
    writer = csv.DictWriter(stream, fieldnames=fields, lineterminator="\n", restval="")
    # the csv module quotes a cell holding "\n" (its line terminator) but not a lone "\r",
    # which readers take as a line end: a row with one (a case id from such a file name) is
    # written with every cell quoted
    quoted = csv.DictWriter(
        stream, fieldnames=fields, lineterminator="\n", restval="", quoting=csv.QUOTE_ALL
    )
    writer.writeheader()
    for row in rows:
        carriage = any(isinstance(value, str) and "\r" in value for value in row.values())
        (quoted if carriage else writer).writerow(row)
