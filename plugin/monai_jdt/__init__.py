"""monai-jdt: Jaccard / Dice / Tversky semimetric losses and fine-grained overlap metrics for MONAI.

Importing the package lets a MONAI bundle config name its classes by short name
(``"imports": ["$import monai_jdt"]`` then ``"_target_": "JDTCELoss"``).
"""

from monai_jdt.counts import SoftCounts, aggregate_scores, soft_counts, tversky_index
from monai_jdt.losses import (
    DiceSemimetricLoss,
    GeneralizedDiceSemimetricLoss,
    JaccardMetricLoss,
    JDTCELoss,
    JDTLoss,
    TverskySemimetricLoss,
)
from monai_jdt.metrics import FineGrainedIoU, FineGrainedIoUMetric

__version__ = "0.1.0"

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
