"""NRRD and MetaImage files (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``) through SimpleITK, and the
one entry point that reads any supported volume file (these or NIfTI).

SimpleITK is the optional extra ``formats`` (``pip install '.[formats]'`` in the checkout); it is
imported on first use, so NIfTI scoring never needs it.

Header first, as for NIfTI: ``inspect_image`` reads only the header (SimpleITK's
``ReadImageInformation``), so a file that is not of its format, declares an empty shape, a
data type that cannot be scored, more voxels than ``max_voxels``, or more data than the file
can hold (a raw payload shorter than the declared data, or a gzip payload that would have to
inflate more than deflate's 1032:1 limit) is refused before any voxel buffer is allocated.

Geometry. ITK (and so NRRD and MetaImage) places voxel index ``i`` (x fastest) at the
physical point ``p = o + D diag(s) i`` in LPS coordinates (x to the patient's Left, y
Posterior, z Superior), with ``o`` the origin, ``D`` the direction cosines (columns are the
axes) and ``s`` the spacing in mm. NIfTI, and nibabel's affines, use RAS (x Right, y
Anterior). The voxel-to-world affine reported here is the RAS one, the same matrix that the
NIfTI header of the same image holds (ITK writes NIfTI this way)::

    A = diag(-1, -1, 1, 1) @ [[D diag(s), o], [0, 1]]

so a prediction in ``.nrrd`` and a reference in ``.nii.gz`` pass the affine check exactly when
they lie on the same grid. 2-D images get ``z`` spacing 1 and origin 0.

Data layout: the reported shape is in NIfTI order, ``(X, Y, Z)`` plus a last channel axis
``C`` for vector images (``(X, Y, Z, C)``), and ``load_image`` returns the voxels in that
shape (a Fortran-ordered view of SimpleITK's C-ordered ``(Z, Y, X[, C])`` array), as
``load_nifti`` does. Values are checked by the scoring core like NIfTI's (fractional or NaN
label maps are refused with the same errors).
"""

from __future__ import annotations

import math
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from monai_jdt.scoring.errors import (
    CorruptFileError,
    NotNiftiError,
    UnsupportedDataTypeError,
    VolumeTooLargeError,
)
from monai_jdt.scoring.nifti import (
    HeaderInfo,
    NiftiInfo,
    check_regular_file,
    file_ending,
    inspect_nifti,
    load_nifti,
)

__all__ = [
    "LPS_TO_RAS",
    "MAX_HEADER_BYTES",
    "SITK_SUFFIXES",
    "ImageInfo",
    "VolumeInfo",
    "inspect_image",
    "inspect_volume",
    "is_sitk_path",
    "load_image",
    "load_volume",
]

#: file endings read through SimpleITK, with the ITK reader each must be read with
_IMAGE_IO = {
    ".nrrd": "NrrdImageIO",
    ".nhdr": "NrrdImageIO",
    ".mha": "MetaImageIO",
    ".mhd": "MetaImageIO",
}
SITK_SUFFIXES: tuple[str, ...] = tuple(_IMAGE_IO)
#: ``diag(-1, -1, 1, 1)``: LPS world coordinates (ITK) to RAS (NIfTI, nibabel) and back
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
#: deflate cannot inflate more than ~1032 bytes per compressed byte
_DEFLATE_MAX_RATIO = 1032
#: the longest NRRD / MetaImage header read (a longer one is refused)
MAX_HEADER_BYTES = 1 << 16


@dataclass(frozen=True)
class ImageInfo(HeaderInfo):
    """What an NRRD / MetaImage header declares (the fields ``NiftiInfo`` shares).

    Attributes:
        path: the file (the header file for ``.nhdr`` / ``.mhd``).
        shape: ``(X, Y[, Z[, T]])``, plus ``C`` last for vector (multi-component) images.
        dtype: the component dtype (native byte order).
        voxels: ``prod(shape)``.
        affine: ``[4, 4]`` RAS voxel-to-world matrix in mm (see the module doc).
        spacing: voxel size in mm along the (up to 3) spatial axes, or None when it is not
            positive and finite.
        components: values per voxel (1 for scalar images).
        affine_problem: why the header gives no valid affine (a non-finite origin or
            direction), or None; as ``NiftiInfo``'s, it only matters when the affines are
            compared.
    """

    components: int
    affine_problem: str | None = None

    @property
    def scaled(self) -> bool:
        """Always False: these formats store values unscaled."""
        return False


