"""Helpers for the service tests: NIfTI writers, a corpus of bad files, numpy known answers."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np

__all__ = [
    "bad_file_corpus",
    "dice_f64",
    "label_pair",
    "nifti_bytes",
    "write_nifti",
]


def nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None, gz: bool = True) -> bytes:
    """The bytes of a NIfTI-1 file holding ``array`` (gzip-compressed when ``gz``)."""
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.write_bytes(nifti_bytes(array, affine, gz=path.name.endswith(".gz")))
    return path


def label_pair(shape: tuple[int, ...], labels: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    """A reference label map of blocks and a prediction that disagrees on ~10% of voxels."""
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, labels, size=shape, dtype=np.uint8)
    pred = ref.copy()
    flip = rng.random(shape) < 0.1
    pred[flip] = rng.integers(0, labels, size=int(flip.sum()), dtype=np.uint8)
    return pred, ref


def dice_f64(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    """Dice of one label, ``2|P∩R| / (|P|+|R|)``, in float64 (NaN when both are empty)."""
    p, r = pred == label, ref == label
    denom = float(p.sum()) + float(r.sum())
    return float("nan") if denom == 0 else 2.0 * float((p & r).sum()) / denom


def _header_with(shape: tuple[int, ...], dtype: type = np.uint8) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header["dim"] = [len(shape), *shape, *([1] * (7 - len(shape)))]
    header["vox_offset"] = 352
    return header


def _raw_header(header: nib.Nifti1Header, payload: bytes = b"") -> bytes:
    return header.binaryblock + b"\x00" * 4 + payload


def bad_file_corpus() -> dict[str, tuple[bytes, bytes, set[int], set[str]]]:
    """``name -> (prediction bytes, reference bytes, allowed statuses, allowed codes)``.

    Each case is a pair the service must refuse with a 4xx naming the problem.
    """
    shape = (6, 5, 4)
    pred, ref = label_pair(shape, seed=1)
    good = nifti_bytes(ref)
    full = nifti_bytes(pred, gz=False)
    floats = pred.astype(np.float32) + 0.25
    nan = pred.astype(np.float32)
    nan[0, 0, 0] = np.nan
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    return {
        "truncated_gzip": (nifti_bytes(pred)[:-20], good, {422}, {"corrupt_file"}),
        "truncated_raw": (full[: len(full) - 30], good, {422}, {"corrupt_file"}),
        "wrong_magic": (b"PK\x03\x04" + b"\x00" * 400, good, {415}, {"not_nifti"}),
        "text_file": (b"hello, this is not an image\n" * 20, good, {415}, {"not_nifti"}),
        "empty_file": (b"", good, {415, 422}, {"not_nifti", "corrupt_file"}),
        "huge_dims": (
            gzip.compress(_raw_header(_header_with((30_000, 30_000, 30_000)), b"\x00" * 64)),
            good,
            {413},
            {"volume_too_large"},
        ),
        "zero_length_dim": (
            _raw_header(_header_with((0, 5, 4))),
            good,
            {415, 422},
            {"corrupt_file", "not_nifti", "invalid_input"},
        ),
        "shape_mismatch": (nifti_bytes(pred[:, :, :3]), good, {422}, {"shape_mismatch"}),
        "affine_mismatch": (nifti_bytes(pred, shifted), good, {422}, {"affine_mismatch"}),
        "float_labels": (
            nifti_bytes(floats * 3),
            good,
            {422},
            {"non_integer_labels", "probability_out_of_range"},
        ),
        "nan_values": (nifti_bytes(nan), good, {422}, {"non_finite_values"}),
        "negative_labels": (
            nifti_bytes(pred.astype(np.int16) - 1),
            good,
            {422},
            {"negative_labels"},
        ),
    }
