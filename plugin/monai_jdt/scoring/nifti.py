"""NIfTI files: header inspection before any decompression, then fast streaming of the data.

``inspect_nifti`` reads (and for ``.nii.gz`` inflates) only the header and its extensions, so
a file that is not NIfTI, declares an empty shape, a data offset inside the header, or more
voxels than allowed is refused before its data is decompressed. ``iter_voxel_chunks`` then
inflates the data chunk by chunk (with ``isal``, a dependency, ~3-4x faster than ``zlib``, the
fallback where isal is missing), and ``load_nifti`` fills one preallocated array. Single-file
NIfTI-1 (``n+1``) and NIfTI-2 (``n+2``), either byte order, raw or gzip-compressed (also
multi-member gzip, and gzip followed by NUL padding, as ``gzip`` reads them) are read.

Hostile files are bounded: the data must start within ``MAX_DATA_OFFSET`` bytes (header plus
extensions), the gzip stream may hold at most ``MAX_TRAILER_BYTES`` after the voxel block, and a
header declaring more data than its gzip stream can inflate to (deflate expands at most
``_DEFLATE_MAX_RATIO`` times) is refused before any allocation.
"""

from __future__ import annotations

import importlib
import io
import logging
import math
import os
import stat
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from types import ModuleType

import nibabel as nib
import numpy as np

from monai_jdt.scoring.errors import (
    CorruptFileError,
    NotNiftiError,
    UnsupportedDataTypeError,
    VolumeTooLargeError,
)

__all__ = [
    "MAX_DATA_OFFSET",
    "MAX_TRAILER_BYTES",
    "HeaderInfo",
    "NiftiInfo",
    "check_regular_file",
    "declared_layout",
    "file_ending",
    "inspect_nifti",
    "iter_voxel_chunks",
    "load_nifti",
    "zlib_backend",
]

#: the data must start within this many bytes: the header and its extensions (a few kB in
#: practice); a larger ``vox_offset`` is refused rather than inflated and skipped
MAX_DATA_OFFSET = 4 << 20
#: inflated bytes allowed after the voxel block of a ``.nii.gz`` (a NIfTI has nothing there);
#: more is refused instead of being inflated for the CRC check
MAX_TRAILER_BYTES = 1 << 16

_GZIP_MAGIC = b"\x1f\x8b"
_READ_BYTES = 1 << 16  # compressed bytes per step: a small unconsumed tail to copy per call
_SKIP_BYTES = 1 << 18  # inflated bytes per step when skipping (discarded)
# deflate emits at most 258 bytes per 2 bits of input, so a gzip stream of n bytes inflates to
# at most ~1032 n bytes; the slack covers the headers of small streams
_DEFLATE_MAX_RATIO = 1032
_DEFLATE_SLACK = 1 << 16
# header size, bytes up to the end of the 4 extension-flag bytes, magic and its position
_HEADERS = {
    348: (nib.Nifti1Header, 352, 344, b"n+1\x00", 1),
    540: (nib.Nifti2Header, 544, 4, b"n+2\x00", 2),
}
#: compressions nibabel also reads (.nii.bz2, .nii.zst) that are refused here, by magic
_OTHER_COMPRESSION = ((b"BZh", "bzip2"), (b"\x28\xb5\x2f\xfd", "zstd"))
_UNIT_TO_MM = {1: 1000.0, 2: 1.0, 3: 1e-3}  # NIFTI_UNITS_METER, _MM, _MICRON
#: where nibabel's header repairs are reported: nowhere (each is applied silently, as nibabel's
#: own load does at its default log level)
_NIBABEL_REPAIRS = logging.getLogger("monai_jdt.scoring.nibabel_repairs")
_NIBABEL_REPAIRS.addHandler(logging.NullHandler())
_NIBABEL_REPAIRS.propagate = False


def _import_fast_zlib() -> ModuleType | None:
    """isal's inflate, a drop-in several times faster than zlib, or None where it is missing."""
    try:
        return importlib.import_module("isal.isal_zlib")
    except ImportError:  # pragma: no cover - isal is a dependency; a platform may lack wheels
        return None


_fast_zlib = _import_fast_zlib()


def zlib_backend() -> ModuleType:
    """The inflate implementation in use: ``isal.isal_zlib`` when installed, else ``zlib``."""
    return _fast_zlib if _fast_zlib is not None else zlib


