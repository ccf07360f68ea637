"""Ignite handler for MONAI workflows: ``FineGrainedIoU`` wraps ``FineGrainedIoUMetric``.

It plays the role MONAI's ``MeanDice`` plays for ``DiceMetric``, so a bundle's evaluator names
it as a key metric::

    key_val_metric:
      val_miou_d:
        _target_: FineGrainedIoU          # after imports: ["$import monai_jdt"]
        include_background: false
        level: batch
        report_prefix: val_
        output_transform: "$monai.handlers.from_engine(['pred', 'label'])"

``engine.state.metrics[name]`` gets the chosen scalar; with ``report_prefix`` (e.g. ``"val_"``)
also all six scores, as ``val_miou_d``, ``val_miou_i``, ``val_miou_c``, ``val_mdice_d``,
``val_mdice_i`` and ``val_mdice_c``; with ``save_details=True``
``engine.state.metric_details[name]`` holds the ``[N, C]`` per-image scores (NaN where the
reference lacks the class), the layout MONAI's ``MetricsSaver`` writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.handlers import IgniteMetricHandler

from monai_jdt.aggregation import Aggregation
from monai_jdt.metrics.fine_grained import FineGrainedIoUMetric, OverlapIndex

__all__ = ["FineGrainedIoU"]


def _identity(x: Any) -> Any:
    return x


class FineGrainedIoU(IgniteMetricHandler):
    """Fine-grained IoU / Dice (mIoU^D, ^I, ^C) as an ignite metric for MONAI engines.

    Args:
        include_background, level, index, num_classes: as ``FineGrainedIoUMetric``.
        report_prefix: if given, also put all six scores in ``engine.state.metrics`` as
            ``<report_prefix><key>`` (keys ``miou_d, miou_i, miou_c, mdice_d, mdice_i, mdice_c``).
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: store the per-image scores in ``engine.state.metric_details[name]``.

    Raises:
        ValueError: the arguments ``FineGrainedIoUMetric`` refuses.
        TypeError: a ``report_prefix`` that is not a str.

    Example:
        >>> from monai.handlers import from_engine
        >>> from monai_jdt.metrics import FineGrainedIoU
        >>> handler = FineGrainedIoU(
        ...     include_background=False,
        ...     level="image",
        ...     report_prefix="val_",
        ...     output_transform=from_engine(["pred", "label"]),
        ... )
        >>> handler.fine_metric.level
        'image'
    """

    def __init__(
        self,
        include_background: bool = True,
        level: Aggregation = "batch",
        index: OverlapIndex = "jaccard",
        num_classes: int | None = None,
        report_prefix: str | None = None,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        self.fine_metric = FineGrainedIoUMetric(
            include_background=include_background, level=level, index=index, num_classes=num_classes
        )
        if report_prefix is not None and not isinstance(report_prefix, str):
            raise TypeError(f"report_prefix must be a str or None, got {report_prefix!r}.")
        self.report_prefix = report_prefix
        super().__init__(
            metric_fn=self.fine_metric, output_transform=output_transform, save_details=save_details
        )

    def compute(self) -> Any:
        result = super().compute()
        if self.save_details and self._engine is not None and self._name is not None:
            details = self._engine.state.metric_details  # type: ignore[attr-defined]
            details[self._name] = self.fine_metric.per_image_scores()
        return result

    def completed(self, engine: Any, name: str) -> None:
        super().completed(engine, name)
        if self.report_prefix is not None:
            for key, value in self.fine_metric.aggregate_all().items():
                engine.state.metrics[f"{self.report_prefix}{key}"] = value
