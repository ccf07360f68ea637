"""Where ``score_files`` should stop inflating in the calling thread and use two threads.

For each size, writes a label-map pair (``bench_scoring.make_pair``, 13 organs) as ``.nii.gz``
and times ``score_files`` with both files inflated in the calling thread ("inline") and in
two inflate threads ("threads"), by setting ``monai_jdt.scoring.files.INLINE_VOXELS`` above
or below the volume. Reports the median and the best of ``--repeat`` wall times of each, and
what the default (the shipped ``INLINE_VOXELS``) picks. Run with the machine idle:
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

import monai_jdt.scoring.files as files  # noqa: E402
from bench_scoring import make_pair  # noqa: E402
from monai_jdt.scoring import score_files  # noqa: E402


def wall_times(pred: Path, ref: Path, inline_voxels: int, repeat: int) -> list[float]:
    files.INLINE_VOXELS = inline_voxels
    score_files(pred, ref)  # warm-up: page cache, imports
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        score_files(pred, ref)
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="64,128,160,192,256", help="cube edges, comma-separated")
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    shipped = files.INLINE_VOXELS
    print(f"{'shape':>14} {'inline med/best':>18} {'threads med/best':>18}  default")
    with tempfile.TemporaryDirectory() as tmp:
        for edge in (int(s) for s in args.sizes.split(",")):
            shape = (edge, edge, edge)
            pred, ref = make_pair(shape, 13, seed=edge)
            paths = [Path(tmp) / f"{name}{edge}.nii.gz" for name in ("p", "r")]
            for path, data in zip(paths, (pred, ref), strict=True):
                nib.save(nib.Nifti1Image(data, np.eye(4)), path)
            inline = wall_times(*paths, inline_voxels=edge**3, repeat=args.repeat)
            threads = wall_times(*paths, inline_voxels=0, repeat=args.repeat)
            picked = "inline" if edge**3 <= shipped else "threads"
            print(
                f"{str(shape):>14} "
                f"{statistics.median(inline) * 1e3:8.1f}/{min(inline) * 1e3:6.1f} ms "
                f"{statistics.median(threads) * 1e3:8.1f}/{min(threads) * 1e3:6.1f} ms  {picked}"
            )
    files.INLINE_VOXELS = shipped


if __name__ == "__main__":
    main()
