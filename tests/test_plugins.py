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

# The installed example plugin (plugins/covidzoo-example), as its distribution says.
EXAMPLE_VERSION = metadata.version("covidzoo-example")


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
    assert rows["example"]["version"] == EXAMPLE_VERSION
    assert rows["example"]["hooks"] == ["register_aggregators", "register_backbones",
                                        "register_commands", "register_ensemblers",
                                        "register_optimizers"]
    assert rows["covidzoo.commands"]["builtin"] is True
    assert rows["covidzoo.commands"]["version"] == covidzoo.__version__


def test_plugins_table(invoke, monkeypatch):
    result = invoke("plugins")
    assert "example" in result.output and "register_backbones" in result.output
    assert "loaded" in result.output
    monkeypatch.setenv("COVIDZOO_PLUGINS", "monai")
    plugins.reset()
    result = invoke("plugins")
    assert "skipped" in result.output
    skipped = f"example (covidzoo-example {EXAMPLE_VERSION}) skipped"
    assert f"{skipped}: not named in COVIDZOO_PLUGINS" in result.output


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


class ExitsInRegisterCommands:
    @hookimpl
    def register_commands(self, cli):
        raise SystemExit(3)


def test_a_plugin_exiting_in_register_commands_does_not_end_covidzoo(invoke):
    with registered(ExitsInRegisterCommands(), "exits"):
        result = invoke("--help")
    assert "models" in result.output


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
        register("half-registered", lambda **kw: None, spatial_dims=3, input_size=(8, 8, 8))
        raise RuntimeError("boom")

    @hookimpl
    def register_optimizers(self, register):
        register("raising-opt", lambda params, **kw: None)


def test_plugin_whose_hook_raises_is_skipped_whole(capsys):
    get_plugin_manager().register(RaisingHook(), name="raising")
    names = covidzoo.list_models()
    assert "half-registered" not in names and "tiny3d" in names
    assert "raising-opt" not in names  # the whole plugin goes, not only the raising hook
    assert "plugin 'raising' failed and was skipped: RuntimeError: boom" in capsys.readouterr().err
    assert not get_plugin_manager().has_plugin("raising")


class Clashing:
    @hookimpl
    def register_optimizers(self, register):
        register("adam", lambda params, **kw: None)
        register("clashing-opt", lambda params, **kw: None)


def test_name_clash_with_a_builtin_drops_only_the_clashing_component(capsys):
    get_plugin_manager().register(Clashing(), name="clashing")
    assert covidzoo.get_component("adam", "optimizer").plugin == "covidzoo.optimizers"
    assert covidzoo.get_component("clashing-opt", "optimizer").plugin == "clashing"
    err = capsys.readouterr().err
    assert ("optimizer 'adam' is registered by both plugin 'covidzoo.optimizers' and plugin"
            " 'clashing'; plugin 'clashing' loses it (built-in components win)") in err
    assert get_plugin_manager().has_plugin("clashing")


def clash_pair():
    """Two third-party plugins that clash on backbone 'dup' from different hooks first."""

    class Zeta:
        @hookimpl
        def register_optimizers(self, register):
            register("zeta-opt", lambda params, **kw: None)

        @hookimpl
        def register_backbones(self, register):
            register("dup", lambda **kw: "zeta", spatial_dims=3, input_size=(8, 8, 8))

    class Alpha:
        @hookimpl
        def register_aggregators(self, register):
            register("alpha-agg", lambda backbone, **kw: None, spatial_dims=3)

        @hookimpl
        def register_backbones(self, register):
            register("dup", lambda **kw: "alpha", spatial_dims=3, input_size=(8, 8, 8))

    return [(Zeta(), "zeta"), (Alpha(), "alpha")]


@pytest.mark.parametrize("order", [[0, 1], [1, 0]])
def test_third_party_clash_goes_to_the_first_plugin_name_in_either_order(order, capsys):
    pm = get_plugin_manager()
    pair = clash_pair()
    for i in order:
        pm.register(*pair[i][:1], name=pair[i][1])
    assert covidzoo.create_model("dup") == "alpha"
    assert covidzoo.get_component("dup").plugin == "alpha"
    assert covidzoo.get_component("zeta-opt", "optimizer").plugin == "zeta"
    assert covidzoo.get_component("alpha-agg", "aggregator").plugin == "alpha"
    err = capsys.readouterr().err
    assert ("backbone 'dup' is registered by both plugin 'alpha' and plugin 'zeta'; plugin"
            " 'zeta' loses it (the plugin whose name sorts first keeps it)") in err
    rows = {r["name"]: r for r in plugins.plugin_info()}
    assert rows["zeta"]["status"] == "loaded"
    assert rows["zeta"]["dropped"] == [{"kind": "backbone", "name": "dup", "kept_by": "alpha"}]
    assert rows["alpha"]["dropped"] == []


