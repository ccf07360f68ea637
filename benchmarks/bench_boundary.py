"""Speed of boundary metrics (HD95 + NSD at 2 mm, every label): monai-jdt against MONAI,
DeepMind's surface-distance and medpy, side by side in one process, with agreement checks.

Cases (label maps made here; the reference has lumpy ellipsoids, the prediction moves each
one by about a voxel and bends its surface by a smooth random field of +-2 voxels):
  six       6 labels, 192x192x128, 0.8x0.8x1.5 mm
  liver     1 liver-sized label (semi-axes 96x80x105 mm), 512x512x256, 0.8x0.8x1.5 mm
  fourteen  14 labels, 512x512x256, 0.8x0.8x1.5 mm

Methods (each computes HD95 and NSD(2 mm) of every label):
  monai-jdt          ``boundary_scores`` (numpy), voxel convention; also surfel convention
  monai-jdt torch    ``boundary_scores_torch`` on ``--device`` (e.g. cuda), voxel convention
  MONAI              ``compute_hausdorff_distance(percentile=95)`` + ``compute_surface_dice``
                     per label on [1, 1, X, Y, Z] masks (CPU)
  surface-distance   ``compute_surface_distances`` + ``compute_robust_hausdorff(95)`` +
                     ``compute_surface_dice_at_tolerance(2)`` per label (surfel convention)
  medpy              ``hd95`` per label (it has no NSD; pooled percentile)

Reports best-of-``--repeat`` wall times (baselines: one run), the ratios to monai-jdt, the
largest difference of HD95 / NSD from the method of the same convention, and monai-jdt's
peak traced extra memory (``tracemalloc``) over the largest label's bounding-box crop
(1 byte per voxel). Run ``python benchmarks/bench_boundary.py`` (``--cases six`` for a quick
run, ``--skip medpy,MONAI`` to leave out slow baselines, ``--device cuda`` for the GPU side).
"""

from __future__ import annotations

import argparse
import math
import os
import time
import tracemalloc
import warnings
from collections.abc import Callable

import numpy as np
from scipy import ndimage

from monai_jdt.scoring.boundary import BoundaryOptions, boundary_scores, label_boxes

SPACING = (0.8, 0.8, 1.5)
TOLERANCE = 2.0
CASES = {
    "six": ((192, 192, 128), 6, (0.05, 0.16)),
    "liver": ((512, 512, 256), 1, None),
    "fourteen": ((512, 512, 256), 14, (0.04, 0.12)),
}
#: baselines left out of a case by default (minutes each on 2 cores)
SLOW = {"fourteen": {"MONAI", "medpy"}}


def _smooth_field(shape: tuple[int, ...], rng: np.random.Generator, amplitude: float) -> np.ndarray:
    coarse = rng.uniform(-amplitude, amplitude, (6, 6, 6))
    return ndimage.zoom(coarse, [n / 6 for n in shape], order=1, grid_mode=True, mode="nearest")


