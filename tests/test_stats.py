"""covidzoo.stats against references: DeLong et al. (1988) written out with its O(m x n)
structural components, scikit-learn and scipy, and hand computations on tiny data."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.special import expit, softmax
from scipy.stats import binomtest, norm
from sklearn.metrics import brier_score_loss, roc_auc_score

from covidzoo import stats
from covidzoo.errors import BadInputError

# --- DeLong ------------------------------------------------------------------------------------


def psi(x: float, y: float) -> float:
    """The Mann-Whitney kernel: 1 if the covid scan scores higher, 1/2 on a tie, else 0."""
    return 1.0 if x > y else 0.5 if x == y else 0.0


def reference_delong(labels, *score_sets):
    """DeLong, DeLong & Clarke-Pearson (1988), section 2, as written: for each score set r,
    V10(X_i) = (1/n) sum_j psi(X_i, Y_j), V01(Y_j) = (1/m) sum_i psi(X_i, Y_j), AUC_r the mean
    of psi; S10[r, s] = sum_i (V10_r(X_i) - AUC_r)(V10_s(X_i) - AUC_s) / (m - 1), S01 likewise
    over the non-covid scans with n - 1; S = S10 / m + S01 / n. Returns (aucs, S)."""
    labels = np.asarray(labels)
    xs = [np.asarray(s, dtype=float)[labels == 1] for s in score_sets]
    ys = [np.asarray(s, dtype=float)[labels == 0] for s in score_sets]
    m, n, k = len(xs[0]), len(ys[0]), len(score_sets)
    v10 = np.zeros((k, m))
    v01 = np.zeros((k, n))
    aucs = np.zeros(k)
    for r in range(k):
        for i in range(m):
            for j in range(n):
                kernel = psi(xs[r][i], ys[r][j])
                v10[r, i] += kernel / n
                v01[r, j] += kernel / m
                aucs[r] += kernel / (m * n)
    s10 = np.zeros((k, k))
    s01 = np.zeros((k, k))
    for r in range(k):
        for s in range(k):
            s10[r, s] = sum((v10[r, i] - aucs[r]) * (v10[s, i] - aucs[s])
                            for i in range(m)) / (m - 1)
            s01[r, s] = sum((v01[r, j] - aucs[r]) * (v01[s, j] - aucs[s])
                            for j in range(n)) / (n - 1)
    return aucs, s10 / m + s01 / n


def tied_scores(rng: np.random.Generator, labels: np.ndarray, levels: int) -> np.ndarray:
    """Scores on a coarse grid (many ties), higher for covid scans on average."""
    return np.round((rng.normal(size=len(labels)) + labels) * levels / 4) / levels


@pytest.mark.parametrize("seed,n,levels", [(0, 40, 3), (1, 61, 5), (2, 25, 1), (3, 90, 20)])
def test_delong_variance_equals_the_1988_reference_on_tied_data(seed, n, levels):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[:2], labels[2:4] = 0, 1
    scores = tied_scores(rng, labels, levels)
    assert len(np.unique(scores)) < n / 2  # many ties
    auc, variance = stats.delong_auc_variance(labels, scores)
    ref_aucs, ref_cov = reference_delong(labels, scores)
    assert auc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)
    assert auc == pytest.approx(ref_aucs[0], abs=1e-9)
    assert variance == pytest.approx(ref_cov[0, 0], abs=1e-9)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_delong_test_covariance_and_z_equal_the_reference(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 50)
    a = tied_scores(rng, labels, 3)
    b = np.round(a + rng.normal(scale=0.5, size=50), 1)  # correlated with a, tied too
    test = stats.delong_test(labels, a, b)
    ref_aucs, ref_cov = reference_delong(labels, a, b)
    np.testing.assert_allclose(test.covariance, ref_cov, rtol=0, atol=1e-9)
    assert (test.auc_a, test.auc_b) == pytest.approx(
        (roc_auc_score(labels, a), roc_auc_score(labels, b)), abs=1e-9)
    se = math.sqrt(ref_cov[0, 0] + ref_cov[1, 1] - 2 * ref_cov[0, 1])
    diff = ref_aucs[0] - ref_aucs[1]
    assert test.difference == pytest.approx(diff, abs=1e-9)
    assert test.se == pytest.approx(se, abs=1e-9)
    assert test.z == pytest.approx(diff / se, abs=1e-7)
    assert test.p == pytest.approx(2 * norm.sf(abs(diff / se)), abs=1e-9)
    assert test.ci == pytest.approx((diff - 1.959964 * se, diff + 1.959964 * se), abs=1e-6)
    assert test.to_dict()["covariance"] == [list(r) for r in test.covariance]


def test_delong_ci_is_the_normal_interval_clipped_to_0_1():
    rng = np.random.default_rng(5)
    labels = np.repeat([0, 1], 30)
    scores = tied_scores(rng, labels, 4)
    auc, variance = stats.delong_auc_variance(labels, scores)
    low, high = stats.delong_ci(labels, scores, level=0.9)
    half = norm.ppf(0.95) * math.sqrt(variance)
    assert (low, high) == pytest.approx((auc - half, auc + half), abs=1e-12)
    # nearly separated on few scans: the upper bound would pass 1
    labels = np.array([0, 0, 0, 1, 1, 1])
    scores = np.array([0.1, 0.2, 0.75, 0.7, 0.8, 0.9])
    auc, variance = stats.delong_auc_variance(labels, scores)
    assert auc + 1.96 * math.sqrt(variance) > 1
    assert stats.delong_ci(labels, scores)[1] == 1.0


def test_the_same_scores_twice_differ_by_0_with_p_1():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 40)
    scores = tied_scores(rng, labels, 3)
    test = stats.delong_test(labels, scores, scores)
    assert test.difference == 0 and test.se == 0 and test.z is None and test.p == 1.0


# --- McNemar -----------------------------------------------------------------------------------


def outcomes(b: int, c: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    """Correctness of A and B: `b` scans only A got right, `c` only B, and the rest."""
    a = [True] * b + [False] * c + [True] * both + [False] * neither
    bb = [False] * b + [True] * c + [True] * both + [False] * neither
    return np.array(a), np.array(bb)


@pytest.mark.parametrize("b,c", [(3, 9), (0, 5), (12, 12), (20, 35), (40, 10)])
def test_mcnemar_equals_the_binomial_and_the_corrected_chi_square(b, c):
    from scipy.stats import chi2

    correct_a, correct_b = outcomes(b, c, 30, 7)
    test = stats.mcnemar(correct_a, correct_b)
    assert (test.b, test.c, test.n) == (b, c, b + c + 37)
    assert test.p_exact == pytest.approx(binomtest(b, b + c, 0.5).pvalue, abs=1e-12)
    statistic = max(abs(b - c) - 1, 0) ** 2 / (b + c)
    assert test.chi2 == pytest.approx(statistic, abs=1e-12)
    assert test.p_chi2 == pytest.approx(chi2.sf(statistic, 1), abs=1e-12)
    exact = b + c < 25
    assert test.method == ("exact" if exact else "chi2")
    assert test.p == (test.p_exact if exact else test.p_chi2)
    # 0/1 integers read as booleans
    assert stats.mcnemar(correct_a.astype(int), correct_b.astype(int)) == test


def test_mcnemar_without_discordant_scans_has_p_1():
    correct = np.array([True, False, True])
    test = stats.mcnemar(correct, correct)
    assert (test.b, test.c, test.p, test.p_exact, test.p_chi2) == (0, 0, 1.0, 1.0, 1.0)


# --- paired bootstrap --------------------------------------------------------------------------


def hand_bootstrap(labels, a, b, n_boot, seed, auc):
    """The resamples `stats` draws (one n_boot x n draw from default_rng(seed)), each scored by
    scikit-learn; resamples lacking a class are skipped."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(labels), size=(n_boot, len(labels)))
    diffs = [auc(labels[i], a[i]) - auc(labels[i], b[i]) for i in idx
             if len(np.unique(labels[i])) == len(np.unique(labels))]
    return np.array(diffs)


