"""``GET /v1/info``: version, device, GPU and the limits in force."""

from __future__ import annotations

import asyncio
from typing import Annotated

from fastapi import Depends

from jdt_service.auth import key_table
from jdt_service.dependencies import SettingsDep
from jdt_service.device import gpu_info, resolve_device
from jdt_service.routers.v1 import router
from jdt_service.schemas import ErrorResponse, Info, Limits
from jdt_service.teams import KeyTable
from monai_jdt import __version__
from monai_jdt.scoring import SCHEMA_VERSION

__all__ = ["router"]


@router.get(
    "/info",
    tags=["info"],
    summary="Version, scoring device and limits",
    responses={401: {"model": ErrorResponse, "description": "unauthorized (API keys set)."}},
)
async def info(settings: SettingsDep, table: Annotated[KeyTable, Depends(key_table)]) -> Info:
    device = resolve_device(settings.device)
    return Info(
        version=__version__,
        schema_version=str(SCHEMA_VERSION),
        device=device,
        configured_device=settings.device,
        gpu=await asyncio.to_thread(gpu_info, device),
        auth_required=not table.open,
        limits=Limits(
            max_upload_bytes=settings.max_upload_bytes,
            max_voxels=settings.max_voxels,
            max_concurrency=settings.max_concurrency,
            max_queue=settings.max_queue,
            request_timeout_s=settings.request_timeout,
            max_job_bytes=settings.max_job_bytes,
            memory_budget_bytes=settings.memory_budget,
            job_memory_budget_bytes=settings.job_memory_budget,
        ),
    )
