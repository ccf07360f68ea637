"""Overlay pictures for ``POST /v1/scores`` with ``overlays=true``: compact label volumes.

The web page draws the reference and the prediction as outlines on axial, coronal and sagittal
slices. It cannot upload the files twice (uploads are deleted when the response is sent), so
the same request returns what the drawing needs, computed from the uploaded files:

- both label maps (and the optional intensity ``image``) reoriented to the closest canonical
  RAS+ order from the header affine (array axis 0 runs to the patient's Right, axis 1 to
  Anterior, axis 2 to Superior; nibabel's ``io_orientation``), so that the page can show every
  view in one convention (it uses the radiological one: the patient's right on the left);
- downsampled by an integer step per axis (nearest voxel, labels are never blended) to at most
  :data:`MAX_SIDE` voxels a side, with the spacing in mm of the result so that anisotropic
  voxels are drawn at their true aspect;
- each volume as C-order bytes (``shape`` ``[X, Y, Z]``, index ``(x * Y + y) * Z + z``),
  zlib-compressed and base64-encoded; labels as the smallest unsigned type that holds them,
  the image windowed to its 1st..99th percentile as ``uint8``;
- the label with the lowest Dice in the report (the worst-scoring one) and the centre of each
  reported label (the mean voxel of reference ∪ prediction), where the page opens its slices
  (region rows have no label id: the page finds a region's centre from its labels' voxels).

A probability prediction is drawn as the labels it decides: ``argmax`` over the channel axis
of a 4-D map, ``p >= 0.5`` as label 1 for a 3-D one.
"""

from __future__ import annotations

import base64
import math
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from jdt_service.job_memory import volume_bytes
from jdt_service.schemas import ScoreReport
from monai_jdt.scoring.errors import InvalidOptionError, ShapeMismatchError
from monai_jdt.scoring.sitk_formats import VolumeInfo, inspect_volume, load_volume

__all__ = [
    "IMAGE_FIELD",
    "MAX_SIDE",
    "OVERLAYS_FIELD",
    "LabelCentre",
    "OverlayRequest",
    "Overlays",
    "ScoreReportWithOverlays",
    "add_overlay_fields",
    "render_overlays",
]

#: the longest side of the returned volumes, in voxels
MAX_SIDE = 128
OVERLAYS_FIELD = "overlays"
IMAGE_FIELD = "image"
_BOOL = TypeAdapter(bool)
#: int64 / float64 arrays of the sampled grid alive at once while rendering: the sampled label
#: maps before and after reorienting, and the voxel coordinates, counts and sums of _centres
_SAMPLED_ARRAYS = 12
#: label ids below this are counted by id in _centres; above, numbered by their order first
_DIRECT_IDS = 1 << 16
LabelDtype = Literal["uint8", "uint16", "uint32"]
_LABEL_DTYPES: tuple[LabelDtype, ...] = ("uint8", "uint16", "uint32")


class LabelCentre(BaseModel):
    """Where the page centres its slices for one label (downsampled RAS voxel indices)."""

    model_config = ConfigDict(extra="forbid")
    label: int
    centre: list[int] = Field(description="[x, y, z] in the returned volumes.")


class Overlays(BaseModel):
    """The compact volumes the web page draws its overlay pictures from."""

    model_config = ConfigDict(extra="forbid")
    shape: list[int] = Field(description="[X, Y, Z] of the returned volumes (RAS+ order).")
    spacing_mm: list[float] = Field(description="Voxel size of the returned volumes in mm.")
    step: list[int] = Field(description="The downsampling step per axis (1: every voxel).")
    axes: Literal["RAS"] = Field(
        default="RAS", description="Axis 0 runs to the Right, 1 to Anterior, 2 to Superior."
    )
    label_dtype: LabelDtype
    reference: str = Field(description="base64 of the zlib-compressed reference labels.")
    prediction: str = Field(description="base64 of the zlib-compressed predicted labels.")
    image: str | None = Field(
        description="base64 of the zlib-compressed image (uint8, windowed), null without one."
    )
    worst_label: int | None = Field(
        description="The reported label with the lowest Dice (Jaccard when Dice is not "
        "scored; the first label when neither is); null when no label is reported."
    )
    worst_by: Literal["dice", "jaccard"] | None = Field(
        description="The metric worst_label has the lowest value of; null when neither Dice "
        "nor Jaccard is scored (worst_label is then the first label)."
    )
    centres: list[LabelCentre]


