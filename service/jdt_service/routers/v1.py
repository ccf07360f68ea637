"""The ``/v1`` router: every versioned endpoint registers on :data:`router`.

The prefix is given once, here; the app mounts this router behind the API-key dependency
(:func:`jdt_service.auth.require_api_key`). Endpoint modules (``info``, ``scores``, ...)
add their routes to it with paths relative to ``/v1``.
"""

from __future__ import annotations

from fastapi import APIRouter

__all__ = ["PREFIX", "router"]

PREFIX = "/v1"
router = APIRouter(prefix=PREFIX)
