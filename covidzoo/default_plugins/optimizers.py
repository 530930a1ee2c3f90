"""The built-in optimizers (factories in `covidzoo.optim`, imported on first use)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_optimizers(register: Any) -> None:
    register("adam", "covidzoo.optim:adam", summary="Adam (torch.optim.Adam)")
    register("adamw", "covidzoo.optim:adamw", summary="AdamW, decoupled weight decay")
    register("sgd", "covidzoo.optim:sgd", summary="SGD with Nesterov momentum 0.9")
    register("rmsprop", "covidzoo.optim:rmsprop", summary="RMSprop (torch.optim.RMSprop)")
    register("novograd", "covidzoo.optim:novograd",
             summary="NovoGrad, layer-wise second moments (Ginsburg et al. 2019)")
