"""The plugin system: built-ins, installed entry points, broken plugins, allow-list, hooks."""

from __future__ import annotations

import json
from importlib import metadata

import click
import pytest

import covidzoo
from covidzoo import hookimpl, plugins
from covidzoo.errors import PluginError
from covidzoo.plugins import get_plugin_manager


def registered(plugin: object, name: str):
    """Context manager: `plugin` registered under `name`, unregistered in `finally`."""
    import contextlib

    @contextlib.contextmanager
    def manager():
        pm = get_plugin_manager()
        pm.register(plugin, name=name)
        try:
            yield plugin
        finally:
            pm.unregister(name=name)

    return manager()


def with_broken_entry_point(monkeypatch: pytest.MonkeyPatch) -> None:
    """Add an installed-looking entry point whose module does not exist."""
    real = metadata.entry_points

    def entry_points(**kwargs):
        found = list(real(**kwargs))
        if kwargs.get("group") == "covidzoo":
            found.append(
                metadata.EntryPoint(
                    name="broken", value="covidzoo_broken_plugin_xyz", group="covidzoo"
                )
            )
        return found

    monkeypatch.setattr(plugins.metadata, "entry_points", entry_points)


# --- the example plugin, installed with pip by the README's test command -----------------------


def test_example_plugin_is_installed_and_listed(invoke):
    result = invoke("models", "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.output)}
    assert rows[("backbone", "tiny3d")]["plugin"] == "example"
    assert rows[("aggregator", "flip-mean")]["metadata"]["spatial_dims"] == 3
    assert rows[("optimizer", "adam")]["plugin"] == "covidzoo.optimizers"


def test_example_backbone_runs_forward():
    import torch

    model = covidzoo.create_model("tiny3d").eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 16, 32, 32)).shape == (1, 1)


def test_example_aggregator_averages_the_mirror():
    import torch

    backbone = covidzoo.create_model("tiny3d").eval()
    flip_mean = covidzoo.get_component("flip-mean", "aggregator").create(backbone=backbone)
    x = torch.randn(2, 1, 16, 32, 32)
    with torch.no_grad():
        expected = (backbone(x) + backbone(x.flip(-1))) / 2
        torch.testing.assert_close(flip_mean(x), expected)


def test_plugins_command_lists_versions_and_hooks(invoke):
    rows = {r["name"]: r for r in json.loads(invoke("plugins", "--json").output)}
    assert rows["example"]["version"] == "0.1.0"
    assert rows["example"]["hooks"] == ["register_aggregators", "register_backbones"]
    assert rows["covidzoo.commands"]["builtin"] is True
    assert rows["covidzoo.commands"]["version"] == covidzoo.__version__


def test_plugins_table(invoke):
    result = invoke("plugins")
    assert "example" in result.output and "register_backbones" in result.output


# --- one test per hook (tests/test_docs.py checks that each hook has one) ----------------------


class Everything:
    """A plugin object implementing every hook, registered by a test and removed after."""

    @hookimpl
    def register_backbones(self, register):
        register("hook-backbone", lambda **kw: ("backbone", kw), spatial_dims=2,
                 input_size=(32, 32))

    @hookimpl
    def register_aggregators(self, register):
        register("hook-aggregator", lambda backbone, **kw: ("aggregator", backbone),
                 spatial_dims=2)

    @hookimpl
    def register_ensemblers(self, register):
        register("hook-ensembler", lambda **kw: ("ensembler", kw))

    @hookimpl
    def register_optimizers(self, register):
        register("hook-optimizer", lambda params, **kw: ("optimizer", kw))

    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello-plugin")
        @click.argument("who")
        def hello(who):
            """Say hello (from a test plugin)."""
            click.echo(f"hello {who}")


def test_hook_register_backbones(invoke):
    with registered(Everything(), "everything"):
        assert covidzoo.create_model("hook-backbone", num_classes=2) == (
            "backbone", {"num_classes": 2})
        assert "hook-backbone" in invoke("models", "hook-*").output


