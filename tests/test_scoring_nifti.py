"""NIfTI round trips (.nii / .nii.gz written by nibabel) and every file-level validation error."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_jdt.scoring import (
    AffineMismatchError,
    CorruptFileError,
    NotNiftiError,
    ScoringOptions,
    ShapeMismatchError,
    UnsupportedDataTypeError,
    VolumeTooLargeError,
    inspect_nifti,
    score_arrays,
    score_files,
)
from monai_jdt.scoring.sitk_formats import inspect_volume

SHAPE = (30, 26, 20)
AFFINE = np.diag([0.8, 0.9, 2.5, 1.0])


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE, cls=nib.Nifti1Image) -> Path:  # type: ignore[no-untyped-def]
    image = cls(data, affine)
    image.header.set_xyzt_units("mm")
    nib.save(image, path)
    return path


@pytest.fixture(scope="module")
def pair(organ_pair) -> tuple[np.ndarray, np.ndarray]:
    return organ_pair(SHAPE, 5, seed=21)


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32])
def test_round_trip_matches_numpy(
    tmp_path: Path, pair, suffix: str, dtype: type, numpy_scores
) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    p = save(tmp_path / f"case_7{suffix}", pred.astype(dtype))
    r = save(tmp_path / f"ref{suffix}", ref.astype(np.uint8))
    report = score_files(p, r)
    assert report.case_id == "case_7"
    assert report.shape == SHAPE and report.spacing == pytest.approx((0.8, 0.9, 2.5))
    assert [row.label for row in report.labels] == [1, 2, 3, 4, 5]
    for row in report.labels:
        expected = numpy_scores(pred, ref, row.label)
        assert row.metrics["dice"] == pytest.approx(expected["dice"], rel=1e-12)
        assert row.metrics["jaccard"] == pytest.approx(expected["jaccard"], rel=1e-12)
        voxel_ml = 0.8 * 0.9 * 2.5 / 1000
        assert row.reference_ml == pytest.approx(np.sum(ref == row.label) * voxel_ml, rel=1e-6)


def test_headers_read_beforehand_are_used_as_given(
    tmp_path: Path, pair, numpy_scores, monkeypatch: pytest.MonkeyPatch
) -> None:  # type: ignore[no-untyped-def]
    """``inspected=`` (the service's memory estimate read the headers): the same numbers, and
    the headers are not read a second time."""
    import monai_jdt.scoring.files as files

    pred, ref = pair
    p = save(tmp_path / "case_8.nii.gz", pred.astype(np.uint8))
    r = save(tmp_path / "ref.nii.gz", ref.astype(np.uint8))
    infos = (inspect_volume(p, 10**8), inspect_volume(r, 10**8))
    calls: list[object] = []
    monkeypatch.setattr(files, "inspect_volume", lambda *a: calls.append(a))
    report = score_files(p, r, ScoringOptions(max_voxels=10**8), inspected=infos)
    assert calls == []
    for row in report.labels:
        assert row.metrics["dice"] == pytest.approx(
            numpy_scores(pred, ref, row.label)["dice"], rel=1e-12
        )


def test_big_endian_and_nifti2(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    base = score_arrays(pred, ref, spacing=(0.8, 0.9, 2.5)).to_dict()["labels"]
    header = nib.Nifti1Header(endianness=">")
    header.set_data_dtype(np.int16)
    big = nib.Nifti1Image(pred.astype(">i2"), AFFINE, header)
    nib.save(big, tmp_path / "big.nii.gz")
    assert inspect_nifti(tmp_path / "big.nii.gz").dtype == np.dtype(">i2")
    save(tmp_path / "two.nii", ref.astype(np.uint8), cls=nib.Nifti2Image)
    info = inspect_nifti(tmp_path / "two.nii")
    assert info.version == 2 and not info.is_gzip
    report = score_files(tmp_path / "big.nii.gz", tmp_path / "two.nii")
    assert report.to_dict()["labels"] == base


def test_inspect_reads_the_header(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    path = save(tmp_path / "x.nii.gz", pair[0].astype(np.int16))
    info = inspect_nifti(path)
    assert info.shape == SHAPE and info.voxels == np.prod(SHAPE)
    assert info.dtype == np.dtype("<i2") and info.is_gzip and info.version == 1
    np.testing.assert_allclose(info.affine, AFFINE)
    assert info.spacing == pytest.approx((0.8, 0.9, 2.5))
    image = nib.Nifti1Image(pair[0].astype(np.uint8), AFFINE)
    image.header.set_xyzt_units("meter")
    nib.save(image, tmp_path / "m.nii")
    assert inspect_nifti(tmp_path / "m.nii").spacing == pytest.approx((800, 900, 2500))


def test_scaled_file_is_rescaled(tmp_path: Path, pair, numpy_scores) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    path = save(tmp_path / "scaled.nii", pred.astype(np.uint8))
    raw = bytearray(path.read_bytes())
    raw[112:116] = struct.pack("<f", 2.0)  # scl_slope of NIfTI-1
    path.write_bytes(bytes(raw))
    save(tmp_path / "ref.nii", (ref * 2).astype(np.uint8))
    report = score_files(path, tmp_path / "ref.nii")
    assert [row.label for row in report.labels] == [2, 4, 6, 8, 10]
    expected = numpy_scores(pred, ref, 3)["dice"]
    assert report.label(6).metrics["dice"] == pytest.approx(expected, rel=1e-12)


def test_multi_member_gzip(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    raw = save(tmp_path / "p.nii", pred.astype(np.uint8)).read_bytes()
    half = len(raw) // 2
    (tmp_path / "multi.nii.gz").write_bytes(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    r = save(tmp_path / "r.nii.gz", ref.astype(np.uint8))
    assert (
        score_files(tmp_path / "multi.nii.gz", r).to_dict()["labels"]
        == score_files(tmp_path / "p.nii", r).to_dict()["labels"]
    )


def test_probability_file_with_channel_axis(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    probs = np.eye(6, dtype=np.float32)[pred] * 0.7 + 0.05  # (X, Y, Z, C), sums to 1
    p = save(tmp_path / "probs.nii.gz", probs)
    r = save(tmp_path / "ref.nii.gz", ref.astype(np.uint8))
    report = score_files(p, r)
    assert report.kind == "probabilities" and report.shape == SHAPE
    expected = score_arrays(np.moveaxis(probs, -1, 0), ref)
    for a, b in zip(report.labels, expected.labels, strict=True):
        assert a.metrics["dice"] == pytest.approx(b.metrics["dice"], rel=1e-9)


def test_not_nifti(tmp_path: Path) -> None:
    text = tmp_path / "notes.nii"
    text.write_text("hello, this is not an image" * 20)
    zipped = tmp_path / "notes.nii.gz"
    zipped.write_bytes(gzip.compress(text.read_bytes()))
    empty = tmp_path / "empty.nii"
    empty.write_bytes(b"")
    for path in (text, zipped, empty, tmp_path / "missing.nii.gz"):
        with pytest.raises(NotNiftiError, match=path.name):
            inspect_nifti(path)
    nib.save(nib.Nifti1Pair(np.zeros((2, 2, 2), np.uint8), AFFINE), tmp_path / "pair.img")
    with pytest.raises(NotNiftiError, match="pair"):
        inspect_nifti(tmp_path / "pair.hdr")


def test_truncated_and_corrupt(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 4, size=(40, 40, 40)).astype(np.uint8)
    good = save(tmp_path / "good.nii.gz", noisy).read_bytes()
    ref = save(tmp_path / "ref.nii.gz", noisy)
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(good[: len(good) * 2 // 3])
    with pytest.raises(CorruptFileError, match="truncated"):
        score_files(cut, ref)
    flipped = bytearray(good)
    for i in range(len(good) // 2, len(good) // 2 + 64):
        flipped[i] ^= 0xFF
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CorruptFileError, match=r"bad\.nii\.gz"):
        score_files(bad, ref)
    raw = save(tmp_path / "raw.nii", noisy).read_bytes()
    short = tmp_path / "short.nii"
    short.write_bytes(raw[:-100])
    with pytest.raises(CorruptFileError, match="truncated"):
        inspect_nifti(short)


def test_voxel_limit_is_checked_before_inflating(tmp_path: Path) -> None:
    data = np.random.default_rng(1).integers(0, 3, size=(50, 50, 50)).astype(np.uint8)
    whole = save(tmp_path / "big.nii.gz", data).read_bytes()
    headless = tmp_path / "head_only.nii.gz"
    headless.write_bytes(whole[:3000])  # a valid header, then the data is cut off
    with pytest.raises(VolumeTooLargeError, match="125000 voxels"):
        score_files(headless, headless, ScoringOptions(max_voxels=100_000))
    with pytest.raises(CorruptFileError):
        score_files(headless, headless)


def test_shape_and_affine_mismatch(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    p = save(tmp_path / "p.nii.gz", pred.astype(np.uint8))
    small = save(tmp_path / "small.nii.gz", ref[:, :, :-1].astype(np.uint8))
    with pytest.raises(ShapeMismatchError, match=r"\(30, 26, 20\).*\(30, 26, 19\)"):
        score_files(p, small)
    moved = AFFINE.copy()
    moved[0, 3] = 0.01
    r = save(tmp_path / "r.nii.gz", ref.astype(np.uint8), affine=moved)
    with pytest.raises(AffineMismatchError, match=r"0\.01"):
        score_files(p, r)
    assert score_files(p, r, ScoringOptions(affine_tol=0.02)).labels
    assert score_files(p, r, ScoringOptions(ignore_affine=True)).labels


def test_complex_data_is_refused(tmp_path: Path) -> None:
    path = save(tmp_path / "c.nii", np.zeros((3, 3, 3), np.complex64))
    with pytest.raises(UnsupportedDataTypeError, match="complex64"):
        inspect_nifti(path)


def test_a_fifo_or_a_folder_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """Opening a FIFO blocks until something writes to it: score-dir on a folder holding one
    hung for ever. It is refused (not_nifti) from its stat, as a folder named like a volume."""
    import os
    import subprocess
    import sys

    preds, refs = tmp_path / "preds", tmp_path / "refs"
    for folder in (preds, refs):
        folder.mkdir()
        for case in ("fine", "pipe", "dir"):
            nib.save(
                nib.Nifti1Image(np.eye(3, dtype=np.uint8)[None], np.eye(4)),
                folder / f"{case}.nii.gz",
            )
    (preds / "pipe.nii.gz").unlink()
    os.mkfifo(preds / "pipe.nii.gz")
    (preds / "dir.nii.gz").unlink()
    (preds / "dir.nii.gz").mkdir()
    script = (
        "from monai_jdt.scoring import score_directory; "
        f"r = score_directory({str(preds)!r}, {str(refs)!r}, workers=2); "
        "print(sorted((f.case_id, f.code, f.message) for f in r.failures)); "
        "print([c.case_id for c in r.reports])"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    failures, reports = done.stdout.splitlines()
    assert reports == "['fine']"
    assert (
        "('dir', 'not_nifti', 'prediction dir.nii.gz: not a regular file (a folder).')" in failures
    )
    assert "('pipe', 'not_nifti', 'prediction pipe.nii.gz: not a regular file (a FIFO" in failures
