"""Tests of monai_jdt.metrics: FineGrainedIoUMetric and its ignite handler FineGrainedIoU.

Known answers come from an independent float64 numpy computation on label maps, from MONAI's
own DiceMetric / compute_iou, and from small cases worked by hand.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from monai.metrics import DiceMetric, compute_iou

from monai_jdt.metrics import SCORE_KEYS, FineGrainedIoU, FineGrainedIoUMetric

N_CLASSES = 4


def _label_maps(seed: int, n: int = 6, shape: tuple[int, ...] = (7, 6, 5)) -> tuple:
    """Random prediction / reference label maps ``[n, *shape]`` with absent classes.

    Image 0's reference lacks class 3 (which the prediction still holds), image 1's reference
    is background only, image 2's prediction is background only.
    """
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, N_CLASSES, size=(n, *shape))
    pred = np.where(rng.random((n, *shape)) < 0.6, ref, rng.integers(0, N_CLASSES, (n, *shape)))
    ref[0][ref[0] == 3] = 1
    ref[1] = 0
    pred[2] = 0
    return pred, ref


def _onehot(labels: np.ndarray) -> torch.Tensor:
    """``[n, *spatial]`` int labels -> ``[n, C, *spatial]`` float32 one-hot."""
    eye = np.eye(N_CLASSES, dtype=np.float32)
    return torch.from_numpy(np.moveaxis(eye[labels], -1, 1).copy())


def _numpy_scores(pred: np.ndarray, ref: np.ndarray, include_background: bool) -> dict:
    """Independent float64 fine-grained IoU / Dice from label maps (loops, no torch)."""
    classes = range(0 if include_background else 1, N_CLASSES)
    n = pred.shape[0]
    tp = np.zeros((n, len(classes)))
    fp = np.zeros_like(tp)
    fn = np.zeros_like(tp)
    for i in range(n):
        for j, c in enumerate(classes):
            p, r = pred[i] == c, ref[i] == c
            tp[i, j] = np.sum(p & r)
            fp[i, j] = np.sum(p & ~r)
            fn[i, j] = np.sum(~p & r)
    present = (tp + fn) > 0
    out = {}
    for name, w in (("miou", 1.0), ("mdice", 0.5)):
        per_class_pooled = [
            tp[:, j].sum() / (tp[:, j].sum() + w * (fp[:, j].sum() + fn[:, j].sum()))
            for j in range(len(classes))
            if present[:, j].any()
        ]
        with np.errstate(invalid="ignore"):
            pair = tp / (tp + w * (fp + fn))
        per_image = [pair[i][present[i]].mean() for i in range(n) if present[i].any()]
        per_class = [
            pair[:, j][present[:, j]].mean() for j in range(len(classes)) if present[:, j].any()
        ]
        out[f"{name}_d"] = float(np.mean(per_class_pooled))
        out[f"{name}_i"] = float(np.mean(per_image))
        out[f"{name}_c"] = float(np.mean(per_class))
    return out


@pytest.mark.parametrize("include_background", [True, False])
def test_all_six_scores_match_numpy_float64(include_background: bool) -> None:
    pred, ref = _label_maps(seed=1)
    metric = FineGrainedIoUMetric(include_background=include_background)
    metric(_onehot(pred), _onehot(ref))
    got = metric.aggregate_all()
    want = _numpy_scores(pred, ref, include_background)
    assert set(got) == set(SCORE_KEYS) == set(want)
    for key in want:
        assert got[key] == pytest.approx(want[key], rel=1e-12, abs=1e-12), key
    # aggregate() returns the one score the constructor chose
    for key, (index, level) in SCORE_KEYS.items():
        chosen = FineGrainedIoUMetric(
            include_background=include_background, level=level, index=index
        )
        chosen(_onehot(pred), _onehot(ref))
        value = chosen.aggregate()
        assert value.ndim == 0
        assert float(value) == pytest.approx(want[key], rel=1e-12), key


def test_per_image_scores_equal_monai_dice_metric_and_compute_iou() -> None:
    pred, ref = _label_maps(seed=2)
    y_pred, y = _onehot(pred), _onehot(ref)
    metric = FineGrainedIoUMetric(include_background=False)
    metric(y_pred, y)

    monai_dice = DiceMetric(include_background=False, reduction="none", ignore_empty=True)
    monai_dice(y_pred, y)
    dice_none = monai_dice.aggregate().double()
    ours_dice = metric.per_image_scores(index="dice")
    np.testing.assert_array_equal(torch.isnan(ours_dice), torch.isnan(dice_none))
    torch.testing.assert_close(ours_dice, dice_none, equal_nan=True, rtol=1e-6, atol=1e-7)

    iou = compute_iou(y_pred, y, include_background=False, ignore_empty=True).double()
    torch.testing.assert_close(metric.per_image_scores(), iou, equal_nan=True, rtol=1e-6, atol=1e-7)

    # MONAI's nan-skipping reductions give the image (mean_channel) and class (mean_batch)
    # levels: mean over present classes per image (then images), and per class (then classes);
    # MONAI reports 0 for a group with no present pair, which the fine-grained means skip
    for reduction, level, group_dim in (("mean_channel", "image", 1), ("mean_batch", "class", 0)):
        reduced = DiceMetric(include_background=False, reduction=reduction, ignore_empty=True)
        reduced(y_pred, y)
        has_present = ~torch.isnan(dice_none).all(dim=group_dim)
        expected = float(reduced.aggregate()[has_present].mean())
        assert float(metric.score(level, "dice")) == pytest.approx(expected, rel=1e-6)


def test_absent_classes_worked_by_hand() -> None:
    """Two 4-voxel images, labels 0..3, background excluded.

    image 0: ref [0 1 1 0] pred [0 1 2 0] -> class 1: tp 1 fn 1; class 2: fp 1 (absent in ref)
    image 1: ref [2 2 0 0] pred [2 0 0 3] -> class 2: tp 1 fn 1; class 3: fp 1 (absent in every ref)
    image 2: ref [0 0 0 0] pred [0 0 0 0] -> nothing present: not in the image mean
    """
    ref = torch.tensor([[0, 1, 1, 0], [2, 2, 0, 0], [0, 0, 0, 0]]).view(3, 1, 4)
    pred = torch.tensor([[0, 1, 2, 0], [2, 0, 0, 3], [0, 0, 0, 0]]).view(3, 1, 4)
    metric = FineGrainedIoUMetric(include_background=False, num_classes=4)
    metric(pred, ref)
    scores = metric.aggregate_all()
    # pooled: class 1 -> 1/(1+1) ; class 2 -> 1/(1+1+1) (image 0's false positive counts);
    # class 3 is in no reference but predicted: 0/(0+1+0), averaged as the paper's mIoU^D does
    assert scores["miou_d"] == pytest.approx((1 / 2 + 1 / 3 + 0) / 3)
    assert scores["mdice_d"] == pytest.approx((2 / 3 + 2 / 4 + 0) / 3)
    # per image / per class only where the reference holds the class: every such pair is 1/2
    assert scores["miou_i"] == pytest.approx(0.5)
    assert scores["miou_c"] == pytest.approx(0.5)
    assert scores["mdice_i"] == pytest.approx(2 / 3)
    assert scores["mdice_c"] == pytest.approx(2 / 3)
    per_image = metric.per_image_scores()
    expected = torch.tensor(
        [[0.5, math.nan, math.nan], [math.nan, 0.5, math.nan], [math.nan] * 3], dtype=torch.float64
    )
    torch.testing.assert_close(per_image, expected, equal_nan=True)


def test_nothing_in_the_references_gives_nan_not_an_error() -> None:
    """A class only predicted scores 0 at the dataset level (the prediction is all wrong) and
    nothing per image; with nothing predicted either, every mean is over nothing: NaN."""
    metric = FineGrainedIoUMetric(include_background=False, num_classes=3)
    metric(torch.tensor([[[0, 2, 0]]]), torch.zeros(1, 1, 3, dtype=torch.long))
    scores = metric.aggregate_all()
    assert (scores.pop("miou_d"), scores.pop("mdice_d")) == (0.0, 0.0)
    assert all(math.isnan(v) for v in scores.values())
    metric.reset()
    metric(torch.zeros(1, 1, 3, dtype=torch.long), torch.zeros(1, 1, 3, dtype=torch.long))
    assert all(math.isnan(v) for v in metric.aggregate_all().values())


def test_accumulating_batches_equals_one_big_batch_and_reset_clears() -> None:
    pred, ref = _label_maps(seed=3, n=7)
    whole = FineGrainedIoUMetric(include_background=False)
    whole(_onehot(pred), _onehot(ref))

    parts = FineGrainedIoUMetric(include_background=False)
    for lo, hi in ((0, 3), (3, 4), (4, 7)):
        parts(_onehot(pred[lo:hi]), _onehot(ref[lo:hi]))
    assert parts.aggregate_all() == pytest.approx(whole.aggregate_all(), rel=1e-12)

    # lists of channel-first tensors (MONAI's decollated form) accumulate the same way
    listed = FineGrainedIoUMetric(include_background=False)
    listed(list(_onehot(pred)), list(_onehot(ref)))
    assert listed.aggregate_all() == pytest.approx(whole.aggregate_all(), rel=1e-12)

    parts.reset()
    with pytest.raises(ValueError, match="no data to aggregate"):
        parts.aggregate()
    parts(_onehot(pred[:2]), _onehot(ref[:2]))
    assert len(parts) == 2


def test_label_maps_with_num_classes_equal_one_hot_input() -> None:
    pred, ref = _label_maps(seed=4)
    one_hot = FineGrainedIoUMetric(include_background=False)
    counts = one_hot(_onehot(pred), _onehot(ref))
    assert counts.shape == (pred.shape[0], 3, N_CLASSES - 1)
    maps = FineGrainedIoUMetric(include_background=False, num_classes=N_CLASSES)
    maps(torch.from_numpy(pred)[:, None], torch.from_numpy(ref)[:, None].float())
    mixed = FineGrainedIoUMetric(include_background=False, num_classes=N_CLASSES)
    mixed(_onehot(pred).bool(), torch.from_numpy(ref)[:, None])
    assert maps.aggregate_all() == pytest.approx(one_hot.aggregate_all(), rel=1e-12)
    assert mixed.aggregate_all() == pytest.approx(one_hot.aggregate_all(), rel=1e-12)


def test_sigmoid_multilabel_overlapping_channels() -> None:
    """Overlapping regions (BraTS TC / WT / ET style): channels need not sum to one."""
    ref = torch.zeros(1, 2, 4, 1)
    ref[0, 0, :3] = 1  # whole region: voxels 0-2
    ref[0, 1, :1] = 1  # its core: voxel 0
    pred = torch.zeros(1, 2, 4, 1)
    pred[0, 0, 1:] = 1  # voxels 1-3: tp 2, fp 1, fn 1
    pred[0, 1, :2] = 1  # voxels 0-1: tp 1, fp 1
    metric = FineGrainedIoUMetric(level="image")
    metric(pred, ref)
    assert float(metric.aggregate()) == pytest.approx((2 / 4 + 1 / 2) / 2)


@pytest.mark.parametrize(
    ("kwargs", "y_pred", "y", "message"),
    [
        ({"level": "dataset"}, None, None, "level must be one of"),
        ({"index": "tversky"}, None, None, "index must be one of"),
        ({"num_classes": 1}, None, None, "num_classes must be None or an int >= 2"),
        ({}, torch.zeros(2, 3, 4), torch.zeros(2, 2, 4), "same shape"),
        ({}, torch.zeros(2, 3), torch.zeros(2, 3), "at least 3 dims"),
        (
            {},
            torch.full((1, 2, 4), 2.0),
            torch.zeros(1, 2, 4),
            r"y_pred values must lie in \[0, 1\]",
        ),
        ({}, torch.zeros(1, 2, 4), torch.full((1, 2, 4), math.nan), "y values must lie"),
        (
            {"num_classes": 3},
            torch.full((1, 1, 4), 3),
            torch.zeros(1, 1, 4),
            r"labels must lie in \[0, 3\)",
        ),
        ({"num_classes": 3}, torch.zeros(1, 1, 4), torch.full((1, 1, 4), 0.5), "non-integer"),
        (
            {"num_classes": 3},
            torch.zeros(1, 2, 4),
            torch.zeros(1, 1, 4),
            "2 channels but num_classes=3",
        ),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(kwargs, y_pred, y, message) -> None:
    with pytest.raises(ValueError, match=message):
        metric = FineGrainedIoUMetric(**kwargs)
        metric(y_pred, y)


def test_single_channel_without_background_warns_like_monai() -> None:
    metric = FineGrainedIoUMetric(include_background=False)
    with pytest.warns(UserWarning, match="include_background=False"):
        metric(torch.ones(1, 1, 4), torch.ones(1, 1, 4))
    assert float(metric.aggregate()) == 1.0


def test_ignite_handler_in_supervised_evaluator_built_by_short_name() -> None:
    """A bundle-style config names the handler by short name; the evaluator reports it."""
    from monai.bundle import ConfigParser
    from monai.engines import SupervisedEvaluator

    pred, ref = _label_maps(seed=5, n=5)
    data = [{"image": p, "label": r} for p, r in zip(_onehot(pred), _onehot(ref), strict=True)]
    parser = ConfigParser(
        {
            "imports": ["$import monai_jdt"],
            "metric": {
                "_target_": "FineGrainedIoU",
                "include_background": False,
                "level": "batch",
                "report_prefix": "val_",
                "output_transform": "$monai.handlers.from_engine(['pred', 'label'])",
            },
        }
    )
    handler = parser.get_parsed_content("metric")
    assert isinstance(handler, FineGrainedIoU)
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=2),
        network=torch.nn.Identity(),  # the "image" already is the one-hot prediction
        key_val_metric={"val_miou": handler},
    )
    evaluator.run()
    want = _numpy_scores(pred, ref, include_background=False)
    assert evaluator.state.metrics["val_miou"] == pytest.approx(want["miou_d"], rel=1e-12)
    assert evaluator.state.best_metric == pytest.approx(want["miou_d"], rel=1e-12)
    for key, value in want.items():
        assert evaluator.state.metrics[f"val_{key}"] == pytest.approx(value, rel=1e-12)
    details = evaluator.state.metric_details["val_miou"]
    assert details.shape == (5, N_CLASSES - 1)
    assert torch.isnan(details[1]).all()  # image 1's reference is background only


def _gloo_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        pred, ref = _label_maps(seed=6, n=5)
        mine = slice(0, 3) if rank == 0 else slice(3, 5)  # uneven shares, as a last batch gives
        metric = FineGrainedIoUMetric(include_background=False)
        metric(_onehot(pred[mine]), _onehot(ref[mine]))
        torch.save(
            {"scores": metric.aggregate_all(), "n": len(metric)}, Path(out_dir) / f"rank{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_ranks_all_gather_to_the_single_process_result(tmp_path: Path, free_port) -> None:
    mp.spawn(_gloo_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    pred, ref = _label_maps(seed=6, n=5)
    single = FineGrainedIoUMetric(include_background=False)
    single(_onehot(pred), _onehot(ref))
    want = single.aggregate_all()
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert got["n"] == 5
        assert got["scores"] == pytest.approx(want, rel=1e-12)
