"""Boundary metrics and regions through the public scoring API: options, score_arrays,
score_files (NIfTI), the JSON report and the dataset summary."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from test_scoring_boundary import blobs, brute_force

from monai_jdt.scoring import ScoringOptions, score_arrays, score_files, summarize
from monai_jdt.scoring.boundary import BoundaryOptions, boundary_scores
from monai_jdt.scoring.errors import InvalidOptionError

SPACING = (0.8, 1.1, 1.7)
SHAPE = (20, 22, 16)


def pair(seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = blobs(SHAPE, 3, seed), blobs(SHAPE, 3, seed + 1)
    pred[pred == 1] = 0  # label 1 missed
    return pred, ref


def test_default_options_report_no_boundary_metric_and_no_region() -> None:
    pred, ref = pair()
    row = score_arrays(pred, ref, spacing=SPACING).to_dict()["labels"][0]
    assert not {"hd", "hd95", "assd", "masd", "nsd", "boundary_iou", "region"} & set(row)


def test_score_arrays_reports_the_boundary_metrics_of_labels_and_regions() -> None:
    pred, ref = pair()
    options = ScoringOptions.from_text(
        {
            "metrics": "dice,hd,hd95,assd,masd,nsd,boundary_iou",
            "regions": "WT=1,2,3;TC=2,3",
            "nsd_tolerance": "2=3",
            "boundary_width": "2",
        }
    )
    report = score_arrays(pred, ref, options, spacing=SPACING).to_dict()
    rows = report["labels"]
    assert [(r["label"], r.get("region")) for r in rows] == [
        (1, None),
        (2, None),
        (3, None),
        (None, "WT"),
        (None, "TC"),
    ]
    missed = rows[0]
    assert missed["hd95"] is None and missed["reasons"]["hd95"] == "prediction empty"
    assert missed["nsd"] == 0.0 and missed["boundary_iou"] == 0.0
    for row in rows[1:3]:
        label = row["label"]
        tol = 3.0 if label == 2 else 1.0
        expected = brute_force(pred == label, ref == label, SPACING, "voxel", "directed", tol)
        assert row["nsd_tolerance"] == tol
        assert {m: row[m] for m in expected} == pytest.approx(expected, rel=1e-12)
    for row in rows[3:]:
        union_p = np.isin(pred, row["members"]).astype(np.uint8)
        union_r = np.isin(ref, row["members"]).astype(np.uint8)
        direct = score_arrays(union_p, union_r, options.replace(regions=None), spacing=SPACING)
        expected = direct.to_dict()["labels"][0]
        for key in ("dice", "hd", "hd95", "assd", "masd", "nsd", "boundary_iou", "tp", "fp", "fn"):
            assert row[key] == expected[key], key


def test_score_files_reads_whole_volumes_for_boundary_metrics(tmp_path: Path) -> None:
    pred, ref = pair(3)
    affine = np.diag([*SPACING, 1.0])
    for name, volume in (("pred", pred), ("ref", ref)):
        nib.save(nib.Nifti1Image(volume, affine), tmp_path / f"{name}.nii.gz")
    options = ScoringOptions(metrics=("dice", "hd95", "nsd"), regions={"WT": (1, 2, 3)})
    from_files = score_files(tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", options)
    assert from_files.spacing == pytest.approx(SPACING)
    # the header holds float32 spacings; the data is read transposed, spacing reversed with it
    in_memory = score_arrays(pred, ref, options, spacing=from_files.spacing)
    for a, b in zip(from_files.labels, in_memory.labels, strict=True):
        assert (a.label, a.region) == (b.label, b.region)
        assert a.metrics.keys() == b.metrics.keys() and a.reasons == b.reasons
        for metric, value in b.metrics.items():
            assert a.metrics[metric] == (None if value is None else pytest.approx(value, rel=1e-12))
    # regions alone stream (no boundary metric): their counts come from the confusion matrix
    streamed = score_files(
        tmp_path / "pred.nii.gz", tmp_path / "ref.nii.gz", ScoringOptions(regions={"WT": (1, 2, 3)})
    )
    wt = streamed.labels[-1]
    assert wt.region == "WT" and wt.members == (1, 2, 3)
    assert (wt.tp, wt.fp, wt.fn) == (
        int(np.sum(np.isin(pred, (1, 2, 3)) & np.isin(ref, (1, 2, 3)))),
        int(np.sum(np.isin(pred, (1, 2, 3)) & ~np.isin(ref, (1, 2, 3)))),
        int(np.sum(~np.isin(pred, (1, 2, 3)) & np.isin(ref, (1, 2, 3)))),
    )


def _counts(row) -> tuple[int, ...]:  # type: ignore[no-untyped-def]
    return tuple(int(getattr(row, name)) for name in ("tp", "fp", "fn", "tn"))


def test_regions_with_only_requested_labels() -> None:
    """``--labels 1,2 --only-requested --regions U=1,2`` was refused ("only_requested needs
    labels"), and in ``score-dir`` every case failed: the region rows are scored without
    label names, and that dropped the labels but not ``only_requested``."""
    pred = np.array([[1, 1, 2, 3, 0, 2]], np.uint8)
    ref = np.array([[1, 2, 2, 3, 3, 0]], np.uint8)
    report = score_arrays(
        pred, ref, ScoringOptions(labels="1,2", only_requested=True, regions="U=1,2")
    )
    rows = {row.region or row.label: _counts(row) for row in report.labels}
    assert set(rows) == {1, 2, "U"}  # label 3 narrowed away, the region kept
    assert rows["U"] == (3, 1, 0, 2)  # {1, 2}: voxels 0-2 both, 5 predicted only


def test_ignore_label_leaves_region_counts_and_boundary_metrics() -> None:
    """nnU-Net's ignore label: the voxels whose reference is it leave the region counts (they
    were counted there while left out of the label rows) and the boundary metrics (they are
    background in both volumes there)."""
    tiny = score_arrays(
        np.array([[1, 1, 2, 0]], np.uint16),
        np.array([[1, 9, 9, 0]], np.uint16),
        ScoringOptions(ignore_label=9, regions="A=1,2;B=1"),
    )
    rows = {row.region or row.label: _counts(row) for row in tiny.labels}
    assert rows["B"] == rows[1] == (1, 0, 0, 1)  # (tp, fp, fn, tn) of label 1
    assert rows["A"] == (1, 0, 0, 1)  # labels 1, 2 on the two voxels not ignored
    shape, spacing = (24, 20, 16), (0.9, 1.1, 1.6)
    pred, ref = blobs(shape, 2, 30), blobs(shape, 2, 31)
    ref[:8] = 7  # an unannotated slab, where the prediction paints label 1 and 2
    options = ScoringOptions(
        ignore_label=7, metrics="dice,hd,hd95,assd,nsd", regions="U=1,2", include_background=True
    )
    report = score_arrays(pred, ref, options, spacing=spacing)
    masked = [np.where(ref == 7, 0, volume) for volume in (pred, ref)]  # background in both
    expected = score_arrays(*masked, options.replace(ignore_label=None), spacing=spacing)
    plain = score_arrays(pred, ref, options.replace(ignore_label=None), spacing=spacing)

    def rows_of(scored) -> dict:  # type: ignore[no-untyped-def, type-arg]
        return {row.region or row.label: row for row in scored.labels if row.label != 7}

    want_rows, raw_rows = rows_of(expected), rows_of(plain)
    assert set(rows_of(report)) == {0, 1, 2, "U"}  # label 0 too: the ignored voxels are
    # background in the reference as in the prediction, for its distances as for the others
    for key, got in rows_of(report).items():
        want, raw = want_rows[key], raw_rows[key]
        for metric in ("hd", "hd95", "assd", "nsd"):
            assert got.metrics[metric] == want.metrics[metric], (got.label, metric)
        assert got.metrics["hd"] != raw.metrics["hd"]  # the slab did count before
        # and the counts of the rows, regions included, are those of the voxels kept
        kept = ref != 7
        members = (got.label,) if got.label is not None else (1, 2)
        p, r = np.isin(pred[kept], members), np.isin(ref[kept], members)
        assert _counts(got) == (
            int((p & r).sum()),
            int((p & ~r).sum()),
            int((~p & r).sum()),
            int((~p & ~r).sum()),
        )


def test_without_spacing_distances_are_in_voxels_and_a_note_says_so() -> None:
    pred, ref = pair(11)
    options = ScoringOptions(metrics=("hd",))
    report = score_arrays(pred, ref, options)
    assert any("in voxels" in note for note in report.notes)
    expected = brute_force(pred == 2, ref == 2, (1.0, 1.0, 1.0), "voxel", "directed", 1.0)
    assert report.label(2).metrics["hd"] == pytest.approx(expected["hd"])
    assert not any(
        "in voxels" in n for n in score_arrays(pred, ref, options, spacing=SPACING).notes
    )


def test_boundary_metrics_of_probability_maps_are_refused() -> None:
    probs = np.full((2, 6, 6, 6), 0.5)
    with pytest.raises(InvalidOptionError, match="need label maps") as err:
        score_arrays(probs, np.zeros((6, 6, 6), np.uint8), ScoringOptions(metrics=("hd95",)))
    assert err.value.option == "metrics"


@pytest.mark.parametrize(
    ("values", "option"),
    [
        ({"metrics": "dice,hd96"}, "metrics"),
        ({"percentile": "101"}, "percentile"),
        ({"percentile_mode": "both"}, "percentile_mode"),
        ({"nsd_tolerance": "1=-1"}, "nsd_tolerance"),
        ({"boundary_width": "-1"}, "boundary_width"),
        ({"surface": "mesh"}, "surface"),
        ({"regions": "WT=1,x"}, "regions"),
        ({"missing_distance": "-3"}, "missing_distance"),
    ],
)
def test_bad_boundary_options_name_the_option(values: dict[str, str], option: str) -> None:
    with pytest.raises(InvalidOptionError) as err:
        ScoringOptions.from_text(values)
    assert err.value.option == option


def test_summary_charges_missing_distance_and_counts_missed_structures() -> None:
    pred, ref = pair(5)
    spurious = pred.copy()
    spurious[0:2, 0:2, 0:2] = 4  # label 4 only predicted
    metrics = ("dice", "hd95", "assd")
    options = ScoringOptions(metrics=metrics, regions={"A": (2, 3)})
    reports = [
        score_arrays(pred, ref, options, spacing=SPACING),
        score_arrays(spurious, ref, options, spacing=SPACING),
    ]
    summary = summarize(reports)
    by_label = {e["label"]: e for e in summary["labels"]}
    diagonal = math.sqrt(sum((n * s) ** 2 for n, s in zip(SHAPE, SPACING, strict=True)))
    assert by_label[1]["missed"] == 2 and by_label[1]["spurious"] == 0
    assert by_label[1]["hd95"]["mean"] == pytest.approx(diagonal)
    assert by_label[4]["spurious"] == 1 and by_label[4]["hd95"]["n"] == 1
    expected = boundary_scores(pred, ref, [2], BoundaryOptions(metrics=("hd95",)), spacing=SPACING)
    assert by_label[2]["hd95"]["mean"] == pytest.approx(expected[0].values["hd95"])
    assert [r["region"] for r in summary["regions"]] == ["A"]
    charged = summarize(
        [score_arrays(pred, ref, options.replace(missing_distance=50.0), spacing=SPACING)]
    )
    assert charged["labels"][0]["assd"]["mean"] == 50.0


def test_service_form_fields_ask_for_boundary_metrics_and_regions(
    tmp_path: Path, nifti_bytes
) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from jdt_service import Settings, create_app

    pred, ref = pair(7)
    (tmp_path / "up").mkdir()
    settings = Settings(device="cpu", temp_dir=tmp_path / "up", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        answer = client.post(
            "/v1/scores",
            files={
                "prediction": ("p.nii.gz", nifti_bytes(pred), "application/octet-stream"),
                "reference": ("r.nii.gz", nifti_bytes(ref), "application/octet-stream"),
            },
            data={
                "metrics": "dice,hd95,nsd",
                "regions": "WT=1,2,3",
                "nsd_tolerance": "2",
                "surface": "surfel",
            },
        )
        assert answer.status_code == 200, answer.text
        rows = answer.json()["labels"]
        assert rows[-1]["region"] == "WT" and rows[-1]["nsd_tolerance"] == 2.0
        options = ScoringOptions(
            metrics=("dice", "hd95", "nsd"),
            regions={"WT": (1, 2, 3)},
            nsd_tolerance=2.0,
            surface="surfel",
        )
        expected = score_arrays(pred, ref, options).to_dict()["labels"]
        assert [r.get("hd95") for r in rows] == pytest.approx([r.get("hd95") for r in expected])
        bad = client.post(
            "/v1/scores",
            files={
                "prediction": ("p.nii.gz", nifti_bytes(pred), "application/octet-stream"),
                "reference": ("r.nii.gz", nifti_bytes(ref), "application/octet-stream"),
            },
            data={"regions": "WT=1,x"},
        )
        assert bad.status_code == 422 and "regions" in bad.text


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs CUDA")
def test_cuda_score_arrays_boundary_metrics_equal_the_cpu_report() -> None:
    import torch

    pred, ref = pair(9)
    options = ScoringOptions(metrics=("dice", "hd95", "assd", "nsd"), regions={"WT": (1, 2, 3)})
    cpu = score_arrays(pred, ref, options.replace(device="cpu"), spacing=SPACING)
    gpu = score_arrays(
        torch.from_numpy(pred).cuda(), torch.from_numpy(ref).cuda(), options, spacing=SPACING
    )
    assert gpu.device.startswith("cuda")
    for a, b in zip(gpu.labels, cpu.labels, strict=True):
        assert (a.label, a.region, a.reasons, a.tp) == (b.label, b.region, b.reasons, b.tp)
        for metric, value in b.metrics.items():
            assert a.metrics[metric] == (None if value is None else pytest.approx(value, rel=1e-4))