class ScoreReportWithOverlays(ScoreReport):
    """The score report; with ``overlays=true`` it also holds the overlay volumes."""

    overlays: Overlays | None = Field(
        default=None, description="Only with the form field overlays=true."
    )


def add_overlay_fields(request_body: dict[str, Any]) -> dict[str, Any]:
    """``request_body`` (the OpenAPI multipart body of ``POST /v1/scores``) with the
    ``overlays`` flag and the optional ``image`` file added."""
    content = request_body["content"]["multipart/form-data"]
    content["schema"]["properties"].update(
        {
            OVERLAYS_FIELD: {
                "type": "boolean",
                "default": False,
                "description": "Also return the compact volumes the web page draws its "
                "overlay pictures from (member 'overlays').",
            },
            IMAGE_FIELD: {
                "type": "string",
                "format": "binary",
                "description": "Optional: the intensity image the volumes segment (NIfTI, or "
                "NRRD / MetaImage with the formats extra; same shape), drawn under the "
                "overlay outlines. Only read with overlays=true.",
            },
        }
    )
    content.setdefault("encoding", {})[IMAGE_FIELD] = {"contentType": "application/octet-stream"}
    return request_body


@dataclass(frozen=True)
class OverlayRequest:
    """``overlays=true`` on one request: the optional image and the voxel limit."""

    image: Path | None
    max_voxels: int

    @classmethod
    def take(
        cls, fields: dict[str, str], files: dict[str, Path], max_voxels: int
    ) -> OverlayRequest | None:
        """Remove the ``overlays`` field from ``fields``; the request when it is true.

        Raises:
            InvalidOptionError: ``overlays`` is not a boolean, or an ``image`` came without
                ``overlays=true`` (it is only drawn in the pictures).
        """
        text = fields.pop(OVERLAYS_FIELD, "").strip()
        try:
            wanted = bool(text) and _BOOL.validate_python(text)
        except ValidationError:
            raise InvalidOptionError(
                f"form field {OVERLAYS_FIELD!r}: expected true or false, got {text!r}."
            ) from None
        image = files.get(IMAGE_FIELD)
        if image is not None and not wanted:
            raise InvalidOptionError(
                f"form field {IMAGE_FIELD!r} is the intensity image of the overlay pictures; "
                f"send {OVERLAYS_FIELD}=true with it, or leave it out (it is not scored)."
            )
        return cls(image, max_voxels) if wanted else None

    def memory_bytes(self, prediction: VolumeInfo, reference: VolumeInfo) -> int:
        """Upper bound of the host memory of :meth:`render`, from the headers.

        The rendering loads the reference, the prediction and the image whole, one at a
        time (:func:`jdt_service.job_memory.volume_bytes` each), next to at most
        ``_SAMPLED_ARRAYS`` int64 / float64 arrays of the sampled grid. It runs after the
        scoring on the same thread, so a job needs the larger of this and the scoring's
        estimate.

        Raises:
            NotNiftiError, CorruptFileError, UnsupportedDataTypeError, VolumeTooLargeError:
                the ``image`` header, as :func:`render_overlays` would raise them.
        """
        volumes = [prediction, reference]
        if self.image is not None:
            volumes.append(inspect_volume(self.image, self.max_voxels))
        sampled = _Grid.of(reference).sampled_voxels
        return max(volume_bytes(v) for v in volumes) + _SAMPLED_ARRAYS * 8 * sampled

    def render(self, prediction: Path, reference: Path, report: dict[str, Any]) -> Overlays:
        """:func:`render_overlays` of the scored pair."""
        return render_overlays(prediction, reference, self.image, report, self.max_voxels)


