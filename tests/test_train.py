"""Training: a full tiny run, resume equivalence, every optimizer, precision flags, bad input."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from covidzoo.checkpoint import load_checkpoint, read_spec
from covidzoo.data import CachedScans, synthesize
from covidzoo.errors import BadInputError
from covidzoo.train import TrainConfig, Trainer, train

TINY = {"depths": [1, 1, 1, 1], "widths": [8, 16, 16, 32], "stem_width": 8}
SIZE = (16, 32, 32)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return synthesize(tmp_path_factory.mktemp("data") / "scans", n=12, seed=1, shape=(16, 48, 48))


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    # One cache for the module: the same data and preprocessing are prepared once.
    monkeypatch.setenv("COVIDZOO_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def config(dataset: Path, out: Path, **overrides) -> TrainConfig:
    base = dict(backbone="regnet3d", model_args=dict(TINY), data=str(dataset), size=SIZE,
                epochs=2, batch_size=3, lr=3e-3, out=str(out), device="cpu", seed=0)
    return TrainConfig(**{**base, **overrides})


def metrics_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def deterministic(row: dict) -> dict:
    return {k: v for k, v in row.items() if k not in ("train_scans_per_s", "epoch_time_s")}


def test_full_tiny_run_writes_the_run_folder(dataset, tmp_path):
    run = tmp_path / "run"
    summary = train(config(dataset, run), quiet=True)
    assert summary["epochs_run"] == 2 and not summary["interrupted"]
    rows = metrics_rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"train_loss", "val_loss", "val_auc", "val_f1", "val_threshold", "lr"}
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["model"]["backbone"] == "regnet3d" and cfg["size"] == list(SIZE)
    assert cfg["model"]["aggregator"] == "volume"
    for name in ("best.safetensors", "last.safetensors", "last.state.json",
                 "last.state.safetensors"):
        assert (run / name).is_file()

    # The best checkpoint rebuilds from the file alone and reproduces the logged validation AUC.
    model, spec = load_checkpoint(run / "best.safetensors")
    assert spec.threshold == summary["threshold"]
    val = CachedScans(_cache_dir(run), split="val")
    trainer = Trainer.__new__(Trainer)  # only for its evaluate(); no run folder checks
    trainer.cfg, trainer.device = config(dataset, run), torch.device("cpu")
    from covidzoo.runtime import Dist, Precision

    trainer.precision, trainer.dist = Precision("fp32"), Dist()
    trainer.channels_last_scans, trainer.workers, trainer._loaders = False, 0, {}
    from covidzoo.task import Task

    result = trainer.evaluate(model, val, Task())
    assert result["auc"] == pytest.approx(summary["best_val_auc"], abs=1e-12)


def _cache_dir(run: Path) -> Path:
    from covidzoo.data import PreprocessConfig, cache_dir_for

    spec = read_spec(run / "best.safetensors")
    source = json.loads((run / "config.json").read_text())["data_source"]
    return cache_dir_for(source, PreprocessConfig.from_dict(spec.preprocess))


def test_resume_after_interrupt_equals_an_uninterrupted_run(dataset, tmp_path, monkeypatch):
    full = tmp_path / "full"
    train(config(dataset, full, epochs=3), quiet=True)

    cut = tmp_path / "cut"
    original = Trainer._train_epoch

    def interrupt_in_epoch_3(self, state, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, state, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupt_in_epoch_3)
    summary = train(config(dataset, cut, epochs=3), quiet=True)
    assert summary["interrupted"] and summary["epochs_run"] == 2
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    train(config(dataset, cut, epochs=3, resume=True), quiet=True)

    assert [deterministic(r) for r in metrics_rows(cut)] == [
        deterministic(r) for r in metrics_rows(full)
    ]
    from safetensors.torch import load_file

    a, b = load_file(str(full / "last.safetensors")), load_file(str(cut / "last.safetensors"))
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "rmsprop", "novograd"])
def test_every_optimizer_trains(dataset, tmp_path, optimizer):
    summary = train(config(dataset, tmp_path / optimizer, optimizer=optimizer, epochs=1),
                    quiet=True)
    assert summary["epochs_run"] == 1
    assert np.isfinite(metrics_rows(tmp_path / optimizer)[0]["train_loss"])


def test_bf16_on_cpu_and_schedules(dataset, tmp_path):
    run = tmp_path / "bf16"
    cfg = config(dataset, run, precision="bf16", schedule="step", pos_weight=2.0, epochs=1)
    summary = train(cfg, quiet=True)
    assert summary["precision"] == "bf16"
    assert np.isfinite(metrics_rows(run)[0]["val_loss"])


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"precision": "fp16"}, "--precision fp16 needs a CUDA device"),
        ({"optimizer": "lion"}, "unknown optimizer 'lion'"),
        ({"batch_size": 100}, "--batch-size 100 is larger than the 8 training scans"),
        ({"resume": True}, "--resume: no"),
        ({"epochs": 0}, "--epochs must be at least 1"),
    ],
)
def test_bad_input(dataset, tmp_path, overrides, message):
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        train(config(dataset, tmp_path / "run", **overrides), quiet=True)


def test_an_existing_run_is_never_overwritten(dataset, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text("precious\n")
    with pytest.raises(BadInputError, match="already holds a run"):
        train(config(dataset, run), quiet=True)
    assert (run / "metrics.jsonl").read_text() == "precious\n"


def test_resume_with_another_model_is_refused(dataset, tmp_path):
    run = tmp_path / "run"
    train(config(dataset, run, epochs=1), quiet=True)
    with pytest.raises(BadInputError, match="holds a 'regnet3d' model, not 'tiny3d'"):
        train(config(dataset, run, backbone="tiny3d", model_args={}, resume=True), quiet=True)


def test_no_data_and_one_class(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(BadInputError):
        train(config(empty, tmp_path / "run"), quiet=True)
    import shutil

    one_class = synthesize(tmp_path / "one", n=8, seed=0, shape=(8, 32, 32))
    for split in ("train", "val"):
        shutil.rmtree(one_class / split / "non-covid")
    with pytest.raises(BadInputError, match="one class only"):
        train(config(one_class, tmp_path / "run2"), quiet=True)


def test_cli_train_json_summary_and_bad_flags(dataset, tmp_path, invoke, runner):
    from covidzoo.cli import cli

    run = tmp_path / "cli"
    result = invoke("train", "regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32",
                    "--stem-width", "8", "--data", str(dataset), "--size", "16,32,32",
                    "--epochs", "1", "--batch-size", "3", "--device", "cpu", "--out", str(run),
                    "--optimizer", "sgd", "--optimizer-arg", "momentum=0.5", "--frozen-bn",
                    "train", "--json")
    summary = json.loads(result.output)
    assert summary["out"] == str(run) and summary["epochs_run"] == 1
    config = json.loads((run / "config.json").read_text())
    assert config["optimizer_args"] == {"momentum": 0.5} and config["frozen_bn"] == "train"
    from covidzoo.checkpoint import load_state

    state = load_state(run / "last.safetensors")["optimizer"]
    assert [g["momentum"] for g in state["param_groups"]] == [0.5]
    for args, message in [
        (["--size", "16,32"], "--size takes D,H,W, got '16,32'"),
        (["--size", "16,0,32"], "--size: 0 must be positive"),
        (["--depths", "2,,6"], "--depths"),
        (["--backbones", "resnet18,densenet121"],
         "--backbones: an option of resdense2d, not of backbone 'regnet3d'"),
        (["--model-arg", "oops"], "--model-arg takes KEY=VALUE, got 'oops'"),
        (["--optimizer-arg", "bogus=1", "--size", "16,32,32", "--depths", "1,1,1,1"],
         "optimizer 'adamw': "),
        (["--aggregator-arg", "k=3", "--size", "16,32,32", "--depths", "1,1,1,1"],
         "aggregator 'volume': "),
    ]:
        bad = runner.invoke(cli, ["train", "regnet3d", "--data", str(dataset), *args])
        assert bad.exit_code == 2, bad.output
        lines = bad.stderr.strip().splitlines()
        assert len(lines) == 1 and message in lines[0]


def test_torchrun_two_gloo_processes(dataset, tmp_path):
    """DistributedDataParallel on the CPU: rank 0 alone writes, metrics cover all val scans."""
    import os
    import subprocess
    import sys

    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "covidzoo", "train", "regnet3d", "--depths", "1,1,1,1", "--widths",
           "8,16,16,32", "--stem-width", "8", "--data", str(dataset), "--size", "16,32,32",
           "--epochs", "2", "--batch-size", "2", "--device", "cpu", "--out", str(run), "--json"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["epochs_run"] == 2  # one JSON document: rank 0 reports
    rows = metrics_rows(run)
    assert [r["epoch"] for r in rows] == [1, 2]  # one writer: no duplicated lines
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["world_size"] == 2
    load_checkpoint(run / "best.safetensors")
    # Every rank continues from the generation rank 0 verified under the run folder's lock.
    cmd[cmd.index("--epochs") + 1] = "3"
    done = subprocess.run([*cmd, "--resume"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert [r["epoch"] for r in metrics_rows(run)] == [1, 2, 3]


def test_staged_fine_tuning_freezes_then_opens_the_last_layers(dataset, tmp_path, monkeypatch):
    """resdense2d: backbones frozen for --freeze-epochs, then the last K layers of each branch."""
    trainable: dict[int, set[str]] = {}
    original = Trainer._train_epoch

    def record(self, state, epoch):
        trainable[epoch] = {n for n, p in state.model.named_parameters() if p.requires_grad}
        return original(self, state, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", record)
    cfg = config(dataset, tmp_path / "staged", backbone="resdense2d",
                 model_args={"backbones": ("resnet18", "densenet121"), "proj_channels": 16},
                 size=(3, 64, 64), freeze_epochs=1, unfreeze_last=2)
    train(cfg, quiet=True)
    first, second = trainable[1], trainable[2]
    assert first and all(not n.startswith("backbone.branches.") for n in first)
    opened = second - first
    # Two parameterised layers per branch: each a weight (and a bias or a norm's bias).
    assert {n.split(".")[2] for n in opened} == {"0", "1"}
    assert all(n.startswith("backbone.branches.") for n in opened)


def _branch_norm_stats(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: b.clone() for n, b in model.named_buffers() if n.startswith("backbone.branches.")}


@pytest.mark.parametrize("frozen_bn", ["eval", "train"])
def test_a_frozen_epoch_leaves_frozen_batchnorm_statistics_bit_identical(
        dataset, tmp_path, monkeypatch, capsys, frozen_bn):
    """--frozen-bn eval (the default): the frozen branches run in inference mode, so their
    BatchNorm running statistics are exactly what they were; --frozen-bn train updates them."""
    seen: dict[str, dict[str, torch.Tensor]] = {}
    original = Trainer._train_epoch

    def record(self, state, epoch):
        seen["before"] = _branch_norm_stats(state.model)
        result = original(self, state, epoch)
        seen["after"] = _branch_norm_stats(state.model)
        seen["head"] = {n: m.training for n, m in state.model.named_modules()
                        if n.startswith("backbone.projections.")}
        return result

    monkeypatch.setattr(Trainer, "_train_epoch", record)
    cfg = config(dataset, tmp_path / "frozen", backbone="resdense2d",
                 model_args={"backbones": ("resnet10t", "resnet14t"), "proj_channels": 16},
                 size=(3, 64, 64), epochs=1, freeze_epochs=1, frozen_bn=frozen_bn)
    train(cfg, quiet=True)
    before, after = seen["before"], seen["after"]
    assert before.keys() == after.keys() and any("running_mean" in n for n in before)
    same = all(torch.equal(before[n], after[n]) for n in before)
    assert same == (frozen_bn == "eval")
    assert all(seen["head"].values())  # the trainable projections still train
    assert "freezes the randomly initialised backbones" in capsys.readouterr().err


def test_frozen_bn_must_be_eval_or_train(dataset, tmp_path):
    with pytest.raises(BadInputError, match="--frozen-bn"):
        Trainer(config(dataset, tmp_path / "run", frozen_bn="fixed"))


def test_freeze_epochs_need_a_backbone_that_supports_it(dataset, tmp_path):
    with pytest.raises(BadInputError, match="no staged fine-tuning"):
        train(config(dataset, tmp_path / "run", freeze_epochs=1), quiet=True)


def test_ctrl_c_while_saving_waits_for_the_checkpoint(dataset, tmp_path, monkeypatch):
    """A SIGINT that lands while epoch 1 is being saved stops the run after the save: `last`
    and its resume state are both of epoch 1."""
    import os
    import signal

    from covidzoo import train as train_module

    real = train_module.save_checkpoint

    def save_and_get_interrupted(path, model, spec):
        if Path(path).name == "best.safetensors":  # first written at the end of epoch 1
            os.kill(os.getpid(), signal.SIGINT)  # delivered now, held back until saved
        return real(path, model, spec)

    monkeypatch.setattr(train_module, "save_checkpoint", save_and_get_interrupted)
    run = tmp_path / "run"
    summary = train(config(dataset, run, epochs=3), quiet=True)
    assert summary["interrupted"] and summary["epochs_run"] == 1
    from covidzoo.checkpoint import load_state

    assert load_state(run / "last.safetensors")["epoch"] == 1
    assert [r["epoch"] for r in metrics_rows(run)] == [1]


def test_public_load_checkpoint_rebuilds_the_trained_model(dataset, tmp_path):
    import covidzoo

    run = tmp_path / "run"
    train(config(dataset, run, epochs=1), quiet=True)
    model, spec = covidzoo.load_checkpoint(str(run / "last.safetensors"))
    again, _ = load_checkpoint(run / "last.safetensors")
    x = torch.randn(2, 1, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), again.eval()(x), rtol=0, atol=0)
    assert spec.backbone == "regnet3d" and spec.preprocess["size"] == list(SIZE)


@pytest.mark.parametrize(
    ("backbone", "model_args", "size"),
    [("regnet3d", TINY, SIZE),
     ("resdense2d", {"backbones": ("resnet18", "densenet121"), "proj_channels": 16},
      (2, 64, 64))],
)
def test_channels_last_for_3d_and_2d_models(dataset, tmp_path, backbone, model_args, size):
    """channels_last_3d for a volume model, channels_last for a slice model's 4D weights."""
    cfg = config(dataset, tmp_path / backbone, backbone=backbone, model_args=model_args,
                 size=size, channels_last=True, epochs=1)
    summary = train(cfg, quiet=True)
    assert summary["epochs_run"] == 1
    resolved = json.loads((tmp_path / backbone / "config.json").read_text())
    assert resolved["channels_last_resolved"] is True


