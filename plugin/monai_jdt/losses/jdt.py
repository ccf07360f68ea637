"""The Tversky-family semimetric losses: ``JDTLoss`` and its Jaccard / Dice / Tversky forms.

For a prediction ``x`` and target ``y`` (``B, C, *spatial``) every loss here

1. takes per-(image, class) soft counts ``tp, fp, fn`` ``[B, C]`` with
   :func:`monai_jdt.counts.soft_counts` (the semimetric identity for ``soft_label=True``, the
   classic ``sum(x * y)`` otherwise; L1 or squared L2 norm);
2. turns them into a Tversky index ``T = (tp + s_nr) / (tp + alpha*fp + beta*fn + s_dr)`` per
   class (``"batch"`` level: counts summed over the batch first, ``[1, C]``) or per
   (image, class) (``"image"`` / ``"class"`` levels, ``[B, C]``);
3. turns the index into a loss ``l = (1 - T) ** gamma`` (or ``(-log T) ** gamma`` with
   ``log_loss``), times the per-class ``weight``;
4. averages the losses of the *active* entries (every class, or the classes present in the
   target) at the chosen level with :func:`monai_jdt.counts.aggregate_values`, or mixes several
   levels with weights.

A class with no denominator (absent from prediction and target, no smoothing) has index 1 and
loss 0, never NaN. With ``sync_counts=True`` in a ``torch.distributed`` run the counts of every
rank are gathered (with gradients) before step 2, so the loss is that of the global batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import torch
from torch.nn.modules.loss import _Loss

from monai_jdt import distributed
from monai_jdt.aggregation import Aggregation, SoftCounts, aggregate_values, tversky_index
from monai_jdt.counts import soft_counts
from monai_jdt.losses._inputs import (
    InputOptions,
    Prepared,
    check_counts,
    is_hard,
    prepare_inputs,
)
from monai_jdt.losses._options import (
    REDUCTIONS,
    AggregationArg,
    ClassesArg,
    WeightArg,
    check_activation,
    check_bool,
    check_choice,
    check_ignore_index,
    check_keywords,
    check_number,
    resolve_aggregation,
    resolve_weight,
)

__all__ = ["DiceSemimetricLoss", "JDTLoss", "JaccardMetricLoss", "TverskySemimetricLoss"]

Activation = Callable[[torch.Tensor], torch.Tensor]


class OverlapLoss(_Loss):
    """What every overlap loss here shares: input handling, counts, their options and sync.

    Subclasses implement :meth:`loss_from_prepared`.
    """

    #: the aggregation level used when neither ``aggregation`` nor ``batch`` is given
    default_aggregation: ClassVar[Aggregation] = "batch"
    #: the levels a subclass supports
    supported_levels: ClassVar[tuple[Aggregation, ...]] = ("batch", "image", "class")

    class_weight: torch.Tensor | None

    def __init__(
        self,
        *,
        include_background: bool,
        to_onehot_y: bool,
        sigmoid: bool,
        softmax: bool,
        other_act: Activation | None,
        reduction: str,
        smooth_nr: float,
        smooth_dr: float,
        aggregation: AggregationArg | None,
        batch: bool | None,
        classes: ClassesArg | None,
        threshold: float,
        weight: WeightArg,
        soft_label: bool,
        norm: int,
        ignore_index: int | None,
        gamma: float,
        log_loss: bool,
        sync_counts: bool,
        check_values: bool,
    ) -> None:
        check_choice("reduction", reduction, REDUCTIONS)
        super().__init__(reduction=reduction)
        check_activation(sigmoid, softmax, other_act)
        self.options = InputOptions(
            include_background=check_bool("include_background", include_background),
            to_onehot_y=check_bool("to_onehot_y", to_onehot_y),
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            ignore_index=check_ignore_index(ignore_index),
            check_values=check_bool("check_values", check_values),
        )
        self.smooth_nr = check_number("smooth_nr", smooth_nr, minimum=0.0)
        self.smooth_dr = check_number("smooth_dr", smooth_dr, minimum=0.0)
        self.aggregation = resolve_aggregation(aggregation, batch, self.default_aggregation)
        for level in self.aggregation:
            if level not in self.supported_levels:
                raise ValueError(
                    f"{type(self).__name__} supports the aggregation levels "
                    f"{self.supported_levels}, got {level!r}."
                )
        if classes is not None:
            check_choice("classes", classes, ("all", "present"))
        self.classes = classes
        self.threshold = check_number("threshold", threshold, minimum=0.0, maximum=1.0)
        self.register_buffer("class_weight", resolve_weight(weight))
        self.soft_label = check_bool("soft_label", soft_label)
        self.norm = int(check_choice("norm", norm, (1, 2)))  # type: ignore[call-overload]
        self.gamma = check_number("gamma", gamma, minimum=0.0, strict=True)
        self.log_loss = check_bool("log_loss", log_loss)
        self.sync_counts = check_bool("sync_counts", sync_counts)
        if reduction == "none" and len(self.aggregation) > 1:
            raise ValueError(
                f"reduction='none' needs a single aggregation level, got {self.aggregation}."
            )
        if reduction == "none" and sync_counts:
            raise ValueError("sync_counts=True needs reduction='mean' or 'sum', not 'none'.")

    # --- the pipeline ------------------------------------------------------------------------

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of ``input`` against ``target``.

        Args:
            input: ``[B, C, *spatial]`` logits or probabilities (see ``sigmoid`` / ``softmax``).
            target: ``[B, C, *spatial]`` one-hot or soft labels, or a ``[B, 1, *spatial]`` label
                map with ``to_onehot_y=True``.
            mask: optional ``[B, 1, *spatial]`` (or ``[1, 1, *spatial]``) weights in [0, 1]; voxels
                where it is 0 take no part (for hard and soft labels alike).

        Returns:
            A scalar for ``reduction="mean"`` / ``"sum"``; per-class or per-(image, class)
            losses for ``"none"`` (shape documented on each class).

        Raises:
            TypeError: a non-tensor argument, or an integer ``input``.
            TensorShapeError: shapes that do not fit (also an ``AssertionError``, as in MONAI).
            ValueError: with ``check_values``, NaN or infinite predictions, labels outside
                ``[0, C)`` other than ``ignore_index``, soft targets or a mask outside [0, 1];
                a ``weight`` of the wrong length.
        """
        return self.loss_from_prepared(prepare_inputs(input, target, mask, self.options))

    def loss_from_prepared(self, prepared: Prepared) -> torch.Tensor:
        raise NotImplementedError

    def counts_and_active(self, prepared: Prepared) -> tuple[SoftCounts, torch.Tensor]:
        """Per-(image, class) counts ``[N, C]`` and the active pairs ``[N, C]`` (bool).

        With ``sync_counts`` in a distributed run, N is the global batch (every rank's images in
        rank order); otherwise it is this rank's B.
        """
        x, y = prepared.x, prepared.y
        spatial = tuple(range(2, x.ndim))
        # For probabilities x and a 0/1 target, min(x, y) = x * y: the semimetric counts are
        # exactly the classic ones, whose backward is one pass cheaper. Whether the target is
        # 0/1 is mostly known from the value check; otherwise it costs a pass, taken where it
        # decides the count form (L1 semimetric) or the default classes.
        semimetric_l1 = self.soft_label and self.norm == 1 and prepared.nonnegative
        hard = prepared.binary_target
        if hard is None and (self.classes is None or semimetric_l1):
            hard = is_hard(prepared)
        counts = soft_counts(
            x,
            y,
            spatial,
            norm=self.norm,
            semimetric=self.soft_label and not (hard and prepared.nonnegative),
            nonnegative=prepared.nonnegative,
            y_total=prepared.y_sums,
        )
        if self.options.check_values:
            check_counts(counts.tp + counts.fp)
        classes = self.classes
        if classes is None:  # the JDT recommendation, decided on the target, not the mask
            target_hard = prepared.hard_target
            classes = "present" if (hard if target_hard is None else target_hard) else "all"
        if classes == "present" and hard and prepared.nonnegative:
            # a 0/1 target exceeds a threshold < 1 exactly where its sum tp + fn is positive
            # (0 <= tp <= sum(y) for a prediction in [0, 1]): no pass over the target
            with torch.no_grad():
                active = (counts.tp + counts.fn > 0) & (self.threshold < 1)
        elif classes == "present":
            with torch.no_grad():
                active = y.amax(dim=spatial) > self.threshold
        else:
            active = torch.ones(counts.tp.shape, dtype=torch.bool, device=x.device)
        if self.sync_counts and distributed.is_distributed():
            rows, _ = distributed.all_gather_rows(torch.stack(tuple(counts), dim=1))
            counts = SoftCounts(*rows.unbind(1))
            active = distributed.all_gather_rows(active.to(rows.dtype))[0] > 0.5
        return counts, active

    def weight_for(self, n_classes: int) -> torch.Tensor | None:
        """The per-class weight ``[C]`` (None when unweighted or with one class, as MONAI)."""
        w = self.class_weight
        if w is None or n_classes == 1:
            return None
        if w.ndim == 1 and w.shape[0] != n_classes:
            raise ValueError(
                "The length of the `weight` sequence should be the same as the number of classes "
                f"({n_classes}), got {w.shape[0]}. If `include_background=False`, the weight "
                "should not include the background category class 0."
            )
        return w.expand(n_classes)

    def index_to_loss(self, index: torch.Tensor) -> torch.Tensor:
        """``(1 - T) ** gamma``, or ``(-log T) ** gamma`` with ``log_loss`` (finite gradients)."""
        if self.log_loss:
            loss = -torch.log(index.clamp_min(torch.finfo(index.dtype).tiny))
        else:
            loss = 1.0 - index
        if self.gamma != 1.0:
            # rounding can leave 1 - T a hair below 0; x ** gamma has no finite slope at 0
            positive = loss > 0
            base = torch.where(positive, loss, torch.ones_like(loss))
            loss = torch.where(positive, base**self.gamma, torch.zeros_like(loss))
        return loss

    def reduce_level(
        self, losses: torch.Tensor, active: torch.Tensor, level: Aggregation
    ) -> torch.Tensor:
        """Scalar of ``losses`` (``[1, C]`` at the batch level, else ``[N, C]``) over the active
        entries: their mean at ``level``, or their sum. 0 when no entry is active."""
        if self.reduction == "sum":
            keep = active.any(0, keepdim=True) if level == "batch" else active
            return torch.where(keep, losses, torch.zeros_like(losses)).sum()
        value = aggregate_values(losses, active, level)
        return torch.where(active.any(), value, torch.zeros_like(value))


