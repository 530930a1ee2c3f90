"""Hostile input to the loaders and commands: bad checkpoint files, bad ensemble files, broken
plugins and bad flags for evaluate, ensemble, predict, bench, models and plugins.

Every case ends in exit 0 with a correct result, or in exit 2 with exactly one line on stderr
naming the file or the flag; never a traceback. Hypothesis fuzzes the checkpoint loader
(mutated safetensors bytes and metadata) and the ensemble file reader (random JSON): each
example ends in a correct load or a `BadInputError` naming the file, never another exception.
"""

from __future__ import annotations

import json
import math
import re
import sys
import tempfile
import textwrap
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from model_helpers import hand_probs, make_checkpoint
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from covidzoo import hookimpl, plugins
from covidzoo.checkpoint import MAX_SCAN_VOXELS, METADATA_KEY, load_checkpoint
from covidzoo.ensemble import MeanEnsembler
from covidzoo.errors import BadInputError, PluginError
from covidzoo.inference import read_ensemble_file, write_ensemble_file

SIZE = (8, 32, 32)
FUZZ = settings(max_examples=40, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


# --- building the bad files --------------------------------------------------------------------


def spec_of(path: Path) -> dict[str, Any]:
    with safe_open(str(path), framework="pt") as fh:
        return json.loads(fh.metadata()[METADATA_KEY])


def with_metadata(src: Path, dst: Path, change: Callable[[dict[str, Any]], Any]) -> Path:
    """A copy of checkpoint `src` whose covidzoo metadata `change` edited in place."""
    data = spec_of(src)
    change(data)
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: json.dumps(data)})
    return dst


def with_raw_metadata(src: Path, dst: Path, text: str) -> Path:
    save_file(load_file(str(src)), str(dst), metadata={METADATA_KEY: text})
    return dst


def with_poisoned_tensor(src: Path, dst: Path, value: float) -> Path:
    """A copy of `src` with one weight set to `value` (NaN or infinity)."""
    tensors = load_file(str(src))
    name = next(k for k, t in tensors.items() if t.is_floating_point() and t.numel() > 1)
    tensors[name] = tensors[name].clone()
    tensors[name].view(-1)[0] = value
    with safe_open(str(src), framework="pt") as fh:
        save_file(tensors, str(dst), metadata=fh.metadata())
    return dst


