"""FastAPI dependencies: the app's settings, metrics, scoring pool and scoring function.

Routes declare what they use (``settings: SettingsDep``) instead of reading
``request.app.state``; tests replace any of them with ``app.dependency_overrides``. They are
``async`` although they never await: FastAPI runs a plain ``def`` dependency on its thread
pool, a thread hop per dependency and request.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, Request

from jdt_service.scoring_pool import ScoringPool
from jdt_service.service_metrics import ServiceMetrics
from jdt_service.settings import Settings
from monai_jdt.scoring import CaseReport, score_files

__all__ = [
    "MetricsDep",
    "PoolDep",
    "Scorer",
    "ScorerDep",
    "SettingsDep",
    "get_metrics",
    "get_pool",
    "get_scorer",
    "get_settings",
]

#: ``score_files``'s signature:
#: ``(prediction, reference, options, *, case_id, inspected) -> CaseReport``
Scorer = Callable[..., CaseReport]


async def get_settings(request: Request) -> Settings:
    """The settings the app was built with."""
    settings: Settings = request.app.state.settings
    return settings


async def get_metrics(request: Request) -> ServiceMetrics:
    """The app's Prometheus metrics."""
    metrics: ServiceMetrics = request.app.state.metrics
    return metrics


async def get_pool(request: Request) -> ScoringPool:
    """The app's scoring pool (uploads, jobs, memory budget)."""
    pool: ScoringPool = request.app.state.pool
    return pool


async def get_scorer() -> Scorer:
    """The function that scores two files: :func:`monai_jdt.scoring.score_files`."""
    return score_files


SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[ServiceMetrics, Depends(get_metrics)]
PoolDep = Annotated[ScoringPool, Depends(get_pool)]
ScorerDep = Annotated[Scorer, Depends(get_scorer)]
