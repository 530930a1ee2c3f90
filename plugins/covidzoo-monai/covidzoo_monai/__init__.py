"""covidzoo-monai: the hooks. Registration only; MONAI and torch are imported when a model is built.

Listing the backbones (`covidzoo models`) therefore works, and stays fast, even where MONAI is
not installed; building one then fails with a message that says how to install it.
"""

from __future__ import annotations

from typing import Any

from covidzoo import hookimpl

# name -> (factory in covidzoo_monai.models, summary, MONAI class, extra default configuration).
BACKBONES: dict[str, tuple[str, str, str, dict[str, Any]]] = {
    "monai-densenet121": (
        "densenet121",
        "MONAI DenseNet-121, 3D (growth 32, blocks 6/12/24/16)",
        "monai.networks.nets.DenseNet121",
        {"init_features": 64, "growth_rate": 32, "dropout_prob": 0.0},
    ),
    "monai-resnet18": (
        "resnet18",
        "MONAI ResNet-18, 3D (basic blocks 2/2/2/2, stride-2 stem)",
        "monai.networks.nets.resnet18",
        {"conv1_t_size": 7, "conv1_t_stride": 2, "shortcut_type": "B", "widen_factor": 1.0},
    ),
    "monai-resnet50": (
        "resnet50",
        "MONAI ResNet-50, 3D (bottlenecks 3/4/6/3, stride-2 stem)",
        "monai.networks.nets.resnet50",
        {"conv1_t_size": 7, "conv1_t_stride": 2, "shortcut_type": "B", "widen_factor": 1.0},
    ),
    "monai-seresnet50": (
        "seresnet50",
        "MONAI SE-ResNet-50, 3D (squeeze-and-excitation bottlenecks 3/4/6/3)",
        "monai.networks.nets.SEResNet50",
        {"reduction": 16, "dropout_prob": None},
    ),
}

# The smallest D, H and W each network accepts (its pooling would reach size 0 below).
MIN_INPUT_SIZES: dict[str, tuple[int, int, int]] = {
    "monai-densenet121": (29, 29, 29),
    "monai-resnet18": (1, 1, 1),
    "monai-resnet50": (1, 1, 1),
    "monai-seresnet50": (3, 3, 3),
}


@hookimpl
def register_backbones(register: Any) -> None:
    for name, (factory, summary, monai_class, cfg) in BACKBONES.items():
        register(
            name,
            f"covidzoo_monai.models:{factory}",
            summary=summary,
            spatial_dims=3,
            # regnet3d's default: the same input makes the benchmark a peer comparison.
            input_size=(64, 224, 224),
            min_input_size=MIN_INPUT_SIZES[name],
            default_cfg={"num_classes": 1, "in_chans": 1, **cfg},
            default_aggregator="volume",
            monai_class=monai_class,
            family="monai",
        )
