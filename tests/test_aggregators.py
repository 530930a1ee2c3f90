"""Aggregators: pooling rules checked by hand on tiny stand-in backbones, options, composition."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import covidzoo
from covidzoo import hookimpl
from covidzoo.errors import BadInputError, UnknownComponentError
from covidzoo.models.aggregators import (
    SliceAttention,
    SliceMax,
    SliceMean,
    SliceTopK,
    Volume,
    top_k_probability_logit,
)
from covidzoo.plugins import get_plugin_manager


class Slice2D(nn.Module):
    """A timm-style 2D backbone in a few lines: conv, BatchNorm, ReLU, mean pool, linear."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.in_chans, self.num_classes, self.num_features = in_chans, num_classes, 4
        self.conv = nn.Sequential(nn.Conv2d(in_chans, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Linear(4, num_classes)

    def forward_features(self, x):
        return self.conv(x)

    def forward_head(self, x, pre_logits=False):
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def get_classifier(self):
        return self.head

    def forward(self, x):
        return self.forward_head(self.forward_features(x))


class SliceValue(nn.Module):
    """Its logit for a slice is the slice's mean value: tells which slices it was given."""

    def forward(self, x):
        return x.mean(dim=(1, 2, 3))[:, None]


def scans(b=2, c=1, d=6, size=8):
    torch.manual_seed(0)
    return torch.randn(b, c, d, size, size)


def by_hand(backbone, x):
    """Slice logits computed one slice at a time: `B x D x K`."""
    return torch.stack([backbone(x[:, :, i]) for i in range(x.shape[2])], dim=1)


def test_slice_mean_is_the_logit_of_the_mean_slice_probability():
    backbone, x = Slice2D().eval(), scans()
    with torch.no_grad():
        out = SliceMean(backbone).eval()(x)
        expected = torch.sigmoid(by_hand(backbone, x)).mean(dim=1)
    assert out.shape == (2, 1)
    torch.testing.assert_close(torch.sigmoid(out), expected)


def test_slice_mean_with_classes_averages_softmax_probabilities():
    backbone, x = Slice2D(num_classes=3).eval(), scans()
    with torch.no_grad():
        out = SliceMean(backbone).eval()(x)
        expected = by_hand(backbone, x).softmax(dim=-1).mean(dim=1)
    torch.testing.assert_close(out.exp(), expected)
    torch.testing.assert_close(out.softmax(dim=-1), expected)


def test_slice_max_and_topk():
    backbone, x = Slice2D().eval(), scans(d=7)
    with torch.no_grad():
        slice_logits = by_hand(backbone, x)
        torch.testing.assert_close(SliceMax(backbone).eval()(x), slice_logits.max(dim=1).values)
        top3 = torch.sigmoid(slice_logits).topk(3, dim=1).values.mean(dim=1)
        torch.testing.assert_close(torch.sigmoid(SliceTopK(backbone, k=3).eval()(x)), top3)
        # k beyond the number of slices is the plain mean.
        torch.testing.assert_close(SliceTopK(backbone, k=50).eval()(x), SliceMean(backbone)(x))


@pytest.mark.parametrize("value", [-200.0, 200.0])
def test_pooling_stays_finite_where_the_mean_probability_rounds_to_0_or_1(value):
    logits = torch.full((2, 5, 1), value)
    for k in (None, 1, 3):
        torch.testing.assert_close(top_k_probability_logit(logits, k), torch.full((2, 1), value))
    half = torch.tensor([[[value], [-value]]])  # mean probability 1/2: logit 0
    torch.testing.assert_close(top_k_probability_logit(half), torch.zeros(1, 1))


@pytest.mark.parametrize("cls", [SliceMean, SliceAttention])
def test_chunked_equals_unchunked(cls):
    backbone, x = Slice2D().eval(), scans()
    torch.manual_seed(1)
    whole = cls(backbone).eval()
    torch.manual_seed(1)
    chunked = cls(backbone, slice_chunk=5).eval()  # 12 slices: chunks of 5, 5 and 2
    calls = []
    backbone.conv.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    with torch.no_grad():
        torch.testing.assert_close(chunked(x), whole(x))
    assert calls == [5, 5, 2, 12]


def test_train_slices_subsample_in_training_only():
    d, k = 10, 4
    x = torch.arange(d, dtype=torch.float32).view(1, 1, d, 1, 1).expand(3, 1, d, 2, 2)
    agg = SliceMean(SliceValue(), train_slices=k)
    torch.manual_seed(0)
    picks = [agg.train().slice_logits(x)[..., 0] for _ in range(5)]
    for picked in picks:
        assert picked.shape == (3, k)
        for row in picked.tolist():  # distinct real slices, in depth order
            assert row == sorted(set(row)) and set(row) <= set(range(d))
    assert len({tuple(row) for p in picks for row in p.tolist()}) > 1  # random per scan
    assert agg.eval().slice_logits(x)[..., 0].tolist() == [list(range(d))] * 3


def test_one_channel_scans_are_replicated_for_a_three_channel_backbone():
    backbone, x = Slice2D(in_chans=3).eval(), scans(c=1)
    agg = SliceMean(backbone).eval()
    with torch.no_grad():
        torch.testing.assert_close(agg(x), agg(x.expand(-1, 3, -1, -1, -1)))
    with pytest.raises(BadInputError, match="2 channel.*takes 3"):
        agg(scans(c=2))


def test_slice_attention_pools_features_and_trains():
    backbone = Slice2D(num_classes=2)
    agg = SliceAttention(backbone, hidden=8).eval()
    one = scans(b=1, d=1)
    with torch.no_grad():
        # Identical slices: the attention-weighted mean is that slice's features.
        torch.testing.assert_close(agg(one.expand(-1, -1, 5, -1, -1)), backbone(one[:, :, 0]))
        weights = agg.slice_weights(scans())
    assert weights.shape == (2, 6)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    agg.train()(scans()).sum().backward()
    assert all(p.grad is not None for p in agg.parameters())


def test_slice_attention_needs_a_timm_style_backbone():
    with pytest.raises(BadInputError, match="SliceValue lacks forward_features"):
        SliceAttention(SliceValue())


@pytest.mark.parametrize("option", ["slice_chunk", "train_slices"])
@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_bad_options_are_bad_input(option, value):
    with pytest.raises(BadInputError, match=f"{option} must be a positive integer"):
        SliceMean(Slice2D(), **{option: value})


def test_volume_hands_the_scan_to_the_3d_backbone():
    backbone = covidzoo.create_model("tiny3d").eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(Volume(backbone)(x), backbone(x))
    with pytest.raises(BadInputError, match="B x C x D x H x W, got a 4-D tensor"):
        Volume(backbone)(x[0])


# --- composition through create_model ----------------------------------------------------------


class StandIns:
    @hookimpl
    def register_backbones(self, register):
        register("stand-in-2d", Slice2D, spatial_dims=2, input_size=(8, 8))
        register("stand-in-2d-max", Slice2D, spatial_dims=2, input_size=(8, 8),
                 default_aggregator="slice-max")


@pytest.fixture
def stand_ins():
    pm = get_plugin_manager()
    pm.register(StandIns(), name="stand-ins")
    try:
        yield
    finally:
        pm.unregister(name="stand-ins")


def test_create_model_without_aggregator_is_the_bare_backbone(stand_ins):
    assert type(covidzoo.create_model("stand-in-2d")) is Slice2D


def test_auto_uses_default_aggregator_metadata_then_spatial_dims(stand_ins):
    assert type(covidzoo.create_model("stand-in-2d", aggregator="auto")) is SliceMean
    assert type(covidzoo.create_model("stand-in-2d-max", aggregator="auto")) is SliceMax
    assert type(covidzoo.create_model("tiny3d", aggregator="auto")) is Volume
    assert covidzoo.default_aggregator("resdense2d") == "slice-mean"


def test_named_aggregator_with_args_maps_scans_to_logits(stand_ins):
    model = covidzoo.create_model(
        "stand-in-2d", num_classes=3, aggregator="slice-topk",
        aggregator_args={"k": 2, "slice_chunk": 4},
    )
    assert (model.k, model.slice_chunk, model.num_classes) == (2, 4, 3)
    assert model.eval()(scans()).shape == (2, 3)


def test_plugin_aggregator_composes_with_a_3d_backbone():
    model = covidzoo.create_model("tiny3d", aggregator="flip-mean").eval()
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        expected = (model.backbone(x) + model.backbone(x.flip(-1))) / 2
        torch.testing.assert_close(model(x), expected)


def test_mismatched_pairing_is_rejected_with_the_alternatives(stand_ins):
    with pytest.raises(BadInputError, match="'slice-mean' wraps 2D backbones but 'tiny3d' is 3D;"
                       " use one of: flip-mean, volume"):
        covidzoo.create_model("tiny3d", aggregator="slice-mean")
    with pytest.raises(BadInputError, match="'volume' wraps 3D backbones but 'resdense2d' is 2D"):
        covidzoo.create_model("resdense2d", aggregator="volume")
    assert covidzoo.compatible_aggregators("stand-in-2d") == [
        "slice-attention", "slice-max", "slice-mean", "slice-topk"
    ]


def test_unknown_aggregator_suggests_names():
    with pytest.raises(UnknownComponentError, match="unknown aggregator 'slice-men'.*slice-mean"):
        covidzoo.create_model("tiny3d", aggregator="slice-men")
