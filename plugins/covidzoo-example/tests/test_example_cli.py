"""covidzoo-example through every covidzoo command, in-process: train both backbones with their
own options, the plugin's aggregator (with an argument) and optimizer; evaluate; fuse with the
plugin's ensembler, save it and predict a raw scan with the saved ensemble; bench; models show;
plugins; and the plugin's own command.

Training runs once per module (one epoch of 12 synthetic 16x48x48 scans per backbone, a few
seconds on a 2-core CPU); the other tests read what it wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import covidzoo
from covidzoo import hookimpl, plugins

TRAIN_ARGS = ["--epochs", "1", "--size", "16,32,32", "--device", "cpu", "--batch-size", "3",
              "--optimizer", "sgd-nodecay", "--optimizer-arg", "momentum=0.8",
              "--weight-decay", "0.001", "--json"]
OWN_ARGS = {
    "tiny3d": ["--tiny-widths", "4,8,8", "--aggregator", "flip-mean",
               "--aggregator-arg", "weight=0.25"],
    "tiny2d": ["--tiny-widths", "4,8", "--tiny2d-pool", "max"],
}
EXAMPLE = {("backbone", "tiny3d"), ("backbone", "tiny2d"), ("aggregator", "flip-mean"),
           ("ensembler", "geometric-mean"), ("optimizer", "sgd-nodecay")}


@dataclass
class Trained:
    root: Path
    data: Path
    cache: Path
    runs: dict[str, dict]

    def best(self, backbone: str) -> Path:
        return self.root / backbone / "best.safetensors"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """Both backbones trained for one epoch by `covidzoo train` (what the tests below read)."""
    from covidzoo.cli import cli
    from covidzoo.data import synthesize

    root = tmp_path_factory.mktemp("example-flow")
    cache = root / "cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVIDZOO_CACHE", str(cache))
        mp.delenv("COVIDZOO_PLUGINS", raising=False)
        plugins.reset()
        data = synthesize(root / "data", n=12, seed=1, shape=(16, 48, 48))
        runs = {}
        for backbone, own in OWN_ARGS.items():
            result = CliRunner().invoke(
                cli, ["train", backbone, "--data", str(data), "--out", str(root / backbone),
                      *TRAIN_ARGS, *own], catch_exceptions=False)
            assert result.exit_code == 0, result.output
            runs[backbone] = json.loads(result.stdout)
        plugins.reset()
    return Trained(root, data, cache, runs)


@pytest.fixture
def cache(trained: Trained, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("COVIDZOO_CACHE", str(trained.cache))
    return trained.cache


def test_train_used_the_plugins_options_aggregator_and_optimizer(trained):
    from covidzoo.checkpoint import load_state

    assert {b: (r["backbone"], r["epochs_run"]) for b, r in trained.runs.items()} == {
        "tiny3d": ("tiny3d", 1), "tiny2d": ("tiny2d", 1)}
    model, spec = covidzoo.load_checkpoint(str(trained.best("tiny3d")))
    assert spec.model_args["channels"] == [4, 8, 8]
    assert (spec.aggregator, spec.aggregator_args) == ("flip-mean", {"weight": 0.25})
    assert type(model).__name__ == "FlipMean" and model.weight == 0.25
    assert model.backbone.channels == (4, 8, 8)
    model2d, spec2d = covidzoo.load_checkpoint(str(trained.best("tiny2d")))
    assert spec2d.model_args["pool"] == "max" and spec2d.aggregator == "slice-mean"
    assert model2d.backbone.pool_type == "max" and model2d.backbone.channels == (4, 8)

    config = json.loads((trained.root / "tiny3d" / "config.json").read_text())
    assert (config["optimizer"], config["optimizer_args"]) == ("sgd-nodecay", {"momentum": 0.8})
    groups = load_state(trained.root / "tiny3d" / "last.safetensors")["optimizer"]["param_groups"]
    assert sorted(g["weight_decay"] for g in groups) == [0.0, 0.001]
    assert {g["momentum"] for g in groups} == {0.8}


def test_evaluate_a_plugin_checkpoint(trained, cache, invoke):
    result = invoke("evaluate", trained.best("tiny3d"), "--data", trained.data, "--device",
                    "cpu", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "val" and report["timing"]["scans"] > 0
    assert 0.0 <= report["metrics"]["auc"] <= 1.0


def test_ensemble_with_the_plugins_ensembler_saves_and_predicts(trained, cache, invoke, tmp_path):
    from covidzoo.data.synthetic import phantom

    saved = tmp_path / "ensemble.json"
    result = invoke("ensemble", trained.best("tiny3d"), trained.best("tiny2d"), "--data",
                    trained.data, "--method", "geometric-mean", "--save", saved, "--device",
                    "cpu", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["method"] == "geometric-mean"
    stored = json.loads(saved.read_text())["ensembler"]
    assert stored == {"method": "geometric-mean", "n_models": 2, "eps": 1e-6}

    scan = tmp_path / "scan.npy"
    np.save(scan, phantom(np.random.default_rng(7), (16, 48, 48), covid=True))
    result = invoke("predict", saved, scan, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    (prediction,) = json.loads(result.stdout)["predictions"]
    p = np.clip(prediction["member_probabilities"], 1e-6, 1 - 1e-6)
    mean_logit = np.mean(np.log(p / (1 - p)))
    assert prediction["probability"] == pytest.approx(1 / (1 + np.exp(-mean_logit)), abs=1e-9)
    assert prediction["label"] in ("covid", "non-covid")


def test_bench_takes_the_backbones_own_option(invoke):
    result = invoke("bench", "tiny3d", "--tiny-widths", "4,8", "--device", "cpu", "--iters", "1",
                    "--warmup", "0", "--input-size", "16,32,32", "--precision", "fp32",
                    "--batch-size", "2", "--json", "-")
    assert result.exit_code == 0, result.output
    results = json.loads(result.stdout)
    assert {r["mode"] for r in results} == {"infer", "train"}
    assert all(r["model"] == "tiny3d" and not r.get("error") for r in results)
    assert all(r["model_args"] == {"channels": [4, 8]} for r in results)


def test_models_show_with_the_backbones_own_options(invoke):
    result = invoke("models", "show", "tiny3d", "--tiny-widths", "4,8", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.stdout)
    assert shown["plugin"] == "example" and shown["metadata"]["input_size"] == [32, 64, 64]
    assert shown["metadata"]["options"][0]["flag"] == "--tiny-widths"

    result = invoke("models", "show", "tiny2d", "--tiny-widths", "4,8", "--input-size", "32,32",
                    "--json")
    assert result.exit_code == 0, result.output
    stages = json.loads(result.stdout)["stages"]
    assert [(s["name"], s["width"], s["output_shape"]) for s in stages] == [
        ("block0", 4, [4, 16, 16]), ("block1", 8, [8, 8, 8]), ("head", 1, [1])]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["models", "show", "tiny3d", "--tiny-widths", "4,0"], "--tiny-widths: 0 must be positive"),
        (["models", "show", "tiny3d", "--tiny2d-pool", "max"],
         "--tiny2d-pool: an option of tiny2d, not of backbone 'tiny3d'"),
        (["models", "show", "tiny2d", "--tiny2d-pool", "median"], "pool 'median' is unknown"),
        (["train", "tiny3d", "--tiny2d-pool", "max"], "--tiny2d-pool: an option of tiny2d"),
    ],
)
def test_bad_option_values_are_one_line_errors(invoke, args, message):
    result = invoke(*args)
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and message in result.stderr


def test_models_lists_every_component_with_a_summary(invoke):
    rows = json.loads(invoke("models", "--json").stdout)
    mine = {(r["kind"], r["name"]): r for r in rows if r["plugin"] == "example"}
    assert set(mine) == EXAMPLE
    assert all(r["summary"] for r in mine.values())


def test_plugins_lists_every_hook(invoke):
    rows = {r["name"]: r for r in json.loads(invoke("plugins", "--json").stdout)}
    assert rows["example"]["version"] == "0.2.0"
    assert rows["example"]["hooks"] == ["register_aggregators", "register_backbones",
                                        "register_commands", "register_ensemblers",
                                        "register_optimizers"]


def test_example_info_lists_this_plugins_components_only(invoke, register_plugin):
    from covidzoo_example.models import tiny3d

    class Other:
        @hookimpl
        def register_backbones(self, register):
            register("other-net", tiny3d, summary="Another", spatial_dims=3,
                     input_size=(8, 8, 8))

    register_plugin(Other(), name="other")
    assert "other-net" in covidzoo.list_models()
    result = invoke("example-info")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("covidzoo-example 0.2.0 (plugin 'example')")
    assert "other-net" not in result.stdout and "--tiny2d-pool TEXT" in result.stdout
    data = json.loads(invoke("example-info", "--json").stdout)
    assert {(c["kind"], c["name"]) for c in data["components"]} == EXAMPLE
    assert data["commands"] == ["example-info"]
