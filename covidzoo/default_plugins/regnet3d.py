"""The built-in 3D RegNet backbones (the network is imported only when one is built)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_backbones(register: Any) -> None:
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
            input_size=(64, 224, 224),
            default_cfg=resolved.to_dict(),
            default_aggregator="volume",
            family="regnet3d",
        )