#: the header of any supported volume file
VolumeInfo: TypeAlias = "NiftiInfo | ImageInfo"


def is_sitk_path(path: str | os.PathLike[str]) -> bool:
    """True when the file name ends with one of ``SITK_SUFFIXES``, in any case (as the NIfTI
    endings are matched)."""
    return file_ending(Path(path).name, SITK_SUFFIXES) is not None


def _suffix(path: str | os.PathLike[str]) -> str:
    """The ending of a file ``is_sitk_path`` accepts, lower case."""
    suffix = file_ending(Path(path).name, SITK_SUFFIXES)
    assert suffix is not None, path
    return suffix


def _sitk(name: str) -> Any:
    """The SimpleITK module, or a clear error naming the extra to install."""
    try:
        import SimpleITK
    except ImportError as err:
        raise NotNiftiError(
            f"{name}: reading NRRD / MetaImage files needs SimpleITK, monai-jdt's extra "
            "'formats': pip install '.[formats]' in the monai-jdt checkout (or convert the "
            "file to .nii.gz)."
        ) from err
    return SimpleITK


def _dtypes(sitk: Any) -> dict[int, np.dtype]:
    """``{SimpleITK pixel id: component dtype}`` of the scorable (scalar and vector) types."""
    names = ("UInt8", "Int8", "UInt16", "Int16", "UInt32", "Int32", "UInt64", "Int64")
    table: dict[int, np.dtype] = {}
    for name in (*names, "Float32", "Float64"):
        dtype = np.dtype(name.lower())
        table[getattr(sitk, f"sitk{name}")] = dtype
        table[getattr(sitk, f"sitkVector{name}")] = dtype
    return table


def _header_text(path: Path) -> str:
    """The first ``MAX_HEADER_BYTES`` bytes of the file, plus one to tell whether there is more."""
    with open(path, "rb") as handle:
        return handle.read(MAX_HEADER_BYTES + 1).decode("latin-1")


def _looks_like(text: str, suffix: str) -> bool:
    """True when the file starts as its format does (NRRD magic, MetaImage ``NDims`` key)."""
    if _IMAGE_IO[suffix] == "NrrdImageIO":
        return text.startswith("NRRD000")
    return re.search(r"^NDims\s*=", text, re.MULTILINE) is not None


@dataclass(frozen=True)
class _Storage:
    """Where and how a header says its data is stored."""

    data_file: str | None  # a separate data file, None when the data follows the header
    header_bytes: int | None  # the header's length when the data follows it (None: unknown)
    ratio: int | None  # most bytes one stored byte decodes to (None: no bound known)
    #: a compressed MetaImage (zlib), its ``CompressedDataSize`` and ``HeaderSize`` (None:
    #: not given)
    deflated: bool = False
    compressed_size: int | None = None
    skip: int | None = None


#: a line naming the data's location, matched more loosely than the readers do (any case,
#: spaces anywhere, ``=`` or ``:`` for MetaImage), so that no spelling a reader accepts is missed
_NRRD_DATA_FILE = re.compile(r"^\s*data\s*file\s*:(.*)$", re.IGNORECASE)
_META_DATA_FILE = re.compile(r"^\s*ElementDataFile\s*[=:](.*)$", re.IGNORECASE)
#: what no header line may hold: readers split and trim lines at different characters (a
#: lone CR, vertical tab, form feed, ...), so a header holding one could be read otherwise.
#: CR LF line ends pass, and so do bytes from 0x80 (UTF-8 text such as a name in a comment:
#: the C readers split lines at ASCII characters only, and these lines are split at LF)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]|\r(?!\n)")


