"""``POST /v1/scores`` with ``overlays=true``: the compact volumes the web page draws.

Known answers are computed here with numpy by hand (flips for the orientation, strided slices
for the downsampling, means of coordinates for the centres), not with the code under test.
"""

from __future__ import annotations

import base64
import gzip
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient

from jdt_service import Settings, create_app
from jdt_service.overlays import OverlayRequest
from monai_jdt.scoring import score_files
from monai_jdt.scoring.nifti import inspect_nifti


@pytest.fixture
def client(tmp_path: Path) -> Iterator[TestClient]:
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    settings = Settings(device="cpu", temp_dir=uploads, data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        c.uploads = uploads  # type: ignore[attr-defined]
        yield c


def _volume(overlays: dict, name: str, dtype: str) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(overlays[name]))
    return np.frombuffer(raw, dtype=dtype).reshape(overlays["shape"])


def _pair() -> tuple[np.ndarray, np.ndarray]:
    ref = np.zeros((12, 10, 6), np.uint8)
    ref[2:8, 3:7, 1:5] = 1
    ref[9:11, 1:3, 2:4] = 2
    pred = ref.copy()
    pred[3:9, 3:7, 1:5][ref[3:9, 3:7, 1:5] == 0] = 1
    pred[9:11, 1:3, 2:3] = 0  # label 2 half missed: the worst label
    return pred, ref


@pytest.fixture
def post_pair(nifti_bytes):  # type: ignore[no-untyped-def]
    """``post_pair(client, pred, ref, ...)``: POST the pair as NIfTI uploads."""

    def _post(client: TestClient, pred, ref, affine, **extra) -> dict:
        files = {
            "prediction": ("p.nii.gz", nifti_bytes(pred, affine)),
            "reference": ("r.nii.gz", nifti_bytes(ref, affine)),
        }
        if "image" in extra:
            files["image"] = ("ct.nii.gz", nifti_bytes(extra.pop("image"), affine))
        r = client.post("/v1/scores", files=files, data={"overlays": "true", **extra})
        assert r.status_code == 200, r.text
        return r.json()

    return _post


def test_volumes_come_back_in_ras_order_with_the_spacing(
    client: TestClient, dice_f64, post_pair, emptied
) -> None:
    pred, ref = _pair()
    # axes 0 and 1 point Left and Posterior (LPS, as DICOM): RAS order flips both
    affine = np.diag([-0.8, -0.8, 2.5, 1.0])
    body = post_pair(client, pred, ref, affine)
    overlays = body["overlays"]
    assert overlays["shape"] == [12, 10, 6] and overlays["step"] == [1, 1, 1]
    np.testing.assert_allclose(overlays["spacing_mm"], [0.8, 0.8, 2.5], rtol=1e-6)
    dtype = overlays["label_dtype"]
    assert dtype == "uint8"
    np.testing.assert_array_equal(_volume(overlays, "reference", dtype), ref[::-1, ::-1, :])
    np.testing.assert_array_equal(_volume(overlays, "prediction", dtype), pred[::-1, ::-1, :])
    assert overlays["image"] is None
    dices = {label: dice_f64(pred, ref, label) for label in (1, 2)}
    assert overlays["worst_label"] == min(dices, key=dices.get) == 2
    flipped_ref, flipped_pred = ref[::-1, ::-1, :], pred[::-1, ::-1, :]
    for entry in overlays["centres"]:
        union = (flipped_ref == entry["label"]) | (flipped_pred == entry["label"])
        expected = [round(float(c.mean())) for c in np.nonzero(union)]
        assert entry["centre"] == expected
    assert emptied(client.uploads) == []  # type: ignore[attr-defined]
    # the answer is documented: it validates against the 200 schema of the OpenAPI document
    spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/scores"]["post"]
    schema = post["responses"]["200"]["content"]["application/json"]["schema"]
    jsonschema.validate(body, {"components": spec["components"], **schema})
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert {"overlays", "image"} <= set(form)


