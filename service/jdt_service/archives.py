"""Unpack an untrusted ``.zip`` or ``.tar.gz`` of volume files into a flat folder of cases.

Every member is checked before a byte of it is written, and its bytes are counted while they
inflate, so an archive is refused with a 4xx :class:`ArchiveError` as soon as it breaks a rule:

* a path that escapes the folder (``..`` parts, absolute paths, drive letters, backslashes);
* anything but a regular file or a directory (symbolic and hard links, devices, FIFOs);
* a nested archive (``.zip``, ``.tar``, ``.tgz``, ``.tar.gz``, ...);
* more than ``max_members`` files;
* an uncompressed total above ``max_bytes``: the sizes the archive declares are summed first,
  and the bytes actually inflated are counted too (a zip may lie about its sizes; a tar's
  gzip stream is counted as a whole, headers included);
* a NIfTI member (``.nii``, or a ``.nii.gz`` that is not gzip-compressed: the scoring core
  tells the two apart by their first bytes) that inflates past what its own header declares:
  :func:`nifti_member_limit` bytes, at most the larger of the header's ``vox_offset`` plus
  voxels x bytes per voxel (the voxels counted up to ``max_voxels``) and
  ``MAX_DATA_OFFSET``, plus :data:`MEMBER_SLACK`. Writing stops there, so a member of zeros
  that deflates 1000:1 costs a few MiB of disk, not its declared size. A gzip ``.nii.gz`` is
  held to that bound of its inflated header (plus a thousandth); an ``.nrrd`` / ``.mha``
  member to what any volume the scoring core accepts may hold, :func:`image_member_limit`
  (a header of at most ``MAX_HEADER_BYTES``, ``max_voxels`` voxels of 8 bytes, a thousandth
  for compression, :data:`MEMBER_SLACK`);
* two files with the same case id (the name without its ending, folders ignored);
* a detached header (``.nhdr``, ``.mhd``): it names a separate data file, which the flat
  folder of renamed cases cannot keep next to it (and a header must not make the server read
  another file); such volumes are sent as ``.nrrd`` / ``.mha``, which hold their own data.

Kept are the single-file volume formats the scoring core reads (:data:`ARCHIVE_VOLUME_SUFFIXES`:
``.nii``, ``.nii.gz``, ``.nrrd``, ``.mha``; the ending matched in any letter case); other
files and hidden files (``.*``, ``__MACOSX/``) are skipped. The kept files land in ``dest`` as
``<case id><ending>`` (the ending in lower case), so :func:`monai_jdt.scoring.pair_cases` pairs
two such folders as ``score-dir`` does; their headers are checked when they are scored (an
``.nrrd`` / ``.mha`` whose header points to another file is refused then). On any
error ``dest`` is emptied before the exception leaves, so a refused archive leaves no files.
Client file names are only ever used as case ids, never as paths. The members of a zip that
:mod:`jdt_service.zip_prefetch` inflated while the upload arrived are used where the central
directory describes them exactly, after the same checks (prefetched files that are not used are
removed before anything is extracted, so the files of one archive never hold more than
``max_bytes`` together).
"""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import tarfile
import threading
import zipfile
import zlib
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, BinaryIO

from jdt_service.errors import ApiError
from jdt_service.forms import MAX_CASE_ID
from monai_jdt.scoring.errors import ScoringError
from monai_jdt.scoring.files import NIFTI_SUFFIXES, VOLUME_SUFFIXES
from monai_jdt.scoring.nifti import MAX_DATA_OFFSET, declared_layout, file_ending
from monai_jdt.scoring.sitk_formats import MAX_HEADER_BYTES, SITK_SUFFIXES

if TYPE_CHECKING:  # zip_prefetch applies this module's rules, so it imports this module
    from jdt_service.zip_prefetch import Prefetched

