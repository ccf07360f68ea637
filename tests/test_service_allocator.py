"""glibc's allocator thresholds for the scoring threads (``jdt_service.allocator``)."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

from jdt_service.allocator import OPERATOR_VARIABLES

pytestmark = pytest.mark.skipif(
    platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
    reason="mallopt is glibc's",
)


def _tuned(**env: str) -> str:
    """Whether ``tune_allocator()`` set the thresholds, in a fresh process with ``env`` added."""
    clean = {k: v for k, v in os.environ.items() if k not in OPERATOR_VARIABLES}
    code = "from jdt_service.allocator import tune_allocator; print(tune_allocator())"
    done = subprocess.run(
        [sys.executable, "-c", code], env={**clean, **env}, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_thresholds_are_set_on_glibc() -> None:
    assert _tuned() == "True"


@pytest.mark.parametrize("variable", OPERATOR_VARIABLES)
def test_an_operator_setting_in_the_environment_wins(variable: str) -> None:
    assert _tuned(**{variable: "4"}) == "False"
