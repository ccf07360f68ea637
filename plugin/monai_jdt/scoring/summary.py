"""Dataset summary of per-case reports.

Per label and metric: mean / median / std (population, ddof=0) / min / max over the cases where
the metric is defined, and ``n``, the number of those cases (undefined values are skipped,
never counted as 0 or 1); the same statistics of the counts (tp, fp, fn, tn) and volumes. The
foreground mean of a metric is the mean of its per-label means over the requested labels other
than 0; label 0, when scored, is reported apart (``background``).

In a dataset the label set is decided once (``dataset_labels``: the requested labels, or every
label present in any case) and every case is scored on all of it (``with_label_set``), as
nnU-Net does: a label absent from both volumes of a case gets a row with zero counts whose
ratios follow ``empty``, so a per-label mean is over every case where the label is in either
volume (and over every case with ``empty="one"``).

The fine-grained family (Wang et al., "Revisiting Evaluation Metrics for Semantic Segmentation:
Optimization and Evaluation of Fine-grained Intersection over Union", NeurIPS 2023), for
Jaccard (mIoU) and Dice, from the per-(case, label) counts ``tp, fp, fn`` ``[N, L]`` with
``active[i, j]`` = label j is present in case i's reference, through
``monai_jdt.aggregation.aggregate_scores`` (on float64 numpy arrays: no torch):

* ``D`` (dataset): pool the counts of all cases, one ratio per label, mean over the labels
  with any count (``tp + fp + fn > 0``: one predicted in no reference scores 0);
* ``I`` (image): ratio per (case, label), mean over the case's active labels, then over cases;
* ``C`` (class): ratio per (case, label), mean over the cases where the label is active, then
  over labels;
* ``I_worst`` / ``C_worst``: the same, keeping only the worst ``q`` % of cases (per label for
  ``C``; at least one case), i.e. the mean of the lowest ``ceil(q/100 * n)`` scores.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from monai_jdt.aggregation import (
    Aggregation,
    SoftCounts,
    aggregate_scores,
    masked_mean,
    scored_pairs,
    tversky_index,
    worst_mean,
)
from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.options import ScoringOptions
from monai_jdt.scoring.report import SCHEMA_VERSION, CaseReport, label_scores

__all__ = ["dataset_labels", "fine_grained_scores", "summarize", "with_label_set"]

#: the counts and volumes of a label row summarised like the ratios
COUNT_FIELDS: tuple[str, ...] = (
    "tp",
    "fp",
    "fn",
    "tn",
    "predicted_voxels",
    "reference_voxels",
    "predicted_ml",
    "reference_ml",
)

_FINE_GRAINED = {"jaccard": (1.0, 1.0), "dice": (0.5, 0.5)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float]:
    """Mean and population std of non-empty float64 ``values``, also where their sums pass
    the float64 limit (values near 1e308: a ``missing_distance`` of 1e200 squares past it):
    then both come from the values divided by the largest magnitude, and are scaled back."""
    array = np.asarray(values, dtype=np.float64)
    with np.errstate(over="ignore", invalid="ignore"):
        mean, std = float(array.mean()), float(array.std())
    if (math.isfinite(mean) and math.isfinite(std)) or not np.isfinite(array).all():
        return mean, std
    scale = float(np.abs(array).max())
    scaled = array / scale
    return scale * float(scaled.mean()), scale * float(scaled.std())


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    mean, std = _mean_std(array)
    return {
        "mean": mean,
        "median": float(np.median(array)),
        "std": std,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def fine_grained_scores(
    counts: SoftCounts, alpha: float, beta: float, q: float
) -> dict[str, float | None]:
    """``D``, ``I``, ``C``, ``I_worst``, ``C_worst`` of ``[N, L]`` counts (see the module doc)."""
    levels: tuple[tuple[str, Aggregation], ...] = (("D", "batch"), ("I", "image"), ("C", "class"))
    result = {
        key: _finite(
            float(aggregate_scores(counts, scored_pairs(counts, level), level, alpha, beta))
        )
        for key, level in levels
    }
    active = np.asarray(scored_pairs(counts, "image"))
    per_pair = tversky_index(counts, alpha, beta)
    per_image = masked_mean(per_pair, active, dim=1)
    result["I_worst"] = _finite(worst_mean(per_image, active.any(1), q))
    per_class = [
        worst_mean(per_pair[:, j], active[:, j], q)
        for j in range(active.shape[1])
        if active[:, j].any()
    ]
    result["C_worst"] = _finite(float(np.mean(per_class))) if per_class else None
    return result


def dataset_labels(
    reports: Sequence[CaseReport], options: ScoringOptions
) -> tuple[list[int], set[int]]:
    """The label set of a dataset, decided once from its case reports: ``(labels, unrequested)``.

    With ``options.labels``: the requested labels (``ScoringOptions.requested_labels``: label 0
    too under ``include_background``), plus every label a prediction holds without being asked
    for (``unrequested``; reported, flagged ``requested=False``, in every case).
    Without: every label reported by any case (each case reports the labels present in either
    of its volumes).
    """
    seen = {row.label for report in reports for row in report.labels if row.label is not None}
    requested = options.requested_labels
    if requested is None:
        return sorted(seen), set()
    unrequested = seen - requested
    return sorted(requested | unrequested), unrequested


def with_label_set(
    report: CaseReport, labels: Sequence[int], options: ScoringOptions
) -> CaseReport | None:
    """``report`` with a row for every label of ``labels``, or None when the case must be
    scored again on them.

    A label-map case scored without ``options.labels`` reports every label present in either
    of its volumes, so a label it lacks is absent from both: its row has ``tp = fp = fn = 0``
    and ``tn`` = the voxels counted (``label_scores``, ratios under ``options.empty``), and
    the boundary metrics of a structure absent from both volumes (``with_absent_boundary``,
    also under ``options.empty``), as the case scored on that label would give. A case scored
    on requested labels cannot tell, and is scored again. A probability map already reports
    every label it can score (its channels, or a single map's one label): it is kept as it
    is, with a note naming the labels it lacks (they have no value in that case).
    """
    have = {row.label for row in report.labels if row.label is not None}  # not region rows
    missing = [label for label in labels if label not in have]
    if not missing:
        return report
    if report.kind == "probabilities":
        # a probability map already reports every label it can (its channels, or the one
        # label of a single map): scoring it again on more would only fail
        note = f"labels {missing} of the dataset are not channels of this probability map"
        if note in report.notes:  # completed before (a job resumed): nothing changes
            return report
        return dataclasses.replace(report, notes=(*report.notes, note))
    if options.labels is not None:
        return None
    if not report.labels and options.ignore_label is not None:
        return None  # the voxels counted (the ignored ones left out) are known only by a row
    first = report.labels[0] if report.labels else None
    counted = (
        math.prod(report.shape) if first is None else int(first.tp + first.fp + first.fn + first.tn)
    )
    from monai_jdt.scoring.boundary_report import with_absent_boundary

    zeros = np.zeros(len(missing), dtype=np.float64)
    added = label_scores(
        missing,
        (zeros, zeros, zeros),
        counted,
        [True] * len(missing),
        options,
        report.voxel_ml,
        True,
    )
    added = with_absent_boundary(added, options)
    labels_first = sorted(
        (row for row in (*report.labels, *added) if row.label is not None),
        key=lambda row: int(row.label or 0),
    )
    regions = [row for row in report.labels if row.label is None]
    return dataclasses.replace(report, labels=(*labels_first, *regions))


def summarize(reports: Sequence[CaseReport], worst_q: float = 10.0) -> dict[str, Any]:
    """The dataset summary of ``reports`` as a JSON-safe dict (see docs/scoring.md).

    Labels flagged ``requested=False`` (predicted but not asked for) get their own statistics
    but take no part in the foreground mean and the fine-grained scores.
    """
    if not 0 < worst_q <= 100:
        raise InvalidOptionError(f"worst_q must be a percentage in (0, 100], got {worst_q!r}.")
    metrics: list[str] = list(reports[0].options.metrics) if reports else []
    rows: dict[int, list[Any]] = {}
    regions: dict[str, list[Any]] = {}
    names: dict[int, str | None] = {}
    requested: dict[int, bool] = {}
    for report in reports:
        for row in report.labels:
            if row.label is None:  # a region row (monai_jdt.scoring.regions)
                regions.setdefault(str(row.region), []).append((row, report))
                continue
            rows.setdefault(row.label, []).append((row, report))
            names[row.label] = names.get(row.label) or row.name
            requested[row.label] = requested.get(row.label, False) or row.requested
    per_label = [
        {
            "label": label,
            "name": names[label],
            "requested": requested[label],
            **_structure_stats(rows[label], metrics),
        }
        for label in sorted(rows)
    ]
    scored = [label for label in sorted(rows) if requested[label]]
    foreground = {}
    for metric in metrics:
        means = [
            e[metric]["mean"]
            for e in per_label
            if e["requested"] and e["label"] != 0 and e[metric]["n"]
        ]
        foreground[metric] = {
            "mean": _mean_std(means)[0] if means else None,
            "labels": len(means),
        }
    background = next((e for e in per_label if e["label"] == 0), None)
    return {
        "schema_version": SCHEMA_VERSION,
        "cases": len(reports),
        "metrics": metrics,
        "labels": per_label,
        **(
            {
                "regions": [
                    {"region": name, **_structure_stats(pairs, metrics)}
                    for name, pairs in regions.items()
                ]
            }
            if regions
            else {}
        ),
        "foreground_mean": foreground,
        "background": None
        if background is None
        else {metric: background[metric]["mean"] for metric in metrics},
        "fine_grained": _fine_grained(reports, scored, worst_q),
    }


def _structure_stats(pairs: Sequence[tuple[Any, CaseReport]], metrics: list[str]) -> dict[str, Any]:
    """Case count and statistics of each metric over one label's or region's rows; with
    boundary metrics, a structure present in one volume only is charged ``missing_distance``
    and counted as missed / spurious (``monai_jdt.scoring.boundary_report``)."""
    from monai_jdt.scoring.boundary_report import missing_counts, penalized, wants_boundary

    entry: dict[str, Any] = {"cases": len(pairs)}
    for metric in metrics:
        values = [penalized(row, metric, report) for row, report in pairs]
        entry[metric] = _stats([v for v in values if v is not None])
    for key in COUNT_FIELDS:
        counts = [getattr(row, key, None) for row, _ in pairs]
        entry[key] = _stats([float(v) for v in counts if v is not None])
    if pairs and wants_boundary(pairs[0][1].options):
        entry.update(missing_counts([row for row, _ in pairs]))
    return entry


def _fine_grained(reports: Sequence[CaseReport], labels: list[int], q: float) -> dict[str, Any]:
    index = {label: j for j, label in enumerate(labels)}
    shape = (len(reports), len(labels))
    tp, fp, fn = (np.zeros(shape, dtype=np.float64) for _ in range(3))
    for i, report in enumerate(reports):
        for row in report.labels:
            j = None if row.label is None else index.get(row.label)
            if j is not None:
                tp[i, j], fp[i, j], fn[i, j] = row.tp, row.fp, row.fn
    counts = SoftCounts(tp, fp, fn)
    active = (tp + fn) > 0
    out: dict[str, Any] = {
        "q_percent": q,
        "labels": labels,
        "cases": int(active.any(1).sum()),
    }
    for metric, (alpha, beta) in _FINE_GRAINED.items():
        out[metric] = fine_grained_scores(counts, alpha, beta, q)
    return out
