"""Scoring of two NIfTI files.

Integer label maps (the common case) take the streaming path: both files are inflated in
two threads, chunk by chunk, while the calling thread adds each pair of chunks to one
confusion matrix. Memory stays a few MB whatever the volume size and the time is that of the
slower inflate (``isal`` releases the GIL). Everything else (float or rescaled data,
probability maps with a channel axis, a CUDA device asked for) is loaded whole and scored by
``score_arrays``.
"""

from __future__ import annotations

import dataclasses
import os
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from monai_jdt.scoring.arrays import report_from_confusion, score_arrays
from monai_jdt.scoring.confusion import ConfusionAccumulator, ConfusionMatrix
from monai_jdt.scoring.errors import AffineMismatchError, ShapeMismatchError
from monai_jdt.scoring.nifti import NiftiInfo, inspect_nifti, iter_voxel_chunks, load_nifti
from monai_jdt.scoring.options import DEFAULT_OPTIONS, ScoringOptions, device_type
from monai_jdt.scoring.report import CaseReport

__all__ = [
    "NIFTI_SUFFIXES",
    "STREAM_CHUNK_VOXELS",
    "case_id_from_path",
    "score_files",
    "stream_confusion",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
STREAM_CHUNK_VOXELS = 1 << 20
_QUEUE_DEPTH = 4
_END = object()


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """The case id of a file: its name without ``.nii.gz`` / ``.nii``."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _layout(info: NiftiInfo) -> tuple[tuple[int, ...], int | None]:
    """``(spatial shape, number of channels or None)``: axes after the third that are not 1
    are a channel axis (NIfTI stores vectors along axis 5, some tools along axis 4)."""
    extra = [s for s in info.shape[3:] if s != 1]
    if len(extra) > 1:
        raise ShapeMismatchError(
            f"{Path(info.path).name}: shape {info.shape} has more than one non-spatial axis; "
            "expected (X, Y, Z) labels or (X, Y, Z, C) probabilities."
        )
    return info.spatial_shape, (extra[0] if extra else None)


def _check_affines(pred: NiftiInfo, ref: NiftiInfo, tolerance: float) -> None:
    difference = float(np.abs(pred.affine - ref.affine).max())
    if not difference <= tolerance:
        raise AffineMismatchError(
            f"the affines of {Path(pred.path).name} and {Path(ref.path).name} differ by up to "
            f"{difference:.4g} (tolerance {tolerance:g}): the volumes are not on the same grid. "
            "Resample the prediction onto the reference, or loosen or skip the affine check."
        )


def _put(q: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=0.05)
            return True
        except queue.Full:
            continue
    return False


def _produce(info: NiftiInfo, q: queue.Queue[object], stop: threading.Event, chunk: int) -> None:
    try:
        for data in iter_voxel_chunks(info, chunk):
            if not _put(q, data, stop):
                return
        _put(q, _END, stop)
    except BaseException as err:  # handed to the consumer, which raises it
        _put(q, err, stop)


def _take(q: queue.Queue[object]) -> object:
    item = q.get()
    if isinstance(item, BaseException):
        raise item
    return item


def _chunk_pairs(
    pred: NiftiInfo, ref: NiftiInfo, chunk_voxels: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    queues: list[queue.Queue[object]] = [queue.Queue(_QUEUE_DEPTH), queue.Queue(_QUEUE_DEPTH)]
    stop = threading.Event()
    threads = [
        threading.Thread(target=_produce, args=(info, q, stop, chunk_voxels), daemon=True)
        for info, q in zip((pred, ref), queues, strict=True)
    ]
    for thread in threads:
        thread.start()
    try:
        while True:
            p, r = _take(queues[0]), _take(queues[1])
            if p is _END or r is _END:
                return
            assert isinstance(p, np.ndarray) and isinstance(r, np.ndarray)
            yield p, r
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def stream_confusion(
    pred: NiftiInfo, ref: NiftiInfo, chunk_voxels: int = STREAM_CHUNK_VOXELS
) -> ConfusionMatrix:
    """Confusion matrix of two inspected integer label files of the same voxel count, inflated
    in two threads and counted chunk by chunk (bounded memory)."""
    accumulator = ConfusionAccumulator()
    for p, r in _chunk_pairs(pred, ref, chunk_voxels):
        accumulator.update(p, r)
    return accumulator.result()


def _streamable(pred: NiftiInfo, ref: NiftiInfo, options: ScoringOptions) -> bool:
    def integer_labels(info: NiftiInfo) -> bool:
        return info.dtype.kind in "biu" and not info.scaled and _layout(info)[1] is None

    return (
        options.kind != "probabilities"
        and integer_labels(pred)
        and integer_labels(ref)
        and device_type(options.device, prefer_cuda=False) == "cpu"
    )


def score_files(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    case_id: str | None = None,
) -> CaseReport:
    """Score a prediction NIfTI file against a reference NIfTI file (``.nii`` / ``.nii.gz``).

    The prediction is a label map, a float map for one label, or probabilities with a channel
    axis after the spatial ones (``(X, Y, Z, C)`` or ``(X, Y, Z, 1, C)``); the reference is a
    label map (or probabilities of the prediction's shape). Volumes in mL use the reference's
    voxel spacing. ``case_id`` defaults to the prediction's file name without extension.

    Raises the ``ScoringError`` subclasses of ``inspect_nifti`` and ``score_arrays``, plus
    ``ShapeMismatchError`` and ``AffineMismatchError`` from the headers, before any data is
    inflated.
    """
    started = time.perf_counter()
    pred = inspect_nifti(prediction, options.max_voxels)
    ref = inspect_nifti(reference, options.max_voxels)
    (pred_spatial, _), (ref_spatial, _) = _layout(pred), _layout(ref)
    if pred_spatial != ref_spatial:
        raise ShapeMismatchError(
            f"shapes differ: prediction {Path(pred.path).name} has shape {pred.shape}, reference "
            f"{Path(ref.path).name} has shape {ref.shape}."
        )
    if not options.ignore_affine:
        _check_affines(pred, ref, options.affine_tol)
    case_id = case_id if case_id is not None else case_id_from_path(prediction)
    spacing = ref.spacing or pred.spacing
    if _streamable(pred, ref, options):
        matrix = stream_confusion(pred, ref)
        return report_from_confusion(
            matrix,
            options,
            shape=ref_spatial,
            spacing=spacing,
            device="cpu",
            case_id=case_id,
            started=started,
        )
    # Fortran-ordered (X, Y, Z[, C]) data transposed is C-ordered (C, Z, Y, X): channel-first
    # and contiguous. Scores do not depend on the order of the spatial axes as long as both
    # volumes share it; the report gives the file's own shape and spacing.
    pred_data = _squeeze_extra(load_nifti(pred)).T
    ref_data = _squeeze_extra(load_nifti(ref)).T
    report = score_arrays(
        pred_data,
        ref_data,
        options,
        spacing=None if spacing is None else spacing[::-1],
        case_id=case_id,
    )
    return dataclasses.replace(
        report, shape=ref_spatial, spacing=spacing, seconds=time.perf_counter() - started
    )


def _squeeze_extra(data: np.ndarray) -> np.ndarray:
    """Drop the size-1 axes after the spatial ones (keeping Fortran order)."""
    spatial, extra = data.shape[:3], [s for s in data.shape[3:] if s != 1]
    return data.reshape(spatial + tuple(extra), order="F")
