"""The confusion matrix of two integer label volumes, in one bounded-memory pass.

For a prediction ``P`` and a reference ``R`` (same shape, non-negative integer labels) the
confusion matrix ``M[i, j]`` is the number of voxels with ``P == labels[i]`` and
``R == labels[j]``. Every per-label count of the report follows from it, whatever the number
of labels ``L``:

* ``tp_k = M[k, k]``, ``predicted_k = sum_j M[k, j]``, ``reference_k = sum_i M[i, k]``,
* ``fp_k = predicted_k - tp_k``, ``fn_k = reference_k - tp_k``,
* ``tn_k = N - tp_k - fp_k - fn_k`` with ``N`` the number of voxels.

It is computed as a histogram of a joint code of ``P`` and ``R`` over chunks of a few hundred
thousand voxels, so memory stays bounded for 512^3 volumes: the cost is O(N) and does not grow
with ``L``. Two paths give identical integer counts:

* numpy on the CPU (``ConfusionAccumulator``): labels < 16 give one-byte codes ``P*16 + R``,
  and pairs of neighbouring codes are histogrammed as one 16-bit value, which halves the work
  of ``np.bincount`` (whose time is its per-element loop), and blocks where both volumes are
  background skip it altogether; the 256 x 256 pair histogram is folded back to single codes
  once, at the end. Labels < 256 give 16-bit codes ``P*256 + R``. Larger ids (the rare
  path: instance maps, atlases of thousands of structures) are counted as *cells*, the
  distinct ``(P, R)`` pairs of a chunk with their counts (sort-based), summed across chunks:
  nothing of size ``L x L`` is allocated, so a map of 4000 instances costs the cells it has
  (a few per label), not 4000^2 counts per chunk.
* torch on any device (``confusion_matrix_torch``), used for CUDA tensors (torch is imported
  there only, so counting label maps on the CPU never loads it).

Label ids are below 2**63 (``MAX_LABEL_ID``): the matrix's labels are int64. A case has at
most ``MAX_DISTINCT_LABELS`` labels and ``MAX_LABEL_PAIRS`` distinct ``(P, R)`` pairs (a
segmentation pairs each label with a few others; more is noise, refused), which bounds the
memory of the cells whatever the volume.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from monai_jdt.scoring.errors import NegativeLabelError, NonIntegerLabelsError, TooManyLabelsError
from monai_jdt.scoring.options import MAX_DISTINCT_LABELS, MAX_LABEL_ID
from monai_jdt.scoring.volumes import check_max_label

if TYPE_CHECKING:
    import torch

__all__ = [
    "CHUNK_VOXELS",
    "MAX_DISTINCT_LABELS",
    "MAX_LABEL_PAIRS",
    "ConfusionAccumulator",
    "ConfusionMatrix",
    "confusion_matrix",
    "confusion_matrix_torch",
]

#: voxels per chunk: small enough for the caches, large enough to amortise the Python loop
CHUNK_VOXELS = 1 << 18
#: more distinct (prediction, reference) label pairs than this in one case is refused
MAX_LABEL_PAIRS = 1 << 20
_PAIR_LIMIT = 16  # labels < 16: the code P*16+R fits one byte
_DENSE_LIMIT = 256  # labels < 256: the code fits 16 bits, a 65536-bin histogram per chunk
_BLOCK = 2048  # voxels per all-background test
_CELL_BINS = 1 << 16  # a chunk of at most 256 distinct labels counts its cells with bincount
_WAITING_CELLS = 1 << 18  # chunk cells summed once more than this many wait
_MOST_WAITING = 1 << 19  # ... or as many as the last summation kept, up to this many
_TABLE_IDS = 1 << 20  # chunks of ids below this are numbered with a lookup table


@dataclass(frozen=True)
class ConfusionMatrix:
    """Confusion counts of one case, kept as its non-zero cells.

    Attributes:
        labels: ``[L]`` int64, the sorted label ids present in either volume.
        predicted_index: ``[K]`` int64, the row of each non-zero cell (an index into
            ``labels``: the predicted label); cells are distinct and sorted by row, then column.
        reference_index: ``[K]`` int64, its column (the reference label).
        cell_counts: ``[K]`` int64 > 0, the voxels of each cell.
        voxels: ``N``, the number of voxels (the sum of ``cell_counts``).
    """

    labels: np.ndarray
    predicted_index: np.ndarray
    reference_index: np.ndarray
    cell_counts: np.ndarray
    voxels: int

    @classmethod
    def from_cells(
        cls, predicted: np.ndarray, reference: np.ndarray, counts: np.ndarray, voxels: int
    ) -> ConfusionMatrix:
        """The matrix of cells given by their label ids (``[K]`` int64 each, and their counts):
        repeated cells are summed, empty ones dropped; the labels are those of a cell.

        Raises:
            TooManyLabelsError: more than ``MAX_DISTINCT_LABELS`` labels or
                ``MAX_LABEL_PAIRS`` distinct pairs.
        """
        if not counts.all():  # copies only when there are empty cells (a dense table's)
            keep = counts > 0
            predicted, reference, counts = predicted[keep], reference[keep], counts[keep]
        high = int(max(predicted.max(), reference.max())) if counts.size else 0
        labels, code, r = _numbered(predicted, reference, high)
        m = max(labels.size, 1)
        code *= m
        code += r  # P * m + R, in place
        del r
        order = np.argsort(code)
        code = code[order]
        starts = np.flatnonzero(np.r_[True, code[1:] != code[:-1]]) if code.size else code
        _check_pair_count(starts.size)
        sums = np.add.reduceat(counts[order], starts) if code.size else counts
        del order
        code = code[starts]
        return cls(labels, code // m, code % m, sums.astype(np.int64), voxels)

    @classmethod
    def from_dense(cls, labels: np.ndarray, matrix: np.ndarray, voxels: int) -> ConfusionMatrix:
        """The matrix of a dense ``[L, L]`` table over ``labels`` (``matrix[i, j]``: voxels
        predicted ``labels[i]`` whose reference is ``labels[j]``)."""
        rows, cols = np.nonzero(matrix)
        return cls.from_cells(labels[rows], labels[cols], matrix[rows, cols], voxels)

    @cached_property
    def _sums(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(tp, predicted, reference)`` per label, ``[L]`` int64 each."""
        tp = np.zeros(self.labels.size, np.int64)
        diagonal = self.predicted_index == self.reference_index
        tp[self.predicted_index[diagonal]] = self.cell_counts[diagonal]  # one cell per label
        predicted = np.zeros(self.labels.size, np.int64)
        np.add.at(predicted, self.predicted_index, self.cell_counts)
        reference = np.zeros(self.labels.size, np.int64)
        np.add.at(reference, self.reference_index, self.cell_counts)
        return tp, predicted, reference

    @property
    def matrix(self) -> np.ndarray:
        """The dense ``[L, L]`` int64 table (``L^2`` counts: to inspect small cases)."""
        dense = np.zeros((self.labels.size, self.labels.size), np.int64)
        dense[self.predicted_index, self.reference_index] = self.cell_counts
        return dense

    def counts(self, label: int) -> tuple[int, int, int, int]:
        """``(tp, fp, fn, tn)`` of one label id; a label absent from both gives ``(0, 0, 0, N)``."""
        hit = np.flatnonzero(self.labels == label)
        if hit.size == 0:
            return 0, 0, 0, self.voxels
        tp, predicted, reference = (int(column[hit[0]]) for column in self._sums)
        fp, fn = predicted - tp, reference - tp
        return tp, fp, fn, self.voxels - tp - fp - fn

    def union_counts(self, members: tuple[int, ...]) -> tuple[int, int, int, int]:
        """``(tp, fp, fn, tn)`` of the union of the label ids ``members`` (a region)."""
        inside = np.isin(self.labels, np.asarray(members, dtype=np.int64))
        in_prediction, in_reference = inside[self.predicted_index], inside[self.reference_index]
        tp = int(self.cell_counts[in_prediction & in_reference].sum())
        fp = int(self.cell_counts[in_prediction].sum()) - tp
        fn = int(self.cell_counts[in_reference].sum()) - tp
        return tp, fp, fn, self.voxels - tp - fp - fn

    def present_in_prediction(self) -> set[int]:
        """Label ids with at least one predicted voxel."""
        return {int(x) for x in self.labels[self._sums[1] > 0]}

    def present_in_reference(self) -> set[int]:
        """Label ids with at least one reference voxel."""
        return {int(x) for x in self.labels[self._sums[2] > 0]}

    def without_reference_label(self, label: int | None) -> ConfusionMatrix:
        """The matrix of the voxels whose reference is not ``label`` (nnU-Net's ignore label):
        the cells of column ``label`` are dropped, and ``voxels`` shrinks by their sum. Every
        count of every other label then leaves those voxels out (``tn`` included; a prediction
        of ``label`` elsewhere is simply not label ``k``). ``self`` when ``label`` is None or
        absent."""
        hit = np.flatnonzero(self.labels == label) if label is not None else np.zeros(0, int)
        if hit.size == 0:
            return self
        kept = self.reference_index != int(hit[0])
        return ConfusionMatrix.from_cells(
            self.labels[self.predicted_index[kept]],
            self.labels[self.reference_index[kept]],
            self.cell_counts[kept],
            self.voxels - int(self.cell_counts[~kept].sum()),
        )