def test_name_clash_in_strict_mode_is_an_error(monkeypatch):
    monkeypatch.setenv("COVIDZOO_STRICT_PLUGINS", "1")
    pm = get_plugin_manager()
    for plugin, name in clash_pair():
        pm.register(plugin, name=name)
    with pytest.raises(PluginError, match="backbone 'dup' is registered by both plugin 'alpha'"
                                          " and plugin 'zeta'"):
        covidzoo.list_models()


def test_plugins_lists_failed_and_skipped_plugins_and_lost_names(monkeypatch, runner):
    from covidzoo.cli import cli

    with_broken_entry_point(monkeypatch)
    get_plugin_manager()  # loads entry points: 'broken' fails
    get_plugin_manager().register(Clashing(), name="clashing")
    result = runner.invoke(cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert {"name", "version", "builtin", "hooks"} <= set(rows["example"])
    assert rows["example"]["status"] == "loaded" and rows["example"]["reason"] is None
    assert rows["example"]["package"] == "covidzoo-example"
    assert rows["covidzoo.backbones"]["package"] == "covidzoo"
    assert rows["broken"]["status"] == "failed"
    assert rows["broken"]["reason"].startswith("ModuleNotFoundError: No module named")
    assert rows["clashing"]["dropped"] == [
        {"kind": "optimizer", "name": "adam", "kept_by": "covidzoo.optimizers"}]
    table = runner.invoke(cli, ["plugins"]).stdout
    assert "failed" in table
    assert "\nbroken failed: ModuleNotFoundError: No module named" in table
    assert ("\nclashing lost optimizer 'adam' to plugin 'covidzoo.optimizers' (name clash)\n"
            in table)


def test_plugins_lists_plugins_skipped_by_the_allow_list_and_hook_failures(monkeypatch):
    monkeypatch.setenv("COVIDZOO_PLUGINS", "monai")
    get_plugin_manager().register(RaisingHook(), name="raising")
    rows = {r["name"]: r for r in plugins.plugin_info()}
    assert rows["example"]["status"] == "skipped"
    assert rows["example"]["reason"] == "not named in COVIDZOO_PLUGINS"
    assert rows["example"]["version"] == EXAMPLE_VERSION
    assert rows["monai"]["status"] == "loaded"
    assert rows["raising"]["status"] == "failed"
    assert rows["raising"]["reason"] == "RuntimeError: boom"
    assert rows["raising"]["hooks"] == ["register_backbones", "register_optimizers"]


def test_allow_list_name_of_no_installed_plugin_warns(monkeypatch, runner):
    from covidzoo.cli import cli

    monkeypatch.setenv("COVIDZOO_PLUGINS", "example,exampel")
    result = runner.invoke(cli, ["models", "--json"])
    assert result.exit_code == 0
    assert ("COVIDZOO_PLUGINS names 'exampel', which matches no installed plugin"
            in result.stderr)
    assert "tiny3d" in result.stdout
    monkeypatch.setenv("COVIDZOO_STRICT_PLUGINS", "1")
    plugins.reset()
    result = runner.invoke(cli, ["models"])
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "Error: COVIDZOO_PLUGINS names 'exampel'")


def test_provenance_of_builtin_installed_and_run_time_plugins():
    assert plugins.provenance(covidzoo.get_component("adam", "optimizer")) == {
        "plugin": "covidzoo.optimizers", "package": "covidzoo", "version": covidzoo.__version__}
    assert plugins.provenance(covidzoo.get_component("tiny3d")) == {
        "plugin": "example", "package": "covidzoo-example", "version": EXAMPLE_VERSION}
    with registered(Everything(), "everything"):
        assert plugins.provenance(covidzoo.get_component("hook-backbone")) == {
            "plugin": "everything", "package": None, "version": None}


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


def test_register_protocol_types_the_hooks_and_the_callback():
    import inspect

    from covidzoo import hookspecs
    from covidzoo.registry import Registry

    for hook in ("register_backbones", "register_aggregators", "register_ensemblers",
                 "register_optimizers"):
        annotation = inspect.signature(getattr(hookspecs, hook)).parameters["register"]
        assert annotation.annotation in ("Register", hookspecs.Register), hook
    register = Registry().registrar("backbone", "p", [])
    assert isinstance(register, hookspecs.Register)
    params = inspect.signature(hookspecs.Register.__call__).parameters
    assert params["summary"].kind is inspect.Parameter.KEYWORD_ONLY
    assert params["metadata"].kind is inspect.Parameter.VAR_KEYWORD


@pytest.mark.parametrize(
    ("hook", "words"),
    [("register_backbones", ["complexity(input_size)", "conv_bn_pairs", "options"]),
     ("register_ensemblers", ["method", "to_dict()", "from_dict(data)"]),
     ("register_optimizers", ["_step_supports_amp_scaling", "grad_scale", "found_inf"])],
)
def test_hookspecs_document_the_protocols_the_core_uses(hook, words):
    from covidzoo import hookspecs

    doc = getattr(hookspecs, hook).__doc__
    assert all(word in doc for word in words), [w for w in words if w not in doc]