def setter(*keys: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A metadata edit: `data[keys[0]][keys[1]]... = value`."""

    def change(data: dict[str, Any]) -> None:
        for key in keys[:-1]:
            data = data[key]
        data[keys[-1]] = value

    return change


# Bad checkpoints: name -> (how to build it from the good one, what the error line says).
BAD_CHECKPOINTS: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "empty": (lambda good, p: (p.write_bytes(b""), p)[1], "not a safetensors file"),
    "truncated": (lambda good, p: (p.write_bytes(good.read_bytes()[: good.stat().st_size // 2]),
                                   p)[1], "unreadable safetensors file"),
    "random-bytes": (lambda good, p: (p.write_bytes(np.random.default_rng(0).bytes(4096)), p)[1],
                     "not a safetensors file"),
    "json-renamed": (lambda good, p: (p.write_text(json.dumps(spec_of(good))), p)[1],
                     "not a safetensors file"),
    "nan-tensor": (lambda good, p: with_poisoned_tensor(good, p, math.nan), "holds NaN"),
    "inf-tensor": (lambda good, p: with_poisoned_tensor(good, p, math.inf), "infinite"),
    "threshold-nan": (lambda good, p: with_metadata(good, p, setter("threshold", value=math.nan)),
                      "threshold nan is not a number in [0, 1]"),
    "threshold-inf": (lambda good, p: with_metadata(good, p, setter("threshold", value=math.inf)),
                      "threshold inf"),
    "threshold-abc": (lambda good, p: with_metadata(good, p, setter("threshold", value="abc")),
                      "threshold 'abc'"),
    "threshold-5": (lambda good, p: with_metadata(good, p, setter("threshold", value=5.0)),
                    "threshold 5.0"),
    "threshold-negative": (lambda good, p: with_metadata(good, p, setter("threshold", value=-0.1)),
                           "threshold -0.1"),
    "threshold-bool": (lambda good, p: with_metadata(good, p, setter("threshold", value=True)),
                       "threshold True"),
    "absurd-widths": (lambda good, p: with_metadata(
        good, p, setter("model_args", "widths", value=[10**7] * 4)), "widths must be at most"),
    "absurd-depths": (lambda good, p: with_metadata(
        good, p, setter("model_args", "depths", value=[10**7, 1, 1, 1])), "blocks in all"),
    "absurd-parameters": (lambda good, p: with_metadata(
        good, p, setter("model_args", "widths", value=[50_000] * 4)), "parameters; at most"),
    "nan-ratio": (lambda good, p: with_metadata(
        good, p, setter("model_args", "bottleneck_ratio", value=math.nan)),
        "bottleneck_ratio must be a finite number"),
    "other-widths": (lambda good, p: with_metadata(
        good, p, setter("model_args", "widths", value=[16, 16, 32, 32])), "do not fit"),
    "unknown-option": (lambda good, p: with_metadata(
        good, p, setter("model_args", "depthz", value=[1])), "unknown option depthz"),
    "unknown-backbone": (lambda good, p: with_metadata(good, p, setter("backbone", value="nope")),
                         "unknown backbone 'nope'"),
    "backbone-number": (lambda good, p: with_metadata(good, p, setter("backbone", value=42)),
                        "backbone 42 is not a name"),
    "model-args-list": (lambda good, p: with_metadata(good, p, setter("model_args", value=[1])),
                        "model_args is a JSON list"),
    "huge-scan-size": (lambda good, p: with_metadata(
        good, p, setter("preprocess", "size", value=[10**6] * 3)), f"{MAX_SCAN_VOXELS:,} voxels"),
    "bad-scan-size": (lambda good, p: with_metadata(
        good, p, setter("preprocess", "size", value="abc")), "preprocess"),
    "nan-window": (lambda good, p: with_metadata(
        good, p, setter("preprocess", "window", value=[-600, math.nan])), "not finite"),
    "metadata-not-json": (lambda good, p: with_raw_metadata(good, p, "{not json"),
                          "corrupt covidzoo metadata"),
    "metadata-a-list": (lambda good, p: with_raw_metadata(good, p, "[1, 2]"),
                        "metadata is a JSON list"),
    "not-covidzoo": (lambda good, p: (save_file({"w": torch.zeros(2)}, str(p)), p)[1],
                     "not a covidzoo checkpoint"),
    "pickle": (lambda good, p: (torch.save({"w": torch.zeros(2)}, p), p)[1], "pickle"),
    "missing": (lambda good, p: p, "no such checkpoint file"),
    "a-folder": (lambda good, p: (p.mkdir(), p)[1], "a folder, not a checkpoint file"),
}


def bad_name(case: str) -> str:
    return f"{case}.pth" if case == "pickle" else f"{case}.safetensors"


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> SimpleNamespace:
    """A tiny good checkpoint, every bad one, a scan and an ensemble folder."""
    root = tmp_path_factory.mktemp("reliability")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COVIDZOO_CACHE", str(root / "cache"))
        good = make_checkpoint(root / "good.safetensors", SIZE, seed=0, threshold=0.42)
        bad = {case: build(good, root / bad_name(case))
               for case, (build, _) in BAD_CHECKPOINTS.items()}
        scan = root / "scan.npy"
        rng = np.random.default_rng(1)
        np.save(scan, rng.integers(-1000, 400, (12, 40, 40)).astype(np.int16))
        yield SimpleNamespace(root=root, good=good, bad=bad, scan=scan)


def run(*args: Any, env: dict[str, str] | None = None) -> Any:
    from covidzoo.cli import cli

    return CliRunner().invoke(cli, [str(a) for a in args], env=env)


def one_line_error(result: Any, *needles: str) -> str:
    """The run exited 2 with exactly one line on stderr, holding every needle."""
    assert not isinstance(result.exception, Exception) or isinstance(
        result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, (result.output, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


# --- bad checkpoint files ----------------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_predict_refuses_a_bad_checkpoint_naming_it(env, case):
    path, needle = env.bad[case], BAD_CHECKPOINTS[case][1]
    one_line_error(run("predict", path, env.scan, "--device", "cpu"), str(path), needle)


@pytest.mark.parametrize("case", ["truncated", "nan-tensor", "threshold-abc", "absurd-widths",
                                  "other-widths", "json-renamed", "pickle"])
def test_evaluate_refuses_a_bad_checkpoint_naming_it(env, case):
    path, needle = env.bad[case], BAD_CHECKPOINTS[case][1]
    result = run("evaluate", path, "--data", env.root / "no-data", "--device", "cpu")
    one_line_error(result, str(path), needle)


@pytest.mark.parametrize("case", ["threshold-nan", "nan-tensor", "absurd-depths"])
def test_ensemble_refuses_a_bad_member_naming_it(env, case):
    path, needle = env.bad[case], BAD_CHECKPOINTS[case][1]
    result = run("ensemble", env.good, path, "--data", env.root / "no-data", "--device", "cpu")
    one_line_error(result, str(path), needle)


def test_a_good_checkpoint_predicts_what_the_model_computes(env):
    result = run("predict", env.good, env.scan, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    prediction = json.loads(result.stdout)["predictions"][0]
    assert prediction["probability"] == pytest.approx(hand_probs(env.good, [env.scan])[0],
                                                      abs=1e-5)
    assert prediction["threshold"] == 0.42


def test_a_pretrained_path_in_metadata_is_never_opened(tmp_path):
    """resdense2d's `pretrained_path` names weights to load at creation; in a checkpoint the
    weights are in the file, so the path is dropped: a path in hostile metadata is not read."""
    from covidzoo import create_model
    from covidzoo.checkpoint import ModelSpec, save_checkpoint

    args = {"backbones": "resnet10t,resnet10t", "proj_channels": 8}
    torch.manual_seed(0)
    model = create_model("resdense2d", aggregator="slice-mean", **args).eval()
    secret = tmp_path / "secret.safetensors"  # exists, holds the wrong weights: never read
    save_file({"resnet10t.conv1.0.weight": torch.full((24, 3, 3, 3), math.nan)}, str(secret))
    spec = ModelSpec("resdense2d", {**args, "pretrained_path": str(secret)}, "slice-mean",
                     preprocess={"size": [2, 32, 32]})
    path = save_checkpoint(tmp_path / "m.safetensors", model, spec)
    loaded, read = load_checkpoint(path)
    assert read.model_args["pretrained_path"] == str(secret)  # the record is kept as written
    x = torch.randn(1, 1, 2, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.eval()(x), model(x))
    assert loaded.backbone.pretrained is False  # nothing was loaded from the path


# --- bad ensemble files ------------------------------------------------------------------------


def ensemble_data(members: list[str], /, **changes: Any) -> dict[str, Any]:
    """A weighted ensemble file of `members` (equal weights), with `changes` made: a key, or
    `ensembler.KEY` for the ensembler's."""
    data = {"format": 1, "members": members,
            "ensembler": {"method": "weighted", "n_models": len(members), "l2": 10.0,
                          "weights": [1 / len(members)] * len(members)},
            "threshold": 0.5}
    for key, value in changes.items():
        if key.startswith("ensembler."):
            data["ensembler"][key.split(".", 1)[1]] = value
        else:
            data[key] = value
    return data


TWO = ["good.safetensors", "good.safetensors"]
# Bad ensemble files: name -> (JSON document or raw text, what the error line says).
BAD_ENSEMBLES: dict[str, tuple[Any, str]] = {
    "weights-nan": (ensemble_data(TWO, **{"ensembler.weights": [math.nan, 0.5]}), "'weights'"),
    "weights-inf": (ensemble_data(TWO, **{"ensembler.weights": [math.inf, 0.5]}), "'weights'"),
    "weights-negative": (ensemble_data(TWO, **{"ensembler.weights": [1.5, -0.5]}),
                         "'weights' must be >= 0"),
    "weights-zero": (ensemble_data(TWO, **{"ensembler.weights": [0.0, 0.0]}), "must sum to 1"),
    "weights-unnormalised": (ensemble_data(TWO, **{"ensembler.weights": [2.0, 1.0]}),
                             "must sum to 1"),
    "weights-length": (ensemble_data(TWO, **{"ensembler.weights": [0.2, 0.3, 0.5]}),
                       "3 values for 2 members"),
    "weights-text": (ensemble_data(TWO, **{"ensembler.weights": "abc"}), "'weights'"),
    "weights-missing": (ensemble_data(TWO, **{"ensembler.weights": None}), "no 'weights'"),
    "l2-nan": (ensemble_data(TWO, **{"ensembler.l2": math.nan}), "'l2'"),
    "n-models-mismatch": (ensemble_data(TWO, **{"ensembler.n_models": 3}), "'weights' has 2"),
    "n-models-text": (ensemble_data(TWO, **{"ensembler.n_models": "two"}), "'n_models'"),
    "mean-never-fit": ({"format": 1, "members": TWO, "ensembler": {"method": "mean"}},
                       "never fit"),
    "mean-too-few": ({"format": 1, "members": TWO,
                      "ensembler": {"method": "mean", "n_models": 1}}, "fit on 1 members"),
    "rank-unordered": ({"format": 1, "members": TWO[:1], "ensembler": {
        "method": "rank", "n_models": 1,
        "knots": [{"score": [0.0, 0.7, 0.3, 1.0], "rank": [0.0, 0.2, 0.6, 1.0]}]}},
        "increase strictly"),
    "rank-outside": ({"format": 1, "members": TWO[:1], "ensembler": {
        "method": "rank", "n_models": 1, "knots": [{"score": [0.0, 2.0], "rank": [0.0, 1.0]}]}},
        "within [0, 1]"),
    "stacking-coef-nan": ({"format": 1, "members": TWO[:1], "ensembler": {
        "method": "stacking", "n_models": 1, "C": 1.0, "coef": [math.nan], "intercept": 0.0}},
        "'coef'"),
    "stacking-no-intercept": ({"format": 1, "members": TWO[:1], "ensembler": {
        "method": "stacking", "n_models": 1, "C": 1.0, "coef": [1.0]}}, "'intercept'"),
    "stacking-negative-c": ({"format": 1, "members": TWO[:1], "ensembler": {
        "method": "stacking", "n_models": 1, "C": -1.0, "coef": [1.0], "intercept": 0.0}},
        "'C' must be a finite number > 0"),
    "threshold-nan": (ensemble_data(TWO, threshold=math.nan), "threshold"),
    "threshold-high": (ensemble_data(TWO, threshold=1.5), "threshold must be a number in [0, 1]"),
    "threshold-text": (ensemble_data(TWO, threshold="0.5"), "threshold"),
    "missing-member": (ensemble_data(["good.safetensors", "gone.safetensors"]),
                       "'gone.safetensors'"),
    "escaping-member": (ensemble_data(["../../nowhere/best.safetensors"] * 2), "not found"),
    "nul-member": (ensemble_data(["good\x00.safetensors"] * 2), "not found"),
    "members-a-string": (ensemble_data(TWO, members="good.safetensors"), "'members'"),
    "members-empty": (ensemble_data(TWO, members=[]), "'members'"),
    "members-numbers": (ensemble_data(TWO, members=[1, 2]), "'members'"),
    "ensembler-a-list": (ensemble_data(TWO, ensembler=[1]), "ensemble description"),
    "ensembler-unknown": (ensemble_data(TWO, **{"ensembler.method": "median"}),
                          "unknown ensembler 'median'"),
    "format-2": (ensemble_data(TWO, format=2), "format 2"),
    "a-list": ([1, 2], "not a covidzoo ensemble file"),
    "not-json": ("{not json", "not an ensemble JSON file"),
    "empty": ("", "not an ensemble JSON file"),
    "too-deep": ("[" * 100_000 + "]" * 100_000, "not an ensemble JSON file"),
    "binary": (b"\xff\xfe\x00garbage", "not an ensemble JSON file"),
}


def write_document(path: Path, document: Any) -> Path:
    if isinstance(document, bytes):
        path.write_bytes(document)
    elif isinstance(document, str):
        path.write_text(document)
    else:
        path.write_text(json.dumps(document))  # NaN and Infinity as JSON's extensions
    return path


@pytest.fixture(scope="module")
def ensembles(env) -> dict[str, Path]:
    folder = env.root / "ensembles"
    folder.mkdir()
    (folder / "good.safetensors").write_bytes(env.good.read_bytes())
    return {case: write_document(folder / f"{case}.json", document)
            for case, (document, _) in BAD_ENSEMBLES.items()}


@pytest.mark.parametrize("case", list(BAD_ENSEMBLES))
def test_predict_refuses_a_bad_ensemble_file_naming_it(env, ensembles, case):
    path = ensembles[case]
    one_line_error(run("predict", path, env.scan, "--device", "cpu"), str(path),
                   BAD_ENSEMBLES[case][1])


@pytest.mark.parametrize("case", ["weights-nan", "weights-length", "threshold-high",
                                  "escaping-member", "not-json"])
def test_evaluate_refuses_a_bad_ensemble_file_naming_it(env, ensembles, case):
    path = ensembles[case]
    result = run("evaluate", path, "--data", env.root / "no-data", "--device", "cpu")
    one_line_error(result, str(path), BAD_ENSEMBLES[case][1])


def test_an_ensemble_member_with_a_bad_checkpoint_is_named(env, tmp_path):
    (tmp_path / "bad.safetensors").write_bytes(env.bad["threshold-abc"].read_bytes())
    path = write_document(tmp_path / "e.json", ensemble_data(["bad.safetensors"] * 2))
    one_line_error(run("predict", path, env.scan, "--device", "cpu"),
                   str(tmp_path / "bad.safetensors"), "threshold 'abc'")


@pytest.mark.parametrize("where", ["parent", "absolute"])
def test_members_outside_the_ensemble_folder_are_read(env, tmp_path, where):
    """Relative paths leaving the file's folder and absolute ones are allowed (covidzoo writes
    both itself); the result is that of the member checkpoint read directly."""
    (tmp_path / "runs").mkdir()
    member = tmp_path / "runs" / "best.safetensors"
    member.write_bytes(env.good.read_bytes())
    (tmp_path / "ens").mkdir()
    listed = "../runs/best.safetensors" if where == "parent" else str(member)
    path = write_document(tmp_path / "ens" / "e.json", ensemble_data([listed, listed]))
    result = run("predict", path, env.scan, "--device", "cpu", "--json")
    assert result.exit_code == 0, result.output
    fused = json.loads(result.stdout)["predictions"][0]["probability"]
    assert fused == pytest.approx(hand_probs(env.good, [env.scan])[0], abs=1e-5)


def test_written_ensemble_files_with_parent_paths_read_back(env, tmp_path):
    (tmp_path / "out").mkdir()
    path = write_ensemble_file(tmp_path / "out" / "e.json", [env.good],
                               MeanEnsembler().fit(np.full((3, 1), 0.5)), 0.3)
    assert json.loads(path.read_text())["members"][0].startswith("../")
    paths, _, threshold = read_ensemble_file(path)
    assert paths[0].resolve() == env.good.resolve() and threshold == 0.3


# --- broken plugins ----------------------------------------------------------------------------


@pytest.fixture
def plugin_module(tmp_path, monkeypatch):
    """`plugin_module(name, source)`: an importable module `name` holding `source`; forgotten
    (sys.modules) at teardown."""
    monkeypatch.syspath_prepend(str(tmp_path))
    made: list[str] = []

    def make(name: str, source: str) -> str:
        (tmp_path / f"{name}.py").write_text(textwrap.dedent(source))
        made.append(name)
        return name

    yield make
    for name in made:
        sys.modules.pop(name, None)


@pytest.fixture
def register_plugin():
    """`register_plugin(obj, name)`: a plugin registered for one test, unregistered after."""
    names: list[str] = []

    def register(plugin: object, name: str) -> None:
        plugins.get_plugin_manager().register(plugin, name=name)
        names.append(name)

    try:
        yield register
    finally:
        for name in names:
            plugins.get_plugin_manager().unregister(name=name)


def with_entry_point(monkeypatch, name: str, value: str) -> None:
    real = metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == "covidzoo":
            found.append(metadata.EntryPoint(name=name, value=value, group="covidzoo"))
        return found

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)


