"""Statistics a reviewer asks for: confidence intervals and tests of AUCs, paired tests of two
classifiers on the same scans, calibration, temperature scaling.

numpy and scipy only (scikit-learn where a function says so). Conventions are those of
`covidzoo.metrics`: binary labels are 1 (covid) and 0 (non-covid) and a binary model's scores
are covid probabilities (`n`); a model of K classes gives `n x K` class probabilities and labels
are class indices (`covidzoo.multiclass_metrics`). Bad input (NaN, lengths that differ, one
class where an AUC needs two) raises `BadInputError` with a one-line message.

References:

- DeLong E.R., DeLong D.M., Clarke-Pearson D.L. (1988). Comparing the areas under two or more
  correlated receiver operating characteristic curves: a nonparametric approach. Biometrics
  44(3):837-845.
- Sun X., Xu W. (2014). Fast implementation of DeLong's algorithm for comparing the areas under
  correlated receiver operating characteristic curves. IEEE Signal Processing Letters
  21(11):1389-1393.
- McNemar Q. (1947). Note on the sampling error of the difference between correlated
  proportions or percentages. Psychometrika 12(2):153-157; Edwards A.L. (1948), the continuity
  correction; Fagerland M.W., Lydersen S., Laake P. (2013). The McNemar test for binary
  matched-pairs data: mid-p and asymptotic are better than exact conditional. BMC Medical
  Research Methodology 13:91.
- Efron B., Tibshirani R.J. (1993). An Introduction to the Bootstrap. Chapman & Hall
  (percentile intervals, paired resampling).
- Brier G.W. (1950). Verification of forecasts expressed in terms of probability. Monthly
  Weather Review 78(1):1-3.
- Naeini M.P., Cooper G., Hauskrecht M. (2015). Obtaining well calibrated probabilities using
  Bayesian binning. AAAI (the expected calibration error);
  Guo C., Pleiss G., Sun Y., Weinberger K.Q. (2017). On calibration of modern neural networks.
  ICML (top-label ECE, reliability diagrams, temperature scaling).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any, TypedDict

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import BadInputError
from .metrics import check_binary
from .multiclass_metrics import check_multiclass

# Scores of bootstrap resamples held at once (rows x scans x classes): ~16 MB per array.
_BOOTSTRAP_CELLS = 2_000_000
# Probabilities are clipped to [LOGIT_EPS, 1 - LOGIT_EPS] before they become logits (the
# exported graph of a temperature, `export.Tempered`, clips the same).
LOGIT_EPS = 1e-12
# The range of temperatures `fit_temperature` searches.
T_MIN, T_MAX = 0.05, 20.0
# McNemar: below this many discordant pairs the exact binomial p is the reported one.
MCNEMAR_EXACT_BELOW = 25
CALIBRATION_STRATEGIES = ("uniform", "quantile")


def _z(level: float) -> float:
    from scipy.stats import norm

    if not 0 < level < 1:
        raise BadInputError(f"the confidence level must be between 0 and 1, got {level}")
    return float(norm.ppf((1 + level) / 2))


def _two_class(y: NDArray[np.int64], what: str = "AUC") -> None:
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        side = "no covid" if n_pos == 0 else "no non-covid"
        raise BadInputError(f"{what} undefined: {side} scans in the data (one class only)")


# --- DeLong ------------------------------------------------------------------------------------


def _midranks(x: NDArray[np.float64]) -> NDArray[np.float64]:
    """Midranks along the last axis (1-based; tied values share the mean of their ranks)."""
    from scipy.stats import rankdata

    return rankdata(x, axis=-1)


def _structural_components(
    y: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """AUCs and DeLong's structural components of `k x n` scores, by Sun & Xu's midranks.

    With m covid scans X and n non-covid scans Y, and psi(x, y) = 1 if x > y, 1/2 if x = y,
    else 0 (the Mann-Whitney kernel), DeLong et al. define V10(X_i) = mean_j psi(X_i, Y_j) and
    V01(Y_j) = mean_i psi(X_i, Y_j). Sun & Xu get both from midranks in O((m + n) log(m + n)):
    with T_Z the midranks among all scans, T_X among the covid ones and T_Y among the others,
    V10(X_i) = (T_Z(X_i) - T_X(X_i)) / n and V01(Y_j) = 1 - (T_Z(Y_j) - T_Y(Y_j)) / m.
    Returns `(auc (k), v10 (k x m), v01 (k x n))`.
    """
    pos, neg = scores[:, y == 1], scores[:, y == 0]
    m, n = pos.shape[1], neg.shape[1]
    tz = _midranks(np.concatenate([pos, neg], axis=1))
    v10 = (tz[:, :m] - _midranks(pos)) / n
    v01 = 1.0 - (tz[:, m:] - _midranks(neg)) / m
    return v10.mean(axis=1), v10, v01


def _delong_covariance(
    y: NDArray[np.int64], scores: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`(aucs (k), covariance (k x k))`: DeLong's S = S10 / m + S01 / n, where S10 and S01 are
    the sample covariances (divisor m - 1 and n - 1) of the structural components."""
    aucs, v10, v01 = _structural_components(y, scores)
    m, n = v10.shape[1], v01.shape[1]
    if m < 2 or n < 2:
        raise BadInputError(f"DeLong's variance needs at least 2 scans of each class, got {m} "
                            f"covid and {n} non-covid")
    cov = np.atleast_2d(np.cov(v10)) / m + np.atleast_2d(np.cov(v01)) / n
    return aucs, cov


