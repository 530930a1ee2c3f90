"""The moving average of a model's weights (covidzoo.ema)."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from covidzoo.checkpoint import load_state, save_state
from covidzoo.ema import ModelEma
from covidzoo.errors import BadInputError


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 1))


def set_weights(model: nn.Module, offset: float) -> None:
    """Known weights in eighths, so that 0.75 * a + 0.25 * b is exact in float32."""
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            p.copy_((torch.arange(p.numel()).view(p.shape) + 3 * i + offset) / 8)


class Wrapper(nn.Module):
    """Stands for DistributedDataParallel: the model in `.module`."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


def test_one_update_is_the_weighted_mean() -> None:
    model = small_model()
    set_weights(model, 0)
    old = [p.detach().clone() for p in model.parameters()]
    ema = ModelEma(model, 0.75, warmup=False)
    set_weights(model, 5)
    ema.update(model)
    for before, now, averaged in zip(old, model.parameters(), ema.module.parameters(),
                                     strict=True):
        assert torch.equal(averaged, 0.75 * before + 0.25 * now.detach())
        assert not torch.equal(averaged, before) and not torch.equal(averaged, now)
    assert ema.updates == 1


def test_random_weights_follow_the_formula_over_steps() -> None:
    model = small_model()
    ema = ModelEma(model, 0.9, warmup=False)
    expected = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(3):
        opt.zero_grad()
        model(torch.randn(5, 3, generator=torch.Generator().manual_seed(step))).sum().backward()
        opt.step()
        ema.update(model)
        expected = [0.9 * e + 0.1 * p.detach()
                    for e, p in zip(expected, model.parameters(), strict=True)]
    for e, averaged in zip(expected, ema.module.parameters(), strict=True):
        torch.testing.assert_close(averaged, e, rtol=1e-6, atol=1e-7)


def test_buffers_are_copied_not_averaged() -> None:
    model = small_model()
    ema = ModelEma(model, 0.99, warmup=False)
    model.train()
    model(torch.randn(8, 3) * 4 + 2)  # moves the BatchNorm running statistics
    bn = model[1]
    assert not torch.equal(bn.running_mean, ema.module[1].running_mean)
    ema.update(model)
    pairs = zip(ema.module.named_buffers(), model.named_buffers(), strict=True)
    for (name, mine), (_, theirs) in pairs:
        assert torch.equal(mine, theirs), name
    assert ema.module[1].num_batches_tracked.item() == 1


def test_the_copy_is_separate_frozen_and_in_eval_mode() -> None:
    model = small_model().train()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    ema = ModelEma(model, 0.5)
    assert not ema.module.training and model.training
    assert all(not p.requires_grad and p.grad is None for p in ema.module.parameters())
    assert all(p.requires_grad for p in model.parameters())
    before = [p.clone() for p in ema.module.parameters()]
    set_weights(model, 1)  # the model moves on; the average waits for update()
    assert all(torch.equal(b, p) for b, p in zip(before, ema.module.parameters(), strict=True))


def test_warmup_decay() -> None:
    model = small_model()
    ema = ModelEma(model, 0.99)
    decays = []
    for _ in range(4):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == pytest.approx([1 / 10, 2 / 11, 3 / 12, 4 / 13])
    ema.updates = 10_000
    assert ema.current_decay() == 0.99
    assert ModelEma(model, 0.99, warmup=False).current_decay() == 0.99
    # The first update with warm-up keeps a tenth of the initial weights.
    set_weights(model, 0)
    ema = ModelEma(model, 0.99)
    old = [p.detach().clone() for p in model.parameters()]
    set_weights(model, 2)
    ema.update(model)
    for before, now, averaged in zip(old, model.parameters(), ema.module.parameters(),
                                     strict=True):
        torch.testing.assert_close(averaged, 0.1 * before + 0.9 * now.detach())


@pytest.mark.parametrize("through_files", [False, True])
def test_state_dict_round_trip_reproduces_the_next_update(tmp_path, through_files: bool) -> None:
    model = small_model()
    ema = ModelEma(model, 0.95)
    for offset in (1, 2, 3):
        set_weights(model, offset * 0.3)
        ema.update(model)
    state = copy.deepcopy(ema.state_dict())
    if through_files:  # as a run saves it beside last.safetensors
        save_state(tmp_path / "last.safetensors", {"ema": state})
        state = load_state(tmp_path / "last.safetensors")["ema"]
    resumed = ModelEma(small_model(), 0.95)  # other weights, no updates yet
    resumed.load_state_dict(state)
    assert resumed.updates == 3
    set_weights(model, 7.7)
    ema.update(model)
    resumed.update(model)
    theirs = ema.module.state_dict()
    for name, mine in resumed.module.state_dict().items():
        assert torch.equal(mine, theirs[name]), name


def test_load_refuses_another_decay() -> None:
    state = ModelEma(small_model(), 0.9).state_dict()
    with pytest.raises(BadInputError, match="decay 0.9"):
        ModelEma(small_model(), 0.99).load_state_dict(state)
    with pytest.raises(BadInputError, match="warm-up"):
        ModelEma(small_model(), 0.9, warmup=False).load_state_dict(state)


@pytest.mark.parametrize("decay", [-0.1, 1.0, 1.5, math.nan, math.inf])
def test_bad_decay_names_the_flag(decay: float) -> None:
    with pytest.raises(BadInputError, match="--ema"):
        ModelEma(small_model(), decay)


def test_decay_zero_copies_the_model() -> None:
    model = small_model()
    ema = ModelEma(model, 0.0)
    set_weights(model, 4)
    ema.update(model)
    pairs = zip(ema.module.parameters(), model.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


@pytest.mark.parametrize("wrap", [Wrapper, torch.compile])
def test_wrapped_models_are_unwrapped(wrap) -> None:
    model = small_model()
    set_weights(model, 0)
    wrapped = wrap(model)
    ema = ModelEma(wrapped, 0.75, warmup=False)
    assert type(ema.module) is nn.Sequential
    set_weights(model, 1)
    ema.update(wrapped)
    for averaged, now in zip(ema.module.parameters(), model.parameters(), strict=True):
        assert torch.equal(averaged, 0.75 * (now.detach() - 1 / 8) + 0.25 * now.detach())
