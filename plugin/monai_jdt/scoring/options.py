"""Scoring options, defined once: what to score, under which convention, and where.

``ScoringOptions`` is a frozen pydantic model. Each field's type, default, bounds and help text
(its ``description``) are the one definition from which everything else derives:

* the validation (on construction; any failure is an ``InvalidOptionError`` naming the option);
* the ``monai-jdt score`` / ``score-dir`` flags (``monai_jdt.cli``: ``--snake-case`` of the
  field name, help, default, choices);
* the service's multipart form fields, their OpenAPI description and their parsing from text
  (``jdt_service.forms``);
* the ``options`` echoed in every report (``monai_jdt.scoring.report``).

Where a field appears is said by an :class:`Exposure` in its ``Annotated`` metadata (default:
everywhere). Adding an option is one field here plus its line in docs/scoring.md.

Text input (command line, form fields) is validated with :meth:`ScoringOptions.from_text`, which
converts numbers and booleans from text; Python callers get strict types (``True`` is not a
number, ``"0.5"`` is not a float). Numbers in text are plain decimals (:func:`text_number`:
``2``, ``-1.5``, ``1e-4``), not everything Python's ``int`` / ``float`` take (``1_0``, ``inf``,
``٣``); label ids are at most :data:`MAX_LABEL_ID`, as in volumes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from types import NoneType, UnionType
from typing import TYPE_CHECKING, Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.fields import FieldInfo
from typing_extensions import Self

from monai_jdt.scoring.errors import InvalidOptionError

if TYPE_CHECKING:
    from collections.abc import Callable

    import torch

__all__ = [
    "BOUNDARY_METRICS",
    "DEFAULT_METRICS",
    "DEFAULT_OPTIONS",
    "INPUT_KINDS",
    "LABEL_WARNING_THRESHOLD",
    "MAX_LABEL_ID",
    "METRICS",
    "Exposure",
    "OptionsModel",
    "ScoringOptions",
    "decimal_float",
    "device_type",
    "exposure",
    "invalid_option",
    "parse_labels",
    "resolve_device",
    "text_number",
]

#: every per-label ratio the scoring core knows, in report order
METRICS: tuple[str, ...] = ("dice", "jaccard", "precision", "recall", "tversky")
DEFAULT_METRICS: tuple[str, ...] = ("dice", "jaccard", "precision", "recall")
#: the boundary metrics (computed in monai_jdt.scoring.boundary), in report order: mm or [0, 1]
BOUNDARY_METRICS: tuple[str, ...] = ("hd", "hd95", "assd", "masd", "nsd", "boundary_iou")
#: how a volume is read: decided from its dtype and values, or forced
INPUT_KINDS: tuple[str, ...] = ("auto", "labels", "probabilities")
#: a label map with more distinct labels than this gets a warning in its report (an intensity
#: image or an instance map passed as a label map?); ``max_labels`` refuses it instead
LABEL_WARNING_THRESHOLD = 100
#: the largest label id, in a volume (``label_id_too_large``) and in an option (``labels``,
#: ``ignore_label``, ``regions``): ids are int64 in the confusion matrix, and larger JSON
#: integers are not portable
MAX_LABEL_ID = 2**63 - 1
#: more distinct labels than this in one case is refused (the confusion matrix would be L x L);
#: ``max_labels`` may only lower it
MAX_DISTINCT_LABELS = 4096
_MAX_ID_DIGITS = len(str(MAX_LABEL_ID))  # 19
#: numbers in text (flags, form fields): ASCII decimal digits, an optional sign, fraction and
#: exponent; no ``_`` separators, ``inf``/``nan``, hex or non-ASCII digits
_DECIMAL_INT = re.compile(r"[+-]?[0-9]+", re.ASCII)
_DECIMAL_FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?", re.ASCII)

#: a label name: letters, digits, ``_ - .`` and spaces (no ``,`` ``;`` ``=`` of the list syntax)
_LABEL_NAME = re.compile(r"^[^\W][\w.\- ]*$")


@dataclass(frozen=True)
class Exposure:
    """Where an option appears besides the Python API.

    Attributes:
        cli: a flag of ``monai-jdt score`` / ``score-dir``.
        form: a form field of ``POST /v1/scores`` (options the server decides, such as the
            device and the voxel limit, come from its settings instead).
        reported: echoed in the report's ``options`` (the options that change a score; input
            checks and limits are not).
        metavar: the flag's placeholder in ``--help``.
        example: an example value for the form field's OpenAPI description.
    """

    cli: bool = True
    form: bool = True
    reported: bool = True
    metavar: str | None = None
    example: str | None = None


def exposure(field: FieldInfo) -> Exposure:
    """The :class:`Exposure` of a model field (the default one when it has none)."""
    for item in field.metadata:
        if isinstance(item, Exposure):
            return item
    return Exposure()


def _decimal_int(text: str) -> int:
    value = text.strip()
    if not _DECIMAL_INT.fullmatch(value):
        raise ValueError(f"{text!r} is not a whole number in plain decimal digits")
    try:
        return int(value)
    except ValueError:  # past sys.get_int_max_str_digits() (4300) digits
        raise ValueError(f"a number of {len(value)} digits is too large") from None


def decimal_float(text: str) -> float:
    """A number in plain decimal syntax (``2``, ``-1.5``, ``1e-4``); ``ValueError`` for other
    text, such as ``1_0`` or ``inf`` that Python's ``float`` takes."""
    value = text.strip()
    if not _DECIMAL_FLOAT.fullmatch(value):
        raise ValueError(f"{text!r} is not a plain decimal number (such as 2, 0.5 or 1e-4)")
    return float(value)


