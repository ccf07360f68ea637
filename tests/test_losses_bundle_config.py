"""MONAI bundle configs name the losses by dotted path or, after importing monai_jdt, by class."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from monai.bundle import ConfigParser

import monai_jdt
from monai_jdt import losses

NAMES = [
    "JDTLoss",
    "JaccardMetricLoss",
    "DiceSemimetricLoss",
    "TverskySemimetricLoss",
    "GeneralizedDiceSemimetricLoss",
    "JDTCELoss",
    "DiceCESemimetricLoss",
]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("style", ["dotted", "short"])
def test_config_parser_builds_each_loss(name, style):
    target = f"monai_jdt.losses.{name}" if style == "dotted" else name
    config = {
        "imports": ["$import monai_jdt"],
        "loss": {"_target_": target, "to_onehot_y": True, "softmax": True},
    }
    loss = ConfigParser(config).get_parsed_content("loss")
    assert type(loss) is getattr(losses, name)
    assert getattr(monai_jdt, name) is type(loss)  # re-exported from the package
    logits = torch.randn(2, 3, 4, 4, 4)
    labels = torch.randint(0, 3, (2, 1, 4, 4, 4))
    assert torch.isfinite(loss(logits, labels))


def test_config_passes_jdt_options_through():
    config = {
        "imports": ["$import monai_jdt"],
        "loss": {
            "_target_": "JDTCELoss",
            "jdt": "tversky",
            "alpha": 0.3,
            "beta": 0.7,
            "lambda_ce": 0.5,
            "lambda_jdt": 0.5,
            "aggregation": {"image": 0.5, "class": 0.5},
            "classes": "present",
            "ignore_index": 255,
            "to_onehot_y": True,
            "softmax": True,
        },
    }
    loss = ConfigParser(config).get_parsed_content("loss")
    jdt = loss.jdt_loss
    assert isinstance(jdt, losses.TverskySemimetricLoss)
    assert (jdt.alpha, jdt.beta) == (0.3, 0.7)
    assert jdt.aggregation == {"image": 0.5, "class": 0.5}
    assert jdt.classes == "present" and jdt.options.ignore_index == 255
    assert (loss.lambda_ce, loss.lambda_jdt) == (0.5, 0.5)


FRESH_PROCESS = """
import json, sys
from monai.bundle import ConfigParser
assert "monai_jdt" not in sys.modules
names = json.loads(sys.argv[1])
config = {"imports": ["$import monai_jdt"], **{n: {"_target_": n} for n in names}}
parser = ConfigParser(config)
print(json.dumps([type(parser.get_parsed_content(n)).__module__ for n in names]))
"""


def test_short_names_resolve_in_a_fresh_process_after_the_config_import():
    """Only the config's own "imports" brings monai_jdt in: nothing imported it before."""
    out = subprocess.run(
        [sys.executable, "-c", FRESH_PROCESS, json.dumps(NAMES)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    modules = json.loads(out.strip().splitlines()[-1])
    assert all(m.startswith("monai_jdt.losses.") for m in modules), modules
