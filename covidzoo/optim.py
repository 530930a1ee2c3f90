"""Optimizer factories registered through `register_optimizers`.

Each takes `(params, lr, weight_decay, **kwargs)` so the training loop can build any registered
optimizer the same way. `params` is a list of parameter groups as torch takes them; the training
loop passes one, `{"params": [...], "param_names": [...]}`, so that a factory can split it by
name: `param_groups` excludes norms and biases from weight decay.

Adam, AdamW and SGD use PyTorch's fused CUDA kernels when every parameter is on a GPU (pass
`fused=False` for the multi-tensor ones). Besides being one kernel per step, a fused optimizer
takes the fp16 `GradScaler`'s scale and inf check on the device, and so does NovoGrad; with any
other optimizer (RMSprop) the scaler reads the check on the host after every backward, which
makes the host wait for each step before it can queue the next batch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch

from .errors import BadInputError


def param_groups(groups: Iterable[dict[str, Any]], weight_decay: float,
                 no_decay: Callable[[str, Any], bool] | None = None) -> list[dict[str, Any]]:
    """Split each named parameter group in two: decayed, and not decayed (`weight_decay` 0).

    By default biases and the weights of normalisation layers (every 1-D parameter) are not
    decayed, as in timm's `param_groups_weight_decay`. `no_decay(name, param)` overrides that.
    Empty groups are dropped; every group keeps its other keys and its `param_names`.
    """
    def default(name: str, param: Any) -> bool:
        return param.ndim <= 1 or name.endswith(".bias")

    skip = no_decay or default
    out = []
    for group in groups:
        names = group.get("param_names") or [f"param{i}" for i in range(len(group["params"]))]
        rest = {k: v for k, v in group.items() if k not in ("params", "param_names")}
        split: dict[bool, tuple[list[Any], list[str]]] = {False: ([], []), True: ([], [])}
        for name, param in zip(names, group["params"], strict=True):
            split[bool(skip(name, param))][0].append(param)
            split[bool(skip(name, param))][1].append(name)
        for skipped, (params, param_names) in split.items():
            if params:
                out.append({**rest, "params": params, "param_names": param_names,
                            "weight_decay": 0.0 if skipped else weight_decay})
    return out


def _fused_on_cuda(params: Iterable[Any], kw: dict[str, Any]) -> list[Any]:
    """`params` as a list; sets `kw["fused"] = True` when all of them are on CUDA and the caller
    chose no implementation. `params` may be tensors or param-group dicts, as in torch.
    """
    params = [dict(p, params=list(p["params"])) if isinstance(p, dict) else p for p in params]
    tensors = [t for p in params for t in (p["params"] if isinstance(p, dict) else [p])]
    if "fused" not in kw and "foreach" not in kw and tensors and all(t.is_cuda for t in tensors):
        kw["fused"] = True
    return params


def adam(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **kw: Any):
    """Adam (Kingma & Ba), L2 weight decay added to the gradient."""
    params = _fused_on_cuda(params, kw)
    return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **kw)


def adamw(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 1e-2, **kw: Any):
    """AdamW: Adam with decoupled weight decay (Loshchilov & Hutter)."""
    params = _fused_on_cuda(params, kw)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, **kw)


def sgd(
    params: Iterable[Any],
    lr: float = 1e-2,
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    nesterov: bool = True,
    **kw: Any,
):
    """SGD with Nesterov momentum 0.9 (the usual choice for training CNNs from scratch)."""
    params = _fused_on_cuda(params, kw)
    return torch.optim.SGD(
        params, lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov, **kw
    )


def rmsprop(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **kw: Any):
    """RMSprop (Hinton), as torch implements it."""
    return torch.optim.RMSprop(params, lr=lr, weight_decay=weight_decay, **kw)


class NovoGrad(torch.optim.Optimizer):
    """NovoGrad (Ginsburg et al. 2019, arXiv 1905.11286): SGD with momentum on gradients
    normalised by a layer-wise second moment; the 3D RegNet paper trains with it.

    Per parameter tensor ("layer") `w` with gradient `g`, at step t:

        v_t = beta2 * v_{t-1} + (1 - beta2) * ||g_t||^2     (v_t = ||g_t||^2 while v_{t-1} = 0)
        d_t = g_t / (sqrt(v_t) + eps) + weight_decay * w_{t-1}
        m_t = beta1 * m_{t-1} + c * d_t                     (m_0 = 0; c = 1 - beta1 with
                                                             grad_averaging, else 1)
        w_t = w_{t-1} - lr * m_t

    The second moment starts at 0 and is *set* rather than averaged while it is still exactly
    0, as MONAI's `Novograd` (and NVIDIA's Jasper and OpenSeq2Seq code it follows) does: a
    tensor whose gradients are all zero at first keeps `v = 0` until its first non-zero
    gradient, which then sets `v`. This matters with `zero_init_last` (regnet3d's default): the
    zeroed last BatchNorm of each block stops the gradient of most of the block at step 1, and
    averaging `(1 - beta2) * ||g_2||^2` into a zero `v` instead would make the step-2 update of
    those tensors `1 / sqrt(1 - beta2)` (about 7 with beta2 = 0.98) times too large.

    `v` is one number per tensor, so the optimizer state is about half of Adam's. With
    `amsgrad`, the running maximum of `v` replaces `v` in the denominator. The weight decay is
    added after the normalisation, as in the paper, and `grad_averaging` scales the whole step
    `d_t`, weight decay included, as NVIDIA's references do (apex `FusedNovoGrad`, OpenSeq2Seq
    `NovoGrad2`).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.95, 0.98),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        grad_averaging: bool = False,
        amsgrad: bool = False,
    ) -> None:
        if not lr >= 0:
            raise BadInputError(f"NovoGrad needs lr >= 0, got {lr}")
        if not all(0 <= b < 1 for b in betas) or len(betas) != 2:
            raise BadInputError(f"NovoGrad needs two betas in [0, 1), got {betas}")
        if not eps >= 0 or not weight_decay >= 0:
            raise BadInputError("NovoGrad needs eps >= 0 and weight_decay >= 0")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        grad_averaging=grad_averaging, amsgrad=amsgrad)
        super().__init__(params, defaults)

    # Under fp16, `GradScaler` hands its scale and inf flag over as device tensors
    # (`self.grad_scale`, `self.found_inf`) instead of reading the flag on the host, which would
    # make the host wait for every step; a step with an inf or nan gradient then changes nothing.
    _step_supports_amp_scaling = True

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One update of every parameter with a gradient; `closure` re-evaluates the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grad_scale = getattr(self, "grad_scale", None)
        found_inf = getattr(self, "found_inf", None)
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if grad.is_sparse:
                    raise BadInputError("NovoGrad does not support sparse gradients")
                if grad_scale is not None:
                    grad = grad / grad_scale.to(grad.device)
                # The norm in float32 at least, kept on the device: no host sync per tensor.
                norm_sq = grad.to(torch.promote_types(grad.dtype, torch.float32)).square().sum()
                keep = None if found_inf is None else found_inf.to(p.device) == 0
                self._update(p, grad, norm_sq, group, keep)
        return loss

    def _state(self, p: torch.Tensor, norm_sq: torch.Tensor,
               group: dict[str, Any]) -> dict[str, Any]:
        """The state of `p`, created on its first step. The second moments are float32
        whatever `load_state_dict` cast them to."""
        state = self.state[p]
        if "exp_avg" not in state:
            state["step"] = 0
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(norm_sq)
        if group["amsgrad"] and "max_exp_avg_sq" not in state:
            state["max_exp_avg_sq"] = state["exp_avg_sq"].clone()
        for key in ("exp_avg_sq", "max_exp_avg_sq"):
            if key in state and state[key].dtype != norm_sq.dtype:
                state[key] = state[key].to(norm_sq.dtype)
        return state

    def _update(self, p: torch.Tensor, grad: torch.Tensor, norm_sq: torch.Tensor,
                group: dict[str, Any], keep: torch.Tensor | None) -> None:
        """One NovoGrad update of `p`. With `keep` (a device bool: no inf in this step) both
        outcomes are computed and `torch.where` picks, so the host never reads the flag."""
        beta1, beta2 = group["betas"]
        state = self._state(p, norm_sq, group)
        # MONAI's rule: while v is exactly 0 (no update yet, a skipped inf step, or only zero
        # gradients so far) the squared norm sets it; afterwards it is averaged in.
        v = torch.where(state["exp_avg_sq"] == 0, norm_sq,
                        state["exp_avg_sq"] * beta2 + (1 - beta2) * norm_sq)
        moments = {"exp_avg_sq": v}
        if group["amsgrad"]:
            v = moments["max_exp_avg_sq"] = torch.maximum(state["max_exp_avg_sq"], v)
        direction = grad / (v.sqrt() + group["eps"]).to(grad.dtype)
        if group["weight_decay"]:
            direction.add_(p, alpha=group["weight_decay"])
        scale = 1 - beta1 if group["grad_averaging"] else 1.0
        m = state["exp_avg"]
        if keep is None:
            for key, value in moments.items():
                state[key].copy_(value)
            m.mul_(beta1).add_(direction, alpha=scale)
            p.add_(m, alpha=-group["lr"])
        else:
            for key, value in moments.items():
                state[key].copy_(torch.where(keep, value, state[key]))
            m_new = m * beta1 + direction * scale
            m.copy_(torch.where(keep, m_new, m))
            p.copy_(torch.where(keep, p - group["lr"] * m_new, p))
        state["step"] += 1


def novograd(params: Iterable[Any], lr: float = 1e-3, weight_decay: float = 0.0, **kw: Any):
    """NovoGrad: layer-wise normalised gradients with momentum (the 3D RegNet paper's choice)."""
    return NovoGrad(params, lr=lr, weight_decay=weight_decay, **kw)
