"""Studies of three or more classes: where the classes come from (class folders, a manifest's
label column), the multi-class metrics against scikit-learn, and train / evaluate / predict /
ensemble on a three-class synthetic set, with the binary path unchanged beside it."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from cli_helpers import THREE, TINY, cli_runner, ok_json, one_line_error
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    precision_score,
    recall_score,
    roc_auc_score,
)

from covidzoo.data.layouts import BINARY_CLASSES, find_labelled
from covidzoo.errors import BadInputError
from covidzoo.multiclass_metrics import multiclass_report

# --- where the classes come from ----------------------------------------------------------------


def _scan(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.npy"
    np.save(path, np.zeros((4, 4, 4), dtype=np.int16))
    return path


def _folders(root: Path, layout: dict[str, dict[str, int]]) -> Path:
    """`{split: {class folder: number of scans}}` as .npy files under `root`."""
    for split, classes in layout.items():
        for name, n in classes.items():
            for i in range(n):
                _scan(root / split / name, f"{split}-{name}-{i}")
    return root


def test_three_class_folders_are_sorted_class_names_labelled_by_index(tmp_path):
    root = _folders(tmp_path, {"train": {"Normal": 2, "covid": 1, "cap": 3},
                               "val": {"normal": 1, "covid": 1, "cap": 1}})
    records, classes = find_labelled(root)
    assert classes == ("cap", "covid", "normal")
    assert len(records) == 9
    for r in records:
        assert classes[r.label] == r.path.parent.name.lower(), r
    assert sorted(r.label for r in records if r.split == "train") == [0, 0, 0, 1, 2, 2]


def test_covid_and_non_covid_folders_stay_binary_one_and_zero(tmp_path):
    root = _folders(tmp_path, {"train": {"covid": 2, "non-covid": 2}, "val": {"COVID": 1}})
    records, classes = find_labelled(root)
    assert classes == BINARY_CLASSES == ("non-covid", "covid")
    assert {r.path.parent.name.lower(): r.label for r in records} == {"covid": 1, "non-covid": 0}


def test_two_class_folders_not_covid_are_one_line_bad_input(tmp_path):
    root = _folders(tmp_path, {"train": {"cap": 1, "normal": 1}})
    with pytest.raises(BadInputError) as info:
        find_labelled(root)
    message = str(info.value)
    assert "\n" not in message and "cap" in message and "normal" in message
    assert "three or more" in message


def test_a_test_folder_of_class_folders_is_labelled(tmp_path):
    root = _folders(tmp_path, {"train": {"a": 1, "b": 1, "c": 1},
                               "test": {"c": 2, "a": 1}})
    records, classes = find_labelled(root)
    assert classes == ("a", "b", "c")
    test = [r for r in records if r.split == "test"]
    assert sorted((r.path.parent.name, r.label) for r in test) == [("a", 0), ("c", 2), ("c", 2)]


def test_a_test_folder_of_scans_stays_unlabelled(tmp_path):
    root = _folders(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}})
    _scan(root / "test", "x")
    records, _ = find_labelled(root)
    assert [(r.path.name, r.label) for r in records if r.split == "test"] == [("x.npy", None)]


def test_a_test_class_the_train_folders_lack_is_bad_input(tmp_path):
    root = _folders(tmp_path, {"train": {"a": 1, "b": 1, "c": 1}, "test": {"a": 1, "d": 1}})
    with pytest.raises(BadInputError, match="a class the train and val folders do not have"):
        find_labelled(root)


def _manifest(folder: Path, labels: list[str]) -> Path:
    for i in range(len(labels)):
        _scan(folder, f"s{i}")
    path = folder / "m.csv"
    path.write_text("path,label\n" + "".join(f"s{i}.npy,{label}\n"
                                             for i, label in enumerate(labels)))
    return path


def test_manifest_names_make_sorted_classes(tmp_path):
    manifest = _manifest(tmp_path, ["Covid", "normal", "CAP", "covid", "cap"])
    records, classes = find_labelled(manifest=manifest)
    assert classes == ("cap", "covid", "normal")
    assert [r.label for r in records] == [1, 2, 0, 1, 0]  # manifest order: s0..s4


def test_manifest_integers_zero_to_k_minus_one_are_the_classes(tmp_path):
    manifest = _manifest(tmp_path, ["2", "0", "1", "3", "0"])
    records, classes = find_labelled(manifest=manifest)
    assert classes == ("0", "1", "2", "3")
    assert [r.label for r in records] == [2, 0, 1, 3, 0]


def test_manifest_binary_spellings_stay_binary(tmp_path):
    manifest = _manifest(tmp_path, ["1", "non-covid", "positive", "0"])
    records, classes = find_labelled(manifest=manifest)
    assert classes == BINARY_CLASSES
    assert [r.label for r in records] == [1, 0, 1, 0]


def test_manifest_integer_labels_with_a_gap_name_the_line(tmp_path):
    manifest = _manifest(tmp_path, ["0", "1", "3", "0"])  # no 2: line 4 holds the 3
    with pytest.raises(BadInputError) as info:
        find_labelled(manifest=manifest)
    message = str(info.value)
    assert "\n" not in message
    assert f"{manifest}:4:" in message and "'3'" in message and "2 has no scan" in message


def test_manifest_two_unknown_names_are_bad_input_naming_a_line(tmp_path):
    manifest = _manifest(tmp_path, ["cap", "normal", "cap"])
    with pytest.raises(BadInputError) as info:
        find_labelled(manifest=manifest)
    message = str(info.value)
    assert "\n" not in message and f"{manifest}:2:" in message
    assert "unknown label 'cap'" in message and "three or more class names" in message


def test_the_unknown_label_error_names_its_manifest_line(tmp_path):
    manifest = _manifest(tmp_path, ["1", "1", "1", "yes", "1"])
    with pytest.raises(BadInputError) as info:
        find_labelled(manifest=manifest)
    assert f"{manifest}:5: unknown label 'yes'" in str(info.value)


@pytest.mark.parametrize("labels, line, label", [
    (["0", "1", "2", "4"], 5, "4"),  # named line 4, which holds the 2
    (["normal", "cap", "normal"], 3, "cap"),  # named line 2, which holds normal
])
def test_the_label_error_names_the_line_of_the_label_it_names(tmp_path, labels, line, label):
    manifest = _manifest(tmp_path, labels)
    with pytest.raises(BadInputError) as info:
        find_labelled(manifest=manifest)
    assert f"unknown label '{label}'" in str(info.value)
    assert f"{manifest}:{line}:" in str(info.value), str(info.value)


def test_a_number_among_class_names_is_bad_input(tmp_path):
    manifest = _manifest(tmp_path, ["covid", "normal", "pneumonia", "2"])
    with pytest.raises(BadInputError, match=r"m\.csv:5: label '2': the labels mix numbers "
                                            r"\(2\) and class names"):
        find_labelled(manifest=manifest)
    # A binary manifest with one stray name is no three-class study either.
    manifest = _manifest(tmp_path, ["1", "0", "yes", "1"])
    with pytest.raises(BadInputError, match=r"m\.csv:4: label 'yes'"):
        find_labelled(manifest=manifest)


# --- the metrics against scikit-learn ----------------------------------------------------------


def _tied(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Rows of class probabilities on a coarse grid: ties within each column and within rows."""
    raw = rng.integers(1, 5, size=(n, k)).astype(np.float64)
    return raw / raw.sum(axis=1, keepdims=True)


