"""Scoring on a real ``dask.distributed.LocalCluster`` of 2 worker processes gives exactly the
single-process result: ``score_directory_dask``, ``score-dir --dask`` and the service's jobs."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from distributed import LocalCluster
from fastapi.testclient import TestClient

from jdt_service.app import create_app
from jdt_service.settings import Settings
from monai_jdt.cli import main
from monai_jdt.scoring import ScoringOptions, score_directory
from monai_jdt.scoring.cluster import score_directory_dask

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    with LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    ) as local:
        yield local


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory, case_files) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("dask")
    preds, refs = case_files(7, labels=5, seed=300)
    preds["case_003.nii.gz"] = b"garbage" * 100  # a failure travels back as well
    for name, files in (("preds", preds), ("refs", refs)):
        (base / name).mkdir()
        for file, data in files.items():
            (base / name / file).write_bytes(data)
    return base / "preds", base / "refs"


@pytest.fixture
def single_process(folders: tuple[Path, Path], strip_timing) -> Callable[..., dict[str, Any]]:
    """``single_process(**options)``: the one-process report of ``folders``, without timings."""

    def run(**options: Any) -> dict[str, Any]:
        result = score_directory(*folders, ScoringOptions(**options), workers=1)
        report: dict[str, Any] = strip_timing(result.to_dict())
        return report

    return run


def test_dask_cluster_matches_one_process(
    cluster: LocalCluster, folders: tuple[Path, Path], single_process, strip_timing
) -> None:
    options = ScoringOptions(include_background=True, metrics=("dice", "jaccard", "recall"))
    result = score_directory_dask(*folders, options, address=cluster.scheduler_address)
    assert len(result.reports) == 6 and [f.code for f in result.failures] == ["not_nifti"]
    expected = single_process(include_background=True, metrics=("dice", "jaccard", "recall"))
    assert strip_timing(result.to_dict()) == expected
    assert len({r.case_id for r in result.reports}) == 6


def test_cli_score_dir_dask_local(
    folders: tuple[Path, Path], tmp_path: Path, single_process, strip_timing
) -> None:
    out = tmp_path / "out.json"
    argv = [*map(str, folders), "--dask", "local", "--workers", "2", "--no-progress"]
    code = main(["score-dir", *argv, "-o", str(out)])
    assert code == 1  # one case failed
    assert strip_timing(json.loads(out.read_text())) == single_process()


def test_service_jobs_on_the_cluster(
    cluster: LocalCluster,
    folders: tuple[Path, Path],
    tmp_path: Path,
    single_process,
    archive_bytes,
    strip_timing,
) -> None:
    settings = Settings(
        device="cpu",
        temp_dir=tmp_path,
        data_dir=tmp_path / "data",
        dask_scheduler=cluster.scheduler_address,
    )
    preds = {p.name: p.read_bytes() for p in folders[0].iterdir()}
    refs = {p.name: p.read_bytes() for p in folders[1].iterdir()}
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/jobs",
            files={
                "predictions": ("p.zip", io.BytesIO(archive_bytes(preds)), "application/zip"),
                "references": ("r.tgz", io.BytesIO(archive_bytes(refs, "tar")), "application/gzip"),
            },
        )
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        for _ in range(1200):
            status = client.get(f"/v1/jobs/{job_id}").json()
            if status["status"] != "queued" and status["status"] != "running":
                break
            time.sleep(0.1)
        assert status["status"] == "done", status
        report = client.get(f"/v1/jobs/{job_id}/report").json()
    assert strip_timing(report) == single_process()


@pytest.mark.parametrize("empty", ["nan", "one"])
def test_dask_completes_the_label_set_as_one_process(
    cluster: LocalCluster, tmp_path: Path, strip_timing, lacking_label_folders, empty: str
) -> None:
    """A case lacking a label of the dataset got no row for it on the cluster: its means, n
    and counts differed from one process'."""
    folders = lacking_label_folders(tmp_path)
    options = ScoringOptions(empty=empty, metrics=("dice", "hd95", "nsd"))
    result = score_directory_dask(*folders, options, address=cluster.scheduler_address)
    expected = score_directory(*folders, options, workers=1)
    assert strip_timing(result.to_dict()) == strip_timing(expected.to_dict())
    assert result.summary["labels"][1]["cases"] == 2
    assert result.files == expected.files


def test_an_unreachable_scheduler_is_a_bad_option_not_an_internal_error(
    folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """It exited 3 ("internal error: OSError ...") for an address the user typed."""
    import dask

    preds, refs = folders
    with dask.config.set({"distributed.comm.timeouts.connect": "1s"}):
        status = main(["score-dir", str(preds), str(refs), "--dask", "tcp://127.0.0.1:1"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(
        "monai-jdt: error: [invalid_option] dask: no Dask scheduler answers at 'tcp://127.0.0.1:1'"
    ), err


def test_the_nnunet_summary_without_its_metrics_is_a_coded_error(
    folders: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    preds, refs = folders
    argv = ["score-dir", str(preds), str(refs), "--summary-format", "nnunet", "--metrics", "dice"]
    assert main(argv) == 2
    assert capsys.readouterr().err.startswith("monai-jdt: error: [invalid_option] --summary-format")