def _check_scores(labels: ArrayLike, *scores: ArrayLike) -> tuple[NDArray[np.int64],
                                                                   NDArray[np.float64]]:
    """Binary labels and `k x n` scores, each checked by `check_binary`; both classes needed."""
    checked = [check_binary(labels, s) for s in scores]
    y = checked[0][0]
    _two_class(y)
    return y, np.stack([p for _, p in checked])


def delong_auc_variance(labels: ArrayLike, scores: ArrayLike) -> tuple[float, float]:
    """`(auc, variance)`: the ROC AUC and DeLong et al.'s (1988) nonparametric estimate of its
    variance, computed by Sun & Xu's (2014) fast midrank algorithm (ties count 1/2, as in the
    Mann-Whitney statistic; the AUC equals scikit-learn's `roc_auc_score`).

    Needs both classes and at least two scans of each (the variance of the structural
    components divides by m - 1 and n - 1).
    """
    y, p = _check_scores(labels, scores)
    aucs, cov = _delong_covariance(y, p)
    return float(aucs[0]), float(cov[0, 0])


def delong_ci(labels: ArrayLike, scores: ArrayLike, level: float = 0.95) -> tuple[float, float]:
    """The `level` confidence interval of the ROC AUC: AUC -/+ z * sqrt(DeLong variance) (the
    normal approximation of DeLong et al. 1988, as pROC's `ci.auc(method="delong")` gives it),
    clipped to [0, 1]."""
    z = _z(level)
    auc, variance = delong_auc_variance(labels, scores)
    half = z * math.sqrt(max(variance, 0.0))
    return max(0.0, auc - half), min(1.0, auc + half)


@dataclass(frozen=True)
class DeLongTest:
    """DeLong's test of two correlated ROC AUCs (two models scored on the same scans).

    `difference` is `auc_a - auc_b`; `covariance` the 2 x 2 DeLong covariance of the two AUCs;
    `se` the standard error of the difference, sqrt(S_aa + S_bb - 2 S_ab); `z` = difference /
    se and `p` its two-sided normal p-value; `ci` the `level` interval of the difference
    (difference -/+ z_level * se, not clipped). When `se` is 0 (the two score sets order the
    scans alike, e.g. the same model twice) `z` is None and `p` is 1 if the difference is 0,
    else 0.
    """

    auc_a: float
    auc_b: float
    difference: float
    covariance: tuple[tuple[float, float], tuple[float, float]]
    se: float
    z: float | None
    p: float
    ci: tuple[float, float]
    level: float

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["covariance"] = [list(row) for row in self.covariance]
        out["ci"] = list(self.ci)
        return out


