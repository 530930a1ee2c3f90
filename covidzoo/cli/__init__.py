"""The `covidzoo` command line: a Click group whose commands all come from plugins.

Even the built-in commands are added through the `register_commands` hook, so a third-party
command is a peer of `train`. Nothing heavy is imported here: `covidzoo --help` must not import
torch.
"""

from __future__ import annotations

import errno
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


# Exit status of a command stopped by Ctrl-C (SIGINT), as shells report it: 128 + 2.
INTERRUPTED = 130
# Errors writing an output that are the user's to fix (a full disk, a read-only or forbidden
# folder, a path that is a folder or lies under a file, a symlink loop): one line naming the
# path, exit 2. Any other OSError is a bug and keeps its traceback.
OUTPUT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EISDIR,
                           errno.ENOTDIR, errno.ELOOP})


# click >= 8.2 shows a group's help by raising this usage error: it stays as it is.
NO_ARGS_IS_HELP: tuple[type, ...] = tuple(
    t for t in [getattr(click.exceptions, "NoArgsIsHelpError", None)] if t is not None)


class Interrupted(click.ClickException):
    """Ctrl-C: one line, exit 130 (a command that saves what it can has done so already)."""

    exit_code = INTERRUPTED

    def __init__(self) -> None:
        super().__init__("interrupted")


class OneLineUsageError(click.ClickException):
    """A click usage error (a bad flag value, a missing argument) as one line, exit 2."""

    exit_code = 2

    def __init__(self, error: click.UsageError) -> None:
        hint = ""
        if error.ctx is not None:
            hint = f" (see '{error.ctx.command_path} {error.ctx.help_option_names[0]}')"
        super().__init__(error.format_message() + hint)


def one_line_usage(error: click.UsageError) -> click.ClickException:
    """A usage error as one line; a group called without a command still shows its help."""
    if isinstance(error, NO_ARGS_IS_HELP):
        return error
    return OneLineUsageError(error)


def output_error(exc: OSError) -> CliError | None:
    """The one-line error of an OSError the user can fix (`OUTPUT_ERRNOS`), else None."""
    if exc.errno not in OUTPUT_ERRNOS:
        return None
    from ..errors import BadInputError

    where = exc.filename if exc.filename is not None else "output"
    return CliError(BadInputError(f"{where}: {exc.strerror or exc}"))


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
                except (Exception, SystemExit) as exc:  # a broken plugin must not end covidzoo
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

    def make_context(self, info_name: str | None, args: list[str],
                     parent: click.Context | None = None, **extra: Any) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as exc:
            raise one_line_usage(exc) from exc
        except KeyboardInterrupt:
            raise Interrupted() from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except CovidzooError as exc:
            raise CliError(exc) from exc
        except click.UsageError as exc:
            raise one_line_usage(exc) from exc
        except KeyboardInterrupt:
            raise Interrupted() from None
        except OSError as exc:
            error = output_error(exc)
            if error is None:
                raise
            raise error from exc


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
