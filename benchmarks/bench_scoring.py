"""Speed and memory of scoring a label-map pair: monai-jdt against the usual ways.

Generates a prediction/reference pair (``--size``, default 512x512x256, ``--labels`` organs as
ellipsoids; the prediction moves and rescales each one), writes both as ``.nii.gz``, then
runs each method in a forked child (so its memory is measured alone) and reports the best of
``--repeat`` wall times and the peak extra resident memory (RSS sampled every 0.5 ms, minus
the RSS when the method starts, i.e. with the inputs already loaded and the method warmed up
once on a 32x32x16 pair, so that paging in library code is not counted).

From arrays in memory:
  monai-jdt        ``score_arrays`` (one chunked confusion matrix)
  numpy one-hot    per label: ``count_nonzero`` of ``p == k``, ``r == k`` and of both
  nnU-Net masks    per label: boolean masks and the four sums tp / fp / fn / tn
  MONAI DiceMetric ``DiceMetric(num_classes=K)`` on label tensors ``[1, 1, X, Y, Z]``
From two .nii.gz files:
  monai-jdt        ``score_files`` (header checks, two inflate threads, chunked counting)
  nibabel + loop   ``get_fdata()`` of both files, then the ``== k`` loop
  nibabel + jdt    ``np.asarray(img.dataobj)`` of both files, then ``score_arrays``
score-dir:
  ``--cases`` copies of the pair scored with ``score_directory`` at 1 and 2 workers; reports
  the wall time and the CPU time / wall time ("cores busy").

Run: ``python benchmarks/bench_scoring.py`` (``--size 128,128,64`` for a quick run,
``--skip-monai`` to leave out the slowest method).
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import resource
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import nibabel as nib
import numpy as np
import torch

from monai_jdt.scoring import ScoringOptions, score_arrays, score_files
from monai_jdt.scoring.folders import score_directory
from monai_jdt.scoring.nifti import zlib_backend

PAGE = os.sysconf("SC_PAGE_SIZE")


# ----------------------------------------------------------------------------- data


def _paint_ellipsoid(volume: np.ndarray, center: np.ndarray, radii: np.ndarray, label: int) -> None:
    """Set the voxels of an axis-aligned ellipsoid to ``label``, touching its bounding box only."""
    lo = np.maximum(np.floor(center - radii).astype(int), 0)
    hi = np.minimum(np.ceil(center + radii).astype(int) + 1, volume.shape)
    axes = np.ogrid[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(axes, center, radii, strict=True)) <= 1
    box = volume[tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))]
    box[inside] = label


def make_pair(
    shape: tuple[int, ...], n_labels: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """A reference with ``n_labels`` organs and a prediction that moves/rescales each one."""
    rng = np.random.default_rng(seed)
    size = np.asarray(shape, dtype=float)
    reference = np.zeros(shape, dtype=np.uint8)
    prediction = np.zeros(shape, dtype=np.uint8)
    for label in range(1, n_labels + 1):
        center = rng.uniform(0.2, 0.8, 3) * size
        radii = rng.uniform(0.04, 0.15, 3) * size
        _paint_ellipsoid(reference, center, radii, label)
        moved = center + rng.normal(0, 0.01, 3) * size
        _paint_ellipsoid(prediction, moved, radii * rng.uniform(0.9, 1.1, 3), label)
    return prediction, reference


# ----------------------------------------------------------------------------- baselines


def numpy_onehot_loop(pred: np.ndarray, ref: np.ndarray, labels: range) -> list[float]:
    dice = []
    for k in labels:
        p, r = pred == k, ref == k
        tp = np.count_nonzero(p & r)
        dice.append(2 * tp / (np.count_nonzero(p) + np.count_nonzero(r)))
    return dice


def nnunet_style_masks(pred: np.ndarray, ref: np.ndarray, labels: range) -> list[float]:
    dice = []
    for k in labels:
        mask_pred, mask_ref = pred == k, ref == k
        tp = np.sum(mask_pred & mask_ref)
        fp = np.sum(mask_pred & ~mask_ref)
        fn = np.sum(~mask_pred & mask_ref)
        _tn = np.sum(~mask_pred & ~mask_ref)
        dice.append(2 * tp / (2 * tp + fp + fn))
    return dice


def monai_dice(pred: np.ndarray, ref: np.ndarray, n_classes: int) -> list[float]:
    from monai.metrics import DiceMetric

    metric = DiceMetric(include_background=False, num_classes=n_classes, reduction="none")
    y_pred = torch.from_numpy(pred)[None, None]
    y = torch.from_numpy(ref)[None, None]
    return metric(y_pred, y)[0].tolist()


def nibabel_fdata_loop(pred_path: Path, ref_path: Path, labels: range) -> list[float]:
    pred = nib.load(pred_path).get_fdata()
    ref = nib.load(ref_path).get_fdata()
    dice = []
    for k in labels:
        p, r = pred == k, ref == k
        dice.append(2 * np.sum(p & r) / (np.sum(p) + np.sum(r)))
    return dice


def nibabel_then_arrays(pred_path: Path, ref_path: Path) -> object:
    pred = np.asarray(nib.load(pred_path).dataobj)
    ref = np.asarray(nib.load(ref_path).dataobj)
    return score_arrays(pred, ref)


# ----------------------------------------------------------------------------- measuring


def _rss() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


def _measure_in_child(
    fn: Callable[..., object],
    inputs: tuple[object, ...],
    warmup: tuple[object, ...],
    repeat: int,
    conn: Connection,
) -> None:
    fn(*warmup)  # page in the code and lazy state on a tiny pair: only the per-call cost counts
    gc.collect()
    fn_times, peak, base = [], 0, _rss()
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(repeat):
        start = time.perf_counter()
        fn(*inputs)
        fn_times.append(time.perf_counter() - start)
        gc.collect()
    stop.set()
    sampler.join()
    conn.send((min(fn_times), max(peak, _rss()) - base))
    conn.close()


def measure(
    fn: Callable[..., object], inputs: tuple[object, ...], warmup: tuple[object, ...], repeat: int
) -> tuple[float, float]:
    """``(best seconds, peak extra MB)`` of ``fn(*inputs)`` run in a forked child."""
    context = mp.get_context("fork")
    parent, child = context.Pipe()
    process = context.Process(target=_measure_in_child, args=(fn, inputs, warmup, repeat, child))
    process.start()
    seconds, extra = parent.recv()
    process.join()
    return seconds, extra / 2**20


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ----------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="512,512,256", help="volume shape (default: %(default)s)")
    parser.add_argument("--labels", type=int, default=14, help="organs (default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method (best is kept)")
    parser.add_argument("--cases", type=int, default=6, help="cases for score-dir (0: skip)")
    parser.add_argument("--skip-monai", action="store_true", help="leave out MONAI DiceMetric")
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.size.split(","))
    labels = range(1, args.labels + 1)
    torch.set_num_threads(2)

    start = time.perf_counter()
    pred, ref = make_pair(shape, args.labels)
    work = Path(tempfile.mkdtemp(prefix="bench_scoring_"))
    affine = np.diag([0.8, 0.8, 1.5, 1.0])
    pred_path, ref_path = work / "pred.nii.gz", work / "ref.nii.gz"
    nib.save(nib.Nifti1Image(pred, affine), pred_path)
    nib.save(nib.Nifti1Image(ref, affine), ref_path)
    mb = [p.stat().st_size / 2**20 for p in (pred_path, ref_path)]
    print(
        f"pair {'x'.join(map(str, shape))} uint8, {args.labels} labels, "
        f"{math.prod(shape) / 1e6:.1f} M voxels; .nii.gz {mb[0]:.1f} + {mb[1]:.1f} MB; "
        f"inflate: {zlib_backend().__name__}; cpus {os.cpu_count()}; "
        f"data made in {time.perf_counter() - start:.1f} s"
    )
    expected = numpy_onehot_loop(pred, ref, labels)
    ours = [row.metrics["dice"] for row in score_arrays(pred, ref).labels]
    assert np.allclose(ours, expected), "monai-jdt disagrees with the numpy loop"
    assert np.allclose(
        [row.metrics["dice"] for row in score_files(pred_path, ref_path).labels], expected
    )

    tiny_pred, tiny_ref = make_pair((32, 32, 16), args.labels, seed=1)
    tiny_pred_path, tiny_ref_path = work / "tiny_pred.nii.gz", work / "tiny_ref.nii.gz"
    nib.save(nib.Nifti1Image(tiny_pred, affine), tiny_pred_path)
    nib.save(nib.Nifti1Image(tiny_ref, affine), tiny_ref_path)
    arrays, tiny_arrays = (pred, ref), (tiny_pred, tiny_ref)
    files, tiny_files = (pred_path, ref_path), (tiny_pred_path, tiny_ref_path)
    rows: list[tuple[str, str, float, float]] = []

    def run(source: str, name: str, fn: Callable[..., object], repeat: int | None = None) -> None:
        inputs, warmup = (arrays, tiny_arrays) if source == "arrays" else (files, tiny_files)
        seconds, extra = measure(fn, inputs, warmup, repeat or args.repeat)
        rows.append((source, name, seconds, extra))
        print(f"  {source:6s} {name:22s} {seconds:8.3f} s  {extra:+9.1f} MB", flush=True)

    print("method                          best time   extra RSS")
    run("arrays", "monai-jdt score_arrays", score_arrays)
    run("arrays", "numpy one-hot loop", lambda p, r: numpy_onehot_loop(p, r, labels))
    run("arrays", "nnU-Net-style masks", lambda p, r: nnunet_style_masks(p, r, labels))
    if not args.skip_monai:
        run("arrays", "MONAI DiceMetric", lambda p, r: monai_dice(p, r, args.labels + 1), 1)
    run("files", "monai-jdt score_files", score_files)
    run("files", "nibabel + score_arrays", nibabel_then_arrays)
    run("files", "get_fdata + == loop", lambda p, r: nibabel_fdata_loop(p, r, labels), 1)

    ours_arrays = rows[0][2]
    ours_files = next(r[2] for r in rows if r[1] == "monai-jdt score_files")
    print("ratios (time of the method / time of monai-jdt on the same source):")
    for source, name, seconds, _ in rows:
        base = ours_arrays if source == "arrays" else ours_files
        print(f"  {source:6s} {name:22s} {seconds / base:7.1f}x")

    if args.cases:
        preds, refs = work / "preds", work / "refs"
        preds.mkdir()
        refs.mkdir()
        for i in range(args.cases):
            os.symlink(pred_path, preds / f"case{i:03d}.nii.gz")
            os.symlink(ref_path, refs / f"case{i:03d}.nii.gz")
        for workers in (1, 2):
            cpu0, wall0 = cpu_seconds(), time.perf_counter()
            result = score_directory(preds, refs, ScoringOptions(), workers=workers)
            wall = time.perf_counter() - wall0
            busy = (cpu_seconds() - cpu0) / wall
            assert len(result.reports) == args.cases
            print(
                f"score-dir {args.cases} cases, {workers} worker(s): {wall:.2f} s "
                f"({wall / args.cases:.3f} s/case), cores busy {busy:.2f}"
            )
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
