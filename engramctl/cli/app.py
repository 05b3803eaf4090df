"""The typer application, its global options, and the error handling every command shares."""

from __future__ import annotations

import errno
import functools
import inspect
import logging
import os
import sys
import traceback
from typing import Annotated

import typer
import typer.rich_utils
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from typer.core import TyperCommand, TyperGroup

from .. import __version__
from ..errors import EngramError

PIPED_WIDTH = 10_000  # a stream that is no terminal: lines are not wrapped (no 80-column default)


def _console(*, stderr: bool) -> Console:
    """A rich console at the terminal's width, or unwrapped when its stream is piped or a file
    (unless ``COLUMNS`` says otherwise)."""
    stream = sys.stderr if stderr else sys.stdout
    piped = not (stream is not None and hasattr(stream, "isatty") and stream.isatty())
    width = PIPED_WIDTH if piped and "COLUMNS" not in os.environ else None
    return Console(stderr=stderr, highlight=False, width=width)


console = _console(stderr=False)
err_console = _console(stderr=True)
STATE = {"verbose": False, "quiet": False}
# click's exceptions, from whichever click this typer uses (recent typers vendor their own copy).
_click_errors = sys.modules[typer.BadParameter.__module__]
_ABORTS = (typer.Abort, getattr(_click_errors, "Abort", typer.Abort))
_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2
GLOBAL_PANEL = "Global options"
VERBOSE_HELP = "Log details; show tracebacks on errors."
QUIET_HELP = "No progress bars or notes."


def _set_logging() -> None:
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger().setLevel(logging.DEBUG if STATE["verbose"] else logging.WARNING)


def _global_flag(param: typer.CallbackParam, value: bool) -> None:
    """``-v``/``-q`` given after a command name: the same as before it."""
    if value:
        STATE[param.name] = True
        _set_logging()


def _hide_bool_metavars(params) -> None:
    """Flags take no value: show no ``<bool>`` type for them in help."""
    for param in params:
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def _after_command(decls: tuple[str, str], help_text: str):
    return typer.Option(
        *decls,
        help=help_text,
        callback=_global_flag,
        expose_value=False,
        rich_help_panel=GLOBAL_PANEL,
    )


VerboseAfter = Annotated[bool, _after_command(("--verbose", "-v"), VERBOSE_HELP)]
QuietAfter = Annotated[bool, _after_command(("--quiet", "-q"), QUIET_HELP)]


def _global_flags_holder(verbose: VerboseAfter = False, quiet: QuietAfter = False) -> None:
    """Never run: typer builds the options of ``-v``/``-q`` after a command from it."""


@functools.cache
def _global_params() -> tuple:
    """``--verbose``/``--quiet`` as options of a command, built by typer like any other."""
    holder = typer.Typer(add_completion=False)
    holder.command()(_global_flags_holder)
    return tuple(typer.main.get_command(holder).params)


class _HelpTable(Table):
    """The table of a ``--help`` panel, whose option names and types are never cut.

    typer lets rich share a narrow terminal (80 columns, or a pipe) between all its columns, so
    long option names ended in an ellipsis (``--checkpoint-eve…``). Here the option names keep
    their full width, and the type and help text wrap, folding a word longer than its column
    (a URL, a long list of choices) instead of cutting it. Tables that define their columns
    (the commands panel) are left as typer makes them.
    """

    def add_row(self, *renderables, **kwargs) -> None:
        if not self.columns:
            names = len(renderables) - 2  # then the type and the help text
            for i in range(len(renderables)):
                self.add_column(no_wrap=i < names, overflow="fold")
        for cell in renderables:  # the help text is a Columns of Texts, each its own overflow
            for text in getattr(cell, "renderables", [cell]):
                if isinstance(text, Text) and text.overflow is None:
                    text.overflow = "fold"
        super().add_row(*renderables, **kwargs)


typer.rich_utils.Table = _HelpTable  # typer builds its option panels from this name


def _plain_brackets(text: str | None) -> str | None:
    """Help text with its square brackets shown as written: rich markup would take
    ``engramctl[eval]`` for a style tag and drop ``[eval]``."""
    return None if text is None else escape(text)


