"""Generalised Dice semimetric loss: class-agnostic Dice with per-class volume weights."""

from __future__ import annotations

from typing import Any

import torch

from monai_jdt.aggregation import SoftCounts, tversky_index
from monai_jdt.losses._inputs import Prepared
from monai_jdt.losses._options import ClassesArg, check_choice
from monai_jdt.losses.jdt import Activation, OverlapLoss

__all__ = ["GeneralizedDiceSemimetricLoss"]

W_TYPES = ("square", "simple", "uniform")


class GeneralizedDiceSemimetricLoss(OverlapLoss):
    """Generalised Dice loss (Sudre et al., 2017) with semimetric counts; a drop-in for
    ``monai.losses.GeneralizedDiceLoss``.

    With per-class weights ``w_c`` from the target volume ``v_c = |y_c|_p^p`` (the target sum for
    ``norm=1``): ``1 / v_c**2`` (``w_type="square"``), ``1 / v_c`` (``"simple"``) or 1
    (``"uniform"``), the classes are pooled into one class-agnostic ratio::

        1 - (2 sum_c w_c tp_c + smooth_nr) / (sum_c w_c (2 tp_c + fp_c + fn_c) + smooth_dr)

    An absent class (``v_c = 0``) gets the largest weight of the other classes (MONAI's rule), or
    weight 0 with ``classes="present"``. ``aggregation="image"`` (MONAI's ``batch=False``, the
    default) gives one ratio per image, ``"batch"`` one ratio with the counts pooled over the
    batch; the class level does not apply. ``soft_label=False`` returns exactly what
    ``GeneralizedDiceLoss`` returns for the same arguments. ``reduction="none"`` gives MONAI's
    shapes: ``[B, 1, 1, ...]``, or ``[1, 1, ...]`` for ``batch=True`` (one trailing 1 per
    spatial dim).

    ``gamma`` and ``log_loss`` apply to each ratio's loss; ``weight`` is not taken (the volume
    weights replace it); the other options are those of :class:`~monai_jdt.losses.JDTLoss`.

    Raises:
        ValueError: an unknown ``w_type``, the ``"class"`` aggregation level; otherwise as
            :class:`~monai_jdt.losses.JDTLoss`.

    Example:
        >>> import torch
        >>> from monai.losses import GeneralizedDiceLoss
        >>> from monai_jdt.losses import GeneralizedDiceSemimetricLoss
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(2, 3, 8, 8, generator=g)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
        >>> args = {"to_onehot_y": True, "softmax": True}
        >>> ours = GeneralizedDiceSemimetricLoss(**args)(logits, labels)
        >>> torch.allclose(ours, GeneralizedDiceLoss(**args)(logits, labels))
        True
    """

    default_aggregation = "image"
    supported_levels = ("batch", "image")

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Activation | None = None,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool | None = None,
        soft_label: bool = True,
        *,
        aggregation: Any = None,
        classes: ClassesArg | None = "all",
        threshold: float = 0.01,
        norm: int = 1,
        ignore_index: int | None = None,
        gamma: float = 1.0,
        log_loss: bool = False,
        sync_counts: bool = False,
        check_values: bool = True,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            aggregation=aggregation,
            batch=batch,
            classes=classes,
            threshold=threshold,
            weight=None,
            soft_label=soft_label,
            norm=norm,
            ignore_index=ignore_index,
            gamma=gamma,
            log_loss=log_loss,
            sync_counts=sync_counts,
            check_values=check_values,
        )
        self.w_type = str(check_choice("w_type", str(w_type).lower(), W_TYPES))

    def volume_weights(self, volume: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
        """Weights ``[N, C]`` of target volumes ``[N, C]``; absent classes get the row maximum."""
        if self.w_type == "uniform":
            w = torch.ones_like(volume)
        else:
            w = torch.reciprocal(volume * volume if self.w_type == "square" else volume)
        finite = torch.isfinite(w)
        w = torch.where(finite, w, torch.zeros_like(w))
        w = torch.where(finite, w, w.amax(dim=1, keepdim=True))
        return torch.where(active, w, torch.zeros_like(w))

    def loss_from_prepared(self, prepared: Prepared) -> torch.Tensor:
        counts, active = self.counts_and_active(prepared)
        total: torch.Tensor | None = None
        for level, level_weight in self.aggregation.items():
            if level == "batch":
                level_counts = SoftCounts(*(c.sum(0, keepdim=True) for c in counts))
                level_active = active.any(0, keepdim=True)
            else:
                level_counts, level_active = counts, active
            with torch.no_grad():
                w = self.volume_weights(level_counts.tp + level_counts.fn, level_active)
            pooled = SoftCounts(*((c * w).sum(1) for c in level_counts))  # [N]
            index = tversky_index(
                pooled, 0.5, 0.5, self.smooth_nr / 2, self.smooth_dr / 2, empty=1.0
            )
            losses = self.index_to_loss(index)
            if self.reduction == "none":  # MONAI's views of its [B, 1] or [1] result
                lead = (1,) if level == "batch" else (losses.shape[0], 1)
                return losses.reshape(*lead, *([1] * (prepared.x.ndim - 2)))
            value = losses.sum() if self.reduction == "sum" else losses.mean()
            total = level_weight * value if total is None else total + level_weight * value
        assert total is not None  # at least one level, checked in __init__
        return total
