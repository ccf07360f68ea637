"""Ignite handler for MONAI workflows: ``FineGrainedIoU`` wraps ``FineGrainedIoUMetric``.

It plays the role MONAI's ``MeanDice`` plays for ``DiceMetric``, so a bundle's evaluator names
it as a key metric::

    key_val_metric:
      val_miou_d:
        _target_: FineGrainedIoU          # after imports: ["$import monai_jdt"]
        include_background: false
        level: batch
        report_all: true
        output_transform: "$monai.handlers.from_engine(['pred', 'label'])"

``engine.state.metrics[name]`` gets the chosen scalar; with ``report_all=True`` also the six
scores as ``<name>_miou_d`` ... ``<name>_mdice_c``; with ``save_details=True``
``engine.state.metric_details[name]`` holds the ``[N, C]`` per-image scores (NaN where the
reference lacks the class), the layout MONAI's ``MetricsSaver`` writes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from monai.handlers import IgniteMetricHandler

from monai_jdt.counts import Aggregation
from monai_jdt.metrics.fine_grained import FineGrainedIoUMetric, OverlapIndex

__all__ = ["FineGrainedIoU"]


def _identity(x: Any) -> Any:
    return x


class FineGrainedIoU(IgniteMetricHandler):
    """Fine-grained IoU / Dice (mIoU^D, ^I, ^C) as an ignite metric for MONAI engines.

    Args:
        include_background, level, index, num_classes: as ``FineGrainedIoUMetric``.
        report_all: also put all six scores in ``engine.state.metrics`` as ``<name>_<key>``.
        output_transform: maps ``engine.state.output`` to ``(y_pred, y)``.
        save_details: store the per-image scores in ``engine.state.metric_details[name]``.
    """

    def __init__(
        self,
        include_background: bool = True,
        level: Aggregation = "batch",
        index: OverlapIndex = "jaccard",
        num_classes: int | None = None,
        report_all: bool = False,
        output_transform: Callable = _identity,
        save_details: bool = True,
    ) -> None:
        self.fine_metric = FineGrainedIoUMetric(
            include_background=include_background, level=level, index=index, num_classes=num_classes
        )
        self.report_all = report_all
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
        if self.report_all:
            for key, value in self.fine_metric.aggregate_all().items():
                engine.state.metrics[f"{name}_{key}"] = value
