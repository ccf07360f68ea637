"""Write a small synthetic brain-tumour MRI data set in Medical Segmentation Decathlon layout.

    python scripts/make_demo_data.py data/ [--cases 16] [--test-cases 4] [--shape 64 64 48]

Each case is a 4-channel volume (FLAIR, T1w, T1gd, T2w, the channel order of MSD
Task01_BrainTumour) on a 1 mm grid, stored as one 4D NIfTI: an ellipsoidal "brain" with a
tumour of three nested parts whose signal differs per channel, as in real scans:

* label 1, oedema: a shell around the core, bright in FLAIR and T2w;
* label 2, non-enhancing / necrotic core: the centre, dark in T1w;
* label 3, enhancing tumour: a ring around the necrotic centre, bright in T1gd.

The overlapping regions the bundle learns are tumour core TC = {2, 3}, whole tumour
WT = {1, 2, 3} and enhancing tumour ET = {3}. Tumour position, size and shape vary per case;
Gaussian noise is added per channel.

Written: ``dataset.json`` (MSD keys), ``imagesTr/``, ``labelsTr/``, ``imagesTs/`` and, beyond MSD,
``labelsTs/`` so test predictions can be scored.
"""

from __future__ import annotations

import numpy as np

from monai_jdt.demo_data import demo_data_main

CHANNELS = ("FLAIR", "T1w", "T1gd", "T2w")
# mean signal per tissue (rows: brain, oedema, necrotic core, enhancing) and channel (columns)
SIGNAL = np.array(
    [
        [400.0, 600.0, 500.0, 400.0],
        [900.0, 450.0, 520.0, 900.0],
        [650.0, 250.0, 300.0, 750.0],
        [700.0, 500.0, 1100.0, 650.0],
    ],
    dtype=np.float32,
)


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, ...]:
    """One (image float32 ``[*shape, 4]``, label uint8 ``shape``) pair."""
    axes = [np.arange(n, dtype=np.float32) for n in shape]
    grid = np.meshgrid(*axes, indexing="ij")
    size = np.array(shape, dtype=np.float32)
    brain = sum(((g - n / 2) / (0.42 * n)) ** 2 for g, n in zip(grid, size, strict=True)) <= 1
    centre = size * rng.uniform(0.38, 0.62, size=3)
    stretch = rng.uniform(0.8, 1.25, size=3)
    radius = rng.uniform(0.16, 0.24) * size.min()
    # normalised distance from the tumour centre (1.0 on the oedema's outer surface)
    dist = np.sqrt(
        sum(((g - c) / (radius * s)) ** 2 for g, c, s in zip(grid, centre, stretch, strict=True))
    )
    label = np.zeros(shape, dtype=np.uint8)
    label[(dist <= 1.0) & brain] = 1
    label[(dist <= 0.6) & brain] = 3
    label[(dist <= 0.35) & brain] = 2
    image = np.zeros((*shape, len(CHANNELS)), dtype=np.float32)
    image[brain] = SIGNAL[0]
    for tissue in (1, 2, 3):
        image[label == tissue] = SIGNAL[tissue]
    image += rng.normal(0.0, 40.0, size=image.shape).astype(np.float32) * brain[..., None]
    return image, label


DESCRIPTION = {
    "name": "SyntheticBrainTumour",
    "description": "Synthetic 4-channel brain tumour MRI for brats_mri_jdt (not real anatomy)",
    "reference": "bundles/brats_mri_jdt/scripts/make_demo_data.py",
    "licence": "Apache-2.0",
    "tensorImageSize": "4D",
    "modality": {str(i): name for i, name in enumerate(CHANNELS)},
    "labels": {
        "0": "background",
        "1": "oedema",
        "2": "non-enhancing tumour",
        "3": "enhancing tumour",
    },
}

if __name__ == "__main__":
    demo_data_main(__doc__, make_case, DESCRIPTION, "BRATS", (64, 64, 48))
