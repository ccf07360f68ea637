"""One contract: the options and the report defined once, and what derives from them.

The scoring options (``ScoringOptions``, ``FolderOptions``) give the CLI flags, the form fields
with their OpenAPI description, and the validation; the report model (``ScoreReport``) gives
``CaseReport.to_dict()``, the OpenAPI 200 schema and docs/report.schema.json. Also the
stumbles of issue 10 that live in the contract (labels syntax, folders, messages naming the
front end's spelling, CSV rows of failed cases, label-count warnings, ``only_requested``,
``case_id`` default, ``serve`` through its entry point).
"""

from __future__ import annotations

import ast
import csv
import io
import json
import sys
import types
from importlib import metadata
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from fastapi.testclient import TestClient

from jdt_service.app import create_app
from jdt_service.errors import scoring_status
from jdt_service.forms import OPTION_FIELDS
from jdt_service.settings import Settings
from monai_jdt import cli
from monai_jdt.cli import build_parser, main
from monai_jdt.scoring import (
    SCHEMA_VERSION,
    InvalidOptionError,
    ScoringError,
    ScoringOptions,
    TooManyLabelsError,
    parse_labels,
    score_arrays,
    volumes,
)
from monai_jdt.scoring import errors as scoring_errors
from monai_jdt.scoring.folders import FolderOptions, score_directory
from monai_jdt.scoring.options import MAX_LABEL_ID, exposure
from monai_jdt.scoring.report import report_json_schema

ROOT = Path(__file__).resolve().parents[1]
SCHEMA_FILE = ROOT / "docs" / "report.schema.json"
AFFINE = np.diag([1.0, 1.5, 2.0, 1.0])


def _flags(command: str) -> set[str]:
    parser = build_parser(command)
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]  # type: ignore[union-attr]
    return {opt for action in sub._actions for opt in action.option_strings}


@pytest.fixture
def client(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "uploads").mkdir()
    settings = Settings(device="cpu", temp_dir=tmp_path / "uploads", data_dir=tmp_path / "data")
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture
def post_pair(nifti_bytes):  # type: ignore[no-untyped-def]
    """``post_pair(client, pred, ref, ...)``: POST the pair as NIfTI uploads."""

    def _post(client: TestClient, pred: np.ndarray, ref: np.ndarray, **fields: str):  # type: ignore[no-untyped-def]
        files = {
            "prediction": ("p.nii.gz", nifti_bytes(pred), "application/octet-stream"),
            "reference": ("r.nii.gz", nifti_bytes(ref), "application/octet-stream"),
        }
        return client.post("/v1/scores", files=files, data=fields)

    return _post


# ---------------------------------------------------------------- options defined once


def test_every_option_is_a_flag_of_score_and_score_dir() -> None:
    wanted = {
        "--" + name.replace("_", "-")
        for name, info in ScoringOptions.model_fields.items()
        if exposure(info).cli
    }
    assert {"--labels", "--max-labels", "--only-requested", "--device"} <= wanted
    assert wanted <= _flags("score")
    folder = {"--" + n.replace("_", "-") for n in FolderOptions.model_fields}
    assert wanted | folder <= _flags("score-dir")
    assert not folder & _flags("score")


