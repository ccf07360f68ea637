"""``GET /healthz`` (the process answers) and ``GET /readyz`` (it can score now)."""

from __future__ import annotations

import asyncio
import tempfile

from fastapi import APIRouter

from jdt_service.dependencies import SettingsDep
from jdt_service.device import probe_device, resolve_device
from jdt_service.errors import ApiError
from jdt_service.schemas import ErrorResponse, Health, Readiness

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
async def healthz() -> Health:
    return Health(status="ok")


def _temp_dir_writable(directory: str | None) -> bool:
    try:
        with tempfile.NamedTemporaryFile(dir=directory, prefix="jdt-ready-") as f:
            f.write(b"ok")
        return True
    except OSError:
        return False


@router.get(
    "/readyz",
    summary="Readiness: the scoring device answers and the temp dir is writable",
    responses={503: {"model": ErrorResponse, "description": "Not ready (code not_ready)."}},
)
async def readyz(settings: SettingsDep) -> Readiness:
    device = resolve_device(settings.device)
    temp_dir = None if settings.temp_dir is None else str(settings.temp_dir)
    checks = {
        "device": await asyncio.to_thread(probe_device, device),
        "temp_dir_writable": await asyncio.to_thread(_temp_dir_writable, temp_dir),
    }
    failed = [name for name, ok in checks.items() if not ok]
    if failed:
        raise ApiError(503, "not_ready", f"failed readiness checks: {', '.join(failed)}")
    return Readiness(status="ready", device=device, checks=checks)
