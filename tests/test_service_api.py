"""In-process tests of the scoring service: every endpoint, option, limit and error."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import jsonschema
import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from jdt_service import Settings, create_app
from jdt_service.dependencies import get_scorer
from jdt_service.logs import JsonFormatter, TextFormatter
from monai_jdt.scoring import score_files

SHAPE = (12, 10, 8)


def make_client(tmp_path: Path, scorer=None, **overrides: object) -> TestClient:
    """A client of a fresh app; ``scorer`` replaces ``score_files`` (a dependency override)."""
    temp = tmp_path / "uploads"
    temp.mkdir(exist_ok=True)
    settings = Settings(
        **{"device": "cpu", "temp_dir": temp, "data_dir": tmp_path / "data", **overrides}
    )
    app = create_app(settings)
    if scorer is not None:
        app.dependency_overrides[get_scorer] = lambda: scorer
    return TestClient(app)


@pytest.fixture
def client(tmp_path: Path):
    with make_client(tmp_path) as c:
        yield c


@pytest.fixture(scope="module")
def pair(label_pair) -> tuple[np.ndarray, np.ndarray]:
    return label_pair(SHAPE, labels=3, seed=7)


def files_for(pred: bytes, ref: bytes) -> dict[str, tuple[str, bytes, str]]:
    return {
        "prediction": ("patient_smith_pred.nii.gz", pred, "application/octet-stream"),
        "reference": ("patient_smith_ref.nii.gz", ref, "application/octet-stream"),
    }


def rows_by_label(report: dict) -> dict[int, dict]:
    return {row["label"]: row for row in report["labels"]}


def leftovers(tmp_path: Path) -> list[Path]:
    return list((tmp_path / "uploads").iterdir())


def metric_value(client: TestClient, name: str, **labels: str) -> float:
    """The value of one sample of the /metrics page (0 when absent)."""
    text = client.get("/metrics").text
    wanted = ",".join(f'{k}="{v}"' for k, v in labels.items())
    prefix = f"{name}{{{wanted}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line.split()[-1])
    return 0.0


# ---------------------------------------------------------------- health, info, metrics


def test_healthz_and_request_id(client: TestClient) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert len(r.headers["x-request-id"]) == 32
    r = client.get("/healthz", headers={"X-Request-ID": "abc-123"})
    assert r.headers["x-request-id"] == "abc-123"
    r = client.get("/healthz", headers={"X-Request-ID": "no spaces\tor tabs"})
    assert r.headers["x-request-id"] != "no spaces\tor tabs"


def test_readyz_ready_on_cpu(client: TestClient) -> None:
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json() == {
        "status": "ready",
        "device": "cpu",
        "checks": {"device": True, "temp_dir_writable": True},
    }


def test_readyz_not_ready_when_temp_dir_is_missing(tmp_path: Path) -> None:
    settings = Settings(
        device="cpu", temp_dir=tmp_path / "does-not-exist", data_dir=tmp_path / "data"
    )
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["detail"]["code"] == "not_ready"
    assert "temp_dir_writable" in r.json()["detail"]["message"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU answer")
def test_readyz_not_ready_when_cuda_is_configured_without_gpu(tmp_path: Path) -> None:
    settings = Settings(device="cuda", temp_dir=tmp_path, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        r = c.get("/readyz")
    assert r.status_code == 503 and "device" in r.json()["detail"]["message"]


def test_info_reports_version_device_and_limits(tmp_path: Path) -> None:
    from monai_jdt import __version__

    limits = {"max_job_bytes": 3 * 2**30, "memory_budget_bytes": 5 * 2**30}
    with make_client(tmp_path, max_voxels=1234, max_concurrency=3, max_queue=4, **limits) as c:
        body = c.get("/v1/info").json()
    # the memory an operator sizes the container by: the budgets in force, defaults resolved
    assert {key: body["limits"][key] for key in limits} == limits
    assert body["limits"]["job_memory_budget_bytes"] == Settings().job_memory_budget
    assert body["version"] == __version__
    assert body["device"] == "cpu" and body["configured_device"] == "cpu"
    assert body["gpu"] is None
    assert body["auth_required"] is False
    assert body["limits"]["max_voxels"] == 1234
    assert body["limits"]["max_concurrency"] == 3
    assert body["limits"]["max_queue"] == 4


def test_metrics_count_requests_voxels_and_errors(client: TestClient, pair, nifti_bytes) -> None:
    pred, ref = pair
    assert (
        client.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref))).status_code
        == 200
    )
    bad = client.post("/v1/scores", files=files_for(b"not an image" * 40, nifti_bytes(ref)))
    assert bad.status_code == 415
    assert metric_value(client, "jdt_voxels_scored_total") == pred.size
    assert metric_value(client, "jdt_errors_total", code="not_nifti") == 1
    assert (
        metric_value(client, "jdt_requests_total", method="POST", route="/v1/scores", status="200")
        == 1
    )
    assert metric_value(client, "jdt_upload_bytes_count") == 4
    assert metric_value(client, "jdt_queue_depth") == 0
    assert metric_value(client, "jdt_jobs_running") == 0
    assert metric_value(client, "jdt_gpu_fallbacks_total") == 0
    # clients choose the method: unknown ones share one label value
    assert client.request("BREW", "/healthz").status_code == 405
    labels = {"method": "other", "route": "/healthz", "status": "405"}
    assert metric_value(client, "jdt_requests_total", **labels) == 1


# ---------------------------------------------------------------- scoring


@pytest.mark.parametrize("gz", [True, False], ids=["nii.gz", "nii"])
def test_scores_match_numpy(
    client: TestClient, pair, gz: bool, tmp_path: Path, dice_f64, nifti_bytes, emptied
) -> None:
    pred, ref = pair
    r = client.post(
        "/v1/scores", files=files_for(nifti_bytes(pred, gz=gz), nifti_bytes(ref, gz=gz))
    )
    assert r.status_code == 200, r.text
    rows = rows_by_label(r.json())
    assert sorted(rows) == [1, 2]  # background excluded by default
    for label in (1, 2):
        assert rows[label]["dice"] == pytest.approx(dice_f64(pred, ref, label), abs=1e-6)
        tp = int(((pred == label) & (ref == label)).sum())
        assert rows[label]["tp"] == tp
    assert emptied(tmp_path / "uploads") == []


def test_response_is_the_library_report(
    client: TestClient, pair, tmp_path: Path, nifti_bytes
) -> None:
    """The service adds nothing and drops nothing: its body is ``CaseReport.to_dict()``."""
    pred, ref = pair
    (tmp_path / "p.nii.gz").write_bytes(nifti_bytes(pred))
    (tmp_path / "r.nii.gz").write_bytes(nifti_bytes(ref))
    from monai_jdt.scoring import ScoringOptions

    expected = score_files(
        tmp_path / "p.nii.gz", tmp_path / "r.nii.gz", ScoringOptions(device="cpu"), case_id="c1"
    ).to_dict()
    r = client.post(
        "/v1/scores",
        files=files_for(nifti_bytes(pred), nifti_bytes(ref)),
        data={"case_id": "c1"},
    )
    assert r.status_code == 200
    got = r.json()
    assert got.pop("seconds") >= 0
    expected.pop("seconds")
    assert got == json.loads(json.dumps(expected))


def test_scoring_options_as_form_fields(client: TestClient, pair, dice_f64, nifti_bytes) -> None:
    pred, ref = pair
    data = {
        "labels": "0=background,2=spleen",
        "include_background": "true",
        "metrics": "dice,tversky",
        "tversky_alpha": "0.7",
        "tversky_beta": "0.3",
        "case_id": "case-42",
    }
    r = client.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)), data=data)
    assert r.status_code == 200, r.text
    body = r.json()
    rows = rows_by_label(body)
    assert rows[2]["name"] == "spleen" and rows[0]["name"] == "background"
    p, q = pred == 2, ref == 2
    tp, fp, fn = (p & q).sum(), (p & ~q).sum(), (~p & q).sum()
    assert rows[2]["tversky"] == pytest.approx(tp / (tp + 0.7 * fp + 0.3 * fn), abs=1e-6)
    assert rows[0]["dice"] == pytest.approx(dice_f64(pred, ref, 0), abs=1e-6)
    assert "jaccard" not in rows[2] or rows[2]["jaccard"] is None
    assert json.dumps(body).count("case-42") >= 1


def test_empty_convention_and_absent_label(client: TestClient, pair, dice_f64, nifti_bytes) -> None:
    pred, ref = pair
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))
    nan_rows = rows_by_label(client.post("/v1/scores", files=files, data={"labels": "1,9"}).json())
    assert nan_rows[9]["dice"] is None
    one_rows = rows_by_label(
        client.post("/v1/scores", files=files, data={"labels": "1,9", "empty": "one"}).json()
    )
    assert one_rows[9]["dice"] == 1.0
    assert one_rows[1]["dice"] == pytest.approx(dice_f64(pred, ref, 1), abs=1e-6)


def test_affine_tolerance_and_ignore(client: TestClient, pair, nifti_bytes) -> None:
    pred, ref = pair
    moved = np.eye(4)
    moved[0, 3] = 0.01
    files = files_for(nifti_bytes(pred, moved), nifti_bytes(ref))
    r = client.post("/v1/scores", files=files)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "affine_mismatch"
    assert client.post("/v1/scores", files=files, data={"affine_tol": "0.1"}).status_code == 200
    assert client.post("/v1/scores", files=files, data={"ignore_affine": "yes"}).status_code == 200


def test_probability_map_is_scored_softly(client: TestClient, nifti_bytes) -> None:
    rng = np.random.default_rng(3)
    prob = rng.random(SHAPE).astype(np.float32)
    ref = (rng.random(SHAPE) < 0.5).astype(np.float32)
    r = client.post(
        "/v1/scores",
        files=files_for(nifti_bytes(prob), nifti_bytes(ref)),
        data={"kind": "probabilities"},
    )
    assert r.status_code == 200, r.text
    x, y = prob.astype(np.float64), ref.astype(np.float64)
    tp = (np.abs(x).sum() + np.abs(y).sum() - np.abs(x - y).sum()) / 2
    soft_dice = 2 * tp / (x.sum() + y.sum())
    dices = [row["dice"] for row in r.json()["labels"] if row.get("dice") is not None]
    assert any(math.isclose(d, soft_dice, abs_tol=1e-5) for d in dices)
    assert_documented_report(client, r.json())


def assert_documented_report(client: TestClient, report: dict) -> None:
    """``report`` validates against the 200 schema of POST /v1/scores (no extra fields)."""
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/scores"]["post"]
    schema = post["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(report, {"components": spec["components"], **schema})


# ---------------------------------------------------------------- bad requests


def assert_error(r: httpx.Response, status: int, code: str) -> dict:
    assert r.status_code == status, r.text
    detail = r.json()["detail"]
    assert detail["code"] == code and isinstance(detail["message"], str) and detail["message"]
    return detail


def test_missing_file_field(client: TestClient, pair, nifti_bytes) -> None:
    pred, _ = pair
    r = client.post("/v1/scores", files={"prediction": ("p.nii.gz", nifti_bytes(pred))})
    assert "reference" in assert_error(r, 422, "missing_field")["message"]


def test_unknown_and_duplicate_fields(client: TestClient, pair, nifti_bytes) -> None:
    pred, ref = pair
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))
    r = client.post("/v1/scores", files=files, data={"smoothing": "1"})
    assert "smoothing" in assert_error(r, 422, "unknown_option")["message"]
    twice = [("prediction", ("a", nifti_bytes(pred))), ("prediction", ("b", nifti_bytes(pred)))]
    twice.append(("reference", ("c", nifti_bytes(ref))))
    assert_error(client.post("/v1/scores", files=twice), 422, "duplicate_field")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("include_background", "maybe"),
        ("tversky_alpha", "abc"),
        ("tversky_alpha", "-1"),
        ("affine_tol", "nan"),
        ("metrics", "dice,hausdorff"),
        ("labels", "liver=1"),
        ("empty", "zero"),
        ("kind", "masks"),
    ],
)
def test_invalid_option_values(
    client: TestClient, pair, field: str, value: str, nifti_bytes
) -> None:
    pred, ref = pair
    r = client.post(
        "/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)), data={field: value}
    )
    assert_error(r, 422, "invalid_option")


def test_body_that_is_not_multipart(client: TestClient) -> None:
    r = client.post("/v1/scores", json={"prediction": "x"})
    assert_error(r, 415, "unsupported_media_type")


def test_multipart_cut_before_its_end(client: TestClient) -> None:
    body = b'--XyZ\r\nContent-Disposition: form-data; name="prediction"; filename="a"\r\n\r\nabc'
    r = client.post(
        "/v1/scores", content=body, headers={"Content-Type": "multipart/form-data; boundary=XyZ"}
    )
    assert_error(r, 400, "malformed_multipart")
    r = client.post("/v1/scores", content=b"x", headers={"Content-Type": "multipart/form-data"})
    assert_error(r, 400, "malformed_multipart")


def test_upload_over_the_size_limit(tmp_path: Path, nifti_bytes, emptied) -> None:
    big = np.zeros((40, 40, 40), np.uint8)  # 64000 bytes raw
    with make_client(tmp_path, max_upload_bytes=20_000) as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(big, gz=False), nifti_bytes(big)))
        assert "prediction" in assert_error(r, 413, "upload_too_large")["message"]
        # a declared Content-Length past the limit is refused before the body is read
        r = c.post(
            "/v1/scores",
            content=b"",
            headers={
                "Content-Type": "multipart/form-data; boundary=b",
                "Content-Length": str(10**9),
            },
        )
        assert_error(r, 413, "upload_too_large")
    assert emptied(tmp_path / "uploads") == []


def test_volume_over_the_voxel_limit_is_refused_from_its_header(
    tmp_path: Path, pair, nifti_bytes
) -> None:
    pred, ref = pair
    with make_client(tmp_path, max_voxels=pred.size - 1) as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
    assert_error(r, 413, "volume_too_large")


def test_unknown_route_and_method_use_the_error_shape(client: TestClient) -> None:
    assert_error(client.get("/v2/nothing"), 404, "not_found")
    assert_error(client.get("/v1/scores"), 405, "method_not_allowed")


# ---------------------------------------------------------------- auth


def test_api_keys_guard_v1_only(tmp_path: Path) -> None:
    with make_client(tmp_path, api_keys=["k-one", "k-two"]) as c:
        r = c.get("/v1/info")
        assert_error(r, 401, "unauthorized")
        assert r.headers["www-authenticate"] == "Bearer"
        assert_error(
            c.get("/v1/info", headers={"Authorization": "Bearer nope"}), 401, "unauthorized"
        )
        assert_error(
            c.get("/v1/info", headers={"Authorization": "Basic k-one"}), 401, "unauthorized"
        )
        assert_error(c.post("/v1/scores", files={}), 401, "unauthorized")
        assert c.get("/v1/info", headers={"Authorization": "Bearer k-two"}).json()["auth_required"]
        assert c.get("/v1/info", headers={"Authorization": "Bearer k-one"}).status_code == 200
        for open_path in ("/healthz", "/readyz", "/metrics"):
            assert c.get(open_path).status_code == 200


def test_admin_keys_alone_require_auth(tmp_path: Path) -> None:
    # with JDT_ADMIN_KEYS only, /v1 needs a key, and /v1/info says so
    with make_client(tmp_path, admin_keys=["adm"]) as c:
        assert_error(c.get("/v1/info"), 401, "unauthorized")
        body = c.get("/v1/info", headers={"Authorization": "Bearer adm"}).json()
        assert body["auth_required"] is True


# ---------------------------------------------------------------- limits and failures


def test_full_server_answers_503_with_retry_after(tmp_path: Path, pair, nifti_bytes) -> None:
    pred, ref = pair
    with make_client(tmp_path, max_uploads=1, retry_after=7) as c:
        holder = c.app.state.pool.admit()  # one upload in flight takes the only place
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
        assert_error(r, 503, "server_busy")
        assert r.headers["retry-after"] == "7"
        asyncio.run(holder.__aexit__(None, None, None))
        assert (
            c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref))).status_code
            == 200
        )


async def _post_many(app, n: int, files: dict) -> list[httpx.Response]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
        return await asyncio.gather(*(ac.post("/v1/scores", files=files) for _ in range(n)))


def test_queued_requests_wait_for_a_slot(tmp_path: Path, pair, nifti_bytes, emptied) -> None:
    """One slot, three queue places: four concurrent requests all succeed, one at a time."""
    pred, ref = pair
    running, peak = [0], [0]
    lock = threading.Lock()

    def slow_score(*args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.05)
        try:
            return score_files(*args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    client = make_client(tmp_path, slow_score, max_concurrency=1, max_queue=3)
    responses = asyncio.run(
        _post_many(client.app, 4, files_for(nifti_bytes(pred), nifti_bytes(ref)))
    )
    assert [r.status_code for r in responses] == [200] * 4
    assert peak[0] == 1
    assert emptied(tmp_path / "uploads") == []


def test_request_timeout_gives_504_and_files_go_when_the_job_ends(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    pred, ref = pair
    release = threading.Event()

    def stuck_score(*args, **kwargs):
        release.wait(10)
        return score_files(*args, **kwargs)

    with make_client(tmp_path, stuck_score, request_timeout=0.3) as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
        assert_error(r, 504, "timeout")
        assert len(leftovers(tmp_path)) == 1  # the job still runs on its thread: files stay
        assert c.app.state.pool.admitted == 1  # and it still holds its place
        release.set()
        for _ in range(100):
            if not leftovers(tmp_path) and c.app.state.pool.admitted == 0:
                break
            time.sleep(0.02)
    assert emptied(tmp_path / "uploads") == []


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def test_only_an_idle_server_scores_a_small_label_pair_on_its_event_loop(
    tmp_path: Path, pair, nifti_bytes, emptied, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Alone and small: on the event loop. Another upload open, a pair above
    ``INLINE_VOXELS``, a file above ``INLINE_UPLOAD_BYTES``, two-byte labels, boundary
    metrics or overlays: on a scoring thread."""
    from jdt_service.routers import scores
    from monai_jdt.scoring import files as scoring_files

    where: list[bool] = []

    def recorded(name: str) -> None:
        original = getattr(scoring_files, name)

        def record(*args, **kwargs):
            where.append(_on_event_loop())
            return original(*args, **kwargs)

        monkeypatch.setattr(scoring_files, name, record)

    recorded("stream_confusion")  # label pairs that stream
    recorded("score_arrays")  # the rest (boundary metrics)
    pred, ref = pair
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))

    def scored_on_loop(sent: dict = files, **data: str) -> bool:
        where.clear()
        r = c.post("/v1/scores", files=sent, data=data)
        assert r.status_code == 200, r.text
        assert len(where) == 1
        return where[0]

    with make_client(tmp_path) as c:
        assert scored_on_loop()
        with c.app.state.pool.upload_place():  # an archive arriving: not alone
            assert not scored_on_loop()
        assert not scored_on_loop(metrics="dice,hd95")
        assert not scored_on_loop(overlays="true")
        monkeypatch.setattr(scoring_files, "INLINE_VOXELS", pred.size - 1)
        assert not scored_on_loop()
        monkeypatch.setattr(scoring_files, "INLINE_VOXELS", pred.size)
        assert scored_on_loop()
        wide = files_for(nifti_bytes(pred.astype(np.int16)), nifti_bytes(ref.astype(np.int16)))
        assert not scored_on_loop(wide)
        largest = max(len(part[1]) for part in files.values())
        monkeypatch.setattr(scores, "INLINE_UPLOAD_BYTES", largest - 1)
        assert not scored_on_loop()
        monkeypatch.setattr(scores, "INLINE_UPLOAD_BYTES", largest)
        assert scored_on_loop()
        assert c.app.state.pool.reserved_bytes == 0 and c.app.state.pool.admitted == 0
    with make_client(tmp_path, idle_inline=False) as c:  # JDT_IDLE_INLINE=false
        assert not scored_on_loop()
    assert emptied(tmp_path / "uploads") == []


