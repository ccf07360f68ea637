"""The per-case report: per-label counts, volumes and ratios, as a JSON-safe dict.

Every ratio is a Tversky index of the label's counts (``monai_jdt.counts.tversky_index``)::

    dice      = 2 tp / (2 tp + fp + fn)      (alpha = beta = 1/2)
    jaccard   = tp / (tp + fp + fn)          (alpha = beta = 1, the IoU)
    precision = tp / (tp + fp)               (alpha = 1, beta = 0)
    recall    = tp / (tp + fn)               (alpha = 0, beta = 1, the sensitivity)
    tversky   = tp / (tp + alpha fp + beta fn)

A ratio with a zero denominator is undefined: it is ``null`` in the JSON (NaN is not JSON)
and ``reasons[metric]`` says why. A label absent from both volumes is undefined for every
ratio under ``empty="nan"`` and 1.0 under ``empty="one"``. Counts are always reported, so a
reader can apply another convention.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from monai_jdt.counts import SoftCounts, tversky_index
from monai_jdt.scoring.options import ScoringOptions

__all__ = ["SCHEMA_VERSION", "CaseReport", "LabelScore", "label_scores", "metric_weights"]

#: version of the JSON layout of ``CaseReport.to_dict`` and of the dataset summary
SCHEMA_VERSION = "1.0"

_ABSENT = "label absent from both prediction and reference"
_DENOMINATOR_REASONS = {
    "precision": "no voxel predicted as this label (tp + fp = 0)",
    "recall": "label absent from the reference (tp + fn = 0)",
    "tversky": "tp + alpha*fp + beta*fn = 0",
}


def metric_weights(metric: str, options: ScoringOptions) -> tuple[float, float]:
    """``(alpha, beta)`` of a metric as a Tversky index."""
    return {
        "dice": (0.5, 0.5),
        "jaccard": (1.0, 1.0),
        "precision": (1.0, 0.0),
        "recall": (0.0, 1.0),
        "tversky": (options.tversky_alpha, options.tversky_beta),
    }[metric]


def _number(value: float | int) -> float | int | None:
    """A JSON-safe number: NaN / infinity become None."""
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    return value if math.isfinite(value) else None


@dataclass(frozen=True)
class LabelScore:
    """Scores of one label in one case.

    Counts are ints for label maps and floats (soft counts) for probability maps; volumes in
    mL are None when the voxel spacing is unknown.
    """

    label: int
    name: str | None
    requested: bool
    metrics: dict[str, float | None]
    reasons: dict[str, str]
    tp: float
    fp: float
    fn: float
    tn: float
    predicted_voxels: float
    reference_voxels: float
    predicted_ml: float | None
    reference_ml: float | None

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of this label (see docs/scoring.md for the fields)."""
        row: dict[str, Any] = {"label": self.label, "name": self.name, "requested": self.requested}
        row.update(self.metrics)
        for key in ("tp", "fp", "fn", "tn", "predicted_voxels", "reference_voxels"):
            row[key] = _number(getattr(self, key))
        row["predicted_ml"] = self.predicted_ml
        row["reference_ml"] = self.reference_ml
        row["reasons"] = dict(self.reasons)
        return row


def label_scores(
    labels: Sequence[int],
    counts: SoftCounts,
    voxels: int,
    requested: Sequence[bool],
    options: ScoringOptions,
    voxel_ml: float | None,
    integer_counts: bool,
) -> list[LabelScore]:
    """One ``LabelScore`` per label from float64 ``[L]`` counts.

    ``tn = voxels - tp - fp - fn``; predicted volume ``tp + fp``, reference volume ``tp + fn``.
    """
    tp, fp, fn = (c.to(torch.float64) for c in counts)
    absent = (tp + fp + fn) == 0
    values: dict[str, np.ndarray] = {}
    for metric in options.metrics:
        alpha, beta = metric_weights(metric, options)
        index = tversky_index(SoftCounts(tp, fp, fn), alpha, beta)
        if options.empty == "one":
            index = torch.where(absent, torch.ones_like(index), index)
        values[metric] = index.numpy()
    as_count = int if integer_counts else float
    rows = []
    for i, label in enumerate(labels):
        metrics: dict[str, float | None] = {}
        reasons: dict[str, str] = {}
        for metric, score in values.items():
            value = float(score[i])
            metrics[metric] = value if math.isfinite(value) else None
            if metrics[metric] is None:
                reasons[metric] = _ABSENT if bool(absent[i]) else _DENOMINATOR_REASONS[metric]
        t, p, n = float(tp[i]), float(fp[i]), float(fn[i])
        predicted, reference = t + p, t + n
        rows.append(
            LabelScore(
                label=int(label),
                name=options.label_name(int(label)),
                requested=bool(requested[i]),
                metrics=metrics,
                reasons=reasons,
                tp=as_count(t),
                fp=as_count(p),
                fn=as_count(n),
                tn=as_count(voxels - t - p - n),
                predicted_voxels=as_count(predicted),
                reference_voxels=as_count(reference),
                predicted_ml=None if voxel_ml is None else predicted * voxel_ml,
                reference_ml=None if voxel_ml is None else reference * voxel_ml,
            )
        )
    return rows


@dataclass(frozen=True)
class CaseReport:
    """The scores of one case (a prediction against its reference).

    Attributes:
        case_id: the case name (file name without extension for files), or None.
        kind: ``"labels"`` (integer label maps, exact counts) or ``"probabilities"`` (soft
            counts).
        device: where the counting ran, e.g. ``"cpu"`` or ``"cuda:0"``.
        shape: the spatial shape.
        spacing: voxel spacing in mm, or None when unknown.
        labels: one ``LabelScore`` per reported label, sorted by id.
        options: the options used.
        notes: things a reader should know (labels predicted but not asked for...).
        seconds: wall time of the scoring (loading included for files).
    """

    case_id: str | None
    kind: str
    device: str
    shape: tuple[int, ...]
    spacing: tuple[float, ...] | None
    labels: tuple[LabelScore, ...]
    options: ScoringOptions
    notes: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def voxel_ml(self) -> float | None:
        """The volume of one voxel in mL (mm^3 / 1000), or None without spacing."""
        return None if self.spacing is None else float(np.prod(self.spacing)) / 1000.0

    def label(self, label: int) -> LabelScore:
        """The row of one label id; KeyError when it was not reported."""
        for row in self.labels:
            if row.label == label:
                return row
        raise KeyError(
            f"label {label} is not in this report (reported: {[r.label for r in self.labels]})."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no NaN, only str / int / float / bool / None / list / dict)."""
        voxel_ml = self.voxel_ml
        return {
            "schema_version": SCHEMA_VERSION,
            "case_id": self.case_id,
            "kind": self.kind,
            "device": self.device,
            "shape": list(self.shape),
            "voxels": int(np.prod(self.shape)),
            "spacing_mm": None if self.spacing is None else list(self.spacing),
            "voxel_volume_ml": voxel_ml,
            "options": {
                "include_background": self.options.include_background,
                "empty": self.options.empty,
                "metrics": list(self.options.metrics),
                "tversky_alpha": self.options.tversky_alpha,
                "tversky_beta": self.options.tversky_beta,
                "labels": None
                if self.options.labels is None
                else {str(k): v for k, v in self.options.labels.items()},
            },
            "labels": [row.to_dict() for row in self.labels],
            "notes": list(self.notes),
            "seconds": round(self.seconds, 6),
        }
