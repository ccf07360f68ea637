"""Property tests (hypothesis) of the semimetric losses on soft labels.

Without smoothing the Jaccard metric loss is a metric on non-negative vectors, and the Dice
semimetric loss is reflexive, positive and symmetric; on hard labels both equal the classic
``sum(x * y)`` formulation.
"""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from monai_jdt.losses import DiceSemimetricLoss, JaccardMetricLoss, JDTLoss

SHAPE = (2, 3, 4)  # B, C, N: small so each example is cheap
unit = st.floats(0.0, 1.0, allow_nan=False, width=64)
soft = arrays("float64", SHAPE, elements=unit).map(torch.from_numpy)
bits = arrays("float64", SHAPE, elements=st.sampled_from([0.0, 1.0])).map(torch.from_numpy)
aggregations = st.sampled_from(["batch", "image", "class"])
FAST = settings(max_examples=40, deadline=None)


def jaccard(aggregation: str) -> JaccardMetricLoss:
    return JaccardMetricLoss(aggregation=aggregation, classes="all", smooth_nr=0.0, smooth_dr=0.0)


def dice(aggregation: str) -> JDTLoss:
    return JDTLoss(
        alpha=0.5, beta=0.5, aggregation=aggregation, classes="all", smooth_nr=0.0, smooth_dr=0.0
    )


@FAST
@given(p=soft, aggregation=aggregations)
def test_reflexive_on_soft_labels(p, aggregation):
    for loss in (jaccard(aggregation), dice(aggregation)):
        assert loss(p, p).item() == 0.0


@FAST
@given(p=soft, q=soft, aggregation=aggregations)
def test_positive_and_symmetric_on_soft_labels(p, q, aggregation):
    for loss in (jaccard(aggregation), dice(aggregation)):
        pq, qp = loss(p, q).item(), loss(q, p).item()
        assert pq >= 0.0
        assert abs(pq - qp) <= 1e-12
        if (p - q).abs().max() > 1e-6:
            assert pq > 0.0


@FAST
@given(a=soft, b=soft, c=soft, aggregation=aggregations)
def test_triangle_inequality_of_the_jaccard_metric_loss(a, b, c, aggregation):
    loss = jaccard(aggregation)
    assert loss(a, c).item() <= loss(a, b).item() + loss(b, c).item() + 1e-12


@FAST
@given(x=soft, y=bits, aggregation=aggregations, present=st.booleans())
def test_hard_labels_give_the_classic_formula(x, y, aggregation, present):
    classes = "present" if present else "all"
    for alpha, beta in ((1.0, 1.0), (0.5, 0.5), (0.2, 0.8)):
        semimetric = JDTLoss(alpha=alpha, beta=beta, aggregation=aggregation, classes=classes)
        classic = JDTLoss(
            alpha=alpha, beta=beta, aggregation=aggregation, classes=classes, soft_label=False
        )
        assert abs(semimetric(x, y).item() - classic(x, y).item()) <= 1e-12


@FAST
@given(p=soft)
def test_classic_dice_is_not_reflexive_on_soft_labels_but_ours_is(p):
    """Why the semimetric form exists: the classic sum(x*y) Dice of p with itself is > 0."""
    ours = DiceSemimetricLoss(smooth_nr=0.0, smooth_dr=0.0)
    classic = DiceSemimetricLoss(smooth_nr=0.0, smooth_dr=0.0, soft_label=False)
    assert ours(p, p).item() == 0.0
    strictly_soft = ((p > 1e-3) & (p < 1 - 1e-3)).any()
    if strictly_soft:
        assert classic(p, p).item() > 0.0
