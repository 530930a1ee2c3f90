"""The pluggy hook specifications of covidzoo: the whole contract between covidzoo and a plugin.

A plugin is a module (or any object) with functions decorated by `covidzoo.hookimpl` whose names
are the hooks below. Hooks are always called with keyword arguments. The `register_*` hooks
receive a `register` callback bound to the component kind and to the plugin, so a plugin never
names itself:

    register(name, factory, *, summary=None, **metadata)

`factory` is a callable, or a `"module:attribute"` string that is imported only when the
component is first used. Plugins should keep heavy imports (torch, timm, monai) inside their
factories so that `covidzoo --help` stays fast.
"""

from __future__ import annotations

from typing import Any

import pluggy

PROJECT_NAME = "covidzoo"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_backbones(register: Any) -> None:
    """Register backbones: networks that map an image to class logits.

    The factory is called with keyword arguments and must accept at least `num_classes` and
    `in_chans`; it returns an `nn.Module`. Metadata a backbone must give:

    - `spatial_dims`: 3 for a volume model (input `B x C x D x H x W`), 2 for a slice model
      (input `N x C x H x W`);
    - `input_size`: the default input size, `(D, H, W)` for 3D or `(H, W)` for 2D;
    - `default_cfg` (optional): a dict of the configuration the factory builds by default.
    - `default_aggregator` (optional): the aggregator `create_model(name, aggregator="auto")`
      wraps the backbone in; without it, `volume` for 3D and `slice-mean` for 2D.
    - `min_input_size` (optional): the smallest input size the network accepts, for networks
      whose pooling fails below it; the smoke test (`tests/test_backbones.py`) grows its tiny
      input to it.
    """


@hookspec
def register_aggregators(register: Any) -> None:
    """Register aggregators: the rule that turns backbone outputs into one logit per scan.

    The factory is called as `factory(backbone, **kwargs)` and returns an `nn.Module` that maps
    a batch of scans `B x C x D x H x W` to logits `B x num_classes`. Metadata: `spatial_dims`,
    the kind of backbone (2 or 3) the aggregator wraps; `create_model` refuses the other kind.
    """


@hookspec
def register_ensemblers(register: Any) -> None:
    """Register ensemblers: rules that fuse the probabilities of several trained models.

    The factory is called with keyword arguments and returns an object with
    `fit(probs, labels)` (probs: `n_scans x n_models`, may do nothing; returns the object) and
    `predict(probs)` returning one fused probability per scan. To be saved by
    `covidzoo ensemble --save`, it also has `to_dict()` (JSON-ready, the registered name under
    `"method"`) and the factory a `from_dict(data)` class method that restores it.
    """


@hookspec
def register_optimizers(register: Any) -> None:
    """Register optimizers for `covidzoo train --optimizer NAME`.

    The factory is called as `factory(params, lr=..., weight_decay=..., **kwargs)` and returns
    a `torch.optim.Optimizer`.
    """


@hookspec
def register_commands(cli: Any) -> None:
    """Add commands to the `covidzoo` command line.

    `cli` is the top-level `click.Group`; decorate new commands with `@cli.command()`. Import
    heavy libraries inside the command function, not at module level.
    """