def _check_label_count(count: int) -> None:
    if count > MAX_DISTINCT_LABELS:
        raise TooManyLabelsError(
            f"the volumes hold more than {MAX_DISTINCT_LABELS} distinct labels ({count} so far), "
            "the most a case is scored with; this looks like an instance map or an intensity "
            "image, not a label map.",
            options=(),  # a fixed limit: max_labels can only lower it
        )


def _check_pair_count(count: int) -> None:
    if count > MAX_LABEL_PAIRS:
        raise TooManyLabelsError(
            f"the volumes pair their labels in more than {MAX_LABEL_PAIRS} distinct "
            f"(prediction, reference) combinations ({count} so far); a segmentation pairs each "
            "label with a few others, so this looks like noise or an intensity image.",
            options=(),  # a fixed limit, whatever max_labels says
        )


class ConfusionAccumulator:
    """Accumulates the confusion matrix over chunks of two label volumes (numpy, CPU).

    Call ``update`` with matching 1-D chunks (same length, same voxel order), then
    ``result``. Chunks may come from memory or from a decompression stream. Chunks whose
    labels are all < 256 add to fixed 65536-bin histograms (no per-chunk bookkeeping); the
    rare chunks with larger ids add their cells (``_chunk_cells``), which are summed whenever
    more wait than ``_WAITING_CELLS`` and than the distinct cells of the last summation, up
    to ``_MOST_WAITING``: each cell is summed a few times, and a summation never takes more
    than ``MAX_LABEL_PAIRS`` kept, ``_MOST_WAITING`` waiting and one chunk's cells.
    """

    def __init__(self) -> None:
        self._pair_bins = np.zeros(1 << 16, dtype=np.int64)  # pairs of codes P*16 + R
        self._dense_bins = np.zeros(1 << 16, dtype=np.int64)  # codes P*256 + R
        self._cells: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # ids P, ids R, counts
        self._summed_size = 0  # distinct cells in self._cells[0] after a summation
        self._waiting = 0  # cells added since
        self._voxels = 0

    def update(self, prediction: np.ndarray, reference: np.ndarray) -> None:
        """Add the counts of one chunk pair (1-D integer arrays of equal length).

        Raises:
            NonIntegerLabelsError, NegativeLabelError: a chunk that is not of label ids.
            TooManyLabelsError: past ``MAX_DISTINCT_LABELS`` labels or ``MAX_LABEL_PAIRS``
                pairs (here or in ``result``).
        """
        if prediction.shape != reference.shape or prediction.ndim != 1:
            raise ValueError(
                "chunks must be 1-D and of equal length, got "
                f"{prediction.shape} and {reference.shape}."
            )
        if prediction.size == 0:
            return
        high = max(_checked_max(prediction, "prediction"), _checked_max(reference, "reference"))
        if high < _PAIR_LIMIT:
            even = prediction.size - prediction.size % 2
            self._pair_bins += _pair_histogram(prediction[:even], reference[:even])
            if even < prediction.size:  # the odd voxel out
                self._dense_bins[int(prediction[-1]) * _DENSE_LIMIT + int(reference[-1])] += 1
        elif high < _DENSE_LIMIT:
            code = np.multiply(
                prediction, np.uint16(_DENSE_LIMIT), dtype=np.uint16, casting="unsafe"
            )
            np.add(code, reference, out=code, casting="unsafe")
            self._dense_bins += np.bincount(code, minlength=1 << 16)
        else:
            cells = _chunk_cells(prediction, reference, high)
            self._cells.append(cells)
            self._waiting += cells[0].size
            if self._waiting > min(max(_WAITING_CELLS, self._summed_size), _MOST_WAITING):
                summed = self._summed()
                self._cells = [_label_cells(summed)]
                self._summed_size, self._waiting = summed.cell_counts.size, 0
        self._voxels += prediction.size

    def _summed(self, *more: tuple[np.ndarray, np.ndarray, np.ndarray]) -> ConfusionMatrix:
        """All cells so far (and ``more``) summed; the parts are let go as they are joined."""
        parts, self._cells = [*self._cells, *more], []
        predicted, reference, counts = (
            np.concatenate([part[i] for part in parts]) for i in range(3)
        )
        del parts
        return ConfusionMatrix.from_cells(predicted, reference, counts, self._voxels)

    def result(self) -> ConfusionMatrix:
        """The matrix so far (its labels: those present in either volume)."""
        # a uint16 pair value is code[2i] + 256 * code[2i+1] on little-endian machines (the
        # reverse on big-endian ones); either way each code is counted once per axis
        pairs = self._pair_bins.reshape(256, 256)
        single = (pairs.sum(0) + pairs.sum(1))[: _PAIR_LIMIT**2].reshape(_PAIR_LIMIT, _PAIR_LIMIT)
        dense = self._dense_bins.reshape(_DENSE_LIMIT, _DENSE_LIMIT).copy()
        dense[:_PAIR_LIMIT, :_PAIR_LIMIT] += single
        rows, cols = np.nonzero(dense)
        return self._summed((rows.astype(np.int64), cols.astype(np.int64), dense[rows, cols]))


