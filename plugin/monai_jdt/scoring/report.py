"""The per-case report: per-label counts, volumes and ratios, as a JSON-safe dict.

Every ratio is a Tversky index of the label's counts (``monai_jdt.aggregation.tversky_index``)::

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
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, create_model

from monai_jdt.aggregation import SoftCounts, tversky_index
from monai_jdt.scoring.errors import TooManyLabelsError
from monai_jdt.scoring.options import LABEL_WARNING_THRESHOLD, METRICS, ScoringOptions, exposure

__all__ = [
    "SCHEMA_VERSION",
    "CaseReport",
    "DatasetReport",
    "FailureRow",
    "LabelRow",
    "LabelScore",
    "ReportOptions",
    "ScoreReport",
    "UnpairedFiles",
    "label_scores",
    "label_warnings",
    "metric_weights",
    "report_json_schema",
    "voxel_ml",
]

#: version of the JSON layout of ``CaseReport.to_dict`` and of the dataset summary: the minor
#: number grows when fields are added, the major one when a field changes meaning or disappears
SCHEMA_VERSION = "1.2"

_ABSENT = "label absent from both prediction and reference"
_DENOMINATOR_REASONS = {
    "precision": "no voxel predicted as this label (tp + fp = 0)",
    "recall": "label absent from the reference (tp + fn = 0)",
    "tversky": "tp + alpha*fp + beta*fn = 0",
}

# --------------------------------------------------------------------------- the JSON layout
# The report is defined once, by these models: ``CaseReport.to_dict`` fills them, the service
# documents its 200 response with ``ScoreReport``, and docs/report.schema.json is
# ``report_json_schema()``. Extra fields are forbidden so nothing leaves unnoticed.

_STRICT = ConfigDict(extra="forbid")

#: the report's ``options``: the fields of ``ScoringOptions`` marked ``reported`` (all of them
#: always present)
ReportOptions: type[BaseModel] = create_model(  # type: ignore[call-overload]
    "ReportOptions",
    __config__=_STRICT,
    __doc__="The options that shape the scores (``ScoringOptions`` fields marked reported).",
    **{
        name: (info.annotation, Field(description=info.description))
        for name, info in ScoringOptions.model_fields.items()
        if exposure(info).reported
    },
)


class LabelRow(BaseModel):
    """One label of one case. Only the metrics asked for are present; ``null`` = undefined."""

    model_config = _STRICT

    label: int | None = Field(description="The label id (null for a region row).")
    name: str | None = Field(description="Its name from labels, or null.")
    requested: bool = Field(description="False for a label predicted but not asked for.")
    dice: float | None = Field(default=None, description="2 tp / (2 tp + fp + fn).")
    jaccard: float | None = Field(default=None, description="tp / (tp + fp + fn), the IoU.")
    precision: float | None = Field(default=None, description="tp / (tp + fp).")
    recall: float | None = Field(default=None, description="tp / (tp + fn), the sensitivity.")
    tversky: float | None = Field(default=None, description="tp / (tp + alpha fp + beta fn).")
    tp: int | float = Field(description="True positives in voxels (soft counts for probabilities).")
    fp: int | float = Field(description="False positives.")
    fn: int | float = Field(description="False negatives.")
    tn: int | float = Field(description="True negatives: voxels - tp - fp - fn.")
    predicted_voxels: int | float = Field(description="tp + fp.")
    reference_voxels: int | float = Field(description="tp + fn.")
    predicted_ml: float | None = Field(
        description="tp + fp in mL (null without spacing, and for 2-D images)."
    )
    reference_ml: float | None = Field(
        description="tp + fn in mL (null without spacing, and for 2-D images)."
    )
    reasons: dict[str, str] = Field(description="Why each null metric is undefined.")
    hd: float | None = Field(default=None, description="Hausdorff distance in mm (max).")
    hd95: float | None = Field(
        default=None, description="The options.percentile-th percentile Hausdorff distance (mm)."
    )
    assd: float | None = Field(
        default=None, description="Average symmetric surface distance (mm), over both surfaces."
    )
    masd: float | None = Field(
        default=None, description="Mean of the two directed average surface distances (mm)."
    )
    nsd: float | None = Field(
        default=None, description="Normalized surface distance (surface Dice) at nsd_tolerance."
    )
    boundary_iou: float | None = Field(
        default=None, description="Boundary IoU (Cheng et al. 2021), band boundary_width mm."
    )
    nsd_tolerance: float | None = Field(
        default=None, description="The NSD tolerance used for this row (mm)."
    )
    region: str | None = Field(
        default=None, description="The region's name, for a region row (a union of labels)."
    )
    members: list[int] | None = Field(default=None, description="A region's label ids.")


class ScoreReport(BaseModel):
    """The report of one case: ``CaseReport.to_dict()``, ``monai-jdt score --json`` and the
    200 response of ``POST /v1/scores``."""

    model_config = _STRICT

    schema_version: str = Field(
        description="Version of this layout.", json_schema_extra={"const": SCHEMA_VERSION}
    )
    case_id: str | None = Field(description="File name without extension, the id given, or null.")
    kind: Literal["labels", "probabilities"] = Field(
        description="labels (exact integer counts) or probabilities (soft counts)."
    )
    device: str = Field(description="Where the counting ran, e.g. cpu or cuda:0.")
    shape: list[int] = Field(description="Spatial shape, as in the file.")
    voxels: int = Field(description="Number of spatial voxels N.")
    spacing_mm: list[float] | None = Field(description="Voxel size along each spatial axis.")
    voxel_volume_ml: float | None = Field(description="One voxel in mL (mm^3 / 1000).")
    options: ReportOptions  # type: ignore[valid-type]
    labels: list[LabelRow] = Field(description="One row per reported label, sorted by id.")
    notes: list[str] = Field(description="Things a reader should know.")
    warnings: list[str] = Field(
        description="Signs that an input is not what it should be (e.g. an intensity image "
        "passed as a label map); also printed on stderr by the command line."
    )
    seconds: float = Field(description="Wall time of the scoring, loading included.")


class FailureRow(BaseModel):
    """A case of a dataset that could not be scored."""

    model_config = _STRICT

    case_id: str
    code: str = Field(description="The error's stable code, e.g. not_nifti.")
    message: str = Field(description="What was wrong, for a person.")


class UnpairedFiles(BaseModel):
    """Files of a dataset without a partner of the same case id."""

    model_config = _STRICT

    predictions: list[str]
    references: list[str]


class DatasetReport(BaseModel):
    """The report of a dataset: ``DirectoryResult.to_dict()``, ``monai-jdt score-dir -o``."""

    model_config = _STRICT

    schema_version: str = Field(
        description="Version of this layout.", json_schema_extra={"const": SCHEMA_VERSION}
    )
    summary: dict[str, Any] = Field(description="The dataset summary (see docs/scoring.md).")
    cases: list[ScoreReport] = Field(description="Every scored case, sorted by case id.")
    failures: list[FailureRow] = Field(description="Every case that failed, sorted by case id.")
    unpaired: UnpairedFiles


def report_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a case report, docs/report.schema.json. Written by::

        python -c "import json; from monai_jdt.scoring.report import report_json_schema as s; \\
            print(json.dumps(s(), indent=2))" > docs/report.schema.json
    """
    schema = ScoreReport.model_json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://monai-jdt.org/schemas/report-{SCHEMA_VERSION}.schema.json",
        **schema,
    }


