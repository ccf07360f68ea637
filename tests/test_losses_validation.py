"""Bad arguments and bad inputs get a clear ValueError / TypeError that names the problem."""

from __future__ import annotations

import math

import pytest
import torch

from monai_jdt.losses import (
    DiceCESemimetricLoss,
    DiceSemimetricLoss,
    GeneralizedDiceSemimetricLoss,
    JaccardMetricLoss,
    JDTCELoss,
    JDTLoss,
    TensorShapeError,
    TverskySemimetricLoss,
)

BAD_ARGUMENTS = [
    (JDTLoss, {"reduction": "avg"}, ValueError, "reduction"),
    (JDTLoss, {"sigmoid": True, "softmax": True}, ValueError, "Incompatible"),
    (JDTLoss, {"other_act": "tanh"}, TypeError, "other_act"),
    (JDTLoss, {"alpha": -0.1}, ValueError, "alpha"),
    (JDTLoss, {"beta": "1"}, TypeError, "beta"),
    (JDTLoss, {"alpha": math.nan}, ValueError, "alpha"),
    (JDTLoss, {"gamma": 0.0}, ValueError, "gamma"),
    (JDTLoss, {"smooth_nr": -1.0}, ValueError, "smooth_nr"),
    (JDTLoss, {"smooth_dr": math.inf}, ValueError, "smooth_dr"),
    (JDTLoss, {"aggregation": "dataset"}, ValueError, "aggregation"),
    (JDTLoss, {"aggregation": {"image": 0.5, "pixel": 0.5}}, ValueError, "aggregation key"),
    (JDTLoss, {"aggregation": {"image": -1.0}}, ValueError, "aggregation"),
    (JDTLoss, {"aggregation": {"image": 0.0}}, ValueError, "not all be 0"),
    (JDTLoss, {"aggregation": {}}, TypeError, "aggregation"),
    (JDTLoss, {"aggregation": 3}, TypeError, "aggregation"),
    (JDTLoss, {"batch": True, "aggregation": "class"}, ValueError, "batch"),
    (JDTLoss, {"batch": "yes"}, TypeError, "batch"),
    (JDTLoss, {"classes": "some"}, ValueError, "classes"),
    (JDTLoss, {"threshold": 1.5}, ValueError, "threshold"),
    (JDTLoss, {"norm": 3}, ValueError, "norm"),
    (JDTLoss, {"weight": [1.0, -1.0]}, ValueError, "weight"),
    (JDTLoss, {"weight": [[1.0, 2.0]]}, ValueError, "weight"),
    (JDTLoss, {"weight": "heavy"}, TypeError, "weight"),
    (JDTLoss, {"weight": [1.0, math.nan]}, ValueError, "weight"),
    (JDTLoss, {"ignore_index": 1.5}, TypeError, "ignore_index"),
    (JDTLoss, {"ignore_index": True}, TypeError, "ignore_index"),
    (JDTLoss, {"include_background": "no"}, TypeError, "include_background"),
    (JDTLoss, {"soft_label": 1}, TypeError, "soft_label"),
    (JDTLoss, {"reduction": "none", "aggregation": {"image": 1, "class": 1}}, ValueError, "none"),
    (JDTLoss, {"reduction": "none", "sync_counts": True}, ValueError, "sync_counts"),
    (JaccardMetricLoss, {"alpha": 2.0}, TypeError, "alpha"),
    (DiceSemimetricLoss, {"squared_pred": True, "norm": 1}, ValueError, "squared_pred"),
    (GeneralizedDiceSemimetricLoss, {"w_type": "cube"}, ValueError, "w_type"),
    (GeneralizedDiceSemimetricLoss, {"aggregation": "class"}, ValueError, "aggregation"),
    (JDTCELoss, {"jdt": "focal"}, ValueError, "jdt"),
    (JDTCELoss, {"lambda_ce": -1.0}, ValueError, "lambda_ce"),
    (JDTCELoss, {"lambda_jdt": -0.5}, ValueError, "lambda_jdt"),
    (JDTCELoss, {"reduction": "none"}, ValueError, "reduction"),
    (JDTCELoss, {"alpha": 0.3}, ValueError, "tversky"),
    (JDTCELoss, {"label_smoothing": 2.0}, ValueError, "label_smoothing"),
    # a misspelled keyword names the class built, not JDTLoss.__init__, and what was meant
    (DiceSemimetricLoss, {"smoth_nr": 1e-5}, TypeError, "^DiceSemimetricLoss .*'smooth_nr'"),
    (TverskySemimetricLoss, {"gama": 2.0}, TypeError, "^TverskySemimetricLoss .*'gamma'"),
    (JaccardMetricLoss, {"clases": "present"}, TypeError, "^JaccardMetricLoss .*'classes'"),
    (JDTCELoss, {"jdt": "dice", "smoth_dr": 1.0}, TypeError, "^JDTCELoss .*'smooth_dr'"),
    (DiceCESemimetricLoss, {"gama": 2.0}, TypeError, "^DiceCESemimetricLoss .*'gamma'"),
    (DiceSemimetricLoss, {"alpha": 0.3}, TypeError, "^DiceSemimetricLoss sets alpha itself"),
]


@pytest.mark.parametrize(("cls", "kwargs", "error", "match"), BAD_ARGUMENTS)
def test_bad_arguments(cls, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(**kwargs)


def _x(*shape):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(0))


def _labels(b=2, c=3, *spatial):
    spatial = spatial or (4, 4)
    return torch.randint(0, c, (b, 1, *spatial), generator=torch.Generator().manual_seed(1))


