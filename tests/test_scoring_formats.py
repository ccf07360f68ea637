"""NRRD / MetaImage files written by SimpleITK: headers and data agree with the NIfTI path (and
with nibabel) on the same image, scores agree across formats, and every header check refuses
what NIfTI refuses, with the same error classes."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk

from monai_jdt.scoring import (
    AffineMismatchError,
    CaseReport,
    CorruptFileError,
    NonFiniteValuesError,
    NonIntegerLabelsError,
    NotNiftiError,
    ScoringOptions,
    UnsupportedDataTypeError,
    VolumeTooLargeError,
    inspect_nifti,
    score_directory,
    score_files,
)
from monai_jdt.scoring.nifti import load_nifti
from monai_jdt.scoring.sitk_formats import inspect_image, load_image

SHAPE_XYZ = (18, 14, 10)
SPACING = (0.8, 1.1, 2.5)
ORIGIN = (-12.5, 30.25, 7.0)
# an oblique, right-handed set of axes (columns), so every entry of the affine is exercised
_C, _S = np.cos(0.3), np.sin(0.3)
DIRECTION = np.array([[_C, -_S, 0.0], [_S, _C, 0.0], [0.0, 0.0, 1.0]]) @ np.array(
    [[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]
)
FORMATS = [(".nrrd", False), (".nrrd", True), (".mha", False), (".mha", True), (".mhd", False)]


def write(path: Path, xyz: np.ndarray, compress: bool = True, vector: bool = False) -> Path:
    """Write an ``(X, Y, Z[, C])`` array with SimpleITK (which stores ``(Z, Y, X[, C])``)."""
    array = np.transpose(xyz, (2, 1, 0, 3)) if vector else xyz.T
    image = sitk.GetImageFromArray(np.ascontiguousarray(array), isVector=vector)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    image.SetDirection(DIRECTION.flatten().tolist())
    sitk.WriteImage(image, str(path), useCompression=compress)
    return path


@pytest.fixture(scope="module")
def pair(organ_pair) -> tuple[np.ndarray, np.ndarray]:
    return organ_pair(SHAPE_XYZ, 4, seed=5)


@pytest.mark.parametrize(("suffix", "compress"), FORMATS)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.uint16, np.int32, np.float32])
def test_header_and_data_agree_with_nifti(
    tmp_path: Path, pair, suffix: str, compress: bool, dtype: type
) -> None:  # type: ignore[no-untyped-def]
    _, ref = pair
    data = ref.astype(dtype)
    image = inspect_image(write(tmp_path / f"c{suffix}", data, compress))
    nifti = inspect_nifti(write(tmp_path / "c.nii.gz", data))
    assert image.shape == nifti.shape == SHAPE_XYZ
    assert image.dtype == nifti.dtype.newbyteorder("=") == np.dtype(dtype)
    assert image.spacing == pytest.approx(nifti.spacing, rel=1e-6)
    assert image.spacing == pytest.approx(SPACING, rel=1e-12)
    # NIfTI stores its affine in float32: the two agree to its precision
    np.testing.assert_allclose(image.affine, nifti.affine, atol=1e-5)
    loaded = load_image(image)
    assert loaded.shape == SHAPE_XYZ
    np.testing.assert_array_equal(loaded, load_nifti(nifti))
    np.testing.assert_array_equal(loaded, data)


def test_affine_is_the_ras_matrix_of_the_lps_geometry(tmp_path: Path) -> None:
    """By hand: A = diag(-1, -1, 1, 1) [[D diag(s), o], [0, 1]]; checked against SimpleITK's
    own index-to-point mapping and against nibabel reading the NIfTI ITK writes."""
    path = write(tmp_path / "g.nrrd", np.zeros(SHAPE_XYZ, np.uint8))
    info = inspect_image(path)
    expected = np.eye(4)
    expected[:3, :3] = DIRECTION * np.asarray(SPACING)
    expected[:3, 3] = ORIGIN
    expected = np.diag([-1.0, -1.0, 1.0, 1.0]) @ expected
    np.testing.assert_allclose(info.affine, expected, atol=1e-12)
    image = sitk.ReadImage(str(path))
    for index in [(0, 0, 0), (17, 0, 0), (3, 13, 9), (17, 13, 9)]:
        lps = np.asarray(image.TransformIndexToPhysicalPoint(index))
        ras = info.affine @ np.array([*index, 1.0])
        np.testing.assert_allclose(ras[:3], lps * [-1, -1, 1], atol=1e-9)
    nifti = write(tmp_path / "g.nii.gz", np.zeros(SHAPE_XYZ, np.uint8))
    np.testing.assert_allclose(nib.load(nifti).affine, info.affine, atol=1e-5)


def test_voxel_order_is_nifti_order(tmp_path: Path) -> None:
    data = np.zeros(SHAPE_XYZ, np.uint8)
    data[17, 2, 9] = 3
    data[0, 13, 1] = 1
    info = inspect_image(write(tmp_path / "v.mha", data))
    loaded = load_image(info)
    assert loaded[17, 2, 9] == 3 and loaded[0, 13, 1] == 1 and int(loaded.sum()) == 4
    assert sitk.ReadImage(str(info.path)).GetPixel(17, 2, 9) == 3  # ITK indexes (x, y, z)


def test_vector_image_is_a_channel_axis(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    _, ref = pair
    probs = np.stack([ref == k for k in range(5)], axis=-1).astype(np.float32) * 0.9
    probs[..., 0] += 0.1
    p = write(tmp_path / "probs.nrrd", probs, vector=True)
    info = inspect_image(p)
    assert info.shape == (*SHAPE_XYZ, 5) and info.components == 5
    np.testing.assert_array_equal(load_image(info), probs)
    report = score_files(p, write(tmp_path / "ref.nii.gz", ref.astype(np.uint8)))
    assert report.kind == "probabilities" and [r.label for r in report.labels] == [1, 2, 3, 4]


@pytest.mark.parametrize(("suffix", "compress"), FORMATS)
def test_scores_agree_across_formats(
    tmp_path: Path, pair, suffix: str, compress: bool, numpy_scores
) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    p = write(tmp_path / f"case_001{suffix}", pred.astype(np.uint8), compress)
    r = write(tmp_path / "case_001.nii.gz", ref.astype(np.int16))
    options = ScoringOptions(metrics=("dice", "jaccard", "precision", "recall"))
    report = score_files(p, r, options)
    assert report.case_id == "case_001"
    assert report.shape == SHAPE_XYZ and report.spacing == pytest.approx(SPACING, rel=1e-6)
    nifti = score_files(write(tmp_path / "p.nii.gz", pred.astype(np.uint8)), r, options)
    assert [row.to_dict() for row in report.labels] == [row.to_dict() for row in nifti.labels]
    for row in report.labels:
        expected = numpy_scores(pred, ref, row.label)
        for metric in ("dice", "jaccard", "precision", "recall"):
            assert row.metrics[metric] == pytest.approx(expected[metric], rel=1e-12)


def test_directory_pairs_by_case_id_across_formats(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    for i, suffix in enumerate([".nrrd", ".mha", ".mhd", ".nii.gz"]):
        write(preds / f"case_00{i}{suffix}", pred.astype(np.uint8))
        write(refs / f"case_00{i}{'.nii.gz' if i % 2 == 0 else '.nrrd'}", ref.astype(np.uint8))
    (preds / "notes.txt").write_text("ignored")
    result = score_directory(preds, refs, workers=2)
    assert [r.case_id for r in result.reports] == ["case_000", "case_001", "case_002", "case_003"]
    assert not result.failures and not result.unpaired_predictions

    def exact(report: CaseReport) -> list[dict[str, object]]:  # mL: float32 NIfTI spacing
        return [{k: v for k, v in row.to_dict().items() if "_ml" not in k} for row in report.labels]

    first = exact(result.reports[0])
    assert len(first) == 4
    for report in result.reports[1:]:  # the same numbers whatever the formats
        assert exact(report) == first
        for a, b in zip(report.labels, result.reports[0].labels, strict=True):
            assert a.reference_ml == pytest.approx(b.reference_ml, rel=1e-6)


def test_endings_in_any_case_are_read_and_paired(tmp_path: Path, pair, numpy_scores) -> None:  # type: ignore[no-untyped-def]
    """``CASE.NII.GZ`` / ``.NRRD`` / ``.Mha`` are read as nibabel and SimpleITK read them: a
    folder of upper-case names is paired (it was skipped without a word) and the case id is
    the name without its ending."""
    pred, ref = pair
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    for i, (p_suffix, r_suffix) in enumerate([(".NII.GZ", ".nii.gz"), (".NRRD", ".Mha")]):
        write(preds / f"tmp{i}{p_suffix.lower()}", pred.astype(np.uint8)).rename(
            preds / f"CASE{i}{p_suffix}"
        )
        write(refs / f"tmp{i}{r_suffix.lower()}", ref.astype(np.uint8)).rename(
            refs / f"CASE{i}{r_suffix}"
        )
    result = score_directory(preds, refs, workers=2)
    assert [r.case_id for r in result.reports] == ["CASE0", "CASE1"]
    assert not result.failures and not result.unpaired_predictions
    single = score_files(preds / "CASE1.NRRD", refs / "CASE1.Mha")
    assert single.case_id == "CASE1"
    for row in single.labels:
        expected = numpy_scores(pred, ref, row.label)
        assert row.metrics["dice"] == pytest.approx(expected["dice"], rel=1e-12)


def test_shifted_grid_is_an_affine_mismatch(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    pred, ref = pair
    p = write(tmp_path / "p.nrrd", pred.astype(np.uint8))
    image = sitk.GetImageFromArray(np.ascontiguousarray(ref.astype(np.uint8).T))
    image.SetSpacing(SPACING)
    image.SetOrigin((ORIGIN[0] + 0.5, ORIGIN[1], ORIGIN[2]))
    image.SetDirection(DIRECTION.flatten().tolist())
    sitk.WriteImage(image, str(tmp_path / "r.nii.gz"))
    with pytest.raises(AffineMismatchError, match=r"0\.5"):
        score_files(p, tmp_path / "r.nii.gz")


def test_fractional_and_nan_label_maps_are_refused(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    _, ref = pair
    r = write(tmp_path / "r.nii.gz", ref.astype(np.uint8))
    nan = ref.astype(np.float32)
    nan[1, 1, 1] = np.nan
    with pytest.raises(NonFiniteValuesError):
        score_files(write(tmp_path / "nan.nrrd", nan), r, ScoringOptions(kind="labels"))
    half = ref.astype(np.float32) + 0.5
    with pytest.raises(NonIntegerLabelsError):
        score_files(write(tmp_path / "half.mha", half), r, ScoringOptions(kind="labels"))


def test_not_readable_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.nrrd"
    junk.write_bytes(b"hello, this is not an image\n" * 10)
    meta = tmp_path / "junk.mha"
    meta.write_bytes(b"\x00\x01binary junk" * 10)
    for path in (junk, meta, tmp_path / "missing.mha"):
        with pytest.raises(NotNiftiError, match=path.name):
            inspect_image(path)
    nifti = write(tmp_path / "x.nii.gz", np.zeros((3, 3, 3), np.uint8))
    renamed = tmp_path / "x.nrrd"
    renamed.write_bytes(nifti.read_bytes())  # the ending decides the reader
    with pytest.raises(NotNiftiError, match="not a NRRD file"):
        inspect_image(renamed)


def test_complex_pixels_are_refused(tmp_path: Path) -> None:
    # NRRD keeps the complex type (MetaImage has none: it stores two float channels)
    image = sitk.GetImageFromArray(np.zeros((3, 3, 3), np.complex64))
    sitk.WriteImage(image, str(tmp_path / "c.nrrd"))
    with pytest.raises(UnsupportedDataTypeError, match="complex"):
        inspect_image(tmp_path / "c.nrrd")


@pytest.mark.parametrize(("suffix", "compress"), FORMATS)
def test_truncated_data_is_refused_before_reading(
    tmp_path: Path, suffix: str, compress: bool
) -> None:
    noisy = np.random.default_rng(0).integers(0, 4, size=SHAPE_XYZ).astype(np.uint16)
    path = write(tmp_path / f"n{suffix}", noisy, compress)
    data_file = tmp_path / "n.raw" if suffix == ".mhd" else path
    whole = data_file.read_bytes()
    data_file.write_bytes(whole[: len(whole) - 200])
    with pytest.raises(CorruptFileError, match=r"n\.m|n\.nrrd"):
        load_image(inspect_image(path))


def test_huge_declared_size_is_refused_before_allocation(tmp_path: Path) -> None:
    small = np.zeros((4, 5, 6), np.uint8)
    for compress in (False, True):
        path = write(tmp_path / "h.nrrd", small, compress)
        text = path.read_bytes().replace(b"sizes: 4 5 6", b"sizes: 40000 50000 60000")
        path.write_bytes(text)
        with pytest.raises(VolumeTooLargeError, match="120000000000000 voxels"):
            inspect_image(path, max_voxels=10**8)
        # without a limit, the header still cannot be backed by the bytes of the file
        with pytest.raises(CorruptFileError, match="truncated"):
            inspect_image(path)
    meta = write(tmp_path / "h.mha", small, compress=False)
    meta.write_bytes(meta.read_bytes().replace(b"DimSize = 4 5 6", b"DimSize = 4000 5000 6000"))
    with pytest.raises(CorruptFileError, match="truncated"):
        inspect_image(meta)


def test_missing_simpleitk_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "x.nrrd", np.zeros((3, 3, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "SimpleITK", None)  # import fails as if not installed
    with pytest.raises(NotNiftiError, match=r"extra 'formats': pip install '\.\[formats\]'"):
        inspect_image(path)


def test_zero_spacing_is_refused_on_the_header(tmp_path: Path) -> None:
    path = write(tmp_path / "z.mha", np.zeros(SHAPE_XYZ, np.uint8), compress=False)
    text = path.read_bytes()
    spacing = text[text.index(b"ElementSpacing") :].split(b"\n", 1)[0]
    path.write_bytes(text.replace(spacing, b"ElementSpacing = 0.8 0 2.5"))
    with pytest.raises(CorruptFileError, match=r"spacing \(0\.8, 0\.0, 2\.5\)"):
        inspect_image(path)


@pytest.mark.parametrize("suffix", [".nrrd", ".mha"])
def test_negative_spacing_is_a_flipped_axis_as_itk_reads_it(tmp_path: Path, suffix: str) -> None:
    labels = np.zeros((6, 5, 4), np.uint8)  # X, Y, Z
    labels[2:5, 1:4, 1:3] = 1
    raw = labels.T.tobytes()
    nrrd = "NRRD0004\ntype: uchar\ndimension: 3\nsizes: 6 5 4\nspacings: -0.5 1 2\n"
    meta = "ObjectType = Image\nNDims = 3\nDimSize = 6 5 4\nElementSpacing = -0.5 1 2\n"
    header = (
        nrrd + "encoding: raw\n\n"
        if suffix == ".nrrd"
        else meta + "ElementType = MET_UCHAR\nElementDataFile = LOCAL\n"
    )
    path = tmp_path / f"neg{suffix}"
    path.write_bytes(header.encode() + raw)
    image = sitk.ReadImage(str(path))
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    lps = np.eye(4)
    lps[:3, :3] = direction * np.asarray(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    info = inspect_image(path)
    assert info.spacing == pytest.approx(image.GetSpacing()) == (0.5, 1.0, 2.0)
    np.testing.assert_allclose(info.affine, np.diag([-1.0, -1, 1, 1]) @ lps)
    np.testing.assert_array_equal(load_image(info), sitk.GetArrayFromImage(image).T)


def test_service_scores_nrrd_and_mha_uploads(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    from fastapi.testclient import TestClient

    from jdt_service import Settings, create_app

    pred, ref = pair
    p_nrrd = write(tmp_path / "p.nrrd", pred.astype(np.uint8))
    p_mha = write(tmp_path / "p.mha", pred.astype(np.uint8), compress=False)
    r = write(tmp_path / "r.nii.gz", ref.astype(np.uint8))
    nifti_pred = write(tmp_path / "p.nii.gz", pred.astype(np.uint8)).read_bytes()
    expected = score_files(p_nrrd, r, ScoringOptions(device="cpu"), case_id="c").to_dict()
    settings = Settings(device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as client:
        for upload in (p_nrrd, p_mha):
            files = {  # the client's file names are not used: the content decides
                "prediction": ("upload.bin", upload.read_bytes(), "application/octet-stream"),
                "reference": ("upload.bin", r.read_bytes(), "application/octet-stream"),
            }
            answer = client.post("/v1/scores", files=files, data={"case_id": "c"})
            assert answer.status_code == 200, answer.text
            assert answer.json()["labels"] == expected["labels"]
            # the web page asks for overlays: they are drawn from these formats too, on the
            # same grid as from the NIfTI prediction
            drawn = client.post("/v1/scores", files=files, data={"overlays": "true"})
            assert drawn.status_code == 200, drawn.text
            as_nifti = {**files, "prediction": ("u", nifti_pred, "application/octet-stream")}
            nifti = client.post("/v1/scores", files=as_nifti, data={"overlays": "true"})
            assert drawn.json()["overlays"] == nifti.json()["overlays"]
        junk = {
            "prediction": ("x", b"NRRD0004\nnot really\n", "application/octet-stream"),
            "reference": ("y", r.read_bytes(), "application/octet-stream"),
        }
        answer = client.post("/v1/scores", files=junk)
        assert answer.status_code == 422  # starts as NRRD, then a broken header
        assert answer.json()["detail"]["code"] == "corrupt_file"


def test_headers_cannot_point_at_other_files(tmp_path: Path) -> None:
    """A header names its data file: it must be one plain name next to a detached header
    (``.nhdr`` / ``.mhd``), never a path, and never under a single-file ending."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(256)) * 8)
    data = np.zeros((4, 4, 4), np.uint8)
    detached = write(tmp_path / "d.mhd", data, compress=False)
    text = detached.read_text()
    for target in (str(secret), "../secret.bin", "LIST"):
        header = tmp_path / "evil.mhd"
        header.write_text(text.replace("ElementDataFile = d.raw", f"ElementDataFile = {target}"))
        with pytest.raises(CorruptFileError, match="not one file next to the header"):
            inspect_image(header)
    nrrd = write(tmp_path / "n.nrrd", data, compress=False)
    head = nrrd.read_bytes().split(b"\n\n", 1)[0]
    evil = tmp_path / "evil.nrrd"
    evil.write_bytes(
        head.replace(b"encoding: raw", b"encoding: raw\ndata file: secret.bin") + b"\n\n"
    )
    with pytest.raises(CorruptFileError, match=r"a \.nrrd file holds its own data"):
        inspect_image(evil)
    attached = tmp_path / "evil.nhdr"
    attached.write_bytes(evil.read_bytes().replace(b"data file: secret.bin", b"data file: d.raw"))
    np.testing.assert_array_equal(load_image(inspect_image(attached)), data)  # next to it: read


