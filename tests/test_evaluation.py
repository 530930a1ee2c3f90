"""The use cases behind evaluate, ensemble and predict, called directly as a notebook would."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from model_helpers import hand_probs

from covidzoo.data import find_scans
from covidzoo.errors import BadInputError
from covidzoo.evaluation import evaluate, fit_ensemble, predict, resolve_threshold
from covidzoo.inference import load_predictor, read_ensemble_file
from covidzoo.metrics import binary_report, youden_threshold


@pytest.fixture(scope="module")
def env(inference_env):
    return inference_env


@pytest.fixture(scope="module")
def val(env):
    return [r for r in find_scans(root=env.data) if r.split == "val"]


def test_evaluate_returns_the_report_of_the_stored_threshold(env, val, tmp_path):
    report = evaluate(env.a, data=env.data, device="cpu")
    labels = [r.label for r in val]
    np.testing.assert_allclose(report.probs, hand_probs(env.a, [r.path for r in val]),
                               atol=1e-5)
    assert report.labels.tolist() == labels and report.split == "val"
    assert report.threshold.value == 0.42 and report.threshold.source == "checkpoint"
    assert report.metrics == binary_report(labels, report.probs, 0.42)
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
    assert not report.optimistic and report.notes == []
    np.testing.assert_allclose(report.fused, report.probs.mean(axis=1))
    train_report = fit_ensemble([env.a, env.b], method="mean", data=env.data, device="cpu",
                                fit_split="train", split="train")
    # The threshold is the Youden point of the fused probabilities of the fit split.
    assert report.threshold == pytest.approx(
        youden_threshold(train_report.labels, train_report.fused))
    assert train_report.optimistic and "optimistic" in train_report.notes[0]
    saved = report.save(tmp_path / "ens.json")
    paths, ensembler, threshold = read_ensemble_file(saved)
    assert [p.resolve() for p in paths] == [env.a.resolve(), env.b.resolve()]
    assert threshold == report.threshold and ensembler.to_dict()["method"] == "mean"


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
