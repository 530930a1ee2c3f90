"""The `covidzoo` command line: a Click group whose commands all come from plugins.

Even the built-in commands are added through the `register_commands` hook, so a third-party
command is a peer of `train`. Nothing heavy is imported here: `covidzoo --help` must not import
torch.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from .._version import __version__
from ..errors import CovidzooError, one_line


class CliError(click.ClickException):
    """A `CovidzooError` shown to the user: one line on stderr, the error's exit code."""

    def __init__(self, error: CovidzooError) -> None:
        super().__init__(one_line(error))
        self.exit_code = error.exit_code


class CovidzooGroup(click.Group):
    """The top-level group: loads plugin commands lazily and reports covidzoo errors cleanly."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._plugin_key: tuple[int, ...] | None = None
        self._own_commands = dict(self.commands)

    def _sync_plugin_commands(self) -> None:
        from ..plugins import drop_failed_plugin, get_plugin_manager, hook_functions

        try:
            pm = get_plugin_manager()
            key = tuple(id(p) for p in pm.get_plugins())
            if key == self._plugin_key:
                return
            self.commands = dict(self._own_commands)
            for plugin_name, function in hook_functions("register_commands"):
                try:
                    function(cli=self)
                except Exception as exc:
                    drop_failed_plugin(plugin_name, exc)
            self._plugin_key = tuple(id(p) for p in pm.get_plugins())
        except CovidzooError as exc:
            raise CliError(exc) from exc

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._sync_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        self._sync_plugin_commands()
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CovidzooError as exc:
            raise CliError(exc) from exc


@click.group(cls=CovidzooGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="covidzoo")
def cli() -> None:
    """covidzoo: train, evaluate, ensemble and benchmark COVID-19 CT models.

    Backbones, aggregators, ensemblers, optimizers and commands all come from plugins; see
    `covidzoo plugins` and `covidzoo models`.
    """


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    cli.main(args=argv, prog_name="covidzoo")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