def test_large_volumes_are_downsampled_by_a_whole_step(client: TestClient, post_pair) -> None:
    ref = np.zeros((300, 20, 8), np.uint8)
    ref[100:200, 5:15, 2:6] = 3
    pred = np.roll(ref, 4, axis=0)
    overlays = post_pair(client, pred, ref, np.diag([0.5, 1.0, 3.0, 1.0]))["overlays"]
    assert overlays["step"] == [3, 1, 1] and overlays["shape"] == [100, 20, 8]
    np.testing.assert_allclose(overlays["spacing_mm"], [1.5, 1.0, 3.0], rtol=1e-6)
    np.testing.assert_array_equal(_volume(overlays, "reference", "uint8"), ref[::3])


def test_the_image_is_windowed_to_bytes(client: TestClient, post_pair) -> None:
    pred, ref = _pair()
    image = np.linspace(-1000, 1000, ref.size, dtype=np.float32).reshape(ref.shape, order="F")
    overlays = post_pair(client, pred, ref, np.eye(4), image=image)["overlays"]
    shown = _volume(overlays, "image", "uint8").astype(int)
    low, high = np.percentile(image, [1, 99])
    expected = np.clip((image.astype(np.float64) - low) * 255.0 / (high - low), 0, 255)
    assert np.abs(shown - expected.astype(np.uint8)).max() <= 1
    assert shown.min() == 0 and shown.max() == 255


def test_without_the_flag_there_are_no_overlays(client: TestClient, nifti_bytes) -> None:
    pred, ref = _pair()
    files = {
        "prediction": ("p.nii.gz", nifti_bytes(pred)),
        "reference": ("r.nii.gz", nifti_bytes(ref)),
    }
    assert "overlays" not in client.post("/v1/scores", files=files).json()
    r = client.post("/v1/scores", files=files, data={"overlays": "false"})
    assert r.status_code == 200 and "overlays" not in r.json()
    image = {"image": ("i.nii.gz", nifti_bytes(ref.astype(np.float32)))}
    for data in ({}, {"overlays": "false"}):  # an image is only drawn: without the flag, 422
        r = client.post("/v1/scores", files=files | image, data=data)
        assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option"
        assert "send overlays=true with it" in r.json()["detail"]["message"]


