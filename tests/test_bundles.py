"""The MONAI bundles in bundles/: run as a user runs them, with MONAI's own runner.

Each bundle is copied to a temporary folder (data, models and outputs never land in the repo),
given tiny synthetic data by its own ``scripts/make_demo_data.py``, trained for two epochs with
a tiny network through ``python -m monai.bundle run`` (a subprocess, from the bundle folder, as
the bundle README says), then used for inference and evaluation. Inference outputs are scored
with ``monai_jdt.scoring`` and checked against counts computed here with numpy.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCHEMA_NAME = "meta_schema_20240725.json"


@dataclass(frozen=True)
class Bundle:
    name: str
    key_metric: str
    loss_class: str
    labels: dict[int, str]
    tiny: tuple[str, ...]  # command-line overrides: tiny network and patches, no workers
    train_options: tuple[str, ...] = ()  # more overrides for the training run


BUNDLES = {
    "spleen_ct_jdt": Bundle(
        name="spleen_ct_jdt",
        key_metric="val_miou_d",
        loss_class="JDTCELoss",
        labels={1: "spleen"},
        tiny=(
            "--patch_size", "[32,32,32]", "--num_workers", "0", "--sw_batch_size", "2",
            "--network_def#channels", "[4,8]", "--network_def#strides", "[2]",
            "--network_def#num_res_units", "0",
        ),
    ),
    "brats_mri_jdt": Bundle(
        name="brats_mri_jdt",
        key_metric="val_miou_i",
        loss_class="JDTLoss",
        labels={1: "oedema", 2: "non-enhancing tumour", 3: "enhancing tumour"},
        tiny=(
            "--patch_size", "[32,32,32]", "--num_workers", "0", "--sw_batch_size", "2",
            "--network_def#init_filters", "8", "--network_def#blocks_down", "[1,1]",
            "--network_def#blocks_up", "[1]",
        ),
        train_options=("--label_smoothing", "0.1"),  # train on the soft targets
    ),
}  # fmt: skip
SIX_SCORES = ("miou_d", "miou_i", "miou_c", "mdice_d", "mdice_i", "mdice_c")


def _schema() -> Path:
    """The local copy of MONAI's bundle metadata schema (it cannot be downloaded here)."""
    candidates = [REPO.parent / "shared" / "monai" / SCHEMA_NAME]
    if os.environ.get("MONAI_BUNDLE_SCHEMA"):
        candidates.insert(0, Path(os.environ["MONAI_BUNDLE_SCHEMA"]))
    for path in candidates:
        if path.is_file():
            return path
    pytest.skip(f"no local copy of MONAI's {SCHEMA_NAME}: set MONAI_BUNDLE_SCHEMA to its path")


def _run(args: list[str], cwd: Path, timeout: float = 300) -> str:
    """Run a command in ``cwd``; return stdout + stderr, failing the test with its tail."""
    done = subprocess.run(
        args, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output[-4000:]}"
    return output


def _bundle_run(bundle_dir: Path, config: str, *overrides: str) -> str:
    """``python -m monai.bundle run --config_file <config> ...`` from the bundle folder."""
    cmd = [sys.executable, "-m", "monai.bundle", "run", "--config_file", config, *overrides]
    return _run(cmd, bundle_dir)


def _copy_bundle(name: str, dest: Path) -> Path:
    target = dest / name
    shutil.copytree(
        REPO / "bundles" / name,
        target,
        ignore=shutil.ignore_patterns("data", "models", "eval", "__pycache__"),
    )
    return target


def _make_demo_data(bundle_dir: Path, cases: int = 6) -> None:
    script = ["scripts/make_demo_data.py", "data/", "--cases", str(cases), "--test-cases", "2"]
    _run([sys.executable, *script, "--shape", "32", "32", "32"], bundle_dir)


def _epoch_metrics(log: str) -> list[dict[str, float]]:
    """The validation metrics StatsHandler logs once per epoch, in order."""
    epochs = []
    for line in re.findall(r"Epoch\[\d+\] Metrics -- (.*)", log):
        pairs = dict(re.findall(r"(\w+): (\S+)", line))
        if any(key.startswith("val_") for key in pairs):
            epochs.append({key: float(value) for key, value in pairs.items()})
    return epochs


