"""Checking and normalising the constructor arguments the losses share.

Each function takes the user's value and returns the canonical one, or raises a ``ValueError`` /
``TypeError`` that names the argument, what was expected and what arrived.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal, cast

import torch

from monai_jdt.aggregation import AGGREGATIONS, Aggregation

__all__ = [
    "AggregationArg",
    "ClassesArg",
    "Reduction",
    "WeightArg",
    "check_activation",
    "check_bool",
    "check_choice",
    "check_ignore_index",
    "check_number",
    "resolve_aggregation",
    "resolve_weight",
]

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "mean", "sum")
ClassesArg = Literal["all", "present"]
AggregationArg = Aggregation | Mapping[str, float]
WeightArg = Sequence[float] | float | int | torch.Tensor | None


def check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}.")
    return value


def check_number(
    name: str,
    value: object,
    minimum: float | None = None,
    strict: bool = False,
    maximum: float | None = None,
) -> float:
    """A finite real number, ``>= minimum`` (``> minimum`` when ``strict``), ``<= maximum``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {value!r}.")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{name} must be finite, got {value!r}.")
    if minimum is not None and (number <= minimum if strict else number < minimum):
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be {bound}, got {value!r}.")
    if maximum is not None and number > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}.")
    return number


def check_choice(name: str, value: object, choices: Sequence[object]) -> object:
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}.")
    return value


def check_ignore_index(value: object) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"ignore_index must be an int or None, got {type(value).__name__}.")
    return value


def check_activation(sigmoid: object, softmax: object, other_act: object) -> None:
    """MONAI's rules: ``other_act`` callable (TypeError), at most one activation (ValueError)."""
    check_bool("sigmoid", sigmoid)
    check_bool("softmax", softmax)
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be None or callable but is {type(other_act).__name__}.")
    if int(bool(sigmoid)) + int(bool(softmax)) + int(other_act is not None) > 1:
        raise ValueError(
            "Incompatible values: more than 1 of "
            "[sigmoid=True, softmax=True, other_act is not None]."
        )


def resolve_aggregation(
    aggregation: AggregationArg | None,
    batch: bool | None,
    default: Aggregation,
) -> dict[Aggregation, float]:
    """The aggregation levels and their weights, e.g. ``{"image": 0.5, "class": 0.5}``.

    ``batch`` is MONAI's spelling: True means ``"batch"``, False ``"image"``. Giving both
    ``aggregation`` and ``batch`` is accepted only when they agree.
    """
    if batch is not None:
        check_bool("batch", batch)
        from_batch: Aggregation = "batch" if batch else "image"
        if aggregation is not None and aggregation != from_batch:
            raise ValueError(
                f"batch={batch} means aggregation={from_batch!r} but aggregation={aggregation!r} "
                "was also given; pass only one of them."
            )
        return {from_batch: 1.0}
    if aggregation is None:
        return {default: 1.0}
    if isinstance(aggregation, str):
        check_choice("aggregation", aggregation, AGGREGATIONS)
        return {cast(Aggregation, aggregation): 1.0}
    if not isinstance(aggregation, Mapping) or not aggregation:
        raise TypeError(
            f"aggregation must be one of {AGGREGATIONS} or a non-empty mapping of them to "
            f"weights, got {aggregation!r}."
        )
    levels: dict[Aggregation, float] = {}
    for level, weight in aggregation.items():
        check_choice("aggregation key", level, AGGREGATIONS)
        levels[cast(Aggregation, level)] = check_number(
            f"aggregation[{level!r}]", weight, minimum=0.0
        )
    if sum(levels.values()) <= 0:
        raise ValueError(f"aggregation weights must not all be 0, got {dict(aggregation)!r}.")
    return {level: w for level, w in levels.items() if w > 0}


def resolve_weight(weight: WeightArg) -> torch.Tensor | None:
    """Per-class multipliers as a float tensor (0-dim for one value for all classes): a float
    tensor keeps its dtype (a float64 weight stays exact for float64 inputs), anything else
    is float32, as MONAI's ``torch.as_tensor`` makes it."""
    if weight is None:
        return None
    if isinstance(weight, bool):
        raise TypeError("weight must be a number, a sequence of numbers or a tensor, got a bool.")
    dtype = torch.float32
    if isinstance(weight, torch.Tensor) and weight.is_floating_point():
        dtype = weight.dtype
    try:
        tensor = torch.as_tensor(weight, dtype=dtype)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"weight must be a number, a sequence of numbers or a tensor, got {weight!r}."
        ) from err
    if tensor.ndim > 1:
        raise ValueError(f"weight must be a number or 1-D, got shape {tuple(tensor.shape)}.")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"weight must be finite, got {tensor.tolist()}.")
    if (tensor < 0).any():
        raise ValueError("the value/values of the `weight` should be no less than 0.")
    return tensor
