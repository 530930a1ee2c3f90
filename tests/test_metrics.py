"""Metrics: hand-worked cases, agreement with scikit-learn, one-class data, the bootstrap."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from sklearn import metrics as skm

from covidzoo import metrics
from covidzoo.errors import BadInputError


@pytest.fixture
def random_data():
    rng = np.random.default_rng(7)
    labels = rng.integers(0, 2, size=200)
    probs = np.clip(0.25 * labels + rng.normal(0.4, 0.2, size=200), 0, 1).round(2)  # ties
    return labels, probs


# --- hand-worked cases ------------------------------------------------------------------------


def test_youden_threshold_hand_worked():
    labels = [0, 0, 0, 1, 1, 1]
    probs = [0.1, 0.3, 0.6, 0.4, 0.8, 0.9]
    # At 0.8: TPR 2/3, FPR 0 -> J 0.667; at 0.4: TPR 1, FPR 1/3 -> J 0.667; at 0.6: J 0.333.
    # Two maxima: the higher threshold wins.
    assert metrics.youden_threshold(labels, probs) == 0.8


def test_youden_threshold_is_a_score_when_no_cutoff_beats_chance():
    labels = [1, 1, 0, 0]
    probs = [0.1, 0.2, 0.8, 0.9]  # anti-correlated: J < 0 but at the lowest score (J = 0)
    # +inf (J = 0 too, and higher) would call no scan covid; it is not a candidate.
    assert metrics.youden_threshold(labels, probs) == 0.1


def test_macro_f1_hand_worked():
    labels = [1, 1, 1, 0, 0]
    probs = [0.9, 0.7, 0.2, 0.6, 0.1]
    # threshold 0.5: tp 2, fn 1, fp 1, tn 1 -> F1 covid 4/6, F1 non-covid 2/4
    f1s = metrics.f1_per_class(labels, probs, 0.5)
    assert f1s == pytest.approx({"covid": 2 / 3, "non-covid": 1 / 2}, abs=1e-12)
    assert metrics.macro_f1(labels, probs, 0.5) == pytest.approx(7 / 12, abs=1e-12)
    assert metrics.f1_covid(labels, probs, 0.5) == pytest.approx(2 / 3, abs=1e-12)


def test_threshold_is_inclusive():
    assert metrics.predict_labels([0.5, 0.49], 0.5).tolist() == [1, 0]


# --- against scikit-learn ---------------------------------------------------------------------


def test_metrics_equal_sklearn(random_data):
    labels, probs = random_data
    t = 0.5
    pred = (probs >= t).astype(int)
    assert metrics.roc_auc(labels, probs) == pytest.approx(
        skm.roc_auc_score(labels, probs), abs=1e-9)
    assert metrics.macro_f1(labels, probs, t) == pytest.approx(
        skm.f1_score(labels, pred, average="macro"), abs=1e-9)
    assert metrics.f1_covid(labels, probs, t) == pytest.approx(
        skm.f1_score(labels, pred), abs=1e-9)
    assert metrics.accuracy(labels, probs, t) == pytest.approx(
        skm.accuracy_score(labels, pred), abs=1e-9)
    assert metrics.sensitivity(labels, probs, t) == pytest.approx(
        skm.recall_score(labels, pred), abs=1e-9)
    assert metrics.specificity(labels, probs, t) == pytest.approx(
        skm.recall_score(labels, pred, pos_label=0), abs=1e-9)
    np.testing.assert_array_equal(
        metrics.confusion_matrix(labels, probs, t), skm.confusion_matrix(labels, pred))
    fpr, tpr, thr = metrics.roc_curve(labels, probs)
    assert thr[0] == np.inf
    j = tpr - fpr
    assert max(j) == pytest.approx(j[list(thr).index(metrics.youden_threshold(labels, probs))])


def test_report_equals_the_functions_and_is_json(random_data):
    labels, probs = random_data
    t = metrics.youden_threshold(labels, probs)
    report = json.loads(json.dumps(metrics.binary_report(labels, probs, t)))
    assert report["auc"] == pytest.approx(skm.roc_auc_score(labels, probs), abs=1e-9)
    assert report["macro_f1"] == pytest.approx(metrics.macro_f1(labels, probs, t), abs=1e-12)
    assert report["f1"] == pytest.approx(metrics.f1_covid(labels, probs, t), abs=1e-12)
    assert report["sensitivity"] == pytest.approx(metrics.sensitivity(labels, probs, t))
    assert report["specificity"] == pytest.approx(metrics.specificity(labels, probs, t))
    cm = report["confusion_matrix"]
    assert [[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]] == (
        metrics.confusion_matrix(labels, probs, t).tolist())
    assert report["n"] == 200 and report["n_covid"] == int(labels.sum())
    assert report["threshold"] == t and report["undefined"] == {}
    assert "bootstrap" not in report


# --- one class only ---------------------------------------------------------------------------


def test_one_class_reports_what_is_defined_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = metrics.binary_report([1, 1, 1], [0.9, 0.2, 0.7], 0.5, n_boot=20)
    assert report["auc"] is None and "no non-covid scans" in report["undefined"]["auc"]
    assert report["specificity"] is None and "specificity" in report["undefined"]
    assert report["sensitivity"] == pytest.approx(2 / 3)
    assert report["accuracy"] == pytest.approx(2 / 3)
    assert report["f1"] == pytest.approx(0.8)
    assert report["bootstrap"]["skipped"] == 20 and report["bootstrap"]["auc"] is None
    assert "f1_per_class.non-covid" not in report["undefined"]  # one was predicted: F1 is 0


def test_one_class_has_no_youden_point():
    with pytest.raises(BadInputError, match="no covid scans"):
        metrics.youden_threshold([0, 0], [0.1, 0.2])


@pytest.mark.parametrize(
    ("labels", "probs", "match"),
    [
        ([0, 1], [0.1], "2 labels but 1"),
        ([0, 2], [0.1, 0.2], "labels must be 0"),
        ([0, 1], [0.1, float("nan")], "finite"),
        ([], [], "empty"),
    ],
)
def test_bad_input(labels, probs, match):
    with pytest.raises(BadInputError, match=match):
        metrics.binary_report(labels, probs, 0.5)


# --- bootstrap --------------------------------------------------------------------------------


def test_bootstrap_equals_a_loop_over_sklearn(random_data):
    labels, probs = random_data
    labels, probs = labels[:30], probs[:30]
    n_boot, t = 200, 0.5
    ci = metrics.bootstrap_ci(labels, probs, t, n_boot=n_boot, seed=3)
    idx = np.random.default_rng(3).integers(0, 30, size=(n_boot, 30))
    aucs, f1s, skipped = [], [], 0
    for row in idx:
        y, p = labels[row], probs[row]
        if len(set(y)) < 2:
            skipped += 1
            continue
        aucs.append(skm.roc_auc_score(y, p))
        f1s.append(skm.f1_score(y, (p >= t).astype(int), average="macro", zero_division=0))
    assert ci["skipped"] == skipped
    np.testing.assert_allclose(ci["auc"], np.percentile(aucs, [2.5, 97.5]), atol=1e-9)
    np.testing.assert_allclose(ci["macro_f1"], np.percentile(f1s, [2.5, 97.5]), atol=1e-9)
    assert ci["auc"][0] <= metrics.roc_auc(labels, probs) <= ci["auc"][1]
    assert metrics.bootstrap_ci(labels, probs, t, n_boot=n_boot, seed=3) == ci


def test_bootstrap_counts_one_class_resamples():
    labels, probs = [0, 1], [0.2, 0.8]  # half of the resamples of 2 scans hold one class
    ci = metrics.bootstrap_ci(labels, probs, 0.5, n_boot=400, seed=0)
    assert 150 < ci["skipped"] < 250
    assert ci["auc"] == [1.0, 1.0]


def test_bootstrap_rejects_zero_resamples():
    with pytest.raises(BadInputError, match="resamples"):
        metrics.bootstrap_ci([0, 1], [0.2, 0.8], 0.5, n_boot=0)
