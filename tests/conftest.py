"""Shared pytest fixtures of the test suite.

Each area adds its fixtures in its own section, headed by a comment naming the area. Nothing
here builds data, apps or temporary folders at import time: fixtures do it when a test asks.
Helpers that tests call with their own arguments are factory fixtures (a session-scoped fixture
whose value is the function), so a test names them as arguments instead of importing a module.
"""

from __future__ import annotations

import gzip
import io
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from itertools import count
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

# ------------------------------------------------------------------------------------------
# lean: synthetic volumes, NIfTI bytes, a corpus of bad files, and the float64 numpy known
# answers they are checked against (computed from boolean masks, independently of monai_jdt)


def _ellipsoid(shape: Sequence[int], center: Sequence[float], radii: Sequence[float]) -> np.ndarray:
    grids = np.ogrid[tuple(slice(0, n) for n in shape)]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grids, center, radii, strict=True))
    return np.asarray(inside <= 1.0)


def _organ_pair(
    shape: Sequence[int], n_labels: int, seed: int = 0, shift: int = 2
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    reference = np.zeros(shape, dtype=np.int32)
    prediction = np.zeros(shape, dtype=np.int32)
    for label in range(1, n_labels + 1):
        radii = rng.uniform(0.1, 0.25, size=3) * np.asarray(shape)
        center = rng.uniform(0.3, 0.7, size=3) * np.asarray(shape)
        reference[_ellipsoid(shape, center, radii)] = label
        moved = center + np.array([shift, 0, 0])
        prediction[_ellipsoid(shape, moved, radii * rng.uniform(0.85, 1.15))] = label
    return prediction, reference


def _numpy_counts(pred: np.ndarray, ref: np.ndarray, label: int) -> tuple[int, int, int, int]:
    p, r = pred == label, ref == label
    return (
        int(np.sum(p & r)),
        int(np.sum(p & ~r)),
        int(np.sum(~p & r)),
        int(np.sum(~p & ~r)),
    )


def _numpy_scores(pred: np.ndarray, ref: np.ndarray, label: int) -> dict[str, float]:
    tp, fp, fn, _ = (float(c) for c in _numpy_counts(pred, ref, label))

    def ratio(num: float, den: float) -> float:
        return num / den if den else float("nan")

    return {
        "dice": ratio(2 * tp, 2 * tp + fp + fn),
        "jaccard": ratio(tp, tp + fp + fn),
        "precision": ratio(tp, tp + fp),
        "recall": ratio(tp, tp + fn),
    }


def _nifti_bytes(array: np.ndarray, affine: np.ndarray | None = None, gz: bool = True) -> bytes:
    image = nib.Nifti1Image(array, np.eye(4) if affine is None else affine)
    raw = image.to_bytes()
    return gzip.compress(raw, compresslevel=1) if gz else raw


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.write_bytes(_nifti_bytes(array, affine, gz=path.name.endswith(".gz")))
    return path


def _label_pair(shape: tuple[int, ...], labels: int = 3, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    ref = rng.integers(0, labels, size=shape, dtype=np.uint8)
    pred = ref.copy()
    flip = rng.random(shape) < 0.1
    pred[flip] = rng.integers(0, labels, size=int(flip.sum()), dtype=np.uint8)
    return pred, ref


def _dice_f64(pred: np.ndarray, ref: np.ndarray, label: int) -> float:
    p, r = pred == label, ref == label
    denom = float(p.sum()) + float(r.sum())
    return float("nan") if denom == 0 else 2.0 * float((p & r).sum()) / denom


@pytest.fixture(scope="session")
def ellipsoid() -> Callable[[Sequence[int], Sequence[float], Sequence[float]], np.ndarray]:
    """``ellipsoid(shape, center, radii)``: boolean mask of the voxels inside an axis-aligned
    ellipsoid."""
    return _ellipsoid


@pytest.fixture(scope="session")
def organ_pair() -> Callable[..., tuple[np.ndarray, np.ndarray]]:
    """``organ_pair(shape, n_labels, seed=0, shift=2) -> (prediction, reference)``: a reference
    with ``n_labels`` ellipsoids (ids 1..n, later ones painted over earlier ones) and a
    prediction with the same ellipsoids shifted by ``shift`` voxels on axis 0 (int32)."""
    return _organ_pair


@pytest.fixture(scope="session")
def numpy_counts() -> Callable[[np.ndarray, np.ndarray, int], tuple[int, int, int, int]]:
    """``numpy_counts(pred, ref, label) -> (tp, fp, fn, tn)`` of one label from boolean masks."""
    return _numpy_counts


@pytest.fixture(scope="session")
def numpy_scores() -> Callable[[np.ndarray, np.ndarray, int], dict[str, float]]:
    """``numpy_scores(pred, ref, label)``: float64 Dice / Jaccard / precision / recall of one
    label (NaN when undefined)."""
    return _numpy_scores


@pytest.fixture(scope="session")
def nifti_bytes() -> Callable[..., bytes]:
    """``nifti_bytes(array, affine=None, gz=True)``: the bytes of a NIfTI-1 file holding
    ``array`` (identity affine by default; gzip-compressed when ``gz``)."""
    return _nifti_bytes


@pytest.fixture(scope="session")
def write_nifti() -> Callable[..., Path]:
    """``write_nifti(path, array, affine=None) -> path``: a NIfTI-1 file (gzip-compressed when
    the name ends in ``.gz``)."""
    return _write_nifti


@pytest.fixture(scope="session")
def label_pair() -> Callable[..., tuple[np.ndarray, ...]]:
    """``label_pair(shape, labels=3, seed=0) -> (prediction, reference)``: a uint8 reference of
    random labels and a prediction that disagrees on ~10% of voxels."""
    return _label_pair


@pytest.fixture(scope="session")
def dice_f64() -> Callable[[np.ndarray, np.ndarray, int], float]:
    """``dice_f64(pred, ref, label)``: Dice of one label, ``2|P∩R| / (|P|+|R|)``, in float64
    (NaN when both are empty)."""
    return _dice_f64


def _header_with(shape: tuple[int, ...], dtype: type = np.uint8) -> nib.Nifti1Header:
    header = nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header["dim"] = [len(shape), *shape, *([1] * (7 - len(shape)))]
    header["vox_offset"] = 352
    return header


def _raw_header(header: nib.Nifti1Header, payload: bytes = b"") -> bytes:
    return header.binaryblock + b"\x00" * 4 + payload


def _with_nan(pred: np.ndarray) -> np.ndarray:
    nan = pred.astype(np.float32)
    nan[0, 0, 0] = np.nan
    return nan


def _shifted_affine() -> np.ndarray:
    shifted = np.eye(4)
    shifted[0, 3] = 5.0
    return shifted


# name -> (the bad prediction's bytes from the good prediction array, allowed statuses, codes);
# the reference is always a good file of the same shape
_BAD_FILES: dict[str, tuple[Callable[[np.ndarray], bytes], set[int], set[str]]] = {
    "truncated_gzip": (lambda p: _nifti_bytes(p)[:-20], {422}, {"corrupt_file"}),
    "truncated_raw": (lambda p: _nifti_bytes(p, gz=False)[:-30], {422}, {"corrupt_file"}),
    "wrong_magic": (lambda p: b"PK\x03\x04" + b"\x00" * 400, {415}, {"not_nifti"}),
    "text_file": (lambda p: b"hello, this is not an image\n" * 20, {415}, {"not_nifti"}),
    "empty_file": (lambda p: b"", {415, 422}, {"not_nifti", "corrupt_file"}),
    "huge_dims": (
        lambda p: gzip.compress(_raw_header(_header_with((30_000, 30_000, 30_000)), b"\x00" * 64)),
        {413},
        {"volume_too_large"},
    ),
    "zero_length_dim": (
        lambda p: _raw_header(_header_with((0, 5, 4))),
        {415, 422},
        {"corrupt_file", "not_nifti", "invalid_input"},
    ),
    "shape_mismatch": (lambda p: _nifti_bytes(p[:, :, :3]), {422}, {"shape_mismatch"}),
    "affine_mismatch": (
        lambda p: _nifti_bytes(p, _shifted_affine()),
        {422},
        {"affine_mismatch"},
    ),
    "float_labels": (
        lambda p: _nifti_bytes((p.astype(np.float32) + 0.25) * 3),
        {422},
        {"non_integer_labels", "probability_out_of_range"},
    ),
    "nan_values": (lambda p: _nifti_bytes(_with_nan(p)), {422}, {"non_finite_values"}),
    "negative_labels": (
        lambda p: _nifti_bytes(p.astype(np.int16) - 1),
        {422},
        {"negative_labels"},
    ),
}


@pytest.fixture(params=sorted(_BAD_FILES))
def bad_file_case(request: pytest.FixtureRequest) -> tuple[str, bytes, bytes, set[int], set[str]]:
    """One pair the service must refuse with a 4xx naming the problem (the test runs once per
    case): ``(name, prediction bytes, reference bytes, allowed statuses, allowed codes)``."""
    name: str = request.param
    make, statuses, codes = _BAD_FILES[name]
    pred, ref = _label_pair((6, 5, 4), seed=1)
    return name, make(pred), _nifti_bytes(ref), statuses, codes


# ------------------------------------------------------------------------------------------
# jobs: the service's data folder, a real PostgreSQL 15 server for the database tests, case
# folders and their archives. ``_postgres_server`` runs ``initdb`` / ``pg_ctl`` from
# ``/usr/lib/postgresql/15/bin`` (or ``JDT_TEST_PG_BIN``) in a temporary folder on a free
# loopback port, as ``nobody`` when the tests run as root (PostgreSQL refuses to run as root),
# and stops it at the end.

_PG_BIN = Path(os.environ.get("JDT_TEST_PG_BIN", "/usr/lib/postgresql/15/bin"))
_databases = count()


def pytest_configure(config: pytest.Config) -> None:
    """The service's data folder defaults to ``$XDG_DATA_HOME/monai-jdt``: point it into a
    temporary folder for the whole run, subprocesses included, so no test writes to the
    user's own ``~/.local/share/monai-jdt`` (apps built by the tests also get a ``data_dir``)."""
    config._jdt_data_home = tempfile.mkdtemp(prefix="jdt-test-xdg-")  # type: ignore[attr-defined]
    os.environ["XDG_DATA_HOME"] = config._jdt_data_home  # type: ignore[attr-defined]


def pytest_unconfigure(config: pytest.Config) -> None:
    shutil.rmtree(getattr(config, "_jdt_data_home", ""), ignore_errors=True)


def _free_port() -> int:
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
def _postgres_server() -> Iterator[str]:
    """A running PostgreSQL server; yields the libpq URL of its ``postgres`` database."""
    folder = Path(tempfile.mkdtemp(prefix="jdt-pg-"))
    user = _as_user()
    if user:
        os.chown(folder, user["user"], user["group"])
    data = folder / "data"
    port = _free_port()
    run = {"check": True, "capture_output": True, "cwd": folder, **user}
    subprocess.run(
        [_PG_BIN / "initdb", "-D", data, "-U", "postgres", "--auth=trust", "-E", "UTF8"], **run
    )
    options = f"-k {folder} -c listen_addresses=127.0.0.1 -p {port} -c fsync=off"
    subprocess.run(
        [_PG_BIN / "pg_ctl", "-D", data, "-o", options, "-l", folder / "log", "-w", "start"], **run
    )
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([_PG_BIN / "pg_ctl", "-D", data, "-m", "immediate", "stop"], **run)
        shutil.rmtree(folder, ignore_errors=True)


def _new_database(server_url: str, name: str) -> str:
    """Create database ``name`` on the server; its SQLAlchemy URL (psycopg 3 driver)."""
    import psycopg

    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_url.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://") + (
        f"/{name}"
    )


def _case_files(
    n: int, shape: tuple[int, ...] = (12, 10, 8), labels: int = 3, seed: int = 0
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    preds, refs = {}, {}
    spacing = np.diag([0.5, 0.75, 1.5, 1.0])  # exact in the float32 header
    for i in range(n):
        pred, ref = _label_pair(shape, labels=labels, seed=seed + i)
        preds[f"case_{i:03d}.nii.gz"] = _nifti_bytes(pred, spacing)
        refs[f"case_{i:03d}.nii.gz"] = _nifti_bytes(ref, spacing)
    return preds, refs


def _archive_bytes(files: dict[str, bytes], kind: str = "zip", folder: str = "") -> bytes:
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


def _lacking_label_folders(base: Path) -> tuple[Path, Path]:
    """``base/p`` and ``base/r``: two 16^3 cases; label 2 is in neither volume of case ``b``,
    so a dataset of them needs the label-set pass (``complete_label_set``)."""
    a = np.zeros((16, 16, 16), np.uint8)
    a[2:7, 2:7, 2:7] = 1
    a[9:13, 9:13, 9:13] = 2
    b = np.zeros_like(a)
    b[2:7, 2:7, 2:7] = 1
    shifted = a.copy()
    shifted[9:13, 9:13, 13] = 2
    for name in ("p", "r"):
        (base / name).mkdir()
    for case, pred, ref in (("a", shifted, a), ("b", b, b)):
        _write_nifti(base / "p" / f"{case}.nii.gz", pred)
        _write_nifti(base / "r" / f"{case}.nii.gz", ref)
    return base / "p", base / "r"


def _strip_timing(report: dict[str, Any]) -> dict[str, Any]:
    out = dict(report)
    out["cases"] = [{k: v for k, v in case.items() if k != "seconds"} for case in report["cases"]]
    return out


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """``free_port()``: a TCP port on 127.0.0.1 that is free now."""
    return _free_port


@pytest.fixture(scope="session")
def new_database() -> Callable[[str, str], str]:
    """``new_database(server_url, name)``: create database ``name`` on the PostgreSQL server
    at ``server_url``; its SQLAlchemy URL (psycopg 3 driver)."""
    return _new_database


@pytest.fixture(scope="session")
def case_files() -> Callable[..., tuple[dict[str, bytes], dict[str, bytes]]]:
    """``case_files(n, shape=(12, 10, 8), labels=3, seed=0) -> (predictions, references)``:
    ``n`` cases from ``label_pair`` as ``{"case_000.nii.gz": .nii.gz bytes}`` (spacing
    0.5 x 0.75 x 1.5 mm)."""
    return _case_files


@pytest.fixture(scope="session")
def archive_bytes() -> Callable[..., bytes]:
    """``archive_bytes(files, kind="zip", folder="")``: a ``zip`` (or, for any other ``kind``,
    ``tar.gz``) of ``{name: bytes}``, optionally inside ``folder/``."""
    return _archive_bytes


@pytest.fixture(scope="session")
def lacking_label_folders() -> Callable[[Path], tuple[Path, Path]]:
    return _lacking_label_folders


@pytest.fixture(scope="session")
def strip_timing() -> Callable[[dict[str, Any]], dict[str, Any]]:
    """``strip_timing(report)``: a directory report without what differs between runs (the
    seconds of each case)."""
    return _strip_timing


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    """A PostgreSQL 15 server for the session (skipped where its binaries are missing); its
    libpq URL."""
    if not (_PG_BIN / "initdb").exists():
        pytest.skip(f"no PostgreSQL binaries in {_PG_BIN} (set JDT_TEST_PG_BIN)")
    with _postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest) -> str | None:
    """None (SQLite under the app's data folder), then a fresh PostgreSQL database."""
    if request.param == "sqlite":
        return None
    server = request.getfixturevalue("pg_server")
    return _new_database(server, f"jdt_test_{next(_databases)}")


# ------------------------------------------------------------------------------------------
# service: the upload folder once the cleanup thread has emptied it


def _emptied(folder: Path, timeout: float = 10.0) -> list[Path]:
    deadline = time.monotonic() + timeout
    while (left := sorted(folder.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.01)
    return left


@pytest.fixture(scope="session")
def emptied() -> Callable[..., list[Path]]:
    """``emptied(folder, timeout=10.0)``: what is left in ``folder`` once it is empty, or after
    ``timeout`` seconds. The service deletes a released work directory on its cleanup thread,
    so right after a response the directory may still be there."""
    return _emptied
