"""Mixup, cutmix and the soft-target loss (covidzoo.mixing)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from covidzoo.errors import BadInputError
from covidzoo.mixing import BatchMixer, draw_mix, mix_batch


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def distinct_batch(shape: tuple[int, ...]) -> torch.Tensor:
    """Every value different, so a changed voxel shows and says where it came from."""
    return torch.arange(math.prod(shape), dtype=torch.float32).view(shape)


@pytest.mark.parametrize("shape", [(4, 1, 3, 4, 5), (5, 2, 4, 6)])
def test_mixup_is_lam_x_plus_partner(shape: tuple[int, ...]) -> None:
    x = torch.randn(shape, generator=gen(1))
    y = torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])[: shape[0]]
    out, soft = mix_batch(x, y, mixup_alpha=0.4, generator=gen(7))
    mix = draw_mix(shape[0], shape[2:], mixup_alpha=0.4, generator=gen(7))
    assert mix is not None and mix.kind == "mixup" and mix.box is None
    lam, partner = mix.lam, mix.partner
    assert 0 < lam < 1
    assert torch.equal(out, lam * x + (1 - lam) * x[partner])
    assert torch.equal(soft, lam * y + (1 - lam) * y[partner])
    assert not torch.equal(out, x)


def test_binary_targets_keep_their_shape() -> None:
    x, y = torch.randn(4, 1, 2, 3, 3), torch.tensor([[1.0], [0.0], [0.0], [1.0]])
    _, soft = mix_batch(x, y, mixup_alpha=1.0, generator=gen())
    assert soft.shape == (4, 1)
    assert ((soft >= 0) & (soft <= 1)).all()


@pytest.mark.parametrize("batch", [2, 3, 4, 7])
def test_partner_is_another_sample(batch: int) -> None:
    seen = set()
    for seed in range(30):
        mix = draw_mix(batch, (4, 4), mixup_alpha=1.0, generator=gen(seed))
        assert sorted(mix.partner.tolist()) == list(range(batch))  # a permutation
        assert (mix.partner != torch.arange(batch)).all()  # nobody mixed with itself
        seen.add(tuple(mix.partner.tolist()))
    assert len(seen) > 1 or batch == 2  # drawn, not fixed


@pytest.mark.parametrize("shape", [(3, 1, 6, 7, 8), (3, 2, 9, 10)])
def test_cutmix_box_comes_from_the_partner(shape: tuple[int, ...]) -> None:
    x = distinct_batch(shape)
    y = torch.tensor([1.0, 0.0, 0.0])
    for seed in range(50):  # a seed whose box is neither empty nor the whole scan
        mix = draw_mix(3, shape[2:], cutmix_alpha=1.0, generator=gen(seed))
        if 0 < mix.lam < 1:
            break
    else:
        pytest.fail("no seed drew a proper box")
    assert mix.kind == "cutmix" and len(mix.box) == len(shape) - 2
    out, soft = mix_batch(x, y, cutmix_alpha=1.0, generator=gen(seed))
    region = (slice(None), slice(None), *(slice(a, b) for a, b in mix.box))
    inside = torch.zeros(shape, dtype=torch.bool)
    inside[region] = True
    assert torch.equal(out[inside], x[mix.partner][inside])
    assert torch.equal(out[~inside], x[~inside])
    # The corrected lambda is the fraction of each scan the box left alone.
    changed = (out != x)[:, 0].sum().item() / out[:, 0].numel()
    assert 0 < changed < 1
    assert mix.lam == pytest.approx(1 - changed, abs=1e-12)
    assert torch.allclose(soft, mix.lam * y + (1 - mix.lam) * y[mix.partner], atol=0, rtol=0)


@pytest.mark.parametrize(("spatial", "exponent"), [((40, 40, 40), 1 / 3), ((40, 40), 1 / 2)])
def test_cutmix_box_side_scales_with_the_number_of_dims(spatial: tuple[int, ...],
                                                        exponent: float) -> None:
    """With lam ~ 0.5 (a huge alpha), the box's sides are (1 - lam) ** (1 / dims) of the scan's
    where the border does not clip them, and lam is corrected to the clipped box."""
    side = int(40 * 0.5**exponent)  # 31 in 3D, 28 in 2D
    unclipped = 0
    for seed in range(40):
        mix = draw_mix(2, spatial, cutmix_alpha=1e7, generator=gen(seed))
        sides = [b - a for a, b in mix.box]
        for a, b in mix.box:
            if a > 0 and b < 40:  # touches no border: not clipped
                unclipped += 1
                assert b - a == side
            assert b - a <= side
        assert mix.lam == pytest.approx(1 - math.prod(sides) / 40 ** len(spatial), abs=1e-12)
    assert unclipped > 0


@pytest.mark.parametrize("kind", ["mixup_alpha", "cutmix_alpha"])
def test_channels_last_3d_stays(kind: str) -> None:
    """The trainer feeds channels_last_3d scans where that was measured fastest."""
    x = torch.randn(4, 2, 3, 4, 5).contiguous(memory_format=torch.channels_last_3d)
    out, _ = mix_batch(x, torch.zeros(4), generator=gen(), **{kind: 1.0})
    assert out.is_contiguous(memory_format=torch.channels_last_3d)
    assert not out.is_contiguous()


def test_switch_prob_chooses_cutmix_or_mixup() -> None:
    kinds = {p: {draw_mix(4, (5, 5, 5), mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=p,
                          generator=gen(s)).kind for s in range(20)} for p in (0.0, 0.5, 1.0)}
    assert kinds == {0.0: {"mixup"}, 0.5: {"mixup", "cutmix"}, 1.0: {"cutmix"}}


def test_class_indices_become_mixed_probabilities() -> None:
    x, y = torch.randn(4, 1, 2, 3, 3), torch.tensor([0, 2, 1, 2])
    out, soft = mix_batch(x, y, mixup_alpha=1.0, num_classes=3, generator=gen(3))
    mix = draw_mix(4, (2, 3, 3), mixup_alpha=1.0, generator=gen(3))
    onehot = F.one_hot(y, 3).float()
    assert soft.shape == (4, 3)
    assert torch.equal(soft, mix.lam * onehot + (1 - mix.lam) * onehot[mix.partner])
    assert torch.allclose(soft.sum(1), torch.ones(4))
    with pytest.raises(ValueError, match="num_classes"):
        mix_batch(x, y, mixup_alpha=1.0, generator=gen())


@pytest.mark.parametrize("kind", ["mixup_alpha", "cutmix_alpha"])
def test_same_seed_same_mix(kind: str) -> None:
    x, y = torch.randn(6, 1, 4, 5, 6), torch.tensor([1.0, 0, 1, 0, 1, 0])
    first = mix_batch(x, y, generator=gen(5), **{kind: 1.0})
    again = mix_batch(x, y, generator=gen(5), **{kind: 1.0})
    other = [mix_batch(x, y, generator=gen(s), **{kind: 1.0})[0] for s in range(6, 10)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    assert any(not torch.equal(first[0], o) for o in other)


def test_batch_mixer_state_round_trip() -> None:
    x, y = torch.randn(4, 1, 3, 4, 4), torch.tensor([1.0, 0, 0, 1])
    mixer = BatchMixer(0.4, 1.0, seed=2)
    mixer(x, y)
    state = mixer.state_dict()
    expected = mixer(x, y)
    assert not torch.equal(expected[0], mixer(x, y)[0])  # the stream moves on
    mixer.load_state_dict(state)
    restored = mixer(x, y)
    assert torch.equal(restored[0], expected[0]) and torch.equal(restored[1], expected[1])
    # Its own stream: not the generator a ScanAugment of the same seed draws from.
    assert not torch.equal(BatchMixer(1.0, seed=2).generator.get_state(),
                           torch.Generator().manual_seed(2).get_state())


def test_alpha_zero_or_one_sample_is_identity() -> None:
    x, y = torch.randn(3, 1, 2, 3, 3), torch.tensor([1.0, 0, 1])
    g = gen(4)
    before = g.get_state()
    out, soft = mix_batch(x, y, generator=g)
    assert out is x and soft is y
    assert torch.equal(g.get_state(), before)  # nothing drawn
    out, soft = mix_batch(x[:1], y[:1], mixup_alpha=1.0, cutmix_alpha=1.0, generator=g)
    assert out is not None and torch.equal(out, x[:1]) and torch.equal(soft, y[:1])
    _, onehot = mix_batch(x, torch.tensor([1, 0, 1]), num_classes=2, generator=g)
    assert torch.equal(onehot, torch.tensor([[0.0, 1], [1, 0], [0, 1]]))


@pytest.mark.parametrize(("kwargs", "flag"), [
    ({"mixup_alpha": -0.1}, "--mixup"), ({"mixup_alpha": math.nan}, "--mixup"),
    ({"cutmix_alpha": math.inf}, "--cutmix"), ({"cutmix_alpha": -1.0}, "--cutmix"),
    ({"mixup_alpha": 1.0, "switch_prob": 1.5}, "switch_prob"),
    ({"mixup_alpha": 1.0, "switch_prob": -0.1}, "switch_prob"),
])
def test_bad_arguments_name_the_flag(kwargs: dict, flag: str) -> None:
    with pytest.raises(BadInputError, match=flag):
        mix_batch(torch.zeros(2, 1, 2, 2, 2), torch.zeros(2), generator=gen(), **kwargs)
    with pytest.raises(BadInputError, match=flag):
        BatchMixer(**kwargs)
