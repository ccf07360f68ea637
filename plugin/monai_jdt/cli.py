"""The ``monai-jdt`` command line.

::

    monai-jdt score PRED REF [options]          one case: a table, or --json / -o / --csv
    monai-jdt score-dir PREDS REFS [options]    a folder of cases: summary, -o, --csv
    monai-jdt serve [options]                   the HTTP scoring service (monai-jdt[service])

Errors are one line on stderr and a non-zero exit status, never a traceback: 2 for bad options
or input, 1 when some cases of ``score-dir`` failed, 3 for an unexpected internal error (set
``MONAI_JDT_DEBUG=1`` to see its traceback). ``score`` and ``score-dir`` never import the
service (FastAPI).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from monai_jdt import __version__

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED_CASES, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
_SERVICE_HINT = (
    "monai-jdt serve needs the service extra: install monai-jdt[service] "
    "(pip install 'monai-jdt[service]')"
)


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


def _add_scoring_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("scoring")
    group.add_argument(
        "--labels",
        metavar="SPEC",
        help="labels to score, with optional names: '1=liver,2=spleen' or '1,2' "
        "(default: every label present in either volume)",
    )
    group.add_argument(
        "--include-background", action="store_true", help="also score label 0 (background)"
    )
    group.add_argument(
        "--empty",
        choices=("nan", "one"),
        default="nan",
        help="score of a label absent from both volumes: nan (reported as null, skipped by "
        "means; default) or one (1.0)",
    )
    group.add_argument(
        "--metrics",
        metavar="LIST",
        default="dice,jaccard,precision,recall",
        help="comma-separated ratios among dice, jaccard, precision, recall, tversky "
        "(default: %(default)s); counts and volumes are always reported",
    )
    group.add_argument(
        "--tversky-alpha",
        type=float,
        default=0.5,
        metavar="A",
        help="Tversky weight of false positives (default: 0.5)",
    )
    group.add_argument(
        "--tversky-beta",
        type=float,
        default=0.5,
        metavar="B",
        help="Tversky weight of false negatives (default: 0.5)",
    )
    group.add_argument(
        "--kind",
        choices=("auto", "labels", "probabilities"),
        default="auto",
        help="read the prediction as a label map or a probability map (default: from the data)",
    )
    group.add_argument(
        "--device",
        default="auto",
        metavar="{auto,cpu,cuda,cuda:N}",
        help="where to count: auto (CUDA for probability maps when available, CPU for label "
        "maps), cpu, cuda or cuda:N (default: auto)",
    )
    group.add_argument(
        "--ignore-affine", action="store_true", help="do not compare the two files' affines"
    )
    group.add_argument(
        "--affine-tol",
        type=float,
        default=1e-4,
        metavar="MM",
        help="largest affine difference accepted (default: 1e-4)",
    )
    group.add_argument(
        "--max-voxels",
        type=int,
        default=None,
        metavar="N",
        help="refuse volumes with more voxels (checked on the header, before decompression)",
    )
    out = parser.add_argument_group("output")
    out.add_argument("--json", action="store_true", help="print JSON on stdout instead of a table")
    out.add_argument("-o", "--output", metavar="FILE", help="write the JSON report to FILE")
    out.add_argument("--csv", metavar="FILE", help="write one CSV row per case and label to FILE")


def _add_serve(subparsers: Any, with_options: bool) -> None:
    help_text = "run the HTTP scoring service (needs monai-jdt[service])"
    if not with_options:
        # listed in `monai-jdt --help` without importing the service
        subparsers.add_parser("serve", help=help_text, add_help=False)
        return
    from jdt_service.server import add_arguments, run

    serve = subparsers.add_parser("serve", help=help_text, description=help_text)
    add_arguments(serve)
    serve.set_defaults(handler=run)


def build_parser(with_serve: bool = False) -> argparse.ArgumentParser:
    """The argument parser; ``with_serve`` imports the service to add ``serve``'s options."""
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
    score.add_argument("prediction", help="predicted label map or probability map (.nii/.nii.gz)")
    score.add_argument("reference", help="reference label map (.nii/.nii.gz)")
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
    _add_scoring_options(score_dir)
    score_dir.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="cases scored at once (default: the number of CPUs)",
    )
    score_dir.add_argument(
        "--worst-q",
        type=float,
        default=10.0,
        metavar="PCT",
        help="percentage of worst cases for the worst-case means (default: 10)",
    )
    score_dir.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    score_dir.add_argument(
        "--dask",
        metavar="ADDR",
        help="score the cases on a Dask cluster: its scheduler (tcp://host:8786), or 'local' "
        "for a LocalCluster of --workers processes",
    )
    score_dir.set_defaults(handler=_run_score_dir)

    _add_serve(subparsers, with_serve)
    return parser


# --------------------------------------------------------------------------- options