__all__ = [
    "ARCHIVE_SUFFIXES",
    "ARCHIVE_VOLUME_SUFFIXES",
    "MAX_CASE_ID_BYTES",
    "MEMBER_SLACK",
    "ArchiveError",
    "MemberLimit",
    "UnpackedArchive",
    "image_member_limit",
    "kept_member",
    "nifti_member_limit",
    "unpack_archive",
]

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tgz", ".tar.gz", ".tbz2", ".tar.bz2", ".tar.xz", ".7z")
#: detached headers (their data is another file), refused in archives
DETACHED_SUFFIXES = (".nhdr", ".mhd")
#: the volume endings kept from an archive: every one the scoring core reads but the detached
ARCHIVE_VOLUME_SUFFIXES = tuple(s for s in VOLUME_SUFFIXES if s not in DETACHED_SUFFIXES)
_KINDS = ", ".join(ARCHIVE_VOLUME_SUFFIXES)
#: a member is written as ``.partial-<case id><ending>`` first, and a file name holds 255
#: bytes on Linux's file systems: the case ids of archives are held to what fits
_PARTIAL = ".partial-"
MAX_CASE_ID_BYTES = 255 - len(_PARTIAL) - max(len(s) for s in ARCHIVE_VOLUME_SUFFIXES)
_CHUNK = 1024 * 1024
#: threads that inflate the members of a zip at once
_UNPACK_THREADS = 2
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_GZIP_MAGIC = b"\x1f\x8b"
#: bytes a raw NIfTI member may hold past the end its header declares (or past
#: ``MAX_DATA_OFFSET`` when that is larger, or when the member has no readable header)
MEMBER_SLACK = 1 << 20
#: the bytes that hold a NIfTI-1 or NIfTI-2 header and its extension flag
_NIFTI_HEAD = 544
#: bytes of the widest pixel the scoring core reads from NRRD / MetaImage (float64, int64)
_WIDEST_PIXEL = 8


class ArchiveError(ApiError):
    """An archive broke one of the rules; ``status`` is 413 for limits, 422 otherwise."""

    def __init__(self, field: str, status: int, code: str, message: str) -> None:
        super().__init__(status, code, f"{field}: {message}")
        self.field = field


@dataclass(frozen=True)
class UnpackedArchive:
    """What an archive held: ``files`` (case id -> path in ``dest``) and the bytes written."""

    files: dict[str, Path]
    total_bytes: int
    skipped: int


class _Budget:
    """Counts members and inflated bytes against the limits (not thread-safe: see _Writer)."""

    def __init__(self, field: str, max_members: int, max_bytes: int) -> None:
        self.field = field
        self.max_members = max_members
        self.max_bytes = max_bytes
        self.members = 0
        self.declared = 0
        self.written = 0

    def too_large(self, what: str) -> ArchiveError:
        return ArchiveError(
            self.field,
            413,
            "archive_too_large",
            f"the {what} uncompressed size is above the limit of {self.max_bytes} bytes",
        )

    def member(self, declared_size: int) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise ArchiveError(
                self.field,
                413,
                "archive_too_many_members",
                f"the archive holds more than {self.max_members} files",
            )
        self.declared += max(declared_size, 0)
        if self.declared > self.max_bytes:
            raise self.too_large("declared")

    def write(self, n: int) -> None:
        self.written += n
        if self.written > self.max_bytes:
            raise self.too_large("actual")


class _CountingReader:
    """A read-only stream that raises once more than ``limit`` bytes came out of ``raw``."""

    def __init__(self, raw: gzip.GzipFile, budget: _Budget, limit: int) -> None:
        self.raw = raw
        self.budget = budget
        self.limit = limit
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(_CHUNK if n is None or n < 0 else n)
        self.count += len(data)
        if self.count > self.limit:
            raise self.budget.too_large("actual")
        return data


def _unsafe(field: str, message: str) -> ArchiveError:
    return ArchiveError(field, 422, "archive_unsafe_member", message)


