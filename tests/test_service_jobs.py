"""Evaluation jobs through the API, on SQLite and on a real PostgreSQL 15 server.

Known answers come from ``monai_jdt.scoring.score_directory`` run on the same files (the
reference implementation of ``score-dir``), whose own numbers are checked against numpy in
the scoring tests.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import inspect, select, text

from jdt_service.app import create_app
from jdt_service.db import AuditEntry, Job, ReferenceCase, ReferenceSet, open_database, utcnow
from jdt_service.jobs import case_report_from_dict, claim_job, job_result, reference_changes
from jdt_service.jobs_runner import JobRunner
from jdt_service.settings import Settings
from monai_jdt.scoring import ScoringOptions, score_directory, score_files
from monai_jdt.scoring.folders import complete_label_set, write_csv

ADMIN = {"Authorization": "Bearer adm"}
TEAM_A = {"Authorization": "Bearer ka"}
TEAM_B = {"Authorization": "Bearer kb"}


def make_settings(tmp_path: Path, database_url: str | None, **extra: Any) -> Settings:
    values: dict[str, Any] = {
        "device": "cpu",
        "temp_dir": tmp_path,
        "data_dir": tmp_path / "data",
        "database_url": database_url,
        "api_keys": ["team-a:ka", "team-b:kb"],
        "admin_keys": ["adm"],
        "job_workers": 2,
        **extra,
    }
    return Settings(**values)


@pytest.fixture
def client(tmp_path: Path, database_url: str | None) -> Iterator[TestClient]:
    with TestClient(create_app(make_settings(tmp_path, database_url))) as c:
        yield c


def write_cases(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def upload(name: str, data: bytes) -> tuple[str, io.BytesIO, str]:
    return (name, io.BytesIO(data), "application/octet-stream")


def text_fields(**fields: str) -> dict[str, tuple[None, str]]:
    """Text fields sent as multipart/form-data (as ``curl -F`` does) without a file."""
    return {name: (None, value) for name, value in fields.items()}


@pytest.fixture
def create_set(archive_bytes) -> Callable[..., dict[str, Any]]:
    """``create_set(client, refs, **fields)``: a reference set uploaded as an admin; its JSON."""

    def create(client: TestClient, refs: dict[str, bytes], **fields: str) -> dict[str, Any]:
        response = client.post(
            "/v1/reference-sets",
            data={"name": "liver-test", **fields},
            files={"references": upload("refs.tar.gz", archive_bytes(refs, "tar", "refs"))},
            headers=ADMIN,
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    return create


@pytest.fixture
def post_job(archive_bytes) -> Callable[..., Any]:
    """``post_job(client, preds, headers, **fields)``: the answer to ``POST /v1/jobs`` of the
    predictions ``preds`` (zipped) and the form ``fields``, whatever its status."""

    def post(
        client: TestClient, preds: dict[str, bytes], headers: dict[str, str], **fields: str
    ) -> Any:
        return client.post(
            "/v1/jobs",
            data=fields,
            files={"predictions": upload("p.zip", archive_bytes(preds, "zip", "preds"))},
            headers=headers,
        )

    return post


@pytest.fixture
def submit(post_job) -> Callable[..., dict[str, Any]]:
    """``submit(client, preds, headers, **fields)``: a job submitted with ``headers``; its JSON."""

    def send(
        client: TestClient, preds: dict[str, bytes], headers: dict[str, str], **fields: str
    ) -> dict[str, Any]:
        response = post_job(client, preds, headers, **fields)
        assert response.status_code == 202, response.text
        assert response.headers["location"] == f"/v1/jobs/{response.json()['id']}"
        body: dict[str, Any] = response.json()
        return body

    return send


def wait_finished(client: TestClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """Long-poll until the job is finished (bounded, so a hang fails instead of blocking CI)."""
    for _ in range(4):
        body: dict[str, Any] = client.get(f"/v1/jobs/{job_id}?wait=30", headers=headers).json()
        if body["status"] in ("done", "failed", "cancelled"):
            return body
    raise AssertionError(f"job {job_id} did not finish: {body}")


def test_long_poll_answers_at_the_deadline_or_when_the_job_ends(
    client: TestClient, case_files, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=31)
    ref_set = create_set(client, refs)
    client.app.state.jobs_runner.stop()  # type: ignore[attr-defined]  # jobs stay queued
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    url = f"/v1/jobs/{job['id']}"
    assert client.get(url + "?wait=0.2", headers=TEAM_A).json()["status"] == "queued"
    for bad in ("-1", "61", "soon"):
        answer = client.get(url + f"?wait={bad}", headers=TEAM_A)
        assert answer.status_code == 422, answer.text
    assert client.get(url + "?wait=0.1", headers=TEAM_B).status_code == 404  # another team's

    waited: list[dict[str, Any]] = []
    poll = threading.Thread(
        target=lambda: waited.append(client.get(url + "?wait=30", headers=TEAM_A).json())
    )
    poll.start()
    time.sleep(0.3)
    assert waited == []  # still waiting: the job has not ended
    assert client.delete(url, headers=TEAM_A).json()["status"] == "cancelled"
    poll.join(timeout=30)
    assert [body["status"] for body in waited] == ["cancelled"]


def test_long_polls_answer_at_once_when_the_server_starts_stopping(
    client: TestClient, case_files, create_set, submit
) -> None:
    preds, refs = case_files(1, seed=32)
    ref_set = create_set(client, refs)
    client.app.state.jobs_runner.stop()  # type: ignore[attr-defined]  # the job stays queued
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    waited: list[dict[str, Any]] = []
    poll = threading.Thread(
        target=lambda: waited.append(
            client.get(f"/v1/jobs/{job['id']}?wait=60", headers=TEAM_A).json()
        )
    )
    poll.start()
    time.sleep(0.3)
    assert waited == []
    events = client.app.state.job_events  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(events.stopping.set)  # what the protocol does when a shutdown begins
    poll.join(timeout=10)  # well before the 60 s the poll asked for
    assert [body["status"] for body in waited] == ["queued"]


def test_times_read_back_keep_their_time_zone(
    client: TestClient, case_files, create_set, submit
) -> None:
    """SQLite stores naive times: a job read back had no +00:00, the one just created had."""
    preds, refs = case_files(2, seed=83)
    ref_set = create_set(client, refs)
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    read = client.get(f"/v1/jobs/{job['id']}", headers=TEAM_A).json()
    assert read["created_at"] == job["created_at"] and read["created_at"].endswith("+00:00")
    listed = client.get("/v1/reference-sets", headers=ADMIN).json()["reference_sets"]
    assert listed[0]["created_at"].endswith("+00:00")


def test_migrations_build_the_schema(tmp_path: Path, database_url: str | None) -> None:
    db = open_database(tmp_path / "data", database_url)
    try:
        tables = set(inspect(db.engine).get_table_names())
        assert {"reference_sets", "reference_cases", "jobs", "case_results", "audit_log"} <= tables
        with db.engine.connect() as conn:
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "0003"
    finally:
        db.dispose()
    again = open_database(tmp_path / "data", database_url)  # a second start-up is a no-op
    again.dispose()


def test_migration_0003_drops_only_requested_without_labels(
    tmp_path: Path, database_url: str | None
) -> None:
    """Rows stored when only_requested without labels was accepted (a no-op) must still be
    readable now that it is refused: the migration drops it there, and only there."""
    from alembic import command
    from alembic.config import Config

    import jdt_service.db as db_module

    db = open_database(tmp_path / "data", database_url)
    stored = {
        "a": {"only_requested": "true"},
        "b": {"only_requested": "yes", "labels": "1=liver", "metrics": "dice"},
        "c": {"only_requested": "false", "empty": "one"},
        "d": {"metrics": "dice"},
    }
    with db.session.begin() as session:
        for job_id, options in stored.items():
            row = _job_row(job_id, "done")
            row.options = options
            session.add(row)
        session.add(ReferenceSet(id="s", name="s", version="v", folder="/x", options=stored["a"]))
    config = Config()
    config.set_main_option("script_location", str(Path(db_module.__file__).with_name("migrations")))
    with db.engine.begin() as connection:  # back to 0002, then up again over the rows
        config.attributes["connection"] = connection
        command.downgrade(config, "0002")
        command.upgrade(config, "head")
    with db.session() as session:
        options = {job_id: session.get(Job, job_id).options for job_id in stored}  # type: ignore[union-attr]
        set_options = session.get(ReferenceSet, "s").options  # type: ignore[union-attr]
    db.dispose()
    assert options == {
        "a": {},
        "b": stored["b"],
        "c": {"empty": "one"},
        "d": stored["d"],
    }
    assert set_options == {}


def _job_row(job_id: str, status: str = "queued") -> Job:
    return Job(
        id=job_id,
        team="t",
        status=status,
        folder="/nowhere",
        references_folder="/nowhere",
        options={},
        cases=[],
        unpaired={"predictions": [], "references": []},
    )


def test_each_job_is_claimed_once_and_stale_leases_are_taken_over(
    tmp_path: Path, database_url: str | None
) -> None:
    db = open_database(tmp_path / "data", database_url)
    try:
        with db.session.begin() as session:
            session.add_all([_job_row(f"job{i:02d}") for i in range(12)])
        claims: dict[str, list[str]] = {"w1": [], "w2": [], "w3": []}

        def worker(name: str) -> None:
            while (job := claim_job(db, name, lease_s=60)) is not None:
                claims[name].append(job.id)

        threads = [threading.Thread(target=worker, args=(name,)) for name in claims]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        claimed = [job for jobs in claims.values() for job in jobs]
        assert sorted(claimed) == [f"job{i:02d}" for i in range(12)]
        assert claim_job(db, "w4", lease_s=60) is None  # all held, leases fresh
        with db.session.begin() as session:
            stale = session.get(Job, "job05")
            assert stale is not None
            stale.heartbeat_at = utcnow().replace(year=2000)
        taken = claim_job(db, "w4", lease_s=60)
        assert taken is not None and taken.id == "job05" and taken.claimed_by == "w4"
    finally:
        db.dispose()


def test_case_report_round_trips_through_its_dict(tmp_path: Path, case_files) -> None:
    preds, refs = case_files(1, seed=3)
    write_cases(tmp_path / "p", preds)
    write_cases(tmp_path / "r", refs)
    options = ScoringOptions(labels={1: "liver", 2: None}, metrics=("dice", "tversky"))
    report = score_files(tmp_path / "p/case_000.nii.gz", tmp_path / "r/case_000.nii.gz", options)
    assert case_report_from_dict(report.to_dict(), options).to_dict() == report.to_dict()


def test_region_rows_and_boundary_metrics_round_trip(tmp_path: Path, case_files) -> None:
    """A region row (label null) and the boundary metrics (nsd with its tolerance) survive."""
    preds, refs = case_files(1, seed=4)
    write_cases(tmp_path / "p", preds)
    write_cases(tmp_path / "r", refs)
    options = ScoringOptions(metrics=("dice", "hd95", "nsd"), regions={"both": (1, 2)})
    report = score_files(tmp_path / "p/case_000.nii.gz", tmp_path / "r/case_000.nii.gz", options)
    data = report.to_dict()
    assert [row["region"] for row in data["labels"] if row["label"] is None] == ["both"]
    assert case_report_from_dict(data, options).to_dict() == data


def test_job_report_is_the_score_dir_report(
    client: TestClient, tmp_path: Path, case_files, strip_timing, create_set, submit
) -> None:
    preds, refs = case_files(5, seed=10)
    refs["only_ref.nii.gz"] = refs["case_000.nii.gz"]
    preds["only_pred.nii.gz"] = preds["case_001.nii.gz"]
    preds["case_002.nii.gz"] = b"not a nifti file at all" * 20  # a failed case, not fatal
    ref_set = create_set(client, refs, labels="1=liver,2=spleen")
    assert ref_set["version"] and len(ref_set["cases"]) == 6
    assert ref_set["cases"][0] == {
        "case_id": "case_000",
        "shape": [12, 10, 8],
        "spacing_mm": [0.5, 0.75, 1.5],
    }
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"], metrics="dice,jaccard")
    assert job["status"] in ("queued", "running")
    assert job["unpaired"] == {
        "predictions": ["only_pred.nii.gz"],
        "references": ["only_ref.nii.gz"],
    }
    status = wait_finished(client, job["id"], TEAM_A)
    assert status["status"] == "done", status
    assert status["progress"] == {"cases_done": 5, "cases_total": 5, "failures": 1}

    expected = score_directory(
        write_cases(tmp_path / "p", preds),
        write_cases(tmp_path / "r", refs),
        ScoringOptions(labels={1: "liver", 2: "spleen"}, metrics=("dice", "jaccard")),
        workers=1,
    )
    expected_json = expected.to_dict()
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=TEAM_A).json()
    assert strip_timing(report) == strip_timing(expected_json)
    assert [f["code"] for f in report["failures"]] == ["not_nifti"]

    stream = io.StringIO()
    write_csv(expected.reports, stream, expected.failures)
    assert client.get(f"/v1/jobs/{job['id']}/cases.csv", headers=TEAM_A).text == stream.getvalue()

    gc = client.get(f"/v1/jobs/{job['id']}/metrics.json", headers=TEAM_A).json()
    assert set(gc) == {"case", "aggregates"}
    case = expected.reports[0]
    assert gc["case"]["case_000"]["liver"]["dice"] == case.label(1).metrics["dice"]
    summary = expected.summary
    assert gc["aggregates"]["dice"]["mean"] == summary["foreground_mean"]["dice"]["mean"]
    assert gc["aggregates"]["jaccard"]["spleen"] == summary["labels"][1]["jaccard"]

    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    job_folder = settings.data_dir / "jobs" / job["id"]
    assert not (job_folder / "predictions").exists()  # deleted once scored
    assert list(job_folder.iterdir()) == []


def test_adhoc_references_archive(
    client: TestClient, tmp_path: Path, case_files, archive_bytes, strip_timing
) -> None:
    preds, refs = case_files(3, seed=20)
    response = client.post(
        "/v1/jobs",
        data={"include_background": "true"},
        files={
            "predictions": upload("p.tar.gz", archive_bytes(preds, "tar")),
            "references": upload("r.zip", archive_bytes(refs, "zip")),
        },
        headers=TEAM_B,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_finished(client, job_id, TEAM_B)["status"] == "done"
    expected = score_directory(
        write_cases(tmp_path / "p", preds),
        write_cases(tmp_path / "r", refs),
        ScoringOptions(include_background=True),
        workers=1,
    )
    report = client.get(f"/v1/jobs/{job_id}/report", headers=TEAM_B).json()
    assert strip_timing(report) == strip_timing(expected.to_dict())
    assert response.json()["reference_set"] is None


def test_teams_see_only_their_jobs_and_admin_keys_manage_sets(
    client: TestClient, case_files, archive_bytes, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=30)
    body = {"name": "s"}
    files = {"references": upload("r.zip", archive_bytes(refs))}
    assert client.post("/v1/reference-sets", data=body, files=files).status_code == 401
    refused = client.post("/v1/reference-sets", data=body, files=files, headers=TEAM_A)
    assert refused.status_code == 403 and refused.json()["detail"]["code"] == "forbidden"
    ref_set = create_set(client, refs)
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    for path in ("", "/report", "/cases.csv", "/metrics.json"):
        other = client.get(f"/v1/jobs/{job['id']}{path}", headers=TEAM_B)
        assert other.status_code == 404 and other.json()["detail"]["code"] == "not_found"
    assert client.delete(f"/v1/jobs/{job['id']}", headers=TEAM_B).status_code == 404
    assert client.get("/v1/jobs", headers=TEAM_B).json()["jobs"] == []
    listed = client.get("/v1/jobs", headers=TEAM_A).json()
    assert [j["id"] for j in listed["jobs"]] == [job["id"]] and listed["total"] == 1
    wait_finished(client, job["id"], TEAM_A)
    assert client.delete(f"/v1/reference-sets/{ref_set['id']}", headers=TEAM_A).status_code == 403


def test_list_is_paged_newest_first_and_delete_removes(
    client: TestClient, case_files, create_set, submit
) -> None:
    preds, refs = case_files(1, seed=40)
    ref_set = create_set(client, refs)
    ids = [submit(client, preds, TEAM_A, reference_set=ref_set["id"])["id"] for _ in range(3)]
    page = client.get("/v1/jobs?limit=2", headers=TEAM_A).json()
    assert [j["id"] for j in page["jobs"]] == ids[::-1][:2] and page["total"] == 3
    rest = client.get("/v1/jobs?limit=2&offset=2", headers=TEAM_A).json()
    assert [j["id"] for j in rest["jobs"]] == [ids[0]]
    for job_id in ids:
        wait_finished(client, job_id, TEAM_A)
    assert client.delete(f"/v1/jobs/{ids[0]}", headers=TEAM_A).status_code == 204
    assert client.get(f"/v1/jobs/{ids[0]}", headers=TEAM_A).status_code == 404
    documented = client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}"]["delete"]
    assert {"200", "204", "404"} <= set(documented["responses"])  # 204 was missing
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert not (settings.data_dir / "jobs" / ids[0]).exists()


def test_cancel_a_queued_job(
    tmp_path: Path, database_url: str | None, case_files, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=50)
    # a runner that never claims: its lease poll is irrelevant, the job stays queued
    app = create_app(make_settings(tmp_path, database_url))
    with TestClient(app) as client:
        app.state.jobs_runner.stop()
        ref_set = create_set(client, refs)
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        cancelled = client.delete(f"/v1/jobs/{job['id']}", headers=TEAM_A)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert client.get(f"/v1/jobs/{job['id']}/report", headers=TEAM_A).status_code == 409
        assert client.delete(f"/v1/jobs/{job['id']}", headers=TEAM_A).status_code == 204


def test_a_cancel_that_meets_the_job_finishing_keeps_it_done(
    tmp_path: Path, database_url: str | None, case_files, create_set, submit
) -> None:
    """The runner marks the job done between the DELETE's read and its write: the job stays
    done, with its report (it was relabelled cancelled and its results hidden)."""
    from sqlalchemy import event, text

    preds, refs = case_files(2, seed=51)
    app = create_app(make_settings(tmp_path, database_url))
    with TestClient(app) as client:
        app.state.jobs_runner.stop()
        ref_set = create_set(client, refs)
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        engine = app.state.jobs_db.engine
        summary = {"metrics": []}
        fired: list[bool] = []

        def runner_finishes_first(conn, cursor, statement, parameters, context, many) -> None:
            cancel = statement.lstrip().upper().startswith("UPDATE JOBS")
            if cancel and "cancelled" in str(parameters) and not fired:
                fired.append(True)
                with engine.begin() as other:  # another connection: the runner's
                    other.execute(
                        text("UPDATE jobs SET status = 'done', summary = :s WHERE id = :id"),
                        {"s": json.dumps(summary), "id": job["id"]},
                    )

        event.listen(engine, "before_cursor_execute", runner_finishes_first)
        answered = client.delete(f"/v1/jobs/{job['id']}", headers=TEAM_A)
        event.remove(engine, "before_cursor_execute", runner_finishes_first)
        assert fired
        assert answered.status_code == 200 and answered.json()["status"] == "done"
        assert client.get(f"/v1/jobs/{job['id']}", headers=TEAM_A).json()["status"] == "done"
        assert (tmp_path / "data" / "jobs" / job["id"] / "predictions").exists()


def test_leaderboard_ranks_the_latest_job_of_each_team(
    client: TestClient, case_files, create_set, submit
) -> None:
    preds, refs = case_files(3, seed=60)
    ref_set = create_set(client, refs)
    board_url = f"/v1/reference-sets/{ref_set['id']}/leaderboard"
    for query in ("metric=__class__", "aggregate=%00", "metric=precision&aggregate=D"):
        # refused before any job has finished too, not an empty board
        early = client.get(f"{board_url}?{query}", headers=TEAM_A)
        assert early.status_code == 422 and early.json()["detail"]["code"] == "invalid_option"
    perfect = submit(client, refs, TEAM_B, reference_set=ref_set["id"])  # dice 1 everywhere
    noisy = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    for job, who in ((perfect, TEAM_B), (noisy, TEAM_A)):
        assert wait_finished(client, job["id"], who)["status"] == "done"
    board = client.get(
        f"/v1/reference-sets/{ref_set['id']}/leaderboard?metric=dice&aggregate=mean",
        headers=TEAM_A,
    ).json()
    entries = board["entries"]
    assert [e["team"] for e in entries] == ["team-b", "team-a"]
    assert [e["rank"] for e in entries] == [1, 2]
    assert entries[0]["score"] == 1.0
    noisy_report = client.get(f"/v1/jobs/{noisy['id']}/report", headers=TEAM_A).json()
    assert entries[1]["score"] == noisy_report["summary"]["foreground_mean"]["dice"]["mean"] < 1
    fine = client.get(
        f"/v1/reference-sets/{ref_set['id']}/leaderboard?metric=jaccard&aggregate=D",
        headers=TEAM_A,
    ).json()["entries"]
    assert fine[1]["score"] == noisy_report["summary"]["fine_grained"]["jaccard"]["D"]
    bad = client.get(f"/v1/reference-sets/{ref_set['id']}/leaderboard?metric=x", headers=TEAM_A)
    assert bad.status_code == 422
    # a metric no ranked job scored ranked every team with a null score
    unscored = client.get(f"{board_url}?metric=hd95", headers=TEAM_A)
    assert unscored.status_code == 422, unscored.text
    assert "no ranked job on this set scored hd95" in unscored.json()["detail"]["message"]
    # a newer job of team-b replaces its perfect one
    newer = submit(client, preds, TEAM_B, reference_set=ref_set["id"])
    wait_finished(client, newer["id"], TEAM_B)
    again = client.get(f"/v1/reference-sets/{ref_set['id']}/leaderboard", headers=TEAM_A).json()
    assert [e["rank"] for e in again["entries"]] == [1, 1]


def test_leaderboard_ranks_by_boundary_metrics_lowest_distance_first(
    client: TestClient, case_files, create_set, submit
) -> None:
    """A challenge ranks by HD95 too: the perfect team first (0 mm), and by NSD (highest
    first); the board says which way it ranks."""
    preds, refs = case_files(2, seed=61)
    ref_set = create_set(client, refs, metrics="dice,hd95,nsd")
    perfect = submit(client, refs, TEAM_B, reference_set=ref_set["id"])
    noisy = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    for job, who in ((perfect, TEAM_B), (noisy, TEAM_A)):
        assert wait_finished(client, job["id"], who)["status"] == "done"
    noisy_report = client.get(f"/v1/jobs/{noisy['id']}/report", headers=TEAM_A).json()
    url = f"/v1/reference-sets/{ref_set['id']}/leaderboard"
    for metric, better, perfect_score in (("hd95", "lower", 0.0), ("nsd", "higher", 1.0)):
        board = client.get(f"{url}?metric={metric}", headers=TEAM_A).json()
        assert board["better"] == better
        assert [e["team"] for e in board["entries"]] == ["team-b", "team-a"]
        assert board["entries"][0]["score"] == perfect_score
        noisy_mean = noisy_report["summary"]["foreground_mean"][metric]["mean"]
        assert board["entries"][1]["score"] == noisy_mean != perfect_score
    assert client.get(f"{url}?metric=dice", headers=TEAM_A).json()["better"] == "higher"
    # team-a's newer job defines HD95 and NSD its own way: it does not rank (its older one
    # does), and the board says why; one that only adds a metric still ranks
    tuned = submit(
        client, preds, TEAM_A, reference_set=ref_set["id"], percentile="0", nsd_tolerance="100"
    )
    extra = submit(client, refs, TEAM_B, reference_set=ref_set["id"], metrics="dice,hd95,nsd,hd")
    for job, who in ((tuned, TEAM_A), (extra, TEAM_B)):
        assert wait_finished(client, job["id"], who)["status"] == "done"
    board = client.get(f"{url}?metric=hd95", headers=TEAM_A).json()
    assert [e["team"] for e in board["entries"]] == ["team-b", "team-a"]
    assert (
        board["entries"][1]["score"] == noisy_report["summary"]["foreground_mean"]["hd95"]["mean"]
    )
    assert board["excluded"] == [
        {
            "team": "team-a",
            "job": tuned["id"],
            "differs": ["nsd_tolerance", "percentile"],
            "failed": 0,
            "missing": 0,
        }
    ]


def test_leaderboard_ranks_only_jobs_scored_on_every_case(
    client: TestClient, case_files, create_set, submit
) -> None:
    """A mean over the cases that happened to be scored does not rank beside one over the
    whole set: team-a leaves its worst case out and team-b's one case fails; neither newer
    job ranks (team-a's older whole one does), and the board says what each lacked."""
    preds, refs = case_files(3, seed=62)
    ref_set = create_set(client, refs)
    url = f"/v1/reference-sets/{ref_set['id']}/leaderboard"
    whole = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    assert wait_finished(client, whole["id"], TEAM_A)["status"] == "done"
    report = client.get(f"/v1/jobs/{whole['id']}/report", headers=TEAM_A).json()
    by_case = {
        case["case_id"]: np.mean([row["dice"] for row in case["labels"] if row["label"]])
        for case in report["cases"]
    }
    worst = min(by_case, key=by_case.__getitem__)
    partial = submit(
        client,
        {name: data for name, data in preds.items() if not name.startswith(worst)},
        TEAM_A,
        reference_set=ref_set["id"],
    )
    broken = submit(
        client,
        {**refs, f"{worst}.nii.gz": b"not a NIfTI file " * 30},
        TEAM_B,
        reference_set=ref_set["id"],
    )
    for job, who in ((partial, TEAM_A), (broken, TEAM_B)):
        assert wait_finished(client, job["id"], who)["status"] == "done"
    partial_mean = client.get(f"/v1/jobs/{partial['id']}/report", headers=TEAM_A).json()["summary"][
        "foreground_mean"
    ]["dice"]["mean"]
    assert partial_mean > report["summary"]["foreground_mean"]["dice"]["mean"]
    board = client.get(url, headers=TEAM_A).json()
    assert [(e["team"], e["score"], e["cases"], e["failures"]) for e in board["entries"]] == [
        ("team-a", report["summary"]["foreground_mean"]["dice"]["mean"], 3, 0)
    ]
    assert board["excluded"] == [
        {"team": "team-a", "job": partial["id"], "differs": [], "failed": 0, "missing": 1},
        {"team": "team-b", "job": broken["id"], "differs": [], "failed": 1, "missing": 0},
    ]


def test_ids_and_names_with_a_nul_are_4xx_on_every_database(
    client: TestClient, case_files, create_set, submit, archive_bytes
) -> None:
    """PostgreSQL's text cannot hold a NUL: ``/v1/jobs/%00`` reached the query and answered
    500; SQLite stored a set named ``a\x00b``. An id that :func:`new_id` cannot give is a 404
    without a query, and a name with a control character is refused."""
    preds, refs = case_files(1, seed=63)
    ref_set = create_set(client, refs)
    for method, path in (
        ("GET", "/v1/reference-sets/%00"),
        ("GET", "/v1/reference-sets/a%00b/leaderboard"),
        ("DELETE", "/v1/reference-sets/%00"),
        ("GET", "/v1/jobs/%00"),
        ("GET", "/v1/jobs/%00/report"),
        ("DELETE", "/v1/jobs/%00"),
        ("GET", f"/v1/jobs/{ref_set['id'].upper()}"),
    ):
        answer = client.request(method, path, headers=ADMIN if "reference" in path else TEAM_A)
        assert answer.status_code == 404, (path, answer.text)
        assert answer.json()["detail"]["code"] == "not_found"
    job = client.post(
        "/v1/jobs",
        data={"reference_set": "x\x00y"},
        files={"predictions": upload("p.zip", archive_bytes(preds))},
        headers=TEAM_A,
    )
    assert job.status_code == 404 and job.json()["detail"]["code"] == "not_found"
    for name in ("a\x00b", "two\nlines"):
        named = client.post(
            "/v1/reference-sets",
            data={"name": name},
            files={"references": upload("r.zip", archive_bytes(refs))},
            headers=ADMIN,
        )
        assert named.status_code == 422, named.text
        assert named.json()["detail"]["code"] == "invalid_option"
        assert "control character" in named.json()["detail"]["message"]
    listed = client.get("/v1/reference-sets", headers=ADMIN).json()
    assert [entry["id"] for entry in listed["reference_sets"]] == [ref_set["id"]]


def test_audit_log_records_actions_without_file_names(
    client: TestClient, case_files, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=70)
    ref_set = create_set(client, refs)
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    wait_finished(client, job["id"], TEAM_A)
    db = client.app.state.jobs_db  # type: ignore[attr-defined]
    with db.session() as session:
        rows = session.scalars(select(AuditEntry).order_by(AuditEntry.id)).all()
    actions = [(r.team, r.action, r.cases) for r in rows]
    assert ("admin", "reference_set.create", 2) in actions
    assert ("team-a", "job.submit", 2) in actions
    assert ("team-a", "job.done", 2) in actions
    for row in rows:
        values = [str(getattr(row, c)) for c in ("team", "action", "job_id", "reference_set_id")]
        assert not any("case_" in v or ".nii" in v for v in values)


def test_reference_set_from_a_server_folder(
    tmp_path: Path, database_url: str | None, case_files, submit
) -> None:
    preds, refs = case_files(2, seed=80)
    root = tmp_path / "root"
    write_cases(root / "challenge" / "refs", refs)
    (tmp_path / "outside").mkdir()
    settings = make_settings(tmp_path, database_url, reference_root=root)
    with TestClient(create_app(settings)) as client:
        (root / "loop").symlink_to(root / "loop")
        odd = ("a\x00b", "a" * 300, "/".join(["d"] * 3000), "loop", "loop/x")
        for bad in ("../outside", "/etc", "challenge/../../outside", "missing", *odd):
            response = client.post(
                "/v1/reference-sets", files=text_fields(name="x", folder=bad), headers=ADMIN
            )
            assert response.status_code == 422, bad
        made = client.post(
            "/v1/reference-sets",
            files=text_fields(name="served", folder="challenge/refs"),
            headers=ADMIN,
        )
        assert made.status_code == 201, made.text
        set_id = made.json()["id"]
        job = submit(client, preds, TEAM_A, reference_set=set_id)
        assert wait_finished(client, job["id"], TEAM_A)["status"] == "done"
        assert client.delete(f"/v1/reference-sets/{set_id}", headers=ADMIN).status_code == 204
        assert sorted(p.name for p in (root / "challenge" / "refs").iterdir()) == sorted(refs)
        assert client.get(f"/v1/reference-sets/{set_id}", headers=ADMIN).status_code == 404


def test_a_set_deleted_while_a_job_on_it_is_submitted_is_404(
    tmp_path: Path, database_url: str | None, case_files, create_set, post_job, monkeypatch
) -> None:
    """The set goes while the predictions unpack: a set from a server folder keeps its files
    (the job's insert met the missing row: 500 IntegrityError), an uploaded set's folder goes
    just before the pairing (422 naming the server's folder). Both are 404 now."""
    from jdt_service.routers import jobs as jobs_routes

    preds, refs = case_files(2, seed=81)
    root = tmp_path / "root"
    write_cases(root / "refs", refs)
    settings = make_settings(tmp_path, database_url, reference_root=root)
    app = create_app(settings)
    unpack = jobs_routes.unpack_upload
    with TestClient(app) as client:
        served = client.post(
            "/v1/reference-sets", files=text_fields(name="served", folder="refs"), headers=ADMIN
        ).json()["id"]
        uploaded = create_set(client, refs)["id"]
        db = app.state.jobs_db

        async def unpack_then_delete_row(upload, field, target, settings):
            await unpack(upload, field, target, settings)
            with db.session.begin() as session:
                session.delete(session.get(ReferenceSet, served))

        def refused(set_id: str) -> str:
            answer = post_job(client, preds, TEAM_A, reference_set=set_id)
            assert answer.status_code == 404, answer.text
            assert answer.json()["detail"]["code"] == "not_found"
            return answer.text

        monkeypatch.setattr(jobs_routes, "unpack_upload", unpack_then_delete_row)
        refused(served)
        monkeypatch.setattr(jobs_routes, "unpack_upload", unpack)

        pairing = jobs_routes.pair_cases

        def folder_gone_first(predictions, references):
            shutil.rmtree(references)
            return pairing(predictions, references)

        monkeypatch.setattr(jobs_routes, "pair_cases", folder_gone_first)
        assert str(tmp_path) not in refused(uploaded)  # no server path
        assert client.get("/v1/jobs", headers=TEAM_A).json()["jobs"] == []


def test_start_up_removes_what_a_killed_process_left_while_receiving(
    tmp_path: Path, database_url: str | None, case_files, create_set, submit
) -> None:
    """A server killed while it received an archive leaves ``<kind>/<id>/upload``; the next
    start deletes it when the owner file names a dead process of this host, the whole folder
    when the job or set was never stored. Another host's, a live process's and an unowned
    folder stay (replicas share JDT_DATA_DIR)."""
    import socket

    from jdt_service.upload_folders import OWNER_FILE

    data = tmp_path / "data"
    preds, refs = case_files(1, seed=82)
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        stored = submit(client, preds, TEAM_A, reference_set=create_set(client, refs)["id"])
        wait_finished(client, stored["id"], TEAM_A)
    host, dead = socket.gethostname(), 4194305  # above Linux's largest pid

    def left(kind: str, name: str, owner: str | None) -> Path:
        upload = data / kind / name / "upload"
        upload.mkdir(parents=True, exist_ok=True)
        (upload / "predictions.upload").write_bytes(b"half an archive")
        (upload.parent / "predictions").mkdir(exist_ok=True)
        if owner is not None:
            (upload / OWNER_FILE).write_text(owner)
        return upload.parent

    gone_job = left("jobs", "a" * 32, f"{host}\n{dead}\n")
    gone_set = left("reference-sets", "b" * 32, f"{host}\n{dead}\n")
    stored_job = left("jobs", stored["id"], f"{host}\n{dead}\n")  # died after its row
    other_host = left("jobs", "c" * 32, f"elsewhere\n{dead}\n")
    live = left("jobs", "d" * 32, f"{host}\n{os.getppid()}\n")
    unowned = left("jobs", "e" * 32, None)
    with TestClient(create_app(make_settings(tmp_path, database_url))) as client:
        assert not gone_job.exists() and not gone_set.exists()
        assert stored_job.exists() and not (stored_job / "upload").exists()
        for kept in (other_host, live, unowned):
            assert (kept / "upload" / "predictions.upload").exists()
        job = client.get(f"/v1/jobs/{stored['id']}", headers=TEAM_A).json()
        assert job["status"] == "done"  # its row and report are untouched
        assert client.get(f"/v1/jobs/{stored['id']}/report", headers=TEAM_A).status_code == 200
        # a request that receives now writes its owner file, and deletes it with the upload
        again = submit(client, preds, TEAM_A, reference_set=job["reference_set"])
        assert not (data / "jobs" / again["id"] / "upload").exists()


def test_a_set_whose_files_changed_on_disk_is_refused(
    tmp_path: Path, database_url: str | None, case_files, post_job, submit
) -> None:
    """A server folder edited after registration would be scored as another set under the
    same version: a job on it is refused (409) until the folder is registered again, and a
    job queued before the edit fails with the same message instead of scoring it."""
    preds, refs = case_files(3, seed=83)
    root = tmp_path / "root"
    folder = write_cases(root / "refs", refs)
    settings = make_settings(tmp_path, database_url, reference_root=root)
    with TestClient(create_app(settings)) as client:
        made = client.post(
            "/v1/reference-sets", files=text_fields(name="x", folder="refs"), headers=ADMIN
        )
        assert made.status_code == 201, made.text
        set_id = made.json()["id"]
        first, second, third = sorted(refs)
        (folder / first).write_bytes(refs[second])  # another volume under the same name
        (folder / third).unlink()
        (folder / "extra_case.nii.gz").write_bytes(refs[third])
        r = post_job(client, preds, TEAM_A, reference_set=set_id)
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert detail["code"] == "reference_set_changed"
        case = third.removesuffix(".nii.gz")
        for part in (f"{first!r} was modified", f"case {case!r} is gone", "'extra_case' was added"):
            assert part in detail["message"]
        assert str(tmp_path) not in detail["message"]
        again = client.post(
            "/v1/reference-sets", files=text_fields(name="y", folder="refs"), headers=ADMIN
        )
        assert again.status_code == 201 and again.json()["version"] != made.json()["version"]
        job = submit(client, preds, TEAM_A, reference_set=again.json()["id"])
        assert wait_finished(client, job["id"], TEAM_A)["status"] == "done"

    renamed = [ReferenceCase(case_id="extra_case", file="x.nii")]
    changed = reference_changes(folder, renamed, root)
    assert "case 'extra_case' is now the file 'extra_case.nii.gz'" in changed
    old_row = ReferenceCase(case_id=first.removesuffix(".nii.gz"), file=first)  # revision 0001
    assert reference_changes(folder, [old_row], root) == [
        f"case {c!r} was added" for c in sorted([second.removesuffix(".nii.gz"), "extra_case"])
    ]
    # a file that became a link out of the root (registration refuses those), the folder gone:
    # named without any path of the server
    outside = write_cases(tmp_path / "outside", {first: refs[first]})
    (folder / first).unlink()
    (folder / first).symlink_to(outside / first)
    linked = reference_changes(folder, [old_row], root)
    assert f"{first!r} is now a link out of the set's root" in linked
    assert reference_changes(tmp_path / "moved", [old_row], root) == ["its folder is gone"]


def test_a_job_on_a_set_deleted_meanwhile_is_404_without_server_paths(
    tmp_path: Path, database_url: str | None, case_files, archive_bytes
) -> None:
    """The set's files went (deleted while this job's archive unpacked): 404 as for any
    missing set, and the message names no folder of the server."""
    preds, refs = case_files(2, seed=82)
    root = tmp_path / "root"
    write_cases(root / "refs", refs)
    settings = make_settings(tmp_path, database_url, reference_root=root)
    with TestClient(create_app(settings)) as client:
        made = client.post(
            "/v1/reference-sets", files=text_fields(name="x", folder="refs"), headers=ADMIN
        )
        assert made.status_code == 201, made.text
        for path in (root / "refs").iterdir():
            path.unlink()
        (root / "refs").rmdir()
        r = client.post(
            "/v1/jobs",
            data={"reference_set": made.json()["id"]},
            files={"predictions": upload("p.zip", archive_bytes(preds, "zip", "preds"))},
            headers=TEAM_A,
        )
        assert r.status_code == 404, r.text
        assert str(tmp_path) not in r.text and "refs" not in r.json()["detail"]["message"]


def test_a_case_file_linked_out_of_the_reference_root_is_refused(
    tmp_path: Path, database_url: str | None, case_files
) -> None:
    """The folder is inside the root, one of its files a link to a volume outside it: the
    set is refused, so no job can score against (and leak) the outside file."""
    _, refs = case_files(2, seed=81)
    root = tmp_path / "root"
    write_cases(root / "refs", refs)
    outside = tmp_path / "outside"
    write_cases(outside, refs)
    first = sorted(refs)[0]
    (root / "refs" / first).unlink()
    (root / "refs" / first).symlink_to(outside / first)
    settings = make_settings(tmp_path, database_url, reference_root=root)
    with TestClient(create_app(settings)) as client:
        r = client.post(
            "/v1/reference-sets", files=text_fields(name="x", folder="refs"), headers=ADMIN
        )
        assert r.status_code == 422, r.text
        assert "link out of the root" in r.json()["detail"]["message"]
        assert client.get("/v1/reference-sets", headers=ADMIN).json()["reference_sets"] == []


@pytest.mark.parametrize(
    ("name", "members", "status", "code"),
    [
        ("escape", {"../x.nii.gz": b"x"}, 422, "archive_unsafe_member"),
        ("nested", {"x.zip": b"x"}, 422, "archive_nested"),
        ("bomb", {"x.nii": b"\0" * 300_000}, 413, "archive_too_large"),
        ("many", {f"c{i}.nii": b"x" for i in range(9)}, 413, "archive_too_many"),
        ("text", None, 422, "archive_invalid"),  # plain text, no archive
    ],
)
def test_bad_archives_give_4xx_and_leave_no_files(
    tmp_path: Path,
    name: str,
    members: dict[str, bytes] | None,
    status: int,
    code: str,
    case_files,
    archive_bytes,
    create_set,
) -> None:
    archive = b"plain text" if members is None else archive_bytes(members)
    preds, refs = case_files(1, seed=90)
    settings = make_settings(tmp_path, None, max_cases=8, max_archive_bytes=200_000)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        for files, fields in (
            ({"predictions": upload("p", archive)}, {"reference_set": ref_set["id"]}),
            (
                {
                    "predictions": upload("p", archive_bytes(preds)),
                    "references": upload("r", archive),
                },
                {},
            ),
        ):
            response = client.post("/v1/jobs", data=fields, files=files, headers=TEAM_A)
            assert response.status_code == status, response.text
            assert response.json()["detail"]["code"].startswith(code)
        response = client.post(
            "/v1/reference-sets",
            data={"name": "bad"},
            files={"references": upload("r", archive)},
            headers=ADMIN,
        )
        assert response.status_code == status
        assert list((settings.data_dir / "jobs").iterdir()) == []
        assert [p.name for p in (settings.data_dir / "reference-sets").iterdir()] == [ref_set["id"]]


def test_job_options_are_validated_as_for_scores(
    client: TestClient, case_files, archive_bytes, create_set
) -> None:
    preds, refs = case_files(1, seed=95)
    ref_set = create_set(client, refs)
    for fields, code in (
        ({"metrics": "dice,nope"}, "invalid_option"),
        ({"tversky_alpha": "abc"}, "invalid_option"),
        ({"case_id": "x"}, "unknown_option"),
        ({}, "missing_field"),  # neither reference_set nor references
    ):
        data = {"reference_set": ref_set["id"], **fields} if fields else {}
        response = client.post(
            "/v1/jobs",
            data=data,
            files={"predictions": upload("p", archive_bytes(preds))},
            headers=TEAM_A,
        )
        assert response.status_code == 422, (fields, response.text)
        assert response.json()["detail"]["code"] == code
    missing = client.post(
        "/v1/jobs",
        data={"reference_set": "nope"},
        files={"predictions": upload("p", archive_bytes(preds))},
        headers=TEAM_A,
    )
    assert missing.status_code == 404


def test_a_runner_stopping_mid_job_gives_it_back_to_the_queue(
    tmp_path: Path, database_url: str | None
) -> None:
    settings = make_settings(tmp_path, database_url, job_workers=1)
    db = open_database(settings.data_dir, database_url)
    runner = JobRunner(db, settings)
    try:
        job_row = _job_row("stopping")
        job_row.cases = [[f"c{i}", "p.nii.gz", "r.nii.gz"] for i in range(3)]
        with db.session.begin() as session:
            session.add(job_row)
        job = claim_job(db, runner.worker, lease_s=60)
        assert job is not None and job.status == "running"
        runner._stop.set()  # as stop() does while the job runs
        runner._run(job)
        with db.session() as session:
            after = session.get(Job, "stopping")
        assert after is not None
        assert (after.status, after.claimed_by, after.cases_done) == ("queued", None, 0)
        assert claim_job(db, "next", lease_s=60) is not None  # resumed at once, no lease wait
    finally:
        runner.stop()
        db.dispose()


def test_retention_keeps_predictions_when_asked(
    tmp_path: Path, case_files, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=97)
    settings = make_settings(tmp_path, None, keep_predictions=True)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        assert wait_finished(client, job["id"], TEAM_A)["status"] == "done"
    kept = settings.data_dir / "jobs" / job["id"] / "predictions"
    assert {p.name: p.read_bytes() for p in kept.iterdir()} == preds


# ---------------------------------------------------------------- integration follow-ups


def _coming_and_going(nifti_bytes) -> tuple[dict[str, bytes], dict[str, bytes]]:  # type: ignore[no-untyped-def]
    """Four cases whose labels come and go: 2 only in case a, 3 only in b's reference, 4 only
    in c's prediction, and d's prediction misses its reference's only label."""
    shape = (6, 5, 4)
    spacing = np.diag([0.5, 0.75, 1.5, 1.0])
    volumes: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for case, (pred_labels, ref_labels) in {
        "a": ((1, 2), (1, 2)),
        "b": ((1,), (1, 3)),
        "c": ((1, 4), (1,)),
        "d": ((), (2,)),
    }.items():
        pred = np.zeros(shape, np.uint8)
        ref = np.zeros(shape, np.uint8)
        for i, label in enumerate(pred_labels):
            pred[i, : 3 + i] = label
        for i, label in enumerate(ref_labels):
            ref[i, 1 : 4 + i] = label
        volumes[case] = (pred, ref)
    preds = {f"{c}.nii.gz": nifti_bytes(p, spacing) for c, (p, _) in volumes.items()}
    refs = {f"{c}.nii.gz": nifti_bytes(r, spacing) for c, (_, r) in volumes.items()}
    return preds, refs


@pytest.mark.parametrize("labels", [None, "1,2,3"])
def test_a_dataset_job_scores_every_case_on_one_label_set(
    client: TestClient, tmp_path: Path, labels: str | None, nifti_bytes, archive_bytes, strip_timing
) -> None:
    # issue 15, rule 1: the label set is decided once for the dataset and every case is
    # scored on all of it, as score-dir does (requested labels are rescored by the job pool)
    preds, refs = _coming_and_going(nifti_bytes)
    fields = {"metrics": "dice,jaccard", **({"labels": labels} if labels else {})}
    response = client.post(
        "/v1/jobs",
        data=fields,
        files={
            "predictions": upload("p.zip", archive_bytes(preds)),
            "references": upload("r.zip", archive_bytes(refs)),
        },
        headers=TEAM_A,
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    assert wait_finished(client, job_id, TEAM_A)["status"] == "done"
    options = ScoringOptions(
        metrics=("dice", "jaccard"),
        labels=None if labels is None else {1: None, 2: None, 3: None},
    )
    expected = score_directory(
        write_cases(tmp_path / "p", preds), write_cases(tmp_path / "r", refs), options, workers=1
    )
    report = client.get(f"/v1/jobs/{job_id}/report", headers=TEAM_A).json()
    assert strip_timing(report) == strip_timing(expected.to_dict())
    for case in report["cases"]:  # the rule itself, not only agreement with score-dir
        assert [row["label"] for row in case["labels"]] == [1, 2, 3, 4], case["case_id"]
    label_2 = next(row for row in report["summary"]["labels"] if row["label"] == 2)
    # dice of label 2: case a has it in both, d in its reference only (0), b and c in neither
    assert label_2["dice"]["n"] == 2  # the absent-from-both rows are NaN (--empty nan)
    # the stored rows are complete: a replica finishing the job again (after a crash between
    # storing them and marking it done) rescores nothing, even with the predictions gone
    db = client.app.state.jobs_db  # type: ignore[attr-defined]
    with db.session() as session:
        job = session.get(Job, job_id)
    stored = job_result(db, job, client.app.state.settings)  # type: ignore[attr-defined]

    def no_rescore(cases: Any, wider: Any) -> Any:
        raise AssertionError(f"rescored {cases}")

    again, failures = complete_label_set(stored.reports, options, no_rescore)
    assert [r.to_dict() for r in again] == [r.to_dict() for r in stored.reports] and not failures
    settings: Settings = client.app.state.settings  # type: ignore[attr-defined]
    assert not (settings.data_dir / "jobs" / job_id / "predictions").exists()


def test_job_cases_are_held_to_the_score_limits(
    tmp_path: Path, database_url: str | None, case_files, create_set, submit
) -> None:
    # JDT_MAX_BOUNDARY_VOXELS and JDT_MAX_JOB_BYTES hold per case as on POST /v1/scores: a
    # case past them fails with the same code and the job goes on with the others
    small, small_refs = case_files(2, shape=(6, 5, 4), seed=120)
    large, large_refs = case_files(1, shape=(12, 10, 8), seed=121)
    preds = {**small, "big.nii.gz": large["case_000.nii.gz"]}
    refs = {**small_refs, "big.nii.gz": large_refs["case_000.nii.gz"]}
    settings = make_settings(tmp_path, database_url, max_boundary_voxels=6 * 5 * 4)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        boundary = submit(client, preds, TEAM_A, reference_set=ref_set["id"], metrics="dice,hd95")
        overlap = submit(client, preds, TEAM_A, reference_set=ref_set["id"], metrics="dice")
        status = wait_finished(client, boundary["id"], TEAM_A)
        assert status["status"] == "done"
        assert status["progress"] == {"cases_done": 3, "cases_total": 3, "failures": 1}
        report = client.get(f"/v1/jobs/{boundary['id']}/report", headers=TEAM_A).json()
        assert [(f["case_id"], f["code"]) for f in report["failures"]] == [
            ("big", "boundary_too_large")
        ]
        assert str(12 * 10 * 8) in report["failures"][0]["message"]
        assert [case["case_id"] for case in report["cases"]] == ["case_000", "case_001"]
        assert all("hd95" in row for case in report["cases"] for row in case["labels"])
        # overlap metrics are not limited by it
        assert wait_finished(client, overlap["id"], TEAM_A)["progress"]["failures"] == 0
    settings = make_settings(tmp_path / "2", database_url, max_job_bytes=2**20)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        assert wait_finished(client, job["id"], TEAM_A)["progress"]["failures"] == 3
        report = client.get(f"/v1/jobs/{job['id']}/report", headers=TEAM_A).json()
        assert {f["code"] for f in report["failures"]} == {"job_too_large"}
    # a case larger than the job memory budget (but within JDT_MAX_JOB_BYTES) runs alone: a
    # small budget (a small container divided among its workers) must not refuse every case
    settings = make_settings(tmp_path / "3", database_url, job_memory_budget_bytes=50 * 2**20)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        assert wait_finished(client, job["id"], TEAM_A)["progress"]["failures"] == 0


def test_archives_of_nrrd_and_mha_volumes(
    client: TestClient, tmp_path: Path, case_files, strip_timing, create_set, submit
) -> None:
    # predictions as NRRD and a reference as MetaImage (written by SimpleITK from the NIfTI
    # files, so on the same grid) pair by case id with NIfTI files, as in score-dir
    sitk = pytest.importorskip("SimpleITK")
    nifti_preds, nifti_refs = case_files(3, seed=130)
    source = write_cases(tmp_path / "nifti", {**nifti_preds})
    preds: dict[str, bytes] = {}
    for name in nifti_preds:
        case = name.removesuffix(".nii.gz")
        sitk.WriteImage(sitk.ReadImage(str(source / name)), str(tmp_path / f"{case}.nrrd"), True)
        preds[f"{case}.nrrd"] = (tmp_path / f"{case}.nrrd").read_bytes()
    source = write_cases(
        tmp_path / "nifti-refs", {"case_000.nii.gz": nifti_refs["case_000.nii.gz"]}
    )
    sitk.WriteImage(sitk.ReadImage(str(source / "case_000.nii.gz")), str(tmp_path / "r.mha"))
    refs = {**nifti_refs, "case_000.mha": (tmp_path / "r.mha").read_bytes()}
    del refs["case_000.nii.gz"]
    ref_set = create_set(client, refs)
    assert [c["case_id"] for c in ref_set["cases"]] == ["case_000", "case_001", "case_002"]
    assert ref_set["cases"][0]["spacing_mm"] == [0.5, 0.75, 1.5]
    job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
    assert wait_finished(client, job["id"], TEAM_A)["progress"]["failures"] == 0
    expected = score_directory(
        write_cases(tmp_path / "p", preds), write_cases(tmp_path / "r", refs), workers=1
    )
    assert len(expected.reports) == 3 and not expected.failures
    report = client.get(f"/v1/jobs/{job['id']}/report", headers=TEAM_A).json()
    assert strip_timing(report) == strip_timing(expected.to_dict())


def _job_body(boundary: str, reference_set: str, archive: bytes) -> bytes:
    """A ``POST /v1/jobs`` multipart body built by hand (for a client that trickles it)."""
    return (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="reference_set"\r\n\r\n'
            f"{reference_set}\r\n"
            f'--{boundary}\r\nContent-Disposition: form-data; name="predictions"; filename="p.zip"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + archive
        + f"\r\n--{boundary}--\r\n".encode()
    )


def _no_upload_left(settings: Settings, set_ids: list[str]) -> None:
    assert list((settings.data_dir / "jobs").iterdir()) == []
    assert sorted(p.name for p in (settings.data_dir / "reference-sets").iterdir()) == sorted(
        set_ids
    )


def test_job_and_set_uploads_are_bounded_as_score_uploads(
    tmp_path: Path, case_files, archive_bytes, create_set, submit
) -> None:
    preds, refs = case_files(2, seed=140)
    settings = make_settings(tmp_path, None, max_uploads=1, max_upload_bytes=20_000)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        pool = client.app.state.pool  # type: ignore[attr-defined]
        # the one upload place is taken (a score upload still arriving): both are 503
        with pool.upload_place():
            busy = client.post(
                "/v1/jobs",
                data={"reference_set": ref_set["id"]},
                files={"predictions": upload("p.zip", archive_bytes(preds))},
                headers=TEAM_A,
            )
            assert busy.status_code == 503 and busy.json()["detail"]["code"] == "server_busy"
            assert busy.headers["retry-after"] == str(settings.retry_after)
            busy = client.post(
                "/v1/reference-sets",
                data={"name": "x"},
                files={"references": upload("r.zip", archive_bytes(refs))},
                headers=ADMIN,
            )
            assert busy.status_code == 503 and busy.json()["detail"]["code"] == "server_busy"
        _no_upload_left(settings, [ref_set["id"]])
        # an archive past JDT_MAX_UPLOAD_BYTES (stored, so it cannot shrink) is 413
        rng = np.random.default_rng(0)
        noise = {"case_000.nii": rng.integers(0, 255, 30_000, dtype=np.uint8).tobytes()}
        for path, field, extra in (
            ("/v1/jobs", "predictions", {"reference_set": ref_set["id"]}),
            ("/v1/reference-sets", "references", {"name": "big"}),
        ):
            big = client.post(
                path,
                data=extra,
                files={field: upload("a.zip", archive_bytes(noise))},
                headers=ADMIN if field == "references" else TEAM_A,
            )
            assert big.status_code == 413, big.text
            assert big.json()["detail"]["code"] == "upload_too_large"
        _no_upload_left(settings, [ref_set["id"]])
        # the places came back: a job goes through
        job = submit(client, preds, TEAM_A, reference_set=ref_set["id"])
        assert wait_finished(client, job["id"], TEAM_A)["status"] == "done"


def test_a_slow_job_upload_gets_408_and_leaves_no_files(
    tmp_path: Path, case_files, archive_bytes, create_set
) -> None:
    import asyncio

    import httpx

    preds, refs = case_files(1, seed=150)
    settings = make_settings(tmp_path, None, min_upload_rate=1000, header_timeout=0.2)
    with TestClient(create_app(settings)) as client:
        ref_set = create_set(client, refs)
        body = _job_body("XyZ", ref_set["id"], archive_bytes(preds))

        async def trickle() -> Any:  # 10 bytes every 50 ms: 200 bytes/s, below 1000
            for i in range(0, len(body), 10):
                await asyncio.sleep(0.05)
                yield body[i : i + 10]

        async def drive() -> httpx.Response:
            transport = httpx.ASGITransport(app=client.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as ac:
                return await ac.post(
                    "/v1/jobs",
                    content=trickle(),
                    headers={"Content-Type": "multipart/form-data; boundary=XyZ", **TEAM_A},
                )

        slow = asyncio.run(drive())
        assert slow.status_code == 408, slow.text
        assert slow.json()["detail"]["code"] == "upload_too_slow"
        assert slow.headers["connection"] == "close"
        _no_upload_left(settings, [ref_set["id"]])


def _result(options: ScoringOptions) -> Any:
    """A two-case ``DirectoryResult`` scored with ``options`` (labels 1, 2, 3)."""
    from monai_jdt.scoring import score_arrays
    from monai_jdt.scoring.folders import DirectoryResult

    ref = np.array([0, 1, 1, 2, 2, 3, 3, 3, 0, 0], np.uint8)
    preds = [np.array([0, 1, 0, 2, 2, 3, 3, 0, 1, 0], np.uint8), ref.copy()]
    reports = [score_arrays(pred, ref, options, case_id=f"c{i}") for i, pred in enumerate(preds)]
    return DirectoryResult(reports, [], [], [])


def test_metrics_json_gives_every_structure_its_own_key() -> None:
    """Label 3 named like a region, label 2 named like label 3's id, label 1 named "mean":
    each kept its key and overwrote another structure's numbers (or the foreground mean)."""
    from jdt_service.jobs import grand_challenge_metrics

    options = ScoringOptions(
        labels={1: "mean", 2: "3", 3: "ET"}, regions={"ET": (2, 3)}, metrics=("dice",)
    )
    result = _result(options)
    gc = grand_challenge_metrics(result)
    report = result.reports[0]
    assert gc["case"]["c0"] == {  # the names that could be read otherwise give way to ids
        "1": report.label(1).metrics,
        "2": report.label(2).metrics,
        "3": report.label(3).metrics,
        "ET": next(r for r in report.labels if r.region == "ET").metrics,
    }
    assert report.label(3).metrics != gc["case"]["c0"]["ET"]  # two structures, two numbers
    dice = gc["aggregates"]["dice"]
    assert dice["mean"] == result.summary["foreground_mean"]["dice"]["mean"]
    assert set(dice) == {"mean", "1", "2", "3", "ET"}
    assert dice["3"] == result.summary["labels"][2]["dice"]
    assert dice["ET"] == result.summary["regions"][0]["dice"]
    plain = grand_challenge_metrics(_result(ScoringOptions(labels={1: "liver", 2: None, 3: "x"})))
    assert set(plain["case"]["c0"]) == {"liver", "2", "x"}
    reserved = grand_challenge_metrics(
        _result(
            ScoringOptions(labels={1: "region mean", 2: None, 3: None}, regions={"mean": (1, 2)})
        )
    )
    assert set(reserved["aggregates"]["dice"]) == {"mean", "1", "2", "3", "region mean"}
    assert reserved["aggregates"]["dice"]["region mean"]["n"] == 2  # the region's, not label 1's
    assert reserved["case"]["c0"]["1"]["dice"] != reserved["case"]["c0"]["region mean"]["dice"]


def test_leaderboard_median_leaves_label_0_out_as_the_mean_does() -> None:
    from jdt_service.jobs import summary_score

    summary = _result(ScoringOptions(include_background=True)).summary
    assert summary["labels"][0]["label"] == 0
    foreground = [row["dice"]["median"] for row in summary["labels"] if row["label"] != 0]
    assert summary_score(summary, "dice", "median") == pytest.approx(np.mean(foreground))
    assert summary_score(summary, "dice", "mean") == summary["foreground_mean"]["dice"]["mean"]
