"""``/v1/reference-sets``: the reference segmentations kept on the server, and their leaderboards.

Creating and deleting a set needs an admin key (``JDT_ADMIN_KEYS``). The references come as an
uploaded archive (``references``: ``.zip`` or ``.tar.gz``) or as a folder under
``JDT_REFERENCE_ROOT`` (``folder``, a relative path). Every header is checked at creation; the
set's ``version`` is the SHA-256 of its case ids and bytes. No endpoint returns voxels or
files: only names, case ids, shapes and spacing.
"""

from __future__ import annotations

import asyncio
import unicodedata
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import JSONResponse
from sqlalchemy import func, select
from starlette.requests import ClientDisconnect

from jdt_service.archives import ARCHIVE_VOLUME_SUFFIXES, unpack_archive
from jdt_service.auth import AdminCaller, AnyCaller
from jdt_service.db import Database, Job, ReferenceCase, ReferenceSet
from jdt_service.errors import ApiError
from jdt_service.forms import multipart_body
from jdt_service.jobs import (
    ERROR_RESPONSES,
    JOB_OPTION_FIELDS,
    content_hash,
    higher_is_better,
    is_id,
    job_options,
    leaderboard,
    new_id,
    reference_cases,
    remove_folder,
)
from jdt_service.scoring_pool import ScoringPool
from jdt_service.settings import Settings
from jdt_service.upload_folders import new_upload_folder
from jdt_service.uploads import GrowingFile, UploadedForm, receive_form
from jdt_service.zip_prefetch import Prefetched, ZipPrefetch

__all__ = ["ArchiveUpload", "receive_upload", "router", "unpack_upload"]

router = APIRouter(tags=["reference sets"], responses=ERROR_RESPONSES)

_SET_FIELDS = {"name", "folder", *JOB_OPTION_FIELDS}
MAX_NAME = 200


def database(request: Request) -> Database:
    db: Database = request.app.state.jobs_db
    return db


def set_dict(ref_set: ReferenceSet, cases: list[ReferenceCase] | None) -> dict[str, Any]:
    """The JSON of a set; ``cases`` only in the detail view."""
    body: dict[str, Any] = {
        "id": ref_set.id,
        "name": ref_set.name,
        "version": ref_set.version,
        "labels": ref_set.labels,
        "options": ref_set.options,
        "created_at": ref_set.created_at.isoformat(),
    }
    if cases is not None:
        body["cases"] = [
            {"case_id": c.case_id, "shape": c.shape, "spacing_mm": c.spacing} for c in cases
        ]
    return body


def get_set(db: Database, set_id: str) -> tuple[ReferenceSet, list[ReferenceCase]]:
    """The set and its cases, or 404 ``not_found``."""
    with db.session() as session:
        ref_set = session.get(ReferenceSet, set_id) if is_id(set_id) else None
        if ref_set is None:
            raise ApiError(404, "not_found", f"no reference set {set_id!r}")
        cases = list(
            session.scalars(
                select(ReferenceCase)
                .where(ReferenceCase.set_id == set_id)
                .order_by(ReferenceCase.case_id)
            )
        )
    return ref_set, cases


@dataclass(frozen=True)
class ArchiveUpload:
    """A received form with archives: the form, and per archive field the zip members
    inflated while it arrived (by header offset, see :mod:`jdt_service.zip_prefetch`)."""

    form: UploadedForm
    prefetched: Mapping[str, Mapping[int, Prefetched]]


async def receive_upload(
    request: Request,
    folder: Path,
    text_fields: Collection[str],
    file_fields: Collection[str],
    required_files: Collection[str],
) -> ArchiveUpload:
    """Receive the multipart body of ``/v1/jobs`` or ``/v1/reference-sets`` into ``folder``,
    bounded as a score upload is: one of the ``JDT_MAX_UPLOADS`` places while it arrives (503
    ``server_busy``), ``JDT_MAX_UPLOAD_BYTES`` per archive and the whole-body limit (413), the
    minimum upload rate after the header timeout (408). A body refused before it all arrived
    gets ``Connection: close``, so the server does not read the rest. Each archive is followed
    while it arrives by a :class:`~jdt_service.zip_prefetch.ZipPrefetch` (writing into
    ``folder``), which has ended when this returns or raises.

    Raises:
        ApiError: those statuses, 400 ``client_disconnected``, ``malformed_multipart``, 422
            for unknown or duplicate fields.
    """
    settings: Settings = request.app.state.settings
    pool: ScoringPool = request.app.state.pool
    followers: dict[str, ZipPrefetch] = {}

    def follow(name: str, growing: GrowingFile) -> None:
        followers[name] = ZipPrefetch(
            growing, folder, settings.max_cases, settings.max_archive_bytes, settings.max_voxels
        )

    try:
        with pool.upload_place():
            form = await receive_form(
                request.headers.get("content-type"),
                request.headers.get("content-length"),
                request.stream(),
                folder,
                settings.max_upload_bytes,
                text_fields,
                min_rate=settings.min_upload_rate,
                grace=settings.header_timeout,
                file_fields=file_fields,
                required_files=required_files,
                on_file=follow,
            )
    except BaseException as exc:
        for follower in followers.values():
            await asyncio.to_thread(follower.cancel)
        if isinstance(exc, ClientDisconnect):
            raise ApiError(400, "client_disconnected", "the client closed the upload") from None
        if isinstance(exc, ApiError):
            exc.headers["Connection"] = "close"
        raise
    prefetched = await asyncio.to_thread(
        lambda: {name: f.finish() for name, f in followers.items()}
    )
    return ArchiveUpload(form, prefetched)