BAD_INPUTS = [
    ("input not a tensor", {}, lambda: ([[0.5]], _x(1, 1, 1)), TypeError, "input"),
    (
        "integer input",
        {},
        lambda: (torch.ones(1, 2, 3, dtype=torch.long), _x(1, 2, 3)),
        TypeError,
        "floating",
    ),
    ("no spatial dim", {}, lambda: (_x(2, 3), _x(2, 3)), ValueError, "spatial"),
    ("dims differ", {}, lambda: (_x(2, 3, 4, 4), _x(2, 3, 16)), ValueError, "dimensions"),
    ("spatial differ", {}, lambda: (_x(2, 3, 4, 4), _x(2, 3, 4, 5)), ValueError, "spatial shape"),
    ("batch differs", {}, lambda: (_x(2, 3, 4, 4), _x(1, 3, 4, 4)), ValueError, "batch size"),
    (
        "one-hot target with to_onehot_y",
        {"to_onehot_y": True},
        lambda: (_x(2, 3, 4, 4), _x(2, 3, 4, 4)),
        ValueError,
        "to_onehot_y",
    ),
    (
        "label map without to_onehot_y",
        {},
        lambda: (_x(2, 3, 4, 4), _labels().float()),
        ValueError,
        "to_onehot_y=True",
    ),
    (
        "channels differ",
        {},
        lambda: (_x(2, 3, 4, 4), _x(2, 4, 4, 4)),
        ValueError,
        "different shape",
    ),
    (
        "weight length",
        {"weight": [1.0, 2.0]},
        lambda: (_x(2, 3, 4, 4), _x(2, 3, 4, 4)),
        ValueError,
        "number of classes",
    ),
    (
        "label out of range",
        {"to_onehot_y": True},
        lambda: (_x(2, 3, 4, 4), _labels() + 1),
        ValueError,
        r"\[0, 3\)",
    ),
    (
        "negative label",
        {"to_onehot_y": True, "ignore_index": 255},
        lambda: (_x(2, 3, 4, 4), _labels() - 1),
        ValueError,
        "ignore_index=255",
    ),
    (
        "fractional label",
        {"to_onehot_y": True},
        lambda: (_x(2, 3, 4, 4), _labels().float() + 0.5),
        ValueError,
        "labels",
    ),
    (
        "NaN label",
        {"to_onehot_y": True},
        lambda: (_x(2, 3, 4, 4), torch.full((2, 1, 4, 4), math.nan)),
        ValueError,
        "labels",
    ),
    (
        "NaN input",
        {},
        lambda: (
            _x(2, 3, 4, 4).index_put_((torch.tensor([0]),), torch.tensor(math.nan)),
            _x(2, 3, 4, 4),
        ),
        ValueError,
        "NaN",
    ),
    (
        "infinite logits",
        {"softmax": True},
        lambda: (torch.full((1, 2, 3), math.inf), _x(1, 2, 3)),
        ValueError,
        "NaN or infinite",
    ),
    (
        "soft target above 1",
        {},
        lambda: (_x(2, 3, 4, 4), _x(2, 3, 4, 4) + 0.5),
        ValueError,
        r"target values must lie in \[0, 1\]",
    ),
    (
        "soft target below 0",
        {},
        lambda: (_x(2, 3, 4, 4), _x(2, 3, 4, 4) - 0.5),
        ValueError,
        "target values",
    ),
    (
        "NaN target",
        {},
        lambda: (_x(1, 2, 3), torch.full((1, 2, 3), math.nan)),
        ValueError,
        "target values",
    ),
]


@pytest.mark.parametrize(("why", "kwargs", "make", "error", "match"), BAD_INPUTS)
@pytest.mark.parametrize("cls", [JDTLoss, DiceSemimetricLoss, JDTCELoss])
def test_bad_inputs(cls, why, kwargs, make, error, match):
    input, target = make()
    with pytest.raises(error, match=match):
        cls(**kwargs)(input, target)


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(2, 3, 4, 4), "mask"),
        (torch.ones(2, 1, 4), "mask"),
        (torch.ones(3, 1, 4, 4), "mask"),
        (torch.full((2, 1, 4, 4), 2.0), "mask values"),
        (torch.full((2, 1, 4, 4), math.nan), "mask values"),
    ],
)
def test_bad_masks(mask, match):
    with pytest.raises(ValueError, match=match) as raised:
        JDTLoss()(_x(2, 3, 4, 4), _x(2, 3, 4, 4), mask)
    assert "to_onehot_y" not in str(raised.value)  # that advice is for a target


def test_shape_errors_are_also_assertion_errors_like_monai():
    with pytest.raises(AssertionError):
        JDTLoss()(_x(2, 3, 4, 4), _x(2, 4, 4, 4))
    assert issubclass(TensorShapeError, ValueError)


def test_value_checks_can_be_turned_off():
    """check_values=False skips the value passes: the caller vouches for the data."""
    soft_above_one = _x(2, 3, 4, 4) + 0.5
    loss = JDTLoss(check_values=False)
    assert torch.isfinite(loss(_x(2, 3, 4, 4), soft_above_one))
    nan_input = torch.full((1, 2, 3), math.nan)
    assert torch.isnan(JDTLoss(check_values=False, classes="all")(nan_input, _x(1, 2, 3)))


def test_labels_equal_to_ignore_index_are_accepted():
    labels = _labels()
    labels[0, 0, 0] = -1
    value = JDTLoss(to_onehot_y=True, ignore_index=-1)(_x(2, 3, 4, 4), labels)
    assert torch.isfinite(value)
