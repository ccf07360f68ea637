"""monai-jdt: Jaccard / Dice / Tversky semimetric losses and fine-grained overlap metrics for MONAI.

Importing the package lets a MONAI bundle config name its classes by short name
(``"imports": ["$import monai_jdt"]`` then ``"_target_": "JDTCELoss"``).

Import cost: the losses need only torch and are always imported. The metrics build on MONAI,
whose import takes seconds: when MONAI is already loaded (a training script, a bundle run;
MONAI's config parser finds short names only among the modules already imported) they are
imported here at once, otherwise (the ``monai-jdt score`` command line, the scoring service)
on first access, so scoring a file never pays for MONAI.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

from monai_jdt.counts import SoftCounts, aggregate_scores, soft_counts, tversky_index
from monai_jdt.losses import (
    DiceSemimetricLoss,
    GeneralizedDiceSemimetricLoss,
    JaccardMetricLoss,
    JDTCELoss,
    JDTLoss,
    TverskySemimetricLoss,
)

if TYPE_CHECKING:
    from monai_jdt.metrics import FineGrainedIoU, FineGrainedIoUMetric

__version__ = "0.1.0"

# public name -> the subpackage that defines it (imported with MONAI, lazily without it)
_MONAI_BACKED = {
    "FineGrainedIoU": "monai_jdt.metrics",
    "FineGrainedIoUMetric": "monai_jdt.metrics",
}

__all__ = [
    "DiceSemimetricLoss",
    "FineGrainedIoU",
    "FineGrainedIoUMetric",
    "GeneralizedDiceSemimetricLoss",
    "JDTCELoss",
    "JDTLoss",
    "JaccardMetricLoss",
    "SoftCounts",
    "TverskySemimetricLoss",
    "__version__",
    "aggregate_scores",
    "soft_counts",
    "tversky_index",
]


def __getattr__(name: str) -> Any:
    module = _MONAI_BACKED.get(name)
    if module is None:
        raise AttributeError(f"module 'monai_jdt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if "monai" in sys.modules:
    for _name in _MONAI_BACKED:
        __getattr__(_name)