def test_work_directories_are_deleted_off_the_response_path_and_at_shutdown(
    tmp_path: Path, pair, nifti_bytes
) -> None:
    pred, ref = pair
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))
    with make_client(tmp_path) as c:
        pool = c.app.state.pool
        assert c.post("/v1/scores", files=files).status_code == 200
        deadline = time.monotonic() + 10  # the cleanup thread counts a folder once deleted
        while pool.deleting and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.deleting == 0 and leftovers(tmp_path) == []
        held = threading.Event()
        pool._cleanup.submit(held.wait)  # the cleanup thread is busy: deletions wait
        assert c.post("/v1/scores", files=files).status_code == 200
        assert c.post("/v1/scores", files=files).status_code == 200
        assert len(leftovers(tmp_path)) == 2 and pool.deleting == 2
        assert pool.admitted == 0  # places and memory are given back at once
        assert pool.reserved_bytes == 0
    # the app's shutdown deletes what the cleanup thread had not reached
    assert leftovers(tmp_path) == []
    held.set()


def test_cuda_out_of_memory_retries_on_cpu(
    tmp_path: Path, pair, caplog, dice_f64, nifti_bytes
) -> None:
    pred, ref = pair
    devices: list[str] = []

    def oom_unless_cpu(prediction, reference, options, **kwargs):
        devices.append(options.device)
        if options.device != "cpu":
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return score_files(prediction, reference, options, **kwargs)

    caplog.set_level(logging.INFO, logger="jdt_service.access")
    with make_client(tmp_path, oom_unless_cpu, device="auto") as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
        assert r.status_code == 200
        assert rows_by_label(r.json())[1]["dice"] == pytest.approx(dice_f64(pred, ref, 1), abs=1e-6)
        assert metric_value(c, "jdt_gpu_fallbacks_total") == 1
    assert devices == ["auto", "cpu"]
    line = next(
        rec for rec in caplog.records if getattr(rec, "jdt", {}).get("route") == "/v1/scores"
    )
    assert line.jdt["gpu_fallback"] is True


