"""``sync_counts=True`` over 2 gloo processes equals one process on the whole batch.

Two CPU processes each get part of a global batch (also unequal parts), run the same
``DistributedDataParallel`` model and a loss with ``sync_counts=True``. Each rank's loss must
equal the single-process loss of the whole batch, and the parameter gradients after DDP's
averaging must equal the single-process gradients. The gradient reaching each rank's logits is
``world_size`` times the single-process one (the all-reduce's adjoint sums the ranks' identical
losses; DDP's averaging divides that back).
"""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from monai_jdt.losses import GeneralizedDiceSemimetricLoss, JDTLoss

WORLD = 2
GLOBAL_BATCH = 4
CASES = [
    ("batch", lambda: JDTLoss(to_onehot_y=True, softmax=True, sync_counts=True)),
    (
        "class",
        lambda: JDTLoss(to_onehot_y=True, softmax=True, aggregation="class", sync_counts=True),
    ),
    (
        "image+class, present, sum",
        lambda: JDTLoss(
            to_onehot_y=True,
            softmax=True,
            aggregation={"image": 0.5, "class": 0.5},
            classes="present",
            reduction="sum",
            sync_counts=True,
        ),
    ),
    (
        "generalised dice batch",
        lambda: GeneralizedDiceSemimetricLoss(
            to_onehot_y=True, softmax=True, batch=True, sync_counts=True
        ),
    ),
]
SPLITS = [(2, 2), (3, 1)]


def _data():
    g = torch.Generator().manual_seed(0)
    image = torch.randn(GLOBAL_BATCH, 2, 6, 6, 6, generator=g)
    labels = torch.randint(0, 3, (GLOBAL_BATCH, 1, 6, 6, 6), generator=g)
    labels[0][labels[0] == 2] = 1  # class 2 absent from image 0
    return image, labels


def _model() -> torch.nn.Module:
    torch.manual_seed(1)
    return torch.nn.Conv3d(2, 3, kernel_size=3, padding=1)


def _run(model, loss_fn, image, labels):
    """Loss, parameter gradients and logits gradient of one forward+backward."""
    model.zero_grad()
    logits = model(image)
    logits.retain_grad()
    loss = loss_fn(logits, labels)
    loss.backward()
    grads = [p.grad.detach().clone() for p in model.parameters()]
    return loss.detach(), grads, logits.grad.detach().clone()


def _worker(rank: int, init_file: str, out_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        image, labels = _data()
        ddp = torch.nn.parallel.DistributedDataParallel(_model())
        results = {}
        for split in SPLITS:
            start = sum(split[:rank])
            part = slice(start, start + split[rank])
            for name, make in CASES:
                results[(split, name)] = _run(ddp, make(), image[part], labels[part])
        torch.save(results, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_sync_counts_over_two_processes_equals_the_full_batch(tmp_path):
    init_file, out_file = str(tmp_path / "init"), str(tmp_path / "out")
    mp.spawn(_worker, args=(init_file, out_file), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out_file}.{r}") for r in range(WORLD)]
    image, labels = _data()
    model = _model()
    for split in SPLITS:
        for name, make in CASES:
            loss, grads, logits_grad = _run(model, make(), image, labels)
            for rank, results in enumerate(ranks):
                r_loss, r_grads, r_logits_grad = results[(split, name)]
                torch.testing.assert_close(r_loss, loss, msg=f"{name} {split} loss")
                for got, want in zip(r_grads, grads, strict=True):
                    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)
                start = sum(split[:rank])
                own = logits_grad[start : start + split[rank]]
                torch.testing.assert_close(r_logits_grad, WORLD * own, rtol=1e-4, atol=1e-7)


def test_without_a_process_group_sync_counts_changes_nothing():
    image, labels = _data()
    logits = _model()(image)
    synced = JDTLoss(to_onehot_y=True, softmax=True, sync_counts=True)(logits, labels)
    plain = JDTLoss(to_onehot_y=True, softmax=True)(logits, labels)
    assert synced.item() == plain.item()


def test_per_rank_loss_without_sync_differs_from_the_full_batch():
    """Why sync_counts exists: batch-level counts on half batches optimise another number."""
    image, labels = _data()
    logits = _model()(image)
    loss = JDTLoss(to_onehot_y=True, softmax=True, classes="all")
    full = loss(logits, labels).item()
    halves = [loss(logits[i : i + 2], labels[i : i + 2]).item() for i in (0, 2)]
    assert abs(sum(halves) / 2 - full) > 1e-4