def _loader_trainer(workers: int) -> Trainer:
    from covidzoo.runtime import Dist

    trainer = Trainer.__new__(Trainer)  # only for its _loader(); no run folder checks
    trainer.cfg = TrainConfig("regnet3d", batch_size=2, seed=3)
    trainer.device, trainer.dist = torch.device("cpu"), Dist()
    trainer.workers, trainer._loaders = workers, {}
    return trainer


def test_loader_keeps_its_workers_and_orders_by_seed_and_epoch():
    data = torch.utils.data.TensorDataset(torch.arange(10), torch.zeros(10))
    trainer = _loader_trainer(workers=1)

    def order(t: Trainer, epoch: int) -> list[int]:
        return [int(i) for batch, _ in t._loader(data, train=True, epoch=epoch) for i in batch]

    first = order(trainer, 1)
    workers = trainer._loaders[id(data)][1]._iterator._workers
    second = order(trainer, 2)
    # One loader for the run, its worker processes kept from one epoch to the next.
    assert trainer._loaders[id(data)][1]._iterator._workers == workers
    assert sorted(first) == sorted(second) == list(range(10)) and first != second
    # A resumed run (a fresh trainer) reads epoch 2 in the same order.
    assert order(_loader_trainer(workers=0), 2) == second
    trainer._loaders.clear()


