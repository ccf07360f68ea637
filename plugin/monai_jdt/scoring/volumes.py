"""Input volumes: what kind they are (label map or probability map) and whether they are valid.

A *label map* holds one non-negative integer label id per voxel (any integer dtype, or a float
dtype whose values are all whole numbers, as some tools write them). A *probability map* holds
floats in [0, 1]: either channel-first ``[C, *spatial]`` (channel ``c`` is label ``c``) or, for a
single label, a float map of the reference's shape whose values are not all whole numbers.

Volumes are numpy arrays or torch tensors; CPU tensors are viewed as numpy arrays (no copy),
CUDA tensors stay on their device.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Literal, TypeAlias

import numpy as np
import torch

from monai_jdt.scoring.errors import (
    InvalidOptionError,
    NegativeLabelError,
    NonFiniteValuesError,
    NonIntegerLabelsError,
    ProbabilityRangeError,
    ShapeMismatchError,
)

__all__ = [
    "Kind",
    "Volume",
    "as_volume",
    "check_probabilities",
    "decide_kind",
    "is_floating",
    "label_map",
    "torch_compatible",
]

Volume: TypeAlias = "np.ndarray | torch.Tensor"
Kind = Literal["labels", "probabilities"]

_CHECK_CHUNK = 1 << 22  # voxels per validation step: bounds the temporaries


def as_volume(value: object, name: str) -> np.ndarray | torch.Tensor:
    """A numpy array or a CUDA tensor for ``value``; refuses non-numeric data."""
    if isinstance(value, torch.Tensor):
        value = value.detach()
        if value.device.type != "cpu":
            return value
        value = value.numpy() if value.dtype != torch.bfloat16 else value.float().numpy()
    array = np.asarray(value)
    if array.dtype == np.float16:
        array = array.astype(np.float32)
    if not (array.dtype == np.bool_ or np.issubdtype(array.dtype, np.number)) or np.issubdtype(
        array.dtype, np.complexfloating
    ):
        raise InvalidOptionError(
            f"{name}: expected a numeric array (integer labels or float probabilities), "
            f"got dtype {array.dtype}."
        )
    if array.ndim == 0 or array.size == 0:
        raise ShapeMismatchError(f"{name}: expected a non-empty volume, got shape {array.shape}.")
    return array


def is_floating(volume: np.ndarray | torch.Tensor) -> bool:
    """True for float dtypes."""
    if isinstance(volume, torch.Tensor):
        return volume.is_floating_point()
    return bool(np.issubdtype(volume.dtype, np.floating))


def _flat_chunks(volume: np.ndarray | torch.Tensor) -> Iterator[np.ndarray | torch.Tensor]:
    flat = volume.reshape(-1)
    for start in range(0, flat.shape[0], _CHECK_CHUNK):
        yield flat[start : start + _CHECK_CHUNK]


def _float_stats(volume: np.ndarray | torch.Tensor, name: str) -> tuple[float, float, bool]:
    """``(min, max, all whole numbers)`` of a float volume; raises on NaN / infinity."""
    low, high, whole = np.inf, -np.inf, True
    for chunk in _flat_chunks(volume):
        if isinstance(chunk, torch.Tensor):
            finite = bool(torch.isfinite(chunk).all())
            c_low, c_high = (float(v) for v in torch.aminmax(chunk)) if finite else (0.0, 0.0)
            c_whole = bool((chunk == torch.round(chunk)).all()) if whole and finite else False
        else:
            c_low, c_high = float(chunk.min()), float(chunk.max())
            finite = bool(np.isfinite(c_low) and np.isfinite(c_high))
            c_whole = bool((chunk == np.round(chunk)).all()) if whole and finite else False
        if not finite:
            raise NonFiniteValuesError(
                f"the {name} volume holds NaN or infinite values; scores would be undefined."
            )
        low, high, whole = min(low, c_low), max(high, c_high), whole and c_whole
    return low, high, whole


def decide_kind(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    kind: Literal["auto", "labels", "probabilities"],
) -> Kind:
    """Label map or probability map, from the option, the dtypes, the shapes and the values.

    With ``kind="auto"``: an integer prediction is a label map; a float prediction with one
    more axis than the reference is a channel-first probability map; a float prediction of the
    reference's shape is a label map when all its values (and a float reference's) are whole
    numbers, else a single-label probability map.
    """
    if kind != "auto":
        return kind
    if not is_floating(prediction):
        return "labels"
    if prediction.ndim == reference.ndim + 1:
        return "probabilities"
    _, _, whole = _float_stats(prediction, "prediction")
    if whole and is_floating(reference):
        _, _, whole = _float_stats(reference, "reference")
    return "labels" if whole else "probabilities"


def label_map(volume: np.ndarray | torch.Tensor, name: str) -> np.ndarray | torch.Tensor:
    """An integer label map for ``volume``: floats must be finite whole numbers (cast to the
    smallest fitting unsigned dtype); integers pass unchanged (negatives are refused later,
    while counting)."""
    if not is_floating(volume):
        return volume
    low, high, whole = _float_stats(volume, name)
    if not whole:
        raise NonIntegerLabelsError(
            f"the {name} label volume holds values that are not whole numbers (range "
            f"{low:g}..{high:g}); label maps hold integer ids. For probabilities give floats in "
            "[0, 1] (channel-first for several labels)."
        )
    if low < 0:
        raise NegativeLabelError(
            f"the {name} label volume holds negative values (minimum {low:g}); label ids must "
            "be >= 0."
        )
    dtype = np.uint8 if high < 256 else np.uint16 if high < 65536 else np.int64
    if isinstance(volume, torch.Tensor):
        return volume.to({np.uint8: torch.uint8, np.uint16: torch.int32}.get(dtype, torch.int64))
    return volume.astype(dtype)


def check_probabilities(volume: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse NaN / infinity and values outside [0, 1] (1e-6 of rounding is tolerated)."""
    if not is_floating(volume):
        raise ProbabilityRangeError(
            f"the {name} probability volume must hold floats in [0, 1], got dtype {volume.dtype}."
        )
    low, high, _ = _float_stats(volume, name)
    if low < -1e-6 or high > 1 + 1e-6:
        raise ProbabilityRangeError(
            f"the {name} probability volume holds values in {low:g}..{high:g}, outside [0, 1]; "
            "apply softmax/sigmoid first, or give an integer label map."
        )


def torch_compatible(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype every torch op (CUDA included) handles: unsigned 16/32/64-bit
    integers become int32/int64 (label ids are below 2**63), booleans uint8."""
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype == np.uint16:
        return array.astype(np.int32)
    if array.dtype in (np.uint32, np.uint64):
        return array.astype(np.int64)
    return array