async def unpack_upload(
    upload: ArchiveUpload, field: str, folder: Path, settings: Settings
) -> None:
    """Unpack the archive of ``field`` into the new ``folder`` under the archive limits
    (``JDT_MAX_CASES``, ``JDT_MAX_ARCHIVE_BYTES``, and ``JDT_MAX_VOXELS`` per raw NIfTI
    member), then delete the archive."""
    archive = upload.form.files[field]
    folder.mkdir()
    await asyncio.to_thread(
        unpack_archive,
        archive,
        folder,
        field=field,
        max_members=settings.max_cases,
        max_bytes=settings.max_archive_bytes,
        prefetched=upload.prefetched.get(field),
        max_voxels=settings.max_voxels,
    )
    archive.unlink()


def _server_folder(settings: Settings, relative: str) -> Path:
    """``JDT_REFERENCE_ROOT / relative``, refused (422) when it leaves the root, cannot be
    resolved (a NUL, a name too long, a symlink loop) or is not a folder."""
    root = settings.reference_root
    if root is None:
        raise ApiError(
            422, "invalid_option", "form field 'folder': JDT_REFERENCE_ROOT is not configured"
        )
    path = PurePosixPath(relative.strip())
    if path.is_absolute() or ".." in path.parts or "\\" in relative or "\x00" in relative:
        raise ApiError(
            422, "invalid_option", "form field 'folder' must be a relative path inside the root"
        )
    try:
        resolved = (root / path).resolve()
        inside = resolved.is_relative_to(root.resolve()) and resolved.is_dir()
    except (OSError, RuntimeError):  # ENAMETOOLONG, ELOOP; RuntimeError: a symlink loop
        inside = False
    if not inside:
        raise ApiError(422, "invalid_option", "form field 'folder' is not a folder inside the root")
    return resolved


def _refuse_files_outside(settings: Settings, files: list[Path]) -> None:
    """Refuse (422) a case file of a server folder that resolves outside
    ``JDT_REFERENCE_ROOT`` (a symlink out of it): nothing outside the root is read."""
    assert settings.reference_root is not None  # a server folder was given
    root = settings.reference_root.resolve()
    for file in files:
        if not file.resolve().is_relative_to(root):
            raise ApiError(
                422,
                "invalid_option",
                f"form field 'folder': the case file {file.name!r} is a link out of the root",
            )


_SET_BODY = multipart_body(
    {
        "references": "The references: a .zip or .tar.gz of volume files "
        f"({', '.join(ARCHIVE_VOLUME_SUFFIXES)})."
    },
    {
        "name": {"type": "string", "maxLength": 200, "description": "A name for people."},
        "folder": {
            "type": "string",
            "description": "Instead of an archive: a folder relative to JDT_REFERENCE_ROOT.",
        },
        **JOB_OPTION_FIELDS,
    },
    ["name"],
)


