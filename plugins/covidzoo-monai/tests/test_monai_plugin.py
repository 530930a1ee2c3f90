"""covidzoo-monai, installed: listing, the model API, composition, precision, checkpoints, and the
behaviour without MONAI.

Every backbone goes through covidzoo's conformance kit (`covidzoo.testing`): metadata, forward
and backward, custom `num_classes`, timm's model API, the checkpoint round trip and BatchNorm
folding. covidzoo's own smoke test (`tests/test_backbones.py`) already runs forward and backward
on every installed backbone at its default configuration; the tests here build narrow variants
(fewer features, `widen_factor`) where the width does not matter, to stay fast on a 2-core CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from importlib import metadata

import pytest
import torch
from click.testing import CliRunner

import covidzoo
from covidzoo import plugins
from covidzoo.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from covidzoo.cli import cli
from covidzoo.errors import BadInputError
from covidzoo.testing import backbone_conformance

NAMES = ["monai-densenet121", "monai-resnet18", "monai-resnet50", "monai-seresnet50"]
# Narrow variants for the tests that are about plumbing, not about the default widths.
NARROW = {
    "monai-densenet121": {"init_features": 16, "growth_rate": 8},
    "monai-resnet18": {"widen_factor": 0.25},
    "monai-resnet50": {"widen_factor": 0.25},
    "monai-seresnet50": {},
}

# The conformance kit on every backbone of the plugin, in the narrow variants.
test_conformance = backbone_conformance(plugin="monai", model_args=NARROW, require_timm_api=True)


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch):
    """Plugins loaded anew for each test, whatever the caller's environment allows."""
    monkeypatch.delenv("COVIDZOO_PLUGINS", raising=False)
    monkeypatch.delenv("COVIDZOO_STRICT_PLUGINS", raising=False)
    plugins.reset()
    torch.manual_seed(0)
    yield
    plugins.reset()


def tiny(name: str, batch: int = 2, in_chans: int = 1) -> torch.Tensor:
    """A batch at 16x16x16, grown to the network's `min_input_size`."""
    smallest = covidzoo.get_component(name).metadata["min_input_size"]
    return torch.randn(batch, in_chans, *(max(16, m) for m in smallest))


def test_entry_point_is_installed():
    eps = {ep.name: ep.value for ep in metadata.entry_points(group="covidzoo")}
    assert eps.get("monai") == "covidzoo_monai", "pip install ./plugins/covidzoo-monai first"


def test_models_command_lists_the_backbones_with_metadata():
    result = CliRunner().invoke(cli, ["models", "monai-*", "--json"], catch_exceptions=False)
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert sorted(rows) == NAMES
    for row in rows.values():
        meta = row["metadata"]
        assert (row["kind"], row["plugin"]) == ("backbone", "monai")
        assert meta["spatial_dims"] == 3 and meta["default_aggregator"] == "volume"
        assert meta["input_size"] == [64, 224, 224]
        assert meta["default_cfg"]["num_classes"] == 1 and meta["default_cfg"]["in_chans"] == 1
        assert row["summary"].startswith("MONAI ")
    assert covidzoo.default_aggregator("monai-resnet18") == "volume"


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_through_the_default_aggregator(name):
    model = covidzoo.create_model(
        name, aggregator="auto", num_classes=2, in_chans=2, **NARROW[name]
    )
    assert type(model).__name__ == "Volume" and model.num_classes == 2
    out = model(tiny(name, in_chans=2))
    assert out.shape == (2, 2) and torch.isfinite(out).all()
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", NAMES)
def test_timm_api_bf16_and_channels_last(name):
    """forward = forward_head(forward_features); pre_logits; reset_classifier; and the same
    logits under bf16 autocast with channels_last_3d (what `covidzoo bench` measures)."""
    model = covidzoo.create_model(name, **NARROW[name]).eval()
    x = tiny(name, batch=1)
    with torch.no_grad():
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model(x)
        assert features.ndim == 5 and features.shape[1] == model.num_features
        assert pooled.shape == (1, model.num_features)
        torch.testing.assert_close(model.get_classifier()(pooled), logits)

        fast = model.to(memory_format=torch.channels_last_3d)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast(x.to(memory_format=torch.channels_last_3d))
        assert low.dtype == torch.bfloat16
        torch.testing.assert_close(low.float(), logits, atol=0.05, rtol=0.05)

        model.reset_classifier(3)
        assert model.num_classes == 3 and model(x).shape == (1, 3)
        model.reset_classifier(0)
        torch.testing.assert_close(model(x), pooled)


@pytest.mark.parametrize("name", NAMES)
def test_in_chans_and_num_classes_map_onto_monai(name):
    model = covidzoo.create_model(name, num_classes=4, in_chans=3, **NARROW[name])
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv3d))
    assert first_conv.in_channels == 3 and model.in_chans == 3
    assert model.get_classifier().out_features == 4 and model.num_classes == 4


def test_input_below_the_minimum_is_a_clear_error():
    model = covidzoo.create_model("monai-densenet121", **NARROW["monai-densenet121"])
    with pytest.raises(BadInputError, match="monai-densenet121 needs D, H and W of at least 29"):
        model(torch.randn(2, 1, 16, 32, 32))


def test_pretrained_is_refused_nothing_downloads():
    with pytest.raises(BadInputError, match="untrained networks only"):
        covidzoo.create_model("monai-resnet18", pretrained=True)


def test_composes_with_the_example_plugins_flip_mean():
    args = NARROW["monai-resnet18"]
    model = covidzoo.create_model("monai-resnet18", aggregator="flip-mean", **args).eval()
    x = tiny("monai-resnet18")
    with torch.no_grad():
        expected = (model.backbone(x) + model.backbone(x.flip(-1))) / 2
        torch.testing.assert_close(model(x), expected)


