"""`covidzoo export` and `predict --backend onnx`: exported files equal PyTorch to 1e-4, for
every kind of model, at other batch sizes than the one exported; what cannot be exported is
refused in one line, and nothing unverified is left behind."""

from __future__ import annotations

import importlib.util
import json
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
import torch
from model_helpers import make_checkpoint
from torch import nn

import covidzoo
from covidzoo import hookimpl, plugins
from covidzoo.checkpoint import load_checkpoint
from covidzoo.ensemble import create_ensembler
from covidzoo.export import (
    ATOL,
    CLASS_OUTPUTS,
    GRAPH_FUSIONS,
    METADATA_KEY,
    ExportMetadata,
    card_path,
    onnx_opset,
    onnx_session,
)
from covidzoo.inference import write_ensemble_file
from covidzoo.transforms import to_model_input

# onnxruntime is the optional extra covidzoo[onnx]: without it only its ONNX tests are skipped.
needs_onnxruntime = pytest.mark.skipif(importlib.util.find_spec("onnxruntime") is None,
                                       reason="needs onnxruntime (covidzoo[onnx])")
SIZE = (16, 32, 32)
TINY_REGNET = {"depths": [1, 1, 1, 1], "widths": [8, 16, 16, 32], "stem_width": 8,
               "group_widths": 8, "zero_init_last": False}


def torch_probs(checkpoint: Path, scans: torch.Tensor) -> np.ndarray:
    """The unfolded model of `checkpoint`, straight from the file: the reference."""
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return torch.sigmoid(model.eval()(to_model_input(scans))).reshape(-1).double().numpy()


def run_export(path: Path, out: Path, fmt: str):
    """`(probability, member_probabilities)` of `out` on `scans` (onnxruntime or jit.load)."""
    if fmt == "onnx":
        session = onnx_session(out)
        names = [i.name for i in session.get_inputs()]
        return lambda *scans: session.run(None, {n: s.numpy() for n, s in
                                                 zip(names, scans, strict=True)})
    loaded = torch.jit.load(str(out))
    return lambda *scans: [t.numpy() for t in loaded(*scans)]


def scans(batch: int, size=SIZE, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 1, *size), dtype=torch.uint8, generator=g)


# --- round trips -------------------------------------------------------------------------------


MODELS = {
    "regnet3d": ("regnet3d", "volume", TINY_REGNET, SIZE),
    "resdense2d": ("resdense2d", "slice-mean",
                   {"backbones": "test_resnet,test_efficientnet", "proj_channels": 8},
                   (4, 32, 32)),
    "monai-resnet18": ("monai-resnet18", "volume", {"widen_factor": 0.25}, SIZE),
}


