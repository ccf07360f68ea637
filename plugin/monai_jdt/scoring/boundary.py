"""Boundary metrics of label maps, in mm: Hausdorff distance, its percentile, average surface
distances, normalized surface distance and Boundary IoU, per label and per region.

For a structure (one label, or a region: a union of labels) let ``P`` and ``R`` be the surface
points of the prediction and of the reference, ``w(x)`` the weight of a point (1, or a surfel's
area) and ``d(x, Y) = min_{y in Y} |x - y|`` in mm (voxel spacing applied). Every metric of the
structure comes from ONE computation of the two families of distances
``d_P = {d(p, R)}`` and ``d_R = {d(r, P)}``::

    hd   = max(max d_P, max d_R)                                   (Hausdorff)
    hd95 = max(q_P(p), q_R(p))        percentile_mode="directed"   (MONAI, surface-distance)
         = q_{P u R}(p)               percentile_mode="pooled"     (medpy)
    assd = (sum_P w d + sum_R w d) / (sum_P w + sum_R w)           (mean over both surfaces,
                                                                    MONAI's and medpy's ASSD)
    masd = (mean_w d_P + mean_w d_R) / 2                           (mean of the directed means)
    nsd  = (sum_P w [d <= tau] + sum_R w [d <= tau]) / (sum_P w + sum_R w)
                                                                   (surface Dice at tau mm)
    boundary_iou = |B_P n B_R| / |B_P u B_R|                       (Cheng et al., CVPR 2021)

``q(p)`` is the ``p``-th percentile (``percentile``, default 95): linear interpolation between
order statistics for unweighted points (numpy's and ``torch.quantile``'s default, as MONAI and
medpy), and for area-weighted points the smallest distance whose cumulative area fraction
reaches ``p / 100`` (as DeepMind's surface-distance). ``B_X`` is the inner band of mask ``X``:
its border voxels and its voxels within ``boundary_width`` mm of a background voxel centre.

Surface conventions (``surface``):

* ``"voxel"`` (default): the border voxels, ``X`` minus its binary erosion by the face-connected
  (cross-shaped) structuring element (voxels outside the volume count as background), points at
  voxel centres, weight 1. This is what MONAI's ``compute_hausdorff_distance``,
  ``compute_average_surface_distance(symmetric=True)`` and ``compute_surface_dice`` use (scipy's
  default erosion), and medpy's ``hd95`` / ``assd``.
* ``"surfel"``: the marching-cubes surface elements of each 2x2(x2) cell of the voxel grid
  with a mixed neighbourhood, points at the cell centres (the half-voxel grid), weight = the
  element's area in mm^2 (contour length in 2-D), as DeepMind's surface-distance package and
  MONAI's ``use_subvoxels=True``. The area table is MONAI's (``get_code_to_measure_table``).

Empty masks: both empty gives NaN (``empty="nan"``) or the perfect score (0 mm, NSD and
Boundary IoU 1.0) under ``empty="one"``; one empty leaves the distances undefined (None, with
the reason ``"prediction empty"`` / ``"reference empty"``) and gives NSD = Boundary IoU = 0.
A summary may charge a missed structure ``missing_distance`` mm (``volume_diagonal_mm``).

How the distances are found (CPU, numpy): each structure is cut to the bounding box of both
masks (found for all labels in one ``scipy.ndimage.find_objects`` pass inside the foreground
box), borders come from a slicing-based erosion, and each surface point looks for the other
surface at the lattice offsets within a few voxels, nearest first (one gather per offset over
the points still unresolved; the first hit is the exact nearest point). Points farther away
are answered exactly by a KD-tree (``scipy.spatial.cKDTree``) over the other surface. Extra
memory is a few bytes per voxel of the structure's box. ``monai_jdt.scoring.boundary_torch``
runs the same steps with torch on any device (CUDA).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Generic, Literal, TypeVar

import numpy as np

from monai_jdt.scoring.errors import InvalidOptionError, NonIntegerLabelsError, ShapeMismatchError
from monai_jdt.scoring.options import BOUNDARY_METRICS, MAX_LABEL_ID, decimal_float
from monai_jdt.scoring.regions import REGION_NAME, check_regions, region_mask

__all__ = [
    "BOUNDARY_METRICS",
    "DEFAULT_NSD_TOLERANCE",
    "DISTANCE_METRICS",
    "PERCENTILE_MODES",
    "SURFACES",
    "BoundaryOptions",
    "BoundaryScore",
    "boundary_scores",
    "metrics_from_distances",
    "parse_tolerances",
    "volume_diagonal_mm",
]

#: the metrics in mm (undefined when one mask is empty)
DISTANCE_METRICS: tuple[str, ...] = ("hd", "hd95", "assd", "masd")
SURFACES: tuple[str, ...] = ("voxel", "surfel")
PERCENTILE_MODES: tuple[str, ...] = ("directed", "pooled")
#: NSD tolerance (mm) of a structure the tolerances do not name
DEFAULT_NSD_TOLERANCE = 1.0
#: Boundary IoU band width when none is given: this fraction of the volume diagonal (the
#: default dilation ratio of Cheng et al. 2021)
BOUNDARY_WIDTH_FRACTION = 0.02
#: lattice offsets tried per surface point before the KD-tree (about 4 voxels of radius in 3-D)
_SEARCH_OFFSETS = 256
#: from this many labels on, their boxes come from one find_objects pass
_FIND_OBJECTS_LABELS = 4
#: gathered cells per step of the lattice search (bounds its temporaries to a few MB)
_GATHER_ELEMENTS = 1 << 17

_ABSENT = "label absent from both prediction and reference"


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float, np.floating, np.integer)) and not isinstance(value, bool)


def parse_tolerances(spec: str) -> float | dict[int | str, float]:
    """Parse NSD tolerances: ``"2"`` (mm, every structure) or ``"1=2,2=3,WT=2.5"`` (per label
    id or region name; unnamed structures get ``DEFAULT_NSD_TOLERANCE``)."""
    text = spec.strip() if isinstance(spec, str) else ""
    if not text:
        raise InvalidOptionError(f"nsd_tolerance: expected '2' or '1=2,2=3' (mm), got {spec!r}.")
    if "=" not in text:
        return _tolerance(text, spec)
    out: dict[int | str, float] = {}
    for item in text.split(","):
        key, sep, value = (part.strip() for part in item.partition("="))
        if not sep or not key:
            raise InvalidOptionError(
                f"nsd_tolerance: {item.strip()!r} is not 'LABEL=MM' (in {spec!r})."
            )
        name = _tolerance_key(key, spec)
        if name in out:
            raise InvalidOptionError(f"nsd_tolerance: {key!r} is listed twice (in {spec!r}).")
        out[name] = _tolerance(value, spec)
    return out


def _checked_tolerance_map(tolerances: Mapping[Any, object]) -> dict[int | str, float]:
    """``{label id or region name: mm}`` with its keys as ``parse_tolerances`` reads them
    (``"1"`` is label 1), each key and value checked.

    Raises:
        InvalidOptionError: a bad key or value, or two keys naming one label (``1``, ``"1"``).
    """
    out: dict[int | str, float] = {}
    for key, value in tolerances.items():
        name = _tolerance_key(key, tolerances)
        if name in out:
            raise InvalidOptionError(f"nsd_tolerance: {key!r} is listed twice (in {tolerances!r}).")
        out[name] = _tolerance(value, tolerances)
    return out


def _tolerance_key(key: object, spec: object) -> int | str:
    """A key of per-structure NSD tolerances: a label id (an int, or text of digits, 0 to
    ``MAX_LABEL_ID``) or a region name (``REGION_NAME``).

    Raises:
        InvalidOptionError: any other key (a bool, a negative or too large id, a name that
            is not a region name).
    """
    if isinstance(key, str) and key.isascii() and key.isdigit():
        key = int(key)
    if isinstance(key, int) and not isinstance(key, bool):
        if key > MAX_LABEL_ID:
            raise InvalidOptionError(
                f"nsd_tolerance: label id {key} is too large; label ids must be below 2**63 "
                f"(in {spec!r})."
            )
        if key >= 0:
            return key
    elif isinstance(key, str) and REGION_NAME.match(key):
        return key
    raise InvalidOptionError(
        f"nsd_tolerance: {key!r} is neither a label id nor a region name (label ids are >= 0; "
        f"in {spec!r})."
    )


def _tolerance(value: object, spec: object) -> float:
    try:  # text in plain decimal syntax only (float() also takes "1_0")
        number = decimal_float(value) if isinstance(value, str) else float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        number = math.nan
    if isinstance(value, bool) or not math.isfinite(number) or number < 0:
        raise InvalidOptionError(
            f"nsd_tolerance: {value!r} is not a finite number of mm >= 0 (in {spec!r})."
        )
    return number


@dataclass(frozen=True)
class BoundaryOptions:
    """Which boundary metrics, under which conventions (see the module docstring).

    Attributes:
        metrics: names from ``BOUNDARY_METRICS``.
        percentile: the ``p`` of ``hd95`` (0..100).
        percentile_mode: ``"directed"`` (max of the two directed percentiles) or ``"pooled"``.
        nsd_tolerance: mm, one number or ``{label id or region name: mm}``.
        boundary_width: Boundary IoU band width in mm; None for 2% of the volume diagonal.
        surface: ``"voxel"`` or ``"surfel"``.
        empty: ``"nan"`` or ``"one"``: the score of a structure absent from both volumes.
    """

    metrics: tuple[str, ...] = ("hd95", "nsd")
    percentile: float = 95.0
    percentile_mode: Literal["directed", "pooled"] = "directed"
    nsd_tolerance: float | Mapping[int | str, float] = DEFAULT_NSD_TOLERANCE
    boundary_width: float | None = None
    surface: Literal["voxel", "surfel"] = "voxel"
    empty: Literal["nan", "one"] = "nan"

    def __post_init__(self) -> None:
        metrics = (self.metrics,) if isinstance(self.metrics, str) else tuple(self.metrics)
        unknown = [m for m in metrics if m not in BOUNDARY_METRICS]
        if unknown or not metrics:
            raise InvalidOptionError(
                f"boundary metrics must be a non-empty subset of {', '.join(BOUNDARY_METRICS)}, "
                f"got {metrics!r}."
            )
        object.__setattr__(self, "metrics", tuple(m for m in BOUNDARY_METRICS if m in metrics))
        if not _is_real(self.percentile) or not 0 <= float(self.percentile) <= 100:
            raise InvalidOptionError(
                f"percentile must be a number in [0, 100], got {self.percentile!r}."
            )
        if self.percentile_mode not in PERCENTILE_MODES:
            raise InvalidOptionError(
                f"percentile mode must be directed or pooled, got {self.percentile_mode!r}."
            )
        if isinstance(self.nsd_tolerance, Mapping):
            object.__setattr__(
                self,
                "nsd_tolerance",
                _checked_tolerance_map(self.nsd_tolerance),
            )
        else:
            object.__setattr__(
                self, "nsd_tolerance", _tolerance(self.nsd_tolerance, self.nsd_tolerance)
            )
        if self.boundary_width is not None and (
            not _is_real(self.boundary_width)
            or not math.isfinite(self.boundary_width)
            or self.boundary_width < 0
        ):
            raise InvalidOptionError(
                f"boundary_width must be a finite number of mm >= 0 or None, got "
                f"{self.boundary_width!r}."
            )
        if self.surface not in SURFACES:
            raise InvalidOptionError(f"surface must be voxel or surfel, got {self.surface!r}.")
        if self.empty not in ("nan", "one"):
            raise InvalidOptionError(f"empty must be 'nan' or 'one', got {self.empty!r}.")

    def tolerance(self, key: int | str) -> float:
        """The NSD tolerance (mm) of a label id or region name."""
        if isinstance(self.nsd_tolerance, Mapping):
            return float(self.nsd_tolerance.get(key, DEFAULT_NSD_TOLERANCE))
        return float(self.nsd_tolerance)

    def width(self, shape: Sequence[int], spacing: Sequence[float]) -> float:
        """The Boundary IoU band width (mm) used for a volume."""
        if self.boundary_width is not None:
            return float(self.boundary_width)
        return BOUNDARY_WIDTH_FRACTION * volume_diagonal_mm(shape, spacing)

    def conventions(self) -> dict[str, object]:
        """The conventions, for the report."""
        return {
            "surface": self.surface,
            "percentile": float(self.percentile),
            "percentile_mode": self.percentile_mode,
            "nsd_tolerance": dict(self.nsd_tolerance)
            if isinstance(self.nsd_tolerance, Mapping)
            else self.nsd_tolerance,
            "boundary_width": self.boundary_width,
            "empty": self.empty,
        }


@dataclass(frozen=True)
class BoundaryScore:
    """Boundary metrics of one label (``key`` an int) or region (``key`` its name).

    ``values[m]`` is None when undefined, and ``reasons[m]`` says why; ``missing`` is
    ``"prediction empty"`` / ``"reference empty"`` when exactly one mask is empty (a missed or
    a spurious structure), ``"both empty"`` or None. ``surface_points`` counts the surface
    points of (prediction, reference).
    """

    key: int | str
    values: dict[str, float | None]
    reasons: dict[str, str] = field(default_factory=dict)
    missing: str | None = None
    nsd_tolerance: float = DEFAULT_NSD_TOLERANCE
    surface_points: tuple[int, int] = (0, 0)


def volume_diagonal_mm(shape: Sequence[int], spacing: Sequence[float] | None) -> float:
    """The diagonal of the volume in mm, ``sqrt(sum_i (n_i s_i)^2)``: the default penalty for
    a structure whose distances are undefined."""
    scale = [1.0] * len(shape) if spacing is None else list(spacing)
    return float(math.sqrt(sum((n * s) ** 2 for n, s in zip(shape, scale, strict=True))))


# --- metrics from the two distance families (shared by the numpy and torch paths) -----------


def _percentile(d: np.ndarray, w: np.ndarray | None, p: float) -> float:
    if w is None:
        return float(np.percentile(d, p))
    order = np.argsort(d, kind="stable")
    cumulative = np.cumsum(w[order])
    idx = int(np.searchsorted(cumulative / cumulative[-1], p / 100.0))
    return float(d[order[min(idx, d.size - 1)]])


def metrics_from_distances(
    d_pred: np.ndarray,
    w_pred: np.ndarray | None,
    d_ref: np.ndarray,
    w_ref: np.ndarray | None,
    options: BoundaryOptions,
    tolerance: float,
) -> dict[str, float]:
    """The distance metrics and NSD of a structure whose two surfaces are both non-empty.

    ``d_pred`` ``[n_P]`` are the distances (mm) from the prediction's surface points to the
    reference's surface, ``d_ref`` ``[n_R]`` the reverse; ``w_*`` the points' weights (None:
    weight 1). Boundary IoU is not computed here (it needs the masks).
    """
    d_pred, d_ref = np.asarray(d_pred, np.float64), np.asarray(d_ref, np.float64)
    wp = np.ones(d_pred.size) if w_pred is None else np.asarray(w_pred, np.float64)
    wr = np.ones(d_ref.size) if w_ref is None else np.asarray(w_ref, np.float64)
    sum_p, sum_r = float(wp.sum()), float(wr.sum())
    out: dict[str, float] = {}
    if "hd" in options.metrics:
        out["hd"] = float(max(d_pred.max(), d_ref.max()))
    if "hd95" in options.metrics:
        p = float(options.percentile)
        if options.percentile_mode == "directed":
            out["hd95"] = max(_percentile(d_pred, w_pred, p), _percentile(d_ref, w_ref, p))
        else:
            both_w = None if w_pred is None else np.concatenate([wp, wr])
            out["hd95"] = _percentile(np.concatenate([d_pred, d_ref]), both_w, p)
    if "assd" in options.metrics:
        out["assd"] = (float(wp @ d_pred) + float(wr @ d_ref)) / (sum_p + sum_r)
    if "masd" in options.metrics:
        out["masd"] = 0.5 * (float(wp @ d_pred) / sum_p + float(wr @ d_ref) / sum_r)
    if "nsd" in options.metrics:
        close = float(wp[d_pred <= tolerance].sum()) + float(wr[d_ref <= tolerance].sum())
        out["nsd"] = close / (sum_p + sum_r)
    return out


def empty_scores(
    key: int | str,
    pred_empty: bool,
    ref_empty: bool,
    options: BoundaryOptions,
    tolerance: float,
) -> BoundaryScore:
    """The scores of a structure with at least one empty mask (no distance to compute)."""
    values: dict[str, float | None] = {}
    reasons: dict[str, str] = {}
    if pred_empty and ref_empty:
        for m in options.metrics:
            if options.empty == "one":
                values[m] = 0.0 if m in DISTANCE_METRICS else 1.0
            else:
                values[m], reasons[m] = None, _ABSENT
        return BoundaryScore(key, values, reasons, "both empty", tolerance)
    missing = "prediction empty" if pred_empty else "reference empty"
    for m in options.metrics:
        if m in DISTANCE_METRICS:
            values[m], reasons[m] = None, missing
        else:
            values[m] = 0.0
    return BoundaryScore(key, values, reasons, missing, tolerance)


# --- the numpy path ---------------------------------------------------------------------------


def _check_labels(volume: np.ndarray, name: str) -> np.ndarray:
    if volume.dtype == np.bool_:
        return volume.view(np.uint8)
    if not np.issubdtype(volume.dtype, np.integer):
        raise NonIntegerLabelsError(
            f"the {name} label volume must hold integers, got dtype {volume.dtype}."
        )
    return volume


Box = tuple[tuple[int, int], ...]


def _foreground_box(volume: np.ndarray) -> Box | None:
    """The bounding box ``((start, stop), ...)`` of the non-zero voxels, or None."""
    box: list[tuple[int, int]] = []
    sub = volume
    for axis in range(volume.ndim):
        others = tuple(a for a in range(volume.ndim) if a != axis)
        hits = np.flatnonzero(sub.any(axis=others) if others else sub)
        if hits.size == 0:
            return None
        start, stop = int(hits[0]), int(hits[-1]) + 1
        box.append((start, stop))
        sub = sub[(slice(None),) * axis + (slice(start, stop),)]
    return tuple(box)


def label_boxes(volume: np.ndarray, labels: Sequence[int]) -> dict[int, Box]:
    """Bounding boxes of the given labels present in ``volume``, inside its foreground box:
    one comparison and one shrinking projection per label, or for many labels one
    ``scipy.ndimage.find_objects`` pass (label 0: the whole volume)."""
    boxes: dict[int, Box] = {}
    if 0 in labels:
        boxes[0] = tuple((0, n) for n in volume.shape)
    wanted = sorted({int(x) for x in labels if int(x) > 0})
    fg = _foreground_box(volume) if wanted else None
    if fg is None:
        return boxes
    crop = volume[tuple(slice(a, b) for a, b in fg)]
    if len(wanted) >= _FIND_OBJECTS_LABELS and wanted[-1] < 1 << 16:
        # many labels: one pass of scipy's find_objects beats a comparison per label
        from scipy import ndimage

        found = ndimage.find_objects(crop, max_label=wanted[-1])
        local: dict[int, Box | None] = {
            label: tuple((int(s.start), int(s.stop)) for s in found[label - 1])
            for label in wanted
            if found[label - 1] is not None
        }
    else:
        local = {label: _foreground_box(crop == label) for label in wanted}
    for label, box in local.items():
        if box is not None:
            boxes[label] = tuple((a + o, b + o) for (a, b), (o, _) in zip(box, fg, strict=True))
    return boxes


def union_box(boxes: Sequence[Box]) -> Box | None:
    if not boxes:
        return None
    return tuple(
        (min(b[i][0] for b in boxes), max(b[i][1] for b in boxes)) for i in range(len(boxes[0]))
    )


@lru_cache(maxsize=32)
def lattice_offsets(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray, tuple[int, ...]]:
    """The ``_SEARCH_OFFSETS`` integer offsets ``[K, ndim]`` nearest to 0 (in mm), nearest
    first, their lengths in mm ``[K]``, and their reach along each axis (voxels).

    Every lattice offset shorter than the last one listed is listed before it, which makes the
    first hit of a nearest-first scan the exact nearest point.
    """
    ndim = len(spacing)
    # a box holding the ball of _SEARCH_OFFSETS lattice points (twice its expected radius)
    ball = math.gamma(ndim / 2 + 1) / math.pi ** (ndim / 2) * _SEARCH_OFFSETS * math.prod(spacing)
    radius = 2.0 * ball ** (1.0 / ndim) + max(spacing)
    box = tuple(math.ceil(radius / s) for s in spacing)
    grids = np.meshgrid(*(np.arange(-r, r + 1) for r in box), indexing="ij")
    offsets = np.stack([g.ravel() for g in grids], axis=1)
    lengths = np.sqrt(((offsets * np.asarray(spacing)) ** 2).sum(1))
    order = np.argsort(lengths, kind="stable")[:_SEARCH_OFFSETS]
    # the box must hold every offset up to the longest kept (it does, with margin 2x)
    assert lengths[order[-1]] <= min(r * s for r, s in zip(box, spacing, strict=True))
    offsets, lengths = offsets[order], lengths[order]
    reach = tuple(int(np.abs(offsets[:, i]).max()) for i in range(ndim))
    return offsets, lengths, reach


@lru_cache(maxsize=32)
def surfel_table(spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(area per neighbourhood code [2^(2^ndim)], code weight per cell corner [2]*ndim)`` of
    the marching-cubes surface elements (MONAI's table; contour lengths in 2-D)."""
    if len(spacing) not in (2, 3):
        raise InvalidOptionError(
            f"surface='surfel' needs 2-D or 3-D volumes, got {len(spacing)}-D; use 'voxel'."
        )
    from monai.metrics.utils import get_code_to_measure_table

    table, kernel = get_code_to_measure_table(list(spacing))
    return (
        table.detach().cpu().double().numpy(),
        kernel.detach().cpu().numpy().reshape((2,) * len(spacing)).astype(np.int64),
    )


