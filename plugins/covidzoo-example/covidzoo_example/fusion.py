"""covidzoo-example: an ensembler, imported only when it is created or restored."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from covidzoo import BadInputError
from covidzoo.ensemble import Ensembler


class GeometricMean(Ensembler):
    """The normalised geometric mean of the member probabilities.

    `prod(p) ** (1/n) / (prod(p) ** (1/n) + prod(1 - p) ** (1/n))`, which is the sigmoid of the
    mean member logit: a confident member moves the fusion more than in the arithmetic mean, and
    the fusion is symmetric in the two classes. Probabilities are clipped to `[eps, 1 - eps]`
    first. There is nothing to fit but the number of members; `eps` is saved with the ensemble
    (`covidzoo ensemble --save`) and restored by `from_dict`, as a fitted state would be.
    """

    method = "geometric-mean"

    def __init__(self, eps: float = 1e-6) -> None:
        super().__init__()
        if not 0.0 < eps < 0.5:
            raise BadInputError(f"geometric-mean: eps must be in (0, 0.5), got {eps}")
        self.eps = float(eps)

    def predict(self, probs: ArrayLike) -> NDArray[np.float64]:
        p = np.clip(self._check(probs), self.eps, 1.0 - self.eps)
        mean_logit = np.mean(np.log(p) - np.log1p(-p), axis=1)
        return 0.5 * (1.0 + np.tanh(0.5 * mean_logit))  # the sigmoid, without overflow

    # Ensembler's JSON round trip: to_dict() adds _state(); from_dict() calls _restore().
    def _state(self) -> dict[str, Any]:
        return {"eps": self.eps}

    def _restore(self, data: dict[str, Any]) -> None:
        super()._restore(data)
        self.eps = float(data.get("eps", self.eps))
