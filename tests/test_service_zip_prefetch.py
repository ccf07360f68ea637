"""Zip members inflated while the upload arrives (``jdt_service.zip_prefetch``).

The known answer is always what :mod:`zipfile` extracts from the complete archive: a
prefetched member is used only where the central directory describes it exactly, so the
unpacked files must be the same whatever the follower did.
"""

from __future__ import annotations

import io
import struct
import threading
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jdt_service import archives, zip_prefetch
from jdt_service.archives import MEMBER_SLACK, ArchiveError, unpack_archive
from jdt_service.uploads import GrowingFile
from jdt_service.zip_prefetch import ZipPrefetch
from monai_jdt.scoring.nifti import MAX_DATA_OFFSET

MAX_BYTES = 64 << 20


def _members() -> dict[str, bytes]:
    rng = np.random.default_rng(3)
    return {
        "c0.nii.gz": rng.integers(0, 256, 3 << 19, dtype=np.uint8).tobytes(),  # > 1 read chunk
        "sub/c1.nii": bytes(200_000),  # compresses to almost nothing
        "c2.nii": b"",
        "notes.txt": b"skipped",
    }


def _zip(members: dict[str, bytes], method: int, streamed: bool = False) -> bytes:
    """``streamed``: written to a pipe-like stream, so zipfile puts each member's sizes and
    CRC in a data descriptor after its data (flag bit 3)."""
    buf = io.BytesIO()

    class Unseekable(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b) -> int:  # type: ignore[no-untyped-def, override]
            return buf.write(b)

    with zipfile.ZipFile(Unseekable() if streamed else buf, "w", method) as z:  # type: ignore[arg-type]
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def _arrive(data: bytes, workdir: Path, chunk: int = 100_000) -> tuple[Path, ZipPrefetch]:
    """Write ``data`` to an upload file in chunks on another thread while a ZipPrefetch
    follows it, as the service's multipart writer does; the file and the finished follower."""
    path = workdir / "predictions.upload"
    out = open(path, "xb", buffering=0)  # noqa: SIM115 (closed by the writer) created first,
    growing = GrowingFile(path)  # as the multipart writer does
    follower = ZipPrefetch(growing, workdir, max_members=100, max_bytes=MAX_BYTES)

    def write() -> None:
        with out:
            for at in range(0, len(data), chunk):
                out.write(data[at : at + chunk])
                growing.grow(len(data[at : at + chunk]))
        growing.end()

    writer = threading.Thread(target=write)
    writer.start()
    writer.join()
    follower.finish()
    return path, follower


def _unpack(archive: Path, dest: Path, follower: ZipPrefetch | None) -> dict[str, bytes]:
    dest.mkdir()
    out = unpack_archive(
        archive,
        dest,
        field="predictions",
        max_members=100,
        max_bytes=MAX_BYTES,
        prefetched=None if follower is None else follower.members,
    )
    return {case: path.read_bytes() for case, path in out.files.items()}


