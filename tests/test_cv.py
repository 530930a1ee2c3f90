"""`covidzoo cv`: stratified, patient-grouped K-fold cross-validation, end to end on tiny data:
the fold table, oof.csv and ensemble.json against scikit-learn, patients kept on one side of
every fold, a finished study rerun without retraining, and one-line refusals."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import THREE, TINY, cli_runner, ok_json, one_line_error
from sklearn.metrics import f1_score, roc_auc_score

from covidzoo.data.layouts import find_labelled, read_split_csv


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def class_probs(rows: list[dict[str, str]], names: list[str]) -> np.ndarray:
    return np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])


def sklearn_figures(labels: np.ndarray, probs: np.ndarray) -> tuple[list[float], float]:
    """Per-class one-vs-rest AUC and the macro F1 of the most probable class."""
    k = probs.shape[1]
    aucs = [roc_auc_score(labels == c, probs[:, c]) for c in range(k)]
    macro_f1 = f1_score(labels, probs.argmax(axis=1), labels=list(range(k)), average="macro",
                        zero_division=0)
    return aucs, float(macro_f1)


def snapshot(out: Path) -> dict[str, object]:
    """What retraining a fold would change: each run's generations, metrics and done file."""
    state: dict[str, object] = {}
    for run in sorted(out.glob("fold-*-*")):
        if not run.is_dir():
            continue
        state[f"{run.name}/generations"] = sorted(p.name for p in (run / "generations").iterdir())
        for name in ("metrics.jsonl", "last.safetensors"):
            path = run / name
            state[f"{run.name}/{name}"] = (path.stat().st_mtime_ns, path.read_bytes())
    for done in sorted((out / "folds").glob("*.done.json")):
        state[done.name] = done.stat().st_mtime_ns
    return state


# --- a three-class study -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A 3-fold study of a tiny regnet3d on the three-class synthetic set."""
    root = tmp_path_factory.mktemp("cv3")
    run = cli_runner(root / "cache")
    data, out = root / "three", root / "study"
    result = run("data", "synth", data, "--classes", 3, "--n", 24, "--shape", "16,32,32")
    assert result.exit_code == 0, result.output
    command = ("cv", *TINY, "--folds", 3, "--data", data, "--out", out, "--json")
    summary = ok_json(run(*command))
    return SimpleNamespace(root=root, run=run, data=data, out=out, command=command,
                           summary=summary, state=snapshot(out))


def test_cv_json_has_the_fold_table_its_spread_and_the_pooled_oof(study):
    summary = study.summary
    assert summary["classes"] == THREE and summary["folds"] == 3 and summary["repeats"] == 1
    assert summary["interrupted"] is False and summary["threshold"] is None
    rows = summary["fold_metrics"]
    assert [(r["repeat"], r["fold"]) for r in rows] == [(0, 0), (0, 1), (0, 2)]
    assert sum(r["n_val"] for r in rows) == 24
    for key in ("auc", "macro_f1", "accuracy"):
        values = [r[key] for r in rows]
        assert summary["mean_std"][key]["mean"] == pytest.approx(np.mean(values), abs=1e-12)
        assert summary["mean_std"][key]["std"] == pytest.approx(np.std(values, ddof=1),
                                                                abs=1e-12)
        assert summary["mean_std"][key]["folds"] == 3
    assert [p["n"] for p in summary["pooled_oof"]] == [24]
    assert json.loads((study.out / "cv.json").read_text()) == summary


def test_oof_csv_lists_every_scan_once_with_its_fold_and_probabilities(study):
    records, classes = find_labelled(study.data)
    rows = read_rows(study.out / "oof.csv")
    assert list(rows[0]) == ["path", "label", "class", "group", "repeat", "fold",
                             *(f"p_{n}" for n in THREE)]
    paths = [str(Path(r["path"]).resolve()) for r in rows]
    assert sorted(paths) == sorted(str(r.path.resolve()) for r in records)
    assert len(set(paths)) == len(paths) == 24
    label_of = {str(r.path.resolve()): r.label for r in records}
    for row, path in zip(rows, paths, strict=True):
        assert int(row["label"]) == label_of[path] and row["class"] == classes[label_of[path]]
        assert row["repeat"] == "0" and row["fold"] in ("0", "1", "2")
    assert np.allclose(class_probs(rows, THREE).sum(axis=1), 1.0, atol=1e-6)
    for fold in range(3):
        held = {str(r.path.resolve()) for r in read_split_csv(
            study.out / "folds" / f"fold-0-{fold}.csv") if r.split == "val"}
        assert {p for p, r in zip(paths, rows, strict=True) if r["fold"] == str(fold)} == held
        n_val = study.summary["fold_metrics"][fold]["n_val"]
        assert len(held) == n_val


