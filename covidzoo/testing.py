"""A conformance kit for plugin authors: pytest checks every backbone should pass.

A plugin's test module gets the whole kit in one line::

    from covidzoo.testing import backbone_conformance

    test_conformance = backbone_conformance(plugin="example")

That is one test per (backbone, check), e.g. `test_conformance[tiny3d-checkpoint]`. Each check
is also a plain function (`check_forward_backward(name, ...)`, ...) that raises `AssertionError`
when the backbone does not conform, and calls `pytest.skip` where a check does not apply. The
checks (`CHECKS`; each function's docstring says exactly what it asserts):

- `metadata`: the registration (`spatial_dims`, `input_size`, `min_input_size`,
  `default_aggregator`, a summary);
- `forward_backward`: the bare backbone trains: output shape, finite values and gradients;
- `num_classes`: `num_classes=3` behind the default aggregator gives 3 logits per scan;
- `timm_api`: `forward_features`, `forward_head(x, pre_logits=True)`, `get_classifier`,
  `reset_classifier(n)` agree with `forward`. The API is optional in covidzoo, so a backbone
  with none of the three methods is *skipped* (failed with `require_timm_api=True`); one with
  only some of them *fails*;
- `checkpoint`: `save_checkpoint` then `covidzoo.load_checkpoint` give identical outputs;
- `fold_batchnorm`: the BatchNorm-folded model (`bench`, `evaluate` and `predict` fold) gives
  the same outputs; skipped when nothing can be folded.

Every check runs on a tiny input: `tiny_input_size` is 16x32x32 for a 3D backbone and 32x32 for
a 2D one, grown to the backbone's `min_input_size` metadata; a *scan* (what an aggregator takes)
has 2 slices of that size for a 2D backbone. Networks whose default configuration is large take
smaller ones through `model_args={"name": {...}}`; backbones that are still slow can be marked
`slow`. Each check seeds a forked random generator and runs on one intra-op thread; torch's
global random state and thread count are left as they were.

`register_plugin` is a pytest fixture that registers a plugin object for one test. Use it with
`pytest_plugins = ["covidzoo.testing"]` in the top-level conftest, or import it into a conftest
or test module (`from covidzoo.testing import register_plugin`).

Importing this module imports pytest and torch; covidzoo itself never imports it.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from .checkpoint import ModelSpec, save_checkpoint
from .errors import CovidzooError
from .factory import (
    create_model,
    default_aggregator,
    get_component,
    list_components,
    load_checkpoint,
)
from .plugins import get_plugin_manager, reset

# The checks `backbone_conformance` runs by default, in this order.
CHECKS: tuple[str, ...] = (
    "metadata",
    "forward_backward",
    "num_classes",
    "timm_api",
    "checkpoint",
    "fold_batchnorm",
)
# The tiny input before `min_input_size` grows it: (D, H, W) for 3D, (H, W) for 2D backbones.
TINY_SIZES: dict[int, tuple[int, ...]] = {3: (16, 32, 32), 2: (32, 32)}
# Slices per tiny scan for a 2D backbone, and scans (or slices) per tiny batch.
TINY_SLICES = 2
TINY_BATCH = 2
# The methods of timm's model API that `check_timm_api` exercises.
TIMM_API: tuple[str, ...] = ("forward_features", "forward_head", "reset_classifier")
SEED = 0
# What a checkpoint's spec must give back unchanged: what rebuilds the model.
SPEC_FIELDS: tuple[str, ...] = ("backbone", "model_args", "aggregator", "aggregator_args")


# --- the register_plugin fixture ---------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Plugins loaded anew for each test, whatever the caller's environment allows
    (`COVIDZOO_PLUGINS` and `COVIDZOO_STRICT_PLUGINS` unset). Autouse: importing it into a
    conftest, or `pytest_plugins = ["covidzoo.testing"]`, isolates every test below."""
    monkeypatch.delenv("COVIDZOO_PLUGINS", raising=False)
    monkeypatch.delenv("COVIDZOO_STRICT_PLUGINS", raising=False)
    reset()
    yield
    reset()


