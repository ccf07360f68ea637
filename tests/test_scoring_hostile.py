"""Hostile NIfTI files against the scoring core, checked against nibabel and numpy float64.

Each file is written by nibabel and then edited byte by byte (header fields at their NIfTI-1 /
NIfTI-2 offsets) or re-compressed with ``gzip``. The expected values and refusals come from
nibabel (``np.asanyarray(img.dataobj)``, the values a reader of the file gets) and from numpy
float64 counts of those values, never from ``monai_jdt.scoring``.
"""

from __future__ import annotations

import ast
import gzip
import math
import struct
import tracemalloc
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from monai_jdt.scoring import (
    CorruptFileError,
    NonIntegerLabelsError,
    NotNiftiError,
    ProbabilityRangeError,
    ScoringError,
    ScoringOptions,
    ShapeMismatchError,
    inspect_nifti,
    score_arrays,
    score_files,
)
from monai_jdt.scoring.errors import LabelIdTooLargeError
from monai_jdt.scoring.files import stream_confusion
from monai_jdt.scoring.nifti import (
    MAX_DATA_OFFSET,
    MAX_TRAILER_BYTES,
    iter_voxel_chunks,
    load_nifti,
)

# NIfTI-1 field offsets (little-endian files as nibabel writes them on this machine)
DIM, VOX_OFFSET, SCL_SLOPE, SCL_INTER = 40, 108, 112, 116
QFORM_CODE, SFORM_CODE, QUATERN_B = 252, 254, 256
PIXDIM = 76  # float32[8]: qfac, then the voxel sizes
N2_VOX_OFFSET = 168  # NIfTI-2: int64
SHAPE = (9, 8, 7)
IGNORE_AFFINE = ScoringOptions(ignore_affine=True)


def labels_volume(seed: int = 0, n_labels: int = 4, shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, n_labels + 1, size=shape).astype(np.uint8)


def nifti_bytes(data: np.ndarray, cls: type = nib.Nifti1Image, dtype: object = None) -> bytes:
    image = cls(data, np.eye(4), dtype=dtype if dtype is not None else data.dtype)
    return bytes(image.to_bytes())


def edit(raw: bytes, offset: int, fmt: str, *values: object) -> bytes:
    out = bytearray(raw)
    out[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, *values)
    return bytes(out)


def write(path: Path, raw: bytes) -> Path:
    path.write_bytes(gzip.compress(raw) if path.name.endswith(".gz") else raw)
    return path


