"""The ``monai-jdt`` command line.

::

    monai-jdt score PRED REF [options]          one case: a table, or --json / -o / --csv
    monai-jdt score-dir PREDS REFS [options]    a folder of cases: summary, -o, --csv
    monai-jdt serve [options]                   the HTTP scoring service (monai-jdt[service])

Errors are one line on stderr and a non-zero exit status, never a traceback: 2 for bad options
or input, 1 when some cases of ``score-dir`` failed, 3 for an unexpected internal error (set
``MONAI_JDT_DEBUG=1`` to see its traceback). ``score`` and ``score-dir`` never import the
service (FastAPI), and ``serve`` finds it through the entry point group ``monai_jdt.commands``
(never by name). The flags of ``score`` / ``score-dir`` are derived from the option models
(``ScoringOptions``, ``FolderOptions``): one definition each.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import io
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, TextIO, get_args, get_origin

from monai_jdt import __version__

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["COMMANDS_GROUP", "build_parser", "command_module", "main"]

EXIT_OK, EXIT_FAILED_CASES, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
#: entry point group of commands that live in other packages (``serve``: the service)
COMMANDS_GROUP = "monai_jdt.commands"
_COMMANDS = ("score", "score-dir", "serve")
_SERVICE_HINT = (
    "monai-jdt serve needs the service extra: install monai-jdt[service] "
    "(from the checkout: pip install '.[service]')"
)
#: the extra each command of ``monai_jdt.commands`` needs
_EXTRAS = {"serve": "service"}


class _CliError(Exception):
    """A failure to report as one line (``message``) with an exit status."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT) -> None:
        super().__init__(message)
        self.status = status


# --------------------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line on stderr (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _add_model_flags(group: Any, model: type[BaseModel]) -> None:
    """One flag per field of ``model`` exposed to the command line: ``--field-name``, with the
    field's help text, default and choices. Flags left out stay ``None`` (the model's default
    applies); booleans are switches."""
    from monai_jdt.scoring.options import exposure

    for name, info in model.model_fields.items():
        shown = exposure(info)
        if not shown.cli:
            continue
        text = (info.description or "").replace("%", "%%")
        if info.annotation is bool:
            group.add_argument(_flag(name), action="store_true", default=None, help=text)
            continue
        default = info.default
        if isinstance(default, tuple):
            default = ",".join(default)
        if default is not None:
            text += f" (default: {default})"
        choices = get_args(info.annotation) if get_origin(info.annotation) is Literal else None
        group.add_argument(
            _flag(name),
            default=None,
            type=_number_type(info.annotation),
            choices=choices,
            metavar=shown.metavar,
            help=text,
        )


def _number_type(annotation: Any) -> Callable[[str], int | float] | None:
    """The parser of a numeric field (optional or not), so that argparse refuses text that is
    not a plain decimal number (``1_0``, ``inf``: ``text_number``) as a usage error; None for
    the others (validated as text)."""
    from monai_jdt.scoring.options import text_number

    parse = text_number(annotation)
    if parse is None:
        return None

    def number(text: str) -> int | float:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None

    return number


def _model_values(args: argparse.Namespace, model: type[BaseModel]) -> dict[str, Any]:
    """The flags of ``model`` that were given, as text (or True for switches)."""
    return {
        name: getattr(args, name)
        for name in model.model_fields
        if getattr(args, name, None) is not None
    }


def _add_scoring_options(parser: argparse.ArgumentParser) -> None:
    from monai_jdt.scoring.options import ScoringOptions

    _add_model_flags(parser.add_argument_group("scoring"), ScoringOptions)
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    out.add_argument("-o", "--output", metavar="FILE", help="write the JSON report to FILE")
    out.add_argument(
        "--csv",
        metavar="FILE",
        help="write one CSV row per case and label to FILE (and one per failed case, with its "
        "error code)",
    )


def _missing_extra(extra: str) -> list[str]:
    """The distributions that the ``extra`` of monai-jdt requires and that are not installed."""
    from importlib import metadata

    try:
        requirements = metadata.requires("monai-jdt") or []
    except metadata.PackageNotFoundError:
        return []
    missing = []
    for requirement in requirements:
        name = re.match(r"[A-Za-z0-9._-]+", requirement)
        marker = requirement.partition(";")[2].replace("'", '"').replace(" ", "")
        if name is None or f'extra=="{extra}"' not in marker or name[0] == "monai-jdt":
            continue
        try:
            metadata.distribution(name[0])
        except metadata.PackageNotFoundError:
            missing.append(name[0])
    return missing