def delong_test(labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike,
                level: float = 0.95) -> DeLongTest:
    """DeLong et al.'s (1988) test that two correlated ROC curves (two score sets for the same
    scans) have equal AUCs: z = (AUC_a - AUC_b) / sqrt(var_a + var_b - 2 cov_ab), two-sided
    p = 2 (1 - Phi(|z|)); the covariance by Sun & Xu's (2014) midrank algorithm. pROC's
    `roc.test(method="delong")` computes the same z."""
    from scipy.stats import norm

    z_level = _z(level)
    y, p = _check_scores(labels, scores_a, scores_b)
    aucs, cov = _delong_covariance(y, p)
    diff = float(aucs[0] - aucs[1])
    se = math.sqrt(max(float(cov[0, 0] + cov[1, 1] - 2 * cov[0, 1]), 0.0))
    if se > 0:
        z: float | None = diff / se
        p_value = float(2 * norm.sf(abs(diff / se)))
    else:
        z, p_value = None, 1.0 if diff == 0 else 0.0
    return DeLongTest(
        auc_a=float(aucs[0]), auc_b=float(aucs[1]), difference=diff,
        covariance=((float(cov[0, 0]), float(cov[0, 1])), (float(cov[1, 0]), float(cov[1, 1]))),
        se=se, z=z, p=p_value, ci=(diff - z_level * se, diff + z_level * se), level=level)


# --- McNemar -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class McNemar:
    """McNemar's test of two classifiers' correctness on the same scans.

    `b`: scans A got right and B wrong; `c`: the reverse; `n`: all scans. `p_exact` is the
    exact two-sided binomial p of b among b + c discordant scans at 1/2 (the conditional exact
    test); `chi2` = (max(|b - c| - 1, 0))^2 / (b + c), Edwards' continuity-corrected statistic,
    with `p_chi2` its chi-square (1 df) p. `p` is the reported one, named by `method`: "exact"
    when b + c < 25 (`MCNEMAR_EXACT_BELOW`), where the chi-square approximation is poor, else
    "chi2". With no discordant scan both p are 1 and `chi2` is 0.
    """

    b: int
    c: int
    n: int
    p_exact: float
    chi2: float
    p_chi2: float
    p: float
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _as_bool(name: str, values: ArrayLike) -> NDArray[np.bool_]:
    a = np.asarray(values)
    if a.ndim != 1:
        raise BadInputError(f"{name} must be 1-D, got shape {a.shape}")
    if a.dtype != bool and not np.isin(a, (0, 1)).all():
        raise BadInputError(f"{name} must be booleans or 0/1 (correct or not)")
    return a.astype(bool)


def mcnemar(correct_a: ArrayLike, correct_b: ArrayLike) -> McNemar:
    """McNemar's (1947) test that two classifiers are right equally often on the same scans,
    from whether each got each scan right (`correct_a`, `correct_b`: booleans or 0/1).

    Both p-values are returned; `p` is the exact binomial one (scipy's `binomtest`) when there
    are fewer than 25 discordant scans, else the continuity-corrected chi-square one.
    """
    from scipy.stats import binomtest, chi2

    a, b_ok = _as_bool("correct_a", correct_a), _as_bool("correct_b", correct_b)
    if len(a) != len(b_ok):
        raise BadInputError(f"{len(a)} outcomes for A but {len(b_ok)} for B")
    if not len(a):
        raise BadInputError("no scans to compare")
    b, c = int((a & ~b_ok).sum()), int((~a & b_ok).sum())
    if b + c == 0:
        p_exact, stat, p_chi2 = 1.0, 0.0, 1.0
    else:
        p_exact = float(binomtest(b, b + c, 0.5).pvalue)
        stat = max(abs(b - c) - 1, 0) ** 2 / (b + c)
        p_chi2 = float(chi2.sf(stat, 1))
    exact = b + c < MCNEMAR_EXACT_BELOW
    return McNemar(b=b, c=c, n=len(a), p_exact=p_exact, chi2=float(stat), p_chi2=p_chi2,
                   p=p_exact if exact else p_chi2, method="exact" if exact else "chi2")


