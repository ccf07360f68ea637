"""glibc's allocator thresholds (``monai_jdt.scoring.allocator``): set by ``tune_allocator``,
and in force where cases are scored one after the other: ``score-dir``, its local Dask
workers and the service's job workers.

Whether they are in force is seen from glibc itself: with them, a 24 MiB block comes from an
arena; with glibc's defaults (a mmap threshold of 128 KiB, raised only by larger freed blocks)
it is mapped on its own, one more block in ``mallinfo2().hblks``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

from monai_jdt.scoring.allocator import OPERATOR_VARIABLES

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux"
    or platform.libc_ver()[0] != "glibc"
    or not hasattr(ctypes.CDLL(None), "mallinfo2"),
    reason="mallopt and mallinfo2 are glibc's (2.33 and later)",
)

_PROBE_BYTES = 24 << 20  # below the tuned threshold, above what a small case frees
_CLEAN = {k: v for k, v in os.environ.items() if k not in OPERATOR_VARIABLES}


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def mapped_alone(size: int = _PROBE_BYTES) -> bool:
    """Whether glibc maps a ``size``-byte block on its own (the threshold is below it)."""
    libc = ctypes.CDLL(None)
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.mallinfo2.restype = _MallInfo2
    before = libc.mallinfo2().hblks
    block = libc.malloc(size)
    try:
        return bool(libc.mallinfo2().hblks > before)
    finally:
        libc.free(block)


def _in_fresh_process(code: str, **env: str) -> str:
    """The stdout of ``code`` in a new interpreter that can import this module."""
    prelude = f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        env={**_CLEAN, **env},
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


_TUNE = "from monai_jdt.scoring.allocator import tune_allocator; print(tune_allocator())"
_PROBE = "from test_allocator import mapped_alone; print(mapped_alone())"


def test_thresholds_are_set_on_glibc() -> None:
    assert _in_fresh_process(_PROBE) == "True"  # glibc's defaults map such a block
    assert _in_fresh_process(_TUNE) == "True"
    assert _in_fresh_process(f"{_TUNE}\n{_PROBE}") == "False"


@pytest.mark.parametrize("variable", OPERATOR_VARIABLES)
def test_an_operator_setting_in_the_environment_wins(variable: str) -> None:
    assert _in_fresh_process(_TUNE, **{variable: "4"}) == "False"


def test_score_dir_scores_with_the_thresholds(tmp_path: Path, case_files) -> None:
    preds, refs = case_files(2, labels=2, seed=5)
    for name, files in (("p", preds), ("r", refs)):
        (tmp_path / name).mkdir()
        for file, data in files.items():
            (tmp_path / name / file).write_bytes(data)
    argv = ["score-dir", str(tmp_path / "p"), str(tmp_path / "r"), "--no-progress", "--json"]
    code = f"from monai_jdt.cli import main; assert main({argv!r}) == 0\n{_PROBE}"
    assert _in_fresh_process(code) == "False"


def test_job_workers_score_with_the_thresholds(tmp_path: Path) -> None:
    from jdt_service.jobs_runner import make_executor
    from jdt_service.settings import Settings

    settings = Settings(device="cpu", job_workers=1, temp_dir=tmp_path, data_dir=tmp_path / "d")
    executor, client = make_executor(settings)
    assert client is None
    try:
        assert executor.submit(mapped_alone).result(timeout=120) is False
    finally:
        executor.shutdown()


@pytest.mark.slow
def test_local_dask_workers_score_with_the_thresholds() -> None:
    from monai_jdt.scoring.cluster import LOCAL, connect

    client, cluster = connect(LOCAL, workers=1)
    try:
        assert list(client.run(mapped_alone).values()) == [False]
    finally:
        client.close()
        cluster.close()
