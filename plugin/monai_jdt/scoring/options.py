"""Scoring options: what to score, under which convention, and where.

``ScoringOptions`` is the one value the command line, the Python API and the service pass
around; it validates itself on construction, so every later stage can trust it.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch

from monai_jdt.scoring.errors import InvalidOptionError

__all__ = [
    "DEFAULT_METRICS",
    "DEFAULT_OPTIONS",
    "INPUT_KINDS",
    "METRICS",
    "ScoringOptions",
    "parse_labels",
    "resolve_device",
]

#: every per-label ratio the scoring core knows, in report order
METRICS: tuple[str, ...] = ("dice", "jaccard", "precision", "recall", "tversky")
DEFAULT_METRICS: tuple[str, ...] = ("dice", "jaccard", "precision", "recall")
#: how a volume is read: decided from its dtype and values, or forced
INPUT_KINDS: tuple[str, ...] = ("auto", "labels", "probabilities")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")


@dataclass(frozen=True)
class ScoringOptions:
    """How one case (or a dataset) is scored.

    Attributes:
        labels: ``{label id: name or None}`` to score; ``None`` scores every label present in
            either volume. Labels present in the prediction but not listed are still reported
            (flagged ``"requested": false``), never dropped.
        include_background: also score label 0.
        empty: the score of a label absent from both volumes: ``"nan"`` (reported as ``null``
            with a reason, skipped by means, as MONAI's ``ignore_empty`` and nnU-Net) or
            ``"one"`` (1.0: nothing to get wrong).
        metrics: ratios to report, from ``METRICS``; counts and volumes are always reported.
        tversky_alpha, tversky_beta: weights of false positives / false negatives in the
            Tversky index ``tp / (tp + alpha*fp + beta*fn)`` (only used for ``"tversky"``).
        affine_tol: largest absolute difference allowed between the two voxel-to-world affines
            (in mm for the spatial part) before ``AffineMismatchError``.
        ignore_affine: skip the affine comparison.
        device: ``"auto"`` (CUDA for probability maps when available, CPU for label maps,
            which are bound by decompression and memory bandwidth), ``"cpu"``, ``"cuda"`` or
            ``"cuda:N"``.
        max_voxels: refuse volumes with more voxels than this (checked on the header, before
            any data is decompressed); ``None`` for no limit.
        kind: ``"auto"`` (integer volumes and whole-valued float volumes are label maps,
            other float volumes probability maps), ``"labels"`` or ``"probabilities"``.
    """

    labels: Mapping[int, str | None] | None = None
    include_background: bool = False
    empty: Literal["nan", "one"] = "nan"
    metrics: tuple[str, ...] = DEFAULT_METRICS
    tversky_alpha: float = 0.5
    tversky_beta: float = 0.5
    affine_tol: float = 1e-4
    ignore_affine: bool = False
    device: str = "auto"
    max_voxels: int | None = None
    kind: Literal["auto", "labels", "probabilities"] = "auto"

    def __post_init__(self) -> None:
        if self.labels is not None:
            if not isinstance(self.labels, Mapping):
                raise InvalidOptionError(
                    "labels must be a mapping {id: name} or None, got "
                    f"{type(self.labels).__name__}."
                )
            for key, name in self.labels.items():
                if isinstance(key, bool) or not isinstance(key, int) or key < 0:
                    raise InvalidOptionError(
                        f"labels: ids must be non-negative integers, got {key!r}."
                    )
                if name is not None and not isinstance(name, str):
                    raise InvalidOptionError(
                        f"labels: the name of label {key} must be a string or None, got {name!r}."
                    )
            object.__setattr__(self, "labels", dict(sorted(self.labels.items())))
        if self.empty not in ("nan", "one"):
            raise InvalidOptionError(f"empty must be 'nan' or 'one', got {self.empty!r}.")
        metrics = tuple(self.metrics) if not isinstance(self.metrics, str) else (self.metrics,)
        unknown = [m for m in metrics if m not in METRICS]
        if unknown or not metrics:
            raise InvalidOptionError(
                f"metrics must be a non-empty subset of {', '.join(METRICS)}, got {metrics!r}."
            )
        object.__setattr__(self, "metrics", tuple(m for m in METRICS if m in metrics))
        for name in ("tversky_alpha", "tversky_beta"):
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise InvalidOptionError(f"{name} must be a finite number >= 0, got {value!r}.")
        if self.tversky_alpha == 0 and self.tversky_beta == 0 and "tversky" in self.metrics:
            raise InvalidOptionError("tversky_alpha and tversky_beta cannot both be 0.")
        if not _is_real(self.affine_tol) or not self.affine_tol >= 0:
            raise InvalidOptionError(
                f"affine_tol must be a number >= 0 (mm), got {self.affine_tol!r}."
            )
        if not isinstance(self.device, str) or not _DEVICE_RE.match(self.device):
            raise InvalidOptionError(
                f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}."
            )
        if self.max_voxels is not None and (
            isinstance(self.max_voxels, bool)
            or not isinstance(self.max_voxels, int)
            or self.max_voxels < 1
        ):
            raise InvalidOptionError(
                f"max_voxels must be a positive integer or None, got {self.max_voxels!r}."
            )
        if self.kind not in INPUT_KINDS:
            raise InvalidOptionError(
                f"kind must be one of {', '.join(INPUT_KINDS)}, got {self.kind!r}."
            )

    def label_name(self, label: int) -> str | None:
        """The name given to ``label`` in ``labels``, else None."""
        return None if self.labels is None else self.labels.get(label)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: the defaults, shared as the default argument of the scoring functions
DEFAULT_OPTIONS = ScoringOptions()


def parse_labels(spec: str) -> dict[int, str | None]:
    """Parse a label list: ``"1=liver,2=spleen"``, ``"1,2"`` or a mix (``"1=liver,3"``).

    Returns ``{id: name or None}``. Raises ``InvalidOptionError`` naming the bad item.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidOptionError(
            f"labels: expected a list like '1=liver,2=spleen' or '1,2', got {spec!r}."
        )
    labels: dict[int, str | None] = {}
    for item in spec.split(","):
        item = item.strip()
        key, sep, name = item.partition("=")
        key, name = key.strip(), name.strip()
        if not key.isdigit():
            raise InvalidOptionError(
                f"labels: {item!r} is not 'ID' or 'ID=NAME' with ID a non-negative integer "
                f"(in {spec!r})."
            )
        if sep and not name:
            raise InvalidOptionError(f"labels: {item!r} has an empty name (in {spec!r}).")
        label = int(key)
        if label in labels:
            raise InvalidOptionError(f"labels: label {label} is listed twice (in {spec!r}).")
        labels[label] = name or None
    return labels


def resolve_device(device: str, *, prefer_cuda: bool) -> torch.device:
    """The torch device for ``device`` (``auto`` picks CUDA only when ``prefer_cuda``).

    Raises ``InvalidOptionError`` when CUDA is asked for and not available.
    """
    if device == "auto":
        return torch.device("cuda" if prefer_cuda and torch.cuda.is_available() else "cpu")
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InvalidOptionError(
                f"device {device!r} asked for, but CUDA is not available here; use cpu or auto."
            )
        resolved = torch.device(device)
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise InvalidOptionError(
                f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) here."
            )
        return resolved
    return torch.device("cpu")
