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
        register("lazy-missing", "covidzoo_no_such_module:factory", spatial_dims=3)


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


def test_same_name_from_two_plugins_is_an_error_naming_both():
    registry = Registry()
    a, b = [], []
    registry.registrar("backbone", "plugin-a", a)("dup", make_component, spatial_dims=3)
    registry.registrar("backbone", "plugin-b", b)("dup", make_component, spatial_dims=3)
    registry.commit(a)
    with pytest.raises(RegistrationError, match="both plugin 'plugin-a' and plugin 'plugin-b'"):
        registry.commit(b)


def test_same_name_in_one_plugin_is_an_error():
    registry = Registry()
    staged = []
    register = registry.registrar("aggregator", "p", staged)
    register("x", make_component)
    register("x", make_component)
    with pytest.raises(RegistrationError, match="'x' is registered by both"):
        registry.commit(staged)


def test_backbone_needs_spatial_dims():
    registry = Registry()
    with pytest.raises(RegistrationError, match="spatial_dims"):
        registry.registrar("backbone", "p", [])("nodims", make_component)


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
