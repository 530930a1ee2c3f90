"""The pluggy hook specifications of covidzoo: the whole contract between covidzoo and a plugin.

A plugin is a module (or any object) with functions decorated by `covidzoo.hookimpl` whose names
are the hooks below. Hooks are always called with keyword arguments. The `register_*` hooks
receive a `register` callback (the `Register` protocol) bound to the component kind and to the
plugin, so a plugin never names itself:

    register(name, factory, *, summary=None, **metadata)

`factory` is a callable, or a `"module:attribute"` string that is imported only when the
component is first used; a string factory needs `summary=` (covidzoo will not import a module
to read a docstring), a callable's summary defaults to the first line of its docstring. Plugins
should keep heavy imports (torch, timm, monai) inside their factories so that `covidzoo --help`
stays fast.

Besides the factories' own signatures, covidzoo relies on a few duck-typed protocols, each
documented in the hook whose components it concerns:

- backbones: `complexity(input_size)` (`covidzoo models show`), `conv_bn_pairs` (BatchNorm
  folding for inference) and the `options=` declaration of command-line options;
- ensemblers: the `method` name and the `to_dict()` / `from_dict(data)` state round trip;
- optimizers: `_step_supports_amp_scaling` (fp16 loss scaling handled on the device);
- readers: `claims(path)` and `read(path, series)` returning a `Volume`.

Every component is recorded with its provenance (plugin, installed package and version) in the
checkpoints and ensemble files made with it; see `covidzoo.plugins.provenance`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import pluggy

PROJECT_NAME = "covidzoo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@runtime_checkable
class Register(Protocol):
    """The `register` callback a `register_*` hook receives, bound to one kind and one plugin.

    - `name`: unique within the kind, without surrounding spaces. A name another plugin also
      registers is a clash: built-in components always win; between two third-party plugins
      the plugin whose name sorts first keeps it, and the other loses only that component.
    - `factory`: a callable, or a `"module:attribute"` string imported on first use.
    - `summary`: one line for `covidzoo models`; required with a string factory, else the first
      line of the factory's docstring.
    - `metadata`: free-form keyword arguments; some kinds require keys (see each hook). A
      backbone's `options=` declares command-line options (see `ComponentOption`).

    A bad registration raises `covidzoo.registry.RegistrationError`; the plugin is then skipped.
    """

    def __call__(
        self,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        summary: str | None = None,
        **metadata: Any,
    ) -> None: ...


@hookspec
def register_backbones(register: Register) -> None:
    """Register backbones: networks that map an image to class logits.

    The factory is called with keyword arguments and must accept at least `num_classes` and
    `in_chans`; it returns an `nn.Module`. Metadata a backbone must give:

    - `spatial_dims`: 3 for a volume model (input `B x C x D x H x W`), 2 for a slice model
      (input `N x C x H x W`);
    - `input_size`: the default input size, a tuple of positive ints: `(D, H, W)` for 3D or
      `(H, W)` for 2D;
    - `default_cfg` (optional): a dict of the configuration the factory builds by default.
    - `default_aggregator` (optional): the aggregator `create_model(name, aggregator="auto")`
      wraps the backbone in; without it, `volume` for 3D and `slice-mean` for 2D.
    - `min_input_size` (optional): the smallest input size the network accepts, for networks
      whose pooling fails below it; the smoke test (`tests/test_backbones.py`) grows its tiny
      input to it.
    - `options` (optional): command-line options of the backbone's own, a sequence of
      `{"flag": "--depths", "param": "depths", "type": "ints", "help": "..."}` mappings or
      `covidzoo.registry.ComponentOption` objects. `train`, `bench` and `models show` offer
      them and pass the parsed value to the factory as keyword `param`; `type` is one of `int`,
      `ints`, `float`, `str`, `strs` (comma-separated lists for the plural ones).

    What the core asks of the built module, when it has it (all optional):

    - `complexity(input_size) -> dict`: for `covidzoo models show NAME`, the parameters and
      FLOPs of one input of `input_size`: keys `input_size`, `params`, `flops` and `stages`, a
      list of `{"name", "depth", "width", "bottleneck_width", "groups", "output_shape",
      "params", "flops"}` rows. Without it, `models show` prints the metadata.
    - `conv_bn_pairs`: a class attribute on any submodule, `(conv, bn)` pairs of attribute
      names where `bn(conv(x))` is computed in `forward`; the names may be dotted paths from
      the declaring module (`("block.conv", "block.bn")`). Each pair is folded into one
      convolution for inference (`covidzoo.models.folding`); an `nn.Sequential` folds a
      BatchNorm that directly follows a convolution without a declaration.
    - `num_classes`: the number of outputs, read when a checkpoint is loaded for inference.
    """


@hookspec
def register_aggregators(register: Register) -> None:
    """Register aggregators: the rule that turns backbone outputs into one logit per scan.

    The factory is called as `factory(backbone, **kwargs)` and returns an `nn.Module` that maps
    a batch of scans `B x C x D x H x W` to logits `B x num_classes`. Metadata: `spatial_dims`,
    the kind of backbone (2 or 3) the aggregator wraps; `create_model` refuses the other kind.
    """


@hookspec
def register_ensemblers(register: Register) -> None:
    """Register ensemblers: rules that fuse the probabilities of several trained models.

    The factory is called with keyword arguments and returns an object with
    `fit(probs, labels)` (probs: `n_scans x n_models`, may do nothing; returns the object) and
    `predict(probs)` returning one fused probability per scan.

    State, for `covidzoo ensemble --save` (plain JSON, never pickle):

    - `method`: the registered name (a class attribute on `covidzoo.ensemble.Ensembler`);
    - `to_dict()`: the fitted state, JSON-ready, with the registered name under `"method"`;
    - `from_dict(data)`: a class method (or attribute) of the factory that rebuilds, from
      `to_dict()`'s output, an ensembler that predicts identically. The registry looks the
      factory up by `data["method"]`. An optional `n_models` attribute is checked against the
      number of members in the file.

    Subclassing `covidzoo.ensemble.Ensembler` gives all three.
    """


@hookspec
def register_optimizers(register: Register) -> None:
    """Register optimizers for `covidzoo train --optimizer NAME`.

    The factory is called as `factory(params, lr=..., weight_decay=..., **kwargs)` and returns
    a `torch.optim.Optimizer`; `kwargs` are the user's `--optimizer-arg KEY=VALUE` pairs.
    `params` is a list of parameter groups as torch takes them: `covidzoo train` passes one,
    `{"params": [...], "param_names": [...]}`, the model's trainable parameters with their
    `named_parameters` names, so a factory can split it by name, e.g. to exclude norms and
    biases from weight decay with `covidzoo.optim.param_groups(params, weight_decay)`.

    Under `--precision fp16` the loss is scaled by `torch.amp.GradScaler`. An optimizer class
    that sets `_step_supports_amp_scaling = True` takes the scale on the device: the scaler
    then sets `optimizer.grad_scale` (the scale, a device tensor, or `None`) and
    `optimizer.found_inf` (non-zero when a gradient is inf or nan) before calling `step()`, and
    `step()` must divide the gradients by `grad_scale` itself and leave the parameters and its
    state unchanged when `found_inf` is set (see `covidzoo.optim.NovoGrad`). Without the
    attribute the scaler unscales the gradients and skips the step on the host, which is
    always correct but waits for the device at every step.
    """


@hookspec
def register_readers(register: Register) -> None:
    """Register scan readers: formats `read_scan` (and so every command that takes a scan or a
    data folder) can read.

    The factory is called with no arguments and returns an object with two methods
    (`covidzoo.data.readers.Reader`):

    - `claims(path: Path) -> bool`: whether it reads `path`, an existing file or folder; decide
      by the name or a few bytes, without reading the scan;
    - `read(path: Path, series: str | None) -> Volume`: the scan as a
      `covidzoo.data.volume.Volume` (stored values, spacing (z, y, x) in mm, slices from feet to
      head, rows anterior to posterior, columns right to left, as the DICOM reader gives them);
      `series` is the user's `--series`, which a reader may ignore. Bad input raises
      `covidzoo.errors.BadInputError` naming the file.

    Readers are asked in order: the built-ins that claim by suffix or content (`array`,
    `nifti`, `slices`), then third-party readers in name order, then readers registered with
    metadata `fallback=True` (the built-in `dicom`, which takes any other file or folder).
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the `covidzoo` command line.

    `cli` is the top-level `click.Group`; decorate new commands with `@cli.command()`. Import
    heavy libraries inside the command function, not at module level.
    """


__all__ = [
    "PROJECT_NAME",
    "Register",
    "hookimpl",
    "hookspec",
    "register_aggregators",
    "register_backbones",
    "register_commands",
    "register_ensemblers",
    "register_optimizers",
    "register_readers",
]
