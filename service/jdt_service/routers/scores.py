"""``POST /v1/scores``: score one uploaded prediction/reference pair with the scoring core.

The flow of one request, each step bounded:

1. upload admission (503 ``server_busy`` + ``Retry-After`` when ``max_uploads`` bodies are
   arriving or the scoring queue is full), before any byte of the body is read;
2. the multipart body streams into the request's work directory (413 past the body limit,
   408 below the minimum upload rate);
3. the options are parsed (422);
4. the two headers give the job's memory estimate (:mod:`jdt_service.job_memory`); the job
   takes a scoring place and its memory from the budget (413 ``job_too_large``, 503
   ``server_busy``) only now that the files are on disk;
5. ``score_files`` runs on a scoring thread: it reads both NIfTI headers first and refuses a
   volume whose declared shape is past ``max_voxels`` (413) before anything is decompressed,
   and files that are not NIfTI or are corrupt (415 / 422); a CUDA out-of-memory error re-runs
   the job on the CPU and is counted in ``jdt_gpu_fallbacks_total``. On a server that holds
   no other request (with ``idle_inline``, the default) a small label pair (files of at most
   ``INLINE_UPLOAD_BYTES``, one byte per voxel, at most ``INLINE_VOXELS`` voxels: see
   ``scored_in_calling_thread``) is scored on the event loop instead: the thread hand-off
   would cost about a twentieth of such a case, and no other request waits. Such a job is not
   cut short by ``request_timeout`` (it takes milliseconds);
6. the report of ``monai_jdt.scoring.score_files`` is returned as is (``CaseReport.to_dict()``).

The whole request is bounded by ``request_timeout`` (504). The work directory is deleted on
every path (see :class:`jdt_service.scoring_pool.Admission`). The scoring function is a
dependency (:func:`jdt_service.dependencies.get_scorer`), so tests can replace it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from jdt_service.dependencies import MetricsDep, PoolDep, Scorer, ScorerDep, SettingsDep
from jdt_service.errors import ApiError, scoring_codes_by_status
from jdt_service.forms import OPTION_FIELDS, form_schema, options_from_form
from jdt_service.job_memory import boundary_refusal, job_bytes
from jdt_service.overlays import (
    OVERLAYS_FIELD,
    OverlayRequest,
    ScoreReportWithOverlays,
    add_overlay_fields,
)
from jdt_service.routers.v1 import router
from jdt_service.schemas import ErrorResponse
from jdt_service.scoring_pool import Admission
from jdt_service.service_metrics import ServiceMetrics
from jdt_service.settings import Settings
from jdt_service.uploads import receive_form
from monai_jdt.scoring import CaseReport, ScoringOptions, score_files
from monai_jdt.scoring.files import scored_in_calling_thread
from monai_jdt.scoring.sitk_formats import VolumeInfo, inspect_volume

__all__ = ["router"]


#: codes the HTTP layer answers with, by status; the scoring core's codes are added below
_HTTP_CODES: dict[int, list[str]] = {
    400: ["malformed_multipart", "client_disconnected"],
    401: ["unauthorized (API keys are configured and the bearer key is missing or wrong)"],
    408: ["upload_too_slow (the body arrived slower than the minimum upload rate)"],
    413: [
        "upload_too_large",
        "field_too_large",
        "job_too_large (memory estimate)",
        "boundary_too_large (boundary metrics above JDT_MAX_BOUNDARY_VOXELS)",
    ],
    415: ["unsupported_media_type (the body is not multipart/form-data)"],
    422: ["missing_field", "unknown_option", "duplicate_field", "invalid_option"],
    500: ["internal_error (a bug in the service; please report it with the request id)"],
    503: ["server_busy (with Retry-After: slots, queue, uploads or memory)", "out_of_memory"],
    504: ["timeout (the request took longer than the configured request timeout)"],
}


def _error_codes_by_status() -> dict[int, list[str]]:
    """The HTTP layer's codes plus every ``ScoringError`` subclass's, by HTTP status."""
    codes = {status: list(names) for status, names in _HTTP_CODES.items()}
    for status, names in scoring_codes_by_status().items():
        codes.setdefault(status, []).extend(n for n in names if n not in codes[status])
    return dict(sorted(codes.items()))


SCORE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ScoreReportWithOverlays,
        "description": "The score report, the same JSON as `monai-jdt score --json`.",
    },
    **{
        status: {"model": ErrorResponse, "description": "Error codes: " + ", ".join(names) + "."}
        for status, names in _error_codes_by_status().items()
    },
}


#: the largest upload scored on the event loop: inflating a file takes a time set by its size
#: (a file of empty gzip members or stored blocks, which inflate to nothing, about 3 µs per
#: 20 bytes), so this bounds it to some 50 ms; a small label map takes 10 to 100 KiB
INLINE_UPLOAD_BYTES = 256 * 1024

_CPU_ALLOC_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator message


@dataclass(frozen=True)
class _JobResult:
    report: CaseReport
    queue_s: float
    score_s: float
    gpu_fallback: bool


def _score_job(
    scorer: Scorer,
    prediction: Path,
    reference: Path,
    options: ScoringOptions,
    inspected: tuple[VolumeInfo, VolumeInfo],
    case_id: str | None,
    metrics: ServiceMetrics,
    submitted: float,
) -> _JobResult:
    """Runs on a scoring thread; retries on the CPU once if CUDA runs out of memory.
    ``inspected``: the headers the memory estimate read (not read again)."""
    started = time.perf_counter()
    fallback = False
    try:
        report = scorer(prediction, reference, options, inspected=inspected)
    except torch.OutOfMemoryError:
        fallback = True
        metrics.gpu_fallbacks.inc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        cpu = options.replace(device="cpu")
        report = scorer(prediction, reference, cpu, inspected=inspected)
    report = dataclasses.replace(report, case_id=case_id)  # null unless the client gave one
    ended = time.perf_counter()
    metrics.scoring_seconds.labels(str(report.device)).observe(ended - started)
    return _JobResult(report, started - submitted, ended - started, fallback)


def _estimate(
    prediction: Path,
    reference: Path,
    options: ScoringOptions,
    overlays: OverlayRequest | None,
    max_boundary_voxels: int,
) -> tuple[int, tuple[VolumeInfo, VolumeInfo]]:
    """The job's memory from the headers (the header errors are the scoring core's): the
    scoring's, or the overlays' when they are asked for and need more; and the two headers.

    Raises:
        ApiError: 413 ``boundary_too_large`` when boundary metrics are asked for on a volume
            of more than ``max_boundary_voxels`` voxels.
    """
    infos = (
        inspect_volume(prediction, options.max_voxels),
        inspect_volume(reference, options.max_voxels),
    )
    refusal = boundary_refusal(*infos, options, max_boundary_voxels)
    if refusal is not None:
        raise ApiError(413, "boundary_too_large", refusal)
    memory = job_bytes(*infos, options)
    if overlays is not None:
        memory = max(memory, overlays.memory_bytes(*infos))
    return memory, infos


async def _score(
    request: Request,
    admission: Admission,
    settings: Settings,
    metrics: ServiceMetrics,
    scorer: Scorer,
) -> JSONResponse:
    state = request.state
    try:
        form = await receive_form(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            admission.workdir,
            settings.max_upload_bytes,
            [*OPTION_FIELDS, OVERLAYS_FIELD],
            min_rate=settings.min_upload_rate,
            grace=settings.header_timeout,
        )
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the upload") from None
    state.body_received = True
    for name, size in form.sizes.items():
        setattr(state, f"{name}_bytes", size)
        metrics.upload_bytes.observe(size)
    overlays = OverlayRequest.take(form.fields, form.files, settings.max_voxels)
    options, case_id = options_from_form(
        form.fields, device=settings.device, max_voxels=settings.max_voxels
    )
    prediction, reference = form.files["prediction"], form.files["reference"]
    memory_bytes, inspected = await asyncio.to_thread(
        _estimate, prediction, reference, options, overlays, settings.max_boundary_voxels
    )
    inline = (
        settings.idle_inline
        and admission.alone  # no other request needs the event loop
        and scorer is score_files  # its time on these files is known; a replaced one's is not
        and overlays is None
        and max(form.sizes.values()) <= INLINE_UPLOAD_BYTES
        and scored_in_calling_thread(*inspected, options)
    )
    state.job_bytes = memory_bytes
    submitted = time.perf_counter()

    def job() -> tuple[_JobResult, dict[str, Any] | None]:
        scored = _score_job(
            scorer, prediction, reference, options, inspected, case_id, metrics, submitted
        )
        if overlays is None:
            return scored, None
        return scored, overlays.render(prediction, reference, scored.report.to_dict()).model_dump()

    try:
        result, overlay_body = await admission.run(job, memory_bytes, inline=inline)
    except (MemoryError, RuntimeError) as exc:
        # numpy raises MemoryError; torch's CPU allocator a plain RuntimeError (torch has no
        # type for it: torch.OutOfMemoryError is CUDA's), so only its message tells
        if isinstance(exc, RuntimeError) and _CPU_ALLOC_FAILED not in str(exc):
            raise
        raise ApiError(
            503,
            "out_of_memory",
            "the server ran out of memory scoring this case; retry later",
            headers={"Retry-After": str(settings.retry_after)},
        ) from None
    state.queue_s = round(result.queue_s, 4)
    state.score_s = round(result.score_s, 4)
    state.device = str(result.report.device)
    if result.gpu_fallback:
        state.gpu_fallback = True
    body = result.report.to_dict()
    if overlay_body is not None:
        body[OVERLAYS_FIELD] = overlay_body
    state.voxels = body["voxels"]
    metrics.voxels.inc(body["voxels"])
    return JSONResponse(body)


@router.post(
    "/scores",
    tags=["scores"],
    summary="Score a prediction against a reference (two NIfTI uploads)",
    openapi_extra={"requestBody": add_overlay_fields(form_schema())},
    responses=SCORE_RESPONSES,
)
async def create_score(
    request: Request,
    settings: SettingsDep,
    pool: PoolDep,
    metrics: MetricsDep,
    scorer: ScorerDep,
) -> JSONResponse:
    async def bounded() -> JSONResponse:
        async with pool.admit() as admission:
            return await _score(request, admission, settings, metrics, scorer)

    try:
        # asyncio.wait_for, not asyncio.timeout: the service runs on Python 3.10 too
        return await asyncio.wait_for(bounded(), settings.request_timeout)
    except asyncio.TimeoutError:
        error = ApiError(
            504,
            "timeout",
            f"the request took longer than the limit of {settings.request_timeout:g} s",
        )
    except ApiError as exc:
        error = exc
    if not getattr(request.state, "body_received", False):
        # refused before the whole body arrived: close the connection rather than let the
        # server read (and discard) the rest of it
        error.headers["Connection"] = "close"
    raise error
