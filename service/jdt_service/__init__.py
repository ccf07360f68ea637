"""The monai-jdt scoring service: FastAPI + uvicorn over :mod:`monai_jdt.scoring`.

``create_app(settings=None)`` builds the app; ``monai-jdt serve`` (or ``python -m
jdt_service``) runs it with uvicorn. See ``docs/service.md``.

``create_app`` is imported on first use, so that ``monai-jdt serve --help`` and the server's
argument parsing do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from jdt_service.settings import Settings

if TYPE_CHECKING:
    from jdt_service.app import create_app

__all__ = ["Settings", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from jdt_service.app import create_app

        return create_app
    raise AttributeError(f"module 'jdt_service' has no attribute {name!r}")
