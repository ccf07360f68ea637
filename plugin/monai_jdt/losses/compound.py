"""Cross-entropy + JDT: ``lambda_ce * CE + lambda_jdt * JDT`` (the JDT papers' 0.25 : 0.75),
and :class:`DiceCESemimetricLoss`, the drop-in for ``monai.losses.DiceCELoss``."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.nn.modules.loss import _Loss

from monai_jdt.losses._inputs import Prepared, one_hot, prepare_inputs
from monai_jdt.losses._options import (
    WeightArg,
    check_choice,
    check_keywords,
    check_number,
    resolve_weight,
)
from monai_jdt.losses.jdt import Activation, jdt_loss_class

__all__ = ["DiceCESemimetricLoss", "JDTCELoss"]


class JDTCELoss(_Loss):
    """``lambda_ce * CE + lambda_jdt * JDT`` for segmentation logits.

    The cross-entropy part takes the raw logits ``input`` ``[B, C, *]``: softmax cross-entropy
    (``torch.nn.functional.cross_entropy``) for several channels, against a ``[B, 1, *]`` label
    map or ``[B, C, *]`` one-hot / soft probabilities; binary cross-entropy with logits for one
    channel or ``sigmoid=True`` (multi-label). ``weight`` gives the class weights of the
    cross-entropy (``pos_weight`` for the binary one) and, without the background channel when
    ``include_background=False``, the per-class weights of the JDT part. ``ignore_index`` and
    ``mask`` remove voxels from both parts.

    The JDT part is chosen by ``jdt``: ``"jaccard"`` (:class:`JaccardMetricLoss`, the default,
    with JDTLoss's defaults), ``"dice"`` (:class:`DiceSemimetricLoss`, MONAI's Dice form and
    defaults) or ``"tversky"`` (:class:`TverskySemimetricLoss` with ``alpha``, ``beta``). Every
    other keyword argument goes to it (``aggregation``, ``batch``, ``classes``, ``soft_label``,
    ``smooth_nr``, ...). ``jdt="dice"``, ``lambda_jdt`` in the role of ``lambda_dice``,
    ``soft_label=False`` returns exactly what ``monai.losses.DiceCELoss`` returns.

    Args:
        jdt: ``"jaccard"``, ``"dice"`` or ``"tversky"``.
        lambda_ce: weight of the cross-entropy (>= 0), default 0.25.
        lambda_jdt: weight of the JDT loss (>= 0), default 0.75.
        label_smoothing: label smoothing of the softmax cross-entropy, in [0, 1].
        reduction: ``"mean"`` or ``"sum"`` (both parts).
        weight: class weights, see above.
        alpha, beta: Tversky weights, only with ``jdt="tversky"``.
        **jdt_options: the JDT part's keyword arguments.

    Raises:
        ValueError: an unknown ``jdt`` or ``reduction``, a negative ``lambda_ce`` /
            ``lambda_jdt``, ``label_smoothing`` outside [0, 1], ``alpha`` / ``beta`` without
            ``jdt="tversky"``, the JDT part's argument errors; bad inputs in :meth:`forward`
            (as :meth:`JDTLoss.forward <monai_jdt.losses.JDTLoss.forward>`).

    Example:
        >>> import torch
        >>> from monai_jdt.losses import JDTCELoss
        >>> loss_fn = JDTCELoss(to_onehot_y=True, softmax=True, ignore_index=255)
        >>> logits = torch.randn(2, 4, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 4, (2, 1, 8, 8, 8))
        >>> labels[:, :, :2] = 255  # unlabelled voxels take no part
        >>> loss = loss_fn(logits, labels)  # 0.25 * CE + 0.75 * Jaccard
        >>> loss.backward()
        >>> bool(torch.isfinite(logits.grad).all())
        True
    """

    #: ``sigmoid=True`` with several channels takes the binary cross-entropy (multi-label);
    #: False: the softmax cross-entropy whenever there are several channels (MONAI's DiceCELoss)
    sigmoid_multilabel: ClassVar[bool] = True

    class_weight: torch.Tensor | None

    def __init__(
        self,
        jdt: str = "jaccard",
        lambda_ce: float = 0.25,
        lambda_jdt: float = 0.75,
        label_smoothing: float = 0.0,
        reduction: str = "mean",
        weight: WeightArg = None,
        *,
        alpha: float | None = None,
        beta: float | None = None,
        **jdt_options: Any,
    ) -> None:
        check_choice("reduction", reduction, ("mean", "sum"))
        super().__init__(reduction=reduction)
        loss_class = jdt_loss_class(jdt)
        check_keywords(type(self).__name__, loss_class, jdt_options, fixed=("reduction", "weight"))
        for name, value in (("alpha", alpha), ("beta", beta)):
            if value is not None:
                if jdt != "tversky":
                    raise ValueError(f"{name} is taken only with jdt='tversky', got jdt={jdt!r}.")
                jdt_options[name] = value
        self.lambda_ce = check_number("lambda_ce", lambda_ce, minimum=0.0)
        self.lambda_jdt = check_number("lambda_jdt", lambda_jdt, minimum=0.0)
        self.label_smoothing = check_number(
            "label_smoothing", label_smoothing, minimum=0.0, maximum=1.0
        )
        class_weight = resolve_weight(weight)
        self.register_buffer("class_weight", class_weight)
        jdt_weight = class_weight
        if (
            class_weight is not None
            and class_weight.ndim == 1
            and not jdt_options.get("include_background", True)
        ):
            jdt_weight = class_weight[1:]
        self.jdt_loss = loss_class(reduction=reduction, weight=jdt_weight, **jdt_options)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of logits ``input`` ``[B, C, *]`` against ``target`` (see the class docstring);
        ``mask`` ``[B, 1, *]`` (or ``[1, 1, *]``) removes the voxels where it is 0."""
        prepared = prepare_inputs(input, target, mask, self.jdt_loss.options)
        jdt = self.jdt_loss.loss_from_prepared(prepared)
        ce = self.cross_entropy(input, target, prepared)
        return self.lambda_ce * ce + self.lambda_jdt * jdt

    def cross_entropy(
        self, input: torch.Tensor, target: torch.Tensor, prepared: Prepared
    ) -> torch.Tensor:
        """Softmax or binary cross-entropy of the logits, over the kept voxels."""
        n_ch = input.shape[1]
        binary = n_ch == 1 or (self.sigmoid_multilabel and self.jdt_loss.options.sigmoid)
        keep = prepared.keep
        reduction = "none" if keep is not None else self.reduction
        if binary:
            if prepared.labels is not None:
                goal = one_hot(prepared.labels, n_ch, input.dtype)
            else:
                goal = target.to(input.dtype)
            pos_weight = self.class_weight
            if pos_weight is not None and pos_weight.ndim == 1:
                pos_weight = pos_weight.reshape(-1, *([1] * (input.ndim - 2)))
            pos_weight = None if pos_weight is None else pos_weight.to(input)
            per_element = F.binary_cross_entropy_with_logits(
                input,
                goal,
                pos_weight=pos_weight,
                reduction="none" if keep is not None else self.reduction,
            )
            if keep is None:
                return per_element
            return self._masked_reduce(per_element * keep, keep.expand_as(per_element))

        class_weight = None if self.class_weight is None else self.class_weight.to(input)
        if class_weight is not None and class_weight.ndim == 0:
            class_weight = class_weight.expand(n_ch)
        if prepared.labels is not None or target.shape[1] == 1:
            labels = prepared.labels if prepared.labels is not None else target
            goal = labels[:, 0].long()
            if keep is not None:
                goal = torch.where(keep[:, 0] > 0, goal, torch.zeros_like(goal))
        else:
            goal = target.to(input.dtype)
        per_voxel = F.cross_entropy(
            input,
            goal,
            weight=class_weight,
            reduction=reduction,
            label_smoothing=self.label_smoothing,
        )
        if keep is None:
            return per_voxel
        kept = keep[:, 0].expand_as(per_voxel)
        if class_weight is not None and not goal.is_floating_point():
            # torch's weighted mean divides by the summed weights of the voxels' classes
            kept = kept * class_weight[goal]
        return self._masked_reduce(per_voxel * keep[:, 0], kept)

    def _masked_reduce(self, values: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
        if self.reduction == "sum":
            return values.sum()
        return values.sum() / kept.sum().clamp_min(torch.finfo(values.dtype).tiny)


class DiceCESemimetricLoss(JDTCELoss):
    """``lambda_dice * Dice + lambda_ce * CE``, a drop-in for ``monai.losses.DiceCELoss``.

    Takes every argument of MONAI's ``DiceCELoss`` under its name, position and default, so a
    config swaps by its ``_target_`` alone. The Dice part is :class:`DiceSemimetricLoss` (MONAI's
    Dice form; ``squared_pred``, ``jaccard``, ``batch``, ``smooth_nr``, ``smooth_dr``,
    ``weight`` as there) with the semimetric counts: on hard labels the value and gradient are
    those of ``DiceCELoss`` for a Dice part in [0, 1] (``sigmoid`` or ``softmax``; with
    another activation or none, ``soft_label=False`` gives MONAI's sums); on soft labels the
    Dice part is 0 exactly when the prediction equals the target. The cross-entropy part is
    MONAI's: softmax cross-entropy of the logits for several channels (also with
    ``sigmoid=True``), binary cross-entropy with logits for one; ``weight`` gives its class
    weights (``pos_weight`` for the binary one).

    Beyond MONAI's arguments it takes the Dice part's keyword arguments (``soft_label``,
    ``ignore_index``, ``classes``, ``aggregation``, ``sync_counts``, ``check_values``, ...);
    ``ignore_index`` and ``forward``'s ``mask`` remove voxels from both parts.

    Args:
        include_background: if False, channel 0 is left out of the Dice part.
        to_onehot_y: the target is a ``B, 1, *`` label map.
        sigmoid, softmax, other_act: the Dice part's activation (the cross-entropy always takes
            the logits).
        squared_pred: squared L2 cardinalities in the Dice denominator.
        jaccard: the Jaccard form of the Dice part.
        reduction: ``"mean"`` or ``"sum"``.
        smooth_nr, smooth_dr: the Dice part's smoothing.
        batch: pool the Dice counts over the batch.
        weight: class weights of both parts (without the background channel in the Dice part
            when ``include_background=False``).
        lambda_dice: weight of the Dice part (>= 0), default 1.
        lambda_ce: weight of the cross-entropy (>= 0), default 1.
        label_smoothing: label smoothing of the softmax cross-entropy, in [0, 1].
        **dice_options: further keyword arguments of :class:`DiceSemimetricLoss`.

    Raises:
        ValueError: an argument out of range (``lambda_dice``, ``lambda_ce``,
            ``label_smoothing``, ``reduction``, or the Dice part's), or bad inputs in
            ``forward`` (:class:`TensorShapeError` for shapes that do not fit).
        TypeError: ``alpha`` / ``beta`` (the Dice form fixes them), or a non-tensor input.

    Example:
        >>> import torch
        >>> from monai_jdt.losses import DiceCESemimetricLoss
        >>> loss_fn = DiceCESemimetricLoss(
        ...     to_onehot_y=True, softmax=True, squared_pred=True, batch=True
        ... )
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> loss = loss_fn(logits, labels)
        >>> loss.backward()
        >>> bool(loss > 0) and logits.grad is not None
        True
    """

    sigmoid_multilabel = False

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Activation | None = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: WeightArg = None,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        **dice_options: Any,
    ) -> None:
        for name in ("alpha", "beta"):
            if name in dice_options:
                raise TypeError(f"DiceCESemimetricLoss is a Dice loss; {name} is not taken.")
        super().__init__(
            "dice",
            lambda_ce=lambda_ce,
            lambda_jdt=check_number("lambda_dice", lambda_dice, minimum=0.0),
            label_smoothing=label_smoothing,
            reduction=reduction,
            weight=weight,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=jaccard,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            **dice_options,
        )

    @property
    def lambda_dice(self) -> float:
        """Weight of the Dice part (MONAI's name for ``lambda_jdt``)."""
        return self.lambda_jdt
