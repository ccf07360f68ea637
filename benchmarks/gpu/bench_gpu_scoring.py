"""GPU side of scoring: probability maps and label maps with ``score_arrays`` on CUDA against
the CPU path, same inputs, same process (for ``benchmarks/gpu/run.sh``).

Probability maps: ``--channels`` x 512 x 512 x 256 (softmax of smooth random logits) in
float16 and float32 against a label-map reference; on CUDA the tensors are already on the
device (as a model's output would be), on the CPU they are numpy arrays. Label maps: the
14-organ pair of ``bench_scoring.py``. Reports the best of ``--repeat`` wall times
(``torch.cuda.synchronize`` around CUDA runs), the speed-up, and whether the counts agree.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch

from monai_jdt.scoring import ScoringOptions, score_arrays

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_scoring import make_pair


def best(fn: Callable[[], object], repeat: int, cuda: bool) -> tuple[float, object]:
    seconds, out = float("inf"), None
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if cuda:
            torch.cuda.synchronize()
        seconds = min(seconds, time.perf_counter() - start)
    return seconds, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="512,512,256")
    parser.add_argument("--channels", type=int, default=14)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    shape = tuple(int(s) for s in args.size.split(","))
    pred, ref = make_pair(shape, args.channels - 1)
    print(f"GPU: {torch.cuda.get_device_name()}; shape {shape}, {args.channels} channels")
    print("| input | CPU | CUDA | CPU / CUDA | same counts |")
    print("|---|---|---|---|---|")
    cpu_opts, gpu_opts = ScoringOptions(device="cpu"), ScoringOptions(device="cuda")
    t_cpu, r_cpu = best(partial(score_arrays, pred, ref, cpu_opts), args.repeat, False)
    p_gpu, r_gpu_in = torch.from_numpy(pred).cuda(), torch.from_numpy(ref).cuda()
    t_gpu, r_gpu = best(partial(score_arrays, p_gpu, r_gpu_in, gpu_opts), args.repeat, True)
    same = [(a.tp, a.fp, a.fn) for a in r_cpu.labels] == [(a.tp, a.fp, a.fn) for a in r_gpu.labels]
    print(f"| label maps uint8 | {t_cpu:.3f} s | {t_gpu:.3f} s | {t_cpu / t_gpu:.1f}x | {same} |")
    generator = torch.Generator().manual_seed(0)
    coarse = torch.randn((1, args.channels, *(max(2, n // 16) for n in shape)), generator=generator)
    logits = torch.nn.functional.interpolate(coarse, size=shape, mode="trilinear")[0] * 4
    for dtype in (torch.float16, torch.float32):
        probs = torch.softmax(logits, dim=0).to(dtype)
        host = probs.numpy()
        t_cpu, r_cpu = best(partial(score_arrays, host, ref, cpu_opts), 1, False)
        on_gpu = probs.cuda()
        t_gpu, r_gpu = best(partial(score_arrays, on_gpu, r_gpu_in, gpu_opts), args.repeat, True)
        close = all(
            np.isclose(a.tp, b.tp, rtol=1e-4) and np.isclose(a.fp, b.fp, rtol=1e-4)
            for a, b in zip(r_cpu.labels, r_gpu.labels, strict=True)
        )
        print(
            f"| probabilities {str(dtype).split('.')[-1]} | {t_cpu:.3f} s | {t_gpu:.3f} s | "
            f"{t_cpu / t_gpu:.1f}x | {close} (rtol 1e-4) |"
        )


if __name__ == "__main__":
    main()