def _borders(mask: np.ndarray, slab_voxels: int = 1 << 18) -> np.ndarray:
    """Border voxels of ``mask`` (which has a ring of False around it), in place: a voxel is
    interior when its 2*ndim face neighbours are all in the mask.

    Works through slabs of about ``slab_voxels`` along the first axis, each eroded from a copy
    of its original rows plus one on either side, so the extra memory is one slab.
    """
    if mask.ndim == 1:
        inner = mask[1:-1] & mask[:-2] & mask[2:]
        mask[1:-1] &= ~inner
        return mask
    rows = max(1, slab_voxels // max(1, math.prod(mask.shape[1:])))
    core = tuple(slice(1, -1) for _ in range(mask.ndim - 1))
    above = mask[0].copy()  # the original row above the slab
    for start in range(1, mask.shape[0] - 1, rows):
        stop = min(start + rows, mask.shape[0] - 1)
        block = np.concatenate([above[None], mask[start : stop + 1]])  # rows start-1 .. stop
        above = mask[stop - 1].copy()
        mid, before, after = ((slice(lo, hi), *core) for lo, hi in ((1, -1), (0, -2), (2, None)))
        inner = block[mid] & block[before]
        inner &= block[after]
        for axis in range(1, mask.ndim):
            for lo, hi in ((0, -2), (2, None)):
                shifted = [slice(1, -1), *core]
                shifted[axis] = slice(lo, hi)
                inner &= block[tuple(shifted)]
        np.logical_not(inner, out=inner)
        rows_done = (slice(start, stop), *core)
        mask[rows_done] &= inner
    return mask


def _surfels(mask: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Surface cells of ``mask`` (ring of False around it): ``(flat index in the cell grid of
    shape mask.shape - 1, area)``. Cell ``c`` spans voxels ``c .. c+1`` along every axis."""
    table, kernel = surfel_table(spacing)
    cells = tuple(n - 1 for n in mask.shape)
    code = np.zeros(cells, dtype=np.uint8)
    for corner in np.ndindex(*kernel.shape):
        view = mask[tuple(slice(c, c + n) for c, n in zip(corner, cells, strict=True))]
        code[view] += np.uint8(kernel[corner])
    full = int(kernel.sum())
    flat = np.flatnonzero((code != 0) & (code != full))
    return flat, table[code.reshape(-1)[flat]]


def _coordinates(flat: np.ndarray, shape: tuple[int, ...], spacing: np.ndarray) -> np.ndarray:
    return np.stack(np.unravel_index(flat, shape), axis=1) * spacing


def nearest_distances(
    points: np.ndarray,
    target: np.ndarray,
    target_points: np.ndarray,
    spacing: tuple[float, ...],
) -> np.ndarray:
    """Distances (mm) from the grid points ``points`` (flat indices into ``target.shape``) to
    the nearest True cell of ``target`` (whose flat indices are ``target_points``).

    The lattice offsets within the search radius are tried nearest first over the points
    still unresolved, so a hit is the exact nearest distance; ``target`` must have a margin of
    at least the offsets' reach around every point. The rest go to a KD-tree.
    """
    offsets, lengths, _ = lattice_offsets(spacing)
    flat_offsets = offsets @ (np.asarray(target.strides) // target.itemsize)
    flat_target = target.reshape(-1)
    out = np.empty(points.size, dtype=np.float64)
    todo, where = points, np.arange(points.size)
    start, size = 0, 1
    while start < lengths.size and todo.size:
        # a block of offsets at once (1, 2, 4, ... of them): the first hit of each point
        size = min(size, max(1, _GATHER_ELEMENTS // todo.size))
        steps = flat_offsets[start : start + size]
        hits = flat_target[todo[:, None] + steps[None, :]]
        first = hits.argmax(axis=1)
        hit = hits[np.arange(todo.size), first]
        out[where[hit]] = lengths[start + first[hit]]
        miss = ~hit
        todo, where = todo[miss], where[miss]
        start, size = start + size, 2 * size
    if todo.size == 0:
        return out
    from scipy.spatial import cKDTree

    scale = np.asarray(spacing, dtype=np.float64)
    tree = cKDTree(_coordinates(target_points, target.shape, scale), leafsize=32)
    nearest = tree.query(_coordinates(todo, target.shape, scale), workers=-1)[1]
    # the length of the index offset, as the lattice's (and scipy's EDT) give it: the tree's
    # |i s - j s| can be 1 ulp off |i - j| s, and flip NSD's d <= tau at a tie
    steps = np.stack(np.unravel_index(todo, target.shape), axis=1) - np.stack(
        np.unravel_index(target_points[nearest], target.shape), axis=1
    )
    out[where] = np.sqrt(((steps * scale) ** 2).sum(1))
    return out


def work_layout(
    box: Box, spacing: tuple[float, ...]
) -> tuple[tuple[int, ...], tuple[slice, ...], tuple[slice, ...]]:
    """The working grid of a structure: ``(shape, where the box sits in it, the box in the
    volume)``. A margin of the lattice offsets' reach + 1 voxels of background around the box
    keeps every offset of every surface point (voxel or cell) inside the grid, so flat indices
    never wrap."""
    _, _, reach = lattice_offsets(spacing)
    margin = tuple(r + 1 for r in reach)
    shape = tuple(b - a + 2 * m for (a, b), m in zip(box, margin, strict=True))
    inner = tuple(slice(m, m + b - a) for (a, b), m in zip(box, margin, strict=True))
    return shape, inner, tuple(slice(a, b) for a, b in box)


def band_iou(
    pred: np.ndarray, ref: np.ndarray, spacing: tuple[float, ...], width: float
) -> float | None:
    """Boundary IoU of two masks with a False ring: bands = border | (inner EDT <= width)."""
    from scipy import ndimage

    bands = []
    for mask in (pred, ref):
        near = ndimage.distance_transform_edt(mask, sampling=spacing) <= width
        bands.append((near & mask) | _borders(mask.copy()))
    union = int(np.count_nonzero(bands[0] | bands[1]))
    return int(np.count_nonzero(bands[0] & bands[1])) / union if union else None


A = TypeVar("A")


@dataclass(frozen=True)
class ArraySteps(Generic[A]):
    """The array-specific steps of ``score_structures``'s per-structure flow, for arrays of
    type ``A`` (``NUMPY_STEPS`` here; ``boundary_torch`` has torch's).

    Attributes:
        label_boxes: ``(volume, labels) -> {label: Box}`` of the labels present.
        work_mask: ``(volume, members, shape, inner, source) -> mask``: a False grid of
            ``shape`` with ``isin(volume[source], members)`` at ``inner`` (``work_layout``).
        to_host: a mask as a numpy array (for Boundary IoU's bands).
        surface: ``(mask, spacing, surface) -> (grid, flat points, weights or None)``; may
            reuse ``mask``.
        nearest: ``nearest_distances`` for these arrays (float64 numpy out).
    """

    label_boxes: Callable[[A, Sequence[int]], dict[int, Box]]
    work_mask: Callable[
        [A, tuple[int, ...], tuple[int, ...], tuple[slice, ...], tuple[slice, ...]], A
    ]
    to_host: Callable[[A], np.ndarray]
    surface: Callable[[A, tuple[float, ...], str], tuple[A, A, np.ndarray | None]]
    nearest: Callable[[A, A, A, tuple[float, ...]], np.ndarray]


def _structure_scores(
    key: int | str,
    members: tuple[int, ...],
    prediction: A,
    reference: A,
    box: Box,
    spacing: tuple[float, ...],
    options: BoundaryOptions,
    width: float,
    steps: ArraySteps[A],
) -> BoundaryScore:
    """One label or region whose union box ``box`` is non-empty."""
    shape, inner, source = work_layout(box, spacing)
    masks = [steps.work_mask(v, members, shape, inner, source) for v in (prediction, reference)]
    pred_empty, ref_empty = (not bool(m[inner].any()) for m in masks)  # type: ignore[index]
    tolerance = options.tolerance(key)
    if pred_empty or ref_empty:
        return empty_scores(key, pred_empty, ref_empty, options, tolerance)
    biou = None
    if "boundary_iou" in options.metrics:
        biou = band_iou(steps.to_host(masks[0]), steps.to_host(masks[1]), spacing, width)
    found = []
    while masks:  # each mask is dropped once its surface is found
        found.append(steps.surface(masks.pop(0), spacing, options.surface))
    (grid_p, points_p, weights_p), (grid_r, points_r, weights_r) = found
    d_pred = steps.nearest(points_p, grid_r, points_r, spacing)
    d_ref = steps.nearest(points_r, grid_p, points_p, spacing)
    values: dict[str, float | None] = dict(
        metrics_from_distances(d_pred, weights_p, d_ref, weights_r, options, tolerance)
    )
    if "boundary_iou" in options.metrics:
        values["boundary_iou"] = biou
    ordered = {m: values[m] for m in options.metrics}
    counts = (len(points_p), len(points_r))  # type: ignore[arg-type]
    return BoundaryScore(key, ordered, {}, None, tolerance, counts)


def structures(
    labels: Sequence[int], regions: Mapping[str, Sequence[int]] | None
) -> list[tuple[int | str, tuple[int, ...]]]:
    """``[(key, member labels)]``: each label alone, then each region."""
    items: list[tuple[int | str, tuple[int, ...]]] = [(int(x), (int(x),)) for x in labels]
    if regions:
        items += list(check_regions(regions).items())
    return items


def score_structures(
    prediction: A,
    reference: A,
    labels: Sequence[int],
    options: BoundaryOptions,
    spacing: Sequence[float] | None,
    regions: Mapping[str, Sequence[int]] | None,
    steps: ArraySteps[A],
) -> list[BoundaryScore]:
    """The flow of ``boundary_scores`` on checked integer label arrays of any type, with that
    type's ``steps``: per structure its union box of both volumes, then ``_structure_scores``.

    Raises:
        ShapeMismatchError: the shapes differ.
        InvalidOptionError: a bad spacing, or ``surface="surfel"`` on a volume not 2-D / 3-D.
    """
    shape = tuple(prediction.shape)  # type: ignore[attr-defined]
    if shape != tuple(reference.shape):  # type: ignore[attr-defined]
        raise ShapeMismatchError(
            f"prediction and reference shapes differ: {shape} and {tuple(reference.shape)}."  # type: ignore[attr-defined]
        )
    scale = check_spacing(spacing, len(shape))
    if options.surface == "surfel":
        surfel_table(scale)
    items = structures(labels, regions)
    wanted = sorted({m for _, members in items for m in members})
    boxes = [steps.label_boxes(v, wanted) for v in (prediction, reference)]
    width = options.width(shape, scale)
    scores = []
    for key, members in items:
        box = union_box([b[m] for b in boxes for m in members if m in b])
        if box is None:
            scores.append(empty_scores(key, True, True, options, options.tolerance(key)))
        else:
            scores.append(
                _structure_scores(
                    key, members, prediction, reference, box, scale, options, width, steps
                )
            )
    return scores


def _work_mask(
    volume: np.ndarray,
    members: tuple[int, ...],
    shape: tuple[int, ...],
    inner: tuple[slice, ...],
    source: tuple[slice, ...],
) -> np.ndarray:
    work = np.zeros(shape, dtype=bool)
    region_mask(volume[source], members, out=work[inner])
    return work


def _surface(
    mask: np.ndarray, spacing: tuple[float, ...], surface: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    if surface == "voxel":
        grid = _borders(mask)
        return grid, np.flatnonzero(grid), None
    flat, area = _surfels(mask, spacing)
    grid = np.zeros(tuple(n - 1 for n in mask.shape), dtype=bool)
    grid.reshape(-1)[flat] = True
    return grid, flat, area


#: numpy's steps of ``score_structures``
NUMPY_STEPS: ArraySteps[np.ndarray] = ArraySteps(
    label_boxes, _work_mask, np.asarray, _surface, nearest_distances
)


def boundary_scores(
    prediction: np.ndarray,
    reference: np.ndarray,
    labels: Sequence[int],
    options: BoundaryOptions,
    *,
    spacing: Sequence[float] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> list[BoundaryScore]:
    """Boundary metrics of each label of ``labels`` and each region of ``regions`` (numpy).

    Args:
        prediction, reference: integer label maps of the same shape ``[*spatial]``.
        labels: label ids to score (label 0 is scored as a structure too if listed).
        options: metrics and conventions.
        spacing: mm per voxel along each axis (None: 1 mm).
        regions: ``{name: label ids}``, each scored as the union of its labels.

    Returns:
        One ``BoundaryScore`` per label, then per region, in that order.

    Raises:
        ShapeMismatchError: the shapes differ.
        NonIntegerLabelsError: a volume is not integer (or bool).
        InvalidOptionError: a bad spacing, or ``surface="surfel"`` on a volume not 2-D / 3-D.
    """
    prediction = _check_labels(np.asarray(prediction), "prediction")
    reference = _check_labels(np.asarray(reference), "reference")
    return score_structures(prediction, reference, labels, options, spacing, regions, NUMPY_STEPS)


def check_spacing(spacing: Sequence[float] | None, ndim: int) -> tuple[float, ...]:
    """``ndim`` positive finite spacings in mm (None: 1 mm each)."""
    if spacing is None:
        return (1.0,) * ndim
    expected = f"spacing must be {ndim} positive numbers (mm per voxel along each spatial axis)"
    if isinstance(spacing, (str, bytes)) or not isinstance(spacing, (Sequence, np.ndarray)):
        raise InvalidOptionError(f"{expected}, got {spacing!r}.")
    if not all(_is_real(s) for s in spacing):
        raise InvalidOptionError(f"{expected}, got {tuple(spacing)!r}.")
    values = tuple(float(s) for s in spacing)
    if len(values) != ndim or not all(math.isfinite(s) and s > 0 for s in values):
        raise InvalidOptionError(f"{expected}, got {tuple(spacing)}.")
    return values