def _sklearn(y: np.ndarray, p: np.ndarray) -> dict:
    k = p.shape[1]
    guess = p.argmax(axis=1)
    labels = list(range(k))
    cm = confusion_matrix(y, guess, labels=labels)
    specificity = []
    for i in labels:
        negatives = y != i
        specificity.append(float((guess[negatives] != i).mean()) if negatives.any() else None)
    aucs = [roc_auc_score(y == i, p[:, i]) if 0 < (y == i).sum() < len(y) else None
            for i in labels]
    defined = [a for a in aucs if a is not None]
    return {
        "auc": aucs,
        "macro_auc": float(np.mean(defined)) if defined else None,
        "micro_auc": roc_auc_score(np.eye(k)[y], p, average="micro"),
        "f1": f1_score(y, guess, labels=labels, average=None, zero_division=0),
        "macro_f1": f1_score(y, guess, labels=labels, average="macro", zero_division=0),
        "micro_f1": f1_score(y, guess, labels=labels, average="micro", zero_division=0),
        "sensitivity": recall_score(y, guess, labels=labels, average=None, zero_division=0),
        "precision": precision_score(y, guess, labels=labels, average=None, zero_division=0),
        "specificity": specificity,
        "accuracy": float((guess == y).mean()),
        "cm": cm.tolist(),
    }


