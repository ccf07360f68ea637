"""Stream a ``multipart/form-data`` body to disk with limits checked while it arrives.

The whole body (both files, the fields, the multipart envelope) is bounded by
:func:`body_limit`, chunked or not: 413 as soon as it passes the limit (a declared
``Content-Length`` past it before any byte is read), and at most ``MAX_EPILOGUE_BYTES`` may
follow the final boundary. The body must also arrive at ``min_rate`` bytes/s on average
after a grace period (408 ``upload_too_slow``), so a slow client cannot hold an upload place
for long. The two file fields (``prediction``, ``reference``) go chunk by chunk into the
request's work directory, never whole into memory; each is refused with 413 as soon as it passes
``max_file_bytes``. Text fields (the scoring options) are small and kept in memory, up to
``MAX_FIELD_BYTES`` each. Unknown or repeated fields are refused (422) as soon as their part
header arrives. Client file names are never used (nor logged): the files are named after the
field, with ``.nii.gz`` when the content starts with the gzip magic, ``.nrrd`` with the NRRD
magic, ``.mha`` for a MetaImage header with its data attached (these two need the ``formats``
extra), and ``.nii`` otherwise.
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import AsyncIterator, Callable, Collection
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from jdt_service.errors import ApiError

__all__ = [
    "FILE_FIELDS",
    "MAX_EPILOGUE_BYTES",
    "MAX_FIELD_BYTES",
    "GrowingFile",
    "UploadedForm",
    "body_limit",
    "receive_form",
]

FILE_FIELDS = ("prediction", "reference")
#: file fields a request may add (the overlay pictures' intensity image)
OPTIONAL_FILE_FIELDS = ("image",)
#: the file fields of ``POST /v1/scores``
SCORE_FILE_FIELDS = (*FILE_FIELDS, *OPTIONAL_FILE_FIELDS)
MAX_FIELD_BYTES = 64 * 1024
#: bytes allowed after the final boundary (clients send none or a line break)
MAX_EPILOGUE_BYTES = 4096
_GZIP_MAGIC = b"\x1f\x8b"
_NRRD_MAGIC = b"NRRD000"
#: a single-file MetaImage: its ``NDims`` key and its data in the same file
_METAIMAGE = (
    re.compile(rb"^NDims\s*=", re.M),
    re.compile(rb"^ElementDataFile\s*=\s*LOCAL\b", re.M),
)
#: allowance for part headers and boundaries on top of the file and field limits
_ENVELOPE_BYTES = 1024 * 1024


def body_limit(
    max_file_bytes: int, n_text_fields: int, n_files: int = len(SCORE_FILE_FIELDS)
) -> int:
    """The largest body accepted: ``n_files`` files, every text field, and the envelope."""
    return n_files * max_file_bytes + n_text_fields * MAX_FIELD_BYTES + _ENVELOPE_BYTES


@dataclass
class UploadedForm:
    """What arrived: the file paths and sizes by field, and the text fields."""

    files: dict[str, Path] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    fields: dict[str, str] = field(default_factory=dict)


class GrowingFile:
    """A file field while it is written: other threads may read what is on disk so far.

    The part's bytes go to ``path`` unbuffered, so ``size`` bytes are in the file when
    :meth:`wait_for` reports them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.size = 0
        self.ended = False
        self._wanted = 0  # the size a reader waits for: it is woken only then
        self._changed = threading.Condition()

    def grow(self, n: int) -> None:
        with self._changed:
            self.size += n
            if self.size >= self._wanted:
                self._changed.notify_all()

    def end(self) -> None:
        """No more bytes will come (the part ended, or the upload was refused)."""
        with self._changed:
            self.ended = True
            self._changed.notify_all()

    def wait_for(self, size: int) -> int:
        """Block until ``size`` bytes are on disk or the part ended; the bytes on disk."""
        with self._changed:
            self._wanted = size
            self._changed.wait_for(lambda: self.size >= size or self.ended)
            return self.size