def _count_adoptions(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The prefetched files ``unpack_archive`` adopts, recorded as it adopts them."""
    adopted: list[Path] = []
    adopt = archives._Writer.adopt

    def recording(self: archives._Writer, final: Path, path: Path, size: int) -> None:
        adopted.append(path)
        adopt(self, final, path, size)

    monkeypatch.setattr(archives._Writer, "adopt", recording)
    return adopted


def _expected() -> dict[str, bytes]:
    return {"c0": _members()["c0.nii.gz"], "c1": bytes(200_000), "c2": b""}


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_followed_members_are_adopted_and_equal_zipfiles_extraction(
    tmp_path: Path, method: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _zip(_members(), method)
    archive, follower = _arrive(data, tmp_path)
    assert len(follower.members) == 3  # every kept member was followed (notes.txt is not)
    adopted = _count_adoptions(monkeypatch)
    assert _unpack(archive, tmp_path / "out", follower) == _expected()
    assert len(adopted) == 3  # the kept members were moved, not inflated again
    assert list(tmp_path.glob(".prefetch-*")) == []


def test_members_with_a_data_descriptor_are_left_to_zipfile(tmp_path: Path) -> None:
    data = _zip(_members(), zipfile.ZIP_DEFLATED, streamed=True)
    archive, follower = _arrive(data, tmp_path)
    assert follower.members == {}  # sizes come after the data: not streamable
    assert _unpack(archive, tmp_path / "out", follower) == _expected()


@pytest.mark.parametrize("field_offset", [14, 18, 22])  # the local CRC, packed and full sizes
def test_a_local_header_that_disagrees_with_the_directory_is_not_adopted(
    tmp_path: Path, field_offset: int
) -> None:
    """A zip whose first local header lies (its CRC or sizes differ from the central
    directory's): whatever the follower made of it, the result is zipfile's."""
    data = bytearray(_zip(_members(), zipfile.ZIP_STORED))
    (value,) = struct.unpack_from("<I", data, field_offset)
    struct.pack_into("<I", data, field_offset, value ^ 0x1)
    archive, follower = _arrive(bytes(data), tmp_path)
    assert 0 not in follower.members
    assert _unpack(archive, tmp_path / "out", follower) == _expected()


def test_a_local_name_that_disagrees_is_refused_as_zipfile_refuses_it(tmp_path: Path) -> None:
    data = bytearray(_zip({"c0.nii": b"abc", "c1.nii": b"def"}, zipfile.ZIP_STORED))
    at = data.index(b"c0.nii")  # the first occurrence: member 0's local header
    data[at : at + 2] = b"c9"
    archive, follower = _arrive(bytes(data), tmp_path)
    with pytest.raises(ArchiveError) as caught:
        _unpack(archive, tmp_path / "out", follower)
    assert caught.value.code == "archive_invalid"  # "File name in directory and header differ"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_member_that_inflates_past_its_size_is_not_written(tmp_path: Path) -> None:
    """A deflated member whose local (and central) size is smaller than what it inflates to:
    the follower stops at the size, and zipfile refuses the archive."""
    data = bytearray(_zip({"c0.nii": bytes(1 << 20)}, zipfile.ZIP_DEFLATED))
    for header in (b"PK\x03\x04", b"PK\x01\x02"):
        at = data.index(header)
        size_at = at + (22 if header == b"PK\x03\x04" else 24)
        struct.pack_into("<I", data, size_at, 1000)  # claims 1000 bytes
    archive, follower = _arrive(bytes(data), tmp_path)
    assert follower.members == {} and list(tmp_path.glob(".prefetch-*")) == []
    with pytest.raises(ArchiveError):
        _unpack(archive, tmp_path / "out", follower)
    assert list((tmp_path / "out").iterdir()) == []


def test_cancel_releases_a_follower_waiting_for_bytes(tmp_path: Path) -> None:
    path = tmp_path / "predictions.upload"
    path.write_bytes(_zip(_members(), zipfile.ZIP_STORED)[:1000])  # stuck inside member 0
    growing = GrowingFile(path)
    growing.grow(1000)
    follower = ZipPrefetch(growing, tmp_path, max_members=100, max_bytes=MAX_BYTES)
    follower.cancel()  # returns: the thread was released and has ended
    assert follower.members == {}
    assert list(tmp_path.glob(".prefetch-*")) == []


def test_a_prefetched_member_the_directory_describes_otherwise_is_extracted_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Member 0's local flags differ from the directory's (bit 11, harmless for an ASCII
    name): the follower takes it, but it is not adopted, and zipfile extracts it instead."""
    data = bytearray(_zip(_members(), zipfile.ZIP_STORED))
    struct.pack_into("<H", data, 6, 0x800)
    archive, follower = _arrive(bytes(data), tmp_path)
    assert 0 in follower.members
    adopted = _count_adoptions(monkeypatch)
    assert _unpack(archive, tmp_path / "out", follower) == _expected()
    assert len(adopted) == len(follower.members) - 1  # not member 0
    assert list(tmp_path.glob(".prefetch-*")) == []  # member 0's prefetch was dropped


# ------------------------------------------------------------------------------------------
# only kept members are inflated, each no further than its header allows

BOMB = 64 << 20
ROOM = MAX_DATA_OFFSET + MEMBER_SLACK  # what a member without a readable header may hold


def _deflated(members: dict[str, int | bytes]) -> bytes:
    """A deflated zip whose ``int`` members are that many zeros, written in pieces."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, content in members.items():
            if isinstance(content, bytes):
                z.writestr(name, content)
                continue
            with z.open(name, "w") as member:  # below 4 GiB: no zip64 sizes, so followed
                for at in range(0, content, 1 << 22):
                    member.write(bytes(min(1 << 22, content - at)))
    return buf.getvalue()


def _prefetch_writes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The bytes ``zip_prefetch`` writes to each file it creates."""
    sizes: list[int] = []
    real_open = open

    def counting_open(file: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        if "x" not in mode and "w" not in mode:
            return handle
        index = len(sizes)
        sizes.append(0)
        write = handle.write

        def counted(data: bytes) -> int:
            sizes[index] += len(data)
            return write(data)

        handle.write = counted
        return handle

    monkeypatch.setattr(zip_prefetch, "open", counting_open, raising=False)
    return sizes


def test_skipped_members_are_stepped_over_not_inflated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """f04b: a large ``notes.txt`` and a hidden file are never inflated; the volume after
    them still is, and is adopted."""
    # the declared sizes stay within MAX_BYTES, so the follower goes on after them
    skipped = {"notes.txt": BOMB // 3, "__MACOSX/._c0.nii": BOMB // 3}
    data = _deflated({**skipped, "c0.nii": b"abc" * 1000})
    sizes = _prefetch_writes(monkeypatch)
    archive, follower = _arrive(data, tmp_path)
    assert [m.name for m in follower.members.values()] == ["c0.nii"]
    assert sizes == [3000]  # one file, c0.nii's bytes only
    assert _unpack(archive, tmp_path / "out", follower) == {"c0": b"abc" * 1000}


def test_the_follower_stops_at_a_member_the_archive_is_refused_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """f04b: a skipped bomb then a nested archive: nothing is written before the archive is
    refused, and the volume after the nested archive is not followed either."""
    nested = b"PK\x05\x06" + bytes(18)
    data = _deflated({"notes.txt": BOMB // 2, "inner.zip": nested, "c1.nii": BOMB // 4})
    sizes = _prefetch_writes(monkeypatch)
    archive, follower = _arrive(data, tmp_path)
    assert follower.members == {} and sizes == []
    with pytest.raises(ArchiveError) as caught:
        _unpack(archive, tmp_path / "out", follower)
    assert caught.value.code == "archive_nested"
    assert list((tmp_path / "out").iterdir()) == []


def test_a_bomb_member_is_not_prefetched_past_its_header_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kept ``.nii`` of zeros whose local header declares its true 64 MiB: the follower
    stops writing at ``ROOM`` and removes its file; the archive is then refused (413)."""
    data = _deflated({"case_000.nii": BOMB})
    sizes = _prefetch_writes(monkeypatch)
    archive, follower = _arrive(data, tmp_path)
    assert follower.members == {} and list(tmp_path.glob(".prefetch-*")) == []
    assert len(sizes) == 1 and 0 < sizes[0] <= ROOM
    with pytest.raises(ArchiveError) as caught:
        _unpack(archive, tmp_path / "out", follower)
    assert (caught.value.status, caught.value.code) == (413, "archive_too_large")
    assert list((tmp_path / "out").iterdir()) == []


def test_the_follower_stops_at_the_archive_limits(tmp_path: Path) -> None:
    """Declared sizes are summed over every member, skipped ones too, as unpack_archive
    sums them: past ``max_bytes`` nothing more is followed."""
    data = _deflated({"notes.txt": MAX_BYTES - 10, "c0.nii": b"x" * 100})
    _, follower = _arrive(data, tmp_path)
    assert follower.members == {}
