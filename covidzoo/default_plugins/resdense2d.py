"""The built-in `resdense2d` backbone (torch and timm are imported only when it is built)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        "resdense2d",
        "covidzoo.models.resdense2d:resdense2d",
        summary="Res-Dense Net: ResNet-101 + DenseNet-121 slice features added (timm, 2D)",
        spatial_dims=2,
        input_size=(256, 256),
        default_aggregator="slice-mean",
        default_cfg={
            "backbones": ["resnet101", "densenet121"],
            "num_classes": 1,
            "in_chans": 1,
            "proj_channels": 512,
            "pool": "avg",
            "drop_rate": 0.0,
        },
    )
