"""The exceptions of the scoring core: one class per kind of bad input.

Each carries a stable machine-readable ``code`` (used as ``detail.code`` by the service and
printed by the command line) and a message a person can act on (which file or argument, what
was expected, what arrived). The core knows nothing of its front ends: the HTTP status of each
code lives in the service (``jdt_service.errors``), and an error names the scoring options that
bear on it in ``options`` (field names of ``ScoringOptions``), which each front end spells its
own way (``--affine-tol`` on the command line, the form field ``affine_tol`` over HTTP).
"""

from __future__ import annotations

__all__ = [
    "AffineMismatchError",
    "CorruptFileError",
    "InvalidOptionError",
    "NegativeLabelError",
    "NonFiniteValuesError",
    "NonIntegerLabelsError",
    "NotNiftiError",
    "ProbabilityRangeError",
    "ScoringError",
    "ShapeMismatchError",
    "TooManyLabelsError",
    "UnsupportedDataTypeError",
    "VolumeTooLargeError",
]


class ScoringError(ValueError):
    """Base class: bad input to the scoring core. ``str(err)`` is the message for a person."""

    code: str = "invalid_input"
    #: the options (``ScoringOptions`` field names) a user may change to get past this error
    options: tuple[str, ...] = ()

    def __init__(self, message: str, *, options: tuple[str, ...] | None = None) -> None:
        super().__init__(message)
        self.message = message
        if options is not None:
            self.options = options

    def to_detail(self) -> dict[str, str]:
        """The JSON error body's ``detail``: ``{"code": ..., "message": ...}``."""
        return {"code": self.code, "message": self.message}

    def of_input(self, role: str) -> ScoringError:
        """This error, its message led by which input it is about (``"prediction"``,
        ``"reference"``): two folders of cases hold files of the same names."""
        self.message = f"{role} {self.message}"
        self.args = (self.message,)
        return self


class InvalidOptionError(ScoringError):
    """A scoring option has a bad value (labels spec, tolerance, device, metric name...)."""

    code = "invalid_option"

    def __init__(
        self, message: str, *, option: str | None = None, also: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message, options=None if option is None else (option, *also))
        #: the option with the bad value (a ``ScoringOptions`` field name), when known; ``also``:
        #: the others that meet it in the error (``only_requested`` needs ``labels``)
        self.option = option


class NotNiftiError(ScoringError):
    """The file is not NIfTI-1/NIfTI-2 (wrong magic, wrong header size, not gzip nor raw)."""

    code = "not_nifti"


class CorruptFileError(ScoringError):
    """The file starts as NIfTI but is truncated or its gzip stream is corrupt."""

    code = "corrupt_file"


class ShapeMismatchError(ScoringError):
    """Prediction and reference volumes have different shapes."""

    code = "shape_mismatch"


class AffineMismatchError(ScoringError):
    """Prediction and reference affines differ beyond the tolerance."""

    code = "affine_mismatch"
    options = ("ignore_affine", "affine_tol")


class NonIntegerLabelsError(ScoringError):
    """A label volume holds values that are not whole numbers."""

    code = "non_integer_labels"


class NonFiniteValuesError(ScoringError):
    """A volume holds NaN or infinity."""

    code = "non_finite_values"


class NegativeLabelError(ScoringError):
    """A label volume holds negative values."""

    code = "negative_labels"


class ProbabilityRangeError(ScoringError):
    """A probability volume holds values outside [0, 1]."""

    code = "probability_out_of_range"


class VolumeTooLargeError(ScoringError):
    """The volume (as declared by its header) exceeds the configured voxel limit."""

    code = "volume_too_large"
    options = ("max_voxels",)


class TooManyLabelsError(ScoringError):
    """A label volume holds more distinct labels than a confusion matrix is kept for."""

    code = "too_many_labels"
    options = ("max_labels",)


class UnsupportedDataTypeError(ScoringError):
    """The file stores a data type the scoring core cannot score (complex, RGB, unknown code)."""

    code = "unsupported_dtype"


class LabelIdTooLargeError(ScoringError):
    """A label volume holds an id of 2**63 or more (ids are signed 64-bit in the reports)."""

    code = "label_id_too_large"
