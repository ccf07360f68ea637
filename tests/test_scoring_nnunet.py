"""Dataset summaries where labels come and go across cases, against an independent numpy
implementation of nnU-Net v2's evaluation rules (written here from its published behaviour:
per-label boolean masks, NaN Dice / IoU for a label absent from both volumes, an ignore label
removing reference voxels from every count, NaN-skipping means over cases, and a foreground
mean over the labels other than 0), and the ``--summary-format nnunet`` layout."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_jdt.cli import main
from monai_jdt.scoring import (
    InvalidOptionError,
    ScoringOptions,
    confusion_matrix,
    score_arrays,
    score_directory,
)
from monai_jdt.scoring.nnunet import NNUNET_METRICS, dumps_nnunet, nnunet_summary

SHAPE = (12, 10, 8)
AFFINE = np.diag([0.9, 1.2, 2.0, 1.0])

# ---------------------------------------------------------------------------------------------
# the independent reference: nnU-Net's rules on boolean masks, float64


def ref_counts(
    pred: np.ndarray, ref: np.ndarray, label: int | tuple[int, ...], ignore: int | None
) -> tuple[int, int, int, int]:
    """``(TP, FP, FN, TN)`` of one label (or a region: a tuple of labels, their union) over
    the voxels whose reference is not ``ignore``."""
    use = np.ones(ref.shape, bool) if ignore is None else ref != ignore
    members = label if isinstance(label, tuple) else (label,)
    p, r = np.isin(pred, members) & use, np.isin(ref, members) & use
    return (
        int(np.sum(p & r)),
        int(np.sum(p & ~r)),
        int(np.sum(~p & r)),
        int(np.sum(~p & ~r & use)),
    )


def ref_case(
    pred: np.ndarray,
    ref: np.ndarray,
    labels: list[int | tuple[int, ...]],
    ignore: int | None,
    empty: str,
) -> dict[str, dict[str, float]]:
    out = {}
    for label in labels:
        tp, fp, fn, tn = ref_counts(pred, ref, label, ignore)
        absent = tp + fp + fn == 0
        fill = 1.0 if empty == "one" else math.nan
        out[str(label)] = {
            "Dice": fill if absent else 2 * tp / (2 * tp + fp + fn),
            "IoU": fill if absent else tp / (tp + fp + fn),
            "TP": tp,
            "FP": fp,
            "FN": fn,
            "TN": tn,
            "n_pred": tp + fp,
            "n_ref": tp + fn,
        }
    return out


def ref_label_set(
    cases: dict[str, tuple[np.ndarray, np.ndarray]],
    requested: list[int] | None,
    include_background: bool,
    ignore: int | None,
) -> list[int]:
    """The requested labels, else every label in any volume of any case (0 only with the
    background; never the ignore label)."""
    if requested is not None:
        return sorted(requested)
    present = set()
    for pred, ref in cases.values():
        present |= {int(v) for v in np.unique(pred)} | {int(v) for v in np.unique(ref)}
    return sorted(
        v for v in present if (include_background or v != 0) and (ignore is None or v != ignore)
    )


def ref_summary(
    cases: dict[str, tuple[np.ndarray, np.ndarray]],
    labels: list[int | tuple[int, ...]],
    ignore: int | None = None,
    empty: str = "nan",
) -> dict:  # type: ignore[type-arg]
    per_case = [
        {"metrics": ref_case(pred, ref, labels, ignore, empty)}
        for _, (pred, ref) in sorted(cases.items())
    ]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of all-NaN: NaN
        mean = {
            str(k): {
                m: float(np.nanmean([c["metrics"][str(k)][m] for c in per_case]))
                for m in NNUNET_METRICS
            }
            for k in labels
        }
        foreground = {
            m: float(np.mean([mean[str(k)][m] for k in labels if k != 0])) for m in NNUNET_METRICS
        }
    return {"metric_per_case": per_case, "mean": mean, "foreground_mean": foreground}


# ---------------------------------------------------------------------------------------------
# the data: 6 cases where labels 1..4 come and go


def make_cases() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(15)
    cases = {}
    # which labels each case's (prediction, reference) holds
    layout = [
        ({1, 2, 3}, {1, 2, 3}),
        ({1, 2}, {1, 3}),  # 2 only predicted, 3 only in the reference
        ({1, 4}, {1}),  # 4 only predicted
        ({2}, {2, 4}),  # 4 only in the reference
        ({1, 2, 3, 4}, {1, 2, 3, 4}),
        (set(), {3}),  # nothing predicted
    ]
    for i, (in_pred, in_ref) in enumerate(layout):
        pred = np.zeros(SHAPE, np.uint8)
        ref = np.zeros(SHAPE, np.uint8)
        for label in range(1, 5):
            corner = rng.integers(0, 5, size=3)
            size = rng.integers(3, 6, size=3)
            box = tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))
            if label in in_ref:
                ref[box] = label
            if label in in_pred:
                moved = tuple(slice(b.start + 1, b.stop + 1) for b in box)
                pred[moved] = label
        cases[f"case_{i:03d}"] = (pred, ref)
    return cases


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    root = tmp_path_factory.mktemp("nnunet")
    cases = make_cases()
    preds, refs = root / "preds", root / "refs"
    preds.mkdir()
    refs.mkdir()
    for case, (pred, ref) in cases.items():
        nib.save(nib.Nifti1Image(pred, AFFINE), preds / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(ref, AFFINE), refs / f"{case}.nii.gz")
    return preds, refs, cases


def compare(ours: object, expected: object, path: str, mismatches: list[str]) -> int:
    """Compare two JSON-like values field by field (NaN equals NaN, floats to 1e-12);
    returns the number of leaf fields compared and appends the paths that differ."""
    if isinstance(expected, dict):
        assert isinstance(ours, dict) and set(ours) == set(expected), path
        return sum(compare(ours[k], expected[k], f"{path}.{k}", mismatches) for k in expected)
    if isinstance(expected, list):
        assert isinstance(ours, list) and len(ours) == len(expected), path
        return sum(
            compare(a, b, f"{path}[{i}]", mismatches)
            for i, (a, b) in enumerate(zip(ours, expected, strict=True))
        )
    if isinstance(expected, float) and math.isnan(expected):
        same = isinstance(ours, float) and math.isnan(ours)
    elif isinstance(expected, int) and not isinstance(expected, bool):
        same = type(ours) is int and ours == expected
    else:
        same = ours == pytest.approx(expected, rel=1e-12, abs=0)
    if not same:
        mismatches.append(f"{path}: {ours!r} != {expected!r}")
    return 1


def check_layout(result, cases, labels, ignore=None, empty="nan") -> int:  # type: ignore[no-untyped-def]
    ours = nnunet_summary(result.reports, result.files)
    expected = ref_summary(cases, labels, ignore, empty)
    for entry in ours["metric_per_case"]:  # files: compared on their own
        entry.pop("prediction_file")
        entry.pop("reference_file")
    mismatches: list[str] = []
    fields = compare(ours, expected, "summary", mismatches)
    assert mismatches == [], mismatches
    return fields


def test_nnunet_layout_with_requested_labels(folders) -> None:  # type: ignore[no-untyped-def]
    preds, refs, cases = folders
    options = ScoringOptions(labels={1: None, 2: None, 3: None, 4: None})
    result = score_directory(preds, refs, options, workers=2)
    fields = check_layout(result, cases, [1, 2, 3, 4])
    assert fields == 6 * 4 * 8 + 4 * 8 + 8
    ours = nnunet_summary(result.reports, result.files)
    first = ours["metric_per_case"][0]
    assert first["prediction_file"] == str(preds / "case_000.nii.gz")
    assert first["reference_file"] == str(refs / "case_000.nii.gz")


def test_dumps_like_nnunet(folders) -> None:  # type: ignore[no-untyped-def]
    preds, refs, _ = folders
    options = ScoringOptions(labels={1: None, 2: None, 3: None, 4: None, 5: None})
    result = score_directory(preds, refs, options, workers=2)
    text = dumps_nnunet(nnunet_summary(result.reports, result.files))
    loaded = json.loads(text)
    assert list(loaded) == ["foreground_mean", "mean", "metric_per_case"]  # keys sorted
    assert math.isnan(loaded["mean"]["5"]["Dice"])  # label 5 is in no case: NaN, as nnU-Net
    assert math.isnan(loaded["foreground_mean"]["Dice"])
    assert loaded["mean"]["5"]["TP"] == 0.0 and isinstance(loaded["mean"]["1"]["TP"], float)
    assert isinstance(loaded["metric_per_case"][0]["metrics"]["1"]["TP"], int)
    assert "NaN" in text and "null" not in text


# ---------------------------------------------------------------------------------------------
# one label set per dataset (labels come and go), our own summary against the reference


@pytest.mark.parametrize("empty", ["nan", "one"])
def test_labels_that_come_and_go(folders, empty: str) -> None:  # type: ignore[no-untyped-def]
    preds, refs, cases = folders
    options = ScoringOptions(empty=empty)
    result = score_directory(preds, refs, options, workers=2)
    labels = ref_label_set(cases, None, False, None)
    assert labels == [1, 2, 3, 4]
    assert all([row.label for row in r.labels] == labels for r in result.reports)
    check_layout(result, cases, labels, empty=empty)
    expected = ref_summary(cases, labels, empty=empty)
    summary = result.summary
    for entry in summary["labels"]:
        per_case = [c["metrics"][str(entry["label"])] for c in expected["metric_per_case"]]
        dice = [c["Dice"] for c in per_case if not math.isnan(c["Dice"])]
        assert entry["cases"] == len(cases)
        assert entry["dice"]["n"] == len(dice)
        assert entry["dice"]["mean"] == pytest.approx(np.mean(dice), rel=1e-12)
        for ours, theirs in [("tp", "TP"), ("fp", "FP"), ("fn", "FN"), ("tn", "TN")]:
            values = [c[theirs] for c in per_case]
            assert entry[ours]["mean"] == pytest.approx(np.mean(values), rel=1e-12)
            assert entry[ours]["n"] == len(cases)
            assert entry[ours]["min"] == min(values) and entry[ours]["max"] == max(values)
        refs_ml = [c["n_ref"] * 0.9 * 1.2 * 2.0 / 1000 for c in per_case]
        assert entry["reference_ml"]["mean"] == pytest.approx(np.mean(refs_ml), rel=1e-6)
    fg = np.mean([e["dice"]["mean"] for e in summary["labels"]])
    assert summary["foreground_mean"]["dice"]["mean"] == pytest.approx(fg, rel=1e-12)
    assert summary["background"] is None
    if empty == "one":  # label 4 is absent from both volumes of 3 cases: 1.0 there
        label4 = summary["labels"][3]
        assert label4["dice"]["n"] == len(cases)
        assert label4["dice"]["max"] == 1.0


def test_requested_labels_and_predicted_extras(folders) -> None:  # type: ignore[no-untyped-def]
    """--labels 1,2,3: label 4, predicted in 2 cases, is reported in every case (its Dice 0
    where only the reference has it), flagged unrequested, and kept out of the means."""
    preds, refs, cases = folders
    options = ScoringOptions(labels={1: "a", 2: "b", 3: "c"})
    result = score_directory(preds, refs, options, workers=2)
    assert not result.failures
    for report in result.reports:
        assert [(r.label, r.requested) for r in report.labels] == [
            (1, True),
            (2, True),
            (3, True),
            (4, False),
        ]
        assert report.options.labels == {1: "a", 2: "b", 3: "c"}
    check_layout(result, cases, [1, 2, 3])  # the nnU-Net layout: the requested labels only
    expected = ref_summary(cases, [4])["metric_per_case"]
    dice4 = [c["metrics"]["4"]["Dice"] for c in expected]
    label4 = result.summary["labels"][3]
    assert label4["requested"] is False and label4["cases"] == len(cases)
    assert label4["dice"]["n"] == sum(not math.isnan(d) for d in dice4) == 3
    assert label4["dice"]["mean"] == pytest.approx(np.nanmean(dice4), rel=1e-12)
    assert result.summary["foreground_mean"]["dice"]["labels"] == 3


def test_background_is_reported_apart(folders) -> None:  # type: ignore[no-untyped-def]
    preds, refs, cases = folders
    for options in (
        ScoringOptions(include_background=True),
        ScoringOptions(labels={0: None, 1: None, 2: None, 3: None, 4: None}),
    ):
        result = score_directory(preds, refs, options, workers=2)
        labels = ref_label_set(cases, None, True, None)
        assert labels == [0, 1, 2, 3, 4]
        check_layout(result, cases, labels)
        expected = ref_summary(cases, labels)
        summary = result.summary
        assert summary["foreground_mean"]["dice"]["labels"] == 4
        assert summary["foreground_mean"]["dice"]["mean"] == pytest.approx(
            expected["foreground_mean"]["Dice"], rel=1e-12
        )
        assert summary["background"]["dice"] == pytest.approx(
            expected["mean"]["0"]["Dice"], rel=1e-12
        )


def test_confusion_without_a_reference_label() -> None:
    """The ignore label's reference voxels leave every count (nnU-Net's ignore mask)."""
    rng = np.random.default_rng(3)
    pred = rng.integers(0, 5, size=4000).astype(np.uint8)
    ref = rng.integers(0, 5, size=4000).astype(np.uint8)
    matrix = confusion_matrix(pred, ref).without_reference_label(4)
    assert matrix.voxels == int(np.sum(ref != 4))
    for label in (0, 1, 2, 3):
        assert matrix.counts(label) == ref_counts(pred, ref, label, 4)
    assert confusion_matrix(pred, ref).without_reference_label(None).voxels == 4000


# ---------------------------------------------------------------------------------------------
# --ignore-label, and score-dir --summary-format nnunet


@pytest.fixture(scope="module")
def ignored(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict]:  # type: ignore[type-arg]
    """The cases with an unannotated slab (label 9) in each reference, some predicted voxels
    inside it, and a prediction of 9 elsewhere in one case."""
    root = tmp_path_factory.mktemp("ignore")
    preds, refs = root / "preds", root / "refs"
    preds.mkdir()
    refs.mkdir()
    cases = {}
    for i, (case, (pred, ref)) in enumerate(make_cases().items()):
        ref = ref.copy()
        ref[:, :, i % 3 : i % 3 + 2] = 9
        pred = pred.copy()
        if i == 2:
            pred[0:2, 0:2, 6:8] = 9
        cases[case] = (pred, ref)
        nib.save(nib.Nifti1Image(pred, AFFINE), preds / f"{case}.nii.gz")
        nib.save(nib.Nifti1Image(ref, AFFINE), refs / f"{case}.nii.gz")
    return preds, refs, cases


def test_ignore_label_matches_nnunet(ignored) -> None:  # type: ignore[no-untyped-def]
    preds, refs, cases = ignored
    result = score_directory(preds, refs, ScoringOptions(ignore_label=9), workers=2)
    labels = ref_label_set(cases, None, False, 9)
    assert labels == [1, 2, 3, 4]  # 9 is never scored
    fields = check_layout(result, cases, labels, ignore=9)
    assert fields == 6 * 4 * 8 + 4 * 8 + 8
    for report in result.reports:  # every count leaves the ignored voxels out
        _, ref = cases[report.case_id]
        for row in report.labels:
            assert row.tp + row.fp + row.fn + row.tn == int(np.sum(ref != 9))
    # with the requested labels (cases scored a second time for label 9's extras: none)
    options = ScoringOptions(labels={1: None, 2: None, 3: None}, ignore_label=9)
    result = score_directory(preds, refs, options, workers=2)
    check_layout(result, cases, [1, 2, 3], ignore=9)
    assert all(4 in [r.label for r in rep.labels] for rep in result.reports)


def test_ignore_label_refusals() -> None:
    with pytest.raises(InvalidOptionError, match="ignore_label 2 is also in labels"):
        ScoringOptions(labels={1: None, 2: None}, ignore_label=2)
    probs = np.full((2, 4, 4), 0.5, np.float32)
    with pytest.raises(InvalidOptionError, match="label maps") as info:
        score_arrays(probs, np.zeros((4, 4), np.uint8), ScoringOptions(ignore_label=3))
    assert info.value.option == "ignore_label"


def test_cli_writes_nnunet_summary(folders, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    preds, refs, cases = folders
    out = tmp_path / "summary.json"
    args = ["score-dir", str(preds), str(refs), "--no-progress", "--workers", "2"]
    assert main([*args, "--summary-format", "nnunet", "-o", str(out)]) == 0
    loaded = json.loads(out.read_text())
    expected = ref_summary(cases, [1, 2, 3, 4])
    for entry in loaded["metric_per_case"]:
        assert Path(entry.pop("prediction_file")).parent == preds
        assert Path(entry.pop("reference_file")).parent == refs
    mismatches: list[str] = []
    assert compare(loaded, expected, "cli", mismatches) == 6 * 4 * 8 + 4 * 8 + 8
    assert mismatches == []
    capsys.readouterr()
    assert main([*args, "--summary-format", "nnunet", "--metrics", "dice"]) == 2
    assert "add dice and jaccard" in capsys.readouterr().err
    assert main([*args, "--summary-format", "nnunet", "--json", "--ignore-label", "4"]) == 0
    loaded = json.loads(capsys.readouterr().out)
    assert list(loaded["mean"]) == ["1", "2", "3"]


def test_service_form_field_ignore_label(tmp_path: Path, nifti_bytes) -> None:
    from fastapi.testclient import TestClient

    from jdt_service import Settings, create_app

    pred, ref = make_cases()["case_004"]
    ref = ref.copy()
    ref[:, :, :3] = 7
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        files = {
            "prediction": ("p.nii.gz", nifti_bytes(pred), "application/gzip"),
            "reference": ("r.nii.gz", nifti_bytes(ref), "application/gzip"),
        }
        answer = client.post("/v1/scores", files=files, data={"ignore_label": "7"})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["options"]["ignore_label"] == 7
        rows = {row["label"]: row for row in body["labels"]}
        assert 7 not in rows
        for label, row in rows.items():
            tp, fp, fn, tn = ref_counts(pred, ref, label, 7)
            assert (row["tp"], row["fp"], row["fn"], row["tn"]) == (tp, fp, fn, tn)
        answer = client.post("/v1/scores", files=files, data={"ignore_label": "7", "labels": "1,7"})
        assert answer.status_code == 422
        assert answer.json()["detail"]["code"] == "invalid_option"


def test_nnunet_layout_with_regions_keys_them_as_nnunet_does(folders) -> None:  # type: ignore[no-untyped-def]
    """Regions were left out without a word: nnU-Net keys them ``"(1, 2, 3)"`` and averages
    them into the foreground mean."""
    preds, refs, cases = folders
    options = ScoringOptions(
        labels={1: None, 2: None, 3: None, 4: None}, regions={"WT": (1, 2, 3), "TC": (2, 3)}
    )
    result = score_directory(preds, refs, options, workers=2)
    fields = check_layout(result, cases, [1, 2, 3, 4, (1, 2, 3), (2, 3)])
    assert fields == 6 * 6 * 8 + 6 * 8 + 8
    assert set(nnunet_summary(result.reports, result.files)["mean"]) == {
        "1", "2", "3", "4", "(1, 2, 3)", "(2, 3)"
    }  # fmt: skip


def test_nnunet_cases_come_in_the_order_of_the_file_names(tmp_path: Path) -> None:
    """nnU-Net lists the prediction folder sorted by file name: ``case-1.nii.gz`` before
    ``case.nii.gz`` ('-' sorts before '.'), where case ids sort ``case`` first."""
    for name in ("preds", "refs"):
        (tmp_path / name).mkdir()
    for case in ("case", "case-1"):
        for name in ("preds", "refs"):
            volume = np.zeros(SHAPE, np.uint8)
            volume[:3] = 1
            nib.save(nib.Nifti1Image(volume, AFFINE), tmp_path / name / f"{case}.nii.gz")
    result = score_directory(tmp_path / "preds", tmp_path / "refs")
    files = [
        Path(entry["prediction_file"]).name
        for entry in nnunet_summary(result.reports, result.files)["metric_per_case"]
    ]
    assert files == sorted(p.name for p in (tmp_path / "preds").iterdir())
    assert files == ["case-1.nii.gz", "case.nii.gz"]