@pytest.fixture(scope="module", params=sorted(BUNDLES))
def trained(request, tmp_path_factory) -> tuple[Bundle, Path, str]:
    """A bundle copy with demo data, trained for 2 epochs; (bundle, its folder, training log)."""
    bundle = BUNDLES[request.param]
    bundle_dir = _copy_bundle(bundle.name, tmp_path_factory.mktemp(bundle.name))
    _make_demo_data(bundle_dir)
    log = _bundle_run(
        bundle_dir,
        "configs/train.yaml",
        "--dataset_dir",
        "data/",
        "--epochs",
        "2",
        *bundle.tiny,
        *bundle.train_options,
    )
    return bundle, bundle_dir, log


@pytest.mark.slow
def test_training_reports_a_finite_key_metric_and_keeps_the_best_model(trained) -> None:
    bundle, bundle_dir, log = trained
    epochs = _epoch_metrics(log)
    assert len(epochs) == 2, log[-3000:]
    for metrics in epochs:
        value = metrics[bundle.key_metric]
        assert math.isfinite(value) and 0.0 <= value <= 1.0
        for key in SIX_SCORES:  # report_prefix puts every fine-grained score in the log
            assert 0.0 <= metrics[f"val_{key}"] <= 1.0
        assert "val_mean_dice" in metrics
    assert "train_loss" in log
    assert (bundle_dir / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_inference_writes_nifti_label_maps_that_the_scoring_core_scores(trained) -> None:
    from monai_jdt.scoring import ScoringOptions, score_files

    bundle, bundle_dir, _ = trained
    _bundle_run(bundle_dir, "configs/inference.yaml", "--dataset_dir", "data/", *bundle.tiny)
    references = sorted((bundle_dir / "data" / "labelsTs").glob("*.nii.gz"))
    assert len(references) == 2
    options = ScoringOptions(labels=bundle.labels)
    for reference in references:
        prediction = bundle_dir / "eval" / reference.name
        assert prediction.is_file(), sorted(p.name for p in (bundle_dir / "eval").iterdir())
        pred_img, ref_img = nib.load(prediction), nib.load(reference)
        np.testing.assert_allclose(pred_img.affine, ref_img.affine, atol=1e-5)
        pred = np.asarray(pred_img.dataobj)
        ref = np.asarray(ref_img.dataobj)
        assert pred.shape == ref.shape
        assert set(np.unique(pred)) <= {0, *bundle.labels}
        report = json.loads(json.dumps(score_files(prediction, reference, options).to_dict()))
        rows = {row["label"]: row for row in report["labels"]}
        for label in bundle.labels:
            p, r = pred == label, ref == label
            assert rows[label]["tp"] == np.sum(p & r)
            assert rows[label]["fp"] == np.sum(p & ~r)
            assert rows[label]["fn"] == np.sum(~p & r)


@pytest.mark.slow
def test_evaluate_reloads_the_best_checkpoint_and_saves_its_metrics(trained) -> None:
    bundle, bundle_dir, log = trained
    # the full-precision best value (the per-epoch lines round to 4 decimals)
    best = float(re.findall(rf"Key metric: {bundle.key_metric} best value: (\S+)", log)[-1])
    configs = "['configs/train.yaml','configs/evaluate.yaml']"
    _bundle_run(bundle_dir, configs, "--dataset_dir", "data/", *bundle.tiny)
    with open(bundle_dir / "eval" / "metrics.csv") as f:
        saved = {row[0]: float(row[1]) for row in csv.reader(f)}
    assert saved[bundle.key_metric] == pytest.approx(best, abs=1e-6)
    assert {f"val_{key}" for key in SIX_SCORES} <= set(saved)
    with open(bundle_dir / "eval" / f"{bundle.key_metric}_raw.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][0] == "filename" and len(rows) == 2  # header + the one validation case


@pytest.mark.slow
def test_checkpoint_exports_to_torchscript_and_the_network_matches_its_metadata(trained) -> None:
    from monai.bundle import ckpt_export, verify_net_in_out

    bundle, bundle_dir, _ = trained
    overrides = dict(zip(bundle.tiny[::2], bundle.tiny[1::2], strict=True))
    network = {k[2:]: json.loads(v) for k, v in overrides.items() if k.startswith("--network")}
    meta, config = str(bundle_dir / "configs/metadata.json"), str(bundle_dir / "configs/train.yaml")
    verify_net_in_out(net_id="network_def", meta_file=meta, config_file=config, device="cpu")
    exported = bundle_dir / "models" / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(exported),
        ckpt_file=str(bundle_dir / "models" / "model.pt"),
        meta_file=meta,
        config_file=config,
        **network,
    )
    scripted = torch.jit.load(str(exported))
    channels = {"spleen_ct_jdt": (1, 2), "brats_mri_jdt": (4, 3)}[bundle.name]
    with torch.no_grad():
        out = scripted(torch.rand(1, channels[0], 32, 32, 32))
    assert out.shape == (1, channels[1], 32, 32, 32)


def _demo_script(name: str):
    path = REPO / "bundles" / name / "scripts" / "make_demo_data.py"
    spec = importlib.util.spec_from_file_location(f"{name}_make_demo_data", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_cases_carry_the_labels_their_intensities_describe() -> None:
    rng = np.random.default_rng(0)
    image, label = _demo_script("spleen_ct_jdt").make_case(rng, (48, 48, 32))
    assert image.shape == label.shape and label.dtype == np.uint8
    assert set(np.unique(label)) == {0, 1}
    assert abs(image[label == 1].mean() - 120) < 5  # the spleen ellipsoid is at 120 HU
    body = (label == 0) & (image > -500)
    assert image[body].mean() < 80

    image, label = _demo_script("brats_mri_jdt").make_case(rng, (48, 48, 32))
    assert image.shape == (*label.shape, 4)
    assert set(np.unique(label)) == {0, 1, 2, 3}
    flair, t1, t1gd = image[..., 0], image[..., 1], image[..., 2]
    brain = (label == 0) & (flair > 0)
    assert t1gd[label == 3].mean() > t1gd[(label != 3) & (flair > 0)].mean() + 300  # enhancing
    assert flair[label == 1].mean() > flair[brain].mean() + 300  # oedema bright in FLAIR
    assert t1[label == 2].mean() < t1[brain].mean() - 200  # necrotic core dark in T1w


def test_demo_data_is_a_folder_monai_reads_as_msd(tmp_path: Path) -> None:
    from monai.data import load_decathlon_datalist

    _run(
        [sys.executable, "scripts/make_demo_data.py", str(tmp_path / "d"), "--cases", "3",
         "--test-cases", "1", "--shape", "16", "16", "16"],
        REPO / "bundles" / "spleen_ct_jdt",
    )  # fmt: skip
    training = load_decathlon_datalist(str(tmp_path / "d" / "dataset.json"), True, "training")
    test = load_decathlon_datalist(str(tmp_path / "d" / "dataset.json"), False, "test")
    assert len(training) == 3 and len(test) == 1
    for item in [*training, *test]:
        assert all(Path(path).is_file() for path in item.values())
    image = nib.load(training[0]["image"])
    assert image.shape == (16, 16, 16) and image.header.get_zooms() == (1.5, 1.5, 2.0)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_metadata_is_valid_against_monais_schema_copy(name: str, tmp_path: Path) -> None:
    from monai.bundle import verify_metadata

    schema = _schema()
    meta_file = REPO / "bundles" / name / "configs" / "metadata.json"
    # verify_metadata only downloads when the file at `filepath` is missing
    verify_metadata(meta_file=str(meta_file), filepath=str(schema))
    metadata = json.loads(meta_file.read_text())
    assert "monai-jdt" in metadata["required_packages_version"]
    broken = tmp_path / "metadata.json"
    del metadata["network_data_format"]
    broken.write_text(json.dumps(metadata))
    with pytest.raises(ValueError, match="network_data_format"):
        verify_metadata(meta_file=str(broken), filepath=str(schema))


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_configs_name_the_plugin_classes_by_short_name(name: str) -> None:
    """``_target_: JDTCELoss`` (no module path) resolves once ``$import monai_jdt`` ran."""
    from monai.bundle import ConfigParser

    import monai_jdt

    bundle = BUNDLES[name]
    config = REPO / "bundles" / name / "configs" / "train.yaml"
    text = config.read_text()
    assert f"_target_: {bundle.loss_class}\n" in text
    assert "_target_: FineGrainedIoU\n" in text
    assert "$import monai_jdt" in text
    parser = ConfigParser()
    parser.read_config(str(config))
    loss = parser.get_parsed_content("loss")
    assert type(loss) is getattr(monai_jdt, bundle.loss_class)
    handler = parser.get_parsed_content(f"validate#key_metric#{bundle.key_metric}")
    assert type(handler) is monai_jdt.FineGrainedIoU


@pytest.mark.parametrize("name", sorted(BUNDLES))
@pytest.mark.parametrize(("config", "transforms"), [("train", "train#preprocessing"),
                                                    ("inference", "preprocessing")])  # fmt: skip
def test_transforms_build_without_a_deprecation_warning(
    name: str, config: str, transforms: str
) -> None:
    """Orientationd's labels default is changing (MONAI warned on every run): it is pinned."""
    import warnings

    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(REPO / "bundles" / name / "configs" / f"{config}.yaml"))
    parser["dataset_dir"] = "."
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        parser.get_parsed_content(transforms)


@pytest.mark.parametrize("name", sorted(BUNDLES))
def test_multi_gpu_config_synchronises_the_loss_counts(name: str) -> None:
    from monai.bundle import ConfigParser

    configs = [
        str(REPO / "bundles" / name / "configs" / f) for f in ("train.yaml", "multi_gpu_train.yaml")
    ]
    parser = ConfigParser()
    parser.read_config(configs)
    loss = parser.get_parsed_content("loss")
    assert getattr(loss, "jdt_loss", loss).sync_counts is True
    assert parser.get_parsed_content("backend", instantiate=True) in ("nccl", "gloo")
    assert parser["train#sampler#_target_"] == "DistributedSampler"
    assert parser["validate#sampler#even_divisible"] is False  # no duplicated validation cases


@pytest.mark.slow
def test_multi_gpu_config_trains_with_two_gloo_processes_on_cpu(tmp_path: Path) -> None:
    bundle = BUNDLES["spleen_ct_jdt"]
    bundle_dir = _copy_bundle(bundle.name, tmp_path)
    _make_demo_data(bundle_dir)
    torchrun = Path(sys.executable).with_name("torchrun")
    launcher = (
        [str(torchrun)] if torchrun.exists() else [sys.executable, "-m", "torch.distributed.run"]
    )
    log = _run(
        [
            *launcher, "--standalone", "--nproc_per_node=2", "-m", "monai.bundle", "run",
            "--config_file", "['configs/train.yaml','configs/multi_gpu_train.yaml']",
            "--backend", "gloo", "--epochs", "1", *bundle.tiny,
        ],
        bundle_dir,
    )  # fmt: skip
    epochs = _epoch_metrics(log)
    assert len(epochs) == 1, log[-3000:]  # only rank 0 has the validation StatsHandler
    assert 0.0 <= epochs[0][bundle.key_metric] <= 1.0
    assert "train_loss" in log
    assert (bundle_dir / "models" / "model.pt").is_file()


@pytest.mark.slow
def test_brats_loss_is_zero_at_the_label_smoothed_soft_target(tmp_path: Path) -> None:
    """The semimetric loss of the bundle reaches 0 when the prediction equals the soft target;
    the classic ``sum(p * y)`` form (``soft_label=False``, MONAI's) does not."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceLoss

    bundle_dir = _copy_bundle("brats_mri_jdt", tmp_path)
    _make_demo_data(bundle_dir, cases=2)
    parser = ConfigParser()
    parser.read_config(str(bundle_dir / "configs" / "train.yaml"))
    parser.update({"dataset_dir": str(bundle_dir / "data"), "label_smoothing": 0.1})
    parser.update({"patch_size": [32, 32, 32]})
    sample = parser.get_parsed_content("train#preprocessing")(
        parser.get_parsed_content("datalist")[0]
    )
    target = torch.as_tensor(sample["label"])[None]
    assert target.shape[1] == 3
    np.testing.assert_allclose(torch.unique(target).numpy(), [0.05, 0.95], rtol=1e-6)
    logits = torch.logit(target)  # sigmoid(logits) == target
    assert float(parser.get_parsed_content("loss")(logits, target)) < 1e-5
    parser.update({"loss#soft_label": False})
    assert float(parser.get_parsed_content("loss", lazy=False)(logits, target)) > 0.01
    assert float(DiceLoss(sigmoid=True)(logits, target)) > 0.01
