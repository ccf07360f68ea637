"""Speed and memory of scoring label maps with thousands of labels (instance maps, atlases).

Label ids past 255 are counted as the cells they fill (the distinct prediction/reference
pairs of each chunk), not as an L x L table. This benchmark makes an instance map of
``--labels`` boxes (uint16, ids 1..L, tiling the volume) and a prediction that shifts every
box by one voxel and gives ``--noise`` of the voxels a random id, writes both as ``.nii.gz``
and measures, each in a forked child (``bench_scoring.measure``: best of ``--repeat`` wall
times, peak extra resident memory):

  monai-jdt files   ``score_files`` (the streamed path: two inflate threads, chunked cells)
  monai-jdt arrays  ``score_arrays`` on the arrays in memory
  numpy one-hot     per label ``p == k``, ``r == k`` and their overlap, on the arrays (what a
                    hand-written script does; timed on ``--sample`` labels and scaled to all)

Run: ``python benchmarks/bench_instances.py`` (``--size 256 --labels 4000``) or
``--size 128`` for a quick run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

from bench_scoring import measure, numpy_onehot_loop

from monai_jdt.scoring import score_arrays, score_files


def instance_pair(n: int, labels: int, noise: float, seed: int = 0) -> tuple[np.ndarray, ...]:
    """``(prediction, reference)``, uint16 cubes of side ``n``: the reference tiled by about
    ``labels`` boxes, the prediction shifted one voxel along each axis plus ``noise`` random
    ids."""
    rng = np.random.default_rng(seed)
    per_side = max(1, round(labels ** (1 / 3)))
    edges = np.linspace(0, n, per_side + 1).astype(int)
    index = np.searchsorted(edges, np.arange(n), side="right") - 1
    i, j, k = np.meshgrid(index, index, index, indexing="ij")
    reference = (1 + i + per_side * (j + per_side * k)).astype(np.uint16)
    prediction = np.roll(reference, (1, 1, 1), axis=(0, 1, 2))
    noisy = rng.random(reference.shape) < noise
    prediction[noisy] = rng.integers(1, int(reference.max()) + 1, int(noisy.sum()))
    return prediction, reference


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="cube side (default: %(default)s)")
    parser.add_argument("--labels", type=int, default=4000, help="about this many boxes")
    parser.add_argument("--noise", type=float, default=0.05, help="voxels given random ids")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (best is kept)")
    parser.add_argument("--sample", type=int, default=50, help="labels the one-hot loop times")
    args = parser.parse_args()
    pred, ref = instance_pair(args.size, args.labels, args.noise)
    n_labels = int(ref.max())
    small = instance_pair(16, 27, args.noise)
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for name, array in (("pred", pred), ("ref", ref), ("p0", small[0]), ("r0", small[1])):
            path = Path(tmp) / f"{name}.nii.gz"
            nib.save(nib.Nifti1Image(array, np.eye(4)), path)
            paths.append(path)
        print(f"{args.size}^3, {n_labels} labels, {args.noise:.0%} noise")
        rows = [
            ("monai-jdt files", score_files, tuple(paths[:2]), tuple(paths[2:]), 1.0),
            ("monai-jdt arrays", score_arrays, (pred, ref), small, 1.0),
            (
                "numpy one-hot",
                numpy_onehot_loop,
                (pred, ref, range(1, args.sample + 1)),
                (*small, range(1, 3)),
                n_labels / args.sample,
            ),
        ]
        for name, fn, inputs, warmup, scale in rows:
            seconds, extra_mb = measure(fn, inputs, warmup, args.repeat)
            scaled = " (scaled from the sample)" if scale != 1.0 else ""
            print(f"  {name:17s} {seconds * scale:8.2f} s{scaled}, peak +{extra_mb:.0f} MB")


if __name__ == "__main__":
    main()
