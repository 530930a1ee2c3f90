"""The built-in aggregators (classes in `covidzoo.models.aggregators`, imported on first use)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_aggregators(register: Any) -> None:
    register(
        "volume",
        "covidzoo.models.aggregators:Volume",
        summary="The whole scan through a 3D backbone",
        spatial_dims=3,
    )
    register(
        "slice-mean",
        "covidzoo.models.aggregators:SliceMean",
        summary="Logit of the mean slice probability (Res-Dense Net paper)",
        spatial_dims=2,
    )
    register(
        "slice-max",
        "covidzoo.models.aggregators:SliceMax",
        summary="Highest slice probability",
        spatial_dims=2,
    )
    register(
        "slice-topk",
        "covidzoo.models.aggregators:SliceTopK",
        summary="Mean of the k highest slice probabilities (k=8)",
        spatial_dims=2,
    )
    register(
        "slice-attention",
        "covidzoo.models.aggregators:SliceAttention",
        summary="Learned attention pooling of slice features, then the backbone's head",
        spatial_dims=2,
    )
