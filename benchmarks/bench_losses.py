"""Forward+backward time and peak memory of the monai-jdt losses against their MONAI counterparts.

A 3D batch ``B x C x S^3`` of logits (softmax) and one-hot targets, default 2 x 4 x 96^3:

    python benchmarks/bench_losses.py                      # CPU, 2 x 4 x 96^3
    python benchmarks/bench_losses.py --size 48 --repeats 3
    python benchmarks/bench_losses.py --device cuda
    python benchmarks/bench_losses.py --threads 1 --only DiceLoss

Time: both losses of a pair run in the same process, alternately, ``--repeats`` times each after
one warm-up; the fastest run is reported (the least disturbed by other work), the median next to
it. On CPU the time is the CPU time of the process (``time.process_time``, all threads): on a
shared machine wall time mostly measures the neighbours. On GPU it is wall time between
``torch.cuda.synchronize`` calls.

Peak memory: the extra memory one forward+backward needs on top of its inputs.
- CUDA: ``torch.cuda.max_memory_allocated()`` minus the memory allocated before the call.
- CPU: torch's CPU allocations are invisible to ``tracemalloc``, so each loss runs in a fresh
  subprocess (Linux) that builds the inputs, runs one warm-up step, resets the kernel's
  high-water mark of its resident set (``/proc/self/clear_refs``), reads the resident set size,
  runs forward+backward once and reads the new high-water mark (``VmHWM`` in
  ``/proc/self/status``). The subprocess runs with ``MALLOC_MMAP_THRESHOLD_=65536``: glibc then
  maps every tensor of 64 KiB or more on its own and gives it back to the OS when freed (its
  default threshold adapts and would keep freed tensors resident), so the resident set follows
  torch's live tensors and the difference is the peak of the loss's temporaries (plus the input
  gradient, the same for both losses).

Ratios are ours / MONAI (goal: <= 1.0).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from bench_common import status_bytes
from monai.losses import DiceCELoss, DiceLoss, TverskyLoss

from monai_jdt.losses import (
    DiceCESemimetricLoss,
    DiceSemimetricLoss,
    JDTLoss,
    TverskySemimetricLoss,
)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

ONE_HOT, LABELS = "one-hot", "labels"
#: the loss arguments of MONAI's spleen_ct_segmentation model-zoo bundle
SPLEEN_ZOO = {"to_onehot_y": True, "softmax": True, "squared_pred": True, "batch": True}

# name -> (ours, MONAI counterpart, target kind); factories so a subprocess can build just one
PAIRS: dict[str, tuple[Callable[[], LossFn], Callable[[], LossFn], str]] = {
    "DiceLoss": (
        lambda: DiceSemimetricLoss(softmax=True),
        lambda: DiceLoss(softmax=True),
        ONE_HOT,
    ),
    "TverskyLoss": (
        lambda: TverskySemimetricLoss(softmax=True, alpha=0.3, beta=0.7),
        lambda: TverskyLoss(softmax=True, alpha=0.3, beta=0.7),
        ONE_HOT,
    ),
    "DiceCELoss": (
        lambda: DiceCESemimetricLoss(softmax=True),
        lambda: DiceCELoss(softmax=True),
        ONE_HOT,
    ),
    "DiceLoss, label map + to_onehot_y": (
        lambda: DiceSemimetricLoss(softmax=True, to_onehot_y=True),
        lambda: DiceLoss(softmax=True, to_onehot_y=True),
        LABELS,
    ),
    "DiceCELoss, label map + to_onehot_y": (
        lambda: DiceCESemimetricLoss(softmax=True, to_onehot_y=True),
        lambda: DiceCELoss(softmax=True, to_onehot_y=True),
        LABELS,
    ),
    "DiceCELoss, spleen zoo arguments": (
        lambda: DiceCESemimetricLoss(**SPLEEN_ZOO),
        lambda: DiceCELoss(**SPLEEN_ZOO),
        LABELS,
    ),
    "JDTLoss defaults vs DiceLoss(batch=True)": (
        lambda: JDTLoss(softmax=True),
        lambda: DiceLoss(softmax=True, batch=True),
        ONE_HOT,
    ),
}


def make_inputs(
    batch: int, classes: int, size: int, device: str
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Logits ``[B, C, S, S, S]``; targets one-hot ``[B, C, ...]`` and labels ``[B, 1, ...]``."""
    g = torch.Generator().manual_seed(0)
    shape = (batch, classes, size, size, size)
    logits = torch.randn(shape, generator=g).to(device).requires_grad_(True)
    labels = torch.randint(0, classes, (batch, 1, size, size, size), generator=g).to(device)
    one_hot = torch.zeros(shape, device=device).scatter_(1, labels, 1.0)
    return logits, {ONE_HOT: one_hot, LABELS: labels}


