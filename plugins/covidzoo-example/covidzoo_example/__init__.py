"""covidzoo-example: the hooks. Only the registration lives here, so loading the plugin is cheap."""

from typing import Any

from covidzoo import hookimpl


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        "tiny3d",
        "covidzoo_example.models:tiny3d",
        summary="Tiny 3D CNN: four strided conv blocks (example plugin)",
        spatial_dims=3,
        input_size=(32, 64, 64),
        default_cfg={"widths": [8, 16, 32, 64], "in_chans": 1, "num_classes": 1},
    )


@hookimpl
def register_aggregators(register: Any) -> None:
    register(
        "flip-mean",
        "covidzoo_example.models:FlipMean",
        summary="Mean logit of the scan and its left-right mirror (test-time augmentation)",
        spatial_dims=3,
    )