@pytest.mark.parametrize(("name", "fmt"), [
    pytest.param("regnet3d", "onnx", marks=needs_onnxruntime),
    ("regnet3d", "torchscript"),
    pytest.param("resdense2d", "onnx", marks=[needs_onnxruntime, pytest.mark.slow]),
    pytest.param("monai-resnet18", "onnx", marks=[needs_onnxruntime, pytest.mark.slow]),
])
def test_export_round_trips_at_another_batch_size(tmp_path, invoke, name, fmt):
    backbone, aggregator, args, size = MODELS[name]
    if backbone.startswith("monai"):
        pytest.importorskip("covidzoo_monai")
    ckpt = make_checkpoint(tmp_path / "m.safetensors", size, seed=0, threshold=0.3,
                           backbone=backbone, aggregator=aggregator, model_args=args)
    out = tmp_path / f"m.{fmt}"
    result = invoke("export", str(ckpt), "--format", fmt, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert [c["batch"] for c in report["checks"]] == [3, 2]  # exported at batch 1
    assert all(c["max_abs_diff"] <= ATOL for c in report["checks"])
    x = scans(5, size)  # neither the traced nor the verified batch size
    probability, members = run_export(ckpt, out, fmt)(x)
    want = torch_probs(ckpt, x)
    np.testing.assert_allclose(probability, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(members[:, 0], want, atol=ATOL, rtol=0)
    assert card_path(out).is_file()


def _ensemble(tmp_path: Path, method: str) -> tuple[Path, list[Path], object]:
    """Three regnet3d members at two scan sizes, fused by a `method` ensembler fit on random
    member probabilities (what it learns does not matter, that the graph follows it does)."""
    members = [make_checkpoint(tmp_path / f"m{k}.safetensors", size, seed=k,
                               model_args=TINY_REGNET)
               for k, size in enumerate([SIZE, (8, 32, 32), SIZE])]
    rng = np.random.default_rng(0)
    labels = np.arange(40) % 2
    probs = np.clip(0.5 + 0.3 * (labels[:, None] - 0.5) + 0.2 * rng.standard_normal((40, 3)),
                    0.01, 0.99)
    ensembler = create_ensembler(method).fit(probs, labels)
    path = write_ensemble_file(tmp_path / "ens.json", members, ensembler, 0.47)
    return path, members, ensembler


@pytest.mark.slow
@pytest.mark.parametrize(("method", "fmt"), [
    pytest.param("stacking", "onnx", marks=needs_onnxruntime), ("weighted", "torchscript")])
def test_three_member_ensemble_exports_as_one_graph(tmp_path, invoke, method, fmt):
    path, members, ensembler = _ensemble(tmp_path, method)
    out = tmp_path / f"ens.{fmt}"
    result = invoke("export", str(path), "--format", fmt, "--out", str(out))
    assert result.exit_code == 0, result.output
    small, large = scans(4, (8, 32, 32), seed=1), scans(4, SIZE, seed=2)
    probability, member_probs = run_export(path, out, fmt)(large, small)  # inputs by size
    want_members = np.stack([torch_probs(members[0], large), torch_probs(members[1], small),
                             torch_probs(members[2], large)], axis=1)
    np.testing.assert_allclose(member_probs, want_members, atol=ATOL, rtol=0)
    np.testing.assert_allclose(probability, ensembler.predict(want_members), atol=ATOL, rtol=0)
    card = card_path(out).read_text()
    assert f"An ensemble of 3 models fused by `{method}`" in card
    assert "### Member 3: m2.safetensors" in card and "threshold: 0.4700" in card


@pytest.mark.parametrize("method", list(GRAPH_FUSIONS))
def test_graph_fusions_equal_their_ensemblers_even_at_saturated_members(method):
    rng = np.random.default_rng(1)
    labels = np.arange(30) % 2
    fit = np.clip(0.5 + 0.3 * (labels[:, None] - 0.5) + 0.2 * rng.standard_normal((30, 3)),
                  0.01, 0.99)
    ensembler = create_ensembler(method).fit(fit, labels)
    probs = np.concatenate([rng.uniform(size=(20, 3)), [[1.0, 0.0, 0.5], [1.0, 1.0, 1.0],
                                                         [0.0, 0.0, 0.0]]]).astype(np.float32)
    fused = GRAPH_FUSIONS[method](ensembler)(torch.from_numpy(probs)).double().numpy()
    np.testing.assert_allclose(fused, ensembler.predict(probs.astype(np.float64)), atol=1e-6,
                               rtol=0)


# --- three or more classes, and temperatures -----------------------------------------------------

CLASSES = ("cap", "covid", "normal")


def torch_class_probs(checkpoint: Path, scans: torch.Tensor) -> np.ndarray:
    """The unfolded model's class probabilities (softmax of its logits), `B x K`."""
    model, _ = load_checkpoint(checkpoint)
    with torch.no_grad():
        return torch.softmax(model.eval()(to_model_input(scans)), dim=1).double().numpy()


def _class_members(tmp_path: Path, n: int) -> list[Path]:
    return [make_checkpoint(tmp_path / f"c{k}.safetensors", SIZE, seed=k, model_args=TINY_REGNET,
                            classes=CLASSES) for k in range(n)]


def _mean_ensemble(tmp_path: Path, members: list[Path], threshold, **extra) -> Path:
    mean = create_ensembler("mean")
    mean.n_models = len(members)
    path = write_ensemble_file(tmp_path / "ens.json", members, mean, threshold)
    if extra:  # e.g. the temperature `covidzoo calibrate` stores for the file as a whole
        path.write_text(json.dumps({**json.loads(path.read_text()), **extra}))
    return path


@pytest.mark.parametrize("fmt", [pytest.param("onnx", marks=needs_onnxruntime), "torchscript"])
def test_a_three_class_model_exports_class_probabilities(tmp_path, invoke, fmt):
    [ckpt] = _class_members(tmp_path, 1)
    out = tmp_path / f"m.{fmt}"
    result = invoke("export", str(ckpt), "--format", fmt, "--out", str(out), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["threshold"] is None
    x = scans(5)
    probabilities, members = run_export(ckpt, out, fmt)(x)
    want = torch_class_probs(ckpt, x)
    assert probabilities.shape == (5, 3) and members.shape == (5, 1, 3)
    np.testing.assert_allclose(probabilities, want, atol=ATOL, rtol=0)
    np.testing.assert_allclose(members[:, 0], want, atol=ATOL, rtol=0)
    if fmt == "onnx":
        session = onnx_session(out)
        assert [o.name for o in session.get_outputs()] == list(CLASS_OUTPUTS)
        meta = ExportMetadata.from_json(
            session.get_modelmeta().custom_metadata_map[METADATA_KEY], str(out))
        assert (meta.class_names, meta.outputs, meta.threshold) == (
            list(CLASSES), list(CLASS_OUTPUTS), None)
    card = card_path(out).read_text()
    assert "`cap`, `covid`, `normal`, in this order" in card and "most probable" in card
    assert "versus not" not in card


@needs_onnxruntime
def test_predict_onnx_of_a_three_class_ensemble_equals_pytorch(tmp_path, invoke):
    path = _mean_ensemble(tmp_path, _class_members(tmp_path, 2), None)
    out = tmp_path / "ens.onnx"
    result = invoke("export", str(path), "--format", "onnx", "--out", str(out))
    assert result.exit_code == 0, result.output
    assert "averaging their class probabilities" in card_path(out).read_text()
    paths = phantom_scans(tmp_path, 3)
    by_torch = json.loads(invoke("predict", str(path), *paths, "--json").output)
    result = invoke("predict", "--backend", "onnx", str(out), *paths, "--json")
    assert result.exit_code == 0, result.output
    by_onnx = json.loads(result.output)
    assert by_onnx["threshold"] is None and by_onnx["classes"] == list(CLASSES)
    for got, want in zip(by_onnx["predictions"], by_torch["predictions"], strict=True):
        assert got["label"] == want["label"]
        np.testing.assert_allclose([got["probabilities"][c] for c in CLASSES],
                                   [want["probabilities"][c] for c in CLASSES], atol=ATOL)
    table = invoke("predict", "--backend", "onnx", str(out), *paths)
    assert table.exit_code == 0 and "normal" in table.output, table.output


@pytest.mark.parametrize("classes", [None, CLASSES])
def test_an_ensemble_calibrated_as_a_whole_exports_with_its_temperature(tmp_path, invoke,
                                                                         classes):
    from covidzoo.stats import apply_temperature

    members = (_class_members(tmp_path, 2) if classes else
               [make_checkpoint(tmp_path / f"b{k}.safetensors", SIZE, seed=k,
                                model_args=TINY_REGNET) for k in range(2)])
    path = _mean_ensemble(tmp_path, members, None if classes else 0.5, temperature=2.5)
    out = tmp_path / "ens.pt"
    result = invoke("export", str(path), "--format", "torchscript", "--out", str(out))
    assert result.exit_code == 0, result.output
    x = scans(4)
    probability, member_probs = run_export(path, out, "torchscript")(x)
    reference = torch_class_probs if classes else torch_probs
    want_members = np.stack([reference(m, x) for m in members], axis=1)
    np.testing.assert_allclose(member_probs, want_members, atol=ATOL, rtol=0)
    np.testing.assert_allclose(probability, apply_temperature(want_members.mean(axis=1), 2.5),
                               atol=ATOL, rtol=0)


def test_a_covid_fusion_of_three_class_members_is_refused(tmp_path, invoke):
    members = _class_members(tmp_path, 2)
    weighted = create_ensembler("weighted").fit(np.array([[0.2, 0.4], [0.7, 0.9]]),
                                                np.array([0, 1]))
    path = write_ensemble_file(tmp_path / "w.json", members, weighted, None)
    result = invoke("export", str(path), "--format", "torchscript", "--out",
                    str(tmp_path / "w.pt"))
    assert result.exit_code == 2, result.output
    assert "'weighted' ensembler fuses covid probabilities" in result.output
    assert len(result.output.splitlines()) == 1 and not (tmp_path / "w.pt").exists()


# --- metadata and model card -------------------------------------------------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A run folder's best checkpoint (config.json and metrics.jsonl beside it), exported."""
    root = tmp_path_factory.mktemp("export")
    run = root / "run"
    run.mkdir()
    ckpt = make_checkpoint(run / "best.safetensors", SIZE, seed=0, threshold=0.375,
                           model_args=TINY_REGNET)
    (run / "config.json").write_text(json.dumps({
        "model": {"backbone": "regnet3d"}, "data_source": "demo (synthetic)", "n_train": 24,
        "n_val": 8, "val_split": 0.25, "seed": 0, "epochs": 2, "precision_resolved": "fp32",
        "device": "cpu"}))
    (run / "metrics.jsonl").write_text(
        json.dumps({"epoch": 1, "val_auc": 0.5, "val_f1": 0.4, "val_threshold": 0.6}) + "\n"
        + json.dumps({"epoch": 2, "val_auc": 0.8125, "val_f1": 0.75, "val_threshold": 0.375})
        + "\n")
    from click.testing import CliRunner

    from covidzoo.cli import cli

    out = root / "model.onnx"
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("COVIDZOO_PLUGINS", raising=False)
        plugins.reset()
        result = CliRunner().invoke(cli, ["export", str(ckpt), "--format", "onnx", "--out",
                                          str(out)], catch_exceptions=False)
        plugins.reset()
    assert result.exit_code == 0, result.output
    return ckpt, out


@needs_onnxruntime
def test_onnx_metadata_carries_threshold_class_names_and_preprocessing(exported):
    ckpt, out = exported
    found = onnx_session(out).get_modelmeta().custom_metadata_map
    meta = ExportMetadata.from_json(found[METADATA_KEY], str(out))
    spec_preprocess = covidzoo.checkpoint.read_spec(ckpt).preprocess
    assert meta.threshold == 0.375 and json.loads(found["threshold"]) == 0.375
    assert json.loads(found["class_names"]) == meta.class_names == ["non-covid", "covid"]
    assert json.loads(found["preprocess"]) == {"scans": spec_preprocess}
    assert [i.preprocess for i in meta.inputs] == [spec_preprocess]
    session = onnx_session(out)
    assert [(i.name, i.type, i.shape[1:]) for i in session.get_inputs()] == [
        ("scans", "tensor(uint8)", [1, *SIZE])]
    assert not isinstance(session.get_inputs()[0].shape[0], int)  # the batch is dynamic
    import onnx
    from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET

    opsets = {o.domain: o.version for o in onnx.load(str(out)).opset_import}
    assert opsets[""] == onnx_opset() <= ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET


def test_torchscript_extra_files_carry_the_metadata(tmp_path, invoke):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", SIZE, seed=0, threshold=0.25,
                           model_args=TINY_REGNET)
    out = tmp_path / "m.pt"
    assert invoke("export", str(ckpt), "--format", "torchscript", "--out", str(out)).exit_code == 0
    extra = {f"{METADATA_KEY}.json": ""}
    torch.jit.load(str(out), _extra_files=extra)
    meta = ExportMetadata.from_json(extra[f"{METADATA_KEY}.json"], str(out))
    assert (meta.threshold, meta.kind, meta.fusion) == (0.25, "checkpoint", None)
    assert meta.inputs[0].size == SIZE


@needs_onnxruntime
def test_model_card_reports_what_the_run_recorded(exported):
    _, out = exported
    card = card_path(out).read_text()
    assert card_path(out).name == "model.onnx.md"
    for expected in ("Not a medical device", "research use only", "demo (synthetic)",
                     "24 training scans, 8 validation scans", "epoch 2", "AUC 0.8125",
                     "threshold 0.375", "size D,H,W 16,32,32", "parameters: ",
                     "regnet3d", "random uint8 scans, batch 3"):
        assert expected.lower() in card.lower(), expected


def test_model_card_says_unknown_without_a_run_folder(tmp_path, invoke):
    ckpt = make_checkpoint(tmp_path / "m.safetensors", SIZE, seed=0, model_args=TINY_REGNET)
    out = tmp_path / "m.pt"
    assert invoke("export", str(ckpt), "--format", "torchscript", "--out", str(out)).exit_code == 0
    card = card_path(out).read_text()
    assert "Training data and validation metrics: unknown" in card
    assert "none stored: 0.5 is used" in card


# --- refusals and failures ---------------------------------------------------------------------


@torch.library.custom_op("covidzoo_test::twice", mutates_args=())
def twice(x: torch.Tensor) -> torch.Tensor:
    return x * 2


@twice.register_fake
def _(x):
    return torch.empty_like(x)


class CustomOpNet(nn.Module):
    """A 3D backbone built on a custom operator with no ONNX conversion."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes, self.in_chans = num_classes, in_chans
        self.conv = nn.Conv3d(in_chans, 4, 3, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(twice(self.conv(x)).mean(dim=(2, 3, 4)))


class CustomOpPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("customop-test", CustomOpNet, spatial_dims=3, input_size=SIZE)


@contextmanager
def custom_op_registered():
    pm = plugins.get_plugin_manager()
    pm.register(CustomOpPlugin(), name="customop-test")
    try:
        yield
    finally:
        pm.unregister(name="customop-test")


@needs_onnxruntime
def test_custom_op_is_refused_in_one_line_naming_it(tmp_path, invoke, capfd):
    with custom_op_registered():
        ckpt = make_checkpoint(tmp_path / "c.safetensors", SIZE, seed=0,
                               backbone="customop-test", model_args={})
        out = tmp_path / "c.onnx"
        result = invoke("export", str(ckpt), "--format", "onnx", "--out", str(out))
    assert result.exit_code == 2
    assert "covidzoo_test::twice" in result.output and len(result.output.splitlines()) == 1
    native = capfd.readouterr()  # the exporter's own graph dump is not shown
    assert "graph" not in native.out + native.err
    assert list(tmp_path.iterdir()) == [ckpt]  # nothing written, no temporary left


def test_rank_ensemble_is_refused_naming_the_method(tmp_path, invoke):
    path, members, _ = _ensemble(tmp_path, "rank")
    result = invoke("export", str(path), "--format", "torchscript", "--out",
                    str(tmp_path / "r.onnx"))
    assert result.exit_code == 2
    assert "'rank' ensembler cannot be exported" in result.output
    assert len(result.output.splitlines()) == 1
    assert not (tmp_path / "r.onnx").exists() and not card_path(tmp_path / "r.onnx").exists()


@needs_onnxruntime
def test_a_mismatch_fails_and_leaves_no_file(tmp_path, invoke, monkeypatch):
    import covidzoo.export as export

    ckpt = make_checkpoint(tmp_path / "m.safetensors", SIZE, seed=0, model_args=TINY_REGNET)
    real = export.reference_probs

    def off_by_a_little(*args):
        probability, members = real(*args)
        return probability + 1e-3, members

    monkeypatch.setattr(export, "reference_probs", off_by_a_little)
    out = tmp_path / "m.onnx"
    result = invoke("export", str(ckpt), "--format", "onnx", "--out", str(out))
    assert result.exit_code == 1
    assert "differs from PyTorch" in result.output and len(result.output.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]


def test_a_failed_export_keeps_the_previous_file(tmp_path, invoke):
    path, _, _ = _ensemble(tmp_path, "rank")
    out = tmp_path / "old.pt"
    out.write_bytes(b"previous export")
    assert invoke("export", str(path), "--format", "torchscript", "--out",
                  str(out)).exit_code == 2
    assert out.read_bytes() == b"previous export"


@pytest.mark.parametrize(("args", "message"), [
    (["missing.safetensors", "--format", "torchscript", "--out", "x.onnx"],
     "no such checkpoint file"),
    (["{ckpt}", "--format", "tflite", "--out", "x.onnx"], "Invalid value for '--format'"),
    (["{ckpt}", "--out", "x.onnx"], "Missing option '--format'"),
    (["{ckpt}", "--format", "torchscript", "--out", "{ckpt}"], "would overwrite the model"),
])
def test_bad_input_exits_2(tmp_path, invoke, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    ckpt = make_checkpoint(tmp_path / "m.safetensors", SIZE, seed=0, model_args=TINY_REGNET)
    before = ckpt.read_bytes()
    result = invoke("export", *[a.format(ckpt=ckpt) for a in args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    assert ckpt.read_bytes() == before


def test_without_onnxruntime_says_what_to_install(tmp_path, invoke, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import fails
    result = invoke("export", "m.safetensors", "--format", "onnx", "--out",
                    str(tmp_path / "x.onnx"))
    assert result.exit_code == 2
    assert result.output.strip().endswith("install covidzoo[onnx]")


# --- predict --backend onnx --------------------------------------------------------------------


def phantom_scans(folder: Path, n: int) -> list[str]:
    """`n` synthetic chest CTs (HU) as .npy files, covid and non-covid in turn."""
    from covidzoo.data.synthetic import phantom

    paths = []
    for k in range(n):
        path = folder / f"scan{k}.npy"
        np.save(path, phantom(np.random.default_rng(k), (12, 40, 40), covid=k % 2 == 0),
                allow_pickle=False)
        paths.append(str(path))
    return paths


@needs_onnxruntime
def test_predict_with_the_onnx_backend_equals_the_checkpoint(exported, tmp_path, invoke):
    ckpt, out = exported
    paths = phantom_scans(tmp_path, 4)
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"not an array")
    args = [*paths, str(bad), "--json", "--batch-size", "3"]
    by_torch = json.loads(invoke("predict", str(ckpt), *args).output)
    result = invoke("predict", "--backend", "onnx", str(out), *args)
    assert result.exit_code == 0, result.output
    by_onnx = json.loads(result.output)
    assert [p["scan"] for p in by_onnx["predictions"]] == paths
    np.testing.assert_allclose([p["probability"] for p in by_onnx["predictions"]],
                               [p["probability"] for p in by_torch["predictions"]],
                               atol=ATOL, rtol=0)
    assert by_onnx["threshold"] == by_torch["threshold"]
    assert [p["label"] for p in by_onnx["predictions"]] == [
        p["label"] for p in by_torch["predictions"]]
    assert [f["source"] for f in by_onnx["failed"]] == [str(bad)]


@needs_onnxruntime
def test_predict_onnx_backend_refuses_files_it_did_not_export(tmp_path, invoke):
    scan = phantom_scans(tmp_path, 1)[0]
    notes = tmp_path / "notes.onnx"
    notes.write_text("not a model")
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(nn.Linear(2, 1), (torch.zeros(1, 2),), str(plain), dynamo=False)
    import onnx

    corrupt = tmp_path / "corrupt.onnx"
    proto = onnx.load(str(plain))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps({"format": 1, "inputs": [
        {"name": "scans", "preprocess": {"size": [0, 32, 32]}}]})
    onnx.save(proto, str(corrupt))
    for model, message in [(plain, "not one covidzoo exported"),
                           (corrupt, "corrupt covidzoo export metadata"),
                           (tmp_path / "none.onnx", "no such ONNX file"),
                           (notes, "not a model onnxruntime can load")]:
        result = invoke("predict", "--backend", "onnx", str(model), scan)
        assert result.exit_code == 2, result.output
        assert message in result.output


def test_predict_onnx_backend_is_not_for_archive_prediction(tmp_path, invoke):
    result = invoke("predict", "--backend", "onnx", "model.onnx", "scan.npy", "--out",
                    str(tmp_path / "p.csv"))
    assert result.exit_code == 2
    assert "--backend onnx: not with --out" in result.output
    assert list(tmp_path.iterdir()) == []