@pytest.fixture
def register_plugin() -> Iterator[Callable[..., Any]]:
    """A function `register(plugin_object, name=None)` that registers a plugin with covidzoo's
    plugin manager for the duration of one test; it returns the plugin object.

    Every plugin registered through it is unregistered at teardown (in a `finally`), so the
    registry, which is rebuilt whenever the set of plugins changes, is as before the test.
    `name` defaults to pluggy's canonical name of the object.
    """
    registered: list[tuple[Any, str]] = []

    def register(plugin: Any, name: str | None = None) -> Any:
        pm = get_plugin_manager()
        given = pm.register(plugin, name=name)
        if given is None:
            raise ValueError(f"plugin {name or plugin!r} is blocked; it was not registered")
        registered.append((pm, given))
        return plugin

    try:
        yield register
    finally:
        for pm, name in reversed(registered):
            if pm.has_plugin(name):
                pm.unregister(name=name)


def pytest_configure(config: pytest.Config) -> None:
    """Declare the `slow` marker when this module is loaded as a pytest plugin."""
    config.addinivalue_line("markers", "slow: takes more than a few seconds on a 2-core CPU")


# --- inputs ------------------------------------------------------------------------------------


def tiny_input_size(name: str, input_size: Sequence[int] | None = None) -> tuple[int, ...]:
    """The input size the checks use for backbone `name`: `input_size` when given, else
    `TINY_SIZES[spatial_dims]` grown, dimension by dimension, to its `min_input_size`."""
    meta = get_component(name, "backbone").metadata
    dims = int(meta["spatial_dims"])
    if input_size is not None:
        size = tuple(int(s) for s in input_size)
        if len(size) != dims:
            raise ValueError(f"input size {size} for {dims}D backbone '{name}'")
        return size
    smallest = meta.get("min_input_size") or TINY_SIZES[dims]
    return tuple(max(s, int(m)) for s, m in zip(TINY_SIZES[dims], smallest, strict=True))


def tiny_batch(name: str, input_size: Sequence[int] | None = None, batch: int = TINY_BATCH,
               in_chans: int = 1) -> torch.Tensor:
    """A random batch for the bare backbone: `batch x in_chans x D x H x W` volumes (3D) or
    `batch x in_chans x H x W` slices (2D)."""
    return torch.randn(batch, in_chans, *tiny_input_size(name, input_size))


def tiny_scans(name: str, input_size: Sequence[int] | None = None, batch: int = TINY_BATCH,
               in_chans: int = 1) -> torch.Tensor:
    """A random batch of scans `batch x in_chans x D x H x W` for the backbone wrapped in an
    aggregator: the tiny volume (3D), or `TINY_SLICES` tiny slices (2D)."""
    size = tiny_input_size(name, input_size)
    if len(size) == 2:
        size = (TINY_SLICES, *size)
    return torch.randn(batch, in_chans, *size)