def test_no_spelling_or_length_of_header_hides_a_data_file(tmp_path: Path) -> None:
    """The readers accept more spellings of the data-file line than its canonical one
    (MetaIO: leading blanks, ``:`` for ``=``), and a header can be padded past what a prefix
    check reads: every such header is refused before SimpleITK opens it."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(64)))
    data = np.zeros((4, 4, 4), np.uint8)
    head = write(tmp_path / "n.nrrd", data, compress=False).read_bytes().split(b"\n\n", 1)[0]
    padding = b"# a comment line to pad the header\n" * 2000  # 70 kB
    nrrds = {
        "padded.nrrd": (
            head + b"\n" + padding + b"data file: " + str(secret).encode(),
            "end within",
        ),
        "spelled.nrrd": (head + b"\n Data File: " + str(secret).encode(), "holds its own data"),
        "twice.nhdr": (head + b"\ndata file: n.raw\ndatafile: " + str(secret).encode(), "2 times"),
    }
    for name, (header, message) in nrrds.items():
        (tmp_path / name).write_bytes(header + b"\n\n" + bytes(64))
        with pytest.raises(CorruptFileError, match=message):
            inspect_image(tmp_path / name)
    mha = write(tmp_path / "m.mha", data, compress=False).read_bytes()
    for hostile in (b" ElementDataFile = ", b"\tElementDataFile = ", b"ElementDataFile : "):
        evil = tmp_path / "evil.mha"
        evil.write_bytes(
            mha.replace(
                b"ElementDataFile", hostile + str(secret).encode() + b"\nElementDataFile", 1
            )
        )
        with pytest.raises(CorruptFileError, match="holds its own data"):
            inspect_image(evil)
    evil.write_bytes(
        mha.replace(
            b"ElementDataFile",
            padding.decode().replace("#", "Comment =").encode() + b"ElementDataFile",
            1,
        )
    )
    with pytest.raises(CorruptFileError, match="end within"):
        inspect_image(evil)


@pytest.mark.parametrize("separator", ["\x0b", "\x0c", "\x1c", "\r"])
def test_a_line_break_only_python_sees_cannot_hide_a_data_file(
    tmp_path: Path, separator: str
) -> None:
    """``str.splitlines`` breaks lines at characters teem and MetaIO do not: a data-file
    line glued to the previous one by such a character must still be refused."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(bytes(range(64)))
    data = np.zeros((4, 4, 4), np.uint8)
    head = write(tmp_path / "n.nrrd", data, compress=False).read_bytes().split(b"\n\n", 1)[0]
    glued = f"# comment{separator}data file: {secret}".encode("latin-1")
    nrrd = tmp_path / "glued.nrrd"
    nrrd.write_bytes(head + b"\n" + glued + b"\n\n" + bytes(64))
    mha = write(tmp_path / "m.mha", data, compress=False).read_bytes()
    meta = tmp_path / "glued.mha"
    line = f"Comment = x{separator}ElementDataFile = {secret}\n".encode("latin-1")
    meta.write_bytes(mha.replace(b"ElementDataFile", line + b"ElementDataFile", 1))
    for path in (nrrd, meta):
        with pytest.raises(CorruptFileError, match="control character"):
            inspect_image(path)


