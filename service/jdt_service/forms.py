"""The scoring options as multipart form fields: their OpenAPI schema and their parsing.

Each option of :class:`monai_jdt.scoring.ScoringOptions` that a client may choose has one
text field here; the device and the voxel limit come from the server's settings instead.
Values are converted from text (booleans, numbers, comma lists); ranges and names are checked
by ``ScoringOptions`` itself, so the rules live in one place.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

from jdt_service.uploads import FILE_FIELDS
from monai_jdt.scoring import ScoringOptions, parse_labels
from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.options import DEFAULT_METRICS, INPUT_KINDS, METRICS

__all__ = ["OPTION_FIELDS", "form_schema", "options_from_form"]

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})
MAX_CASE_ID = 256


def _boolean(name: str, text: str) -> bool:
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise InvalidOptionError(f"form field {name!r}: expected true or false, got {text!r}.")


def _number(name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise InvalidOptionError(f"form field {name!r}: expected a number, got {text!r}.") from None
    if not math.isfinite(value):
        raise InvalidOptionError(f"form field {name!r}: expected a finite number, got {text!r}.")
    return value


def _metrics(name: str, text: str) -> tuple[str, ...]:
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _labels(name: str, text: str) -> dict[int, str | None]:
    return parse_labels(text)


def _text(name: str, text: str) -> str:
    return text.strip()


_BOOL = {"type": "boolean", "default": False}
_NUM = {"type": "number", "minimum": 0}

#: form field -> (OpenAPI schema, converter from text). ``case_id`` is not a scoring option.
OPTION_FIELDS: dict[str, tuple[dict[str, Any], Callable[[str, str], Any]]] = {
    "labels": (
        {
            "type": "string",
            "description": "Labels to score, with optional names: '1=liver,2=spleen' or '1,2'. "
            "Default: every label present in either volume.",
            "example": "1=liver,2=spleen",
        },
        _labels,
    ),
    "include_background": ({**_BOOL, "description": "Also score label 0."}, _boolean),
    "empty": (
        {
            "type": "string",
            "enum": ["nan", "one"],
            "default": "nan",
            "description": "Score of a label absent from both volumes: nan (null in the "
            "report, skipped by means) or one (1.0).",
        },
        _text,
    ),
    "metrics": (
        {
            "type": "string",
            "default": ",".join(DEFAULT_METRICS),
            "description": f"Comma-separated subset of {', '.join(METRICS)}.",
        },
        _metrics,
    ),
    "tversky_alpha": ({**_NUM, "default": 0.5, "description": "Tversky weight of FP."}, _number),
    "tversky_beta": ({**_NUM, "default": 0.5, "description": "Tversky weight of FN."}, _number),
    "affine_tol": (
        {**_NUM, "default": 1e-4, "description": "Largest affine difference allowed (mm)."},
        _number,
    ),
    "ignore_affine": ({**_BOOL, "description": "Skip the affine comparison."}, _boolean),
    "kind": (
        {
            "type": "string",
            "enum": list(INPUT_KINDS),
            "default": "auto",
            "description": "How the volumes are read: auto (by dtype and values), labels or "
            "probabilities.",
        },
        _text,
    ),
    "case_id": (
        {
            "type": "string",
            "maxLength": MAX_CASE_ID,
            "description": "An identifier echoed in the report.",
        },
        _text,
    ),
}


def form_schema() -> dict[str, Any]:
    """The ``multipart/form-data`` request body of ``POST /v1/scores`` for OpenAPI."""
    files = {
        name: {
            "type": "string",
            "format": "binary",
            "description": f"The {name} volume: NIfTI-1/2, .nii or .nii.gz; a label map or a "
            "probability map.",
        }
        for name in FILE_FIELDS
    }
    properties = {**files, **{name: spec for name, (spec, _) in OPTION_FIELDS.items()}}
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": list(FILE_FIELDS),
                    "additionalProperties": False,
                },
                "encoding": {
                    name: {"contentType": "application/octet-stream"} for name in FILE_FIELDS
                },
            }
        },
    }


def options_from_form(
    fields: Mapping[str, str], *, device: str, max_voxels: int
) -> tuple[ScoringOptions, str | None]:
    """The scoring options and case id from the text fields (``InvalidOptionError`` if bad).

    Empty fields count as not given.
    """
    values: dict[str, Any] = {}
    for name, text in fields.items():
        if not text.strip():
            continue
        _, convert = OPTION_FIELDS[name]
        values[name] = convert(name, text)
    case_id = values.pop("case_id", None)
    if case_id is not None and len(case_id) > MAX_CASE_ID:
        raise InvalidOptionError(f"form field 'case_id' is longer than {MAX_CASE_ID} characters.")
    return ScoringOptions(**values, device=device, max_voxels=max_voxels), case_id
