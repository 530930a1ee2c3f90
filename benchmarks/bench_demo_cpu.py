"""The README's main command on the CPU, and whether the demo is honest: its time, and on a
fresh held-out set its AUC beside trivial baselines.

    python benchmarks/bench_demo_cpu.py [--out benchmarks/results/demo_cpu.json]
        [--fresh-seed 1] [--fresh-n 256] [--note TEXT]

1. Runs the README's main command, `covidzoo train regnet3d --depths 2,6,12,4`, with a private
   COVIDZOO_CACHE (so the time includes generating and preprocessing the demo), timed.
2. Generates a fresh held-out set (`--fresh-n` scans, seed `--fresh-seed`; the demo is seed 0).
3. Trivial baselines, trained on the demo's train split and scored by AUC on the fresh set, on
   the volumes the model sees (preprocessed to the demo size): logistic regression on the
   whole-volume voxel (mean, std), and gradient boosting (scikit-learn's
   HistGradientBoostingClassifier) on a 32-bin histogram of lung voxels. If the label showed in
   global statistics, these would find it.
4. `covidzoo evaluate RUN/best.safetensors --data FRESH --split all --json`: the main command's
   model on scans that chose nothing.

Goals: both baselines AUC <= 0.65; the main command's AUC on the fresh set >= 0.90, and its
wall time under 5 minutes on a 2-core CPU. `--skip-train` runs the baselines alone (seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MAIN_COMMAND = ("train", "regnet3d", "--depths", "2,6,12,4")
BINS = 32
# uint8 level of -300 HU in the lung window (level -600, width 1500): darker is aerated lung.
AERATED = round((-300 + 1350) / 1500 * 255)


def _fill_spans(part: np.ndarray) -> np.ndarray:
    """A 2D region with the gaps of every row and every column filled: the lung with the
    opacities against its wall, which break its outline (a cheap stand-in for a convex hull)."""
    def rows(a: np.ndarray) -> np.ndarray:
        inside = np.maximum.accumulate(a, axis=1) & np.maximum.accumulate(a[:, ::-1], axis=1)[
            :, ::-1]
        return inside

    return rows(part) | rows(part.T).T


def lung_mask(volume: np.ndarray) -> np.ndarray:
    """The lungs of a uint8 volume in the lung window, the classical way: aerated voxels not
    connected to the air around the body (which touches the in-plane border; the lungs may
    touch the first and last slices), then, slice by slice, each lung with its holes and the
    gaps along its rows and columns filled, so that vessels and opacities inside the lungs and
    against their walls count as lung."""
    from scipy import ndimage

    aerated = volume < AERATED
    parts, _ = ndimage.label(aerated)
    border = np.unique(np.concatenate([parts[:, [0, -1]].ravel(), parts[:, :, [0, -1]].ravel()]))
    lungs = aerated & ~np.isin(parts, border)
    out = np.zeros_like(lungs)
    for k, plane in enumerate(lungs):
        regions, n = ndimage.label(plane)
        for i, box in enumerate(ndimage.find_objects(regions), start=1):
            out[k][box] |= _fill_spans(regions[box] == i)
    return out


def features(volumes: np.ndarray) -> dict[str, np.ndarray]:
    """Per scan: the whole-volume (mean, std), and the 32-bin histogram (fractions) of its lung
    voxels."""
    flat = volumes.reshape(len(volumes), -1).astype(np.float64)
    hists = []
    for volume in volumes:
        values = volume[lung_mask(volume)]
        counts = np.bincount(values.astype(np.int64) * BINS // 256, minlength=BINS)
        hists.append(counts / max(counts.sum(), 1))
    return {"mean_std": np.stack([flat.mean(1), flat.std(1)], axis=1), "lung_hist": np.stack(hists)}


def baselines(train: dict[str, np.ndarray], y_train: np.ndarray, test: dict[str, np.ndarray],
              y_test: np.ndarray) -> dict[str, float]:
    """AUC on the test features of each trivial baseline fit on the train features."""
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    logistic = make_pipeline(StandardScaler(), LogisticRegression())
    logistic.fit(train["mean_std"], y_train)
    boosting = HistGradientBoostingClassifier(random_state=0)
    boosting.fit(train["lung_hist"], y_train)
    return {
        "logistic_mean_std_auc": float(roc_auc_score(
            y_test, logistic.predict_proba(test["mean_std"])[:, 1])),
        "boosting_lung_histogram_auc": float(roc_auc_score(
            y_test, boosting.predict_proba(test["lung_hist"])[:, 1])),
    }


def load_split(root: Path, size: tuple[int, int, int],
               split: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The scans of `root` (COV19-CT-DB layout; one split, or all) preprocessed as the demo
    trains on them, and their labels."""
    from covidzoo.data import PreprocessConfig, find_scans, load_scan

    records = [r for r in find_scans(root=root) if split is None or r.split == split]
    cfg = PreprocessConfig(size=size)
    return (np.stack([load_scan(r.path, cfg) for r in records]),
            np.array([r.label for r in records]))