def text_number(annotation: Any) -> Callable[[str], int | float] | None:
    """The parser of a numeric field's text (``int`` or ``float``, optional or not), else
    None. It takes plain decimal syntax only, with surrounding spaces, and raises
    ``ValueError`` otherwise (Python's ``int`` and ``float`` also take ``1_0``, non-ASCII
    digits and, for floats, ``inf`` and ``nan``)."""
    union = get_origin(annotation) in (Union, UnionType)
    kinds = [
        kind for kind in (get_args(annotation) if union else (annotation,)) if kind is not NoneType
    ]
    if kinds == [int]:
        return _decimal_int
    if kinds == [float]:
        return decimal_float
    return None


def _label_id(key: str, spec: str) -> int:
    """The id of a ``labels`` item (``key`` is ASCII digits), at most ``MAX_LABEL_ID``."""
    # the length first: int() of thousands of digits is slow, and past 4300 an error
    if len(key.lstrip("0")) > _MAX_ID_DIGITS or int(key) > MAX_LABEL_ID:
        raise InvalidOptionError(
            f"labels: label id {key} is too large; label ids must be below 2**63 (in {spec!r}).",
            option="labels",
        )
    return int(key)


def parse_labels(spec: str) -> dict[int, str | None]:
    """Parse a label list: ``"1=liver,2=spleen"``, ``"1,2"`` or a mix (``"1=liver,3"``).

    Names are letters, digits, ``_``, ``-``, ``.`` and spaces; ids are ASCII digits, at most
    ``MAX_LABEL_ID`` (``2**63 - 1``, the largest id a volume may hold).

    Returns:
        ``{id: name or None}``.

    Raises:
        InvalidOptionError: naming the bad item (not ``ID`` / ``ID=NAME``, an id of 2**63 or
            more, an empty or bad name, an id or a name listed twice).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidOptionError(
            f"labels: expected a list like '1=liver,2=spleen' or '1,2', got {spec!r}.",
            option="labels",
        )
    labels: dict[int, str | None] = {}
    for item in spec.split(","):
        item = item.strip()
        key, sep, name = item.partition("=")
        key, name = key.strip(), name.strip()
        if not (key.isascii() and key.isdigit()):
            raise InvalidOptionError(
                f"labels: {item!r} is not 'ID' or 'ID=NAME' with ID a non-negative integer "
                f"(in {spec!r}).",
                option="labels",
            )
        if sep and not name:
            raise InvalidOptionError(
                f"labels: {item!r} has an empty name (in {spec!r}).", option="labels"
            )
        label = _label_id(key, spec)
        if label in labels:
            raise InvalidOptionError(
                f"labels: label {label} is listed twice (in {spec!r}).", option="labels"
            )
        labels[label] = name or None
    return _checked_labels(labels)


def _checked_labels(labels: dict[int, str | None]) -> dict[int, str | None]:
    """Sorted by id; names well-formed and distinct (regions group labels, names do not)."""
    seen: dict[str, int] = {}
    for label, name in labels.items():
        if name is None:
            continue
        if not _LABEL_NAME.match(name):
            raise InvalidOptionError(
                f"labels: the name {name!r} of label {label} may hold only letters, digits, "
                "'_', '-', '.' and spaces (items are separated by ',', e.g. '1=liver,2=spleen').",
                option="labels",
            )
        if name in seen:
            raise InvalidOptionError(
                f"labels: the name {name!r} is given to labels {seen[name]} and {label}; "
                "names must be distinct.",
                option="labels",
            )
        seen[name] = label
    return dict(sorted(labels.items()))


def _labels_from_text(value: object) -> object:
    return parse_labels(value) if isinstance(value, str) else value


def _metrics_from_text(value: object) -> object:
    if isinstance(value, str):
        return tuple(item.strip() for item in value.split(",") if item.strip())
    return tuple(value) if isinstance(value, list) else value


def _known_metrics(metrics: tuple[str, ...]) -> tuple[str, ...]:
    known = METRICS + BOUNDARY_METRICS
    unknown = [m for m in metrics if m not in known]
    if unknown or not metrics:
        raise ValueError(
            f"metrics must be a non-empty subset of {', '.join(known)}, got {metrics!r}."
        )
    return tuple(m for m in known if m in metrics)


def _mapping_to_dict(value: object) -> object:
    return dict(value) if isinstance(value, Mapping) and not isinstance(value, dict) else value


def _tolerances_from_text(value: object) -> object:
    from monai_jdt.scoring.boundary import parse_tolerances

    return parse_tolerances(value) if isinstance(value, str) else _mapping_to_dict(value)


def _checked_tolerances(value: float | dict[int | str, float]) -> float | dict[int | str, float]:
    from monai_jdt.scoring.boundary import BoundaryOptions

    return BoundaryOptions(nsd_tolerance=value).nsd_tolerance  # type: ignore[return-value]


def _regions_from_text(value: object) -> object:
    from monai_jdt.scoring.regions import parse_regions

    return parse_regions(value) if isinstance(value, str) else value


def _checked_regions(value: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    from monai_jdt.scoring.regions import check_regions

    regions = check_regions(value)
    # checked here, not in the field's type: its JSON Schema is the report's (published)
    for name, members in regions.items():
        if members[-1] > MAX_LABEL_ID:  # sorted
            raise InvalidOptionError(
                f"regions: region {name!r} lists the label id {members[-1]}; label ids must be "
                "below 2**63.",
                option="regions",
            )
    return regions


_Tversky = Annotated[float, Field(ge=0, allow_inf_nan=False)]
#: a label id named by an option: what a volume may hold
LabelId = Annotated[int, Field(ge=0, le=MAX_LABEL_ID)]
LabelSpec = dict[LabelId, str | None]
_OptionalLabelId = Annotated[int | None, Field(ge=0, le=MAX_LABEL_ID)]


_FROM_TEXT: ContextVar[bool] = ContextVar("_FROM_TEXT", default=False)


class OptionsModel(BaseModel):
    """Base of the option models: frozen, no unknown names, ``InvalidOptionError`` on bad values.

    Python callers get strict types (``True`` is not a number, ``"0.5"`` not a float);
    :meth:`from_text` parses text values (flags, form fields) into numbers and booleans.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    def __init__(self, **data: Any) -> None:
        try:
            self.__pydantic_validator__.validate_python(
                data, self_instance=self, strict=not _FROM_TEXT.get()
            )
        except ValidationError as err:
            raise invalid_option(err) from None

    @classmethod
    def from_text(cls, values: Mapping[str, object]) -> Self:
        """The options from text values (flags, form fields): numbers and booleans are parsed.

        Raises:
            InvalidOptionError: naming the first bad option.
        """
        parsed = dict(values)
        for name, value in values.items():
            info = cls.model_fields.get(name)
            parse = None if info is None else text_number(info.annotation)
            if parse is not None and isinstance(value, str):
                # pydantic's lax mode would take what Python's int()/float() take (``1_0``)
                try:
                    parsed[name] = parse(value)
                except ValueError as err:
                    raise InvalidOptionError(f"{name}: {err}.", option=name) from None
        token = _FROM_TEXT.set(True)
        try:
            return cls(**parsed)
        finally:
            _FROM_TEXT.reset(token)

    def replace(self, **changes: Any) -> Self:
        """A copy with ``changes`` applied, validated again."""
        values = {name: getattr(self, name) for name in type(self).model_fields}
        return type(self)(**{**values, **changes})


