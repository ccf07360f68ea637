"""Boundary metrics with torch on any device (CUDA): the steps of
``monai_jdt.scoring.boundary``, on tensors.

Per label or region: its bounding box (shrinking ``any`` projections), the masks in a working
grid with a background margin, borders by slicing-based erosion (or marching-cubes cells for
``surface="surfel"``), then for every surface point the nearest point of the other surface:
all lattice offsets of the search ball are gathered at once for a chunk of points
(``[points, K]`` booleans; the first hit, nearest first, is the exact nearest distance, in
float64 from the offsets table) and the points with no hit there go to a brute-force minimum
over the other surface (``torch.cdist`` without the matrix-product shortcut, float32, chunked
to bound memory). Only the two distance vectors (and the surfel areas) leave the device; the
metrics are then the numpy path's (``metrics_from_distances``), so both paths agree to float32
rounding of the far distances. Boundary IoU's bands use scipy's exact EDT on the host.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from monai_jdt.scoring.boundary import (
    ArraySteps,
    BoundaryOptions,
    BoundaryScore,
    Box,
    lattice_offsets,
    score_structures,
    surfel_table,
)
from monai_jdt.scoring.errors import NonIntegerLabelsError

__all__ = ["boundary_scores_torch", "nearest_distances_torch"]

#: booleans (or floats) per chunk of the gather / brute-force steps
_CHUNK_ELEMENTS = 1 << 25


def _foreground_box(mask: torch.Tensor) -> Box | None:
    box: list[tuple[int, int]] = []
    sub = mask
    for axis in range(mask.ndim):
        reduced = sub
        for other in reversed(range(mask.ndim)):
            if other != axis:
                reduced = reduced.any(dim=other)
        hits = torch.nonzero(reduced).reshape(-1)
        if hits.numel() == 0:
            return None
        start, stop = int(hits[0]), int(hits[-1]) + 1
        box.append((start, stop))
        sub = sub.narrow(axis, start, stop - start)
    return tuple(box)


def _label_boxes(volume: torch.Tensor, labels: Sequence[int]) -> dict[int, Box]:
    boxes: dict[int, Box] = {}
    if 0 in labels:
        boxes[0] = tuple((0, n) for n in volume.shape)
    wanted = sorted({int(x) for x in labels if int(x) > 0})
    fg = _foreground_box(volume != 0) if wanted else None
    if fg is None:
        return boxes
    crop = volume[tuple(slice(a, b) for a, b in fg)]
    for label in wanted:
        box = _foreground_box(crop == label)
        if box is not None:
            boxes[label] = tuple((a + o, b + o) for (a, b), (o, _) in zip(box, fg, strict=True))
    return boxes


def _borders(mask: torch.Tensor) -> torch.Tensor:
    core = tuple(slice(1, -1) for _ in range(mask.ndim))
    inner = mask[core].clone()
    for axis in range(mask.ndim):
        for lo, hi in ((0, -2), (2, None)):
            shifted = list(core)
            shifted[axis] = slice(lo, hi)
            inner &= mask[tuple(shifted)]
    mask[core] &= ~inner
    return mask


def _surfels(
    mask: torch.Tensor, spacing: tuple[float, ...]
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
    """``(cell grid of surface cells, their flat indices, their areas on the host)``."""
    table, kernel = surfel_table(spacing)
    cells = tuple(n - 1 for n in mask.shape)
    code = torch.zeros(cells, dtype=torch.int32, device=mask.device)
    for corner in np.ndindex(*kernel.shape):
        view = mask[tuple(slice(c, c + n) for c, n in zip(corner, cells, strict=True))]
        code += view.to(torch.int32) * int(kernel[corner])
    grid = (code != 0) & (code != int(kernel.sum()))
    flat = torch.nonzero(grid.reshape(-1)).reshape(-1)
    areas = table[code.reshape(-1)[flat].cpu().numpy()]
    return grid, flat, areas


def _indices(flat: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """The grid indices ``[N, ndim]`` (int64) of flat indices into ``shape``."""
    coords = []
    rest = flat
    for n in reversed(shape):
        coords.append(rest % n)
        rest = torch.div(rest, n, rounding_mode="floor")
    return torch.stack(coords[::-1], dim=1)


def _coordinates(flat: torch.Tensor, shape: tuple[int, ...], spacing: torch.Tensor) -> torch.Tensor:
    return _indices(flat, shape).to(spacing.dtype) * spacing


def nearest_distances_torch(
    points: torch.Tensor,
    target: torch.Tensor,
    target_points: torch.Tensor,
    spacing: tuple[float, ...],
) -> np.ndarray:
    """Distances (mm, float64 on the host) from the grid points ``points`` (flat indices into
    ``target.shape``) to the nearest True cell of ``target`` (flat indices ``target_points``);
    ``target`` needs the margin of ``work_layout``."""
    offsets, lengths, _ = lattice_offsets(spacing)
    strides = torch.tensor(target.stride(), dtype=torch.int64)
    steps = (torch.from_numpy(offsets) @ strides).to(target.device)
    flat_target = target.reshape(-1)
    first = torch.empty(points.numel(), dtype=torch.int64, device=target.device)
    found = torch.empty(points.numel(), dtype=torch.bool, device=target.device)
    chunk = max(1, _CHUNK_ELEMENTS // steps.numel())
    for start in range(0, points.numel(), chunk):
        part = points[start : start + chunk]
        hits = flat_target[part[:, None] + steps[None, :]]
        found[start : start + chunk] = hits.any(dim=1)
        # argmax returns the first maximum: the nearest offset that hits
        first[start : start + chunk] = hits.to(torch.uint8).argmax(dim=1)
    found_host, first_host = found.cpu().numpy(), first.cpu().numpy()
    out = np.where(found_host, lengths[first_host], np.nan)
    far = np.flatnonzero(~found_host)
    if far.size:
        scale = torch.tensor(spacing, dtype=torch.float32, device=target.device)
        far_points = points[torch.from_numpy(far).to(target.device)]
        queries = _coordinates(far_points, target.shape, scale)
        others = _coordinates(target_points, target.shape, scale)
        rows = max(1, _CHUNK_ELEMENTS // max(1, others.shape[0]))
        nearest = torch.cat(
            [
                torch.cdist(
                    queries[i : i + rows], others, compute_mode="donot_use_mm_for_euclid_dist"
                ).argmin(dim=1)
                for i in range(0, queries.shape[0], rows)
            ]
        )
        # the distance of the nearest point from its index offset, in float64 as the
        # lattice's lengths (the float32 coordinates only choose the point)
        steps = _indices(far_points, target.shape) - _indices(target_points[nearest], target.shape)
        out[far] = np.sqrt(((steps.cpu().numpy() * np.asarray(spacing)) ** 2).sum(1))
    return out


def _check_labels(volume: torch.Tensor, name: str) -> torch.Tensor:
    if volume.dtype == torch.bool:
        return volume.to(torch.uint8)
    if volume.is_floating_point() or volume.is_complex():
        raise NonIntegerLabelsError(
            f"the {name} label volume must hold integers, got dtype {volume.dtype}."
        )
    return volume


def _work_mask(
    volume: torch.Tensor,
    members: tuple[int, ...],
    shape: tuple[int, ...],
    inner: tuple[slice, ...],
    source: tuple[slice, ...],
) -> torch.Tensor:
    work = torch.zeros(shape, dtype=torch.bool, device=volume.device)
    work[inner] = torch.isin(volume[source], torch.tensor(members, device=volume.device))
    return work


def _surface(
    mask: torch.Tensor, spacing: tuple[float, ...], surface: str
) -> tuple[torch.Tensor, torch.Tensor, np.ndarray | None]:
    if surface == "voxel":
        grid = _borders(mask)
        return grid, torch.nonzero(grid.reshape(-1)).reshape(-1), None
    return _surfels(mask, spacing)


#: torch's steps of ``score_structures``
_TORCH_STEPS: ArraySteps[torch.Tensor] = ArraySteps(
    _label_boxes, _work_mask, lambda mask: mask.cpu().numpy(), _surface, nearest_distances_torch
)


def boundary_scores_torch(
    prediction: torch.Tensor,
    reference: torch.Tensor,
    labels: Sequence[int],
    options: BoundaryOptions,
    *,
    spacing: Sequence[float] | None = None,
    regions: Mapping[str, Sequence[int]] | None = None,
) -> list[BoundaryScore]:
    """``boundary_scores`` on torch label tensors, computed on their device (both tensors must
    be on the same one). Same arguments, results (to float32 rounding of distances beyond the
    lattice search) and errors."""
    prediction = _check_labels(prediction, "prediction")
    reference = _check_labels(reference, "reference").to(prediction.device)
    return score_structures(prediction, reference, labels, options, spacing, regions, _TORCH_STEPS)
