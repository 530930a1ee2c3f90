"""Recipes: `covidzoo train --config FILE` (TOML or JSON, a run's config.json included),
`--recipe NAME` for the recipes shipped in covidzoo/recipe_files/, `covidzoo recipes`, and which
layer wins (flags over the file over the recipe over the defaults)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from click.testing import CliRunner

from covidzoo import recipes
from covidzoo.data import synthesize

TINY_TOML = """\
backbone = "regnet3d"
size = [8, 32, 32]
epochs = 1
batch_size = 2
lr = 0.002
optimizer = "adam"
seed = 3
device = "cpu"
data = "{data}"

[model_args]
depths = [1, 1, 1, 1]
widths = [8, 16, 16, 32]
stem_width = 8

[preprocess]
contrast = "stretch"
"""
# Table 1 of the 3D RegNet paper, as printed: the recipe of each row, then num blocks, block
# width, group width, optimizer (covidzoo's name), loss weight and learning rate.
TABLE_1 = [
    ("regnet3d-t1-novograd", [2, 6, 12, 4], [48, 128, 256, 512], "novograd", 1.0, 0.0001),
    ("regnet3d-t1-sgd", [2, 6, 12, 4], [48, 128, 256, 512], "sgd", 1.0, 0.0001),
    ("regnet3d-t1-adam-lw2-lr1e-3", [2, 6, 12, 4], [48, 128, 256, 512], "adam", 2.0, 0.001),
    ("regnet3d-t1-adam-lw3-lr1e-4", [2, 6, 12, 4], [48, 128, 256, 512], "adam", 3.0, 0.0001),
    ("regnet3d-t1-adam-lw3-lr1e-5", [2, 6, 12, 4], [48, 128, 256, 512], "adam", 3.0, 0.00001),
    ("regnet3d-t1-shallow", [1, 3, 7, 4], [48, 128, 256, 512], "adam", 3.0, 0.0001),
    ("regnet3d-t1-w64", [2, 6, 12, 4], [64, 128, 256, 512], "adam", 3.0, 0.0001),
]
SHIPPED = sorted([row[0] for row in TABLE_1] + ["resdense2d-paper"])


def _train(*args: str) -> SimpleNamespace:
    """Run `covidzoo train ARGS` in-process (torch's threads restored), with its config.json."""
    from covidzoo.cli import cli

    threads = torch.get_num_threads()
    try:
        result = CliRunner().invoke(cli, ["train", *args, "--threads", "1"],
                                    catch_exceptions=False)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output
    out = Path(args[args.index("--out") + 1])
    return SimpleNamespace(result=result, out=out,
                           config=json.loads((out / "config.json").read_text()))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny data, and the runs the tests read: one from a TOML file with flags over it, one from
    a recipe with flags over it (one epoch of 8x32x32 scans each)."""
    root = tmp_path_factory.mktemp("recipes")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVIDZOO_CACHE", str(root / "cache"))
        data = synthesize(root / "data", n=8, seed=1, fmt="jpg", shape=(8, 32, 32),
                          val_fraction=0.5)
        toml = root / "tiny.toml"
        toml.write_text(TINY_TOML.format(data=data))
        from_file = _train("--config", str(toml), "--lr", "0.005", "--widths", "8,8,16,16",
                           "--preprocess", "crop_border=0.1", "--out", str(root / "file"))
        from_recipe = _train("--recipe", "regnet3d-t1-adam-lw3-lr1e-4", "--depths", "1,1,1,1",
                             "--widths", "8,16,16,32", "--stem-width", "8", "--data", str(data),
                             "--size", "8,32,32", "--epochs", "1", "--batch-size", "2",
                             "--device", "cpu", "--lr", "0.01", "--out", str(root / "recipe"))
        yield SimpleNamespace(root=root, data=data, toml=toml, from_file=from_file,
                              from_recipe=from_recipe)


@pytest.fixture
def captured(monkeypatch):
    """`covidzoo train` with the training replaced: the `TrainConfig` it would run, as a dict."""
    seen = []

    def fake_train(cfg, quiet=False):
        cfg.check()
        seen.append(cfg.to_dict())
        return {"interrupted": False}

    monkeypatch.setattr("covidzoo.train.train", fake_train)

    def run(*args: str) -> dict:
        from covidzoo.cli import cli

        result = CliRunner().invoke(cli, ["train", *args, "--json"], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return seen.pop()

    return run


# --- configuration files -----------------------------------------------------------------------


def test_a_toml_config_trains(runs):
    assert "best AUC" in runs.from_file.result.output
    assert (runs.from_file.out / "best.safetensors").exists()
    config = runs.from_file.config
    # What the file says and no flag touched, the flags' own defaults (batch size 4, seed 0,
    # adamw) not over it.
    assert config["backbone"] == "regnet3d"
    assert (config["optimizer"], config["batch_size"], config["seed"]) == ("adam", 2, 3)
    assert config["size"] == [8, 32, 32] and config["epochs"] == 1


def test_flags_override_the_file(runs):
    config = runs.from_file.config
    assert config["lr"] == 0.005  # the file says 0.002
    # A backbone's declared option overrides its key of the file's model_args, the others stay.
    assert config["model_args"] == {"depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16],
                                    "stem_width": 8}
    assert config["model"]["model_args"]["widths"] == [8, 8, 16, 16]  # what was built
    # --preprocess adds its steps to the file's.
    assert config["preprocess"] == {"contrast": "stretch", "crop_border": 0.1}


def test_a_run_record_is_a_config_that_trains_the_same_run(runs):
    record = runs.from_file.config
    # Every key of config.json is a field or a key `recipes` knows to ignore: a key added to
    # `Trainer._resolved_config` must be added to `recipes.RECORD_KEYS`.
    assert set(record) <= set(recipes.field_types()) | recipes.RECORD_KEYS
    again = _train("--config", str(runs.from_file.out / "config.json"),
                   "--out", str(runs.root / "again"))
    assert again.config.pop("out") == str(runs.root / "again")
    assert again.config == {k: v for k, v in record.items() if k != "out"}


def test_a_record_ignores_its_own_folder_device_and_resolved_values(tmp_path):
    record = {"backbone": "regnet3d", "lr": 0.01, "out": "runs/old", "resume": True,
              "device": "cuda:0", "threads_resolved": 2, "world_size": 4,
              "model": {"backbone": "regnet3d"}, "covidzoo_version": "0.1.0"}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(record))
    assert recipes.read_config(path) == {"backbone": "regnet3d", "lr": 0.01}


def test_json_null_and_lists_take_the_fields_types(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"backbone": "regnet3d", "epochs": None, "size": [8, 32, 32],
                                "lr": 1, "pos_weight": 3}))
    assert recipes.read_config(path) == {"backbone": "regnet3d", "epochs": None,
                                         "size": (8, 32, 32), "lr": 1.0, "pos_weight": 3.0}


# --- named recipes -----------------------------------------------------------------------------


def test_the_shipped_recipes(invoke):
    assert recipes.recipe_names() == SHIPPED
    rows = json.loads(invoke("recipes", "--json").output)
    assert [r["name"] for r in rows] == SHIPPED
    assert all(r["source"] and r["config"]["backbone"] for r in rows)
    table = invoke("recipes", "list").output
    assert "regnet3d_shallow" in table and "resdense2d" in table


@pytest.mark.parametrize("name", SHIPPED)
def test_every_recipe_is_a_valid_train_config(name):
    from covidzoo.factory import check_scan_size, default_scan_size, get_component

    text = recipes.get_recipe(name).text
    assert text.startswith("# Source: ")  # cites its source first
    values = recipes.recipe_config(name)
    assert not {"data", "manifest", "cache", "split_file", "out", "resume"} & set(values)
    cfg = recipes.train_config(values)
    cfg.check()
    get_component(cfg.optimizer, "optimizer")
    check_scan_size(cfg.backbone, default_scan_size(cfg.backbone), cfg.model_args)


@pytest.mark.parametrize(("name", "depths", "widths", "optimizer", "pos_weight", "lr"), TABLE_1)
def test_table_1_is_transcribed(name, depths, widths, optimizer, pos_weight, lr):
    from covidzoo.models.regnet3d_cfg import REGNET3D_CFGS

    values = recipes.recipe_config(name)
    assert values == {
        "backbone": values["backbone"], "optimizer": optimizer, "lr": lr,
        "pos_weight": pos_weight,
        "model_args": {"depths": depths, "widths": widths, "group_widths": [8, 8, 8, 8]},
    }
    # The registered backbone of the row is the same network.
    named = REGNET3D_CFGS[values["backbone"]]
    assert (list(named.depths), list(named.widths)) == (depths, widths)


def test_the_res_dense_recipe():
    from covidzoo.factory import default_scan_size

    values = recipes.recipe_config("resdense2d-paper")
    assert values == {"backbone": "resdense2d", "optimizer": "adam", "lr": 0.0001, "epochs": 20,
                      "augment": True, "freeze_epochs": 5, "unfreeze_last": 100,
                      "model_args": {"backbones": ["resnet101", "densenet121"]}}
    assert default_scan_size("resdense2d")[1:] == (256, 256)  # the paper's slices, size unset


def test_recipes_show_prints_the_toml(invoke, tmp_path):
    text = invoke("recipes", "show", "regnet3d-t1-sgd").output
    assert text == recipes.get_recipe("regnet3d-t1-sgd").text
    path = tmp_path / "sgd.toml"
    path.write_text(text)
    assert recipes.read_config(path) == recipes.recipe_config("regnet3d-t1-sgd")


def test_a_recipe_with_flags_over_it(runs):
    config = runs.from_recipe.config
    assert (config["optimizer"], config["pos_weight"]) == ("adam", 3.0)  # the recipe
    assert config["lr"] == 0.01  # the flag, over the recipe's 0.0001
    assert config["model_args"] == {"depths": [1, 1, 1, 1], "widths": [8, 16, 16, 32],
                                    "group_widths": [8, 8, 8, 8], "stem_width": 8}


# --- precedence (the training replaced) --------------------------------------------------------


def test_config_overrides_recipe_and_flags_override_both(captured, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('lr = 0.5\nepochs = 7\n[optimizer_args]\nbetas = [0.8, 0.9]\n')
    cfg = captured("--recipe", "regnet3d-t1-adam-lw2-lr1e-3", "--config", str(path),
                   "--epochs", "2", "--optimizer-arg", "eps=1e-6")
    assert (cfg["backbone"], cfg["pos_weight"]) == ("regnet3d", 2.0)  # the recipe
    assert cfg["lr"] == 0.5  # the file over the recipe
    assert cfg["epochs"] == 2  # the flag over the file
    assert cfg["optimizer_args"] == {"betas": [0.8, 0.9], "eps": 1e-6}
    assert cfg["batch_size"] == 4  # nobody's: the default


def test_another_backbone_drops_the_recipes_model_args(captured):
    cfg = captured("regnet3d_shallow", "--recipe", "regnet3d-t1-novograd")
    assert (cfg["backbone"], cfg["model_args"]) == ("regnet3d_shallow", {})
    assert (cfg["optimizer"], cfg["lr"]) == ("novograd", 0.0001)


def test_another_optimizer_drops_the_files_optimizer_args(captured, tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('backbone = "regnet3d"\noptimizer = "sgd"\n[optimizer_args]\nmomentum = 0.8\n')
    assert captured("--config", str(path), "--optimizer", "adam")["optimizer_args"] == {}
    assert captured("--config", str(path))["optimizer_args"] == {"momentum": 0.8}


# --- bad input: exit 2, one line naming it -----------------------------------------------------


@pytest.mark.parametrize(("name", "content", "args", "message"), [
    ("c.toml", 'backbone = "regnet3d"\nlrr = 0.1\n', [],
     "c.toml: unknown key 'lrr' (did you mean 'lr'?)"),
    ("c.toml", 'backbone = "regnet3d"\nlr = "fast"\n', [],
     "c.toml: lr must be a number, got \"fast\""),
    ("c.toml", 'backbone = "regnet3d"\nsize = [8, 32]\n', [],
     "c.toml: size must be a list of 3 integers, got [8, 32]"),
    ("c.json", '{"backbone": "regnet3d", "augment": "yes"}', [],
     "c.json: augment must be true or false, got \"yes\""),
    ("c.json", '{"backbone": "regnet3d", "lr": null}', [], "c.json: lr must be a number, got null"),
    ("c.toml", 'backbone = "regnet3d"\n[preprocess]\ncrop = "ribs"\n', [],
     "c.toml: preprocess: unknown crop 'ribs'"),
    ("c.toml", 'backbone = "regnet3d"\n[preprocess]\nsmooth = 1\n', [],
     "c.toml: unknown key 'preprocess.smooth'"),
    ("c.toml", "backbone = regnet3d\n", [], "c.toml: not valid TOML"),
    ("c.json", "{backbone", [], "c.json: not valid JSON"),
    ("c.yaml", "backbone: regnet3d\n", [], "c.yaml: a configuration is a .toml or .json file"),
    ("missing.toml", None, [], "missing.toml: unreadable (No such file or directory)"),
    ("c.toml", "lr = 0.1\n", [], "no backbone: give BACKBONE, or a --recipe or --config"),
    (None, None, ["--recipe", "regnet3d-t2"], "unknown recipe 'regnet3d-t2'; the recipes are "
     "regnet3d-t1-adam-lw2-lr1e-3,"),
])
def test_bad_configs_are_one_line_exit_2(runner, tmp_path, name, content, args, message):
    from covidzoo.cli import cli

    if name is not None:
        if content is not None:
            (tmp_path / name).write_text(content)
        args = ["--config", str(tmp_path / name), *args]
    result = runner.invoke(cli, ["train", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_an_unknown_recipe_to_show_is_one_line_exit_2(runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["recipes", "show", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: unknown recipe 'nope'; the recipes are {', '.join(SHIPPED)} (see `covidzoo "
        "recipes`)"]
