"""From ``(input, target, mask)`` as a user passes them to the tensors the counts are taken of.

The steps follow MONAI's ``DiceLoss`` so that the MONAI-named losses return MONAI's numbers:

1. shapes are checked (``B, C, *spatial``; ``target`` ``B, 1, *`` labels or ``B, C, *``; ``mask``
   ``B, 1, *`` or ``1, 1, *``), and, unless ``check_values=False``, the values (labels integral
   and in ``[0, C)`` or ``ignore_index``, soft targets and masks in ``[0, 1]``, no NaN; a NaN
   prediction is caught later on its counts, which costs no extra pass);
2. the activation (``sigmoid`` / ``softmax`` over channels / ``other_act``);
3. ``to_onehot_y``: labels ``B, 1, *`` become one-hot ``B, C, *``;
4. the keep mask ``B, 1, *``: voxels labelled ``ignore_index`` (MONAI's rules, also for one-hot
   targets) times the user's ``mask``;
5. ``include_background=False`` drops channel 0;
6. prediction and target are multiplied by the keep mask, so masked voxels add nothing to any
   count (also for soft labels: both sides are 0 there).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch

__all__ = [
    "InputOptions",
    "Prepared",
    "TensorShapeError",
    "check_counts",
    "is_hard",
    "one_hot",
    "prepare_inputs",
]


class TensorShapeError(ValueError, AssertionError):
    """The tensors given to a loss (``input``, ``target``, ``mask``) have shapes that do not fit
    together; the message names both shapes.

    A ``ValueError`` like every input error of the losses, and an ``AssertionError`` because that
    is what MONAI's losses raise for the same mistake (code catching MONAI's error keeps
    working). Not to be confused with :class:`monai_jdt.scoring.ShapeMismatchError`, the scoring
    core's error (with its ``code``) for a prediction and a reference volume of different shapes.
    """


@dataclass(frozen=True)
class InputOptions:
    """The input-handling arguments of a loss (MONAI's names and meaning)."""

    include_background: bool = True
    to_onehot_y: bool = False
    sigmoid: bool = False
    softmax: bool = False
    other_act: Callable[[torch.Tensor], torch.Tensor] | None = None
    ignore_index: int | None = None
    check_values: bool = True


class Prepared(NamedTuple):
    """Tensors ready for the counts.

    Attributes:
        x: activated prediction ``[B, C', *spatial]`` (``C'`` = C without background if dropped),
            zero where masked.
        y: float target of the same shape, zero where masked.
        keep: ``[B or 1, 1, *spatial]`` float keep mask (1 = counted), None when nothing is
            masked.
        labels: the label map ``[B, 1, *spatial]`` when the target was given as labels and
            one-hot encoded here, else None.
        nonnegative: ``x`` is a sigmoid or softmax output (and ``y``, in [0, 1], is checked or
            vouched for), so ``|x|_1 = sum(x)`` and ``|y|_1 = sum(y)``.
        binary_target: ``y`` holds only 0 and 1 (one-hot encoded here and masked by a 0/1
            mask, or seen by the value check); None when nobody looked (see ``is_hard``).
        hard_target: the target holds only 0 and 1 where the keep mask is positive (a hard
            target under a soft mask is hard, though ``y`` is not); None when nobody looked,
            and then it is ``is_hard`` (the keep mask is 0/1).
        y_sums: ``y`` summed over the spatial axes ``[B, C']`` where the value check took the
            sums on its way (large CPU targets), else None.
    """

    x: torch.Tensor
    y: torch.Tensor
    keep: torch.Tensor | None
    labels: torch.Tensor | None
    nonnegative: bool
    binary_target: bool | None
    hard_target: bool | None
    y_sums: torch.Tensor | None = None


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check_shapes(
    input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None, opts: InputOptions
) -> None:
    for name, t in (("input", input), ("target", target), ("mask", mask)):
        if t is not None and not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}.")
    if not input.is_floating_point():
        raise TypeError(f"input must be a floating point tensor, got {input.dtype}.")
    if input.ndim < 3:
        raise TensorShapeError(
            f"input must be B, C, *spatial with at least one spatial dim, got {_shape(input)}."
        )
    if target.ndim != input.ndim:
        raise TensorShapeError(
            "the number of dimensions for input and target should be the same, got shape "
            f"{_shape(input)} and {_shape(target)}; a label map must be B, 1, *spatial."
        )
    n_ch = input.shape[1]
    if target.shape[0] != input.shape[0] or target.shape[2:] != input.shape[2:]:
        raise TensorShapeError(
            f"target {_shape(target)} and input {_shape(input)} must have the same batch size "
            "and spatial shape."
        )
    if opts.to_onehot_y and n_ch > 1 and target.shape[1] != 1:
        raise TensorShapeError(
            f"to_onehot_y=True needs a label map target with 1 channel (B, 1, *spatial), got "
            f"target {_shape(target)} for input {_shape(input)}."
        )
    if mask is not None and (
        mask.ndim != input.ndim
        or mask.shape[1] != 1
        or mask.shape[0] not in (1, input.shape[0])
        or mask.shape[2:] != input.shape[2:]
    ):
        raise TensorShapeError(
            f"mask must be B, 1, *spatial or 1, 1, *spatial for input {_shape(input)}, "
            f"got {_shape(mask)}."
        )