_INFLATE_ERRORS: tuple[type[BaseException], ...] = (zlib.error,) + (
    (_fast_zlib.error,) if _fast_zlib is not None else ()
)


@dataclass(frozen=True)
class HeaderInfo:
    """The fields every volume header declares (``NiftiInfo``, and ``ImageInfo`` of
    ``monai_jdt.scoring.sitk_formats``); their attributes document them."""

    path: str
    shape: tuple[int, ...]
    dtype: np.dtype
    voxels: int
    affine: np.ndarray
    spacing: tuple[float, ...] | None
    #: what a reader of the scores should know about where ``spacing`` came from (e.g. a
    #: NIfTI sform whose voxel sizes differ from pixdim), or None
    spacing_note: str | None = field(default=None, kw_only=True)

    @property
    def data_bytes(self) -> int:
        """Size of the data (stored, or decoded for ``ImageInfo``) in bytes."""
        return self.voxels * self.dtype.itemsize

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        """The first (up to) three axes."""
        return self.shape[:3]


@dataclass(frozen=True)
class NiftiInfo(HeaderInfo):
    """What a NIfTI header declares.

    Attributes:
        path: the file.
        shape: the data shape as stored, e.g. ``(X, Y, Z)`` or ``(X, Y, Z, C)``.
        dtype: the stored dtype, with its byte order.
        voxels: ``prod(shape)``.
        affine: ``[4, 4]`` voxel-to-world matrix (sform, else qform: nibabel's ``img.affine``)
            converted from the header's ``xyzt_units`` to mm; NaN when the header gives none
            that is valid (then ``affine_problem`` says why).
        spacing: voxel size in mm along the (up to 3) spatial axes (see ``_spacing``), or
            None when the header gives none that is finite and not 0.
        is_gzip: the file is gzip-compressed.
        offset: where the data starts in the (inflated) stream, in bytes.
        slope, inter: the scaling ``value = stored * slope + inter`` (1 and 0 when none; as
            in nibabel and the NIfTI standard, a zero or non-finite slope means none).
        version: 1 or 2.
        affine_problem: why the header has no valid affine (e.g. an invalid quaternion), or
            None. Only matters when the affines are compared.
    """

    is_gzip: bool
    offset: int
    slope: float
    inter: float
    version: int
    affine_problem: str | None = None

    @property
    def scaled(self) -> bool:
        """True when the stored values are rescaled on reading."""
        return (self.slope, self.inter) != (1.0, 0.0)


def _name(path: str | os.PathLike[str]) -> str:
    return Path(path).name


