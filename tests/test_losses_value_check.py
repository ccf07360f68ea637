"""The target value check on large CPU targets, which goes through them in cache-sized blocks
(whole rows of one image and class, or pieces of a long row), reads the integer bits of
``y - y^2`` and takes the row sums of ``y`` on the way: wherever a value sits (first voxel, a
block boundary, the last, short block) it decides hard against soft labels and refuses values
outside [0, 1] exactly as a single pass over the whole target would, and the counts built on
its sums are the right ones.

Known answers: MONAI's ``DiceLoss`` for hard targets, and float64 numpy counts (classic with
the present classes for hard targets, semimetric with every class for soft ones) for JDTLoss's
defaults.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from monai.losses import DiceLoss

import monai_jdt.losses._inputs as inputs
from monai_jdt.losses import DiceSemimetricLoss, JDTLoss

BLOCK = 1 << 18  # elements per block, whatever the number of threads (see _blocks)
SHAPE = (2, 3, 48, 48, 48)  # 6 rows (image, class) of 110,592 values, several per block
N_VALUES = math.prod(SHAPE)
ROW = math.prod(SHAPE[2:])
FIRST_BLOCK = BLOCK // ROW * ROW
ABSENT = 2  # the class that a hard target of ``_target`` never holds
#: flat positions of an odd value: first, last of the first block, first of the second, last
POSITIONS = [0, FIRST_BLOCK - 1, FIRST_BLOCK, N_VALUES - 1]
LONG_ROWS = (1, 3, 82, 82, 82)  # rows of 551,368 values, each in pieces (the last short)


@pytest.fixture(autouse=True)
def _blocks(monkeypatch):
    """Blocks of ``BLOCK`` elements (the check scales its block with the number of threads)."""
    monkeypatch.setattr(inputs, "_check_block", lambda: BLOCK)


def _logits(dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(shape, generator=g, dtype=dtype)


def _target(dtype: torch.dtype = torch.float32, shape: tuple[int, ...] = SHAPE) -> torch.Tensor:
    """One-hot float target of classes 0 and 1 only (class ``ABSENT`` is empty)."""
    g = torch.Generator().manual_seed(1)
    labels = torch.randint(0, 2, (shape[0], 1, *shape[2:]), generator=g)
    return torch.zeros(shape, dtype=dtype).scatter_(1, labels, 1.0)


def _with(target: torch.Tensor, position: int, value: float) -> torch.Tensor:
    out = target.clone()
    out.view(-1)[position] = value
    return out


def _jdt_default_answer(logits: torch.Tensor, target: torch.Tensor, first: int = 0) -> float:
    """JDTLoss's defaults in float64 numpy from channel ``first`` on: Jaccard of the
    batch-pooled counts, smoothing 1e-5; classic counts over the present classes for a 0/1
    target, semimetric counts over every class otherwise."""
    x = torch.softmax(logits.double(), 1).numpy()[:, first:]
    y = target.double().numpy()[:, first:]
    spatial = (0, 2, 3, 4)
    hard = bool(np.all((y == 0) | (y == 1)))
    tp = (x * y).sum(spatial) if hard else np.minimum(x, y).sum(spatial)
    fp, fn = x.sum(spatial) - tp, y.sum(spatial) - tp
    index = (tp + 1e-5) / (tp + fp + fn + 1e-5)
    active = y.max(axis=spatial) > 0.01 if hard else np.ones(len(tp), dtype=bool)
    return float(np.mean(1.0 - index[active]))


def _value_and_grad(loss_fn, logits, target):
    x = logits.clone().requires_grad_(True)
    value = loss_fn(x, target)
    value.backward()
    return value.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hard_large_target_gives_monai_value_and_gradient(dtype):
    logits, target = _logits(dtype), _target(dtype)
    assert inputs._softness(target).sums is not None  # the blocked scan (it takes the sums)
    ours = _value_and_grad(DiceSemimetricLoss(softmax=True), logits, target)
    theirs = _value_and_grad(DiceLoss(softmax=True), logits, target)
    torch.testing.assert_close(ours, theirs)
    # -0.0 is a 0 too (its bits carry the sign, so it takes the float path)
    negative_zero = _with(target, POSITIONS[2], 1.0)
    negative_zero.view(-1)[POSITIONS[-1]] = -0.0
    assert torch.signbit(negative_zero.view(-1)[POSITIONS[-1]])
    torch.testing.assert_close(
        _value_and_grad(DiceSemimetricLoss(softmax=True), logits, negative_zero),
        _value_and_grad(DiceLoss(softmax=True), logits, negative_zero),
    )
    got = JDTLoss(softmax=True)(logits, negative_zero).item()  # hard: the empty class left out
    assert got == pytest.approx(_jdt_default_answer(logits, negative_zero), rel=1e-5)


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("value", [0.5, 2.0**-149, 1.0 - 2.0**-24])
def test_one_soft_value_anywhere_makes_the_target_soft(position, value):
    """A single value strictly between 0 and 1, even the smallest subnormal or the largest
    float below 1, switches JDTLoss's defaults to semimetric counts over every class."""
    logits, hard = _logits(), _target()
    soft = _with(hard, position, value)
    assert not torch.all((soft == 0) | (soft == 1))
    values = {}
    for name, target in (("hard", hard), ("soft", soft)):
        values[name] = JDTLoss(softmax=True)(logits, target).item()
        assert values[name] == pytest.approx(_jdt_default_answer(logits, target), rel=1e-5)
    # the empty class counts for the soft target only: the two values differ plainly
    assert values["soft"] > values["hard"] + 0.01


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize(
    "value", [1.0 + 2.0**-23, -(2.0**-149), math.nan, math.inf, -math.inf, 3.0]
)
def test_values_outside_unit_interval_are_refused_anywhere(position, value):
    target = _with(_target(), position, value)
    with pytest.raises(ValueError, match=r"target values must lie in \[0, 1\]"):
        DiceSemimetricLoss(softmax=True)(_logits(), target)
    # check_values=False trusts the data: no error
    DiceSemimetricLoss(softmax=True, check_values=False)(_logits(), target)


