"""Boundary metrics and regions in the case report and the dataset summary.

``with_boundary`` runs after the overlap counts of a label-map case: it adds the boundary
metrics asked for in ``options.metrics`` (``hd``, ``hd95``, ``assd``, ``masd``, ``nsd``,
``boundary_iou``) to each label row, and appends one row per region of ``options.regions``
(``region`` set, ``label`` null) whose counts come from the confusion matrix
(``ConfusionMatrix.union_counts``) and whose boundary metrics come from the region's union mask. The
conventions (``surface``, ``percentile``, ``percentile_mode``, ``nsd_tolerance``,
``boundary_width``, ``empty``) are the report's options.

In the summary, a distance left undefined because one mask is empty (reason ``"prediction
empty"`` / ``"reference empty"``) counts as ``options.missing_distance`` mm (default: the
case's volume diagonal), so that means do not drop the failures; the summary also counts the
missed (prediction empty) and spurious (reference empty) structures.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from monai_jdt.scoring.boundary import (
    BOUNDARY_METRICS,
    DISTANCE_METRICS,
    BoundaryOptions,
    BoundaryScore,
    boundary_scores,
    empty_scores,
    volume_diagonal_mm,
)
from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.volumes import is_tensor

if TYPE_CHECKING:
    from monai_jdt.scoring.confusion import ConfusionMatrix
    from monai_jdt.scoring.options import ScoringOptions
    from monai_jdt.scoring.report import CaseReport, LabelScore

__all__ = [
    "missing_counts",
    "needs_arrays",
    "penalized",
    "wants_boundary",
    "with_absent_boundary",
    "with_boundary",
]

_MISSING = ("prediction empty", "reference empty")


def wants_boundary(options: ScoringOptions) -> bool:
    """Whether any boundary metric is asked for."""
    return any(m in BOUNDARY_METRICS for m in options.metrics)


def needs_arrays(options: ScoringOptions) -> bool:
    """Whether scoring needs the whole volumes (boundary metrics), not only streamed counts."""
    return wants_boundary(options)


def check_kind(kind: str, options: ScoringOptions) -> None:
    """Boundary metrics are defined on label maps only."""
    if kind != "labels" and wants_boundary(options):
        asked = [m for m in options.metrics if m in BOUNDARY_METRICS]
        raise InvalidOptionError(
            f"metrics {asked} need label maps (masks), but the prediction is a probability "
            "map; threshold or argmax it first, or ask only for overlap metrics.",
            option="metrics",
        )


def _boundary_options(options: ScoringOptions) -> BoundaryOptions:
    return BoundaryOptions(
        metrics=tuple(m for m in options.metrics if m in BOUNDARY_METRICS),
        percentile=options.percentile,
        percentile_mode=options.percentile_mode,
        nsd_tolerance=options.nsd_tolerance,
        boundary_width=options.boundary_width,
        surface=options.surface,
        empty=options.empty,
    )


def _scores(
    prediction: object,
    reference: object,
    labels: list[int],
    options: ScoringOptions,
    spacing: tuple[float, ...] | None,
) -> list[BoundaryScore]:
    bopts = _boundary_options(options)
    regions = options.regions
    if type(prediction).__module__.startswith("torch"):
        from monai_jdt.scoring.boundary_torch import boundary_scores_torch

        return boundary_scores_torch(
            prediction,  # type: ignore[arg-type]
            reference,  # type: ignore[arg-type]
            labels,
            bopts,
            spacing=spacing,
            regions=regions,
        )
    return boundary_scores(
        np.asarray(prediction),
        np.asarray(reference),
        labels,
        bopts,
        spacing=spacing,
        regions=regions,
    )


def _merged(row: LabelScore, score: BoundaryScore | None, nsd: bool) -> LabelScore:
    if score is None:
        return row
    return dataclasses.replace(
        row,
        metrics={**row.metrics, **score.values},
        reasons={**row.reasons, **score.reasons},
        nsd_tolerance=score.nsd_tolerance if nsd else None,
    )


def _without_ignored(
    prediction: object, reference: object, ignore_label: int
) -> tuple[object, object]:
    """Both label maps with background (0) where the reference is ``ignore_label``: the
    unannotated voxels leave the boundary metrics as they leave the counts, as background in
    both volumes for every scored label, label 0 included (copies of both maps)."""
    if is_tensor(prediction) and is_tensor(reference):
        import torch

        ignored = reference == ignore_label
        return (
            torch.where(
                ignored, torch.zeros((), dtype=prediction.dtype, device=ignored.device), prediction
            ),
            torch.where(
                ignored, torch.zeros((), dtype=reference.dtype, device=ignored.device), reference
            ),
        )
    ignored = np.asarray(reference) == ignore_label
    return np.where(ignored, 0, np.asarray(prediction)), np.where(ignored, 0, np.asarray(reference))


def with_boundary(
    report: CaseReport,
    prediction: object,
    reference: object,
    matrix: ConfusionMatrix,
) -> CaseReport:
    """``report`` with the boundary metrics on its label rows and its region rows appended.

    ``prediction`` / ``reference`` are the label maps the matrix was counted from (numpy
    arrays, or torch tensors on the device the boundary work runs on). With
    ``options.ignore_label``, the voxels whose reference is that label leave the region
    counts and the boundary metrics (as background in both volumes), as they leave the label
    rows' counts. The report is returned as it is when neither boundary metrics nor regions
    are asked for.
    """
    from monai_jdt.scoring.report import label_scores

    options = report.options
    if not wants_boundary(options) and not options.regions:
        return report
    labels = [int(row.label) for row in report.labels if row.label is not None]
    scores: list[BoundaryScore | None] = [None] * (len(labels) + len(options.regions or {}))
    if wants_boundary(options):
        if options.ignore_label is not None:
            prediction, reference = _without_ignored(prediction, reference, options.ignore_label)
        scores = list(_scores(prediction, reference, labels, options, report.spacing))
    nsd = "nsd" in options.metrics
    rows = [_merged(row, score, nsd) for row, score in zip(report.labels, scores, strict=False)]
    regions = list((options.regions or {}).items())
    if regions:
        matrix = matrix.without_reference_label(options.ignore_label)  # as the label rows
        counts = np.array([matrix.union_counts(members)[:3] for _, members in regions])
        region_rows = label_scores(
            list(range(len(regions))),
            (
                counts[:, 0].astype(np.float64),
                counts[:, 1].astype(np.float64),
                counts[:, 2].astype(np.float64),
            ),
            matrix.voxels,
            [True] * len(regions),
            options.replace(labels=None, only_requested=False),  # no label names for regions
            report.voxel_ml,
            True,
        )
        for (name, members), row, score in zip(
            regions, region_rows, scores[len(labels) :], strict=True
        ):
            named = dataclasses.replace(row, label=None, name=None, region=name, members=members)
            rows.append(_merged(named, score, nsd))
    notes = report.notes
    if report.spacing is None and wants_boundary(options):
        notes += ("no voxel spacing given: boundary distances are in voxels (1 mm per voxel)",)
    return dataclasses.replace(report, labels=tuple(rows), notes=notes)


def with_absent_boundary(rows: Sequence[LabelScore], options: ScoringOptions) -> list[LabelScore]:
    """``rows`` of labels absent from both volumes (``tp = fp = fn = 0``, added to a case
    scored without them) with the boundary metrics such a structure gets (``empty_scores``:
    null under ``empty="nan"``, 0 mm and 1.0 under ``"one"``), as ``with_boundary`` gives
    them to the rows it scores."""
    if not wants_boundary(options):
        return list(rows)
    bopts = _boundary_options(options)
    nsd = "nsd" in options.metrics
    scored = []
    for row in rows:
        label = int(row.label or 0)
        absent = empty_scores(label, True, True, bopts, bopts.tolerance(label))
        scored.append(_merged(row, absent, nsd))
    return scored


def penalized(row: LabelScore, metric: str, report: CaseReport) -> float | None:
    """A row's value of ``metric`` for the summary: an undefined distance of a structure
    present in only one volume counts as ``missing_distance`` (default: the volume diagonal)."""
    value = row.metrics.get(metric)
    if value is None and metric in DISTANCE_METRICS and row.reasons.get(metric) in _MISSING:
        penalty = report.options.missing_distance
        return volume_diagonal_mm(report.shape, report.spacing) if penalty is None else penalty
    return value


def missing_counts(rows: Sequence[LabelScore]) -> dict[str, Any]:
    """How many of a structure's cases were missed (prediction empty) or spurious (reference
    empty), judged from the reasons of its boundary metrics."""
    missed = spurious = 0
    for row in rows:
        reasons = {row.reasons.get(m) for m in DISTANCE_METRICS}
        missed += "prediction empty" in reasons
        spurious += "reference empty" in reasons
    return {"missed": missed, "spurious": spurious}
