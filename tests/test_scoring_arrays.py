"""score_arrays against float64 numpy and MONAI, on synthetic ellipsoid volumes."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from monai.metrics import DiceMetric, compute_iou

from monai_jdt.scoring import (
    InvalidOptionError,
    NegativeLabelError,
    NonFiniteValuesError,
    NonIntegerLabelsError,
    ProbabilityRangeError,
    ScoringOptions,
    ShapeMismatchError,
    VolumeTooLargeError,
    parse_labels,
    score_arrays,
    summarize,
)

SHAPE = (40, 36, 28)


@pytest.fixture(scope="module")
def assert_matches_numpy(numpy_scores, numpy_counts):  # type: ignore[no-untyped-def]
    """``assert_matches_numpy(report, pred, ref)``: every row's scores and counts are numpy's."""

    def check(report, pred, ref) -> None:  # type: ignore[no-untyped-def]
        for row in report.labels:
            expected = numpy_scores(pred, ref, row.label)
            for metric, value in expected.items():
                got = row.metrics[metric]
                if math.isnan(value):
                    assert got is None, (row.label, metric)
                else:
                    assert got == pytest.approx(value, rel=1e-12), (row.label, metric)
            assert (row.tp, row.fp, row.fn, row.tn) == numpy_counts(pred, ref, row.label)

    return check


def test_two_spheres_with_a_known_overlap(ellipsoid, numpy_counts) -> None:
    # two balls of radius 6 (volume ~ 4/3 pi 6^3), centres 6 voxels apart: the lens overlap
    # is pi (4r + d)(2r - d)^2 / 12 in the continuum; the voxel counts are checked exactly
    shape = (32, 32, 32)
    ref = ellipsoid(shape, (16, 16, 16), (6, 6, 6)).astype(np.uint8)
    pred = ellipsoid(shape, (22, 16, 16), (6, 6, 6)).astype(np.uint8)
    report = score_arrays(pred, ref)
    row = report.label(1)
    tp, fp, fn, tn = numpy_counts(pred, ref, 1)
    assert (row.tp, row.fp, row.fn, row.tn) == (tp, fp, fn, tn)
    continuum_dice = (math.pi * (4 * 6 + 6) * (12 - 6) ** 2 / 12) / (4 / 3 * math.pi * 6**3)
    assert row.metrics["dice"] == pytest.approx(continuum_dice, abs=0.03)
    assert row.metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-12)


@pytest.mark.parametrize("n_labels", [3, 20, 40])
def test_many_labels_match_numpy(n_labels: int, assert_matches_numpy, organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, n_labels, seed=n_labels)
    report = score_arrays(pred, ref)
    present = sorted((set(np.unique(pred).tolist()) | set(np.unique(ref).tolist())) - {0})
    assert [row.label for row in report.labels] == present
    assert_matches_numpy(report, pred, ref)


def test_large_label_ids_and_dtypes(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 4, seed=7)
    big = np.array([0, 300, 1000, 40000, 70000], dtype=np.int64)
    report = score_arrays(big[pred].astype(np.int32), big[ref].astype(np.uint32))
    assert [row.label for row in report.labels] == [300, 1000, 40000, 70000]
    small = score_arrays(pred.astype(np.uint8), ref.astype(np.int16))
    for a, b in zip(report.labels, small.labels, strict=True):
        assert a.metrics == b.metrics and (a.tp, a.fp, a.fn) == (b.tp, b.fp, b.fn)


def test_matches_monai_dice_and_iou(organ_pair) -> None:
    n = 6
    pred, ref = organ_pair(SHAPE, n, seed=11)
    report = score_arrays(pred, ref)

    def onehot(v: np.ndarray) -> torch.Tensor:
        return (
            torch.nn.functional.one_hot(torch.from_numpy(v).long(), n + 1)
            .permute(3, 0, 1, 2)[None]
            .float()
        )

    y_pred, y = onehot(pred), onehot(ref)
    monai_dice = DiceMetric(include_background=False, reduction="none")(y_pred, y)[0]
    monai_iou = compute_iou(y_pred, y, include_background=False)[0]
    for k in range(1, n + 1):
        assert report.label(k).metrics["dice"] == pytest.approx(float(monai_dice[k - 1]), rel=1e-6)
        assert report.label(k).metrics["jaccard"] == pytest.approx(
            float(monai_iou[k - 1]), rel=1e-6
        )


def test_empty_labels_null_with_reason_or_one(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 2, seed=5)
    pred[pred == 2] = 0  # label 2: in the reference only
    options = ScoringOptions(labels=parse_labels("1=a,2=b,5=absent"))
    report = score_arrays(pred, ref, options)
    absent = report.label(5)
    assert absent.metrics == {"dice": None, "jaccard": None, "precision": None, "recall": None}
    assert set(absent.reasons) == {"dice", "jaccard", "precision", "recall"}
    assert "absent from both" in absent.reasons["dice"]
    assert (absent.tp, absent.fp, absent.fn, absent.tn) == (0, 0, 0, pred.size)
    missed = report.label(2)
    assert missed.metrics["dice"] == 0.0 and missed.metrics["precision"] is None
    assert "tp + fp = 0" in missed.reasons["precision"]
    data = report.to_dict()
    json.dumps(data, allow_nan=False)  # NaN would raise
    row = next(r for r in data["labels"] if r["label"] == 5)
    assert row["dice"] is None and row["name"] == "absent" and row["reasons"]["dice"]
    one = score_arrays(pred, ref, ScoringOptions(labels={5: None}, empty="one"))
    assert one.label(5).metrics == {"dice": 1.0, "jaccard": 1.0, "precision": 1.0, "recall": 1.0}


def test_unrequested_predicted_labels_are_reported(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 3, seed=2)
    report = score_arrays(pred, ref, ScoringOptions(labels={1: "liver"}))
    assert [(r.label, r.requested) for r in report.labels] == [(1, True), (2, False), (3, False)]
    assert any("not asked for" in note for note in report.notes)


def test_background_only_when_asked(assert_matches_numpy, organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 2, seed=1)
    assert 0 not in [r.label for r in score_arrays(pred, ref).labels]
    report = score_arrays(pred, ref, ScoringOptions(include_background=True))
    assert report.labels[0].label == 0
    assert_matches_numpy(report, pred, ref)


def test_include_background_asks_for_label_0_beside_labels(organ_pair) -> None:
    """With ``labels``, ``include_background`` made label 0 an unasked extra (requested
    false) that ``only_requested`` then dropped: the flag that asks for it did nothing."""
    pred, ref = organ_pair(SHAPE, 3, seed=2)
    options = ScoringOptions(labels="1,2", include_background=True)
    rows = [(r.label, r.requested) for r in score_arrays(pred, ref, options).labels]
    assert rows == [(0, True), (1, True), (2, True), (3, False)]
    narrowed = score_arrays(pred, ref, options.replace(only_requested=True))
    assert [(r.label, r.requested) for r in narrowed.labels] == [(0, True), (1, True), (2, True)]
    alone = score_arrays(pred, ref, ScoringOptions(include_background=True)).label(0)
    assert narrowed.label(0).metrics == alone.metrics  # the same row as without labels
    summary = summarize([narrowed])
    assert summary["fine_grained"]["labels"] == [0, 1, 2] and summary["background"] is not None


def test_anisotropic_spacing_gives_volumes_in_ml(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 2, seed=9)
    spacing = (0.7, 0.8, 2.5)
    row = score_arrays(pred, ref, spacing=spacing).label(1)
    voxel_ml = 0.7 * 0.8 * 2.5 / 1000
    assert row.reference_ml == pytest.approx(np.sum(ref == 1) * voxel_ml, rel=1e-12)
    assert row.predicted_ml == pytest.approx(np.sum(pred == 1) * voxel_ml, rel=1e-12)
    assert score_arrays(pred, ref).label(1).reference_ml is None


def test_tversky_metric(numpy_counts, organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 1, seed=4)
    options = ScoringOptions(metrics=("tversky", "dice"), tversky_alpha=0.3, tversky_beta=0.7)
    row = score_arrays(pred, ref, options).label(1)
    tp, fp, fn, _ = numpy_counts(pred, ref, 1)
    assert list(row.metrics) == ["dice", "tversky"]
    assert row.metrics["tversky"] == pytest.approx(tp / (tp + 0.3 * fp + 0.7 * fn), rel=1e-12)


def test_float_label_maps_and_torch_inputs(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 3, seed=6)
    base = score_arrays(pred, ref)
    for p, r in [
        (pred.astype(np.float32), ref.astype(np.float64)),
        (torch.from_numpy(pred), torch.from_numpy(ref).to(torch.uint8)),
    ]:
        report = score_arrays(p, r)
        assert report.kind == "labels" and report.device == "cpu"
        assert [x.metrics for x in report.labels] == [x.metrics for x in base.labels]


def test_probability_maps_use_semimetric_soft_counts(organ_pair) -> None:
    rng = np.random.default_rng(0)
    pred_labels, ref = organ_pair((24, 20, 16), 3, seed=3)
    logits = rng.normal(size=(4, 24, 20, 16)) + 4 * np.eye(4)[pred_labels].transpose(3, 0, 1, 2)
    probs = np.exp(logits) / np.exp(logits).sum(0, keepdims=True)
    report = score_arrays(probs.astype(np.float32), ref)
    assert report.kind == "probabilities"
    x = probs.astype(np.float32).astype(np.float64)
    for k in (1, 2, 3):
        y = (ref == k).astype(np.float64)
        tp = float(np.sum(x[k] * y))  # hard reference: the semimetric tp is sum(x*y)
        fp, fn = float(x[k].sum()) - tp, float(y.sum()) - tp
        row = report.label(k)
        assert row.metrics["dice"] == pytest.approx(2 * tp / (2 * tp + fp + fn), rel=1e-9)
        assert row.tp == pytest.approx(tp, rel=1e-9) and row.fn == pytest.approx(fn, rel=1e-9)


def test_soft_reference_scores_one_only_when_equal() -> None:
    rng = np.random.default_rng(1)
    soft = rng.uniform(0, 1, size=(3, 10, 12, 14))
    assert score_arrays(soft, soft).label(1).metrics["dice"] == pytest.approx(1.0, abs=1e-12)
    other = np.clip(soft + rng.normal(0, 0.05, soft.shape), 0, 1)
    x, y = other[2], soft[2]
    tp = (x.sum() + y.sum() - np.abs(x - y).sum()) / 2
    expected = 2 * tp / (x.sum() + y.sum())
    assert score_arrays(other, soft).label(2).metrics["dice"] == pytest.approx(expected, rel=1e-9)
    single = score_arrays(other[1], soft[1])  # one float map: label 1
    assert [r.label for r in single.labels] == [1]


@pytest.mark.parametrize(
    ("pred", "ref", "options", "error", "match"),
    [
        (
            np.zeros((4, 4, 4)),
            np.zeros((4, 4, 5)),
            {},
            ShapeMismatchError,
            r"\(4, 4, 4\).*\(4, 4, 5\)",
        ),
        (
            np.full((4, 4, 4), 1.5),
            np.zeros((4, 4, 4)),
            {"kind": "labels"},
            NonIntegerLabelsError,
            "whole",
        ),
        (np.full((4, 4, 4), np.nan), np.zeros((4, 4, 4)), {}, NonFiniteValuesError, "prediction"),
        (np.zeros((4, 4, 4)), np.full((4, 4, 4), np.inf), {}, NonFiniteValuesError, "reference"),
        (
            np.full((4, 4, 4), -1, np.int8),
            np.zeros((4, 4, 4), np.int8),
            {},
            NegativeLabelError,
            "-1",
        ),
        (np.full((4, 4, 4), -2.0), np.zeros((4, 4, 4)), {}, NegativeLabelError, "-2"),
        (
            np.full((2, 4, 4, 4), 1.5),
            np.zeros((4, 4, 4), np.uint8),
            {},
            ProbabilityRangeError,
            "1.5",
        ),
        (
            np.zeros((4, 4, 4), np.uint8),
            np.zeros((4, 4, 4), np.uint8),
            {"max_voxels": 63},
            VolumeTooLargeError,
            "64 voxels",
        ),
        (
            np.full((3, 4, 4, 4), 0.5),
            np.zeros((4, 4, 4), np.uint8),
            {"labels": {5: None}},
            InvalidOptionError,
            "3 channels",
        ),
    ],
)
def test_validation_errors(pred, ref, options, error, match) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(error, match=match):
        score_arrays(pred, ref, ScoringOptions(**options))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"empty": "zero"},
        {"metrics": ("dice", "hausdorff")},
        {"metrics": ()},
        {"device": "gpu"},
        {"labels": {-1: "x"}},
        {"labels": {1: 3}},
        {"affine_tol": -1.0},
        {"max_voxels": 0},
        {"tversky_alpha": float("nan")},
        {"kind": "masks"},
    ],
)
def test_bad_options(kwargs: dict) -> None:  # type: ignore[type-arg]
    with pytest.raises(InvalidOptionError):
        ScoringOptions(**kwargs)


def test_parse_labels() -> None:
    assert parse_labels("1=liver, 2=spleen,3") == {1: "liver", 2: "spleen", 3: None}
    for bad in ["", "a=liver", "1=", "1,1", "-1", "1.5"]:
        with pytest.raises(InvalidOptionError):
            parse_labels(bad)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_asked_without_cuda_is_a_clear_error() -> None:
    with pytest.raises(InvalidOptionError, match="CUDA is not available"):
        score_arrays(
            np.ones((3, 3, 3), np.uint8),
            np.ones((3, 3, 3), np.uint8),
            ScoringOptions(device="cuda"),
        )


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_scores_equal_cpu_scores(organ_pair) -> None:
    pred, ref = organ_pair(SHAPE, 5, seed=8)
    cpu = score_arrays(pred, ref, ScoringOptions(device="cpu"))
    gpu = score_arrays(pred, ref, ScoringOptions(device="cuda"))
    assert gpu.device.startswith("cuda")
    assert [(r.tp, r.fp, r.fn, r.tn) for r in gpu.labels] == [
        (r.tp, r.fp, r.fn, r.tn) for r in cpu.labels
    ]
    probs = np.eye(6)[pred].transpose(3, 0, 1, 2) * 0.9 + 0.1 / 6
    soft_cpu = score_arrays(probs, ref, ScoringOptions(device="cpu"))
    soft_gpu = score_arrays(torch.from_numpy(probs).cuda(), ref, ScoringOptions(device="auto"))
    assert soft_gpu.device.startswith("cuda")
    for a, b in zip(soft_cpu.labels, soft_gpu.labels, strict=True):
        assert a.metrics["dice"] == pytest.approx(b.metrics["dice"], rel=1e-9)


def test_unsigned_references_for_torch_paths(organ_pair) -> None:
    pred, ref = organ_pair((20, 18, 16), 3, seed=12)
    probs = np.eye(4)[pred].transpose(3, 0, 1, 2) * 0.8 + 0.05
    expected = [r.metrics for r in score_arrays(probs, ref).labels]
    for dtype in (np.uint16, np.uint32, np.uint64):
        assert [r.metrics for r in score_arrays(probs, ref.astype(dtype)).labels] == expected


def test_the_label_limit_counts_only_labels_present() -> None:
    """4000 ids of 256 and more (compacted) plus background: within the 4096 labels; the ids
    below 256 that are absent were counted too (refused from 3841 on, "4097 so far")."""
    ids = np.arange(256, 256 + 4000, dtype=np.int32).reshape(40, 100, 1)
    ids[0, 0, 0] = 0
    report = score_arrays(ids, ids)
    assert len(report.labels) == 3999 and all(row.metrics["dice"] == 1.0 for row in report.labels)


def test_a_one_hot_float_pair_is_scored_per_channel() -> None:
    """A 4-D float pair of 0/1 (one-hot prediction and reference, channel-first) was taken for
    a label map by the whole-number rule: its channel values pooled as label ids."""
    rng = np.random.default_rng(4)
    ref_labels = rng.integers(0, 3, size=(6, 5, 4))
    pred_labels = np.where(rng.random((6, 5, 4)) < 0.8, ref_labels, rng.integers(0, 3, (6, 5, 4)))
    one_hot = np.eye(3, dtype=np.float32)
    pred, ref = (np.moveaxis(one_hot[v], -1, 0) for v in (pred_labels, ref_labels))
    report = score_arrays(pred, ref)
    assert report.kind == "probabilities"
    for label in (1, 2):
        p, r = pred_labels == label, ref_labels == label
        want = 2 * np.sum(p & r) / (p.sum() + r.sum())
        assert report.label(label).metrics["dice"] == pytest.approx(want, rel=1e-12)


def test_a_whole_number_float_reference_of_a_single_map_is_a_label_map() -> None:
    """A 0/1 float reference has no label 2: scoring a single map as label 2 against it
    counted the label-1 voxels; a float reference with labels 0..2 was refused as
    probabilities out of range."""
    rng = np.random.default_rng(5)
    prob = rng.random((6, 5, 4)).astype(np.float32)
    labels = rng.integers(0, 3, size=(6, 5, 4))
    binary = (labels == 1).astype(np.float32)
    two = score_arrays(prob, binary, ScoringOptions(labels={2: None}))
    assert (two.label(2).tp, two.label(2).fn, two.label(2).metrics["dice"]) == (0, 0, 0.0)
    as_float = score_arrays(prob, labels.astype(np.float32), ScoringOptions(labels={2: None}))
    as_int = score_arrays(prob, labels, ScoringOptions(labels={2: None}))
    assert as_float.label(2).metrics == as_int.label(2).metrics
    x, y = prob.astype(np.float64), (labels == 2).astype(np.float64)
    want = 2 * np.sum(x * y) / (x.sum() + y.sum())
    assert as_float.label(2).metrics["dice"] == pytest.approx(want, rel=1e-6)


def test_probability_maps_refuse_regions_and_negative_reference_ids() -> None:
    """Regions were ignored without a word for probability maps, and a negative id in the
    integer reference was scored, where the label-map path refuses it."""
    prob = np.random.default_rng(6).random((5, 4, 3)).astype(np.float32)
    ref = np.zeros((5, 4, 3), np.int16)
    ref[:2] = 1
    with pytest.raises(InvalidOptionError, match="regions"):
        score_arrays(prob, ref, ScoringOptions(regions={"WT": (1, 2)}))
    ref[0, 0, 0] = -3
    with pytest.raises(NegativeLabelError):
        score_arrays(prob, ref)
    with pytest.raises(NegativeLabelError):
        score_arrays(prob.round(), ref)  # the label-map path, for comparison


def test_a_softmax_against_an_integer_one_hot_reference_warns() -> None:
    """An integer reference is a label map, so a [C, X, Y, Z] softmax against an integer
    one-hot [C, X, Y, Z] is one map over four axes: a plausible number, not per channel."""
    rng = np.random.default_rng(9)
    prob = rng.random((3, 4, 4, 4)).astype(np.float32)
    one_hot = np.moveaxis(np.eye(3, dtype=np.int64)[rng.integers(0, 3, (4, 4, 4))], -1, 0)
    report = score_arrays(prob, one_hot)
    assert any("four axes" in w for w in report.warnings)
    assert score_arrays(prob, one_hot.astype(np.float32)).warnings == ()  # channel-first


def test_a_4d_float_label_map_pair_with_ids_above_1_stays_a_label_map() -> None:
    """Only a 4-D float pair in [0, 1] reads as channel-first probabilities; one with ids
    0..3 was refused as probabilities out of range."""
    labels = np.random.default_rng(7).integers(0, 4, size=(2, 5, 4, 3))
    as_float = score_arrays(labels.astype(np.float32), labels.astype(np.float32))
    as_int = score_arrays(labels, labels)
    assert as_float.kind == as_int.kind == "labels"
    assert [r.to_dict() for r in as_float.labels] == [r.to_dict() for r in as_int.labels]
