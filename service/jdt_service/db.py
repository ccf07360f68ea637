"""The jobs database: SQLAlchemy 2 models, the engine, and the Alembic upgrade at start-up.

SQLite (a file ``jobs.sqlite3`` under ``JDT_DATA_DIR``) is the embedded default; any URL in
``JDT_DATABASE_URL`` (PostgreSQL through psycopg 3: ``postgresql+psycopg://...``) replaces it.
The schema lives in ``jdt_service/migrations`` (Alembic); :func:`open_database` brings the
database to the newest revision before the service answers.

Tables: ``reference_sets`` and their ``reference_cases`` (case id, shape, spacing, the
file's size and modification time: never voxels), ``jobs`` (status, progress, options, the
claim of the replica running it), ``case_results`` (one row per scored or failed case,
committed as soon as it is known) and ``audit_log`` (team, action, job or set id, time, case
count: never file names or headers).
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any, ClassVar

from alembic import command
from alembic.config import Config
from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    event,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, sessionmaker

__all__ = [
    "AuditEntry",
    "Base",
    "CaseResult",
    "Database",
    "Job",
    "ReferenceCase",
    "ReferenceSet",
    "open_database",
    "utcnow",
]

JOB_STATUSES = ("queued", "running", "done", "failed", "cancelled")


def utcnow() -> dt.datetime:
    """The current time in UTC, timezone-aware."""
    return dt.datetime.now(dt.timezone.utc)


class _UtcDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware in and out on every backend (SQLite stores naive values). A
    ``TypeDecorator``: a ``DateTime`` subclass is adapted to the dialect's own type, which
    drops an overridden result processor."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: Any, dialect: Any) -> dt.datetime | None:
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            return value.replace(tzinfo=dt.timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        dt.datetime: _UtcDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class ReferenceSet(Base):
    __tablename__ = "reference_sets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(64))
    labels: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    folder: Mapped[str] = mapped_column(Text)
    owned: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class ReferenceCase(Base):
    __tablename__ = "reference_cases"
    __table_args__ = (UniqueConstraint("set_id", "case_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    set_id: Mapped[str] = mapped_column(ForeignKey("reference_sets.id", ondelete="CASCADE"))
    case_id: Mapped[str] = mapped_column(String(256))
    file: Mapped[str] = mapped_column(Text)
    shape: Mapped[list[Any]] = mapped_column()
    spacing: Mapped[list[Any] | None] = mapped_column()
    # the file's size and modification time at registration (null for rows of revision 0001)
    size: Mapped[int | None] = mapped_column(BigInteger)
    mtime_ns: Mapped[int | None] = mapped_column(BigInteger)


class Job(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    team: Mapped[str] = mapped_column(String(200), index=True)
    status: Mapped[str] = mapped_column(String(16), index=True)
    reference_set_id: Mapped[str | None] = mapped_column(
        ForeignKey("reference_sets.id", ondelete="SET NULL"), index=True
    )
    folder: Mapped[str] = mapped_column(Text)
    references_folder: Mapped[str] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column()
    cases: Mapped[list[Any]] = mapped_column()
    unpaired: Mapped[dict[str, Any]] = mapped_column()
    cases_total: Mapped[int] = mapped_column(default=0)
    cases_done: Mapped[int] = mapped_column(default=0)
    failures: Mapped[int] = mapped_column(default=0)
    summary: Mapped[dict[str, Any] | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)
    claimed_by: Mapped[str | None] = mapped_column(String(64))
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column()
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[dt.datetime | None] = mapped_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column()


class CaseResult(Base):
    __tablename__ = "case_results"
    __table_args__ = (UniqueConstraint("job_id", "case_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    case_id: Mapped[str] = mapped_column(String(256))
    report: Mapped[dict[str, Any] | None] = mapped_column()
    code: Mapped[str | None] = mapped_column(String(64))
    message: Mapped[str | None] = mapped_column(Text)
    scored_by: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class AuditEntry(Base):
    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    team: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[str | None] = mapped_column(String(32))
    reference_set_id: Mapped[str | None] = mapped_column(String(32))
    cases: Mapped[int | None] = mapped_column()


class Database:
    """The engine and a session factory of one app."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.session = sessionmaker(engine, expire_on_commit=False)

    @property
    def is_postgresql(self) -> bool:
        return self.engine.dialect.name == "postgresql"

    def audit(
        self,
        team: str,
        action: str,
        *,
        job_id: str | None = None,
        reference_set_id: str | None = None,
        cases: int | None = None,
    ) -> None:
        """Record one action in its own transaction."""
        with self.session.begin() as session:
            session.add(
                AuditEntry(
                    team=team,
                    action=action,
                    job_id=job_id,
                    reference_set_id=reference_set_id,
                    cases=cases,
                )
            )

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across crashes of the process
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def database_url(data_dir: Path, url: str | None) -> str:
    """``url`` when given, else SQLite in ``data_dir`` (created if missing)."""
    if url:
        return url
    data_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(data_dir / 'jobs.sqlite3').resolve()}"


def upgrade(engine: Engine) -> None:
    """Run the Alembic migrations of ``jdt_service/migrations`` up to ``head``."""
    config = Config()
    config.set_main_option("script_location", str(Path(__file__).with_name("migrations")))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")


def open_database(data_dir: Path, url: str | None) -> Database:
    """Connect (SQLite by default, see :func:`database_url`) and migrate to the newest schema."""
    engine = create_engine(
        database_url(data_dir, url),
        json_serializer=lambda obj: json.dumps(obj, allow_nan=False),
        pool_pre_ping=True,
    )
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    upgrade(engine)
    return Database(engine)