EXITING = "import sys\nsys.exit(3)\n"
HOOKS = """
from covidzoo import hookimpl

@hookimpl
def register_backbones(register):
    register("ok-net", "torch.nn:Identity", summary="fine", spatial_dims=3,
             input_size=(8, 8, 8))
"""


@pytest.mark.parametrize("case, source, value, reason", [
    ("exits", EXITING, "{module}", "SystemExit: 3"),
    ("no-attribute", HOOKS, "{module}:no_such_hooks", "AttributeError"),
])
def test_a_broken_entry_point_is_a_failed_plugin(plugin_module, monkeypatch, case, source,
                                                 value, reason):
    module = plugin_module(f"covidzoo_test_{case.replace('-', '_')}", source)
    with_entry_point(monkeypatch, "bad", value.format(module=module))
    result = run("plugins", "--json")
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["bad"]["status"] == "failed" and reason in rows["bad"]["reason"]
    assert f"plugin 'bad' failed and was skipped: {reason}" in result.stderr
    plugins.reset()
    monkeypatch.setenv("COVIDZOO_STRICT_PLUGINS", "1")
    one_line_error(run("models"), "plugin 'bad' failed", reason)


class BrokenFactories:
    """Backbones whose factories are broken in each way a plugin's can be."""

    @hookimpl
    def register_backbones(self, register):
        size = {"spatial_dims": 3, "input_size": (8, 16, 16)}
        register("no-attr-net", "covidzoo.models.regnet3d:no_such_factory", summary="x", **size)
        register("not-callable-net", "covidzoo.models.regnet3d_cfg:WIDTH_QUANTUM", summary="x",
                 **size)
        register("dict-net", lambda **kw: {"not": "a module"}, **size)
        register("exiting-net", lambda **kw: sys.exit(4), **size)
        register("exits-at-import-net", f"{EXIT_MODULE}:factory", summary="x", **size)


