"""Optimizers: every registered one builds and steps; NovoGrad against hand-computed steps."""

from __future__ import annotations

import math

import pytest
import torch

import covidzoo
from covidzoo.errors import BadInputError
from covidzoo.optim import NovoGrad

# Two tensors ("layers") with the gradients of two steps, chosen so norms are easy:
# layer a: ||g1|| = 5, ||g2|| = 1; layer b: ||g1|| = 2, ||g2|| = 2.
W0 = {"a": [1.0, -2.0], "b": [0.5]}
GRADS = [{"a": [3.0, 4.0], "b": [2.0]}, {"a": [0.6, -0.8], "b": [-2.0]}]


def hand_novograd(lr, beta1, beta2, wd, averaging, eps=1e-8):
    """The two NovoGrad steps in plain Python, straight from the paper's equations."""
    w = {k: list(v) for k, v in W0.items()}
    m = {k: [0.0] * len(v) for k, v in W0.items()}
    v = {}
    c = 1 - beta1 if averaging else 1.0
    for grads in GRADS:
        for k, g in grads.items():
            norm_sq = sum(x * x for x in g)
            v[k] = norm_sq if k not in v else beta2 * v[k] + (1 - beta2) * norm_sq
            d = [gi / (math.sqrt(v[k]) + eps) + wd * wi for gi, wi in zip(g, w[k], strict=True)]
            m[k] = [beta1 * mi + c * di for mi, di in zip(m[k], d, strict=True)]
            w[k] = [wi - lr * mi for wi, mi in zip(w[k], m[k], strict=True)]
    return w


@pytest.mark.parametrize(("wd", "averaging"), [(0.0, False), (0.1, False), (0.1, True)])
def test_novograd_matches_two_hand_computed_steps(wd, averaging):
    params = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in W0.items()}
    opt = covidzoo.get_component("novograd", "optimizer").create(
        params=list(params.values()), lr=0.1, weight_decay=wd, betas=(0.9, 0.5),
        grad_averaging=averaging)
    for grads in GRADS:
        for k, p in params.items():
            p.grad = torch.tensor(grads[k], dtype=torch.float64)
        opt.step()
    expected = hand_novograd(0.1, 0.9, 0.5, wd, averaging)
    for k, p in params.items():
        torch.testing.assert_close(p.detach(), torch.tensor(expected[k], dtype=torch.float64),
                                   rtol=0, atol=1e-12)
    assert opt.state[params["a"]]["exp_avg_sq"].item() == pytest.approx(0.5 * 25 + 0.5 * 1)


def test_novograd_first_step_is_the_normalised_gradient():
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    NovoGrad([w], lr=1.0, eps=0.0).step()
    torch.testing.assert_close(w.detach(), torch.tensor([1 - 0.6, -2 - 0.8], dtype=torch.float64))


def test_novograd_sets_a_second_moment_that_is_still_zero():
    """A tensor whose first gradient is exactly zero (zero_init_last): its second moment stays
    0 and its first non-zero gradient sets it, so that step is the normalised gradient, not
    1 / sqrt(1 - beta2) times larger."""
    w = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
    opt = NovoGrad([w], lr=1.0, betas=(0.9, 0.98))
    w.grad = torch.zeros(2, dtype=torch.float64)
    opt.step()
    assert opt.state[w]["exp_avg_sq"].item() == 0 and w.detach().tolist() == [1.0, -2.0]
    w.grad = torch.tensor([3.0, 4.0], dtype=torch.float64)
    opt.step()
    assert opt.state[w]["exp_avg_sq"].item() == 25
    torch.testing.assert_close(w.detach(), torch.tensor([1 - 0.6, -2 - 0.8], dtype=torch.float64))


@pytest.mark.parametrize(("wd", "averaging", "amsgrad"),
                         [(0.0, False, False), (0.1, True, False), (0.1, False, True)])
def test_novograd_follows_monai_when_first_gradients_are_zero(wd, averaging, amsgrad):
    """Step by step against MONAI's Novograd, with one tensor whose gradients are zero for the
    first two steps (as under zero_init_last) and one with gradients from the start."""
    monai = pytest.importorskip("monai.optimizers")
    gen = torch.Generator().manual_seed(0)
    start = [torch.randn(4, 3, generator=gen, dtype=torch.float64),
             torch.randn(5, generator=gen, dtype=torch.float64)]
    grads = [[torch.zeros(4, 3, dtype=torch.float64) if step < 2 else
              torch.randn(4, 3, generator=gen, dtype=torch.float64),
              torch.randn(5, generator=gen, dtype=torch.float64)] for step in range(6)]
    ours = [w.clone().requires_grad_(True) for w in start]
    theirs = [w.clone().requires_grad_(True) for w in start]
    kw = dict(lr=0.05, betas=(0.9, 0.98), weight_decay=wd, grad_averaging=averaging,
              amsgrad=amsgrad)
    opt, ref = NovoGrad(ours, **kw), monai.Novograd(theirs, **kw)
    for step in grads:
        for w, v, g in zip(ours, theirs, step, strict=True):
            w.grad, v.grad = g.clone(), g.clone()  # MONAI divides the gradient in place
        opt.step()
        ref.step()
        for w, v in zip(ours, theirs, strict=True):  # MONAI keeps v in float32
            torch.testing.assert_close(w.detach(), v.detach(), rtol=1e-6, atol=1e-8)