def _header_lines(text: str, suffix: str) -> tuple[list[str], int | None, bool]:
    """The header's lines, the bytes before the data (None when the data is not in this
    file), and whether the header ends within ``MAX_HEADER_BYTES`` bytes: an NRRD header at its
    first empty line (a detached ``.nhdr`` header at the end of the file), a MetaImage
    header at its ``ElementDataFile`` line."""
    parts = text[:MAX_HEADER_BYTES].split("\n")  # not splitlines: it also splits at \v, \f, ...
    lines = [part + "\n" for part in parts[:-1]] + ([parts[-1]] if parts[-1] else [])
    all_read = len(text) <= MAX_HEADER_BYTES
    if _IMAGE_IO[suffix] == "NrrdImageIO":
        blank = next((i for i, line in enumerate(lines) if line in ("\n", "\r\n")), None)
        if blank is None:
            return lines, None, suffix == ".nhdr" and all_read
        return lines[:blank], sum(len(line) for line in lines[: blank + 1]), True
    last = next((i for i, line in enumerate(lines) if _META_DATA_FILE.match(line)), None)
    if last is None:
        return lines, None, False
    head = lines[: last + 1]
    return head, sum(len(line) for line in head), head[-1].endswith("\n") or all_read


def _storage(text: str, suffix: str, name: str) -> _Storage:
    """Read the data location and encoding from the header ``text`` (the file's start).

    Every line of the header is searched for the data file, so that no header makes the
    reader open a file that was not checked.

    Raises:
        CorruptFileError: the header does not end within ``MAX_HEADER_BYTES`` bytes, holds a
            control character (other than tab, or CR before LF), or names its data file
            more than once.
        NotNiftiError: the same, for a file that does not start as its format does.
    """
    nrrd = _IMAGE_IO[suffix] == "NrrdImageIO"
    head, header_bytes, complete = _header_lines(text, suffix)
    pattern = _NRRD_DATA_FILE if nrrd else _META_DATA_FILE
    kind = "NRRD" if nrrd else "MetaImage"
    looks_like = _looks_like(text, suffix)
    error = CorruptFileError if looks_like else NotNiftiError
    control = _CONTROL.search("".join(head))
    if control is not None:
        where = f"the control character {control.group(0)!r} at byte {control.start()}"
        raise error(
            f"{name}: the {kind} header holds {where}; a header is lines of text (tab, CR LF "
            "and LF only)."
            if looks_like
            else f"{name}: not a {kind} file ({where})."
        )
    found = [m.group(1).strip() for line in head if (m := pattern.match(line))]
    if not complete or len(found) > 1:
        problem = (
            f"names its data file {len(found)} times"
            if complete
            else f"does not end within its first {MAX_HEADER_BYTES} bytes (longer headers are "
            "not read)"
        )
        raise error(f"{name}: the {kind} header {problem}.")
    fields = "".join(head)
    if nrrd:
        encoding = re.search(r"^\s*encoding\s*:\s*(\S+)", fields, re.MULTILINE | re.IGNORECASE)
        name_of = encoding.group(1).lower() if encoding else "raw"
        ratio = {"raw": 1, "gzip": _DEFLATE_MAX_RATIO, "gz": _DEFLATE_MAX_RATIO}.get(name_of)
        meta: tuple[bool, int | None, int | None] = (False, None, None)
    else:
        flags = re.MULTILINE | re.IGNORECASE
        compressed = re.search(r"^\s*CompressedData\s*[=:]\s*True", fields, flags) is not None
        in_text = re.search(r"^\s*BinaryData\s*[=:]\s*False", fields, flags) is not None
        ratio = None if in_text else _DEFLATE_MAX_RATIO if compressed else 1  # text: no bound
        meta = (
            compressed and not in_text,
            _meta_int(fields, "CompressedDataSize", name),
            _meta_int(fields, "HeaderSize", name),
        )
    if found and (nrrd or found[0].upper() != "LOCAL"):
        return _Storage(found[0], None, ratio, *meta)
    return _Storage(None, header_bytes, ratio, *meta)


