"""The 3D RegNet: configs, design space, compatibility, model API, complexity, CLI options.

Golden complexity numbers live in tests/golden/regnet3d_complexity.json; rewrite them (after a
deliberate architecture change) with `COVIDZOO_UPDATE_GOLDEN=1 pytest tests/test_regnet3d.py`.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import covidzoo
from covidzoo.errors import BadInputError
from covidzoo.models.regnet3d import (
    REGNET3D_CFGS,
    RegNet3D,
    RegNet3DAdjustmentWarning,
    RegNet3DCfg,
    adjust_block_compatibility,
    generate_regnet,
    make_cfg,
    resolve_cfg,
)

GOLDEN = Path(__file__).parent / "golden" / "regnet3d_complexity.json"
NAMES = sorted(REGNET3D_CFGS)
# Small enough to run forward and backward in well under a second on one CPU core.
SMALL = {"depths": [1, 1, 2, 1], "widths": [16, 32, 48, 64], "stem_width": 8}


def small(**kwargs) -> RegNet3D:
    torch.manual_seed(0)
    return covidzoo.create_model("regnet3d", **{**SMALL, **kwargs})


def count_flops(model: torch.nn.Module, x: torch.Tensor) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


# --- configs and the design space ---------------------------------------------------------------


def test_named_configs_are_the_papers_table_1():
    assert resolve_cfg(REGNET3D_CFGS["regnet3d"])[0].depths == (2, 6, 12, 4)
    assert REGNET3D_CFGS["regnet3d_shallow"].depths == (1, 3, 7, 4)
    assert REGNET3D_CFGS["regnet3d_w64"].widths == (64, 128, 256, 512)
    for cfg in REGNET3D_CFGS.values():
        resolved, messages = resolve_cfg(cfg)
        assert messages == [] and resolved.group_widths == (8, 8, 8, 8)


def test_generate_regnet_matches_timm():
    # timm's regnetx_002: w0=24, wa=36.44, wm=2.49, depth=13 -> widths 24,56,152,368, depths 1,1,4,7
    assert generate_regnet(24, 36.44, 2.49, 13) == ([24, 56, 152, 368], [1, 1, 4, 7])
    # timm's regnety_016: w0=48, wa=20.71, wm=2.65, depth=27, group size 24: the generated
    # widths 48,128,336,896 become timm's 48,120,336,888 once made compatible.
    widths, depths = generate_regnet(48, 20.71, 2.65, 27)
    assert (widths, depths) == ([48, 128, 336, 896], [2, 6, 17, 2])
    stages, _ = adjust_block_compatibility(widths, 1.0, [24] * 4)
    assert [s.width for s in stages] == [48, 120, 336, 888]


def test_design_space_through_create_model():
    model = covidzoo.create_model("regnet3d", w0=24, wa=36.44, wm=2.49, depth=13,
                                  group_widths=8)
    assert model.cfg.depths == (1, 1, 4, 7)
    assert model.cfg.widths == (24, 56, 152, 368)
    assert model.cfg.w0 is None  # resolved: the explicit stages rebuild the same network
    assert RegNet3D(model.cfg).cfg == model.cfg


@pytest.mark.parametrize(
    "overrides, match",
    [
        ({"w0": 24, "wa": 36.0, "wm": 2.5}, "missing depth"),
        ({"w0": 24, "wa": 36.0, "wm": 2.5, "depth": 13, "depths": [1, 2]}, "not both"),
        ({"w0": 20, "wa": 36.0, "wm": 2.5, "depth": 13}, "w0 must be a positive multiple of 8"),
        ({"w0": 24, "wa": 36.0, "wm": 1.0, "depth": 13}, "wm must be greater than 1"),
        ({"depths": [1, 2], "widths": [8, 16, 32]}, "depths has 2 values but widths has 3"),
        ({"depths": [1, 0, 2]}, "depths must be positive integers"),
        ({"group_widths": [8, 8]}, "group_widths has 2 values"),
        ({"bottleneck_ratio": 0.0}, "bottleneck_ratio must be positive"),
        ({"widths": [1, 128, 256, 512], "bottleneck_ratio": 0.25}, "stage 1: width 1"),
        ({"se_ratio": 1.5}, "se_ratio must be in"),
        ({"depthz": [1]}, "unknown option depthz"),
    ],
)
def test_bad_configs_are_bad_input(overrides, match):
    with pytest.raises(BadInputError, match=match):
        covidzoo.create_model("regnet3d", **overrides)


def test_compatibility_follows_pycls_and_is_reported():
    stages, messages = adjust_block_compatibility([48, 130, 24], 1.0, [8, 8, 32])
    assert [(s.width, s.bottleneck_width, s.group_width) for s in stages] == [
        (48, 48, 8), (128, 128, 8), (24, 24, 24)
    ]
    assert messages == [
        "regnet3d stage 2: bottleneck width 130 -> 128 (a multiple of 8), width 130 -> 128",
        "regnet3d stage 3: group width 32 -> 24 (capped at the bottleneck width)",
    ]
    # An integer bottleneck ratio > 1 rounds to lcm(group width, ratio), as pycls does.
    stages, _ = adjust_block_compatibility([20], 3.0, [8])
    assert (stages[0].width, stages[0].bottleneck_width, stages[0].groups) == (16, 48, 6)


def test_model_warns_on_adjustment_and_keeps_the_message():
    with pytest.warns(RegNet3DAdjustmentWarning, match="stage 2: .*width 36 -> 32"):
        model = small(widths=[16, 36, 48, 64])
    assert model.cfg.widths == (16, 32, 48, 64)
    assert len(model.adjustments) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RegNet3D(model.cfg)  # the resolved config needs no adjustment


# --- the model -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "shape, kwargs",
    [
        ((2, 1, 16, 32, 32), {}),
        ((1, 1, 17, 33, 35), {"num_classes": 2}),
        ((2, 3, 16, 32, 32), {"in_chans": 3, "se_ratio": 0.25, "bottleneck_ratio": 0.5,
                              "drop_rate": 0.2, "drop_path_rate": 0.1}),
    ],
)
def test_forward_backward(shape, kwargs):
    model = small(**kwargs)
    out = model(torch.randn(*shape))
    assert out.shape == (shape[0], kwargs.get("num_classes", 1))
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_timm_api():
    model = small().eval()
    x = torch.randn(2, 1, 16, 32, 32)
    features = model.forward_features(x)
    assert features.shape == (2, 64, 1, 1, 1) and model.num_features == 64
    assert model.forward_head(features, pre_logits=True).shape == (2, 64)
    model.reset_classifier(3)
    assert model(x).shape == (2, 3) and model.num_classes == 3 == model.cfg.num_classes
    model.reset_classifier(0)
    assert model(x).shape == (2, 64)


def test_layout_for_bn_folding_and_zero_init():
    model = small()
    block = model.stages.s1[0]
    assert isinstance(block.conv2.conv, torch.nn.Conv3d) and block.conv2.conv.groups == 2
    assert isinstance(block.conv2.bn, torch.nn.BatchNorm3d)
    assert (block.conv3.bn.weight == 0).all()
    assert (small(zero_init_last=False).stages.s1[0].conv3.bn.weight == 1).all()


def _outputs_and_grads(model, x):
    out = model(x)
    out.sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("variant", ["channels_last_3d", "grad_checkpointing"])
def test_variant_gives_the_same_outputs_and_grads(variant):
    # zero_init_last=False: with zero-initialised residual branches the test would be too easy.
    kwargs = {"zero_init_last": False, "se_ratio": 0.25}
    x = torch.randn(2, 1, 17, 32, 33)
    ref_out, ref_grads = _outputs_and_grads(small(**kwargs), x)
    model = small(**kwargs)
    if variant == "channels_last_3d":
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.to(memory_format=torch.channels_last_3d)
    else:
        model.set_grad_checkpointing(True)
    out, grads = _outputs_and_grads(model, x)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)
    for g, ref in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(g, ref, rtol=1e-3, atol=1e-4)


def test_bf16_autocast_on_cpu():
    model = small(zero_init_last=False).eval()
    x = torch.randn(1, 1, 16, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, rtol=0.05, atol=0.05)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cuda_autocast_channels_last(dtype):
    model = small().cuda().to(memory_format=torch.channels_last_3d)
    x = torch.randn(2, 1, 16, 32, 32, device="cuda").to(memory_format=torch.channels_last_3d)
    with torch.autocast("cuda", dtype=dtype):
        out = model(x)
    out.float().sum().backward()
    assert out.dtype == dtype and torch.isfinite(out).all()


# --- complexity -----------------------------------------------------------------------------------


def _golden_entry(name: str) -> dict:
    with torch.device("meta"):  # shapes only: a full-size forward costs nothing
        model = covidzoo.create_model(name).eval()
        x = torch.empty(1, 1, 64, 224, 224)
    report = model.complexity((64, 224, 224))
    assert sum(p.numel() for p in model.parameters()) == report["params"]
    assert count_flops(model, x) == report["flops"]
    return {
        "input_size": [1, 1, 64, 224, 224],
        "params": report["params"],
        "flops": report["flops"],
        "stages": {s["name"]: [s["params"], s["flops"]] for s in report["stages"]},
    }


@pytest.mark.parametrize("name", NAMES)
def test_golden_complexity(name):
    """Analytic params and FLOPs equal the real model's and flop_counter's, and the golden file."""
    entry = _golden_entry(name)
    if os.environ.get("COVIDZOO_UPDATE_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[name] = entry
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    assert json.loads(GOLDEN.read_text())[name] == entry


@pytest.mark.parametrize(
    "kwargs, size",
    [
        ({}, (16, 32, 32)),
        ({"in_chans": 3, "num_classes": 2, "se_ratio": 0.25, "bottleneck_ratio": 0.5},
         (17, 33, 35)),
        ({"w0": 16, "wa": 12.0, "wm": 2.0, "depth": 6, "group_widths": [4, 8, 8]}, (16, 20, 24)),
    ],
)
def test_analytic_flops_equal_flop_counter_on_a_real_forward(kwargs, size):
    model = small(**kwargs) if "w0" not in kwargs else covidzoo.create_model("regnet3d", **kwargs)
    model.eval()
    report = model.complexity(size)
    x = torch.randn(1, model.cfg.in_chans, *size)
    with torch.no_grad():
        features = model.forward_features(x)
    assert report["stages"][-2]["output_shape"] == list(features.shape[1:])
    assert count_flops(model, x) == report["flops"]
    assert sum(p.numel() for p in model.parameters()) == report["params"]


# --- registry and CLI ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_registered_metadata(name):
    meta = covidzoo.get_component(name).metadata
    assert meta["spatial_dims"] == 3 and meta["input_size"] == (64, 224, 224)
    assert meta["default_aggregator"] == "volume"
    assert RegNet3DCfg(**meta["default_cfg"]) == resolve_cfg(make_cfg(name))[0]


def test_models_show_json_matches_the_model(invoke):
    data = json.loads(invoke("models", "show", "regnet3d", "--depths", "1,1,2,1",
                             "--input-size", "16,32,32", "--json").output)
    model = covidzoo.create_model("regnet3d", depths=[1, 1, 2, 1])
    assert data["params"] == model.complexity((16, 32, 32))["params"]
    assert [s["name"] for s in data["stages"]] == ["stem", "s1", "s2", "s3", "s4", "head"]
    assert data["cfg"]["depths"] == [1, 1, 2, 1] and data["adjustments"] == []


def test_models_show_table_reports_adjustments(invoke):
    out = invoke("models", "show", "regnet3d_shallow", "--widths", "48,130,256,512",
                 "--group-widths", "8").output
    for column in ("stage", "bottleneck width", "groups", "output shape", "FLOPs", "total"):
        assert column.split()[0] in out
    assert "adjusted: regnet3d stage 2: bottleneck width 130 -> 128" in out


def test_models_show_design_space(invoke):
    data = json.loads(invoke("models", "show", "regnet3d", "--w0", "24", "--wa", "36.44",
                             "--wm", "2.49", "--depth", "13", "--json").output)
    assert data["cfg"]["widths"] == [24, 56, 152, 368]


def test_models_show_other_components_print_metadata(invoke):
    assert json.loads(invoke("models", "show", "adam", "--json").output)["kind"] == "optimizer"
    assert "input_size" in invoke("models", "show", "tiny3d").output


@pytest.mark.parametrize(
    "args, message",
    [
        (["--depths", "2,,6"], "--depths: '2,,6' has an empty item"),
        (["--depths", "2,x,6,4"], "--depths: 'x' is not an integer"),
        (["--widths", "48,0,256,512"], "--widths: 0 must be positive"),
        (["--group-widths", "-8"], "--group-widths: -8 must be positive"),
        # Values are checked once, by the model's config (RegNet3DCfg), in its own words.
        (["--depths", "1,2,3", "--widths", "8,16"], "depths has 3 values but widths has 2"),
        (["--depths", "1,2", "--widths", "8,16", "--group-widths", "8,8,8"],
         "group_widths has 3 values"),
        (["--depths", "1,2,3,4", "--w0", "24", "--wa", "3", "--wm", "2", "--depth", "8"],
         "give either depths and widths or w0, wa, wm and depth, not both"),
        (["--w0", "24", "--wa", "3"], "missing wm, depth"),
        (["--w0", "20", "--wa", "3", "--wm", "2", "--depth", "8"],
         "w0 must be a positive multiple of 8, got 20"),
        (["--w0", "24", "--wa", "3", "--wm", "1", "--depth", "8"],
         "wm must be greater than 1, got 1.0"),
        (["--bottleneck-ratio", "nan"], "--bottleneck-ratio: nan is not a finite number"),
        (["--se-ratio", "1"], "se_ratio must be in [0, 1), got 1.0"),
        (["--widths", "1,128,256,512", "--bottleneck-ratio", "0.25"], "no bottleneck channel"),
        (["--input-size", "64,224"], "--input-size takes D,H,W, got '64,224'"),
    ],
)
def test_bad_options_are_one_line_exit_2(runner, args, message):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["models", "show", "regnet3d", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]


def test_regnet_options_on_another_backbone_are_refused(runner):
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["models", "show", "tiny3d", "--depths", "1,1"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        "Error: --depths: an option of regnet3d*, not of backbone 'tiny3d'"
    )


def test_declared_options_keep_only_given_values():
    from covidzoo.cli.options import backbone_kwargs
    from covidzoo.factory import get_component

    options = {"depths": "2,6,12,4", "widths": None, "group_widths": "8", "se_ratio": "0",
               "epochs": 3}
    assert backbone_kwargs(get_component("regnet3d"), options) == {
        "depths": [2, 6, 12, 4], "group_widths": [8], "se_ratio": 0.0}


def test_docs_table_quotes_the_golden_numbers():
    page = (Path(__file__).parents[1] / "docs" / "models" / "regnet3d.md").read_text()
    for name, entry in json.loads(GOLDEN.read_text()).items():
        row = next(line for line in page.splitlines() if line.startswith(f"| `{name}` |"))
        assert f"| {entry['params']:,} | {entry['flops']:,} " in row, name


def test_stochastic_depth_is_off_by_default_and_grows_linearly_per_block():
    from covidzoo.models.layers import DropPath

    assert not any(isinstance(m, DropPath) for m in small().modules())
    model = small(drop_path_rate=0.3, zero_init_last=False)  # branches that are not 0
    rates = [m.drop_prob for m in model.modules() if isinstance(m, DropPath)]
    # The first block keeps its path (rate 0, no module); the last drops at the full rate.
    assert rates == sorted(rates) and rates[-1] == pytest.approx(0.3) and min(rates) > 0
    x = torch.randn(2, 1, 16, 32, 32)
    model.train()
    torch.manual_seed(0)
    first = model(x)
    assert any(not torch.equal(first, model(x)) for _ in range(5))  # paths dropped at random
    model.eval()
    assert torch.equal(model(x), model(x))  # inference keeps every path