@pytest.mark.parametrize("seed", range(6))
def test_multiclass_report_equals_scikit_learn_with_ties(seed):
    rng = np.random.default_rng(seed)
    k = 3 + seed % 3
    n = int(rng.integers(30, 120))
    y = np.concatenate([np.arange(k), rng.integers(0, k, n - k)])  # every class present
    p = _tied(rng, n, k)
    names = [f"c{i}" for i in range(k)]
    report = multiclass_report(y, p, names)
    ref = _sklearn(y, p)
    assert report["n"] == n and report["classes"] == names and report["undefined"] == {}
    for i, name in enumerate(names):
        got = report["per_class"][name]
        assert got["auc"] == pytest.approx(ref["auc"][i], abs=1e-9)
        assert got["f1"] == pytest.approx(ref["f1"][i], abs=1e-9)
        assert got["sensitivity"] == pytest.approx(ref["sensitivity"][i], abs=1e-9)
        assert got["specificity"] == pytest.approx(ref["specificity"][i], abs=1e-9)
        if got["precision"] is not None:
            assert got["precision"] == pytest.approx(ref["precision"][i], abs=1e-9)
        assert got["support"] == report["support"][name] == int((y == i).sum())
    for key in ("macro_auc", "micro_auc", "macro_f1", "micro_f1", "accuracy"):
        assert report[key] == pytest.approx(ref[key], abs=1e-9), key
    assert report["micro_f1"] == pytest.approx(report["accuracy"], abs=1e-12)
    assert report["confusion_matrix"] == ref["cm"]
    json.dumps(report)  # JSON-ready


def test_a_class_without_scans_has_no_auc_and_the_macro_averages_the_rest():
    rng = np.random.default_rng(7)
    y = rng.choice([0, 2, 3], size=60)  # class 1 absent
    y[:3] = [0, 2, 3]
    p = _tied(rng, 60, 4)
    names = ["a", "b", "c", "d"]
    report = multiclass_report(y, p, names)
    ref = _sklearn(y, p)
    assert report["per_class"]["b"]["auc"] is None
    assert report["per_class"]["b"]["sensitivity"] is None
    assert report["per_class"]["b"]["support"] == 0
    assert "no b scans" in report["undefined"]["per_class.b.auc"]
    assert list(report["undefined"]) == ["per_class.b.auc"]
    assert report["macro_auc"] == pytest.approx(ref["macro_auc"], abs=1e-9)
    assert report["micro_auc"] == pytest.approx(ref["micro_auc"], abs=1e-9)
    assert report["macro_f1"] == pytest.approx(ref["macro_f1"], abs=1e-9)
    assert report["confusion_matrix"][1] == [0, 0, 0, 0]


def test_one_class_only_leaves_every_auc_undefined():
    p = _tied(np.random.default_rng(1), 5, 3)
    report = multiclass_report(np.ones(5, dtype=int), p, ["a", "b", "c"])
    assert report["macro_auc"] is None and report["micro_auc"] is None
    assert set(report["undefined"]) == {f"per_class.{c}.auc" for c in "abc"}
    assert "only b scans" in report["undefined"]["per_class.b.auc"]


def test_bootstrap_intervals_hold_the_point_estimates_roughly():
    rng = np.random.default_rng(3)
    y = np.concatenate([np.arange(3), rng.integers(0, 3, 60)])
    p = _tied(rng, 63, 3)
    report = multiclass_report(y, p, ["a", "b", "c"], n_boot=50, seed=1)
    boot = report["bootstrap"]
    assert boot["n_boot"] == 50 and boot["level"] == 0.95
    lo, hi = boot["macro_f1"]
    assert lo <= hi and 0 <= lo <= 1 and 0 <= hi <= 1
    assert multiclass_report(y, p, ["a", "b", "c"], n_boot=50, seed=1) == report


