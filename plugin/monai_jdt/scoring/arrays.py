"""Scoring of volumes already in memory (numpy arrays or torch tensors).

torch is imported only where tensors or probability maps are scored: label maps on the CPU
are counted with numpy alone.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from monai_jdt.scoring import boundary
from monai_jdt.scoring.boundary_report import check_kind, with_boundary
from monai_jdt.scoring.confusion import ConfusionMatrix, confusion_matrix, confusion_matrix_torch
from monai_jdt.scoring.errors import (
    InvalidOptionError,
    NegativeLabelError,
    ShapeMismatchError,
    VolumeTooLargeError,
)
from monai_jdt.scoring.options import DEFAULT_OPTIONS, ScoringOptions, resolve_device
from monai_jdt.scoring.report import CaseReport, label_scores, label_warnings, voxel_ml
from monai_jdt.scoring.volumes import (
    as_volume,
    check_probabilities,
    decide_kind,
    float_stats,
    is_channel_first,
    is_floating,
    is_tensor,
    label_map,
    torch_compatible,
)

if TYPE_CHECKING:
    import torch


__all__ = ["check_spacing", "report_from_confusion", "score_arrays", "select_labels"]


def select_labels(
    present: Iterable[int], predicted: Iterable[int], options: ScoringOptions
) -> tuple[list[int], list[bool], list[str]]:
    """Which labels a report lists: ``(labels, requested flags, notes)``.

    Without ``options.labels``: every label in ``present`` (either volume). With it: the
    asked labels, plus the labels in ``predicted`` that were not asked for (flagged
    ``requested=False`` and named in a note) unless ``only_requested``
    (``ScoringOptions.requested_labels``). Label 0 only with ``include_background`` (then it
    is asked for) or when asked for explicitly; never ``ignore_label``.
    """

    def keep(label: int) -> bool:
        return (options.include_background or label != 0) and label != options.ignore_label

    asked = options.requested_labels
    if asked is None:
        labels = sorted(label for label in set(present) if keep(label))
        return labels, [True] * len(labels), []
    extra = [] if options.only_requested else sorted(set(predicted) - asked)
    extra = [label for label in extra if keep(label)]
    labels = sorted(asked | set(extra))
    notes = []
    if extra:
        notes.append(
            f"labels {extra} are in the prediction but were not asked for; they are reported "
            "with requested=false"
        )
    return labels, [label in asked for label in labels], notes


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...] | None:
    """Validate a voxel spacing (mm): ``ndim`` positive finite numbers, or None."""
    return None if spacing is None else boundary.check_spacing(spacing, ndim)


def _check_voxels(shape: Sequence[int], options: ScoringOptions) -> None:
    voxels = math.prod(shape)
    if options.max_voxels is not None and voxels > options.max_voxels:
        raise VolumeTooLargeError(
            f"the volume has {voxels} voxels (shape {tuple(shape)}), above the limit of "
            f"{options.max_voxels}."
        )


def _confusion_counts(
    matrix: ConfusionMatrix, labels: Sequence[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(tp, fp, fn)``, each ``[L]`` float64, of ``labels``, in the form ``label_scores``
    takes."""
    counts = np.array([matrix.counts(label)[:3] for label in labels], np.float64).reshape(-1, 3)
    return counts[:, 0], counts[:, 1], counts[:, 2]


def report_from_confusion(
    matrix: ConfusionMatrix,
    options: ScoringOptions,
    *,
    shape: tuple[int, ...],
    spacing: tuple[float, ...] | None,
    device: str,
    case_id: str | None,
    started: float,
    notes: Sequence[str] = (),
) -> CaseReport:
    """The report of a label-map case from its confusion matrix, without the voxels whose
    reference is ``options.ignore_label``."""
    matrix = matrix.without_reference_label(options.ignore_label)
    predicted = matrix.present_in_prediction()
    warnings = label_warnings(predicted, matrix.present_in_reference(), options)
    labels, requested, label_notes = select_labels(
        (int(x) for x in matrix.labels), predicted, options
    )
    counts = _confusion_counts(matrix, labels)
    rows = label_scores(labels, counts, matrix.voxels, requested, options, voxel_ml(spacing), True)
    return CaseReport(
        case_id=case_id,
        kind="labels",
        device=device,
        shape=shape,
        spacing=spacing,
        labels=tuple(rows),
        options=options,
        notes=tuple(notes) + tuple(label_notes),
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
    )


