"""Faults in a run folder and bad training flags: each ends in exit 0 with a correct result
(a damaged generation falls back to the complete one before it, and the run ends bit-identical
to an undamaged one) or in exit 2 with one line naming the file or the flag; never a traceback,
never a mixed run folder."""

from __future__ import annotations

import errno
import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from covidzoo.data import synthesize
from covidzoo.fileio import CURRENT, GENERATIONS, MANIFEST, exclusive_lock, sha256_file

TRAIN = ["train", "regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32", "--stem-width",
         "8", "--size", "16,32,32", "--epochs", "2", "--batch-size", "3", "--device", "cpu",
         "--threads", "1", "--json"]  # --json: the log stays off stderr, which holds the error


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("runs")
    data = synthesize(root / "scans", n=12, seed=1, shape=(16, 48, 48))
    other = synthesize(root / "other", n=12, seed=2, shape=(16, 48, 48))
    cache = {"COVIDZOO_CACHE": str(root / "cache")}
    from covidzoo.cli import cli

    threads = torch.get_num_threads()
    done = CliRunner().invoke(cli, [*TRAIN, "--data", str(data), "--out", str(root / "run")],
                              env=cache, catch_exceptions=False)
    torch.set_num_threads(threads)
    assert done.exit_code == 0, done.output
    return {"root": root, "data": data, "other": other, "cache": cache, "run": root / "run"}


@pytest.fixture
def run(env, tmp_path) -> Path:
    """A copy of the finished two-epoch run (links kept as links)."""
    copy = tmp_path / "run"
    shutil.copytree(env["run"], copy, symlinks=True)
    return copy


@pytest.fixture
def train(env, runner):
    """`train(out, *flags)`: the training CLI on the test data, in-process."""
    from covidzoo.cli import cli

    def invoke(out: Path, *flags: str, data: Path | None = None):
        args = [*TRAIN, "--data", str(data or env["data"]), "--out", str(out), *flags]
        return runner.invoke(cli, args, env=env["cache"])

    return invoke


