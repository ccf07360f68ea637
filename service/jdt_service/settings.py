"""Service settings, read from ``JDT_*`` environment variables (pydantic-settings).

``monai-jdt serve`` options override them: :mod:`jdt_service.server` makes one option per
field (except :data:`ENV_ONLY`), from the field's type, default and description. List-valued
settings (``JDT_API_KEYS``, ``JDT_CORS_ORIGINS``) are comma-separated strings.
:func:`unknown_variables` names the ``JDT_*`` variables that match no setting (a misspelt
one would otherwise be ignored silently).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from jdt_service.memory_limit import memory_limit

__all__ = [
    "DEVICE_PATTERN",
    "ENV_ONLY",
    "LOOPBACK_HOSTS",
    "SETUP_VARIABLES",
    "Settings",
    "unknown_variables",
]

#: ``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``.
DEVICE_PATTERN = re.compile(r"^(auto|cpu|cuda(:\d+)?)$")
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

MiB = 1024 * 1024
GiB = 1024 * MiB
#: settings that have no command-line option (a key on the command line is visible in ``ps``)
ENV_ONLY = frozenset({"api_keys", "admin_keys"})
#: the ``JDT_*`` variables of the set-up (``scripts/bootstrap.sh``) and of the compose file
#: (its image, build and published port): not settings of the service, so not warned about
#: when they are in its environment
SETUP_VARIABLES = frozenset(
    {"JDT_TORCH_SPEC", "JDT_TORCH_INDEX_URL", "JDT_EXTRAS", "JDT_VENV", "JDT_IMAGE", "JDT_PUBLISH"}
)


class Settings(BaseSettings):
    """Everything the service can be configured with; each field is ``JDT_<NAME>``."""

    model_config = SettingsConfigDict(env_prefix="JDT_", extra="ignore", frozen=True)

    device: str = Field(default="auto", description="Scoring device: auto, cpu, cuda or cuda:N.")
    host: str = Field(default="127.0.0.1", description="Bind address (loopback by default).")
    port: int = Field(default=8000, ge=0, le=65535, description="TCP port.")
    workers: int = Field(default=1, ge=1, description="uvicorn worker processes.")
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Comma-separated API keys; when set, /v1/* needs 'Authorization: Bearer KEY'.",
    )
    max_upload_bytes: int = Field(
        default=512 * MiB, ge=1024, description="Largest accepted file (each of the two), in bytes."
    )
    max_voxels: int = Field(
        default=512**3,
        ge=1,
        description="Largest accepted volume, in voxels, read from the header.",
    )
    max_concurrency: int = Field(
        default=2, ge=1, description="Scoring jobs that run at the same time."
    )
    max_queue: int = Field(
        default=8, ge=0, description="Requests that may wait for a scoring slot before 503."
    )
    idle_inline: bool = Field(
        default=True,
        description="Score a small label pair (one byte per voxel, at most 2**22 voxels and "
        "256 KiB per file) on the event loop when no other request is in flight (no thread "
        "hand-off); off: every case on the scoring threads.",
    )
    request_timeout: float = Field(
        default=300.0,
        gt=0,
        description="Seconds a scoring request may take (upload + wait + score).",
    )
    retry_after: int = Field(default=5, ge=1, description="Retry-After seconds sent with 503.")
    temp_dir: Path | None = Field(
        default=None, description="Where uploads are written (default: the system temp dir)."
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated origins allowed by CORS."
    )
    log_level: Literal["debug", "info", "warning", "error", "critical"] = Field(
        default="info", description="Log level of the service and of uvicorn."
    )
    log_format: Literal["json", "text"] = Field(
        default="json", description="json (one object per line) or text (key=value)."
    )
    max_boundary_voxels: int = Field(
        default=512 * 512 * 256,
        ge=1,
        description="Largest volume, in voxels, on which boundary metrics (hd, hd95, assd, "
        "masd, nsd, boundary_iou) are computed (413 past it; overlap metrics are not limited "
        "by it).",
    )
    max_job_bytes: int = Field(
        default=4 * GiB,
        ge=MiB,
        description="Largest memory one scoring job may need, estimated from the two headers "
        "before anything is read (413 past it).",
    )
    memory_budget_bytes: int | None = Field(
        default=None,
        ge=MiB,
        description="Memory the scoring jobs of one process may hold together; a job that does "
        "not fit now gets 503 + Retry-After (default: half the memory the service may use, "
        "the physical memory or the container's memory limit when lower, divided among the "
        "worker processes).",
    )
    max_uploads: int = Field(
        default=16, ge=1, description="Request bodies received at the same time before 503."
    )
    min_upload_rate: int = Field(
        default=32 * 1024,
        ge=1,
        description="Slowest accepted upload, in bytes/s on average after the header timeout "
        "(408 when slower).",
    )
    header_timeout: float = Field(
        default=10.0,
        gt=0,
        description="Seconds a connection may take to send complete request headers.",
    )
    max_header_bytes: int = Field(
        default=64 * 1024,
        ge=4096,
        description="Largest request head (request line and headers), in bytes (431 past it).",
    )
    max_connections: int = Field(
        default=512,
        ge=1,
        description="Open connections per process; more are answered 503 and closed at once.",
    )
    # evaluation jobs (reference sets, dataset submissions; see docs/service.md)
    data_dir: Path = Field(
        default_factory=lambda: (
            Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "monai-jdt"
        ),
        description="Where jobs, uploaded reference sets and the SQLite database are kept "
        "(default: $XDG_DATA_HOME/monai-jdt).",
    )
    database_url: str | None = Field(
        default=None,
        description="SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db "
        "(default: SQLite in JDT_DATA_DIR).",
    )
    reference_root: Path | None = Field(
        default=None, description="Server-side folder whose sub-folders may become reference sets."
    )
    admin_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Comma-separated keys that may manage reference sets."
    )
    job_workers: int = Field(default=2, ge=1, description="Processes that score job cases.")
    job_memory_budget_bytes: int | None = Field(
        default=None,
        ge=MiB,
        description="Memory the cases of evaluation jobs scored at once on the job workers may "
        "need together, by the same estimate as a request's; a case that does not fit waits "
        "for one to finish, and one that needs more than all of it runs alone (default: a "
        "quarter of the memory the service may use, divided among the worker processes; not "
        "applied on a Dask cluster).",
    )
    dask_scheduler: str | None = Field(
        default=None, description="Dask scheduler address (tcp://host:8786) to score jobs on."
    )
    max_cases: int = Field(default=1000, ge=1, description="Most files in one archive.")
    max_archive_bytes: int = Field(
        default=64 * 1024 * MiB, ge=1024, description="Largest uncompressed archive, in bytes."
    )
    keep_predictions: bool = Field(
        default=False, description="Keep uploaded predictions once a job is scored (retention)."
    )
    job_lease: float = Field(
        default=30.0,
        gt=0,
        description="Seconds without a heartbeat after which a running job is taken over.",
    )

    @field_validator("api_keys", "cors_origins", "admin_keys", mode="before")
    @classmethod
    def _split_commas(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("device")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not DEVICE_PATTERN.match(value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _lower(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @property
    def memory_budget(self) -> int:
        """``memory_budget_bytes``, or when it is not set half the memory the service may use
        (the physical memory, or the container's cgroup limit when lower) shared by its
        ``workers`` processes (the budget is per process)."""
        if self.memory_budget_bytes is not None:
            return self.memory_budget_bytes
        return memory_limit() // 2 // self.workers

    @property
    def job_memory_budget(self) -> int:
        """``job_memory_budget_bytes``, or a quarter of the memory the service may use shared
        by its ``workers`` processes (each runs its own job runner)."""
        if self.job_memory_budget_bytes is not None:
            return self.job_memory_budget_bytes
        return memory_limit() // 4 // self.workers

    @property
    def is_loopback(self) -> bool:
        """Whether the bind address only accepts local connections."""
        return self.host in LOOPBACK_HOSTS or self.host.startswith("127.")


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """The ``JDT_*`` names in ``environ`` (default ``os.environ``) that are no setting (nor
    one of the ``SETUP_VARIABLES``)."""
    environ = os.environ if environ is None else environ
    known = {f"JDT_{name.upper()}" for name in Settings.model_fields} | SETUP_VARIABLES
    return sorted(
        name for name in environ if name.upper().startswith("JDT_") and name.upper() not in known
    )
