"""The dataset summary against values worked out by hand."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from monai_jdt.scoring import InvalidOptionError, ScoringOptions, score_arrays, summarize

# three 8-voxel cases; per (case, label) counts (tp, fp, fn) written next to them
CASES = [
    # label 1: (2, 1, 0); label 2: (1, 1, 0)
    ([1, 1, 1, 0, 0, 0, 2, 2], [1, 1, 0, 0, 0, 0, 2, 0]),
    # label 1: (1, 0, 3); label 2 absent from both (no row)
    ([1, 0, 0, 0, 0, 0, 0, 0], [1, 1, 1, 1, 0, 0, 0, 0]),
    # label 1: (0, 1, 0), not in the reference; label 2: (2, 2, 0)
    ([1, 0, 0, 0, 2, 2, 2, 2], [0, 0, 0, 0, 0, 0, 2, 2]),
]


@pytest.fixture(scope="module")
def summary() -> dict:  # type: ignore[type-arg]
    reports = [
        score_arrays(np.array(p, np.uint8), np.array(r, np.uint8), case_id=f"c{i}")
        for i, (p, r) in enumerate(CASES)
    ]
    return summarize(reports, worst_q=50)


def test_fine_grained_jaccard_by_hand(summary: dict) -> None:  # type: ignore[type-arg]
    fine = summary["fine_grained"]
    assert fine["labels"] == [1, 2] and fine["cases"] == 3 and fine["q_percent"] == 50
    iou = fine["jaccard"]
    # D: label 1 pools (3, 2, 3) -> 3/8, label 2 pools (3, 3, 0) -> 1/2
    assert iou["D"] == pytest.approx((3 / 8 + 1 / 2) / 2)
    # I: case means 7/12 (2/3 and 1/2), 1/4, 1/2 (label 1 is not in case 2's reference)
    assert iou["I"] == pytest.approx((7 / 12 + 1 / 4 + 1 / 2) / 3)
    # C: label 1 over cases 0, 1: (2/3 + 1/4) / 2; label 2 over cases 0, 2: 1/2
    assert iou["C"] == pytest.approx((11 / 24 + 1 / 2) / 2)
    # worst 50 %: ceil(1.5) = 2 of 3 cases -> 1/4 and 1/2; per label ceil(1) = 1 case
    assert iou["I_worst"] == pytest.approx(3 / 8)
    assert iou["C_worst"] == pytest.approx((1 / 4 + 1 / 2) / 2)


@pytest.mark.parametrize(("q", "kept"), [(28, 7), (56, 14), (20, 5), (12.5, 4)])
def test_worst_q_keeps_the_exact_ceiling(q: float, kept: int) -> None:
    """25 cases whose IoU is k/26 (k = 1..25): the worst q % are the lowest ceil(q * 25 / 100).
    In floats 28 / 100 * 25 is 7.000000000000001, and 8 were kept."""
    reports = []
    for k in range(1, 26):  # tp = k, fn = 26 - k: IoU k/26
        pred = np.array([1] * k + [0] * (26 - k), np.uint8)
        reports.append(score_arrays(pred, np.ones(26, np.uint8), case_id=f"c{k}"))
    fine = summarize(reports, worst_q=q)["fine_grained"]["jaccard"]
    expected = sum(range(1, kept + 1)) / 26 / kept  # mean of 1/26 .. kept/26
    assert fine["I_worst"] == pytest.approx(expected, rel=1e-12)
    assert fine["C_worst"] == pytest.approx(expected, rel=1e-12)


def test_fine_grained_dice_by_hand(summary: dict) -> None:  # type: ignore[type-arg]
    dice = summary["fine_grained"]["dice"]
    assert dice["D"] == pytest.approx((6 / 11 + 6 / 9) / 2)
    assert dice["I"] == pytest.approx(((4 / 5 + 2 / 3) / 2 + 2 / 5 + 2 / 3) / 3)
    assert dice["C"] == pytest.approx(((4 / 5 + 2 / 5) / 2 + 2 / 3) / 2)


def test_per_label_statistics_skip_undefined(summary: dict) -> None:  # type: ignore[type-arg]
    label1 = summary["labels"][0]
    assert label1["label"] == 1 and label1["cases"] == 3
    values = [4 / 5, 2 / 5, 0.0]
    assert label1["dice"]["mean"] == pytest.approx(np.mean(values))
    assert label1["dice"]["median"] == pytest.approx(0.4)
    assert label1["dice"]["std"] == pytest.approx(np.std(values))
    assert (label1["dice"]["min"], label1["dice"]["max"]) == (0.0, pytest.approx(0.8))
    # recall of label 1 is undefined in case 2 (tp + fn = 0): mean over 2 cases
    assert label1["recall"]["n"] == 2
    assert label1["recall"]["mean"] == pytest.approx((1.0 + 0.25) / 2)
    label2 = summary["labels"][1]
    assert label2["cases"] == 2 and label2["dice"]["mean"] == pytest.approx(2 / 3)
    fg = summary["foreground_mean"]["dice"]
    assert fg == {"mean": pytest.approx((0.4 + 2 / 3) / 2), "labels": 2}
    json.dumps(summary, allow_nan=False)


def test_empty_and_unrequested() -> None:
    assert summarize([])["fine_grained"]["jaccard"]["D"] is None
    pred = np.array([1, 2, 3, 0], np.uint8)
    ref = np.array([1, 2, 0, 0], np.uint8)
    report = score_arrays(pred, ref, ScoringOptions(labels={1: "a", 2: "b"}))
    summary = summarize([report])
    assert [e["requested"] for e in summary["labels"]] == [True, True, False]
    assert summary["fine_grained"]["labels"] == [1, 2]
    assert summary["foreground_mean"]["dice"]["labels"] == 2
    with pytest.raises(InvalidOptionError):
        summarize([report], worst_q=0)
    assert not math.isnan(summary["fine_grained"]["jaccard"]["D"])


def test_a_requested_label_no_reference_holds_scores_0_at_the_dataset_level() -> None:
    """Label 3 is asked for and predicted, but in no reference: its dataset IoU is 0/(0+2+0),
    and it is averaged, as the paper's mIoU^D; it has no per-case score (I and C)."""
    labels = {1: "a", 2: "b", 3: "c"}
    cases = [([1, 1, 3, 0], [1, 1, 0, 0]), ([2, 0, 0, 3], [2, 2, 0, 0])]
    reports = [
        score_arrays(np.array(p, np.uint8), np.array(r, np.uint8), ScoringOptions(labels=labels))
        for p, r in cases
    ]
    iou = summarize(reports)["fine_grained"]["jaccard"]
    # pooled (tp, fp, fn): label 1 (2, 0, 0) -> 1; label 2 (1, 0, 1) -> 1/2; label 3 (0, 2, 0) -> 0
    assert iou["D"] == pytest.approx((1 + 1 / 2 + 0) / 3)
    assert iou["I"] == pytest.approx((1 + 1 / 2) / 2)
    assert iou["C"] == pytest.approx((1 + 1 / 2) / 2)