# --- paired bootstrap --------------------------------------------------------------------------


def _check_auc_inputs(labels: ArrayLike, scores: Sequence[ArrayLike]
                      ) -> tuple[NDArray[np.int64], list[NDArray[np.float64]]]:
    """Labels and score sets for AUCs: all binary (`n`) or all of K classes (`n x K`)."""
    arrays = [np.asarray(s, dtype=np.float64) for s in scores]
    if len({a.ndim for a in arrays}) > 1 or arrays[0].ndim not in (1, 2):
        raise BadInputError("scores must all be covid probabilities (n) or all class "
                            "probabilities (n x K)")
    if arrays[0].ndim == 1:
        y, stacked = _check_scores(labels, *arrays)
        return y, list(stacked)
    checked = [check_multiclass(labels, a, arrays[0].shape[1]) for a in arrays]
    y = checked[0][0]
    present = np.unique(y)
    if len(present) < 2:
        raise BadInputError("macro AUC undefined: one class only in the data")
    return y, [p for _, p in checked]


def _auc_rows(y: NDArray[np.bool_], p: NDArray[np.float64]) -> NDArray[np.float64]:
    """ROC AUC of each row (the Mann-Whitney U with midranks) of `rows x n` labels and scores;
    every row holds both classes."""
    n_pos = y.sum(axis=-1)
    u = (_midranks(p) * y).sum(axis=-1) - n_pos * (n_pos + 1) / 2
    return u / (n_pos * (y.shape[-1] - n_pos))