class JDTLoss(OverlapLoss):
    """Jaccard / Dice / Tversky semimetric loss, correct for hard and soft labels.

    Per class (or per (image, class)) the Tversky index is
    ``T = (tp + smooth_nr) / (tp + alpha*fp + beta*fn + smooth_dr)``: the Jaccard index for
    ``alpha = beta = 1``, the Dice score for ``alpha = beta = 0.5``. The counts use the
    semimetric identity ``tp = (|x|_p^p + |y|_p^p - |x - y|_p^p) / 2`` (``soft_label=True``), so
    the loss is 0 exactly when the prediction equals the (soft) target. The loss of one entry is
    ``(1 - T) ** gamma`` (``(-log T) ** gamma`` with ``log_loss``), times its class ``weight``.

    The defaults follow the JDT recommendation: counts pooled over the batch
    (``aggregation="batch"``, mIoU^D), only the classes present in the target for hard labels and
    all classes for soft labels (``classes=None``).

    Args:
        alpha: weight of false positives (>= 0).
        beta: weight of false negatives (>= 0).
        gamma: exponent of each entry's loss (> 0; > 1 focuses on poorly segmented classes).
        log_loss: use ``-log T`` instead of ``1 - T``.
        include_background: if False, channel 0 is left out.
        to_onehot_y: the target is a ``B, 1, *`` label map to one-hot encode with C classes.
        sigmoid, softmax, other_act: activation applied to ``input`` (at most one).
        reduction: ``"mean"`` (average at the aggregation level), ``"sum"`` (sum of the active
            entries' losses) or ``"none"``: the losses ``[B, C, 1, ...]`` (image / class level)
            or ``[1, C, 1, ...]`` (batch level), 0 for inactive entries.
        smooth_nr, smooth_dr: added to the numerator / denominator of T.
        aggregation: ``"batch"`` (mIoU^D), ``"image"`` (mIoU^I), ``"class"`` (mIoU^C) or a
            mapping of levels to weights, e.g. ``{"image": 0.5, "class": 0.5}``.
        batch: MONAI's spelling: True = ``"batch"``, False = ``"image"``.
        classes: ``"all"``, ``"present"`` (classes whose target exceeds ``threshold`` somewhere
            in the image, or in the batch at the batch level) or None (present for hard targets,
            all for soft targets).
        threshold: presence threshold for ``classes="present"``, in [0, 1].
        weight: per-class multipliers (one number, or one per class after dropping the
            background); the mean still divides by the number of entries (MONAI's convention).
        soft_label: True for the semimetric counts, False for the classic ``sum(x * y)`` ones.
        norm: 1 (L1) or 2 (squared L2, MONAI's ``squared_pred``).
        ignore_index: label whose voxels take no part (MONAI's rules for label maps and one-hot).
        sync_counts: in a ``torch.distributed`` run, gather every rank's counts (with gradients)
            so the loss is that of the global batch; see :mod:`monai_jdt.distributed` for the
            gradient convention.
        check_values: check for NaN, labels out of range and soft targets outside [0, 1] (one
            pass over the tensors; turn off for speed once the data pipeline is trusted).

    Raises:
        ValueError: an argument out of range or unknown (e.g. ``reduction``, ``norm``,
            ``aggregation``, a negative ``alpha``), or ``reduction="none"`` with several
            aggregation levels or ``sync_counts``; bad inputs in :meth:`forward`.
        TypeError: an argument of the wrong type (e.g. a non-bool flag), or several
            activations at once.

    Example:
        Soft labels: the loss is 0 exactly where the prediction equals the target, which the
        classic ``sum(x * y)`` intersection (``soft_label=False``) does not give.

        >>> import torch
        >>> from monai_jdt.losses import JDTLoss
        >>> soft = torch.tensor([[[0.2, 0.7, 0.5], [0.8, 0.3, 0.5]]])  # B=1, C=2, N=3
        >>> round(JDTLoss(smooth_nr=0.0, smooth_dr=0.0)(soft, soft).item(), 6)
        0.0
        >>> classic = JDTLoss(smooth_nr=0.0, smooth_dr=0.0, soft_label=False)
        >>> # mean over the classes of 1 - tp / (|x| + |y| - tp) with tp = sum(x * y):
        >>> # 1 - (0.78 / 2.02 + 0.98 / 2.22) / 2
        >>> round(classic(soft, soft).item(), 4)
        0.5862
    """

    #: scale of the smoothing terms: 1 for the Tversky form, 1/2 for Dice as MONAI writes it
    smooth_scale: ClassVar[float] = 1.0

    def __init__(
        self,
        *,
        alpha: float = 1.0,
        beta: float = 1.0,
        gamma: float = 1.0,
        log_loss: bool = False,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Activation | None = None,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        aggregation: AggregationArg | None = None,
        batch: bool | None = None,
        classes: ClassesArg | None = None,
        threshold: float = 0.01,
        weight: WeightArg = None,
        soft_label: bool = True,
        norm: int = 1,
        ignore_index: int | None = None,
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
            weight=weight,
            soft_label=soft_label,
            norm=norm,
            ignore_index=ignore_index,
            gamma=gamma,
            log_loss=log_loss,
            sync_counts=sync_counts,
            check_values=check_values,
        )
        self.alpha = check_number("alpha", alpha, minimum=0.0)
        self.beta = check_number("beta", beta, minimum=0.0)

    def loss_from_prepared(self, prepared: Prepared) -> torch.Tensor:
        counts, active = self.counts_and_active(prepared)
        weight = self.weight_for(counts.tp.shape[1])
        s_nr, s_dr = self.smooth_nr * self.smooth_scale, self.smooth_dr * self.smooth_scale
        total: torch.Tensor | None = None
        for level, level_weight in self.aggregation.items():
            pooled = counts.sum(0, keepdim=True) if level == "batch" else counts
            index = tversky_index(
                pooled,
                self.alpha,
                self.beta,
                s_nr,
                s_dr,
                empty=1.0,
            )
            losses = self.index_to_loss(index)
            if weight is not None:
                losses = losses * weight.to(losses)
            if self.reduction == "none":
                keep = active.any(0, keepdim=True) if level == "batch" else active
                losses = torch.where(keep, losses, torch.zeros_like(losses))
                return self.shape_none(losses, level, prepared.x.ndim - 2)
            value = level_weight * self.reduce_level(losses, active, level)
            total = value if total is None else total + value
        assert total is not None  # at least one level, checked in __init__
        return total

    def shape_none(self, losses: torch.Tensor, level: Aggregation, n_spatial: int) -> torch.Tensor:
        """``reduction="none"`` output: ``[N, C, 1, ...]`` (``N = 1`` at the batch level)."""
        return losses.reshape(*losses.shape, *([1] * n_spatial))