# --- the checks --------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded(seed: int = SEED) -> Iterator[None]:
    """Inside: torch's CPU generator seeded with `seed`, and one intra-op thread (tiny inputs
    gain nothing from more, and on a busy machine or under parallel test workers OpenMP threads
    waiting on each other make a check 100 times slower). Both are restored afterwards."""
    threads = torch.get_num_threads()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def _args(model_args: Mapping[str, Any] | None, **fixed: Any) -> dict[str, Any]:
    """Trainer's keywords: `in_chans=1` unless overridden, then `model_args`, then `fixed`."""
    args = {"in_chans": 1, **(model_args or {})}
    if "num_classes" in args:
        raise ValueError("model_args must not set num_classes: each check chooses it")
    return {**args, **fixed}


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def check_metadata(name: str) -> None:
    """Assert the registration of backbone `name` holds what covidzoo needs.

    - `spatial_dims` is 2 or 3 and `input_size` has that many positive integers;
    - `min_input_size`, when given, has as many positive integers, none above `input_size`;
    - `default_aggregator`, when given, names a registered aggregator for the same
      `spatial_dims` (so `create_model(name, aggregator="auto")` can work);
    - `default_cfg`, when given, is a mapping;
    - the summary that `covidzoo models` shows is not empty.
    """
    comp = get_component(name, "backbone")
    meta = comp.metadata
    dims = meta.get("spatial_dims")
    assert dims in (2, 3), f"{name}: spatial_dims is {dims!r}, not 2 or 3"
    size = meta.get("input_size")
    assert isinstance(size, Sequence) and len(size) == dims, (
        f"{name}: input_size {size!r} is not {dims} sizes")
    assert all(isinstance(s, int) and s > 0 for s in size), (
        f"{name}: input_size {size!r} holds a size that is not a positive integer")
    smallest = meta.get("min_input_size")
    if smallest is not None:
        assert isinstance(smallest, Sequence) and len(smallest) == dims, (
            f"{name}: min_input_size {smallest!r} is not {dims} sizes")
        assert all(isinstance(m, int) and 0 < m <= s for m, s in zip(smallest, size, strict=True)
                   ), f"{name}: min_input_size {smallest!r} is not within input_size {size!r}"
    aggregator = meta.get("default_aggregator")
    if aggregator is not None:
        names = {c.name: c for c in list_components(kind="aggregator")}
        assert aggregator in names, f"{name}: default_aggregator '{aggregator}' is not registered"
        wraps = names[aggregator].metadata.get("spatial_dims")
        assert wraps in (None, dims), (
            f"{name}: default_aggregator '{aggregator}' wraps {wraps}D backbones, not {dims}D")
    assert isinstance(meta.get("default_cfg", {}), Mapping), f"{name}: default_cfg is no mapping"
    assert isinstance(comp.summary, str) and comp.summary.strip(), (
        f"{name}: no summary (give register(..., summary=...) or a factory docstring)")


def check_forward_backward(name: str, model_args: Mapping[str, Any] | None = None, *,
                           input_size: Sequence[int] | None = None) -> None:
    """Assert the bare backbone (`create_model(name, num_classes=1, in_chans=1, **model_args)`)
    trains on a tiny batch.

    In training mode, a batch of `TINY_BATCH` (volumes for 3D, slices for 2D) gives a tensor of
    shape `(TINY_BATCH, 1)` with finite values; after `backward()` of its sum, every parameter
    with `requires_grad` has a gradient, and every gradient is finite.
    """
    with _seeded():
        args = _args(model_args, num_classes=1)
        model = create_model(name, **args).train()
        x = tiny_batch(name, input_size, in_chans=args["in_chans"])
        out = model(x)
        assert isinstance(out, torch.Tensor), f"{name}: forward gave {type(out).__name__}"
        assert tuple(out.shape) == (TINY_BATCH, 1), (
            f"{name}: forward gave shape {tuple(out.shape)} for {tuple(x.shape)}; expected "
            f"{(TINY_BATCH, 1)}")
        assert torch.isfinite(out).all(), f"{name}: forward gave non-finite values"
        out.float().sum().backward()
        params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        assert params, f"{name}: no trainable parameters"
        missing = [n for n, p in params if p.grad is None]
        assert not missing, f"{name}: no gradient reached {', '.join(missing[:5])}"
        bad = [n for n, p in params if not torch.isfinite(p.grad).all()]
        assert not bad, f"{name}: non-finite gradients in {', '.join(bad[:5])}"