def test_bad_overlay_input_is_refused_with_a_named_error(
    client: TestClient, nifti_bytes, emptied
) -> None:
    pred, ref = _pair()
    files = {
        "prediction": ("p.nii.gz", nifti_bytes(pred)),
        "reference": ("r.nii.gz", nifti_bytes(ref)),
    }
    r = client.post("/v1/scores", files=files, data={"overlays": "maybe"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option"
    assert "overlays" in r.json()["detail"]["message"]
    small = {**files, "image": ("ct.nii.gz", nifti_bytes(np.zeros((4, 4, 4), np.float32)))}
    r = client.post("/v1/scores", files=small, data={"overlays": "true"})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "shape_mismatch"
    assert "image" in r.json()["detail"]["message"]
    junk = {**files, "image": ("ct.nii.gz", b"not an image at all" * 40)}
    r = client.post("/v1/scores", files=junk, data={"overlays": "true"})
    assert r.status_code == 415 and r.json()["detail"]["code"] == "not_nifti"
    assert emptied(client.uploads) == []  # type: ignore[attr-defined]


def test_region_rows_get_overlays_of_their_labels(client: TestClient, post_pair) -> None:
    """A region row has no label id: the worst label and the centres are the labels' only."""
    pred, ref = _pair()
    body = post_pair(client, pred, ref, np.eye(4), regions="both=1,2", metrics="dice,hd95")
    regions = [row for row in body["labels"] if row.get("region") == "both"]
    assert len(regions) == 1 and regions[0]["label"] is None
    both_ref, both_pred = ref > 0, pred > 0
    dice = 2 * (both_ref & both_pred).sum() / (both_ref.sum() + both_pred.sum())
    assert abs(regions[0]["dice"] - dice) < 1e-12
    overlays = body["overlays"]
    assert overlays["worst_label"] == 2
    assert [entry["label"] for entry in overlays["centres"]] == [1, 2]


def test_the_memory_estimate_bounds_the_rendering_and_counts_the_image(
    tmp_path: Path, write_nifti
) -> None:
    """``OverlayRequest.memory_bytes`` is an upper bound of what rendering allocates
    (``tracemalloc``), and a large float64 intensity image is part of it."""
    pred, ref = _pair()
    shape = (160, 150, 40)  # sampled with a step of 2 along the first two axes
    big_ref = np.zeros(shape, np.uint8)
    big_ref[: ref.shape[0], : ref.shape[1], : ref.shape[2]] = ref
    big_pred = np.zeros(shape, np.uint8)
    big_pred[: pred.shape[0], : pred.shape[1], : pred.shape[2]] = pred
    p = write_nifti(tmp_path / "p.nii.gz", big_pred)
    r = write_nifti(tmp_path / "r.nii.gz", big_ref)
    image = write_nifti(tmp_path / "ct.nii.gz", np.ones(shape, np.float64))
    report = score_files(p, r).to_dict()
    infos = (inspect_nifti(p), inspect_nifti(r))
    with_image = OverlayRequest(image, max_voxels=10**8)
    estimate = with_image.memory_bytes(*infos)
    assert estimate - OverlayRequest(None, 10**8).memory_bytes(*infos) >= 8 * big_ref.size
    with_image.render(p, r, report)  # warm-up: imports and caches are not the request's
    tracemalloc.start()
    try:
        with_image.render(p, r, report)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= estimate


def test_overlays_past_the_job_memory_limit_are_refused(tmp_path: Path, nifti_bytes) -> None:
    """The scoring of this pair streams in a few MiB; its float64 image does not fit."""
    image = np.ones((400, 400, 200), np.float64)  # 256 MB loaded, 0.3 MB uploaded
    files = {
        "prediction": ("p.nii.gz", nifti_bytes(np.zeros(image.shape, np.uint8))),
        "reference": ("r.nii.gz", nifti_bytes(np.zeros(image.shape, np.uint8))),
        "image": ("ct.nii.gz", nifti_bytes(image)),
    }
    settings = Settings(
        device="cpu", temp_dir=tmp_path, data_dir=tmp_path / "data", max_job_bytes=200 * 2**20
    )
    with TestClient(create_app(settings)) as c:
        pair = {k: v for k, v in files.items() if k != "image"}
        assert c.post("/v1/scores", files=pair).status_code == 200  # the scoring alone fits
        r = c.post("/v1/scores", files=files, data={"overlays": "true"})
        assert r.status_code == 413, r.text
        assert r.json()["detail"]["code"] == "job_too_large"


def test_large_label_ids_cost_no_memory_and_past_uint32_are_a_422(
    client: TestClient, nifti_bytes
) -> None:
    """A request of a few KB with one label id of 2**31 drew with arrays sized by the id
    (2 GiB); one past 2**32 - 1 left its request waiting until the timeout."""
    pred, ref = _pair()
    big = ref.astype(np.uint32)
    big[big == 2] = 2**31
    tracemalloc.start()
    try:
        r = client.post(
            "/v1/scores",
            files={
                "prediction": ("p.nii.gz", nifti_bytes(pred.astype(np.uint32))),
                "reference": ("r.nii.gz", nifti_bytes(big)),
            },
            data={"overlays": "true"},
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert r.status_code == 200, r.text
    centres = {c["label"]: c["centre"] for c in r.json()["overlays"]["centres"]}
    assert set(centres) == {1, 2, 2**31} and peak < 64 * 2**20
    huge = ref.astype(np.uint64)
    huge[huge == 2] = 2**40

    def uint64_file(volume: np.ndarray) -> bytes:
        image = nib.Nifti1Image(volume.astype(np.uint64), np.eye(4), dtype=np.uint64)
        return gzip.compress(bytes(image.to_bytes()))

    r = client.post(
        "/v1/scores",
        files={
            "prediction": ("p.nii.gz", uint64_file(pred)),
            "reference": ("r.nii.gz", uint64_file(huge)),
        },
        data={"overlays": "true"},
        timeout=30,
    )
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option"
    assert "2**32" in r.json()["detail"]["message"] or "4294967295" in r.json()["detail"]["message"]
