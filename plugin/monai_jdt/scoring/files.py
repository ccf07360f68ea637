"""Scoring of two volume files: NIfTI, or NRRD / MetaImage through SimpleITK (any pairing).

Integer label maps (the common case) take the streaming path: both files are inflated in
two threads, chunk by chunk, while the calling thread adds each pair of chunks to one
confusion matrix. Memory stays a few MB whatever the volume size and the time is that of the
slower inflate (``isal`` releases the GIL). Small files (at most ``INLINE_VOXELS`` voxels) are
inflated in the calling thread instead: for them the hand-off between threads costs more than
the parallel inflate saves. Everything else (float or rescaled data, probability maps with a
channel axis, a CUDA device asked for, a file that is not NIfTI) is loaded whole and scored by
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
from monai_jdt.scoring.boundary_report import needs_arrays, with_boundary
from monai_jdt.scoring.confusion import ConfusionAccumulator, ConfusionMatrix
from monai_jdt.scoring.errors import (
    AffineMismatchError,
    CorruptFileError,
    ScoringError,
    ShapeMismatchError,
)
from monai_jdt.scoring.nifti import NiftiInfo, file_ending, iter_voxel_chunks
from monai_jdt.scoring.options import DEFAULT_OPTIONS, ScoringOptions, device_type
from monai_jdt.scoring.report import CaseReport
from monai_jdt.scoring.sitk_formats import SITK_SUFFIXES, VolumeInfo, inspect_volume, load_volume

__all__ = [
    "INLINE_VOXELS",
    "NIFTI_SUFFIXES",
    "STREAM_CHUNK_VOXELS",
    "VOLUME_SUFFIXES",
    "case_id_from_path",
    "score_files",
    "scored_in_calling_thread",
    "stream_confusion",
    "streamable",
]

NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: every file ending scored (and paired by ``score-dir``)
VOLUME_SUFFIXES = NIFTI_SUFFIXES + SITK_SUFFIXES
STREAM_CHUNK_VOXELS = 1 << 20
#: label maps of at most this many voxels are inflated in the calling thread (measured in
#: benchmarks/README.md: below it two inflate threads are slower than one)
INLINE_VOXELS = 1 << 22
_QUEUE_DEPTH = 4
_END = object()


def case_id_from_path(path: str | os.PathLike[str]) -> str:
    """The case id of a file: its name without its ending (one of ``VOLUME_SUFFIXES``, in any
    case: ``CASE1.NII.GZ`` is case ``CASE1``)."""
    name = Path(path).name
    suffix = file_ending(name, VOLUME_SUFFIXES)
    return name if suffix is None else name[: -len(suffix)]


def _layout(info: VolumeInfo) -> tuple[tuple[int, ...], int | None]:
    """``(spatial shape, number of channels or None)``: axes after the third that are not 1
    are a channel axis (NIfTI stores vectors along axis 5, some tools along axis 4)."""
    extra = [s for s in info.shape[3:] if s != 1]
    if len(extra) > 1:
        raise ShapeMismatchError(
            f"{Path(info.path).name}: shape {info.shape} has more than one non-spatial axis; "
            "expected (X, Y, Z) labels or (X, Y, Z, C) probabilities."
        )
    return info.spatial_shape, (extra[0] if extra else None)


def _check_layouts(pred: VolumeInfo, ref: VolumeInfo, options: ScoringOptions) -> tuple[int, ...]:
    """The common spatial shape; a channel axis only on float (or rescaled) data that is not
    read as labels, and on the reference only as a soft reference of the prediction's shape."""
    (pred_spatial, pred_channels), (ref_spatial, ref_channels) = _layout(pred), _layout(ref)
    if pred_spatial != ref_spatial or ref_channels not in (None, pred_channels):
        raise ShapeMismatchError(
            f"shapes differ: prediction {Path(pred.path).name} has shape {pred.shape}, reference "
            f"{Path(ref.path).name} has shape {ref.shape}."
        )
    for info, channels in ((pred, pred_channels), (ref, ref_channels)):
        if channels is None:
            continue
        if info.dtype.kind in "biu" and not info.scaled:
            raise ShapeMismatchError(
                f"{Path(info.path).name}: integer data of shape {info.shape}, with an axis of "
                f"{channels} after the spatial ones; a label map is (X, Y, Z), and a channel "
                "axis (X, Y, Z, C) holds float probabilities."
            )
        if options.kind == "labels":
            raise ShapeMismatchError(
                f"{Path(info.path).name}: shape {info.shape} has a channel axis, but the volumes "
                "are to be read as label maps (kind labels), which are (X, Y, Z)."
            )
    return ref_spatial


