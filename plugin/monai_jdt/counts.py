"""The one computation every loss and metric of monai-jdt shares.

Every loss and metric reduces a prediction ``x`` and a target ``y`` (same shape, channel-first
``B, C, *spatial``, values in [0, 1]) to per-(image, class) soft counts ``tp, fp, fn`` and then
to a ratio of the Tversky family.

Soft counts
-----------
With the *semimetric* identity, for a norm order ``p`` (1 by default)::

    tp = (|x|_p^p + |y|_p^p - |x - y|_p^p) / 2
    fp = |x|_p^p - tp
    fn = |y|_p^p - tp

For hard labels ``y`` in {0, 1} and probabilities ``x`` in [0, 1] (p = 1) this is exactly the
classic ``tp = sum(x * y)``; for soft labels it is the form whose loss is 0 exactly when
``x == y``. With p = 2 the identity reduces to ``tp = sum(x * y)`` with squared norms, which is
MONAI's ``squared_pred=True``. The *classic* counts (``semimetric=False``) are
``tp = sum(x * y)``, ``fp = |x|_p^p - tp``, ``fn = |y|_p^p - tp``.

Counts are accumulated in float32 (float64 inputs stay float64), also under fp16/bf16 autocast,
so large 3D volumes and empty classes never overflow or give NaN.

The ratios of these counts and their aggregation levels (mIoU^D / ^I / ^C) are in
:mod:`monai_jdt.aggregation` (torch-free, on numpy arrays too); their names are re-exported here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from monai_jdt.aggregation import (
    AGGREGATIONS,
    Aggregation,
    SoftCounts,
    aggregate_scores,
    aggregate_values,
    masked_mean,
    scored_pairs,
    tversky_index,
)

__all__ = [
    "AGGREGATIONS",
    "Aggregation",
    "SoftCounts",
    "aggregate_scores",
    "aggregate_values",
    "masked_mean",
    "scored_pairs",
    "soft_counts",
    "tversky_index",
]


def _accumulation_dtype(t: torch.Tensor) -> torch.dtype:
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def _unreduce(g: torch.Tensor, ndim: int, dims: tuple[int, ...]) -> torch.Tensor:
    """View a reduced ``g`` with size-1 axes at ``dims`` so it broadcasts to the input."""
    shape = list(g.shape)
    for d in sorted(dims):
        shape.insert(d, 1)
    return g.reshape(shape)


#: at most this many rows take one BLAS call each (see ``_rows``)
_ROW_LIMIT = 64


def _rows(t: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor | None:
    """``t`` as a ``[rows, n]`` view, one row per entry of the reduced shape, where row-wise
    kernels pay: ``dims`` are the trailing axes of a contiguous CPU tensor and the other axes
    hold few rows (``B * C`` of a loss). None elsewhere (GPU, other layouts, many rows)."""
    n_rows = math.prod(t.shape[: t.ndim - len(dims)])
    trailing = sorted(dims) == list(range(t.ndim - len(dims), t.ndim))
    if t.device.type == "cpu" and trailing and 0 < n_rows <= _ROW_LIMIT and t.is_contiguous():
        return t.view(n_rows, -1)
    return None


def _dot(a: torch.Tensor, b: torch.Tensor, dims: tuple[int, ...]) -> torch.Tensor:
    """``sum(a * b)`` over ``dims`` (a and b of one shape and dtype).

    Row-wise (see ``_rows``) each row is one ``torch.dot``: a BLAS dot product reads both
    inputs once and writes no ``a * b`` temporary, about twice as fast as the product and its
    sum. Elsewhere the product and its sum.
    """
    rows_a, rows_b = _rows(a, dims), _rows(b, dims)
    if rows_a is None or rows_b is None:
        return (a * b).sum(dim=dims)
    out = torch.stack([torch.dot(p, q) for p, q in zip(rows_a, rows_b, strict=True)])
    return out.reshape(a.shape[: a.ndim - len(dims)])


def _shift_scale(
    shift: torch.Tensor, scale: torch.Tensor, t: torch.Tensor, dims: tuple[int, ...]
) -> torch.Tensor:
    """``shift + scale * t``, with ``shift`` and ``scale`` of the reduced shape (one value per
    row) broadcast over ``dims``.

    ``addcmul`` with two broadcast operands takes torch's scalar (unvectorised) CPU loop, 2 to 3
    times slower than a vectorised pass; row-wise (see ``_rows``, and only outside a
    differentiable backward, as the row values are read out as numbers) each row is one
    vectorised ``torch.add(shift_r, t_r, alpha=scale_r)``.
    """
    rows = _rows(t, dims) if not torch.is_grad_enabled() else None
    if rows is None:
        n = t.ndim
        return torch.addcmul(_unreduce(shift, n, dims), _unreduce(scale, n, dims), t)
    out = torch.empty_like(t)
    for out_r, t_r, shift_r, scale_r in zip(
        out.view_as(rows), rows, shift.reshape(-1), scale.reshape(-1).tolist(), strict=True
    ):
        torch.add(shift_r, t_r, alpha=scale_r, out=out_r)
    return out


def _norm1(
    y: torch.Tensor, dims: tuple[int, ...], y_total: torch.Tensor | None, nonnegative: bool
) -> torch.Tensor:
    """``|y|_1`` over ``dims``: the caller's ``y_total`` where given (a copy: an output of an
    autograd function must not be one of its inputs), else ``sum(y)`` or ``sum(|y|)``."""
    if y_total is not None:
        return y_total.to(dtype=y.dtype, copy=True)
    return y.sum(dim=dims) if nonnegative else y.abs().sum(dim=dims)


class _L1SemimetricCounts(torch.autograd.Function):
    """``(|x|_1, |y|_1, tp)`` over ``dims``, ``tp = (|x|_1 + |y|_1 - |x - y|_1) / 2``, with a
    lean backward.

    For inputs known to be >= 0, ``tp = sum(min(x, y))`` (``min(a, b) = (a + b - |a - b|) / 2``)
    costs one pass like the classic ``sum(x * y)``. The backward recomputes ``sign(x - y)`` in
    place into the gradient instead of keeping ``x - y`` alive::

        dtp/dx = (sign(x) - sign(x - y)) / 2     (sign(x) = 1 for x >= 0)
        dtp/dy = (sign(y) + sign(x - y)) / 2
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        dims: tuple[int, ...],
        nonnegative: bool,
        y_total: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, y)
        ctx.dims, ctx.nonnegative = dims, nonnegative
        py = _norm1(y, dims, y_total, nonnegative)
        if nonnegative:
            return x.sum(dim=dims), py, torch.minimum(x, y).sum(dim=dims)
        px = x.abs().sum(dim=dims)
        return px, py, (px + py - (x - y).abs_().sum(dim=dims)) / 2

    @staticmethod
    def backward(
        ctx: Any, g_px: torch.Tensor, g_py: torch.Tensor, g_tp: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x, y = ctx.saved_tensors
        dims, n = ctx.dims, x.ndim
        g_px, g_py, half = (_unreduce(g, n, dims) for g in (g_px, g_py, g_tp / 2))
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.sub(x, y).sign_().mul_(-half)
            if ctx.nonnegative:
                grad_x.add_(g_px + half)
            else:
                grad_x.addcmul_(x.sign(), g_px + half)
        if ctx.needs_input_grad[1]:
            grad_y = torch.sub(x, y).sign_().mul_(half)
            if ctx.nonnegative:
                grad_y.add_(g_py + half)
            else:
                grad_y.addcmul_(y.sign(), g_py + half)
        return grad_x, grad_y, None, None, None


class _ClassicCounts(torch.autograd.Function):
    """``(|x|_p^p, |y|_p^p, sum(x * y))`` over ``dims`` with plain sums for p = 1 (the classic
    counts, and the semimetric ones where they are equal), with a fused backward.

    Autograd would take a product, a broadcast and a sum of partial gradients (three full-size
    passes) for ``dtp/dx = y`` plus ``dpx/dx = 1`` (p = 1) or ``2 x`` (p = 2); here each input's
    gradient is one pass (``_shift_scale``; two for p = 2)::

        grad_x = g_px * (1 or 2 x) + g_tp * y
        grad_y = g_py * (1 or 2 y) + g_tp * x
    """

    @staticmethod
    def forward(
        ctx: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        dims: tuple[int, ...],
        norm: int,
        y_total: torch.Tensor | None,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ctx.save_for_backward(x, y)
        ctx.dims, ctx.norm = dims, norm
        tp = _dot(x, y, dims)
        if norm == 1:
            return x.sum(dim=dims), _norm1(y, dims, y_total, True), tp
        return _dot(x, x, dims), _dot(y, y, dims), tp

    @staticmethod
    def backward(
        ctx: Any, g_px: torch.Tensor, g_py: torch.Tensor, g_tp: torch.Tensor
    ) -> tuple[torch.Tensor | None, torch.Tensor | None, None, None, None]:
        x, y = ctx.saved_tensors
        dims, n = ctx.dims, x.ndim

        def grad(own: torch.Tensor, other: torch.Tensor, g_own: torch.Tensor) -> torch.Tensor:
            if ctx.norm == 1:
                return _shift_scale(g_own, g_tp, other, dims)
            return torch.mul(own, 2 * _unreduce(g_own, n, dims)).addcmul_(
                _unreduce(g_tp, n, dims), other
            )

        grad_x = grad(x, y, g_px) if ctx.needs_input_grad[0] else None
        grad_y = grad(y, x, g_py) if ctx.needs_input_grad[1] else None
        return grad_x, grad_y, None, None, None


def soft_counts(
    x: torch.Tensor,
    y: torch.Tensor,
    dims: Sequence[int],
    norm: int = 1,
    semimetric: bool = True,
    nonnegative: bool = False,
    y_total: torch.Tensor | None = None,
) -> SoftCounts:
    """Soft ``tp, fp, fn`` of ``x`` against ``y``, summed over ``dims``.

    Args:
        x: prediction, e.g. ``[B, C, *spatial]`` probabilities.
        y: target of the same shape (hard or soft labels).
        dims: the axes to sum over, e.g. ``range(2, x.ndim)`` for per-(image, class) counts.
        norm: the norm order p, 1 or 2.
        semimetric: True for the semimetric identity (correct for soft labels), False for the
            classic ``sum(x * y)`` intersection (with plain sums ``sum(x)``, ``sum(y)`` for
            p = 1, as MONAI computes it).
        nonnegative: the caller guarantees ``x >= 0`` and ``y >= 0`` (e.g. a softmax output
            and a checked target), so ``|x|_1 = sum(x)``: saves passes (p = 1 semimetric only).
        y_total: ``|y|_1`` over ``dims`` (``sum(y)`` for a target in [0, 1]) where the caller
            already has it, e.g. taken by a value check on its way; the shape of the result.
            Saves a pass over ``y`` for p = 1 (not used for p = 2).

    Returns:
        ``SoftCounts(tp, fp, fn)`` in float32 (float64 for float64 inputs), shaped as ``x``
        without ``dims``.

    Raises:
        ValueError: ``norm`` other than 1 or 2, or ``x`` and ``y`` of different shapes.
    """
    if norm not in (1, 2):
        raise ValueError(f"norm must be 1 or 2, got {norm!r}.")
    if x.shape != y.shape:
        raise ValueError(
            f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    dims = tuple(d % x.ndim for d in dims)
    dtype = _accumulation_dtype(x)
    with torch.autocast(device_type=x.device.type, enabled=False):
        x = x.to(dtype)
        y = y.to(dtype)
        if norm == 1 and semimetric:
            px, py, tp = _L1SemimetricCounts.apply(x, y, dims, nonnegative, y_total)
        else:
            # p = 2: (|x|^2 + |y|^2 - |x-y|^2) / 2 == sum(x*y) exactly, so both forms agree.
            px, py, tp = _ClassicCounts.apply(x, y, dims, norm, y_total)
    return SoftCounts(tp, px - tp, py - tp)