def _meta_int(fields: str, key: str, name: str) -> int | None:
    """The integer value of a MetaImage header key (matched loosely, as ``_storage`` does), or
    None when the header has no such line.

    Raises:
        CorruptFileError: the key is given twice or its value is not an integer.
    """
    pattern = rf"^\s*{key}\s*[=:](.*)$"
    values = [v.strip() for v in re.findall(pattern, fields, re.MULTILINE | re.IGNORECASE)]
    if not values:
        return None
    if len(values) > 1 or not re.fullmatch(r"-?\d+", values[0]):
        raise CorruptFileError(
            f"{name}: the MetaImage header's {key} is {' / '.join(values)!r}; expected one integer."
        )
    return int(values[0])


def _check_storage(file: Path, storage: _Storage, suffix: str) -> int | None:
    """The bytes on disk that hold the data (None when unknown); refuses a data file that is
    not a plain name next to the header (a header must not make us read other files), and a
    detached header under a single-file ending."""
    name = file.name
    if storage.data_file is None:
        header = storage.header_bytes
        return None if header is None else file.stat().st_size - header
    detached = {".nrrd": ".nhdr", ".mha": ".mhd"}.get(suffix)
    if detached is not None:
        raise CorruptFileError(
            f"{name}: the header points to a separate data file ({storage.data_file!r}); a "
            f"{suffix} file holds its own data (a detached header ends in {detached})."
        )
    data_name = storage.data_file
    if (
        data_name.upper() == "LIST"
        or any(c in data_name for c in " %/\\")
        or data_name
        in (
            ".",
            "..",
        )
    ):
        raise CorruptFileError(
            f"{name}: the data file {data_name!r} is not one file next to the header (lists, "
            "patterns and paths are not read)."
        )
    data_path = file.parent / data_name
    if not data_path.exists():
        return 0
    try:
        check_regular_file(data_path)  # a FIFO would block the reader for ever
    except NotNiftiError as err:
        raise CorruptFileError(f"{name}: its data file {err.message}") from None
    return data_path.stat().st_size


def inspect_image(path: str | os.PathLike[str], max_voxels: int | None = None) -> ImageInfo:
    """Read an NRRD / MetaImage header only (no voxel buffer is allocated).

    Raises:
        NotNiftiError: missing file, SimpleITK not installed, or a file its reader cannot
            read as its format (the ending decides: ``.nrrd``/``.nhdr`` NRRD, ``.mha``/``.mhd``
            MetaImage).
        CorruptFileError: an empty shape, a spacing of 0 or not finite, less
            data on disk than the header declares, a header longer than 64 KiB or naming its
            data file twice, or a data file that is not one plain name next to a ``.nhdr`` /
            ``.mhd`` header (``.nrrd`` / ``.mha`` hold their data); all checked before the
            reader opens anything the header names.
        UnsupportedDataTypeError: complex or other non-numeric pixel types.
        VolumeTooLargeError: more voxels than ``max_voxels``.
    """
    file = Path(path)
    name = file.name
    check_regular_file(file)
    suffix = _suffix(file)
    sitk = _sitk(name)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[suffix])
    reader.SetFileName(str(file))
    kind = "NRRD" if _IMAGE_IO[suffix] == "NrrdImageIO" else "MetaImage"
    text = _header_text(file)
    storage = _storage(text, suffix, name)  # before ITK opens anything the header names
    stored = _check_storage(file, storage, suffix)
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        if _looks_like(text, suffix):
            raise CorruptFileError(
                f"{name}: the {kind} header cannot be read ({_first_line(err)})."
            ) from err
        raise NotNiftiError(f"{name}: not a {kind} file ({_first_line(err)}).") from err
    size = tuple(int(s) for s in reader.GetSize())
    pixel = _dtypes(sitk).get(reader.GetPixelID())
    if pixel is None:
        raise UnsupportedDataTypeError(
            f"{name}: pixel type {sitk.GetPixelIDValueAsString(reader.GetPixelID())!r} cannot be "
            "scored; "
            "expected integer labels or float probabilities."
        )
    dtype = pixel
    components = int(reader.GetNumberOfComponents())
    shape = size + ((components,) if components > 1 else ())
    if not size or any(s <= 0 for s in size):
        raise CorruptFileError(f"{name}: the header declares an empty shape {size}.")
    voxels = math.prod(shape)
    if max_voxels is not None and voxels > max_voxels:
        raise VolumeTooLargeError(
            f"{name}: {voxels} voxels (shape {shape}), above the limit of {max_voxels}."
        )
    ratio = storage.ratio
    if stored is not None and ratio is not None and stored * ratio < voxels * dtype.itemsize:
        raise CorruptFileError(
            f"{name}: truncated: the header declares {voxels * dtype.itemsize} bytes of data, "
            f"the file holds {stored} bytes" + (" (compressed)." if ratio > 1 else ".")
        )
    affine, spacing = _geometry(
        reader.GetDirection(), reader.GetOrigin(), reader.GetSpacing(), len(size)
    )
    if spacing is None:  # ITK refuses to build such an image: say so before reading
        raise CorruptFileError(
            f"{name}: the header's spacing {tuple(reader.GetSpacing())} is 0 or not finite; "
            "the image cannot be read."
        )
    finite = bool(np.isfinite(affine).all())
    problem = None if finite else "the header's origin or direction is not finite"
    return ImageInfo(
        path=str(path),
        shape=shape,
        dtype=dtype,
        voxels=voxels,
        affine=affine,
        spacing=spacing,
        components=components,
        affine_problem=problem,
    )