def _checked_max(chunk: np.ndarray, name: str) -> int:
    """Largest value of an integer chunk; refuses negative values, ids above
    ``MAX_LABEL_ID`` and non-integer dtypes."""
    if chunk.dtype == np.bool_:
        return int(chunk.any())
    if not np.issubdtype(chunk.dtype, np.integer):
        raise NonIntegerLabelsError(
            f"the {name} label volume must hold integers, got dtype {chunk.dtype}."
        )
    if np.issubdtype(chunk.dtype, np.signedinteger):
        low = int(chunk.min())
        if low < 0:
            raise NegativeLabelError(
                f"the {name} label volume holds negative values (minimum {low}); "
                "label ids must be >= 0."
            )
    high = int(chunk.max())
    check_max_label(high, name)
    return high


def _pair_histogram(prediction: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Labels < 16, an even number of voxels: the one-byte codes ``P*16 + R`` histogrammed
    two at a time as uint16 (65536 bins of code pairs).

    Code 0 means background in both volumes, which is most of a medical volume: blocks of
    ``_BLOCK`` voxels that are all 0 are found with one vectorised ``any`` over 8-byte words
    and counted without going through ``np.bincount``.
    """
    code = np.multiply(prediction, np.uint8(_PAIR_LIMIT), dtype=np.uint8, casting="unsafe")
    np.add(code, reference, out=code, casting="unsafe")
    whole = code.size - code.size % _BLOCK
    blocks = code[:whole].view(np.uint64).reshape(-1, _BLOCK // 8)
    busy = blocks.any(axis=1)
    n_busy = int(np.count_nonzero(busy))
    data = (
        code
        if n_busy == busy.size
        else np.concatenate([blocks[busy].view(np.uint8).reshape(-1), code[whole:]])
    )
    bins = np.bincount(data.view(np.uint16), minlength=1 << 16)
    bins[0] += (busy.size - n_busy) * (_BLOCK // 2)
    return bins


def _chunk_cells(
    prediction: np.ndarray, reference: np.ndarray, high: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Large label ids (the rare path): the distinct ``(P, R)`` pairs of one chunk whose
    largest id is ``high``, as ``(prediction ids, reference ids, counts)``, ``[K]`` int64 each.

    The ids present are numbered ``0..m-1`` (:func:`_numbered`). Voxels where both volumes
    agree (most of them) are counted per label with ``np.bincount``; only the others are
    coded as ``P * m + R`` and counted, with ``np.bincount`` when ``m^2`` is at most
    ``_CELL_BINS``, else by sorting (``np.unique``), so the cost never grows with ``m^2``.

    Raises:
        TooManyLabelsError: more than ``MAX_DISTINCT_LABELS`` ids in the chunk.
    """
    labels, p, r = _numbered(prediction, reference, high)
    m = labels.size
    agree = p == r
    diagonal = np.bincount(p[agree], minlength=m)
    code = p[~agree] * m + r[~agree]
    if m * m <= _CELL_BINS:
        bins = np.bincount(code, minlength=m * m)
        cells = np.flatnonzero(bins)
        counts = bins[cells]
    else:
        cells, counts = np.unique(code, return_counts=True)
    on = np.flatnonzero(diagonal)
    return (
        np.concatenate([labels[on], labels[cells // m]]),
        np.concatenate([labels[on], labels[cells % m]]),
        np.concatenate([diagonal[on], counts]).astype(np.int64),
    )


def _numbered(a: np.ndarray, b: np.ndarray, high: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels, index of each a, index of each b)``: the sorted ids present in two arrays of
    ids in ``0..high`` (``[m]`` int64) and the position of every element among them.

    Ids below ``_TABLE_IDS`` go through a lookup table of ``high + 1`` entries (one pass, no
    sort: maps of a few thousand structures, FreeSurfer's ids up to 2035, instance maps);
    larger ones are sorted, both arrays cast to int64 first (``update`` has checked that the
    ids lie in ``0..MAX_LABEL_ID``, so the cast is exact, where numpy would compare a uint64
    array with a signed one as float64 and merge ids above 2**53 that differ).

    Raises:
        TooManyLabelsError: more than ``MAX_DISTINCT_LABELS`` ids.
    """
    if a.dtype == np.bool_:  # as ids 0 and 1, not as a mask
        a = a.view(np.uint8)
    if b.dtype == np.bool_:
        b = b.view(np.uint8)
    if high < _TABLE_IDS:
        seen = np.zeros(high + 1, dtype=bool)
        seen[a] = True
        seen[b] = True
        labels = np.flatnonzero(seen).astype(np.int64)
        _check_label_count(labels.size)
        number = np.cumsum(seen, dtype=np.int64) - 1  # id -> its index among the labels
        return labels, number[a], number[b]
    a, b = a.astype(np.int64, copy=False), b.astype(np.int64, copy=False)
    labels = np.union1d(a, b)
    _check_label_count(labels.size)
    return labels, np.searchsorted(labels, a), np.searchsorted(labels, b)


def _label_cells(matrix: ConfusionMatrix) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The cells of ``matrix`` by label id, as ``_chunk_cells`` gives them."""
    labels = matrix.labels
    return labels[matrix.predicted_index], labels[matrix.reference_index], matrix.cell_counts


def _aligned_chunks(
    prediction: np.ndarray, reference: np.ndarray, chunk_voxels: int
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """1-D chunk pairs covering both volumes in the same voxel order, copying only if needed."""
    for order in ("C", "F"):
        contiguous = "c_contiguous" if order == "C" else "f_contiguous"
        if getattr(prediction.flags, contiguous) and getattr(reference.flags, contiguous):
            flat_p = prediction.reshape(-1, order=order)
            flat_r = reference.reshape(-1, order=order)
            for start in range(0, flat_p.size, chunk_voxels):
                yield flat_p[start : start + chunk_voxels], flat_r[start : start + chunk_voxels]
            return
    # mixed layouts: slabs along the first axis, each made contiguous
    slab = max(1, chunk_voxels // max(1, prediction[0].size)) if prediction.ndim else 1
    for start in range(0, prediction.shape[0], slab):
        yield (
            np.ascontiguousarray(prediction[start : start + slab]).reshape(-1),
            np.ascontiguousarray(reference[start : start + slab]).reshape(-1),
        )


def confusion_matrix(
    prediction: np.ndarray, reference: np.ndarray, chunk_voxels: int = CHUNK_VOXELS
) -> ConfusionMatrix:
    """Confusion matrix of two integer label arrays of the same shape (numpy, CPU, chunked)."""
    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: {prediction.shape} and {reference.shape}.")
    accumulator = ConfusionAccumulator()
    if prediction.ndim == 0:
        prediction, reference = prediction.reshape(1), reference.reshape(1)
    for p, r in _aligned_chunks(prediction, reference, chunk_voxels):
        accumulator.update(p, r)
    return accumulator.result()


def confusion_matrix_torch(
    prediction: torch.Tensor, reference: torch.Tensor, chunk_voxels: int = 1 << 24
) -> ConfusionMatrix:
    """Confusion matrix of two integer label tensors on their device (e.g. CUDA), chunked.

    Gives the same integer counts as ``confusion_matrix``. Only the non-zero cells leave the
    device. Unsigned tensors wider than a byte (which torch cannot take the minimum of) are
    counted as int64: exactly, since ids of 2**63 and more are refused.

    Raises:
        NonIntegerLabelsError, NegativeLabelError, LabelIdTooLargeError, TooManyLabelsError.
    """
    import torch

    if prediction.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(prediction.shape)} and {tuple(reference.shape)}.")

    def signed(flat: torch.Tensor, name: str) -> torch.Tensor:
        if flat.dtype in (torch.uint16, torch.uint32):
            return flat.to(torch.int64)
        if flat.dtype == torch.uint64:
            as_int64 = flat.view(torch.int64)
            if as_int64.numel() and int(as_int64.min()) < 0:  # an id of 2**63 or more
                check_max_label(MAX_LABEL_ID + 1, name)
            return as_int64
        return flat

    flat_p = signed(prediction.reshape(-1), "prediction")
    flat_r = signed(reference.reshape(-1), "reference")
    for name, flat in (("prediction", flat_p), ("reference", flat_r)):
        if flat.is_floating_point() or flat.is_complex():
            raise NonIntegerLabelsError(
                f"the {name} label volume must hold integers, got dtype {flat.dtype}."
            )
        if flat.numel() and flat.dtype != torch.bool and int(flat.min()) < 0:
            raise NegativeLabelError(
                f"the {name} label volume holds negative values (minimum {int(flat.min())}); "
                "label ids must be >= 0."
            )
    if flat_p.numel() == 0:
        empty = np.zeros(0, np.int64)
        return ConfusionMatrix.from_cells(empty, empty, empty, 0)
    high = max(int(flat_p.max()), int(flat_r.max()))
    if high < _DENSE_LIMIT:
        labels = torch.arange(high + 1, device=flat_p.device)
    else:
        labels = torch.unique(torch.cat([torch.unique(flat_p), torch.unique(flat_r)]))
        _check_label_count(labels.numel())
    m = labels.numel()
    counts = torch.zeros(m * m, dtype=torch.int64, device=flat_p.device)
    for start in range(0, flat_p.numel(), chunk_voxels):
        p = flat_p[start : start + chunk_voxels].long()
        r = flat_r[start : start + chunk_voxels].long()
        if high >= _DENSE_LIMIT:
            p, r = torch.searchsorted(labels, p), torch.searchsorted(labels, r)
        counts += torch.bincount(p * m + r, minlength=m * m)
    table = counts.reshape(m, m)
    rows, cols = torch.nonzero(table, as_tuple=True)  # only the non-zero cells leave the device
    ids = labels.cpu().numpy().astype(np.int64)
    cell_counts = table[rows, cols].cpu().numpy()
    rows_np, cols_np = rows.cpu().numpy(), cols.cpu().numpy()
    return ConfusionMatrix.from_cells(ids[rows_np], ids[cols_np], cell_counts, int(flat_p.numel()))