@dataclass(frozen=True)
class _Grid:
    """How the reference's voxels become the returned volumes: every ``step``-th voxel along
    each stored axis (nearest, never blended), then reordered to RAS+ by ``ornt``."""

    shape: tuple[int, ...]
    step: tuple[int, ...]
    ornt: np.ndarray
    spacing: tuple[float, ...]

    @classmethod
    def of(cls, info: VolumeInfo) -> _Grid:
        shape = (*info.shape[:3], 1, 1)[:3]
        zooms = (*(info.spacing or ()), 1.0, 1.0, 1.0)[:3]
        step = tuple(max(1, math.ceil(n / MAX_SIDE)) for n in shape)
        return cls(shape, step, nib.orientations.io_orientation(info.affine), zooms)

    @property
    def sampled_voxels(self) -> int:
        """Voxels of a sampled volume (at most ``MAX_SIDE ** 3``)."""
        return math.prod(math.ceil(n / k) for n, k in zip(self.shape, self.step, strict=True))

    def sample(self, data: np.ndarray) -> np.ndarray:
        """Every ``step``-th voxel of ``data`` (``[X, Y, Z, ...]``, at least 3-D after padding)."""
        while data.ndim < 3:
            data = data[..., np.newaxis]
        return data[tuple(slice(None, None, k) for k in self.step)]

    def orient(self, volume: np.ndarray) -> np.ndarray:
        """A sampled 3-D volume in RAS+ axis order."""
        return np.ascontiguousarray(nib.orientations.apply_orientation(volume, self.ornt))

    def ras(self, values: tuple[float, ...]) -> list[float]:
        """Per-stored-axis ``values`` in RAS+ axis order."""
        out = [0.0, 0.0, 0.0]
        for axis, (target, _) in enumerate(self.ornt):
            out[int(target)] = float(values[axis])
        return out


def _read(path: Path, max_voxels: int) -> tuple[VolumeInfo, np.ndarray]:
    info = inspect_volume(path, max_voxels)
    return info, load_volume(info)


def _labels_of(data: np.ndarray, kind: str) -> np.ndarray:
    """A 3-D label map: labels as they are, probabilities as the labels they decide."""
    if kind == "probabilities" and data.dtype.kind == "f":
        return np.argmax(data, axis=3) if data.ndim == 4 else (data >= 0.5).astype(np.uint8)
    if data.ndim > 3:
        data = data.reshape(data.shape[:3])
    return data.astype(np.int64) if data.dtype.kind in "iub" else np.rint(data).astype(np.int64)


def _pack(volume: np.ndarray) -> str:
    return base64.b64encode(zlib.compress(np.ascontiguousarray(volume).tobytes(), 6)).decode()


def _window(image: np.ndarray) -> np.ndarray:
    """Intensities mapped to 0..255 between their 1st and 99th percentile."""
    finite = image[np.isfinite(image)]
    if finite.size == 0:
        return np.zeros(image.shape, np.uint8)
    low, high = np.percentile(finite, [1, 99])
    scale = 255.0 / (high - low) if high > low else 0.0
    scaled = (np.nan_to_num(image.astype(np.float64), nan=low) - low) * scale
    return np.clip(scaled, 0, 255).astype(np.uint8)


