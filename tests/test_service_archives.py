"""The untrusted-archive corpus: each bad archive gets its 4xx code and leaves no files."""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import nibabel as nib
import numpy as np
import pytest

from jdt_service import archives, zip_prefetch
from jdt_service.archives import (
    MAX_CASE_ID_BYTES,
    MEMBER_SLACK,
    ArchiveError,
    image_member_limit,
    nifti_member_limit,
    unpack_archive,
)
from monai_jdt.scoring.nifti import MAX_DATA_OFFSET

NII = b"\x5c\x01\x00\x00" + b"\x00" * 400  # bytes only: the archive layer never parses NIfTI


def _zip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _tar(members: list[tarfile.TarInfo | tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for m in members:
            if isinstance(m, tarfile.TarInfo):
                t.addfile(m)
            else:
                info = tarfile.TarInfo(m[0])
                info.size = len(m[1])
                t.addfile(info, io.BytesIO(m[1]))
    return buf.getvalue()


def _special(name: str, kind: bytes, target: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


def _zip_symlink() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        info = zipfile.ZipInfo("case1.nii")
        info.external_attr = (0o120777) << 16  # S_IFLNK
        z.writestr(info, "/etc/passwd")
    return buf.getvalue()


def _zip_lying_size() -> bytes:
    """A stored member whose local and central headers declare 10 bytes but hold 5000."""
    data = _zip({"case1.nii": b"A" * 5000})
    # patch the uncompressed size in both headers (offset 22 local, 24 central)
    blob = bytearray(data)
    local = blob.find(b"PK\x03\x04")
    central = blob.find(b"PK\x01\x02")
    blob[local + 22 : local + 26] = (10).to_bytes(4, "little")
    blob[central + 24 : central + 28] = (10).to_bytes(4, "little")
    return bytes(blob)


def _bomb() -> bytes:
    return _zip({"case1.nii": b"\x00" * 3_000_000})


def _tar_bomb() -> bytes:
    return _tar([("case1.nii", b"\x00" * 3_000_000)])


MAX_MEMBERS = 5
MAX_BYTES = 1_000_000

CORPUS: dict[str, tuple[bytes, int, str]] = {
    "zip_dotdot": (_zip({"../evil.nii": NII}), 422, "archive_unsafe_member"),
    "zip_absolute": (_zip({"/tmp/evil.nii": NII}), 422, "archive_unsafe_member"),
    "zip_drive": (_zip({"C:/evil.nii": NII}), 422, "archive_unsafe_member"),
    "zip_backslash": (_zip({"..\\evil.nii": NII}), 422, "archive_unsafe_member"),
    "zip_symlink": (_zip_symlink(), 422, "archive_unsafe_member"),
    "zip_nested": (_zip({"inner.zip": _zip({"a.nii": NII})}), 422, "archive_nested"),
    "zip_nested_tgz": (_zip({"x/inner.tar.gz": b"x"}), 422, "archive_nested"),
    "zip_too_many": (_zip({f"c{i}.nii": NII for i in range(6)}), 413, "archive_too_many_members"),
    "zip_bomb": (_bomb(), 413, "archive_too_large"),
    "zip_lying_size": (_zip_lying_size(), 422, "archive_"),
    "zip_duplicate": (_zip({"a/c1.nii": NII, "b/c1.nii.gz": NII}), 422, "archive_duplicate_case"),
    "zip_empty": (_zip({"readme.txt": b"hi"}), 422, "archive_empty"),
    "zip_detached_nhdr": (
        _zip({"c1.raw": b"\0" * 8, "c1.nhdr": b"NRRD0004\ndata file: c1.raw\n"}),
        422,
        "archive_detached_header",
    ),
    "tar_detached_mhd": (
        _tar([("c1.mhd", b"NDims = 3\nElementDataFile = /etc/passwd\n")]),
        422,
        "archive_detached_header",
    ),
    "zip_truncated": (_zip({"c1.nii": NII * 50})[:-40], 422, "archive_invalid"),
    "tar_dotdot": (_tar([("../../evil.nii", NII)]), 422, "archive_unsafe_member"),
    "tar_absolute": (_tar([("/etc/evil.nii", NII)]), 422, "archive_unsafe_member"),
    "tar_symlink": (
        _tar([_special("c1.nii", tarfile.SYMTYPE, "/etc")]),
        422,
        "archive_unsafe_member",
    ),
    "tar_hardlink": (
        _tar([_special("c1.nii", tarfile.LNKTYPE, "x")]),
        422,
        "archive_unsafe_member",
    ),
    "tar_chardev": (_tar([_special("c1.nii", tarfile.CHRTYPE)]), 422, "archive_unsafe_member"),
    "tar_fifo": (_tar([_special("c1.nii", tarfile.FIFOTYPE)]), 422, "archive_unsafe_member"),
    "tar_nested": (_tar([("inner.tgz", b"x")]), 422, "archive_nested"),
    "tar_too_many": (_tar([(f"c{i}.nii", NII) for i in range(6)]), 413, "archive_too_many_members"),
    "tar_bomb": (_tar_bomb(), 413, "archive_too_large"),
    "tar_duplicate": (_tar([("c1.nii", NII), ("d/c1.nii", NII)]), 422, "archive_duplicate_case"),
    "tar_truncated": (_tar([("c1.nii", bytes(range(256)) * 400)])[:-100], 422, "archive_invalid"),
    "gzip_not_tar": (gzip.compress(b"not a tar at all" * 100), 422, "archive_invalid"),
    # a file name holds 255 bytes: 240 ASCII characters, or 100 euro signs (300 bytes)
    "tar_long_case": (_tar([("c" * 240 + ".nii.gz", NII)]), 422, "archive_bad_case_id"),
    "zip_long_case": (_zip({"c" * 256 + ".nii": NII}), 422, "archive_bad_case_id"),
    "zip_long_utf8_case": (_zip({"\u20ac" * 100 + ".nii": NII}), 422, "archive_bad_case_id"),
    "plain_text": (b"hello world", 422, "archive_invalid"),
    "empty_file": (b"", 422, "archive_invalid"),
}


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_bad_archive_refused_without_leftovers(tmp_path: Path, name: str) -> None:
    data, status, code = CORPUS[name]
    src = tmp_path / "upload"
    src.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError) as info:
        unpack_archive(src, dest, field="predictions", max_members=MAX_MEMBERS, max_bytes=MAX_BYTES)
    assert info.value.status == status
    assert info.value.code.startswith(code)
    assert info.value.message.startswith("predictions: ")
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "upload"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_good_archive_flattens_by_case_id(tmp_path: Path, kind: str) -> None:
    members = {
        "set/c1.nii.gz": b"one",
        "set/sub/c2.nii": b"two",
        "set/c3.nrrd": b"three",
        "c4.MHA": b"four",
        "notes.txt": b"x",
        ".hid.nii": b"h",
    }
    data = _zip(members) if kind == "zip" else _tar(list(members.items()))
    src = tmp_path / "upload"
    src.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    out = unpack_archive(src, dest, field="f", max_members=len(members), max_bytes=MAX_BYTES)
    assert sorted(out.files) == ["c1", "c2", "c3", "c4"]
    assert out.files["c1"].read_bytes() == b"one" and out.files["c1"].name == "c1.nii.gz"
    assert out.files["c2"].read_bytes() == b"two" and out.files["c2"].name == "c2.nii"
    # every single-file volume format is kept, its ending in lower case
    assert out.files["c3"].read_bytes() == b"three" and out.files["c3"].name == "c3.nrrd"
    assert out.files["c4"].read_bytes() == b"four" and out.files["c4"].name == "c4.mha"
    assert out.total_bytes == 15
    assert out.skipped == 2
    assert sorted(p.name for p in dest.iterdir()) == ["c1.nii.gz", "c2.nii", "c3.nrrd", "c4.mha"]


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_the_longest_case_id_a_file_name_holds_is_kept(tmp_path: Path, kind: str) -> None:
    case = "\u00e9" * (MAX_CASE_ID_BYTES // 2) + "c" * (MAX_CASE_ID_BYTES % 2)  # 2 bytes each
    assert len(case.encode()) == MAX_CASE_ID_BYTES == 239
    members = {f"{case}.nii.gz": b"one"}
    data = _zip(members) if kind == "zip" else _tar(list(members.items()))
    src = tmp_path / "upload"
    src.write_bytes(data)
    (dest := tmp_path / "out").mkdir()
    out = unpack_archive(src, dest, field="f", max_members=1, max_bytes=MAX_BYTES)
    assert out.files[case].read_bytes() == b"one"


def _many_members(n: int = 8, size: int = 3 << 19) -> dict[str, bytes]:
    """``n`` members of 1.5 MiB of random bytes: more than one read chunk each, so the members
    of a zip are inflated on several threads with their chunks interleaved."""
    rng = np.random.default_rng(5)
    return {f"c{i}.nii": rng.integers(0, 256, size, dtype=np.uint8).tobytes() for i in range(n)}


def test_members_inflated_on_several_threads_are_byte_identical(tmp_path: Path) -> None:
    members = _many_members()
    src = tmp_path / "upload"
    src.write_bytes(_zip(members))
    dest = tmp_path / "out"
    dest.mkdir()
    out = unpack_archive(src, dest, field="f", max_members=len(members), max_bytes=64 << 20)
    assert {case: path.read_bytes() for case, path in out.files.items()} == {
        name.removesuffix(".nii"): data for name, data in members.items()
    }
    assert out.total_bytes == sum(len(d) for d in members.values())
    assert sorted(p.name for p in dest.iterdir()) == sorted(members)


def test_one_corrupt_member_among_many_refuses_the_archive_and_leaves_nothing(
    tmp_path: Path,
) -> None:
    members = _many_members()
    data = bytearray(_zip(members))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as z:
        info = z.getinfo("c5.nii")
    # flip a byte in the middle of member 5's compressed data: its CRC no longer matches
    data[info.header_offset + 30 + len(info.filename) + info.compress_size // 2] ^= 0xFF
    src = tmp_path / "upload"
    src.write_bytes(bytes(data))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError) as caught:
        unpack_archive(src, dest, field="f", max_members=len(members), max_bytes=64 << 20)
    assert caught.value.status == 422 and caught.value.code == "archive_invalid"
    assert list(dest.iterdir()) == []


# ------------------------------------------------------------------------------------------
# zip bombs: a kept raw NIfTI member is written no further than its own header declares

BOMB = 64 << 20  # inflated size of the bomb members (each deflates to about 64 KiB)
ROOM = MAX_DATA_OFFSET + MEMBER_SLACK  # what a member without a readable header may hold


def _zeros(n: int) -> Iterator[bytes]:
    chunk = bytes(1 << 22)
    for at in range(0, n, len(chunk)):
        yield chunk[: n - at]


def _zip_stream(name: str, parts: Iterable[bytes]) -> bytes:
    """A zip of one deflated member written in pieces (never held whole in memory)."""
    buf = io.BytesIO()
    z = zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED)
    with z, z.open(name, "w", force_zip64=True) as member:
        for part in parts:
            member.write(part)
    return buf.getvalue()


def _nifti_header(shape: tuple[int, ...], version: int = 1, endianness: str = "<") -> bytes:
    """A single-file NIfTI header of uint8 voxels, extension flag included."""
    kind = nib.Nifti1Header if version == 1 else nib.Nifti2Header
    header = kind(endianness=endianness)
    header.set_data_shape(shape)
    header.set_data_dtype(np.uint8)
    header["vox_offset"] = 352 if version == 1 else 544
    return header.binaryblock + b"\0" * 4


def _count_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes written to each file ``archives`` (and ``zip_prefetch``) create, recorded as
    they are written (a refused member's file is removed, so its size is measured here)."""
    sizes: list[int] = []
    real_open = open

    class Counting:
        def __init__(self, file: IO[bytes]) -> None:
            self.file = file
            self.index = len(sizes)
            sizes.append(0)

        def write(self, data: bytes) -> int:
            sizes[self.index] += len(data)
            return self.file.write(data)

        def __enter__(self) -> Counting:
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

    def counting_open(file: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        return Counting(handle) if "x" in mode or "w" in mode else handle

    monkeypatch.setattr(archives, "open", counting_open, raising=False)
    monkeypatch.setattr(zip_prefetch, "open", counting_open, raising=False)
    return sizes


def _refused(data: bytes, tmp_path: Path, **limits: Any) -> ArchiveError:
    src = tmp_path / "upload"
    src.write_bytes(data)
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ArchiveError) as caught:
        unpack_archive(src, dest, field="predictions", max_members=5, **limits)
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "upload"]
    return caught.value


@pytest.mark.parametrize(
    ("name", "header"),
    [
        ("case_000.nii", b""),  # zeros only: no NIfTI header at all
        ("case_000.nii.gz", b""),  # not gzip-compressed: the scorer would read it as raw
        ("case_000.nii", _nifti_header((64, 64, 64))),  # declares 256 KiB of voxels
        ("case_000.nii", _nifti_header((64, 64, 64), version=2)),
        ("case_000.nii", _nifti_header((64, 64, 64), endianness=">")),
    ],
)
def test_a_zip_bomb_member_is_refused_before_more_than_its_header_allows_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, header: bytes
) -> None:
    """The f04 bomb, smaller: a member of zeros that deflates 1000:1 and declares its true
    size, well within the archive limit: refused once past ``ROOM``, not after ``BOMB``."""
    data = _zip_stream(name, [header, *_zeros(BOMB)])
    assert len(data) < BOMB // 200
    sizes = _count_writes(monkeypatch)
    error = _refused(data, tmp_path, max_bytes=1 << 30)
    assert (error.status, error.code) == (413, "archive_too_large")
    assert error.message.startswith("predictions: case 'case_000")
    assert 0 < max(sizes) <= ROOM and sum(sizes) <= ROOM


def test_a_tar_bomb_member_is_refused_before_more_than_its_header_allows_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as t:
        info = tarfile.TarInfo("case_000.nii")
        info.size = BOMB
        t.addfile(info, io.BytesIO(bytes(BOMB)))
    sizes = _count_writes(monkeypatch)
    error = _refused(buf.getvalue(), tmp_path, max_bytes=1 << 30)
    assert (error.status, error.code) == (413, "archive_too_large")
    assert 0 < max(sizes) <= ROOM


def test_a_gzip_member_is_bounded_by_the_header_it_inflates_to(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``.nii.gz`` member that is a gzip stream of a 64³ header and 64 MiB of zeros,
    stored (level 0) so that the member itself is 64 MiB, deflating 1000:1 in the zip: it
    may hold about what its header declares, not the archive limit."""
    stored = gzip.compress(_nifti_header((64, 64, 64)) + bytes(BOMB), compresslevel=0)
    data = _zip_stream("case_000.nii.gz", [stored])
    assert len(data) < BOMB // 100
    sizes = _count_writes(monkeypatch)
    error = _refused(data, tmp_path, max_bytes=1 << 30)
    assert (error.status, error.code) == (413, "archive_too_large")
    assert 0 < max(sizes) <= ROOM + ROOM // 1000 + (1 << 20)


def test_a_sparse_tar_member_is_refused(tmp_path: Path) -> None:
    """A GNU sparse member's holes inflate on extraction without passing through the counted
    gzip stream (a 193-byte .tar.gz wrote 1 GiB)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", format=tarfile.GNU_FORMAT) as t:
        info = tarfile.TarInfo("case_000.nii")
        info.size = 0
        info.type = tarfile.GNUTYPE_SPARSE
        t.addfile(info)
    error = _refused(buf.getvalue(), tmp_path, max_bytes=1 << 30)
    assert (error.code, "sparse") == (error.code, "sparse") and "sparse" in error.message


def test_a_member_is_bounded_by_its_header_and_by_max_voxels(tmp_path: Path) -> None:
    """A header declaring 6 MiB of voxels (more than ``MAX_DATA_OFFSET``): the member may hold
    them plus ``MEMBER_SLACK``, not more; with ``max_voxels`` below its shape, the voxels are
    counted only up to ``max_voxels``."""
    shape = (128, 128, 384)
    header = _nifti_header(shape)
    voxels = bytes(int(np.prod(shape)))
    assert len(header) + len(voxels) > ROOM
    good = tmp_path / "good"
    good.mkdir()
    src = tmp_path / "good.zip"
    src.write_bytes(_zip({"c1.nii": header + voxels + bytes(MEMBER_SLACK)}))
    out = unpack_archive(src, good, field="f", max_members=5, max_bytes=1 << 30)
    assert out.files["c1"].stat().st_size == len(header) + len(voxels) + MEMBER_SLACK

    (tmp_path / "over").mkdir()
    over = _zip({"c1.nii": header + voxels + bytes(MEMBER_SLACK + 1)})
    assert _refused(over, tmp_path / "over", max_bytes=1 << 30).code == "archive_too_large"
    (tmp_path / "capped").mkdir()
    capped = _zip({"c1.nii": header + voxels})
    refused = _refused(capped, tmp_path / "capped", max_bytes=1 << 30, max_voxels=128**3)
    assert refused.code == "archive_too_large"


@pytest.mark.parametrize("name", ["case_000.mha", "case_000.NRRD"])
def test_an_image_member_is_bounded_by_max_voxels(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """An ``.nrrd`` / ``.mha`` member of zeros deflating 1000:1 was bounded only by the
    archive limit (64 GiB by default): it may now hold at most what a volume of
    ``max_voxels`` 8-byte voxels and its header take; one within that is kept."""
    max_voxels = 1 << 20
    limit = image_member_limit(max_voxels)
    assert limit == (1 << 16) + 8 * max_voxels + 8 * max_voxels // 1000 + MEMBER_SLACK
    data = _zip_stream(name, [b"ObjectType = Image\n", *_zeros(2 * limit)])
    sizes = _count_writes(monkeypatch)
    error = _refused(data, tmp_path, max_bytes=1 << 30, max_voxels=max_voxels)
    assert (error.status, error.code) == (413, "archive_too_large")
    assert f"at most {max_voxels} voxels" in error.message
    assert 0 < sum(sizes) <= limit
    monkeypatch.undo()
    (tmp_path / "fits").mkdir()
    src = tmp_path / "fits" / "upload"
    src.write_bytes(_zip({name: bytes(limit)}))
    (tmp_path / "fits" / "out").mkdir()
    out = unpack_archive(
        src, tmp_path / "fits" / "out", field="f", max_members=5, max_bytes=1 << 30,
        max_voxels=max_voxels,
    )  # fmt: skip
    assert out.files["case_000"].stat().st_size == limit


def test_compressed_and_other_volume_members_larger_than_the_room_are_kept(
    tmp_path: Path,
) -> None:
    """A gzip-compressed ``.nii.gz`` of incompressible voxels (a little larger than what its
    header declares), a ``.nrrd`` and a ``.mha`` larger than ``ROOM`` are kept as they are."""
    rng = np.random.default_rng(7)
    big = rng.integers(0, 256, ROOM + 1000, dtype=np.uint8).tobytes()
    shape = (len(big) // (64 * 64), 64, 64)
    nifti = _nifti_header(shape) + big[: int(np.prod(shape))]
    compressed = gzip.compress(nifti, compresslevel=1)
    assert len(compressed) > len(nifti) > ROOM
    members = {"c1.nii.gz": compressed, "c2.nrrd": big, "c3.mha": big}
    src = tmp_path / "upload"
    src.write_bytes(_zip(members))
    dest = tmp_path / "out"
    dest.mkdir()
    out = unpack_archive(src, dest, field="f", max_members=5, max_bytes=1 << 30)
    assert {p.name: p.read_bytes() for p in out.files.values()} == {
        "c1.nii.gz": members["c1.nii.gz"],
        "c2.nrrd": big,
        "c3.mha": big,
    }


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"", ROOM),
        (NII, ROOM),  # sizeof_hdr 348 but dim[0] = 0: declares nothing
        (_nifti_header((512, 512, 64)), 352 + 512 * 512 * 64 + MEMBER_SLACK),
        (_nifti_header((512, 512, 64), version=2), 544 + 512 * 512 * 64 + MEMBER_SLACK),
        (_nifti_header((512, 512, 64), endianness=">"), 352 + 512 * 512 * 64 + MEMBER_SLACK),
        (_nifti_header((32767,) * 7), None),  # 2**105 voxels: capped by max_voxels
    ],
)
def test_nifti_member_limit(head: bytes, expected: int | None) -> None:
    if expected is None:
        assert nifti_member_limit(head, None) > 1 << 100
        assert nifti_member_limit(head, 1000) == ROOM
    else:
        assert nifti_member_limit(head, None) == expected
    hostile = bytearray(_nifti_header((4, 4, 4)))
    struct.pack_into("<f", hostile, 108, float("inf"))  # vox_offset
    assert nifti_member_limit(bytes(hostile), None) == ROOM
    struct.pack_into("<f", hostile, 108, float(MAX_DATA_OFFSET + 16))  # past what is read
    assert nifti_member_limit(bytes(hostile), None) == ROOM