def _check_unit(name: str, t: torch.Tensor) -> None:
    """Every value of ``t`` in [0, 1] (NaN fails too: it propagates through min and max)."""
    lo, hi = (v.item() for v in torch.aminmax(t.detach()))
    if not (lo >= 0 and hi <= 1):
        hint = "for a label map pass to_onehot_y=True, or " if name == "target" else ""
        raise ValueError(
            f"{name} values must lie in [0, 1], got min {lo:.6g} and max {hi:.6g}; {hint}"
            "check_values=False skips this check."
        )


#: elements per block and thread of the CPU value check (1 MiB of float32 per thread: a block
#: stays in the threads' caches)
_CHECK_BLOCK = 1 << 18
#: the integer dtype of the same width as a float dtype, and the bits of +inf in it
_BITS = {
    torch.float32: (torch.int32, 0x7F800000),
    torch.float64: (torch.int64, 0x7FF0000000000000),
}


def _semi(y: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``y - y^2`` in one fused pass (into ``out`` where given)."""
    return torch.addcmul(y, y, y, value=-1.0, out=out)


class _Scan(NamedTuple):
    """What one pass of the value check learns about a target ``y`` ``[B, C, *spatial]``."""

    in_range: bool  # every value in [0, 1], no NaN
    hard: bool  # every value 0 or 1 (meaningful when in_range)
    sums: torch.Tensor | None  # y summed over the spatial axes, [B, C], where taken on the way


def _row_matrices(t: torch.Tensor) -> list[torch.Tensor] | None:
    """``t`` ``[B, C, *spatial]`` as contiguous ``[rows, voxels]`` matrices in (image, class)
    order: one for a contiguous ``t``, one per image for e.g. ``t[:, 1:]`` of a contiguous
    tensor; None for other layouts."""
    if t.is_contiguous():
        return [t.reshape(t.shape[0] * t.shape[1], -1)]
    items = t.unbind(0)
    if all(item.is_contiguous() for item in items):
        return [item.reshape(item.shape[0], -1) for item in items]
    return None


def _check_block() -> int:
    """Elements per block of the CPU value check: ``_CHECK_BLOCK`` per intra-op thread (each
    op on a block is split among the threads; fewer, larger blocks also mean fewer parallel
    regions, which a machine shared with other jobs makes costly)."""
    return _CHECK_BLOCK * max(1, torch.get_num_threads())


def _scan_blocks(matrices: list[torch.Tensor], ints: torch.dtype) -> tuple[int, int, torch.Tensor]:
    """Min and max of the bits of ``q = y - y^2`` (as signed integers) and the row sums of
    ``y``, given as row matrices, in blocks of at most ``_check_block()`` elements.

    A block is a few whole rows or a piece of one row; it goes through one small buffer that
    stays in cache, and its row sums are taken while it is there, so ``q`` is never
    materialised at full size and the counts need no second pass over ``y`` for ``sum(y)``.
    """
    n, size = matrices[0].shape[1], _check_block()
    buffer = torch.empty(size, dtype=matrices[0].dtype)
    lows, highs, sums = [], [], []
    for rows in matrices:
        if n <= size:
            blocks = list(rows.split(size // n))
        else:
            blocks = [piece[None] for row in rows for piece in row.split(size)]
        for block in blocks:
            q = _semi(block, out=buffer[: block.numel()].view(block.shape))
            low, high = torch.aminmax(q.view(ints))
            lows.append(low)
            highs.append(high)
            sums.append(block.sum(1))
    row_sums = torch.cat(sums)
    if n > size:  # every row came in the same number of pieces, one after another
        row_sums = row_sums.view(-1, -(-n // size)).sum(1)
    return int(torch.stack(lows).min().item()), int(torch.stack(highs).max().item()), row_sums


def _softness(y: torch.Tensor) -> _Scan:
    """Whether every value of ``y`` ``[B, C, *spatial]`` lies in [0, 1] (no NaN), whether all
    are 0 or 1, and (large CPU targets) their sums per (image, class).

    Both tests come from ``q = y - y^2``, exactly: the rounded ``q`` is +0 for 0 and 1, > 0 for
    every ``v`` in (0, 1), and < 0 or NaN outside [0, 1]. They are read off the min and max of
    ``q``'s bits as integers (faster than a float min/max): floats >= +0 keep their order
    there, +inf and NaN come above every finite value and anything with the sign bit is
    negative. A sign bit or a NaN (an invalid target, or -0.0 in ``y``) is decided again on the
    floats. On CPU a large ``y`` goes through in cache-sized blocks (see ``_scan_blocks``);
    elsewhere in one pass.
    """
    y = y.detach()
    if y.dtype in _BITS:
        ints, inf_bits = _BITS[y.dtype]
        matrices = _row_matrices(y) if y.device.type == "cpu" else None
        sums = None
        if matrices is None or y.numel() <= _check_block():
            low, high = (int(v.item()) for v in torch.aminmax(_semi(y).view(ints)))
        else:
            low, high, row_sums = _scan_blocks(matrices, ints)
            sums = row_sums.view(y.shape[:2])
        if low >= 0 and high < inf_bits:
            return _Scan(True, high == 0, sums)
    lo_q, hi_q = (v.item() for v in torch.aminmax(_semi(y)))
    return _Scan(lo_q >= 0, hi_q == 0, None)  # NaN: neither


def _check_target(y: torch.Tensor) -> _Scan:
    """Target values in [0, 1] (ValueError otherwise); what the check learnt on the way."""
    scan = _softness(y)
    if not scan.in_range:
        _check_unit("target", y)  # raises, naming the target's own range
    return scan


def _check_labels(labels: torch.Tensor, n_classes: int, ignore_index: int | None) -> None:
    """Labels integral and in ``[0, n_classes)`` or equal to ``ignore_index``.

    The common case costs one ``aminmax`` pass (plus one for float labels' fractions); the
    voxel-wise test runs only when the range holds other values, e.g. ``ignore_index``.
    """
    labels = labels.detach()
    lo, hi = (v.item() for v in torch.aminmax(labels))
    fractional = labels.is_floating_point() and bool(torch.count_nonzero(torch.frac(labels)))
    if lo >= 0 and hi < n_classes and not fractional:  # NaN fails the comparisons
        return
    valid = (labels >= 0) & (labels < n_classes)
    if labels.is_floating_point():
        valid &= labels == torch.round(labels)
    if ignore_index is not None:
        valid |= labels == ignore_index
    invalid = ~valid
    if torch.count_nonzero(invalid):
        bad = torch.unique(labels[invalid])[:5].tolist()
        allowed = f"integers in [0, {n_classes})"
        if ignore_index is not None:
            allowed += f" or ignore_index={ignore_index}"
        raise ValueError(f"target labels must be {allowed}, got values such as {bad}.")


def _ignore_mask(
    target: torch.Tensor, ignore_index: int | None, dtype: torch.dtype
) -> torch.Tensor | None:
    """``[B, 1, *]`` keep mask of ``ignore_index`` on the target as given (MONAI's rules), of
    ``dtype``.

    Label maps: keep where the label differs. Multi-channel targets: an index ``k`` in
    ``[0, C)`` weighs each voxel by ``1 - target[:, k]`` (0 on that class's voxels of a one-hot
    target; ``1 - y_k`` of a soft one, e.g. label smoothing); any other value drops the voxels
    where every channel is 0.
    """
    if ignore_index is None:
        return None
    if target.shape[1] == 1:
        keep = target != ignore_index
    elif 0 <= ignore_index < target.shape[1]:
        return 1 - target[:, ignore_index : ignore_index + 1].to(dtype)
    else:
        keep = target.sum(dim=1, keepdim=True) > 0
    return keep.to(dtype)


def one_hot(labels: torch.Tensor, n_classes: int, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, *]`` integral labels in ``[0, n_classes)`` to one-hot ``[B, n_classes, *]``."""
    shape = (labels.shape[0], n_classes, *labels.shape[2:])
    return torch.zeros(shape, dtype=dtype, device=labels.device).scatter_(1, labels.long(), 1.0)


def _float_dtype(input: torch.Tensor) -> torch.dtype:
    return torch.float64 if input.dtype == torch.float64 else torch.float32


def _activate(input: torch.Tensor, opts: InputOptions) -> torch.Tensor:
    if opts.sigmoid:
        input = torch.sigmoid(input)
    if opts.softmax:
        if input.shape[1] == 1:
            warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=4)
        else:
            input = torch.softmax(input, 1)
    if opts.other_act is not None:
        input = opts.other_act(input)
    return input


def prepare_inputs(
    input: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None,
    opts: InputOptions,
) -> Prepared:
    """Validate, activate, one-hot encode, mask and drop the background (see module docstring)."""
    _check_shapes(input, target, mask, opts)
    n_ch = input.shape[1]
    onehot = opts.to_onehot_y and n_ch > 1
    if opts.to_onehot_y and not onehot:
        warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
    if opts.check_values:
        # NaN in the prediction shows in its counts, see check_counts
        if mask is not None and mask.dtype != torch.bool:
            _check_unit("mask", mask)
        if onehot:
            _check_labels(target, n_ch, opts.ignore_index)

    dtype = _float_dtype(input)
    keep = _ignore_mask(target, opts.ignore_index, dtype)
    if mask is not None:
        keep = (mask if keep is None else keep * mask).to(dtype)
    # a 0/1 keep mask leaves a 0/1 target 0/1; a soft one (a soft mask, or 1 - y_k of a soft
    # target) does not, though the target itself may be hard
    soft_keep = (mask is not None and mask.dtype != torch.bool) or (
        opts.ignore_index is not None
        and target.shape[1] > 1
        and 0 <= opts.ignore_index < target.shape[1]
        and target.dtype != torch.bool
    )

    x = _activate(input, opts)
    labels = None
    if onehot:
        labels = target
        if opts.ignore_index is not None and not 0 <= opts.ignore_index < n_ch:
            labels = torch.where(target == opts.ignore_index, torch.zeros_like(target), target)
        y = one_hot(labels, n_ch, dtype)
    else:
        y = target if target.dtype == dtype else target.to(dtype)

    if not opts.include_background:
        if n_ch == 1:
            warnings.warn(
                "single channel prediction, `include_background=False` ignored.", stacklevel=3
            )
        else:
            x, y = x[:, 1:], y[:, 1:]
    if y.shape != x.shape:
        raise TensorShapeError(
            f"ground truth has different shape ({y.shape}) from input ({x.shape}); pass "
            "to_onehot_y=True for a B, 1, *spatial label map."
        )
    given = y
    if keep is not None:
        x, y = x * keep, y * keep
    binary: bool | None = None  # whether y holds only 0 and 1, where known without a pass
    y_sums = None
    if onehot and not soft_keep:
        binary = True
    elif opts.check_values and not onehot:
        scan = _check_target(y)
        binary, y_sums = scan.hard, scan.sums
    # whether the target is 0/1 where it counts: y itself, unless a soft keep mask made it soft
    hard_target = True if onehot else binary
    if soft_keep and not onehot and binary is not True:
        assert keep is not None  # soft_keep implies a keep mask
        hard_target = _softness(torch.where(keep > 0, given, 0)).hard
    # targets lie in [0, 1]: checked above, or vouched for with check_values=False
    nonnegative = opts.sigmoid or (opts.softmax and n_ch > 1)
    return Prepared(x, y, keep, labels, nonnegative, binary, hard_target, y_sums)


def check_counts(px: torch.Tensor) -> None:
    """NaN in the prediction (or from infinite logits) reaches its per-class sums ``px``."""
    if not torch.isfinite(px).all():
        raise ValueError(
            "input contains NaN or infinite values (after the activation); pass "
            "check_values=False to skip this check."
        )


def is_hard(prepared: Prepared) -> bool:
    """Whether the (masked) target holds only 0 and 1: hard labels, one-hot or a label map."""
    if prepared.binary_target is not None:
        return prepared.binary_target
    return _softness(prepared.y).hard
