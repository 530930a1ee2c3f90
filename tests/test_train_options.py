"""`covidzoo train`'s study-design options, driven in-process on a tiny 3D RegNet: --mixup,
--cutmix and --ema (what the run folder keeps, exact --resume), an older run folder resumed,
bad values refused in one line, --init from another run, --class-weights, --label-smoothing,
--split-file and a run's config.json given back as --config."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from click.testing import CliRunner, Result
from safetensors.torch import load_file, save_file

from covidzoo.checkpoint import read_spec
from covidzoo.fileio import CURRENT, GENERATIONS

TINY = ["regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32", "--stem-width", "8",
        "--size", "8,32,32", "--batch-size", "4", "--device", "cpu", "--threads", "1"]
# A constant learning rate: a 1-epoch run resumed to 2 epochs has the schedule of a 2-epoch run.
REGULARISED = ["--mixup", "0.4", "--cutmix", "1.0", "--ema", "0.9", "--schedule", "none",
               "--warmup-epochs", "0"]
TIMINGS = ("train_scans_per_s", "epoch_time_s")
# The settings an older covidzoo did not write into config.json.
NEW_KEYS = ("mixup", "cutmix", "ema", "class_weights", "label_smoothing", "init",
            "init_inflate", "init_key_map", "split_file")
MANIFEST = "generation.json"


class Setting:
    """The synthetic data (made once with `covidzoo data synth`), a private cache, and the
    CLI run in-process with torch's thread count restored."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.env = {"COVIDZOO_CACHE": str(root / "cache")}
        self.data = root / "scans"
        done = self.cli("data", "synth", str(self.data), "--n", "16", "--shape", "16,32,32")
        assert done.exit_code == 0, done.output

    def cli(self, *args: str) -> Result:
        from covidzoo.cli import cli

        threads = torch.get_num_threads()
        try:
            return CliRunner().invoke(cli, list(args), env=self.env, catch_exceptions=False)
        finally:
            torch.set_num_threads(threads)

    def train_args(self, out: Path, *args: str) -> list[str]:
        return ["train", *TINY, "--data", str(self.data), "--out", str(out), "--json", *args]

    def train(self, out: Path, *args: str) -> dict[str, Any]:
        done = self.cli(*self.train_args(out, *args))
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    def refused(self, out: Path, *args: str) -> str:
        """The one line of a `train` refused as bad input (exit status 2)."""
        done = self.cli(*self.train_args(out, *args))
        assert done.exit_code == 2, done.output
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1, done.stderr
        return lines[0]


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> Setting:
    return Setting(tmp_path_factory.mktemp("options"))


def run_of(setting: Setting, name: str, *args: str) -> SimpleNamespace:
    out = setting.root / name
    return SimpleNamespace(out=out, summary=setting.train(out, *args))


@pytest.fixture(scope="module")
def ema_run(setting) -> SimpleNamespace:
    """Two epochs with mixup, cutmix and an EMA of the weights."""
    return run_of(setting, "ema", *REGULARISED, "--epochs", "2")


@pytest.fixture(scope="module")
def plain_run(setting) -> SimpleNamespace:
    """One epoch with every new setting at its default: an --init source, a split to edit, an
    old run folder to be."""
    return run_of(setting, "plain", "--epochs", "1")


@pytest.fixture(scope="module")
def fold(setting, plain_run) -> Path:
    """The plain run's split with one scan of each class moved from val to train and one from
    train to val (as a cross-validation fold would)."""
    rows = read_rows(plain_run.out / "split.csv")
    for label in ("0", "1"):
        val = next(r for r in rows if r["label"] == label and r["split"] == "val")
        train = next(r for r in rows if r["label"] == label and r["split"] == "train")
        val["split"], train["split"] = "train", "val"
    path = setting.root / "fold.csv"
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "split", "group"])
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def weighted_run(setting, fold) -> SimpleNamespace:
    """One epoch with every new setting but --init away from its default."""
    return run_of(setting, "weighted", "--class-weights", "1,3", "--label-smoothing", "0.1",
                  "--mixup", "0.2", "--ema", "0.5", "--split-file", str(fold), "--epochs", "1")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def membership(split_csv: Path) -> set[tuple[str, str, str]]:
    return {(r["path"], r["label"], r["split"]) for r in read_rows(split_csv)}