def test_flag_help_comes_from_the_model(capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit):
        main(["score", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for name in ("tversky_alpha", "empty", "max_labels"):
        description = ScoringOptions.model_fields[name].description or ""
        assert " ".join(description.split()[:6]) in text


def test_form_fields_and_openapi_come_from_the_model(client: TestClient) -> None:
    wanted = {n for n, info in ScoringOptions.model_fields.items() if exposure(info).form}
    assert set(OPTION_FIELDS) == wanted | {"case_id"}
    assert {"device", "max_voxels"}.isdisjoint(OPTION_FIELDS)  # the server decides these
    post = client.get("/openapi.json").json()["paths"]["/v1/scores"]["post"]
    form = post["requestBody"]["content"]["multipart/form-data"]["schema"]["properties"]
    assert form["tversky_alpha"]["minimum"] == 0 and form["tversky_alpha"]["default"] == 0.5
    assert form["empty"]["enum"] == ["nan", "one"]
    assert form["metrics"] == {
        "type": "string",
        "default": "dice,jaccard,precision,recall",
        "description": ScoringOptions.model_fields["metrics"].description,
    }
    assert form["only_requested"]["type"] == "boolean"
    assert form["max_labels"]["minimum"] == 1


def test_the_same_rule_refuses_the_same_value_everywhere(
    client: TestClient, capsys, organ_pair, post_pair
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOptionError) as python:
        ScoringOptions(max_labels=0)
    assert python.value.option == "max_labels"
    pred, ref = organ_pair((12, 10, 8), 2, seed=1)
    r = post_pair(client, pred, ref, max_labels="0")
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option"
    assert "max_labels" in r.json()["detail"]["message"]
    assert main(["score", "p.nii.gz", "r.nii.gz", "--max-labels", "0"]) == 2
    assert "--max-labels" in capsys.readouterr().err


def test_python_api_stays_strict_text_is_parsed() -> None:
    for bad in ({"tversky_alpha": True}, {"tversky_alpha": "0.5"}, {"include_background": 1}):
        with pytest.raises(InvalidOptionError):
            ScoringOptions(**bad)
    parsed = ScoringOptions.from_text(
        {"tversky_alpha": "0.25", "include_background": "true", "metrics": "tversky,dice"}
    )
    assert parsed.tversky_alpha == 0.25 and parsed.include_background
    assert parsed.metrics == ("dice", "tversky")
    assert parsed.replace(device="cpu").device == "cpu"
    with pytest.raises(InvalidOptionError):
        parsed.replace(device="gpu")


# ---------------------------------------------------------------- the report defined once


def test_published_schema_is_the_model() -> None:
    published = json.loads(SCHEMA_FILE.read_text())
    assert published == report_json_schema(), (
        "docs/report.schema.json is stale; regenerate it (see report_json_schema's docstring)"
    )
    assert published["properties"]["schema_version"]["const"] == SCHEMA_VERSION
    assert SCHEMA_VERSION in published["$id"]


@pytest.mark.parametrize(
    "options",
    [
        ScoringOptions(),
        ScoringOptions(labels={1: "liver", 7: None}, metrics=("tversky",), empty="one"),
        ScoringOptions(include_background=True, only_requested=True, labels={0: None, 1: None}),
    ],
)
def test_real_reports_validate_against_the_published_schema(
    options: ScoringOptions, organ_pair
) -> None:
    schema = json.loads(SCHEMA_FILE.read_text())
    pred, ref = organ_pair((14, 12, 10), 3, seed=2)
    for spacing in (None, (0.8, 0.8, 1.5)):
        jsonschema.validate(score_arrays(pred, ref, options, spacing=spacing).to_dict(), schema)
    probs = np.stack([ref == k for k in range(4)]).astype(np.float32) * 0.8 + 0.05
    soft = score_arrays(probs, ref, options.replace(labels=None, only_requested=False))
    jsonschema.validate(soft.to_dict(), schema)
    broken = score_arrays(pred, ref, options).to_dict() | {"extra": 1}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, schema)


def test_openapi_200_schema_is_the_published_one(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    ok = spec["paths"]["/v1/scores"]["post"]["responses"]["200"]["content"]["application/json"]
    ref = ok["schema"]["$ref"].rsplit("/", 1)[-1]
    published = json.loads(SCHEMA_FILE.read_text())
    served = spec["components"]["schemas"][ref]
    # the report, plus the page's opt-in ``overlays`` member (only with ``overlays=true``)
    assert set(served["properties"]) == set(published["properties"]) | {"overlays"}
    assert "overlays" not in served.get("required", [])


# ---------------------------------------------------------------- layers


def test_scoring_core_knows_no_http() -> None:
    for cls in vars(scoring_errors).values():
        if isinstance(cls, type) and issubclass(cls, ScoringError):
            assert "http_status" not in vars(cls), cls
            assert cls.code  # stable codes are kept
    assert scoring_status(scoring_errors.NotNiftiError) == 415
    assert scoring_status(scoring_errors.VolumeTooLargeError) == 413
    assert scoring_status(scoring_errors.ShapeMismatchError) == 422


OWNED = ["cli.py", "scoring/options.py", "scoring/report.py", "scoring/folders.py"]
OWNED += ["scoring/summary.py", "scoring/errors.py"]


@pytest.mark.parametrize("module", OWNED)
def test_module_imports_no_torch_at_module_level(module: str) -> None:
    tree = ast.parse((ROOT / "plugin" / "monai_jdt" / module).read_text())
    for node in tree.body:  # module level only; TYPE_CHECKING blocks are never run
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        for sub in ast.walk(node):
            if isinstance(sub, (ast.FunctionDef, ast.AsyncFunctionDef)):
                break
            names = []
            if isinstance(sub, ast.Import):
                names = [alias.name for alias in sub.names]
            elif isinstance(sub, ast.ImportFrom) and sub.module:
                names = [sub.module]
            heavy = [n for n in names if n.split(".")[0] in ("torch", "monai", "jdt_service")]
            heavy += [n for n in names if n == "monai_jdt.counts"]
            assert not heavy, f"{module} imports {heavy} at module level"


# ---------------------------------------------------------------- serve through its entry point


def _entry_points(module: str):  # type: ignore[no-untyped-def]
    point = metadata.EntryPoint(name="serve", value=module, group=cli.COMMANDS_GROUP)

    def entry_points(**selection: str) -> list[metadata.EntryPoint]:
        assert selection == {"group": cli.COMMANDS_GROUP, "name": "serve"}
        return [point]

    return entry_points


def test_serve_runs_the_registered_command(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fake = types.ModuleType("fake_server")
    fake.add_arguments = lambda parser: parser.add_argument("--port", type=int)  # type: ignore[attr-defined]
    fake.run = lambda args: 40 + args.port  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fake_server", fake)
    monkeypatch.setattr(metadata, "entry_points", _entry_points("fake_server"))
    assert main(["serve", "--port", "2"]) == 42


def test_serve_without_the_service_extra(monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(metadata, "entry_points", _entry_points("jdt_service.server"))
    real = metadata.distribution

    def distribution(name: str):  # type: ignore[no-untyped-def]
        if name.lower() == "fastapi":
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(metadata, "distribution", distribution)
    monkeypatch.setitem(sys.modules, "jdt_service.server", None)  # and its import fails
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert "install monai-jdt[service]" in err and "fastapi" in err and err.count("\n") == 1


def test_a_broken_service_shows_its_own_import_error(monkeypatch, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "broken_server.py").write_text("from jdt_service.settings import NoSuchName\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(metadata, "entry_points", _entry_points("broken_server"))
    assert main(["serve"]) == 3
    err = capsys.readouterr().err
    assert "ImportError" in err and "NoSuchName" in err
    assert "install monai-jdt[service]" not in err


def test_version_and_help_build_no_scoring_options() -> None:
    parser = build_parser("")
    sub = next(a for a in parser._actions if a.dest == "command").choices  # type: ignore[union-attr]
    assert set(sub) == {"score", "score-dir", "serve"}
    assert "--labels" not in {o for a in sub["score"]._actions for o in a.option_strings}


# ---------------------------------------------------------------- stumbles


@pytest.mark.parametrize("spec", ["1=liver;2=spleen", "1=li=ver", "²", "1=wt,2=wt", "1=a/b"])
def test_bad_label_specs_are_invalid_options(
    spec: str, client: TestClient, capsys, organ_pair, post_pair
) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(InvalidOptionError):
        parse_labels(spec)
    with pytest.raises(InvalidOptionError):
        ScoringOptions(labels=spec)
    pred, ref = organ_pair((10, 10, 8), 2, seed=3)
    r = post_pair(client, pred, ref, labels=spec)
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option", r.text
    assert main(["score", "p.nii.gz", "r.nii.gz", "--labels", spec]) == 2
    assert "[invalid_option]" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("labels", str(2**63)),
        ("labels", "1=liver,99999999999999999999999999"),
        ("labels", "9" * 5000),  # past int()'s 4300 digits
        ("ignore_label", str(2**63)),
        ("ignore_label", str(2**70)),
        ("regions", f"WT=1,{2**63}"),
    ],
)
def test_label_ids_are_below_2_63_everywhere(
    field: str, value: str, client: TestClient, capsys, organ_pair, post_pair
) -> None:  # type: ignore[no-untyped-def]
    """As in volumes (label_id_too_large): ids are int64 in the matrix and the report."""
    with pytest.raises(InvalidOptionError) as text:
        ScoringOptions.from_text({field: value})
    assert text.value.option == field
    pred, ref = organ_pair((10, 10, 8), 2, seed=3)
    r = post_pair(client, pred, ref, **{field: value})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option", r.text
    assert field in r.json()["detail"]["message"]
    flag = "--" + field.replace("_", "-")
    assert main(["score", "p.nii.gz", "r.nii.gz", flag, value]) == 2
    err = capsys.readouterr().err
    assert "[invalid_option]" in err and flag in err and err.count("\n") == 1


def test_label_ids_up_to_2_63_minus_1_are_taken() -> None:
    assert MAX_LABEL_ID == volumes.MAX_LABEL_ID == 2**63 - 1  # one definition, re-exported
    top = str(MAX_LABEL_ID)
    parsed = ScoringOptions.from_text({"labels": f"1,{top}=top", "regions": f"R=1,{top}"})
    assert parsed.labels == {1: None, MAX_LABEL_ID: "top"}
    assert parsed.regions == {"R": (1, MAX_LABEL_ID)}
    assert ScoringOptions.from_text({"ignore_label": top}).ignore_label == MAX_LABEL_ID
    assert parse_labels(f"000{top}") == {MAX_LABEL_ID: None}
    for python in (
        {"labels": {2**63: None}},
        {"ignore_label": 2**63},
        {"regions": {"R": (2**63,)}},
    ):
        with pytest.raises(InvalidOptionError):
            ScoringOptions(**python)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("tversky_alpha", "1_0"),
        ("percentile", "9_5"),
        ("affine_tol", "0x1"),
        ("affine_tol", "inf"),
        ("boundary_width", "\u0663"),  # ARABIC-INDIC DIGIT THREE: float() takes it
        ("ignore_label", "1_0"),
        ("max_labels", "1_000"),
        ("max_labels", "\u0663"),
    ],
)
def test_numbers_in_text_are_plain_decimals(
    field: str, value: str, client: TestClient, capsys, organ_pair, post_pair
) -> None:  # type: ignore[no-untyped-def]
    """Python's int() and float() take '1_0' (10) and non-ASCII digits; text options do not."""
    with pytest.raises(InvalidOptionError) as text:
        ScoringOptions.from_text({field: value})
    assert text.value.option == field and "decimal" in text.value.message
    pred, ref = organ_pair((10, 10, 8), 2, seed=3)
    r = post_pair(client, pred, ref, **{field: value})
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option", r.text
    assert field in r.json()["detail"]["message"]
    flag = "--" + field.replace("_", "-")
    with pytest.raises(SystemExit) as usage:  # a usage error, as any text that is no number
        main(["score", "p.nii.gz", "r.nii.gz", flag, value])
    assert usage.value.code == 2
    err = capsys.readouterr().err
    assert "decimal" in err and flag in err and err.count("\n") == 1


def test_plain_decimals_and_non_numeric_text_options_still_parse() -> None:
    parsed = ScoringOptions.from_text(
        {"tversky_alpha": " 2 ", "affine_tol": "1e-4", "percentile": ".5", "ignore_label": "+3"}
    )
    assert (parsed.tversky_alpha, parsed.affine_tol, parsed.percentile) == (2.0, 1e-4, 0.5)
    assert parsed.ignore_label == 3
    folder = FolderOptions.from_text({"worst_q": "2.5", "workers": "2"})
    assert (folder.worst_q, folder.workers) == (2.5, 2)
    with pytest.raises(InvalidOptionError, match="worst_q"):
        FolderOptions.from_text({"worst_q": "2_5"})
    # a float or a mapping: the CLI hands the text to the option (it used to want a float)
    args = build_parser("score").parse_args(["score", "p", "r", "--nsd-tolerance", "1=2,2=3"])
    assert ScoringOptions.from_text({"nsd_tolerance": args.nsd_tolerance}).nsd_tolerance == {
        1: 2.0,
        2: 3.0,
    }


@pytest.mark.parametrize(
    "spec",
    ["1_0", "1=1_0", "1=inf", f"{2**63}=1"],  # float() takes the first three
)
def test_nsd_tolerances_are_plain_decimals_of_label_ids_below_2_63(spec: str) -> None:
    with pytest.raises(InvalidOptionError) as err:
        ScoringOptions.from_text({"nsd_tolerance": spec})
    assert err.value.option == "nsd_tolerance"


def test_non_ascii_digits_are_not_label_ids_in_regions_or_tolerances() -> None:
    """int() reads U+0663 as 3: as a region member or a tolerance key it is refused, never
    label 3 (a tolerance key is a label id or a region name)."""
    with pytest.raises(InvalidOptionError, match="regions"):
        ScoringOptions.from_text({"regions": "WT=1,\u0663"})
    with pytest.raises(InvalidOptionError, match="neither a label id nor a region name"):
        ScoringOptions.from_text({"nsd_tolerance": "\u0663=2"})
    with pytest.raises(InvalidOptionError, match="neither a label id nor a region name"):
        ScoringOptions.from_text({"nsd_tolerance": "-1=2"})
    assert ScoringOptions.from_text(
        {"nsd_tolerance": "WT=2,3=1", "regions": "WT=1"}
    ).nsd_tolerance == {
        "WT": 2.0,
        3: 1.0,
    }


def test_label_names_allowed_and_duplicates_in_python_refused() -> None:
    assert parse_labels("1=left kidney,2=L-3.a_b") == {1: "left kidney", 2: "L-3.a_b"}
    with pytest.raises(InvalidOptionError, match="distinct"):
        ScoringOptions(labels={1: "wt", 2: "wt"})


def test_score_dir_on_a_file_says_it_is_a_file(
    tmp_path: Path, capsys, organ_pair, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    pred, _ = organ_pair((8, 8, 8), 2, seed=4)
    file = write_nifti(tmp_path / "a.nii.gz", pred)
    (tmp_path / "refs").mkdir()
    assert main(["score-dir", str(file), str(tmp_path / "refs")]) == 2
    err = capsys.readouterr().err
    assert "is a file, not a folder" in err and "does not exist" not in err


def test_affine_message_names_each_front_end_spelling(
    tmp_path: Path, client, capsys, organ_pair, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    pred, ref = organ_pair((10, 10, 8), 2, seed=5)
    p = write_nifti(tmp_path / "p.nii.gz", pred, AFFINE)
    r = write_nifti(tmp_path / "r.nii.gz", ref)
    assert main(["score", str(p), str(r)]) == 2
    err = capsys.readouterr().err
    assert "[affine_mismatch]" in err and "--ignore-affine" in err and "--affine-tol" in err
    files = {
        "prediction": ("p.nii.gz", p.read_bytes(), "application/octet-stream"),
        "reference": ("r.nii.gz", r.read_bytes(), "application/octet-stream"),
    }
    detail = client.post("/v1/scores", files=files).json()["detail"]
    assert detail["code"] == "affine_mismatch"
    assert "ignore_affine" in detail["message"] and "affine_tol" in detail["message"]
    assert "--" not in detail["message"]


def test_csv_of_score_dir_has_a_row_per_failed_case(
    tmp_path: Path, organ_pair, write_nifti
) -> None:
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    pred, ref = organ_pair((10, 10, 8), 2, seed=6)
    write_nifti(preds / "good.nii.gz", pred)
    write_nifti(refs / "good.nii.gz", ref)
    (preds / "bad.nii.gz").write_bytes(b"not a nifti file")
    write_nifti(refs / "bad.nii.gz", ref)
    write_nifti(preds / "moved.nii.gz", pred, AFFINE)
    write_nifti(refs / "moved.nii.gz", ref)
    out = tmp_path / "cases.csv"
    assert main(["score-dir", str(preds), str(refs), "--csv", str(out), "--no-progress"]) == 1
    rows = list(csv.DictReader(out.open()))
    errors = {row["case_id"]: row["error"] for row in rows if row["error"]}
    assert errors == {"bad": "not_nifti", "moved": "affine_mismatch"}
    good = [row for row in rows if row["case_id"] == "good"]
    assert [row["label"] for row in good] == ["1", "2"] and all(r["dice"] for r in good)


def test_csv_cells_never_start_as_a_formula_and_odd_file_names_are_written(
    tmp_path: Path, organ_pair, write_nifti
) -> None:
    """Case ids come from file names: one named like a formula is shown as text by a
    spreadsheet, and one that is not UTF-8 (allowed on Linux) does not stop the CSV."""
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    pred, ref = organ_pair((10, 10, 8), 2, seed=6)
    names = ["=HYPERLINK(1)", "+1+cmd", "@SUM(1)", "-2", "caf\udce9"]  # the last: b"caf\xe9"
    for name in names:
        write_nifti(preds / f"{name}.nii.gz", pred)
        write_nifti(refs / f"{name}.nii.gz", ref)
    (preds / "=bad.nii.gz").write_bytes(b"not a nifti file")  # a failed case: id and message
    write_nifti(refs / "=bad.nii.gz", ref)
    out = tmp_path / "cases.csv"
    assert main(["score-dir", str(preds), str(refs), "--csv", str(out), "--no-progress"]) == 1
    text = out.read_bytes().decode("utf-8", errors="surrogateescape")
    rows = list(csv.DictReader(io.StringIO(text)))
    ids = {row["case_id"] for row in rows}
    assert ids == {"'=HYPERLINK(1)", "'+1+cmd", "'@SUM(1)", "'-2", "caf\udce9", "'=bad"}
    assert b"caf\xe9" in out.read_bytes()
    for row in rows:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in row.values() if cell)


def test_an_image_as_prediction_warns_and_max_labels_refuses(
    tmp_path: Path, capsys, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(0)
    ref = np.zeros((20, 20, 10), np.uint8)
    ref[5:15, 5:15, 2:8] = 1
    image = rng.integers(0, 225, size=ref.shape).astype(np.uint8)  # an intensity image
    report = score_arrays(image, ref)
    assert len(report.warnings) == 1 and "224 distinct labels" in report.warnings[0]
    assert report.to_dict()["warnings"] == list(report.warnings)
    few = image % 40  # 39 labels against 1: not above the threshold, but looks like an image
    assert "looks like an image" in score_arrays(few, ref).warnings[0]
    assert score_arrays(ref, ref).warnings == ()
    with pytest.raises(TooManyLabelsError, match="max_labels=50"):
        score_arrays(image, ref, ScoringOptions(max_labels=50))
    p, r = write_nifti(tmp_path / "p.nii.gz", image), write_nifti(tmp_path / "r.nii.gz", ref)
    assert main(["score", str(p), str(r), "--json"]) == 0
    captured = capsys.readouterr()
    assert "warning:" in captured.err and json.loads(captured.out)["warnings"]
    assert main(["score", str(p), str(r), "--max-labels", "50"]) == 2
    assert "[too_many_labels]" in capsys.readouterr().err


def test_the_fixed_label_limit_is_not_sent_to_max_labels(
    tmp_path: Path, capsys, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    """Past the core's 4096 labels the error pointed at --max-labels, which was accepted
    above 4096 and changed nothing: it now only lowers the limit."""
    many = (np.arange(20 * 25 * 20, dtype=np.int32) % 5000).reshape(20, 25, 20)
    p = write_nifti(tmp_path / "p.nii.gz", many)
    assert main(["score", str(p), str(p)]) == 2
    err = capsys.readouterr().err
    assert "[too_many_labels]" in err and "more than 4096 distinct labels" in err
    assert "--max-labels" not in err
    assert main(["score", str(p), str(p), "--max-labels", "4097"]) == 2
    err = capsys.readouterr().err
    assert "[invalid_option] max_labels" in err and "4096" in err


def test_an_affine_that_cannot_be_built_names_the_file_s_role_and_the_flag(
    tmp_path: Path, capsys, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    """A qform-only header with an infinite pixdim: the error was preceded by numpy's
    RuntimeWarning lines, named no role, and said 'skip the affine check' without the flag."""
    import nibabel as nib

    volume = np.zeros((6, 6, 6), np.uint8)
    volume[1:4, 1:4, 1:4] = 1
    ref = write_nifti(tmp_path / "r.nii.gz", volume)
    image = nib.Nifti1Image(volume, np.eye(4))
    image.set_sform(None, code=0)
    image.header["pixdim"][2] = np.inf
    image.header["vox_offset"] = 352
    bad = tmp_path / "p.nii"
    bad.write_bytes(image.header.binaryblock + b"\0" * 4 + volume.tobytes("F"))
    assert main(["score", str(bad), str(ref)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "monai-jdt: error: [corrupt_file] prediction p.nii: the header's affine holds NaN or "
        "infinite values, so the voxel grids cannot be compared; fix the header, or skip the "
        "affine check. (see --ignore-affine)"
    ]
    assert main(["score", str(bad), str(ref), "--ignore-affine"]) == 0


def test_folder_options_are_checked_before_anything_is_printed(
    tmp_path: Path, capsys, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    write_nifti(preds / "orphan.nii.gz", np.zeros((4, 4, 4), np.uint8))
    for bad in (["--workers", "0"], ["--worst-q", "0"], ["--worst-q", "101"]):
        assert main(["score-dir", str(preds), str(refs), *bad]) == 2
        err = capsys.readouterr().err
        assert "[invalid_option]" in err and bad[0] in err
        assert "warning" not in err and err.count("\n") == 1
    with pytest.raises(InvalidOptionError):
        score_directory(preds, refs, workers=0)


def test_only_requested_narrows_the_output(
    client: TestClient, tmp_path: Path, capsys, organ_pair, post_pair, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    pred, ref = organ_pair((14, 12, 10), 3, seed=7)
    full = score_arrays(pred, ref, ScoringOptions(labels={1: "liver"}))
    assert [row.label for row in full.labels] == [1, 2, 3] and full.notes
    narrow = score_arrays(pred, ref, ScoringOptions(labels={1: "liver"}, only_requested=True))
    assert [row.label for row in narrow.labels] == [1] and not narrow.notes
    assert narrow.label(1) == full.label(1)
    body = post_pair(client, pred, ref, labels="1", only_requested="true").json()
    assert [row["label"] for row in body["labels"]] == [1]
    assert body["options"]["only_requested"] is True
    p, r = write_nifti(tmp_path / "p.nii.gz", pred), write_nifti(tmp_path / "r.nii.gz", ref)
    assert main(["score", str(p), str(r), "--json", "--labels", "2", "--only-requested"]) == 0
    assert [row["label"] for row in json.loads(capsys.readouterr().out)["labels"]] == [2]


def test_only_requested_without_labels_is_refused(
    client: TestClient, tmp_path: Path, capsys, organ_pair, post_pair, write_nifti
) -> None:  # type: ignore[no-untyped-def]
    """Without ``labels`` there is nothing to narrow to: an error, not a silent no-op."""
    with pytest.raises(InvalidOptionError, match="only_requested needs labels"):
        ScoringOptions(only_requested=True)
    pred, ref = organ_pair((14, 12, 10), 3, seed=7)
    r = post_pair(client, pred, ref, only_requested="true")
    assert r.status_code == 422 and r.json()["detail"]["code"] == "invalid_option"
    assert "only_requested needs labels" in r.json()["detail"]["message"]
    p, r2 = write_nifti(tmp_path / "p.nii.gz", pred), write_nifti(tmp_path / "r.nii.gz", ref)
    assert main(["score", str(p), str(r2), "--only-requested"]) == 2
    assert "only_requested needs labels" in capsys.readouterr().err


def test_http_case_id_defaults_to_null(client: TestClient, organ_pair, post_pair) -> None:
    pred, ref = organ_pair((10, 10, 8), 2, seed=8)
    assert post_pair(client, pred, ref).json()["case_id"] is None
    assert post_pair(client, pred, ref, case_id="c-9").json()["case_id"] == "c-9"


def test_scoring_package_names_resolve_lazily() -> None:
    import monai_jdt.scoring as package

    assert set(package._MODULES) == set(package.__all__)
    for name in package.__all__:
        value = getattr(package, name)
        assert getattr(value, "__name__", name) == name or not callable(value)
    with pytest.raises(AttributeError):
        package.no_such_name  # noqa: B018


def test_score_dir_json_is_laid_out_by_the_dataset_model(
    tmp_path: Path, organ_pair, write_nifti
) -> None:
    from monai_jdt.scoring.report import DatasetReport

    preds, refs = tmp_path / "preds", tmp_path / "refs"
    preds.mkdir()
    refs.mkdir()
    for i in range(2):
        pred, ref = organ_pair((10, 10, 8), 2, seed=20 + i)
        write_nifti(preds / f"c{i}.nii.gz", pred)
        write_nifti(refs / f"c{i}.nii.gz", ref)
    (preds / "broken.nii.gz").write_bytes(b"xx")
    write_nifti(refs / "broken.nii.gz", ref)
    write_nifti(refs / "alone.nii.gz", ref)
    data = score_directory(preds, refs).to_dict()
    jsonschema.validate(data, DatasetReport.model_json_schema())
    case_schema = json.loads(SCHEMA_FILE.read_text())
    for case in data["cases"]:
        jsonschema.validate(case, case_schema)
    assert data["failures"][0]["code"] == "not_nifti"
    assert data["unpaired"] == {"predictions": [], "references": ["alone.nii.gz"]}


def test_every_form_field_of_the_score_endpoint_is_in_the_service_docs_table() -> None:
    """docs/service.md's table of ``POST /v1/scores`` fields lists every field the endpoint
    takes (it listed half of them)."""
    from jdt_service.overlays import IMAGE_FIELD, OVERLAYS_FIELD
    from jdt_service.uploads import FILE_FIELDS

    service = (Path(__file__).resolve().parents[1] / "docs" / "service.md").read_text()
    table = service.split("### Form fields of `POST /v1/scores`", 1)[1].split("\n## ", 1)[0]
    first_cells = " ".join(
        line.split("|")[1] for line in table.splitlines() if line.startswith("| `")
    )
    for name in (*FILE_FIELDS, *OPTION_FIELDS, OVERLAYS_FIELD, IMAGE_FIELD):
        assert f"`{name}`" in first_cells, name
