"""Every registered backbone through the conformance kit (`covidzoo.testing`), and the kit itself.

- The built-in backbones pass every check of the kit in tiny configurations.
- Every installed backbone, built-in or from a plugin, builds at its default configuration and
  runs forward and backward with default and custom `num_classes` on a tiny input, and its
  registration metadata is sound: a new backbone is covered without writing a test.
- Each check fails for a backbone broken in the way it is meant to catch, and passes for the
  same backbone done right (registered for one test with the kit's `register_plugin`).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from covidzoo import hookimpl, testing
from covidzoo.testing import (
    CHECKS,
    backbone_conformance,
    check_checkpoint,
    check_fold_batchnorm,
    check_forward_backward,
    check_metadata,
    check_num_classes,
    check_timm_api,
    run_check,
    tiny_input_size,
    tiny_scans,
)

pytest_plugins = ["pytester"]
# The kit's fixture, made visible to this module's tests (a conftest could import it as well).
register_plugin = testing.register_plugin

TINY_REGNET = {"depths": [1, 1, 1, 1], "widths": [8, 8, 16, 16], "stem_width": 8}
TINY = {
    "regnet3d": TINY_REGNET,
    "regnet3d_shallow": TINY_REGNET,
    "regnet3d_w64": TINY_REGNET,
    # resnet101 + densenet121 by default: two small timm branches and a narrow projection.
    "resdense2d": {"backbones": ["resnet18", "densenet121"], "proj_channels": 16},
}
test_builtin_conformance = backbone_conformance(
    plugin="covidzoo.backbones",
    model_args=TINY,
    slow=["resdense2d"],
)

test_default_configuration = backbone_conformance(
    checks=["metadata", "forward_backward", "num_classes"],
    slow=["resdense2d"],
)


# --- the kit's own tests: backbones broken on purpose -------------------------------------------


class Small3D(nn.Module):
    """A correct tiny backbone: conv -> bn -> relu (declared foldable), mean pool, linear head,
    timm's model API."""

    conv_bn_pairs = (("conv", "bn"),)

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_chans, 4, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(4)
        self.act = nn.ReLU()
        self.num_features = 4
        self.reset_classifier(num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = x.mean((2, 3, 4))
        return x if pre_logits else self.head(x)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(4, num_classes) if num_classes else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class WrongPair(Small3D):
    """Declares (conv, bn) but computes bn(relu(conv(x))): folding changes the output."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.act(self.conv(x)))


class LostBuffer(Small3D):
    """A running input scale updated in training, kept in a non-persistent buffer: the
    checkpoint does not carry it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.register_buffer("scale", torch.ones(()), persistent=False)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.scale.mul_(0.5).add_(0.5 * x.detach().abs().mean())
        return super().forward_features(x / self.scale)


class FixedClasses(Small3D):
    """Ignores `num_classes` (always one output), though its attribute says otherwise."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__(num_classes=1, in_chans=in_chans)
        self.num_classes = num_classes


class DeadParameter(Small3D):
    """Has a parameter that forward never uses: no gradient reaches it."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.unused = nn.Linear(4, 4)


class NoPreLogits(Small3D):
    """`forward_head(pre_logits=True)` returns the logits, not the pooled features."""

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        return self.head(x.mean((2, 3, 4)))


class HalfTimm(Small3D):
    """Has forward_features but neither forward_head nor reset_classifier."""

    forward_head = None  # type: ignore[assignment]
    reset_classifier = None  # type: ignore[assignment]

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        nn.Module.__init__(self)
        self.conv = nn.Conv3d(in_chans, 4, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm3d(4)
        self.act = nn.ReLU()
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x).mean((2, 3, 4)))


class NoTimm(nn.Module):
    """A plain network without timm's model API, and without BatchNorm."""

    def __init__(self, num_classes: int = 1, in_chans: int = 1) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_chans, 4, 3, stride=2, padding=1)
        self.head = nn.Linear(4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).relu().mean((2, 3, 4)))


