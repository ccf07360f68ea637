"""Where ``score_files`` should stop inflating in the calling thread and use two threads.

For each size, writes a label-map pair (``bench_scoring.make_pair``, 13 organs) as ``.nii.gz``
and times ``score_files`` with both files inflated in the calling thread ("inline") and in
two inflate threads ("threads"), by setting ``monai_jdt.scoring.files.INLINE_VOXELS`` above
or below the volume, the two modes alternating. Reports the median and the best of
``--repeat`` wall times of each, the best CPU time (all threads), and what the default (the
shipped ``INLINE_VOXELS``) picks. Run with the machine idle:
``python benchmarks/bench_inline.py`` (``--sizes 64,128`` for a quick run).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_scoring import make_pair

import monai_jdt.scoring.files as files
from monai_jdt.scoring import score_files


def timings(pred: Path, ref: Path, repeat: int) -> dict[str, tuple[list[float], list[float]]]:
    """Wall times and CPU times (all threads of the process) of ``repeat`` calls per mode, the
    two modes alternating so that both see the same load."""
    voxels = {"inline": 1 << 62, "threads": 0}  # INLINE_VOXELS forcing each mode
    results: dict[str, tuple[list[float], list[float]]] = {mode: ([], []) for mode in voxels}
    for mode in voxels:  # warm-up: page cache, imports
        files.INLINE_VOXELS = voxels[mode]
        score_files(pred, ref)
    for _ in range(repeat):
        for mode, walls_cpus in results.items():
            files.INLINE_VOXELS = voxels[mode]
            start, cpu = time.perf_counter(), time.process_time()
            score_files(pred, ref)
            walls_cpus[0].append(time.perf_counter() - start)
            walls_cpus[1].append(time.process_time() - cpu)
    return results


def cell(walls: list[float], cpus: list[float]) -> str:
    """``median/best wall (best cpu)`` in ms."""
    return (
        f"{statistics.median(walls) * 1e3:7.1f}/{min(walls) * 1e3:6.1f} ({min(cpus) * 1e3:5.1f}) ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,160,192,256", help="cube edges, comma-separated")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    shipped = files.INLINE_VOXELS
    print(f"{'shape':>15} {'inline med/best (cpu)':>28} {'threads med/best (cpu)':>28}  default")
    with tempfile.TemporaryDirectory() as tmp:
        for edge in (int(s) for s in args.sizes.split(",")):
            shape = (edge, edge, edge)
            pred, ref = make_pair(shape, 13, seed=edge)
            paths = [Path(tmp) / f"{name}{edge}.nii.gz" for name in ("p", "r")]
            for path, data in zip(paths, (pred, ref), strict=True):
                nib.save(nib.Nifti1Image(data, np.eye(4)), path)
            measured = timings(*paths, repeat=args.repeat)
            inline, threads = measured["inline"], measured["threads"]
            picked = "inline" if edge**3 <= shipped else "threads"
            print(f"{shape!s:>15} {cell(*inline):>28} {cell(*threads):>28}  {picked}")
    files.INLINE_VOXELS = shipped


if __name__ == "__main__":
    main()