def _options(args: argparse.Namespace) -> Any:
    from monai_jdt.scoring import ScoringOptions, parse_labels

    metrics = tuple(m.strip() for m in args.metrics.split(",") if m.strip())
    return ScoringOptions(
        labels=parse_labels(args.labels) if args.labels is not None else None,
        include_background=args.include_background,
        empty=args.empty,
        metrics=metrics,
        tversky_alpha=args.tversky_alpha,
        tversky_beta=args.tversky_beta,
        affine_tol=args.affine_tol,
        ignore_affine=args.ignore_affine,
        device=args.device,
        max_voxels=args.max_voxels,
        kind=args.kind,
    )


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
                f"{row['label']}{mark}",
                row["name"] or "",
                *(_fmt(row[m]) for m in metrics),
                _fmt(row["reference_voxels"], 1),
                _fmt(row["predicted_voxels"], 1),
                _fmt(row["reference_ml"], 2),
                _fmt(row["predicted_ml"], 2),
            ]
        )
        notes += [
            f"label {row['label']}: {m} undefined: {why}" for m, why in row["reasons"].items()
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
    for entry in summary["labels"]:
        mark = "" if entry["requested"] else "*"
        cells = [f"{entry['label']}{mark}", entry["name"] or "", str(entry["cases"])]
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


def _write_json(data: dict[str, Any], path: str) -> None:
    try:
        Path(path).write_text(json.dumps(data, indent=2, allow_nan=False) + "\n")
    except OSError as err:
        raise _CliError(f"cannot write {path}: {err.strerror or err}") from err


def _write_csv(reports: list[Any], path: str) -> None:
    from monai_jdt.scoring.batch import write_csv

    try:
        with open(path, "w", newline="") as stream:
            write_csv(reports, stream)
    except OSError as err:
        raise _CliError(f"cannot write {path}: {err.strerror or err}") from err


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

    report = score_files(args.prediction, args.reference, _options(args))
    data = report.to_dict()
    if args.output:
        _write_json(data, args.output)
    if args.csv:
        _write_csv([report], args.csv)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    else:
        _print_case(data, sys.stdout)
    return EXIT_OK


def _run_score_dir(args: argparse.Namespace) -> int:
    from monai_jdt.scoring import pair_cases, score_directory

    options = _options(args)
    pairs, unpaired_preds, unpaired_refs = pair_cases(args.predictions, args.references)
    for role, names, folder in (
        ("predictions without a reference", unpaired_preds, args.predictions),
        ("references without a prediction", unpaired_refs, args.references),
    ):
        if names:
            shown = ", ".join(names[:10]) + (
                f", ... ({len(names) - 10} more)" if len(names) > 10 else ""
            )
            sys.stderr.write(f"warning: {len(names)} {role} in {folder}: {shown}\n")
    if not pairs:
        raise _CliError(
            f"no case of {args.predictions} has a reference of the same file name in "
            f"{args.references} (files must end in .nii or .nii.gz)."
        )
    if args.dask:
        from monai_jdt.scoring.cluster import score_directory_dask

        score_directory = functools.partial(score_directory_dask, address=args.dask)
    result = score_directory(
        args.predictions,
        args.references,
        options,
        workers=args.workers,
        worst_q=args.worst_q,
        progress=_Progress(len(pairs), not args.no_progress),
    )
    data = result.to_dict()
    if args.output:
        _write_json(data, args.output)
    if args.csv:
        _write_csv(result.reports, args.csv)
    if args.json:
        sys.stdout.write(json.dumps(data, indent=2, allow_nan=False) + "\n")
    else:
        _print_summary(data, sys.stdout)
    for failure in result.failures:
        sys.stderr.write(f"error: case {failure.case_id}: [{failure.code}] {failure.message}\n")
    return EXIT_FAILED_CASES if result.failures else EXIT_OK


# --------------------------------------------------------------------------- entry point


def _error(message: str) -> None:
    sys.stderr.write(f"monai-jdt: error: {message}\n")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status (the console script exits with it)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_serve = bool(argv) and argv[0] == "serve"
    if wants_serve:
        try:
            parser = build_parser(with_serve=True)
        except ImportError:
            _error(_SERVICE_HINT)
            return EXIT_BAD_INPUT
    else:
        parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    from monai_jdt.scoring.errors import ScoringError

    try:
        return int(handler(args))
    except ScoringError as err:
        _error(f"[{err.code}] {err.message}")
        return EXIT_BAD_INPUT
    except _CliError as err:
        _error(str(err))
        return err.status
    except KeyboardInterrupt:
        _error("interrupted")
        return 130
    except Exception as err:  # never a traceback for the user
        if os.environ.get("MONAI_JDT_DEBUG"):
            traceback.print_exc()
        name = type(err).__name__
        if name == "OutOfMemoryError":
            _error(f"the device ran out of memory ({err}); try --device cpu")
            return EXIT_FAILED_CASES
        _error(f"internal error: {name}: {err} (set MONAI_JDT_DEBUG=1 for the traceback)")
        return EXIT_INTERNAL


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