def _check_affines(pred: VolumeInfo, ref: VolumeInfo, tolerance: float) -> None:
    for role, info in (("prediction", pred), ("reference", ref)):
        if info.affine_problem is not None:
            raise CorruptFileError(
                f"{role} {Path(info.path).name}: {info.affine_problem}, so the voxel grids "
                "cannot be compared; fix the header, or skip the affine check.",
                options=("ignore_affine",),
            )
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


def _inline_pairs(
    pred: NiftiInfo, ref: NiftiInfo, chunk_voxels: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunk pairs of ``_chunk_pairs``, inflated in the calling thread (``strict``: both
    streams are read to their end, so the second file's CRC is checked too)."""
    yield from zip(
        iter_voxel_chunks(pred, chunk_voxels), iter_voxel_chunks(ref, chunk_voxels), strict=True
    )


def stream_confusion(
    pred: NiftiInfo,
    ref: NiftiInfo,
    chunk_voxels: int = STREAM_CHUNK_VOXELS,
    *,
    threads: bool | None = None,
) -> ConfusionMatrix:
    """Confusion matrix of two inspected integer label files of the same voxel count, counted
    chunk by chunk (bounded memory), inflated in two threads (``threads=True``), in the calling
    thread (``False``), or, by default, in threads above ``INLINE_VOXELS`` voxels."""
    if threads is None:
        threads = pred.voxels > INLINE_VOXELS
    accumulator = ConfusionAccumulator()
    pairs = _chunk_pairs if threads else _inline_pairs
    for p, r in pairs(pred, ref, chunk_voxels):
        accumulator.update(p, r)
    return accumulator.result()


def streamable(pred: VolumeInfo, ref: VolumeInfo, options: ScoringOptions) -> bool:
    """Whether ``score_files`` counts these two inspected volumes chunk by chunk (the
    streaming path): integer NIfTI label maps without a channel axis, scored on the CPU
    without boundary metrics."""

    def integer_labels(info: VolumeInfo) -> bool:
        return (
            isinstance(info, NiftiInfo)
            and info.dtype.kind in "biu"
            and not info.scaled
            and _layout(info)[1] is None
        )

    return (
        options.kind != "probabilities"
        and integer_labels(pred)
        and integer_labels(ref)
        and device_type(options.device, prefer_cuda=False) == "cpu"
        and not needs_arrays(options)  # boundary metrics need the whole volumes
    )


def scored_in_calling_thread(pred: VolumeInfo, ref: VolumeInfo, options: ScoringOptions) -> bool:
    """Whether ``score_files`` scores these two inspected volumes without starting a thread,
    in a few MiB of memory and a time set by their voxel count: streamed (:func:`streamable`),
    one byte per voxel (counted in fixed histograms: wider ids take a sort, seconds for
    thousands of distinct ids) and of at most ``INLINE_VOXELS`` voxels each, about 10 ms on
    one core at that size. The inflate time is the file's own (see the service's upload
    bound)."""
    one_byte = pred.dtype.itemsize == 1 and ref.dtype.itemsize == 1
    return (
        one_byte
        and streamable(pred, ref, options)
        and max(pred.voxels, ref.voxels) <= INLINE_VOXELS
    )


def _inspect(path: str | os.PathLike[str], role: str, options: ScoringOptions) -> VolumeInfo:
    """``inspect_volume``, its errors led by ``role``."""
    try:
        return inspect_volume(path, options.max_voxels)
    except ScoringError as err:
        raise err.of_input(role) from None


def score_files(
    prediction: str | os.PathLike[str],
    reference: str | os.PathLike[str],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    case_id: str | None = None,
    inspected: tuple[VolumeInfo, VolumeInfo] | None = None,
) -> CaseReport:
    """Score a prediction file against a reference file: NIfTI (``.nii`` / ``.nii.gz``), or
    NRRD / MetaImage (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``, with the ``formats`` extra), in
    any pairing (both headers give RAS affines, see ``sitk_formats``).

    The prediction is a label map, a float map for one label, or probabilities with a channel
    axis after the spatial ones (``(X, Y, Z, C)`` or ``(X, Y, Z, 1, C)``); the reference is a
    label map (or probabilities of the prediction's shape). Volumes in mL use the reference's
    voxel spacing. ``case_id`` defaults to the prediction's file name without extension.
    ``inspected``: the two headers as ``sitk_formats.inspect_volume(path, options.max_voxels)``
    already read them (a caller that checked them first), so they are not read again.

    Raises:
        ScoringError: the subclasses of ``inspect_volume`` and ``score_arrays``, plus, from the
            headers before any data is inflated: ``ShapeMismatchError`` (spatial shapes
            differ, integer data with an axis after the spatial ones, a channel axis with
            ``kind="labels"``), ``AffineMismatchError`` and ``CorruptFileError`` (a header
            without a valid affine, unless ``ignore_affine``).
    """
    started = time.perf_counter()
    if inspected is None:
        inspected = (
            _inspect(prediction, "prediction", options),
            _inspect(reference, "reference", options),
        )
    pred, ref = inspected
    ref_spatial = _check_layouts(pred, ref, options)
    if not options.ignore_affine:
        _check_affines(pred, ref, options.affine_tol)
    case_id = case_id if case_id is not None else case_id_from_path(prediction)
    spacing = ref.spacing or pred.spacing
    if streamable(pred, ref, options):
        assert isinstance(pred, NiftiInfo) and isinstance(ref, NiftiInfo)
        matrix = stream_confusion(pred, ref)
        report = report_from_confusion(
            matrix,
            options,
            shape=ref_spatial,
            spacing=spacing,
            device="cpu",
            case_id=case_id,
            started=started,
        )
        # regions' counts come from the matrix (boundary metrics never stream: needs_arrays)
        report = with_boundary(report, None, None, matrix)
    else:
        # Fortran-ordered (X, Y, Z[, C]) data transposed is C-ordered (C, Z, Y, X):
        # channel-first and contiguous. Scores do not depend on the order of the spatial axes
        # as long as both volumes share it; the report gives the file's own shape and spacing.
        pred_data = _squeeze_extra(load_volume(pred)).T
        ref_data = _squeeze_extra(load_volume(ref)).T
        report = score_arrays(
            pred_data,
            ref_data,
            options,
            spacing=None if spacing is None else spacing[::-1],
            case_id=case_id,
        )
        report = dataclasses.replace(
            report, shape=ref_spatial, spacing=spacing, seconds=time.perf_counter() - started
        )
    notes = tuple(
        f"{role} {Path(info.path).name}: {info.spacing_note}"
        for role, info in (("prediction", pred), ("reference", ref))
        if info.spacing_note is not None
    )
    return dataclasses.replace(report, warnings=report.warnings + notes) if notes else report


def _squeeze_extra(data: np.ndarray) -> np.ndarray:
    """Drop the size-1 axes after the spatial ones (keeping Fortran order)."""
    spatial, extra = data.shape[:3], [s for s in data.shape[3:] if s != 1]
    return data.reshape(spatial + tuple(extra), order="F")
