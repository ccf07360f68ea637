"""Checking and normalising the constructor arguments the losses share.

Each function takes the user's value and returns the canonical one, or raises a ``ValueError`` /
``TypeError`` that names the argument, what was expected and what arrived.
"""

from __future__ import annotations

import difflib
import inspect
import math
from collections.abc import Collection, Mapping, Sequence
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
    "check_keywords",
    "check_number",
    "resolve_aggregation",
    "resolve_weight",
]

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "mean", "sum")
ClassesArg = Literal["all", "present"]
AggregationArg = Aggregation | Mapping[str, float]
WeightArg = Sequence[float] | float | int | torch.Tensor | None


def _keywords(target: type) -> set[str]:
    """The keyword arguments ``target(...)`` takes: those of its ``__init__``, and of the
    ``__init__`` above it in the MRO for as long as each passes ``**options`` on."""
    names: set[str] = set()
    for klass in target.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return names - {"self"}


def check_keywords(
    owner: str, target: type, given: Mapping[str, object], fixed: Collection[str] = ()
) -> None:
    """The ``**options`` that ``owner`` passes on to ``target``: each must be a keyword of
    ``target`` (or of the classes it passes its own on to) that ``owner`` does not set itself
    (``fixed``). Python's own error would name ``target.__init__``, a class the user may not
    have built, and would not say what was meant.

    Raises:
        TypeError: naming ``owner`` and the keyword, with the closest known spelling.
    """
    known = _keywords(target) - set(fixed)
    for name in given:
        if name in fixed:
            raise TypeError(f"{owner} sets {name} itself; it does not take it as an argument.")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise TypeError(f"{owner} got an unexpected keyword argument {name!r}{hint}")


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