def nifti_member_limit(head: bytes, max_voxels: int | None) -> int:
    """The most bytes a raw (uncompressed) NIfTI member starting with ``head`` (its first
    ``_NIFTI_HEAD`` bytes, or all of it when shorter) may hold: the end of the voxel data its
    header declares (:func:`monai_jdt.scoring.nifti.declared_layout`, the voxels counted up
    to ``max_voxels`` when given), at least ``MAX_DATA_OFFSET``, plus :data:`MEMBER_SLACK`.
    A header the scoring core refuses declares nothing."""
    try:
        offset, voxels, itemsize = declared_layout(head, "member")
    except ScoringError:
        data_end = 0
    else:
        data_end = offset + min(voxels, max_voxels or voxels) * itemsize
    return max(data_end, MAX_DATA_OFFSET) + MEMBER_SLACK


def image_member_limit(max_voxels: int) -> int:
    """The most bytes an ``.nrrd`` / ``.mha`` member may hold: its header (at most
    ``MAX_HEADER_BYTES``) and ``max_voxels`` voxels (channels included) of the widest pixel
    the scoring core reads (8 bytes: float64, int64), raw or compressed (a thousandth more),
    plus :data:`MEMBER_SLACK`. A larger file declares more voxels than ``max_voxels`` or holds
    more than its header declares, and is refused when scored anyway."""
    data = max_voxels * _WIDEST_PIXEL
    return MAX_HEADER_BYTES + data + data // 1000 + MEMBER_SLACK


class MemberLimit:
    """Counts the bytes of one kept member as they inflate, and refuses (413
    ``archive_too_large``) as soon as a NIfTI member is past what its header declares:
    :func:`nifti_member_limit` bytes for a raw one; for a gzip-compressed one, that bound
    of its inflated header plus a thousandth (deflate stores incompressible data with a few
    bytes per 64 KiB block; a gzip stream is never much larger than what it holds); an
    ``.nrrd`` / ``.mha`` member past :func:`image_member_limit`.

    ``name`` is the member's file name in ``dest`` (``<case id><ending>``); without
    ``max_voxels`` an ``.nrrd`` / ``.mha`` member is only counted (``max_bytes`` bounds it).
    """

    def __init__(self, field: str, name: str, max_voxels: int | None) -> None:
        self.field = field
        self.name = name
        self.max_voxels = max_voxels
        self.count = 0
        self.limit: int | None = None
        self._head = b""  # the first bytes as stored, then (gzip) as inflated
        self._inflater: Any = None  # a zlib decompressor once the member shows gzip's magic
        # may be raw NIfTI (a .nii.gz member is read as raw when it is not gzip-compressed)
        self._decided = file_ending(name, NIFTI_SUFFIXES) is None
        if file_ending(name, SITK_SUFFIXES) is not None and max_voxels is not None:
            self.limit = image_member_limit(max_voxels)

    def add(self, data: bytes) -> None:
        """Count ``data``, the next bytes of the member; raise once it is past the limit."""
        self.count += len(data)
        if not self._decided:
            self._take(data)
        self._check()

    def end(self) -> None:
        """The member is complete (one shorter than a header is decided and checked now)."""
        if not self._decided:
            self._decide()
        self._check()

    def check_file(self, path: Path, size: int) -> None:
        """Check a member already written to ``path`` (``size`` bytes) as if it inflated."""
        with open(path, "rb") as handle:
            while not self._decided and (chunk := handle.read(_NIFTI_HEAD)):
                self.add(chunk)
        self.count = size
        self.end()

    def _take(self, data: bytes) -> None:
        """Collect the header: the first ``_NIFTI_HEAD`` bytes, inflated for a gzip member
        (whose header is decided on what its first ``MAX_DATA_OFFSET`` bytes inflate to)."""
        if self._inflater is None:
            taken = _NIFTI_HEAD - len(self._head)
            self._head, rest = self._head + data[:taken], data[taken:]
            if len(self._head) < len(_GZIP_MAGIC):
                return
            if not self._head.startswith(_GZIP_MAGIC):
                if len(self._head) >= _NIFTI_HEAD:
                    self._decide()
                return
            self._inflater = zlib.decompressobj(wbits=31)
            data, self._head = self._head + rest, b""
        try:
            self._head += self._inflater.decompress(data, _NIFTI_HEAD - len(self._head))
        except zlib.error:
            self._head = b""  # not a gzip stream: no header, the smallest bound
            self._decide()
            return
        if len(self._head) >= _NIFTI_HEAD or self.count >= MAX_DATA_OFFSET:
            self._decide()

    def _decide(self) -> None:
        self._decided = True
        limit = nifti_member_limit(self._head, self.max_voxels)
        self.limit = limit if self._inflater is None else limit + limit // 1000

    def _check(self) -> None:
        if self.limit is not None and self.count > self.limit:
            raise ArchiveError(
                self.field,
                413,
                "archive_too_large",
                f"case {self.name!r} holds more than {self.limit} bytes, "
                + (
                    "more than its NIfTI header declares (vox_offset + voxels x bytes per "
                    f"voxel, at least {MAX_DATA_OFFSET}, plus {MEMBER_SLACK})"
                    if file_ending(self.name, SITK_SUFFIXES) is None
                    else f"more than a volume of at most {self.max_voxels} voxels holds"
                ),
            )


