"""Built-in ensemblers (`covidzoo.ensemble`), registered lazily: listing them imports no numpy."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_ensemblers(register: Any) -> None:
    register(
        "mean", "covidzoo.ensemble:MeanEnsembler",
        summary="Average of member probabilities (the 3D RegNet paper's fusion)",
        needs_labels=False,
    )
    register(
        "weighted", "covidzoo.ensemble:WeightedEnsembler",
        summary="Weighted average, weights on the simplex fit to validation log loss",
        needs_labels=True,
    )
    register(
        "rank", "covidzoo.ensemble:RankEnsembler",
        summary="Average of scores rank-normalised against the validation distribution",
        needs_labels=False,
    )
    register(
        "stacking", "covidzoo.ensemble:StackingEnsembler",
        summary="Logistic regression on member logits, fit on validation data",
        needs_labels=True,
    )
