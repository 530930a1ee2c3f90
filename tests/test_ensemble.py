"""Ensemblers: the one-model ensemble, hand-computed fusion, fit data only, JSON round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

import covidzoo
from covidzoo import metrics
from covidzoo.ensemble import create_ensembler, load_ensembler
from covidzoo.errors import BadInputError, UnknownComponentError

METHODS = ["mean", "weighted", "rank", "stacking"]


def members(n: int, seed: int, quality=(2.0, 1.0, 0.0)):
    """Labels and `n x len(quality)` probabilities; member i separates the classes by quality[i]."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    logits = np.stack([q * (2 * labels - 1) + rng.normal(size=n) for q in quality], axis=1)
    return labels, 1 / (1 + np.exp(-logits))


@pytest.fixture
def val():
    return members(120, seed=0)


@pytest.fixture
def test():
    return members(60, seed=1)


def test_builtins_are_registered():
    assert set(METHODS) <= set(covidzoo.list_models(kind="ensembler"))
    assert covidzoo.get_component("mean", "ensembler").plugin == "covidzoo.ensemblers"


@pytest.mark.parametrize("method", METHODS)
def test_one_model_ensemble_keeps_its_order(method, val, test):
    (yv, pv), (yt, pt) = val, test
    ens = create_ensembler(method).fit(pv[:, :1], yv)
    fused = ens.predict(pt[:, :1])
    assert fused.shape == (60,) and ((fused >= 0) & (fused <= 1)).all()
    order = np.argsort(pt[:, 0])
    assert (np.diff(fused[order]) > 0).all()  # strictly increasing with the member's score
    assert roc_auc_score(yt, fused) == pytest.approx(roc_auc_score(yt, pt[:, 0]), abs=1e-12)


@pytest.mark.parametrize("method", ["mean", "weighted"])
def test_one_model_average_is_the_model(method, val):
    labels, probs = val
    ens = create_ensembler(method).fit(probs[:, :1], labels)
    np.testing.assert_allclose(ens.predict(probs[:, :1]), probs[:, 0], atol=1e-12)


def test_mean_is_the_hand_computed_mean():
    probs = [[0.2, 0.4, 0.9], [1.0, 0.0, 0.5]]
    fused = create_ensembler("mean").predict(probs)
    np.testing.assert_allclose(fused, [0.5, 0.5], atol=1e-15)


def test_weighted_weights_are_on_the_simplex_and_favour_the_good_member(val):
    labels, probs = val
    w = create_ensembler("weighted").fit(probs, labels).weights
    assert (w >= 0).all() and w.sum() == pytest.approx(1, abs=1e-12)
    assert w[0] > w[1] > w[2] - 1e-9 and w[2] < 0.05  # member 2 is noise


def test_weighted_shrinks_towards_equal_weights_on_little_data():
    """Unregularised, 48 scans put all weight on the best member; the default penalty keeps
    every useful member in, and it matters less the more scans there are."""
    labels, probs = members(48, seed=0)
    free = create_ensembler("weighted", l2=0.0).fit(probs, labels).weights
    shrunk = create_ensembler("weighted").fit(probs, labels).weights
    equal = np.full(3, 1 / 3)
    assert free[0] > 0.99
    assert np.abs(shrunk - equal).sum() < np.abs(free - equal).sum() - 0.3
    assert shrunk[1] > 0.1 and shrunk.sum() == pytest.approx(1, abs=1e-12)
    many_labels, many = members(1000, seed=0)
    assert create_ensembler("weighted").fit(many, many_labels).weights[0] > 0.99
    with pytest.raises(BadInputError, match="l2 >= 0"):
        create_ensembler("weighted", l2=-1.0)


@pytest.mark.parametrize("method", ["weighted", "stacking"])
def test_fit_uses_only_the_fit_data(method, val, test):
    (yv, pv), (yt, pt) = val, test
    ens = create_ensembler(method).fit(pv, yv)
    state = json.dumps(ens.to_dict())
    before = ens.predict(pv)
    # Test data where member 2 is the perfect one: predicting it changes nothing learned ...
    flipped = pt.copy()
    flipped[:, 2] = yt
    ens.predict(flipped)
    assert json.dumps(ens.to_dict()) == state
    np.testing.assert_array_equal(ens.predict(pv), before)
    # ... and the same fit data give the same ensembler, whatever else exists.
    assert json.dumps(create_ensembler(method).fit(pv, yv).to_dict()) == state


def test_stacking_equals_sklearn_logistic_regression(val, test):
    (yv, pv), (_, pt) = val, test
    ens = create_ensembler("stacking").fit(pv, yv)
    logit = lambda p: np.log(p / (1 - p))  # noqa: E731
    expected = LogisticRegression().fit(logit(pv), yv).predict_proba(logit(pt))[:, 1]
    np.testing.assert_allclose(ens.predict(pt), expected, atol=1e-9)


def test_rank_is_the_validation_cdf():
    ens = create_ensembler("rank").fit([[0.2], [0.4], [0.6], [0.8]])
    # mid-rank CDF of the validation scores: 1/8, 3/8, 5/8, 7/8; interpolated between them
    np.testing.assert_allclose(ens.predict([[0.4], [0.5], [0.0], [1.0]]), [3 / 8, 1 / 2, 0, 1])
    # a single scan ranks the same alone or in a batch
    assert ens.predict([[0.5]])[0] == ens.predict([[0.1], [0.5], [0.9]])[1]


@pytest.mark.parametrize("method", METHODS)
def test_json_round_trip_predicts_identically(method, val, test):
    (yv, pv), (_, pt) = val, test
    ens = create_ensembler(method).fit(pv, yv)
    restored = load_ensembler(json.loads(json.dumps(ens.to_dict())))
    assert type(restored) is type(ens) and restored.to_dict() == ens.to_dict()
    np.testing.assert_array_equal(restored.predict(pt), ens.predict(pt))


def test_fusion_threshold_comes_from_validation(val, test):
    (yv, pv), (yt, pt) = val, test
    ens = create_ensembler("mean").fit(pv, yv)
    threshold = metrics.youden_threshold(yv, ens.predict(pv))
    report = metrics.binary_report(yt, ens.predict(pt), threshold)
    assert report["auc"] > 0.8 and report["threshold"] == threshold


@pytest.mark.parametrize(
    ("method", "probs", "labels", "match"),
    [
        ("weighted", [[0.1], [0.9]], [1, 1], "both classes"),
        ("stacking", [[0.1], [0.9]], None, "needs labels"),
        ("mean", [[0.1], [1.5]], None, "within"),
        ("rank", [[0.1, float("nan")]], None, "finite"),
    ],
)
def test_bad_fit_input(method, probs, labels, match):
    with pytest.raises(BadInputError, match=match):
        create_ensembler(method).fit(probs, labels)


def test_predict_checks_the_member_count_and_the_fit(val):
    labels, probs = val
    with pytest.raises(BadInputError, match="3 members, got 2"):
        create_ensembler("mean").fit(probs, labels).predict(probs[:, :2])
    with pytest.raises(BadInputError, match="must be fit"):
        create_ensembler("stacking").predict(probs)


def test_load_rejects_bad_descriptions():
    with pytest.raises(UnknownComponentError, match="unknown ensembler 'median'"):
        load_ensembler({"method": "median"})
    with pytest.raises(BadInputError, match="'method' name"):
        load_ensembler({"weights": [1.0]})