def covidzoo(*args: str, env: dict[str, str], cwd: str) -> tuple[dict, float]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "covidzoo", *args, "--json"], env=env, cwd=cwd,
                          capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"covidzoo {' '.join(args)} failed:\n{done.stderr}")
    return json.loads(done.stdout), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path,
                        default=ROOT / "benchmarks/results/demo_cpu.json")
    parser.add_argument("--fresh-seed", type=int, default=1)
    parser.add_argument("--fresh-n", type=int, default=256)
    parser.add_argument("--note", default="", help="conditions of the run, stored as they are")
    parser.add_argument("--skip-train", action="store_true",
                        help="Baselines only; nothing is written.")
    args = parser.parse_args()
    import torch

    from covidzoo.data.sources import DEMO_SIZE
    from covidzoo.data.synthetic import DEMO_SCANS, DEMO_VERSION, demo_data, synthesize
    from covidzoo.train import DEMO_EPOCHS

    # A folder of our own, kept when a step fails, so a 5-minute training is not lost with it.
    tmp = tempfile.mkdtemp(prefix="bench-demo-cpu-")
    print(f"working in {tmp}", file=sys.stderr)
    env = {**os.environ, "COVIDZOO_CACHE": str(Path(tmp) / "cache"),
           "CUDA_VISIBLE_DEVICES": ""}
    result: dict = {"command": "covidzoo " + " ".join(MAIN_COMMAND),
                    "demo": {"version": DEMO_VERSION, "scans": DEMO_SCANS,
                             "size": list(DEMO_SIZE), "epochs": DEMO_EPOCHS, "seed": 0},
                    "fresh": {"seed": args.fresh_seed, "scans": args.fresh_n},
                    "note": args.note}
    if not args.skip_train:  # first, so that its time includes generating the demo
        summary, train_s = covidzoo(*MAIN_COMMAND, env=env, cwd=tmp)
        rows = (Path(tmp) / summary["out"] / "metrics.jsonl").read_text().splitlines()
        config = json.loads((Path(tmp) / summary["out"] / "config.json").read_text())
        result.update(wall_s=round(train_s, 1), threads=config["threads_resolved"],
                      train_summary=summary, history=[
            {k: round(r[k], 4) for k in ("epoch", "train_loss", "val_auc")}
            for r in map(json.loads, rows)])
    os.environ["COVIDZOO_CACHE"] = env["COVIDZOO_CACHE"]
    start = time.perf_counter()
    fresh = synthesize(Path(tmp) / "fresh", n=args.fresh_n, seed=args.fresh_seed)
    result["fresh"]["generate_s"] = round(time.perf_counter() - start, 1)
    train_x, train_y = load_split(demo_data(), DEMO_SIZE, "train")
    test_x, test_y = load_split(fresh, DEMO_SIZE)
    result["baselines"] = baselines(features(train_x), train_y, features(test_x), test_y)
    result["baselines"]["train_scans"], result["baselines"]["test_scans"] = (
        len(train_y), len(test_y))
    if not args.skip_train:
        best = str(Path(summary["out"]) / "best.safetensors")
        evaluation, eval_s = covidzoo("evaluate", best, "--data", str(fresh), "--split",
                                      "all", env=env, cwd=tmp)
        result["fresh_evaluate"] = {
            "auc": evaluation["metrics"]["auc"],
            "macro_f1": evaluation["metrics"]["macro_f1"],
            "sensitivity": evaluation["metrics"]["sensitivity"],
            "specificity": evaluation["metrics"]["specificity"],
            "threshold": evaluation["threshold"], "scans": evaluation["timing"]["scans"],
            "wall_s": round(eval_s, 1),
            "inference_volumes_per_s": evaluation["timing"]["inference_volumes_per_s"]}
    shutil.rmtree(tmp)
    auc = result.get("fresh_evaluate", {}).get("auc")
    result["goals"] = {
        "baselines_auc_at_most_0.65": max(result["baselines"][k] for k in
                                          ("logistic_mean_std_auc",
                                           "boosting_lung_histogram_auc")) <= 0.65,
        "main_command_fresh_auc_at_least_0.90": None if auc is None else auc >= 0.90,
        "main_command_under_300_s": None if "wall_s" not in result else result["wall_s"] < 300,
    }
    result["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                         "python": platform.python_version(), "torch": torch.__version__,
                         "load_average_at_end": list(os.getloadavg())}
    if not args.skip_train:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("baselines", "goals")}
                     | {k: result.get(k) for k in ("wall_s", "fresh_evaluate")}, indent=1))


if __name__ == "__main__":
    main()
