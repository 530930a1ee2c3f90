"""`covidzoo explain`: Grad-CAM against a hand computation, maps on the scan's own grid (and in a
NIfTI's own geometry), slice strips at source slice numbers, one-line bad inputs, and the sanity
check that a model trained on the demo points at the lesion of a one-lesion scan."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import covidzoo
from covidzoo import hookimpl, plugins
from covidzoo.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from covidzoo.data import PreprocessConfig, read_scan
from covidzoo.data.nifti import read_nifti
from covidzoo.data.preprocess import prepare_scan
from covidzoo.data.synthetic import phantom, phantom_with_findings, phantom_with_lungs
from covidzoo.errors import BadInputError
from covidzoo.explain import (
    Explainer,
    class_score,
    grad_cam,
    scan_names,
    to_scan_grid,
    top_slices,
)
from covidzoo.inference import load_member
from covidzoo.transforms import to_model_input

SIZE = (8, 32, 32)  # the tiny models' input
SLICE_SIZE = (6, 24, 24)
DEMO = (32, 64, 64)  # the sanity model's input: the demo's training size
TOP_CELLS = 32  # the sanity model's score: the mean logit of its 32 highest of 2048 cells


# --- test backbones --------------------------------------------------------------------------


class Cam3D(nn.Module):
    """A 3D CNN with the timm API: two convs, average pool, linear (Grad-CAM is then CAM)."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.features = nn.Sequential(nn.Conv3d(in_chans, 8, 3, stride=2, padding=1, bias=False),
                                      nn.BatchNorm3d(8), nn.ReLU(), nn.Conv3d(8, 8, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(8, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3, 4))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Cam2D(nn.Module):
    """A 2D slice backbone with the timm API."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.features = nn.Sequential(nn.Conv2d(in_chans, 6, 3, stride=2, padding=1),
                                      nn.BatchNorm2d(6), nn.ReLU())
        self.head = nn.Linear(6, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean(dim=(2, 3))
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class NoFeatures3D(nn.Module):
    """A 3D backbone without the timm API: forward only."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv = nn.Conv3d(in_chans, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3, 4)))


