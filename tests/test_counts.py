"""The shared computation: soft counts, the Tversky ratio, the three aggregation levels."""

import numpy as np
import pytest
import torch

from monai_jdt.counts import SoftCounts, aggregate_scores, soft_counts, tversky_index


def _np_counts(x: np.ndarray, y: np.ndarray):
    """Classic float64 counts per (image, class) of [N, C, *] arrays."""
    axes = tuple(range(2, x.ndim))
    tp = (x * y).sum(axes)
    return tp, x.sum(axes) - tp, y.sum(axes) - tp


def test_semimetric_equals_classic_on_hard_labels():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 4, 5, 6, generator=g)
    y = (torch.rand(3, 4, 5, 6, generator=g) > 0.5).float()
    semi = soft_counts(x, y, dims=(2, 3), semimetric=True)
    classic = soft_counts(x, y, dims=(2, 3), semimetric=False)
    tp, fp, fn = _np_counts(x.double().numpy(), y.double().numpy())
    for got, want in zip(semi, (tp, fp, fn), strict=True):
        np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-5)
    for a, b in zip(semi, classic, strict=True):
        torch.testing.assert_close(a, b)


def test_soft_labels_counts_reach_zero_fp_fn_only_at_equality():
    g = torch.Generator().manual_seed(1)
    y = torch.rand(2, 3, 8, generator=g)
    same = soft_counts(y, y, dims=(2,))
    torch.testing.assert_close(same.fp, torch.zeros(2, 3))
    torch.testing.assert_close(same.fn, torch.zeros(2, 3))
    # the classic intersection does not: sum(y*y) < sum(y) for soft y
    classic = soft_counts(y, y, dims=(2,), semimetric=False)
    assert (classic.fp > 1e-3).all()


def test_half_precision_accumulates_in_float32():
    x = torch.ones(1, 1, 300, 300, dtype=torch.float16)
    c = soft_counts(x, x, dims=(2, 3))
    assert c.tp.dtype == torch.float32
    assert c.tp.item() == 90000.0  # beyond float16's range (65504)


def test_tversky_index_empty_class_is_nan_or_given_value_with_finite_gradient():
    tp = torch.zeros(2, requires_grad=True)
    counts = SoftCounts(tp, torch.zeros(2), torch.zeros(2))
    assert torch.isnan(tversky_index(counts, 1.0, 1.0)).all()
    one = tversky_index(counts, 1.0, 1.0, empty=1.0)
    assert one.tolist() == [1.0, 1.0]
    one.sum().backward()
    assert torch.isfinite(tp.grad).all()


def _np_levels(tp, fp, fn, active):
    """Independent float64 mIoU^D / ^I / ^C (Jaccard) of [N, C] counts."""
    n, c = tp.shape
    cls = [k for k in range(c) if active[:, k].any()]
    d = np.mean([tp[:, k].sum() / (tp[:, k] + fp[:, k] + fn[:, k]).sum() for k in cls])
    iou = tp / (tp + fp + fn)
    per_image = [
        np.mean([iou[i, k] for k in range(c) if active[i, k]]) for i in range(n) if active[i].any()
    ]
    per_class = [np.mean([iou[i, k] for i in range(n) if active[i, k]]) for k in cls]
    return d, np.mean(per_image), np.mean(per_class)


@pytest.mark.parametrize("seed", range(5))
def test_aggregation_levels_match_numpy(seed):
    rng = np.random.default_rng(seed)
    x = rng.random((4, 3, 10))
    y = (rng.random((4, 3, 10)) > 0.6).astype(float)
    y[1, 2] = 0  # class 2 absent from image 1
    y[:, 0] = 0  # class 0 absent everywhere
    tp, fp, fn = _np_counts(x, y)
    active = y.sum(-1) > 0
    want = _np_levels(tp, fp, fn, active)
    counts = soft_counts(torch.from_numpy(x), torch.from_numpy(y), dims=(2,))
    for level, w in zip(("batch", "image", "class"), want, strict=True):
        got = aggregate_scores(counts, torch.from_numpy(active), level, 1.0, 1.0)
        assert got.dtype == torch.float64
        np.testing.assert_allclose(got.item(), w, rtol=1e-12)


def test_aggregation_rejects_bad_shapes_and_levels():
    counts = SoftCounts(torch.ones(2, 3), torch.ones(2, 3), torch.ones(2, 3))
    with pytest.raises(ValueError, match="level"):
        aggregate_scores(counts, torch.ones(2, 3, dtype=torch.bool), "pixel", 1, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"\[N, C\]"):
        aggregate_scores(counts, torch.ones(3, 2, dtype=torch.bool), "batch", 1, 1)
    with pytest.raises(ValueError, match="norm"):
        soft_counts(torch.ones(1), torch.ones(1), dims=(0,), norm=3)


@pytest.mark.parametrize("norm", [1, 2])
@pytest.mark.parametrize(
    ("shape", "dims"),
    [
        ((2, 3, 4, 5), (2, 3)),  # few rows, trailing axes: one dot product per row
        ((70, 2, 6), (2,)),  # many rows: product and sum
        ((3, 4, 5), (0, 2)),  # axes that are not trailing
    ],
)
def test_classic_counts_values_and_gradients(norm, shape, dims):
    """The classic counts' fused backward against numpy float64 values and torch's gradcheck."""
    g = torch.Generator().manual_seed(norm)
    x = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(shape, generator=g, dtype=torch.float64, requires_grad=True)
    counts = soft_counts(x, y, dims=dims, norm=norm, semimetric=False)
    xn, yn = x.detach().numpy(), y.detach().numpy()
    tp = (xn * yn).sum(dims)
    px, py = (xn, yn) if norm == 1 else (xn * xn, yn * yn)
    for got, want in zip(counts, (tp, px.sum(dims) - tp, py.sum(dims) - tp), strict=True):
        np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12)

    def weighted(a, b):
        c = soft_counts(a, b, dims=dims, norm=norm, semimetric=False)
        return 2 * c.tp + 0.3 * c.fp + 0.7 * c.fn  # every count reaches the gradient

    assert torch.autograd.gradcheck(weighted, (x, y))
    # a differentiable backward (create_graph=True) keeps the row values as tensors
    assert torch.autograd.gradgradcheck(weighted, (x, y))
    # the same values in a non-contiguous layout give the same counts
    strided = x.detach().transpose(0, 1).contiguous().transpose(0, 1)
    assert not strided.is_contiguous()
    swapped = soft_counts(strided, y.detach(), dims=dims, norm=norm, semimetric=False)
    torch.testing.assert_close(swapped.tp, counts.tp.detach())
