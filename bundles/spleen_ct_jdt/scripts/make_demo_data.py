"""Write a small synthetic spleen-CT data set in Medical Segmentation Decathlon layout.

    python scripts/make_demo_data.py data/ [--cases 16] [--test-cases 4] [--shape 96 96 64]

Each case is a CT-like volume in Hounsfield units on a 1.5 x 1.5 x 2.0 mm grid: air (-1000)
around an elliptic body cylinder (soft tissue, 40 HU), a large liver-like ellipsoid (60 HU, not
labelled, a distractor), a dense spine (400 HU) and the "spleen": a smaller ellipsoid at 120 HU
whose position and size vary per case; label 1 is exactly that ellipsoid. Gaussian noise (sd 15
HU) is added. The spleen differs from its neighbours by contrast and shape, so a 3D UNet
separates it within a few epochs.

Written: ``dataset.json`` (MSD keys, ``training`` and ``test`` lists), ``imagesTr/``,
``labelsTr/``, ``imagesTs/`` and, beyond MSD, ``labelsTs/`` so test predictions can be scored.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import nibabel as nib
import numpy as np

SPACING = (1.5, 1.5, 2.0)


def _ellipsoid(grid: tuple[np.ndarray, ...], centre, radii) -> np.ndarray:
    return sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radii, strict=True)) <= 1.0


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """One (image int16 HU, label uint8) pair of the given voxel shape."""
    grid = np.meshgrid(*(np.arange(n, dtype=np.float32) for n in shape), indexing="ij")
    sx, sy, sz = shape
    image = np.full(shape, -1000.0, dtype=np.float32)
    body = ((grid[0] - sx / 2) / (0.45 * sx)) ** 2 + ((grid[1] - sy / 2) / (0.38 * sy)) ** 2 <= 1
    image[body] = 40.0
    liver = _ellipsoid(grid, (0.38 * sx, 0.45 * sy, 0.5 * sz), (0.2 * sx, 0.18 * sy, 0.35 * sz))
    image[liver & body] = 60.0
    spine = ((grid[0] - sx / 2) / (0.06 * sx)) ** 2 + (
        (grid[1] - 0.78 * sy) / (0.06 * sy)
    ) ** 2 <= 1
    image[spine] = 400.0
    centre = (
        rng.uniform(0.62, 0.72) * sx,
        rng.uniform(0.35, 0.6) * sy,
        rng.uniform(0.35, 0.65) * sz,
    )
    radii = (
        rng.uniform(0.07, 0.12) * sx,
        rng.uniform(0.08, 0.14) * sy,
        rng.uniform(0.12, 0.22) * sz,
    )
    spleen = _ellipsoid(grid, centre, radii) & body
    image[spleen] = 120.0
    image += rng.normal(0.0, 15.0, size=shape).astype(np.float32)
    return image.round().astype(np.int16), spleen.astype(np.uint8)


def _save(array: np.ndarray, path: Path) -> None:
    nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), str(path))


def write_dataset(root: Path, cases: int, test_cases: int, shape: tuple[int, int, int], seed: int):
    """Write the data set under ``root``; returns the ``dataset.json`` content."""
    rng = np.random.default_rng(seed)
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(cases + test_cases):
        name = f"spleen_{i:03d}.nii.gz"
        image, label = make_case(rng, shape)
        split = "Tr" if i < cases else "Ts"
        _save(image, root / f"images{split}" / name)
        _save(label, root / f"labels{split}" / name)
        if i < cases:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    meta = {
        "name": "SyntheticSpleen",
        "description": "Synthetic spleen-CT demo data for spleen_ct_jdt (not real anatomy)",
        "reference": "bundles/spleen_ct_jdt/scripts/make_demo_data.py",
        "licence": "Apache-2.0",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "spleen"},
        "numTraining": cases,
        "numTest": test_cases,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--cases", type=int, default=16, help="training cases (default 16)")
    parser.add_argument("--test-cases", type=int, default=4, help="test cases (default 4)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=(96, 96, 64),
        metavar=("X", "Y", "Z"),
        help="voxels per case (default 96 96 64)",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.cases < 2 or args.test_cases < 0:
        parser.error(
            f"--cases must be >= 2 and --test-cases >= 0, got {args.cases}, {args.test_cases}"
        )
    if min(args.shape) < 16:
        parser.error(f"--shape must be at least 16 voxels per axis, got {args.shape}")
    write_dataset(args.output, args.cases, args.test_cases, tuple(args.shape), args.seed)
    print(f"wrote {args.cases} training and {args.test_cases} test cases to {args.output}")


if __name__ == "__main__":
    main()
