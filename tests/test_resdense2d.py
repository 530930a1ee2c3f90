"""resdense2d: two timm branches (resnet18 + densenet121 at 64x64 for speed), the timm API,
staged fine-tuning, local weights and composition with a slice aggregator."""

from __future__ import annotations

import pytest
import torch

import covidzoo
from covidzoo.errors import BadInputError
from covidzoo.models.resdense2d import GeM, ResDense2D

SMALL = ("resnet18", "densenet121")
# The last two parameterised layers of each small branch, in forward order.
LAST_TWO = [
    "branches.0.layer4.1.conv2.weight",
    "branches.0.layer4.1.bn2.weight",
    "branches.0.layer4.1.bn2.bias",
    "branches.1.features.denseblock4.denselayer16.conv2.weight",
    "branches.1.features.norm5.weight",
    "branches.1.features.norm5.bias",
]
HEAD = [
    "projections.0.0.weight",
    "projections.0.1.weight",
    "projections.0.1.bias",
    "projections.1.0.weight",
    "projections.1.1.weight",
    "projections.1.1.bias",
    "head.weight",
    "head.bias",
]


def small(**kwargs) -> ResDense2D:
    torch.manual_seed(0)
    return ResDense2D(backbones=SMALL, **kwargs)


def test_default_model_parameter_count_is_pinned():
    """ResNet-101 (42,493,888 without fc) + DenseNet-121 (6,947,584 without classifier), 1x1
    projections 2048->512 and 1024->512 with BatchNorm, and a 512->1 head."""
    model = covidzoo.create_model("resdense2d")
    assert model.backbone_names == ("resnet101", "densenet121")
    assert sum(p.numel() for p in model.parameters()) == 51_016_897
    assert model.num_features == 512 and model.in_chans == 1


def test_registered_metadata():
    meta = covidzoo.get_component("resdense2d").metadata
    assert meta["spatial_dims"] == 2 and meta["input_size"] == (256, 256)
    assert meta["default_aggregator"] == "slice-mean"
    assert meta["default_cfg"]["backbones"] == ["resnet101", "densenet121"]


@pytest.mark.parametrize("pool", ["avg", "gem"])
def test_forward_head_and_classifier_api(pool):
    model = small(num_classes=3, in_chans=3, pool=pool, drop_rate=0.2).eval()
    x = torch.randn(2, 3, 64, 64)
    features = model.forward_features(x)
    assert features.shape == (2, 512, 2, 2) and (features >= 0).all()
    assert model.forward_head(features, pre_logits=True).shape == (2, 512)
    assert model(x).shape == (2, 3)
    model.reset_classifier(5, global_pool="avg")
    assert model(x).shape == (2, 5) and model.get_classifier().out_features == 5
    model.reset_classifier(0)
    assert model(x).shape == (2, 512)


def test_gem_is_learnable_and_generalizes_average_pooling():
    gem = GeM(p=1.0)
    x = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(gem(x), x.mean(dim=(2, 3)))
    model = small(pool="gem")
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    assert model.global_pool.p.grad is not None


def test_feature_maps_of_different_sizes_are_resized_to_the_first_branch():
    # At 72x72 resnet18 gives 3x3 maps (padded strides) and densenet121 2x2 (floored pools).
    model = small().eval()
    x = torch.randn(1, 1, 72, 72)
    sizes = [tuple(b.forward_features(x).shape[-2:]) for b in model.branches]
    assert sizes == [(3, 3), (2, 2)]
    assert model.forward_features(x).shape == (1, 512, 3, 3)


def test_bad_configurations_are_bad_input():
    with pytest.raises(BadInputError, match="needs two timm backbones, got 1"):
        ResDense2D(backbones="resnet18")
    with pytest.raises(BadInputError, match="'resnet19' is not a timm model name"):
        ResDense2D(backbones="resnet19,densenet121")
    with pytest.raises(BadInputError, match="pool 'max' is unknown"):
        ResDense2D(backbones=SMALL, pool="max")


def test_freeze_and_unfreeze_change_exactly_the_intended_parameters():
    model = small(pool="gem")
    everything = [name for name, _ in model.named_parameters()]
    assert model.trainable_parameter_names() == everything
    model.freeze_backbones()
    assert model.trainable_parameter_names() == HEAD[:6] + ["global_pool.p"] + HEAD[6:]
    model.unfreeze_last(2)
    assert sorted(model.trainable_parameter_names()) == sorted(LAST_TWO + HEAD + ["global_pool.p"])
    model(torch.randn(2, 1, 64, 64)).sum().backward()
    with_grad = {n for n, p in model.named_parameters() if p.grad is not None}
    assert with_grad == set(model.trainable_parameter_names())
    model.unfreeze_last(10_000)
    assert model.trainable_parameter_names() == everything
    with pytest.raises(BadInputError):
        model.unfreeze_last(-1)