def step(loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> None:
    x.grad = None
    loss_fn(x, y).backward()


def time_once(loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> float:
    if not x.is_cuda:
        start = time.process_time()
        step(loss_fn, x, y)
        return time.process_time() - start
    torch.cuda.synchronize()
    start = time.perf_counter()
    step(loss_fn, x, y)
    torch.cuda.synchronize()
    return time.perf_counter() - start


def peak_extra_bytes(loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> int:
    """Extra memory of one forward+backward (see the module docstring for the method)."""
    if x.is_cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(loss_fn, x, y)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    step(loss_fn, x, y)  # warm-up: one-time allocations of the process are not the loss's
    x.grad = None
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current resident set size
    before = status_bytes("VmRSS")
    step(loss_fn, x, y)
    return status_bytes("VmHWM") - before


def memory_in_subprocess(name: str, which: int, args: argparse.Namespace) -> int:
    cmd = [
        sys.executable,
        __file__,
        "--size",
        str(args.size),
        "--batch",
        str(args.batch),
        "--classes",
        str(args.classes),
        "--memory-of",
        f"{name}::{which}",
    ]
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return int(json.loads(out.strip().splitlines()[-1])["bytes"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=96, help="spatial size S of the S^3 volume")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--classes", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads (torch.set_num_threads; default: torch's choice). One thread "
        "on a machine shared with other jobs: no waiting for a descheduled second thread",
    )
    parser.add_argument("--only", nargs="*", help="run only these pairs (names as printed)")
    parser.add_argument("--memory-of", help=argparse.SUPPRESS)
    args = parser.parse_args()
    warnings.simplefilter("ignore")

    if args.memory_of:  # subprocess mode: one loss, one step, print the extra bytes
        name, which = args.memory_of.split("::")
        x, targets = make_inputs(args.batch, args.classes, args.size, "cpu")
        pair = PAIRS[name]
        y = targets[pair[2]]
        del targets  # only the target in use stays resident
        print(json.dumps({"bytes": peak_extra_bytes(pair[int(which)](), x, y)}))
        return

    if args.threads:
        torch.set_num_threads(args.threads)
    x, targets = make_inputs(args.batch, args.classes, args.size, args.device)
    mib = 2**20
    print(
        f"# {args.batch} x {args.classes} x {args.size}^3 on {args.device}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads, best (median) of {args.repeats}"
    )
    clock = "CPU ms" if args.device == "cpu" else "ms"
    print(
        f"| pair | ours {clock} | MONAI {clock} | time ratio "
        "| ours MiB | MONAI MiB | memory ratio |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, (ours_factory, theirs_factory, kind) in PAIRS.items():
        if args.only and name not in args.only:
            continue
        y = targets[kind]
        ours, theirs = ours_factory().to(args.device), theirs_factory().to(args.device)
        step(ours, x, y)
        step(theirs, x, y)
        times: tuple[list[float], list[float]] = ([], [])
        for _ in range(args.repeats):
            times[0].append(time_once(ours, x, y))
            times[1].append(time_once(theirs, x, y))
        t_ours, t_theirs = (min(t) * 1e3 for t in times)
        med_ours, med_theirs = (statistics.median(t) * 1e3 for t in times)
        if args.device == "cpu":
            m_ours, m_theirs = (memory_in_subprocess(name, i, args) for i in (0, 1))
        else:
            m_ours, m_theirs = peak_extra_bytes(ours, x, y), peak_extra_bytes(theirs, x, y)
        print(
            f"| {name} | {t_ours:.0f} ({med_ours:.0f}) | {t_theirs:.0f} ({med_theirs:.0f}) | "
            f"{t_ours / t_theirs:.2f} ({med_ours / med_theirs:.2f}) | "
            f"{m_ours / mib:.0f} | {m_theirs / mib:.0f} | {m_ours / m_theirs:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