EXIT_MODULE = "covidzoo_test_exits_on_import"


@pytest.mark.parametrize("backbone, needle", [
    ("no-attr-net", "is unavailable: AttributeError"),
    ("not-callable-net", "is not callable (a int)"),
    ("dict-net", "returned a dict, not a torch nn.Module"),
    ("exiting-net", "called sys.exit(4)"),
    ("exits-at-import-net", "is unavailable: SystemExit: 5"),
])
@pytest.mark.parametrize("command", ["models", "bench"])
def test_a_broken_factory_is_one_line_exit_2(plugin_module, register_plugin, backbone, needle,
                                             command):
    plugin_module(EXIT_MODULE, "import sys\nsys.exit(5)\n")
    register_plugin(BrokenFactories(), name="broken-factories")
    args = (["models", "show", backbone] if command == "models" else
            ["bench", backbone, "--mode", "infer", "--precision", "fp32", "--iters", "1",
             "--warmup", "0", "--device", "cpu", "--no-baseline", "--batch-size", "1"])
    one_line_error(run(*args), f"'{backbone}' (plugin 'broken-factories')", needle)


def test_a_checkpoint_of_a_factory_returning_no_module_is_refused(register_plugin, tmp_path):
    from covidzoo.checkpoint import ModelSpec, save_checkpoint

    class Net(torch.nn.Module):
        def __init__(self, **kwargs):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

    class Shifty:
        @hookimpl
        def register_backbones(self, register):
            register("shifty-net", lambda **kw: "a string", spatial_dims=3,
                     input_size=(8, 8, 8))

    path = save_checkpoint(tmp_path / "m.safetensors", Net(), ModelSpec("shifty-net"))
    register_plugin(Shifty(), name="shifty")
    with pytest.raises(PluginError, match=rf"{re.escape(str(path))}: backbone 'shifty-net' .*"
                                          " returned a str"):
        load_checkpoint(path)