class JaccardMetricLoss(JDTLoss):
    """The Jaccard metric loss: :class:`JDTLoss` with ``alpha = beta = 1``.

    ``1 - (tp + s_nr) / (tp + fp + fn + s_dr)`` with semimetric counts; without smoothing it is a
    metric on soft labels (reflexive, positive, symmetric, triangle inequality). Takes every
    argument of :class:`JDTLoss` except ``alpha`` and ``beta``, with the same defaults.

    Raises:
        TypeError: ``alpha`` or ``beta`` given; otherwise as :class:`JDTLoss`.

    Example:
        >>> import torch
        >>> from monai_jdt.losses import JaccardMetricLoss
        >>> x = torch.tensor([[[0.9, 0.1, 0.6]]])  # B=1, C=1, N=3
        >>> y = torch.tensor([[[1.0, 0.0, 0.5]]])
        >>> loss = JaccardMetricLoss(smooth_nr=0.0, smooth_dr=0.0)
        >>> round(loss(x, y).item(), 4)  # tp = 0.9 + 0.0 + 0.5 = 1.4; 1 - 1.4 / (1.6 + 1.5 - 1.4)
        0.1765
    """

    def __init__(self, **kwargs: Any) -> None:
        check_keywords(type(self).__name__, JDTLoss, kwargs, fixed=("alpha", "beta"))
        super().__init__(alpha=1.0, beta=1.0, **kwargs)