def test_default_workers_none_on_cpu_and_shared_between_local_ranks(monkeypatch):
    from covidzoo.runtime import default_workers

    assert default_workers(torch.device("cpu")) == 0
    monkeypatch.setattr("os.cpu_count", lambda: 16)
    assert default_workers(torch.device("cuda")) == 8
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert default_workers(torch.device("cuda")) == 3
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    assert default_workers(torch.device("cuda")) == 1


# --- what the log says is what ran (issue 21) ----------------------------------------------------


def _no_data_preparation(monkeypatch):
    def prepared(self, size):
        raise AssertionError("the data was prepared before the size was checked")

    monkeypatch.setattr(Trainer, "_load_data", prepared)


@pytest.mark.parametrize(("backbone", "model_args", "size", "message"), [
    ("regnet3d", TINY, (8, 8, 8), "scans of 8x8x8 are too small for 'regnet3d': it reduces "
                                  "32x32x32"),
    ("resdense2d", {"backbones": ("resnet18", "densenet121"), "proj_channels": 16}, (2, 16, 16),
     "scans of 2x16x16 are too small for 'resdense2d'"),
    ("resdense2d", {"backbones": ("resnet18", "densenet121"), "proj_channels": 16}, (2, 32, 20),
     "scans of 2x32x20 do not fit 'resdense2d': "),
])
def test_a_scan_size_too_small_is_refused_before_any_work(dataset, tmp_path, monkeypatch,
                                                          backbone, model_args, size, message):
    _no_data_preparation(monkeypatch)
    cfg = config(dataset, tmp_path / "run", backbone=backbone, model_args=model_args, size=size)
    with pytest.raises(BadInputError, match=message.replace("(", r"\(")):
        train(cfg, quiet=True)