class ScoringOptions(OptionsModel):
    """How one case (or a dataset) is scored. Construction validates every field.

    Raises:
        InvalidOptionError: a field has a bad value or an unknown name (``.option`` names it).
    """

    labels: Annotated[
        LabelSpec | None,
        BeforeValidator(_mapping_to_dict),
        BeforeValidator(_labels_from_text),
        AfterValidator(lambda v: None if v is None else _checked_labels(v)),
        Exposure(metavar="SPEC", example="1=liver,2=spleen"),
    ] = Field(
        default=None,
        description="Labels to score, with optional names: '1=liver,2=spleen' or '1,2' "
        "(names: letters, digits, '_', '-', '.', spaces; distinct). Default: every label "
        "present in either volume. Labels found in the prediction but not asked for are still "
        "reported (requested false) unless only_requested is set.",
    )
    include_background: bool = Field(default=False, description="Also score label 0 (background).")
    empty: Literal["nan", "one"] = Field(
        default="nan",
        description="Score of a label absent from both volumes: nan (null in the report with a "
        "reason, skipped by means, as MONAI's ignore_empty and nnU-Net) or one (1.0).",
    )
    metrics: Annotated[
        tuple[str, ...],
        BeforeValidator(_metrics_from_text),
        AfterValidator(_known_metrics),
        Exposure(metavar="LIST"),
    ] = Field(
        default=DEFAULT_METRICS,
        description=f"Comma-separated metrics: the ratios {', '.join(METRICS)}, and the "
        f"boundary metrics {', '.join(BOUNDARY_METRICS)} (distances in mm; label maps only); "
        "counts and volumes are always reported.",
    )
    tversky_alpha: Annotated[_Tversky, Exposure(metavar="A")] = Field(
        default=0.5, description="Tversky weight of false positives: tp / (tp + A fp + B fn)."
    )
    tversky_beta: Annotated[_Tversky, Exposure(metavar="B")] = Field(
        default=0.5, description="Tversky weight of false negatives."
    )
    affine_tol: Annotated[
        float, Field(ge=0, allow_inf_nan=False), Exposure(reported=False, metavar="MM")
    ] = Field(
        default=1e-4,
        description="Largest absolute difference allowed between the two voxel-to-world "
        "affines (mm for the spatial part) before affine_mismatch.",
    )
    ignore_affine: Annotated[bool, Exposure(reported=False)] = Field(
        default=False, description="Do not compare the two files' affines."
    )
    device: Annotated[
        str,
        Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$"),
        Exposure(form=False, reported=False, metavar="{auto,cpu,cuda,cuda:N}"),
    ] = Field(
        default="auto",
        description="Where to count: auto (CUDA for probability maps when available, CPU for "
        "label maps, which are bound by decompression and memory bandwidth), cpu, cuda or "
        "cuda:N.",
    )
    max_voxels: Annotated[
        int | None, Field(ge=1), Exposure(form=False, reported=False, metavar="N")
    ] = Field(
        default=None,
        description="Refuse volumes with more voxels (checked on the header, before any data "
        "is decompressed). Default: no limit.",
    )
    kind: Annotated[Literal["auto", "labels", "probabilities"], Exposure(reported=False)] = Field(
        default="auto",
        description="How the volumes are read: auto (integer and whole-valued float volumes "
        "are label maps, other float volumes probability maps), labels or probabilities.",
    )
    max_labels: Annotated[
        int | None,
        Field(ge=1, le=MAX_DISTINCT_LABELS),
        Exposure(reported=False, metavar="N"),
    ] = Field(
        default=None,
        description="Refuse a label map with more distinct labels than this "
        f"(too_many_labels). Above {LABEL_WARNING_THRESHOLD} labels, or with hundreds of "
        "labels against a reference of few, a report only gets a warning. Default: no "
        f"limit below the core's {MAX_DISTINCT_LABELS}, which it cannot raise.",
    )
    only_requested: bool = Field(
        default=False,
        description="Report only the labels given in labels (needed with it): labels found "
        "in the prediction but not asked for are left out instead of reported with requested "
        "false.",
    )
    ignore_label: Annotated[_OptionalLabelId, Exposure(metavar="N")] = Field(
        default=None,
        description="nnU-Net's ignore label (partially annotated references): voxels where the "
        "reference has this label are left out of every count of the case (tp, fp, fn, tn, "
        "so predicted volumes and voxels too); the label itself is not scored. Label maps only.",
    )

    # --- boundary metrics and regions (monai_jdt.scoring.boundary / regions) ---
    percentile: Annotated[
        float, Field(ge=0, le=100, allow_inf_nan=False), Exposure(metavar="P")
    ] = Field(default=95.0, description="The percentile of hd95 (95: the 95th percentile).")
    percentile_mode: Literal["directed", "pooled"] = Field(
        default="directed",
        description="hd95 as the larger of the two directed percentiles (directed: MONAI, "
        "surface-distance) or the percentile of both directions' distances together (pooled: "
        "medpy).",
    )
    nsd_tolerance: Annotated[
        float | dict[int | str, float],
        BeforeValidator(_tolerances_from_text),
        AfterValidator(_checked_tolerances),
        Exposure(metavar="MM", example="1=2,2=3"),
    ] = Field(
        default=1.0,
        description="NSD tolerance in mm: one number, or per label id / region name "
        "('1=2,2=3,WT=2'; the others get 1 mm; a name must be one of regions).",
    )
    boundary_width: Annotated[
        float | None, Field(ge=0, allow_inf_nan=False), Exposure(metavar="MM")
    ] = Field(
        default=None,
        description="Band width of boundary_iou in mm. Default: 2% of the volume diagonal "
        "(Cheng et al. 2021).",
    )
    surface: Literal["voxel", "surfel"] = Field(
        default="voxel",
        description="Surface of the boundary metrics: voxel (border voxels, distances between "
        "voxel centres: MONAI, medpy) or surfel (marching-cubes surface elements weighted by "
        "area: DeepMind's surface-distance).",
    )
    regions: Annotated[
        dict[str, tuple[int, ...]] | None,
        BeforeValidator(_mapping_to_dict),
        BeforeValidator(_regions_from_text),
        AfterValidator(lambda v: None if v is None else _checked_regions(v)),
        Exposure(metavar="SPEC", example="WT=1,2,3;TC=2,3;ET=3"),
    ] = Field(
        default=None,
        description="Label groups scored like labels, each the union of its labels in both "
        "volumes: 'WT=1,2,3;TC=2,3;ET=3'. Reported as rows with region set.",
    )
    missing_distance: Annotated[
        float | None, Field(ge=0, allow_inf_nan=False), Exposure(metavar="MM")
    ] = Field(
        default=None,
        description="Distance (mm) the summary charges a structure present in only one volume "
        "(its distances are null in the case report). Default: the volume's diagonal.",
    )

    @model_validator(mode="after")
    def _tversky_weights(self) -> ScoringOptions:
        if self.tversky_alpha == 0 and self.tversky_beta == 0 and "tversky" in self.metrics:
            raise ValueError("tversky_alpha and tversky_beta cannot both be 0.")
        return self

    @model_validator(mode="after")
    def _only_requested_needs_labels(self) -> ScoringOptions:
        if self.only_requested and self.labels is None:
            raise InvalidOptionError(
                "only_requested needs labels: it narrows the report to the labels given there "
                "(without them every label present is reported).",
                option="only_requested",
                also=("labels",),
            )
        return self

    @model_validator(mode="after")
    def _tolerances_name_regions(self) -> ScoringOptions:
        # a name that is not a region would be dropped without a word, its structure scored
        # at the default tolerance (names are case-sensitive: WT is not wt)
        names = (
            [k for k in self.nsd_tolerance if isinstance(k, str)]
            if isinstance(self.nsd_tolerance, dict)
            else []
        )
        unknown = [name for name in names if name not in (self.regions or {})]
        if unknown:
            regions = ", ".join(self.regions or {}) or "none"
            raise InvalidOptionError(
                f"nsd_tolerance names {', '.join(map(repr, unknown))}, which is not a region "
                f"(regions: {regions}); a key is a label id or a region name, in its case.",
                option="nsd_tolerance",
                also=("regions",),
            )
        return self

    @property
    def requested_labels(self) -> frozenset[int] | None:
        """The labels asked for: those of ``labels``, and label 0 when ``include_background``
        is set (unless it is ``ignore_label``); None without ``labels`` (every label present
        is scored). Labels found in the prediction beyond these are reported with
        ``requested=False``, unless ``only_requested``."""
        if self.labels is None:
            return None
        background = {0} if self.include_background and self.ignore_label != 0 else set()
        return frozenset(self.labels) | background

    @model_validator(mode="after")
    def _ignored_not_scored(self) -> ScoringOptions:
        if self.ignore_label is not None and self.ignore_label in (self.labels or {}):
            raise InvalidOptionError(
                f"ignore_label {self.ignore_label} is also in labels; an ignored label is not "
                "scored.",
                option="ignore_label",
                also=("labels",),
            )
        return self

    def label_name(self, label: int) -> str | None:
        """The name given to ``label`` in ``labels``, else None."""
        return None if self.labels is None else self.labels.get(label)

    def reported(self) -> dict[str, Any]:
        """The options echoed in a report (JSON-safe: label ids become strings)."""
        fields = [name for name, info in type(self).model_fields.items() if exposure(info).reported]
        return self.model_dump(mode="json", include=set(fields))