def test_hook_register_aggregators():
    with registered(Everything(), "everything"):
        comp = covidzoo.get_component("hook-aggregator", "aggregator")
        assert comp.create(backbone="bb") == ("aggregator", "bb")


def test_hook_register_ensemblers():
    with registered(Everything(), "everything"):
        assert "hook-ensembler" in covidzoo.list_models(kind="ensembler")
        assert covidzoo.get_component("hook-ensembler", "ensembler").plugin == "everything"


def test_hook_register_optimizers():
    with registered(Everything(), "everything"):
        comp = covidzoo.get_component("hook-optimizer", "optimizer")
        assert comp.create(params=[], lr=0.1) == ("optimizer", {"lr": 0.1})


def test_hook_register_commands(invoke):
    with registered(Everything(), "everything"):
        assert "hello-plugin" in invoke("--help").output
        assert invoke("hello-plugin", "world").output == "hello world\n"
    # Unregistered: the command is gone again.
    assert "hello-plugin" not in invoke("--help").output


# --- failures ------------------------------------------------------------------------------------


def test_broken_entry_point_warns_and_the_cli_still_works(monkeypatch, runner):
    from covidzoo.cli import cli

    with_broken_entry_point(monkeypatch)
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    assert "plugin 'broken' failed and was skipped: ModuleNotFoundError" in result.stderr
    assert "tiny3d" in result.stdout  # the healthy plugin still loads


def test_broken_entry_point_in_strict_mode_exits_2(monkeypatch, runner):
    from covidzoo.cli import cli

    with_broken_entry_point(monkeypatch)
    monkeypatch.setenv("COVIDZOO_STRICT_PLUGINS", "1")
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: plugin 'broken' failed: ModuleNotFoundError: "
        "No module named 'covidzoo_broken_plugin_xyz'"
    ]
    with pytest.raises(PluginError):
        covidzoo.list_models()


class RaisingHook:
    @hookimpl
    def register_backbones(self, register):
        register("half-registered", lambda **kw: None, spatial_dims=3)
        raise RuntimeError("boom")


def test_plugin_whose_hook_raises_is_skipped_whole(capsys):
    get_plugin_manager().register(RaisingHook(), name="raising")
    names = covidzoo.list_models()
    assert "half-registered" not in names and "tiny3d" in names
    assert "plugin 'raising' failed and was skipped: RuntimeError: boom" in capsys.readouterr().err
    assert not get_plugin_manager().has_plugin("raising")


class Clashing:
    @hookimpl
    def register_optimizers(self, register):
        register("adam", lambda params, **kw: None)


def test_name_clash_with_a_builtin_drops_the_third_party_plugin(capsys):
    get_plugin_manager().register(Clashing(), name="clashing")
    assert covidzoo.get_component("adam", "optimizer").plugin == "covidzoo.optimizers"
    err = capsys.readouterr().err
    assert "optimizer 'adam' is registered by both plugin 'covidzoo.optimizers'" in err
    assert "plugin 'clashing'" in err


def test_allow_list_empty_loads_no_entry_point(monkeypatch):
    monkeypatch.setenv("COVIDZOO_PLUGINS", "")
    assert "tiny3d" not in covidzoo.list_models()
    assert "adam" in covidzoo.list_models()  # built-ins always load


def test_allow_list_names_the_plugins_to_load(monkeypatch, capsys):
    with_broken_entry_point(monkeypatch)
    monkeypatch.setenv("COVIDZOO_PLUGINS", "example")
    assert "tiny3d" in covidzoo.list_models()
    assert "broken" not in capsys.readouterr().err


def test_loading_is_idempotent():
    first = get_plugin_manager()
    names = sorted(n for n, _ in first.list_name_plugin())
    assert get_plugin_manager() is first
    plugins._load_entry_points(first)
    assert sorted(n for n, _ in first.list_name_plugin()) == names
