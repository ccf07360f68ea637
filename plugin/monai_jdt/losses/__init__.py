"""Jaccard / Dice / Tversky semimetric losses for MONAI (see ``docs/losses.md``).

| class | loss |
|---|---|
| :class:`JDTLoss` | Tversky family, any ``alpha``, ``beta``; the JDT defaults |
| :class:`JaccardMetricLoss` | ``JDTLoss`` with ``alpha = beta = 1`` |
| :class:`DiceSemimetricLoss` | drop-in for ``monai.losses.DiceLoss`` |
| :class:`TverskySemimetricLoss` | drop-in for ``monai.losses.TverskyLoss`` |
| :class:`GeneralizedDiceSemimetricLoss` | drop-in for ``monai.losses.GeneralizedDiceLoss`` |
| :class:`JDTCELoss` | ``lambda_ce * CE + lambda_jdt * JDT`` (``DiceCELoss`` with ``jdt="dice"``) |
"""

from monai_jdt.losses._inputs import ShapeMismatchError
from monai_jdt.losses.compound import JDTCELoss
from monai_jdt.losses.generalized_dice import GeneralizedDiceSemimetricLoss
from monai_jdt.losses.jdt import (
    DiceSemimetricLoss,
    JaccardMetricLoss,
    JDTLoss,
    TverskySemimetricLoss,
)

__all__ = [
    "DiceSemimetricLoss",
    "GeneralizedDiceSemimetricLoss",
    "JDTCELoss",
    "JDTLoss",
    "JaccardMetricLoss",
    "ShapeMismatchError",
    "TverskySemimetricLoss",
]
