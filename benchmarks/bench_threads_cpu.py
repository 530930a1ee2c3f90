"""CPU threads on a busy machine: the README's main job and `evaluate`, on a quiet CPU and beside
one competing CPU-bound process, with torch's default threads and with covidzoo's.

    python benchmarks/bench_threads_cpu.py [--epochs 2] [--whole-job]
        [--out benchmarks/results/threads_cpu.json]

Run it on an otherwise quiet machine (the 2-core CPU of the issue): the "quiet" runs must be
quiet, and the "loaded" ones add exactly one `python -c "while True: pass"`.

The job is the README's main command, `covidzoo train regnet3d --depths 2,6,12,4` on the demo
data (`covidzoo.data.synthetic.DEMO_SCANS` scans at 32x64x64), shortened to `--epochs` epochs of
its `covidzoo.train.DEMO_EPOCHS`. A first, untimed run generates the demo data, prepares its cache
and the evaluation cache, so every timed run trains and evaluates from prepared scans. Then, for
each load (quiet, loaded) and each setting:

- `torch default`: `--threads N`, N what torch picks in a fresh process (one per core);
- `covidzoo default`: no `--threads`, so `covidzoo.runtime.default_threads` decides (the free
  cores when the command starts; the competitor is started a second before);
- `torch default, OMP_WAIT_POLICY=PASSIVE`: torch's threads, OpenMP threads sleeping instead of
  spinning while they wait (the alternative covidzoo measured and did not take),

it times the train command (wall clock, the whole process) and `covidzoo evaluate` of its best
checkpoint (wall clock and inference scans/s), and records the threads each resolved.

`--whole-job` then times the README's main command exactly as documented (all its epochs, no
flags), quiet and loaded, with covidzoo's default threads: the issue's goal is loaded within 2x
quiet.

Time on a quiet 2-core CPU, default `--epochs 2` with `--whole-job`: about 25 minutes, most of it
the loaded runs. `--tiny` is a smoke test of the script itself (a tiny network on 16 tiny scans,
seconds per run), not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
README_JOB = ["regnet3d", "--depths", "2,6,12,4"]
TINY_JOB = ["regnet3d", "--depths", "1,1,1,1", "--widths", "8,16,16,32", "--stem-width", "8",
            "--size", "16,32,32", "--batch-size", "2"]
SETTINGS = ("torch default", "covidzoo default", "torch default, OMP_WAIT_POLICY=PASSIVE")


def covidzoo(args: list[str], env: dict[str, str], cwd: Path) -> tuple[dict[str, Any], float]:
    """`python -m covidzoo ARGS --json` in a fresh process: (its JSON, wall seconds)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "covidzoo", *args, "--json"], env=env,
                          cwd=cwd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"covidzoo {' '.join(args)} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout), seconds


def torch_threads(env: dict[str, str]) -> int:
    """The intra-op threads torch picks in a fresh process."""
    code = "import torch; print(torch.get_num_threads())"
    return int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, check=True).stdout)


@contextmanager
def competitor(loaded: bool):
    """One CPU-bound process for the duration (none when not `loaded`)."""
    if not loaded:
        yield
        return
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.0)  # running before the measured command looks at the machine
        yield
    finally:
        spinner.kill()
        spinner.wait()