def test_unexpected_failure_is_a_json_500_without_details(
    tmp_path: Path, pair, caplog, nifti_bytes, emptied
) -> None:
    pred, ref = pair

    def broken(*args, **kwargs):
        raise RuntimeError("secret /path/patient.nii.gz")

    with make_client(tmp_path, broken) as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
    assert_error(r, 500, "internal_error")
    assert "patient" not in r.text
    logged = " ".join(rec.getMessage() for rec in caplog.records)
    assert "RuntimeError" in logged and "patient" not in logged
    assert emptied(tmp_path / "uploads") == []


# ---------------------------------------------------------------- logs, CORS, OpenAPI


def test_one_log_line_per_request_without_names_or_content(
    client: TestClient, pair, caplog, nifti_bytes
) -> None:
    pred, ref = pair
    caplog.set_level(logging.INFO, logger="jdt_service")
    r = client.post(
        "/v1/scores",
        files=files_for(nifti_bytes(pred), nifti_bytes(ref)),
        data={"case_id": "case-7"},
        headers={"X-Request-ID": "req-1"},
    )
    assert r.status_code == 200
    lines = [rec for rec in caplog.records if rec.name == "jdt_service.access"]
    assert len(lines) == 1
    fields = lines[0].jdt
    assert fields["request_id"] == "req-1" and fields["status"] == 200
    assert fields["prediction_bytes"] == len(nifti_bytes(pred))
    assert fields["voxels"] == pred.size and fields["device"] == "cpu"
    assert {"duration_s", "queue_s", "score_s", "bytes_in", "bytes_out"} <= set(fields)
    for formatter in (JsonFormatter(), TextFormatter()):
        text = formatter.format(lines[0])
        assert "patient_smith" not in text and "case-7" not in text
    assert json.loads(JsonFormatter().format(lines[0]))["status"] == 200


