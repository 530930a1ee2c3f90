from __future__ import annotations

import pytest

import covidzoo
from covidzoo import hookimpl
from covidzoo.errors import BadInputError, UnknownComponentError
from covidzoo.plugins import get_plugin_manager, get_registry
from covidzoo.registry import RegistrationError, Registry


def make_component(**kwargs):
    return {"received": kwargs}


class FakeBackbones:
    @hookimpl
    def register_backbones(self, register):
        register("fake3d", make_component, summary="A fake 3D model", spatial_dims=3,
                 input_size=(16, 32, 32))
        register("fake2d", make_component, spatial_dims=2, input_size=(64, 64))
        register("lazy-missing", "covidzoo_no_such_module:factory", summary="Not installed",
                 spatial_dims=3, input_size=(8, 8, 8))


@pytest.fixture
def fake_plugin():
    pm = get_plugin_manager()
    pm.register(FakeBackbones(), name="fake")
    try:
        yield
    finally:
        pm.unregister(name="fake")


def test_list_models_fnmatch_and_kind(fake_plugin):
    assert covidzoo.list_models("fake*") == ["fake2d", "fake3d"]
    assert covidzoo.list_models(["fake3*", "lazy-*"]) == ["fake3d", "lazy-missing"]
    assert covidzoo.list_models("fake*", kind="aggregator") == []
    assert "adam" in covidzoo.list_models(kind="optimizer")
    assert "adam" not in covidzoo.list_models(kind="backbone")


def test_unknown_kind_is_bad_input():
    with pytest.raises(BadInputError, match="unknown kind 'model'"):
        covidzoo.list_models(kind="model")


def test_component_metadata_and_plugin(fake_plugin):
    comp = covidzoo.get_component("fake3d")
    assert comp.plugin == "fake"
    assert comp.summary == "A fake 3D model"
    assert comp.metadata["spatial_dims"] == 3
    assert comp.metadata["input_size"] == (16, 32, 32)
    # The summary defaults to the first line of the factory's docstring.
    assert covidzoo.get_component("adam", "optimizer").summary


def test_create_model_drops_none_kwargs(fake_plugin):
    assert covidzoo.create_model("fake3d", depth=None, width=8) == {"received": {"width": 8}}


def test_unknown_name_suggests_close_matches(fake_plugin):
    with pytest.raises(UnknownComponentError, match=r"unknown backbone 'fake3'.*fake3d"):
        covidzoo.create_model("fake3")


def test_name_of_another_kind_is_explained():
    with pytest.raises(UnknownComponentError, match="'adam' is a registered optimizer"):
        covidzoo.create_model("adam")


def test_lazy_factory_reports_why_unavailable(fake_plugin):
    with pytest.raises(covidzoo.CovidzooError, match="'lazy-missing'.*unavailable"):
        covidzoo.create_model("lazy-missing")


def test_commit_keeps_the_first_registration_and_returns_the_clashes():
    registry = Registry()
    a, b = [], []
    registry.registrar("backbone", "plugin-a", a)("dup", make_component, spatial_dims=3,
                                                  input_size=(8, 8, 8))
    register_b = registry.registrar("backbone", "plugin-b", b)
    register_b("dup", make_component, spatial_dims=3, input_size=(8, 8, 8))
    register_b("only-b", make_component, spatial_dims=3, input_size=(8, 8, 8))
    assert registry.commit(a) == []
    clashes = registry.commit(b)
    assert [(dropped.plugin, kept.plugin, dropped.name) for dropped, kept in clashes] == [
        ("plugin-b", "plugin-a", "dup")]
    assert registry.get("dup", "backbone").plugin == "plugin-a"
    assert registry.get("only-b", "backbone").plugin == "plugin-b"  # the rest is kept


def test_same_name_in_one_plugin_is_an_error():
    registry = Registry()
    staged = []
    register = registry.registrar("aggregator", "p", staged)
    register("x", make_component)
    register("x", make_component)
    with pytest.raises(RegistrationError, match="plugin 'p' registered aggregator 'x' twice"):
        registry.commit(staged)
    assert registry.components() == []  # nothing of the plugin is added