def test_score_dir_on_threads_while_torch_is_first_imported(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """NRRD cases on several threads of a fresh process: one thread imports torch while
    another checked ``sys.modules["torch"].Tensor`` of the partly imported module, and the
    whole run failed with an internal error."""
    pred, ref = pair
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    for i in range(8):
        write(preds / f"case_{i}.nrrd", pred.astype(np.uint8))
        write(refs / f"case_{i}.mha", ref.astype(np.uint8))
    script = (
        "import sys; from monai_jdt.scoring import score_directory; "
        "assert 'torch' not in sys.modules; "
        f"r = score_directory({str(preds)!r}, {str(refs)!r}, workers=4); "
        "print(len(r.reports), len(r.failures))"
    )
    for _ in range(3):  # a race: each fresh process gets another chance to hit it
        done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.split() == ["8", "0"]


def _deflated_mha(tmp_path: Path, data: np.ndarray) -> tuple[bytes, bytes]:
    """The header (through ``ElementDataFile = LOCAL``) and compressed stream of a ``.mha``."""
    blob = write(tmp_path / "whole.mha", data, compress=True).read_bytes()
    key = b"ElementDataFile = LOCAL\n"
    start = blob.index(key) + len(key)
    return blob[:start], blob[start:]


def _with_size(head: bytes, size: int | None) -> bytes:
    line = b"" if size is None else b"CompressedDataSize = %d\n" % size
    return re.sub(rb"CompressedDataSize = \d+\n", line, head)


def test_a_damaged_compressed_metaimage_is_refused_not_scored_from_garbage(
    tmp_path: Path, pair
) -> None:  # type: ignore[no-untyped-def]
    """ITK prints "Uncompress failed" and returns uninitialised memory for these: a flipped
    byte, no CompressedDataSize, a stream that inflates to half the image, one cut short."""
    data = pair[1].astype(np.uint8)
    head, stream = _deflated_mha(tmp_path, data)
    flipped = bytearray(stream)
    flipped[len(stream) // 2] ^= 0xFF
    half = zlib.compress(data.T.tobytes()[: data.size // 2])
    cases = {
        "flipped": (head + bytes(flipped), "corrupt|does not end"),
        "no_size": (_with_size(head, None) + stream, "CompressedDataSize"),
        "half": (_with_size(head, len(half)) + half, f"{data.size // 2} of the {data.size}"),
        "cut": (_with_size(head, len(stream) - 9) + stream[:-9], "does not end|corrupt"),
    }
    for case, (content, match) in cases.items():
        path = tmp_path / f"{case}.mha"
        path.write_bytes(content)
        with pytest.raises(CorruptFileError, match=match):
            load_image(inspect_image(path))
        with pytest.raises(CorruptFileError):
            score_files(path, write(tmp_path / "ref.nii.gz", data), ScoringOptions())


def test_compressed_metaimage_streams_itk_reads_are_read(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    """What ITK decodes right still reads to SimpleITK's values: a gzip wrapper, bytes after
    the stream, a detached ``.zraw`` without CompressedDataSize or after a HeaderSize."""
    data = pair[0].astype(np.uint8)
    head, stream = _deflated_mha(tmp_path, data)
    gz = gzip.compress(data.T.tobytes())
    (tmp_path / "gz.mha").write_bytes(_with_size(head, len(gz)) + gz)
    (tmp_path / "tail.mha").write_bytes(_with_size(head, len(stream) + 7) + stream + bytes(7))
    mhd = write(tmp_path / "d.mhd", data, compress=True)
    text = mhd.read_text()
    (tmp_path / "nosize.mhd").write_text(re.sub(r"CompressedDataSize = \d+\n", "", text))
    skipped = text.replace("CompressedData =", "HeaderSize = 5\nCompressedData =")
    (tmp_path / "skip.mhd").write_text(skipped.replace("d.zraw", "skip.zraw"))
    (tmp_path / "skip.zraw").write_bytes(b"12345" + (tmp_path / "d.zraw").read_bytes())
    for name in ("gz.mha", "tail.mha", "nosize.mhd", "skip.mhd"):
        path = tmp_path / name
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
        got = load_image(inspect_image(path))
        np.testing.assert_array_equal(got, data)
        np.testing.assert_array_equal(got, want)


def test_a_fifo_as_data_file_is_refused_before_it_is_opened(tmp_path: Path) -> None:
    """A detached header whose data file is a FIFO would block the reader for ever."""
    data = np.zeros((4, 4, 4), np.uint8)
    head = write(tmp_path / "n.nrrd", data, compress=False).read_bytes().split(b"\n\n", 1)[0]
    head = re.sub(rb"encoding: \w+", b"encoding: ascii", head)
    (tmp_path / "n.nhdr").write_bytes(head + b"\ndata file: pipe.txt\n")
    os.mkfifo(tmp_path / "pipe.txt")
    command = (
        "import sys; from monai_jdt.scoring.sitk_formats import inspect_image, load_image\n"
        "from monai_jdt.scoring import CorruptFileError\n"
        "try:\n    load_image(inspect_image(sys.argv[1]))\n"
        "except CorruptFileError as err:\n    print(err.code, err)"
    )
    done = subprocess.run(
        [sys.executable, "-c", command, str(tmp_path / "n.nhdr")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.stdout.startswith("corrupt_file n.nhdr: its data file pipe.txt: not a regular"), (
        done.stdout + done.stderr
    )


def test_crlf_and_utf8_headers_are_read_as_simpleitk_reads_them(tmp_path: Path, pair) -> None:  # type: ignore[no-untyped-def]
    data = pair[0].astype(np.uint8)
    for suffix in (".nrrd", ".mha"):
        blob = write(tmp_path / f"n{suffix}", data, compress=False).read_bytes()
        split = b"\n\n" if suffix == ".nrrd" else b"ElementDataFile = LOCAL\n"
        head, body = blob.split(split, 1)
        comment = "# Kovač – reader" if suffix == ".nrrd" else "Comment = Kovač – reader"
        head = head.replace(b"\n", b"\r\n") + b"\r\n" + comment.encode("utf-8")
        end = b"\r\n\r\n" if suffix == ".nrrd" else b"\r\nElementDataFile = LOCAL\r\n"
        path = tmp_path / f"crlf{suffix}"
        path.write_bytes(head + end + body)
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
        np.testing.assert_array_equal(want, data)  # the file is valid for ITK
        np.testing.assert_array_equal(load_image(inspect_image(path)), data)


def test_a_text_metaimage_is_read_as_simpleitk_reads_it(tmp_path: Path) -> None:
    """``BinaryData = False``: the values are text, shorter than their binary size."""
    labels = np.zeros((6, 5, 4), np.int32)  # X, Y, Z
    labels[2:5, 1:4, 1:3] = 1
    labels[0, 0, 0] = 2
    header = (
        "ObjectType = Image\nNDims = 3\nDimSize = 6 5 4\nElementType = MET_INT\n"
        "BinaryData = False\nElementDataFile = LOCAL\n"
    )
    values = " ".join(str(v) for v in labels.T.reshape(-1))
    path = tmp_path / "text.mha"
    path.write_text(header + values + "\n")
    assert len(values) < labels.nbytes
    want = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
    np.testing.assert_array_equal(want, labels)
    np.testing.assert_array_equal(load_image(inspect_image(path)), labels)


def test_compressed_metaimage_streams_are_checked_where_itk_reads_them(
    tmp_path: Path, pair
) -> None:  # type: ignore[no-untyped-def]
    """``HeaderSize`` moves where ITK reads: from that byte of a ``.mha`` (ITK reads garbage
    at byte 3, the stream at 16 padding bytes on), and from byte 0 of a ``.mhd``'s data file
    when no CompressedDataSize is given; ``CompressedDataSize = 0`` of a data file means the
    whole file."""
    data = pair[0].astype(np.uint8)
    head, stream = _deflated_mha(tmp_path, data)
    at_3 = tmp_path / "at3.mha"
    at_3.write_bytes(
        head.replace(b"CompressedData =", b"HeaderSize = 3\nCompressedData =") + stream
    )
    with pytest.raises(CorruptFileError, match="corrupt"):
        load_image(inspect_image(at_3))
    padded = head.replace(b"CompressedData =", b"HeaderSize = XXXX\nCompressedData =")
    padded = padded.replace(b"XXXX", b"%4d" % (len(padded) + 16))
    (tmp_path / "pad.mha").write_bytes(padded + bytes(16) + stream)
    text = write(tmp_path / "d.mhd", data, compress=True).read_text()
    no_size = re.sub(r"CompressedDataSize = \d+\n", "", text)
    skipped = no_size.replace("CompressedData =", "HeaderSize = 5\nCompressedData =")
    (tmp_path / "skip.mhd").write_text(skipped.replace("d.zraw", "skip.zraw"))
    (tmp_path / "skip.zraw").write_bytes(b"12345" + (tmp_path / "d.zraw").read_bytes())
    with pytest.raises(CorruptFileError, match="from its first byte"):
        load_image(inspect_image(tmp_path / "skip.mhd"))
    zero = re.sub(r"CompressedDataSize = \d+", "CompressedDataSize = 0", text)
    (tmp_path / "zero.mhd").write_text(zero)
    for name in ("pad.mha", "zero.mhd"):
        path = tmp_path / name
        want = sitk.GetArrayFromImage(sitk.ReadImage(str(path))).T
        np.testing.assert_array_equal(want, data)  # ITK reads these right
        np.testing.assert_array_equal(load_image(inspect_image(path)), data)