def metrics(run: Path) -> list[dict[str, Any]]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMINGS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def same_tensors(a: Path, b: Path) -> bool:
    x, y = load_file(str(a)), load_file(str(b))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def generation(run: Path, epoch: int) -> Path:
    return run / GENERATIONS / f"epoch-{epoch:06d}"


# --- mixup, cutmix, EMA -------------------------------------------------------------------------


def test_an_ema_run_keeps_the_average_as_best_and_the_raw_weights_as_last(ema_run):
    run, summary = ema_run.out, ema_run.summary
    assert summary["epochs_run"] == 2 and (run / "ema.safetensors").is_file()
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2]
    raw = {"raw_val_loss", "raw_val_auc", "raw_val_f1", "raw_val_threshold"}
    assert all(raw <= set(r) for r in rows)
    # The average's validation chose the best epoch, and best.safetensors holds the average
    # saved at that epoch, with the average's threshold.
    best = rows[summary["best_epoch"] - 1]
    assert best["val_auc"] == max(r["val_auc"] for r in rows) == summary["best_val_auc"]
    assert same_tensors(run / "best.safetensors",
                        generation(run, summary["best_epoch"]) / "ema.safetensors")
    assert read_spec(run / "best.safetensors").threshold == best["val_threshold"]
    # last.safetensors holds the raw weights (the ones --resume continues), not the average.
    last, ema = load_file(str(run / "last.safetensors")), load_file(str(run / "ema.safetensors"))
    assert last.keys() == ema.keys()
    assert any(not torch.equal(last[k], ema[k]) for k in last)
    assert read_spec(run / "last.safetensors").threshold == rows[-1]["raw_val_threshold"]
    assert read_spec(run / "ema.safetensors").threshold == rows[-1]["val_threshold"]
    config = json.loads((run / "config.json").read_text())
    assert (config["mixup"], config["cutmix"], config["ema"]) == (0.4, 1.0, 0.9)


def test_a_regularised_run_resumed_equals_the_uninterrupted_one(setting, ema_run):
    cut = setting.root / "cut"
    assert setting.train(cut, *REGULARISED, "--epochs", "1")["epochs_run"] == 1
    resumed = setting.train(cut, *REGULARISED, "--epochs", "2", "--resume")
    assert resumed["epochs_run"] == 2
    for name in ("last.safetensors", "ema.safetensors", "best.safetensors"):
        assert same_tensors(cut / name, ema_run.out / name), name
    assert metrics(cut) == metrics(ema_run.out)
    # The mixer's and the average's states came back: the next epoch's batches and updates
    # are the ones the uninterrupted run made.
    from covidzoo.checkpoint import load_state

    a, b = load_state(cut / "last.safetensors"), load_state(ema_run.out / "last.safetensors")
    assert a["ema"] == b["ema"] and a["ema"]["updates"] == 6
    assert torch.equal(a["mixer"]["generator"], b["mixer"]["generator"])


# --- an older run folder ------------------------------------------------------------------------


def rewrite(folder: Path, name: str, text: str) -> None:
    """Replace a file of a generation and record its new sha256 in the manifest, as if an older
    covidzoo had written it."""
    (folder / name).unlink()
    (folder / name).write_text(text)
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["files"][name] = hashlib.sha256(text.encode()).hexdigest()
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


@pytest.fixture(scope="module")
def old_run(setting, plain_run) -> Path:
    """The plain run as an older covidzoo wrote it: its config.json without the new settings
    and the model's classes, its resume state without the mixer and the average."""
    old = setting.root / "old"
    shutil.copytree(plain_run.out, old, symlinks=True)
    assert os.readlink(old / CURRENT) == f"{GENERATIONS}/epoch-000001"
    current = generation(old, 1)
    config = json.loads((current / "config.json").read_text())
    for key in NEW_KEYS:
        del config[key]
    del config["model"]["classes"]
    rewrite(current, "config.json", json.dumps(config, indent=2))
    state = json.loads((current / "last.state.json").read_text())
    state["__dict__"] = [e for e in state["__dict__"] if e[0] not in ("mixer", "ema")]
    rewrite(current, "last.state.json", json.dumps(state))
    return old


