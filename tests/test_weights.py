"""Initial weights from local files (`covidzoo.weights`): safe reading, name matching, the
report, and I3D inflation of 2D kernels into a 3D network."""

from __future__ import annotations

import json
import pickle
import warnings

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from covidzoo.errors import BadInputError
from covidzoo.weights import (
    InitReport,
    format_report,
    load_init_weights,
    timm_regnet_key,
)


class Net2d(nn.Module):
    """A tiny 2D CNN: conv-BN-ReLU, grouped strided conv-BN-ReLU, 1x1 conv, pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.bn2 = nn.BatchNorm2d(6)
        self.conv3 = nn.Conv2d(6, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean((2, 3)))


class Net3d(nn.Module):
    """`Net2d` in 3D. Depth is not padded (a zero-padded depth border would see a different
    volume than the 2D net), so every output slice sees identical input slices."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(2, 4, 3, padding=(0, 1, 1), bias=False)
        self.bn1 = nn.BatchNorm3d(4)
        self.conv2 = nn.Conv3d(4, 6, 3, stride=2, padding=(0, 1, 1), groups=2)
        self.bn2 = nn.BatchNorm3d(6)
        self.conv3 = nn.Conv3d(6, 6, 1)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.head(self.conv3(x).mean((2, 3, 4)))


