"""The job memory estimate bounds what the scoring core really allocates (``tracemalloc``)."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from jdt_service.job_memory import CHUNK_OVERHEAD_BYTES, channel_bytes, job_bytes
from monai_jdt.scoring import ScoringOptions, TooManyLabelsError, score_files
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


def _traced_peak(prediction: Path, reference: Path, options: ScoringOptions) -> int:
    """The peak host allocation (``tracemalloc``) of ``score_files``, after a warm-up call
    (imports and caches are not the job's)."""
    score_files(prediction, reference, options)
    tracemalloc.start()
    try:
        score_files(prediction, reference, options)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


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
    peak = _traced_peak(prediction, reference, options)
    assert peak <= estimate, f"{name}: peak {peak} > estimate {estimate}"
    if "streamed" not in name:  # whole volumes: the estimate grows with them, not a constant
        assert estimate - CHUNK_OVERHEAD_BYTES >= peak // 4, (name, peak, estimate)


def test_estimate_bounds_label_cells_up_to_the_pair_limit(tmp_path: Path, write_nifti) -> None:
    """uint16 maps with ids past 255: 4000 instances (a few cells per label), and noise over
    4096 ids, which pairs them in ~2 million ways and is refused at the pair limit, its
    summation being the most the cells take."""
    rng = np.random.default_rng(6)
    shape = (128, 128, 128)
    size = int(np.prod(shape))
    ref = (np.arange(size) * 4000 // size + 1).astype(np.uint16).reshape(shape)
    pred = ref.copy()
    noisy = rng.random(shape) < 0.05
    pred[noisy] = rng.integers(1, 4001, int(noisy.sum()))
    instances = write_nifti(tmp_path / "pi.nii.gz", pred), write_nifti(tmp_path / "ri.nii.gz", ref)
    noise = [
        write_nifti(tmp_path / f"{n}.nii.gz", rng.integers(0, 4096, shape).astype(np.uint16))
        for n in ("pn", "rn")
    ]
    options = ScoringOptions()
    estimate = job_bytes(inspect_nifti(instances[0]), inspect_nifti(instances[1]), options)
    assert _traced_peak(*instances, options) <= estimate
    score_files(*instances, options)  # warm-up of the path the refusal takes
    tracemalloc.start()
    try:
        with pytest.raises(TooManyLabelsError, match="distinct"):
            score_files(noise[0], noise[1], options)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak <= job_bytes(inspect_nifti(noise[0]), inspect_nifti(noise[1]), options)
    assert peak > CHUNK_OVERHEAD_BYTES  # the cells term is needed: the constant alone misses


def test_streamed_estimate_does_not_grow_with_the_volume(tmp_path: Path, write_nifti) -> None:
    small = write_nifti(tmp_path / "s.nii.gz", np.zeros((8, 8, 8), np.uint8))
    large = write_nifti(tmp_path / "l.nii.gz", np.zeros((256, 256, 128), np.uint8))
    options = ScoringOptions()
    a, b = inspect_nifti(small), inspect_nifti(large)
    assert job_bytes(a, a, options) == job_bytes(b, b, options)
    loaded = ScoringOptions(kind="probabilities")
    assert job_bytes(b, b, loaded) > job_bytes(a, a, loaded)


@pytest.mark.parametrize(
    "options",
    [
        ScoringOptions(metrics="dice,hd95,nsd,boundary_iou"),
        ScoringOptions(metrics="hd95,nsd,boundary_iou", surface="surfel"),
    ],
    ids=["voxel+boundary_iou", "surfel+boundary_iou"],
)
def test_estimate_bounds_boundary_metrics_on_a_structure_that_is_all_surface(
    tmp_path: Path, options: ScoringOptions, write_nifti
) -> None:
    """Half the voxels set at random: nearly every voxel is on the surface (the boundary
    metrics took 6 to 15 times the estimate that counted the volumes only)."""
    rng = np.random.default_rng(9)
    pred = (rng.random((112, 112, 112)) < 0.5).astype(np.uint8)
    ref = (rng.random((112, 112, 112)) < 0.5).astype(np.uint8)
    p, r = write_nifti(tmp_path / "p.nii.gz", pred), write_nifti(tmp_path / "r.nii.gz", ref)
    estimate = job_bytes(inspect_nifti(p), inspect_nifti(r), options)
    peak = _traced_peak(p, r, options)
    assert CHUNK_OVERHEAD_BYTES < peak <= estimate, (peak, estimate)


def test_channel_chunks_grow_with_the_channels(tmp_path: Path, write_nifti) -> None:
    """The soft counts take every channel of a chunk at once (256 channels of 64³ took 2.1 GiB
    against an estimate of 0.8 GiB that had one flat allowance for chunks)."""
    infos = {
        c: inspect_nifti(write_nifti(tmp_path / f"p{c}.nii.gz", np.zeros((8, 8, 8, c), np.float32)))
        for c in (1, 2, 64)
    }
    ref = inspect_nifti(write_nifti(tmp_path / "r.nii.gz", np.zeros((8, 8, 8), np.uint8)))
    assert channel_bytes(infos[1]) == 0
    assert channel_bytes(infos[64]) == 32 * channel_bytes(infos[2]) > 0
    options = ScoringOptions(kind="probabilities")
    assert job_bytes(infos[64], ref, options) > channel_bytes(infos[64]) + CHUNK_OVERHEAD_BYTES
