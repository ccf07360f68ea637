"""The MONAI-side boundary metric and its ignite handler, against MONAI's own metrics."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from test_scoring_boundary import blobs

from monai_jdt.metrics import BoundaryHandler, BoundaryMetric

SPACING = (0.8, 1.1, 1.7)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One-hot [2, 3, X, Y, Z] batches; class 2 of image 1 missed by the prediction."""
    pred = np.stack([blobs((16, 18, 14), 2, seed + i) for i in range(2)])
    ref = np.stack([blobs((16, 18, 14), 2, seed + 10 + i) for i in range(2)])
    pred[1][pred[1] == 2] = 0

    def one_hot(v: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.stack([v == k for k in range(3)], axis=1)).float()

    return one_hot(pred), one_hot(ref)


def test_boundary_metric_equals_monai_and_charges_missed_classes() -> None:
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    y_pred, y = batch(30)
    metric = BoundaryMetric("hd95", spacing=SPACING)
    metric(y_pred, y)
    scores = metric.per_image_scores()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = compute_hausdorff_distance(y_pred, y, percentile=95, spacing=SPACING)
    assert not torch.isfinite(expected[1, 1])  # MONAI: NaN for the missed class, a mean drops it
    diagonal = float(np.sqrt(sum((n * s) ** 2 for n, s in zip((16, 18, 14), SPACING, strict=True))))
    expected[1, 1] = diagonal
    assert torch.allclose(scores.float(), expected, rtol=1e-5)
    assert float(metric.aggregate()) == pytest.approx(float(expected.mean()), rel=1e-5)
    nsd = BoundaryMetric("nsd", spacing=SPACING, nsd_tolerance=2.0)
    nsd(y_pred, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        monai_nsd = compute_surface_dice(y_pred, y, [2.0, 2.0], spacing=SPACING)
    assert torch.allclose(nsd.per_image_scores().float(), monai_nsd, rtol=1e-5)


def test_boundary_handler_reports_hd95_in_an_engine() -> None:
    from ignite.engine import Engine

    y_pred, y = batch(40)
    engine = Engine(lambda engine, data: data)
    BoundaryHandler("hd95", spacing=SPACING, missing_distance=100.0).attach(engine, "val_hd95")
    state = engine.run([([p for p in y_pred], [t for t in y])], max_epochs=1)
    direct = BoundaryMetric("hd95", spacing=SPACING, missing_distance=100.0)
    direct(y_pred, y)
    assert state.metrics["val_hd95"] == pytest.approx(float(direct.aggregate()))
    assert state.metric_details["val_hd95"].shape == (2, 2)


def test_bad_boundary_metric_name() -> None:
    with pytest.raises(ValueError, match="hd95"):
        BoundaryHandler("hd96")