def check_regular_file(path: str | os.PathLike[str]) -> None:
    """Refuse what is not a regular file (after links) before it is opened: opening a FIFO
    blocks until something writes to it, and a device or a folder is no volume.

    Raises:
        NotNiftiError: no such file, or not a regular file.
    """
    name = _name(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise NotNiftiError(f"{name}: no such file.") from None
    except OSError as err:
        raise NotNiftiError(f"{name}: cannot be read ({err.strerror}).") from None
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "a FIFO, socket or device"
        raise NotNiftiError(f"{name}: not a regular file ({kind}).")


def file_ending(name: str, endings: tuple[str, ...]) -> str | None:
    """The first of ``endings`` (lower case, e.g. ``".nii.gz"``) that the file name ``name``
    ends with, in any case (``CASE1.NII.GZ`` ends with ``.nii.gz``, as nibabel reads it);
    ``None`` when it ends with none."""
    lower = name.lower()
    return next((ending for ending in endings if lower.endswith(ending)), None)


def _check_name(name: str, is_gzip: bool) -> None:
    """The file name must say what the file holds, as nibabel requires (it picks its reader
    from the name): ``.nii.gz`` for gzip-compressed NIfTI, ``.nii`` for uncompressed (any
    case).

    Raises:
        NotNiftiError: another ending, or one that contradicts the content.
    """
    lower = name.lower()
    if lower.endswith(".nii.gz") and not is_gzip:
        raise NotNiftiError(
            f"{name}: named .nii.gz but not gzip-compressed; rename it to .nii (nibabel "
            "refuses it under this name)."
        )
    if lower.endswith(".nii") and is_gzip:
        raise NotNiftiError(
            f"{name}: named .nii but gzip-compressed; rename it to .nii.gz (nibabel refuses "
            "it under this name)."
        )
    if not lower.endswith((".nii", ".nii.gz")):
        raise NotNiftiError(
            f"{name}: not a NIfTI file name; expected a name ending in .nii or .nii.gz."
        )


class _Stream:
    """The bytes of a file in order, inflated when it is gzip-compressed.

    Several gzip members are read one after the other; NUL bytes between or after members are
    skipped (as ``gzip`` and nibabel do).
    """

    def __init__(self, handle: io.BufferedReader, is_gzip: bool, name: str) -> None:
        self._handle, self._name = handle, name
        self._backend = zlib_backend() if is_gzip else None
        self._inflater = self._backend.decompressobj(31) if self._backend is not None else None

    def _next_member(self) -> bytes:
        """The compressed bytes after a finished member, NUL padding skipped; b"" at the end."""
        assert self._inflater is not None
        data = self._inflater.unused_data
        while True:
            data = data.lstrip(b"\x00")
            if data:
                return data
            data = self._handle.read(_READ_BYTES)
            if not data:
                return b""

    def read(self, n: int) -> bytes:
        """At most ``n`` bytes (at least one unless at the end), b"" at the end.

        Raises:
            CorruptFileError: the gzip stream is corrupt or ends inside a member.
        """
        if self._backend is None or self._inflater is None:
            return self._handle.read(n)
        while True:
            if self._inflater.eof:  # end of a gzip member: another one may follow
                data = self._next_member()
                if not data:
                    return b""
                self._inflater = self._backend.decompressobj(31)
            else:
                data = self._inflater.unconsumed_tail or self._handle.read(_READ_BYTES)
                if not data:
                    raise CorruptFileError(
                        f"{self._name}: the gzip stream ends early; the file is truncated."
                    )
            try:
                out = self._inflater.decompress(data, n)
            except _INFLATE_ERRORS as err:
                raise CorruptFileError(
                    f"{self._name}: the gzip stream is corrupt ({err})."
                ) from err
            if out:
                return out

    def read_exactly(self, n: int) -> bytes:
        """``n`` bytes, or fewer when the stream ends first."""
        parts, got = [], 0
        while got < n:
            part = self.read(n - got)
            if not part:
                break
            parts.append(part)
            got += len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def skip(self, n: int) -> int:
        """Discard ``n`` bytes (memory stays flat); the number actually skipped (a raw file is
        seeked, its size having been checked against the header)."""
        if self._inflater is None:
            self._handle.seek(n, io.SEEK_CUR)
            return n
        got = 0
        while got < n:
            part = self.read(min(n - got, _SKIP_BYTES))
            if not part:
                break
            got += len(part)
        return got

    def finish(self, allowed: int) -> None:
        """Read to the end, so that the gzip CRCs are checked, allowing ``allowed`` bytes.

        Raises:
            CorruptFileError: more than ``allowed`` bytes remain (or the stream is corrupt).
        """
        left = allowed
        while part := self.read(min(left + 1, _READ_BYTES)):
            left -= len(part)
            if left < 0:
                raise CorruptFileError(
                    f"{self._name}: the gzip stream goes on after the voxel data (more than "
                    f"{allowed} bytes); a NIfTI file ends with its data."
                )


def _parse_header(block: bytes, name: str) -> tuple[nib.Nifti1Header, int]:
    """The header in ``block`` and the offset of the first byte after its extension flag.

    The header is found as nibabel finds it: NIfTI-1 by its magic (``n+1`` or ``ni1`` at byte
    344) alone, whatever ``sizeof_hdr`` holds (nibabel repairs it); else NIfTI-2 by a
    ``sizeof_hdr`` of 540 in either byte order. The byte order is nibabel's guess
    (``guessed_endian``: native when ``dim[0]`` reads 1 to 7 natively). A header of a
    ``.hdr``/``.img`` pair (``ni1``, ``ni2``) is read from a single file as nibabel reads it,
    from ``vox_offset`` (``_data_offset`` refuses one whose data is elsewhere).

    Raises:
        NotNiftiError: no NIfTI-1/NIfTI-2 header, or the wrong magic.
        CorruptFileError: the header is truncated.
    """
    if len(block) < 4:
        raise NotNiftiError(f"{name}: not a NIfTI file (only {len(block)} bytes).")
    sizes = {struct.unpack(order, block[:4])[0] for order in ("<i", ">i")}
    if block[344:348] in (b"n+1\x00", b"ni1\x00"):
        size = 348
    elif 540 in sizes or 348 in sizes:
        size = 540 if 540 in sizes else 348
    else:
        packed = next((kind for magic, kind in _OTHER_COMPRESSION if block.startswith(magic)), None)
        raise NotNiftiError(
            f"{name}: not a NIfTI file (no NIfTI-1/NIfTI-2 header; expected a .nii or .nii.gz)."
            if packed is None
            else f"{name}: {packed}-compressed; only gzip is read (.nii.gz): decompress it, "
            "or recompress it with gzip."
        )
    header_class, end, magic_at, magic, _ = _HEADERS[size]
    if len(block) < size:
        raise CorruptFileError(f"{name}: the NIfTI header is truncated ({len(block)} bytes).")
    found = block[magic_at : magic_at + 4]
    if found not in (magic, magic.replace(b"+", b"i")):
        raise NotNiftiError(f"{name}: not a NIfTI file (magic {found!r}, expected {magic!r}).")
    return header_class(binaryblock=block[:size], check=False), end


def _shape(header: nib.Nifti1Header, name: str) -> tuple[int, ...]:
    """``dim[1..dim[0]]`` as nibabel reads it, FreeSurfer's two conventions included (a
    vector longer than a NIfTI-1 ``dim`` holds: ``dim[1] = -1`` and its length in ``glmin``;
    the ico7 surface stored as 27307 x 1 x 6); refuses ``dim[0]`` outside 1..7 and
    dimensions below 1."""
    dims = [int(d) for d in header["dim"]]
    if not 1 <= dims[0] <= 7:
        raise CorruptFileError(
            f"{name}: the header's dim[0] (number of dimensions) is {dims[0]}; expected 1 to 7."
        )
    try:
        shape = tuple(int(s) for s in header.get_data_shape())
    except nib.spatialimages.HeaderDataError as err:  # dim[1] = -1 with glmin 0
        raise CorruptFileError(f"{name}: nibabel refuses this header ({err}).") from err
    if any(s < 1 for s in shape):
        raise CorruptFileError(
            f"{name}: the header declares the shape {shape}; every dimension must be >= 1."
        )
    return shape


def _data_offset(header: nib.Nifti1Header, header_end: int, name: str) -> int:
    """``vox_offset`` as a byte count: whole, after the header, at most ``MAX_DATA_OFFSET``."""
    raw = float(header["vox_offset"])
    if not (math.isfinite(raw) and raw == math.floor(raw)):
        raise CorruptFileError(
            f"{name}: the header's vox_offset is {raw!r}; expected a whole number of bytes."
        )
    if raw < header_end and bytes(header["magic"]).startswith(b"ni"):
        raise NotNiftiError(
            f"{name}: a header of a .hdr/.img pair (magic {bytes(header['magic'])!r}, its data "
            "in the .img file); give single-file NIfTI (.nii or .nii.gz)."
        )
    if raw < header_end:
        raise CorruptFileError(
            f"{name}: the header's vox_offset is {raw:.0f}, inside the header (the data of a "
            f"single-file NIfTI-{_version(header)} starts at byte {header_end} or later)."
        )
    if raw > MAX_DATA_OFFSET:
        raise CorruptFileError(
            f"{name}: the header's vox_offset is {raw:.0f}: the data would start after more "
            f"than {MAX_DATA_OFFSET} bytes of header and extensions."
        )
    return int(raw)


def _data_dtype(header: nib.Nifti1Header, name: str) -> np.dtype:
    """The stored dtype; refuses unknown codes and types that cannot be scored."""
    try:
        dtype = header.get_data_dtype()
    except Exception as err:  # nibabel raises several types for unknown codes
        raise UnsupportedDataTypeError(f"{name}: unknown NIfTI data type ({err}).") from err
    if dtype.kind not in "biuf" or dtype.fields is not None:
        raise UnsupportedDataTypeError(
            f"{name}: data type {dtype} cannot be scored; expected integer labels or float "
            "probabilities."
        )
    return dtype


def declared_layout(head: bytes, name: str) -> tuple[int, int, int]:
    """``(vox_offset, voxels, bytes per voxel)`` of the uncompressed single-file NIfTI that
    starts with ``head`` (at least its 348- or 540-byte header), read as
    :func:`inspect_nifti` reads them; the file holds ``vox_offset + voxels * bytes`` bytes.

    Raises:
        NotNiftiError, CorruptFileError, UnsupportedDataTypeError: a header that
            :func:`inspect_nifti` refuses for these reasons (``name`` is in the message).
    """
    header, header_end = _parse_header(head, name)
    shape = _shape(header, name)
    offset = _data_offset(header, header_end, name)
    return offset, math.prod(shape), _data_dtype(header, name).itemsize


def _version(header: nib.Nifti1Header) -> int:
    return 2 if isinstance(header, nib.Nifti2Header) else 1


def _check_extensions(read: bytes, stream: _Stream, size: int, endian: str, name: str) -> None:
    """The extensions (``esize``, ``ecode``, content) must end at or before the data.

    They take the ``size`` bytes from the end of the extension flag to ``vox_offset`` (at most
    ``MAX_DATA_OFFSET``), of which ``read`` were already read; the rest is read at once and
    walked in memory: half a million 8-byte extensions take a fraction of a second, where a
    read per extension took seconds. Like nibabel, an extension is read while at least 16
    bytes remain.

    Raises:
        CorruptFileError: an ``esize`` below 8 or past ``vox_offset``, or a truncated file.
    """
    area = read[:size]
    if len(area) < size:
        area += stream.read_exactly(size - len(area))
    esize_at = struct.Struct(endian + "i").unpack_from
    position = 0
    while size - position >= 16:
        if len(area) < position + 8:
            raise CorruptFileError(f"{name}: truncated inside its header extensions.")
        esize = esize_at(area, position)[0]
        if esize < 8 or position + esize > size:
            raise CorruptFileError(
                f"{name}: a header extension at byte {position} declares {esize} bytes; the "
                f"extensions must end at or before vox_offset ({size - position} bytes left)."
            )
        if len(area) < position + esize:
            raise CorruptFileError(f"{name}: truncated inside its header extensions.")
        position += esize


def _scaling(header: nib.Nifti1Header, name: str) -> tuple[float, float]:
    """``(slope, inter)`` as nibabel reads them: no scaling for a zero or non-finite slope."""
    slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    if slope == 0 or not math.isfinite(slope):
        return 1.0, 0.0
    if not math.isfinite(inter):
        raise CorruptFileError(
            f"{name}: the header's scl_inter is {inter!r} with scl_slope {slope!r}; a scaled "
            "file needs a finite intercept."
        )
    return slope, inter


def _as_nibabel_loads(header: nib.Nifti1Header, name: str) -> nib.Nifti1Header:
    """A copy of ``header`` with the repairs nibabel makes when it loads a file
    (``check_fix``): ``qfac`` (``pixdim[0]``) other than -1 or 1 read as 1, negative
    ``pixdim`` made positive and zero ones 1, out-of-range ``qform_code`` / ``sform_code`` set
    to 0. Its affine is nibabel's ``img.affine``.

    Raises:
        CorruptFileError: a problem for which nibabel refuses the file (its level 40), such as
            a NIfTI-2 ``eol_check`` changed by a text-mode (line-ending) transfer.
    """
    repaired = header.copy()
    try:
        repaired.check_fix(logger=_NIBABEL_REPAIRS, error_level=40)
    except nib.spatialimages.HeaderDataError as err:
        raise CorruptFileError(f"{name}: nibabel refuses this header ({err}).") from err
    return repaired


def _affine(header: nib.Nifti1Header) -> tuple[np.ndarray, str | None]:
    """The sform (else qform) affine, or NaNs and the reason when the header has none valid."""
    try:  # an inf pixdim makes nibabel's product warn; the NaNs are reported below
        with np.errstate(invalid="ignore", over="ignore"):
            affine = np.asarray(header.get_best_affine(), dtype=np.float64)
    except Exception as err:  # nibabel raises ValueError and others for invalid quaternions
        return np.full((4, 4), np.nan), f"the header's affine is invalid ({err})"
    if not np.isfinite(affine).all():
        return affine, "the header's affine holds NaN or infinite values"
    return affine, None


def inspect_nifti(path: str | os.PathLike[str], max_voxels: int | None = None) -> NiftiInfo:
    """Read a NIfTI header (and walk its extensions); no voxel data is inflated.

    Raises:
        NotNiftiError: missing file, not NIfTI (wrong size/magic, a .hdr/.img pair).
        CorruptFileError: a truncated header, a corrupt gzip start, an uncompressed file
            shorter than its data block (or a gzip stream too short to inflate to it), an
            empty or negative shape, ``dim[0]`` outside 1..7, a ``vox_offset`` that is not
            a whole number, lies inside the header or its extensions, or beyond
            ``MAX_DATA_OFFSET``, extensions that overrun the data, a non-finite ``scl_inter``.
        UnsupportedDataTypeError: complex, RGB or unknown data types.
        VolumeTooLargeError: more voxels than ``max_voxels``.
    """
    name = _name(path)
    check_regular_file(path)
    try:
        handle = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError as err:
        raise NotNiftiError(f"{name}: no such file.") from err
    except OSError as err:
        raise NotNiftiError(f"{name}: cannot be read ({err.strerror}).") from err
    with handle:
        is_gzip = handle.read(2) == _GZIP_MAGIC
        handle.seek(0)
        stream = _Stream(handle, is_gzip, name)
        block = stream.read_exactly(544)
        header, header_end = _parse_header(block, name)
        _check_name(name, is_gzip)  # after the header: a rename helps only a NIfTI file
        shape = _shape(header, name)
        offset = _data_offset(header, header_end, name)
        if block[header_end - 4 : header_end - 3] not in (b"", b"\x00"):  # extensions follow
            size = offset - header_end
            _check_extensions(block[header_end:], stream, size, header.endianness, name)
        file_size = os.fstat(handle.fileno()).st_size
    dtype = _data_dtype(header, name)
    voxels = math.prod(shape)
    if max_voxels is not None and voxels > max_voxels:
        raise VolumeTooLargeError(
            f"{name}: {voxels} voxels (shape {shape}), above the limit of {max_voxels}."
        )
    needed = offset + voxels * dtype.itemsize
    if not is_gzip and file_size < needed:
        raise CorruptFileError(
            f"{name}: truncated: the header declares {needed} bytes, the file has {file_size}."
        )
    if is_gzip and needed > file_size * _DEFLATE_MAX_RATIO + _DEFLATE_SLACK:
        raise CorruptFileError(
            f"{name}: truncated: the header declares {needed} bytes, more than a gzip stream "
            f"of {file_size} bytes can hold."
        )
    slope, inter = _scaling(header, name)
    unit = _UNIT_TO_MM.get(int(header["xyzt_units"]) % 8, 1.0)
    repaired = _as_nibabel_loads(header, name)
    affine, affine_problem = _affine(repaired)
    spacing, spacing_note = _spacing(header, repaired, affine, affine_problem, len(shape), unit)
    affine[:3] *= unit
    return NiftiInfo(
        path=str(path),
        shape=shape,
        dtype=dtype,
        voxels=voxels,
        affine=affine,
        spacing=spacing,
        is_gzip=is_gzip,
        offset=offset,
        slope=slope,
        inter=inter,
        version=_version(header),
        affine_problem=affine_problem,
        spacing_note=spacing_note,
    )


def _header_float(value: float, dtype: np.dtype, unit: float) -> float:
    """A header value stored as ``dtype`` (float32 in NIfTI-1, float64 in NIfTI-2), read as
    the decimal it was written from and converted to mm by ``unit`` in decimal arithmetic:
    ``0.8``, not ``0.800000011920929``; ``0.0007`` m is ``0.7`` mm, not
    ``0.7000000000000001``. So a tolerance of one voxel (0.8 mm) holds a neighbour one voxel
    away."""
    return float(Decimal(str(dtype.type(value))) * Decimal(str(unit)))


#: the largest |cosine| between two sform columns taken as a right angle (0.006 degrees off)
_SHEAR_COSINE = 1e-4


def _spacing(
    header: nib.Nifti1Header,
    repaired: nib.Nifti1Header,
    affine: np.ndarray,
    affine_problem: str | None,
    ndim: int,
    unit: float,
) -> tuple[tuple[float, ...] | None, str | None]:
    """The voxel sizes in mm of the (up to 3) spatial axes, and a note when they are not
    pixdim's.

    ``|pixdim|`` converted from the header's units (a negative size is a flipped axis, whose
    direction the qfac or the affine carries: nibabel reads it so; ``affine`` is still in those
    units, ``_header_float``), unless the header's affine is its sform
    and the sform's column norms differ from those (a tool that rewrote only the sform): the
    sform is the geometry the affines are compared in, and ITK and MONAI take their voxel
    sizes from it. A sheared sform (columns not at right angles, cosine above
    ``_SHEAR_COSINE``) has no voxel sizes: its column norms multiply to more than the voxel's
    volume ``|det|``, so pixdim's are kept (nibabel's zooms; ITK falls back to the qform),
    with a note. None when neither gives sizes that are finite and not 0 (then distances
    are in voxels).
    """
    n = min(3, ndim)
    stored = header["pixdim"].dtype
    sizes = tuple(_header_float(abs(float(z)), stored, unit) for z in header["pixdim"][1 : 1 + n])
    spacing = sizes if all(math.isfinite(z) and z > 0 for z in sizes) else None
    if affine_problem is not None or int(repaired["sform_code"]) <= 0:
        return spacing, None
    norms = tuple(_header_float(z, stored, unit) for z in np.linalg.norm(affine[:3, :n], axis=0))
    if not all(math.isfinite(z) and z > 0 for z in norms):
        return spacing, None
    if spacing is not None and np.allclose(norms, spacing, rtol=1e-4, atol=0.0):
        return spacing, None
    unit_columns = affine[:3, :n] / np.linalg.norm(affine[:3, :n], axis=0)
    cosines = unit_columns.T @ unit_columns - np.eye(n)
    if float(np.abs(cosines).max()) > _SHEAR_COSINE:
        kept = (
            "pixdim's voxel sizes are used"
            if spacing is not None
            else ("pixdim gives no valid sizes, so distances are in voxels")
        )
        return spacing, f"the sform is sheared (its axes are not at right angles); {kept}"
    given = "no valid sizes" if spacing is None else "voxel sizes " + _sizes(spacing)
    return norms, (
        f"pixdim gives {given} but the sform's voxel sizes are {_sizes(norms)}; distances "
        "and volumes use the sform's"
    )


def _sizes(values: tuple[float, ...]) -> str:
    return " x ".join(f"{v:g}" for v in values) + " mm"


def iter_voxel_chunks(info: NiftiInfo, chunk_voxels: int) -> Iterator[np.ndarray]:
    """The stored voxels, in file order (x fastest), as 1-D arrays of ``chunk_voxels`` voxels
    (the last one shorter) of the stored dtype; scaling is *not* applied.

    Raises:
        CorruptFileError: the data ends early, the gzip stream is corrupt (its CRC is checked
            after the last chunk) or goes on for more than ``MAX_TRAILER_BYTES`` after the
            data.
    """
    name = _name(info.path)
    with open(info.path, "rb") as handle:
        stream = _Stream(handle, info.is_gzip, name)
        if stream.skip(info.offset) < info.offset:
            raise CorruptFileError(f"{name}: truncated before its data starts.")
        remaining = info.voxels
        while remaining:
            n = min(chunk_voxels, remaining)
            data = stream.read_exactly(n * info.dtype.itemsize)  # usually one piece, no copy
            if len(data) < n * info.dtype.itemsize:
                missing = remaining * info.dtype.itemsize - len(data)
                raise CorruptFileError(f"{name}: truncated: the data ends {missing} bytes early.")
            remaining -= n
            yield np.frombuffer(data, dtype=info.dtype)
        if info.is_gzip:
            stream.finish(MAX_TRAILER_BYTES)


def load_nifti(info: NiftiInfo) -> np.ndarray:
    """The whole data array of an inspected file, shape ``info.shape`` (Fortran order), in
    native byte order. With a header scaling the values are nibabel's,
    ``stored * slope + inter`` in float64 (so integer ids above 2**24 stay apart).

    Raises:
        CorruptFileError: as ``iter_voxel_chunks``.
    """
    dtype = np.dtype(np.float64) if info.scaled else info.dtype.newbyteorder("=")
    flat = np.empty(info.voxels, dtype=dtype)
    start = 0
    for chunk in iter_voxel_chunks(info, 1 << 22):
        part = flat[start : start + chunk.size]
        part[...] = chunk
        if info.scaled:
            part *= info.slope
            part += info.inter
        start += chunk.size
    return flat.reshape(info.shape, order="F")
