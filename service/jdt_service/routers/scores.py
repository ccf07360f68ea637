"""``POST /v1/scores``: score one uploaded prediction/reference pair with the scoring core.

The flow of one request, each step bounded:

1. admission (503 ``server_busy`` + ``Retry-After`` when all slots and the queue are taken),
   before any byte of the body is read;
2. the multipart body streams into the request's work directory (413 past the size limit);
3. the options are parsed (422);
4. ``score_files`` runs on a scoring thread: it reads both NIfTI headers first and refuses a
   volume whose declared shape is past ``max_voxels`` (413) before anything is decompressed,
   and files that are not NIfTI or are corrupt (415 / 422); a CUDA out-of-memory error re-runs
   the job on the CPU and is counted in ``jdt_gpu_fallbacks_total``;
5. the report of ``monai_jdt.scoring.score_files`` is returned as is (``CaseReport.to_dict()``).

The whole request is bounded by ``request_timeout`` (504). The work directory is deleted on
every path (see :class:`jdt_service.limits.Admission`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.requests import ClientDisconnect

from jdt_service.errors import ApiError, scoring_codes_by_status
from jdt_service.forms import OPTION_FIELDS, form_schema, options_from_form
from jdt_service.limits import Admission
from jdt_service.metrics import ServiceMetrics
from jdt_service.schemas import ErrorResponse, ScoreReport
from jdt_service.settings import Settings
from jdt_service.uploads import receive_form
from monai_jdt.scoring import CaseReport, ScoringOptions, score_files

__all__ = ["router"]

router = APIRouter(tags=["scores"])


#: codes the HTTP layer answers with, by status; the scoring core's codes are added below
_HTTP_CODES: dict[int, list[str]] = {
    400: ["malformed_multipart", "client_disconnected"],
    401: ["unauthorized (API keys are configured and the bearer key is missing or wrong)"],
    413: ["upload_too_large", "field_too_large"],
    415: ["unsupported_media_type (the body is not multipart/form-data)"],
    422: ["missing_field", "unknown_option", "duplicate_field", "invalid_option"],
    500: ["internal_error (a bug in the service; please report it with the request id)"],
    503: ["server_busy (with Retry-After)", "out_of_memory"],
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
        "model": ScoreReport,
        "description": "The score report, the same JSON as `monai-jdt score --json`.",
    },
    **{
        status: {"model": ErrorResponse, "description": "Error codes: " + ", ".join(names) + "."}
        for status, names in _error_codes_by_status().items()
    },
}


_CPU_ALLOC_FAILED = "can't allocate memory"  # torch's DefaultCPUAllocator message


@dataclass(frozen=True)
class _JobResult:
    report: CaseReport
    queue_s: float
    score_s: float
    gpu_fallback: bool


def _score_job(
    prediction: Path,
    reference: Path,
    options: ScoringOptions,
    case_id: str | None,
    metrics: ServiceMetrics,
    submitted: float,
) -> _JobResult:
    """Runs on a scoring thread; retries on the CPU once if CUDA runs out of memory."""
    started = time.perf_counter()
    fallback = False
    try:
        report = score_files(prediction, reference, options)
    except torch.OutOfMemoryError:
        fallback = True
        metrics.gpu_fallbacks.inc()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        report = score_files(prediction, reference, options.replace(device="cpu"))
    report = dataclasses.replace(report, case_id=case_id)  # null unless the client gave one
    ended = time.perf_counter()
    metrics.scoring_seconds.labels(str(report.device)).observe(ended - started)
    return _JobResult(report, started - submitted, ended - started, fallback)


async def _score(request: Request, admission: Admission, settings: Settings) -> JSONResponse:
    metrics: ServiceMetrics = request.app.state.metrics
    state = request.state
    try:
        form = await receive_form(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            admission.workdir,
            settings.max_upload_bytes,
            OPTION_FIELDS,
        )
    except ClientDisconnect:
        raise ApiError(400, "client_disconnected", "the client closed the upload") from None
    for name, size in form.sizes.items():
        setattr(state, f"{name}_bytes", size)
        metrics.upload_bytes.observe(size)
    options, case_id = options_from_form(
        form.fields, device=settings.device, max_voxels=settings.max_voxels
    )
    prediction, reference = form.files["prediction"], form.files["reference"]
    submitted = time.perf_counter()
    try:
        result = await admission.run(
            lambda: _score_job(prediction, reference, options, case_id, metrics, submitted)
        )
    except (MemoryError, RuntimeError) as exc:
        # numpy raises MemoryError; torch's CPU allocator a RuntimeError saying so
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
    state.voxels = body["voxels"]
    metrics.voxels.inc(body["voxels"])
    return JSONResponse(body)


@router.post(
    "/v1/scores",
    summary="Score a prediction against a reference (two NIfTI uploads)",
    openapi_extra={"requestBody": form_schema()},
    responses=SCORE_RESPONSES,
)
async def create_score(request: Request) -> JSONResponse:
    settings: Settings = request.app.state.settings
    deadline = asyncio.timeout(settings.request_timeout)
    try:
        async with deadline, request.app.state.pool.admit() as admission:
            return await _score(request, admission, settings)
    except TimeoutError:
        if not deadline.expired():
            raise
        raise ApiError(
            504,
            "timeout",
            f"the request took longer than the limit of {settings.request_timeout:g} s",
        ) from None