@pytest.mark.parametrize("labels, probs, needle", [
    ([0, 1, 2], np.full(3, 1 / 3), "n x K"),  # 1-D probabilities
    ([[0], [1], [2]], np.full((3, 3), 1 / 3), "1-D"),  # 2-D labels
    ([0, 1], np.full((3, 3), 1 / 3), "2 labels but 3 x 3"),  # lengths differ
    ([0, 1, 2], np.full((3, 4), 1 / 4), "for 3 classes"),  # K != len(classes)
    ([0, 1, 2], [[np.nan, 0.5, 0.5], [1, 0, 0], [0, 1, 0]], "finite"),
    ([0, 1, 2], [[np.inf, 0.0, 0.0], [1, 0, 0], [0, 1, 0]], "finite"),
    ([0, 1, 3], np.full((3, 3), 1 / 3), "class indices 0 to 2"),
    ([0, -1, 2], np.full((3, 3), 1 / 3), "class indices 0 to 2"),
    ([0.0, 1.0, 2.0], np.full((3, 3), 1 / 3), "class indices"),
    ([], np.empty((0, 3)), "empty"),
])
def test_bad_inputs_are_one_line_errors(labels, probs, needle):
    with pytest.raises(BadInputError) as info:
        multiclass_report(labels, probs, ["a", "b", "c"])
    assert needle in str(info.value) and "\n" not in str(info.value)


# --- probabilities, fusion and the class map ---------------------------------------------------


def test_logits_to_probs_by_the_number_of_outputs():
    import torch

    from covidzoo.inference import logits_to_probs

    logits = torch.tensor([[0.3, -1.2, 2.0], [1.0, 1.0, 1.0]])
    assert torch.allclose(logits_to_probs(logits[:, :1], 1), torch.sigmoid(logits[:, 0]))
    assert torch.allclose(logits_to_probs(logits[:, :2], 2),
                          torch.softmax(logits[:, :2], dim=1)[:, 1])
    three = logits_to_probs(logits, 3)
    assert three.shape == (2, 3) and torch.allclose(three, torch.softmax(logits, dim=1))
    assert torch.allclose(three[1], torch.full((3,), 1 / 3))
    with pytest.raises(BadInputError, match="returned 3 outputs per scan, its checkpoint says 4"):
        logits_to_probs(logits, 4)


def test_fuse_averages_class_probabilities_and_refuses_other_fusions():
    from covidzoo.inference import Predictor

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(3), size=(5, 2))  # 5 scans x 2 members x 3 classes
    single = Predictor(Path("m.safetensors"), "checkpoint", [])
    assert np.array_equal(single.fuse(probs[:, :1]), probs[:, 0])
    mean = Predictor(Path("e.json"), "ensemble", [], SimpleNamespace(method="mean"))
    assert np.allclose(mean.fuse(probs), probs.mean(axis=1))
    assert np.allclose(mean.fuse(probs).sum(axis=1), 1.0)
    rank = Predictor(Path("e.json"), "ensemble", [], SimpleNamespace(method="rank"))
    with pytest.raises(BadInputError, match="'rank' ensembler"):
        rank.fuse(probs)


def test_data_classes_map_to_the_models_by_name():
    from covidzoo.inference import _class_map

    assert _class_map(BINARY_CLASSES, THREE, "d") == [1, 0]
    assert _class_map(["pneumonia", "covid"], THREE, "d") == [2, 0]
    with pytest.raises(BadInputError) as info:
        _class_map(["covid", "flu", "cap"], THREE, "d")
    message = "d holds class(es) flu, cap; the model knows covid, non-covid, pneumonia"
    assert str(info.value) == message


