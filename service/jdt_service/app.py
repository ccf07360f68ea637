"""The FastAPI app factory: ``create_app(settings=None)``.

``settings`` default to the ``JDT_*`` environment (:class:`jdt_service.settings.Settings`).
Each app owns its metrics registry and its scoring pool, so several apps (tests) never share
state. ``uvicorn jdt_service.app:create_app --factory`` serves it directly.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from jdt_service.auth import require_api_key
from jdt_service.errors import install_error_handlers
from jdt_service.limits import ScoringPool
from jdt_service.logs import RequestLogMiddleware, configure_logging
from jdt_service.metrics import ServiceMetrics
from jdt_service.routers import health, info, jobs, metrics, scores
from jdt_service.settings import Settings
from monai_jdt import __version__

__all__ = ["create_app"]

DESCRIPTION = """\
Score segmentation volumes: upload a prediction and a reference (NIfTI, `.nii` or `.nii.gz`)
and get Dice, Jaccard, precision, recall (and Tversky) per label, computed by
`monai_jdt.scoring` on the server's device. The report is the same JSON that
`monai-jdt score --json` prints.

Every error answers `{"detail": {"code": ..., "message": ...}}`. When API keys are
configured, `/v1/*` needs `Authorization: Bearer KEY`; `/healthz`, `/readyz` and `/metrics`
stay open.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app from ``settings`` (default: read from the environment)."""
    settings = Settings() if settings is None else settings
    configure_logging(settings)
    service_metrics = ServiceMetrics()
    pool = ScoringPool(
        settings.max_concurrency,
        settings.max_queue,
        settings.retry_after,
        service_metrics,
        settings.temp_dir,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        pool.shutdown()

    app = FastAPI(
        title="monai-jdt scoring service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = service_metrics
    app.state.pool = pool
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    v1_auth = [Depends(require_api_key)]
    app.include_router(info.router, dependencies=v1_auth)
    app.include_router(scores.router, dependencies=v1_auth)
    app.include_router(jobs.router)  # /v1/jobs, /v1/reference-sets and the job runner
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type", "X-Request-ID"],
            expose_headers=["X-Request-ID", "Retry-After"],
        )
    app.add_middleware(RequestLogMiddleware, metrics=service_metrics)
    return app