def test_backbone_needs_spatial_dims():
    registry = Registry()
    with pytest.raises(RegistrationError, match="spatial_dims"):
        registry.registrar("backbone", "p", [])("nodims", make_component)


@pytest.mark.parametrize(
    ("dims", "input_size"),
    [(3, None), (3, (64, 224)), (2, (64, 224, 224)), (3, (64, 0, 224)), (2, (32.0, 32)),
     (2, (True, 32)), (3, "64,224,224"), (2, (-1, 32))],
)
def test_backbone_needs_input_size_of_positive_ints_per_dim(dims, input_size):
    registry = Registry()
    register = registry.registrar("backbone", "my-plugin", [])
    metadata = {} if input_size is None else {"input_size": input_size}
    with pytest.raises(RegistrationError,
                       match=rf"plugin 'my-plugin' registered backbone 'b'.*{dims} positive ints"):
        register("b", make_component, spatial_dims=dims, **metadata)


def test_backbone_input_size_list_is_kept_as_a_tuple():
    registry = Registry()
    staged = []
    registry.registrar("backbone", "p", staged)("b", make_component, spatial_dims=2,
                                                input_size=[32, 48])
    assert staged[0].metadata["input_size"] == (32, 48)


def test_string_factory_needs_a_summary():
    registry = Registry()
    register = registry.registrar("ensembler", "my-plugin", [])
    with pytest.raises(RegistrationError,
                       match=r"plugin 'my-plugin' registered ensembler 'lazy'.*summary="):
        register("lazy", "covidzoo.ensemble:MeanEnsembler")


def test_callable_factory_summary_defaults_to_its_docstring():
    def documented(**kwargs):
        """First line.

        More.
        """

    registry = Registry()
    staged = []
    registry.registrar("ensembler", "p", staged)("doc", documented)
    registry.registrar("ensembler", "p", staged)("nodoc", lambda **kw: None)
    assert [c.summary for c in staged] == ["First line.", ""]


def test_a_string_factory_without_summary_skips_the_plugin(capsys):
    class Lazy:
        @hookimpl
        def register_optimizers(self, register):
            register("lazy-opt", "covidzoo.optim:adam")

    get_plugin_manager().register(Lazy(), name="lazy")
    assert "lazy-opt" not in covidzoo.list_models()
    err = capsys.readouterr().err
    assert "plugin 'lazy' failed and was skipped" in err and "'lazy-opt'" in err


def test_builtin_and_installed_plugins_follow_the_registration_rules():
    """Every built-in and installed component registered (a breach would drop its plugin)."""
    from covidzoo.plugins import plugin_info

    rows = plugin_info()
    assert [r["name"] for r in rows if r["status"] != "loaded"] == []
    for comp in covidzoo.list_components(kind="backbone"):
        size = comp.metadata["input_size"]
        assert len(size) == comp.metadata["spatial_dims"] and min(size) > 0, comp.name
    for comp in covidzoo.list_components():
        assert callable(comp.factory) or comp.summary, comp.name


def test_factory_must_be_callable_or_import_path():
    registry = Registry()
    with pytest.raises(RegistrationError, match="callable factory"):
        registry.registrar("optimizer", "p", [])("bad", "not-an-import-path")


def test_registry_is_rebuilt_when_plugins_change(fake_plugin):
    first = get_registry()
    assert get_registry() is first
    pm = get_plugin_manager()
    pm.unregister(name="fake")
    try:
        assert "fake3d" not in covidzoo.list_models()
    finally:
        pm.register(FakeBackbones(), name="fake")
    assert "fake3d" in covidzoo.list_models()


def test_to_dict_is_json_ready(fake_plugin):
    import json

    data = covidzoo.get_component("fake3d").to_dict()
    assert json.loads(json.dumps(data))["metadata"]["input_size"] == [16, 32, 32]
    assert data["factory"].endswith(":make_component")
