"""Synthetic data sets in Medical Segmentation Decathlon (MSD) layout, for the bundles' demos.

A bundle's ``scripts/make_demo_data.py`` supplies one function that draws a case (image and
label arrays) and the ``dataset.json`` description; this module writes the folder::

    <root>/dataset.json     MSD keys; "training": [{"image", "label"}], "test": [image paths]
    <root>/imagesTr/ labelsTr/ imagesTs/
    <root>/labelsTs/        beyond MSD: the test labels, so test predictions can be scored

and gives the scripts one command line (``output``, ``--cases``, ``--test-cases``, ``--shape``,
``--seed``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

__all__ = ["CaseMaker", "demo_data_main", "write_msd_dataset"]

#: draws one case: (rng, spatial shape) -> (image, label) arrays, image channels last if any
CaseMaker = Callable[[np.random.Generator, tuple[int, int, int]], tuple[np.ndarray, np.ndarray]]


def write_msd_dataset(
    root: Path,
    make_case: CaseMaker,
    description: Mapping[str, Any],
    prefix: str,
    cases: int,
    test_cases: int,
    shape: tuple[int, int, int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    seed: int = 0,
) -> dict[str, Any]:
    """Write ``cases`` training and ``test_cases`` test cases under ``root``.

    Files are ``<prefix>_<i:03d>.nii.gz`` on an axis-aligned grid of ``spacing`` mm;
    ``description`` gives the ``dataset.json`` keys other than the case lists and counts
    (name, modality, labels, ...). Returns the ``dataset.json`` content.
    """
    rng = np.random.default_rng(seed)
    affine = np.diag([*spacing, 1.0])
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training: list[dict[str, str]] = []
    test: list[str] = []
    for i in range(cases + test_cases):
        name = f"{prefix}_{i:03d}.nii.gz"
        split = "Tr" if i < cases else "Ts"
        image, label = make_case(rng, shape)
        nib.save(nib.Nifti1Image(image, affine), str(root / f"images{split}" / name))
        nib.save(nib.Nifti1Image(label, affine), str(root / f"labels{split}" / name))
        if split == "Tr":
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
    meta = {
        **description,
        "numTraining": cases,
        "numTest": test_cases,
        "training": training,
        "test": test,
    }
    (root / "dataset.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def demo_data_main(
    doc: str,
    make_case: CaseMaker,
    description: Mapping[str, Any],
    prefix: str,
    default_shape: tuple[int, int, int],
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    argv: Sequence[str] | None = None,
) -> None:
    """The command line of a ``make_demo_data.py``: parse ``argv``, check it, write the data."""
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="folder to write (created if missing)")
    parser.add_argument("--cases", type=int, default=16, help="training cases (default 16)")
    parser.add_argument("--test-cases", type=int, default=4, help="test cases (default 4)")
    parser.add_argument(
        "--shape",
        type=int,
        nargs=3,
        default=default_shape,
        metavar=("X", "Y", "Z"),
        help=f"voxels per case (default {' '.join(map(str, default_shape))})",
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.cases < 2 or args.test_cases < 0:
        parser.error(
            f"--cases must be >= 2 and --test-cases >= 0, got {args.cases}, {args.test_cases}"
        )
    if min(args.shape) < 16:
        parser.error(f"--shape must be at least 16 voxels per axis, got {args.shape}")
    write_msd_dataset(
        args.output,
        make_case,
        description,
        prefix,
        args.cases,
        args.test_cases,
        tuple(args.shape),
        spacing,
        args.seed,
    )
    print(f"wrote {args.cases} training and {args.test_cases} test cases to {args.output}")