class Wrapped(nn.Module):
    """A model whose keys carry a leading name the file lacks, as an aggregator's do."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Net2d()
        self.extra = nn.Linear(3, 1)


KERNELS = ["conv1.weight", "conv2.weight", "conv3.weight"]


def trained_2d(seed: int = 0) -> Net2d:
    """A 2D net with random weights and random BatchNorm statistics, in eval mode."""
    torch.manual_seed(seed)
    net = Net2d()
    for bn in (net.bn1, net.bn2):
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.data.uniform_(0.5, 1.5)
        bn.bias.data.uniform_(-0.5, 0.5)
    return net.eval()


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def save(path, state) -> str:
    if str(path).endswith(".safetensors"):
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return str(path)


# --- inflation -----------------------------------------------------------------------------------


def test_inflated_2d_weights_give_the_2d_activations(tmp_path):
    net2d = trained_2d()
    path = save(tmp_path / "net2d.safetensors", net2d.state_dict())
    torch.manual_seed(1)
    net3d = Net3d().eval()
    report = load_init_weights(net3d, path, inflate=True)
    assert report.inflated == KERNELS
    assert report.missing == report.unexpected == report.mismatched == []
    image = torch.randn(2, 2, 8, 8)
    depth = 7  # conv1 leaves 5 slices, conv2 (stride 2) 2: both see identical slices only
    volume = image.unsqueeze(2).expand(-1, -1, depth, -1, -1).contiguous()
    with torch.no_grad():
        torch.testing.assert_close(net3d(volume), net2d(image), atol=1e-5, rtol=0)
    # The kernel is spread over depth: kd copies, each divided by kd.
    torch.testing.assert_close(net3d.conv1.weight.sum(2), net2d.conv1.weight, atol=1e-6, rtol=0)
    torch.testing.assert_close(net3d.conv1.weight[:, :, 0] * 3, net2d.conv1.weight)


def test_without_inflation_2d_kernels_are_shape_mismatched_and_left_alone(tmp_path):
    path = save(tmp_path / "net2d.pth", trained_2d().state_dict())
    net3d = Net3d()
    before = snapshot(net3d)
    report = load_init_weights(net3d, path)
    assert report.inflated == []
    assert report.mismatched == [
        ("conv1.weight", (4, 2, 3, 3), (4, 2, 3, 3, 3)),
        ("conv2.weight", (6, 2, 3, 3), (6, 2, 3, 3, 3)),
        ("conv3.weight", (6, 6, 1, 1), (6, 6, 1, 1, 1)),
    ]
    assert "conv2.bias" in report.loaded and "bn1.running_var" in report.loaded
    for key, _, _ in report.mismatched:
        assert torch.equal(net3d.state_dict()[key], before[key])


def test_only_2d_kernels_inflate():
    """A kernel whose spatial size or channels differ is a mismatch even with inflation."""
    from covidzoo.weights import _inflatable

    assert _inflatable((4, 2, 3, 3), (4, 2, 5, 3, 3))
    assert not _inflatable((4, 2, 3, 3), (4, 2, 3, 5, 5))
    assert not _inflatable((4, 3, 3, 3), (4, 2, 3, 3, 3))
    assert not _inflatable((4, 2, 3, 3, 3), (4, 2, 3, 3, 3))


# --- file formats and containers -----------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".safetensors", ".pth", ".pt", ".bin"])
def test_safetensors_and_pytorch_files_load_keeping_the_models_dtype(tmp_path, suffix):
    source = trained_2d()
    # float64 in the file: the model stays float32.
    path = save(tmp_path / f"w{suffix}", {k: v.double() if v.is_floating_point() else v
                                          for k, v in source.state_dict().items()})
    torch.manual_seed(5)
    model = Net2d()
    report = load_init_weights(model, path)
    assert len(report.loaded) == len(source.state_dict())
    assert all(p.dtype == torch.float32 for p in model.parameters())
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_medicalnet_nesting_and_module_prefix(tmp_path):
    source = trained_2d()
    state = {f"module.{k}": v for k, v in source.state_dict().items()}
    path = save(tmp_path / "resnet_10.pth",
                {"state_dict": state, "epoch": 3, "optimizer": {"lr": 0.1}, "arch": "resnet"})
    model = Net2d()
    report = load_init_weights(model, path)
    assert report.strip_prefix == "module." and report.unexpected == []
    assert sorted(report.loaded) == sorted(source.state_dict())
    torch.testing.assert_close(model.conv2.weight, source.conv2.weight)


@pytest.mark.parametrize("container", ["model", "net", "model_state_dict"])
def test_other_containers_unwrap(tmp_path, container):
    source = trained_2d()
    path = save(tmp_path / "w.pt", {container: source.state_dict(), "step": 10})
    model = Net2d()
    load_init_weights(model, path)
    torch.testing.assert_close(model.head.weight, source.head.weight)


def test_a_leading_name_the_model_has_is_added(tmp_path):
    source = trained_2d()
    path = save(tmp_path / "w.safetensors", source.state_dict())
    model = Wrapped()
    extra = snapshot(model.extra)
    report = load_init_weights(model, path)
    assert report.add_prefix == "backbone."
    assert report.missing == ["extra.weight", "extra.bias"] and report.unexpected == []
    torch.testing.assert_close(model.backbone.conv1.weight, source.conv1.weight)
    assert all(torch.equal(v, extra[k]) for k, v in model.extra.state_dict().items())


# --- the report ----------------------------------------------------------------------------------


def test_missing_unexpected_and_mismatched_are_reported_exactly(tmp_path):
    state = trained_2d().state_dict()
    del state["conv3.weight"], state["bn2.running_mean"], state["bn2.num_batches_tracked"]
    state["head.weight"] = torch.ones(5, 6)
    state["decoder.weight"] = torch.ones(2)
    state["note"] = torch.zeros(())  # unexpected too
    path = save(tmp_path / "w.safetensors", state)
    model = Net2d()
    before = snapshot(model)
    report = load_init_weights(model, path)
    assert report.missing == ["bn2.running_mean", "conv3.weight"]  # model order; counter left out
    assert report.unexpected == ["decoder.weight", "note"]
    assert report.mismatched == [("head.weight", (5, 6), (3, 6))]
    assert report.inflated == []
    assert report.loaded == [k for k in model.state_dict() if k in state and k != "head.weight"]
    # Nothing it did not load was touched.
    for key in ["bn2.running_mean", "conv3.weight", "head.weight", "bn2.num_batches_tracked"]:
        assert torch.equal(model.state_dict()[key], before[key]), key
    data = json.loads(json.dumps(report.to_dict()))
    assert data["mismatched"] == [
        {"key": "head.weight", "file_shape": [5, 6], "model_shape": [3, 6]}]
    rows = format_report(report, examples=2)
    assert [(what, n) for what, n, _ in rows] == [
        ("loaded", len(report.loaded)), ("inflated", 0), ("missing", 2), ("unexpected", 2),
        ("shape mismatch", 1)]
    assert rows[0][2].endswith(f"({len(report.loaded) - 2} more)")
    assert rows[4][2] == "head.weight 5x6 -> 3x6"
    assert f"loaded {len(report.loaded)} of 16 tensors of Net2d" in report.summary()


def test_report_rows_escape_control_characters():
    report = InitReport(path="w.pth", model="Net", unexpected=["evil\nkey"])
    assert format_report(report)[3][2] == "evil\\nkey"


# --- refusals ------------------------------------------------------------------------------------


class Payload:
    """Unpickling this creates `marker`: code from the file running."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_payload_runs_when_unpickled(tmp_path):
    """The payload of the next test is live: plain unpickling runs it."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(Payload(str(marker))))
    assert marker.exists()


@pytest.mark.parametrize("wrap", [
    lambda obj, state: obj,
    lambda obj, state: {"x": obj},
    lambda obj, state: {"state_dict": state, "args": obj},
])
def test_pickled_objects_are_refused_and_never_run(tmp_path, wrap):
    marker = tmp_path / "ran"
    path = tmp_path / "evil.pth"
    torch.save(wrap(Payload(str(marker)), trained_2d().state_dict()), path)
    model = Net2d()
    before = snapshot(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch's note about the pickle protocol
        with pytest.raises(BadInputError) as info:
            load_init_weights(model, path)
    message = str(info.value)
    assert not marker.exists()
    assert str(path) in message and "objects other than tensors" in message
    assert "\n" not in message
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nothing_matching_is_an_error(tmp_path):
    path = save(tmp_path / "other.safetensors",
                {"encoder.alpha": torch.ones(2), "encoder.beta": torch.ones(3)})
    with pytest.raises(BadInputError, match=r"other\.safetensors: no tensor matches Net2d's "
                       r"parameters \(first keys of the file: encoder\.alpha, encoder\.beta\)"):
        load_init_weights(Net2d(), path)


def test_names_that_match_only_with_other_shapes_are_an_error_with_a_hint(tmp_path):
    state = {k: v for k, v in trained_2d().state_dict().items() if k in KERNELS}
    path = save(tmp_path / "kernels.safetensors", state)
    with pytest.raises(BadInputError, match="3 names match but not in shape.*with inflation"):
        load_init_weights(Net3d(), path)


def test_a_file_without_tensors_is_an_error(tmp_path):
    path = save(tmp_path / "w.pth", {"epoch": 3, "state_dict": {"lr": 0.1}})
    with pytest.raises(BadInputError, match="holds no named tensors"):
        load_init_weights(Net2d(), path)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_nan_or_inf_in_a_loaded_tensor_is_refused_before_anything_is_copied(tmp_path, value):
    state = trained_2d().state_dict()
    state["bn2.weight"][1] = value
    path = save(tmp_path / "w.safetensors", state)
    model = Net2d()
    before = snapshot(model)
    with pytest.raises(BadInputError, match="tensor 'bn2.weight' holds NaN or infinite"):
        load_init_weights(model, path)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_nan_in_a_tensor_that_is_not_loaded_is_ignored(tmp_path):
    state = trained_2d().state_dict()
    state["unused"] = torch.tensor([float("nan")])
    report = load_init_weights(Net2d(), save(tmp_path / "w.safetensors", state))
    assert report.unexpected == ["unused"]


def _truncated(path):
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garbage(path):
    path.write_bytes(b"\x80\x02this is not a pickle at all" * 3)


def _empty(path):
    path.write_bytes(b"")


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
@pytest.mark.parametrize("spoil", [_truncated, _garbage, _empty])
def test_corrupt_files_are_one_line_errors_naming_the_file(tmp_path, suffix, spoil):
    path = tmp_path / f"w{suffix}"
    save(path, trained_2d().state_dict())
    spoil(path)
    with pytest.raises(BadInputError) as info:
        load_init_weights(Net2d(), path)
    assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)


def test_missing_file_and_folder_are_errors(tmp_path):
    with pytest.raises(BadInputError, match="no such weights file"):
        load_init_weights(Net2d(), tmp_path / "nope.pth")
    with pytest.raises(BadInputError, match="a folder, not a weights file"):
        load_init_weights(Net2d(), tmp_path)


def test_unknown_key_map_name_is_an_error(tmp_path):
    path = save(tmp_path / "w.safetensors", trained_2d().state_dict())
    with pytest.raises(BadInputError,
                       match="--init-key-map: 'timm' is unknown; choose from timm-regnet"):
        load_init_weights(Net2d(), path, key_map="timm")


# --- timm's RegNet into covidzoo's 3D RegNet -----------------------------------------------------


def test_timm_regnet_key_names():
    assert timm_regnet_key("s3.b12.conv2.conv.weight") == "stages.s3.11.conv2.conv.weight"
    assert timm_regnet_key("s1.b1.se.fc1.bias") == "stages.s1.0.se.fc1.bias"
    assert timm_regnet_key("head.fc.weight") == "head.weight"
    assert timm_regnet_key("stem.bn.running_var") == "stem.bn.running_var"


@pytest.mark.parametrize("se_ratio", [0.0, 0.25])
def test_a_timm_regnet_inflates_whole_into_regnet3d(tmp_path, se_ratio):
    """Every tensor of a timm RegNet (X, or Y with squeeze-excitation) finds its place in the
    3D RegNet of the same stages, inside the `volume` aggregator."""
    from timm.models.regnet import RegNet, RegNetCfg

    import covidzoo

    torch.manual_seed(0)
    cfg = RegNetCfg(w0=8, wa=8.0, wm=2.0, depth=6, group_size=8, stem_width=8,
                    se_ratio=se_ratio)
    timm_net = RegNet(cfg, in_chans=1, num_classes=2)
    stages = [getattr(timm_net, f"s{i}") for i in range(1, 5)]
    model = covidzoo.create_model(
        "regnet3d", aggregator="volume", in_chans=1, num_classes=2, stem_width=8,
        group_widths=8, se_ratio=se_ratio,
        depths=[len(list(s.children())) for s in stages],
        widths=[s.b1.conv3.conv.out_channels for s in stages])
    path = save(tmp_path / "timm.safetensors", timm_net.state_dict())
    report = load_init_weights(model, path, inflate=True, key_map="timm-regnet")
    assert report.add_prefix == "backbone."
    assert report.missing == report.unexpected == report.mismatched == []
    assert "backbone.stages.s2.0.conv2.conv.weight" in report.inflated
    torch.testing.assert_close(model.backbone.head.weight, timm_net.head.fc.weight)
    torch.testing.assert_close(model.backbone.stages.s1[0].conv2.conv.weight.sum(2),
                               stages[0].b1.conv2.conv.weight, atol=1e-6, rtol=0)
    without = load_init_weights(covidzoo.create_model("regnet3d", **model.backbone.cfg.to_dict()),
                                path, inflate=True)
    assert len(without.loaded) < len(report.loaded) // 2  # the stages' names differ