def macro_auc(y, p):
    return np.mean([roc_auc_score(y == k, p[:, k]) for k in np.unique(y)])


def test_paired_bootstrap_difference_equals_a_hand_loop_binary():
    rng = np.random.default_rng(7)
    labels = np.array([0, 1, 0, 0, 1, 0])  # 6 scans: about 9% of resamples hold no covid scan
    a = tied_scores(rng, labels, 2)
    b = rng.random(6)
    got = stats.paired_bootstrap_auc_difference(labels, a, b, n_boot=300, seed=11, level=0.9)
    diffs = hand_bootstrap(labels, a, b, 300, 11, roc_auc_score)
    assert got.skipped == 300 - len(diffs) > 0
    assert got.difference == pytest.approx(roc_auc_score(labels, a) - roc_auc_score(labels, b),
                                           abs=1e-12)
    assert got.ci == pytest.approx(tuple(np.percentile(diffs, [5, 95])), abs=1e-12)
    assert got.p == pytest.approx(min(1, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    # the single-model interval uses the same resamples
    single = stats.bootstrap_auc_ci(labels, a, n_boot=300, seed=11, level=0.9)
    assert single.skipped == got.skipped and single.auc == got.auc_a


def test_paired_bootstrap_difference_equals_a_hand_loop_multiclass():
    rng = np.random.default_rng(8)
    labels = np.array([0, 1, 2] * 5)
    a = softmax(rng.normal(size=(15, 3)) + 2 * np.eye(3)[labels], axis=1)
    b = rng.dirichlet(np.ones(3), 15)
    got = stats.paired_bootstrap_auc_difference(labels, a, b, n_boot=100, seed=3)
    diffs = hand_bootstrap(labels, a, b, 100, 3, macro_auc)
    assert got.difference == pytest.approx(macro_auc(labels, a) - macro_auc(labels, b), abs=1e-12)
    assert got.skipped == 100 - len(diffs)
    assert got.ci == pytest.approx(tuple(np.percentile(diffs, [2.5, 97.5])), abs=1e-12)


def test_paired_bootstrap_of_one_model_twice_is_0_with_p_1():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, 30)
    scores = rng.random(30)
    got = stats.paired_bootstrap_auc_difference(labels, scores, scores, n_boot=200)
    assert (got.difference, got.ci, got.p) == (0.0, (0.0, 0.0), 1.0)
    assert got.to_dict()["ci"] == [0.0, 0.0]


# --- calibration -------------------------------------------------------------------------------


def test_ece_by_hand_binary_uniform_and_quantile():
    labels = [0, 0, 1, 1]
    probs = [0.1, 0.2, 0.3, 0.9]
    # uniform, 2 bins [0, 0.5] and (0.5, 1]: {0.1, 0.2, 0.3} (mean 0.2, 1/3 covid) and {0.9}
    uniform = abs(1 / 3 - 0.2) * 3 / 4 + abs(1 - 0.9) * 1 / 4
    assert stats.expected_calibration_error(labels, probs, 2) == pytest.approx(uniform)
    # quantile, 2 bins split at the median 0.25: {0.1, 0.2} (no covid) and {0.3, 0.9} (all)
    quantile = abs(0 - 0.15) * 2 / 4 + abs(1 - 0.6) * 2 / 4
    assert stats.expected_calibration_error(labels, probs, 2, "quantile") == pytest.approx(
        quantile)
    curve = stats.reliability_curve(labels, probs, 2, "quantile")
    np.testing.assert_allclose(curve["confidence"], [0.15, 0.6])
    np.testing.assert_allclose(curve["observed"], [0.0, 1.0])
    assert curve["count"].tolist() == [2, 2] and curve["strategy"] == "quantile"


def test_ece_by_hand_top_label_multiclass_and_empty_bins_left_out():
    labels = [0, 0, 2]
    probs = [[0.7, 0.2, 0.1], [0.4, 0.5, 0.1], [0.2, 0.2, 0.6]]
    # top labels 0 (0.7, right), 1 (0.5, wrong), 2 (0.6, right)
    assert stats.expected_calibration_error(labels, probs, 2) == pytest.approx(
        abs(0 - 0.5) / 3 + abs(1 - 0.65) * 2 / 3)
    curve = stats.reliability_curve(labels, probs, 10)
    np.testing.assert_allclose(curve["confidence"], [0.5, 0.6, 0.7])
    np.testing.assert_allclose(curve["observed"], [0.0, 1.0, 1.0])
    assert curve["count"].tolist() == [1, 1, 1] and len(curve["edges"]) == 11


def test_brier_equals_scikit_learn_and_the_multiclass_sum():
    rng = np.random.default_rng(2)
    labels = rng.integers(0, 2, 100)
    probs = rng.random(100)
    assert stats.brier_score(labels, probs) == pytest.approx(brier_score_loss(labels, probs),
                                                             abs=1e-9)
    y = rng.integers(0, 3, 50)
    p = rng.dirichlet(np.ones(3), 50)
    by_hand = np.mean([sum((p[i, k] - (y[i] == k)) ** 2 for k in range(3)) for i in range(50)])
    assert stats.brier_score(y, p) == pytest.approx(by_hand, abs=1e-12)


def overconfident(rng, n, k=None, scale=4.0):
    """Labels drawn from true logits, and probabilities from the logits scaled by `scale`."""
    if k is None:
        logits = rng.normal(scale=1.5, size=n)
        labels = (rng.random(n) < expit(logits)).astype(int)
        return labels, expit(scale * logits)
    logits = rng.normal(scale=1.5, size=(n, k))
    true = softmax(logits, axis=1)
    labels = np.array([rng.choice(k, p=row) for row in true])
    return labels, softmax(scale * logits, axis=1)


@pytest.mark.parametrize("k", [None, 3])
def test_temperature_softens_overconfident_probabilities(k):
    rng = np.random.default_rng(4)
    labels, probs = overconfident(rng, 3000, k)
    t = stats.fit_temperature(labels, probs)
    assert 3.0 < t < 5.5  # the true factor is 4
    scaled = stats.apply_temperature(probs, t)
    for strategy in stats.CALIBRATION_STRATEGIES:
        assert (stats.expected_calibration_error(labels, scaled, strategy=strategy)
                < stats.expected_calibration_error(labels, probs, strategy=strategy) / 2)
    assert stats.brier_score(labels, scaled) < stats.brier_score(labels, probs)
    # the ranking and the most probable class do not move
    if k is None:
        assert roc_auc_score(labels, scaled) == pytest.approx(roc_auc_score(labels, probs))
    else:
        assert (scaled.argmax(axis=1) == probs.argmax(axis=1)).all()


@pytest.mark.parametrize("k", [None, 4])
def test_temperature_1_is_the_identity(k):
    rng = np.random.default_rng(0)
    probs = rng.random(20) if k is None else rng.dirichlet(np.ones(k), 20)
    np.testing.assert_allclose(stats.apply_temperature(probs, 1.0), probs, rtol=0, atol=1e-12)


def test_a_calibrated_model_keeps_temperature_near_1():
    rng = np.random.default_rng(6)
    labels, probs = overconfident(rng, 4000, scale=1.0)
    assert stats.fit_temperature(labels, probs) == pytest.approx(1.0, abs=0.15)


# --- bad input ---------------------------------------------------------------------------------

Y = np.array([0, 1, 0, 1, 1, 0])
P = np.array([0.1, 0.8, 0.3, 0.6, 0.9, 0.4])
NAN = np.where(np.arange(6) == 2, np.nan, P)


@pytest.mark.parametrize("call,needle", [
    (lambda: stats.delong_auc_variance(Y, NAN), "finite"),
    (lambda: stats.delong_auc_variance(Y, P[:5]), "6 labels but 5"),
    (lambda: stats.delong_auc_variance(np.ones(6, int), P), "one class"),
    (lambda: stats.delong_ci(np.zeros(6, int), P), "one class"),
    (lambda: stats.delong_auc_variance([0, 1, 1], [0.1, 0.2, 0.3]), "at least 2 scans"),
    (lambda: stats.delong_test(Y, P, NAN), "finite"),
    (lambda: stats.delong_test(Y, P, P[:4]), "6 labels but 4"),
    (lambda: stats.delong_ci(Y, P, level=1.5), "confidence level"),
    (lambda: stats.mcnemar([1, 0, 1], [1, 0]), "3 outcomes for A but 2"),
    (lambda: stats.mcnemar([1, np.nan], [1, 0]), "booleans"),
    (lambda: stats.paired_bootstrap_auc_difference(Y, P, NAN, 10), "finite"),
    (lambda: stats.paired_bootstrap_auc_difference(np.ones(6, int), P, P, 10), "one class"),
    (lambda: stats.paired_bootstrap_auc_difference(Y, P, P, 0), "resamples"),
    (lambda: stats.paired_bootstrap_auc_difference(Y, P, np.ones((6, 2)) / 2, 10), "all"),
    (lambda: stats.bootstrap_auc_ci(np.zeros(3, int), np.eye(3), 10), "one class"),
    (lambda: stats.expected_calibration_error(Y, NAN), "finite"),
    (lambda: stats.expected_calibration_error(Y, P[:3]), "6 labels but 3"),
    (lambda: stats.expected_calibration_error(Y, P, strategy="equal"), "uniform or quantile"),
    (lambda: stats.expected_calibration_error(Y, P + 1), "within [0, 1]"),
    (lambda: stats.brier_score(Y, NAN), "finite"),
    (lambda: stats.fit_temperature(Y, NAN), "finite"),
    (lambda: stats.apply_temperature(P, 0.0), "positive"),
    (lambda: stats.apply_temperature(NAN, 2.0), "finite"),
])
def test_bad_input_is_one_line(call, needle):
    with pytest.raises(BadInputError) as caught:
        call()
    message = str(caught.value)
    assert needle in message and "\n" not in message
