"""Numerics: 2D and 3D, half precision under autocast, absent classes, finite gradients."""

from __future__ import annotations

import pytest
import torch

from monai_jdt.counts import soft_counts
from monai_jdt.losses import (
    DiceSemimetricLoss,
    GeneralizedDiceSemimetricLoss,
    JaccardMetricLoss,
    JDTCELoss,
    JDTLoss,
    TverskySemimetricLoss,
)

ALL_LOSSES = [
    lambda **kw: JDTLoss(alpha=0.3, beta=0.7, **kw),
    lambda **kw: JaccardMetricLoss(**kw),
    lambda **kw: DiceSemimetricLoss(**kw),
    lambda **kw: TverskySemimetricLoss(**kw),
    lambda **kw: GeneralizedDiceSemimetricLoss(**kw),
    lambda **kw: JDTCELoss(**kw),
]


def _labels(shape, n_classes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_classes, (shape[0], 1, *shape[2:]), generator=g)


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("spatial", [(8, 8), (4, 5, 6), (12,)])
def test_any_number_of_spatial_dims_and_finite_gradients(make, spatial):
    shape = (2, 3, *spatial)
    logits = torch.randn(shape, generator=torch.Generator().manual_seed(1), requires_grad=True)
    loss = make(to_onehot_y=True, softmax=True)(logits, _labels(shape, 3))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    assert logits.grad.abs().sum() > 0


@pytest.mark.parametrize("make", ALL_LOSSES)
@pytest.mark.parametrize("aggregation", ["batch", "image"])
@pytest.mark.parametrize("smooth", [0.0, 1e-5])
def test_absent_classes_never_give_nan(make, aggregation, smooth):
    """Classes absent from target and (saturated) prediction, an empty image, no smoothing."""
    logits = torch.full((2, 4, 5, 5), -30.0)
    logits[:, 0] = 30.0  # the prediction is all background
    logits.requires_grad_(True)
    target = torch.zeros(2, 1, 5, 5)
    target[1, 0, :2] = 1  # image 1 has some class 1; classes 2, 3 are absent everywhere
    for classes in ("all", "present"):
        kwargs = {"aggregation": aggregation, "smooth_nr": smooth, "smooth_dr": smooth}
        if not isinstance(make(), JDTCELoss):
            kwargs["classes"] = classes
        for background in (True, False):
            loss = make(to_onehot_y=True, softmax=True, include_background=background, **kwargs)
            value = loss(logits, target)
            assert torch.isfinite(value), (classes, background)
            (grad,) = torch.autograd.grad(value, logits)
            assert torch.isfinite(grad).all(), (classes, background)


def test_no_active_class_gives_zero_not_nan():
    logits = torch.randn(1, 3, 4, 4, requires_grad=True)
    target = torch.zeros(1, 1, 4, 4)  # only background, and the background is left out
    loss = JDTLoss(to_onehot_y=True, softmax=True, include_background=False, classes="present")
    value = loss(logits, target)
    assert value.item() == 0.0
    value.backward()
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("gamma", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("log_loss", [False, True])
def test_gamma_and_log_loss_keep_gradients_finite_at_perfect_and_zero_overlap(gamma, log_loss):
    target = torch.zeros(1, 2, 4)
    target[:, 0, :2] = 1
    target[:, 1, 2:] = 1
    for pred in (target.clone(), 1 - target):  # perfect, then zero overlap
        x = pred.clone().requires_grad_(True)
        loss = JDTLoss(gamma=gamma, log_loss=log_loss, smooth_nr=0.0, smooth_dr=0.0)
        value = loss(x, target)
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(x.grad).all()


def test_bfloat16_autocast_accumulates_in_float32():
    torch.manual_seed(0)
    conv = torch.nn.Conv3d(2, 4, 1)
    image = torch.randn(2, 2, 16, 16, 16)
    target = _labels((2, 4, 16, 16, 16), 4)
    for make in (JDTLoss, DiceSemimetricLoss, JDTCELoss):
        loss = make(to_onehot_y=True, softmax=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = conv(image)
            assert logits.dtype == torch.bfloat16
            value = loss(logits, target)
        assert value.dtype == torch.float32
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in conv.parameters())
        reference = loss(conv(image).float(), target)
        assert value.item() == pytest.approx(reference.item(), rel=2e-2)
        conv.zero_grad()


def test_half_inputs_with_many_voxels_do_not_overflow():
    # 64^3 voxels per class: sums beyond float16's range (65504) stay exact enough in float32
    x = torch.full((1, 2, 64, 64, 64), 0.5, dtype=torch.float16)
    y = torch.zeros_like(x)
    y[:, 0] = 1
    value = JaccardMetricLoss(classes="all", smooth_nr=0.0, smooth_dr=0.0)(x, y)
    # class 0: tp = n/2, fp = 0, fn = n/2; class 1: tp = 0, fp = n/2 -> (0.5 + 1) / 2
    assert value.dtype == torch.float32
    assert value.item() == pytest.approx(0.75, abs=1e-6)


@pytest.mark.parametrize("nonnegative", [False, True])
def test_semimetric_counts_gradients_match_finite_differences(nonnegative):
    g = torch.Generator().manual_seed(3)
    x = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    y = torch.rand(2, 3, 5, generator=g, dtype=torch.float64)
    if not nonnegative:
        x = x - 0.5  # signs of x matter for |x|_1
    x.requires_grad_(True)
    y.requires_grad_(True)

    def counts(a, b):
        return torch.stack(tuple(soft_counts(a, b, (2,), nonnegative=nonnegative)))

    assert torch.autograd.gradcheck(counts, (x, y))


def test_semimetric_counts_gradient_equals_plain_autograd_of_the_identity():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(2, 3, 6, 6, generator=g, requires_grad=True)
    y = torch.rand(2, 3, 6, 6, generator=g)
    weights = torch.rand(3, 2, 3, generator=g)
    tp, fp, fn = soft_counts(x, y, (2, 3), nonnegative=True)
    (got,) = torch.autograd.grad((torch.stack((tp, fp, fn)) * weights).sum(), x)
    px, py, d = x.sum((2, 3)), y.sum((2, 3)), (x - y).abs().sum((2, 3))
    tp2 = (px + py - d) / 2
    ref = torch.stack((tp2, px - tp2, py - tp2))
    (want,) = torch.autograd.grad((ref * weights).sum(), x)
    torch.testing.assert_close(got, want)


def test_norm_two_is_monai_squared_pred_and_reflexive_on_soft_labels():
    p = torch.rand(2, 3, 7, generator=torch.Generator().manual_seed(5))
    assert JDTLoss(norm=2, smooth_nr=0.0, smooth_dr=0.0, classes="all")(p, p).item() == 0.0
    a = DiceSemimetricLoss(norm=2)(p, (p > 0.5).float())
    b = DiceSemimetricLoss(squared_pred=True)(p, (p > 0.5).float())
    assert a.item() == b.item()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    logits = torch.randn(2, 3, 8, 8, 8)
    target = _labels(logits.shape, 3)
    for make in (JDTLoss, DiceSemimetricLoss, JDTCELoss):
        loss = make(to_onehot_y=True, softmax=True)
        cpu = loss(logits, target)
        gpu = loss.cuda()(logits.cuda(), target.cuda())
        assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)