@pytest.mark.parametrize("kwargs, needle", [
    ({"classes": 4}, "classes must be 2 or 3"),
    ({"classes": 3, "n": 2}, "n must be at least 3"),
])
def test_synthesize_refuses_bad_class_counts(tmp_path, kwargs, needle):
    from covidzoo.data.synthetic import synthesize

    with pytest.raises(BadInputError, match=needle):
        synthesize(tmp_path / "s", shape=(8, 8, 8), **kwargs)
    assert not (tmp_path / "s").exists()


# --- end to end on a three-class synthetic set -------------------------------------------------


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A three-class and a binary synthetic set, one tiny model trained on each."""
    root = tmp_path_factory.mktemp("multiclass")
    run = cli_runner(root / "cache")
    three, two = root / "three", root / "two"
    for path, classes, n in ((three, 3, 24), (two, 2, 8)):
        result = run("data", "synth", path, "--classes", classes, "--n", n, "--shape",
                     "16,32,32", "--json")
        assert result.exit_code == 0, result.output
    summaries = {}
    for name, data in (("run3", three), ("run2", two)):
        summaries[name] = ok_json(run("train", *TINY, "--data", data, "--out", root / name,
                                      "--json"))
    return SimpleNamespace(root=root, run=run, three=three, two=two, run3=root / "run3",
                           run2=root / "run2", summaries=summaries)


def _predictions(path: Path) -> tuple[list[dict[str, str]], np.ndarray, np.ndarray, list[str]]:
    """Rows, labels (as class indices), probabilities and classes of a `--predictions` CSV."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    names = [c[2:] for c in rows[0] if c.startswith("p_")]
    labels = np.array([names.index(r["label"]) for r in rows])
    probs = np.array([[float(r[f"p_{n}"]) for n in names] for r in rows])
    return rows, labels, probs, names


def test_synth_writes_three_balanced_class_folders(study):
    counts = {(split.name, c.name): len(list(c.iterdir()))
              for split in study.three.iterdir() for c in split.iterdir()}
    assert counts == {(s, c): 2 if s == "val" else 6 for s in ("train", "val") for c in THREE}


def test_train_writes_a_three_class_checkpoint(study):
    from covidzoo.checkpoint import read_spec
    from covidzoo.inference import load_member

    assert study.summaries["run3"]["classes"] == THREE
    assert study.summaries["run3"]["threshold"] is None
    spec = read_spec(study.run3 / "best.safetensors")
    assert spec.classes == THREE
    assert spec.model_args["num_classes"] == 3
    assert spec.threshold is None
    member = load_member(study.run3 / "best.safetensors")
    assert member.num_classes == 3 and member.classes == tuple(THREE)


def test_evaluate_reports_what_scikit_learn_computes_from_its_predictions(study):
    csv_path = study.root / "eval3.csv"
    report = ok_json(study.run("evaluate", study.run3 / "best.safetensors", "--data",
                               study.three, "--json", "--predictions", csv_path))
    assert report["classes"] == THREE and report["threshold"] is None
    rows, y, p, names = _predictions(csv_path)
    assert names == THREE and len(rows) == report["metrics"]["n"] == 6
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-6)
    assert [r["predicted"] for r in rows] == [names[i] for i in p.argmax(axis=1)]
    assert all(Path(r["path"]).parent.name == r["label"] for r in rows)
    metrics = report["metrics"]
    aucs = [roc_auc_score(y == k, p[:, k]) for k in range(3)]
    for k, name in enumerate(names):
        assert metrics["per_class"][name]["auc"] == pytest.approx(aucs[k], abs=1e-9)
    assert metrics["macro_auc"] == pytest.approx(np.mean(aucs), abs=1e-9)
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(y, p.argmax(axis=1), labels=[0, 1, 2], average="macro", zero_division=0),
        abs=1e-9)
    assert metrics["confusion_matrix"] == confusion_matrix(y, p.argmax(axis=1),
                                                           labels=[0, 1, 2]).tolist()


def test_evaluate_prints_the_per_class_table(study):
    result = study.run("evaluate", study.run3 / "best.safetensors", "--data", study.three)
    assert result.exit_code == 0, result.output
    out = " ".join(result.stdout.split())
    for needle in ("the most probable class of each scan", "AUC (one vs rest)", "pneumonia",
                   "macro", "micro", "accuracy", "confusion matrix (rows: true class"):
        assert needle in out, out
    assert "threshold" not in out


