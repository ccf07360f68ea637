"""From confusion counts to scores: the Tversky index and its aggregation levels.

One definition for every caller, on numpy arrays or torch tensors alike: each function takes
its operations from the arrays' namespace, ``numpy`` itself for numpy arrays and
``array_api_compat``'s wrapper of torch for tensors (torch's own functions differ from the
array API in names and return types). The losses and the MONAI metric pass tensors (gradients
flow through every function), the scoring core passes float64 numpy arrays, so scoring label
maps never imports torch. Masks are boolean arrays.

Index
-----
The Tversky index of one (image, class) is ``(tp + s_nr) / (tp + alpha*fp + beta*fn + s_dr)``:
Jaccard for alpha = beta = 1, Dice for alpha = beta = 0.5.

Aggregation levels (Wang et al., NeurIPS 2023, "fine-grained IoU")
-------------------------------------------------------------------
Given per-(image, class) counts ``[N, C]`` and an ``active`` mask ``[N, C]`` (the class is
present in that image's target, or every class when all are counted):

* ``"batch"`` (mIoU^D): sum the counts over all images (also those where the class is absent:
  their false positives count), one ratio per class, mean over the classes active in any image.
* ``"image"`` (mIoU^I): one ratio per (image, class), mean over that image's active classes,
  then mean over the images that have any active class.
* ``"class"`` (mIoU^C): one ratio per (image, class), mean over the images where the class is
  active, then mean over those classes.
"""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from types import ModuleType
from typing import Any, Literal, NamedTuple

import numpy as np

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "Array",
    "SoftCounts",
    "aggregate_scores",
    "aggregate_values",
    "masked_mean",
    "scored_pairs",
    "tversky_index",
    "worst_mean",
]

#: a numpy array or a torch tensor (the functions here take either, and give the same kind)
Array = Any

Aggregation = Literal["batch", "image", "class"]
AGGREGATIONS: tuple[Aggregation, ...] = ("batch", "image", "class")


def _namespace(*arrays: Array) -> ModuleType:
    """``numpy`` for numpy arrays (its main namespace has every function used here, also in
    numpy 1.x; ``array_api_compat``'s wrapper of it would take 0.2 s to import); the array-API
    namespace of anything else (torch tensors)."""
    if all(isinstance(a, np.ndarray | np.generic) for a in arrays):
        return np
    from array_api_compat import array_namespace

    namespace: ModuleType = array_namespace(*arrays)
    return namespace


class SoftCounts(NamedTuple):
    """Soft confusion counts, each of the shape of the reduced input (e.g. ``[B, C]``): numpy
    arrays or torch tensors."""

    tp: Array
    fp: Array
    fn: Array

    def sum(self, dim: int, keepdim: bool = False) -> SoftCounts:
        """Pool the counts over ``dim`` (e.g. the batch, for the dataset level)."""
        xp = _namespace(*self)
        return SoftCounts(*(xp.sum(c, axis=dim, keepdims=keepdim) for c in self))


def tversky_index(
    counts: SoftCounts,
    alpha: float,
    beta: float,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    empty: float = float("nan"),
) -> Array:
    """``(tp + smooth_nr) / (tp + alpha*fp + beta*fn + smooth_dr)``, elementwise.

    Where the denominator is 0 (a class empty in both prediction and target, no smoothing) the
    index is ``empty``: NaN by default (callers skip it), 1.0 for losses (nothing to get
    wrong). The division is guarded so that such entries give a zero, never a NaN, gradient.
    """
    tp, fp, fn = counts
    xp = _namespace(tp, fp, fn)
    numerator = tp + smooth_nr
    denominator = tp + alpha * fp + beta * fn + smooth_dr
    defined = denominator != 0
    safe = xp.where(defined, denominator, xp.ones_like(denominator))
    return xp.where(defined, numerator / safe, xp.full_like(numerator, empty))


def masked_mean(values: Array, mask: Array, dim: int | None = None) -> Array:
    """Mean of ``values`` where ``mask`` is true (over ``dim``, or over everything).

    Entries outside the mask never reach the result or its gradient, even when they are NaN.
    Where the mask selects nothing the mean is NaN (with a zero gradient).
    """
    xp = _namespace(values, mask)
    mask = xp.broadcast_to(mask, values.shape)
    zeros = xp.zeros_like(values)
    total = xp.sum(xp.where(mask, values, zeros), axis=dim)
    n = xp.sum(xp.where(mask, xp.ones_like(values), zeros), axis=dim)
    mean = total / xp.where(n > 0, n, xp.ones_like(n))
    return xp.where(n > 0, mean, xp.full_like(mean, math.nan))


