"""Dataset summary of per-case reports.

Per label and metric: mean / median / std (population, ddof=0) / min / max over the cases where
the metric is defined, and ``n``, the number of those cases (undefined values are skipped,
never counted as 0 or 1). The foreground mean of a metric is the mean of its per-label means.

The fine-grained family (Wang et al., "Revisiting Evaluation Metrics for Semantic Segmentation:
Optimization and Evaluation of Fine-grained Intersection over Union", NeurIPS 2023), for
Jaccard (mIoU) and Dice, from the per-(case, label) counts ``tp, fp, fn`` ``[N, L]`` with
``active[i, j]`` = label j is present in case i's reference, through
``monai_jdt.counts.aggregate_scores``:

* ``D`` (dataset): pool the counts of all cases, one ratio per label, mean over labels;
* ``I`` (image): ratio per (case, label), mean over the case's active labels, then over cases;
* ``C`` (class): ratio per (case, label), mean over the cases where the label is active, then
  over labels;
* ``I_worst`` / ``C_worst``: the same, keeping only the worst ``q`` % of cases (per label for
  ``C``; at least one case), i.e. the mean of the lowest ``ceil(q/100 * n)`` scores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.report import SCHEMA_VERSION, CaseReport

if TYPE_CHECKING:  # torch and the counts are imported where the fine-grained scores need them
    import torch

    from monai_jdt.counts import SoftCounts

__all__ = ["fine_grained_scores", "summarize", "worst_mean"]

_FINE_GRAINED = {"jaccard": (1.0, 1.0), "dice": (0.5, 0.5)}


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {"mean": None, "median": None, "std": None, "min": None, "max": None, "n": 0}
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "median": float(np.median(array)),
        "std": float(array.std()),
        "min": float(array.min()),
        "max": float(array.max()),
        "n": int(array.size),
    }


def worst_mean(scores: torch.Tensor, keep: torch.Tensor, q: float) -> float:
    """Mean of the lowest ``ceil(q/100 * n)`` (at least one) of ``scores[keep]``; NaN if none."""
    values = scores[keep.bool()].sort().values
    if values.numel() == 0:
        return math.nan
    k = max(1, math.ceil(q / 100.0 * values.numel()))
    return float(values[:k].mean())


def fine_grained_scores(
    counts: SoftCounts, active: torch.Tensor, alpha: float, beta: float, q: float
) -> dict[str, float | None]:
    """``D``, ``I``, ``C``, ``I_worst``, ``C_worst`` of ``[N, L]`` counts (see the module doc)."""
    from monai_jdt.counts import Aggregation, aggregate_scores, masked_mean, tversky_index

    levels: tuple[tuple[str, Aggregation], ...] = (("D", "batch"), ("I", "image"), ("C", "class"))
    result = {
        key: _finite(float(aggregate_scores(counts, active, level, alpha, beta)))
        for key, level in levels
    }
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


def summarize(reports: Sequence[CaseReport], worst_q: float = 10.0) -> dict[str, Any]:
    """The dataset summary of ``reports`` as a JSON-safe dict (see docs/scoring.md).

    Labels flagged ``requested=False`` (predicted but not asked for) get their own statistics
    but take no part in the foreground mean and the fine-grained scores.
    """
    if not 0 < worst_q <= 100:
        raise InvalidOptionError(f"worst_q must be a percentage in (0, 100], got {worst_q!r}.")
    metrics: list[str] = list(reports[0].options.metrics) if reports else []
    rows: dict[int, list[Any]] = {}
    names: dict[int, str | None] = {}
    requested: dict[int, bool] = {}
    for report in reports:
        for row in report.labels:
            rows.setdefault(row.label, []).append(row)
            names[row.label] = names.get(row.label) or row.name
            requested[row.label] = requested.get(row.label, False) or row.requested
    per_label = []
    for label in sorted(rows):
        entry: dict[str, Any] = {
            "label": label,
            "name": names[label],
            "requested": requested[label],
            "cases": len(rows[label]),
        }
        for metric in metrics:
            entry[metric] = _stats(
                [r.metrics[metric] for r in rows[label] if r.metrics.get(metric) is not None]
            )
        per_label.append(entry)
    scored = [label for label in sorted(rows) if requested[label]]
    foreground = {}
    for metric in metrics:
        means = [e[metric]["mean"] for e in per_label if e["requested"] and e[metric]["n"]]
        foreground[metric] = {
            "mean": float(np.mean(means)) if means else None,
            "labels": len(means),
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "cases": len(reports),
        "metrics": metrics,
        "labels": per_label,
        "foreground_mean": foreground,
        "fine_grained": _fine_grained(reports, scored, worst_q),
    }


def _fine_grained(reports: Sequence[CaseReport], labels: list[int], q: float) -> dict[str, Any]:
    import torch

    from monai_jdt.counts import SoftCounts

    index = {label: j for j, label in enumerate(labels)}
    shape = (len(reports), len(labels))
    tp, fp, fn = (torch.zeros(shape, dtype=torch.float64) for _ in range(3))
    for i, report in enumerate(reports):
        for row in report.labels:
            j = index.get(row.label)
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
        out[metric] = fine_grained_scores(counts, active, alpha, beta, q)
    return out