def nibabel_values(path: Path) -> np.ndarray:
    """What nibabel reads (raises when nibabel refuses the file)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asanyarray(nib.load(path).dataobj)


def dice(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    tp, fp, fn = float(np.sum(p & r)), float(np.sum(p & ~r)), float(np.sum(~p & r))
    return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else math.nan


def expected_dice(pred: np.ndarray, ref: np.ndarray) -> dict[int, float]:
    # Python ints: numpy's union of uint64 and signed ids would compare them as float64
    labels = sorted(({int(v) for v in np.unique(pred)} | {int(v) for v in np.unique(ref)}) - {0})
    return {label: dice(pred, ref, label) for label in labels}


def reported_dice(report) -> dict[int, float]:  # type: ignore[no-untyped-def]
    return {row.label: row.metrics["dice"] for row in report.labels}


@pytest.fixture(params=[".nii", ".nii.gz"])
def suffix(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# -- 1. vox_offset ------------------------------------------------------------------------


@pytest.mark.parametrize("offset", [348.0, 100.0, -100.0, 0.0, 351.0])
def test_vox_offset_inside_the_header_is_refused_as_nibabel_does(
    tmp_path: Path, suffix: str, offset: float
) -> None:
    raw = edit(nifti_bytes(labels_volume()), VOX_OFFSET, "<f", offset)
    path = write(tmp_path / f"p{suffix}", raw)
    if offset != 0:  # nibabel reads vox_offset 0 as "unset" and then reads the header bytes
        with pytest.raises(Exception, match="too low"):
            nib.load(path).get_fdata()
    with pytest.raises(CorruptFileError, match="vox_offset") as err:
        score_files(path, path)
    assert err.value.code == "corrupt_file" and path.name in err.value.message


@pytest.mark.parametrize("offset", [math.nan, math.inf, -math.inf, 1e30, 352.5])
def test_vox_offset_not_a_byte_count_is_refused(tmp_path: Path, suffix: str, offset: float) -> None:
    path = write(
        tmp_path / f"p{suffix}", edit(nifti_bytes(labels_volume()), VOX_OFFSET, "<f", offset)
    )
    with pytest.raises(CorruptFileError, match="vox_offset"):
        score_files(path, path)


@pytest.mark.parametrize("offset", [0, 540, 543])
def test_nifti2_vox_offset_below_544_is_refused(tmp_path: Path, offset: int) -> None:
    raw = edit(nifti_bytes(labels_volume(), nib.Nifti2Image), N2_VOX_OFFSET, "<q", offset)
    path = write(tmp_path / "p.nii", raw)
    with pytest.raises(CorruptFileError, match="544"):
        inspect_nifti(path)


def with_extension(data: np.ndarray, content: bytes) -> bytes:
    """A NIfTI-1 file with one extension (code 0) holding ``content``."""
    image = nib.Nifti1Image(data, np.eye(4), dtype=data.dtype)
    image.header.extensions.append(nib.nifti1.Nifti1Extension(0, content))
    return bytes(image.to_bytes())


def test_extensions_are_skipped_and_an_offset_inside_them_is_refused(
    tmp_path: Path, suffix: str
) -> None:
    data = labels_volume(1)
    raw = with_extension(data, b"x" * 100)
    path = write(tmp_path / f"ext{suffix}", raw)
    assert np.array_equal(nibabel_values(path), data)  # nibabel reads it...
    info = inspect_nifti(path)
    assert info.offset == struct.unpack("<f", raw[VOX_OFFSET : VOX_OFFSET + 4])[0] > 352
    assert np.array_equal(load_nifti(info), data)  # ...and so do we
    inside = write(tmp_path / f"inside{suffix}", edit(raw, VOX_OFFSET, "<f", 368.0))
    with pytest.raises(CorruptFileError, match="extension"):
        score_files(inside, inside)


def test_several_extensions_and_broken_ones(tmp_path: Path, suffix: str) -> None:
    data = labels_volume(16)
    image = nib.Nifti1Image(data, np.eye(4), dtype=data.dtype)
    for content in (b"a" * 100, b"b" * 300, b"c" * 5000):  # across the first 544 bytes
        image.header.extensions.append(nib.nifti1.Nifti1Extension(0, content))
    raw = bytes(image.to_bytes())
    path = write(tmp_path / f"three{suffix}", raw)
    assert np.array_equal(nibabel_values(path), data)
    assert np.array_equal(load_nifti(inspect_nifti(path)), data)
    zero = write(tmp_path / f"zero{suffix}", edit(raw, 352, "<i", 0))  # esize 0
    with pytest.raises(CorruptFileError, match="extension"):
        inspect_nifti(zero)
    cut = write(tmp_path / f"cut{suffix}", raw[:3000])  # ends inside the third extension
    with pytest.raises(CorruptFileError, match="truncated"):
        inspect_nifti(cut)


# -- 2, 3. scaling ----------------------------------------------------------------------------


def test_scaled_ids_above_2_24_stay_apart(tmp_path: Path, suffix: str) -> None:
    stored = np.where(labels_volume(2, 1) == 1, 2**24 + 1, 2**24).astype(np.int32)
    raw = edit(edit(nifti_bytes(stored), SCL_SLOPE, "<f", 1.0), SCL_INTER, "<f", 1.0)
    pred = write(tmp_path / f"p{suffix}", raw)
    values = nibabel_values(pred)
    assert sorted(np.unique(values)) == [2**24 + 1, 2**24 + 2]
    reference = np.roll(values, 1, axis=0).astype(np.int32)
    ref = write(tmp_path / f"r{suffix}", nifti_bytes(reference))
    report = score_files(pred, ref)
    assert report.kind == "labels"
    assert reported_dice(report) == pytest.approx(expected_dice(values, reference), rel=1e-12)
    assert [row.label for row in report.labels] == [2**24 + 1, 2**24 + 2]


@pytest.mark.parametrize(
    ("stored", "slope"),
    [(np.array([0, 3, 6, 9], np.int16), 1 / 3), (np.array([0, 255], np.uint8), 1 / 255)],
)
def test_scaled_values_near_whole_are_labels_on_every_path(
    tmp_path: Path, suffix: str, stored: np.ndarray, slope: float
) -> None:
    rng = np.random.default_rng(3)
    data = stored[rng.integers(0, stored.size, size=SHAPE)]
    raw = edit(nifti_bytes(data), SCL_SLOPE, "<f", slope)
    path = write(tmp_path / f"p{suffix}", raw)
    values = nibabel_values(path)
    assert values.dtype == np.float64 and not np.array_equal(values, np.rint(values))
    loaded = load_nifti(inspect_nifti(path))
    assert loaded.dtype == np.float64 and np.array_equal(loaded, values)  # nibabel's values
    labels = np.rint(values).astype(np.int64)
    reference = labels[::-1].copy()
    ref = write(tmp_path / f"r{suffix}", nifti_bytes(reference.astype(np.uint8)))
    expected = expected_dice(labels, reference)
    for options in (ScoringOptions(), ScoringOptions(kind="labels")):
        from_file = score_files(path, ref, options)
        assert from_file.kind == "labels"
        assert reported_dice(from_file) == pytest.approx(expected, rel=1e-12)
        from_array = score_arrays(values, reference, options)
        assert from_array.kind == "labels"
        assert reported_dice(from_array) == reported_dice(from_file)


def test_scaled_values_far_from_whole_are_not_labels(tmp_path: Path, suffix: str) -> None:
    raw = edit(nifti_bytes(labels_volume(4)), SCL_SLOPE, "<f", 0.5)
    path = write(tmp_path / f"p{suffix}", raw)
    assert np.any(nibabel_values(path) % 1 == 0.5)
    with pytest.raises(NonIntegerLabelsError):
        score_files(path, path, ScoringOptions(kind="labels"))


def test_whole_number_rule_at_its_boundary() -> None:
    reference = np.zeros(300_000, dtype=np.uint8)
    reference[-10:] = 2
    for offset, whole in ((5e-7, True), (-9e-7, True), (2e-6, False)):
        prediction = np.zeros(300_000)  # the odd values sit beyond the first 2**18 voxels
        prediction[-10:] = 2 * (1 + offset)  # relative distance `offset` from the label 2
        prediction[-20:-10] = offset / 2  # absolute distance offset / 2 from 0
        labels = ScoringOptions(kind="labels")
        if whole:
            assert reported_dice(score_arrays(prediction, reference, labels)) == {2: 1.0}
            assert score_arrays(prediction, reference).kind == "labels"
        else:
            with pytest.raises(NonIntegerLabelsError):
                score_arrays(prediction, reference, labels)
            with pytest.raises(ProbabilityRangeError):  # auto: read as probabilities
                score_arrays(prediction, reference)


@pytest.mark.parametrize("slope", [math.nan, math.inf, 0.0])
def test_non_finite_slope_means_unscaled_as_in_nibabel(
    tmp_path: Path, suffix: str, slope: float
) -> None:
    data = labels_volume(5)
    path = write(tmp_path / f"p{suffix}", edit(nifti_bytes(data), SCL_SLOPE, "<f", slope))
    assert np.array_equal(nibabel_values(path), data)
    report = score_files(path, path)
    assert [row.label for row in report.labels] == [1, 2, 3, 4]


@pytest.mark.parametrize("inter", [math.nan, math.inf, -math.inf])
def test_non_finite_intercept_is_refused_as_nibabel_does(
    tmp_path: Path, suffix: str, inter: float
) -> None:
    raw = edit(edit(nifti_bytes(labels_volume()), SCL_SLOPE, "<f", 2.0), SCL_INTER, "<f", inter)
    path = write(tmp_path / f"p{suffix}", raw)
    with pytest.raises(nib.spatialimages.HeaderDataError):
        nibabel_values(path)
    with pytest.raises(CorruptFileError, match="scl_inter"):
        score_files(path, path)


# -- 4, 5. offset and trailer bombs -------------------------------------------------------


def test_offset_bomb_is_refused_from_the_header(tmp_path: Path) -> None:
    raw = edit(nifti_bytes(labels_volume()), VOX_OFFSET, "<f", float(64 << 20))
    path = tmp_path / "bomb.nii.gz"
    with gzip.open(path, "wb", compresslevel=1) as out:  # 64 MiB of zeros before the data
        out.write(raw[:352])
        for _ in range(64):
            out.write(bytes(1 << 20))
        out.write(raw[352:])
    assert path.stat().st_size < 1 << 20
    with pytest.raises(CorruptFileError, match="vox_offset"):
        score_files(path, path)


def test_a_large_legal_offset_is_skipped_in_flat_memory(tmp_path: Path) -> None:
    data = labels_volume(6)
    size = 3 << 20  # one 3 MiB extension (within MAX_DATA_OFFSET)
    raw = with_extension(data, bytes(size - 8))
    path = write(tmp_path / "ext.nii.gz", raw)
    assert np.array_equal(nibabel_values(path), data)
    info = inspect_nifti(path)
    assert size < info.offset <= MAX_DATA_OFFSET
    tracemalloc.start()
    try:
        chunks = list(iter_voxel_chunks(info, 1 << 20))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert np.array_equal(np.concatenate(chunks).reshape(SHAPE, order="F"), data)
    assert peak < size // 4  # the skipped bytes are discarded, never kept


def test_trailer_bomb_is_refused(tmp_path: Path) -> None:
    raw = nifti_bytes(labels_volume())
    path = tmp_path / "trailer.nii.gz"
    path.write_bytes(gzip.compress(raw + bytes(8 << 20), compresslevel=1))
    assert nibabel_values(path).shape == SHAPE  # nibabel reads the data and stops
    with pytest.raises(CorruptFileError, match="after the voxel data"):
        score_files(path, path)
    small = tmp_path / "small_trailer.nii.gz"  # a few bytes after the data are tolerated
    small.write_bytes(gzip.compress(raw + bytes(MAX_TRAILER_BYTES // 2)))
    assert [row.label for row in score_files(small, small).labels] == [1, 2, 3, 4]


def test_gzip_with_nul_padding_is_read(tmp_path: Path) -> None:
    data, other = labels_volume(7), labels_volume(8)
    raw = nifti_bytes(data)
    padded = tmp_path / "padded.nii.gz"
    padded.write_bytes(gzip.compress(raw) + bytes(1000))
    between = tmp_path / "between.nii.gz"  # two members with NULs between them
    between.write_bytes(gzip.compress(raw[:500]) + bytes(37) + gzip.compress(raw[500:]) + b"\0")
    ref = write(tmp_path / "r.nii", nifti_bytes(other))
    for path in (padded, between):
        assert gzip.decompress(path.read_bytes()) == raw
        assert np.array_equal(nibabel_values(path), data)
        report = score_files(path, ref)
        assert reported_dice(report) == pytest.approx(expected_dice(data, other), rel=1e-12)


def test_inline_and_threaded_streaming_agree_and_check_both_crcs(tmp_path: Path) -> None:
    data, other = labels_volume(9, shape=(64, 64, 40)), labels_volume(10, shape=(64, 64, 40))
    pred = write(tmp_path / "p.nii.gz", nifti_bytes(data))
    ref = write(tmp_path / "r.nii.gz", nifti_bytes(other))
    pi, ri = inspect_nifti(pred), inspect_nifti(ref)
    inline = stream_confusion(pi, ri, 1 << 14, threads=False)
    threaded = stream_confusion(pi, ri, 1 << 14, threads=True)
    assert np.array_equal(inline.labels, threaded.labels)
    assert np.array_equal(inline.matrix, threaded.matrix)
    bad = bytearray(ref.read_bytes())
    bad[-8] ^= 0xFF  # the CRC of the reference, read after its last voxel
    broken = tmp_path / "broken.nii.gz"
    broken.write_bytes(bytes(bad))
    for threads in (False, True):
        with pytest.raises(CorruptFileError):
            stream_confusion(pi, inspect_nifti(broken), 1 << 14, threads=threads)


# -- 6. inputs that used to raise unexpected exceptions -----------------------------------


@pytest.mark.parametrize(
    "dims",
    [(3, -1, 8, 7), (3, -1, 1, 1), (3, 9, 0, 7), (0, 9, 8, 7), (8, 9, 8, 7), (-3, 9, 8, 7)],
)
def test_bad_dims_are_refused(tmp_path: Path, suffix: str, dims: tuple[int, ...]) -> None:
    raw = bytearray(nifti_bytes(labels_volume()))
    raw[DIM : DIM + 2 * len(dims)] = struct.pack(f"<{len(dims)}h", *dims)
    path = write(tmp_path / f"p{suffix}", bytes(raw))
    with pytest.raises(CorruptFileError, match=r"dim|shape"):
        score_files(path, path)


def test_invalid_quaternion_of_a_qform_only_header(tmp_path: Path, suffix: str) -> None:
    data, other = labels_volume(11), labels_volume(12)
    raw = edit(edit(nifti_bytes(data), QFORM_CODE, "<h", 1), SFORM_CODE, "<h", 0)
    raw = edit(raw, QUATERN_B, "<3f", 2.0, 2.0, 2.0)
    path = write(tmp_path / f"p{suffix}", raw)
    with pytest.raises(ValueError, match="w2"):
        nib.load(path)  # nibabel cannot build the affine
    ref = write(tmp_path / f"r{suffix}", nifti_bytes(other))
    with pytest.raises(CorruptFileError, match="affine") as err:
        score_files(path, ref)
    assert path.name in err.value.message
    report = score_files(path, ref, IGNORE_AFFINE)  # the data themselves are fine
    assert reported_dice(report) == pytest.approx(expected_dice(data, other), rel=1e-12)


def uint64_ids(shape: tuple[int, ...] = SHAPE) -> np.ndarray:
    ids = np.full(shape, 2**63 + 5, dtype=np.uint64)
    ids[0] = 1
    return ids


def test_uint64_ids_of_2_63_or_more_are_refused(tmp_path: Path, suffix: str) -> None:
    ids = uint64_ids()
    path = write(tmp_path / f"u{suffix}", nifti_bytes(ids, dtype=np.uint64))
    assert int(nibabel_values(path).max()) == 2**63 + 5
    for call in (lambda: score_files(path, path), lambda: score_arrays(ids, ids)):
        with pytest.raises(LabelIdTooLargeError, match="2\\*\\*63") as err:
            call()
        assert err.value.code == "label_id_too_large"


@pytest.mark.parametrize("signed", [np.int8, np.int16, np.int64])
def test_uint64_ids_above_2_53_against_a_signed_map_are_counted_exactly(
    tmp_path: Path, suffix: str, signed: type
) -> None:
    """Ids 2**53 and 2**53 + 1 are one float64: they must stay two labels, with their ids."""
    regions = labels_volume(21, 3)
    pred = np.select([regions == 1, regions == 2], [2**53 + 1, 2**60 + 1], 0).astype(np.uint64)
    if signed == np.int64:
        ref = np.where(regions == 1, 2**53, np.where(regions == 3, 7, 0)).astype(np.int64)
    else:
        ref = np.where(regions == 3, 7, 0).astype(signed)
    p = write(tmp_path / f"p{suffix}", nifti_bytes(pred, dtype=np.uint64))
    r = write(tmp_path / f"r{suffix}", nifti_bytes(ref))
    expected = expected_dice(nibabel_values(p), nibabel_values(r))
    assert 2**53 + 1 in expected and 2**60 + 1 in expected
    assert reported_dice(score_files(p, r)) == pytest.approx(expected, rel=1e-12)
    assert reported_dice(score_arrays(pred, ref)) == pytest.approx(expected, rel=1e-12)


def test_probabilities_against_uint64_ids_of_2_63_are_refused(tmp_path: Path) -> None:
    probabilities = np.full(SHAPE, 0.5, dtype=np.float32)
    with pytest.raises(LabelIdTooLargeError):
        score_arrays(probabilities, uint64_ids())
    p = write(tmp_path / "p.nii.gz", nifti_bytes(probabilities))
    r = write(tmp_path / "r.nii.gz", nifti_bytes(uint64_ids(), dtype=np.uint64))
    with pytest.raises(LabelIdTooLargeError):
        score_files(p, r)


def test_integer_pair_with_a_fourth_axis_names_the_file(tmp_path: Path) -> None:
    pair = np.zeros((*SHAPE, 2), dtype=np.uint8)
    path = write(tmp_path / "pair.nii.gz", nifti_bytes(pair))
    with pytest.raises(ShapeMismatchError) as err:
        score_files(path, path)
    assert "pair.nii.gz" in err.value.message and "(9, 8, 7, 2)" in err.value.message
    assert "spacing" not in err.value.message


# -- 8. a single-label probability map against an integer label map ----------------------


def test_float_probability_map_against_integer_labels(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(13)
    probabilities = rng.uniform(0, 1, size=SHAPE).astype(np.float32)
    labels = labels_volume(14, 2)
    target = (labels == 1).astype(np.float64)
    x = probabilities.astype(np.float64)
    expected = 2 * np.sum(x * target) / (np.sum(x) + np.sum(target))
    for options, label in ((ScoringOptions(), 1), (ScoringOptions(labels={2: None}), 2)):
        target = (labels == label).astype(np.float64)
        expected = 2 * np.sum(x * target) / (np.sum(x) + np.sum(target))
        report = score_arrays(probabilities, labels, options)
        assert report.kind == "probabilities"
        assert reported_dice(report) == pytest.approx({label: expected}, rel=1e-9)
        # the default label is said, so a map of another structure is not silently label 1
        assert any("scores label 1" in note for note in report.notes) == (label == 1)
        p = write(tmp_path / f"p{suffix}", nifti_bytes(probabilities))
        r = write(tmp_path / f"r{suffix}", nifti_bytes(labels))
        assert reported_dice(score_files(p, r, options)) == pytest.approx(
            {label: expected}, rel=1e-9
        )


def test_probabilities_rounded_just_past_the_range_count_as_the_range_end(
    tmp_path: Path, suffix: str
) -> None:
    """An int16 map with ``scl_slope`` float32(0.001) reads 1000 as 1.0000000475 (nibabel):
    within the 1e-6 of rounding, so it counts as 1, and an all-ones reference has no fp."""
    stored = np.where(labels_volume(15, 1) == 1, 1000, 250).astype(np.int16)
    image = nib.Nifti1Image(stored, np.eye(4), dtype=np.int16)
    image.header.set_slope_inter(np.float32(0.001), 0.0)
    p = write(tmp_path / f"p{suffix}", bytes(image.to_bytes()))
    values = nibabel_values(p).astype(np.float64)
    assert values.max() > 1.0  # the file really holds a value past 1
    x = np.clip(values, 0.0, 1.0)
    for reference in (np.ones(SHAPE, np.uint8), np.ones(SHAPE, np.float32)):
        r = write(tmp_path / f"r{suffix}", nifti_bytes(reference))
        row = score_files(p, r).labels[0]
        assert row.fp == pytest.approx(0.0, abs=1e-9)
        assert row.tp == pytest.approx(float(np.sum(x)), rel=1e-12)
        assert row.metrics["dice"] == pytest.approx(2 * np.sum(x) / (np.sum(x) + x.size), rel=1e-12)


# -- 9. no torch at import time in the label-map modules ----------------------------------

LABEL_PATH_MODULES = ("nifti", "files", "volumes", "confusion", "arrays")


@pytest.mark.parametrize("module", LABEL_PATH_MODULES)
def test_label_path_modules_import_no_torch_at_module_level(module: str) -> None:
    import monai_jdt.scoring

    source = Path(monai_jdt.scoring.__file__).with_name(f"{module}.py").read_text()
    imported = []
    for node in ast.parse(source).body:  # module level only (TYPE_CHECKING blocks excepted)
        if isinstance(node, ast.Import):
            imported += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            imported.append(node.module or "")
    heavy = [name for name in imported if name.split(".")[0] in ("torch", "monai")]
    heavy += [name for name in imported if name in ("monai_jdt.counts", "monai_jdt.scoring.soft")]
    assert heavy == [], f"{module}.py imports {heavy} at module level"


# -- 7. fuzzed headers: we refuse exactly when we should, else we read nibabel's values -----

FUZZ_DATA = labels_volume(15, 5, (8, 7, 6))
FUZZ_RAW = {  # by byte order
    "<": nifti_bytes(FUZZ_DATA),
    ">": bytes(nib.Nifti1Image(FUZZ_DATA, np.eye(4), nib.Nifti1Header(endianness=">")).to_bytes()),
}
FIELDS = {  # name: (offset, format, values drawn)
    "dim": (DIM, "<h", st.integers(-2, 10)),
    "dim1": (DIM + 2, "<h", st.sampled_from([-1, 0, 1, 4, 8, 9, 16, 32767])),
    "dim2": (DIM + 4, "<h", st.integers(-1, 9)),
    "dim4": (DIM + 8, "<h", st.integers(0, 3)),
    "datatype": (70, "<h", st.sampled_from([0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 768, 1024])),
    "vox_offset": (
        VOX_OFFSET,
        "<f",
        st.one_of(
            st.sampled_from([0.0, 348.0, 352.0, 353.0, 360.5, 368.0, math.nan, math.inf, 1e30]),
            st.integers(-10, 700).map(float),
        ),
    ),
    "scl_slope": (
        SCL_SLOPE,
        "<f",
        st.sampled_from([0.0, 1.0, -1.0, 2.0, 0.5, 1 / 3, 1e38, math.nan, math.inf]),
    ),
    "scl_inter": (
        SCL_INTER,
        "<f",
        st.sampled_from([0.0, 1.0, -3.0, 2.0**24, 0.25, 1e20, math.nan, -math.inf]),
    ),
    "xyzt_units": (123, "<B", st.integers(0, 255)),
    "pixdim1": (80, "<f", st.sampled_from([0.0, -1.0, 0.5, 2.0, math.nan])),
}


def allowed_refusals(values: np.ndarray, raw: bytes, endian: str) -> set[str]:
    """The codes with which we may refuse a file nibabel reads, each justified independently:
    from nibabel's values and the header bytes."""
    codes = set()
    offset = struct.unpack(endian + "f", raw[VOX_OFFSET : VOX_OFFSET + 4])[0]
    if not (math.isfinite(offset) and offset == int(offset) and 352 <= offset <= MAX_DATA_OFFSET):
        codes.add("corrupt_file")  # the data would overlap the header, or not a byte count
    dims = struct.unpack(endian + "8h", raw[DIM : DIM + 16])
    if not 1 <= dims[0] <= 7 or min(dims[1 : dims[0] + 1], default=0) < 1 or values.ndim == 0:
        codes.add("corrupt_file")  # nibabel guesses the byte order from dim[0], we do not
    extra = [s for s in values.shape[3:] if s != 1]
    if extra:
        codes.add("shape_mismatch")  # a label map has no axis after the spatial ones
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            return codes | {"non_finite_values"}
        nearest = np.rint(values)
        if not np.all(np.abs(values - nearest) <= 1e-6 * np.maximum(np.abs(nearest), 1)):
            return codes | {"non_integer_labels"}
        values = nearest
    if values.size and values.min() < 0:
        codes.add("negative_labels")
    if values.size and float(values.max()) >= 2.0**63:
        codes.add("label_id_too_large")
    if np.unique(values).size > 4096:
        codes.add("too_many_labels")
    return codes


