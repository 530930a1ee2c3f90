"""Provenance: checkpoints and ensemble files record which plugin and package made each component,
and loading one whose component is gone says what to install."""

from __future__ import annotations

import json
from importlib import metadata
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import covidzoo
from covidzoo import hookimpl, plugins
from covidzoo.checkpoint import METADATA_KEY, ModelSpec, load_checkpoint, read_spec, save_checkpoint
from covidzoo.ensemble import MeanEnsembler
from covidzoo.errors import UnknownComponentError
from covidzoo.inference import read_ensemble_file, write_ensemble_file
from covidzoo.plugins import get_plugin_manager

BUILTIN_VOLUME = {"plugin": "covidzoo.aggregators", "package": "covidzoo",
                  "version": covidzoo.__version__}
PROV = {"plugin": "prov", "package": "covidzoo-prov", "version": "2.0.1"}
REAL_ENTRY_POINTS = metadata.entry_points


class ProvNet(nn.Module):
    """A tiny 3D backbone: the mean of each channel, then a linear layer."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.fc = nn.Linear(in_chans, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3, 4)))


class ProvMean(MeanEnsembler):
    method = "prov-mean"


class ProvPlugin:
    @hookimpl
    def register_backbones(self, register):
        register("prov-net", ProvNet, spatial_dims=3, input_size=(4, 8, 8))

    @hookimpl
    def register_aggregators(self, register):
        register("prov-agg", lambda backbone, **kw: backbone, spatial_dims=3)

    @hookimpl
    def register_ensemblers(self, register):
        register("prov-mean", ProvMean)


class EmptyPlugin:
    """The package's next version: it no longer registers anything covidzoo needs here."""

    @hookimpl
    def register_optimizers(self, register):
        register("prov-opt", lambda params, **kw: None)


def install(monkeypatch, plugin=None, version="2.0.1"):
    """Make `plugin` look installed as entry point `prov` of package covidzoo-prov (`None`:
    uninstalled), and load plugins anew."""
    def entry_points(**kwargs):
        found = list(REAL_ENTRY_POINTS(**kwargs))
        if plugin is not None and kwargs.get("group") == "covidzoo":
            dist = SimpleNamespace(name="covidzoo-prov", version=version, metadata={})
            found.append(SimpleNamespace(name="prov", value="covidzoo_prov", group="covidzoo",
                                         dist=dist, load=lambda: plugin))
        return found

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)
    plugins.reset()


def save(path, backbone="prov-net", aggregator="volume", **kwargs):
    spec = ModelSpec(backbone, {"num_classes": 1}, aggregator, threshold=0.5, **kwargs)
    save_checkpoint(path, spec.build(), spec)
    return path