def check_num_classes(name: str, model_args: Mapping[str, Any] | None = None, *,
                      input_size: Sequence[int] | None = None, num_classes: int = 3) -> None:
    """Assert the backbone honours a custom `num_classes` behind its default aggregator.

    `create_model(name, aggregator="auto", num_classes=num_classes, in_chans=1, **model_args)`
    maps `TINY_BATCH` tiny scans (training mode, no gradients) to finite logits of shape
    `(TINY_BATCH, num_classes)`, and the backbone's `num_classes` attribute, when it has one,
    is `num_classes`.
    """
    with _seeded():
        args = _args(model_args, num_classes=num_classes)
        model = create_model(name, aggregator="auto", **args).train()
        backbone = getattr(model, "backbone", model)
        if hasattr(backbone, "num_classes"):
            assert backbone.num_classes == num_classes, (
                f"{name}: built with num_classes={num_classes}, its num_classes attribute is "
                f"{backbone.num_classes!r}")
        x = tiny_scans(name, input_size, in_chans=args["in_chans"])
        with torch.no_grad():
            out = model(x)
        assert tuple(out.shape) == (TINY_BATCH, num_classes), (
            f"{name}: num_classes={num_classes} gave shape {tuple(out.shape)}; expected "
            f"{(TINY_BATCH, num_classes)}")
        assert torch.isfinite(out).all(), f"{name}: non-finite logits with num_classes"


def check_timm_api(name: str, model_args: Mapping[str, Any] | None = None, *,
                   input_size: Sequence[int] | None = None, required: bool = False) -> None:
    """Assert the bare backbone follows timm's model API, in eval mode on a tiny batch `x`.

    A backbone with none of `forward_features`, `forward_head` and `reset_classifier` is
    skipped (the API is optional in covidzoo), unless `required`; one with only some of them
    fails, naming the others. With `features = forward_features(x)`:

    - `features` is a tensor with the batch as its first dimension;
    - `forward_head(features)` equals `model(x)`;
    - `forward_head(features, pre_logits=True)` gives `batch x num_features` pooled features
      (`num_features` checked when the model has the attribute), and `get_classifier()` (when
      present) maps them to `model(x)`;
    - after `reset_classifier(3)`, `model(x)` has 3 outputs per sample, `num_classes` (when
      present) is 3 and the pooled features are unchanged;
    - after `reset_classifier(0)`, `model(x)` equals the pooled features (timm's rule: no
      classifier).
    """
    with _seeded():
        args = _args(model_args, num_classes=1)
        model = create_model(name, **args).eval()
        present = [m for m in TIMM_API if callable(getattr(model, m, None))]
        if not present and not required:
            pytest.skip(f"{name} does not follow timm's model API ({', '.join(TIMM_API)})")
        lacking = [m for m in TIMM_API if m not in present]
        assert not lacking, f"{name}: timm's model API incomplete, lacks {', '.join(lacking)}"
        x = tiny_batch(name, input_size, in_chans=args["in_chans"])
        with torch.no_grad():
            logits = model(x)
            features = model.forward_features(x)
            assert isinstance(features, torch.Tensor) and features.shape[0] == x.shape[0], (
                f"{name}: forward_features gave {getattr(features, 'shape', features)!r} for "
                f"a batch of {x.shape[0]}")
            head = model.forward_head(features)
            torch.testing.assert_close(head, logits, msg=lambda m: (
                f"{name}: forward_head(forward_features(x)) differs from forward(x): {m}"))
            pooled = model.forward_head(features, pre_logits=True)
            assert pooled.ndim == 2 and pooled.shape[0] == x.shape[0], (
                f"{name}: forward_head(pre_logits=True) gave shape {tuple(pooled.shape)}, not "
                "batch x num_features")
            if hasattr(model, "num_features"):
                assert pooled.shape[1] == model.num_features, (
                    f"{name}: pre-logits have {pooled.shape[1]} features, num_features is "
                    f"{model.num_features}")
            if callable(getattr(model, "get_classifier", None)):
                torch.testing.assert_close(model.get_classifier()(pooled), logits, msg=lambda m: (
                    f"{name}: get_classifier() of the pre-logits differs from forward(x): {m}"))
            model.reset_classifier(3)
            out = model(x)
            assert tuple(out.shape) == (x.shape[0], 3), (
                f"{name}: after reset_classifier(3) forward gave shape {tuple(out.shape)}")
            if hasattr(model, "num_classes"):
                assert model.num_classes == 3, (
                    f"{name}: after reset_classifier(3) num_classes is {model.num_classes!r}")
            torch.testing.assert_close(model.forward_head(features, pre_logits=True), pooled,
                                       msg=lambda m: f"{name}: reset_classifier changed the "
                                       f"pre-logit features: {m}")
            model.reset_classifier(0)
            torch.testing.assert_close(model(x), pooled, msg=lambda m: (
                f"{name}: after reset_classifier(0) forward is not the pooled features: {m}"))