def one_line_error(result, *needles: str, code: int = 2) -> str:
    assert result.exit_code == code, (result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        result.exception  # a traceback would leave the exception itself
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def generation(run: Path, epoch: int) -> Path:
    return run / GENERATIONS / f"epoch-{epoch:06d}"


def same_last(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    x, y = load_file(str(a / "last.safetensors")), load_file(str(b / "last.safetensors"))
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def rewrite(path: Path, text: str) -> None:
    """Change a saved file and record its new sum, as a bug (not damage) would."""
    path.write_text(text)
    manifest = json.loads((path.parent / MANIFEST).read_text())
    manifest["files"][path.name] = sha256_file(path)
    (path.parent / MANIFEST).write_text(json.dumps(manifest))


# -- damage to the current generation: --resume falls back to the complete one before it ------

def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


DAMAGE = {
    "state-json-garbage": ("last.state.json", lambda p: p.write_text("{not json")),
    "state-json-truncated": ("last.state.json", _truncate),
    "state-json-empty": ("last.state.json", lambda p: p.write_text("")),
    "state-tensors-truncated": ("last.state.safetensors", _truncate),
    "state-tensors-zeroed": ("last.state.safetensors",
                             lambda p: p.write_bytes(bytes(p.stat().st_size))),
    "state-tensors-missing": ("last.state.safetensors", lambda p: p.unlink()),
    "last-truncated": ("last.safetensors", _truncate),
    "last-pickle": ("last.safetensors", lambda p: p.write_bytes(b"\x80\x04K\x01.")),
    "last-missing": ("last.safetensors", lambda p: p.unlink()),
    "metrics-partial-line": ("metrics.jsonl",
                             lambda p: p.write_text(p.read_text() + '{"epoch": 3, "tra')),
    "metrics-line-lost": ("metrics.jsonl",
                          lambda p: p.write_text(p.read_text().splitlines()[0] + "\n")),
    "config-edited": ("config.json", lambda p: p.write_text(p.read_text().replace('"lr"', '"lR"'))),
    "manifest-corrupt": (MANIFEST, lambda p: p.write_text("[1, 2")),
    "manifest-missing": (MANIFEST, lambda p: p.unlink()),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_current_generation_falls_back_to_the_one_before(env, run, train, damage):
    name, harm = DAMAGE[damage]
    harm(generation(run, 2) / name)
    result = train(run, "--resume")
    assert result.exit_code == 0, result.output
    warning = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and str(generation(run, 2) / name) in warning[0]
    assert f"continuing from {generation(run, 1)} instead" in warning[0]
    assert same_last(run, env["run"])  # the lost epoch run again, to the same model
    assert os.readlink(run / CURRENT) == f"{GENERATIONS}/epoch-000002"


def test_a_deleted_current_generation_falls_back(env, run, train):
    shutil.rmtree(generation(run, 2))
    result = train(run, "--resume")
    assert result.exit_code == 0 and "missing; the generation is incomplete" in result.stderr
    assert same_last(run, env["run"])


def test_a_lost_current_link_adopts_the_newest_complete_generation(env, run, train):
    (run / CURRENT).unlink()
    result = train(run, "--resume")
    assert result.exit_code == 0 and json.loads(result.stdout)["epochs_run"] == 2
    assert os.readlink(run / CURRENT) == f"{GENERATIONS}/epoch-000002"


def test_leftovers_of_a_crash_are_cleaned_up_on_resume(env, run, train):
    staging = run / GENERATIONS / ".epoch-000003.999.staging"
    staging.mkdir()
    (staging / "last.safetensors").write_bytes(b"half")
    os.symlink("elsewhere", run / ".current.999.tmp")
    (generation(run, 0)).mkdir()  # an old generation a kill kept from being pruned
    result = train(run, "--resume", "--epochs", "3")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (run / GENERATIONS).iterdir()) == ["epoch-000002",
                                                                     "epoch-000003"]
    assert not (run / ".current.999.tmp").is_symlink()


def test_damage_in_every_generation_is_refused_naming_the_file(run, train):
    for epoch in (1, 2):
        (generation(run, epoch) / "last.state.json").write_text("{")
    one_line_error(train(run, "--resume"), str(generation(run, 2) / "last.state.json"),
                   "does not match the sha256")


def test_a_best_model_shared_by_both_generations_is_damaged_in_both(env, run, train):
    best = generation(run, 2) / "best.safetensors"
    shared = best.stat().st_ino == (generation(run, 1) / "best.safetensors").stat().st_ino
    _truncate(best)
    result = train(run, "--resume")
    if shared:  # one file, linked into both: nothing complete is left to fall back to
        one_line_error(result, str(best), "does not match the sha256")
    else:
        assert result.exit_code == 0 and str(best) in result.stderr
        assert same_last(run, env["run"])


@pytest.mark.parametrize(("name", "text", "message"), [
    ("last.state.json", "{}", "does not fit this run (KeyError: 'optimizer')"),
    ("last.state.json", "[1, 2]", "corrupt training state (not a mapping)"),
    ("last.state.json", '{"__tensor__": "nope"}', "does not fit last.state.safetensors"),
    ("metrics.jsonl", '{"epoch": 1}\n[]\n', "line 2 is corrupt"),
    ("metrics.jsonl", '{"epoch": 1}\n', "1 rows for 2 epochs"),
    ("config.json", "[]", "corrupt run configuration (not a JSON object)"),
    ("config.json", "{", "corrupt run configuration"),
])
def test_a_saved_file_that_passes_its_checksum_but_is_wrong_is_refused(run, train, name, text,
                                                                      message):
    rewrite(generation(run, 2) / name, text)
    one_line_error(train(run, "--resume"), name, message)


def test_a_state_of_another_epoch_than_its_generation_is_refused(run, train):
    path = generation(run, 2) / "last.state.json"
    skeleton = json.loads(path.read_text())
    skeleton["__dict__"] = [["epoch", 1] if k == "epoch" else [k, v]
                            for k, v in skeleton["__dict__"]]
    rewrite(path, json.dumps(skeleton))
    one_line_error(train(run, "--resume"), "last.state.json is of epoch 1, its generation of 2")


# -- folders that are not this version's run folders ------------------------------------------

def test_a_link_replaced_by_a_file_is_refused(run, train):
    (run / "last.safetensors").unlink()
    shutil.copyfile(generation(run, 2) / "last.safetensors", run / "last.safetensors")
    one_line_error(train(run, "--resume"), str(run / "last.safetensors"), "is not the link")


def test_an_older_run_folder_is_refused_not_resumed_unverified(env, tmp_path, train):
    old = tmp_path / "old"
    old.mkdir()
    for name in ("last.safetensors", "last.state.json", "last.state.safetensors"):
        shutil.copyfile(generation(env["run"], 2) / name, old / name)
    one_line_error(train(old, "--resume"), "of an older covidzoo")


@pytest.mark.parametrize("resume", [False, True])
def test_an_empty_or_missing_folder_has_nothing_to_resume(tmp_path, train, resume):
    folder = tmp_path / "empty"
    if resume:
        folder.mkdir()
    one_line_error(train(folder, "--resume"), "--resume: no run")
    assert list(folder.iterdir()) == [] if resume else not folder.exists()


def test_a_new_run_into_a_finished_run_is_refused(run, train):
    one_line_error(train(run), f"{run} already holds a run; pass --resume")


def test_a_new_run_into_a_folder_with_other_files_is_refused(tmp_path, train):
    (tmp_path / "notes.txt").write_text("mine")
    one_line_error(train(tmp_path), "already holds a run")
    assert (tmp_path / "notes.txt").read_text() == "mine"


# -- resuming with other data or settings -----------------------------------------------------

@pytest.mark.parametrize(("flags", "difference"), [
    (["--size", "16,32,48"], "size [16, 32, 32] then, [16, 32, 48] now"),
    (["--depths", "1,1,2,1"], "model_args"),
    (["--stem-width", "16"], "model_args"),
    (["--lr", "0.01"], "lr 0.001 then, 0.01 now"),
    (["--optimizer", "sgd"], 'optimizer "adamw" then, "sgd" now'),
    (["--optimizer-arg", "eps=1e-6"], "optimizer_args {} then"),
    (["--weight-decay", "0"], "weight_decay 0.0001 then, 0.0 now"),
    (["--schedule", "step"], 'schedule "cosine" then, "step" now'),
    (["--warmup-epochs", "0"], "warmup_epochs 1 then, 0 now"),
    (["--seed", "7"], "seed 0 then, 7 now"),
    (["--batch-size", "2"], "batch_size 3 then, 2 now"),
    (["--no-augment"], "augment true then, false now"),
    (["--pos-weight", "2"], "pos_weight null then, 2.0 now"),
    (["--aggregator", "volume"], 'aggregator "auto" then, "volume" now'),
    (["--val-split", "0.5"], "val_split null then, 0.5 now"),
])
def test_resume_with_other_settings_names_each_difference(run, train, flags, difference):
    line = one_line_error(train(run, "--resume", *flags), f"--resume: {run} was started with "
                          "other settings", difference)
    assert line.count(" then, ") == 1


def test_resume_with_other_data_is_refused(env, run, train):
    one_line_error(train(run, "--resume", data=env["other"]), "data ", str(env["other"]))


def test_resume_with_another_backbone_is_refused(env, run, runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["train", "tiny3d", "--data", str(env["data"]), "--out",
                                 str(run), "--resume"], env=env["cache"])
    one_line_error(result, "holds a 'regnet3d' model, not 'tiny3d'")


@pytest.mark.parametrize("flags", [["--workers", "0"], ["--patience", "5"], ["--threads", "2"],
                                   ["--precision", "fp32"], ["--no-channels-last"]])
def test_resume_may_change_how_it_runs(run, train, flags):
    result = train(run, "--resume", *flags)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["epochs_run"] == 2


def test_resume_may_extend_the_run_and_records_it(run, train):
    result = train(run, "--resume", "--epochs", "3")
    assert result.exit_code == 0 and json.loads(result.stdout)["epochs_run"] == 3
    assert json.loads((run / "config.json").read_text())["epochs"] == 3
    assert [json.loads(r)["epoch"] for r in (run / "metrics.jsonl").read_text().splitlines()] \
        == [1, 2, 3]


# -- a second writer, and outputs that cannot be written --------------------------------------

@pytest.mark.parametrize("resume", [False, True])
def test_a_second_writer_is_refused(run, tmp_path, train, resume):
    folder = run if resume else tmp_path / "new"
    with exclusive_lock(folder, "a training run"):
        one_line_error(train(folder, *(["--resume"] if resume else [])),
                       "a training run is already writing here", ".covidzoo.lock")
    if not resume:
        assert [p.name for p in folder.iterdir()] == [".covidzoo.lock"]


def test_the_lock_file_alone_is_not_a_run(tmp_path, train):
    folder = tmp_path / "locked-once"
    with exclusive_lock(folder, "a training run"):
        pass
    result = train(folder, "--epochs", "1")
    assert result.exit_code == 0, result.output


def test_out_is_a_file(tmp_path, train):
    (tmp_path / "file").write_text("x")
    one_line_error(train(tmp_path / "file"), f"--out {tmp_path / 'file'}: not a folder")


def test_out_under_a_file(tmp_path, train):
    (tmp_path / "file").write_text("x")
    one_line_error(train(tmp_path / "file" / "run"), f"({tmp_path / 'file'} is a file)")


def test_out_is_a_symlink_loop(tmp_path, train):
    os.symlink("loop", tmp_path / "loop")
    one_line_error(train(tmp_path / "loop"), "not a folder")


def test_a_read_only_out(tmp_path, train, monkeypatch):
    real_open = os.open
    folder = tmp_path / "ro"

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(folder)) and flags & (os.O_WRONLY | os.O_RDWR):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    one_line_error(train(folder), str(folder / ".covidzoo.lock"), "Read-only file system")


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EACCES, errno.EISDIR, errno.ENOTDIR,
                                  errno.ELOOP, errno.EDQUOT])