class _FormWriter:
    """Callbacks for :class:`MultipartParser`: route each part to a file or a text field."""

    def __init__(
        self,
        workdir: Path,
        max_file_bytes: int,
        text_fields: Collection[str],
        file_fields: Collection[str],
        on_file: Callable[[str, GrowingFile], None] | None = None,
    ) -> None:
        self.workdir = workdir
        self.on_file = on_file
        self.file_fields = file_fields
        self.max_file_bytes = max_file_bytes
        self.text_fields = text_fields
        self.form = UploadedForm()
        self.finished = False
        self._header_name = b""
        self._header_value = b""
        self._headers: dict[bytes, bytes] = {}
        self._name = ""
        self._file: BinaryIO | None = None
        self._growing: GrowingFile | None = None
        self._text = bytearray()
        self._size = 0

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": self._header_field,
            "on_header_value": self._header_value_data,
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._growing is not None:
            self._growing.end()
            self._growing = None

    def _part_begin(self) -> None:
        self._headers = {}
        self._text = bytearray()
        self._size = 0

    def _header_field(self, data: bytes, start: int, end: int) -> None:
        self._header_name += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        self._headers[self._header_name.strip().lower()] = self._header_value.strip()
        self._header_name = b""
        self._header_value = b""

    def _headers_finished(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition"))
        name = params.get(b"name", b"").decode("utf-8", "replace")
        if disposition != b"form-data" or not name:
            raise ApiError(400, "malformed_multipart", "a form part has no field name")
        if name in self.form.fields or name in self.form.files:
            raise ApiError(422, "duplicate_field", f"form field {name!r} was sent twice")
        self._name = name
        if name in self.file_fields:
            path = self.workdir / f"{name}.upload"
            # unbuffered, so that a GrowingFile's readers see every byte written
            self._file = open(path, "xb", buffering=0)  # noqa: SIM115 (closed in close)
            self.form.files[name] = path
            if self.on_file is not None:
                self._growing = GrowingFile(path)
                self.on_file(name, self._growing)
        elif name not in self.text_fields:
            known = ", ".join([*self.file_fields, *sorted(self.text_fields)])
            raise ApiError(422, "unknown_option", f"unknown form field {name!r}; known: {known}")

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._file is not None:
            if self._size > self.max_file_bytes:
                raise ApiError(
                    413,
                    "upload_too_large",
                    f"{self._name} is larger than the limit of {self.max_file_bytes} bytes",
                )
            chunk = memoryview(data)[start:end]  # no copy of the chunk
            while chunk:  # an unbuffered write may write less than it was given
                chunk = chunk[self._file.write(chunk) :]
            if self._growing is not None:
                self._growing.grow(end - start)
        else:
            if self._size > MAX_FIELD_BYTES:
                raise ApiError(
                    413,
                    "field_too_large",
                    f"form field {self._name!r} is larger than {MAX_FIELD_BYTES} bytes",
                )
            self._text += data[start:end]

    def _part_end(self) -> None:
        if self._file is not None:
            self.close()
            self.form.sizes[self._name] = self._size
        else:
            try:
                self.form.fields[self._name] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise ApiError(
                    422, "invalid_option", f"form field {self._name!r} is not UTF-8 text"
                ) from None

    def _end(self) -> None:
        self.finished = True


def _boundary(content_type: str | None) -> bytes:
    media_type, params = parse_options_header(content_type)
    if media_type != b"multipart/form-data":
        raise ApiError(
            415,
            "unsupported_media_type",
            "the request body must be multipart/form-data with fields 'prediction' and 'reference'",
        )
    boundary = params.get(b"boundary")
    if not boundary:
        raise ApiError(400, "malformed_multipart", "the multipart Content-Type has no boundary")
    return boundary


def _name_by_content(path: Path) -> Path:
    """Rename an upload after its first bytes: ``.nii.gz`` (gzip magic), ``.nrrd`` (NRRD magic),
    ``.mha`` (a MetaImage header with its data attached), else ``.nii``."""
    with open(path, "rb") as f:
        head = f.read(4096)
    if head.startswith(_GZIP_MAGIC):
        suffix = ".nii.gz"
    elif head.startswith(_NRRD_MAGIC):
        suffix = ".nrrd"
    elif all(pattern.search(head) for pattern in _METAIMAGE):
        suffix = ".mha"
    else:
        suffix = ".nii"
    target = path.with_suffix(suffix)
    path.rename(target)
    return target


class _Pace:
    """The minimum upload rate, as one timer: past ``grace + received / min_rate`` seconds
    (``received`` counted by the caller) the receiving task is cancelled and :attr:`expired`
    set, which the caller turns into 408 ``upload_too_slow``.

    The timer only looks at the count when it fires and then moves itself to the deadline that
    count allows, so a chunk costs one addition (``asyncio.wait_for`` per chunk made a task per
    chunk: thousands for a dataset archive). Leaving the ``with`` block cancels the timer.
    """

    def __init__(self, min_rate: float, grace: float) -> None:
        self.min_rate = min_rate
        self.grace = grace
        self.received = 0
        self.expired = False
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        self._started = self._loop.time()
        self._timer: asyncio.TimerHandle | None = None

    def __enter__(self) -> _Pace:
        if self.grace != float("inf"):
            self._arm()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _deadline(self) -> float:
        return self._started + self.grace + self.received / self.min_rate

    def _arm(self) -> None:
        self._timer = self._loop.call_at(self._deadline(), self._check)

    def _check(self) -> None:
        if self._deadline() > self._loop.time():
            self._arm()  # more bytes came since: a later deadline
        elif self._task is not None:
            self._timer = None
            self.expired = True
            self._task.cancel()

    def too_slow(self) -> ApiError:
        """The 408, after the cancellation has been caught (and taken back on Python 3.11+)."""
        uncancel = getattr(self._task, "uncancel", None)
        if uncancel is not None:
            uncancel()
        return ApiError(
            408,
            "upload_too_slow",
            f"the upload arrived slower than {self.min_rate:g} bytes/s ({self.received} bytes "
            f"in {self._loop.time() - self._started:.1f} s)",
        )


async def receive_form(
    content_type: str | None,
    content_length: str | None,
    chunks: AsyncIterator[bytes],
    workdir: Path,
    max_file_bytes: int,
    text_fields: Collection[str],
    *,
    min_rate: float = 1.0,
    grace: float = float("inf"),
    file_fields: Collection[str] = SCORE_FILE_FIELDS,
    required_files: Collection[str] = FILE_FIELDS,
    on_file: Callable[[str, GrowingFile], None] | None = None,
) -> UploadedForm:
    """Parse the body from ``chunks`` into ``workdir``; raise :class:`ApiError` on bad input.

    A declared ``Content-Length`` above :func:`body_limit` is refused before any byte is
    read; a body that passes it while arriving (chunked, or longer than declared) when it
    does, and so does one with more than ``MAX_EPILOGUE_BYTES`` after its final boundary.
    The body must arrive within ``grace + received / min_rate`` seconds (408).
    ``file_fields`` are the fields written to files (the pair and its optional image by
    default; the archives of ``POST /v1/jobs``), ``required_files`` those that must come.
    ``on_file(name, growing)`` is called as each file part begins, with the file as it grows
    (its readers are released when the part ends or the upload is refused).
    """
    boundary = _boundary(content_type)
    limit = body_limit(max_file_bytes, len(text_fields), len(file_fields))
    too_large = (
        f"the request body is larger than the limit of {limit} bytes "
        f"({len(file_fields)} files of at most {max_file_bytes} bytes and the form fields)"
    )
    if content_length is not None and content_length.isdecimal() and int(content_length) > limit:
        raise ApiError(413, "upload_too_large", too_large)
    writer = _FormWriter(workdir, max_file_bytes, text_fields, file_fields, on_file)
    close_delimiter = b"\r\n--" + boundary + b"--"
    epilogue = 0
    tail = b""
    pace = _Pace(min_rate, grace)
    try:
        parser = MultipartParser(boundary, writer.callbacks())  # type: ignore[arg-type]
        with pace:
            async for chunk in chunks:
                pace.received += len(chunk)
                if pace.received > limit:
                    raise ApiError(413, "upload_too_large", too_large)
                if writer.finished:
                    epilogue += len(chunk)
                else:
                    parser.write(chunk)
                    if writer.finished:  # the close delimiter is in this chunk (or spans into it)
                        window = tail + chunk
                        end = window.find(close_delimiter)
                        epilogue = len(window) - end - len(close_delimiter) if end >= 0 else 0
                    tail = chunk[-len(close_delimiter) :]
                if epilogue > MAX_EPILOGUE_BYTES:
                    raise ApiError(
                        413,
                        "upload_too_large",
                        f"more than {MAX_EPILOGUE_BYTES} bytes follow the form's final boundary",
                    )
        parser.finalize()
    except FormParserError as exc:
        raise ApiError(
            400, "malformed_multipart", f"the multipart body is malformed: {exc}"
        ) from None
    except asyncio.CancelledError:
        if pace.expired:
            raise pace.too_slow() from None
        raise
    finally:
        writer.close()
    if not writer.finished:
        raise ApiError(
            400, "malformed_multipart", "the multipart body ended before its last boundary"
        )
    form = writer.form
    missing = [name for name in required_files if name not in form.files]
    if missing:
        raise ApiError(
            422,
            "missing_field",
            f"missing file field(s): {', '.join(missing)}; send "
            f"{' and '.join(repr(n) for n in required_files)} as files",
        )
    form.files = {
        name: _name_by_content(path) if name in SCORE_FILE_FIELDS else path
        for name, path in form.files.items()
    }
    return form