# --------------------------------------------------------------------------- scores


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

    label: int | None  # None for a region row
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
    #: set for a region row: its name and label ids
    region: str | None = None
    members: tuple[int, ...] | None = None
    #: the NSD tolerance (mm) of the row, when nsd was asked for
    nsd_tolerance: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON row of this label (``LabelRow``; see docs/scoring.md for the fields)."""
        return self.row().model_dump(mode="json", exclude_unset=True)

    def row(self) -> LabelRow:
        """This label as the ``LabelRow`` of the JSON layout."""
        counts = {
            key: _number(getattr(self, key))
            for key in ("tp", "fp", "fn", "tn", "predicted_voxels", "reference_voxels")
        }
        return LabelRow.model_validate(
            {
                "label": self.label,
                "name": self.name,
                "requested": self.requested,
                **self.metrics,
                **counts,
                "predicted_ml": self.predicted_ml,
                "reference_ml": self.reference_ml,
                "reasons": dict(self.reasons),
                **({} if self.nsd_tolerance is None else {"nsd_tolerance": self.nsd_tolerance}),
                **(
                    {}
                    if self.region is None
                    else {"region": self.region, "members": list(self.members or ())}
                ),
            }
        )


#: a prediction with more than this many times the reference's labels (and more than
#: ``_IMAGE_MIN_LABELS``) looks like an intensity image, not a label map
_IMAGE_RATIO, _IMAGE_MIN_LABELS = 10, 20


def voxel_ml(spacing: Sequence[float] | None) -> float | None:
    """The volume of one voxel in mL, ``prod(spacing) / 1000`` (spacing in mm); None without
    spacing, and for images of fewer than three spatial axes: a pixel has an area, not a
    volume."""
    if spacing is None or len(spacing) < 3:
        return None
    return float(np.prod(spacing)) / 1000.0


def label_warnings(predicted: set[int], reference: set[int], options: ScoringOptions) -> list[str]:
    """Warnings about label maps that may not be label maps (non-zero label ids counted).

    A volume with more than ``LABEL_WARNING_THRESHOLD`` distinct labels, or a prediction with
    more than ten times the reference's labels (and more than 20), gets a warning: an intensity
    image or an instance map passed as a label map scores as hundreds of tiny "labels".

    Raises:
        TooManyLabelsError: a volume has more distinct labels than ``options.max_labels``.
    """
    counts = {
        "prediction": len(predicted - {0}),
        "reference": len(reference - {0}),
    }
    for role, n in counts.items():
        if options.max_labels is not None and n > options.max_labels:
            raise TooManyLabelsError(
                f"the {role} has {n} distinct labels, above the limit max_labels="
                f"{options.max_labels}: is it an intensity image or an instance map?"
            )
    warnings = [
        f"the {role} has {n} distinct labels (more than {LABEL_WARNING_THRESHOLD}): is it an "
        "intensity image or an instance map rather than a label map?"
        for role, n in counts.items()
        if n > LABEL_WARNING_THRESHOLD
    ]
    pred, ref = counts["prediction"], counts["reference"]
    if pred > _IMAGE_MIN_LABELS and pred > _IMAGE_RATIO * max(ref, 1) and not warnings:
        warnings.append(
            f"the prediction has {pred} distinct labels against {ref} in the reference: it "
            "looks like an image, not a label map"
        )
    return warnings


def label_scores(
    labels: Sequence[int],
    counts: SoftCounts | tuple[Any, Any, Any],
    voxels: int,
    requested: Sequence[bool],
    options: ScoringOptions,
    voxel_ml: float | None,
    integer_counts: bool,
) -> list[LabelScore]:
    """One ``LabelScore`` per label from ``[L]`` counts ``(tp, fp, fn)`` (numpy arrays or CPU
    tensors, read as float64).

    ``tn = voxels - tp - fp - fn``; predicted volume ``tp + fp``, reference volume ``tp + fn``.
    """
    tp, fp, fn = (np.asarray(c, dtype=np.float64) for c in counts)
    absent = (tp + fp + fn) == 0
    values: dict[str, np.ndarray] = {}
    for metric in (m for m in options.metrics if m in METRICS):  # the overlap ratios
        alpha, beta = metric_weights(metric, options)
        index = tversky_index(SoftCounts(tp, fp, fn), alpha, beta)
        values[metric] = np.where(absent, 1.0, index) if options.empty == "one" else index
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
        warnings: signs that an input is not what it should be (see ``label_warnings``).
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
    warnings: tuple[str, ...] = ()

    @property
    def voxel_ml(self) -> float | None:
        """The volume of one voxel in mL (see :func:`voxel_ml`)."""
        return voxel_ml(self.spacing)

    def label(self, label: int) -> LabelScore:
        """The row of one label id; KeyError when it was not reported."""
        for row in self.labels:
            if row.label == label:
                return row
        raise KeyError(
            f"label {label} is not in this report (reported: {[r.label for r in self.labels]})."
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe dict (no NaN, only str / int / float / bool / None / list / dict), laid out
        by ``ScoreReport``."""
        report = ScoreReport.model_validate(
            {
                "schema_version": SCHEMA_VERSION,
                "case_id": self.case_id,
                "kind": self.kind,
                "device": self.device,
                "shape": list(self.shape),
                "voxels": int(np.prod(self.shape)),
                "spacing_mm": None if self.spacing is None else list(self.spacing),
                "voxel_volume_ml": self.voxel_ml,
                "options": self.options.reported(),
                "labels": [row.row() for row in self.labels],
                "notes": list(self.notes),
                "warnings": list(self.warnings),
                "seconds": round(self.seconds, 6),
            }
        )
        return report.model_dump(mode="json", exclude_unset=True)
