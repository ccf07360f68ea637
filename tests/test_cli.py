"""The monai-jdt command line: score, score-dir, serve's lazy registration, errors."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_jdt.cli import main

AFFINE = np.diag([1.0, 1.5, 2.0, 1.0])


def save(path: Path, data: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(data.astype(np.uint8), AFFINE), path)
    return path


@pytest.fixture()
def case(tmp_path: Path, organ_pair) -> tuple[Path, Path, np.ndarray, np.ndarray]:
    pred, ref = organ_pair((24, 22, 18), 3, seed=5)
    return save(tmp_path / "p.nii.gz", pred), save(tmp_path / "r.nii.gz", ref), pred, ref


@pytest.fixture()
def folders(tmp_path: Path, organ_pair) -> tuple[Path, Path]:
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    for i in range(3):
        pred, ref = organ_pair((20, 18, 16), 2, seed=i)
        save(preds / f"case{i}.nii.gz", pred)
        save(refs / f"case{i}.nii" if i == 1 else refs / f"case{i}.nii.gz", ref)
    save(preds / "orphan.nii.gz", pred)
    save(refs / "lonely.nii.gz", ref)
    (preds / "readme.txt").write_text("not a case")
    return preds, refs


def test_score_table(case, capsys, numpy_scores) -> None:  # type: ignore[no-untyped-def]
    p, r, pred, ref = case
    assert main(["score", str(p), str(r), "--labels", "1=liver,2=spleen"]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "spleen" in out and "3*" in out
    assert f"{numpy_scores(pred, ref, 1)['dice']:.4f}" in out


def test_score_json_output_and_csv(case, tmp_path: Path, capsys, numpy_scores) -> None:  # type: ignore[no-untyped-def]
    p, r, pred, ref = case
    out_json, out_csv = tmp_path / "o.json", tmp_path / "o.csv"
    args = ["score", str(p), str(r), "--json", "-o", str(out_json), "--csv", str(out_csv)]
    assert main([*args, "--metrics", "dice,tversky", "--tversky-alpha", "0.2"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(out_json.read_text())
    assert printed["options"]["metrics"] == ["dice", "tversky"]
    assert printed["spacing_mm"] == [1.0, 1.5, 2.0]
    row = printed["labels"][0]
    assert row["label"] == 1 and row["dice"] == pytest.approx(numpy_scores(pred, ref, 1)["dice"])
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["label"] for r in rows] == ["1", "2", "3"] and rows[0]["case_id"] == "p"


def test_score_empty_label_is_null_in_json(case, capsys) -> None:  # type: ignore[no-untyped-def]
    p, r, _, _ = case
    assert main(["score", str(p), str(r), "--json", "--labels", "9"]) == 0
    rows = json.loads(capsys.readouterr().out)["labels"]
    nine = next(x for x in rows if x["label"] == 9)
    assert nine["dice"] is None and "absent" in nine["reasons"]["dice"]
    assert main(["score", str(p), str(r), "--json", "--labels", "9", "--empty", "one"]) == 0
    rows = json.loads(capsys.readouterr().out)["labels"]
    assert next(x for x in rows if x["label"] == 9)["dice"] == 1.0


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        (["--labels", "liver"], "labels"),
        (["--metrics", "dice,hd96"], "metrics"),  # hd95 is a metric since the boundary issue
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_options_are_one_line(case, capsys, extra, needle) -> None:  # type: ignore[no-untyped-def]
    p, r, _, _ = case
    assert main(["score", str(p), str(r), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err and "Traceback" not in err


def test_bad_input_is_one_line(case, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    p, _, pred, _ = case
    other = save(tmp_path / "o.nii.gz", pred[:, :, :-2])
    assert main(["score", str(p), str(other)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "[shape_mismatch]" in err and "(24, 22, 16)" in err
    assert main(["score", str(p), str(tmp_path / "nope.nii.gz")]) == 2
    assert "[not_nifti]" in capsys.readouterr().err


def test_score_dir(folders, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    preds, refs = folders
    out_json, out_csv = tmp_path / "s.json", tmp_path / "c.csv"
    args = ["score-dir", str(preds), str(refs), "-o", str(out_json), "--csv", str(out_csv)]
    assert main([*args, "--workers", "2", "--labels", "1=a,2=b"]) == 0
    captured = capsys.readouterr()
    assert "orphan.nii.gz" in captured.err and "lonely.nii.gz" in captured.err
    assert "3 cases scored" in captured.out
    data = json.loads(out_json.read_text())
    assert data["unpaired"] == {"predictions": ["orphan.nii.gz"], "references": ["lonely.nii.gz"]}
    assert [c["case_id"] for c in data["cases"]] == ["case0", "case1", "case2"]
    summary = data["summary"]
    assert summary["cases"] == 3 and summary["labels"][0]["name"] == "a"
    dice = [c["labels"][0]["dice"] for c in data["cases"]]
    assert summary["labels"][0]["dice"]["mean"] == pytest.approx(np.mean(dice))
    rows = list(csv.DictReader(out_csv.open()))
    assert len(rows) == 6 and {r["case_id"] for r in rows} == {"case0", "case1", "case2"}


def test_score_dir_failed_case_and_json(folders, capsys) -> None:  # type: ignore[no-untyped-def]
    preds, refs = folders
    (preds / "case2.nii.gz").write_bytes(b"garbage")
    assert main(["score-dir", str(preds), str(refs), "--json", "--no-progress"]) == 1
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    assert data["failures"] == [
        {"case_id": "case2", "code": "not_nifti", "message": data["failures"][0]["message"]}
    ]
    assert "case2" in captured.err and data["summary"]["cases"] == 2


def test_score_dir_without_pairs(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["score-dir", str(tmp_path / "a"), str(tmp_path / "b")]) == 2
    assert "no case" in capsys.readouterr().err
    assert main(["score-dir", str(tmp_path / "x"), str(tmp_path / "b")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_subprocess_score_imports_no_fastapi(case, numpy_scores) -> None:  # type: ignore[no-untyped-def]
    p, r, pred, ref = case
    code = (
        "import sys; from monai_jdt.cli import main; rc = main(sys.argv[1:]); "
        "sys.stderr.write(str('fastapi' in sys.modules)); sys.exit(rc)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, "score", str(p), str(r), "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == "False"
    report = json.loads(done.stdout)
    assert report["labels"][1]["jaccard"] == pytest.approx(numpy_scores(pred, ref, 2)["jaccard"])


def test_usage_errors_are_one_line(capsys) -> None:  # type: ignore[no-untyped-def]
    for argv in (["score", "only_one.nii.gz"], ["score-dir", "a", "b", "--affine-tol", "x"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "error:" in err and "usage" not in err


def test_a_closed_stdout_is_not_an_internal_error(case) -> None:  # type: ignore[no-untyped-def]
    """``monai-jdt score ... | head -1``: the reader goes away before the table is written."""
    p, r, _, _ = case
    command = [sys.executable, "-m", "monai_jdt.cli", "score", str(p), str(r)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the process (still importing) writes a byte
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert "internal error" not in err


def test_a_file_that_is_no_nifti_is_not_told_to_be_renamed(case, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    _, r, _, _ = case
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(b"hello")
    assert main(["score", str(junk), str(r)]) == 2
    err = capsys.readouterr().err
    assert "not a NIfTI file" in err and "rename" not in err


def test_a_conflict_of_two_options_names_no_empty_flag(case, capsys) -> None:  # type: ignore[no-untyped-def]
    p, r, _, _ = case
    assert main(["score", str(p), str(r), "--labels", "1", "--ignore-label", "1"]) == 2
    err = capsys.readouterr().err
    assert "ignore_label 1 is also in labels" in err and "(see --)" not in err
    assert err.rstrip().endswith("(see --ignore-label, --labels)")
    # each check of two options names both flags
    assert main(["score", str(p), str(r), "--only-requested"]) == 2
    err = capsys.readouterr().err
    assert "only_requested needs labels" in err
    assert err.rstrip().endswith("(see --only-requested, --labels)")
    tolerance = ["--regions", "WT=1", "--nsd-tolerance", "wt=2", "--metrics", "nsd"]
    assert main(["score", str(p), str(r), *tolerance]) == 2
    err = capsys.readouterr().err
    assert "'wt', which is not a region" in err
    assert err.rstrip().endswith("(see --nsd-tolerance, --regions)")


def test_an_error_of_one_file_says_whether_it_is_the_prediction_or_the_reference(
    case, tmp_path: Path, capsys
) -> None:  # type: ignore[no-untyped-def]
    """In score-dir both folders hold ``bad.nii.gz``: the message must say which one."""
    p, r, _, _ = case
    for role, (pred, ref) in {"prediction": (None, r), "reference": (p, None)}.items():
        junk = tmp_path / role / "bad.nii.gz"
        junk.parent.mkdir()
        junk.write_bytes(b"hello")
        assert main(["score", str(pred or junk), str(ref or junk)]) == 2
        assert f"[not_nifti] {role} bad.nii.gz: not a NIfTI file" in capsys.readouterr().err
