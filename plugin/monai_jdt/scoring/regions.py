"""Label regions: named unions of labels, scored like labels.

A region ``S`` (e.g. BraTS's whole tumour ``WT = {1, 2, 3}``) is the voxel set where the label
lies in ``S``, in both volumes, as nnU-Net's region-based training and the BraTS evaluation
define it. Its overlap counts follow from the case's confusion matrix ``M`` with no extra pass
over the voxels::

    tp_S = sum_{i in S, j in S} M[i, j]
    predicted_S = sum_{i in S} sum_j M[i, j]      fp_S = predicted_S - tp_S
    reference_S = sum_{j in S} sum_i M[i, j]      fn_S = reference_S - tp_S
    tn_S = N - tp_S - fp_S - fn_S

Boundary metrics of a region are computed on its union mask (``monai_jdt.scoring.boundary``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np

from monai_jdt.scoring.errors import InvalidOptionError

__all__ = ["REGION_NAME", "check_regions", "parse_regions", "region_mask"]

#: a region name (also what a non-numeric ``nsd_tolerance`` key must be)
REGION_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")


def parse_regions(spec: str) -> dict[str, tuple[int, ...]]:
    """Parse a region list ``"WT=1,2,3;TC=2,3;ET=3"`` into ``{name: sorted label ids}``.

    Names start with a letter or ``_`` (so they never read as label ids); each region lists
    at least one non-negative label id, none twice. Raises ``InvalidOptionError`` naming the
    bad item.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidOptionError(
            f"regions: expected a list like 'WT=1,2,3;TC=2,3;ET=3', got {spec!r}."
        )
    regions: dict[str, tuple[int, ...]] = {}
    for item in spec.split(";"):
        if not item.strip():
            continue
        name, sep, members = item.partition("=")
        name = name.strip()
        if not sep:
            raise InvalidOptionError(
                f"regions: {item.strip()!r} is not 'NAME=ID,ID,...' (in {spec!r})."
            )
        ids = []
        for token in members.split(","):
            token = token.strip()
            if not (token.isascii() and token.isdigit()):  # int() takes other digits too
                raise InvalidOptionError(
                    f"regions: {item.strip()!r} lists {token!r}, not a non-negative integer "
                    f"label id (in {spec!r})."
                )
            ids.append(int(token))
        if name in regions:
            raise InvalidOptionError(f"regions: region {name!r} is listed twice (in {spec!r}).")
        regions[name] = tuple(ids)
    return check_regions(regions)


def check_regions(regions: Mapping[str, object]) -> dict[str, tuple[int, ...]]:
    """Validate ``{name: label ids}`` (from Python or ``parse_regions``); ids come back sorted.

    Raises ``InvalidOptionError`` for a bad name, an empty region, a non-integer or negative
    id, or an id listed twice in one region.
    """
    if not isinstance(regions, Mapping) or not regions:
        raise InvalidOptionError(
            f"regions must be a non-empty mapping {{name: label ids}}, got {regions!r}."
        )
    checked: dict[str, tuple[int, ...]] = {}
    for name, members in regions.items():
        if not isinstance(name, str) or not REGION_NAME.match(name):
            raise InvalidOptionError(
                f"regions: the name {name!r} must start with a letter or '_' and hold only "
                "letters, digits, '_', '.', '-'."
            )
        if isinstance(members, (str, bytes)) or not hasattr(members, "__iter__"):
            raise InvalidOptionError(
                f"regions: region {name!r} must list label ids, got {members!r}."
            )
        ids = list(members)
        bad = [i for i in ids if isinstance(i, bool) or not isinstance(i, (int, np.integer))]
        if not ids or bad or any(int(i) < 0 for i in ids):
            raise InvalidOptionError(
                f"regions: region {name!r} must list one or more non-negative integer label "
                f"ids, got {members!r}."
            )
        if len(set(ids)) != len(ids):
            raise InvalidOptionError(f"regions: region {name!r} lists a label twice: {ids}.")
        checked[name] = tuple(sorted(int(i) for i in ids))
    return checked


def region_mask(
    volume: np.ndarray, members: tuple[int, ...], out: np.ndarray | None = None
) -> np.ndarray:
    """Boolean mask of the voxels of ``volume`` (integer labels) whose label is in ``members``,
    written into ``out`` (a bool array of ``volume``'s shape, e.g. a view) when given.

    A single label is one comparison; several use a lookup table indexed by the label (one
    gather per voxel) for 8/16-bit volumes, else ``np.isin``.
    """
    if out is None:
        out = np.empty(volume.shape, dtype=bool)
    if volume.dtype == np.bool_:
        volume = volume.view(np.uint8)
    if len(members) == 1:
        return np.equal(volume, members[0], out=out)
    if volume.dtype.kind == "u" and volume.dtype.itemsize <= 2:
        table = np.zeros(1 << (8 * volume.dtype.itemsize), dtype=bool)
        table[[m for m in members if m < table.size]] = True
        return np.take(table, volume, out=out)
    out[...] = np.isin(volume, np.asarray(members))
    return out
