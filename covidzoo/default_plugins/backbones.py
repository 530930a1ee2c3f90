"""The built-in backbones: the 3D RegNets and resdense2d (torch and timm are imported only
when one is built)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

# The 3D RegNet's architecture options (Table 1 of the paper, and pycls's design space). Their
# values are checked by `RegNet3DCfg` when the model is built.
# (flag, type, help); the parameter is the flag's name with underscores.
REGNET3D_OPTIONS = tuple(
    {"flag": flag, "param": flag[2:].replace("-", "_"), "type": kind, "help": text}
    for flag, kind, text in (
        ("--depths", "ints", "Blocks per stage, e.g. 2,6,12,4."),
        ("--widths", "ints", "Output width per stage, e.g. 48,128,256,512."),
        ("--group-widths", "ints", "Group width: one value, or one per stage."),
        ("--bottleneck-ratio", "float", "Bottleneck width / block width."),
        ("--se-ratio", "float", "Squeeze-excitation ratio (0: none)."),
        ("--stem-width", "int", "Channels of the stem conv."),
        ("--w0", "int", "Design space: initial width (a multiple of 8)."),
        ("--wa", "float", "Design space: width slope per block."),
        ("--wm", "float", "Design space: width multiplier between stages (> 1)."),
        ("--depth", "int", "Design space: total number of blocks."),
    )
)


@hookimpl
def register_backbones(register: Any) -> None:
    from ..factory import DEFAULT_SCAN_SIZE
    from ..models.regnet3d_cfg import REGNET3D_CFGS, resolve_cfg

    def ints(values: Any) -> str:
        return ",".join(str(v) for v in values)

    for name, cfg in REGNET3D_CFGS.items():
        resolved = resolve_cfg(cfg)[0]
        register(
            name,
            f"covidzoo.models.regnet3d:{name}",
            summary=f"3D RegNet: depths {ints(resolved.depths)}, widths"
            f" {ints(resolved.widths)}, group widths {ints(resolved.group_widths)}",
            spatial_dims=3,
            input_size=DEFAULT_SCAN_SIZE,
            default_cfg=resolved.to_dict(),
            default_aggregator="volume",
            family="regnet3d",
            options=REGNET3D_OPTIONS,
        )
    register(
        "resdense2d",
        "covidzoo.models.resdense2d:resdense2d",
        summary="Res-Dense Net: ResNet-101 + DenseNet-121 slice features added (timm, 2D)",
        spatial_dims=2,
        input_size=(256, 256),
        default_aggregator="slice-mean",
        options=[{"flag": "--backbones", "param": "backbones", "type": "strs",
                  "help": "The two timm models, e.g. resnet18,densenet121."}],
        default_cfg={
            "backbones": ["resnet101", "densenet121"],
            "num_classes": 1,
            "in_chans": 1,
            "proj_channels": 512,
            "pool": "avg",
            "drop_rate": 0.0,
        },
    )