def test_an_unwritable_save_is_one_line_and_leaves_the_last_complete_epoch(
        env, tmp_path, train, monkeypatch, code):
    from covidzoo import train as train_module

    real = train_module.save_checkpoint

    def fail_in_epoch_1(path, model, spec):
        if spec.threshold is not None:  # the first save after epoch 0
            raise OSError(code, os.strerror(code), str(path))
        return real(path, model, spec)

    monkeypatch.setattr(train_module, "save_checkpoint", fail_in_epoch_1)
    folder = tmp_path / "run"
    line = one_line_error(train(folder), ".safetensors", os.strerror(code))
    assert GENERATIONS in line
    assert sorted(p.name for p in (folder / GENERATIONS).iterdir()) == ["epoch-000000"]
    monkeypatch.setattr(train_module, "save_checkpoint", real)
    assert train(folder, "--resume").exit_code == 0
    assert same_last(folder, env["run"])


def test_another_os_error_is_a_bug_and_keeps_its_traceback(tmp_path, train, monkeypatch):
    from covidzoo import train as train_module

    def fail(path, model, spec):
        raise OSError(errno.EIO, os.strerror(errno.EIO), str(path))

    monkeypatch.setattr(train_module, "save_checkpoint", fail)
    result = train(tmp_path / "run")
    assert result.exit_code == 1 and isinstance(result.exception, OSError)