@pytest.mark.parametrize("empty", ["nan", "one"])
def test_a_label_absent_from_a_case_gets_the_boundary_metrics_of_absence(
    tmp_path, lacking_label_folders, empty: str
) -> None:  # type: ignore[no-untyped-def]
    """The dataset's label set found from the cases gives the numbers of the same set asked
    for with ``labels``: the row added for a label absent from both volumes of a case has
    the boundary metrics of such a structure (0 mm / 1.0 under empty="one"; null), which it
    lacked, so the means moved with ``--labels``."""
    from monai_jdt.scoring import score_directory

    preds, refs = lacking_label_folders(tmp_path)
    metrics = ("dice", "hd95", "nsd", "boundary_iou")
    found = score_directory(preds, refs, ScoringOptions(empty=empty, metrics=metrics))
    asked = score_directory(
        preds,
        refs,
        ScoringOptions(empty=empty, metrics=metrics, labels={1: None, 2: None}),
    )
    case_b = next(r for r in found.reports if r.case_id == "b").label(2)
    want = 1.0 if empty == "one" else None
    assert case_b.metrics["hd95"] == (0.0 if empty == "one" else None)
    assert (case_b.metrics["nsd"], case_b.metrics["boundary_iou"]) == (want, want)
    for metric in metrics:
        assert found.summary["labels"][1][metric] == asked.summary["labels"][1][metric]
    assert found.summary["foreground_mean"] == asked.summary["foreground_mean"]


