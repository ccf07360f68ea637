"""The FastAPI app factory: ``create_app(settings=None)``.

``settings`` default to the ``JDT_*`` environment (:class:`jdt_service.settings.Settings`).
Each app owns its metrics registry and its scoring pool, so several apps (tests) never share
state; routes reach them through :mod:`jdt_service.dependencies`. Everything under ``/v1``
is one router (:mod:`jdt_service.routers.v1`) behind the API-key dependency. On start-up the
app warns about ``JDT_*`` variables that match no setting (when it reads the environment)
and removes upload folders left by killed processes; it also fixes glibc's allocator
thresholds for the scoring threads (:mod:`monai_jdt.scoring.allocator`).
``uvicorn jdt_service.app:create_app --factory`` serves it directly.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware

from jdt_service.auth import require_api_key
from jdt_service.errors import install_error_handlers
from jdt_service.gc_freeze import freeze_startup_objects, thaw
from jdt_service.logs import RequestLogMiddleware, configure_logging
from jdt_service.routers import health, info, jobs, metrics, scores, v1  # noqa: F401

# (info and scores add their routes to v1.router when imported)
from jdt_service.scoring_pool import ScoringPool
from jdt_service.security_headers import SecurityHeadersMiddleware
from jdt_service.service_metrics import ServiceMetrics
from jdt_service.settings import Settings, unknown_variables
from jdt_service.web import router as web_router
from monai_jdt import __version__
from monai_jdt.scoring.allocator import tune_allocator

__all__ = ["create_app"]

logger = logging.getLogger("jdt_service")

DESCRIPTION = """\
Score segmentation volumes: upload a prediction and a reference (NIfTI, `.nii` or `.nii.gz`;
NRRD or single-file MetaImage with the `formats` extra) and get Dice, Jaccard, precision,
recall (and Tversky) per label, computed by `monai_jdt.scoring` on the server's device. The
report is the same JSON that `monai-jdt score --json` prints.

Every error answers `{"detail": {"code": ..., "message": ...}}`. When API keys are
configured, `/v1/*` needs `Authorization: Bearer KEY`; `/healthz`, `/readyz` and `/metrics`
stay open.
"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the service app from ``settings`` (default: read from the environment)."""
    from_environment = settings is None
    settings = Settings() if settings is None else settings
    configure_logging(settings)
    if from_environment:
        for name in unknown_variables():
            logger.warning("unknown setting %s is ignored (see docs/service.md, Configure)", name)
    service_metrics = ServiceMetrics()
    pool = ScoringPool(settings, service_metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if tune_allocator():
            logger.debug("glibc allocator thresholds set for the scoring threads")
        pool.remove_stale_workdirs()
        frozen = freeze_startup_objects()
        logger.debug("%d start-up objects frozen out of full garbage collections", frozen)
        yield
        pool.shutdown()
        thaw()

    app = FastAPI(
        title="monai-jdt scoring service",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # served by jdt_service.web from local files (no CDN)
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.settings = settings
    app.state.metrics = service_metrics
    app.state.pool = pool
    install_error_handlers(app)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(web_router)
    app.include_router(v1.router, dependencies=[Depends(require_api_key)])
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
    app.add_middleware(SecurityHeadersMiddleware)  # outermost: the log's own 500 too
    return app
