"""Evaluation jobs: reference sets, job submission, claiming, and the reports of stored results.

A job scores a folder of predictions against a folder of references (a stored reference set
or an uploaded one), case by case; cases pair by case id as ``score-dir`` pairs them
(:func:`monai_jdt.scoring.pair_cases`). Each case's outcome is one ``case_results`` row,
committed as soon as it is known, so a report is always rebuilt from the database:
:func:`job_result` turns the rows back into :class:`~monai_jdt.scoring.CaseReport` objects
and a :class:`~monai_jdt.scoring.DirectoryResult`, whose JSON is exactly what
``score-dir -o`` writes.

A replica *claims* a job in the database (``SELECT ... FOR UPDATE SKIP LOCKED`` on PostgreSQL,
then an update that only succeeds while the job is still unclaimed or its lease has run out)
and renews its lease (``heartbeat_at``) while it scores; a job whose replica died is taken
over once ``job_lease`` seconds have passed without a heartbeat, and only its missing cases
are scored again.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import re
import shutil
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select, update

from jdt_service.db import CaseResult, Database, Job, ReferenceCase, ReferenceSet, utcnow
from jdt_service.errors import ApiError
from jdt_service.forms import OPTION_FIELDS, options_from_form
from jdt_service.schemas import ErrorResponse
from jdt_service.settings import Settings
from monai_jdt.scoring import (
    METRICS,
    CaseFailure,
    CaseReport,
    DirectoryResult,
    LabelScore,
    ScoringError,
    ScoringOptions,
    pair_cases,
)
from monai_jdt.scoring.boundary import DISTANCE_METRICS
from monai_jdt.scoring.files import VOLUME_SUFFIXES
from monai_jdt.scoring.folders import case_files, write_csv
from monai_jdt.scoring.options import BOUNDARY_METRICS
from monai_jdt.scoring.sitk_formats import inspect_volume

__all__ = [
    "JOB_OPTION_FIELDS",
    "case_outcome",
    "case_report_from_dict",
    "claim_job",
    "content_hash",
    "grand_challenge_metrics",
    "higher_is_better",
    "job_options",
    "job_result",
    "leaderboard",
    "new_id",
    "reference_cases",
    "reference_changes",
    "reference_set_changed",
    "score_definition",
]

#: the scoring options a job takes: those of ``POST /v1/scores`` but the case id
JOB_OPTION_FIELDS = {name: spec for name, spec in OPTION_FIELDS.items() if name != "case_id"}
_HASH_CHUNK = 1024 * 1024


#: error statuses of the job and reference-set endpoints, for OpenAPI
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorResponse, "description": description}
    for status, description in {
        400: "malformed_multipart, client_disconnected",
        401: "unauthorized",
        403: "forbidden (an admin key is needed)",
        404: "not_found (also another team's job)",
        408: "upload_too_slow (the body arrived slower than the minimum upload rate)",
        409: "job_not_done, reference_set_in_use, reference_set_changed (its files changed on "
        "disk since it was registered)",
        413: "upload_too_large, field_too_large, archive_too_large, archive_too_many_members",
        415: "unsupported_media_type, not_nifti",
        422: "validation_error, missing_field, unknown_option, invalid_option, no_cases, "
        "archive_invalid, archive_unsafe_member, archive_nested, archive_duplicate_case, "
        "archive_bad_case_id, archive_detached_header, archive_empty, and the scoring core's "
        "header errors",
        503: "server_busy (JDT_MAX_UPLOADS bodies are being received; with Retry-After)",
    }.items()
}


def new_id() -> str:
    """A random 32-hex-digit id."""
    return uuid.uuid4().hex


_ID = re.compile(r"[0-9a-f]{32}")


def is_id(text: str) -> bool:
    """Whether ``text`` could be an id of :func:`new_id`; anything else is looked up nowhere
    (a 404 without a query: PostgreSQL's text cannot even hold the NUL of ``/v1/jobs/%00``)."""
    return _ID.fullmatch(text) is not None


def job_options(fields: Mapping[str, str], settings: Settings) -> ScoringOptions:
    """The options of a job from its text fields, parsed as ``POST /v1/scores`` parses them.

    Raises:
        InvalidOptionError: a field is not valid (422).
    """
    options, _ = options_from_form(fields, device=settings.device, max_voxels=settings.max_voxels)
    return options


def content_hash(files: Mapping[str, Path]) -> str:
    """SHA-256 over the sorted case ids and their files' bytes: the version of a set."""
    digest = hashlib.sha256()
    for case in sorted(files):
        digest.update(case.encode() + b"\x00")
        with open(files[case], "rb") as handle:
            while chunk := handle.read(_HASH_CHUNK):
                digest.update(chunk)
        digest.update(b"\x00")
    return digest.hexdigest()


def reference_cases(folder: Path, max_voxels: int) -> list[ReferenceCase]:
    """One row per volume file of ``folder`` with the shape and spacing its header declares.

    Raises:
        ScoringError: a header is not of its format, corrupt, or declares too many voxels
            (4xx).
        ApiError: 422 ``no_cases`` when the folder holds no volume file.
    """
    # pairing a folder with itself lists its cases exactly as score-dir names them
    pairs, _, _ = pair_cases(folder, folder)
    if not pairs:
        kinds = ", ".join(VOLUME_SUFFIXES)
        raise ApiError(422, "no_cases", f"the references hold no volume file ({kinds})")
    rows = []
    for case, path, _ in pairs:
        info = inspect_volume(path, max_voxels)
        stat = path.stat()
        rows.append(
            ReferenceCase(
                case_id=case,
                file=path.name,
                shape=list(info.spatial_shape),
                spacing=None if info.spacing is None else list(info.spacing),
                size=stat.st_size,
                mtime_ns=stat.st_mtime_ns,
            )
        )
    return rows


def reference_changes(folder: Path, cases: Sequence[ReferenceCase], root: Path) -> list[str]:
    """What differs between a set's folder on disk and its registered ``cases``: the folder
    gone, a case gone or added, a file renamed, resized, with another modification time
    (rows registered before sizes and times were kept are compared by name only), or now
    resolving outside ``root`` (a link out of ``JDT_REFERENCE_ROOT``, or of the set's own
    folder for an uploaded set). Empty when nothing did. The messages name case ids and file
    names, never a path of the server.

    A job scores the files on disk, so a set whose files changed would be scored as another
    set under the same version (and ranked beside jobs on the real one). The size and time
    are a quick check, as ``make`` and ``rsync`` make: a file rewritten to the same size
    with its time set back (``touch -r``, ``cp -p`` of another volume) is not seen.
    """
    if not folder.is_dir():
        return ["its folder is gone"]
    try:
        now = case_files(folder, "reference")
    except ScoringError as err:  # a case has two files now (the message names them only)
        return [err.message.rstrip(".")]
    registered = {row.case_id: row for row in cases}
    changes = [f"case {case!r} is gone" for case in sorted(registered.keys() - now.keys())]
    changes += [f"case {case!r} was added" for case in sorted(now.keys() - registered.keys())]
    inside = root.resolve()
    for case in sorted(registered.keys() & now.keys()):
        row, path = registered[case], now[case]
        if path.name != row.file:
            changes.append(f"case {case!r} is now the file {path.name!r}")
            continue
        try:
            outside = not path.resolve().is_relative_to(inside)
            stat = path.stat()
        except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop
            changes.append(f"{row.file!r} cannot be read ({getattr(err, 'strerror', err)})")
            continue
        if outside:
            changes.append(f"{row.file!r} is now a link out of the set's root")
        elif row.size is not None and (stat.st_size, stat.st_mtime_ns) != (row.size, row.mtime_ns):
            changes.append(f"{row.file!r} was modified")
    return changes


def reference_set_changed(set_id: str, changes: Sequence[str]) -> str:
    """The message of a job refused (or failed) because its set changed on disk."""
    shown = "; ".join(changes[:5]) + (f"; and {len(changes) - 5} more" if len(changes) > 5 else "")
    return (
        f"reference set {set_id!r} changed on disk since it was registered ({shown}), so its "
        "scores would no longer be those of its version; register the folder again as a new set"
    )


def claim_job(db: Database, worker: str, lease_s: float) -> Job | None:
    """Claim the oldest queued job, or a running one whose lease ran out; None if none.

    Two replicas never hold the same job: the row is locked (``SKIP LOCKED``: replicas skip
    each other's candidates) and the claim is an update conditioned on the values read.
    """
    now = utcnow()
    stale = now - dt.timedelta(seconds=lease_s)
    claimable = or_(Job.status == "queued", and_(Job.status == "running", Job.heartbeat_at < stale))
    with db.session.begin() as session:
        query = select(Job).where(claimable).order_by(Job.created_at, Job.id).limit(1)
        if db.is_postgresql:
            query = query.with_for_update(skip_locked=True)
        job = session.scalars(query).first()
        if job is None:
            return None
        claimed = session.execute(
            update(Job)
            .where(Job.id == job.id, Job.status == job.status)
            .where(
                Job.claimed_by.is_(None)
                if job.claimed_by is None
                else Job.claimed_by == job.claimed_by
            )
            .values(
                status="running",
                claimed_by=worker,
                heartbeat_at=now,
                started_at=job.started_at or now,
            )
        )
        if claimed.rowcount != 1:  # type: ignore[attr-defined]
            return None
    with db.session() as session:
        return session.get(Job, job.id)


def _label_from_dict(row: Mapping[str, Any], metrics: tuple[str, ...]) -> LabelScore:
    members = row.get("members")
    return LabelScore(
        label=None if row["label"] is None else int(row["label"]),  # None: a region row
        name=row["name"],
        requested=bool(row["requested"]),
        metrics={metric: row.get(metric) for metric in metrics},
        reasons=dict(row["reasons"]),
        tp=row["tp"],
        fp=row["fp"],
        fn=row["fn"],
        tn=row["tn"],
        predicted_voxels=row["predicted_voxels"],
        reference_voxels=row["reference_voxels"],
        predicted_ml=row["predicted_ml"],
        reference_ml=row["reference_ml"],
        region=row.get("region"),
        members=None if members is None else tuple(int(m) for m in members),
        nsd_tolerance=row.get("nsd_tolerance"),
    )


def case_report_from_dict(data: Mapping[str, Any], options: ScoringOptions) -> CaseReport:
    """Rebuild the :class:`CaseReport` whose ``to_dict()`` gave ``data`` (scored with
    ``options``): ``case_report_from_dict(r.to_dict(), r.options).to_dict() == r.to_dict()``."""
    metrics = tuple(data["options"]["metrics"])
    spacing = data["spacing_mm"]
    return CaseReport(
        case_id=data["case_id"],
        kind=data["kind"],
        device=data["device"],
        shape=tuple(data["shape"]),
        spacing=None if spacing is None else tuple(spacing),
        labels=tuple(_label_from_dict(row, metrics) for row in data["labels"]),
        options=options,
        notes=tuple(data["notes"]),
        seconds=float(data["seconds"]),
        warnings=tuple(data.get("warnings", ())),
    )


def case_outcome(
    case_id: str, stored: Mapping[str, Any], options: ScoringOptions
) -> CaseReport | CaseFailure:
    """A case's outcome from what its ``case_results`` row holds (``report``, or ``code`` and
    ``message``; :func:`jdt_service.jobs_worker.score_job_case`'s dict)."""
    report = stored.get("report")
    if report is not None:
        return case_report_from_dict(report, options)
    return CaseFailure(case_id, stored.get("code") or "", stored.get("message") or "")


def job_result(db: Database, job: Job, settings: Settings) -> DirectoryResult:
    """The job's stored case results as the result of ``score_directory``.

    A finished job's rows already hold every case on the dataset's one label set (the runner
    completes them with :func:`monai_jdt.scoring.folders.complete_label_set` before the job
    is done), so its report is what ``score-dir -o`` writes for the same files.
    """
    options = job_options(job.options, settings)
    with db.session() as session:
        rows = session.scalars(select(CaseResult).where(CaseResult.job_id == job.id)).all()
    outcomes = [
        case_outcome(
            row.case_id, {"report": row.report, "code": row.code, "message": row.message}, options
        )
        for row in rows
    ]
    return DirectoryResult(
        [o for o in outcomes if isinstance(o, CaseReport)],
        [o for o in outcomes if isinstance(o, CaseFailure)],
        job.unpaired["predictions"],
        job.unpaired["references"],
    )


def cases_csv(result: DirectoryResult) -> str:
    """``score-dir --csv``'s text: one row per case and label."""
    stream = io.StringIO()
    write_csv(result.reports, stream, result.failures)
    return stream.getvalue()


#: keys of ``aggregates[metric]`` in ``metrics.json`` that are not structures
_AGGREGATE_KEYS = frozenset({"mean"})


def _structure_keys(
    labels: Sequence[tuple[int, str | None]], regions: Sequence[str]
) -> tuple[dict[int, str], dict[str, str]]:
    """The ``metrics.json`` key of each label and region, one structure per key.

    A label is keyed by its name, unless that name could be read as another key (``mean``,
    another label's id, a name two labels share, a region's name, or ``region ...``), then by
    its id; a region by its name, or ``region NAME`` when a label has that key.
    """
    ids = {str(label) for label, _ in labels}
    shared = Counter(name for _, name in labels if name)
    label_keys = {}
    for label, name in labels:
        clash = (
            not name
            or name in _AGGREGATE_KEYS
            or shared[name] > 1
            or (name in ids and name != str(label))
            or name in regions
            or name.startswith("region ")
        )
        label_keys[label] = str(label) if clash else str(name)
    taken = set(label_keys.values()) | _AGGREGATE_KEYS
    return label_keys, {
        region: region if region not in taken else f"region {region}" for region in regions
    }


def grand_challenge_metrics(result: DirectoryResult) -> dict[str, Any]:
    """grand-challenge.org's ``metrics.json`` layout: ``{"case": ..., "aggregates": ...}``.

    ``case[case_id][structure][metric]`` is the case's score (null when undefined);
    ``aggregates[metric]`` holds the foreground ``mean`` and, per label and region, the
    summary's statistics (``mean``, ``median``, ``std``, ``min``, ``max``, ``n``). Labels are
    keyed by their name when it is unambiguous, else by their id (``_structure_keys``).
    """
    summary = result.summary
    regions = [entry["region"] for entry in summary.get("regions", [])]
    label_keys, region_keys = _structure_keys(
        [(entry["label"], entry["name"]) for entry in summary["labels"]], regions
    )

    def key(label: int | None, region: str | None) -> str:
        return label_keys[label] if label is not None else region_keys[str(region)]

    cases: dict[str, Any] = {}
    for report in result.reports:
        cases[report.case_id or ""] = {
            key(row.label, row.region): dict(row.metrics) for row in report.labels
        }
    aggregates: dict[str, Any] = {}
    for metric in summary["metrics"]:
        entry: dict[str, Any] = {"mean": summary["foreground_mean"][metric]["mean"]}
        for label in summary["labels"]:
            entry[label_keys[label["label"]]] = label[metric]
        for region in summary.get("regions", []):
            entry[region_keys[region["region"]]] = region[metric]
        aggregates[metric] = entry
    aggregates["fine_grained"] = summary["fine_grained"]
    aggregates["cases"] = summary["cases"]
    aggregates["failures"] = len(result.failures)
    return {"case": cases, "aggregates": aggregates}


#: ``aggregate`` values of the leaderboard besides the fine-grained ``D``, ``I``, ``C``, ...
LEADERBOARD_AGGREGATES = ("mean", "median")
FINE_GRAINED_AGGREGATES = ("D", "I", "C", "I_worst", "C_worst")


#: the metrics a leaderboard ranks by: the overlap ratios and the boundary metrics
LEADERBOARD_METRICS = (*METRICS, *BOUNDARY_METRICS)


def higher_is_better(metric: str) -> bool:
    """Whether a larger ``metric`` is a better one: not for the distances in mm (``hd``,
    ``hd95``, ``assd``, ``masd``), for every ratio (overlaps, ``nsd``, ``boundary_iou``)."""
    return metric not in DISTANCE_METRICS


def check_leaderboard_query(metric: str, aggregate: str) -> None:
    """Refuse a metric or an aggregate the leaderboard does not know, whatever the jobs.

    Raises:
        ApiError: 422 ``invalid_option``: an unknown metric or aggregate, or a fine-grained
            aggregate of another metric than ``dice`` and ``jaccard``.
    """
    if metric not in LEADERBOARD_METRICS:
        raise ApiError(
            422, "invalid_option", f"metric must be one of {', '.join(LEADERBOARD_METRICS)}"
        )
    known = (*LEADERBOARD_AGGREGATES, *FINE_GRAINED_AGGREGATES)
    if aggregate not in known:
        raise ApiError(422, "invalid_option", f"aggregate must be one of {', '.join(known)}")
    if aggregate in FINE_GRAINED_AGGREGATES and metric not in ("dice", "jaccard"):
        raise ApiError(
            422,
            "invalid_option",
            f"aggregate {aggregate!r} exists for dice and jaccard only, got {metric!r}",
        )


def summary_score(summary: Mapping[str, Any], metric: str, aggregate: str) -> float | None:
    """One number of a job's summary for the leaderboard (None when undefined).

    ``mean`` is the foreground mean (mean over the requested labels but 0 of the per-label
    means); ``median`` the mean over those labels of the per-label medians; ``D`` / ``I`` /
    ``C`` / ``I_worst`` / ``C_worst`` the fine-grained scores (``dice`` and ``jaccard`` only).

    Raises:
        ApiError: 422 ``invalid_option`` for an unknown metric or aggregate
            (:func:`check_leaderboard_query`).
    """
    check_leaderboard_query(metric, aggregate)
    if aggregate in FINE_GRAINED_AGGREGATES:  # None when the job did not score the metric
        fine = summary.get("fine_grained", {}).get(metric)
        value: float | None = fine[aggregate] if isinstance(fine, dict) else None
        return value
    if metric not in summary["metrics"]:
        return None
    if aggregate == "mean":
        mean: float | None = summary["foreground_mean"][metric]["mean"]
        return mean
    values = [  # over the labels of the foreground mean: requested, label 0 apart
        row[metric]["median"]
        for row in summary["labels"]
        if row["requested"] and row["label"] != 0 and row[metric]["n"]
    ]
    return sum(values) / len(values) if values else None


def score_definition(fields: Mapping[str, str], settings: Settings) -> dict[str, Any] | None:
    """What decides the value of a job's scores besides its files: every reported option of
    its stored ``fields`` but ``metrics`` (which only chooses what is computed), or None when
    they no longer parse. Jobs rank together only when theirs are equal."""
    try:
        reported = job_options(fields, settings).reported()
    except ScoringError:
        return None
    reported.pop("metrics", None)
    return reported


def leaderboard(
    db: Database, ref_set: ReferenceSet, metric: str, aggregate: str, settings: Settings
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(entries, excluded)``: the latest finished job of each team on a reference set that
    was scored as the set defines its scores and on every case of the set, best first (the
    highest score first, the lowest for a distance in mm, :func:`higher_is_better`); and the
    teams whose newest job was not (an older one of theirs may rank), with the options that
    differ (``percentile``, ``nsd_tolerance``, ``labels``...: a job may override the set's
    defaults, and its numbers then measure something else), its ``failed`` cases and its
    ``missing`` ones (references without a prediction). A mean over the cases that happened
    to be scored is not comparable with one over the whole set: a team that leaves out its
    hardest cases would rank above one that did not.

    Teams whose score is undefined come last; ties share a rank.

    Raises:
        ApiError: 422 ``invalid_option`` (:func:`check_leaderboard_query`), also before any
            job has finished; and when no ranked job scored ``metric`` at all (every team
            would rank with a null score).
    """
    check_leaderboard_query(metric, aggregate)
    with db.session() as session:
        jobs = session.scalars(
            select(Job)
            .where(Job.reference_set_id == ref_set.id, Job.status == "done")
            .order_by(Job.finished_at.desc(), Job.id)
        ).all()
    defined = score_definition(ref_set.options, settings)
    latest: dict[str, Job] = {}
    excluded: dict[str, dict[str, Any]] = {}
    for job in jobs:
        if job.team in latest:
            continue
        definition = score_definition(job.options, settings)
        differs = (
            ["options"]
            if definition is None or defined is None
            else sorted(k for k in defined.keys() | definition.keys()
                        if defined.get(k) != definition.get(k))
        )  # fmt: skip
        missing = len(job.unpaired["references"])
        if not differs and not job.failures and not missing:
            latest[job.team] = job
        elif job.team not in excluded:  # the team's newest job that does not rank
            excluded[job.team] = {
                "team": job.team,
                "job": job.id,
                "differs": differs,
                "failed": job.failures,
                "missing": missing,
            }
    if latest and not any(
        metric in (job.summary or {}).get("metrics", ()) for job in latest.values()
    ):
        raise ApiError(
            422,
            "invalid_option",
            f"no ranked job on this set scored {metric} (the set's jobs score "
            f"{', '.join(job_options(ref_set.options, settings).metrics)} unless a job asks "
            "for more with its own metrics field)",
        )
    scored = [
        (summary_score(job.summary or {}, metric, aggregate), team, job)
        for team, job in latest.items()
    ]
    sign = -1.0 if higher_is_better(metric) else 1.0
    scored.sort(key=lambda item: (item[0] is None, sign * (item[0] or 0.0), item[1]))
    rows: list[dict[str, Any]] = []
    for position, (score, team, job) in enumerate(scored, 1):
        same = rows and rows[-1]["score"] == score
        rows.append(
            {
                "rank": rows[-1]["rank"] if same else position,
                "team": team,
                "score": score,
                "cases": (job.summary or {}).get("cases", 0),
                "failures": job.failures,
                "finished_at": job.finished_at,
            }
        )
    return rows, [excluded[team] for team in sorted(excluded)]


def remove_folder(folder: str | Path) -> None:
    """Delete a job's or a set's files (missing is fine)."""
    shutil.rmtree(folder, ignore_errors=True)
