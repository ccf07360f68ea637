"""Fine-grained IoU / Dice for MONAI validation loops: ``FineGrainedIoUMetric``.

Each call adds, per image and class, the soft counts ``tp, fp, fn`` of the prediction against
the reference (``monai_jdt.counts.soft_counts``, summed over the spatial axes) to MONAI's
cumulative buffers; ``aggregate()`` all-gathers those buffers across ranks (MONAI's own
``evenly_divisible_all_gather``) and reduces them with ``monai_jdt.aggregation.aggregate_scores``:

* ``level="batch"`` (mIoU^D): pool the counts of every image, one ratio per class, mean over
  the classes with any count (``tp + fp + fn > 0``: a class predicted where no reference
  holds it scores 0; ``monai_jdt.aggregation.scored_pairs``);
* ``level="image"`` (mIoU^I): one ratio per (image, class), mean over the classes present in
  that image's reference, then over the images;
* ``level="class"`` (mIoU^C): one ratio per (image, class), mean over the images whose
  reference holds the class, then over the classes.

The ratio is the Jaccard index ``tp / (tp + fp + fn)`` (``index="jaccard"``) or the Dice score
``2tp / (2tp + fp + fn)`` (``index="dice"``). A class is *present* in an image when its
reference count ``tp + fn`` is above zero; a class predicted where the reference lacks it adds
false positives at the batch level (and counts there, also when no reference holds it) but
gets no per-image score (as MONAI's ``ignore_empty``).

Because only ``3 * C`` numbers per image are buffered, the all-gather at the end of an epoch is
tiny whatever the volume size, and the result over N ranks equals the result over the whole
validation set on one process.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

import torch
from monai.metrics import CumulativeIterationMetric

from monai_jdt.counts import (
    AGGREGATIONS,
    Aggregation,
    SoftCounts,
    aggregate_scores,
    scored_pairs,
    soft_counts,
    tversky_index,
)
from monai_jdt.losses._options import check_choice
from monai_jdt.metrics._checks import buffer_tensor, check_tensors, first_class

__all__ = ["INDICES", "SCORE_KEYS", "FineGrainedIoUMetric", "OverlapIndex"]

OverlapIndex = Literal["jaccard", "dice"]
#: Tversky (alpha, beta) of each overlap index.
INDICES: Mapping[str, tuple[float, float]] = {"jaccard": (1.0, 1.0), "dice": (0.5, 0.5)}
#: The six scores of ``FineGrainedIoUMetric.aggregate_all``: key -> (index, level).
SCORE_KEYS: Mapping[str, tuple[OverlapIndex, Aggregation]] = {
    "miou_d": ("jaccard", "batch"),
    "miou_i": ("jaccard", "image"),
    "miou_c": ("jaccard", "class"),
    "mdice_d": ("dice", "batch"),
    "mdice_i": ("dice", "image"),
    "mdice_c": ("dice", "class"),
}


class FineGrainedIoUMetric(CumulativeIterationMetric):
    """Cumulative mIoU^D / mIoU^I / mIoU^C (and the Dice versions) over a validation set.

    Args:
        include_background: whether channel 0 takes part. Ignored (with a warning, as MONAI
            does) when the prediction has a single channel.
        level: the aggregation ``aggregate()`` returns: ``"batch"`` (mIoU^D), ``"image"``
            (mIoU^I) or ``"class"`` (mIoU^C).
        index: ``"jaccard"`` (IoU) or ``"dice"``.
        num_classes: the number of classes including the background, needed only when ``y_pred``
            and/or ``y`` come as ``B, 1, *spatial`` class-index maps (they are then one-hot
            encoded); ``None`` when both already have one channel per class.

    Inputs (``metric(y_pred, y)``): ``B, C, *spatial`` tensors (or lists of ``C, *spatial``
    tensors) of equal shape with values in [0, 1], typically one-hot (softmax + argmax) or
    thresholded sigmoid outputs; soft values give soft counts. With ``num_classes`` either may
    instead be a ``B, 1, *spatial`` map of integer labels in ``[0, num_classes)``.

    Each call returns (and buffers) the counts as a ``B, 3, C`` tensor: ``tp, fp, fn``.

    Raises:
        ValueError: an unknown ``level`` or ``index``, ``num_classes`` not an int >= 2; on a
            call, inputs that are not ``B, C, *spatial``, of different shapes, with values
            outside [0, 1] or NaN, or label maps with non-integer or out-of-range labels;
            :meth:`aggregate` before any batch.
        TypeError: inputs that are not tensors (or lists of tensors).

    Example:
        Two one-image batches of one foreground class (``num_classes=2`` label maps): image 1
        has IoU 2/3 (tp 2, fp 1), image 2 has IoU 1/2 (tp 1, fn 1).

        >>> import torch
        >>> from monai_jdt.metrics import FineGrainedIoUMetric
        >>> metric = FineGrainedIoUMetric(include_background=False, num_classes=2)
        >>> _ = metric(torch.tensor([[[1, 1, 1, 0]]]), torch.tensor([[[1, 1, 0, 0]]]))
        >>> _ = metric(torch.tensor([[[1, 0, 0, 0]]]), torch.tensor([[[1, 1, 0, 0]]]))
        >>> scores = metric.aggregate_all()
        >>> round(scores["miou_d"], 4)  # pooled: tp 3 / (3 + fp 1 + fn 1)
        0.6
        >>> round(scores["miou_i"], 4)  # (2/3 + 1/2) / 2
        0.5833
    """

    def __init__(
        self,
        include_background: bool = True,
        level: Aggregation = "batch",
        index: OverlapIndex = "jaccard",
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        check_choice("level", level, AGGREGATIONS)
        check_choice("index", index, tuple(INDICES))
        if num_classes is not None and (
            isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2
        ):
            raise ValueError(f"num_classes must be None or an int >= 2, got {num_classes!r}.")
        self.include_background = include_background
        self.level: Aggregation = level
        self.index: OverlapIndex = index
        self.num_classes = num_classes

    # -- per batch ---------------------------------------------------------------------------

    def _as_channels(self, name: str, t: torch.Tensor) -> torch.Tensor:
        """``t`` as a float ``B, C, *spatial`` tensor in [0, 1] (one-hot encoding index maps)."""
        if t.ndim < 3:
            raise ValueError(
                f"{name} must be batch-first B, C, *spatial (at least 3 dims), got shape "
                f"{tuple(t.shape)}."
            )
        if self.num_classes is not None and t.shape[1] == 1:
            labels = t.detach()
            if labels.is_floating_point() and not torch.equal(labels, labels.round()):
                raise ValueError(f"{name} is a one-channel label map but holds non-integer values.")
            labels = labels.long()
            smallest, largest = int(labels.min()), int(labels.max())
            if smallest < 0 or largest >= self.num_classes:
                raise ValueError(
                    f"{name} labels must lie in [0, {self.num_classes}) for num_classes="
                    f"{self.num_classes}, got values in [{smallest}, {largest}]."
                )
            onehot = torch.zeros(
                (t.shape[0], self.num_classes, *t.shape[2:]), dtype=torch.float32, device=t.device
            )
            return onehot.scatter_(1, labels, 1.0)
        if self.num_classes is not None and t.shape[1] != self.num_classes:
            raise ValueError(
                f"{name} has {t.shape[1]} channels but num_classes={self.num_classes}; give one "
                "channel per class or a one-channel label map."
            )
        t = t.float() if not t.is_floating_point() else t
        lo, hi = torch.aminmax(t)
        if not (lo >= 0 and hi <= 1):  # also catches NaN
            raise ValueError(
                f"{name} values must lie in [0, 1] (one-hot or probabilities), got values in "
                f"[{float(lo)}, {float(hi)}]; pass num_classes for label maps."
            )
        return t

    def _compute_tensor(
        self, y_pred: torch.Tensor, y: torch.Tensor | None = None, **kwargs: Any
    ) -> torch.Tensor:
        """Per-(image, class) counts of one batch, shape ``B, 3, C`` (``tp, fp, fn``)."""
        y_pred, y = check_tensors(y_pred, y)
        x = self._as_channels("y_pred", y_pred)
        t = self._as_channels("y", y)
        if x.shape != t.shape:
            raise ValueError(
                f"y_pred and y must have the same shape after one-hot encoding, got "
                f"{tuple(x.shape)} and {tuple(t.shape)}."
            )
        first = first_class(x.shape[1], self.include_background)
        x, t = x[:, first:], t[:, first:]
        counts = soft_counts(x, t, dims=range(2, x.ndim))
        return torch.stack(tuple(counts), dim=1)

    # -- over the gathered buffers -------------------------------------------------------------

    def _gathered_counts(self) -> SoftCounts:
        """The ``[N, C]`` counts of every image seen on every rank, in float64."""
        data = buffer_tensor(self)
        tp, fp, fn = data.to(torch.float64).unbind(1)
        return SoftCounts(tp, fp, fn)

    def score(
        self, level: Aggregation | None = None, index: OverlapIndex | None = None
    ) -> torch.Tensor:
        """One aggregate (0-dim float64 tensor); defaults to the constructor's level and index.

        NaN when no reference holds any counted class.

        Raises:
            ValueError: an unknown ``level`` or ``index``, or no batch seen since ``reset()``.
        """
        level = self.level if level is None else level
        index = self.index if index is None else index
        check_choice("level", level, AGGREGATIONS)
        check_choice("index", index, tuple(INDICES))
        counts = self._gathered_counts()
        alpha, beta = INDICES[index]
        return aggregate_scores(counts, scored_pairs(counts, level), level, alpha, beta)

    def aggregate(self) -> torch.Tensor:
        """The score chosen at construction (``level``, ``index``) as a 0-dim tensor."""
        return self.score()

    def aggregate_all(self) -> dict[str, float]:
        """All six scores: ``miou_d, miou_i, miou_c, mdice_d, mdice_i, mdice_c`` (floats)."""
        return {key: float(self.score(level, index)) for key, (index, level) in SCORE_KEYS.items()}

    def per_image_scores(self, index: OverlapIndex | None = None) -> torch.Tensor:
        """``[N, C]`` score of every (image, class); NaN where the reference lacks the class."""
        index = self.index if index is None else index
        check_choice("index", index, tuple(INDICES))
        counts = self._gathered_counts()
        scores = tversky_index(counts, *INDICES[index])
        return torch.where(counts.tp + counts.fn > 0, scores, torch.full_like(scores, float("nan")))