def kept_member(field: str, name: str, member_number: int) -> tuple[str, str] | None:
    """``(case id, ending)`` of a member path, None when the member is skipped; raise when
    unsafe (the rules of this module's docstring)."""
    where = f"member {member_number}"
    if "\\" in name or "\x00" in name:
        raise _unsafe(field, f"{where} has a backslash or NUL in its path")
    path = PurePosixPath(name)
    if path.is_absolute() or (path.parts and ":" in path.parts[0]):
        raise _unsafe(field, f"{where} has an absolute path")
    if ".." in path.parts:
        raise _unsafe(field, f"{where} has a path that leaves the archive's folder ('..')")
    if any(part.startswith(".") or part == "__MACOSX" for part in path.parts):
        return None
    lower = path.name.lower()
    if lower.endswith(ARCHIVE_SUFFIXES):
        raise ArchiveError(
            field, 422, "archive_nested", f"{where} is itself an archive; send one flat archive"
        )
    if lower.endswith(DETACHED_SUFFIXES):
        raise ArchiveError(
            field,
            422,
            "archive_detached_header",
            f"{where} is a detached header (.nhdr / .mhd) whose data is a separate file; "
            "send each volume as one file (.nrrd or .mha hold their own data)",
        )
    suffix = file_ending(path.name, ARCHIVE_VOLUME_SUFFIXES)
    if suffix is None:
        return None
    case = path.name[: -len(suffix)]
    if (
        not case
        or len(case) > MAX_CASE_ID
        or len(os.fsencode(case)) > MAX_CASE_ID_BYTES
        or not case.isprintable()
    ):
        raise ArchiveError(
            field,
            422,
            "archive_bad_case_id",
            f"{where}: a case id must be 1 to {MAX_CASE_ID} printable characters and at most "
            f"{MAX_CASE_ID_BYTES} bytes in UTF-8 (a file name of the server's)",
        )
    return case, suffix


class _Writer:
    """Writes kept members into ``dest`` under their case ids, refusing duplicates.

    :meth:`claim` (in member order, one thread) reserves a case's file name; :meth:`write`
    may then run on several threads at once (the budget is shared under a lock).
    """

    def __init__(
        self, field: str, dest: Path, budget: _Budget, max_voxels: int | None = None
    ) -> None:
        self.field = field
        self.dest = dest
        self.budget = budget
        self.max_voxels = max_voxels
        self.files: dict[str, Path] = {}
        self.skipped = 0
        self._lock = threading.Lock()

    def claim(self, case: str, suffix: str) -> Path:
        """The file ``case`` will be written to; raise if the case came before."""
        if case in self.files:
            raise ArchiveError(
                self.field,
                422,
                "archive_duplicate_case",
                f"case {case!r} appears twice in the archive",
            )
        final = self.files[case] = self.dest / f"{case}{suffix}"
        return final

    def write(self, final: Path, source: IO[bytes], declared: int) -> None:
        """Copy ``source`` to ``final`` (through a hidden partial file: no case id starts with
        a dot), counting its bytes against the budget, its declared size and its
        :class:`MemberLimit` before each chunk is written."""
        limit = MemberLimit(self.field, final.name, self.max_voxels)
        target = final.with_name(f"{_PARTIAL}{final.name}")
        with open(target, "xb") as out:
            size = 0
            while chunk := source.read(_CHUNK):
                size += len(chunk)
                with self._lock:
                    self.budget.write(len(chunk))
                if size > declared:
                    raise _unsafe(
                        self.field, f"case {final.name!r} is longer than its declared size"
                    )
                limit.add(chunk)
                out.write(chunk)
            limit.end()
        target.rename(final)

    def adopt(self, final: Path, path: Path, size: int) -> None:
        """Move a member inflated and checked beforehand (``size`` bytes) to ``final``, once
        its :class:`MemberLimit` is checked again."""
        MemberLimit(self.field, final.name, self.max_voxels).check_file(path, size)
        with self._lock:
            self.budget.write(size)
        path.rename(final)