def test_novograd_amsgrad_keeps_the_largest_second_moment():
    w = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = NovoGrad([w], lr=0.1, betas=(0.0, 0.5), eps=0.0, amsgrad=True)
    for g in ([3.0, 4.0], [0.0, 1.0]):  # v: 25, then 13; the max stays 25
        w.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([-0.06, -0.08 - 0.1 / 5],
                                                        dtype=torch.float64))


def test_novograd_trains_a_tiny_problem():
    torch.manual_seed(0)
    x = torch.randn(64, 4)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.7
    model = torch.nn.Linear(4, 1)
    opt = NovoGrad(model.parameters(), lr=0.05, weight_decay=1e-4, grad_averaging=True)
    first = None
    for _ in range(300):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).squeeze(1), y)
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert loss.item() < 0.01 * first


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd", "rmsprop", "novograd"])
def test_every_builtin_optimizer_steps(name):
    w = torch.nn.Parameter(torch.ones(3))
    opt = covidzoo.get_component(name, "optimizer").create(params=[w], lr=0.1, weight_decay=0.0)
    w.sum().backward()
    opt.step()
    assert (w.detach() < 1).all()


def test_novograd_bad_options():
    with pytest.raises(BadInputError, match="betas"):
        NovoGrad([torch.nn.Parameter(torch.ones(1))], betas=(0.9, 1.0))


def test_novograd_second_moment_stays_float32_for_bf16_after_a_reload():
    w = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = NovoGrad([w], lr=0.1)
    w.grad = torch.ones(3, dtype=torch.bfloat16)
    opt.step()
    reloaded = NovoGrad([w], lr=0.1)
    reloaded.load_state_dict(opt.state_dict())
    reloaded.step()
    assert reloaded.state[w]["exp_avg_sq"].dtype == torch.float32


@pytest.mark.parametrize("name", ["adam", "adamw", "sgd"])
def test_fused_kernels_only_for_parameters_on_cuda(name):
    factory = covidzoo.get_component(name, "optimizer").create
    w = torch.nn.Parameter(torch.ones(3))
    # Param groups whose params are a generator are read once, not exhausted by the check.
    opt = factory(params=[{"params": (p for p in [w])}], lr=0.1, weight_decay=0.0)
    assert not opt.defaults.get("fused") and opt.param_groups[0]["params"] == [w]
    assert not factory(params=[w], lr=0.1, weight_decay=0.0, foreach=True).defaults.get("fused")
    if torch.cuda.is_available():
        g = torch.nn.Parameter(torch.ones(3, device="cuda"))
        assert factory(params=[g], lr=0.1, weight_decay=0.0).defaults["fused"]
        assert not factory(params=[g], lr=0.1, weight_decay=0.0, fused=False).defaults["fused"]


@pytest.mark.parametrize("amsgrad", [False, True])
def test_novograd_under_a_grad_scaler_unscales_and_skips_inf_steps_on_the_device(amsgrad):
    """fp16 training: GradScaler gives NovoGrad its scale and inf flag as tensors. A step with
    an inf gradient changes nothing, and the next finite step is NovoGrad's first."""
    params = {k: torch.tensor(v, requires_grad=True) for k, v in W0.items()}
    opt = NovoGrad(list(params.values()), lr=0.1, weight_decay=0.1, betas=(0.9, 0.5),
                   amsgrad=amsgrad)
    # The scale changes every step (halved after the inf, then doubled): NovoGrad's normalisation
    # would hide a constant scale that was never divided out, not a changing one.
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1)
    reference = {k: torch.tensor(v, requires_grad=True) for k, v in W0.items()}
    plain = NovoGrad(list(reference.values()), lr=0.1, weight_decay=0.1, betas=(0.9, 0.5),
                     amsgrad=amsgrad)
    inf = {"a": [float("inf"), 1.0], "b": [1.0]}
    for grads in [inf, *GRADS]:
        # The loss sum(w * g) has gradient g: scaled by the scaler, unscaled by the optimizer.
        loss = sum((p * torch.tensor(grads[k])).sum() for k, p in params.items())
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        if grads is inf:
            for k, p in params.items():
                assert p.detach().tolist() == W0[k]
            assert opt.state[params["a"]]["exp_avg_sq"].item() == 0
            continue
        for k, p in reference.items():
            p.grad = torch.tensor(grads[k])
        plain.step()
    for k in params:
        torch.testing.assert_close(params[k].detach(), reference[k].detach())
    assert scaler.get_scale() == 2.0**11
