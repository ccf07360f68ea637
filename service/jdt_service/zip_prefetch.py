"""Inflate the members of a zip while the archive is still arriving.

A zip's central directory, which says what the archive holds, comes last, so
:func:`jdt_service.archives.unpack_archive` can only start once the whole upload is on disk.
But each member is preceded by a *local header* with its name, method, sizes and CRC-32, so a
:class:`ZipPrefetch` thread follows the upload as it is written and inflates each member into a
hidden file of the upload folder as soon as its bytes are there, checking its CRC and size.

Only members that :func:`jdt_service.archives.unpack_archive` would keep are inflated: the
rules of :mod:`jdt_service.archives` are applied to each local header's name first, a member
that would be skipped (another ending, a hidden file, a folder) is stepped over without
inflating a byte, and the thread stops at a member for which the archive would be refused
(an unsafe path, a nested archive, a detached header, a bad case id), or once the members or
their declared sizes are past the archive limits. A kept member is written at most up to its
declared size and to its :class:`~jdt_service.archives.MemberLimit` (a raw NIfTI member no
further than its own header declares); past either the thread removes it and stops.

Nothing it writes is trusted: once the upload is complete, ``unpack_archive`` reads the central
directory with :mod:`zipfile` and checks every member as before; a member is *adopted* (its
prefetched file renamed into place) only if the central directory describes exactly what was
prefetched: the same header offset, name, flags, method, compressed and uncompressed sizes and
CRC-32. Those fix the bytes zipfile would read and check, so the adopted file is the one
zipfile would have written; every other member is extracted by zipfile as usual. The thread
stops following (and leaves the rest to zipfile) at the first member it cannot stream: sizes
in a data descriptor after the data (flag bit 3), encryption, zip64 sizes, a method other than
stored or deflated, more members or bytes than the archive limits allow, a member the archive
would be refused for, or anything that does not parse.
"""

from __future__ import annotations

import itertools
import struct
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from jdt_service.archives import ArchiveError, MemberLimit, kept_member
from jdt_service.uploads import GrowingFile

__all__ = ["Prefetched", "ZipPrefetch"]

_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # the 30-byte local file header
_LOCAL_MAGIC = b"PK\x03\x04"
_STORED, _DEFLATED = 0, 8
_UNSTREAMABLE_FLAGS = 0x1 | 0x8 | 0x40  # encrypted, data descriptor, strong encryption
_ZIP64 = 0xFFFFFFFF
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Prefetched:
    """One member inflated from its local header: what must match the central directory."""

    name: str
    flags: int
    method: int
    compressed_size: int
    size: int
    crc: int
    path: Path


class _Stop(Exception):
    """The follower cannot or must not go on."""


class ZipPrefetch:
    """Follows one growing upload (see the module); :attr:`members` by header offset."""

    def __init__(
        self,
        upload: GrowingFile,
        workdir: Path,
        max_members: int,
        max_bytes: int,
        max_voxels: int | None = None,
    ) -> None:
        """Start following ``upload``, writing into ``workdir`` as ``.prefetch-<upload file
        name>-<offset>``; the limits are those given to ``unpack_archive``."""
        self.upload = upload
        self.workdir = workdir
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.max_voxels = max_voxels
        self.members: dict[int, Prefetched] = {}
        self._cancelled = threading.Event()
        self._thread = threading.Thread(target=self._run, name="jdt-zip-prefetch", daemon=True)
        self._thread.start()

    def finish(self) -> dict[int, Prefetched]:
        """Wait until the follower has read what arrived; the members it prefetched."""
        self._thread.join()
        return self.members

    def cancel(self) -> None:
        """Stop following (the upload was refused) and wait for the thread."""
        self._cancelled.set()
        self.upload.end()
        self._thread.join()

    def _run(self) -> None:
        try:
            with open(self.upload.path, "rb") as handle:
                self._follow(handle)
        except (_Stop, ArchiveError, OSError, zlib.error, UnicodeDecodeError, struct.error):
            pass  # zipfile does the rest after the upload

    def _read(self, handle: BinaryIO, offset: int, n: int) -> bytes:
        """``n`` bytes at ``offset`` once they are on disk."""
        if self.upload.wait_for(offset + n) < offset + n or self._cancelled.is_set():
            raise _Stop
        handle.seek(offset)
        data = handle.read(n)
        if len(data) != n:
            raise _Stop
        return data

    def _follow(self, handle: BinaryIO) -> None:
        offset = declared = files = 0
        for number in itertools.count(1):
            head = self._read(handle, offset, _LOCAL.size)
            magic, _, flags, method, _, _, crc, packed, size, name_len, extra_len = _LOCAL.unpack(
                head
            )
            declared += size  # skipped members count too, as in unpack_archive
            if (
                magic != _LOCAL_MAGIC
                or flags & _UNSTREAMABLE_FLAGS
                or method not in (_STORED, _DEFLATED)
                or _ZIP64 in (packed, size)
                or declared > self.max_bytes
            ):
                return
            raw_name = self._read(handle, offset + _LOCAL.size, name_len)
            name = raw_name.decode("utf-8" if flags & 0x800 else "cp437")
            start = offset + _LOCAL.size + name_len + extra_len
            if not name.endswith("/"):  # a folder is neither counted nor kept
                files += 1
                if files > self.max_members:
                    return
                kept = kept_member("", name, number)  # raises where the archive is refused
                if kept is not None:
                    case, suffix = kept
                    limit = MemberLimit("", f"{case}{suffix}", self.max_voxels)
                    target = self.workdir / f".prefetch-{self.upload.path.name}-{offset}"
                    self._inflate(handle, start, packed, size, crc, method, target, limit)
                    self.members[offset] = Prefetched(
                        name, flags, method, packed, size, crc, target
                    )
            offset = start + packed  # a skipped member's data is stepped over, not read

    def _inflate(
        self,
        handle: BinaryIO,
        start: int,
        packed: int,
        size: int,
        crc: int,
        method: int,
        target: Path,
        limit: MemberLimit,
    ) -> None:
        """Write the member's ``size`` bytes to ``target``; raise :class:`_Stop` (removing
        it) unless they inflate to exactly ``size`` bytes with CRC-32 ``crc``, or
        :class:`~jdt_service.archives.ArchiveError` once they are past ``limit``. Each piece
        is checked before it is written, and inflated at most ``_CHUNK`` bytes at a time."""
        inflater = zlib.decompressobj(-15) if method == _DEFLATED else None
        written = check = 0
        out = open(target, "xb")  # noqa: SIM115 (closed below; raises if the name is taken)

        def put(piece: bytes) -> None:
            nonlocal written, check
            written += len(piece)
            if written > size:
                raise _Stop
            limit.add(piece)
            check = zlib.crc32(piece, check)
            out.write(piece)

        try:
            with out:
                for at in range(start, start + packed, _CHUNK):
                    data = self._read(handle, at, min(_CHUNK, start + packed - at))
                    if inflater is None:
                        put(data)
                        continue
                    while data:
                        put(inflater.decompress(data, _CHUNK))
                        data = inflater.unconsumed_tail
                if inflater is not None:
                    put(inflater.flush())
                    if not inflater.eof:
                        raise _Stop
                limit.end()
            if written != size or check != crc:
                raise _Stop
        except BaseException:
            target.unlink(missing_ok=True)
            raise
