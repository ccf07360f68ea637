"""Cross-rank reductions for ``torch.distributed`` runs, autograd-aware where losses need it.

Losses that pool counts over the *global* batch (``sync_counts=True``) sum per-rank count
tensors with :func:`all_reduce_sum`. Its backward is again an all-reduce sum: rank ``r``
receives ``sum_q dL_q / dc_r``, the gradient of the sum of every rank's loss. Every rank computes
the same loss value from the same pooled counts, so this is ``world_size * dL / dc_r``, and
``DistributedDataParallel``'s averaging of parameter gradients over the ranks then gives exactly
the gradient of the loss over the whole global batch (what one process would get).

Outside a distributed run (not initialised, or one rank) every function is the identity.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist

__all__ = ["all_gather_rows", "all_reduce_max", "all_reduce_sum", "is_distributed", "world_size"]


def is_distributed() -> bool:
    """True inside an initialised process group with more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 outside a distributed run)."""
    return dist.get_world_size() if is_distributed() else 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise sum of ``tensor`` over all ranks, differentiable (see the module docstring).

    torch's own autograd-aware all-reduce (``torch.distributed.nn.functional.all_reduce``),
    whose backward all-reduces the incoming gradients with the same sum. Every rank must call it
    with a tensor of the same shape and dtype.
    """
    if not is_distributed():
        return tensor
    # imported here: builds without torch.distributed lack it, and they never get this far
    import torch.distributed.nn.functional as dist_nn

    with warnings.catch_warnings():
        # torch 2.13 marks it deprecated in favour of the private functional collectives, whose
        # all_reduce has no backward; this is the public, differentiable collective
        warnings.filterwarnings(
            "ignore", message=r".*nn\.functional\.all_reduce is deprecated", category=FutureWarning
        )
        out: torch.Tensor = dist_nn.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return out


def all_reduce_max(tensor: torch.Tensor) -> torch.Tensor:
    """Elementwise maximum over all ranks, without gradient (e.g. "class present anywhere")."""
    if not is_distributed():
        return tensor
    out = tensor.detach().clone().contiguous()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def all_gather_rows(tensor: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Concatenate every rank's ``[n_r, ...]`` rows in rank order, differentiably.

    Ranks may hold different numbers of rows. Each rank writes its rows into a zero tensor of the
    global size at its offset and the copies are summed with :func:`all_reduce_sum`, so the
    gradient reaching a rank's rows follows the same convention as ``all_reduce_sum``.

    Returns:
        ``(rows of all ranks [sum_r n_r, ...], offset of this rank's first row)``.
    """
    if not is_distributed():
        return tensor, 0
    sizes = torch.zeros(world_size(), dtype=torch.long, device=tensor.device)
    sizes[dist.get_rank()] = tensor.shape[0]
    sizes = all_reduce_max(sizes)
    offset = int(sizes[: dist.get_rank()].sum())
    total = int(sizes.sum())
    before = tensor.new_zeros((offset, *tensor.shape[1:]))
    after = tensor.new_zeros((total - offset - tensor.shape[0], *tensor.shape[1:]))
    return all_reduce_sum(torch.cat([before, tensor, after])), offset