def test_an_older_run_folder_resumes_but_not_with_another_mixup(setting, old_run):
    line = setting.refused(old_run, "--epochs", "2", "--resume", "--mixup", "0.4")
    assert line.startswith(f"Error: --resume: {old_run} was started with other settings: ")
    assert "mixup null then, 0.4 now" in line and "label_smoothing" not in line
    assert os.readlink(old_run / CURRENT) == f"{GENERATIONS}/epoch-000001"  # nothing written
    # A setting the old config.json lacks had its default then: the run continues.
    summary = setting.train(old_run, "--epochs", "2", "--resume")
    assert summary["epochs_run"] == 2 and [r["epoch"] for r in metrics(old_run)] == [1, 2]
    config = json.loads((old_run / "config.json").read_text())
    assert {k: config[k] for k in NEW_KEYS} == {
        "mixup": None, "cutmix": None, "ema": None, "class_weights": None,
        "label_smoothing": 0.0, "init": None, "init_inflate": False, "init_key_map": None,
        "split_file": None}
    assert config["model"]["classes"] == ["non-covid", "covid"]


# --- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("args", "flag"), [
    (["--mixup", "-1"], "--mixup"),
    (["--mixup", "nan"], "--mixup"),
    (["--cutmix", "inf"], "--cutmix"),
    (["--ema", "1"], "--ema"),
    (["--ema", "nan"], "--ema"),
    (["--class-weights", "1,x"], "--class-weights"),
    (["--class-weights", "1,2,3"], "--class-weights"),
    (["--class-weights", "1,0"], "--class-weights"),
    (["--label-smoothing", "1"], "--label-smoothing"),
    (["--init-inflate"], "--init-inflate"),
    (["--init-key-map", "timm-regnet"], "--init-key-map"),
    (["--init", "missing.safetensors"], "--init"),
])
def test_bad_values_are_refused_in_one_line_naming_the_flag(setting, tmp_path, args, flag):
    out = tmp_path / "run"
    line = setting.refused(out, *args, "--epochs", "1")
    assert line.startswith("Error: ") and flag in line
    assert not out.exists()  # nothing left behind


def test_a_missing_init_file_is_named_once(setting, tmp_path):
    missing = tmp_path / "missing.safetensors"
    line = setting.refused(tmp_path / "run", "--init", str(missing), "--epochs", "1")
    assert "no such weights file" in line


def test_a_missing_init_file_message_is_not_wrapped_in_itself(setting, tmp_path):
    missing = tmp_path / "missing.safetensors"
    line = setting.refused(tmp_path / "run", "--init", str(missing), "--epochs", "1")
    assert line.count(str(missing)) == 1 and "cannot read the weights file" not in line


