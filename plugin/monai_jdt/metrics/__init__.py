"""Fine-grained overlap metrics for MONAI training: the metric and its ignite handler; and,
imported on first use, the boundary metrics (``BoundaryMetric``, ``BoundaryHandler``)."""

from typing import Any

from monai_jdt.metrics.fine_grained import SCORE_KEYS, FineGrainedIoUMetric
from monai_jdt.metrics.handlers import FineGrainedIoU

__all__ = [
    "SCORE_KEYS",
    "BoundaryHandler",
    "BoundaryMetric",
    "FineGrainedIoU",
    "FineGrainedIoUMetric",
]


def __getattr__(name: str) -> Any:
    if name in ("BoundaryHandler", "BoundaryMetric"):
        from monai_jdt.metrics import boundary

        return getattr(boundary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