def _matches(info: zipfile.ZipInfo, member: Prefetched) -> bool:
    """Whether the central directory describes exactly the member prefetched at its offset."""
    return (
        member.name,
        member.flags,
        member.method,
        member.compressed_size,
        member.size,
        member.crc,
    ) == (
        info.orig_filename,
        info.flag_bits,
        info.compress_type,
        info.compress_size,
        info.file_size,
        info.CRC,
    )


def _listed(
    writer: _Writer, budget: _Budget, name: str, size: int, number: int
) -> tuple[str, str] | None:
    """One regular member as its archive lists it: its declared size counted, its
    ``(case id, ending)`` or None when skipped (and counted as skipped); raises when unsafe."""
    kept = kept_member(writer.field, name, number)
    budget.member(size)
    if kept is None:
        writer.skipped += 1
    return kept


def _unpack_zip(
    handle: BinaryIO, writer: _Writer, budget: _Budget, prefetched: Mapping[int, Prefetched]
) -> None:
    """Check every member from the central directory first, then take the ones prefetched
    while the upload arrived (:mod:`jdt_service.zip_prefetch`) when the directory describes
    them exactly, and inflate the others on ``_UNPACK_THREADS`` threads (reading, CRC checks
    and writing release the GIL; zipfile serialises the reads of one archive)."""
    field = writer.field
    try:
        with zipfile.ZipFile(handle) as archive:
            plan: list[tuple[zipfile.ZipInfo, Path]] = []
            for number, info in enumerate(archive.infolist(), 1):
                mode = info.external_attr >> 16
                if info.is_dir():
                    continue
                if stat.S_IFMT(mode) not in (0, stat.S_IFREG):  # 0: no Unix mode recorded
                    raise _unsafe(field, f"member {number} is a link or a special file")
                kept = _listed(writer, budget, info.filename, info.file_size, number)
                if kept is None:
                    continue
                if info.flag_bits & 0x1:
                    raise ArchiveError(
                        field, 422, "archive_invalid", f"member {number} is encrypted"
                    )
                plan.append((info, writer.claim(*kept)))

            # a prefetched file is taken (once) where the directory describes it exactly; the
            # others (skipped or unlisted members, or not what the directory says) are dropped
            # before anything is extracted, so the files on disk stay within the declared sizes
            unused: dict[int, Prefetched] = {}
            for info, _ in plan:
                member = prefetched.get(info.header_offset)
                if member is not None and _matches(info, member):
                    unused.setdefault(info.header_offset, member)
            for offset, member in prefetched.items():
                if unused.get(offset) is not member:
                    member.path.unlink(missing_ok=True)

            def extract(info: zipfile.ZipInfo, final: Path) -> None:
                member = unused.pop(info.header_offset, None)
                if member is not None:
                    writer.adopt(final, member.path, member.size)
                    return
                with archive.open(info) as source:
                    writer.write(final, source, info.file_size)

            with ThreadPoolExecutor(_UNPACK_THREADS, thread_name_prefix="jdt-unzip") as pool:
                futures = [pool.submit(extract, info, final) for info, final in plan]
                try:
                    for future in futures:
                        future.result()
                finally:  # on an error, members not started are dropped; the others end first
                    for future in futures:
                        future.cancel()
    finally:  # prefetched files nothing took (refused first, or an error) go at once
        for member in prefetched.values():
            member.path.unlink(missing_ok=True)


