"""The typer application, its global options, and the error handling every command shares."""

from __future__ import annotations

import functools
import logging
import sys
import traceback
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from ..errors import EngramError

console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False)
STATE = {"verbose": False, "quiet": False}
# click's exceptions, from whichever click this typer uses (recent typers vendor their own copy).
_click_errors = sys.modules[typer.BadParameter.__module__]
_ABORTS = (typer.Abort, getattr(_click_errors, "Abort", typer.Abort))
_NO_ARGS_IS_HELP = getattr(_click_errors, "NoArgsIsHelpError", ())  # click >= 8.2


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

    def invoke(self, ctx):
        """Run the command; its return value is not an exit code (as in standalone mode)."""
        super().invoke(ctx)


def _exit_with(message: str, code: int) -> SystemExit:
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return SystemExit(code)


app = typer.Typer(
    cls=OneLineErrorsGroup,
    name="engramctl",
    help="Build and manage Engram memory tables (hashed n-gram embeddings).\n\n"
    "Example: engramctl build-vocab --out vocab.parquet",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _global_options(
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Log details; show tracebacks on errors.")
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No progress bars or notes.")
    ] = False,
) -> None:
    """Build and manage Engram memory tables.

    Example: engramctl build-vocab --out vocab.parquet
    """
    STATE["verbose"] = verbose
    STATE["quiet"] = quiet
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print one error line on stderr and return the Exit to raise."""
    err_console.print(f"error: {message}", markup=False, soft_wrap=True)
    return typer.Exit(code)


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
            except Exception as exc:  # a bug, not a user mistake: say so, keep it one line
                if STATE["verbose"]:
                    traceback.print_exc()
                raise fail(
                    f"internal error: {type(exc).__name__}: {exc} "
                    "(rerun with --verbose for the traceback and report it)"
                ) from None

        return app.command(*args, **kwargs)(wrapper)

    return decorate
