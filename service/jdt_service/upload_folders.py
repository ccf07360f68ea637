"""The folders that receive the archives of ``POST /v1/jobs`` and ``POST /v1/reference-sets``.

Each request unpacks into ``JDT_DATA_DIR/jobs/<id>/`` (or ``reference-sets/<id>/``) from an
``upload/`` subfolder that it deletes on every path once the row of the job or set is stored
(or the request failed). A process killed in between (``kill -9``, the out-of-memory killer)
leaves the folder behind. So that start-up can tell such a folder from one another process is
still receiving, ``upload/`` holds an owner file naming the host and the process; replicas on
other hosts share ``JDT_DATA_DIR`` and their folders are never touched.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable
from pathlib import Path

from jdt_service.jobs import remove_folder
from jdt_service.scoring_pool import process_exists

__all__ = ["KINDS", "OWNER_FILE", "new_upload_folder", "remove_stale_uploads"]

logger = logging.getLogger(__name__)

#: the folders of ``JDT_DATA_DIR`` whose entries are received through an ``upload/`` folder
KINDS = ("jobs", "reference-sets")
OWNER_FILE = ".receiving"


def new_upload_folder(target: Path) -> Path:
    """Create ``target/upload`` (and ``target``) with its owner file; return it."""
    upload = target / "upload"
    upload.mkdir(parents=True)
    (upload / OWNER_FILE).write_text(f"{socket.gethostname()}\n{os.getpid()}\n")
    return upload


def _left_by_a_dead_process(upload: Path) -> bool:
    """Whether this host's process that received into ``upload`` is gone (or is an earlier
    life of this one: a container restarts its service with the same pid). Unreadable or
    foreign owner files, and folders without one, are never taken for dead."""
    try:
        host, pid_text = (upload / OWNER_FILE).read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return False
    return host == socket.gethostname() and (pid == os.getpid() or not process_exists(pid))


def remove_stale_uploads(data_dir: Path, stored: Callable[[str, str], bool]) -> int:
    """At start-up, before any request: delete what dead processes of this host left while
    receiving. ``stored(kind, id)`` says whether the job or set has its row: then only its
    ``upload/`` goes (the process died after storing it), else the whole folder. Returns the
    number of folders cleaned."""
    removed = 0
    for kind in KINDS:
        try:
            entries = list((data_dir / kind).iterdir())
        except OSError:
            continue
        for entry in entries:
            upload = entry / "upload"
            if not _left_by_a_dead_process(upload):
                continue
            remove_folder(upload if stored(kind, entry.name) else entry)
            removed += 1
    if removed:
        logger.info("removed %d upload folder(s) left by a stopped process", removed)
    return removed
