"""Synthetic volumes for the scoring tests, and the float64 numpy answers they are checked
against (computed here from boolean masks, independently of monai_jdt.scoring)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    """Boolean mask of the voxels inside an axis-aligned ellipsoid."""
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return np.asarray(inside <= 1.0)


def organ_pair(
    shape: Sequence[int], n_labels: int, seed: int = 0, shift: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    """A reference with ``n_labels`` ellipsoids (ids 1..n, later ones painted over earlier
    ones) and a prediction with the same ellipsoids shifted by ``shift`` voxels on axis 0."""
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, dtype=np.int32)
    prediction = np.zeros(shape, dtype=np.int32)
    for label in range(1, n_labels + 1):
        radii = rng.uniform(0.1, 0.25, size=3) * np.asarray(shape)
        center = rng.uniform(0.3, 0.7, size=3) * np.asarray(shape)
        reference[ellipsoid(shape, center, radii)] = label
        moved = center + np.array([shift, 0, 0])
        prediction[ellipsoid(shape, moved, radii * rng.uniform(0.85, 1.15))] = label
    return prediction, reference


def numpy_counts(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[int, int, int, int]:
    """``(tp, fp, fn, tn)`` of one label from boolean masks."""
    p, r = pred == label, ref == label
    return (
        int(np.sum(p & r)),
        int(np.sum(p & ~r)),
        int(np.sum(~p & r)),
        int(np.sum(~p & ~r)),
    )


def numpy_scores(pred: np.ndarray, ref: np.ndarray, label: int) -> dict[str, float]:
    """Float64 Dice / Jaccard / precision / recall of one label (NaN when undefined)."""
    tp, fp, fn, _ = (float(c) for c in numpy_counts(pred, ref, label))

    def ratio(num: float, den: float) -> float:
        return num / den if den else float("nan")

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }
