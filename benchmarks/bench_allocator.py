"""Scoring case after case with glibc's default allocator thresholds against fixed ones.

Writes ``--cases`` copies of a label pair per size (``.nii.gz``, uint8, three ellipsoids and a
shifted prediction: ``load/run_load.py``'s pair), then, in a fresh process each (so no earlier
allocation has moved glibc's dynamic thresholds), scores the folder with
``monai_jdt.scoring.score_directory`` at ``--workers`` threads: once with glibc's defaults,
once after ``monai_jdt.scoring.allocator.tune_allocator()`` (what ``score-dir`` does). Reports
the median per-case time (the reports' ``seconds``) and the wall time of the folder.

    python benchmarks/bench_allocator.py                      # 128^3 and 256^3, 1 and 2 workers
    python benchmarks/bench_allocator.py --sizes 128 --cases 60 --rounds 3
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "load"))

from run_load import write_pair

from monai_jdt.scoring.allocator import OPERATOR_VARIABLES

_RUN = """
import json, statistics, sys, time
from monai_jdt.scoring import score_directory
from monai_jdt.scoring.allocator import tune_allocator
if sys.argv[1] == "tuned":
    assert tune_allocator()
started = time.perf_counter()
result = score_directory(sys.argv[2], sys.argv[3], workers=int(sys.argv[4]))
wall = time.perf_counter() - started
assert not result.failures
seconds = [report.seconds for report in result.reports]
print(json.dumps({"case_s": statistics.median(seconds), "wall_s": wall}))
"""


def run(mode: str, preds: Path, refs: Path, workers: int) -> dict[str, float]:
    """One fresh process scoring the folder; its median case time and wall time."""
    env = {k: v for k, v in os.environ.items() if k not in OPERATOR_VARIABLES}
    command = [sys.executable, "-c", _RUN, mode, str(preds), str(refs), str(workers)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    result: dict[str, float] = json.loads(done.stdout)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--cases", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2, help="processes per setting")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="jdt-bench-alloc-") as tmp:
        base = Path(tmp)
        print("size  workers  per case: default / tuned        folder wall: default / tuned")
        for size in args.sizes:
            pred, ref = write_pair(base, size)
            preds, refs = base / f"p{size}", base / f"r{size}"
            preds.mkdir()
            refs.mkdir()
            for i in range(args.cases):
                shutil.copy(pred, preds / f"case{i:03d}.nii.gz")
                shutil.copy(ref, refs / f"case{i:03d}.nii.gz")
            for workers in args.workers:
                runs = {
                    mode: [run(mode, preds, refs, workers) for _ in range(args.rounds)]
                    for mode in ("default", "tuned")
                }

                def spread(mode: str, key: str) -> str:
                    values = sorted(r[key] * 1e3 for r in runs[mode])  # noqa: B023
                    return f"{values[0]:.1f}-{values[-1]:.1f}"

                print(
                    f"{size}^3  {workers:>7}  {spread('default', 'case_s'):>11} / "
                    f"{spread('tuned', 'case_s'):<11} ms   {spread('default', 'wall_s'):>13} / "
                    f"{spread('tuned', 'wall_s')} ms"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
