"""Helpers for the job tests: a real PostgreSQL 15 server, case folders and their archives.

:func:`postgres_server` runs ``initdb`` / ``pg_ctl`` from ``/usr/lib/postgresql/15/bin`` (or
``JDT_TEST_PG_BIN``) in a temporary folder on a free loopback port, as ``nobody`` when the
tests run as root (PostgreSQL refuses to run as root), and stops it at the end.
"""

from __future__ import annotations

import io
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

# (to be folded into conftest fixtures with the job tests)
from conftest import _label_pair as label_pair
from conftest import _nifti_bytes as nifti_bytes

__all__ = [
    "PG_BIN",
    "archive_bytes",
    "case_files",
    "free_port",
    "postgres_server",
    "strip_timing",
]

PG_BIN = Path(os.environ.get("JDT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _as_user() -> dict[str, Any]:
    """``subprocess`` arguments that drop root to ``nobody``; nothing when not root."""
    if os.geteuid() != 0:
        return {}
    nobody = pwd.getpwnam("nobody")
    return {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}


@contextmanager
def postgres_server() -> Iterator[str]:
    """A running PostgreSQL server; yields the libpq URL of its ``postgres`` database."""
    folder = Path(tempfile.mkdtemp(prefix="jdt-pg-"))
    user = _as_user()
    if user:
        os.chown(folder, user["user"], user["group"])
    data = folder / "data"
    port = free_port()
    run = {"check": True, "capture_output": True, "cwd": folder, **user}
    subprocess.run(
        [PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], **run
    )
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    subprocess.run(
        [PG_BIN / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"], **run
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def new_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server; its SQLAlchemy URL (psycopg 3 driver)."""
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + (
        f"/{name}"
    )


def case_files(
    n: int, shape: tuple[int, ...] = (12, 10, 8), labels: int = 3, seed: int = 0
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``n`` cases: ``(predictions, references)`` as ``{file name: .nii.gz bytes}``."""
    preds, refs = {}, {}
    spacing = np.diag([0.5, 0.75, 1.5, 1.0])  # exact in the float32 header
    for i in range(n):
        pred, ref = label_pair(shape, labels=labels, seed=seed + i)
        preds[f"case_{i:03d}.nii.gz"] = nifti_bytes(pred, spacing)
        refs[f"case_{i:03d}.nii.gz"] = nifti_bytes(ref, spacing)
    return preds, refs


def archive_bytes(files: dict[str, bytes], kind: str = "zip", folder: str = "") -> bytes:
    """A ``zip`` or ``tar.gz`` of ``files``, optionally inside ``folder/``."""
    buf = io.BytesIO()
    prefix = f"{folder}/" if folder else ""
    if kind == "zip":
        with zipfile.ZipFile(buf, "w") as archive:
            for name, data in files.items():
                archive.writestr(prefix + name, data)
    else:
        with tarfile.open(fileobj=buf, mode="w:gz") as archive:
            for name, data in files.items():
                info = tarfile.TarInfo(prefix + name)
                info.size = len(data)
                archive.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def strip_timing(report: dict[str, Any]) -> dict[str, Any]:
    """A directory report without what differs between runs (seconds per case)."""
    out = dict(report)
    out["cases"] = [{k: v for k, v in case.items() if k != "seconds"} for case in report["cases"]]
    return out
