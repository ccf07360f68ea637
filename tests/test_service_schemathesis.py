"""Property-based API tests: schemathesis drives the app from its own OpenAPI schema (offline).

Every generated request (random form fields, random bytes as "NIfTI" uploads, wrong types)
must get an answer that is not a server error and that matches the documented schema of its
status code.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance

from jdt_service import Settings, create_app

# The app is built in a fixture, not at import time. schemathesis' own lazy loader
# (schemathesis.pytest.from_fixture) fails under pytest 9.2 (it reads a removed private
# attribute of pytest's nodes), so each operation's strategy is driven with hypothesis here.


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_api_conforms_to_its_schema(tmp_path: Path, mode: GenerationMode, emptied) -> None:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    service = Settings(
        device="cpu", temp_dir=uploads, data_dir=tmp_path / "data", max_upload_bytes=1 << 20
    )
    app = create_app(service)
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert any(op.path == "/v1/scores" for op in operations)
    for operation in operations:
        if mode is GenerationMode.NEGATIVE and not (
            len(operation.body) or list(operation.iter_parameters())
        ):
            continue  # nothing to make invalid in a request without inputs

        @settings(
            max_examples=40,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def conforms(case) -> None:  # type: ignore[no-untyped-def]
            case.call_and_validate(checks=[not_a_server_error, response_schema_conformance])
            assert emptied(uploads) == []

        conforms()
