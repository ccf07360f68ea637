"""API-key auth for ``/v1/*``: ``Authorization: Bearer KEY`` checked in constant time."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jdt_service.dependencies import SettingsDep
from jdt_service.errors import ApiError

__all__ = ["require_api_key"]

_bearer = HTTPBearer(
    auto_error=False,
    description="One of the keys in JDT_API_KEYS; only checked when keys are configured.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


def _matches_any(token: str, keys: list[str]) -> bool:
    """Compare against every key (no early exit) with :func:`hmac.compare_digest`."""
    given = token.encode()
    found = False
    for key in keys:
        found |= hmac.compare_digest(given, key.encode())
    return found


async def require_api_key(
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Raise 401 ``unauthorized`` unless no keys are configured or the bearer key is one."""
    keys = settings.api_keys
    if not keys:
        return
    if credentials is None:
        raise ApiError(
            401, "unauthorized", "missing 'Authorization: Bearer <key>' header", _CHALLENGE
        )
    if not _matches_any(credentials.credentials, keys):
        raise ApiError(401, "unauthorized", "the API key is not valid", _CHALLENGE)