def test_non_contiguous_targets_are_checked_whole():
    """Without the background channel the target is a strided view, checked per batch item; a
    transposed target is checked in one pass. Either way every value is seen."""
    logits, target = _logits(), _target()
    last = (1, ABSENT, 47, 47, 47)  # the last voxel, in a kept channel
    assert inputs._softness(target[:, 1:]).sums is not None  # blocked, per image
    assert inputs._softness(target.transpose(2, 4)).sums is None  # one pass
    dice_kept = DiceSemimetricLoss(softmax=True, include_background=False)
    torch.testing.assert_close(
        dice_kept(logits, target), DiceLoss(softmax=True, include_background=False)(logits, target)
    )
    bad, soft = target.clone(), target.clone()
    bad[last], soft[last] = -1.0, 0.25
    with pytest.raises(ValueError, match="target values"):
        dice_kept(logits, bad)
    kept = JDTLoss(softmax=True, include_background=False)(logits, soft).item()
    assert kept == pytest.approx(_jdt_default_answer(logits, soft, first=1), rel=1e-5)

    def transposed(t: torch.Tensor) -> torch.Tensor:
        return t.transpose(2, 4)

    assert not transposed(target).is_contiguous()
    torch.testing.assert_close(
        DiceSemimetricLoss(softmax=True)(transposed(logits), transposed(target)),
        DiceLoss(softmax=True)(transposed(logits), transposed(target)),
    )
    with pytest.raises(ValueError, match="target values"):
        DiceSemimetricLoss(softmax=True)(transposed(logits), transposed(bad))
    got = JDTLoss(softmax=True)(transposed(logits), transposed(soft)).item()
    assert got == pytest.approx(_jdt_default_answer(logits, soft), rel=1e-5)


def test_rows_longer_than_a_block():
    """A row (one image and class) longer than a block goes through in pieces; its sum is put
    together from theirs."""
    logits, target = _logits(shape=LONG_ROWS), _target(shape=LONG_ROWS)
    row = math.prod(LONG_ROWS[2:])
    assert row > BLOCK
    torch.testing.assert_close(inputs._softness(target).sums, target.sum((2, 3, 4)))
    torch.testing.assert_close(
        _value_and_grad(DiceSemimetricLoss(softmax=True), logits, target),
        _value_and_grad(DiceLoss(softmax=True), logits, target),
    )
    for position in (BLOCK - 1, BLOCK, row, 3 * row - 1):
        soft = _with(target, position, 0.5)
        got = JDTLoss(softmax=True)(logits, soft).item()
        assert got == pytest.approx(_jdt_default_answer(logits, soft), rel=1e-5)
        with pytest.raises(ValueError, match="target values"):
            JDTLoss(softmax=True)(logits, _with(target, position, 1.5))


@pytest.mark.parametrize("block", [300, 2500])  # pieces of rows; two rows per block
def test_small_blocks_cover_every_value(monkeypatch, block):
    """Many blocks and a short last one (a block size that does not divide the size)."""
    monkeypatch.setattr(inputs, "_check_block", lambda: block)
    logits = _logits()[:, :, :10, :10, :10].contiguous()
    target = _target()[:, :, :10, :10, :10].contiguous()
    torch.testing.assert_close(inputs._softness(target).sums, target.sum((2, 3, 4)))
    torch.testing.assert_close(
        _value_and_grad(DiceSemimetricLoss(softmax=True), logits, target),
        _value_and_grad(DiceLoss(softmax=True), logits, target),
    )
    for position in (0, block - 1, block, target.numel() - 1):
        with pytest.raises(ValueError, match="target values"):
            DiceSemimetricLoss(softmax=True)(logits, _with(target, position, 1.25))
        soft = _with(target, position, 0.75)
        assert JDTLoss(softmax=True)(logits, soft).item() == pytest.approx(
            _jdt_default_answer(logits, soft), rel=1e-5
        )
