"""DiceCESemimetricLoss is MONAI's DiceCELoss with semimetric counts: the same arguments, the same
numbers and gradients on hard labels (checked against the installed MONAI), and a Dice part that
is 0 exactly when a soft prediction equals its soft target."""

from __future__ import annotations

import inspect
import warnings
import zlib

import pytest
import torch
from monai import losses as monai_losses
from monai.bundle import ConfigParser

from monai_jdt.losses import DiceCESemimetricLoss, DiceSemimetricLoss, TensorShapeError

TOL = {"rtol": 1e-6, "atol": 1e-7}


def _case(seed: int, spatial: tuple[int, ...], n_classes: int = 4, batch: int = 2):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, n_classes, *spatial, generator=g, dtype=torch.float64)
    labels = torch.randint(0, n_classes, (batch, 1, *spatial), generator=g).double()
    labels[labels == n_classes - 1] = 0  # one class absent everywhere
    return logits, labels


def _value_and_grad(loss, logits, target):
    x = logits.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = loss(x, target)
    value.backward()
    return value.detach(), x.grad


def _assert_same(ours, theirs, logits, target):
    got, got_grad = _value_and_grad(ours, logits, target)
    want, want_grad = _value_and_grad(theirs, logits, target)
    torch.testing.assert_close(got, want.to(got.dtype), **TOL)
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-5, atol=1e-7)


def test_takes_monai_arguments_in_monai_order_with_monai_defaults():
    ours = inspect.signature(DiceCESemimetricLoss).parameters
    theirs = inspect.signature(monai_losses.DiceCELoss).parameters
    positional = [n for n, p in ours.items() if p.kind is p.POSITIONAL_OR_KEYWORD]
    assert positional == list(theirs)
    for name, parameter in theirs.items():
        assert ours[name].default == parameter.default, name


WEIGHT = [1.0, 2.0, 0.5, 3.0]


@pytest.mark.parametrize("spatial", [(5, 6), (3, 4, 5)])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"to_onehot_y": True, "softmax": True},
        {"to_onehot_y": True, "softmax": True, "squared_pred": True, "batch": True},
        {"to_onehot_y": True, "sigmoid": True},  # MONAI: softmax CE with several channels
        {"to_onehot_y": True, "softmax": True, "jaccard": True, "reduction": "sum"},
        {"to_onehot_y": True, "softmax": True, "include_background": False, "batch": True},
        {"to_onehot_y": True, "softmax": True, "lambda_dice": 0.3, "lambda_ce": 0.7},
        {"to_onehot_y": True, "softmax": True, "label_smoothing": 0.1},
        {"to_onehot_y": True, "softmax": True, "smooth_nr": 0.0, "smooth_dr": 1e-3},
        {"to_onehot_y": True, "softmax": True, "weight": WEIGHT},
        {"to_onehot_y": True, "sigmoid": True, "weight": WEIGHT, "include_background": False},
        {"softmax": True},  # one-hot target
    ],
)
def test_equals_monai_dice_ce_on_hard_labels(spatial, kwargs, request):
    logits, labels = _case(zlib.crc32(request.node.name.encode()), spatial)
    target = labels
    if not kwargs.get("to_onehot_y"):
        target = torch.nn.functional.one_hot(labels[:, 0].long(), 4).movedim(-1, 1).double()
    monai_kwargs = dict(kwargs)
    if "weight" in kwargs:
        monai_kwargs["weight"] = torch.tensor(kwargs["weight"], dtype=torch.float64)
    ours = DiceCESemimetricLoss(**kwargs)
    _assert_same(ours, monai_losses.DiceCELoss(**monai_kwargs), logits, target)
    assert ours.jdt_loss.soft_label and isinstance(ours.jdt_loss, DiceSemimetricLoss)


def test_one_channel_uses_binary_cross_entropy_like_monai():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 6, 5, generator=g, dtype=torch.float64)
    target = (torch.rand(2, 1, 6, 5, generator=g) > 0.5).double()
    kwargs = {"sigmoid": True, "batch": True}
    _assert_same(DiceCESemimetricLoss(**kwargs), monai_losses.DiceCELoss(**kwargs), logits, target)


SPLEEN_LOSS = {  # spleen_ct_segmentation's train.json
    "to_onehot_y": True,
    "softmax": True,
    "squared_pred": True,
    "batch": True,
}


def test_model_zoo_config_swaps_by_target_alone():
    """The zoo's loss entry with only ``_target_`` changed builds the same loss value."""
    built = {}
    for target in ("DiceCELoss", "DiceCESemimetricLoss"):
        config = {"imports": ["$import monai_jdt"], "loss": {"_target_": target, **SPLEEN_LOSS}}
        built[target] = ConfigParser(config).get_parsed_content("loss")
    assert type(built["DiceCELoss"]) is monai_losses.DiceCELoss
    assert type(built["DiceCESemimetricLoss"]) is DiceCESemimetricLoss
    for seed in range(3):
        logits, labels = _case(seed, (6, 5, 4), n_classes=2)
        _assert_same(built["DiceCESemimetricLoss"], built["DiceCELoss"], logits, labels)


def test_semimetric_dice_part_is_zero_at_a_soft_target():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    soft = torch.softmax(logits, 1)  # the prediction itself, as a soft target
    dice_only = DiceCESemimetricLoss(softmax=True, lambda_ce=0.0)
    assert dice_only(logits, soft).item() == pytest.approx(0.0, abs=1e-9)
    # MONAI's classic counts leave a positive Dice loss at the same point
    assert monai_losses.DiceCELoss(softmax=True, lambda_ce=0.0)(logits, soft).item() > 0.05
    # the total is then the soft cross-entropy alone
    ce = -(soft * torch.log_softmax(logits, 1)).sum(1).mean()
    total = DiceCESemimetricLoss(softmax=True)(logits, soft)
    assert total.item() == pytest.approx(ce.item(), rel=1e-9)
    # and moving away from the target raises the Dice part
    assert dice_only(logits + torch.randn(2, 3, 6, 6, generator=g), soft).item() > 1e-3


def test_jdt_options_and_their_errors():
    logits, labels = _case(9, (4, 4))
    labels[0, 0, 0, 0] = 255
    loss = DiceCESemimetricLoss(to_onehot_y=True, softmax=True, ignore_index=255)
    assert torch.isfinite(loss(logits, labels))
    assert loss.lambda_dice == 1.0 and loss.lambda_ce == 1.0
    with pytest.raises(ValueError, match="lambda_dice"):
        DiceCESemimetricLoss(lambda_dice=-1.0)
    with pytest.raises(ValueError, match="reduction"):
        DiceCESemimetricLoss(reduction="none")
    with pytest.raises(TypeError, match="alpha"):
        DiceCESemimetricLoss(alpha=0.3)
    with pytest.raises(TensorShapeError):
        DiceCESemimetricLoss(softmax=True)(logits, labels)  # label map without to_onehot_y
