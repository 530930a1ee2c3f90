"""Ensemblers: rules that fuse the covid probabilities of several models into one per scan.

Every ensembler follows one protocol (the `register_ensemblers` hook's contract):

- `fit(probs, labels)` learns from validation data (`probs`: `n_scans x n_models`, `labels`:
  1 covid, 0 non-covid) and returns the ensembler; it sees nothing but what it is given;
- `predict(probs)` returns one fused probability per scan, in [0, 1];
- `to_dict()` is a JSON-ready description with the registered name under `"method"`, and the
  class method `from_dict(data)` rebuilds an ensembler that predicts identically. No pickle:
  the `ensemble --save` file is plain JSON, restored with `load_ensembler`.

The threshold is not the ensembler's business: the caller takes
`metrics.youden_threshold(labels, ensembler.predict(val_probs))` on validation data.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from .errors import BadInputError

# Probabilities are clipped to [EPS, 1 - EPS] before logits or logs are taken.
EPS = 1e-7
# The largest stacking coefficient or intercept a file may hold. Member logits are at most
# |log(EPS)| ~ 16 apart from 0, so larger ones saturate the sigmoid all the same; bounded, the
# fused logit stays finite (two coefficients of 1e308 of opposite signs would sum to NaN).
MAX_STACKING_COEF = 1e6


def check_member_probs(probs: ArrayLike, n_models: int | None = None) -> NDArray[np.float64]:
    """`probs` as a float array `n_scans x n_models` of probabilities, or `BadInputError`.

    A 1-D array is one model's probabilities: a single column.
    """
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:
        p = p[:, None]
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise BadInputError(f"member probabilities must be n_scans x n_models, got {p.shape}")
    if not np.isfinite(p).all() or p.min() < 0 or p.max() > 1:
        raise BadInputError("member probabilities must be finite and within [0, 1]")
    if n_models is not None and p.shape[1] != n_models:
        raise BadInputError(f"the ensemble has {n_models} members, got {p.shape[1]} columns")
    return p


def _check_labels(labels: ArrayLike | None, n_scans: int, method: str) -> NDArray[np.int64]:
    if labels is None:
        raise BadInputError(f"ensembler '{method}' needs labels to fit")
    y = np.asarray(labels)
    if y.shape != (n_scans,):
        raise BadInputError(f"{n_scans} scans but labels of shape {y.shape}")
    if not np.isin(y, (0, 1)).all():
        raise BadInputError("labels must be 0 (non-covid) or 1 (covid)")
    if y.min() == y.max():
        raise BadInputError(f"ensembler '{method}' needs both classes in its fit data")
    return y.astype(np.int64)


def _floats(values: ArrayLike) -> list[Any]:
    """A (nested) list of Python floats: JSON writes them exactly (repr round-trips)."""
    return np.asarray(values, dtype=np.float64).tolist()


# --- reading a description back: an ensemble file is untrusted ---------------------------------


def _is_number(value: Any) -> bool:
    """A finite real number: not a bool, a string, NaN or infinity (which JSON may hold)."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _number(data: dict[str, Any], key: str, default: float, low: float,
            low_open: bool = False) -> float:
    """`data[key]` (or `default`): a finite number >= `low` (> `low` when `low_open`)."""
    value = data.get(key, default)
    if not _is_number(value) or value < low or (low_open and value == low):
        bound = f"> {low:g}" if low_open else f">= {low:g}"
        raise BadInputError(f"'{key}' must be a finite number {bound}, got {_shown(value)}")
    return float(value)


def _vector(name: str, value: Any, length: int | None, low: float | None = None,
            high: float | None = None) -> NDArray[np.float64]:
    """A list of finite numbers of `length` (any length >= 1 when None), each within the
    bounds given; anything else is bad input naming `name`."""
    if not isinstance(value, list) or not value or not all(_is_number(v) for v in value):
        raise BadInputError(f"'{name}' must be a non-empty list of finite numbers, got "
                            f"{_shown(value)}")
    if length is not None and len(value) != length:
        raise BadInputError(f"'{name}' has {len(value)} values for {length} members")
    array = np.asarray(value, dtype=np.float64)
    if (low is not None and array.min() < low) or (high is not None and array.max() > high):
        raise BadInputError(f"'{name}' must lie within [{low:g}, {high:g}], got {_shown(value)}"
                            if high is not None else
                            f"'{name}' must be >= {low:g}, got {_shown(value)}")
    return array