BROKEN = {
    "small-ok": Small3D,
    "small-wrong-pair": WrongPair,
    "small-lost-buffer": LostBuffer,
    "small-fixed-classes": FixedClasses,
    "small-dead-parameter": DeadParameter,
    "small-no-pre-logits": NoPreLogits,
    "small-half-timm": HalfTimm,
    "small-no-timm": NoTimm,
}


class BrokenPlugin:
    @hookimpl
    def register_backbones(self, register) -> None:
        for name, cls in BROKEN.items():
            register(name, cls, summary=cls.__doc__.splitlines()[0], spatial_dims=3,
                     input_size=(16, 32, 32))
        # A 3D backbone whose default aggregator is for 2D backbones, and too large a minimum.
        register("small-bad-metadata", Small3D, summary="Bad metadata", spatial_dims=3,
                 input_size=(16, 32, 32), min_input_size=(8, 64, 8),
                 default_aggregator="slice-mean")
        register("small-no-summary", Small3D, summary="", spatial_dims=3,
                 input_size=(16, 32, 32))


@pytest.fixture
def broken(register_plugin):
    return register_plugin(BrokenPlugin(), name="broken")


def test_a_correct_backbone_passes_every_check(broken, tmp_path):
    for check in CHECKS:
        run_check(check, "small-ok", directory=tmp_path)


@pytest.mark.parametrize(
    ("name", "check", "message"),
    [
        ("small-wrong-pair", check_fold_batchnorm, "the BatchNorm-folded model differs"),
        ("small-lost-buffer", check_checkpoint, "the loaded model's outputs differ"),
        ("small-fixed-classes", check_num_classes, "num_classes=3 gave shape \\(2, 1\\)"),
        ("small-dead-parameter", check_forward_backward, "no gradient reached unused.weight"),
        ("small-no-pre-logits", check_timm_api, "pre-logits have 1 features, num_features is 4"),
        ("small-half-timm", check_timm_api, "lacks forward_head, reset_classifier"),
        ("small-bad-metadata", check_metadata, "min_input_size \\(8, 64, 8\\) is not within"),
        ("small-no-summary", check_metadata, "no summary"),
    ],
)
def test_a_check_fails_for_the_backbone_broken_its_way(broken, name, check, message):
    with pytest.raises(AssertionError, match=message):
        check(name)


def test_the_broken_backbones_pass_the_other_checks(broken):
    """Each backbone is broken in one way only, so a failure is that check's doing."""
    check_fold_batchnorm("small-lost-buffer")
    check_checkpoint("small-wrong-pair")
    check_forward_backward("small-fixed-classes")
    check_num_classes("small-dead-parameter")
    check_checkpoint("small-no-pre-logits")


def test_wrong_aggregator_metadata_fails(broken, register_plugin):
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("small-2d-aggregator", Small3D, summary="x", spatial_dims=3,
                     input_size=(16, 32, 32), default_aggregator="slice-mean")

    register_plugin(Plugin(), name="wrong-aggregator")
    with pytest.raises(AssertionError, match="wraps 2D backbones, not 3D"):
        check_metadata("small-2d-aggregator")


def test_timm_api_and_folding_skip_what_does_not_apply(broken):
    with pytest.raises(pytest.skip.Exception, match="does not follow timm's model API"):
        check_timm_api("small-no-timm")
    with pytest.raises(AssertionError, match="incomplete, lacks forward_features, forward_head"):
        check_timm_api("small-no-timm", required=True)
    with pytest.raises(pytest.skip.Exception, match="no BatchNorm layers"):
        check_fold_batchnorm("small-no-timm")


def test_checks_leave_the_global_random_state_and_threads_alone(broken):
    state, threads = torch.random.get_rng_state(), torch.get_num_threads()
    check_forward_backward("small-ok")
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.get_num_threads() == threads


def test_tiny_inputs_grow_to_min_input_size(broken, register_plugin):
    class Plugin:
        @hookimpl
        def register_backbones(self, register):
            register("small-min", Small3D, summary="x", spatial_dims=3, input_size=(64, 64, 64),
                     min_input_size=(20, 8, 40))

    register_plugin(Plugin(), name="min")
    assert tiny_input_size("small-min") == (20, 32, 40)
    assert tiny_input_size("small-min", (4, 5, 6)) == (4, 5, 6)
    assert tiny_input_size("resdense2d") == (32, 32)
    assert tuple(tiny_scans("resdense2d").shape) == (2, 1, 2, 32, 32)
    with pytest.raises(ValueError, match="for 2D backbone"):
        tiny_input_size("resdense2d", (8, 8, 8))


