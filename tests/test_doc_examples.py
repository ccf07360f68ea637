"""The examples users copy run: every doctest in the monai_jdt modules, and every ```python block
of README.md and docs/*.md.

A markdown block that cannot run on its own (it needs the user's files or a running server) is
marked by an HTML comment on the line before its fence::

    <!-- not runnable: needs pred.nii.gz and ref.nii.gz -->

and is reported as skipped with that reason, never left out silently. Blocks run in a fresh
namespace, in a temporary working directory.
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import monai_jdt

REPO = Path(__file__).resolve().parents[1]
MARKDOWN = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
NOT_RUNNABLE = re.compile(r"<!--\s*not runnable:\s*(?P<reason>.+?)\s*-->")
FENCE = re.compile(r"^```python\s*$\n(?P<code>.*?)^```\s*$", re.MULTILINE | re.DOTALL)


def _modules() -> list[str]:
    names = ["monai_jdt"]
    for info in pkgutil.walk_packages(monai_jdt.__path__, prefix="monai_jdt."):
        names.append(info.name)
    return sorted(names)


def _python_blocks() -> list:
    params = []
    for path in MARKDOWN:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marker = NOT_RUNNABLE.search(before)
            name = f"{path.relative_to(REPO)}:{line}"
            marks = [pytest.mark.skip(reason=f"{name} {marker['reason']}")] if marker else []
            params.append(pytest.param(name, match["code"], marks=marks, id=name))
    return params


@pytest.mark.parametrize("module_name", _modules())
def test_doctests(module_name: str) -> None:
    module = importlib.import_module(module_name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, raise_on_error=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed"


def test_every_public_loss_has_an_example() -> None:
    from monai_jdt import losses

    for name in losses.__all__:
        obj = getattr(losses, name)
        if isinstance(obj, type) and issubclass(obj, Exception):
            continue
        assert ">>>" in (obj.__doc__ or ""), f"{name} has no runnable example"


@pytest.mark.parametrize(("name", "code"), _python_blocks())
def test_markdown_python_block(name: str, code: str, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        exec(compile(code, name, "exec"), {"__name__": "__doc_example__"})
