"""covidzoo-example: the hooks. Only the registration lives here, so loading the plugin is cheap.

Every factory is a `"module:attribute"` string: torch and numpy are imported when a component
is first built, never when covidzoo starts or lists components. The command module imports only
click, which covidzoo has already imported to run its command line.
"""

from __future__ import annotations

from typing import Any

from covidzoo import hookimpl

# One flag for both backbones: `covidzoo train` offers it once and passes it, parsed by the
# trained backbone's own declaration, as the keyword `channels` of its factory.
WIDTHS_OPTION = {
    "flag": "--tiny-widths",
    "param": "channels",
    "type": "ints",
    "help": "Output channels of each strided conv block, e.g. 8,16,32,64.",
}
POOL_OPTION = {
    "flag": "--tiny2d-pool",
    "param": "pool",
    "type": "str",
    "help": "Global pooling of the slice features: avg or max.",
}


@hookimpl
def register_backbones(register: Any) -> None:
    register(
        "tiny3d",
        "covidzoo_example.models:tiny3d",
        summary="Tiny 3D CNN: four strided conv blocks (example plugin)",
        spatial_dims=3,
        input_size=(32, 64, 64),
        default_cfg={"channels": [8, 16, 32, 64], "in_chans": 1, "num_classes": 1},
        options=[WIDTHS_OPTION],
    )
    register(
        "tiny2d",
        "covidzoo_example.models:tiny2d",
        summary="Tiny 2D CNN on slices: three strided conv blocks (example plugin)",
        spatial_dims=2,
        input_size=(128, 128),
        default_aggregator="slice-mean",
        default_cfg={"channels": [16, 32, 64], "pool": "avg", "in_chans": 1, "num_classes": 1},
        options=[WIDTHS_OPTION, POOL_OPTION],
    )


@hookimpl
def register_aggregators(register: Any) -> None:
    register(
        "flip-mean",
        "covidzoo_example.models:FlipMean",
        summary="Logits of the scan and its left-right mirror averaged; weight= of the mirror",
        spatial_dims=3,
    )


@hookimpl
def register_ensemblers(register: Any) -> None:
    register(
        "geometric-mean",
        "covidzoo_example.fusion:GeometricMean",
        summary="Normalised geometric mean of member probabilities (the mean logit)",
        needs_labels=False,
    )


@hookimpl
def register_optimizers(register: Any) -> None:
    register(
        "sgd-nodecay",
        "covidzoo_example.optim:sgd_nodecay",
        summary="SGD with Nesterov momentum, no weight decay on norms and biases",
    )


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import example_info

    cli.add_command(example_info)
