"""Input volumes: what kind they are (label map or probability map) and whether they are valid.

A *label map* holds one non-negative integer label id below 2**63 per voxel (any integer
dtype, or a float dtype whose values are all whole numbers, as some tools write them). A
*probability map* holds floats in [0, 1]: either channel-first ``[C, *spatial]`` (channel
``c`` is label ``c``) or, for a single label, a float map of the reference's shape whose
values are not all whole numbers.

*Whole number* has one definition, used for the kind decision and the label map alike (so
arrays, ``.nii`` and ``.nii.gz`` files, scaled or not, read the same): a float ``v`` is the
label ``k = rint(v)`` when ``|v - k| <= WHOLE_TOLERANCE * max(1, |k|)``. Rescaled files need
it: int16 3, 6, 9 with ``scl_slope = 1/3`` (stored in float32) are 1.00000003, 2.00000006, ...
in float64 (nibabel's values), meant as labels 1, 2, 3.

Volumes are numpy arrays or torch tensors; CPU tensors are viewed as numpy arrays (no copy),
CUDA tensors stay on their device. torch is only imported by callers that hold tensors: a
value cannot be a tensor unless torch is already in ``sys.modules``.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import TYPE_CHECKING, Literal, TypeAlias

import numpy as np

from monai_jdt.scoring.errors import (
    InvalidOptionError,
    LabelIdTooLargeError,
    NegativeLabelError,
    NonFiniteValuesError,
    NonIntegerLabelsError,
    ProbabilityRangeError,
    ShapeMismatchError,
)
from monai_jdt.scoring.options import MAX_LABEL_ID

if TYPE_CHECKING:
    import torch
    from typing_extensions import TypeIs

__all__ = [
    "MAX_LABEL_ID",
    "WHOLE_TOLERANCE",
    "Kind",
    "Volume",
    "as_volume",
    "check_label_ids",
    "check_max_label",
    "check_probabilities",
    "decide_kind",
    "float_stats",
    "is_channel_first",
    "is_floating",
    "is_tensor",
    "label_map",
    "torch_compatible",
]

Volume: TypeAlias = "np.ndarray | torch.Tensor"
Kind = Literal["labels", "probabilities"]

#: relative distance to the nearest integer below which a float counts as that integer label
WHOLE_TOLERANCE = 1e-6
#: how far outside [0, 1] a probability may lie as rounding (clipped before counting)
_RANGE_TOLERANCE = 1e-6
_CHECK_CHUNK = 1 << 22  # voxels per validation step: bounds the temporaries
_TOLERANCE_SLICE = 1 << 18  # voxels per float64 step of the whole-number tolerance test


def is_tensor(value: object) -> TypeIs[torch.Tensor]:
    """True for a torch tensor (without importing torch: no tensor exists before it is). While
    another thread is still importing torch, ``sys.modules`` holds it partly initialised,
    without ``Tensor`` yet: no tensor exists then either."""
    tensor_type = getattr(sys.modules.get("torch"), "Tensor", None)
    return tensor_type is not None and isinstance(value, tensor_type)


def as_volume(value: object, name: str) -> np.ndarray | torch.Tensor:
    """A numpy array or a CUDA tensor for ``value``; refuses non-numeric data.

    Raises:
        InvalidOptionError: not numeric (or complex).
        ShapeMismatchError: a scalar or an empty volume.
    """
    if is_tensor(value):
        import torch

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
    if is_tensor(volume):
        return volume.is_floating_point()
    return bool(np.issubdtype(volume.dtype, np.floating))


def _flat_chunks(volume: np.ndarray | torch.Tensor) -> Iterator[np.ndarray | torch.Tensor]:
    flat = volume.reshape(-1)
    for start in range(0, flat.shape[0], _CHECK_CHUNK):
        yield flat[start : start + _CHECK_CHUNK]


def _close_to_whole(part: np.ndarray | torch.Tensor) -> bool:
    """Every value of ``part`` is whole within ``WHOLE_TOLERANCE`` (evaluated in float64)."""
    if is_tensor(part):
        wide = part.double()
        rounded = wide.round()
        return bool(((wide - rounded).abs() <= WHOLE_TOLERANCE * rounded.abs().clamp_min(1)).all())
    values = np.asarray(part, dtype=np.float64)
    nearest = np.rint(values)
    return bool(
        (np.abs(values - nearest) <= WHOLE_TOLERANCE * np.maximum(np.abs(nearest), 1)).all()
    )


def _near_whole(chunk: np.ndarray | torch.Tensor) -> tuple[bool, bool]:
    """``(every value is whole within WHOLE_TOLERANCE, every value is exactly whole)`` of a
    finite float chunk. The tolerance is tested over slices of ``_TOLERANCE_SLICE`` voxels
    (small float64 temporaries; a probability map fails on its first slice)."""
    exact = chunk == (chunk.round() if is_tensor(chunk) else np.rint(chunk))
    if bool(exact.all()):
        return True, True
    whole = all(
        _close_to_whole(chunk[start : start + _TOLERANCE_SLICE])
        for start in range(0, chunk.shape[0], _TOLERANCE_SLICE)
    )
    return whole, False


def float_stats(volume: np.ndarray | torch.Tensor, name: str) -> tuple[float, float, bool, bool]:
    """``(min, max, all whole numbers, all exactly whole)`` of a float volume (whole within
    ``WHOLE_TOLERANCE``).

    Raises:
        NonFiniteValuesError: NaN or infinity.
    """
    low, high, whole, exact = np.inf, -np.inf, True, True
    for chunk in _flat_chunks(volume):
        if is_tensor(chunk):
            import torch

            finite = bool(torch.isfinite(chunk).all())
            c_low, c_high = (float(v) for v in torch.aminmax(chunk)) if finite else (0.0, 0.0)
        else:
            c_low, c_high = float(chunk.min()), float(chunk.max())
            finite = bool(np.isfinite(c_low) and np.isfinite(c_high))
        if not finite:
            raise NonFiniteValuesError(
                f"the {name} volume holds NaN or infinite values; scores would be undefined."
            )
        if whole:
            c_whole, c_exact = _near_whole(chunk)
            whole, exact = c_whole, exact and c_exact
        low, high = min(low, c_low), max(high, c_high)
    return low, high, whole, exact and whole


def is_channel_first(
    prediction: np.ndarray | torch.Tensor, reference: np.ndarray | torch.Tensor
) -> bool:
    """Whether a probability map is channel-first ``[C, *spatial]``: one axis more than a
    label-map reference, or a 4-D pair with a float reference (a soft or one-hot reference
    ``[C, X, Y, Z]``; ``decide_kind`` reads such a pair as probabilities when the prediction
    lies in [0, 1])."""
    return prediction.ndim == reference.ndim + 1 or (
        prediction.ndim == reference.ndim == 4 and is_floating(reference)
    )


def decide_kind(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    kind: Literal["auto", "labels", "probabilities"],
) -> Kind:
    """Label map or probability map, from the option, the dtypes, the shapes and the values.

    With ``kind="auto"``: an integer prediction is a label map; a float prediction with one
    more axis than the reference is a channel-first probability map, and so is a 4-D float
    pair whose prediction lies in [0, 1] (e.g. a one-hot pair of 0/1; a 4-D float label map
    with ids above 1 stays a label map); another float prediction of the reference's shape is
    a label map when all its values (and a float reference's) are whole numbers (within
    ``WHOLE_TOLERANCE``), else a single-label probability map.

    Raises:
        NonFiniteValuesError: a float volume examined holds NaN or infinity.
    """
    if kind != "auto":
        return kind
    if not is_floating(prediction):
        return "labels"
    if prediction.ndim == reference.ndim + 1:
        return "probabilities"
    low, high, whole, _ = float_stats(prediction, "prediction")
    in_unit_range = low >= -_RANGE_TOLERANCE and high <= 1 + _RANGE_TOLERANCE
    if is_channel_first(prediction, reference) and in_unit_range:
        return "probabilities"
    if whole and is_floating(reference):
        whole = float_stats(reference, "reference")[2]
    return "labels" if whole else "probabilities"


def check_max_label(high: int, name: str) -> None:
    """Refuse a largest label id ``high`` above ``MAX_LABEL_ID``.

    Raises:
        LabelIdTooLargeError: ``high >= 2**63``.
    """
    if high > MAX_LABEL_ID:
        raise LabelIdTooLargeError(
            f"the {name} label volume holds the id {high}; label ids must be below 2**63."
        )


def check_label_ids(volume: np.ndarray | torch.Tensor, name: str) -> None:
    """Refuse unsigned 64-bit label ids above ``MAX_LABEL_ID`` (the only integer dtype that
    holds them); other integer dtypes pass unchecked (negatives are refused while counting).

    Raises:
        LabelIdTooLargeError: a uint64 id >= 2**63.
    """
    if isinstance(volume, np.ndarray) and volume.dtype == np.uint64:
        check_max_label(int(volume.max()), name)


def label_map(
    volume: np.ndarray | torch.Tensor,
    name: str,
    stats: tuple[float, float, bool, bool] | None = None,
) -> np.ndarray | torch.Tensor:
    """An integer label map for ``volume``: floats must be finite whole numbers (within
    ``WHOLE_TOLERANCE``; rounded to the nearest integer and cast to the smallest fitting
    unsigned dtype); integers pass unchanged after ``check_label_ids``. ``stats``: the
    volume's ``float_stats`` when the caller has them (not taken again).

    Raises:
        NonFiniteValuesError, NonIntegerLabelsError, NegativeLabelError, LabelIdTooLargeError:
            for the values that name them.
    """
    if not is_floating(volume):
        check_label_ids(volume, name)
        return volume
    low, high, whole, exact = float_stats(volume, name) if stats is None else stats
    if not whole:
        raise NonIntegerLabelsError(
            f"the {name} label volume holds values that are not whole numbers (range "
            f"{low:g}..{high:g}); label maps hold integer ids. For probabilities give floats in "
            "[0, 1] (channel-first for several labels)."
        )
    low, high = round(low), round(high)
    if low < 0:
        raise NegativeLabelError(
            f"the {name} label volume holds negative values (minimum {low}); label ids must "
            "be >= 0."
        )
    check_max_label(high, name)
    dtype = np.uint8 if high < 256 else np.uint16 if high < 65536 else np.int64
    if is_tensor(volume):
        import torch

        rounded = volume if exact else volume.round()
        return rounded.to({np.uint8: torch.uint8, np.uint16: torch.int32}.get(dtype, torch.int64))
    return (volume if exact else np.rint(volume)).astype(dtype)


def check_probabilities(
    volume: np.ndarray | torch.Tensor,
    name: str,
    stats: tuple[float, float, bool, bool] | None = None,
) -> None:
    """Refuse NaN / infinity and values outside [0, 1] (``_RANGE_TOLERANCE`` of rounding is
    tolerated). ``stats``: the volume's ``float_stats`` when the caller has them.

    Raises:
        ProbabilityRangeError: not floats, or values outside [0, 1].
        NonFiniteValuesError: NaN or infinity.
    """
    if not is_floating(volume):
        raise ProbabilityRangeError(
            f"the {name} probability volume must hold floats in [0, 1], got dtype {volume.dtype}."
        )
    low, high = (float_stats(volume, name) if stats is None else stats)[:2]
    if low < -_RANGE_TOLERANCE or high > 1 + _RANGE_TOLERANCE:
        raise ProbabilityRangeError(
            f"the {name} probability volume holds values in {low:g}..{high:g}, outside [0, 1]; "
            "apply softmax/sigmoid first, or give an integer label map."
        )


def torch_compatible(array: np.ndarray) -> np.ndarray:
    """``array`` in a dtype every torch op (CUDA included) handles: unsigned 16/32/64-bit
    integers become int32/int64 (label ids are below 2**63, see ``check_label_ids``),
    booleans uint8."""
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    if array.dtype == np.uint16:
        return array.astype(np.int32)
    if array.dtype in (np.uint32, np.uint64):
        return array.astype(np.int64)
    return array