class FlatFeatures3D(NoFeatures3D):
    """The timm API, but `forward_features` pools: no spatial dims left to map."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3, 4))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return x if pre_logits else self.head(x)


class LesionNet(nn.Module):
    """The sanity model: conv blocks as test_demo_honest's MaxPoolNet (the last one 1x1), then
    the linear head applied to every cell of the feature map and the mean of the `TOP_CELLS`
    highest cells' logits taken (as `slice-topk` pools slices). It learns the demo's lesions in
    a few epochs, and Grad-CAM is exact for it: each top cell's gradient is the head's weight
    over `TOP_CELLS`, so the weights are the head's over the number of cells and the map is
    each cell's own logit (less the bias)."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans

        def block(i: int, o: int, stride: int, kernel: int = 3) -> list[nn.Module]:
            return [nn.Conv3d(i, o, kernel, stride=stride, padding=kernel // 2, bias=False),
                    nn.BatchNorm3d(o), nn.ReLU()]

        self.features = nn.Sequential(*block(in_chans, 16, 2), *block(16, 32, 1),
                                      nn.MaxPool3d(2), *block(32, 64, 1, kernel=1))
        self.head = nn.Linear(64, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if pre_logits:
            return x.amax(dim=(2, 3, 4))
        cells = self.head(x.flatten(2).transpose(1, 2))  # B x cells x K
        return cells.topk(min(TOP_CELLS, cells.shape[1]), dim=1).values.mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class Backbones:
    @hookimpl
    def register_backbones(self, register):
        register("cam3d-test", Cam3D, spatial_dims=3, input_size=SIZE)
        register("cam2d-test", Cam2D, spatial_dims=2, input_size=SLICE_SIZE[1:])
        register("nofeatures3d-test", NoFeatures3D, spatial_dims=3, input_size=SIZE)
        register("flatfeatures3d-test", FlatFeatures3D, spatial_dims=3, input_size=SIZE)
        register("lesionnet-test", LesionNet, spatial_dims=3, input_size=DEMO)


@contextmanager
def backbones_registered() -> Iterator[None]:
    pm = plugins.get_plugin_manager()
    pm.register(Backbones(), name="explain-test-backbones")
    try:
        yield
    finally:
        pm.unregister(name="explain-test-backbones")


@pytest.fixture(autouse=True)
def backbones(fresh_plugins):
    with backbones_registered():
        yield


def checkpoint(path: Path, backbone: str = "cam3d-test", aggregator: str = "volume",
               size=SIZE, seed: int = 0, classes=None, **preprocess) -> Path:
    """A random model with BatchNorm statistics that are not the identity."""
    torch.manual_seed(seed)
    model_args = {} if classes is None else {"num_classes": len(classes)}
    model = covidzoo.create_model(backbone, aggregator=aggregator, **model_args)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(2, 1, *size) * 2 + 0.5)
    spec = ModelSpec(backbone, model_args, aggregator, {},
                     PreprocessConfig(size=size, **preprocess).to_dict(), 0.4,
                     **({} if classes is None else {"classes": list(classes)}))
    return save_checkpoint(path, model.eval(), spec)


def scan(path: Path, shape, seed: int = 0, covid=True) -> Path:
    np.save(path, phantom(np.random.default_rng(seed), tuple(shape), covid=covid))
    return path


def explain_cli(invoke, *args: str) -> dict:
    result = invoke("explain", *args, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def fails(runner, *args: str) -> str:
    """exit 2 and one line on stderr."""
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["explain", *args, "--device", "cpu"])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    return lines[0]


# --- Grad-CAM ----------------------------------------------------------------------------------


def test_grad_cam_equals_the_hand_computation(tmp_path):
    """For average pooling and a linear head, the gradient of the logit is the head's weight
    over the number of cells at every cell: the map is ReLU(sum_c W_c A_c) / n, upsampled
    trilinearly to the input and divided by its peak."""
    ckpt = checkpoint(tmp_path / "m.safetensors")
    path = scan(tmp_path / "s.npy", SIZE)  # the input's own size: the scan grid is the input's
    found = Explainer(load_member(ckpt, "cpu", "fp32")).explain(read_scan(path))

    model, spec = load_checkpoint(ckpt)  # unfolded, as trained
    model.eval()
    array, _ = prepare_scan(read_scan(path), PreprocessConfig.from_dict(spec.preprocess))
    x = to_model_input(torch.from_numpy(array)[None, None])
    with torch.no_grad():
        features = model.backbone.forward_features(x)[0]
        cells = features[0].numel()
        hand = torch.relu(torch.einsum("c,cdhw->dhw", model.backbone.head.weight[0], features))
        hand = F.interpolate((hand / cells)[None, None], size=SIZE, mode="trilinear",
                             align_corners=False)[0, 0]
        probability = float(torch.sigmoid(model(x))[0, 0])
    hand = (hand / hand.max()).numpy()
    assert hand.max() == 1 and (hand < 0.5).any()  # a map with something to find
    np.testing.assert_allclose(found.heat, hand, atol=1e-5)
    assert found.heat.dtype == np.float32 and found.heat.shape == SIZE
    assert found.peak == tuple(int(i) for i in np.unravel_index(hand.argmax(), SIZE))
    assert found.feature_shape == tuple(features.shape[1:])
    assert found.probability == pytest.approx(probability, abs=1e-5)
    assert found.explained == "covid"
    assert found.label == ("covid" if probability >= 0.4 else "non-covid")


def test_grad_cam_takes_the_gradient_of_the_score_it_is_given():
    """The raw maps are ReLU(sum_c w_c A_c) with w the spatial mean of d score / d A: checked
    against autograd on a backbone whose head is not linear."""
    torch.manual_seed(1)
    backbone = Cam3D(num_classes=3).eval()
    backbone.forward_head = lambda a, pre_logits=False: backbone.head(  # type: ignore[method-assign]
        (a ** 2).mean(dim=(2, 3, 4)))
    x = torch.randn(2, 1, *SIZE)
    cam = grad_cam(backbone, x, lambda logits: logits[:, 2])
    a = backbone.forward_features(x).detach().requires_grad_()
    (grads,) = torch.autograd.grad(backbone.forward_head(a)[:, 2].sum(), a)
    raw = torch.relu((grads.mean(dim=(2, 3, 4), keepdim=True) * a).sum(1, keepdim=True))
    expected = F.interpolate(raw, size=SIZE, mode="trilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(cam.heat, expected.detach())
    assert cam.logits.shape == (2, 3) and cam.cells == (4, 16, 16)


def test_class_scores():
    logits = torch.tensor([[1.5, -0.5, 3.0]])
    assert float(class_score(1, 1)(logits[:, :1])[0]) == 1.5  # the covid logit
    assert float(class_score(1, 0)(logits[:, :1])[0]) == -1.5
    assert float(class_score(2, 1)(logits[:, :2])[0]) == -2.0  # covid log-odds
    assert float(class_score(3, 2)(logits)[0]) == 3.0


# --- back to the scan ---------------------------------------------------------------------------


def test_to_scan_grid_puts_the_map_on_the_source_box():
    heat = np.zeros((4, 8, 8), dtype=np.float32)
    heat[1, 2, 5] = 1
    same = to_scan_grid(heat, (4, 8, 8), [(0, 4), (0, 8), (0, 8)])
    np.testing.assert_array_equal(same, heat)
    moved = to_scan_grid(heat, (10, 20, 30), [(2, 6), (4, 12), (10, 18)])
    assert moved.shape == (10, 20, 30)
    assert np.unravel_index(moved.argmax(), moved.shape) == (3, 6, 15)
    outside = np.ones(moved.shape, dtype=bool)
    outside[2:6, 4:12, 10:18] = False
    assert not moved[outside].any()
    padded = np.random.default_rng(0).random((6, 8, 8), dtype=np.float32)
    # fit=pad put the box at `offset`, `extent` voxels of it; the rest is padding
    back = to_scan_grid(padded, (4, 4, 8), [(0, 4), (0, 4), (0, 8)], (1, 2, 0), (4, 4, 8))
    np.testing.assert_array_equal(back, padded[1:5, 2:6])


@pytest.mark.parametrize(("steps", "size"), [
    ({"crop_border": 0.15, "crop_slices": 0.2}, (10, 32, 32)),
    ({"spacing": (1.25, 1.25, 1.25)}, (24, 30, 36)),  # pads in depth, crops rows
    ({"spacing": (0.8, 1.5, 1.1)}, (22, 40, 24)),  # pads slices and rows, crops columns
], ids=["stretch-crop", "pad-iso", "pad-aniso"])
def test_a_map_carried_back_lands_where_the_input_came_from(tmp_path, steps, size):
    """The model input itself, carried back as if it were a map, matches the windowed scan
    inside the source box (a voxel's shift drops the correlation to about 0.85): the geometry
    is inverted right, for stretch and for fit=pad."""
    shape = (20, 48, 40)
    np.save(tmp_path / "s.npy", phantom(np.random.default_rng(4), shape, True))
    volume = read_scan(tmp_path / "s.npy")
    cfg = PreprocessConfig(size=size, **steps)
    array, geometry = prepare_scan(volume, cfg)
    offset, extent = geometry.offset, geometry.extent
    assert cfg.fit == "stretch" or extent != size  # padding: the box is not all of the input
    back = to_scan_grid(array.astype(np.float32) / 255, shape, geometry.box, offset, extent)
    level, width = cfg.window
    unit = np.clip((volume.array - (level - width / 2)) / width, 0, 1)
    box = tuple(slice(lo, hi) for lo, hi in geometry.box)
    assert np.corrcoef(back[box].ravel(), unit[box].ravel())[0, 1] > 0.95
    assert np.abs(back[box] - unit[box]).mean() < 0.05
    outside = np.ones(shape, dtype=bool)
    outside[box] = False
    assert not back[outside].any()


def test_the_map_has_the_scan_shape_and_is_zero_outside_what_the_model_saw(invoke, tmp_path):
    ckpt = checkpoint(tmp_path / "m.safetensors", crop_border=0.1, crop_slices=0.1)
    path = scan(tmp_path / "s.npy", (14, 50, 44))
    out = explain_cli(invoke, str(ckpt), str(path), "--out", str(tmp_path / "out"))
    (entry,) = out["scans"]
    heat = np.load(entry["files"]["npy"])
    assert heat.shape == (14, 50, 44) and heat.dtype == np.float32
    assert heat.min() == 0 and heat.max() == 1
    assert heat[tuple(entry["peak"])] == 1
    assert not heat[:1].any() and not heat[-1:].any()  # crop_slices: 1 slice each end
    assert not heat[:, :5].any() and not heat[:, :, -4:].any()
    assert set(entry) >= {"scan", "probability", "label", "files", "peak"}
    assert "slices" not in entry and "nifti" not in entry["files"]
    assert out["kind"] == "volume" and out["method"] == "grad-cam"
    with Image.open(entry["files"]["png"]) as image:
        assert image.mode == "RGB" and image.width > 600


def test_people_get_a_table_and_where_the_files_went(invoke, tmp_path):
    ckpt = checkpoint(tmp_path / "m.safetensors")
    path = scan(tmp_path / "s.npy", SIZE)
    result = invoke("explain", str(ckpt), str(path), "--out", str(tmp_path / "out"),
                    "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert "Grad-CAM of m.safetensors (cam3d-test)" in result.stdout
    assert f"wrote NAME.png, NAME.npy per scan to {tmp_path / 'out'}" in result.stdout
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["s.npy", "s.png"]


# --- slice models --------------------------------------------------------------------------------


def test_a_slice_model_reports_each_slice_at_its_source_slice(invoke, tmp_path):
    """crop_slices keeps source slices 4 to 11 of 16; 6 input slices stretch over them. Each
    input slice's probability is its own logit's sigmoid, at its nearest source slice."""
    ckpt = checkpoint(tmp_path / "m.safetensors", "cam2d-test", "slice-mean", SLICE_SIZE,
                      crop_slices=0.25)
    path = scan(tmp_path / "s.npy", (16, 30, 30))
    out = explain_cli(invoke, str(ckpt), str(path), "--out", str(tmp_path / "out"))
    (entry,) = out["scans"]
    assert out["kind"] == "slices"

    model, spec = load_checkpoint(ckpt)
    model.eval()
    array, geometry = prepare_scan(read_scan(path), PreprocessConfig.from_dict(spec.preprocess))
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(array)[None, None])
        by_hand = torch.sigmoid(model.slice_logits(x))[0, :, 0].tolist()
        probability = float(torch.sigmoid(model(x))[0, 0])
    assert [s["slice"] for s in entry["slices"]] == list(geometry.source_slices)
    assert geometry.source_slices[0] == 4 and geometry.source_slices[-1] == 11
    np.testing.assert_allclose([s["probability"] for s in entry["slices"]], by_hand, atol=1e-5)
    assert entry["probability"] == pytest.approx(probability, abs=1e-5)
    assert entry["top_slices"] == top_slices(entry["slices"])
    assert len(entry["top_slices"]) == 5
    heat = np.load(entry["files"]["npy"])
    assert heat.shape == (16, 30, 30) and not heat[:4].any() and not heat[12:].any()
    assert 4 <= entry["peak"][0] < 12
    with Image.open(entry["files"]["png"]) as image:  # the strip stands beside the cuts
        assert image.width > 900


def test_top_slices_count_each_source_slice_once():
    slices = [{"slice": 3, "probability": 0.9}, {"slice": 3, "probability": 0.95},
              {"slice": 7, "probability": 0.2}, {"slice": 5, "probability": 0.6}]
    assert top_slices(slices, k=2) == [3, 5]
    assert top_slices(slices) == [3, 5, 7]


# --- NIfTI in its own geometry ----------------------------------------------------------------

# The direction (in RAS+) each stored axis grows towards, by nibabel's axis code.
DIRECTIONS = {"R": (1, 0, 0), "L": (-1, 0, 0), "A": (0, 1, 0), "P": (0, -1, 0),
              "S": (0, 0, 1), "I": (0, 0, -1)}


@pytest.mark.parametrize("codes", [("L", "P", "S"), ("P", "S", "R"), ("I", "L", "A")])
def test_the_nifti_map_round_trips_through_the_reader(invoke, tmp_path, codes):
    """In LPS (DICOM's order), and in orders whose reorientation is not its own inverse: the
    map saved as NIfTI keeps the input's affine and voxel order and reads back as the .npy."""
    import nibabel
    from nibabel.orientations import aff2axcodes

    spacing = {"S": 5.0, "I": 5.0}
    affine = np.eye(4)
    for axis, code in enumerate(codes):
        affine[:3, axis] = np.array(DIRECTIONS[code]) * spacing.get(code, 2.5)
    affine[:3, 3] = (-40.0, 25.0, 7.0)
    canonical = phantom(np.random.default_rng(2), (12, 36, 32), True)  # S, P, L
    stored_shape = tuple({"S": 12, "I": 12, "P": 36, "A": 36, "L": 32, "R": 32}[c]
                         for c in codes)
    image = nibabel.Nifti1Image(np.zeros(stored_shape, dtype=np.int16), affine)
    image = nibabel.Nifti1Image(_stored(canonical, codes), affine, image.header)
    source = tmp_path / "ct.nii.gz"
    nibabel.save(image, source)
    assert read_nifti(source).shape == (12, 36, 32)

    ckpt = checkpoint(tmp_path / "m.safetensors")
    out = explain_cli(invoke, str(ckpt), str(source), "--out", str(tmp_path / "out"))
    files = out["scans"][0]["files"]
    assert files["nifti"].endswith("ct.nii.gz") and files["npy"].endswith("ct.npy")
    saved = nibabel.load(files["nifti"])
    np.testing.assert_allclose(saved.affine, affine)
    assert saved.shape == stored_shape and aff2axcodes(saved.affine) == codes
    assert saved.get_data_dtype() == np.float32
    heat = np.load(files["npy"])
    assert heat.shape == (12, 36, 32)
    np.testing.assert_array_equal(read_nifti(files["nifti"]).array, heat)


def _stored(canonical: np.ndarray, codes) -> np.ndarray:
    """`canonical` (S, P, L) in the voxel order `codes`, by hand: each stored axis is the
    canonical axis of its direction, flipped where it points the other way."""
    axis_of = {"S": 0, "I": 0, "P": 1, "A": 1, "L": 2, "R": 2}
    out = np.transpose(canonical, [axis_of[c] for c in codes])
    for axis, code in enumerate(codes):
        if code in ("I", "A", "R"):
            out = np.flip(out, axis)
    return np.ascontiguousarray(np.round(out).astype(np.int16))


# --- bad input -----------------------------------------------------------------------------------


def test_bad_inputs_are_one_line(runner, tmp_path):
    ckpt = checkpoint(tmp_path / "m.safetensors")
    path = scan(tmp_path / "s.npy", SIZE)
    out = str(tmp_path / "out")
    assert "no such scan: " in fails(runner, str(ckpt), str(tmp_path / "nope.npy"), "--out",
                                     out)
    assert "'cancer' is not one of the checkpoint's classes (non-covid, covid)" in fails(
        runner, str(ckpt), str(path), "--out", out, "--class", "cancer")
    bare = checkpoint(tmp_path / "bare.safetensors", "nofeatures3d-test")
    assert ("backbone 'nofeatures3d-test' has no forward_features or forward_head"
            in fails(runner, str(bare), str(path), "--out", out))
    flat = checkpoint(tmp_path / "flat.safetensors", "flatfeatures3d-test")
    assert ("backbone 'flatfeatures3d-test': forward_features gives 2-D features (1, 4)"
            in fails(runner, str(flat), str(path), "--out", out))
    assert not (tmp_path / "out").exists()


def test_an_ensemble_file_explains_by_the_mean_of_its_members_maps(invoke, tmp_path):
    from covidzoo.ensemble import create_ensembler
    from covidzoo.inference import write_ensemble_file

    members = [checkpoint(tmp_path / f"m{k}.safetensors", seed=k) for k in (0, 1)]
    ensembler = create_ensembler("mean")
    ensembler.n_models = 2
    ensemble = write_ensemble_file(tmp_path / "e.json", members, ensembler, 0.5)
    path = scan(tmp_path / "s.npy", SIZE)
    maps = []
    for k, member in enumerate(members):
        explain_cli(invoke, str(member), str(path), "--out", str(tmp_path / f"o{k}"))
        maps.append(np.load(tmp_path / f"o{k}" / "s.npy"))
    result = explain_cli(invoke, str(ensemble), str(path), "--out", str(tmp_path / "oe"))
    mean = np.mean(maps, axis=0)
    expected = mean / mean.max() if mean.max() > 0 else mean
    np.testing.assert_allclose(np.load(tmp_path / "oe" / "s.npy"), expected, atol=1e-6)
    (found,) = result["scans"]
    probs = [explain_cli(invoke, str(m), str(path), "--out", str(tmp_path / "p"))
             ["scans"][0]["probability"] for m in members]
    assert found["probability"] == pytest.approx(np.mean(probs), abs=1e-6)


def test_an_unreadable_scan_is_skipped_and_named(invoke, tmp_path):
    ckpt = checkpoint(tmp_path / "m.safetensors")
    good, bad = scan(tmp_path / "good.npy", SIZE), tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    out = explain_cli(invoke, str(ckpt), str(good), str(bad), "--out", str(tmp_path / "out"))
    assert [e["scan"] for e in out["scans"]] == [str(good)]
    assert out["failed"][0]["source"] == str(bad) and "bad.npy" in out["failed"][0]["reason"]


def test_a_multi_class_checkpoint_explains_the_predicted_or_the_asked_class(invoke, tmp_path):
    classes = ["non-covid", "covid", "pneumonia"]
    ckpt = checkpoint(tmp_path / "m.safetensors", classes=classes)
    path = scan(tmp_path / "s.npy", SIZE)
    predicted = explain_cli(invoke, str(ckpt), str(path), "--out", str(tmp_path / "a"))
    asked = explain_cli(invoke, str(ckpt), str(path), "--out", str(tmp_path / "b"), "--class",
                        "pneumonia")
    model, _ = load_checkpoint(ckpt)
    array, _ = prepare_scan(read_scan(path), PreprocessConfig(size=SIZE))
    with torch.no_grad():
        x = to_model_input(torch.from_numpy(array)[None, None])
        probs = torch.softmax(model.eval()(x), dim=1)[0]
    first = predicted["scans"][0]
    assert first["class"] == first["label"] == classes[int(probs.argmax())]
    assert first["probability"] == pytest.approx(float(probs.max()), abs=1e-5)
    assert asked["scans"][0]["class"] == "pneumonia"
    assert asked["scans"][0]["probability"] == pytest.approx(float(probs[2]), abs=1e-5)


def test_scan_names_are_stems_made_unique():
    assert scan_names(["a/ct.nii.gz", "b/ct.nii", "c/scan_0001", "d/ct.npy", "x.NPZ"]) == [
        "ct", "ct-2", "scan_0001", "ct-3", "x"]


# --- the generator's findings ------------------------------------------------------------------


@pytest.mark.parametrize("covid", [True, False, "pneumonia"])
def test_phantom_with_findings_renders_the_demo_scan_voxel_for_voxel(covid):
    """The demo data stays byte-identical: the same generators give `phantom`'s volume."""
    for seed in range(3):
        rng, anatomy = np.random.default_rng([0, seed]), np.random.default_rng([5, seed])
        hu, found = phantom_with_findings(rng, (12, 40, 40), covid, anatomy=anatomy)
        expected = phantom(np.random.default_rng([0, seed]), (12, 40, 40), covid,
                           anatomy=np.random.default_rng([5, seed]))
        assert hu.tobytes() == expected.tobytes()
        assert found.any()


def test_one_lesion_lies_in_the_lungs_and_is_where_the_density_was_added():
    shape = (24, 64, 64)
    for seed in range(3):
        hu, lesion = phantom_with_findings(np.random.default_rng([7, seed]), shape, True,
                                           anatomy=np.random.default_rng([8, seed]), lesions=1)
        bare, none = phantom_with_findings(np.random.default_rng([7, seed]), shape, True,
                                           anatomy=np.random.default_rng([8, seed]), lesions=0)
        _, lungs = phantom_with_lungs(np.random.default_rng([8, seed]), shape, False)
        assert not none.any() and 50 < lesion.sum() < 0.02 * lesion.size
        assert (lesion & ~lungs).sum() <= 0.05 * lesion.sum()  # edges turned by the scanner
        added = hu - bare  # the lesion after the scanner's blur along z and in-plane kernel
        assert lesion[np.unravel_index(added.argmax(), shape)]
        assert (lesion & (added > 100)).sum() >= 0.6 * (added > 100).sum()
    with pytest.raises(BadInputError, match="takes covid=True"):
        phantom_with_findings(np.random.default_rng(0), shape, False, lesions=1)


# --- the sanity check ----------------------------------------------------------------------------

# Measured with this recipe on a 2-core CPU (about 20 s of training), on scans [9, k] for
# k < 30, for training seeds 0 to 4 (the test trains with seed 0): seeds 1 and 2 do not learn
# the demo in 6 epochs (validation AUC 0.71, 0.59: the fixture refuses such a model); seeds 0,
# 3 and 4 do (AUC 0.98, 1.0, 1.0), and their maps peak inside the one lesion in 28, 26 and 29
# of 30 scans (a random lung voxel: 2%), inside a finding of a demo covid scan in 30, 28 and
# 29 of 30 (a random lung voxel: 16%).
SANITY_SCANS = 30


def _write(root: Path, seed: int, n: int, split: str) -> None:
    for i in range(n):
        covid = i % 2 == 0
        folder = root / split / ("covid" if covid else "non-covid")
        folder.mkdir(parents=True, exist_ok=True)
        np.save(folder / f"scan_{i:04d}.npy",
                phantom(np.random.default_rng([seed, i]), DEMO, covid=covid))


@pytest.fixture(scope="module")
def demo_explainer(tmp_path_factory) -> Iterator[Explainer]:
    """LesionNet trained on demo scans as test_demo_honest trains its MaxPoolNet (about 25 s
    on 2 cores), loaded for explaining."""
    from covidzoo.train import TrainConfig, train

    root = tmp_path_factory.mktemp("sanity")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVIDZOO_CACHE", str(root / "cache"))
        _write(root / "data", seed=0, n=128, split="train")
        _write(root / "data", seed=1, n=32, split="val")
        plugins.reset()
        with backbones_registered():
            summary = train(TrainConfig(backbone="lesionnet-test", data=str(root / "data"),
                                        size=DEMO, epochs=6, lr=3e-3, device="cpu",
                                        out=str(root / "run")), quiet=True)
            assert summary["best_val_auc"] >= 0.85, summary
            yield Explainer(load_member(Path(summary["out"]) / "best.safetensors", "cpu",
                                        "fp32"))
        plugins.reset()


def _pointing(explainer: Explainer, folder: Path, lesions: int | None) -> tuple[int, int]:
    """(maps that are not empty, peaks inside a finding) over `SANITY_SCANS` covid scans."""
    found_any = hits = 0
    for k in range(SANITY_SCANS):
        hu, findings = phantom_with_findings(np.random.default_rng([9, k]), DEMO, True,
                                             lesions=lesions)
        np.save(folder / f"scan{k}.npy", hu)
        found = explainer.explain(read_scan(folder / f"scan{k}.npy"))
        found_any += found.peak is not None
        hits += found.peak is not None and bool(findings[found.peak])
    return found_any, hits


@pytest.mark.slow
def test_the_map_of_a_demo_trained_model_peaks_inside_the_lesion(demo_explainer, tmp_path):
    """On scans with one round lesion (besides the demo's vessels, nodules and fissures), the
    map's peak lies inside the lesion as the generator placed it, in most scans."""
    found_any, hits = _pointing(demo_explainer, tmp_path, lesions=1)
    assert hits >= 2 * SANITY_SCANS / 3, (found_any, hits)


@pytest.mark.slow
def test_the_map_of_a_demo_trained_model_peaks_inside_a_finding(demo_explainer, tmp_path):
    """On demo covid scans (8 to 14 lesions, 16% of the lungs), the peak lies in a finding."""
    found_any, hits = _pointing(demo_explainer, tmp_path, lesions=None)
    assert hits >= 2 * SANITY_SCANS / 3, (found_any, hits)