def command_module(name: str) -> ModuleType:
    """The module of a command registered in the entry point group ``monai_jdt.commands``
    (``serve`` -> ``jdt_service.server``): it has ``add_arguments(parser)`` and ``run(args)``.

    Raises:
        _CliError: the command's extra is not installed (the only case that says "install
            monai-jdt[service]"), or no such command is registered. Any other ImportError of
            the command's module propagates as itself.
    """
    from importlib import metadata

    found = list(metadata.entry_points(group=COMMANDS_GROUP, name=name))
    missing = _missing_extra(_EXTRAS.get(name, name))
    if missing:
        raise _CliError(f"{_SERVICE_HINT}; missing: {', '.join(missing)}")
    if not found:
        raise _CliError(
            f"no {name!r} command is registered in the entry point group {COMMANDS_GROUP!r}: "
            "reinstall monai-jdt (pip install -e '.[service]')"
        )
    module = found[0].load()
    assert isinstance(module, ModuleType), f"{found[0].value} is not a module"
    return module


def _add_serve(subparsers: Any, with_options: bool) -> None:
    help_text = "run the HTTP scoring service (needs monai-jdt[service])"
    if not with_options:
        # listed in `monai-jdt --help` without importing the service
        subparsers.add_parser("serve", help=help_text, add_help=False)
        return
    server = command_module("serve")
    serve = subparsers.add_parser("serve", help=help_text, description=help_text)
    server.add_arguments(serve)
    serve.set_defaults(handler=server.run)


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The argument parser. Every command is listed; the options are added for ``command``
    only (None: ``score`` and ``score-dir``), so ``--version`` and ``--help`` import nothing
    heavy, and only ``serve`` imports the service (found through its entry point)."""
    parser = _Parser(
        prog="monai-jdt",
        description="Score segmentations (Dice, Jaccard, precision, recall, Tversky) and serve "
        "the scoring over HTTP.",
    )
    parser.add_argument("--version", action="version", version=f"monai-jdt {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    score = subparsers.add_parser(
        "score",
        help="score one prediction against one reference (NIfTI)",
        description="Score one prediction NIfTI file against its reference.",
    )
    formats = ".nii/.nii.gz; .nrrd/.nhdr/.mha/.mhd with the formats extra"
    score.add_argument("prediction", help=f"predicted label map or probability map ({formats})")
    score.add_argument("reference", help=f"reference label map ({formats})")
    if command in (None, "score"):
        _add_scoring_options(score)
    score.set_defaults(handler=_run_score)

    score_dir = subparsers.add_parser(
        "score-dir",
        help="score a folder of predictions against a folder of references",
        description="Pair files by case id (same file name in both folders), score every "
        "pair, and summarise the dataset.",
    )
    score_dir.add_argument("predictions", help="folder of predictions")
    score_dir.add_argument("references", help="folder of references")
    if command in (None, "score-dir"):
        from monai_jdt.scoring.folders import FolderOptions

        _add_scoring_options(score_dir)
        _add_model_flags(score_dir.add_argument_group("folders"), FolderOptions)
        score_dir.add_argument(
            "--no-progress", action="store_true", help="no progress bar on stderr"
        )
        score_dir.add_argument(
            "--dask",
            metavar="ADDR",
            help="score the cases on a Dask cluster: its scheduler (tcp://host:8786), or "
            "'local' for a LocalCluster of --workers processes",
        )
    score_dir.set_defaults(handler=_run_score_dir)

    _add_serve(subparsers, command == "serve")
    return parser


# --------------------------------------------------------------------------- options


def _options(args: argparse.Namespace) -> Any:
    """The ``ScoringOptions`` of the flags given (``InvalidOptionError`` when bad)."""
    from monai_jdt.scoring.options import ScoringOptions

    return ScoringOptions.from_text(_model_values(args, ScoringOptions))


def _folder_options(args: argparse.Namespace) -> Any:
    from monai_jdt.scoring.folders import FolderOptions

    return FolderOptions.from_text(_model_values(args, FolderOptions))


# --------------------------------------------------------------------------- output


def _fmt(value: Any, digits: int = 4) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "-"
        return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.4g}"
    return str(value)


def _table(header: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO) -> None:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    stream.write("  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True)) + "\n")
    for row in rows:
        stream.write("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + "\n")


def _print_case(report: dict[str, Any], stream: TextIO) -> None:
    spacing = report["spacing_mm"]
    stream.write(
        f"case {report['case_id']}: {report['kind']}, shape {'x'.join(map(str, report['shape']))}"
        + (f", spacing {'x'.join(f'{s:g}' for s in spacing)} mm" if spacing else "")
        + f", {report['device']}, {report['seconds']:.3f} s\n"
    )
    metrics = report["options"]["metrics"]
    header = ["label", "name", *metrics, "ref_voxels", "pred_voxels", "ref_ml", "pred_ml"]
    rows, notes = [], []
    for row in report["labels"]:
        mark = "" if row["requested"] else "*"
        rows.append(
            [
                f"{row.get('region') or row['label']}{mark}",
                row["name"] or "",
                *(_fmt(row[m]) for m in metrics),
                _fmt(row["reference_voxels"], 1),
                _fmt(row["predicted_voxels"], 1),
                _fmt(row["reference_ml"], 2),
                _fmt(row["predicted_ml"], 2),
            ]
        )
        notes += [
            f"{'region ' + row['region'] if row.get('region') else 'label ' + str(row['label'])}: "
            f"{m} undefined: {why}"
            for m, why in row["reasons"].items()
        ]
    if rows:
        _table(header, rows, stream)
    else:
        stream.write("no labels to score (both volumes are background only)\n")
    if any(not row["requested"] for row in report["labels"]):
        stream.write("* in the prediction, not asked for\n")
    for note in [*report["notes"], *notes]:
        stream.write(f"note: {note}\n")


def _print_summary(result: dict[str, Any], stream: TextIO) -> None:
    summary = result["summary"]
    stream.write(f"{summary['cases']} cases scored, {len(result['failures'])} failed\n")
    metrics = summary["metrics"]
    header = (
        ["label", "name", "cases"]
        + [f"{m}_mean" for m in metrics]
        + ["dice_std"] * ("dice" in metrics)
    )
    rows = []
    for entry in summary["labels"] + summary.get("regions", []):
        mark = "" if entry.get("requested", True) else "*"
        key = entry.get("region", entry.get("label"))
        cells = [f"{key}{mark}", entry.get("name") or "", str(entry["cases"])]
        cells += [f"{_fmt(entry[m]['mean'])} (n={entry[m]['n']})" for m in metrics]
        if "dice" in metrics:
            cells.append(_fmt(entry["dice"]["std"]))
        rows.append(cells)
    if rows:
        _table(header, rows, stream)
    if any(not entry["requested"] for entry in summary["labels"]):
        stream.write("* in the predictions, not asked for (left out of the means below)\n")
    means = ", ".join(
        f"{m} {_fmt(v['mean'])} over {v['labels']} labels"
        for m, v in summary["foreground_mean"].items()
    )
    stream.write(f"foreground mean: {means}\n")
    fine = summary["fine_grained"]
    for metric in ("jaccard", "dice"):
        values = fine[metric]
        stream.write(
            f"{metric}: D {_fmt(values['D'])}  I {_fmt(values['I'])}  C {_fmt(values['C'])}  "
            f"I_worst{fine['q_percent']:g}% {_fmt(values['I_worst'])}  "
            f"C_worst{fine['q_percent']:g}% {_fmt(values['C_worst'])}\n"
        )


def _check_outputs(args: argparse.Namespace) -> None:
    """The ``-o`` and ``--csv`` targets, before anything is scored: each in an existing
    folder and not a folder itself, and not both one file (the CSV would replace the JSON).

    Raises:
        _CliError: naming the flag and the path.
    """
    targets = [(flag, path) for flag, path in (("-o", args.output), ("--csv", args.csv)) if path]
    for flag, path in targets:
        target = Path(path)
        if target.is_dir():
            raise _CliError(f"{flag} {path}: is a folder; give a file name.")
        if not target.parent.is_dir():
            raise _CliError(f"{flag} {path}: the folder {str(target.parent)!r} does not exist.")
    if len(targets) == 2 and os.path.realpath(args.output) == os.path.realpath(args.csv):
        raise _CliError(f"-o and --csv name one file ({args.output}); give two.")


def _write_file(path: str, write: Callable[[TextIO], object]) -> None:
    """``write`` the file at ``path`` through a temporary file in its folder, renamed over it
    once complete: a run that fails while writing (a full disk, a signal) leaves the old file
    as it was. A device or a pipe (``-o /dev/stdout``) is written directly.

    Raises:
        _CliError: the file cannot be written.
    """
    import tempfile  # 5-7 ms of start-up, only for the commands that write a file

    target = Path(os.path.realpath(path))  # a link's file is replaced, not the link
    # surrogateescape: a case id from a file name that is not UTF-8 is written as its bytes
    opened: dict[str, Any] = {"newline": "", "encoding": "utf-8", "errors": "surrogateescape"}
    temp: str | None = None
    try:
        if target.exists() and not target.is_file():
            with open(target, "w", **opened) as stream:
                write(stream)
            return
        fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # as open() would create it
        with os.fdopen(fd, "w", **opened) as stream:
            write(stream)
        os.replace(temp, target)
        temp = None
    except OSError as err:
        raise _CliError(f"cannot write {path}: {err.strerror or err}") from err
    finally:
        if temp is not None:
            with contextlib.suppress(OSError):
                os.unlink(temp)


def _write_text(text: str, path: str) -> None:
    _write_file(path, lambda stream: stream.write(text + "\n"))


def _write_csv(reports: list[Any], path: str, failures: Sequence[Any] = ()) -> None:
    from monai_jdt.scoring.folders import write_csv

    _write_file(path, lambda stream: write_csv(reports, stream, failures))


def _print(write: Callable[[TextIO], object], written: bool) -> None:
    """``write`` to stdout. When its reader has gone (``| head``) the rest of stdout goes to
    /dev/null, and the caller still reports failures and its exit status. A closed stdout is
    skipped when the report was ``written`` to a file (``-o``).

    Raises:
        _CliError: stdout is closed (and nothing was written) or cannot be written.
    """
    if sys.stdout is None:
        if written:
            return
        raise _CliError("stdout is closed; write the report with -o FILE instead.")
    try:
        write(sys.stdout)
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except OSError as err:
        raise _CliError(f"cannot write stdout: {err.strerror or err}") from err


def _line(text: str) -> str:
    """``text`` as one line of stderr: a name holding a newline or other control characters
    (a file name can) is escaped, so that it cannot make a line of its own."""
    return text if text.isprintable() else text.encode("unicode_escape").decode("ascii")


class _Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal)."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.done, self.failed = total, 0, 0
        self.enabled = enabled and sys.stderr.isatty() and total > 0
        self.started = time.perf_counter()

    def __call__(self, outcome: Any) -> None:
        self.done += 1
        self.failed += int(not hasattr(outcome, "labels"))
        if not self.enabled:
            return
        width = 30
        filled = int(width * self.done / self.total)
        rate = self.done / max(time.perf_counter() - self.started, 1e-9)
        sys.stderr.write(
            f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} cases, "
            f"{self.failed} failed, {rate:.1f} cases/s"
        )
        if self.done == self.total:
            sys.stderr.write("\n")
        sys.stderr.flush()


# --------------------------------------------------------------------------- commands


def _run_score(args: argparse.Namespace) -> int:
    from monai_jdt.scoring import score_files

    options = _options(args)
    _check_outputs(args)
    report = score_files(args.prediction, args.reference, options)
    data = report.to_dict()
    for warning in report.warnings:
        sys.stderr.write(_line(f"warning: {warning}") + "\n")
    text = json.dumps(data, indent=2, allow_nan=False)
    if args.output:
        _write_text(text, args.output)
    if args.csv:
        _write_csv([report], args.csv)
    _print(
        lambda out: out.write(text + "\n") if args.json else _print_case(data, out),
        written=bool(args.output),
    )
    return EXIT_OK


def _run_score_dir(args: argparse.Namespace) -> int:
    from monai_jdt.scoring import pair_cases, score_directory
    from monai_jdt.scoring.allocator import tune_allocator

    options, run = _options(args), _folder_options(args)  # checked before anything is printed
    _check_outputs(args)
    tune_allocator()  # case after case: keep the freed chunk buffers for the next case
    if run.summary_format == "nnunet" and not {"dice", "jaccard"} <= set(options.metrics):
        raise _CliError(
            "[invalid_option] --summary-format nnunet writes Dice and IoU: add dice and "
            "jaccard to --metrics."
        )
    pairs, unpaired_preds, unpaired_refs = pair_cases(args.predictions, args.references)
    for role, names, folder in (
        ("predictions without a reference", unpaired_preds, args.predictions),
        ("references without a prediction", unpaired_refs, args.references),
    ):
        if names:
            shown = ", ".join(names[:10]) + (
                f", ... ({len(names) - 10} more)" if len(names) > 10 else ""
            )
            sys.stderr.write(_line(f"warning: {len(names)} {role} in {folder}: {shown}") + "\n")
    if not pairs:
        raise _CliError(
            f"no case of {args.predictions} has a reference of the same file name in "
            f"{args.references} (files must end in .nii, .nii.gz, .nrrd, .nhdr, .mha or .mhd)."
        )
    if args.dask:
        from monai_jdt.scoring.cluster import score_directory_dask

        score_directory = functools.partial(score_directory_dask, address=args.dask)
    result = score_directory(
        args.predictions,
        args.references,
        options,
        workers=run.workers,
        worst_q=run.worst_q,
        progress=_Progress(len(pairs), not args.no_progress),
    )
    data = result.to_dict()
    if run.summary_format == "nnunet":
        from monai_jdt.scoring.nnunet import dumps_nnunet, nnunet_summary

        text = dumps_nnunet(nnunet_summary(result.reports, result.files))
    else:
        text = json.dumps(data, indent=2, allow_nan=False)
    if args.output:
        _write_text(text, args.output)
    if args.csv:
        _write_csv(result.reports, args.csv, result.failures)
    _print(
        lambda out: out.write(text + "\n") if args.json else _print_summary(data, out),
        written=bool(args.output),
    )
    for report in result.reports:
        for warning in report.warnings:
            sys.stderr.write(_line(f"warning: case {report.case_id}: {warning}") + "\n")
    for failure in result.failures:
        message = _with_flags(failure.message, failure.options)
        line = f"error: case {failure.case_id}: [{failure.code}] {message}"
        sys.stderr.write(_line(line) + "\n")
    return EXIT_FAILED_CASES if result.failures else EXIT_OK


# --------------------------------------------------------------------------- entry point


def _with_flags(message: str, options: Sequence[str]) -> str:
    """``message`` with the flags of the options that bear on it (``ScoringError.options``)."""
    flags = [_flag(name) for name in options if name and name != "case_id"]  # "": the model
    return f"{message} (see {', '.join(flags)})" if flags else message


def _error(message: str) -> None:
    sys.stderr.write(_line(f"monai-jdt: error: {message}") + "\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and argv[0] in _COMMANDS else ""
    for stream in (sys.stdout, sys.stderr):  # a file name that is not UTF-8, in the table
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    from monai_jdt.scoring.errors import ScoringError

    try:
        args = build_parser(command).parse_args(argv)
        handler: Callable[[argparse.Namespace], int] = args.handler
        return int(handler(args))
    except ScoringError as err:
        _error(f"[{err.code}] {_with_flags(err.message, err.options)}")
        return EXIT_BAD_INPUT
    except _CliError as err:
        _error(str(err))
        return err.status
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except BrokenPipeError:
        # the reader of stdout stopped (``| head``): not a failure of the scoring; stdout goes
        # to devnull so that the interpreter's last flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as err:  # never a traceback for the user
        if os.environ.get("MONAI_JDT_DEBUG"):
            traceback.print_exc()
        torch = sys.modules.get("torch")  # loaded only if the case needed it
        if torch is not None and isinstance(err, torch.OutOfMemoryError):
            _error(f"the device ran out of memory ({err}); try --device cpu")
            return EXIT_FAILED_CASES
        name = type(err).__name__
        _error(f"internal error: {name}: {err} (set MONAI_JDT_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