def check_checkpoint(name: str, model_args: Mapping[str, Any] | None = None, *,
                     input_size: Sequence[int] | None = None,
                     directory: str | Path | None = None) -> None:
    """Assert a checkpoint round trip rebuilds the same model, as `covidzoo train` saves it.

    The `ModelSpec` is built as `Trainer._build_model` does: the backbone, `in_chans=1,
    num_classes=1` and `model_args`, its default aggregator. The model runs two training-mode
    forward passes (so BatchNorm statistics and other buffers updated in training are no longer
    their initial values), is saved with `covidzoo.checkpoint.save_checkpoint` (into
    `directory`, else a temporary one) and loaded with `covidzoo.load_checkpoint`. Then:

    - loading succeeds (every tensor of the file fits the rebuilt model, and back);
    - the loaded spec rebuilds the same model: its `SPEC_FIELDS` equal the saved ones (after
      their JSON round trip);
    - the loaded model is of the same class, and in eval mode gives outputs identical (bit for
      bit) to the original's on the same tiny scans.
    """
    with _seeded():
        spec = ModelSpec(backbone=name, model_args=_args(model_args, num_classes=1),
                         aggregator=default_aggregator(name))
        model = spec.build()
        x = tiny_scans(name, input_size, in_chans=spec.model_args["in_chans"])
        model.train()
        with torch.no_grad():
            for scale in (3.0, 0.5):
                model(x * scale + 1)
        model.eval()
        with contextlib.ExitStack() as stack:
            folder = directory or stack.enter_context(tempfile.TemporaryDirectory())
            path = Path(folder) / f"{name}.safetensors"
            save_checkpoint(path, model, spec)
            try:
                loaded, loaded_spec = load_checkpoint(str(path))
            except CovidzooError as exc:
                raise AssertionError(f"{name}: its checkpoint does not load back: {exc}") from exc
        saved, back = json.loads(json.dumps(spec.to_dict())), loaded_spec.to_dict()
        changed = [k for k in SPEC_FIELDS if back.get(k) != saved[k]]
        assert not changed, (
            f"{name}: the spec's {', '.join(changed)} changed in the round trip: "
            f"{[back.get(k) for k in changed]} != {[saved[k] for k in changed]}")
        assert type(loaded) is type(model), (
            f"{name}: loaded a {type(loaded).__name__}, saved a {type(model).__name__}")
        loaded.eval()
        with torch.no_grad():
            before, after = model(x), loaded(x)
        assert before.shape == after.shape and torch.equal(before, after), (
            f"{name}: the loaded model's outputs differ from the saved model's (max difference "
            f"{_max_diff(before, after):.3g}): state that forward uses is not in the state_dict"
            " (a non-persistent buffer?) or not restored by the factory")


