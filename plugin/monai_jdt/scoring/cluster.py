"""Folder scoring on a Dask distributed cluster (``score-dir --dask ADDR|local``).

Each paired case is one Dask task running :func:`score_case` on a worker; the workers must see
the same file paths (a shared file system, as on a SLURM cluster). The per-case reports come
back whole, the cases that lack a label of the dataset's label set go back for their second
pass as tasks too, and the dataset summary is computed once, on the caller, by the same
:func:`monai_jdt.scoring.folders.dataset_result` as on one machine, so the result is exactly
that of :func:`monai_jdt.scoring.score_directory` (the counts are exact integers for label
maps; the summary is the same function of the same reports). ``dask.distributed`` is
imported only here. The workers of a ``LocalCluster`` get the allocator thresholds of
:mod:`monai_jdt.scoring.allocator`; those of a remote cluster keep their owner's settings
(``MALLOC_MMAP_THRESHOLD_`` and ``MALLOC_TRIM_THRESHOLD_`` in their environment set the same).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from monai_jdt.scoring.allocator import process_environment
from monai_jdt.scoring.errors import InvalidOptionError
from monai_jdt.scoring.folders import (
    CaseFailure,
    DirectoryResult,
    dataset_result,
    pair_cases,
    score_case,
)
from monai_jdt.scoring.options import DEFAULT_OPTIONS, ScoringOptions
from monai_jdt.scoring.report import CaseReport

__all__ = ["LOCAL", "connect", "score_case", "score_directory_dask"]

#: the ``--dask`` value that starts a ``LocalCluster`` on this machine
LOCAL = "local"


def connect(address: str, workers: int | None = None) -> tuple[Any, Any]:
    """``(client, cluster)``: a client of the scheduler at ``address``, and no cluster; or,
    for ``"local"``, a new ``LocalCluster`` of ``workers`` single-threaded processes (default:
    the CPU count) with the allocator thresholds of :mod:`monai_jdt.scoring.allocator`, and
    its client. The caller closes both.

    Raises:
        InvalidOptionError: no scheduler answers at ``address`` (within Dask's connect
            timeout, ``distributed.comm.timeouts.connect``, 30 s by default).
    """
    import dask
    from distributed import Client, LocalCluster

    if address != LOCAL:
        try:
            return Client(address), None
        except OSError as err:  # distributed raises OSError when the connect times out
            raise InvalidOptionError(
                f"dask: no Dask scheduler answers at {address!r} ({err})."
            ) from None
    # Dask's nannies start their workers with MALLOC_TRIM_THRESHOLD_=65536 (its default
    # pre-spawn-environ); these processes are ours, so they start with ours instead
    spawn = {
        f"distributed.nanny.pre-spawn-environ.{k}": v for k, v in process_environment().items()
    }
    with dask.config.set(spawn):
        cluster = LocalCluster(
            n_workers=workers or os.cpu_count() or 1,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
        )
    return Client(cluster), cluster


def score_directory_dask(
    predictions: str | os.PathLike[str],
    references: str | os.PathLike[str],
    options: ScoringOptions = DEFAULT_OPTIONS,
    *,
    address: str = LOCAL,
    workers: int | None = None,
    worst_q: float = 10.0,
    progress: Callable[[CaseReport | CaseFailure], None] | None = None,
) -> DirectoryResult:
    """``score_directory`` with each case a task on the Dask scheduler at ``address``
    (``tcp://host:8786``), or on a new ``LocalCluster`` of ``workers`` processes (default:
    the CPU count) when ``address`` is ``"local"``.

    Raises:
        InvalidOptionError: a folder is missing or holds two files of one case, or no
            scheduler answers at ``address``.
    """
    from distributed import as_completed

    pairs, unpaired_preds, unpaired_refs = pair_cases(predictions, references)
    client, cluster = connect(address, workers)
    submitted = 0  # task keys stay unique across both passes

    def score(
        triples: list[tuple[str, Path, Path]],
        wider: ScoringOptions,
        each: Callable[[CaseReport | CaseFailure], None] | None,
    ) -> list[CaseReport | CaseFailure]:
        nonlocal submitted
        futures = []
        for case, pred, ref in triples:
            key = f"jdt-{case}-{submitted}"
            futures.append(client.submit(score_case, case, pred, ref, wider, key=key, pure=False))
            submitted += 1
        outcomes: list[CaseReport | CaseFailure] = []
        for future in as_completed(futures):
            outcomes.append(future.result())
            if each is not None:
                each(outcomes[-1])
        return outcomes

    try:
        unpaired = (unpaired_preds, unpaired_refs)
        return dataset_result(pairs, unpaired, options, score, worst_q, progress)
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
