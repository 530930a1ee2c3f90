"""The README's main command on the CPU, from a fresh cache: time, validation AUC, evaluate speed.

    python benchmarks/bench_demo_cpu.py [--out benchmarks/results/demo_cpu.json]

Runs `covidzoo train regnet3d --depths 2,6,12,4` exactly as the README does (so the time
includes generating and preprocessing the demo data), then `covidzoo evaluate` on the best
checkpoint, twice: the first builds the evaluation cache, the second measures inference alone.
The goal (training issue): under 5 minutes on a 2-core CPU, validation AUC >= 0.9.
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def covidzoo(*args: str, env: dict[str, str], cwd: str) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "covidzoo", *args, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/demo_cpu.json")
    args = parser.parse_args()
    import torch

    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "COVIDZOO_CACHE": str(Path(tmp) / "cache"),
               "CUDA_VISIBLE_DEVICES": ""}
        summary, train_s = covidzoo("train", "regnet3d", "--depths", "2,6,12,4", env=env, cwd=tmp)
        best = str(Path(summary["out"]) / "best.safetensors")
        _, first_eval_s = covidzoo("evaluate", best, env=env, cwd=tmp)
        evaluation, eval_s = covidzoo("evaluate", best, env=env, cwd=tmp)
    result = {
        "command": "covidzoo train regnet3d --depths 2,6,12,4",
        "wall_s": round(train_s, 1),
        "goal": "wall_s < 300 and best_val_auc >= 0.9 on a 2-core CPU",
        "train_summary": summary,
        "evaluate": {"split": evaluation["split"], "auc": evaluation["metrics"]["auc"],
                     "macro_f1": evaluation["metrics"]["macro_f1"],
                     "threshold": evaluation["threshold"], "timing": evaluation["timing"],
                     "first_run_wall_s": round(first_eval_s, 1), "wall_s": round(eval_s, 1)},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "torch": torch.__version__},
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("wall_s",)} | {
        "best_val_auc": summary["best_val_auc"], "evaluate": result["evaluate"]["timing"]}))


if __name__ == "__main__":
    main()