# -- flags -------------------------------------------------------------------------------------

@pytest.mark.parametrize(("flags", "message"), [
    (["--lr", "nan"], "--lr must be a finite number > 0, got nan"),
    (["--lr", "inf"], "--lr must be a finite number > 0, got inf"),
    (["--lr", "-inf"], "'--lr'"),
    (["--lr", "-1"], "'--lr': -1.0 is not in the range x>0"),
    (["--lr", "0"], "'--lr'"),
    (["--lr", "fast"], "'--lr': 'fast' is not a valid float"),
    (["--seed", "-1"], "'--seed': -1 is not in the range 0<=x<=4294967295"),
    (["--seed", str(2**32)], "'--seed'"),
    (["--seed", str(2**70)], "'--seed'"),
    (["--epochs", "0"], "'--epochs': 0 is not in the range x>=1"),
    (["--epochs", "-3"], "'--epochs'"),
    (["--batch-size", "0"], "'--batch-size': 0 is not in the range x>=1"),
    (["--weight-decay", "nan"], "--weight-decay must be a finite number >= 0, got nan"),
    (["--weight-decay", "-1"], "'--weight-decay'"),
    (["--pos-weight", "nan"], "--pos-weight must be a finite number > 0, got nan"),
    (["--pos-weight", "inf"], "--pos-weight must be a finite number > 0, got inf"),
    (["--warmup-epochs", "-1"], "'--warmup-epochs'"),
    (["--val-split", "nan"], "--val-split must be between 0 and 1, got nan"),
    (["--val-split", "1"], "'--val-split'"),
    (["--patience", "0"], "'--patience'"),
])
def test_bad_flag_values_are_one_line(tmp_path, train, flags, message):
    one_line_error(train(tmp_path / "run", *flags), message)
    assert not (tmp_path / "run").exists()