def test_eval_frozen_puts_exactly_the_frozen_layers_in_inference_mode():
    from covidzoo.loop import eval_frozen

    model = small()
    model.freeze_backbones()
    model.train()
    eval_frozen(model)
    assert not any(m.training for m in model.branches.modules())
    assert all(m.training for m in model.projections.modules()) and model.head_drop.training
    model.unfreeze_last(2)
    model.train()
    eval_frozen(model)
    resnet = model.branches[0]
    assert resnet.layer4[1].bn2.training and not resnet.layer4[1].bn1.training
    assert not resnet.bn1.training and model.branches[1].features.norm5.training
    x = torch.randn(2, 1, 64, 64)
    stats = resnet.bn1.running_mean.clone()
    model(x)
    assert torch.equal(resnet.bn1.running_mean, stats)


def test_grad_checkpointing_is_delegated_and_gives_the_same_gradients():
    x = torch.randn(2, 1, 64, 64)
    grads = []
    for enable in (False, True):
        model = small().eval()  # eval: BatchNorm statistics do not change between the passes
        model.set_grad_checkpointing(enable)
        model(x).sum().backward()
        grads.append(model.branches[1].features.conv0.weight.grad)
    assert model.branches[0].grad_checkpointing
    torch.testing.assert_close(grads[0], grads[1])


def test_channels_last_gives_the_same_logits():
    model, x = small().eval(), torch.randn(2, 1, 64, 64)
    with torch.no_grad():
        expected = model(x)
        model = model.to(memory_format=torch.channels_last)
        out = model(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)


# --- local pretrained weights ------------------------------------------------------------------


def branch_states(model):
    return [{k: v.contiguous() for k, v in b.state_dict().items()} for b in model.branches]


def assert_branches_equal(a, b):
    for sa, sb in zip(branch_states(a), branch_states(b), strict=True):
        for k in sa:
            torch.testing.assert_close(sa[k], sb[k])


def test_pretrained_path_one_file_per_branch(tmp_path):
    from safetensors.torch import save_file

    source = small()
    paths = [tmp_path / "resnet18.safetensors", tmp_path / "densenet121.safetensors"]
    states = branch_states(source)
    states[0]["fc.weight"] = torch.zeros(1000, 512)  # a timm file's classifier is ignored
    for state, path in zip(states, paths, strict=True):
        save_file(state, str(path))
    torch.manual_seed(1)
    loaded = ResDense2D(backbones=SMALL, pretrained_path=f"{paths[0]},{paths[1]}")
    assert_branches_equal(loaded, source)
    assert loaded.pretrained and not source.pretrained


def test_pretrained_path_one_prefixed_file_and_three_channel_stem(tmp_path):
    from safetensors.torch import save_file

    source = small(in_chans=3)
    prefixed = {
        f"{name}.{k}": v
        for name, state in zip(SMALL, branch_states(source), strict=True)
        for k, v in state.items()
    }
    save_file(prefixed, str(tmp_path / "both.safetensors"))
    torch.manual_seed(1)
    loaded = ResDense2D(backbones=SMALL, in_chans=1, pretrained_path=tmp_path / "both.safetensors")
    # A 3-channel stem becomes a 1-channel one by summing over channels (timm's rule).
    torch.testing.assert_close(
        loaded.branches[0].conv1.weight, source.branches[0].conv1.weight.sum(1, keepdim=True)
    )
    torch.testing.assert_close(loaded.branches[1].features.norm5.weight,
                               source.branches[1].features.norm5.weight)


def test_pretrained_path_that_does_not_fit_is_bad_input(tmp_path):
    from safetensors.torch import save_file

    resnet, densenet = branch_states(small())
    save_file(resnet, str(tmp_path / "r.safetensors"))
    save_file(densenet, str(tmp_path / "d.safetensors"))
    swapped = [tmp_path / "d.safetensors", tmp_path / "r.safetensors"]
    with pytest.raises(BadInputError, match="'.*d.safetensors' do not fit ResNet: .* missing key"):
        ResDense2D(backbones=SMALL, pretrained_path=swapped)
    resnet["conv1.weight"] = torch.zeros(32, 1, 7, 7)
    save_file(resnet, str(tmp_path / "r.safetensors"))
    with pytest.raises(BadInputError, match=r"'conv1.weight' has shape \(32, 1, 7, 7\)"):
        ResDense2D(backbones=SMALL, pretrained_path=[tmp_path / "r.safetensors", swapped[0]])
    with pytest.raises(BadInputError, match="no key starting with 'resnet18.'"):
        ResDense2D(backbones=SMALL, pretrained_path=tmp_path / "r.safetensors")
    with pytest.raises(BadInputError, match="is not a file"):
        ResDense2D(backbones=SMALL, pretrained_path=tmp_path / "missing.safetensors")


# --- composition -------------------------------------------------------------------------------


def test_composes_with_slice_mean_into_a_scan_model():
    model = covidzoo.create_model(
        "resdense2d", backbones=SMALL, aggregator="auto", aggregator_args={"slice_chunk": 3}
    ).eval()
    x = torch.randn(2, 1, 4, 64, 64)
    with torch.no_grad():
        slices = torch.stack([model.backbone(x[:, :, i]) for i in range(4)], dim=1)
        torch.testing.assert_close(torch.sigmoid(model(x)), torch.sigmoid(slices).mean(dim=1))
