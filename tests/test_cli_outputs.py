"""What the command line writes, and what it does when writing fails or stops midway: the
report files (-o, --csv), stdout, stderr lines, and Ctrl-C."""

from __future__ import annotations

import csv
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

from monai_jdt.cli import main
from monai_jdt.scoring import folders
from monai_jdt.scoring.folders import write_csv

_CLI = [sys.executable, "-c", "import sys; from monai_jdt.cli import main; sys.exit(main())"]


@pytest.fixture
def cases(tmp_path: Path, case_files) -> tuple[Path, Path]:  # type: ignore[no-untyped-def]
    """Two folders of 4 cases, and a fifth whose prediction is not NIfTI (it fails)."""
    preds, refs = case_files(4, seed=80)
    preds["zz_broken.nii.gz"] = b""
    refs["zz_broken.nii.gz"] = refs["case_000.nii.gz"]
    for name, files in (("preds", preds), ("refs", refs)):
        (tmp_path / name).mkdir()
        for file, data in files.items():
            (tmp_path / name / file).write_bytes(data)
    return tmp_path / "preds", tmp_path / "refs"


def test_outputs_are_checked_before_anything_is_scored(
    tmp_path: Path, cases, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """A missing output folder failed after the whole run (its work lost); -o and --csv on
    one path let the CSV replace the JSON, exit 0."""
    preds, refs = cases
    monkeypatch.setattr(folders, "score_case", lambda *a: pytest.fail("scored before"))
    same = str(tmp_path / "out")
    for flags, said in (
        (["-o", str(tmp_path / "no" / "such" / "r.json")], "does not exist"),
        (["--csv", str(tmp_path)], "is a folder"),
        (["-o", same, "--csv", same], "-o and --csv name one file"),
    ):
        assert main(["score-dir", str(preds), str(refs), "--no-progress", *flags]) == 2
        captured = capsys.readouterr()
        assert said in captured.err and captured.out == ""
    assert not (tmp_path / "out").exists()


def test_a_report_that_cannot_be_written_whole_leaves_the_old_one(
    tmp_path: Path, cases, capsys, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    """The file was truncated in place: a full disk midway left half a CSV, the old gone."""
    preds, refs = cases
    old = tmp_path / "cases.csv"
    old.write_text("the old report\n")

    def half_then_full(reports, stream, failures=()):  # type: ignore[no-untyped-def]
        stream.write("case_id,label\n")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folders, "write_csv", half_then_full)
    argv = ["score-dir", str(preds), str(refs), "--no-progress", "--csv", str(old)]
    assert main(argv) == 2
    assert "cannot write" in capsys.readouterr().err
    assert old.read_text() == "the old report\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cases.csv", "preds", "refs"]
    monkeypatch.undo()
    assert main(argv) == 1  # the broken case
    rows = list(csv.DictReader(old.open(newline="")))
    assert {row["case_id"] for row in rows} == {f"case_{i:03d}" for i in range(4)} | {"zz_broken"}
    assert oct(old.stat().st_mode & 0o777) != oct(0o600)  # not the temporary file's mode
    link = tmp_path / "link.csv"
    link.symlink_to(old)
    assert main([*argv[:-1], str(link)]) == 1
    assert link.is_symlink() and link.read_text() == old.read_text()  # the link's file replaced


def test_a_carriage_return_in_a_case_id_stays_inside_its_cell() -> None:
    """The csv module quotes "\\n" but not a lone "\\r", which a reader takes as a line end:
    one case named a\\rb read as several records."""
    import numpy as np

    from monai_jdt.scoring import score_arrays

    volume = np.zeros((4, 4, 4), np.uint8)
    volume[1:3, 1:3, 1:3] = 1
    reports = [score_arrays(volume, volume, case_id=name) for name in ("a\rb", "plain")]
    stream = io.StringIO()
    write_csv(reports, stream)
    rows = list(csv.reader(io.StringIO(stream.getvalue(), newline="")))
    assert [row[0] for row in rows] == ["case_id", "a\rb", "plain"]
    assert stream.getvalue().split("\n")[2].startswith("plain,")  # other rows as before


