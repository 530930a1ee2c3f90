"""covidzoo-example's backbones through covidzoo's conformance kit, and what the kit leaves to
the plugin: that folding really removes every BatchNorm, the complexity report, cheap hooks."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest
import torch

import covidzoo
from covidzoo.models.folding import count_batchnorms, fold_batchnorm
from covidzoo.testing import backbone_conformance

# Every check of the kit on every backbone of this plugin; timm's model API is required.
test_conformance = backbone_conformance(plugin="example", require_timm_api=True)


def test_entry_point_is_installed():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="covidzoo")}
    assert eps.get("example") == "covidzoo_example", "pip install ./plugins/covidzoo-example"
    assert metadata.version("covidzoo-example") == "0.2.0"


@pytest.mark.parametrize("name", ["tiny3d", "tiny2d"])
def test_every_batchnorm_is_declared_foldable(name):
    model = covidzoo.create_model(name, aggregator="auto")
    assert count_batchnorms(model) > 0 and count_batchnorms(fold_batchnorm(model)) == 0


@pytest.mark.parametrize(("channels", "size"), [([4, 8], (32, 32)), ([16, 32, 64], (45, 33))])
def test_tiny2d_complexity_matches_torchs_flop_counter(channels, size):
    from torch.utils.flop_counter import FlopCounterMode

    model = covidzoo.create_model("tiny2d", channels=channels, num_classes=2).eval()
    report = model.complexity(size)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        out = model.forward_features(torch.randn(1, 1, *size))
        model.forward_head(out)
    assert report["flops"] == counter.get_total_flops()
    assert report["params"] == sum(p.numel() for p in model.parameters())
    assert [s["output_shape"] for s in report["stages"][:-1]][-1] == list(out.shape[1:])


@pytest.mark.parametrize(
    ("name", "args", "message"),
    [
        ("tiny3d", {"channels": []}, "tiny3d: channels must be one or more positive integers"),
        ("tiny2d", {"channels": [8, 0]}, "tiny2d: channels must be one or more positive"),
        ("tiny2d", {"pool": "median"}, "tiny2d: pool 'median' is unknown; choose from avg, max"),
    ],
)
def test_bad_configurations_are_bad_input(name, args, message):
    with pytest.raises(covidzoo.BadInputError, match=message):
        covidzoo.create_model(name, **args)


def test_max_pooling_is_used():
    model = covidzoo.create_model("tiny2d", pool="max", channels=[4]).eval()
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x), pre_logits=True),
                                   model.forward_features(x).amax(dim=(2, 3)))


LIGHT = """
import sys
import covidzoo_example, covidzoo_example.commands
from click.testing import CliRunner
from covidzoo.cli import cli
result = CliRunner().invoke(cli, ["example-info"])
assert result.exit_code == 0, result.output
heavy = sorted(m for m in ("torch", "numpy", "timm", "monai") if m in sys.modules)
print(",".join(heavy) or "none")
"""


def test_hooks_and_command_import_nothing_heavy():
    """The hooks module, the command module and `covidzoo example-info` import no torch."""
    done = subprocess.run([sys.executable, "-c", LIGHT], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "none"