class Planted:
    """Unpickled, it creates the folder `marker`: code a weights file must never run."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.marker,)


def test_init_refuses_a_pth_holding_objects_without_running_them(setting, plain_run, tmp_path):
    marker = tmp_path / "ran"
    pth = tmp_path / "weights.pth"
    torch.save({"state_dict": load_file(str(plain_run.out / "best.safetensors")),
                "hook": Planted(marker)}, pth)
    out = tmp_path / "run"
    line = setting.refused(out, "--init", str(pth), "--epochs", "1")
    assert str(pth) in line and "refused" in line and "weights_only=True" in line
    assert not marker.exists() and not out.exists()
    torch.load(pth, weights_only=False)  # the file does run code when unpickled in full
    assert marker.is_dir()


def test_init_calls_a_text_file_no_weights_file_not_a_pickle_of_objects(setting, plain_run,
                                                                        tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text((plain_run.out / "config.json").read_text())
    line = setting.refused(tmp_path / "run", "--init", str(text), "--epochs", "1")
    assert str(text) in line
    assert "holds objects other than tensors" not in line


def test_an_unknown_key_map_is_refused_naming_the_flag(setting, plain_run, tmp_path):
    line = setting.refused(tmp_path / "run", "--init", str(plain_run.out / "best.safetensors"),
                           "--init-key-map", "bogus", "--epochs", "1")
    assert "--init-key-map" in line and "bogus" in line


# --- --init -------------------------------------------------------------------------------------


def test_init_from_a_run_of_the_same_architecture_loads_every_tensor(setting, plain_run):
    source = plain_run.out / "best.safetensors"
    run = run_of(setting, "init", "--init", str(source), "--epochs", "1")
    report = run.summary["init"]
    assert set(report["loaded"]) == set(load_file(str(source)))
    assert (report["missing"], report["unexpected"], report["mismatched"],
            report["inflated"]) == ([], [], [], [])
    assert report["path"] == str(source) and report["model"] == "Volume"
    # The epoch-0 save holds the weights before any step: the source's, every one of them.
    assert same_tensors(generation(run.out, 0) / "last.safetensors", source)
    assert not same_tensors(run.out / "last.safetensors", source)  # then it trained
    assert json.loads((run.out / "config.json").read_text())["init"] == str(source)


def test_init_from_another_architecture_reports_the_shape_mismatches(setting, plain_run):
    source = plain_run.out / "best.safetensors"
    run = run_of(setting, "wider", "--widths", "8,16,16,48", "--init", str(source),
                 "--epochs", "1")
    report = run.summary["init"]
    mismatched = {m["key"]: (m["file_shape"], m["model_shape"]) for m in report["mismatched"]}
    assert mismatched["backbone.stages.s4.0.conv3.conv.weight"] == ([32, 32, 1, 1, 1],
                                                                   [48, 48, 1, 1, 1])
    assert mismatched["backbone.head.weight"] == ([1, 32], [1, 48])
    assert all(have != want for have, want in mismatched.values())
    assert "backbone.stem.conv.weight" in report["loaded"]
    assert not set(report["loaded"]) & set(mismatched)
    start = load_file(str(generation(run.out, 0) / "last.safetensors"))
    given = load_file(str(source))
    assert all(torch.equal(start[k], given[k]) for k in report["loaded"])


def test_init_refuses_a_file_of_which_nothing_fits(setting, tmp_path):
    from covidzoo import create_model

    other = {k: v.contiguous() for k, v in create_model("tiny3d").state_dict().items()
             if not k.startswith("head.")}
    path = tmp_path / "tiny3d.safetensors"
    save_file(other, str(path))
    out = tmp_path / "run"
    line = setting.refused(out, "--init", str(path), "--epochs", "1")
    assert f"{path}: no tensor" in line and not out.exists()


# --- class weights, label smoothing, split files, --config --------------------------------------


def test_class_weights_and_label_smoothing_train_and_are_recorded(weighted_run):
    assert weighted_run.summary["epochs_run"] == 1
    assert weighted_run.summary["classes"] == ["non-covid", "covid"]
    config = json.loads((weighted_run.out / "config.json").read_text())
    assert config["class_weights"] == [1.0, 3.0] and config["label_smoothing"] == 0.1
    row, = metrics(weighted_run.out)
    assert all(torch.isfinite(torch.tensor(row[k])) for k in ("train_loss", "val_loss"))


def test_a_split_file_decides_train_and_val(weighted_run, plain_run, fold):
    assert membership(weighted_run.out / "split.csv") == membership(fold)
    assert membership(fold) != membership(plain_run.out / "split.csv")
    config = json.loads((weighted_run.out / "config.json").read_text())
    assert config["split_file"] == str(fold)
    assert (config["n_train"], config["n_val"]) == (12, 4)


def test_a_run_record_given_as_config_trains_the_same_run(setting, weighted_run):
    record = json.loads((weighted_run.out / "config.json").read_text())
    out = setting.root / "again"
    done = setting.cli("train", "--config", str(weighted_run.out / "config.json"), "--out",
                       str(out), "--threads", "1", "--json")
    assert done.exit_code == 0, done.output
    again = json.loads((out / "config.json").read_text())
    assert again.pop("out") == str(out)
    assert again == {k: v for k, v in record.items() if k != "out"}
    assert metrics(out) == metrics(weighted_run.out)
    assert same_tensors(out / "last.safetensors", weighted_run.out / "last.safetensors")