_MALFORMED_FORM_LOGS = """
import logging.config, sys
from jdt_service.logs import uvicorn_log_config
from jdt_service.settings import Settings
from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser

settings = Settings(temp_dir=sys.argv[1], data_dir=sys.argv[1] + "/data", log_format="json")
logging.config.dictConfig(uvicorn_log_config(settings))  # as uvicorn does in the server
try:  # what uploads.py does with a body whose boundary is not the declared one
    MultipartParser(b"XBOUNDARYX").write(b"--OTHER\\r\\n")
except FormParserError:
    pass
else:
    raise AssertionError("the parser took a wrong boundary")
logging.getLogger("python_multipart.multipart").error("an error of the form parser")
"""


def test_form_parser_lines_are_dropped_or_in_the_service_format(tmp_path: Path) -> None:
    """python_multipart logs a warning (quoting the client's bytes) for each malformed body
    before it raises: dropped, not written bare through logging's lastResort; its errors
    are JSON lines. (The real server: test_service_server.py.)"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("JDT_")}
    done = subprocess.run(
        [sys.executable, "-c", _MALFORMED_FORM_LOGS, str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = [json.loads(line) for line in done.stderr.splitlines()]  # every line is JSON
    assert "boundary character" not in done.stderr
    assert [(line["logger"], line["level"], line["msg"]) for line in lines] == [
        ("python_multipart.multipart", "error", "an error of the form parser")
    ]


def test_cors_origins(tmp_path: Path) -> None:
    with make_client(tmp_path, cors_origins=["https://viewer.example"]) as c:
        r = c.get("/healthz", headers={"Origin": "https://viewer.example"})
        assert r.headers["access-control-allow-origin"] == "https://viewer.example"
        r = c.get("/healthz", headers={"Origin": "https://evil.example"})
        assert "access-control-allow-origin" not in r.headers


def test_openapi_documents_every_status_and_the_report_schema(
    client: TestClient, pair, nifti_bytes
) -> None:
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/scores"]["post"]
    assert {"200", "400", "401", "413", "415", "422", "503", "504"} <= set(post["responses"])
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["required"] == ["prediction", "reference"]
    assert {"labels", "include_background", "metrics", "empty", "affine_tol"} <= set(
        form["properties"]
    )
    # a real report validates against the documented 200 schema
    pred, ref = pair
    report = client.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref))).json()
    assert_documented_report(client, report)
    error_schema = post["responses"]["422"]["content"]["application/json"]["schema"]
    jsonschema.validate(
        {"detail": {"code": "x", "message": "y"}},
        {"components": spec["components"], **error_schema},
    )


def test_every_response_forbids_framing_sniffing_and_referrers(tmp_path: Path) -> None:
    """The page, its assets, the docs, the API's answers and its errors: no other site may
    frame them (clickjacking), no content is sniffed, no address leaks as a referrer."""
    with make_client(tmp_path) as c:
        answers = {
            "page": c.get("/"),
            "asset": c.get("/static/page.js"),
            "docs": c.get("/docs"),
            "info": c.get("/v1/info"),
            "health": c.get("/healthz"),
            "404": c.get("/nowhere"),
            "422": c.post("/v1/scores", files={"prediction": ("p.nii", b"x")}),
        }
        for name, r in answers.items():
            assert r.headers["x-content-type-options"] == "nosniff", name
            assert r.headers["x-frame-options"] == "DENY", name
            assert r.headers["referrer-policy"] == "no-referrer", name
        for name in ("page", "docs"):
            assert "frame-ancestors 'none'" in answers[name].headers["content-security-policy"]


def test_the_page_asks_for_a_key_when_only_admin_keys_are_set(tmp_path: Path) -> None:
    """Admin keys alone make ``/v1/*`` need a key (``/v1/info`` says so): so does the page."""
    with make_client(tmp_path, admin_keys=["adm-key"]) as c:
        assert c.get("/v1/info").status_code == 401
        page = c.get("/").text
    assert 'data-auth-required="true"' in page
    with make_client(tmp_path) as c:
        assert 'data-auth-required="false"' in c.get("/").text


# ---------------------------------------------------------------- GPU (skipped without CUDA)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_cuda
def test_gpu_ready_info_and_scoring(tmp_path: Path, nifti_bytes) -> None:
    rng = np.random.default_rng(5)
    prob = rng.random(SHAPE).astype(np.float32)
    ref = (rng.random(SHAPE) < 0.5).astype(np.float32)
    with make_client(tmp_path, device="cuda") as c:
        ready = c.get("/readyz").json()
        assert ready["status"] == "ready" and ready["device"] == "cuda"
        gpu = c.get("/v1/info").json()["gpu"]
        assert gpu["name"] and gpu["total_memory_bytes"] >= gpu["free_memory_bytes"] > 0
        r = c.post(
            "/v1/scores",
            files=files_for(nifti_bytes(prob), nifti_bytes(ref)),
            data={"kind": "probabilities"},
        )
        assert r.status_code == 200, r.text
        assert r.json()["device"].startswith("cuda")
        assert metric_value(c, "jdt_gpu_fallbacks_total") == 0
    x, y = prob.astype(np.float64), ref.astype(np.float64)
    tp = (x.sum() + y.sum() - np.abs(x - y).sum()) / 2
    dices = [row["dice"] for row in r.json()["labels"] if row.get("dice") is not None]
    assert any(math.isclose(d, 2 * tp / (x.sum() + y.sum()), abs_tol=1e-5) for d in dices)


@pytest.mark.parametrize(
    "error",
    [MemoryError(), RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried ...")],
    ids=["numpy", "torch-cpu"],
)
def test_host_out_of_memory_is_503(tmp_path: Path, pair, error, nifti_bytes, emptied) -> None:
    pred, ref = pair

    def no_memory(*args, **kwargs):
        raise error

    with make_client(tmp_path, no_memory, retry_after=9) as c:
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
    assert_error(r, 503, "out_of_memory")
    assert r.headers["retry-after"] == "9"
    assert emptied(tmp_path / "uploads") == []


# ---------------------------------------------------------------- hostile clients and memory


def multipart_body(boundary: str, pred: bytes, ref: bytes) -> bytes:
    """A complete ``multipart/form-data`` body with the two files, built by hand."""
    parts = []
    for name, data in (("prediction", pred), ("reference", ref)):
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"; filename="x"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
            + data
            + b"\r\n"
        )
    return b"".join(parts) + f"--{boundary}--\r\n".encode()


def test_boundary_over_256_characters_is_a_400(client: TestClient, pair, nifti_bytes) -> None:
    pred, ref = pair
    boundary = "b" * 300
    r = client.post(
        "/v1/scores",
        content=multipart_body(boundary, nifti_bytes(pred), nifti_bytes(ref)),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    detail = assert_error(r, 400, "malformed_multipart")
    assert "256" in detail["message"]


def test_epilogue_after_the_final_boundary_is_bounded(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    pred, ref = pair
    body = multipart_body("XyZ", nifti_bytes(pred), nifti_bytes(ref))
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    sent = [0]
    app = make_client(tmp_path).app

    async def chunked() -> object:  # an iterator body: sent chunked, no Content-Length
        yield body
        for _ in range(3072):  # up to 192 MiB of epilogue
            sent[0] += 1
            yield b"\0" * 65536

    async def drive() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            bomb = await ac.post("/v1/scores", content=chunked(), headers=headers)
            # a line break after the final boundary (what clients send) is fine
            fine = await ac.post("/v1/scores", content=body + b"\r\n", headers=headers)
            return bomb, fine

    bomb, fine = asyncio.run(drive())
    assert_error(bomb, 413, "upload_too_large")
    assert sent[0] < 8  # the epilogue was not read to its end
    assert fine.status_code == 200, fine.text
    assert emptied(tmp_path / "uploads") == []


def test_endless_chunked_upload_is_cut_at_the_limit(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    from jdt_service.uploads import body_limit

    pred, _ = pair
    received = [0]
    app = make_client(tmp_path, max_upload_bytes=1 << 20).app
    part = b'--XyZ\r\nContent-Disposition: form-data; name="prediction"; filename="p"\r\n\r\n'

    async def endless_file() -> object:  # a file part that never ends, chunked
        yield part + nifti_bytes(pred)
        while received[0] < 64 << 20:  # (stop anyway after 64 MiB)
            received[0] += 65536
            yield b"\0" * 65536

    async def drive() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            return await ac.post(
                "/v1/scores",
                content=endless_file(),
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            )

    assert_error(asyncio.run(drive()), 413, "upload_too_large")
    assert received[0] <= body_limit(1 << 20, 20) + 65536
    assert emptied(tmp_path / "uploads") == []


def test_slow_upload_gets_408_and_frees_its_place(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    pred, ref = pair
    body = multipart_body("XyZ", nifti_bytes(pred), nifti_bytes(ref))
    app = make_client(tmp_path, min_upload_rate=1000, header_timeout=0.2, max_uploads=1).app

    async def trickle() -> object:  # 10 bytes every 50 ms: 200 bytes/s, below 1000
        for i in range(0, len(body), 10):
            await asyncio.sleep(0.05)
            yield body[i : i + 10]

    async def drive() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            slow = await ac.post(
                "/v1/scores",
                content=trickle(),
                headers={"Content-Type": "multipart/form-data; boundary=XyZ"},
            )
            fast = await ac.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
            return slow, fast

    slow, fast = asyncio.run(drive())
    assert_error(slow, 408, "upload_too_slow")
    assert fast.status_code == 200, fast.text
    assert app.state.pool.admitted == 0
    assert emptied(tmp_path / "uploads") == []


def test_uploading_does_not_take_a_scoring_slot(tmp_path: Path, pair, nifti_bytes, emptied) -> None:
    """One scoring slot, no queue: a request still uploading leaves it to a finished upload."""
    pred, ref = pair
    with make_client(tmp_path, max_concurrency=1, max_queue=0, max_uploads=2) as c:
        uploading = c.app.state.pool.admit()  # a slow client, still sending its body
        r = c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref)))
        assert r.status_code == 200, r.text
        asyncio.run(uploading.__aexit__(None, None, None))
    assert emptied(tmp_path / "uploads") == []


def never_called(*args, **kwargs):
    raise AssertionError("the scorer must not run for a job refused by its memory estimate")


def test_job_over_the_memory_limit_is_413_before_scoring(
    tmp_path: Path, nifti_bytes, emptied
) -> None:
    from jdt_service.job_memory import job_bytes
    from monai_jdt.scoring import ScoringOptions
    from monai_jdt.scoring.nifti import inspect_nifti

    shape = (64, 64, 64)
    labels = (np.arange(np.prod(shape)) % 3).reshape(shape).astype(np.float64)
    files = files_for(nifti_bytes(labels), nifti_bytes(labels))
    pred_path = tmp_path / "p.nii.gz"
    pred_path.write_bytes(files["prediction"][1])
    info = inspect_nifti(pred_path)
    need = job_bytes(info, info, ScoringOptions())
    # float64 volumes are loaded whole: 2 x (8 stored + 8 label map) bytes per voxel
    assert need >= 2 * 16 * labels.size
    with make_client(tmp_path, never_called, max_job_bytes=need - 1) as c:
        detail = assert_error(c.post("/v1/scores", files=files), 413, "job_too_large")
    assert "MiB" in detail["message"]
    with make_client(tmp_path, max_job_bytes=need) as c:
        assert c.post("/v1/scores", files=files).status_code == 200
    assert emptied(tmp_path / "uploads") == []


def test_memory_budget_across_jobs_gives_503_with_retry_after(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    from jdt_service.job_memory import CHUNK_OVERHEAD_BYTES

    pred, ref = pair
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))
    started, release = threading.Event(), threading.Event()

    def stuck_first(*args, **kwargs):
        if not started.is_set():
            started.set()
            release.wait(10)
        return score_files(*args, **kwargs)

    # room for one streamed label job (a little over CHUNK_OVERHEAD_BYTES), not for two
    budget = 2 * CHUNK_OVERHEAD_BYTES
    app = make_client(
        tmp_path, stuck_first, memory_budget_bytes=budget, max_concurrency=2, retry_after=4
    ).app

    async def drive() -> tuple[httpx.Response, httpx.Response, int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
            first = asyncio.create_task(ac.post("/v1/scores", files=files))
            while not started.is_set():
                await asyncio.sleep(0.01)
            reserved = app.state.pool.reserved_bytes
            second = await ac.post("/v1/scores", files=files)
            release.set()
            return await first, second, reserved

    first, second, reserved = asyncio.run(drive())
    assert first.status_code == 200
    assert CHUNK_OVERHEAD_BYTES < reserved <= budget
    assert_error(second, 503, "server_busy")
    assert second.headers["retry-after"] == "4" and "budget" in second.json()["detail"]["message"]
    assert app.state.pool.reserved_bytes == 0
    assert emptied(tmp_path / "uploads") == []


def test_unhandled_error_logs_a_path_relative_to_its_package(
    tmp_path: Path, pair, caplog, nifti_bytes
) -> None:
    pred, ref = pair

    def broken(*args, **kwargs):
        return {}["missing"]  # a KeyError raised in this file

    with make_client(tmp_path, broken) as c:
        assert_error(
            c.post("/v1/scores", files=files_for(nifti_bytes(pred), nifti_bytes(ref))),
            500,
            "internal_error",
        )
    line = next(r.getMessage() for r in caplog.records if "unhandled" in r.getMessage())
    where = line.split(" at ", 1)[1]
    assert where.startswith("test_service_api.py:"), line
    assert str(Path(__file__).parent) not in line


def test_boundary_metrics_above_the_voxel_limit_are_413(
    tmp_path: Path, pair, nifti_bytes, emptied
) -> None:
    pred, ref = pair
    voxels = math.prod(SHAPE)
    files = files_for(nifti_bytes(pred), nifti_bytes(ref))
    with make_client(tmp_path, max_boundary_voxels=voxels - 1) as c:
        r = c.post("/v1/scores", files=files, data={"metrics": "dice,hd95"})
        assert r.status_code == 413, r.text
        assert r.json()["detail"]["code"] == "boundary_too_large"
        assert str(voxels) in r.json()["detail"]["message"]
        # overlap metrics are not limited by it, and at the limit boundary metrics run
        assert c.post("/v1/scores", files=files, data={"metrics": "dice"}).status_code == 200
    with make_client(tmp_path, max_boundary_voxels=voxels) as c:
        r = c.post("/v1/scores", files=files, data={"metrics": "dice,hd95"})
        assert r.status_code == 200, r.text
        assert all("hd95" in row for row in r.json()["labels"])
    assert emptied(tmp_path / "uploads") == []
