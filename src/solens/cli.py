"""The ``solens`` command line: a thin layer over the Python API.

Each sub-command lives in ``solens.commands.<name>`` and registers itself on ``app``.
Every ``SolensError`` (and bad parameters) is reported as one line with exit code 2.

Help pages: every command's docstring is a one-line purpose, an ``Example:`` paragraph
and details; every option that takes a value names it with a metavar (``N``, ``PATH``,
``LAYER...``). ``build`` tidies what typer would otherwise print: flags and arguments get
no ``<type>`` column and paragraphs are reflowed to the terminal.
"""

from __future__ import annotations

import importlib
import inspect
import sys
from typing import TYPE_CHECKING, Any

import typer
from typer.core import TyperArgument

if TYPE_CHECKING:
    import click
    from typer._click.exceptions import ClickException as TyperClickException

app = typer.Typer(
    name="solens",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = (
    "effects", "export", "describe", "ablate", "segment", "attack", "discover", "atlas",
    "synth", "models", "demo",
)


def _print_version(value: bool) -> None:
    if value:
        from solens import __version__

        typer.echo(f"solens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True,
        help="Print the version and exit.",
    ),
) -> None:
    """Second-order lens for CLIP vision transformers.

    Example: solens demo --out demo-out
    """


_registered: set[str] = set()


def _register() -> None:
    for name in COMMAND_MODULES:
        if name not in _registered:
            importlib.import_module(f"solens.commands.{name}").register(app)
            _registered.add(name)


class _Argument(TyperArgument):
    """A positional argument shown as its METAVAR: no ``<type>`` column in the help, and
    ``RUN`` (``[RUN]`` when optional) rather than ``{RUN}`` in the usage line."""

    def display_type_rich(self, ctx: Any) -> str | None:
        return None

    def get_usage_pieces(self, ctx: Any) -> list[str]:
        name = self.display_name_raw + ("..." if self.nargs != 1 else "")
        return [name if self.required else f"[{name}]"]


def _reflow(text: str | None) -> str | None:
    """Join the single line breaks of each paragraph (not of those starting with ``\\b``),
    as click's plain formatter does, so that rich help wraps whole paragraphs."""
    if not text:
        return text
    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if p.startswith("\b") else " ".join(p.split("\n"))
                        for p in paragraphs)


def _tidy(command: Any) -> None:
    """Help-page fixes for ``command`` and its sub-commands (see the module doc)."""
    command.help = _reflow(command.help)
    for param in command.params:
        if isinstance(param, TyperArgument):
            param.__class__ = _Argument
            if param.metavar is None and param.name:
                param.metavar = param.name.upper()
        elif getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""  # a flag takes no value: no type to show
    get_help_option = getattr(command, "get_help_option", None)
    if get_help_option is not None:
        help_option = get_help_option(command.context_class(command))
        if help_option is not None:
            help_option.metavar = ""
    for sub in getattr(command, "commands", {}).values():
        _tidy(sub)


def build() -> Any:
    """The click command of ``app`` with every sub-command registered and tidied."""
    _register()
    command = typer.main.get_command(app)
    _tidy(command)
    return command


def fail(message: str) -> None:
    """Print one error line and exit with code 2."""
    typer.echo(f"solens: error: {message}", err=True)
    raise SystemExit(2)


def _click_errors() -> tuple[type[click.ClickException] | type[TyperClickException], ...]:
    """Usage errors of click and of the click copy that typer >= 0.26 vendors."""
    import click

    errors: tuple[type[click.ClickException] | type[TyperClickException], ...] = (
        click.ClickException,
    )
    try:
        from typer._click.exceptions import ClickException as TyperClickException
    except ImportError:  # typer that uses click itself
        return errors
    return (*errors, TyperClickException)


def _os_error(e: OSError) -> str:
    """``[Errno 28] No space left on device: 'x'`` -> ``cannot write x: No space left on
    device``-like one line (the file name when known)."""
    what = e.strerror or str(e) or type(e).__name__
    name = e.filename if e.filename is not None else ""
    return " ".join(f"{name}: {what}".split()) if name else " ".join(what.split())


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import click

    from solens.commands._args import expand_multi
    from solens.errors import SolensError

    command = build()
    argv = expand_multi(sys.argv[1:] if argv is None else list(argv))
    try:
        command.main(args=argv, prog_name="solens", standalone_mode=False)
    except SolensError as e:
        fail(str(e))
    except click.exceptions.Abort:
        fail("aborted")
    except _click_errors() as e:
        message = e.format_message()
        if not message:  # no_args_is_help: the help is already printed
            raise SystemExit(2) from None
        fail(message)
    except KeyboardInterrupt:
        fail("interrupted")
    except SystemExit:
        raise
    except OSError as e:  # an I/O failure outside solens's own checks: still one line
        fail(_os_error(e))


if __name__ == "__main__":
    main(sys.argv[1:])