@router.post(
    "/v1/reference-sets",
    status_code=201,
    summary="Create a reference set from an archive or a server-side folder (admin)",
    openapi_extra={"requestBody": _SET_BODY},
)
async def create_reference_set(request: Request, caller: AdminCaller) -> JSONResponse:
    settings: Settings = request.app.state.settings
    db = database(request)
    set_id = new_id()
    target = settings.data_dir / "reference-sets" / set_id
    new_upload_folder(target)
    owned = True
    try:
        upload = await receive_upload(
            request, target / "upload", _SET_FIELDS, ("references",), required_files=()
        )
        fields = dict(upload.form.fields)
        name = fields.pop("name", "").strip()
        if not name or len(name) > MAX_NAME:
            raise ApiError(
                422, "missing_field", f"form field 'name' (1 to {MAX_NAME} characters) is needed"
            )
        if any(unicodedata.category(char) == "Cc" for char in name):
            raise ApiError(
                422,
                "invalid_option",
                f"form field 'name' holds a control character (a NUL, a newline...): {name!r}",
            )
        folder_text = fields.pop("folder", "").strip()
        options = {key: value for key, value in fields.items() if value.strip()}
        job_options(options, settings)  # refuse bad defaults now (422)
        archive = upload.form.files.get("references")
        if (archive is None) == (not folder_text):
            raise ApiError(
                422,
                "missing_field",
                "send exactly one of the file 'references' (an archive) or the field 'folder'",
            )
        if archive is not None:
            folder = target / "references"
            await unpack_upload(upload, "references", folder, settings)
        else:
            folder = _server_folder(settings, folder_text)
            owned = False
        cases = await asyncio.to_thread(reference_cases, folder, settings.max_voxels)
        if not owned:
            _refuse_files_outside(settings, [folder / case.file for case in cases])
        version = await asyncio.to_thread(content_hash, {c.case_id: folder / c.file for c in cases})
        ref_set = ReferenceSet(
            id=set_id,
            name=name,
            version=version,
            labels=options.get("labels"),
            options=options,
            folder=str(folder),
            owned=owned,
        )
        with db.session.begin() as session:
            session.add(ref_set)
            session.flush()
            for case in cases:
                case.set_id = set_id
                session.add(case)
    except BaseException:
        remove_folder(target)
        raise
    remove_folder(target / "upload")
    if not owned:
        remove_folder(target)
    db.audit(caller.team, "reference_set.create", reference_set_id=set_id, cases=len(cases))
    return JSONResponse(
        set_dict(ref_set, cases),
        status_code=201,
        headers={"Location": f"/v1/reference-sets/{set_id}"},
    )


@router.get("/v1/reference-sets", summary="List the reference sets")
async def list_reference_sets(request: Request, caller: AnyCaller) -> dict[str, Any]:
    db = database(request)
    with db.session() as session:
        sets = session.scalars(
            select(ReferenceSet).order_by(ReferenceSet.created_at.desc(), ReferenceSet.id)
        ).all()
        counts = dict(
            session.execute(
                select(ReferenceCase.set_id, func.count()).group_by(ReferenceCase.set_id)
            ).all()
        )
    return {
        "reference_sets": [{**set_dict(s, None), "cases_total": counts.get(s.id, 0)} for s in sets]
    }


@router.get("/v1/reference-sets/{set_id}", summary="A reference set: its cases, shapes, spacing")
async def read_reference_set(set_id: str, request: Request, caller: AnyCaller) -> dict[str, Any]:
    ref_set, cases = get_set(database(request), set_id)
    return set_dict(ref_set, cases)


@router.delete(
    "/v1/reference-sets/{set_id}", status_code=204, summary="Delete a reference set (admin)"
)
async def delete_reference_set(set_id: str, request: Request, caller: AdminCaller) -> Response:
    db = database(request)
    ref_set, cases = get_set(db, set_id)
    with db.session.begin() as session:
        busy = session.scalar(
            select(func.count())
            .select_from(Job)
            .where(Job.reference_set_id == set_id, Job.status.in_(("queued", "running")))
        )
        if busy:
            raise ApiError(
                409, "reference_set_in_use", f"{busy} job(s) on this set are queued or running"
            )
        session.delete(session.get(ReferenceSet, set_id))
    if ref_set.owned:
        remove_folder(Path(ref_set.folder).parent)
    db.audit(caller.team, "reference_set.delete", reference_set_id=set_id, cases=len(cases))
    return Response(status_code=204)


@router.get(
    "/v1/reference-sets/{set_id}/leaderboard",
    summary="The latest finished job of each team on a set, ranked",
)
async def read_leaderboard(
    set_id: str,
    request: Request,
    caller: AnyCaller,
    metric: Annotated[str, Query(max_length=32)] = "dice",
    aggregate: Annotated[str, Query(max_length=32)] = "mean",
) -> dict[str, Any]:
    db = database(request)
    ref_set, _ = get_set(db, set_id)
    rows, excluded = leaderboard(db, ref_set, metric, aggregate, request.app.state.settings)
    for row in rows:
        row["finished_at"] = row["finished_at"].isoformat() if row["finished_at"] else None
    return {
        "reference_set": set_id,
        "version": ref_set.version,
        "metric": metric,
        "aggregate": aggregate,
        "better": "higher" if higher_is_better(metric) else "lower",
        "entries": rows,
        "excluded": excluded,
    }
