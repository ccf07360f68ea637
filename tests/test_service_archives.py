"""The untrusted-archive corpus: each bad archive gets its 4xx code and leaves no files."""

from __future__ import annotations

import gzip
import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest

from jdt_service.archives import ArchiveError, unpack_archive

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