@settings(
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    mutations=st.lists(
        st.sampled_from(sorted(FIELDS)).flatmap(
            lambda name: st.tuples(st.just(name), FIELDS[name][2])
        ),
        min_size=1,
        max_size=3,
    ),
    gz=st.booleans(),
    endian=st.sampled_from("<>"),
)
def test_fuzzed_headers_agree_with_nibabel(
    tmp_path: Path, mutations: list[tuple[str, object]], gz: bool, endian: str
) -> None:
    raw = FUZZ_RAW[endian]
    for name, value in mutations:
        offset, fmt, _ = FIELDS[name]
        raw = edit(raw, offset, endian + fmt[1:], value)
    path = write(tmp_path / ("m.nii.gz" if gz else "m.nii"), raw)
    options = ScoringOptions(kind="labels", ignore_affine=True, include_background=True)
    try:
        values = nibabel_values(path)
    except Exception:
        with pytest.raises(ScoringError):  # nibabel refuses: so do we, with a ScoringError
            score_files(path, path, options)
        return
    if values.dtype.kind == "c" or values.dtype.fields is not None:  # complex, RGB
        with pytest.raises(ScoringError) as refused:
            score_files(path, path, options)
        allowed = allowed_refusals(np.zeros(values.shape), raw, endian) | {"unsupported_dtype"}
        assert refused.value.code in allowed, (mutations, refused.value.message)
        return
    try:
        report = score_files(path, write(tmp_path / "ref.nii", reference_for(values)), options)
    except ScoringError as err:
        assert err.code in allowed_refusals(values, raw, endian), (mutations, err.message)
        return
    labels = np.rint(values).astype(np.int64) if values.dtype.kind == "f" else values
    reference = np.asanyarray(nib.load(tmp_path / "ref.nii").dataobj)
    expected = {
        int(label): dice(labels, reference, int(label))
        for label in np.union1d(np.unique(labels), np.unique(reference))
    }
    got = reported_dice(report)
    assert got.keys() == expected.keys(), mutations
    for label, value in expected.items():
        assert got[label] == pytest.approx(value, rel=1e-12, nan_ok=True), (mutations, label)


