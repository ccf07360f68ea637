"""Soft counts of probability maps, through the shared ``monai_jdt.counts.soft_counts``.

For a probability prediction ``x`` ``[C, N]`` (channel ``c`` scores label ``c``, values in
[0, 1]) and a reference ``y`` — an integer label map ``[N]`` (one-hot per channel) or
probabilities ``[C, N]`` — the per-label counts use the semimetric identity (Wang &
Blaschko, MICCAI 2023)::

    tp_c = (|x_c|_1 + |y_c|_1 - |x_c - y_c|_1) / 2,  fp_c = |x_c|_1 - tp_c,  fn_c = |y_c|_1 - tp_c

so a soft reference scores 1.0 exactly when the prediction equals it. ``tn_c = N - tp_c - fp_c
- fn_c``; the predicted and reference volumes are ``|x_c|_1`` and ``|y_c|_1`` (in voxels).
The sums are additive over voxels, so they run over chunks on the chosen device, which bounds
memory for large volumes. They are taken in float64: ``tp`` is a difference of sums, so float32
would lose digits on large volumes (scores would differ in the 6th digit with the voxel order).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from monai_jdt.counts import soft_counts
from monai_jdt.scoring.volumes import torch_compatible

__all__ = ["SOFT_CHUNK_VOXELS", "SoftCaseCounts", "soft_case_counts"]

SOFT_CHUNK_VOXELS = 1 << 18


@dataclass(frozen=True)
class SoftCaseCounts:
    """Per-label soft counts of one case, each a float64 ``[L]`` array (L = len(labels))."""

    labels: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    fn: np.ndarray
    voxels: int


def _to_device(chunk: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    tensor = torch.as_tensor(torch_compatible(chunk)) if isinstance(chunk, np.ndarray) else chunk
    return tensor.to(device, non_blocking=True)


def soft_case_counts(
    prediction: np.ndarray | torch.Tensor,
    reference: np.ndarray | torch.Tensor,
    labels: Sequence[int],
    channels: Sequence[int],
    device: torch.device,
    chunk_voxels: int = SOFT_CHUNK_VOXELS,
) -> SoftCaseCounts:
    """Soft ``tp, fp, fn`` of ``labels``.

    Args:
        prediction: probabilities ``[C, *spatial]`` (already validated to lie in [0, 1]
            within 1e-6 of rounding; clipped to it here).
        reference: an integer label map ``[*spatial]`` or probabilities ``[C, *spatial]``.
        labels: the label id each scored channel stands for (compared with a label-map
            reference).
        channels: the prediction channel of each entry of ``labels``.
        device: where to compute (chunks are moved there one at a time).
        chunk_voxels: voxels per chunk.
    """
    n_channels = prediction.shape[0]
    x_flat = prediction.reshape(n_channels, -1)
    soft_reference = reference.ndim == prediction.ndim
    y_flat = reference.reshape(n_channels, -1) if soft_reference else reference.reshape(-1)
    voxels = int(x_flat.shape[1])
    channel_index = torch.as_tensor(list(channels), dtype=torch.long, device=device)
    label_ids = torch.as_tensor(list(labels), dtype=torch.long, device=device)
    totals = torch.zeros(3, len(labels), dtype=torch.float64, device=device)
    for start in range(0, voxels, chunk_voxels):
        stop = start + chunk_voxels
        x = _to_device(x_flat[:, start:stop], device).index_select(0, channel_index)
        if soft_reference:
            y = _to_device(y_flat[:, start:stop], device).index_select(0, channel_index)
        else:
            y = _to_device(y_flat[start:stop], device)[None, :] == label_ids[:, None]
        # clipped: values up to 1e-6 outside [0, 1] pass the range check as rounding, and
        # past 1 the identity would give min(x, y), not the x * y of a hard reference
        x, y = x.double().clamp(0.0, 1.0), y.double().clamp(0.0, 1.0)  # copies: never the input
        tp, fp, fn = soft_counts(x, y, dims=(1,), nonnegative=True)
        totals += torch.stack([tp, fp, fn])
    tp_, fp_, fn_ = totals.cpu().numpy()
    return SoftCaseCounts(np.asarray(labels, dtype=np.int64), tp_, fp_, fn_, voxels)
