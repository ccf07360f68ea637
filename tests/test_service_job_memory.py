"""The job memory estimate bounds what the scoring core really allocates (``tracemalloc``)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jdt_service.job_memory import CHUNK_OVERHEAD_BYTES, job_bytes
from monai_jdt.scoring import ScoringOptions, score_files
from monai_jdt.scoring.nifti import inspect_nifti

SHAPE = (96, 80, 64)


def _scaled_int16(path: Path, array: np.ndarray) -> Path:
    image = nib.Nifti1Image(array.astype(np.int16) * 3, np.eye(4))
    image.header.set_slope_inter(1 / 3, 0)
    nib.save(image, path)
    return path


def _cases(tmp: Path, label_pair, write_nifti) -> dict[str, tuple[Path, Path, ScoringOptions]]:
    pred, ref = label_pair(SHAPE, labels=4, seed=3)
    rng = np.random.default_rng(4)
    probs = rng.random((*SHAPE, 4)).astype(np.float32)
    probs /= probs.sum(axis=-1, keepdims=True)
    return {
        "uint8 labels (streamed)": (
            write_nifti(tmp / "p8.nii.gz", pred),
            write_nifti(tmp / "r8.nii.gz", ref),
            ScoringOptions(),
        ),
        "float64 labels (loaded whole)": (
            write_nifti(tmp / "p64.nii.gz", pred.astype(np.float64)),
            write_nifti(tmp / "r64.nii.gz", ref.astype(np.float64)),
            ScoringOptions(),
        ),
        "scaled int16 labels": (
            _scaled_int16(tmp / "ps.nii", pred),
            _scaled_int16(tmp / "rs.nii", ref),
            ScoringOptions(),
        ),
        "float32 probabilities (X, Y, Z, C)": (
            write_nifti(tmp / "pp.nii.gz", probs),
            write_nifti(tmp / "rp.nii.gz", ref),
            ScoringOptions(kind="probabilities"),
        ),
    }


@pytest.mark.parametrize(
    "name",
    [
        "uint8 labels (streamed)",
        "float64 labels (loaded whole)",
        "scaled int16 labels",
        "float32 probabilities (X, Y, Z, C)",
    ],
)
def test_estimate_bounds_the_peak_allocation(
    tmp_path: Path, name: str, label_pair, write_nifti
) -> None:
    prediction, reference, options = _cases(tmp_path, label_pair, write_nifti)[name]
    estimate = job_bytes(inspect_nifti(prediction), inspect_nifti(reference), options)
    score_files(prediction, reference, options)  # warm-up: imports and caches are not the job's
    tracemalloc.start()
    try:
        score_files(prediction, reference, options)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate, f"{name}: peak {peak} > estimate {estimate}"
    if "streamed" not in name:  # whole volumes: the estimate grows with them, not a constant
        assert estimate - CHUNK_OVERHEAD_BYTES >= peak // 4, (name, peak, estimate)


def test_streamed_estimate_does_not_grow_with_the_volume(tmp_path: Path, write_nifti) -> None:
    small = write_nifti(tmp_path / "s.nii.gz", np.zeros((8, 8, 8), np.uint8))
    large = write_nifti(tmp_path / "l.nii.gz", np.zeros((256, 256, 128), np.uint8))
    options = ScoringOptions()
    a, b = inspect_nifti(small), inspect_nifti(large)
    assert job_bytes(a, a, options) == job_bytes(b, b, options)
    loaded = ScoringOptions(kind="probabilities")
    assert job_bytes(b, b, loaded) > job_bytes(a, a, loaded)
