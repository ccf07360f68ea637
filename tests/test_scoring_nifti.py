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


@pytest.mark.parametrize(
    ("dtype", "options", "large", "expected"),
    [
        (np.uint8, {}, False, True),
        (np.int16, {}, False, False),  # two bytes: wider ids are counted by a sort
        (np.uint8, {}, True, False),  # past INLINE_VOXELS: two inflate threads
        (np.float32, {}, False, False),  # loaded whole
        (np.uint8, {"metrics": ("dice", "hd95")}, False, False),  # boundary metrics
    ],
)
def test_scored_in_calling_thread_says_when_score_files_starts_no_thread(
    tmp_path: Path, pair, monkeypatch: pytest.MonkeyPatch, dtype, options, large, expected
) -> None:  # type: ignore[no-untyped-def]
    """The service scores on its event loop what this predicate admits: it must start no
    thread (and it streams one-byte voxels, so its memory is a few chunks and fixed
    histograms)."""
    import threading

    import monai_jdt.scoring.files as files

    pred, ref = pair
    if large:
        monkeypatch.setattr(files, "INLINE_VOXELS", pred.size - 1)
    p = save(tmp_path / "p.nii.gz", (pred > 0).astype(dtype))
    r = save(tmp_path / "r.nii.gz", (ref > 0).astype(np.uint8))
    chosen = ScoringOptions(**options)
    infos = (inspect_volume(p, None), inspect_volume(r, None))
    started: list[threading.Thread] = []

    class Counted(threading.Thread):
        def start(self) -> None:
            started.append(self)
            super().start()

    monkeypatch.setattr(files.threading, "Thread", Counted)
    assert files.scored_in_calling_thread(*infos, chosen) is expected
    score_files(p, r, chosen, inspected=infos)
    if expected:
        assert started == []
    if large:
        assert len(started) == 2  # the two inflate threads the predicate said would start


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


BOUNDARY = ScoringOptions(metrics=("dice", "hd", "nsd"), nsd_tolerance=1.0)


def _boundary_values(report) -> list[tuple[int, float | None, float | None]]:  # type: ignore[no-untyped-def]
    return [(row.label, row.metrics["hd"], row.metrics["nsd"]) for row in report.labels]


def _raw_nifti(path: Path, data: np.ndarray, edit) -> Path:  # type: ignore[no-untyped-def]
    """Write ``data`` with a header that ``edit(header)`` changes after nibabel set it up."""
    image = nib.Nifti1Image(data, AFFINE)
    image.header.set_xyzt_units("mm")
    edit(image.header)
    image.header["vox_offset"] = 352
    path.write_bytes(image.header.binaryblock + b"\0" * 4 + np.asarray(data).tobytes("F"))
    return path