FIXTURE_CONFTEST = '''
pytest_plugins = ["covidzoo.testing"]
'''
FIXTURE_TEST = '''
import covidzoo
from test_backbones import BrokenPlugin


def test_1_registers(register_plugin):
    plugin = BrokenPlugin()
    assert register_plugin(plugin, name="by-fixture") is plugin
    assert "small-ok" in covidzoo.list_models(kind="backbone")
    raise RuntimeError("a failing test still unregisters")


def test_2_then_it_is_gone():
    assert "small-ok" not in covidzoo.list_models(kind="backbone")
'''


def test_register_plugin_through_pytest_plugins(pytester):
    """`pytest_plugins = ["covidzoo.testing"]` gives the fixture; the plugin it registers is
    gone after the test, even a failing one."""
    from pathlib import Path

    pytester.syspathinsert(Path(__file__).parent)
    pytester.makeconftest(FIXTURE_CONFTEST)
    pytester.makepyfile(test_fixture=FIXTURE_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*RuntimeError: a failing test still unregisters"])


def test_conformance_parameters_and_configuration_errors(broken):
    test = backbone_conformance(names=["small-ok", "small-wrong-pair"],
                                checks=["fold_batchnorm"], slow=["small-ok"],
                                xfail={("small-wrong-pair", "fold_batchnorm"): "known"})
    params = {p.id: p for p in test.pytestmark[0].args[1]}
    assert sorted(params) == ["small-ok-fold_batchnorm", "small-wrong-pair-fold_batchnorm"]
    assert [m.name for m in params["small-ok-fold_batchnorm"].marks] == ["slow"]
    assert [m.name for m in params["small-wrong-pair-fold_batchnorm"].marks] == ["xfail"]

    nothing = backbone_conformance(plugin="not-installed", model_args={"tiny9d": {}})
    (param,) = nothing.pytestmark[0].args[1]
    assert param.id == "configuration"
    with pytest.raises(pytest.fail.Exception, match="plugin 'not-installed' registers no "
                       "backbone.*model_args or input_sizes name backbones not tested: tiny9d"):
        nothing(*param.values, tmp_path=None)
    with pytest.raises(ValueError, match="unknown check"):
        backbone_conformance(checks=["speed"])
    with pytest.raises(ValueError, match="must not set num_classes"):
        check_forward_backward("small-ok", {"num_classes": 2})


INNER_TEST = '''
import pytest
from covidzoo.plugins import get_plugin_manager
from covidzoo.testing import backbone_conformance
from test_backbones import BrokenPlugin

get_plugin_manager().register(BrokenPlugin(), name="broken-inner")
try:
    test_conformance = backbone_conformance(
        names=["small-ok", "small-wrong-pair", "small-no-timm"],
        checks=["fold_batchnorm", "timm_api"],
    )
finally:
    get_plugin_manager().unregister(name="broken-inner")


@pytest.fixture(autouse=True)
def registered():
    get_plugin_manager().register(BrokenPlugin(), name="broken-inner")
    yield
    get_plugin_manager().unregister(name="broken-inner")
'''


def test_the_generated_test_reports_each_backbone_and_check(pytester):
    """Run through pytest itself: ids name backbone and check, the broken pair fails."""
    from pathlib import Path

    pytester.syspathinsert(Path(__file__).parent)
    pytester.makepyfile(test_inner=INNER_TEST)
    result = pytester.runpytest_inprocess("-p", "no:cacheprovider", "-rA")
    result.assert_outcomes(passed=3, failed=1, skipped=2)
    result.stdout.fnmatch_lines([
        "PASSED test_inner.py::test_conformance[[]small-ok-fold_batchnorm[]]",
        "SKIPPED*small-no-timm does not follow timm's model API*",
        "FAILED test_inner.py::test_conformance[[]small-wrong-pair-fold_batchnorm[]]*",
    ])