# --- bad flags ---------------------------------------------------------------------------------

FLAG_CASES: list[tuple[str, list[str], str]] = [
    # (command, arguments after the command, what the one line names)
    *[("evaluate", ["{good}", "--data", "{nodata}", *flags], needle) for flags, needle in [
        (["--threshold", "abc"], "--threshold"),
        (["--threshold", "nan"], "--threshold"),
        (["--threshold", "inf"], "--threshold"),
        (["--threshold", "5"], "--threshold"),
        (["--threshold", "-0.5"], "--threshold"),
        (["--bootstrap", "-1"], "--bootstrap"),
        (["--bootstrap", "abc"], "--bootstrap"),
        (["--bootstrap", str(10**12)], "--bootstrap"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**70)], "--seed"),
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--threads", "0"], "--threads"),
        (["--device", "nonsense"], "--device"),
        (["--precision", "bogus"], "--precision"),
        (["--split", "bogus"], "--split"),
    ]],
    *[("ensemble", ["{good}", "{good}", "--data", "{nodata}", *flags], needle)
      for flags, needle in [
        (["--folds", "1"], "--folds"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**70)], "--seed"),
        (["--fit-split", "bogus"], "--fit-split"),
        (["--batch-size", "0"], "--batch-size"),
        (["--workers", "-1"], "--workers"),
        (["--threads", "0"], "--threads"),
        (["--device", "nonsense"], "--device"),
        (["--precision", "bogus"], "--precision"),
        (["--method", "bogus"], "ensembler 'bogus'"),
    ]],
    *[("predict", ["{good}", "{scan}", *flags], needle) for flags, needle in [
        (["--batch-size", "0"], "--batch-size"),
        (["--threads", "0"], "--threads"),
        (["--device", "nonsense"], "--device"),
        (["--precision", "bogus"], "--precision"),
    ]],
    *[("bench", ["regnet3d", *flags], needle) for flags, needle in [
        (["--batch-size", "0"], "--batch-size"),
        (["--batch-size", "-3"], "--batch-size"),
        (["--warmup", "-1"], "--warmup"),
        (["--iters", "0"], "--iters"),
        (["--input-size", "0,0,0"], "--input-size"),
        (["--input-size", "8,abc,8"], "--input-size"),
        (["--input-size", "8,8"], "--input-size"),
        (["--device", "nonsense"], "--device"),
        (["--precision", "bogus"], "--precision"),
        (["--mode", "bogus"], "--mode"),
        (["--threads", "0"], "--threads"),
        (["--workers", "-1"], "--workers"),
        (["--compile", "bogus"], "compile mode 'bogus'"),
        (["--widths", "10000000,10000000,10000000,10000000"], "widths must be at most"),
        (["--depths", "100000,1,1,1"], "blocks in all"),
        (["--depths", "1,0,1,1"], "--depths"),
        (["--bottleneck-ratio", "nan"], "--bottleneck-ratio"),
        (["--model-arg", "widths=[10000000,8,8,8]"], "widths must be at most"),
        (["--model-arg", "no-equals"], "--model-arg"),
        (["--e2e"], "--e2e"),
    ]],
    *[("models", flags, needle) for flags, needle in [
        (["show", "regnet3d", "--widths", "0,8,8,8"], "--widths"),
        (["show", "regnet3d", "--widths", "10000000,8,8,8"], "widths must be at most"),
        (["show", "regnet3d", "--widths", "50000,50000,50000,50000"], "parameters; at most"),
        (["show", "regnet3d", "--depths", "abc"], "--depths"),
        (["show", "regnet3d", "--stem-width", "-8"], "--stem-width"),
        (["show", "regnet3d", "--se-ratio", "inf"], "--se-ratio"),
        (["show", "regnet3d", "--wa", "nan"], "--wa"),
        (["show", "regnet3d", "--w0", "8", "--wa", "1e300", "--wm", "2", "--depth", "4"],
         "width of more than"),
        (["show", "regnet3d", "--w0", "8", "--wa", "8", "--wm", "2", "--depth", "100000"],
         "depth must be an integer from 1 to"),
        (["show", "regnet3d", "--input-size", "0,0,0"], "--input-size"),
        (["show", "regnet3d", "--input-size", "8,8"], "--input-size"),
        (["show", "no-such-model"], "unknown backbone 'no-such-model'"),
        (["list", "--kind", "bogus"], "unknown kind 'bogus'"),
    ]],
    ("plugins", ["--bogus"], "--bogus"),
]