def test_checkpoint_records_the_plugin_and_package_of_each_component(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors")
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        stored = json.loads(fh.metadata()[METADATA_KEY])
    assert stored["provenance"] == {"backbone": PROV, "aggregator": BUILTIN_VOLUME}
    assert read_spec(path).provenance == {"backbone": PROV, "aggregator": BUILTIN_VOLUME}
    model, spec = load_checkpoint(path)
    assert spec.provenance["backbone"] == PROV and isinstance(model, nn.Module)


def test_bare_backbone_checkpoint_records_no_aggregator(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors", aggregator=None)
    assert read_spec(path).provenance == {"backbone": PROV}


def test_uninstalled_plugin_names_the_package_to_install(monkeypatch, tmp_path, runner):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors")
    install(monkeypatch, None)
    expected = (f"{path}: unknown backbone 'prov-net' (the checkpoint was made with it from"
                " package covidzoo-prov 2.0.1, plugin 'prov'; pip install covidzoo-prov)")
    with pytest.raises(UnknownComponentError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == expected
    from covidzoo.cli import cli

    result = runner.invoke(cli, ["predict", str(path), str(tmp_path / "scan.npy"),
                                 "--device", "cpu"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [f"Error: {expected}"]


def test_unknown_aggregator_names_its_package(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors", backbone="prov-net", aggregator="prov-agg")
    install(monkeypatch, None)
    with pytest.raises(UnknownComponentError, match=r"unknown backbone 'prov-net'"):
        load_checkpoint(path)  # the backbone is checked first
    spec = read_spec(path)
    spec.backbone = "regnet3d"  # a built-in: only the aggregator is missing
    with pytest.raises(UnknownComponentError,
                       match=r"^unknown aggregator 'prov-agg' \(the checkpoint was made with it "
                             r"from package covidzoo-prov 2\.0\.1, plugin 'prov'; pip install "
                             r"covidzoo-prov\)$"):
        spec.build()


def test_another_installed_version_is_named(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors")
    install(monkeypatch, EmptyPlugin(), version="3.0.0")
    with pytest.raises(UnknownComponentError,
                       match=r"covidzoo-prov 3\.0\.0 is installed; pip install "
                             r"covidzoo-prov==2\.0\.1\)$"):
        load_checkpoint(path)


def test_installed_but_skipped_plugin_says_why(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors")
    monkeypatch.setenv("COVIDZOO_PLUGINS", "example")
    plugins.reset()
    with pytest.raises(UnknownComponentError,
                       match=r"plugin 'prov'; plugin 'prov' is installed but skipped: not named "
                             r"in COVIDZOO_PLUGINS\)$"):
        load_checkpoint(path)


def test_plugin_registered_at_run_time_then_unregistered(tmp_path):
    pm = get_plugin_manager()
    pm.register(ProvPlugin(), name="run-time")
    try:
        path = save(tmp_path / "m.safetensors")
        assert read_spec(path).provenance["backbone"] == {
            "plugin": "run-time", "package": None, "version": None}
    finally:
        pm.unregister(name="run-time")
    with pytest.raises(UnknownComponentError) as caught:
        load_checkpoint(path)
    assert str(caught.value) == (
        f"{path}: unknown backbone 'prov-net' (the checkpoint was made with it from plugin"
        " 'run-time', which no package provided (registered at run time); register plugin"
        " 'run-time' again)")


def test_a_checkpoint_without_provenance_still_loads(monkeypatch, tmp_path):
    from safetensors.torch import save_file

    install(monkeypatch, ProvPlugin())
    spec = ModelSpec("prov-net", {"num_classes": 1}, "volume")
    model = spec.build()
    old = spec.to_dict()
    del old["provenance"]
    path = tmp_path / "old.safetensors"
    save_file(model.state_dict(), str(path), metadata={METADATA_KEY: json.dumps(old)})
    loaded, read = load_checkpoint(path)
    assert read.provenance == {} and isinstance(loaded, nn.Module)
    install(monkeypatch, None)
    with pytest.raises(UnknownComponentError,
                       match=r"unknown backbone 'prov-net'.*covidzoo models --kind backbone"):
        load_checkpoint(path)  # nothing recorded: the registry's own message


def ensemble(tmp_path, ensembler, *members):
    return write_ensemble_file(tmp_path / "ens.json", members, ensembler, 0.5)


def test_ensemble_file_records_the_ensembler_and_members(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    member = save(tmp_path / "m.safetensors")
    path = ensemble(tmp_path, ProvMean().fit(np.full((3, 1), 0.5)), member)
    data = json.loads(path.read_text())
    assert data["provenance"] == {
        "ensembler": PROV,
        "members": [{"backbone": PROV, "aggregator": BUILTIN_VOLUME}],
    }
    paths, ensembler, threshold = read_ensemble_file(path)
    assert ensembler.method == "prov-mean" and threshold == 0.5 and len(paths) == 1


def test_ensemble_file_with_an_uninstalled_ensembler(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    get_plugin_manager().register(RunTimeBackbone(), name="stays")
    member = save(tmp_path / "m.safetensors", backbone="stays-net")
    path = ensemble(tmp_path, ProvMean().fit(np.full((3, 1), 0.5)), member)
    install(monkeypatch, None)  # covidzoo-prov uninstalled; the member's plugin stays
    get_plugin_manager().register(RunTimeBackbone(), name="stays")
    with pytest.raises(UnknownComponentError) as caught:
        read_ensemble_file(path)
    assert str(caught.value) == (
        f"{path}: unknown ensembler 'prov-mean' (the ensemble file was made with it from"
        " package covidzoo-prov 2.0.1, plugin 'prov'; pip install covidzoo-prov)")


class RunTimeBackbone:
    @hookimpl
    def register_backbones(self, register):
        register("stays-net", ProvNet, spatial_dims=3, input_size=(4, 8, 8))


def test_ensemble_member_component_named_from_the_ensemble_record(monkeypatch, tmp_path):
    """A member checkpoint without provenance: the ensemble file's record of it is used."""
    from safetensors.torch import save_file

    install(monkeypatch, ProvPlugin())
    spec = ModelSpec("prov-net", {"num_classes": 1}, "volume")
    old = spec.to_dict()
    del old["provenance"]
    member = tmp_path / "old.safetensors"
    save_file(spec.build().state_dict(), str(member), metadata={METADATA_KEY: json.dumps(old)})
    path = ensemble(tmp_path, MeanEnsembler().fit(np.full((3, 1), 0.5)), member)
    assert json.loads(path.read_text())["provenance"]["members"] == [
        {"backbone": PROV, "aggregator": BUILTIN_VOLUME}]
    install(monkeypatch, None)
    with pytest.raises(UnknownComponentError) as caught:
        read_ensemble_file(path)
    assert str(caught.value) == (
        f"{path}: member old.safetensors: unknown backbone 'prov-net' (the checkpoint was made"
        " with it from package covidzoo-prov 2.0.1, plugin 'prov'; pip install covidzoo-prov)")


def test_auto_aggregator_records_the_aggregator_it_resolves_to(monkeypatch, tmp_path):
    install(monkeypatch, ProvPlugin())
    path = save(tmp_path / "m.safetensors", aggregator="auto")
    assert read_spec(path).provenance == {"backbone": PROV, "aggregator": BUILTIN_VOLUME}
    load_checkpoint(path)
    install(monkeypatch, None)
    with pytest.raises(UnknownComponentError, match=r"unknown backbone 'prov-net' \(the "):
        load_checkpoint(path)
