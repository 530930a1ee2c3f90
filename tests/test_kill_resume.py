"""Kill -9 at every point of a checkpoint save, and at random moments, then `--resume`.

The training CLI runs in a subprocess and kills itself where `COVIDZOO_TEST_KILL_AT=POINT:EPOCH`
says (`covidzoo.fileio.kill_point`), or the test kills it with SIGKILL. Every time the run folder
must hold one complete epoch (never a mix), lose at most the epoch in progress, and resume
without a file deleted by hand; the run that was killed again and again ends bit-identical to
an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from covidzoo.data import synthesize
from covidzoo.fileio import CURRENT, GENERATIONS, KILL_AT_ENV, LOCK_NAME

EPOCHS = 3
TRAIN = ["train", "regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32", "--stem-width",
         "8", "--size", "16,32,32", "--epochs", str(EPOCHS), "--batch-size", "3", "--device",
         "cpu", "--threads", "1"]
RUN_FILES = {"config.json", "metrics.jsonl", "split.csv", "best.safetensors", "last.safetensors",
             "last.state.safetensors", "last.state.json"}


class Setting:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = synthesize(root / "scans", n=12, seed=1, shape=(16, 48, 48))
        self.env = {**os.environ, "COVIDZOO_CACHE": str(root / "cache"), "OMP_NUM_THREADS": "1"}
        self.env.pop(KILL_AT_ENV, None)

    def command(self, run: Path, resume: bool) -> list[str]:
        return [sys.executable, "-m", "covidzoo", *TRAIN, "--data", str(self.data), "--out",
                str(run), *(["--resume"] if resume else [])]

    def train(self, run: Path, resume: bool = False, kill_at: str | None = None
              ) -> subprocess.CompletedProcess:
        env = dict(self.env, **({KILL_AT_ENV: kill_at} if kill_at else {}))
        return subprocess.run(self.command(run, resume), env=env, capture_output=True,
                              text=True, timeout=600)


@pytest.fixture(scope="module")
def setting(tmp_path_factory) -> Setting:
    return Setting(tmp_path_factory.mktemp("kill"))


@pytest.fixture(scope="module")
def reference(setting) -> Path:
    """An uninterrupted run."""
    run = setting.root / "reference"
    done = setting.train(run)
    assert done.returncode == 0, done.stderr[-2000:]
    return run


def current_epoch(run: Path) -> int | None:
    link = run / CURRENT
    return int(os.readlink(link).rsplit("-", 1)[1]) if link.is_symlink() else None


def killed(done: subprocess.CompletedProcess, point: str) -> None:
    assert done.returncode == -signal.SIGKILL, (point, done.returncode, done.stderr[-2000:])


def saved_epochs(stderr: str) -> int:
    """The last epoch the log reported finished (it is reported after it was saved)."""
    return max((int(n) for n in re.findall(rf"^epoch (\d+)/{EPOCHS} ", stderr, re.M)), default=0)


def assert_same_as_reference(run: Path, reference: Path) -> None:
    from safetensors.torch import load_file

    a = load_file(str(reference / "last.safetensors"))
    b = load_file(str(run / "last.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    def rows(folder: Path) -> list[dict]:
        lines = (folder / "metrics.jsonl").read_text().splitlines()
        return [{k: v for k, v in json.loads(line).items()
                 if k not in ("train_scans_per_s", "epoch_time_s")} for line in lines]

    assert rows(run) == rows(reference) and len(rows(run)) == EPOCHS
    # Nothing half-done is left: the links, the current generation and the one before it.
    assert {p.name for p in run.iterdir()} == RUN_FILES | {LOCK_NAME, GENERATIONS, CURRENT}
    assert sorted(p.name for p in (run / GENERATIONS).iterdir()) == [
        f"epoch-{EPOCHS - 1:06d}", f"epoch-{EPOCHS:06d}"]


def test_killed_at_each_point_of_a_save_resumes_to_the_same_model(setting, reference, invoke):
    """One run killed at each point of the save of a different epoch, resumed each time. The
    first kill lands in the very first save (epoch 0), before anything is current."""
    run = setting.root / "points"
    # point, epoch of the save it kills, what is current afterwards (the epoch in progress lost)
    for point, epoch, current in [("written", 0, None), ("staged", 1, 0), ("renamed", 2, 1),
                                  ("committed", EPOCHS, EPOCHS)]:
        done = setting.train(run, resume=run.exists(), kill_at=f"{point}:{epoch}")
        killed(done, point)
        assert current_epoch(run) == current, point
    # The last kill came after the commit: resuming finds the run done and repairs the links.
    (run / "best.safetensors").unlink()  # as if the kill had come before the links were made
    result = invoke(*TRAIN, "--data", str(setting.data), "--out", str(run), "--resume",
                    "--json", env={"COVIDZOO_CACHE": setting.env["COVIDZOO_CACHE"]})
    assert json.loads(result.output)["epochs_run"] == EPOCHS
    assert_same_as_reference(run, reference)


def test_a_folder_killed_in_its_first_save_also_starts_afresh(setting, invoke):
    """A kill before the first generation was complete leaves only what the next start cleans
    up: the same command (without --resume) runs; a complete but never current first
    generation is a run to --resume, not to overwrite."""
    run = setting.root / "first"
    cache = {"COVIDZOO_CACHE": setting.env["COVIDZOO_CACHE"]}
    killed(setting.train(run, kill_at="staged:0"), "staged")
    assert [p.name for p in (run / GENERATIONS).iterdir()][0].endswith(".staging")
    killed(setting.train(run, kill_at="renamed:0"), "renamed")  # the leftover cleaned, then
    assert current_epoch(run) is None and (run / GENERATIONS / "epoch-000000").is_dir()
    assert [p.name for p in (run / GENERATIONS).iterdir()] == ["epoch-000000"]
    args = [*TRAIN, "--data", str(setting.data), "--out", str(run), "--epochs", "1"]
    again = invoke(*args, env=cache)
    assert again.exit_code == 2
    assert again.stderr.strip().splitlines() == [
        f"Error: {run} already holds a run; pass --resume or choose another --out"]
    resumed = invoke(*args, "--resume", "--json", env=cache)
    assert json.loads(resumed.output)["epochs_run"] == 1 and current_epoch(run) == 1


@pytest.mark.slow
def test_killed_at_random_moments_loses_at_most_the_epoch_in_progress(setting, reference):
    run = setting.root / "random"
    killed(setting.train(run, kill_at="weights:2"), "weights")
    assert current_epoch(run) == 1
    rng = random.Random()
    for _ in range(2):
        delay, started_at = rng.uniform(0.0, 1.5), current_epoch(run)
        with (setting.root / "stderr.txt").open("w+") as log:
            process = subprocess.Popen(setting.command(run, resume=True), env=setting.env,
                                       stdout=subprocess.DEVNULL, stderr=log, text=True)
            while current_epoch(run) == started_at and process.poll() is None:
                time.sleep(0.02)
            time.sleep(delay)  # a random moment of the next epoch or its save
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=600)
            log.seek(0)
            stderr = log.read()
        assert (current_epoch(run) or 0) >= saved_epochs(stderr), (delay, stderr[-2000:])
    done = setting.train(run, resume=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_as_reference(run, reference)