def _unpack_tar(handle: BinaryIO, writer: _Writer, budget: _Budget) -> None:
    field = writer.field
    # the whole inflated stream (headers, padding, pax records) is counted, not only members
    stream = _CountingReader(gzip.GzipFile(fileobj=handle), budget, budget.max_bytes + _CHUNK)
    with tarfile.open(fileobj=stream, mode="r|") as archive:  # type: ignore[call-overload]
        for number, info in enumerate(archive, 1):
            if info.isdir():
                continue
            if not info.isreg():
                raise _unsafe(field, f"member {number} is a link or a special file")
            if info.issparse():  # its holes would inflate without passing the counted stream
                raise _unsafe(field, f"member {number} is a sparse file")
            kept = _listed(writer, budget, info.name, info.size, number)
            if kept is None:
                continue
            final = writer.claim(*kept)
            source = archive.extractfile(info)
            assert source is not None  # a regular file always has data
            writer.write(final, source, info.size)


@contextmanager
def _empty_on_error(dest: Path) -> Iterator[None]:
    try:
        yield
    except BaseException:
        for child in dest.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child, ignore_errors=True)
            else:
                child.unlink(missing_ok=True)
        raise


def unpack_archive(
    archive: Path,
    dest: Path,
    *,
    field: str,
    max_members: int,
    max_bytes: int,
    prefetched: Mapping[int, Prefetched] | None = None,
    max_voxels: int | None = None,
) -> UnpackedArchive:
    """Unpack ``archive`` (zip or tar.gz, told apart by their first bytes) into ``dest``.

    ``dest`` must exist and be empty. ``field`` names the upload in error messages.
    ``prefetched``: the zip members a :class:`~jdt_service.zip_prefetch.ZipPrefetch` inflated
    while the archive arrived, by header offset (each is used only where the central
    directory describes it exactly; the checks are the same either way). ``max_voxels``: the
    voxels counted at most per raw NIfTI member when bounding its size (see
    :class:`MemberLimit`; without it, the header's own voxel count).

    Raises:
        ArchiveError: 422 ``archive_invalid`` (not a zip / tar.gz, corrupt, encrypted),
            ``archive_unsafe_member``, ``archive_nested``, ``archive_duplicate_case``,
            ``archive_bad_case_id``, ``archive_detached_header``, ``archive_empty``; 413
            ``archive_too_many_members``, ``archive_too_large`` (the total, or one raw NIfTI
            member past :func:`nifti_member_limit`).
    """
    budget = _Budget(field, max_members, max_bytes)
    writer = _Writer(field, dest, budget, max_voxels)
    with _empty_on_error(dest), open(archive, "rb") as handle:
        head = handle.read(4)
        handle.seek(0)
        try:
            if head in (_ZIP_MAGIC, _EMPTY_ZIP_MAGIC):
                _unpack_zip(handle, writer, budget, prefetched or {})
            elif head[:2] == _GZIP_MAGIC:
                _unpack_tar(handle, writer, budget)
            else:
                raise ArchiveError(
                    field, 422, "archive_invalid", "expected a .zip or a .tar.gz archive"
                )
        except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as e:
            raise ArchiveError(
                field, 422, "archive_invalid", f"the archive is corrupt or truncated ({e})"
            ) from None
        except NotImplementedError as exc:  # e.g. an unsupported zip compression method
            raise ArchiveError(field, 422, "archive_invalid", str(exc)) from None
        if not writer.files:
            raise ArchiveError(
                field, 422, "archive_empty", f"the archive holds no volume file ({_KINDS})"
            )
    return UnpackedArchive(writer.files, budget.written, writer.skipped)
