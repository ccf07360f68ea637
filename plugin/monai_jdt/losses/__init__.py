"""Jaccard / Dice / Tversky semimetric losses for MONAI (see ``docs/losses.md``).

| class | loss |
|---|---|
| :class:`JDTLoss` | Tversky family, any ``alpha``, ``beta``; the JDT defaults |
| :class:`JaccardMetricLoss` | ``JDTLoss`` with ``alpha = beta = 1`` |
| :class:`DiceSemimetricLoss` | drop-in for ``monai.losses.DiceLoss`` |
| :class:`TverskySemimetricLoss` | drop-in for ``monai.losses.TverskyLoss`` |
| :class:`GeneralizedDiceSemimetricLoss` | drop-in for ``monai.losses.GeneralizedDiceLoss`` |
| :class:`JDTCELoss` | ``lambda_ce * CE + lambda_jdt * JDT``, the JDT papers' 0.25 : 0.75 mix |
| :class:`DiceCESemimetricLoss` | drop-in for ``monai.losses.DiceCELoss`` |

Bad tensor shapes raise :class:`TensorShapeError` (a ``ValueError`` and, as in MONAI, an
``AssertionError``).
"""

from monai_jdt.losses._inputs import TensorShapeError
from monai_jdt.losses.compound import DiceCESemimetricLoss, JDTCELoss
from monai_jdt.losses.generalized_dice import GeneralizedDiceSemimetricLoss
from monai_jdt.losses.jdt import (
    DiceSemimetricLoss,
    JaccardMetricLoss,
    JDTLoss,
    TverskySemimetricLoss,
)

__all__ = [
    "DiceCESemimetricLoss",
    "DiceSemimetricLoss",
    "GeneralizedDiceSemimetricLoss",
    "JDTCELoss",
    "JDTLoss",
    "JaccardMetricLoss",
    "TensorShapeError",
    "TverskySemimetricLoss",
]
