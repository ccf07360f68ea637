"""The confusion matrix against np.add.at, on every path (pair, dense, compact, torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from monai_jdt.scoring.confusion import (
    MAX_LABEL_PAIRS,
    ConfusionAccumulator,
    confusion_matrix,
    confusion_matrix_torch,
)
from monai_jdt.scoring.errors import (
    LabelIdTooLargeError,
    NegativeLabelError,
    NonIntegerLabelsError,
    TooManyLabelsError,
)


def reference_matrix(pred: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    labels = np.union1d(pred, ref)
    matrix = np.zeros((labels.size, labels.size), dtype=np.int64)
    np.add.at(
        matrix, (np.searchsorted(labels, pred.ravel()), np.searchsorted(labels, ref.ravel())), 1
    )
    return labels, matrix


def random_pair(high: int, dtype: type, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels below ``high``: all of them when few, else 40 ids spread up to ``high``."""
    rng = np.random.default_rng(seed)
    ids = np.arange(high) if high <= 256 else np.sort(rng.choice(high, 40, replace=False))
    pred = ids[rng.integers(0, ids.size, size=(17, 19, 23))].astype(dtype)
    ref = pred.copy()
    flip = rng.random(ref.shape) < 0.3
    ref[flip] = ids[rng.integers(0, ids.size, size=int(flip.sum()))].astype(dtype)
    return pred, ref


@pytest.mark.parametrize(
    ("high", "dtype"),
    [
        (2, np.bool_),
        (15, np.uint8),
        (16, np.int16),
        (200, np.uint8),
        (255, np.int64),
        (5000, np.int32),
        (70000, np.uint32),  # ids numbered by a lookup table
        (1 << 21, np.uint32),  # ids past the table: numbered by sorting
        (1 << 62, np.uint64),
    ],
)
@pytest.mark.parametrize("chunk", [997, 1 << 18])
def test_matches_add_at(high: int, dtype: type, chunk: int) -> None:
    pred, ref = random_pair(high, dtype)
    labels, expected = reference_matrix(pred.astype(np.int64), ref.astype(np.int64))
    result = confusion_matrix(pred, ref, chunk_voxels=chunk)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.voxels == pred.size


def test_layouts_give_the_same_counts() -> None:
    pred, ref = random_pair(12, np.uint8)
    base = confusion_matrix(pred, ref)
    for p, r in [
        (np.asfortranarray(pred), np.asfortranarray(ref)),
        (np.asfortranarray(pred), ref),  # mixed: slab copies
        (pred[:, ::-1], ref[:, ::-1]),  # non-contiguous views
    ]:
        result = confusion_matrix(p, r, chunk_voxels=1000)
        np.testing.assert_array_equal(result.matrix, base.matrix)


def test_odd_chunk_of_the_pair_histogram_counts_its_last_voxel() -> None:
    acc = ConfusionAccumulator()
    acc.update(np.array([1, 2, 3], np.uint8), np.array([1, 2, 0], np.uint8))
    result = acc.result()
    np.testing.assert_array_equal(result.labels, [0, 1, 2, 3])
    assert result.counts(3) == (0, 1, 0, 2)
    assert result.counts(1) == (1, 0, 0, 2)
    assert result.counts(9) == (0, 0, 0, 3)


def test_counts_from_the_matrix() -> None:
    pred = np.array([0, 1, 1, 2, 2, 2, 0], np.uint8)
    ref = np.array([0, 1, 2, 2, 2, 0, 1], np.uint8)
    result = confusion_matrix(pred, ref)
    # label 2: tp 2 (idx 3, 4), fp 1 (idx 5), fn 1 (idx 2), tn 3
    assert result.counts(2) == (2, 1, 1, 3)
    assert result.present_in_prediction() == {0, 1, 2}


@pytest.mark.parametrize(("high", "dtype"), [(14, np.uint8), (300, np.int16), (3000, np.int32)])
def test_torch_path_gives_identical_integer_counts(high: int, dtype: type) -> None:
    pred, ref = random_pair(high, dtype, seed=3)
    numpy_result = confusion_matrix(pred, ref)
    torch_result = confusion_matrix_torch(
        torch.from_numpy(pred), torch.from_numpy(ref), chunk_voxels=1001
    )
    np.testing.assert_array_equal(torch_result.labels, numpy_result.labels)
    np.testing.assert_array_equal(torch_result.matrix, numpy_result.matrix)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_path_gives_identical_integer_counts() -> None:
    pred, ref = random_pair(15, np.uint8, seed=4)
    cuda = confusion_matrix_torch(torch.from_numpy(pred).cuda(), torch.from_numpy(ref).cuda())
    np.testing.assert_array_equal(cuda.matrix, confusion_matrix(pred, ref).matrix)


def test_negative_labels_are_refused_naming_the_volume() -> None:
    pred = np.array([0, 1, -3], np.int16)
    ref = np.array([0, 1, 1], np.int16)
    with pytest.raises(NegativeLabelError, match=r"prediction.*-3"):
        confusion_matrix(pred, ref)
    with pytest.raises(NegativeLabelError, match=r"reference.*-3"):
        confusion_matrix_torch(torch.from_numpy(ref), torch.from_numpy(pred))


def test_float_chunks_are_refused() -> None:
    with pytest.raises(NonIntegerLabelsError, match="dtype float32"):
        confusion_matrix(np.zeros(4, np.float32), np.zeros(4, np.uint8))


def test_too_many_distinct_labels() -> None:
    pred = np.arange(5000, dtype=np.int32)
    with pytest.raises(TooManyLabelsError, match="instance map"):
        confusion_matrix(pred, pred)