def _centres(reference: np.ndarray, prediction: np.ndarray, labels: list[int]) -> list[LabelCentre]:
    """The mean voxel of reference ∪ prediction per label (the volume's centre when empty).

    Per label, ``sum(union) = sum(reference) + sum(prediction) - sum(both)`` of the voxel
    counts and coordinates, each a ``bincount`` over the labels.
    """
    ref, pred = reference.ravel(), prediction.ravel()
    top = int(max(ref.max(initial=0), pred.max(initial=0)))
    if top < _DIRECT_IDS:
        present = np.arange(top + 1)
    else:  # the ids present, numbered 0..K-1: bincount over raw ids takes memory as large as
        # the largest id (up to 2**32, from a request of a few KB)
        present, codes = np.unique(np.concatenate([ref, pred]), return_inverse=True)
        ref, pred = np.split(codes.astype(np.intp), 2)
    both = ref == pred
    size = present.size
    coords = np.indices(reference.shape).reshape(3, -1).astype(np.float64)

    def union_sum(weights: np.ndarray | None) -> np.ndarray:
        def count(values: np.ndarray, w: np.ndarray | None) -> np.ndarray:
            return np.bincount(values, weights=w, minlength=size)

        w_both = None if weights is None else weights[both]
        return count(ref, weights) + count(pred, weights) - count(ref[both], w_both)

    voxels = union_sum(None)
    sums = [union_sum(axis) for axis in coords]
    result = []
    for label in labels:
        index = int(np.searchsorted(present, label))
        if index < size and present[index] == label and voxels[index] > 0:
            centre = [round(float(total[index] / voxels[index])) for total in sums]
        else:
            centre = [n // 2 for n in reference.shape]
        result.append(LabelCentre(label=label, centre=centre))
    return result


def _worst(rows: list[dict[str, Any]]) -> tuple[int | None, Literal["dice", "jaccard"] | None]:
    """``(label, metric)``: the reported label with the lowest Dice (Jaccard when Dice is not
    scored) and that metric; the first label and None when neither is scored. ``rows`` are
    label rows (a region row has no label id)."""
    metrics: tuple[Literal["dice", "jaccard"], ...] = ("dice", "jaccard")
    for metric in metrics:
        scored = [row for row in rows if isinstance(row.get(metric), (int, float))]
        if scored:
            return int(min(scored, key=lambda row: row[metric])["label"]), metric
    return (int(rows[0]["label"]) if rows else None), None


def render_overlays(
    prediction: Path,
    reference: Path,
    image: Path | None,
    report: dict[str, Any],
    max_voxels: int,
) -> Overlays:
    """The overlay volumes of one scored pair (``report`` is its ``CaseReport.to_dict()``).

    Raises:
        NotNiftiError, CorruptFileError, UnsupportedDataTypeError, VolumeTooLargeError: the
            ``image`` file is not a readable volume (NIfTI, NRRD, MetaImage) within
            ``max_voxels``.
        ShapeMismatchError: the ``image`` does not have the reference's spatial shape.
    """
    ref_info, ref_data = _read(reference, max_voxels)
    grid = _Grid.of(ref_info)
    kind = str(report.get("kind", "labels"))
    ref_small = grid.orient(_labels_of(grid.sample(ref_data), kind))
    del ref_data
    # scored voxel by voxel: the prediction (and the image) take the reference's orientation
    pred_small = grid.orient(_labels_of(grid.sample(_read(prediction, max_voxels)[1]), kind))
    top = int(max(ref_small.max(initial=0), pred_small.max(initial=0)))
    dtype = next((t for t in _LABEL_DTYPES if top <= np.iinfo(t).max), None)
    if dtype is None:
        raise InvalidOptionError(
            f"overlays: label ids up to {np.iinfo(np.uint32).max} can be drawn; this pair "
            f"holds {top}. Score it without overlays.",
            option=OVERLAYS_FIELD,
        )
    packed_image = None
    if image is not None:
        image_info, image_data = _read(image, max_voxels)
        if image_info.shape[:3] != ref_info.shape[:3]:
            raise ShapeMismatchError(
                f"image: spatial shape {image_info.shape[:3]} differs from the reference's "
                f"{ref_info.shape[:3]}."
            )
        intensity = grid.sample(image_data)
        intensity = intensity.reshape(*intensity.shape[:3], -1)[..., 0]
        packed_image = _pack(_window(grid.orient(intensity)))
    # region rows (label null) are drawn by the page from their members' labels
    rows = [row for row in report.get("labels", []) if row.get("label") is not None]
    worst_label, worst_by = _worst(rows)
    return Overlays(
        shape=list(ref_small.shape),
        spacing_mm=grid.ras(tuple(z * k for z, k in zip(grid.spacing, grid.step, strict=True))),
        step=[int(k) for k in grid.ras(grid.step)],
        label_dtype=dtype,
        reference=_pack(ref_small.astype(dtype)),
        prediction=_pack(pred_small.astype(dtype)),
        image=packed_image,
        worst_label=worst_label,
        worst_by=worst_by,
        centres=_centres(ref_small, pred_small, [int(row["label"]) for row in rows]),
    )
