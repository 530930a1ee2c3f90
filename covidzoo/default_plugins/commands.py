"""The built-in commands (each command module, and torch, is imported only when listed or run)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_commands(cli: Any) -> None:
    from ..cli.bench import bench
    from ..cli.calibrate import calibrate
    from ..cli.compare import compare
    from ..cli.cv import cv
    from ..cli.data import data
    from ..cli.evaluate import ensemble, evaluate
    from ..cli.explain import explain
    from ..cli.export import export
    from ..cli.models import models
    from ..cli.plugins import plugins
    from ..cli.predict import predict
    from ..cli.recipes import recipes
    from ..cli.train import train

    for command in (models, plugins, data, train, cv, evaluate, calibrate, compare, ensemble,
                    predict, explain, export, bench, recipes):
        cli.add_command(command)