def test_evaluate_bootstraps_and_draws_one_curve_per_class(study):
    roc = study.root / "roc3.png"
    report = ok_json(study.run("evaluate", study.run3 / "best.safetensors", "--data",
                               study.three, "--bootstrap", 20, "--roc", roc, "--json"))
    boot = report["metrics"]["bootstrap"]
    assert boot["n_boot"] == 20 and set(boot) >= {"macro_auc", "macro_f1", "skipped_auc"}
    assert report["roc"] == str(roc) and roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_predict_gives_the_most_probable_class_and_its_probabilities(study):
    scans = sorted((study.three / "val" / "pneumonia").iterdir()) + \
        sorted((study.three / "val" / "covid").iterdir())
    report = ok_json(study.run("predict", study.run3 / "best.safetensors", *scans, "--json"))
    assert report["classes"] == THREE and report["threshold"] is None
    assert len(report["predictions"]) == len(scans) == 4
    for p in report["predictions"]:
        probs = p["probabilities"]
        assert list(probs) == THREE
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-6)
        assert p["label"] == max(probs, key=probs.get)
        assert p["probability"] == probs[p["label"]]
        assert p["threshold"] is None
    table = study.run("predict", study.run3 / "best.safetensors", *scans)
    assert table.exit_code == 0 and all(n in table.stdout for n in THREE), table.output


def test_a_three_class_model_evaluates_binary_data_by_class_name(study):
    csv_path = study.root / "eval3on2.csv"
    report = ok_json(study.run("evaluate", study.run3 / "best.safetensors", "--data",
                               study.two, "--json", "--predictions", csv_path))
    metrics = report["metrics"]
    assert metrics["support"] == {"covid": 1, "non-covid": 1, "pneumonia": 0}
    assert metrics["per_class"]["pneumonia"]["auc"] is None
    assert "per_class.pneumonia.auc" in metrics["undefined"]
    rows, _, _, _ = _predictions(csv_path)
    # binary data labels covid 1, the model's covid is class 0: mapped by name
    assert sorted((Path(r["path"]).parent.name, r["label"]) for r in rows) == [
        ("covid", "covid"), ("non-covid", "non-covid")]


def test_data_with_a_class_the_model_lacks_is_one_line(study):
    flu = study.root / "flu"
    for name, source in (("covid", "covid"), ("non-covid", "non-covid"), ("flu", "pneumonia")):
        shutil.copytree(study.three / "val" / source, flu / "val" / name)
    result = study.run("evaluate", study.run3 / "best.safetensors", "--data", flu)
    one_line_error(result, "flu", "covid, non-covid, pneumonia")
    result = study.run("evaluate", study.run2 / "best.safetensors", "--data", study.three)
    one_line_error(result, "pneumonia", "the model knows non-covid, covid")


def test_an_ensemble_file_of_binary_and_three_class_members_is_one_line(study):
    from covidzoo.ensemble import create_ensembler
    from covidzoo.inference import write_ensemble_file

    ensembler = create_ensembler("mean")
    ensembler.n_models = 2
    path = write_ensemble_file(study.root / "mixed.json", [study.run3 / "best.safetensors",
                                                            study.run2 / "best.safetensors"],
                               ensembler, None)
    result = study.run("evaluate", path, "--data", study.two)
    # Named by path (the run's saved generation), not by the name best.safetensors they share.
    line = one_line_error(result, "members have different classes")
    assert re.search(r"run3/\S*best\.safetensors: covid, non-covid, pneumonia", line), line
    assert re.search(r"run2/\S*best\.safetensors: non-covid, covid\)", line), line


