"""Response bodies of the endpoints (pydantic models, for validation-free docs in OpenAPI)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

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


class ReportOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    include_background: bool
    empty: Literal["nan", "one"]
    metrics: list[str]
    tversky_alpha: float
    tversky_beta: float
    labels: dict[str, str | None] | None = Field(description="Requested labels: id -> name.")


class LabelRow(BaseModel):
    """One label of one case. Only the metrics asked for are present; ``null`` = undefined."""

    model_config = ConfigDict(extra="forbid")

    label: int
    name: str | None
    requested: bool = Field(description="False for a label predicted but not asked for.")
    dice: float | None = None
    jaccard: float | None = None
    precision: float | None = None
    recall: float | None = None
    tversky: float | None = None
    tp: float
    fp: float
    fn: float
    tn: float
    predicted_voxels: float
    reference_voxels: float
    predicted_ml: float | None
    reference_ml: float | None
    reasons: dict[str, str] = Field(description="Why each null metric is undefined.")


class ScoreReport(BaseModel):
    """``monai_jdt.scoring.CaseReport.to_dict()``: the JSON of ``monai-jdt score --json``.

    Extra fields are forbidden so that the documented schema and the core's report cannot
    drift apart unnoticed (tests validate real reports against it).
    """

    model_config = ConfigDict(extra="forbid")

    schema_version: str
    case_id: str | None
    kind: Literal["labels", "probabilities"]
    device: str = Field(description="Where the counting ran, e.g. cpu or cuda:0.")
    shape: list[int]
    voxels: int
    spacing_mm: list[float] | None
    voxel_volume_ml: float | None
    options: ReportOptions
    labels: list[LabelRow]
    notes: list[str]
    seconds: float