def reference_for(values: np.ndarray) -> bytes:
    """A reference of ``values``' shape: its labels (when they can be labels) rolled by one."""
    if values.dtype.kind == "f":
        finite = np.isfinite(values)
        values = np.where(finite, np.rint(np.where(finite, values, 0)), 0)
    ids = np.clip(values, 0, 2**62).astype(np.int64)
    return nifti_bytes(np.roll(ids, 1, axis=0) if ids.ndim else ids, dtype=np.int64)


def nifti_bytes_of(image: nib.Nifti1Image) -> bytes:
    return bytes(image.to_bytes())


GRID = np.array([[0.0, -2.0, 0.0, 10.0], [1.5, 0.0, 0.0, -4.0], [0.0, 0.0, 3.0, 7.0], [0, 0, 0, 1]])


@pytest.mark.parametrize(
    ("field", "fmt", "value"),
    [
        (PIXDIM, "<f", 0.0),  # qfac 0: nifti1.h reads it as 1, as nibabel does
        (PIXDIM + 4, "<f", -1.5),  # a negative voxel size: nibabel takes its magnitude
        (PIXDIM + 8, "<f", 0.0),  # a zero voxel size: nibabel reads 1
        (SFORM_CODE, "<h", 300),  # out-of-range codes: nibabel ignores that transform
        (SFORM_CODE, "<h", -1),
        (QFORM_CODE, "<h", 7),
    ],
)
def test_the_grid_is_the_one_nibabel_loads_from_a_header_it_repairs(
    tmp_path: Path, suffix: str, field: int, fmt: str, value: float
) -> None:
    image = nib.Nifti1Image(labels_volume(30), None)
    image.header.set_qform(GRID, code=1)
    if field == SFORM_CODE:  # an sform on another grid, which the repaired header ignores
        image.header.set_sform(GRID @ np.diag([2.0, 1.0, 1.0, 1.0]), code=1)
    else:  # the qform alone gives the grid
        image.header.set_sform(None, code=0)
    path = write(tmp_path / f"p{suffix}", edit(nifti_bytes_of(image), field, fmt, value))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = nib.load(path)
        expected_affine, values = loaded.affine, np.asanyarray(loaded.dataobj)
    info = inspect_nifti(path)
    assert info.affine_problem is None
    np.testing.assert_allclose(info.affine, expected_affine, atol=1e-6)
    reference = nib.Nifti1Image(values, expected_affine)  # on the grid nibabel sees
    ref = write(tmp_path / f"r{suffix}", nifti_bytes_of(reference))
    assert reported_dice(score_files(path, ref)) == pytest.approx(
        expected_dice(values, values), rel=1e-12
    )


