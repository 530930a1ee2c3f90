"""The use cases behind evaluate, ensemble and predict, called directly as a notebook would."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from model_helpers import hand_probs
from sklearn.model_selection import StratifiedKFold

from covidzoo.data import find_scans
from covidzoo.ensemble import create_ensembler
from covidzoo.errors import BadInputError
from covidzoo.evaluation import (
    evaluate,
    fit_ensemble,
    member_names,
    predict,
    report_at,
    resolve_threshold,
)
from covidzoo.inference import load_predictor, read_ensemble_file
from covidzoo.metrics import binary_report, youden_threshold


@pytest.fixture(scope="module")
def env(inference_env):
    return inference_env


@pytest.fixture(scope="module")
def val(env):
    return [r for r in find_scans(root=env.data) if r.split == "val"]


def test_evaluate_returns_the_report_of_the_stored_threshold(env, val, tmp_path):
    from covidzoo.calibration import calibration_figures

    report = evaluate(env.a, data=env.data, device="cpu")
    labels = [r.label for r in val]
    np.testing.assert_allclose(report.probs, hand_probs(env.a, [r.path for r in val]),
                               atol=1e-5)
    assert report.labels.tolist() == labels and report.split == "val"
    assert report.threshold.value == 0.42 and report.threshold.source == "checkpoint"
    metrics = dict(report.metrics)
    assert metrics.pop("calibration") == calibration_figures(np.asarray(labels), report.probs)
    assert metrics == binary_report(labels, report.probs, 0.42)
    assert report.to_dict()["timing"]["scans"] == len(labels)
    report.save_predictions(tmp_path / "p.csv")
    with (tmp_path / "p.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [float(r["probability"]) for r in rows] == pytest.approx(report.probs.tolist())
    assert report.save_roc(tmp_path / "roc.png").read_bytes()[:4] == b"\x89PNG"


def test_evaluate_youden_is_the_evaluated_datas_point_and_says_so(env):
    report = evaluate(env.a, data=env.data, device="cpu", threshold="youden")
    assert report.threshold.value == youden_threshold(report.labels, report.probs)
    assert "optimistic" in report.threshold.note


def test_evaluate_refuses_a_split_without_labels(env):
    with pytest.raises(BadInputError, match="no scans in split"):
        evaluate(env.a, data=env.data, device="cpu", split="test")


def test_resolve_threshold_rules(env):
    predictor = load_predictor(env.b)
    labels, probs = np.array([0, 1, 1]), np.array([0.2, 0.6, 0.9])
    assert resolve_threshold("checkpoint", predictor, labels, probs).value == 0.5
    assert resolve_threshold("0.7", predictor, labels, probs).source == "option"
    with pytest.raises(BadInputError, match="within"):
        resolve_threshold("2", predictor, labels, probs)


def test_fit_ensemble_fits_on_the_fit_split_and_saves(env, tmp_path):
    report = fit_ensemble([env.a, env.b], method="mean", data=env.data, device="cpu",
                          fit_split="train", split="val")
    assert report.estimate == "held-out" and not report.optimistic
    # val is where covidzoo train picks epochs and thresholds: labelled, not silent.
    assert report.selection_biased and len(report.notes) == 1
    assert report.notes[0].startswith("selection-biased")
    np.testing.assert_allclose(report.fused, report.probs.mean(axis=1))
    train_report = fit_ensemble([env.a, env.b], method="mean", data=env.data, device="cpu",
                                fit_split="train", split="train")
    # The threshold is the Youden point of the fused probabilities of the fit split (the mean
    # learns nothing, so the cross-fitted fused values are the fused values).
    assert report.threshold == pytest.approx(
        youden_threshold(train_report.labels, train_report.fused))
    assert train_report.estimate == "cross-fitted" and not train_report.selection_biased
    assert "cross-fitted over 3 stratified folds" in train_report.notes[0]
    saved = report.save(tmp_path / "ens.json")
    paths, ensembler, threshold = read_ensemble_file(saved)
    assert [p.resolve() for p in paths] == [env.a.resolve(), env.b.resolve()]
    assert threshold == report.threshold and ensembler.to_dict()["method"] == "mean"


def test_member_names_are_run_folders_made_unique():
    assert member_names(["runs/a/best.safetensors", "runs/b/best.safetensors"]) == ["a", "b"]
    assert member_names(["x/run/best.safetensors", "y/run/best.safetensors",
                         "y/other/best.safetensors"]) == ["x/run", "y/run", "other"]
    assert member_names(["r/a/best.safetensors", "r/a/last.safetensors"]) == ["a/best", "a/last"]
    assert member_names(["r/a/best.safetensors", "r/a/best.safetensors"]) == ["a", "a#2"]


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_the_default_protocol_without_a_test_split_is_cross_fitted_on_val(env, method):
    """No test split: fit on val, report on val, every scan scored by an ensembler and a
    threshold fit on the other folds, never by the one fit on it."""
    report = fit_ensemble([env.a, env.b], method=method, data=env.data, device="cpu", seed=3)
    assert report.split == report.fit_split == "val" and report.estimate == "cross-fitted"
    assert report.folds == 3  # 3 scans of each class: 3 folds, not 5
    folds = StratifiedKFold(3, shuffle=True, random_state=3).split(report.probs, report.labels)
    expected, thresholds = np.empty(len(report.labels)), np.empty(len(report.labels))
    for fit, held in folds:
        ens = create_ensembler(method).fit(report.probs[fit], report.labels[fit])
        expected[held] = ens.predict(report.probs[held])
        thresholds[held] = youden_threshold(report.labels[fit], ens.predict(report.probs[fit]))
    np.testing.assert_allclose(report.fused, expected, atol=1e-9)
    in_sample = report.ensembler.predict(report.probs)
    if method == "stacking":  # (weighted keeps equal weights on 6 scans: nothing to see)
        assert (report.fused != in_sample).any()  # the saved ensembler saw these scans
    assert report.fusion == report_at(report.labels, expected, thresholds)
    assert report.threshold == youden_threshold(report.labels, in_sample)  # what save writes
    out = report.to_dict()
    assert out["estimate"] == out["fusion"]["estimate"] == "cross-fitted"
    assert out["in_sample"] is False and len(out["fold_thresholds"]) == 3
    assert all(m["selection_biased"] for m in out["members"])
    assert [m["name"] for m in out["members"]] == member_names([env.a, env.b])


def _manifest(env, path, split_of) -> str:
    rows = ["path,label,split"]
    for r in find_scans(root=env.data):
        split = split_of(r)
        if split:
            rows.append(f"{r.path},{'covid' if r.label else 'non-covid'},{split}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def test_the_default_protocol_with_a_labelled_test_split_is_held_out(env, tmp_path):
    manifest = _manifest(env, tmp_path / "m.csv",
                         lambda r: "test" if r.split == "train" else r.split)
    report = fit_ensemble([env.a, env.b], method="weighted", manifest=manifest, device="cpu")
    assert (report.fit_split, report.split, report.estimate) == ("val", "test", "held-out")
    assert not report.selection_biased and report.notes == []
    np.testing.assert_allclose(report.fused, report.ensembler.predict(report.probs))
    assert report.fusion["threshold"] == report.threshold
    assert report.to_dict()["weights"] == report.ensembler.to_dict()["weights"]


def test_a_split_too_small_to_cross_fit_is_labelled_in_sample(env, tmp_path):
    covid_seen = []

    def one_covid_in_val(r):
        if r.split != "val" or not r.label:
            return r.split
        covid_seen.append(r)
        return "val" if len(covid_seen) == 1 else None

    manifest = _manifest(env, tmp_path / "m.csv", one_covid_in_val)
    report = fit_ensemble([env.a, env.b], manifest=manifest, device="cpu")
    assert report.estimate == "in-sample" and report.optimistic and report.folds is None
    assert report.notes[0].startswith("IN-SAMPLE") and report.to_dict()["in_sample"] is True
    from covidzoo.cli.evaluate import _ensemble_rows, _ensemble_title

    assert "IN-SAMPLE" in _ensemble_title(report)
    assert _ensemble_rows(report)[-1][0] == "mean fusion (in-sample) *"


def test_fit_ensemble_refuses_ensemble_files_as_members(env, tmp_path):
    saved = fit_ensemble([env.a], data=env.data, device="cpu").save(tmp_path / "one.json")
    with pytest.raises(BadInputError, match="ensemble members must be checkpoints"):
        fit_ensemble([saved, env.a], data=env.data, device="cpu")


def test_predict_scores_raw_scans_and_lists_failures(env, val, tmp_path):
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    scans = [val[0].path, bad]
    report = predict(env.a, scans, device="cpu")
    assert [p.scan for p in report.predictions] == [str(val[0].path)]
    assert report.predictions[0].probability == pytest.approx(
        float(hand_probs(env.a, [val[0].path])[0]), abs=1e-5)
    assert report.failed[0][0] == str(bad)
    with pytest.raises(BadInputError, match="every scan failed"):
        predict(env.a, [bad], device="cpu")



def test_channels_last_scans_go_to_volume_models_only(env):
    """A slice model under a channels-last precision gets its scans in the default layout (it
    reshapes them to slices), as in training; a volume model gets channels_last_3d."""
    import torch
    from model_helpers import tiny2d_registered

    from covidzoo.checkpoint import read_spec
    from covidzoo.inference import Member
    from covidzoo.runtime import Precision

    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x):
            seen.append(x.is_contiguous(memory_format=torch.channels_last_3d))
            return torch.zeros(x.shape[0], 1)

    scans = torch.zeros(1, 2, 4, 8, 8, dtype=torch.uint8)  # 2 channels: layouts differ
    with tiny2d_registered():
        for checkpoint in (env.c2d, env.a):
            Member(checkpoint, read_spec(checkpoint), Spy(), Precision("fp32", True),
                   torch.device("cpu"), 1).probs(scans)
    assert seen == [False, True]