def _shown(value: Any, limit: int = 60) -> str:
    """A value from a file, short enough for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class Ensembler(ABC):
    """Base class of the built-in ensemblers: input checks and the JSON round trip."""

    method: ClassVar[str]

    def __init__(self) -> None:
        self.n_models: int | None = None

    def fit(self, probs: ArrayLike, labels: ArrayLike | None = None) -> Ensembler:
        """Learn from validation data; the base rule has nothing to learn but the member count."""
        self.n_models = check_member_probs(probs).shape[1]
        return self

    @abstractmethod
    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        """One fused probability per scan."""

    def _state(self) -> dict[str, Any]:
        return {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description; `from_dict` of it predicts identically."""
        return {"method": self.method, "n_models": self.n_models, **self._state()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ensembler:
        """The ensembler that `to_dict` described."""
        if data.get("method") != cls.method:
            raise BadInputError(
                f"ensemble description of method '{data.get('method')}', not '{cls.method}'"
            )
        ensembler = cls()
        ensembler._restore(data)
        return ensembler

    def _restore(self, data: dict[str, Any]) -> None:
        """Set the fitted state from `to_dict`'s output, checked (a file may hold anything);
        subclasses extend it."""
        n_models = data.get("n_models")
        if n_models is not None and not (isinstance(n_models, int)
                                         and not isinstance(n_models, bool) and n_models > 0):
            raise BadInputError(f"'n_models' must be a positive integer, got {_shown(n_models)}")
        self.n_models = n_models

    def _fitted_state(self, data: dict[str, Any], key: str) -> Any:
        """`data[key]`, the fitted state, which a fitted description (one with `n_models`)
        must hold; None for an unfitted one."""
        value = data.get(key)
        if value is None and self.n_models is not None:
            raise BadInputError(f"fit on {self.n_models} members but no '{key}'")
        return value

    def _check(self, probs: ArrayLike) -> NDArray[np.float64]:
        return check_member_probs(probs, self.n_models)

    def _require_fit(self, fitted: bool) -> None:
        if not fitted:
            raise BadInputError(f"ensembler '{self.method}' must be fit on validation data first")

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


class MeanEnsembler(Ensembler):
    """The average of member probabilities: the 3D RegNet paper's fusion rule.

    Nothing to learn, hard to overfit: the default, and the right choice for a few members of
    similar quality or little validation data.
    """

    method = "mean"

    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        return self._check(probs).mean(axis=1)


class WeightedEnsembler(Ensembler):
    """A weighted average of member probabilities, weights learned on validation data and
    shrunk towards equal weights.

    The weights minimise the summed binary cross-entropy of the fused probability on the fit
    data plus `l2 * ||w - 1/k||^2`, subject to `w >= 0` and `sum(w) = 1` (SLSQP from the
    uniform start, exact gradient), so the result stays a probability. The penalty is fixed
    while the log loss grows with the number of scans: on a few dozen validation scans the
    weights stay near equal (the `mean` rule, which is hard to overfit), and on hundreds the
    data decide and a useless member can get weight 0. `l2=0` is the unregularised fit.
    """

    method = "weighted"

    def __init__(self, l2: float = 10.0) -> None:
        super().__init__()
        if not l2 >= 0:
            raise BadInputError(f"weighted needs l2 >= 0, got {l2}")
        self.l2 = float(l2)
        self.weights: NDArray[np.float64] | None = None

    def fit(self, probs: ArrayLike, labels: ArrayLike | None = None) -> WeightedEnsembler:
        from scipy.optimize import minimize

        p = check_member_probs(probs)
        y = _check_labels(labels, p.shape[0], self.method)
        k = p.shape[1]
        equal = np.full(k, 1.0 / k)

        def loss_and_grad(w: NDArray[np.float64]) -> tuple[float, NDArray[np.float64]]:
            # Divided by the scan count, so that SLSQP's tolerance means the same at any size.
            fused = np.clip(p @ w, EPS, 1 - EPS)
            log_loss = -np.sum(y * np.log(fused) + (1 - y) * np.log(1 - fused))
            loss = (log_loss + self.l2 * np.sum((w - equal) ** 2)) / len(y)
            dfused = (fused - y) / (fused * (1 - fused))
            return float(loss), (p.T @ dfused + 2 * self.l2 * (w - equal)) / len(y)

        result = minimize(
            loss_and_grad,
            equal,
            jac=True,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1.0, "jac": np.ones_like}],
        )
        w = np.clip(result.x, 0.0, None)
        self.weights = w / w.sum()
        self.n_models = k
        return self

    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        self._require_fit(self.weights is not None)
        return np.clip(self._check(probs) @ self.weights, 0.0, 1.0)

    def _state(self) -> dict[str, Any]:
        return {"l2": self.l2,
                "weights": None if self.weights is None else _floats(self.weights)}

    def _restore(self, data: dict[str, Any]) -> None:
        """Weights must be finite, non-negative, one per member and sum to 1 (as `fit` leaves
        them): anything else would fuse into numbers that are no probabilities."""
        super()._restore(data)
        self.l2 = _number(data, "l2", self.l2, 0.0)
        weights = self._fitted_state(data, "weights")
        if weights is None:
            return
        w = _vector("weights", weights, self.n_models, low=0.0)
        if abs(w.sum() - 1.0) > 1e-6:
            raise BadInputError(f"'weights' must sum to 1, they sum to {w.sum():g}")
        self.weights, self.n_models = w, len(w)


