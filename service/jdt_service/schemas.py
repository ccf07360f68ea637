"""Response bodies of the endpoints (pydantic models, for validation-free docs in OpenAPI).

The score report is the scoring core's own definition (``monai_jdt.scoring.report``: the
layout ``CaseReport.to_dict()`` fills and docs/report.schema.json publishes), re-exported here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field

from monai_jdt.scoring.report import LabelRow, ReportOptions, ScoreReport

__all__ = [
    "ErrorDetail",
    "ErrorResponse",
    "GpuInfo",
    "Health",
    "Info",
    "LabelRow",
    "Limits",
    "Readiness",
    "ReportOptions",
    "ScoreReport",
]


class ErrorDetail(BaseModel):
    code: str = Field(description="Stable machine-readable error code, e.g. shape_mismatch.")
    message: str = Field(description="What was wrong, for a person.")


class ErrorResponse(BaseModel):
    """Every error: 4xx for bad input or limits, 5xx only for server state."""

    detail: ErrorDetail


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready"]
    device: str = Field(description="The device scoring runs on, e.g. cpu or cuda:0.")
    checks: dict[str, bool] = Field(description="Each readiness check and whether it passed.")


class GpuInfo(BaseModel):
    name: str
    total_memory_bytes: int
    free_memory_bytes: int


class Limits(BaseModel):
    max_upload_bytes: int = Field(description="Largest accepted file (each), in bytes.")
    max_voxels: int = Field(description="Largest accepted volume, in voxels.")
    max_concurrency: int = Field(description="Scoring jobs that run at once.")
    max_queue: int = Field(description="Requests that may wait for a slot before 503.")
    request_timeout_s: float
    max_job_bytes: int = Field(description="Largest memory estimate of one case, in bytes (413).")
    memory_budget_bytes: int = Field(
        description="Memory the requests of this process may plan together, in bytes (503)."
    )
    job_memory_budget_bytes: int = Field(
        description="Memory the evaluation-job cases in flight on this process's workers may "
        "plan together, in bytes."
    )


class Info(BaseModel):
    version: str = Field(description="monai-jdt version.")
    schema_version: str = Field(description="Version of the score report schema.")
    device: str = Field(
        description="The scoring device: auto resolves to cuda when a GPU is visible, else cpu. "
        "With auto, label maps may still be counted on the CPU where that is faster; each "
        "report's device says where its case ran."
    )
    configured_device: str
    gpu: GpuInfo | None = Field(description="The GPU in use, when scoring runs on CUDA.")
    auth_required: bool
    limits: Limits