def invalid_option(err: ValidationError) -> InvalidOptionError:
    """One ``InvalidOptionError`` for pydantic's errors: each bad option, what arrived."""
    parts: list[str] = []
    names: list[str] = []
    for item in err.errors():
        cause = item.get("ctx", {}).get("error")
        if isinstance(cause, InvalidOptionError) and cause.option is not None:
            names += cause.options  # a check of several options names them
        else:
            names.append(str(item["loc"][0]) if item["loc"] else "")
        name = ".".join(str(part) for part in item["loc"])
        if isinstance(cause, InvalidOptionError):
            parts.append(cause.message.rstrip("."))
        elif cause is not None:  # our validators' messages say what arrived
            parts.append(str(cause).rstrip("."))
        elif item["type"] == "extra_forbidden":
            parts.append(f"{name}: unknown option")
        else:
            parts.append(f"{name}: {item['msg'].rstrip('.')}, got {item.get('input')!r}")
    named = tuple(dict.fromkeys(n for n in names if n))  # in order, once each
    return InvalidOptionError(
        "; ".join(parts) + ".", option=named[0] if named else None, also=named[1:]
    )


#: the defaults, shared as the default argument of the scoring functions
DEFAULT_OPTIONS = ScoringOptions()


def device_type(device: str, *, prefer_cuda: bool) -> str:
    """``"cpu"`` or ``"cuda"``: where ``device`` runs, without importing torch for the CPU."""
    if device == "cpu" or (device == "auto" and not prefer_cuda):
        return "cpu"
    return resolve_device(device, prefer_cuda=prefer_cuda).type


def resolve_device(device: str, *, prefer_cuda: bool) -> torch.device:
    """The torch device for ``device`` (``auto`` picks CUDA only when ``prefer_cuda``).

    torch is imported here, not with the module: label maps on the CPU never need it.

    Raises:
        InvalidOptionError: CUDA is asked for and not available.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidOptionError(
                f"device {device!r} asked for, but CUDA is not available here; use cpu or auto.",
                option="device",
            )
        resolved = torch.device(device)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here.",
                option="device",
            )
        return resolved
    return torch.device("cpu")
