"""`covidzoo compare`: every model scored on the same scans, the figures those of covidzoo.stats
on the same probabilities, identical models indistinguishable, bad input one line.

Models are tiny and random (model_helpers): the tests check the bookkeeping and the statistics,
not that the models are any good.
"""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import TINY
from sklearn.metrics import roc_auc_score

import covidzoo
from covidzoo import stats
from covidzoo.checkpoint import ModelSpec, save_checkpoint
from covidzoo.compare import compare
from covidzoo.data import PreprocessConfig, synthesize
from covidzoo.multiclass_metrics import macro_ovr_auc

THREE = ["covid", "non-covid", "pneumonia"]


@pytest.fixture(scope="module")
def env(inference_env):
    return inference_env


def three_class_checkpoint(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = covidzoo.create_model("regnet3d", aggregator="volume", num_classes=3, **TINY)
    spec = ModelSpec("regnet3d", {**TINY, "num_classes": 3}, "volume", {},
                     PreprocessConfig(size=(8, 32, 32)).to_dict(), None, classes=THREE)
    return save_checkpoint(path, model.eval(), spec)


@pytest.fixture(scope="module")
def three(env):
    """A three-class synthetic set and two random three-class checkpoints (env's cache)."""
    data = synthesize(env.root / "three", n=12, seed=5, fmt="jpg", shape=(12, 40, 40),
                      val_fraction=0.5, classes=3)
    return data, [three_class_checkpoint(env.root / f"m{k}.safetensors", k) for k in (1, 2)]


def run_json(invoke, *args) -> dict:
    result = invoke(*args, "--json", "--device", "cpu")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fails(runner, *args) -> str:
    """Run a command expected to fail on bad input: exit 2 and one line on stderr."""
    from covidzoo.cli import cli

    result = runner.invoke(cli, [*args, "--device", "cpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error: ")]
    assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
    return errors[0]


def evaluated_probs(invoke, model: Path, data: Path, tmp_path: Path) -> dict[str, tuple]:
    """`{scan: (label, probability)}` from `evaluate --split all --predictions`: an independent
    route to each model's probabilities."""
    csv_path = tmp_path / f"{model.stem}.csv"
    run_json(invoke, "evaluate", str(model), "--data", str(data), "--split", "all",
             "--predictions", str(csv_path))
    with open(csv_path, newline="") as fh:
        return {r["path"]: (int(r["label"] == "covid"), float(r["probability"]))
                for r in csv.DictReader(fh)}


def assert_figures(got: dict, expected: dict) -> None:
    assert set(got) == set(expected)
    for key, value in expected.items():
        if isinstance(value, float):
            assert got[key] == pytest.approx(value, abs=1e-9), key
        elif isinstance(value, list):
            np.testing.assert_allclose(got[key], value, rtol=0, atol=1e-9, err_msg=key)
        else:
            assert got[key] == value, key


def test_json_figures_are_those_of_stats_on_the_same_probabilities(env, invoke, tmp_path):
    out = run_json(invoke, "compare", str(env.a), str(env.b), "--data", str(env.data),
                   "--split", "all", "--bootstrap", "40", "--seed", "3")
    assert set(out) == {"task", "auc", "data", "split", "classes", "n", "support", "level",
                        "bootstrap", "models", "pairs", "failed", "timing", "notes"}
    assert out["task"] == "binary" and out["auc"] == "roc_auc" and out["failed"] == []
    assert out["n"] == 12 and out["support"] == {"non-covid": 6, "covid": 6}
    assert out["bootstrap"] == {"n_boot": 40, "seed": 3, "level": 0.95}

    found_a = evaluated_probs(invoke, env.a, env.data, tmp_path)
    found_b = evaluated_probs(invoke, env.b, env.data, tmp_path)
    scans = sorted(found_a)
    assert scans == sorted(found_b)
    labels = np.array([found_a[s][0] for s in scans])
    pa = np.array([found_a[s][1] for s in scans])
    pb = np.array([found_b[s][1] for s in scans])

    a, b = out["models"]
    assert a["threshold"] == {"value": 0.42, "source": "checkpoint",
                              "note": "chosen on validation data"}
    assert b["threshold"]["value"] == 0.5 and b["threshold"]["source"] == "default"
    for model, p, t in ((a, pa, 0.42), (b, pb, 0.5)):
        assert model["auc"] == pytest.approx(roc_auc_score(labels, p), abs=1e-9)
        assert model["auc_variance"] == pytest.approx(stats.delong_auc_variance(labels, p)[1],
                                                      abs=1e-9)
        np.testing.assert_allclose(model["delong_ci"], stats.delong_ci(labels, p), atol=1e-9)
        assert model["accuracy"] == pytest.approx(np.mean((p >= t) == labels))

    (pair,) = out["pairs"]
    assert (pair["a"], pair["b"]) == (a["name"], b["name"])
    delong = stats.delong_test(labels, pa, pb).to_dict()
    assert_figures({k: v for k, v in pair["delong"].items() if k != "covariance"},
                   {k: v for k, v in delong.items() if k != "covariance"})
    np.testing.assert_allclose(pair["delong"]["covariance"], delong["covariance"], atol=1e-9)
    assert pair["difference"] == pytest.approx(delong["difference"], abs=1e-9)
    assert pair["mcnemar"] == stats.mcnemar((pa >= 0.42) == labels,
                                            (pb >= 0.5) == labels).to_dict()


def test_bootstrap_figures_are_those_of_stats_on_the_report_probabilities(env, tmp_path):
    report = compare([env.a, env.b], data=env.data, split="all", bootstrap=40, seed=3,
                     device="cpu")
    assert [len(p) for p in report.probs] == [12, 12]
    labels, (pa, pb) = report.labels, report.probs
    expected = stats.paired_bootstrap_auc_difference(labels, pa, pb, 40, 3).to_dict()
    assert_figures(report.pairs[0]["bootstrap"], expected)
    for model, p in zip(report.model_reports, (pa, pb), strict=True):
        np.testing.assert_allclose(model["bootstrap_ci"],
                                   stats.bootstrap_auc_ci(labels, p, 40, 3).ci, atol=1e-12)
    assert report.to_dict()["pairs"] == report.pairs


def test_a_model_against_itself_differs_by_0_with_p_1(env, invoke):
    out = run_json(invoke, "compare", str(env.a), str(env.a), "--data", str(env.data),
                   "--bootstrap", "30")
    first, second = out["models"]
    assert first["name"] != second["name"]  # the same file twice gets "#2"
    assert first["auc"] == second["auc"]
    (pair,) = out["pairs"]
    assert pair["difference"] == 0.0
    assert pair["delong"]["difference"] == 0.0 and pair["delong"]["p"] == 1.0
    assert pair["delong"]["z"] is None and pair["delong"]["se"] == 0.0
    assert pair["mcnemar"]["b"] == pair["mcnemar"]["c"] == 0 and pair["mcnemar"]["p"] == 1.0
    assert pair["bootstrap"]["p"] == 1.0 and pair["bootstrap"]["ci"] == [0.0, 0.0]


def test_tables_for_people(env, invoke):
    result = invoke("compare", str(env.a), str(env.b), "--data", str(env.data), "--device",
                    "cpu", "--bootstrap", "20")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    for needle in ("2 models on", "DeLong", "bootstrap (20)", "McNemar (exact)", "(checkpoint",
                   "note: McNemar compares"):
        assert any(needle in line for line in lines), result.stdout
    assert any(re.search(r"b \d+, c \d+", line) for line in lines), result.stdout


def test_multiclass_models_compare_by_bootstrap_and_mcnemar(env, three, invoke):
    data, (m1, m2) = three
    out = run_json(invoke, "compare", str(m1), str(m2), "--data", str(data), "--split",
                   "all", "--bootstrap", "25")
    assert out["task"] == "multiclass" and out["auc"] == "macro_ovr_auc"
    assert out["classes"] == THREE and out["n"] == 12
    report = compare([m1, m2], data=data, split="all", bootstrap=25, device="cpu")
    labels, (p1, p2) = report.labels, report.probs
    assert p1.shape == (12, 3)
    for model, p in zip(out["models"], (p1, p2), strict=True):
        assert model["auc"] == pytest.approx(macro_ovr_auc(labels, p), abs=1e-9)
        assert model["delong_ci"] is None and model["threshold"] is None
        np.testing.assert_allclose(model["bootstrap_ci"],
                                   stats.bootstrap_auc_ci(labels, p, 25, 0).ci, atol=1e-9)
    (pair,) = out["pairs"]
    assert pair["delong"] is None
    assert pair["mcnemar"] == stats.mcnemar(p1.argmax(1) == labels,
                                            p2.argmax(1) == labels).to_dict()
    assert_figures(pair["bootstrap"],
                   stats.paired_bootstrap_auc_difference(labels, p1, p2, 25, 0).to_dict())
    assert any("DeLong's test does not apply" in note for note in out["notes"])


def test_fewer_than_two_models_is_bad_input(env, runner):
    assert "at least two models" in fails(runner, "compare", str(env.a), "--data",
                                          str(env.data))


def test_a_missing_model_is_bad_input(env, runner, tmp_path):
    line = fails(runner, "compare", str(env.a), str(tmp_path / "nope.safetensors"), "--data",
                 str(env.data))
    assert "nope.safetensors" in line


def test_models_of_different_classes_are_bad_input(env, three, runner):
    data, (m1, _) = three
    line = fails(runner, "compare", str(env.a), str(m1), "--data", str(data))
    assert "different classes" in line and "pneumonia" in line


def test_no_labelled_scans_is_bad_input(env, runner, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    scan = next((data / "val" / "covid").iterdir())
    shutil.copytree(scan, data / "test" / scan.name)  # a test folder of unlabelled scans
    line = fails(runner, "compare", str(env.a), str(env.b), "--data", str(data), "--split",
                 "test")
    assert "no labelled scans" in line


def test_one_class_only_is_bad_input(env, runner, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(env.data, data)
    shutil.rmtree(data / "val" / "non-covid")
    line = fails(runner, "compare", str(env.a), str(env.b), "--data", str(data))
    assert "one class only" in line


def test_the_comparison_report_is_one_self_contained_page(env, invoke, tmp_path):
    html = tmp_path / "compare.html"
    result = run_json(invoke, "compare", str(env.a), str(env.b), "--data", str(env.data),
                      "--report", str(html))
    page = html.read_text(encoding="utf-8")
    assert result["report"] == str(html)
    assert "Comparison of 2 models" in page and "DeLong p" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