def test_negative_pixdim_is_a_voxel_size_not_voxel_units(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """A negative pixdim (a flipped axis) is its magnitude, as nibabel reads it; it made
    every boundary distance fall back to voxel units."""
    pred, ref = (a.astype(np.uint8) for a in pair)

    def flip_x(header: nib.Nifti1Header) -> None:
        header["pixdim"][1] = -0.8

    files = [_raw_nifti(tmp_path / f"{n}.nii", a, flip_x) for n, a in (("p", pred), ("r", ref))]
    assert nib.load(files[1]).header.get_zooms() == pytest.approx((0.8, 0.9, 2.5))
    report = score_files(*files, BOUNDARY)
    assert report.spacing == (0.8, 0.9, 2.5)
    want = score_arrays(pred.T, ref.T, BOUNDARY, spacing=(2.5, 0.9, 0.8))
    assert _boundary_values(report) == _boundary_values(want)
    assert not any("in voxels" in note for note in report.notes)


def test_an_sform_with_a_stale_pixdim_gives_the_sizes_and_says_so(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """A tool that rewrote only the sform left pixdim at 1 mm: the sform is the geometry the
    affines are compared in (and ITK's and MONAI's voxel sizes), so distances use it."""
    pred, ref = (a.astype(np.uint8) for a in pair)

    def stale(header: nib.Nifti1Header) -> None:
        header.set_qform(None, code=0)
        header.set_sform(AFFINE, code=2)
        header["pixdim"][1:4] = 1.0

    files = [_raw_nifti(tmp_path / f"{n}.nii", a, stale) for n, a in (("p", pred), ("r", ref))]
    report = score_files(*files, BOUNDARY)
    assert report.spacing == (0.8, 0.9, 2.5)
    want = score_arrays(pred.T, ref.T, BOUNDARY, spacing=(2.5, 0.9, 0.8))
    assert _boundary_values(report) == _boundary_values(want)
    assert report.labels[0].reference_ml == pytest.approx(
        np.count_nonzero(ref == report.labels[0].label) * 0.8 * 0.9 * 2.5 / 1000
    )
    assert any(
        "reference r.nii: pixdim gives voxel sizes 1 x 1 x 1 mm but the sform's voxel sizes "
        "are 0.8 x 0.9 x 2.5 mm" in warning
        for warning in report.warnings
    ), report.warnings
    consistent = [save(tmp_path / f"{n}.nii.gz", a) for n, a in (("p", pred), ("r", ref))]
    assert score_files(*consistent, BOUNDARY).warnings == ()


def test_a_sheared_sform_keeps_pixdims_sizes_as_nibabel_and_itk_do(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """A sheared sform's column norms are not voxel sizes: they multiply to more than the
    voxel's volume |det|, and were used, so every mL figure was 41 % too high here. Known
    answers: nibabel's zooms and SimpleITK's spacing (ITK falls back to the qform)."""
    import SimpleITK as sitk

    pred, ref = (a.astype(np.uint8) for a in pair)
    sheared = np.array([[0.8, 0.9, 0, 0], [0, 0.9, 0, 0], [0, 0, 2.5, 0], [0, 0, 0, 1.0]])

    def shear(header: nib.Nifti1Header) -> None:
        header.set_qform(np.diag([0.8, 0.9, 2.5, 1.0]), code=1)
        header.set_sform(sheared, code=2)

    files = [_raw_nifti(tmp_path / f"{n}.nii", a, shear) for n, a in (("p", pred), ("r", ref))]
    zooms = tuple(float(z) for z in nib.load(files[1]).header.get_zooms())
    itk = sitk.ReadImage(str(files[1])).GetSpacing()
    assert zooms == pytest.approx(itk, rel=1e-7) and zooms == pytest.approx((0.8, 0.9, 2.5))
    report = score_files(*files, BOUNDARY)
    assert report.spacing == pytest.approx(zooms, rel=1e-7)
    label = report.labels[0].label
    assert report.labels[0].reference_ml == pytest.approx(
        np.count_nonzero(ref == label) * float(np.prod(zooms)) / 1000, rel=1e-7
    )
    assert any(
        "reference r.nii: the sform is sheared (its axes are not at right angles); pixdim's "
        "voxel sizes are used" in warning
        for warning in report.warnings
    ), report.warnings


def _header_edited(path: Path, data: np.ndarray, endian: str, **fields: object) -> Path:
    """A single-file NIfTI-1 of ``data`` in byte order ``endian`` whose header ``fields``
    (bytes, or ``sizeof_hdr`` as a little-endian int) are written over nibabel's."""
    header = nib.Nifti1Header(endianness=endian)
    header.set_data_shape(data.shape)
    header.set_data_dtype(data.dtype)
    header.set_qform(AFFINE, code=1)
    header.set_sform(AFFINE, code=1)
    header["vox_offset"] = 352
    block = bytearray(header.binaryblock)
    for name, value in fields.items():
        if name == "sizeof_hdr":
            block[0:4] = struct.pack("<i", int(value))  # type: ignore[call-overload]
        else:
            block[344:348] = value  # type: ignore[assignment]
    stored = data.astype(data.dtype.newbyteorder(endian))
    path.write_bytes(bytes(block) + b"\0" * 4 + stored.tobytes("F"))
    return path


@pytest.mark.parametrize(
    ("endian", "fields"),
    [
        ("<", {"sizeof_hdr": 0}),  # a writer that left sizeof_hdr out: nibabel repairs it
        ("<", {"sizeof_hdr": 1234}),
        # sizeof_hdr says little-endian, every other field is big-endian: nibabel takes the
        # byte order from dim[0]
        (">", {"sizeof_hdr": 348}),
        ("<", {"magic": b"ni1\x00"}),  # a pair's magic in one file, its data at vox_offset
    ],
)
def test_headers_nibabel_reads_are_read_to_its_values(
    tmp_path: Path, pair, endian: str, fields: dict[str, object]
) -> None:  # type: ignore[no-untyped-def]
    """These were refused (not_nifti); nibabel finds a NIfTI-1 header by its magic alone,
    and guesses the byte order from dim[0]. Known answers: nibabel's array and zooms."""
    pred = pair[0].astype(np.int16)
    path = _header_edited(tmp_path / "odd.nii", pred, endian, **fields)
    image = nib.load(path)
    values = np.asanyarray(image.dataobj)
    assert np.array_equal(values, pred)
    report = score_files(path, path)
    assert report.spacing == pytest.approx(image.header.get_zooms(), rel=1e-7)
    for row in report.labels:
        assert row.predicted_voxels == np.count_nonzero(values == row.label)


def test_a_pair_header_whose_data_is_elsewhere_says_so(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred = pair[0].astype(np.uint8)
    path = _header_edited(tmp_path / "pair.nii", pred, "<", magic=b"ni1\x00")
    raw = bytearray(path.read_bytes())
    raw[108:112] = struct.pack("<f", 0.0)  # vox_offset 0: the data is in the .img file
    path.write_bytes(bytes(raw))
    with pytest.raises(NotNiftiError, match=r"a header of a \.hdr/\.img pair"):
        score_files(path, path)


@pytest.mark.parametrize("esize", [8, 24, 4096])
def test_many_small_extensions_are_walked_to_nibabels_values(tmp_path: Path, esize: int) -> None:
    """A 64 KiB extension area of ``esize``-byte extensions (8192 of the smallest): the data
    starts where nibabel says and reads to its array; an extension running past vox_offset is
    refused."""
    import gzip
    import io

    data = np.arange(6 * 5 * 4, dtype=np.uint8).reshape(6, 5, 4)
    raw = nib.Nifti1Image(data, np.eye(4), dtype=np.uint8).to_bytes()
    header = nib.Nifti1Header.from_fileobj(io.BytesIO(raw[:348]))
    area = (1 << 16) // esize * esize
    header["vox_offset"] = 352 + area
    one = struct.pack("<ii", esize, 0) + bytes(esize - 8)
    body = header.binaryblock + b"\x01\0\0\0" + one * (area // esize) + raw[352:]
    path = tmp_path / "many.nii.gz"
    path.write_bytes(gzip.compress(body))
    image = nib.load(path)
    assert len(image.header.extensions) >= area // esize - 1  # nibabel reads them too
    info = inspect_nifti(path)
    assert info.offset == image.dataobj.offset == 352 + area
    report = score_files(path, path, ScoringOptions(ignore_affine=True))
    assert [row.label for row in report.labels] == sorted(set(np.unique(data)) - {0})
    assert report.label(7).metrics["dice"] == 1.0
    bad = bytearray(body)
    # the last but one (16 bytes or more remain there: it is walked) runs past the data
    struct.pack_into("<i", bad, 352 + area - 2 * esize, 2 * esize + 8)
    path.write_bytes(gzip.compress(bytes(bad)))
    with pytest.raises(CorruptFileError, match="must end at or before vox_offset"):
        inspect_nifti(path)


def test_freesurfers_long_vectors_are_read_as_nibabel_reads_them(
    tmp_path: Path, numpy_scores
) -> None:  # type: ignore[no-untyped-def]
    """More than 32767 voxels along one axis do not fit a NIfTI-1 ``dim``: nibabel (after
    FreeSurfer) writes ``dim[1] = -1`` and the length in ``glmin``, and reads it back."""
    pred = (np.arange(40000) % 3).astype(np.uint8).reshape(40000, 1, 1)
    ref = ((np.arange(40000) // 7) % 3).astype(np.uint8).reshape(40000, 1, 1)
    paths = [tmp_path / "p.nii.gz", tmp_path / "r.nii.gz"]
    with pytest.warns(UserWarning, match="Freesurfer hack"):
        for path, data in zip(paths, (pred, ref), strict=True):
            nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    assert int(nib.load(paths[0]).header["dim"][1]) == -1
    assert inspect_nifti(paths[0]).shape == nib.load(paths[0]).shape == (40000, 1, 1)
    report = score_files(*paths)
    for row in report.labels:
        expected = numpy_scores(pred, ref, row.label)
        assert row.metrics["dice"] == pytest.approx(expected["dice"], rel=1e-12)
    header = nib.load(paths[0]).header.copy()
    header["glmin"] = 0  # -1 in dim[1] and no length: nibabel refuses it, and so do we
    broken = tmp_path / "broken.nii"
    broken.write_bytes(header.binaryblock + bytes(4) + pred.tobytes())
    with pytest.raises(CorruptFileError, match="nibabel refuses this header"):
        inspect_nifti(broken)


def test_a_bzip2_file_is_refused_saying_so(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """nibabel reads .nii.bz2; we do not, and the error said only 'no NIfTI header'."""
    import bz2

    plain = save(tmp_path / "p.nii", pair[0].astype(np.uint8))
    packed = tmp_path / "p.nii.bz2"
    packed.write_bytes(bz2.compress(plain.read_bytes()))
    assert nib.load(packed).shape == pair[0].shape
    with pytest.raises(NotNiftiError, match=r"p\.nii\.bz2: bzip2-compressed; only gzip is read"):
        score_files(packed, plain)


def test_a_tolerance_of_one_voxel_holds_a_neighbour_one_voxel_away(tmp_path: Path) -> None:
    """0.8 is stored as float32 0.800000011920929; read as that, a surface one voxel (0.8 mm)
    away was outside a 0.8 mm tolerance."""
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[3:9, 3:9, 3:9] = 1
    pred = np.roll(ref, 1, axis=1)  # one voxel along y
    affine = np.diag([1.0, 0.8, 2.0, 1.0])
    files = [save(tmp_path / f"{n}.nii.gz", a, affine) for n, a in (("p", pred), ("r", ref))]
    options = ScoringOptions(metrics=("nsd",), nsd_tolerance=0.8)
    assert float(np.float32(0.8)) > 0.8  # the trap this test is about
    exact = score_arrays(pred.T, ref.T, options, spacing=(2.0, 0.8, 1.0))
    assert exact.labels[0].metrics["nsd"] == 1.0
    assert score_files(*files, options).labels[0].metrics["nsd"] == 1.0


def test_the_affine_is_in_mm_whatever_the_header_units(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """The same grid with its header in metres, microns and mm: one affine in mm, so the pair
    passes the affine check (and mm spacing), as SimpleITK converts it."""
    pred, ref = (a.astype(np.uint8) for a in pair)
    in_mm = save(tmp_path / "r.nii.gz", ref)
    for unit, scale in (("meter", 1e-3), ("micron", 1e3)):
        image = nib.Nifti1Image(pred, np.diag([*(np.diag(AFFINE)[:3] * scale), 1.0]))
        image.header.set_xyzt_units(unit)
        path = tmp_path / f"p_{unit}.nii.gz"
        nib.save(image, path)
        info = inspect_volume(path)
        np.testing.assert_allclose(info.affine, AFFINE, rtol=1e-6)
        assert info.spacing == pytest.approx((0.8, 0.9, 2.5), rel=1e-6)
        report = score_files(path, in_mm)  # no affine_mismatch
        assert report.labels[0].metrics["dice"] is not None


def test_a_2d_image_has_no_volume_in_ml(tmp_path: Path) -> None:
    ref = np.zeros((10, 8), np.uint8)
    ref[2:6, 2:6] = 1
    files = [save(tmp_path / f"{n}.nii.gz", ref, np.diag([2.0, 2.0, 5.0, 1.0])) for n in "pr"]
    report = score_files(*files)
    assert report.spacing == (2.0, 2.0)
    row = report.labels[0]
    assert (row.predicted_ml, row.reference_ml, report.voxel_ml) == (None, None, None)
    assert row.reference_voxels == 16


def test_voxel_sizes_keep_the_header_precision_and_convert_units_exactly(tmp_path: Path) -> None:
    """NIfTI-2 stores float64 sizes (rounding them through float32 lost digits); 0.0007 m is
    0.7 mm (its float32 times 1000 is 0.69999997..., then not the decimal 0.7)."""
    data = np.zeros((4, 4, 4), np.uint8)
    precise = nib.Nifti2Image(data, np.diag([0.123456789012, 0.5, 2.0, 1.0]))
    precise.header.set_xyzt_units("mm")
    nib.save(precise, tmp_path / "n2.nii")
    assert inspect_volume(tmp_path / "n2.nii").spacing == (0.123456789012, 0.5, 2.0)
    metres = nib.Nifti1Image(data, np.diag([0.0007, 0.0005, 0.002, 1.0]))
    metres.header.set_xyzt_units("meter")
    nib.save(metres, tmp_path / "m.nii")
    assert float(np.float32(0.0007)) * 1000.0 != 0.7  # the trap
    assert inspect_volume(tmp_path / "m.nii").spacing == (0.7, 0.5, 2.0)
