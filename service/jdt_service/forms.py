"""The scoring options as multipart form fields: their OpenAPI schema and their parsing.

Every field of :class:`monai_jdt.scoring.ScoringOptions` exposed to forms (``Exposure.form``)
is one text field, named as the option, described by the option's own help text, default and
bounds; the device and the voxel limit come from the server's settings instead. Parsing and
validation are ``ScoringOptions.from_text``: the rules live in the model only. ``case_id`` is
the one field that is not a scoring option.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jdt_service.uploads import FILE_FIELDS
from monai_jdt.scoring import ScoringOptions
from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.options import exposure

__all__ = ["MAX_CASE_ID", "OPTION_FIELDS", "form_schema", "multipart_body", "options_from_form"]

#: the longest case id: of a score request, and of an archive member (the database's columns)
MAX_CASE_ID = 256
_CASE_ID = {
    "type": "string",
    "maxLength": MAX_CASE_ID,
    "description": "An identifier echoed in the report (default: null).",
}


def _text_schema(name: str, spec: dict[str, Any]) -> dict[str, Any]:
    """The form field's schema from the option's JSON Schema: scalars keep their type and
    bounds; lists and mappings are sent as text in their documented syntax."""
    kinds = [s for s in spec.get("anyOf", [spec]) if s.get("type") != "null"]
    scalar = kinds[0] if len(kinds) == 1 else {}
    field: dict[str, Any] = {"type": "string"}
    if scalar.get("type") in ("boolean", "number", "integer", "string"):
        field = {k: v for k, v in scalar.items() if k not in ("title",)}
    if "enum" in spec:
        field["enum"] = spec["enum"]
    default = spec.get("default")
    if isinstance(default, list):
        default = ",".join(map(str, default))
    if default is not None:
        field["default"] = default
    field["description"] = spec.get("description", "")
    info = ScoringOptions.model_fields[name]
    if exposure(info).example is not None:
        field["example"] = exposure(info).example
    return field


def _option_fields() -> dict[str, dict[str, Any]]:
    properties = ScoringOptions.model_json_schema()["properties"]
    fields = {
        name: _text_schema(name, properties[name])
        for name, info in ScoringOptions.model_fields.items()
        if exposure(info).form
    }
    return {**fields, "case_id": _CASE_ID}


#: form field -> its OpenAPI schema: the options exposed to forms, then ``case_id``
OPTION_FIELDS: dict[str, dict[str, Any]] = _option_fields()


def multipart_body(
    files: Mapping[str, str], fields: Mapping[str, Mapping[str, Any]], required: list[str]
) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a multipart form: ``files`` (name -> description) sent
    as binary parts, text ``fields`` (name -> schema), the ``required`` names."""
    properties: dict[str, Any] = {
        name: {"type": "string", "format": "binary", "description": text}
        for name, text in files.items()
    }
    properties.update({name: dict(spec) for name, spec in fields.items()})
    return {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": properties,
                    "required": required,
                    "additionalProperties": False,
                },
                "encoding": {name: {"contentType": "application/octet-stream"} for name in files},
            }
        },
    }


def form_schema() -> dict[str, Any]:
    """The ``multipart/form-data`` request body of ``POST /v1/scores`` for OpenAPI."""
    files = {
        name: f"The {name} volume: NIfTI-1/2, .nii or .nii.gz (or NRRD / single-file MetaImage "
        "with the formats extra); a label map or a probability map."
        for name in FILE_FIELDS
    }
    return multipart_body(files, OPTION_FIELDS, list(FILE_FIELDS))


def options_from_form(
    fields: Mapping[str, str], *, device: str, max_voxels: int
) -> tuple[ScoringOptions, str | None]:
    """The scoring options and case id (None when not given) from the text fields.

    Empty fields count as not given.

    Raises:
        InvalidOptionError: a bad value (``.option`` names the field) or a case id too long.
    """
    values = {name: text.strip() for name, text in fields.items() if text.strip()}
    case_id = values.pop("case_id", None)
    if case_id is not None and len(case_id) > MAX_CASE_ID:
        raise InvalidOptionError(
            f"form field 'case_id' is longer than {MAX_CASE_ID} characters.", option="case_id"
        )
    options = ScoringOptions.from_text({**values, "device": device, "max_voxels": max_voxels})
    return options, case_id