def test_checkpoint_round_trip_rebuilds_through_the_plugin(tmp_path):
    spec = ModelSpec(
        backbone="monai-seresnet50",
        model_args={"num_classes": 2, "dropout_prob": 0.1},
        aggregator="volume",
    )
    model = spec.build().eval()
    path = save_checkpoint(tmp_path / "model.safetensors", model, spec)
    loaded, loaded_spec = load_checkpoint(path)
    # The checkpoint records where the backbone came from: this plugin and its package.
    assert loaded_spec.provenance["backbone"]["plugin"] == "monai"
    assert loaded_spec.provenance["backbone"]["package"] == "covidzoo-monai"
    assert replace(loaded_spec, provenance={}) == spec
    loaded.eval()
    x = tiny("monai-seresnet50", batch=1)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)


def test_state_dict_keys_are_monais_own():
    """Weights trained with plain MONAI load into the covidzoo backbone unchanged."""
    from monai.networks.nets import resnet18

    ours = covidzoo.create_model("monai-resnet18", num_classes=2, widen_factor=0.25)
    theirs = resnet18(
        spatial_dims=3, n_input_channels=1, num_classes=2, widen_factor=0.25, conv1_t_stride=2
    )
    ours.load_state_dict(theirs.state_dict())
    x = tiny("monai-resnet18")
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


WITHOUT_MONAI = """
import sys
sys.modules["monai"] = None  # `import monai` now raises ImportError
import json
from click.testing import CliRunner
import covidzoo
from covidzoo.cli import cli

listed = CliRunner().invoke(cli, ["models", "monai-*", "--json"])
print(json.dumps({
    "exit": listed.exit_code,
    "names": [row["name"] for row in json.loads(listed.output)],
}))
try:
    covidzoo.create_model("monai-resnet18")
except covidzoo.CovidzooError as exc:
    print(exc)
"""


def test_without_monai_the_backbones_are_listed_and_say_why_they_cannot_be_built():
    env = {**os.environ, "COVIDZOO_STRICT_PLUGINS": "1"}
    env.pop("COVIDZOO_PLUGINS", None)
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_MONAI], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    listed, error = done.stdout.strip().splitlines()
    assert json.loads(listed) == {"exit": 0, "names": NAMES}
    assert error.startswith("backbone 'monai-resnet18' (plugin 'monai') is unavailable:")
    assert "covidzoo-monai needs MONAI" in error and "pip install monai" in error


def test_one_epoch_of_training_on_demo_data(tmp_path, monkeypatch):
    from covidzoo.data import synthesize
    from covidzoo.train import TrainConfig, train

    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "cache"))
    # 16 demo scans rather than the built-in demo set's 192: one epoch is what is tested.
    data = synthesize(tmp_path / "data", n=16, shape=(16, 32, 32))
    run_dir = tmp_path / "run"
    summary = train(
        TrainConfig(
            backbone="monai-resnet18",
            model_args={"widen_factor": 0.25},
            data=str(data),
            size=(16, 32, 32),
            epochs=1,
            batch_size=4,
            out=str(run_dir),
            device="cpu",
        ),
        quiet=True,
    )
    assert (summary["backbone"], summary["epochs_run"], summary["size"]) == (
        "monai-resnet18", 1, [16, 32, 32]
    )
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1
    model, spec = load_checkpoint(run_dir / "best.safetensors")
    assert spec.backbone == "monai-resnet18" and spec.model_args["widen_factor"] == 0.25
    with torch.no_grad():
        assert model.eval()(tiny("monai-resnet18")).shape == (2, 1)


def test_an_ensemble_mixes_a_monai_backbone_with_regnet3d(tmp_path, monkeypatch):
    """Members from two plugins, each with its own preprocessing, fuse scan by scan."""
    from pathlib import Path

    import numpy as np

    from covidzoo.data import PreprocessConfig, load_scan, synthesize
    from covidzoo.transforms import to_model_input

    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path / "cache"))
    data = synthesize(tmp_path / "data", n=8, shape=(16, 32, 32))
    members = []
    for name, args, size in [("monai-resnet18", NARROW["monai-resnet18"], (16, 32, 32)),
                             ("regnet3d", {"depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16],
                                           "stem_width": 8}, (32, 32, 32))]:
        torch.manual_seed(0)
        model = covidzoo.create_model(name, aggregator="volume", **args).eval()
        spec = ModelSpec(name, args, "volume", {}, PreprocessConfig(size=size).to_dict(), 0.5)
        members.append((save_checkpoint(tmp_path / f"{name}.safetensors", model, spec), model,
                        size))
    saved = tmp_path / "mixed.json"
    result = CliRunner().invoke(cli, ["ensemble", *(str(m[0]) for m in members), "--data",
                                      str(data), "--save", str(saved), "--json"])
    assert result.exit_code == 0, result.output
    assert [Path(m["path"]).name for m in json.loads(result.stdout)["members"]] == [
        "monai-resnet18.safetensors", "regnet3d.safetensors"]

    scan = next((data / "val" / "covid").iterdir())
    predicted = CliRunner().invoke(cli, ["predict", str(saved), str(scan), "--json"])
    assert predicted.exit_code == 0, predicted.output
    probability = json.loads(predicted.stdout)["predictions"][0]["probability"]
    expected = []
    with torch.no_grad():
        for _, model, size in members:
            x = torch.from_numpy(load_scan(scan, PreprocessConfig(size=size)))[None, None]
            expected.append(torch.sigmoid(model(to_model_input(x))).item())
    np.testing.assert_allclose(probability, np.mean(expected), atol=1e-5)
