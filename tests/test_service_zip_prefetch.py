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

import numpy as np
import pytest

from jdt_service import archives
from jdt_service.archives import ArchiveError, unpack_archive
from jdt_service.uploads import GrowingFile
from jdt_service.zip_prefetch import ZipPrefetch

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
    assert len(follower.members) == 4  # every local header was followed
    adopted = _count_adoptions(monkeypatch)
    assert _unpack(archive, tmp_path / "out", follower) == _expected()
    assert len(adopted) == 3  # the kept members were moved, not inflated again
    assert list(tmp_path.glob(".prefetch-*")) == []  # the skipped one's was removed


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
    assert len(adopted) == len(follower.members) - 2  # not member 0, not the skipped notes
    assert list(tmp_path.glob(".prefetch-*")) == []  # member 0's prefetch was dropped
