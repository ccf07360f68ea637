"""With ``soft_label=False`` the MONAI-named losses return what ``monai.losses`` returns.

Every case runs both losses on the same random inputs (float64, so only MONAI's own float32
one-hot targets limit the agreement) and compares values, ``reduction="none"`` shapes and
gradients. With hard labels the default semimetric counts give the same numbers too.
"""

from __future__ import annotations

import itertools
import warnings
import zlib

import pytest
import torch
from monai import losses as monai_losses

from monai_jdt.losses import (
    DiceCESemimetricLoss,
    DiceSemimetricLoss,
    GeneralizedDiceSemimetricLoss,
    JDTCELoss,
    TverskySemimetricLoss,
)

TOL = {"rtol": 1e-6, "atol": 1e-7}


def _case(seed: int, spatial: tuple[int, ...], n_classes: int = 4, batch: int = 3):
    """Logits ``[B, C, *spatial]`` and a label map ``[B, 1, *spatial]`` with an absent class."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n_classes, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (batch, 1, *spatial), generator=g).double()
    labels[labels == n_classes - 1] = 0  # the last class is absent everywhere
    labels[0][labels[0] == 1] = 2  # class 1 absent from image 0
    return logits, labels


def _one_hot(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(labels[:, 0].long(), n_classes).movedim(-1, 1).double()


def _compare(ours, theirs, logits, target):
    """Values, shapes and input gradients of two losses on the same inputs."""
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got, want = ours(x1, target), theirs(x2, target)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), **TOL)
    got.sum().backward()
    want.sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-7)


COMMON = [
    {},
    {"batch": True},
    {"include_background": False},
    {"reduction": "none"},
    {"reduction": "none", "batch": True},
    {"reduction": "sum"},
    {"smooth_nr": 0.0, "smooth_dr": 1e-3},
    {"smooth_nr": 1.0, "smooth_dr": 1.0, "batch": True},
    {"ignore_index": 2},
    {"ignore_index": 255},
    {"include_background": False, "ignore_index": 1, "reduction": "none"},
]
ACTIVATIONS = [{"softmax": True}, {"sigmoid": True}, {"other_act": torch.tanh}]
SPATIAL = [(5, 6), (3, 4, 5)]


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("act", ACTIVATIONS)
@pytest.mark.parametrize(
    "kwargs",
    [
        *COMMON,
        {"jaccard": True},
        {"squared_pred": True},
        {"squared_pred": True, "jaccard": True, "batch": True},
        {"weight": [1.0, 2.0, 0.5, 3.0]},
        {"weight": 2.0, "reduction": "none"},
        {"weight": [2.0, 0.5, 3.0], "include_background": False, "batch": True},
    ],
)
def test_dice_matches_monai(spatial, act, kwargs, request):
    logits, labels = _case(zlib.crc32(request.node.name.encode()), spatial)
    args = {"to_onehot_y": True, **act, **kwargs}
    ours = DiceSemimetricLoss(soft_label=False, **args)
    theirs = monai_losses.DiceLoss(**args)
    _compare(ours, theirs, logits, labels)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("kwargs", [*COMMON, {"alpha": 0.3, "beta": 0.7}, {"alpha": 1, "beta": 0}])
def test_tversky_matches_monai(spatial, kwargs):
    logits, labels = _case(7, spatial)
    args = {"to_onehot_y": True, "softmax": True, **kwargs}
    ours = TverskySemimetricLoss(soft_label=False, **args)
    _compare(ours, monai_losses.TverskyLoss(**args), logits, labels)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
@pytest.mark.parametrize(
    "kwargs", [{}, {"batch": True}, {"reduction": "none"}, {"reduction": "none", "batch": True}]
)
def test_generalized_dice_matches_monai(spatial, w_type, kwargs):
    logits, labels = _case(11, spatial)
    args = {"to_onehot_y": True, "softmax": True, "w_type": w_type, **kwargs}
    ours = GeneralizedDiceSemimetricLoss(soft_label=False, **args)
    _compare(ours, monai_losses.GeneralizedDiceLoss(**args), logits, labels)


WEIGHT = torch.tensor([1.0, 2.0, 0.5, 3.0], dtype=torch.float64)


@pytest.mark.parametrize("spatial", SPATIAL)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"to_onehot_y": True, "softmax": True},
        {"to_onehot_y": True, "softmax": True, "batch": True, "reduction": "sum"},
        {"to_onehot_y": True, "softmax": True, "weight": WEIGHT},
        {"to_onehot_y": True, "softmax": True, "weight": WEIGHT, "include_background": False},
        {"to_onehot_y": True, "softmax": True, "label_smoothing": 0.1, "jaccard": True},
        {"softmax": True, "one_hot_target": True},
    ],
)
def test_dice_ce_matches_monai(spatial, kwargs):
    logits, labels = _case(3, spatial)
    kwargs = dict(kwargs)
    target = _one_hot(labels, 4) if kwargs.pop("one_hot_target", False) else labels
    jaccard = kwargs.pop("jaccard", False)
    ours = JDTCELoss(
        jdt="dice", soft_label=False, lambda_jdt=0.7, lambda_ce=0.4, jaccard=jaccard, **kwargs
    )
    theirs = monai_losses.DiceCELoss(lambda_dice=0.7, lambda_ce=0.4, jaccard=jaccard, **kwargs)
    _compare(ours, theirs, logits, target)


def test_dice_ce_single_channel_uses_binary_cross_entropy_like_monai():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 1, 6, 6, generator=g, dtype=torch.float64)
    target = (torch.rand(2, 1, 6, 6, generator=g) > 0.5).double()
    ours = JDTCELoss(jdt="dice", sigmoid=True, soft_label=False, lambda_ce=1.0, lambda_jdt=1.0)
    theirs = monai_losses.DiceCELoss(sigmoid=True)
    _compare(ours, theirs, logits, target)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (DiceSemimetricLoss, monai_losses.DiceLoss),
        (TverskySemimetricLoss, monai_losses.TverskyLoss),
        (GeneralizedDiceSemimetricLoss, monai_losses.GeneralizedDiceLoss),
    ],
)
def test_semimetric_default_equals_monai_on_hard_labels(ours, theirs):
    """soft_label=True (our default) changes nothing for one-hot targets."""
    logits, labels = _case(13, (4, 5, 6))
    for batch in (False, True):
        args = {"to_onehot_y": True, "softmax": True, "batch": batch}
        _compare(ours(**args), theirs(**args), logits, labels)


@pytest.mark.parametrize(
    ("ours", "theirs"),
    [
        (DiceSemimetricLoss, monai_losses.DiceLoss),
        (TverskySemimetricLoss, monai_losses.TverskyLoss),
        (GeneralizedDiceSemimetricLoss, monai_losses.GeneralizedDiceLoss),
    ],
)
def test_wrong_shapes_raise_monai_error(ours, theirs):
    """MONAI raises AssertionError for a target that does not fit; ours raises an error that is
    both that and a ValueError."""
    logits, labels = _case(1, (4, 4))
    for loss in (ours(), theirs()):  # a label map without to_onehot_y
        with pytest.raises(AssertionError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            loss(logits, labels)
    with pytest.raises(ValueError, match="shape"):
        ours()(logits, labels)


def test_many_random_cases_dice_and_tversky():
    """A sweep over option combinations on fresh random inputs."""
    options = itertools.product((False, True), (False, True), ("mean", "sum", "none"))
    for i, (batch, background, reduction) in enumerate(options):
        logits, labels = _case(100 + i, (3, 5, 4), n_classes=3, batch=2)
        args = {
            "to_onehot_y": True,
            "softmax": True,
            "batch": batch,
            "include_background": background,
            "reduction": reduction,
        }
        _compare(DiceSemimetricLoss(**args), monai_losses.DiceLoss(**args), logits, labels)
        _compare(TverskySemimetricLoss(**args), monai_losses.TverskyLoss(**args), logits, labels)


@pytest.mark.parametrize("soft_label", [False, True])
@pytest.mark.parametrize("ignore_index", [0, 2, 255])
def test_ignore_index_on_soft_multichannel_targets_matches_monai(soft_label, ignore_index):
    """A class index on a soft ``B, C, *`` target (label smoothing) weighs each voxel by
    ``1 - y_k`` as MONAI does; keeping only voxels where ``y_k == 0`` dropped every voxel."""
    logits, labels = _case(11, (4, 5, 3))
    smoothed = 0.9 * _one_hot(labels, 4) + 0.1 / 4
    args = {"softmax": True, "ignore_index": ignore_index, "soft_label": soft_label}
    _compare(DiceSemimetricLoss(**args), monai_losses.DiceLoss(**args), logits, smoothed)
    _compare(TverskySemimetricLoss(**args), monai_losses.TverskyLoss(**args), logits, smoothed)
    x = logits.clone().requires_grad_(True)
    JDTCELoss(softmax=True, ignore_index=ignore_index)(x, smoothed).backward()
    assert x.grad.abs().amax() > 1e-4  # both parts still see the voxels


def test_a_float64_weight_tensor_stays_exact_as_in_monai() -> None:
    """Class weights were rounded to float32 (0.1 -> 0.10000000149): a relative error of
    ~1e-10 against MONAI, which keeps a float tensor's dtype."""
    logits, labels = _case(5, (6, 5), n_classes=3)
    weight = torch.tensor([0.1, 0.3, 0.7], dtype=torch.float64)
    args = {"to_onehot_y": True, "softmax": True, "weight": weight}
    for ours, theirs in (
        (DiceSemimetricLoss(**args), monai_losses.DiceLoss(**args)),
        (DiceCESemimetricLoss(**args), monai_losses.DiceCELoss(**args)),
    ):
        torch.testing.assert_close(ours(logits, labels), theirs(logits, labels), rtol=1e-14, atol=0)
