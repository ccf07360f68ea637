"""Shared fixtures of the test suite, one section per area."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from itertools import count

import pytest

# ---------------------------------------------------------------- jobs (service data, databases)

#: the service's data folder defaults to $XDG_DATA_HOME/monai-jdt: point it into a temporary
#: folder for the whole run, subprocesses included, so no test writes to the user's own
#: ~/.local/share/monai-jdt (apps built by the tests also get their own ``data_dir``)
_DATA_HOME = tempfile.mkdtemp(prefix="jdt-test-xdg-")
os.environ["XDG_DATA_HOME"] = _DATA_HOME


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(_DATA_HOME, ignore_errors=True)


_databases = count()


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL 15 server for the session (skipped where its binaries are missing)."""
    from jobs_testing import PG_BIN, postgres_server

    if not (PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {PG_BIN} (set JDT_TEST_PG_BIN)")
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite under the app's data folder), then a fresh PostgreSQL database."""
    from jobs_testing import new_database

    if request.param == "sqlite":
        return None
    server = request.getfixturevalue("pg_server")
    return new_database(server, f"jdt_test_{next(_databases)}")