def _bootstrap_aucs(y: NDArray[np.int64], scores: list[NDArray[np.float64]], n_boot: int,
                    seed: int) -> tuple[NDArray[np.float64], int]:
    """`(AUCs (kept resamples x models), skipped)`: the AUC (binary) or macro one-vs-rest AUC
    over the classes of the data (K classes) of each score set on the same resamples of scans.

    Indices come from `numpy.random.default_rng(seed)` in chunks whose size depends only on the
    number of scans, so the same `(n, n_boot, seed)` gives the same resamples whatever the
    models. A resample lacking a class of the data is skipped and counted.
    """
    n = len(y)
    multiclass = scores[0].ndim == 2
    classes = np.unique(y) if multiclass else np.array([1])
    # a class held by every scan has no one-vs-rest AUC (macro_ovr_auc leaves it out too)
    classes = classes[[0 < (y == k).sum() < n for k in classes]]
    width = len(classes) * len(scores)
    rng = np.random.default_rng(seed)
    chunk = max(1, _BOOTSTRAP_CELLS // (n * width))
    kept: list[NDArray[np.float64]] = []
    skipped = 0
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        yb = y[idx]
        both = np.ones(len(idx), dtype=bool)
        for k in classes:
            count = (yb == k).sum(axis=1)
            both &= (count > 0) & (count < n)
        skipped += int((~both).sum())
        idx, yb = idx[both], yb[both]
        if not len(idx):
            continue
        if multiclass:
            aucs = [np.mean([_auc_rows(yb == k, s[idx, k]) for k in classes], axis=0)
                    for s in scores]
        else:
            aucs = [_auc_rows(yb == 1, s[idx]) for s in scores]
        kept.append(np.stack(aucs, axis=1))
    return (np.concatenate(kept) if kept else np.empty((0, len(scores)))), skipped


def _check_bootstrap(n_boot: int, level: float) -> None:
    if not isinstance(n_boot, (int, np.integer)) or isinstance(n_boot, bool) or n_boot < 1:
        raise BadInputError(f"the number of bootstrap resamples must be >= 1, got {n_boot}")
    _z(level)


def _point_auc(y: NDArray[np.int64], p: NDArray[np.float64]) -> float:
    if p.ndim == 1:
        return float(_auc_rows(y == 1, p))
    from .multiclass_metrics import macro_ovr_auc

    return float(macro_ovr_auc(y, p, p.shape[1]))


def _percentiles(values: NDArray[np.float64], level: float) -> tuple[float, float] | None:
    if not len(values):
        return None
    low, high = np.percentile(values, [100 * (1 - level) / 2, 100 * (1 + level) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class BootstrapAuc:
    """A percentile bootstrap interval of one AUC (macro one-vs-rest for K classes)."""

    auc: float
    ci: tuple[float, float] | None
    n_boot: int
    seed: int
    level: float
    skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": None if self.ci is None else list(self.ci)}


def bootstrap_auc_ci(labels: ArrayLike, scores: ArrayLike, n_boot: int = 1000, seed: int = 0,
                     level: float = 0.95) -> BootstrapAuc:
    """Percentile bootstrap interval (Efron & Tibshirani 1993) of the ROC AUC, or of the macro
    one-vs-rest AUC for `n x K` scores; the resamples of `paired_bootstrap_auc_difference` with
    the same seed. `ci` is None when every resample lacked a class."""
    _check_bootstrap(n_boot, level)
    y, (p,) = _check_auc_inputs(labels, [scores])
    samples, skipped = _bootstrap_aucs(y, [p], n_boot, seed)
    return BootstrapAuc(_point_auc(y, p), _percentiles(samples[:, 0], level), int(n_boot),
                        int(seed), float(level), skipped)


@dataclass(frozen=True)
class BootstrapDifference:
    """The paired bootstrap of AUC_a - AUC_b (macro one-vs-rest AUCs for K classes).

    `difference` is computed on the data; `ci` is the `level` percentile interval of the
    resampled differences; `p` the two-sided bootstrap p: twice the smaller share of resampled
    differences on either side of 0 (<= 0 or >= 0), at most 1: the smallest `1 - level` whose
    percentile interval just reaches 0. Its resolution is 2 / (kept resamples); a `p` of 0 means
    below that. `skipped` counts resamples lacking a class; `ci` and `p` are None when all did.
    """

    auc_a: float
    auc_b: float
    difference: float
    ci: tuple[float, float] | None
    p: float | None
    n_boot: int
    seed: int
    level: float
    skipped: int

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ci": None if self.ci is None else list(self.ci)}


def paired_bootstrap_auc_difference(
    labels: ArrayLike, scores_a: ArrayLike, scores_b: ArrayLike, n_boot: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> BootstrapDifference:
    """Paired percentile bootstrap of the AUC difference of two models on the same scans.

    Scans are resampled with replacement `n_boot` times (`numpy.random.default_rng(seed)`) and
    both models are scored on each resample, so their correlation is kept (Efron & Tibshirani
    1993; pROC's `roc.test(method="bootstrap")` resamples the same way). Binary scores (`n`)
    give the ROC AUC; `n x K` scores the macro one-vs-rest AUC over the classes of the data, a
    resample lacking one of them skipped.
    """
    _check_bootstrap(n_boot, level)
    y, (a, b) = _check_auc_inputs(labels, [scores_a, scores_b])
    samples, skipped = _bootstrap_aucs(y, [a, b], n_boot, seed)
    auc_a, auc_b = _point_auc(y, a), _point_auc(y, b)
    diffs = samples[:, 0] - samples[:, 1]
    p = None
    if len(diffs):
        p = float(min(1.0, 2 * min(np.mean(diffs <= 0), np.mean(diffs >= 0))))
    return BootstrapDifference(auc_a, auc_b, auc_a - auc_b, _percentiles(diffs, level), p,
                               int(n_boot), int(seed), float(level), skipped)


# --- calibration -------------------------------------------------------------------------------


def _calibration_inputs(labels: ArrayLike, probs: ArrayLike
                        ) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    """Checked labels and probabilities (`n` covid probabilities or `n x K` class ones), each
    within [0, 1]."""
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 2:
        y, p = check_multiclass(labels, p)
    else:
        y, p = check_binary(labels, p)
    if ((p < 0) | (p > 1)).any():
        raise BadInputError("probabilities must lie within [0, 1]")
    return y, p


def _confidence(y: NDArray[np.int64], p: NDArray[np.float64]
                ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """`(confidence, outcome)` per scan: binary, the covid probability and whether the scan is
    covid; K classes, the top-label probability and whether the top label is right."""
    if p.ndim == 1:
        return p, y.astype(np.float64)
    return p.max(axis=1), (p.argmax(axis=1) == y).astype(np.float64)


class ReliabilityCurve(TypedDict):
    """The points of a reliability diagram, per non-empty bin in order of confidence:
    `confidence` the mean confidence, `observed` the observed frequency (binary: the share of
    covid scans; K classes: the accuracy of the top label), `count` the number of scans;
    `edges` the `n_bins + 1` bin edges (quantile edges may repeat) and `strategy` the binning."""

    confidence: NDArray[np.float64]
    observed: NDArray[np.float64]
    count: NDArray[np.int64]
    edges: NDArray[np.float64]
    strategy: str


def reliability_curve(labels: ArrayLike, probs: ArrayLike, n_bins: int = 15,
                      strategy: str = "uniform") -> ReliabilityCurve:
    """The reliability diagram's points (Guo et al. 2017): scans binned by confidence.

    `strategy` "uniform": `n_bins` equal-width bins of [0, 1]; "quantile": edges at the
    confidences' quantiles, so bins hold about as many scans (tied confidences share a bin).
    As in scikit-learn's `calibration_curve`, a bin is (lower, upper], the first [0, upper].
    Binary `probs` (`n`) bin the covid probability against the share of covid scans; `n x K`
    probabilities bin the top-label confidence against its accuracy.
    """
    if strategy not in CALIBRATION_STRATEGIES:
        raise BadInputError(f"strategy must be uniform or quantile, got '{strategy}'")
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise BadInputError(f"n_bins must be a positive integer, got {n_bins}")
    y, p = _calibration_inputs(labels, probs)
    conf, outcome = _confidence(y, p)
    if strategy == "uniform":
        edges = np.linspace(0.0, 1.0, n_bins + 1)
    else:
        edges = np.percentile(conf, np.linspace(0.0, 100.0, n_bins + 1))
    bins = np.searchsorted(edges[1:-1], conf, side="left")
    count = np.bincount(bins, minlength=n_bins)
    sums = np.bincount(bins, weights=conf, minlength=n_bins)
    hits = np.bincount(bins, weights=outcome, minlength=n_bins)
    full = count > 0
    return ReliabilityCurve(confidence=sums[full] / count[full],
                            observed=hits[full] / count[full],
                            count=count[full].astype(np.int64), edges=edges, strategy=strategy)


def expected_calibration_error(labels: ArrayLike, probs: ArrayLike, n_bins: int = 15,
                               strategy: str = "uniform") -> float:
    """ECE = sum over bins of (scans in bin / scans) * |observed - mean confidence| (Naeini et
    al. 2015; Guo et al. 2017), over the bins of `reliability_curve`.

    Binary (`n` covid probabilities): the calibration of the covid probability itself (observed:
    the share of covid scans in the bin). K classes (`n x K`): the top-label ECE of Guo et al.,
    the confidence of the most probable class against its accuracy. 15 equal-width bins is Guo
    et al.'s setting; "quantile" (equal-mass) bins suit probabilities bunched near 0 and 1.
    The ECE is biased upwards on few scans (bin frequencies are noisy): compare it only on the
    same scans and bins.
    """
    curve = reliability_curve(labels, probs, n_bins, strategy)
    weights = curve["count"] / curve["count"].sum()
    return float(np.sum(weights * np.abs(curve["observed"] - curve["confidence"])))


def brier_score(labels: ArrayLike, probs: ArrayLike) -> float:
    """The Brier score (Brier 1950), lower is better.

    Binary (`n` covid probabilities): mean (p - y)^2, scikit-learn's `brier_score_loss`,
    within [0, 1]. K classes (`n x K`): Brier's original multi-category score, the mean over
    scans of sum_k (p_k - onehot_k)^2, within [0, 2] (for two classes it would be twice the
    binary score).
    """
    y, p = _calibration_inputs(labels, probs)
    if p.ndim == 1:
        from sklearn.metrics import brier_score_loss

        return float(brier_score_loss(y, p))
    onehot = np.eye(p.shape[1])[y]
    return float(np.mean(np.sum((p - onehot) ** 2, axis=1)))


# --- temperature scaling -----------------------------------------------------------------------


def _logits(p: NDArray[np.float64]) -> NDArray[np.float64]:
    """Logits whose sigmoid (`n`) or softmax (`n x K`) gives back `p` (clipped away from 0 and
    1): logit(p), or log(p), which differs from the model's logits by a constant per scan, to
    which the softmax is blind, so scaling them by 1/T is scaling the model's logits."""
    if p.ndim == 1:
        from scipy.special import logit

        return logit(np.clip(p, LOGIT_EPS, 1 - LOGIT_EPS))
    return np.log(np.clip(p, LOGIT_EPS, 1.0))


def _check_temperature(temperature: float) -> float:
    t = float(temperature)
    if not math.isfinite(t) or t <= 0:
        raise BadInputError(f"the temperature must be a positive number, got {temperature}")
    return t


def apply_temperature(probs: ArrayLike, temperature: float) -> NDArray[np.float64]:
    """Probabilities scaled by `temperature` (Guo et al. 2017): sigmoid(logit(p) / T) for covid
    probabilities (`n`), softmax(log(p) / T) for class probabilities (`n x K`). T > 1 softens
    over-confident probabilities, T < 1 sharpens, T = 1 leaves them as they are (up to the
    clipping of p to [1e-12, 1 - 1e-12]). The ranking of scans, hence every AUC, is unchanged;
    so is each scan's most probable class."""
    from scipy.special import expit, softmax

    t = _check_temperature(temperature)
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim not in (1, 2) or not np.isfinite(p).all() or ((p < 0) | (p > 1)).any():
        raise BadInputError("probabilities must be finite, within [0, 1], n or n x K")
    z = _logits(p) / t
    return expit(z) if p.ndim == 1 else softmax(z, axis=1)


def _nll(y: NDArray[np.int64], z: NDArray[np.float64]) -> float:
    """Mean negative log-likelihood of labels under sigmoid (`n`) or softmax (`n x K`) logits."""
    if z.ndim == 1:
        return float(np.mean(np.logaddexp(0.0, np.where(y == 1, -z, z))))
    from scipy.special import log_softmax

    return float(-np.mean(log_softmax(z, axis=1)[np.arange(len(y)), y]))


def fit_temperature(labels: ArrayLike, probs: ArrayLike) -> float:
    """The temperature T in [0.05, 20] that minimises the negative log-likelihood of `labels`
    under `apply_temperature(probs, T)` (Guo et al. 2017), searched on log T by scipy's bounded
    `minimize_scalar`. Fit it on validation scans and apply it to others; it changes the
    calibration (ECE, Brier, NLL), never the ranking or the AUC."""
    from scipy.optimize import minimize_scalar

    y, p = _calibration_inputs(labels, probs)
    z = _logits(p)
    found = minimize_scalar(lambda u: _nll(y, z / math.exp(u)),
                            bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded",
                            options={"xatol": 1e-8})
    return float(math.exp(found.x))


__all__ = [
    "CALIBRATION_STRATEGIES",
    "MCNEMAR_EXACT_BELOW",
    "BootstrapAuc",
    "BootstrapDifference",
    "DeLongTest",
    "McNemar",
    "ReliabilityCurve",
    "apply_temperature",
    "bootstrap_auc_ci",
    "brier_score",
    "delong_auc_variance",
    "delong_ci",
    "delong_test",
    "expected_calibration_error",
    "fit_temperature",
    "mcnemar",
    "paired_bootstrap_auc_difference",
    "reliability_curve",
]