class RankEnsembler(Ensembler):
    """The average of rank-normalised member scores, ranks taken against validation data.

    `fit` keeps each member's validation scores; `predict` maps a score to its position in that
    member's validation distribution (the mid-rank empirical CDF, linearly interpolated between
    validation scores, anchored at 0 -> 0 and 1 -> 1) and averages the positions. Ranking
    against the validation data rather than within the predicted batch makes a scan's fused
    score independent of the other scans predicted with it, so `predict` on a single scan
    works and the threshold chosen on validation data means the same on new data. The map is
    strictly increasing, so one member's order is kept exactly.

    Use it when members are calibrated differently (one says 0.99 where another says 0.6):
    ranks put them on one scale before averaging. The output is a rank score, not a
    calibrated probability.
    """

    method = "rank"

    def __init__(self) -> None:
        super().__init__()
        self.knots: list[tuple[NDArray[np.float64], NDArray[np.float64]]] | None = None

    def fit(self, probs: ArrayLike, labels: ArrayLike | None = None) -> RankEnsembler:
        p = check_member_probs(probs)
        self.knots = [self._knots(column) for column in p.T]
        self.n_models = p.shape[1]
        return self

    @staticmethod
    def _knots(scores: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        values, counts = np.unique(scores, return_counts=True)
        below = np.concatenate([[0], np.cumsum(counts)[:-1]])
        cdf = (below + counts / 2) / len(scores)
        keep = (values > 0) & (values < 1)  # 0 and 1 are the fixed anchors
        return (
            np.concatenate([[0.0], values[keep], [1.0]]),
            np.concatenate([[0.0], cdf[keep], [1.0]]),
        )

    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        self._require_fit(self.knots is not None)
        p = self._check(probs)
        ranks = [np.interp(p[:, i], x, y) for i, (x, y) in enumerate(self.knots)]
        return np.mean(ranks, axis=0)

    def _state(self) -> dict[str, Any]:
        if self.knots is None:
            return {"knots": None}
        return {"knots": [{"score": _floats(x), "rank": _floats(y)} for x, y in self.knots]}

    def _restore(self, data: dict[str, Any]) -> None:
        """One knot list per member: scores strictly increasing and ranks non-decreasing, both
        within [0, 1] and of one length (what `np.interp` needs to map a score to a rank)."""
        super()._restore(data)
        knots = self._fitted_state(data, "knots")
        if knots is None:
            return
        if not isinstance(knots, list) or (self.n_models is not None
                                           and len(knots) != self.n_models):
            raise BadInputError(f"'knots' must be a list of one entry per member, got "
                                f"{_shown(knots)}")
        self.knots = [self._member_knots(i, k) for i, k in enumerate(knots)]
        self.n_models = len(self.knots)

    @staticmethod
    def _member_knots(i: int, knot: Any) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        if not isinstance(knot, dict):
            raise BadInputError(f"'knots' entry {i} must be an object with 'score' and 'rank'")
        score = _vector(f"knots[{i}].score", knot.get("score"), None, 0.0, 1.0)
        rank = _vector(f"knots[{i}].rank", knot.get("rank"), len(score), 0.0, 1.0)
        if len(score) < 2 or np.any(np.diff(score) <= 0) or np.any(np.diff(rank) < 0):
            raise BadInputError(f"'knots' entry {i}: scores must increase strictly and ranks "
                                "must not decrease, from at least two knots")
        return score, rank


class StackingEnsembler(Ensembler):
    """Logistic regression on the members' logits, fit on validation data (stacking).

    `predict` is `sigmoid(logits @ coef + intercept)`, computed from the stored coefficients,
    so a restored ensembler needs no scikit-learn object. `C` is scikit-learn's inverse
    regularisation strength. It can learn that one member deserves more trust, or none, and
    recalibrates the fused probability; it needs the most validation data of all (hundreds of
    scans per member) and is the most prone to overfit a small validation set.
    """

    method = "stacking"

    def __init__(self, C: float = 1.0) -> None:  # noqa: N803 (scikit-learn's name)
        super().__init__()
        if not C > 0:
            raise BadInputError(f"stacking needs C > 0, got {C}")
        self.C = float(C)
        self.coef: NDArray[np.float64] | None = None
        self.intercept: float | None = None

    @staticmethod
    def logits(p: NDArray[np.float64]) -> NDArray[np.float64]:
        """log(p / (1 - p)), probabilities clipped to [EPS, 1 - EPS]."""
        p = np.clip(p, EPS, 1 - EPS)
        return np.log(p) - np.log1p(-p)

    def fit(self, probs: ArrayLike, labels: ArrayLike | None = None) -> StackingEnsembler:
        from sklearn.linear_model import LogisticRegression

        p = check_member_probs(probs)
        y = _check_labels(labels, p.shape[0], self.method)
        model = LogisticRegression(C=self.C).fit(self.logits(p), y)
        self.coef = model.coef_[0].astype(np.float64)
        self.intercept = float(model.intercept_[0])
        self.n_models = p.shape[1]
        return self

    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        self._require_fit(self.coef is not None)
        z = self.logits(self._check(probs)) @ self.coef + self.intercept
        return 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid without overflow

    def _state(self) -> dict[str, Any]:
        return {
            "C": self.C,
            "coef": None if self.coef is None else _floats(self.coef),
            "intercept": self.intercept,
        }

    def _restore(self, data: dict[str, Any]) -> None:
        super()._restore(data)
        self.C = _number(data, "C", self.C, 0.0, low_open=True)
        coef = self._fitted_state(data, "coef")
        if coef is None:
            return
        self.coef = _vector("coef", coef, self.n_models, -MAX_STACKING_COEF, MAX_STACKING_COEF)
        intercept = data.get("intercept")
        if not (_is_number(intercept) and abs(intercept) <= MAX_STACKING_COEF):
            raise BadInputError(f"'intercept' must be a finite number within "
                                f"±{MAX_STACKING_COEF:g}, got {_shown(intercept)}")
        self.intercept, self.n_models = float(intercept), len(self.coef)


def create_ensembler(method: str, **kwargs: Any) -> Any:
    """A new, unfitted ensembler registered as `method` (built-in or from a plugin)."""
    from .factory import get_component

    return get_component(method, "ensembler").create(**kwargs)


def load_ensembler(data: dict[str, Any]) -> Any:
    """The ensembler described by `to_dict()` output, e.g. read from an `ensemble --save` file.

    The method is looked up in the registry, so a plugin's ensembler restores as a built-in
    does, provided its factory has a `from_dict` class method.
    """
    from .factory import get_component

    if not isinstance(data, dict) or not isinstance(data.get("method"), str):
        raise BadInputError("an ensemble description is a JSON object with a 'method' name")
    factory = get_component(data["method"], "ensembler").load()
    from_dict = getattr(factory, "from_dict", None)
    if from_dict is None:
        raise BadInputError(
            f"ensembler '{data['method']}' cannot be restored from JSON (no from_dict)"
        )
    try:
        return from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, BadInputError):
            raise
        raise BadInputError(
            f"ensemble description of method '{data['method']}' is malformed: {exc}"
        ) from exc


__all__ = [
    "Ensembler",
    "MeanEnsembler",
    "RankEnsembler",
    "StackingEnsembler",
    "WeightedEnsembler",
    "check_member_probs",
    "create_ensembler",
    "load_ensembler",
]
