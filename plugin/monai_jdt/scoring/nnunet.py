"""nnU-Net v2's ``summary.json`` layout, from the per-case reports of a dataset, so that scripts
written for nnU-Net's evaluation (``compute_metrics_on_folder``) read ``score-dir`` results.

The layout (Isensee et al., nnU-Net, Nature Methods 2021; v2's evaluation)::

    {
      "metric_per_case": [                       # one entry per case, in the order of the
        {"prediction_file": str,                 # prediction files' names (as nnU-Net
         "reference_file": str,                  # lists its folder)
         "metrics": {"<key>": {"Dice": float, "IoU": float,
                               "TP": int, "FP": int, "FN": int, "TN": int,
                               "n_pred": int, "n_ref": int}}}
      ],
      "mean": {"<key>": {<metric>: float}},      # per key, NaN-skipping mean over cases
      "foreground_mean": {<metric>: float}       # mean over the keys but label 0 of "mean"
    }

Keys are nnU-Net's: ``str(label)`` for a label, ``str(tuple(members))`` for a region
(``--regions "WT=1,2,3"`` is ``"(1, 2, 3)"``, as nnU-Net's region-based evaluation writes it);
the foreground mean is over the labels but 0 and the regions, as nnU-Net's.
``Dice = 2 TP / (2 TP + FP + FN)``, ``IoU = TP / (TP + FP + FN)``,
``n_pred = TP + FP``, ``n_ref = TP + FN``, taken from the reports (so ``--ignore-label`` and
``--empty`` apply as in our own summary: with ``--empty one`` a label absent from both volumes
has Dice 1.0 where nnU-Net writes NaN). ``mean[label][m]`` is the mean of ``m`` over the cases
where it is not NaN (NaN when it is NaN in every case); ``foreground_mean[m]`` is the plain mean
of ``mean[label][m]`` over the labels other than 0, so it is NaN when one label's is. As in
nnU-Net's file, undefined values are written as ``NaN`` (which Python's ``json`` reads and
writes; our own report writes ``null`` instead), counts of the mean are floats, and keys are
sorted. Every case must report the same labels (``score_directory`` scores a dataset on one
label set); cases that failed are not in the layout (they are in our own report).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.report import CaseReport, LabelScore

__all__ = ["NNUNET_METRICS", "dumps_nnunet", "nnunet_summary"]

#: the per-label entries of nnU-Net's ``metric_per_case``, in its order
NNUNET_METRICS: tuple[str, ...] = ("Dice", "IoU", "FP", "TP", "FN", "TN", "n_pred", "n_ref")


def _ratio(row: LabelScore, metric: str) -> float:
    value = row.metrics[metric]
    return math.nan if value is None else float(value)


def _case_metrics(row: LabelScore) -> dict[str, float | int]:
    """One label's entry: the report's Dice and Jaccard, its counts (ints for label maps)."""
    return {
        "Dice": _ratio(row, "dice"),
        "IoU": _ratio(row, "jaccard"),
        "FP": row.fp,
        "TP": row.tp,
        "FN": row.fn,
        "TN": row.tn,
        "n_pred": row.predicted_voxels,
        "n_ref": row.reference_voxels,
    }


def _key(row: LabelScore) -> int | tuple[int, ...]:
    """What nnU-Net keys a row by (as ``str``): the label id, or a region's member labels."""
    return int(row.label) if row.label is not None else tuple(int(m) for m in row.members or ())


def _nan_mean(values: Sequence[float]) -> float:
    kept = [float(v) for v in values if not math.isnan(v)]
    return math.fsum(kept) / len(kept) if kept else math.nan


def nnunet_summary(
    reports: Sequence[CaseReport], files: Mapping[str, tuple[str, str]]
) -> dict[str, Any]:
    """nnU-Net's ``summary.json`` content (see the module doc) for a dataset's reports.

    Args:
        reports: one report per case (label maps or probabilities), all with the same labels
            flagged ``requested`` and with ``dice`` and ``jaccard`` among their metrics.
        files: ``{case id: (prediction file, reference file)}`` for every report.

    Raises:
        InvalidOptionError: ``dice`` or ``jaccard`` was not scored, a case reports other
            labels than the first case, or a case has no files.
    """
    for report in reports:
        if report.case_id is None or report.case_id not in files:
            raise InvalidOptionError(f"case {report.case_id!r}: no files given for it.")
    ordered = sorted(reports, key=lambda r: (Path(files[r.case_id or ""][0]).name, r.case_id))
    labels: list[int | tuple[int, ...]] | None = None
    per_case: list[dict[str, Any]] = []
    case_metrics: list[dict[str, dict[str, float | int]]] = []
    for report in ordered:
        missing = {"dice", "jaccard"} - set(report.options.metrics)
        if missing:
            raise InvalidOptionError(
                f"the nnU-Net summary needs the metrics dice and jaccard; {sorted(missing)} "
                "were not scored (add them to --metrics)."
            )
        rows = [row for row in report.labels if row.requested or row.label is None]
        case_labels = [_key(row) for row in rows]
        if labels is None:
            labels = case_labels
        elif case_labels != labels:
            raise InvalidOptionError(
                f"case {report.case_id!r} reports labels {case_labels}, the first case "
                f"{labels}: the nnU-Net summary needs one label set for every case."
            )
        prediction, reference = files[report.case_id or ""]
        metrics = {str(key): _case_metrics(row) for key, row in zip(case_labels, rows, strict=True)}
        per_case.append(
            {
                "prediction_file": str(prediction),
                "reference_file": str(reference),
                "metrics": metrics,
            }
        )
        case_metrics.append(metrics)
    labels = labels or []
    means = {
        str(label): {
            metric: _nan_mean([float(case[str(label)][metric]) for case in case_metrics])
            for metric in NNUNET_METRICS
        }
        for label in labels
    }
    foreground = [means[str(label)] for label in labels if label != 0]  # regions are tuples
    foreground_mean = {
        metric: math.fsum(m[metric] for m in foreground) / len(foreground)
        if foreground
        else math.nan
        for metric in NNUNET_METRICS
    }
    return {"metric_per_case": per_case, "mean": means, "foreground_mean": foreground_mean}


def dumps_nnunet(summary: Mapping[str, Any]) -> str:
    """The JSON text nnU-Net writes for a summary: keys sorted, indent 4, NaN as ``NaN``."""
    return json.dumps(summary, sort_keys=True, indent=4, allow_nan=True)
