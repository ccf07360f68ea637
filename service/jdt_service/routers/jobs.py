"""``/v1/jobs``: dataset submissions scored in the background, and their stored results.

``router`` also carries ``/v1/reference-sets`` and a lifespan that opens the database
(migrating it), starts this replica's :class:`~jdt_service.jobs_runner.JobRunner` and stops
both at shutdown, so the app includes this one router.

A team sees only its own jobs: another team's job id answers 404 and lists never show it.
``GET /v1/jobs/{id}?wait=S`` is a long poll: it answers once the job is finished, or after
``S`` seconds with its status then (see :class:`JobEvents`).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, FastAPI, Query, Request, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from jdt_service.archives import ARCHIVE_VOLUME_SUFFIXES
from jdt_service.auth import AnyCaller
from jdt_service.db import Database, Job, ReferenceCase, ReferenceSet, open_database, utcnow
from jdt_service.errors import ApiError
from jdt_service.forms import multipart_body
from jdt_service.jobs import (
    ERROR_RESPONSES,
    JOB_OPTION_FIELDS,
    cases_csv,
    grand_challenge_metrics,
    is_id,
    job_options,
    job_result,
    new_id,
    reference_changes,
    reference_set_changed,
    remove_folder,
)
from jdt_service.jobs_runner import JobRunner
from jdt_service.protocol import STOPPING_STATE
from jdt_service.routers import reference_sets
from jdt_service.routers.reference_sets import database, get_set, receive_upload, unpack_upload
from jdt_service.settings import Settings
from jdt_service.teams import Caller
from jdt_service.upload_folders import new_upload_folder, remove_stale_uploads
from monai_jdt.scoring import ScoringError, pair_cases

__all__ = ["router"]


#: the longest long poll, in seconds
MAX_WAIT_S = 60.0
#: how often a long poll reads the job again without being woken (a job run by another replica)
_RECHECK_S = 1.0


class JobEvents:
    """Wakes the long polls of ``GET /v1/jobs/{id}?wait=`` when a job finishes.

    The runner of this replica calls :meth:`notify` from its thread after it stores a job as
    done or failed, and ``DELETE`` after a cancellation; a waiting request then reads its job
    again at once. A job finished by another replica is seen within ``_RECHECK_S``. Once
    ``stopping`` is set (the server shuts down, see :mod:`jdt_service.protocol`) every wait
    returns at once, so long polls never hold up a shutdown.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
        self._loop = loop
        self._event = asyncio.Event()
        self.stopping = stopping

    def notify(self) -> None:
        """Wake every waiting request (from any thread)."""
        if not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._event.set()
        self._event = asyncio.Event()  # the next waits wait for the next change

    async def wait(self, timeout: float) -> None:
        """Return at the next change, when the server starts stopping, or after ``timeout``."""
        waits = [asyncio.ensure_future(e.wait()) for e in (self._event, self.stopping)]
        try:
            await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiting in waits:
                waiting.cancel()


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    settings: Settings = app.state.settings
    db = await asyncio.to_thread(open_database, settings.data_dir, settings.database_url)
    await asyncio.to_thread(remove_stale_uploads, settings.data_dir, partial(_stored, db))
    stopping = asyncio.Event()
    events = JobEvents(asyncio.get_running_loop(), stopping)
    runner = JobRunner(db, settings, on_finished=events.notify)
    app.state.jobs_db = db
    app.state.jobs_runner = runner
    app.state.job_events = events
    runner.start()
    try:
        yield {STOPPING_STATE: stopping}  # set by the protocol when a shutdown begins
    finally:
        await asyncio.to_thread(runner.stop)
        db.dispose()


def _stored(db: Database, kind: str, entry_id: str) -> bool:
    """Whether the job (``kind`` ``jobs``) or the reference set of that id has its row."""
    table = Job if kind == "jobs" else ReferenceSet
    with db.session() as session:
        return session.get(table, entry_id) is not None


router = APIRouter(lifespan=lifespan)
jobs_router = APIRouter(tags=["jobs"], responses=ERROR_RESPONSES)

_JOB_FIELDS = {"reference_set", *JOB_OPTION_FIELDS}
FINISHED = ("done", "failed", "cancelled")


def job_dict(job: Job) -> dict[str, Any]:
    """The status JSON of a job."""

    def when(value: Any) -> str | None:
        return None if value is None else value.isoformat()

    return {
        "id": job.id,
        "status": job.status,
        "reference_set": job.reference_set_id,
        "progress": {
            "cases_done": job.cases_done,
            "cases_total": job.cases_total,
            "failures": job.failures,
        },
        "created_at": when(job.created_at),
        "started_at": when(job.started_at),
        "finished_at": when(job.finished_at),
        "options": job.options,
        "unpaired": job.unpaired,
        "error": job.error,
    }