class DiceSemimetricLoss(JDTLoss):
    """Dice semimetric loss, a drop-in for ``monai.losses.DiceLoss``.

    ``1 - (2 tp + smooth_nr) / (2 tp + fp + fn + smooth_dr)`` (Dice as MONAI writes it;
    ``jaccard=True``: ``1 - (2 tp + smooth_nr) / (2 (tp + fp + fn) + smooth_dr)``). With
    ``soft_label=False`` it returns exactly what ``DiceLoss`` returns for the same arguments; the
    default ``soft_label=True`` uses the semimetric counts (equal for hard labels, correct for
    soft ones). MONAI's defaults: every class, one value per (image, class)
    (``batch=False``, i.e. ``aggregation="image"``).

    ``reduction="none"`` gives MONAI's shapes: ``[B, C, 1, ...]``, and ``[C, 1, ...]`` (one
    trailing 1 per spatial dim) for ``batch=True``. The JDT options of :class:`JDTLoss`
    (``aggregation``, ``classes``, ``threshold``, ``gamma``, ``log_loss``, ``norm``,
    ``sync_counts``, ``check_values``) are keyword arguments.

    Raises:
        ValueError: ``squared_pred=True`` with ``norm=1``; otherwise as :class:`JDTLoss`.

    Example:
        On hard labels the value is MONAI's ``DiceLoss``; on soft labels the semimetric counts
        make it 0 at the target.

        >>> import torch
        >>> from monai.losses import DiceLoss
        >>> from monai_jdt.losses import DiceSemimetricLoss
        >>> g = torch.Generator().manual_seed(0)
        >>> logits = torch.randn(2, 3, 8, 8, generator=g)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8), generator=g)
        >>> ours = DiceSemimetricLoss(to_onehot_y=True, softmax=True)(logits, labels)
        >>> theirs = DiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
        >>> torch.allclose(ours, theirs)
        True
        >>> probs = torch.softmax(logits, 1)
        >>> DiceSemimetricLoss(smooth_nr=0.0, smooth_dr=0.0)(probs, probs).abs().item() < 1e-6
        True
    """

    smooth_scale = 0.5
    default_aggregation = "image"

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
        batch: bool | None = None,
        weight: WeightArg = None,
        soft_label: bool = True,
        ignore_index: int | None = None,
        *,
        classes: ClassesArg | None = "all",
        norm: int | None = None,
        **jdt_options: Any,
    ) -> None:
        check_keywords(type(self).__name__, JDTLoss, jdt_options, fixed=("alpha", "beta"))
        if check_bool("squared_pred", squared_pred) and norm not in (None, 2):
            raise ValueError(f"squared_pred=True means norm=2, but norm={norm!r} was given.")
        ratio = 1.0 if check_bool("jaccard", jaccard) else 0.5
        super().__init__(
            alpha=ratio,
            beta=ratio,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=weight,
            soft_label=soft_label,
            ignore_index=ignore_index,
            classes=classes,
            norm=2 if squared_pred else (norm or 1),
            **jdt_options,
        )

    def shape_none(self, losses: torch.Tensor, level: Aggregation, n_spatial: int) -> torch.Tensor:
        if level == "batch":  # MONAI views its [C] result as [C, 1, ...]
            losses = losses[0]
        return losses.reshape(*losses.shape[:2], *([1] * n_spatial))