def _paint(
    volume: np.ndarray,
    center: np.ndarray,
    radii: np.ndarray,
    label: int,
    rng: np.random.Generator,
    bend: float,
) -> None:
    """An ellipsoid whose surface is moved by a smooth random field of about ``bend`` voxels."""
    pad = bend + 2
    lo = np.maximum(np.floor(center - radii - pad).astype(int), 0)
    hi = np.minimum(np.ceil(center + radii + pad).astype(int) + 1, volume.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    axes = np.ogrid[box]
    radius = np.sqrt(sum(((g - c) / r) ** 2 for g, c, r in zip(axes, center, radii, strict=True)))
    field = _smooth_field(tuple(int(b - a) for a, b in zip(lo, hi, strict=True)), rng, bend)
    inside = radius * float(radii.mean()) + field <= float(radii.mean())
    volume[box][inside] = label


def make_case(name: str, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    shape, n_labels, size_range = CASES[name]
    rng = np.random.default_rng(seed)
    size = np.asarray(shape, dtype=float)
    ref, pred = np.zeros(shape, np.uint8), np.zeros(shape, np.uint8)
    for label in range(1, n_labels + 1):
        if size_range is None:  # the liver: 96 x 80 x 105 mm semi-axes
            center, radii = size / 2, np.array([120.0, 100.0, 70.0])
        else:
            center = rng.uniform(0.25, 0.75, 3) * size
            radii = rng.uniform(*size_range, 3) * size
        state = int(rng.integers(1 << 30))
        _paint(ref, center, radii, label, np.random.default_rng(state), 1.0)
        _paint(pred, center + rng.normal(0, 1.0, 3), radii, label, rng, 2.0)
    return pred, ref


# ----------------------------------------------------------------------------- methods


def ours(pred: np.ndarray, ref: np.ndarray, labels: list[int], surface: str) -> list[tuple]:
    options = BoundaryOptions(
        metrics=("hd95", "nsd"),
        nsd_tolerance=TOLERANCE,
        surface=surface,  # type: ignore[arg-type]
    )
    scores = boundary_scores(pred, ref, labels, options, spacing=SPACING)
    return [(s.values["hd95"], s.values["nsd"]) for s in scores]


def ours_torch(device: str) -> Callable[[np.ndarray, np.ndarray, list[int]], list[tuple]]:
    import torch

    from monai_jdt.scoring.boundary_torch import boundary_scores_torch

    def run(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> list[tuple]:
        p, r = torch.from_numpy(pred).to(device), torch.from_numpy(ref).to(device)
        options = BoundaryOptions(metrics=("hd95", "nsd"), nsd_tolerance=TOLERANCE)
        scores = boundary_scores_torch(p, r, labels, options, spacing=SPACING)
        return [(s.values["hd95"], s.values["nsd"]) for s in scores]

    return run


def monai(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> list[tuple]:
    import torch
    from monai.metrics import compute_hausdorff_distance, compute_surface_dice

    out = []
    for k in labels:
        p = torch.from_numpy(pred == k)[None, None].float()
        r = torch.from_numpy(ref == k)[None, None].float()
        hd = compute_hausdorff_distance(p, r, percentile=95, spacing=SPACING)
        nsd = compute_surface_dice(p, r, [TOLERANCE], spacing=SPACING, include_background=True)
        out.append((float(hd[0, 0]), float(nsd[0, 0])))
    return out


def surface_distance(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> list[tuple]:
    import surface_distance as sd

    out = []
    for k in labels:
        d = sd.compute_surface_distances(ref == k, pred == k, SPACING)
        out.append(
            (sd.compute_robust_hausdorff(d, 95), sd.compute_surface_dice_at_tolerance(d, TOLERANCE))
        )
    return out


def medpy(pred: np.ndarray, ref: np.ndarray, labels: list[int]) -> list[tuple]:
    from medpy.metric import binary

    return [(binary.hd95(pred == k, ref == k, SPACING), math.nan) for k in labels]


def best_time(fn: Callable[[], list[tuple]], repeat: int) -> tuple[float, list[tuple]]:
    best, result = math.inf, []
    for _ in range(repeat):
        started = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - started)
    return best, result


def largest_difference(a: list[tuple], b: list[tuple]) -> tuple[float, float]:
    diff = np.abs(np.asarray(a, float) - np.asarray(b, float))
    return float(np.nanmax(diff[:, 0])), float(np.nanmax(diff[:, 1]))


def run_case(name: str, args: argparse.Namespace) -> None:
    pred, ref = make_case(name)
    labels = list(range(1, CASES[name][1] + 1))
    boxes = [label_boxes(v, labels) for v in (pred, ref)]
    largest = max(
        math.prod(max(b[k][i][1] for b in boxes) - min(b[k][i][0] for b in boxes) for i in range(3))
        for k in labels
    )
    ours(pred[:32, :32, :16], ref[:32, :32, :16], labels, "voxel")  # warm the caches
    rows = []
    tracemalloc.start()
    t_ours, voxel = best_time(lambda: ours(pred, ref, labels, "voxel"), args.repeat)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    t_surfel, surfel = best_time(lambda: ours(pred, ref, labels, "surfel"), args.repeat)
    rows.append(("monai-jdt (voxel)", t_ours, voxel, None))
    rows.append(("monai-jdt (surfel)", t_surfel, surfel, None))
    if args.device:
        import torch

        fn = ours_torch(args.device)
        fn(pred, ref, labels)  # warm-up (CUDA context, kernels)

        def synced() -> list[tuple]:
            out = fn(pred, ref, labels)
            if torch.device(args.device).type == "cuda":
                torch.cuda.synchronize()
            return out

        t_gpu, on_gpu = best_time(synced, args.repeat)
        rows.append((f"monai-jdt torch {args.device} (voxel)", t_gpu, on_gpu, voxel))
    skip = set(args.skip) | (set() if args.all else SLOW.get(name, set()))
    for key, label, fn, same in (
        ("MONAI", "MONAI 1.6 CPU", monai, voxel),
        ("surface", "surface-distance", surface_distance, surfel),
        ("medpy", "medpy (hd95 only)", medpy, None),
    ):
        if key in skip:
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            seconds, values = best_time(lambda fn=fn: fn(pred, ref, labels), 1)
        rows.append((label, seconds, values, same))
    print(
        f"\n### {name}: {len(labels)} label(s), {'x'.join(map(str, pred.shape))}, "
        f"{'x'.join(map(str, SPACING))} mm; load {os.getloadavg()[0]:.1f}\n"
    )
    print("| method | best time | time / monai-jdt | max abs diff HD95 (mm) / NSD |")
    print("|---|---|---|---|")
    for label, seconds, values, same in rows:
        diff = ""
        if same is not None:
            d_hd, d_nsd = largest_difference(values, same)
            diff = f"{d_hd:.2g} / {d_nsd:.2g} (vs monai-jdt of its convention)"
        print(f"| {label} | {seconds:.3f} s | {seconds / t_ours:.1f}x | {diff} |")
    if "medpy" not in skip:
        medpy_values = next(v for lab, _, v, _ in rows if lab.startswith("medpy"))
        pooled_options = BoundaryOptions(metrics=("hd95",), percentile_mode="pooled")
        pooled = boundary_scores(pred, ref, labels, pooled_options, spacing=SPACING)
        d = max(abs(s.values["hd95"] - v[0]) for s, v in zip(pooled, medpy_values, strict=True))
        print(f"\nmedpy hd95 vs monai-jdt percentile_mode='pooled': max abs diff {d:.2g} mm")
    print(
        f"\nmonai-jdt peak traced memory {peak / 2**20:.1f} MB; largest label box "
        f"{largest / 2**20:.1f} M voxels ({peak / largest:.2f} bytes per box voxel)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="six,liver,fourteen")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", help="also time the torch path on this device (cuda, cpu)")
    parser.add_argument("--skip", default="", help="baselines to leave out: MONAI,surface,medpy")
    parser.add_argument("--all", action="store_true", help="run every baseline on every case")
    args = parser.parse_args()
    args.skip = [s.strip().split("-")[0] for s in args.skip.split(",") if s.strip()]
    for name in args.cases.split(","):
        run_case(name.strip(), args)


if __name__ == "__main__":
    main()