@pytest.mark.parametrize("command, args, needle", FLAG_CASES,
                         ids=[f"{c}-{' '.join(a[-2:])}" for c, a, _ in FLAG_CASES])
def test_a_bad_flag_is_one_line_exit_2_naming_it(env, command, args, needle):
    values = {"good": env.good, "nodata": env.root / "no-data", "scan": env.scan}
    one_line_error(run(command, *[a.format(**values) for a in args]), needle)


def test_evaluate_refuses_a_bad_threshold_before_loading_anything(env):
    """The flag is checked first: even a missing model is not reached."""
    one_line_error(run("evaluate", env.root / "gone.safetensors", "--threshold", "abc"),
                   "--threshold: 'abc' is not checkpoint, youden or a number")


def test_plugins_lists_every_plugin(env):
    result = run("plugins", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    assert {"covidzoo.backbones", "example"} <= {r["name"] for r in json.loads(result.stdout)}


# --- fuzzing the loaders -----------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-10**20, 10**20)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12,
)
SPEC_FIELDS = [("threshold",), ("backbone",), ("aggregator",), ("model_args",),
               ("aggregator_args",), ("preprocess",), ("extra",), ("provenance",),
               ("model_args", "widths"), ("model_args", "depths"),
               ("model_args", "stem_width"), ("model_args", "group_widths"),
               ("model_args", "bottleneck_ratio"), ("model_args", "num_classes"),
               ("model_args", "in_chans"), ("model_args", "se_ratio"),
               ("preprocess", "size"), ("preprocess", "window"), ("preprocess", "contrast")]


