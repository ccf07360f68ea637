"""Start-up cost of the command line: what a user waits for before any scoring happens.

Each figure is a cold process (a fresh interpreter; the page cache is warm after the first
run, as it is for a user running the command twice), median of ``--repeat`` (default 5):

  ``monai-jdt --version``                 goal <= 0.3 s wall
  ``monai-jdt score`` on a 64^3 pair      goal <= 0.5 s wall (uint8 ``.nii.gz``, 3 labels)
  ``monai-jdt score-dir`` on 3 such pairs goal <= 0.5 s wall, that of ``score`` (plus the summary)
  ``import monai_jdt.scoring``            wall of ``python -c`` and the cumulative time that
                                          ``python -X importtime`` reports for ``monai_jdt``
                                          and ``monai_jdt.scoring``, and whether torch /
                                          MONAI were imported

The commands run as the console script does (``from monai_jdt.cli import main``), in the
interpreter running this script. ``--source DIR`` puts ``DIR/plugin`` and ``DIR/service`` first
on the children's ``PYTHONPATH``, to measure another checkout (e.g. a ``git archive`` of main)
with the same interpreter and packages.

Run: ``python benchmarks/bench_startup.py [--repeat 5] [--source DIR] [--json]``
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

GOALS = {"version": 0.3, "score_64": 0.5, "score_dir_64": 0.5}
_CLI = "import sys; from monai_jdt.cli import main; sys.exit(main())"
_IMPORT = (
    "import sys, monai_jdt.scoring; "
    "print(int('torch' in sys.modules), int('monai' in sys.modules), file=sys.stderr)"
)


def _env(source: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if source is not None:
        paths = [str(source / "plugin"), str(source / "service")]
        env["PYTHONPATH"] = os.pathsep.join([*paths, *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _wall(argv: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{argv[2:]} exited {done.returncode}: {done.stderr.strip()}")
    return elapsed, done


def _median(argv: list[str], env: dict[str, str], repeat: int) -> float:
    _wall(argv, env)  # warm the page cache once
    return statistics.median(_wall(argv, env)[0] for _ in range(repeat))


def _pair(folder: Path) -> tuple[Path, Path]:
    """A 64^3 uint8 pair: three blocks in the reference, shifted by two voxels in the
    prediction."""
    ref = np.zeros((64, 64, 64), np.uint8)
    for label, start in enumerate((4, 24, 44), start=1):
        ref[start : start + 16, 8:56, 8:56] = label
    pred = np.roll(ref, 2, axis=0)
    paths = folder / "pred.nii.gz", folder / "ref.nii.gz"
    for path, data in zip(paths, (pred, ref), strict=True):
        nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return paths


def _import_time(env: dict[str, str], repeat: int) -> dict[str, float | bool]:
    """Median wall and ``-X importtime`` cumulative microseconds of ``monai_jdt.scoring``."""
    cumulative, walls, heavy = [], [], (False, False)
    for _ in range(repeat + 1):
        elapsed, done = _wall([sys.executable, "-X", "importtime", "-c", _IMPORT], env)
        walls.append(elapsed)
        lines = done.stderr.strip().splitlines()
        flags = lines[-1].split()
        heavy = (flags[0] == "1", flags[1] == "1")
        total = 0
        for line in lines:  # the package and its parent: what `import monai_jdt.scoring` costs
            parts = [p.strip() for p in line.removeprefix("import time:").split("|")]
            if len(parts) == 3 and parts[2] in ("monai_jdt", "monai_jdt.scoring"):
                total += int(parts[1])
        cumulative.append(total / 1e6)
    return {
        "wall_s": statistics.median(walls[1:]),
        "importtime_s": statistics.median(cumulative[1:]),
        "torch_imported": heavy[0],
        "monai_imported": heavy[1],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--source", type=Path, help="checkout to measure (default: this one)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    env = _env(args.source)
    with tempfile.TemporaryDirectory() as tmp:
        pred, ref = _pair(Path(tmp))
        folders = Path(tmp, "preds"), Path(tmp, "refs")
        for folder, source in zip(folders, (pred, ref), strict=True):
            folder.mkdir()
            for case in range(3):
                (folder / f"case{case}.nii.gz").write_bytes(source.read_bytes())
        score_dir = [sys.executable, "-c", _CLI, "score-dir", *map(str, folders), "--json"]
        results: dict[str, object] = {
            "version": _median([sys.executable, "-c", _CLI, "--version"], env, args.repeat),
            "score_64": _median(
                [sys.executable, "-c", _CLI, "score", str(pred), str(ref), "--json"],
                env,
                args.repeat,
            ),
            "score_dir_64": _median([*score_dir, "--no-progress"], env, args.repeat),
            "import_scoring": _import_time(env, args.repeat),
            "load_average": os.getloadavg()[0],
        }
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"load average (1 min) {results['load_average']:.2f}; median of {args.repeat} runs")
    for key, label in (
        ("version", "monai-jdt --version"),
        ("score_64", "monai-jdt score 64^3"),
        ("score_dir_64", "monai-jdt score-dir 3x64^3"),
    ):
        value = results[key]
        assert isinstance(value, float)
        verdict = "met" if value <= GOALS[key] else "missed"
        print(f"{label:<26} {value:6.3f} s   goal {GOALS[key]:.1f} s: {verdict}")
    imported = results["import_scoring"]
    assert isinstance(imported, dict)
    print(
        f"{'import monai_jdt.scoring':<24} {imported['wall_s']:6.3f} s wall, "
        f"{imported['importtime_s']:.3f} s -X importtime; torch imported: "
        f"{imported['torch_imported']}, MONAI imported: {imported['monai_imported']}"
    )


if __name__ == "__main__":
    main()