def test_the_ensemble_command_averages_class_probabilities(study, tmp_path):
    """`covidzoo ensemble` of three-class members: the fusion is the mean of their class
    probabilities, its figures scikit-learn's on that mean, and --save writes the ensemble file
    that `evaluate` reads back to the same fused probabilities."""
    members = [study.run3 / "best.safetensors", study.run3 / "last.safetensors"]
    each = []
    for k, member in enumerate(members):
        out = tmp_path / f"member{k}.csv"
        ok_json(study.run("evaluate", member, "--data", study.three, "--split", "val",
                          "--predictions", out, "--json"))
        each.append(_predictions(out))
    labels, classes = each[0][1], each[0][3]
    mean = np.mean([probs for _, _, probs, _ in each], axis=0)
    saved = tmp_path / "three.json"
    result = ok_json(study.run("ensemble", *members, "--data", study.three, "--split", "val",
                               "--save", saved, "--json"))
    assert result["threshold"] is None and result["estimate"] == "held-out"
    assert any("mean of the members' class probabilities" in n for n in result["notes"])
    fusion = result["fusion"]
    assert fusion["classes"] == classes == THREE
    assert fusion["macro_auc"] == pytest.approx(
        roc_auc_score(labels, mean, multi_class="ovr", average="macro"), abs=1e-9)
    assert fusion["macro_f1"] == pytest.approx(
        f1_score(labels, mean.argmax(1), average="macro"), abs=1e-9)
    assert fusion["confusion_matrix"] == confusion_matrix(labels, mean.argmax(1)).tolist()
    for k, member in enumerate(result["members"]):
        assert member["macro_auc"] == pytest.approx(
            roc_auc_score(labels, each[k][2], multi_class="ovr", average="macro"), abs=1e-9)

    out = tmp_path / "fused.csv"
    ok_json(study.run("evaluate", saved, "--data", study.three, "--split", "val",
                      "--predictions", out, "--json"))
    np.testing.assert_allclose(_predictions(out)[2], mean, atol=1e-6)

    table = study.run("ensemble", *members, "--data", study.three, "--split", "val", "--roc",
                      tmp_path / "roc.png")
    assert table.exit_code == 0, table.output
    assert "macro AUC" in table.stdout and "confusion matrix" in table.stdout
    assert (tmp_path / "roc.png").stat().st_size > 0


def test_the_ensemble_command_refuses_a_covid_fusion_of_three_classes(study):
    result = study.run("ensemble", study.run3 / "best.safetensors",
                       study.run3 / "last.safetensors", "--data", study.three, "--method",
                       "weighted")
    one_line_error(result, "--method weighted", "3 classes", "--method mean")


def test_threshold_youden_is_refused_for_three_classes(study):
    result = study.run("evaluate", study.run3 / "best.safetensors", "--data", study.three,
                       "--threshold", "youden")
    one_line_error(result, "--threshold youden", "3 classes")


@pytest.mark.parametrize("flags, needles", [
    (("--pos-weight", "2"), ("--pos-weight", "3", "--class-weights")),
    (("--class-weights", "1,2"), ("--class-weights", "2 weight(s) for 3 classes")),
])
def test_binary_only_loss_options_are_refused_for_three_classes(study, tmp_path, flags,
                                                                 needles):
    result = study.run("train", *TINY, "--data", study.three, "--out", tmp_path / "r", *flags)
    one_line_error(result, *needles)
    assert not (tmp_path / "r" / "best.safetensors").exists()


def test_a_binary_model_still_reports_binary(study):
    report = ok_json(study.run("evaluate", study.run2 / "best.safetensors", "--data",
                               study.two, "--json"))
    assert report["classes"] == list(BINARY_CLASSES)
    assert set(report["threshold"]) == {"value", "source", "note"}
    assert report["threshold"]["source"] == "checkpoint"
    assert report["threshold"]["value"] == study.summaries["run2"]["threshold"]
    metrics = report["metrics"]
    assert "auc" in metrics and "per_class" not in metrics and "n_covid" in metrics
    table = study.run("evaluate", study.run2 / "best.safetensors", "--data", study.two)
    assert table.exit_code == 0 and "F1 (covid)" in table.stdout, table.output
    scan = next((study.two / "val" / "covid").iterdir())
    predicted = ok_json(study.run("predict", study.run2 / "best.safetensors", scan, "--json"))
    p = predicted["predictions"][0]
    assert p["label"] in ("covid", "non-covid") and "probabilities" not in p
    assert p["threshold"] == report["threshold"]["value"]
    assert p["label"] == ("covid" if p["probability"] >= p["threshold"] else "non-covid")
