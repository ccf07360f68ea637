"""Property-based API tests: schemathesis drives the app from its own OpenAPI schema (offline).

Every generated request (random form fields, random bytes as "NIfTI" uploads, wrong types)
must get an answer that is not a server error and that matches the documented schema of its
status code.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from jdt_service import Settings, create_app

_UPLOADS = Path(tempfile.mkdtemp(prefix="jdt-schemathesis-"))
_DATA = Path(tempfile.mkdtemp(prefix="jdt-schemathesis-data-"))
app = create_app(
    Settings(device="cpu", temp_dir=_UPLOADS, data_dir=_DATA, max_upload_bytes=1 << 20)
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)


@pytest.fixture(scope="module", autouse=True)
def _remove_upload_dir() -> Iterator[None]:
    yield
    shutil.rmtree(_UPLOADS, ignore_errors=True)
    shutil.rmtree(_DATA, ignore_errors=True)


@schema.parametrize()
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
def test_api_conforms_to_its_schema(case) -> None:
    case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
    assert list(_UPLOADS.iterdir()) == []