def _run(argv: list[str], **kwargs) -> subprocess.CompletedProcess[str]:  # type: ignore[no-untyped-def]
    return subprocess.run([*_CLI, *argv], text=True, timeout=120, check=False, **kwargs)


def test_stdout_that_cannot_be_written_is_a_clear_error(tmp_path: Path, cases) -> None:  # type: ignore[no-untyped-def]
    """A full disk and a closed stdout were internal errors (exit 3, OSError / AttributeError)."""
    preds, refs = cases
    pair = [str(preds / "case_000.nii.gz"), str(refs / "case_000.nii.gz")]
    with open("/dev/full", "w") as full:
        done = _run(["score", *pair], stdout=full, stderr=subprocess.PIPE)
    assert done.returncode == 2
    assert done.stderr.strip() == "monai-jdt: error: cannot write stdout: No space left on device"

    def closed() -> None:
        os.close(1)

    done = _run(["score", *pair], preexec_fn=closed, stderr=subprocess.PIPE)
    assert done.returncode == 2 and "stdout is closed" in done.stderr
    report = tmp_path / "r.json"
    done = _run(["score", *pair, "-o", str(report)], preexec_fn=closed, stderr=subprocess.PIPE)
    assert done.returncode == 0 and report.stat().st_size > 0


def test_a_reader_that_went_away_keeps_the_failures_and_the_status(cases) -> None:  # type: ignore[no-untyped-def]
    """`| head` closing early made score-dir exit 0 without the failed case's line."""
    preds, refs = cases
    read, write = os.pipe()
    os.close(read)  # the reader has gone before the first byte
    try:
        done = _run(
            ["score-dir", str(preds), str(refs), "--no-progress"],
            stdout=write,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write)
    assert done.returncode == 1
    assert "error: case zz_broken: [not_nifti]" in done.stderr


def test_a_name_with_a_newline_cannot_make_a_line_of_its_own(tmp_path: Path, cases) -> None:  # type: ignore[no-untyped-def]
    preds, refs = cases
    forged = "x\nerror: case case_000: [shape_mismatch] forged"
    (preds / f"{forged}.nii.gz").write_bytes(b"")
    (refs / f"{forged}.nii.gz").write_bytes((refs / "case_000.nii.gz").read_bytes())
    done = _run(["score-dir", str(preds), str(refs), "--no-progress"], capture_output=True)
    assert done.returncode == 1
    lines = done.stderr.splitlines()
    assert [line for line in lines if line.startswith("error: case case_000")] == []
    assert any(line.startswith("error: case x\\nerror") for line in lines), lines


def test_a_path_that_is_not_a_folder_is_not_said_to_be_missing(
    tmp_path: Path, cases, capsys
) -> None:  # type: ignore[no-untyped-def]
    preds, _ = cases
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert main(["score-dir", str(preds), str(fifo)]) == 2
    assert "the reference folder" in (err := capsys.readouterr().err) and "is not a folder" in err


def test_ctrl_c_cancels_the_cases_still_queued(tmp_path: Path, monkeypatch) -> None:
    """Leaving the thread pool waited for every queued case: one Ctrl-C scored the whole
    dataset before it stopped. Now the cases not yet started are not scored."""
    started: list[str] = []

    def score(case, pred, ref, options):  # type: ignore[no-untyped-def]
        started.append(case)
        return folders.CaseFailure(case, "corrupt_file", "never read")

    def interrupt(outcome) -> None:  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(folders, "score_case", score)
    pairs = [(f"c{i}", tmp_path / "p", tmp_path / "r") for i in range(200)]
    with pytest.raises(KeyboardInterrupt):
        folders._score_pairs(pairs, folders.DEFAULT_OPTIONS, 1, interrupt)
    assert len(started) < 10, len(started)