def test_out_of_fold_probabilities_are_the_fold_models_own(study):
    predictions = study.root / "fold1.csv"
    ok_json(study.run("evaluate", study.out / "fold-0-1" / "best.safetensors", "--data",
                      study.data, "--split", "all", "--json", "--predictions", predictions))
    theirs = {str(Path(r["path"]).resolve()): r for r in read_rows(predictions)}
    mine = [r for r in read_rows(study.out / "oof.csv") if r["fold"] == "1"]
    assert mine
    for row in mine:
        other = theirs[str(Path(row["path"]).resolve())]
        assert class_probs([row], THREE) == pytest.approx(class_probs([other], THREE),
                                                          abs=1e-5)


def test_pooled_oof_metrics_are_scikit_learns_on_oof_csv(study):
    rows = read_rows(study.out / "oof.csv")
    labels = np.array([int(r["label"]) for r in rows])
    aucs, macro_f1 = sklearn_figures(labels, class_probs(rows, THREE))
    pooled = study.summary["pooled_oof"][0]
    assert pooled["auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert pooled["macro_f1"] == pytest.approx(macro_f1, abs=1e-9)
    for name, auc in zip(THREE, aucs, strict=True):
        assert pooled["per_class_auc"][name] == pytest.approx(auc, abs=1e-9)
    for fold in range(3):  # each fold's row: the same figures on its own scans
        mine = [i for i, r in enumerate(rows) if r["fold"] == str(fold)]
        fold_aucs, fold_f1 = sklearn_figures(labels[mine], class_probs(rows, THREE)[mine])
        row = study.summary["fold_metrics"][fold]
        assert row["auc"] == pytest.approx(np.mean(fold_aucs), abs=1e-9)
        assert row["macro_f1"] == pytest.approx(fold_f1, abs=1e-9)


def test_ensemble_json_evaluates_to_scikit_learns_figures(study):
    ensemble = json.loads((study.out / "ensemble.json").read_text())
    assert ensemble["threshold"] is None and ensemble["ensembler"]["method"] == "mean"
    assert len(ensemble["members"]) == 3
    predictions = study.root / "ensemble.csv"
    report = ok_json(study.run("evaluate", study.out / "ensemble.json", "--data", study.data,
                               "--split", "all", "--json", "--predictions", predictions))
    assert report["kind"] == "ensemble" and len(report["members"]) == 3
    rows = read_rows(predictions)
    assert len(rows) == report["metrics"]["n"] == 24
    labels = np.array([THREE.index(r["label"]) for r in rows])
    aucs, macro_f1 = sklearn_figures(labels, class_probs(rows, THREE))
    for name, auc in zip(THREE, aucs, strict=True):
        assert report["metrics"]["per_class"][name]["auc"] == pytest.approx(auc, abs=1e-9)
    assert report["metrics"]["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert report["metrics"]["macro_f1"] == pytest.approx(macro_f1, abs=1e-9)


def test_rerunning_a_finished_study_does_not_retrain(study):
    again = ok_json(study.run(*study.command))
    assert snapshot(study.out) == study.state
    for key in ("fold_metrics", "mean_std", "pooled_oof", "threshold", "classes"):
        assert again[key] == study.summary[key], key


def test_another_seed_in_the_same_out_is_refused(study):
    result = study.run(*study.command, "--seed", 1)
    one_line_error(result, "other folds", "--out")
    assert snapshot(study.out) == study.state


def test_continuing_a_study_with_other_settings_is_refused(study, tmp_path):
    import shutil

    out = tmp_path / "stopped"
    shutil.copytree(study.out, out, symlinks=True)
    shutil.rmtree(out / "fold-0-2")  # as if stopped before the last fold began
    (out / "folds" / "fold-0-2.done.json").unlink()
    command = [out if a == study.out else a for a in study.command]
    result = study.run(*command, "--lr", "0.5")
    one_line_error(result, "--lr")


@pytest.mark.parametrize("flags, needles", [
    (("--folds", "1"), ("--folds",)),
    (("--folds", "9"), ("8 patient(s)", "9 folds")),
    (("--resume",), ("--resume",)),
    (("--val-split", "0.2"), ("--val-split",)),
])
def test_bad_study_designs_are_one_line(study, tmp_path, flags, needles):
    result = study.run("cv", *TINY, "--data", study.data, "--out", tmp_path / "s", *flags)
    one_line_error(result, *needles)
    assert not (tmp_path / "s" / "fold-0-0").exists()


def test_cv_refuses_a_prepared_cache(study, tmp_path):
    cache = tmp_path / "prepared"
    result = study.run("data", "prepare", study.data, "--out", cache, "--size", "8,32,32")
    assert result.exit_code == 0, result.output
    result = study.run("cv", *TINY, "--cache", cache, "--out", tmp_path / "s")
    one_line_error(result, "--cache")
    assert not (tmp_path / "s" / "fold-0-0").exists()


# --- patients ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def patients(tmp_path_factory):
    """A manifest of .npy phantoms in which most patients have two scans, and a 2-fold study
    of it."""
    from covidzoo.data.synthetic import phantom

    root = tmp_path_factory.mktemp("patients")
    run = cli_runner(root / "cache")
    scans = root / "scans"
    scans.mkdir()
    lines = ["path,label,patient"]
    rng = np.random.default_rng(0)
    for p, label in enumerate(["covid", "normal", "cap"] * 3):
        for k in range(1 + (p % 3 != 0)):  # patients 0, 3, 6 have one scan, the others two
            hu = phantom(rng, (16, 32, 32), "pneumonia" if label == "cap" else label == "covid")
            np.save(scans / f"p{p}-{k}.npy", hu.astype(np.int16))
            lines.append(f"scans/p{p}-{k}.npy,{label},P{p}")
    manifest = root / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n")
    out = root / "study"
    summary = ok_json(run("cv", *TINY, "--folds", 2, "--manifest", manifest, "--out", out,
                          "--json"))
    return SimpleNamespace(root=root, run=run, manifest=manifest, out=out, summary=summary)


def _sides(records) -> dict[str | None, set[str]]:
    sides: dict[str | None, set[str]] = defaultdict(set)
    for r in records:
        sides[r.group].add(r.split)
    return sides


def test_no_patient_is_on_both_sides_of_any_fold(patients):
    assert patients.summary["classes"] == ["cap", "covid", "normal"]
    held: list[str] = []
    for fold in range(2):
        for path in (patients.out / "folds" / f"fold-0-{fold}.csv",
                     patients.out / f"fold-0-{fold}" / "split.csv"):
            records = read_split_csv(path)
            assert len(records) == 15 and all(r.group for r in records), path
            sides = _sides(records)
            assert len(sides) == 9
            assert all(len(s) == 1 for s in sides.values()), (path, sides)
        held += [str(r.group) for r in records if r.split == "val"]
    assert sorted(set(held)) == [f"P{p}" for p in range(9)]  # each patient held out once
    oof = read_rows(patients.out / "oof.csv")
    assert sorted(r["group"] for r in oof) == sorted(
        f"P{p}" for p in range(9) for _ in range(1 + (p % 3 != 0)))


def test_a_fold_run_records_the_folds_split(patients):
    for fold in range(2):
        fixed = read_split_csv(patients.out / "folds" / f"fold-0-{fold}.csv")
        used = read_split_csv(patients.out / f"fold-0-{fold}" / "split.csv")
        assert used == fixed


def test_train_on_a_runs_split_file_reproduces_its_split(patients):
    split = patients.out / "fold-0-1" / "split.csv"
    again = patients.root / "again"
    ok_json(patients.run("train", *TINY, "--manifest", patients.manifest, "--split-file", split,
                         "--out", again, "--json"))

    def membership(path: Path) -> dict[str, tuple[str, int | None, str | None]]:
        return {str(r.path.resolve()): (r.split, r.label, r.group)
                for r in read_split_csv(path)}

    assert membership(again / "split.csv") == membership(split)


# --- a binary study ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def binary(tmp_path_factory):
    """A 2-fold, 2-repeat study of the binary synthetic set, with two labelled test scans."""
    import shutil

    root = tmp_path_factory.mktemp("cv2")
    run = cli_runner(root / "cache")
    data, out = root / "two", root / "study"
    result = run("data", "synth", data, "--n", 12, "--shape", "16,32,32")
    assert result.exit_code == 0, result.output
    for name in ("covid", "non-covid"):
        scan = sorted((data / "val" / name).iterdir())[0]
        shutil.copytree(scan, data / "test" / name / f"test-{scan.name}")
    command = ("cv", *TINY, "--folds", 2, "--repeats", 2, "--data", data, "--out", out)
    summary = ok_json(run(*command, "--json"))
    return SimpleNamespace(root=root, run=run, data=data, out=out, command=command,
                           summary=summary)


def test_binary_cv_chooses_its_threshold_on_the_out_of_fold_predictions(binary):
    from covidzoo.metrics import youden_threshold

    summary = binary.summary
    assert summary["classes"] == ["non-covid", "covid"] and summary["repeats"] == 2
    assert [(r["repeat"], r["fold"]) for r in summary["fold_metrics"]] == [
        (0, 0), (0, 1), (1, 0), (1, 1)]
    rows = read_rows(binary.out / "oof.csv")
    assert list(rows[0])[-1] == "probability"
    assert not any(Path(r["path"]).name.startswith("test-") for r in rows)  # stay test
    for repeat in ("0", "1"):  # each repeat predicts each train and val scan once
        paths = [r["path"] for r in rows if r["repeat"] == repeat]
        assert len(paths) == len(set(paths)) == 12
    labels = np.array([int(r["label"]) for r in rows])
    probs = np.array([float(r["probability"]) for r in rows])
    assert all(r["class"] == ("covid" if int(r["label"]) else "non-covid") for r in rows)
    threshold = summary["threshold"]
    assert threshold["source"] == "out-of-fold"
    assert threshold["value"] == pytest.approx(youden_threshold(labels, probs), abs=1e-12)
    assert [p["repeat"] for p in summary["pooled_oof"]] == [0, 1]
    for pooled in summary["pooled_oof"]:
        mine = np.array([r["repeat"] == str(pooled["repeat"]) for r in rows])
        assert pooled["n"] == 12
        assert pooled["auc"] == pytest.approx(roc_auc_score(labels[mine], probs[mine]),
                                              abs=1e-9)
        assert pooled["f1"] == pytest.approx(
            f1_score(labels[mine], probs[mine] >= threshold["value"], zero_division=0),
            abs=1e-9)
    assert set(summary["mean_std"]) >= {"auc", "f1", "macro_f1", "sensitivity", "specificity"}
    for fold in range(4):
        records = read_split_csv(binary.out / "folds" / f"fold-{fold // 2}-{fold % 2}.csv")
        assert sorted(r.path.name for r in records if r.split == "test") == [
            f"test-{n}" for n in sorted(p.name[5:] for p in (binary.data / "test").glob("*/*"))]


def test_binary_ensemble_json_carries_the_oof_threshold(binary):
    threshold = binary.summary["threshold"]["value"]
    ensemble = json.loads((binary.out / "ensemble.json").read_text())
    assert ensemble["threshold"] == threshold and len(ensemble["members"]) == 4
    report = ok_json(binary.run("evaluate", binary.out / "ensemble.json", "--data", binary.data,
                                "--split", "test", "--json"))
    assert report["threshold"]["source"] == "ensemble file"
    assert report["threshold"]["value"] == threshold
    assert report["metrics"]["n"] == 2


def test_a_finished_study_prints_its_table_again(binary):
    result = binary.run(*binary.command)
    assert result.exit_code == 0, result.output
    out = result.stdout
    for needle in ("2-fold cross-validation, 2 repeats", "mean ± std",
                   "pooled out-of-fold (repeat 1)", "threshold", "ensemble.json"):
        assert needle in out, out


# --- torchrun: two gloo processes ----------------------------------------------------------------


@pytest.mark.slow
def test_under_torchrun_every_fold_uses_both_processes_and_reports_its_saved_model(study,
                                                                                   tmp_path):
    """One process group for the whole study (joining torchrun's anew per fold hung at the
    third), and each fold's logged validation AUC is that of the checkpoint it saved: rank 0's
    BatchNorm statistics are sent to every rank before validation."""
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
           "2", "-m", "covidzoo", "cv", *TINY, "--batch-size", "2", "--folds", "3",
           "--data", str(study.data), "--out", str(out), "--threads", "1", "--json"]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                              env={**os.environ, "OMP_NUM_THREADS": "1",
                                   "COVIDZOO_CACHE": str(tmp_path / "cache")})
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"torchrun still running after {exc.timeout} s: {exc.stderr!r:.2000}")
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout)  # rank 0 alone reports
    assert len(summary["fold_metrics"]) == 3
    for row in summary["fold_metrics"]:
        logged = [json.loads(line) for line in
                  (Path(row["run"]) / "metrics.jsonl").read_text().splitlines()]
        best = next(r for r in logged if r["epoch"] == row["best_epoch"])
        assert row["auc"] == pytest.approx(best["val_auc"], abs=1e-9)


def test_the_study_report_is_one_self_contained_page(study, tmp_path):
    html = tmp_path / "cv.html"
    result = study.run(*study.command, "--report", html)
    assert result.exit_code == 0, result.output
    page = html.read_text(encoding="utf-8")
    assert "Cross-validation of regnet3d" in page and "Pooled out-of-fold" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