class Command(TyperCommand):
    """Every command: also takes the app's ``-v``/``-q`` after its name, shows no ``<bool>``
    for flags, and shows square brackets in its help text as written."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.help = _plain_brackets(self.help)
        for param in self.params:
            if getattr(param, "help", None):
                param.help = _plain_brackets(param.help)
        self.params.extend(_global_params())

    def get_params(self, ctx):
        params = super().get_params(ctx)  # with --help
        _hide_bool_metavars(params)
        return params


class OneLineErrorsGroup(TyperGroup):
    """The command group, reporting click's usage errors (an unknown option, a bad or missing
    value) as one ``error:`` line and exit code 2, like the library's own errors."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, False, **extra)
        except _NO_ARGS_IS_HELP as exc:
            exc.show()  # a bare command prints its help
            sys.exit(exc.exit_code)
        except _click_errors.UsageError as exc:
            hint = f" (see {exc.ctx.command_path} --help)" if exc.ctx is not None else ""
            raise _exit_with(f"{exc.format_message()}{hint}", exc.exit_code) from None
        except _click_errors.ClickException as exc:
            raise _exit_with(exc.format_message(), exc.exit_code) from None
        except _ABORTS:
            raise _exit_with("aborted", 1) from None
        sys.exit(result or 0)  # the code of a typer.Exit, or None (see invoke)

    def get_params(self, ctx):
        params = super().get_params(ctx)
        _hide_bool_metavars(params)
        return params

    # typer turns a Ctrl-C outside a command's body (parsing the arguments, dispatching, the
    # return) into a silent exit 130; here it gets the one line the command's own handler gives.
    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:
            raise _exit_with("interrupted", 130) from None

    def invoke(self, ctx):
        """Run the command; its return value is not an exit code (as in standalone mode)."""
        try:
            super().invoke(ctx)
        except KeyboardInterrupt:
            raise _exit_with("interrupted", 130) from None


def _exit_with(message: str, code: int) -> SystemExit:
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return SystemExit(code)


app = typer.Typer(
    cls=OneLineErrorsGroup,
    name="engramctl",
    help="Build and manage Engram memory tables (hashed n-gram embeddings).\n\n"
    "Example:\nengramctl build-vocab --out vocab.parquet",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"engramctl {__version__}")
        raise typer.Exit()


@app.callback()
def _global_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help=VERBOSE_HELP)] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help=QUIET_HELP)] = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """Build and manage Engram memory tables.

    Example:
    engramctl build-vocab --out vocab.parquet
    """
    STATE["verbose"] = verbose
    STATE["quiet"] = quiet
    _set_logging()


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


def help_text(docstring: str) -> str:
    """A command's docstring as its help: each paragraph one line (rich help keeps line breaks,
    so a wrapped docstring would break lines twice), except the example, kept line by line.

    >>> help_text("Do it.\n\n    More\n    words.\n\n    Example:\n    engramctl x --y")
    'Do it.\n\nMore words.\n\nExample:\nengramctl x --y'
    """
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(
        text if text.startswith("Example") else " ".join(text.split("\n")) for text in paragraphs
    )


# OSErrors that describe the machine, not a bug: the library names most of them itself; any it
# misses still end in one line naming the file (a read-only or full disk, a missing permission).
ENVIRONMENT_ERRNOS = {
    errno.EROFS,
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EMFILE,
    errno.ENFILE,
}


def _internal_error(exc: Exception) -> typer.Exit:
    if STATE["verbose"]:
        traceback.print_exc()
    return fail(
        f"internal error: {type(exc).__name__}: {exc} "
        "(rerun with --verbose for the traceback and report it)"
    )


def command(*args, **kwargs):
    """``app.command`` that turns library errors into one line and an exit code."""

    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*a, **k):
            try:
                return fn(*a, **k)
            except (typer.Exit, typer.Abort):
                raise
            except EngramError as exc:
                if STATE["verbose"]:
                    traceback.print_exc()
                raise fail(str(exc), exc.exit_code) from None
            except KeyboardInterrupt:
                raise fail("interrupted", 130) from None
            except MemoryError:
                raise fail("out of memory; try a smaller batch or fewer layers") from None
            except OSError as exc:
                if exc.errno == errno.ENAMETOOLONG:  # a name no check caught: still one line
                    raise fail(
                        f"file name too long: {str(exc.filename)[:60]}...; choose a shorter name"
                    ) from None
                if exc.errno not in ENVIRONMENT_ERRNOS:
                    raise _internal_error(exc) from None
                if STATE["verbose"]:
                    traceback.print_exc()
                where = f" {exc.filename}" if exc.filename else ""
                raise fail(f"cannot access{where}: {exc.strerror}") from None
            except Exception as exc:  # a bug, not a user mistake: say so, keep it one line
                raise _internal_error(exc) from None

        return app.command(*args, cls=Command, help=help_text(fn.__doc__), **kwargs)(wrapper)

    return decorate