class TverskySemimetricLoss(JDTLoss):
    """Tversky semimetric loss, a drop-in for ``monai.losses.TverskyLoss``.

    ``1 - (tp + smooth_nr) / (tp + alpha*fp + beta*fn + smooth_dr)``; ``soft_label=False``
    returns exactly what ``TverskyLoss`` returns for the same arguments. MONAI's defaults:
    ``alpha = beta = 0.5``, every class, one value per (image, class) (``batch=False``).
    ``reduction="none"`` gives MONAI's shapes: ``[B, C]``, or ``[C]`` for ``batch=True``. The
    JDT options of :class:`JDTLoss` are keyword arguments.

    Raises:
        As :class:`JDTLoss`.

    Example:
        >>> import torch
        >>> from monai_jdt.losses import TverskySemimetricLoss
        >>> x = torch.tensor([[[0.8, 0.4, 0.0]]])  # B=1, C=1, N=3
        >>> y = torch.tensor([[[1.0, 0.0, 1.0]]])  # tp = 0.8, fp = 0.4, fn = 1.2
        >>> loss = TverskySemimetricLoss(alpha=0.3, beta=0.7, smooth_nr=0.0, smooth_dr=0.0)
        >>> round(loss(x, y).item(), 4)  # 1 - 0.8 / (0.8 + 0.3 * 0.4 + 0.7 * 1.2)
        0.5455
    """

    default_aggregation = "image"

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Activation | None = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool | None = None,
        soft_label: bool = True,
        ignore_index: int | None = None,
        *,
        classes: ClassesArg | None = "all",
        **jdt_options: Any,
    ) -> None:
        check_keywords(type(self).__name__, JDTLoss, jdt_options)
        super().__init__(
            alpha=alpha,
            beta=beta,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            ignore_index=ignore_index,
            classes=classes,
            **jdt_options,
        )

    def shape_none(self, losses: torch.Tensor, level: Aggregation, n_spatial: int) -> torch.Tensor:
        return losses[0] if level == "batch" else losses


def jdt_loss_class(name: str) -> type[JDTLoss]:
    """The loss class of a short name: ``"jaccard"``, ``"dice"`` or ``"tversky"``."""
    classes: Mapping[str, type[JDTLoss]] = {
        "jaccard": JaccardMetricLoss,
        "dice": DiceSemimetricLoss,
        "tversky": TverskySemimetricLoss,
    }
    check_choice("jdt", name, tuple(classes))
    return classes[name]