def _geometry(
    direction: tuple[float, ...], origin: tuple[float, ...], spacing: tuple[float, ...], ndim: int
) -> tuple[np.ndarray, tuple[float, ...] | None]:
    """The RAS affine ``diag(-1, -1, 1, 1) @ [[D diag(s), o], [0, 1]]`` of the first (up to)
    three axes, and the spacing of those axes, ``|s|`` (None unless all are finite and not 0).

    A negative spacing is a flipped axis: ITK reads it as spacing ``|s|`` along ``-D``'s
    column, the same affine."""
    n = min(ndim, 3)
    cosines = np.asarray(direction, dtype=np.float64).reshape(ndim, ndim)[:n, :n]
    steps = np.asarray(spacing[:n], dtype=np.float64)
    lps = np.eye(4)
    lps[:n, :n] = cosines * steps  # column j: axis j's direction times its spacing
    lps[:n, 3] = np.asarray(origin[:n], dtype=np.float64)
    spatial = tuple(abs(float(s)) for s in steps)
    valid = all(math.isfinite(s) and s > 0 for s in spatial)
    return LPS_TO_RAS @ lps, spatial if valid else None


def _first_line(err: BaseException) -> str:
    """The last informative line of an ITK exception (they are long and multi-line)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[-1] if lines else type(err).__name__


#: bytes of a compressed stream read (and inflated, then dropped) at a time
_INFLATE_CHUNK = 1 << 20


def _check_deflated(info: ImageInfo) -> None:
    """A compressed MetaImage's data must inflate, to its end, to exactly the bytes its header
    declares: ITK does not raise on a corrupt or short stream, it prints "Uncompress failed"
    (or nothing) and returns uninitialised memory, which would be scored.

    The stream is where ITK reads it: ``CompressedDataSize`` bytes (which a ``.mha`` holding
    its data must give; 0 means not given) after the header, or from byte ``HeaderSize`` of
    the file when the header gives one; or in the ``.mhd``'s data file, after ``HeaderSize``
    bytes and ``CompressedDataSize`` of them, or the whole file when neither is given. zlib
    and gzip wrappers are accepted, as ITK accepts both. The stream is inflated once here and
    dropped, chunk by chunk, so the check holds at most ``_INFLATE_CHUNK`` bytes of output at
    a time.

    Raises:
        CorruptFileError: no ``CompressedDataSize`` for data after the header, or for a data
            file with a ``HeaderSize`` (ITK reads that file from byte 0), a negative
            ``HeaderSize``, a stream that is shorter than declared, corrupt, ends early, or
            inflates to more or fewer bytes than ``info.shape`` and ``info.dtype`` declare.
    """
    file = Path(info.path)
    name = file.name
    storage = _storage(_header_text(file), _suffix(file), name)
    if not storage.deflated:
        return
    size = storage.compressed_size or None  # MetaIO reads 0 as not given
    skip = storage.skip or 0
    if skip < 0:
        raise CorruptFileError(
            f"{name}: HeaderSize {skip} (data at the end of the file) with compressed data; "
            "the stream's start is unknown."
        )
    if storage.data_file is None:
        # a HeaderSize is where ITK starts reading the file, else the header's end
        data, start = file, skip if skip > 0 else storage.header_bytes or 0
        if size is None:
            raise CorruptFileError(
                f"{name}: the compressed MetaImage holds its data but its header gives no "
                "CompressedDataSize; ITK cannot tell where the stream ends."
            )
    else:
        data, start = file.parent / storage.data_file, skip
        if skip > 0 and size is None:
            raise CorruptFileError(
                f"{name}: HeaderSize {skip} with compressed data but no CompressedDataSize; "
                "ITK then inflates the data file from its first byte, not after HeaderSize."
            )
    expected = info.voxels * info.dtype.itemsize
    inflater = zlib.decompressobj(47)  # 32 + 15: a zlib or a gzip header, as ITK takes
    produced = 0
    try:
        with open(data, "rb") as handle:
            handle.seek(start)
            left = size if size is not None else os.fstat(handle.fileno()).st_size - start
            while left > 0 and not inflater.eof and produced <= expected:
                pending = handle.read(min(left, _INFLATE_CHUNK))
                if not pending:
                    break
                left -= len(pending)
                while not inflater.eof and produced <= expected:
                    out = inflater.decompress(pending, _INFLATE_CHUNK)
                    produced += len(out)
                    pending = inflater.unconsumed_tail
                    if not pending and len(out) < _INFLATE_CHUNK:
                        break  # this input is used up and nothing more is held back
    except zlib.error as err:
        raise CorruptFileError(
            f"{name}: the compressed data is corrupt ({err}); ITK would return garbage."
        ) from None
    except OSError as err:
        raise CorruptFileError(f"{name}: the data cannot be read ({err.strerror}).") from None
    if produced > expected or not inflater.eof or produced < expected:
        found = (
            f"more than the {expected} bytes its header declares"
            if produced > expected
            else f"{produced} of the {expected} bytes its header declares"
            + ("" if inflater.eof else ", and the stream does not end")
        )
        raise CorruptFileError(f"{name}: the compressed data inflates to {found}.")


def load_image(info: ImageInfo) -> np.ndarray:
    """The voxels of an inspected file, shape ``info.shape`` (NIfTI axis order), native byte
    order.

    Raises:
        CorruptFileError: the data cannot be read (truncated, a corrupt stream; a compressed
            MetaImage's stream is checked first, see ``_check_deflated``).
    """
    name = Path(info.path).name
    sitk = _sitk(name)
    if _IMAGE_IO[_suffix(info.path)] == "MetaImageIO":
        _check_deflated(info)
    reader = sitk.ImageFileReader()
    reader.SetImageIO(_IMAGE_IO[_suffix(info.path)])
    reader.SetFileName(str(info.path))
    try:
        image = reader.Execute()
    except RuntimeError as err:
        raise CorruptFileError(f"{name}: the data cannot be read ({_first_line(err)}).") from err
    array = sitk.GetArrayFromImage(image)  # (..., Z, Y, X[, C]), C order: a copy we own
    del image
    if info.components > 1:
        axes = (*reversed(range(array.ndim - 1)), array.ndim - 1)
        return np.transpose(array, axes)  # (X, Y, Z, C)
    return array.T


def inspect_volume(path: str | os.PathLike[str], max_voxels: int | None = None) -> VolumeInfo:
    """The header of any supported volume file: NRRD / MetaImage by their endings (through
    SimpleITK), NIfTI otherwise; the errors of ``inspect_image`` / ``inspect_nifti``."""
    if is_sitk_path(path):
        return inspect_image(path, max_voxels)
    return inspect_nifti(path, max_voxels)


def load_volume(info: VolumeInfo) -> np.ndarray:
    """The data of a header from ``inspect_volume``, shape ``info.shape`` (NIfTI order)."""
    if isinstance(info, ImageInfo):
        return load_image(info)
    return load_nifti(info)