def own_job(db: Database, job_id: str, caller: Caller) -> Job:
    """The caller's job, or 404 (also for another team's job)."""
    with db.session() as session:
        job = session.get(Job, job_id) if is_id(job_id) else None
    if job is None or job.team != caller.team:
        raise ApiError(404, "not_found", f"no job {job_id!r}")
    return job


def finished_job(db: Database, job_id: str, caller: Caller) -> Job:
    job = own_job(db, job_id, caller)
    if job.status != "done":
        raise ApiError(409, "job_not_done", f"job {job_id!r} is {job.status}, not done")
    return job


_ARCHIVE = (
    f"a .zip or .tar.gz of volume files ({', '.join(ARCHIVE_VOLUME_SUFFIXES)}), paired by case "
    "id (the file name without its ending)"
)
_JOB_BODY = multipart_body(
    {
        "predictions": f"The predictions: {_ARCHIVE}.",
        "references": f"Ad-hoc references: {_ARCHIVE}.",
    },
    {
        "reference_set": {"type": "string", "description": "The id of a stored reference set."},
        **JOB_OPTION_FIELDS,
    },
    ["predictions"],
)


@jobs_router.post(
    "/v1/jobs",
    status_code=202,
    summary="Submit predictions (an archive) against a reference set or uploaded references",
    openapi_extra={"requestBody": _JOB_BODY},
    responses=ERROR_RESPONSES,
)
async def create_job(request: Request, caller: AnyCaller) -> JSONResponse:
    settings: Settings = request.app.state.settings
    db = database(request)
    job_id = new_id()
    folder = settings.data_dir / "jobs" / job_id
    new_upload_folder(folder)
    try:
        upload = await receive_upload(
            request,
            folder / "upload",
            _JOB_FIELDS,
            ("predictions", "references"),
            required_files=("predictions",),
        )
        fields = dict(upload.form.fields)
        set_id = fields.pop("reference_set", "").strip() or None
        if (set_id is None) == ("references" not in upload.form.files):
            raise ApiError(
                422,
                "missing_field",
                "send exactly one of the field 'reference_set' (an id) or the file 'references'",
            )
        options = {key: value for key, value in fields.items() if value.strip()}
        registered: list[ReferenceCase] = []
        if set_id is not None:
            ref_set, registered = get_set(db, set_id)
            options = {**ref_set.options, **options}
            references = Path(ref_set.folder)
        else:
            references = folder / "references"
        job_options(options, settings)  # 422 before anything is unpacked
        await unpack_upload(upload, "predictions", folder / "predictions", settings)
        if set_id is None:
            await unpack_upload(upload, "references", references, settings)
        if set_id is not None:
            if not references.is_dir():  # deleted while this unpacked
                raise _set_gone(set_id)
            root = references if ref_set.owned else settings.reference_root or references
            changes = await asyncio.to_thread(reference_changes, references, registered, root)
            if changes:
                raise ApiError(409, "reference_set_changed", reference_set_changed(set_id, changes))
        try:
            pairs, unpaired_preds, unpaired_refs = pair_cases(folder / "predictions", references)
        except ScoringError:
            if set_id is not None and not references.is_dir():  # deleted since the check: its
                raise _set_gone(set_id) from None  # folder's path is the server's, not for users
            raise
        if not pairs:
            raise ApiError(422, "no_cases", "no prediction has a reference with the same case id")
        job = Job(
            id=job_id,
            team=caller.team,
            status="queued",
            reference_set_id=set_id,
            folder=str(folder),
            references_folder=str(references),
            options=options,
            cases=[[case, pred.name, ref.name] for case, pred, ref in pairs],
            unpaired={"predictions": unpaired_preds, "references": unpaired_refs},
            cases_total=len(pairs),
        )
        try:
            with db.session.begin() as session:
                session.add(job)
        except IntegrityError:
            # a set from a server folder keeps its files when deleted: only its row tells
            if set_id is not None and _set_row(db, set_id) is None:
                raise _set_gone(set_id) from None
            raise
    except BaseException:
        remove_folder(folder)
        raise
    remove_folder(folder / "upload")
    db.audit(caller.team, "job.submit", job_id=job_id, reference_set_id=set_id, cases=len(pairs))
    request.app.state.jobs_runner.wake()
    return JSONResponse(job_dict(job), status_code=202, headers={"Location": f"/v1/jobs/{job_id}"})


def _set_gone(set_id: str) -> ApiError:
    """404 for a reference set deleted while a job on it was being submitted."""
    return ApiError(
        404, "not_found", f"no reference set {set_id!r} (it was deleted during this upload)"
    )


def _set_row(db: Database, set_id: str) -> ReferenceSet | None:
    """The set's row, or None once it is deleted."""
    with db.session() as session:
        return session.get(ReferenceSet, set_id)