def setting_env(setting: str, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    if "PASSIVE" in setting:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs of the shortened job")
    parser.add_argument("--whole-job", action="store_true",
                        help="also time the README's main command as documented, quiet and loaded")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/threads_cpu.json")
    parser.add_argument("--tiny", action="store_true", help="smoke test: tiny model and data")
    parser.add_argument("--note", default="", help="conditions of the run, stored as they are")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        base = {k: v for k, v in os.environ.items()
                if k not in ("OMP_NUM_THREADS", "OMP_WAIT_POLICY")}
        base.update(COVIDZOO_CACHE=str(folder / "cache"), CUDA_VISIBLE_DEVICES="",
                    PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), base.get("PYTHONPATH"))
                                               if p))
        job = README_JOB
        if args.tiny:
            covidzoo(["data", "synth", "data", "--n", "16", "--shape", "16,40,40"], base, folder)
            job = [*TINY_JOB, "--data", "data"]
        whole_job = list(job)
        job = [*job, "--epochs", str(args.epochs), "--device", "cpu"]
        default_threads = torch_threads(base)

        # Untimed: the demo data, its training cache and the evaluation cache.
        summary, _ = covidzoo(["train", *job, "--epochs", "1", "--out", "warmup"], base, folder)
        evaluate_data = ["--data", "data"] if args.tiny else []
        covidzoo(["evaluate", str(Path(summary["out"]) / "best.safetensors"), *evaluate_data,
                  "--device", "cpu"], base, folder)

        runs = []
        for load in ("quiet", "loaded"):
            for setting in SETTINGS:
                env = setting_env(setting, base)
                threads = [] if setting == "covidzoo default" else ["--threads",
                                                                    str(default_threads)]
                name = f"{load}-{len(runs)}"
                with competitor(load == "loaded"):
                    summary, train_s = covidzoo(["train", *job, *threads, "--out", name], env,
                                                folder)
                    evaluation, evaluate_s = covidzoo(
                        ["evaluate", f"{name}/best.safetensors", *evaluate_data, "--device",
                         "cpu", *threads], env, folder)
                config = json.loads((folder / name / "config.json").read_text())
                runs.append({
                    "load": load, "setting": setting,
                    "threads": config["threads_resolved"],
                    "train_wall_s": round(train_s, 1),
                    "train_s": round(summary["train_time_s"], 1),
                    "best_val_auc": summary["best_val_auc"],
                    "evaluate_wall_s": round(evaluate_s, 1),
                    "evaluate_scans_per_s": evaluation["timing"]["inference_volumes_per_s"],
                })
                print(json.dumps(runs[-1]), flush=True)

        whole = []
        for load in ("quiet", "loaded") if args.whole_job else ():
            name = f"whole-{load}"
            with competitor(load == "loaded"):
                summary, train_s = covidzoo(["train", *whole_job, "--out", name], base, folder)
            config = json.loads((folder / name / "config.json").read_text())
            whole.append({"load": load, "threads": config["threads_resolved"],
                          "wall_s": round(train_s, 1), "epochs": summary["epochs_run"],
                          "best_val_auc": summary["best_val_auc"]})
            print(json.dumps(whole[-1]), flush=True)

    import torch

    from covidzoo.train import DEMO_EPOCHS

    by = {(r["load"], r["setting"]): r for r in runs}
    result = {
        "job": f"covidzoo train {' '.join(job)}" + (
            "" if args.tiny else f" ({args.epochs} of the README's {DEMO_EPOCHS} epochs)"),
        "smoke_test_only": args.tiny,
        "note": args.note,
        "torch_default_threads": default_threads,
        "runs": runs,
        "loaded_over_quiet_train_s": {
            s: round(by["loaded", s]["train_s"] / by["quiet", s]["train_s"], 2) for s in SETTINGS
        },
        "whole_job": None if not whole else {
            "command": f"covidzoo train {' '.join(whole_job)}", "runs": whole,
            "loaded_over_quiet_wall": round(whole[1]["wall_s"] / whole[0]["wall_s"], 2),
            "goal_loaded_within_2x_quiet": whole[1]["wall_s"] <= 2 * whole[0]["wall_s"]},
        "load_average_at_end": list(os.getloadavg()),
        "machine": {"cpu_count": os.cpu_count(),
                    "usable_cores": len(os.sched_getaffinity(0))
                    if hasattr(os, "sched_getaffinity") else None,
                    "platform": platform.platform(), "python": platform.python_version(),
                    "torch": torch.__version__},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