def test_the_python_api_checks_the_same_values(env, tmp_path):
    from covidzoo.errors import BadInputError
    from covidzoo.train import TrainConfig

    for field, value, flag in [("lr", float("nan"), "--lr"), ("seed", 2**40, "--seed"),
                               ("batch_size", 0, "--batch-size"), ("epochs", 0, "--epochs")]:
        with pytest.raises(BadInputError, match=flag):
            TrainConfig(backbone="regnet3d", **{field: value}).check()


def test_batch_size_one_that_batchnorm_cannot_train_on_is_one_line(tmp_path, train):
    one_line_error(train(tmp_path / "run", "--batch-size", "1"), "--batch-size 1",
                   "use --batch-size 2 or more")


# -- exit codes --------------------------------------------------------------------------------

def test_an_interrupted_training_exits_130_after_saving(env, tmp_path, train, monkeypatch):
    from covidzoo.train import Trainer

    original = Trainer._train_epoch

    def interrupt_in_epoch_2(self, state, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return original(self, state, epoch)

    monkeypatch.setattr(Trainer, "_train_epoch", interrupt_in_epoch_2)
    folder = tmp_path / "run"
    result = train(folder)
    assert result.exit_code == 130
    summary = json.loads(result.stdout)
    assert summary["interrupted"] and summary["epochs_run"] == 1
    monkeypatch.setattr(Trainer, "_train_epoch", original)
    assert train(folder, "--resume").exit_code == 0
    assert same_last(folder, env["run"])


def test_ctrl_c_anywhere_in_the_cli_is_one_line_exit_130(invoke, runner, monkeypatch):
    from covidzoo.cli import cli

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("covidzoo.factory.list_components", interrupted)
    result = runner.invoke(cli, ["models", "list"])
    assert result.exit_code == 130
    assert result.stderr.strip().splitlines() == ["Error: interrupted"]


def test_a_usage_error_is_one_line_exit_2(runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["train", "regnet3d", "--no-such-flag"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: No such option")
    assert "--no-such-flag" in lines[0] and lines[0].endswith(" train -h')")


def test_a_group_without_a_command_still_shows_its_help(runner):
    from covidzoo.cli import cli

    for args in ([], ["data"]):
        result = runner.invoke(cli, args)
        assert "Usage:" in result.output and "Commands:" in result.output
