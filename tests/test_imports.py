"""What importing the package costs: scoring label maps needs neither torch nor MONAI, while
``import monai_jdt`` still gives every loss and metric (imported at once when torch / MONAI is
loaded already, so MONAI's config parser finds them by short name)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

import monai_jdt


def _run(code: str) -> dict:
    """Run ``code`` in a fresh interpreter; it prints one JSON line last."""
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


HEAVY = "[m for m in ('torch', 'monai') if m in sys.modules]"


def test_import_scoring_loads_neither_torch_nor_monai():
    out = _run(f"import json, sys; import monai_jdt.scoring; print(json.dumps({HEAVY}))")
    assert out == []


def test_scoring_label_map_files_on_the_cpu_loads_neither(tmp_path, write_nifti, label_pair):
    pred, ref = label_pair((16, 12, 10), labels=3, seed=5)
    p, r = write_nifti(tmp_path / "p.nii.gz", pred), write_nifti(tmp_path / "r.nii.gz", ref)
    code = (
        "import json, sys; from monai_jdt.scoring import score_files; "
        f"report = score_files({str(p)!r}, {str(r)!r}); report.to_dict(); "
        f"print(json.dumps({HEAVY}))"
    )
    assert _run(code) == []


def test_score_dir_of_label_maps_loads_neither(tmp_path, write_nifti, label_pair):
    """The dataset summary too: its fine-grained mIoU^D / ^I / ^C are computed on numpy
    arrays (torch's import took 2.4 s of every ``monai-jdt score-dir``)."""
    for name in ("p", "r"):
        (tmp_path / name).mkdir()
    for i in range(3):
        pred, ref = label_pair((16, 12, 10), labels=3, seed=i)
        write_nifti(tmp_path / "p" / f"c{i}.nii.gz", pred)
        write_nifti(tmp_path / "r" / f"c{i}.nii.gz", ref)
    argv = ["score-dir", str(tmp_path / "p"), str(tmp_path / "r"), "--no-progress", "--json"]
    code = (
        "import json, sys; from monai_jdt.cli import main; "
        f"status = main({argv!r}); print(json.dumps([status, {HEAVY}]))"
    )
    assert _run(code) == [0, []]


def test_import_monai_jdt_alone_loads_neither_and_names_import_on_first_access():
    code = (
        f"import json, sys; import monai_jdt; before = {HEAVY}; "
        "loss = monai_jdt.JDTCELoss; metric = monai_jdt.FineGrainedIoUMetric; "
        "print(json.dumps([before, loss.__module__, metric.__module__, "
        "'monai_jdt.losses.jdt' in sys.modules]))"
    )
    modules = ["monai_jdt.losses.compound", "monai_jdt.metrics.fine_grained"]
    assert _run(code) == [[], *modules, True]


def test_names_import_at_once_when_torch_or_monai_is_loaded():
    code = (
        "import json, sys; import {first}; import monai_jdt; "
        "print(json.dumps(['monai_jdt.losses.jdt' in sys.modules, "
        "'monai_jdt.metrics.fine_grained' in sys.modules]))"
    )
    assert _run(code.format(first="torch")) == [True, False]
    assert _run(code.format(first="monai")) == [True, True]


def test_every_public_name_resolves_and_is_listed():
    for name in monai_jdt.__all__:
        assert getattr(monai_jdt, name) is not None, name
    assert set(monai_jdt.__all__) == {*monai_jdt._LAZY, "__version__"}
    assert set(monai_jdt.__all__) <= set(dir(monai_jdt))
    assert "DiceCESemimetricLoss" in monai_jdt.__all__
    with pytest.raises(AttributeError, match="no_such_name"):
        monai_jdt.no_such_name  # noqa: B018