def check_load(path: Path) -> None:
    """A correct load (a module whose spec holds a valid threshold), or a `BadInputError`
    naming the file: nothing else."""
    try:
        model, spec = load_checkpoint(path)
    except BadInputError as exc:
        assert str(path) in str(exc) and "\n" not in str(exc).strip(), str(exc)
        return
    assert isinstance(model, torch.nn.Module)
    assert spec.threshold is None or 0.0 <= spec.threshold <= 1.0
    assert all(bool(torch.isfinite(t).all()) for t in model.state_dict().values()
               if t.is_floating_point())


@FUZZ
@example(edits=[(("threshold",), 0.3), (("extra",), {"note": "kept"})])  # loads
@given(edits=st.lists(st.tuples(st.sampled_from(SPEC_FIELDS), JSON_VALUES), min_size=1,
                      max_size=3))
def test_fuzzed_checkpoint_metadata_loads_or_is_bad_input(env, edits):
    data = spec_of(env.good)
    for keys, value in edits:
        target = data
        for key in keys[:-1]:
            if not isinstance(target.get(key), dict):
                target[key] = {}
            target = target[key]
        target[keys[-1]] = value
    with tempfile.TemporaryDirectory() as folder:
        path = with_raw_metadata(env.good, Path(folder) / "m.safetensors", json.dumps(data))
        check_load(path)