@pytest.mark.parametrize("missing", [1e308, 1e200])
def test_statistics_near_the_float64_limit_are_numbers_not_null(missing: float) -> None:
    """A large ``missing_distance`` is allowed (any finite mm); two missed cases of three
    put the sum of the HD95 values (1e308) or of their squares (1e200) past the float64
    limit, which made mean and std null beside n=3. Known answers: exact rational
    arithmetic over the three values."""
    from fractions import Fraction

    ref = np.zeros((6, 6, 4), np.uint8)
    ref[1:4, 1:4, 1:3] = 1
    hit = np.roll(ref, 1, axis=0)  # HD95 1 mm
    options = ScoringOptions(metrics=("hd95",), missing_distance=missing)
    reports = [
        score_arrays(pred, ref, options, case_id=name)
        for name, pred in (("hit", hit), ("a", np.zeros_like(ref)), ("b", np.zeros_like(ref)))
    ]
    # the summary charges each missed case missing_distance
    assert [r.label(1).metrics["hd95"] for r in reports] == [1.0, None, None]
    values = [Fraction(1), Fraction(missing), Fraction(missing)]
    mean = sum(values) / 3
    variance = sum((v - mean) ** 2 for v in values) / 3
    summary = summarize(reports)
    stats = summary["labels"][0]["hd95"]
    assert stats["n"] == 3
    assert stats["mean"] == pytest.approx(float(mean), rel=1e-15)
    # the variance itself is past float64: its square root taken in units of `missing`
    std = math.sqrt(float(variance / Fraction(missing) ** 2)) * missing
    assert stats["std"] == pytest.approx(std, rel=1e-15)
    assert summary["foreground_mean"]["hd95"]["mean"] == stats["mean"]


def test_an_empty_float_prediction_does_not_fail_the_probability_cases(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """An all-zero float prediction is a label map by --kind auto and brings label 0 (with
    include_background) into a dataset of single probability maps; those were scored again
    on {0, 1} and failed, and the summary kept one case."""
    import nibabel as nib

    from monai_jdt.scoring import score_directory

    rng = np.random.default_rng(8)
    for name in ("p", "r"):
        (tmp_path / name).mkdir()
    want = []
    for i in range(3):
        ref = (rng.random((8, 7, 6)) < 0.3).astype(np.uint8)
        pred = (
            rng.random(ref.shape).astype(np.float32) if i < 2 else np.zeros(ref.shape, np.float32)
        )
        nib.save(nib.Nifti1Image(pred, np.eye(4)), tmp_path / "p" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(ref, np.eye(4)), tmp_path / "r" / f"c{i}.nii.gz")
        x, y = pred.astype(np.float64), ref.astype(np.float64)
        want.append(2 * np.sum(x * y) / (x.sum() + y.sum()))
    result = score_directory(
        tmp_path / "p", tmp_path / "r", ScoringOptions(include_background=True), workers=1
    )
    assert result.failures == []
    label1 = next(e for e in result.summary["labels"] if e["label"] == 1)
    assert label1["dice"]["n"] == 3
    assert label1["dice"]["mean"] == pytest.approx(np.mean(want), rel=1e-6)
    assert any("not channels" in note for r in result.reports for note in r.notes)


def test_completing_a_probability_case_twice_changes_nothing() -> None:
    """A job that resumes completes its stored reports again: the note on a probability case
    lacking a dataset label was added once more each time."""
    from monai_jdt.scoring.summary import with_label_set

    prob = np.random.default_rng(3).random((4, 4, 4)).astype(np.float32)
    ref = np.zeros((4, 4, 4), np.uint8)
    ref[:2] = 1
    report = score_arrays(prob, ref)
    once = with_label_set(report, [1, 2], ScoringOptions())
    assert once is not None and sum("not channels" in n for n in once.notes) == 1
    assert with_label_set(once, [1, 2], ScoringOptions()) is once
