"""monai-jdt: Jaccard / Dice / Tversky semimetric losses and fine-grained overlap metrics for MONAI.

The losses and metrics implement Wang & Blaschko, "Jaccard Metric Losses: Optimizing the
Jaccard Index with Soft Labels" (NeurIPS 2023), Wang & Blaschko, "Dice Semimetric Losses:
Optimizing the Dice Score with Soft Labels" (MICCAI 2023), and the fine-grained mIoU of
Wang et al., "Revisiting Evaluation Metrics for Semantic Segmentation: Optimization and
Evaluation of Fine-grained Intersection over Union" (NeurIPS 2023).

Importing the package lets a MONAI bundle config name its classes by short name
(``"imports": ["$import monai_jdt"]`` then ``"_target_": "JDTCELoss"``).

Import cost: the losses need torch and the metrics MONAI, whose imports take seconds, while
scoring label maps (``monai_jdt.scoring``, the ``monai-jdt`` command line, the service) needs
neither. So the package imports them here at once only when torch (for the losses and counts)
or MONAI (also for the metrics) is already loaded: a training script, a bundle run. MONAI's
config parser finds short names only among the modules already imported, and a bundle run
imports MONAI before the config's ``imports``. Otherwise each name is imported on first access
(PEP 562), so ``import monai_jdt.scoring`` never pays for torch. A script that imports
monai_jdt *before* torch and then names the classes by short name in a config should import
``monai_jdt.losses`` (or use the dotted ``monai_jdt.losses.JDTCELoss``).
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from monai_jdt.aggregation import SoftCounts, aggregate_scores, tversky_index
    from monai_jdt.counts import soft_counts
    from monai_jdt.losses import (
        DiceCESemimetricLoss,
        DiceSemimetricLoss,
        GeneralizedDiceSemimetricLoss,
        JaccardMetricLoss,
        JDTCELoss,
        JDTLoss,
        TensorShapeError,
        TverskySemimetricLoss,
    )
    from monai_jdt.metrics import FineGrainedIoU, FineGrainedIoUMetric

__version__ = "0.1.0"

# public name -> the module that defines it (imported on first access, or at once, see above)
_ARRAYS = {  # numpy or torch, no import of either
    "SoftCounts": "monai_jdt.aggregation",
    "aggregate_scores": "monai_jdt.aggregation",
    "tversky_index": "monai_jdt.aggregation",
}
_TORCH_BACKED = {
    **_ARRAYS,
    "soft_counts": "monai_jdt.counts",
    "DiceCESemimetricLoss": "monai_jdt.losses",
    "DiceSemimetricLoss": "monai_jdt.losses",
    "GeneralizedDiceSemimetricLoss": "monai_jdt.losses",
    "JDTCELoss": "monai_jdt.losses",
    "JDTLoss": "monai_jdt.losses",
    "JaccardMetricLoss": "monai_jdt.losses",
    "TensorShapeError": "monai_jdt.losses",
    "TverskySemimetricLoss": "monai_jdt.losses",
}
_MONAI_BACKED = {
    "FineGrainedIoU": "monai_jdt.metrics",
    "FineGrainedIoUMetric": "monai_jdt.metrics",
}
_LAZY = {**_TORCH_BACKED, **_MONAI_BACKED}

__all__ = [
    "DiceCESemimetricLoss",
    "DiceSemimetricLoss",
    "FineGrainedIoU",
    "FineGrainedIoUMetric",
    "GeneralizedDiceSemimetricLoss",
    "JDTCELoss",
    "JDTLoss",
    "JaccardMetricLoss",
    "SoftCounts",
    "TensorShapeError",
    "TverskySemimetricLoss",
    "__version__",
    "aggregate_scores",
    "soft_counts",
    "tversky_index",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'monai_jdt' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


def _import_loaded_backends() -> None:
    """Import the names whose heavy dependency is loaded already (see the module docstring)."""
    names = _LAZY if "monai" in sys.modules else _TORCH_BACKED if "torch" in sys.modules else {}
    for name in names:
        __getattr__(name)


_import_loaded_backends()
