"""A corpus of bad uploads: each gets a 4xx naming the problem, never a 500, never a leftover."""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jdt_service import Settings, create_app


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    temp = tmp_path_factory.mktemp("uploads")
    data = tmp_path_factory.mktemp("data")
    settings = Settings(device="cpu", temp_dir=temp, data_dir=data, max_voxels=10**7)
    with TestClient(create_app(settings)) as client:
        yield client, temp


def test_bad_pair_is_refused_with_its_code(service, bad_file_case, emptied) -> None:
    client, temp = service
    name, pred, ref, statuses, codes = bad_file_case
    r = client.post("/v1/scores", files={"prediction": ("p", pred), "reference": ("r", ref)})
    assert r.status_code in statuses, (name, r.status_code, r.text)
    detail = r.json()["detail"]
    assert detail["code"] in codes, (name, detail)
    assert len(detail["message"]) > 10
    # either order: the bad file as reference is refused as well
    r = client.post("/v1/scores", files={"prediction": ("p", ref), "reference": ("r", pred)})
    assert 400 <= r.status_code < 500, (name, r.status_code, r.text)
    assert emptied(Path(temp)) == []


def test_shape_mismatch_names_both_shapes(service, label_pair, nifti_bytes) -> None:
    client, _ = service
    pred, ref = label_pair((6, 5, 4))
    r = client.post(
        "/v1/scores",
        files={
            "prediction": ("p", nifti_bytes(pred[:, :, :3])),
            "reference": ("r", nifti_bytes(ref)),
        },
    )
    message = r.json()["detail"]["message"]
    assert "(6, 5, 3)" in message.replace("x", ", ") or "6, 5, 3" in message or "6x5x3" in message
    assert "4" in message


def test_float_values_read_as_labels_are_refused(service, label_pair, nifti_bytes) -> None:
    client, _ = service
    pred, ref = label_pair((6, 5, 4))
    floats = pred.astype(np.float32) + 0.5
    r = client.post(
        "/v1/scores",
        files={"prediction": ("p", nifti_bytes(floats)), "reference": ("r", nifti_bytes(ref))},
        data={"kind": "labels"},
    )
    assert r.status_code == 422 and r.json()["detail"]["code"] == "non_integer_labels"


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(draw=st.data(), gz=st.booleans())
def test_mutated_files_never_give_a_server_error(
    service, label_pair, nifti_bytes, emptied, draw: st.DataObject, gz: bool
) -> None:
    """Header bytes flipped, files cut anywhere, raw or gzip: always a 2xx or a 4xx."""
    client, temp = service
    pred, ref = label_pair((6, 5, 4), seed=2)
    raw = nifti_bytes(pred, gz=False)
    cut = draw.draw(st.integers(0, len(raw)), label="cut")
    flips = draw.draw(
        st.lists(st.tuples(st.integers(0, len(raw) - 1), st.integers(1, 255)), max_size=6),
        label="flips",
    )
    data = bytearray(raw[:cut])
    for offset, mask in flips:
        if offset < len(data):
            data[offset] ^= mask
    payload = gzip.compress(bytes(data)) if gz else bytes(data)
    r = client.post(
        "/v1/scores",
        files={"prediction": ("p", payload), "reference": ("r", nifti_bytes(ref))},
        data={"ignore_affine": "true"},
    )
    assert r.status_code == 200 or 400 <= r.status_code < 500, (r.status_code, r.text)
    if r.status_code != 200:
        assert set(r.json()["detail"]) == {"code", "message"}
    assert emptied(Path(temp)) == []


def gzip_bomb(shape: tuple[int, int, int]) -> bytes:
    """A valid .nii.gz of zeros: a few hundred kB that inflate to ``prod(shape)`` bytes."""
    header = nib.Nifti1Header()
    header.set_data_dtype(np.uint8)
    header.set_data_shape(shape)
    header["vox_offset"] = 352
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: gzip container
    parts = [z.compress(header.binaryblock + b"\x00" * 4)]
    zeros = bytes(1 << 20)
    for _ in range(int(np.prod(shape)) >> 20):
        parts.append(z.compress(zeros))
    return b"".join([*parts, z.flush()])


def test_gzip_bomb_is_refused_before_it_is_inflated(service, emptied) -> None:
    client, temp = service  # the service's voxel limit is 10**7
    bomb = gzip_bomb((512, 512, 128))  # 32 Mi voxels
    assert len(bomb) < 200_000
    r = client.post("/v1/scores", files={"prediction": ("p", bomb), "reference": ("r", bomb)})
    assert r.status_code == 413 and r.json()["detail"]["code"] == "volume_too_large"
    assert "33554432" in r.json()["detail"]["message"]
    assert emptied(Path(temp)) == []
