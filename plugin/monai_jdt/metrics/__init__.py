"""Fine-grained overlap metrics for MONAI training: the metric and its ignite handler."""

from monai_jdt.metrics.fine_grained import SCORE_KEYS, FineGrainedIoUMetric
from monai_jdt.metrics.handlers import FineGrainedIoU

__all__ = ["SCORE_KEYS", "FineGrainedIoU", "FineGrainedIoUMetric"]
