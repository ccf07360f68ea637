"""Known answers: a worked Dice example and a float64 numpy reimplementation of JDTLoss.

The numpy reference computes the semimetric intersection as ``sum(min(x, y))`` (equal to
``(|x| + |y| - |x - y|) / 2`` for non-negative inputs) in float64 numpy, and each aggregation
level with plain Python loops.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_jdt.losses import DiceSemimetricLoss, JaccardMetricLoss, JDTCELoss, JDTLoss

# a worked example, checkable by hand: tp = 0.38574776 + 0.8793516 + 0.65118235 + 0.5184219
# = 2.43470361, sum(x) = 4.12703754, sum(y) = 4, so Dice = 2 tp / (sum(x) + sum(y)) = 0.59916145
# without smoothing and (2 tp + 1) / (sum(x) + sum(y) + 1) = 0.64307916 with smoothing 1
WORKED_PRED = [
    [0.38574776, 0.08795848, 0.83927506],
    [0.21592768, 0.44453627, 0.10463644],
    [0.8793516, 0.65118235, 0.5184219],
]
WORKED_TRUE = [[1.0, 0.0, 0.0], [0.0, 0.0, 0.0], [1.0, 1.0, 1.0]]


@pytest.mark.parametrize("soft_label", [True, False])
@pytest.mark.parametrize(
    ("smooth", "coefficient", "loss"),
    [(1.0, 0.64307916, 0.35692084), (0.0, 0.59916145, 0.40083855)],
)
def test_worked_dice_example(soft_label, smooth, coefficient, loss):
    pred = torch.tensor(WORKED_PRED)[None, None]
    true = torch.tensor(WORKED_TRUE)[None, None]
    dice = DiceSemimetricLoss(smooth_nr=smooth, smooth_dr=smooth, soft_label=soft_label)
    got = dice(pred, true)
    assert got.item() == pytest.approx(loss, abs=2e-7)
    assert 1 - got.item() == pytest.approx(coefficient, abs=2e-7)


def test_worked_example_without_smoothing_is_the_tversky_form_with_half_weights():
    pred = torch.tensor(WORKED_PRED)[None, None]
    true = torch.tensor(WORKED_TRUE)[None, None]
    jdt = JDTLoss(alpha=0.5, beta=0.5, smooth_nr=0.0, smooth_dr=0.0)
    assert jdt(pred, true).item() == pytest.approx(0.40083855, abs=2e-7)


def np_jdt(
    x,
    y,
    *,
    alpha=1.0,
    beta=1.0,
    levels=None,
    classes="all",
    threshold=0.01,
    smooth_nr=0.0,
    smooth_dr=0.0,
    gamma=1.0,
    log_loss=False,
    weight=None,
):
    """Float64 reference of JDTLoss (mean reduction) on ``[B, C, N]`` arrays."""
    levels = levels or {"batch": 1.0}
    b, c = x.shape[:2]
    tp = np.minimum(x, y).sum(-1)
    fp = x.sum(-1) - tp
    fn = y.sum(-1) - tp
    w = np.ones(c) if weight is None else np.broadcast_to(np.asarray(weight, float), (c,))

    def loss_of(tp_, fp_, fn_, k):
        den = tp_ + alpha * fp_ + beta * fn_ + smooth_dr
        t = 1.0 if den == 0 else (tp_ + smooth_nr) / den
        v = -np.log(t) if log_loss else 1.0 - t
        return w[k] * max(v, 0.0) ** gamma if gamma != 1 else w[k] * v

    present = y.max(-1) > threshold
    active = present if classes == "present" else np.ones((b, c), bool)
    total = 0.0
    for level, lw in levels.items():
        if level == "batch":
            ks = [k for k in range(c) if active[:, k].any()]
            vals = [loss_of(tp[:, k].sum(), fp[:, k].sum(), fn[:, k].sum(), k) for k in ks]
            value = np.mean(vals) if vals else 0.0
        elif level == "image":
            per_image = []
            for i in range(b):
                ks = [k for k in range(c) if active[i, k]]
                if ks:
                    per_image.append(
                        np.mean([loss_of(tp[i, k], fp[i, k], fn[i, k], k) for k in ks])
                    )
            value = np.mean(per_image) if per_image else 0.0
        else:
            per_class = []
            for k in range(c):
                ims = [i for i in range(b) if active[i, k]]
                if ims:
                    per_class.append(
                        np.mean([loss_of(tp[i, k], fp[i, k], fn[i, k], k) for i in ims])
                    )
            value = np.mean(per_class) if per_class else 0.0
        total += lw * value
    return total


def _probabilities(rng, shape):
    x = rng.random(shape) + 1e-3
    return x / x.sum(1, keepdims=True)


def _hard(rng, shape, absent=True):
    labels = rng.integers(0, shape[1], (shape[0], *shape[2:]))
    y = np.eye(shape[1])[labels].transpose(0, -1, *range(1, len(shape) - 1))
    if absent:
        y[0, 1] = 0  # class 1 absent from image 0 (its voxels become unlabelled)
        y[:, 2] = 0  # class 2 absent everywhere
    return y


CASES = [
    {"levels": {"batch": 1.0}},
    {"levels": {"image": 1.0}},
    {"levels": {"class": 1.0}},
    {"levels": {"image": 0.5, "class": 0.5}},
    {"levels": {"batch": 0.2, "image": 0.3, "class": 0.5}},
    {"levels": {"batch": 1.0}, "classes": "present"},
    {"levels": {"image": 1.0}, "classes": "present"},
    {"levels": {"class": 1.0}, "classes": "present"},
    {"levels": {"class": 1.0}, "classes": "present", "alpha": 0.3, "beta": 0.7},
    {"levels": {"image": 1.0}, "gamma": 2.0, "smooth_nr": 1.0, "smooth_dr": 1.0},
    {"levels": {"batch": 1.0}, "log_loss": True, "classes": "present"},
    {"levels": {"image": 1.0}, "weight": [0.5, 2.0, 1.0, 3.0], "classes": "present"},
    {"levels": {"batch": 1.0}, "weight": 2.0, "gamma": 1.5},
    {"levels": {"class": 1.0}, "threshold": 0.5, "classes": "present", "soft": True},
    {"levels": {"image": 1.0}, "soft": True},
]


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("seed", range(3))
def test_jdt_loss_matches_numpy_reference(case, seed):
    case = dict(case)
    soft = case.pop("soft", False)
    rng = np.random.default_rng(seed)
    shape = (3, 4, 5, 6)
    x = _probabilities(rng, shape)
    y = _probabilities(rng, shape) if soft else _hard(rng, shape)
    levels = case.pop("levels")
    case = {"classes": "all", "smooth_nr": 0.0, "smooth_dr": 0.0, **case}
    want = np_jdt(x.reshape(3, 4, -1), y.reshape(3, 4, -1), levels=levels, **case)
    loss = JDTLoss(aggregation=levels, **case)
    got = loss(torch.from_numpy(x), torch.from_numpy(y))
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(want, rel=1e-10, abs=1e-12)


def test_defaults_are_batch_level_present_for_hard_all_for_soft():
    rng = np.random.default_rng(4)
    shape = (2, 4, 7)
    x = _probabilities(rng, shape)
    hard, soft = _hard(rng, shape), _probabilities(rng, shape)
    loss = JDTLoss(smooth_nr=0.0, smooth_dr=0.0)
    want_hard = np_jdt(x, hard, classes="present")
    assert want_hard != pytest.approx(np_jdt(x, hard, classes="all"))  # the case tells them apart
    assert loss(torch.from_numpy(x), torch.from_numpy(hard)).item() == pytest.approx(want_hard)
    got_soft = loss(torch.from_numpy(x), torch.from_numpy(soft)).item()
    assert got_soft == pytest.approx(np_jdt(x, soft, classes="all"))


def test_batch_flag_is_monai_spelling_of_aggregation():
    rng = np.random.default_rng(5)
    x, y = (torch.from_numpy(_probabilities(rng, (3, 3, 8))) for _ in range(2))
    for batch, level in ((True, "batch"), (False, "image")):
        assert JDTLoss(batch=batch)(x, y) == JDTLoss(aggregation=level)(x, y)


def test_reduction_none_and_sum_follow_the_active_entries():
    rng = np.random.default_rng(6)
    shape = (2, 4, 9)
    x, y = _probabilities(rng, shape), _hard(rng, shape)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    tp = np.minimum(x, y).sum(-1)
    jac = tp / (x.sum(-1) + y.sum(-1) - tp)
    active = y.max(-1) > 0.01
    per_pair = JDTLoss(
        aggregation="image", classes="present", reduction="none", smooth_nr=0.0, smooth_dr=0.0
    )
    none = per_pair(xt, yt)
    assert none.shape == (2, 4, 1)
    np.testing.assert_allclose(none[..., 0].numpy(), np.where(active, 1 - jac, 0.0), rtol=1e-12)
    summed = JDTLoss(
        aggregation="class", classes="present", reduction="sum", smooth_nr=0.0, smooth_dr=0.0
    )
    assert summed(xt, yt).item() == pytest.approx(np.where(active, 1 - jac, 0).sum())
    batch_none = JDTLoss(classes="all", reduction="none", smooth_nr=0.0, smooth_dr=0.0)(xt, yt)
    assert batch_none.shape == (1, 4, 1)


def _masked_case(rng, fractional):
    shape = (2, 3, 6, 5)
    x = torch.from_numpy(_probabilities(rng, shape))
    y = torch.from_numpy(_probabilities(rng, shape))  # soft labels
    keep = torch.from_numpy(rng.random((2, 1, 6, 5)) > 0.4).double()
    if fractional:  # weights in (0, 1] where kept
        keep = keep * torch.from_numpy(rng.random((2, 1, 6, 5)) * 0.9 + 0.1)
    return x, y, keep


@pytest.mark.parametrize("fractional", [False, True])
@pytest.mark.parametrize("aggregation", ["batch", "image", "class"])
def test_mask_removes_voxels_also_for_soft_labels(aggregation, fractional):
    rng = np.random.default_rng(7)
    x, y, keep = _masked_case(rng, fractional)
    loss = JaccardMetricLoss(aggregation=aggregation, smooth_nr=0.0, smooth_dr=0.0)
    got = loss(x, y, keep)
    xn, yn, kn = (t.numpy().reshape(2, t.shape[1], -1) for t in (x, y, keep))
    want = np_jdt(xn * kn, yn * kn, levels={aggregation: 1.0})
    assert got.item() == pytest.approx(want, rel=1e-10)
    # what changes outside the mask does not matter
    x2 = torch.where(keep.bool(), x, torch.rand_like(x))
    got2 = loss(x2, y, keep)
    assert got2.item() == pytest.approx(got.item(), rel=1e-12)


def test_mask_and_ignore_index_agree_for_label_maps():
    rng = np.random.default_rng(8)
    shape = (2, 3, 7, 4)
    x = torch.from_numpy(_probabilities(rng, shape))
    labels = torch.from_numpy(rng.integers(0, 3, (2, 1, 7, 4))).double()
    ignored = torch.from_numpy(rng.random((2, 1, 7, 4)) > 0.7)
    with_ignore = torch.where(ignored, torch.full_like(labels, 255.0), labels)
    a = JDTLoss(to_onehot_y=True, ignore_index=255)(x, with_ignore)
    b = JDTLoss(to_onehot_y=True)(x, labels, (~ignored).double())
    assert a.item() == pytest.approx(b.item(), rel=1e-12)
    # the ignored voxels' labels make no difference
    c = JDTLoss(to_onehot_y=True)(
        x, torch.where(ignored, torch.zeros_like(labels), labels), (~ignored).double()
    )
    assert c.item() == pytest.approx(b.item(), rel=1e-12)


def test_jdt_ce_is_weighted_sum_of_cross_entropy_and_jaccard():
    rng = np.random.default_rng(9)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 5, 5)))
    labels = torch.from_numpy(rng.integers(0, 3, (2, 1, 5, 5))).double()
    got = JDTCELoss(to_onehot_y=True, softmax=True)(logits, labels)
    p = logits.softmax(1).numpy().reshape(2, 3, -1)
    y = np.eye(3)[labels.numpy()[:, 0].astype(int)].transpose(0, 3, 1, 2).reshape(2, 3, -1)
    ce = -(y * np.log(p)).sum(1).mean()
    jac = np_jdt(p, y, classes="present", smooth_nr=1e-5, smooth_dr=1e-5)
    assert got.item() == pytest.approx(0.25 * ce + 0.75 * jac, rel=1e-10)


def test_jdt_ce_masks_cross_entropy_with_soft_targets():
    rng = np.random.default_rng(10)
    logits = torch.from_numpy(rng.normal(size=(2, 3, 4, 4)))
    soft = torch.from_numpy(_probabilities(rng, (2, 3, 4, 4)))
    keep = torch.from_numpy(rng.random((2, 1, 4, 4)) > 0.5).double()
    loss = JDTCELoss(softmax=True, lambda_ce=1.0, lambda_jdt=0.0)
    got = loss(logits, soft, keep)
    logp = logits.log_softmax(1).numpy()
    per_voxel = -(soft.numpy() * logp).sum(1)
    k = keep.numpy()[:, 0]
    assert got.item() == pytest.approx((per_voxel * k).sum() / k.sum(), rel=1e-10)


@pytest.mark.parametrize("soft", [True, False])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_activated_inputs_match_reference_for_soft_and_hard_targets(act, soft):
    """The counts' fast paths for probabilities (min-based for soft, product for 0/1 targets)."""
    rng = np.random.default_rng(11)
    shape = (2, 3, 4, 5)
    logits = torch.from_numpy(rng.normal(size=shape)).requires_grad_(True)
    y = _probabilities(rng, shape) if soft else _hard(rng, shape, absent=False)
    loss = JDTLoss(alpha=0.3, beta=0.7, classes="all", smooth_nr=0.0, smooth_dr=0.0, **{act: True})
    got = loss(logits, torch.from_numpy(y))
    p = logits.softmax(1) if act == "softmax" else logits.sigmoid()
    want = np_jdt(p.detach().numpy().reshape(2, 3, -1), y.reshape(2, 3, -1), alpha=0.3, beta=0.7)
    assert got.item() == pytest.approx(want, rel=1e-10)
    got.backward()
    # the same loss through plain autograd of the identity gives the same gradient
    x = p.reshape(2, 3, -1)
    yt = torch.from_numpy(y).reshape(2, 3, -1)
    tp = (x.sum(-1) + yt.sum(-1) - (x - yt).abs().sum(-1)) / 2
    fp, fn = x.sum(-1) - tp, yt.sum(-1) - tp
    pooled = [t.sum(0) for t in (tp, fp, fn)]
    ref = (1 - pooled[0] / (pooled[0] + 0.3 * pooled[1] + 0.7 * pooled[2])).mean()
    (want_grad,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(logits.grad, want_grad)


@pytest.mark.parametrize("as_labels", [True, False])
def test_default_classes_follow_the_target_not_a_soft_mask(as_labels):
    """``classes=None`` is "present" for a hard target, also under a soft mask (``y * mask`` is
    soft, the target is not), and "all" for a soft target."""
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 3, 6, 5, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 2, (2, 1, 6, 5), generator=g).double()  # class 2 absent
    onehot = torch.nn.functional.one_hot(labels[:, 0].long(), 3).movedim(-1, 1).double()
    target, args = (labels, {"to_onehot_y": True}) if as_labels else (onehot, {})
    mask = torch.full((2, 1, 6, 5), 0.999, dtype=torch.float64)

    def loss(classes, y, m):
        return JDTLoss(softmax=True, classes=classes, **args)(logits, y, m).item()

    present, every = loss("present", target, mask), loss("all", target, mask)
    assert present != pytest.approx(every)  # the choice shows in the value
    assert loss(None, target, mask) == present
    assert loss(None, target, None) == loss("present", target, None)
    if not as_labels:
        soft = 0.9 * onehot + 0.1 / 3
        assert loss(None, soft, mask) == loss("all", soft, mask)
