"""The monai-jdt scoring service: FastAPI + uvicorn over :mod:`monai_jdt.scoring`.

``create_app(settings=None)`` builds the app; ``monai-jdt serve`` (or ``python -m
jdt_service``) runs it with uvicorn. See ``docs/service.md``.
"""

from jdt_service.app import create_app
from jdt_service.settings import Settings

__all__ = ["Settings", "create_app"]