def test_a_thin_scan_above_the_reduction_in_some_dimension_trains(dataset, tmp_path):
    """8x32x32 for a network reducing 32x32x32: thin, but not all padding."""
    summary = train(config(dataset, tmp_path / "thin", size=(8, 32, 32), epochs=1), quiet=True)
    assert summary["size"] == [8, 32, 32]


def test_size_must_agree_with_the_cache(dataset, tmp_path, runner):
    from covidzoo.cli import cli
    from covidzoo.data import PreprocessConfig, find_scans, prepare_cache

    cache = tmp_path / "cache"
    prepare_cache(find_scans(root=dataset), cache, PreprocessConfig(size=SIZE), workers=0,
                  progress=False)
    with pytest.raises(BadInputError, match=r"--size 8x32x32 differs from the scans of --cache"):
        train(config(dataset, tmp_path / "run", data=None, cache=str(cache), size=(8, 32, 32)),
              quiet=True)
    result = runner.invoke(cli, ["train", "regnet3d", "--cache", str(cache), "--size", "8,32,32",
                                 "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"Error: --size 8x32x32 differs from the scans of --cache {cache} (16x32x32); leave "
        "--size out, or prepare a cache of that size"]
    summary = train(config(dataset, tmp_path / "same", data=None, cache=str(cache), size=SIZE,
                           epochs=1), quiet=True)
    assert summary["size"] == list(SIZE)


def test_resume_without_out_continues_the_latest_run_of_the_backbone(dataset, tmp_path,
                                                                     monkeypatch, capsys):
    import os
    from dataclasses import replace

    monkeypatch.chdir(tmp_path)
    with pytest.raises(BadInputError, match=r"--resume: no regnet3d run under runs/ to "
                                            "continue; give --out"):
        train(replace(config(dataset, "", resume=True), out=None), quiet=True)
    for name in ("regnet3d-older", "regnet3d-newer"):
        train(config(dataset, Path("runs") / name, epochs=1), quiet=True)
    (tmp_path / "runs" / "notes").mkdir()
    (tmp_path / "runs" / "notes" / "last.safetensors").write_text("not a checkpoint")
    older = tmp_path / "runs" / "regnet3d-older" / "last.safetensors"
    os.utime(older, (older.stat().st_atime, older.stat().st_mtime + 60))  # written last
    capsys.readouterr()
    summary = train(replace(config(dataset, "", resume=True, epochs=2), out=None))
    assert summary["out"] == str(Path("runs") / "regnet3d-older") and summary["epochs_run"] == 2
    assert ("--resume: continuing runs/regnet3d-older, the latest regnet3d run under runs/"
            in capsys.readouterr().err)
    assert [r["epoch"] for r in metrics_rows(tmp_path / "runs" / "regnet3d-older")] == [1, 2]


# --- what people read (issue 21) -----------------------------------------------------------------


def test_the_summary_rounds_and_names_the_split_that_chose_the_epoch(dataset, tmp_path, invoke):
    args = ["train", "regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32",
            "--stem-width", "8", "--data", str(dataset), "--size", "16,32,32", "--epochs", "1",
            "--batch-size", "3", "--device", "cpu"]
    summary = json.loads(invoke(*args, "--out", str(tmp_path / "a"), "--json").stdout)
    assert summary["n_val"] == 4
    line = invoke(*args, "--out", str(tmp_path / "b")).stdout.strip()
    from covidzoo.values import format_number

    assert f"best AUC {format_number(summary['best_val_auc'])} at epoch 1, on the validation " \
           "split (4 scans; this split chose the epoch, so the figure is optimistic)" in line
    assert not re.search(r"\d\.\d{5,}", line), line  # no raw floats


def test_the_epoch_shows_steps_scans_per_second_and_the_running_loss(dataset, tmp_path,
                                                                      monkeypatch):
    import io

    from rich.console import Console

    from covidzoo import progress

    screen = io.StringIO()
    monkeypatch.setattr(progress, "shows", lambda: True)
    monkeypatch.setattr(progress, "_console",
                        lambda: Console(file=screen, force_terminal=True, width=160))
    train(config(dataset, tmp_path / "run", epochs=1))
    text = screen.getvalue()
    assert "epoch 1/1" in text and "2/2" in text and "scans/s" in text
    assert re.search(r"loss \d\.\d{3}", text), text