@FUZZ
@given(data=st.data())
def test_fuzzed_checkpoint_bytes_load_or_are_bad_input(env, data):
    raw = bytearray(env.good.read_bytes())
    header = 8 + int.from_bytes(raw[:8], "little")
    how = data.draw(st.sampled_from(["flip", "truncate", "append", "replace"]))
    if how == "flip":
        for _ in range(data.draw(st.integers(1, 4))):
            at = data.draw(st.integers(0, header + 64))
            raw[at] = data.draw(st.integers(0, 255))
    elif how == "truncate":
        raw = raw[: data.draw(st.integers(0, len(raw) - 1))]
    elif how == "append":
        raw += data.draw(st.binary(min_size=1, max_size=64))
    else:
        raw = bytearray(data.draw(st.binary(max_size=256)))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.safetensors"
        path.write_bytes(bytes(raw))
        check_load(path)


METHODS = ["mean", "weighted", "rank", "stacking"]
NUMBER_LISTS = st.lists(st.floats(allow_nan=True, allow_infinity=True) | st.integers(-3, 3),
                        max_size=4)
ENSEMBLER_FIELDS = {
    "method": st.sampled_from(METHODS) | JSON_VALUES,
    "n_models": st.integers(-1, 3) | JSON_VALUES,
    "weights": NUMBER_LISTS | JSON_VALUES,
    "l2": st.floats(allow_nan=True) | JSON_VALUES,
    "C": st.floats(allow_nan=True) | JSON_VALUES,
    "coef": NUMBER_LISTS | JSON_VALUES,
    "intercept": st.floats(allow_nan=True) | JSON_VALUES,
    "knots": st.lists(st.fixed_dictionaries({"score": NUMBER_LISTS, "rank": NUMBER_LISTS}),
                      max_size=3) | JSON_VALUES,
}
ENSEMBLE_DOCUMENTS = st.one_of(
    JSON_VALUES,
    st.fixed_dictionaries({
        "format": st.just(1) | JSON_VALUES,
        "members": st.lists(st.sampled_from(["good.safetensors", "gone.safetensors",
                                             "../ensembles/good.safetensors", ""]),
                            max_size=3) | JSON_VALUES,
        "ensembler": st.fixed_dictionaries({}, optional=ENSEMBLER_FIELDS) | JSON_VALUES,
        "threshold": st.floats(allow_nan=True, allow_infinity=True) | JSON_VALUES,
    }),
)


@FUZZ
@example(document={"format": 1, "members": ["good.safetensors", "../ensembles/good.safetensors"],
                   "ensembler": {"method": "rank", "n_models": 2, "knots": [
                       {"score": [0.0, 0.4, 1.0], "rank": [0.0, 0.5, 1.0]}] * 2},
                   "threshold": 0.5})  # loads
@given(document=ENSEMBLE_DOCUMENTS)
def test_fuzzed_ensemble_files_load_or_are_bad_input(env, ensembles, document):
    """A file that loads gives an ensembler that fuses any member probabilities into finite
    probabilities, one member each, and a threshold within [0, 1]."""
    folder = env.root / "ensembles"
    with tempfile.NamedTemporaryFile("w", suffix=".json", dir=folder, delete=False) as fh:
        fh.write(json.dumps(document))
    path = Path(fh.name)
    try:
        paths, ensembler, threshold = read_ensemble_file(path)
    except BadInputError as exc:
        assert str(path) in str(exc), str(exc)
        return
    finally:
        path.unlink()
    assert paths and all(p.is_file() for p in paths)
    assert threshold is None or 0.0 <= threshold <= 1.0
    probs = np.random.default_rng(0).random((5, len(paths)))
    fused = np.asarray(ensembler.predict(probs))
    assert fused.shape == (5,) and np.isfinite(fused).all()
    assert fused.min() >= 0.0 and fused.max() <= 1.0