def _perturb_batchnorms(model: torch.nn.Module) -> None:
    """Give every BatchNorm statistics and an affine map far from their initial identity, so
    that a wrongly folded pair changes the output (zero-initialised last BatchNorms of residual
    blocks would otherwise hide their branch)."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                if module.track_running_stats and module.running_mean is not None:
                    module.running_mean.normal_(0.0, 0.5)
                    module.running_var.uniform_(0.5, 2.0)
                if module.affine:
                    module.weight.uniform_(0.8, 1.2)
                    module.bias.normal_(0.0, 0.2)


def check_fold_batchnorm(name: str, model_args: Mapping[str, Any] | None = None, *,
                         input_size: Sequence[int] | None = None, rtol: float = 1e-4) -> None:
    """Assert BatchNorm folding (`covidzoo.models.folding.fold_batchnorm`), which `bench`,
    `evaluate` and `predict` apply, leaves the outputs of the scan model unchanged.

    The model is `create_model(name, aggregator="auto", num_classes=1, in_chans=1,
    **model_args)` in eval mode, every BatchNorm given random running statistics and affine
    parameters first (means ~ N(0, 0.5), variances in [0.5, 2], weights in [0.8, 1.2], biases
    ~ N(0, 0.2)). On tiny scans, the folded copy's outputs differ from the model's by at most
    `rtol * max |output|` (relative to the largest output), and the original model keeps its
    BatchNorm layers and its outputs. Skipped when the model has no BatchNorm, and (after the
    assertions) when no BatchNorm was folded: no `conv -> bn` pair is declared (`conv_bn_pairs`,
    an `nn.Sequential` conv then bn, or `folding.KNOWN_PAIRS`), so the equivalence holds
    trivially.
    """
    from .models.folding import count_batchnorms, fold_batchnorm

    with _seeded():
        args = _args(model_args, num_classes=1)
        model = create_model(name, aggregator="auto", **args).eval()
        before = count_batchnorms(model)
        if before == 0:
            pytest.skip(f"{name} has no BatchNorm layers: nothing to fold")
        _perturb_batchnorms(model)
        x = tiny_scans(name, input_size, in_chans=args["in_chans"])
        with torch.no_grad():
            reference = model(x)
            folded = fold_batchnorm(model)
            out = folded(x)
            again = model(x)
        assert count_batchnorms(model) == before and torch.equal(again, reference), (
            f"{name}: fold_batchnorm changed the original model")
        tolerance = rtol * max(float(reference.abs().max()), 1e-6)
        error = _max_diff(out, reference)
        assert out.shape == reference.shape and error <= tolerance, (
            f"{name}: the BatchNorm-folded model differs by {error:.3g} (tolerance "
            f"{tolerance:.3g}): a declared conv -> bn pair is not applied as bn(conv(x))")
        left = count_batchnorms(folded)
        if left == before:
            pytest.skip(f"{name}: none of its {before} BatchNorm layers is declared foldable")


# --- the parametrized test ---------------------------------------------------------------------


def run_check(check: str, name: str, model_args: Mapping[str, Any] | None = None, *,
              input_size: Sequence[int] | None = None, directory: str | Path | None = None,
              require_timm_api: bool = False, rtol: float = 1e-4) -> None:
    """Run the check called `check` (one of `CHECKS`) on backbone `name`."""
    common = {"input_size": input_size}
    if check == "metadata":
        check_metadata(name)
    elif check == "forward_backward":
        check_forward_backward(name, model_args, **common)
    elif check == "num_classes":
        check_num_classes(name, model_args, **common)
    elif check == "timm_api":
        check_timm_api(name, model_args, required=require_timm_api, **common)
    elif check == "checkpoint":
        check_checkpoint(name, model_args, directory=directory, **common)
    elif check == "fold_batchnorm":
        check_fold_batchnorm(name, model_args, rtol=rtol, **common)
    else:
        raise ValueError(f"unknown check '{check}'; choose from {', '.join(CHECKS)}")


def _names(plugin: str | None, names: str | Iterable[str] | None) -> list[str]:
    if names is not None:
        return [names] if isinstance(names, str) else list(names)
    return [c.name for c in list_components(kind="backbone")
            if plugin is None or c.plugin == plugin]


def backbone_conformance(
    plugin: str | None = None,
    names: str | Iterable[str] | None = None,
    *,
    model_args: Mapping[str, Mapping[str, Any]] | None = None,
    input_sizes: Mapping[str, Sequence[int]] | None = None,
    checks: Iterable[str] | None = None,
    slow: bool | Iterable[str] = (),
    xfail: Mapping[tuple[str, str], str] | None = None,
    require_timm_api: bool = False,
    rtol: float = 1e-4,
) -> Callable[..., None]:
    """A pytest test function parametrized over (backbone, check): assign it to a `test_` name.

    - `plugin`: the backbones registered by this plugin (its entry-point name, e.g.
      `"example"`; the built-ins are `"covidzoo.backbones"`); `names`: these backbones
      instead; neither: every registered backbone. Resolved when called, i.e. at collection.
    - `model_args`: per backbone name, keyword arguments for a tiny configuration (never
      `num_classes`, which the checks choose); `input_sizes`: per backbone name, the input
      size to use instead of `tiny_input_size`'s.
    - `checks`: a subset of `CHECKS` (default: all); `slow`: backbone names whose tests get
      `pytest.mark.slow` (`True`: all); `xfail`: `{(backbone, check): reason}` for known
      failures, marked `xfail(strict=True, raises=AssertionError)`, so the test fails again
      once the check passes; `require_timm_api`: fail, not skip, a backbone without timm's
      model API; `rtol`: the tolerance of `check_fold_batchnorm`.

    A plugin that registers no backbone (not installed?), an unknown check, or `model_args` /
    `input_sizes` for a backbone not selected, gives one failing test saying so, not an empty
    test set.
    """
    chosen = tuple(CHECKS if checks is None else checks)
    unknown = [c for c in chosen if c not in CHECKS]
    if unknown:
        raise ValueError(f"unknown check(s) {', '.join(unknown)}; choose from {', '.join(CHECKS)}")
    selected = _names(plugin, names)
    model_args = dict(model_args or {})
    input_sizes = dict(input_sizes or {})
    problems = []
    if not selected:
        problems.append(f"plugin '{plugin}' registers no backbone (is it installed and loaded?)"
                        if plugin is not None else "no backbone is registered")
    xfail = dict(xfail or {})
    stray = sorted((set(model_args) | set(input_sizes)) - set(selected))
    if stray:
        problems.append(f"model_args or input_sizes name backbones not tested: {', '.join(stray)}")
    stray_xfail = sorted(f"{n}-{c}" for n, c in xfail if n not in selected or c not in chosen)
    if stray_xfail:
        problems.append(f"xfail names tests that do not exist: {', '.join(stray_xfail)}")
    slow_names = set(selected) if slow is True else set() if slow is False else set(slow)

    def marks(name: str, check: str) -> list[Any]:
        found = [pytest.mark.slow] if name in slow_names else []
        if (name, check) in xfail:
            found.append(pytest.mark.xfail(reason=xfail[name, check], strict=True,
                                           raises=AssertionError))
        return found

    params = [pytest.param(name, check, id=f"{name}-{check}", marks=marks(name, check))
              for name in selected for check in chosen]
    if problems:
        params.append(pytest.param(None, "; ".join(problems), id="configuration"))

    @pytest.mark.parametrize(("backbone", "check"), params)
    def test_backbone_conformance(backbone: str | None, check: str, tmp_path: Path) -> None:
        if backbone is None:
            pytest.fail(check)
        run_check(check, backbone, model_args.get(backbone), input_size=input_sizes.get(backbone),
                  directory=tmp_path, require_timm_api=require_timm_api, rtol=rtol)

    return test_backbone_conformance


__all__ = [
    "CHECKS",
    "TIMM_API",
    "TINY_BATCH",
    "TINY_SIZES",
    "TINY_SLICES",
    "backbone_conformance",
    "check_checkpoint",
    "check_fold_batchnorm",
    "check_forward_backward",
    "check_metadata",
    "check_num_classes",
    "check_timm_api",
    "register_plugin",
    "run_check",
    "tiny_batch",
    "tiny_input_size",
    "tiny_scans",
]
