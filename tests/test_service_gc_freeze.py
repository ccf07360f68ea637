"""Start-up objects frozen out of full garbage collections while the app runs
(``jdt_service.gc_freeze``)."""

from __future__ import annotations

import gc
from pathlib import Path

from fastapi.testclient import TestClient

from jdt_service.app import create_app
from jdt_service.settings import Settings


def _tracked(obj: object) -> bool:
    """Whether a full collection would walk ``obj`` (frozen objects are not listed)."""
    return any(candidate is obj for candidate in gc.get_objects())


def test_objects_of_start_up_are_frozen_while_the_app_runs_and_thawed_at_shutdown(
    tmp_path: Path,
) -> None:
    app = create_app(Settings(temp_dir=tmp_path, data_dir=tmp_path / "data"))
    before_start = [{"made": "before start-up"}]
    assert _tracked(before_start) and gc.get_freeze_count() == 0
    with TestClient(app) as client:
        assert not _tracked(before_start)
        assert gc.get_freeze_count() > 0
        during = [{"made": "by a request's time"}]
        assert client.get("/healthz").status_code == 200
        assert _tracked(during)  # what runs after start-up is collected as usual
    assert _tracked(before_start)
    assert gc.get_freeze_count() == 0