def aggregate_values(values: Array, active: Array, level: Aggregation) -> Array:
    """Mean of per-class or per-(image, class) ``values`` at one aggregation level.

    Args:
        values: for ``"batch"``, one value per class (any shape with ``C`` elements, e.g. ``[C]``
            or ``[1, C]``) computed from the counts pooled over the images; for ``"image"`` and
            ``"class"``, one value per (image, class), ``[N, C]``.
        active: boolean ``[N, C]``: which (image, class) pairs take part. At the batch level a
            class takes part when it is active in any image.
        level: ``"batch"`` (mean over active classes), ``"image"`` (mean over each image's
            active classes, then over images) or ``"class"`` (mean over the images where the
            class is active, then over classes).

    Returns:
        A 0-dim array; NaN (with a zero gradient) when no pair is active. Inactive entries never
        reach the result or its gradient.

    Raises:
        ValueError: an unknown ``level``, or ``values`` and ``active`` not both ``[N, C]`` at
            the image or class level.
    """
    xp = _namespace(values, active)
    if level == "batch":
        return masked_mean(xp.reshape(values, (-1,)), xp.any(active, axis=0))
    if values.shape != active.shape:
        raise ValueError(
            f"at the {level!r} level values and active must both be [N, C], got "
            f"{tuple(values.shape)} and {tuple(active.shape)}."
        )
    if level == "image":
        return masked_mean(masked_mean(values, active, dim=1), xp.any(active, axis=1))
    if level == "class":
        return masked_mean(masked_mean(values, active, dim=0), xp.any(active, axis=0))
    raise ValueError(f"level must be one of {AGGREGATIONS}, got {level!r}.")


def scored_pairs(counts: SoftCounts, level: Aggregation) -> Array:
    """``[N, C]`` bool: the (image, class) pairs a fine-grained score of Wang et al. (NeurIPS
    2023) averages over, from ``[N, C]`` counts.

    At the dataset level (``"batch"``, mIoU^D) every class with a count, ``tp + fp + fn > 0``
    in any image: a class predicted where no reference holds it scores 0 and lowers the mean
    (with soft predictions any predicted mass counts). At the image and class levels the pairs
    whose reference holds the class, ``tp + fn > 0``: a false positive alone gives no score
    for that image.
    """
    if level == "batch":
        return (counts.tp + counts.fp + counts.fn) > 0
    return (counts.tp + counts.fn) > 0


def aggregate_scores(
    counts: SoftCounts,
    active: Array,
    level: Aggregation,
    alpha: float,
    beta: float,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    empty: float = float("nan"),
) -> Array:
    """Scalar Tversky-family score of per-(image, class) ``counts`` at one aggregation level.

    Args:
        counts: ``SoftCounts`` with arrays of shape ``[N, C]`` (N images, C classes).
        active: boolean ``[N, C]``: which (image, class) pairs take part (e.g. present in the
            reference); pass all-true to count every class.
        level: ``"batch"`` (mIoU^D), ``"image"`` (mIoU^I) or ``"class"`` (mIoU^C).
        alpha, beta, smooth_nr, smooth_dr: the Tversky parameters.
        empty: the index of a pair with a zero denominator (see ``tversky_index``).

    Returns:
        A 0-dim array; NaN when no pair is active.

    Raises:
        ValueError: ``counts`` and ``active`` not both ``[N, C]``, or an unknown ``level``.
    """
    if active.shape != counts.tp.shape or counts.tp.ndim != 2:
        raise ValueError(
            f"counts and active must both be [N, C], got {tuple(counts.tp.shape)} and "
            f"{tuple(active.shape)}."
        )
    if level not in AGGREGATIONS:
        raise ValueError(f"level must be one of {AGGREGATIONS}, got {level!r}.")
    # at the batch level every image's counts pool, also where the class is absent: its false
    # positives count
    pooled = counts.sum(0) if level == "batch" else counts
    scores = tversky_index(pooled, alpha, beta, smooth_nr, smooth_dr, empty)
    return aggregate_values(scores, active, level)


def worst_mean(scores: Array, keep: Array, q: float) -> float:
    """Mean of the lowest ``ceil(q/100 * n)`` (at least one) of the ``n`` values
    ``scores[keep]`` (1-D, ``keep`` boolean); NaN if there are none. ``q`` is read as the
    decimal it is written as and the product is exact: in floats ``28 / 100 * 25`` is
    ``7.000000000000001``, whose ceiling would keep 8 of 25 values."""
    xp = _namespace(scores, keep)
    values = xp.sort(scores[keep])
    n = values.shape[0]
    if n == 0:
        return math.nan
    k = max(1, math.ceil(Fraction(Decimal(repr(float(q)))) * n / 100))
    return float(xp.mean(values[:k]))