def score_arrays(
    prediction: object,
    reference: object,
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    spacing: Sequence[float] | None = None,
    case_id: str | None = None,
) -> CaseReport:
    """Score a prediction against a reference held in memory.

    Args:
        prediction: an integer label map ``[*spatial]``; or probabilities in [0, 1], either
            channel-first ``[C, *spatial]`` (channel ``c`` is label ``c``) or one float map
            ``[*spatial]`` for a single label (label 1, or the one label of
            ``options.labels``). numpy array or torch tensor (CUDA tensors are scored there).
        reference: an integer label map ``[*spatial]``, or probabilities of the prediction's
            shape (soft reference; a 4-D pair is channel-first ``[C, X, Y, Z]``, a pair of
            lower dimension one label's maps).
        options: see ``ScoringOptions``.
        spacing: voxel spacing in mm per spatial axis, for volumes in mL.
        case_id: a name carried into the report.

    Raises:
        ScoringError subclasses for bad input (shapes, non-integer / negative labels, NaN,
        probabilities outside [0, 1], too many voxels); ``torch.OutOfMemoryError`` when the
        chosen CUDA device runs out of memory.
    """
    started = time.perf_counter()
    pred = as_volume(prediction, "prediction")
    ref = as_volume(reference, "reference")
    kind = decide_kind(pred, ref, options.kind)
    # (an integer reference is a label map, always)
    channel_first = kind == "probabilities" and is_channel_first(pred, ref)
    spatial = tuple(pred.shape[1:] if channel_first else pred.shape)
    ref_spatial = tuple(ref.shape[1:] if channel_first and ref.ndim == pred.ndim else ref.shape)
    if spatial != ref_spatial or (ref.ndim == pred.ndim and tuple(ref.shape) != tuple(pred.shape)):
        raise ShapeMismatchError(
            f"prediction and reference shapes differ: prediction {tuple(pred.shape)}, reference "
            f"{tuple(ref.shape)}"
            + (" (probabilities are channel-first [C, *spatial])" if channel_first else "")
            + "."
        )
    _check_voxels(spatial, options)
    spacing_mm = check_spacing(spacing, len(spatial))
    if kind == "labels":
        p, r = label_map(pred, "prediction"), label_map(ref, "reference")
        on_cuda = is_tensor(p) or is_tensor(r)
        device = resolve_device(options.device, prefer_cuda=on_cuda)
        if device.type == "cuda":
            p, r = _on_device(p, device), _on_device(r, device)
            matrix = confusion_matrix_torch(p, r)
        else:
            p, r = _cpu(p), _cpu(r)
            matrix = confusion_matrix(p, r)
        report = report_from_confusion(
            matrix,
            options,
            shape=spatial,
            spacing=spacing_mm,
            device=str(device),
            case_id=case_id,
            started=started,
        )
        # boundary metrics and regions (only when asked for): monai_jdt.scoring.boundary_report
        report = with_boundary(report, p, r, matrix)
        return dataclasses.replace(report, seconds=time.perf_counter() - started)
    check_kind(kind, options)
    return _score_probabilities(
        pred, ref, channel_first, options, spatial, spacing_mm, case_id, started
    )


def _on_device(volume: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    import torch

    if isinstance(volume, np.ndarray):
        volume = torch.from_numpy(torch_compatible(np.ascontiguousarray(volume)))
    return volume.to(device)


def _cpu(volume: np.ndarray | torch.Tensor) -> np.ndarray:
    return volume.cpu().numpy() if is_tensor(volume) else volume


def _score_probabilities(
    pred: np.ndarray | torch.Tensor,
    ref: np.ndarray | torch.Tensor,
    channel_first: bool,
    options: ScoringOptions,
    spatial: tuple[int, ...],
    spacing: tuple[float, ...] | None,
    case_id: str | None,
    started: float,
) -> CaseReport:
    if options.ignore_label is not None:
        raise InvalidOptionError(
            "ignore_label applies to label maps; this prediction is a probability map.",
            option="ignore_label",
        )
    if options.regions:
        raise InvalidOptionError(
            "regions apply to label maps; this prediction is a probability map (score the "
            "region's union as a channel of its own).",
            option="regions",
        )

    from monai_jdt.aggregation import SoftCounts
    from monai_jdt.scoring.soft import soft_case_counts

    check_probabilities(pred, "prediction")
    # one pass over a float reference decides and checks it: of a single map it is a label
    # map when it holds whole numbers (so a 0/1 float reference has no label 2)
    stats = float_stats(ref, "reference") if is_floating(ref) else None
    soft_reference = ref.ndim == pred.ndim and stats is not None and (channel_first or not stats[2])
    if soft_reference:
        check_probabilities(ref, "reference", stats)
        reference = ref
    else:
        reference = label_map(ref, "reference", stats)  # refuses negative floats
        counted = stats is None and 0 not in tuple(reference.shape)
        low = int(reference.min()) if counted else 0
        if low < 0:  # integer ids, as the label-map path refuses them while counting
            raise NegativeLabelError(
                f"the reference label volume holds negative values (minimum {low}); label ids "
                "must be >= 0."
            )
    warnings: list[str] = []
    if not channel_first and pred.ndim == 4 and not soft_reference:
        warnings.append(
            f"the 4-D float prediction {tuple(pred.shape)} is scored as one label's map over "
            "four axes against an integer reference of its shape; for channel-first "
            "probabilities [C, X, Y, Z] give the reference as a label map [X, Y, Z] (argmax) "
            "or as floats"
        )
    if not channel_first:
        pred = pred[None]
        reference = reference[None] if soft_reference else reference
        asked = list(options.labels or {1: None})
        if len(asked) != 1:
            raise InvalidOptionError(
                f"a single probability map scores one label, but labels {asked} were asked for; "
                "give a map with a channel axis for several labels (an array: channel-first "
                "[C, *spatial]; a NIfTI file: (X, Y, Z, C))."
            )
        labels, requested, channels = asked, [True], [0]
        notes: list[str] = (
            []
            if options.labels
            else ["a single probability map scores label 1; give labels to score another"]
        )
    else:
        n_channels = pred.shape[0]
        too_high = sorted(k for k in (options.labels or {}) if k >= n_channels)
        if too_high:
            raise InvalidOptionError(
                f"labels {too_high} were asked for, but the prediction has {n_channels} channels "
                f"(labels 0..{n_channels - 1})."
            )
        labels, requested, notes = select_labels(range(n_channels), range(n_channels), options)
        channels = labels
    device = resolve_device(options.device, prefer_cuda=True)
    counts = soft_case_counts(pred, reference, labels, channels, device)
    rows = label_scores(
        labels,
        SoftCounts(counts.tp, counts.fp, counts.fn),
        counts.voxels,
        requested,
        options,
        voxel_ml(spacing),
        False,
    )
    return CaseReport(
        case_id=case_id,
        kind="probabilities",
        device=str(device),
        shape=spatial,
        spacing=spacing,
        labels=tuple(rows),
        options=options,
        notes=tuple(notes),
        seconds=time.perf_counter() - started,
        warnings=tuple(warnings),
    )