@jobs_router.get("/v1/jobs", summary="The caller's jobs, newest first")
async def list_jobs(
    request: Request,
    caller: AnyCaller,
    limit: Annotated[int, Query(ge=1, le=200)] = 20,
    offset: Annotated[int, Query(ge=0, le=2**31)] = 0,
) -> dict[str, Any]:
    db = database(request)
    with db.session() as session:
        total = session.scalar(select(func.count()).select_from(Job).where(Job.team == caller.team))
        jobs = session.scalars(
            select(Job)
            .where(Job.team == caller.team)
            .order_by(Job.created_at.desc(), Job.id.desc())
            .limit(limit)
            .offset(offset)
        ).all()
    return {"jobs": [job_dict(j) for j in jobs], "total": total, "limit": limit, "offset": offset}


@jobs_router.get("/v1/jobs/{job_id}", summary="A job's status and progress")
async def read_job(
    job_id: str,
    request: Request,
    caller: AnyCaller,
    wait: Annotated[
        float,
        Query(
            ge=0,
            le=MAX_WAIT_S,
            description="Seconds to wait for the job to finish before answering (a long poll: "
            "the answer comes as soon as it is done, failed or cancelled); 0 answers at once.",
        ),
    ] = 0,
) -> dict[str, Any]:
    db = database(request)
    events: JobEvents = request.app.state.job_events
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    job = own_job(db, job_id, caller)
    while (
        job.status not in FINISHED
        and not events.stopping.is_set()
        and (left := deadline - loop.time()) > 0
    ):
        await events.wait(min(left, _RECHECK_S))
        job = own_job(db, job_id, caller)
    return job_dict(job)


@jobs_router.get("/v1/jobs/{job_id}/report", summary="The same JSON as `score-dir -o`")
async def read_report(job_id: str, request: Request, caller: AnyCaller) -> JSONResponse:
    db = database(request)
    job = finished_job(db, job_id, caller)
    result = await asyncio.to_thread(job_result, db, job, request.app.state.settings)
    return JSONResponse(result.to_dict())


@jobs_router.get("/v1/jobs/{job_id}/cases.csv", summary="One CSV row per case and label")
async def read_cases_csv(job_id: str, request: Request, caller: AnyCaller) -> PlainTextResponse:
    db = database(request)
    job = finished_job(db, job_id, caller)
    result = await asyncio.to_thread(job_result, db, job, request.app.state.settings)
    return PlainTextResponse(cases_csv(result), media_type="text/csv")


@jobs_router.get("/v1/jobs/{job_id}/metrics.json", summary="grand-challenge.org's metrics.json")
async def read_metrics_json(job_id: str, request: Request, caller: AnyCaller) -> JSONResponse:
    db = database(request)
    job = finished_job(db, job_id, caller)
    result = await asyncio.to_thread(job_result, db, job, request.app.state.settings)
    return JSONResponse(grand_challenge_metrics(result))


@jobs_router.delete(
    "/v1/jobs/{job_id}",
    summary="Cancel a queued or running job (200), or delete a finished one (204)",
    responses={
        200: {"description": "The job was queued or running: it is cancelled (its JSON)."},
        204: {"description": "The job had finished: it is deleted with its results and files."},
    },
)
async def delete_job(job_id: str, request: Request, caller: AnyCaller) -> Response:
    db = database(request)
    job = own_job(db, job_id, caller)
    with db.session.begin() as session:
        current = session.get(Job, job_id)
        if current is None:
            raise ApiError(404, "not_found", f"no job {job_id!r}")
        if current.status in FINISHED:
            session.delete(current)
            action: str | None = "job.delete"
        else:
            # only if it is still unfinished: a runner that marked it done since it was read
            # keeps its results (an unconditional write relabelled a done job cancelled)
            cancel = (
                update(Job)
                .where(Job.id == job_id, Job.status.not_in(FINISHED))
                .values(status="cancelled", finished_at=utcnow())
            )
            cancelled = session.execute(cancel).rowcount == 1  # type: ignore[attr-defined]
            action = "job.cancel" if cancelled else None
    if action is None:  # it finished first: answered as it is, nothing deleted
        return JSONResponse(job_dict(own_job(db, job_id, caller)))
    if action == "job.delete":
        remove_folder(job.folder)
        db.audit(caller.team, action, job_id=job_id, cases=job.cases_done)
        return Response(status_code=204)
    remove_folder(Path(job.folder) / "predictions")
    db.audit(caller.team, action, job_id=job_id, cases=job.cases_done)
    request.app.state.job_events.notify()
    return JSONResponse(job_dict(own_job(db, job_id, caller)))


router.include_router(reference_sets.router)
router.include_router(jobs_router)
