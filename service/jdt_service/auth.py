"""API-key auth for ``/v1/*``: ``Authorization: Bearer KEY`` checked in constant time.

Keys come from ``JDT_API_KEYS`` (``team:key`` or bare keys) and ``JDT_ADMIN_KEYS`` (see
:mod:`jdt_service.teams`). With no key configured at all the service is open: every caller is
team ``default`` and may manage reference sets (meant for a loopback-only server).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from jdt_service.dependencies import SettingsDep
from jdt_service.errors import ApiError
from jdt_service.teams import DEFAULT_TEAM, Caller, KeyTable

__all__ = [
    "AdminCaller",
    "AnyCaller",
    "current_caller",
    "key_table",
    "require_admin",
    "require_api_key",
]

_bearer = HTTPBearer(
    auto_error=False,
    description="One of the keys in JDT_API_KEYS or JDT_ADMIN_KEYS; only checked when keys "
    "are configured.",
)
_CHALLENGE = {"WWW-Authenticate": "Bearer"}


async def key_table(request: Request, settings: SettingsDep) -> KeyTable:
    """The app's key table, built once from its settings (kept with the app)."""
    state = request.app.state
    table: KeyTable | None = getattr(state, "key_table", None)
    if table is None:
        table = KeyTable(settings.api_keys, settings.admin_keys)
        state.key_table = table
    return table


async def current_caller(
    request: Request,
    table: Annotated[KeyTable, Depends(key_table)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Caller:
    """The caller's team; raise 401 ``unauthorized`` when keys are configured and none matches.

    Raises:
        ApiError: 401 ``unauthorized`` (with ``WWW-Authenticate: Bearer``).
    """
    if table.open:
        return Caller(DEFAULT_TEAM, admin=True)
    if credentials is None:
        raise ApiError(
            401, "unauthorized", "missing 'Authorization: Bearer <key>' header", _CHALLENGE
        )
    caller = table.lookup(credentials.credentials)
    if caller is None:
        raise ApiError(401, "unauthorized", "the API key is not valid", _CHALLENGE)
    request.state.team = caller.team
    return caller


async def require_api_key(caller: Annotated[Caller, Depends(current_caller)]) -> None:
    """Raise 401 unless no keys are configured or the bearer key is one of them."""


async def require_admin(caller: Annotated[Caller, Depends(current_caller)]) -> Caller:
    """Raise 403 ``forbidden`` unless the key is an admin key (or no key is configured).

    Raises:
        ApiError: 401 ``unauthorized`` (see :func:`current_caller`), 403 ``forbidden``.
    """
    if not caller.admin:
        raise ApiError(403, "forbidden", "this needs an admin key (JDT_ADMIN_KEYS)")
    return caller


#: route parameter types: any authenticated caller, or an admin
AnyCaller = Annotated[Caller, Depends(current_caller)]
AdminCaller = Annotated[Caller, Depends(require_admin)]