def test_nifti2_header_changed_by_a_text_mode_transfer_is_refused(
    tmp_path: Path, suffix: str
) -> None:
    raw = nifti_bytes(labels_volume(), nib.Nifti2Image)
    assert raw[8:12] == b"\r\n\x1a\n"  # NIfTI-2's eol_check
    path = write(tmp_path / f"p{suffix}", raw[:8] + b"\n\x1a\n\x00" + raw[12:])
    with pytest.raises(nib.spatialimages.HeaderDataError):
        nibabel_values(path)
    with pytest.raises(CorruptFileError, match="EOL"):
        score_files(path, path)


@pytest.mark.parametrize(
    ("name", "compress"),
    [
        ("p.nii.gz", False),  # raw bytes under the gzip ending
        ("p.nii", True),  # gzip bytes under the raw ending
        ("p.dat", False),
        ("p", True),
        ("p.nii.bz2", True),
        ("p.hdr", False),
    ],
)
def test_a_name_that_does_not_say_what_the_file_holds_is_refused_as_nibabel_does(
    tmp_path: Path, name: str, compress: bool
) -> None:
    raw = nifti_bytes(labels_volume())
    path = tmp_path / name
    path.write_bytes(gzip.compress(raw) if compress else raw)
    with pytest.raises(Exception):  # noqa: B017 - nibabel raises several types
        nibabel_values(path)
    with pytest.raises(NotNiftiError, match=r"rename it|not a NIfTI file name"):
        score_files(path, path)


def test_endings_in_upper_case_are_read_as_nibabel_reads_them(tmp_path: Path) -> None:
    data = labels_volume(3)
    for name, compress in (("P.NII", False), ("P.NII.GZ", True)):
        path = tmp_path / name
        path.write_bytes(gzip.compress(nifti_bytes(data)) if compress else nifti_bytes(data))
        assert reported_dice(score_files(path, path)) == pytest.approx(
            expected_dice(nibabel_values(path), nibabel_values(path)), rel=1e-12
        )