def instance_pair(n_labels: int, shape: tuple[int, int, int], seed: int = 0):  # type: ignore[no-untyped-def]
    """An instance map of ``n_labels`` slabs of ids 1..n (uint16) and a prediction with 5 % of
    its voxels given random ids."""
    rng = np.random.default_rng(seed)
    size = int(np.prod(shape))
    ref = (np.arange(size) * n_labels // size + 1).astype(np.uint16).reshape(shape)
    pred = ref.copy()
    noisy = rng.random(shape) < 0.05
    pred[noisy] = rng.integers(1, n_labels + 1, int(noisy.sum()))
    return pred, ref


@pytest.mark.parametrize("chunk", [4099, 1 << 18])
def test_thousands_of_instances_match_add_at(chunk: int) -> None:
    """4000 labels: counted as cells (this path built 4000 x 4000 tables per chunk: 476 MiB
    and 3.5 s for 128^3), identical to np.add.at on both paths."""
    pred, ref = instance_pair(4000, (40, 36, 30))
    labels, expected = reference_matrix(pred.astype(np.int64), ref.astype(np.int64))
    result = confusion_matrix(pred, ref, chunk_voxels=chunk)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.cell_counts.size == np.count_nonzero(expected)  # only the non-zero cells
    p, r = (torch.from_numpy(a.astype(np.int32)) for a in (pred, ref))
    np.testing.assert_array_equal(confusion_matrix_torch(p, r).matrix, expected)
    k = int(np.flatnonzero(labels == 1234)[0])
    tp = int(expected[k, k])
    fp, fn = int(expected[k].sum()) - tp, int(expected[:, k].sum()) - tp
    assert result.counts(1234) == (tp, fp, fn, pred.size - tp - fp - fn)


def test_more_label_pairs_than_the_limit_are_refused() -> None:
    """Noise over 4096 ids in both volumes pairs them in ~2 million ways: refused, not summed."""
    rng = np.random.default_rng(1)
    pred, ref = (rng.integers(0, 4096, (128, 128, 128)).astype(np.uint16) for _ in range(2))
    with pytest.raises(TooManyLabelsError, match=f"more than {MAX_LABEL_PAIRS} distinct"):
        confusion_matrix(pred, ref)


def test_ignored_reference_label_drops_its_column() -> None:
    pred, ref = instance_pair(600, (20, 20, 20), seed=2)
    ref.reshape(-1)[::7] = 9999  # the ignore label, only in the reference
    result = confusion_matrix(pred, ref).without_reference_label(9999)
    kept = ref != 9999
    labels, expected = reference_matrix(pred[kept], ref[kept])
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.matrix, expected)
    assert result.voxels == int(kept.sum())


@pytest.mark.parametrize("chunk", [4096 * 3 + 2, 1 << 18])
def test_background_blocks_are_counted(chunk: int) -> None:
    # mostly background with a few scattered labels: all-zero blocks skip np.bincount
    rng = np.random.default_rng(5)
    pred = np.zeros((64, 48, 40), np.uint8)
    ref = np.zeros_like(pred)
    pred[10:20, 5:9, 3:30] = rng.integers(0, 15, size=(10, 4, 27))
    ref[12:22, 5:9, 3:30] = rng.integers(0, 15, size=(10, 4, 27))
    pred.reshape(-1)[-3:] = 7  # in the tail after the last whole block
    labels, expected = reference_matrix(pred, ref)
    result = confusion_matrix(pred, ref, chunk_voxels=chunk)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_array_equal(result.matrix, expected)


@pytest.mark.parametrize("dtype", [np.uint16, np.uint32, np.bool_])
def test_unsigned_numpy_volumes_reach_torch(dtype: type) -> None:
    from monai_jdt.scoring.volumes import torch_compatible

    pred, ref = random_pair(2 if dtype is np.bool_ else 300, dtype, seed=9)
    result = confusion_matrix_torch(
        torch.from_numpy(torch_compatible(pred)), torch.from_numpy(torch_compatible(ref))
    )
    np.testing.assert_array_equal(result.matrix, confusion_matrix(pred, ref).matrix)


def test_a_bool_volume_against_large_ids() -> None:
    """A bool chunk on the cells path: its values are ids 0 and 1 (numpy would read a bool
    index array as a mask and fail)."""
    rng = np.random.default_rng(11)
    pred = rng.random((9, 8, 7)) < 0.5
    ref = rng.choice(np.array([0, 1, 300, 70000], np.uint32), size=pred.shape)
    labels, expected = reference_matrix(pred.astype(np.int64), ref.astype(np.int64))
    for p, r in ((pred, ref), (ref, pred)):
        result = confusion_matrix(p, r, chunk_voxels=101)
        np.testing.assert_array_equal(result.labels, labels)
        np.testing.assert_array_equal(result.matrix, expected if p is pred else expected.T)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32, torch.uint64])
def test_unsigned_torch_tensors_are_counted(dtype: torch.dtype) -> None:
    """torch cannot take the minimum of these (``min_all`` not implemented): they were refused
    with NotImplementedError; ids of 2**63 and more are refused as on the numpy path."""
    pred, ref = random_pair(300, np.int64, seed=12)
    tensors = [torch.from_numpy(a).to(dtype) for a in (pred, ref)]
    result = confusion_matrix_torch(*tensors)
    np.testing.assert_array_equal(result.matrix, confusion_matrix(pred, ref).matrix)
    if dtype == torch.uint64:
        big = torch.from_numpy(np.array([2**63, 1], np.uint64))
        with pytest.raises(LabelIdTooLargeError):
            confusion_matrix_torch(big, torch.tensor([1, 1], dtype=torch.uint64))
