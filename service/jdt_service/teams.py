"""Teams and their keys: ``JDT_API_KEYS`` entries ``team:key`` (a bare ``key`` is team
``default``) and ``JDT_ADMIN_KEYS`` (reference-set management, team ``admin``).

A key is everything after the first ``:``; a team name is 1 to 200 characters of letters,
digits, ``.``, ``_`` and ``-``.
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["ADMIN_TEAM", "DEFAULT_TEAM", "Caller", "KeyTable", "parse_keys"]

DEFAULT_TEAM = "default"
ADMIN_TEAM = "admin"
_TEAM = re.compile(r"^[A-Za-z0-9._-]{1,200}$")


@dataclass(frozen=True)
class Caller:
    """Who sent a request: their team and whether the key was an admin key."""

    team: str
    admin: bool


def parse_keys(entries: Sequence[str]) -> list[tuple[str, str]]:
    """``[(team, key)]`` from ``team:key`` or bare ``key`` entries.

    Raises:
        ValueError: an entry with an empty key or a team name that is not allowed.
    """
    pairs = []
    for number, entry in enumerate(entries, 1):
        team, sep, key = entry.partition(":")
        if not sep:
            team, key = DEFAULT_TEAM, entry
        if not key or not _TEAM.match(team):
            raise ValueError(
                f"API key entry {number}: expected 'team:key' (team of letters, digits, '.', "
                "'_', '-') or a bare key"
            )
        pairs.append((team, key))
    return pairs


class KeyTable:
    """Looks a bearer key up in constant time (every key is compared, no early exit)."""

    def __init__(self, api_keys: Sequence[str], admin_keys: Sequence[str]) -> None:
        self.entries = [(team, key, False) for team, key in parse_keys(api_keys)]
        self.entries += [(ADMIN_TEAM, key, True) for key in admin_keys if key]

    @property
    def open(self) -> bool:
        """No key configured at all: every request is team ``default`` and may administer."""
        return not self.entries

    def lookup(self, token: str) -> Caller | None:
        """The caller owning ``token``, or None."""
        given = token.encode()
        found: Caller | None = None
        for team, key, admin in self.entries:
            if hmac.compare_digest(given, key.encode()) and found is None:
                found = Caller(team, admin)
        return found
