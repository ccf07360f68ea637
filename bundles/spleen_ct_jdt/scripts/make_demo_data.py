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

import numpy as np

from monai_jdt.demo_data import demo_data_main

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


DESCRIPTION = {
    "name": "SyntheticSpleen",
    "description": "Synthetic spleen-CT demo data for spleen_ct_jdt (not real anatomy)",
    "reference": "bundles/spleen_ct_jdt/scripts/make_demo_data.py",
    "licence": "Apache-2.0",
    "tensorImageSize": "3D",
    "modality": {"0": "CT"},
    "labels": {"0": "background", "1": "spleen"},
}

if __name__ == "__main__":
    demo_data_main(__doc__, make_case, DESCRIPTION, "spleen", (96, 96, 64), SPACING)
