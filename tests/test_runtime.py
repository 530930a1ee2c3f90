"""CPU threads: one `--threads` option on every command that computes, resolved by one rule
(`covidzoo.runtime`) that leaves the cores other processes keep busy to them."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner

from covidzoo import runtime
from covidzoo.cli import cli
from covidzoo.cli import options as opt
from covidzoo.data import synthesize
from covidzoo.errors import BadInputError

COMPUTING = [("train",), ("evaluate",), ("ensemble",), ("predict",), ("bench",),
             ("data", "prepare")]


@pytest.fixture
def machine(monkeypatch):
    """A machine of `cores` usable cores of which `busy` are kept busy by other processes."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)

    def set_machine(cores: int, busy: float) -> None:
        monkeypatch.setattr(runtime, "usable_cores", lambda: cores)
        monkeypatch.setattr(runtime, "busy_cores", lambda interval=0.1: busy)

    return set_machine


@pytest.mark.parametrize(("cores", "busy", "threads"), [
    (2, 0.0, 2),   # quiet: every core, as torch would
    (2, 0.3, 2),   # a core counts as busy from half busy
    (2, 1.0, 1),   # one CPU-bound neighbour: its core is left to it
    (2, 2.7, 1),   # never fewer than one
    (16, 4.2, 12),
    (1, 0.0, 1),
])
def test_default_threads_are_the_free_cores(machine, cores, busy, threads):
    machine(cores, busy)
    assert runtime.default_threads() == threads
    assert runtime.resolve_threads(None) == threads


def test_threads_given_or_from_the_environment_win(machine, monkeypatch):
    machine(8, 0.0)
    assert runtime.resolve_threads(3) == 3
    with pytest.raises(BadInputError, match="--threads must be at least 1"):
        runtime.resolve_threads(0)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # torchrun sets 1 for several local processes
    assert runtime.resolve_threads(None) == 2
    monkeypatch.delenv("OMP_NUM_THREADS")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # the free cores shared between local ranks
    assert runtime.resolve_threads(None) == 2


def test_busy_cores_falls_back_to_the_load_average(monkeypatch):
    def unreadable(cpus, stat="/proc/stat", niced_yields=False):
        raise OSError("no /proc/stat")

    monkeypatch.setattr(runtime, "_cpu_ticks", unreadable)
    monkeypatch.setattr("os.getloadavg", lambda: (1.5, 1.0, 0.5))
    assert runtime.busy_cores() == 1.5


def test_niced_work_counts_as_busy_only_where_it_does_not_yield(tmp_path):
    """A core kept busy by work at lowered priority (the `nice` column) counts as free where the
    scheduler gives it to our threads (no autogroup), and as busy where sessions share the CPU
    whatever their niceness (autogroup on). Plain user and system time always count."""
    stat = tmp_path / "stat"
    #                 user nice system idle iowait irq softirq steal
    stat.write_text("cpu  10 990 0 0 0 0 0 0\n"
                    "cpu0 0 500 0 0 0 0 0 0\n"
                    "cpu1 10 490 0 0 0 0 0 0\n"
                    "cpu2 300 0 100 100 0 0 0 0\n")
    assert runtime._cpu_ticks({0, 1}, str(stat), niced_yields=True) == (10, 1000)
    assert runtime._cpu_ticks({0, 1}, str(stat), niced_yields=False) == (1000, 1000)
    assert runtime._cpu_ticks({2}, str(stat), niced_yields=True) == (400, 500)
    autogroup = tmp_path / "sched_autogroup_enabled"
    autogroup.write_text("1\n")
    assert not runtime.niced_work_yields(str(autogroup))
    autogroup.write_text("0\n")
    assert runtime.niced_work_yields(str(autogroup))
    assert runtime.niced_work_yields(str(tmp_path / "absent"))


def test_busy_cores_measures_this_machine():
    assert 0.0 <= runtime.busy_cores(0.05) <= runtime.usable_cores()


@pytest.mark.parametrize("path", COMPUTING, ids=" ".join)
def test_every_computing_command_has_the_one_threads_option(path):
    import click

    ctx = click.Context(cli)
    command = cli
    for name in path:
        command = command.get_command(ctx, name)
    found = [p for p in command.get_params(ctx) if p.name == "threads"]
    assert len(found) == 1
    assert found[0].callback is opt._apply_threads and not found[0].expose_value


def test_the_command_applies_the_threads(tmp_path, monkeypatch, invoke):
    data = synthesize(tmp_path / "data", n=4, seed=0, shape=(8, 16, 16))
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    prepare = ("data", "prepare", str(data), "--out", str(tmp_path / "c"), "--size", "2,8,8",
               "--no-progress", "--json")
    torch.set_num_threads(2)
    assert invoke(*prepare, "--threads", "1").exit_code == 0
    assert torch.get_num_threads() == 1
    monkeypatch.setattr(runtime, "default_threads", lambda: 2)
    assert invoke(*prepare).exit_code == 0
    assert torch.get_num_threads() == 2
    bad = CliRunner().invoke(cli, [*prepare, "--threads", "0"])
    assert bad.exit_code == 2 and "--threads" in bad.output


def test_bench_runs_isolated_configurations_with_the_resolved_threads(invoke, monkeypatch):
    """A configuration measured in its own process uses the threads --threads resolved here,
    not torch's default there."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(runtime, "default_threads", lambda: 1)
    result = invoke("bench", "regnet3d", "--mode", "infer", "--precision", "fp32",
                    "--no-baseline", "--input-size", "8,16,16", "--model-arg", "depths=[1,1]",
                    "--model-arg", "widths=[8,16]", "--model-arg", "stem_width=8",
                    "--batch-size", "1", "--warmup", "0", "--iters", "1", "--device", "cpu",
                    "--isolate", "--json", "-")
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.output)
    assert "error" not in row and row["threads"] == 1
