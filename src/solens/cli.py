"""The ``solens`` command line: a thin layer over the Python API.

Each sub-command lives in ``solens.commands.<name>`` and registers itself on ``app``.
Every ``SolensError`` (and bad parameters) is reported as one line with exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    import click
    from typer._click.exceptions import ClickException as TyperClickException

app = typer.Typer(
    name="solens",
    help="Second-order lens for CLIP vision transformers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

COMMAND_MODULES = ("effects", "export", "describe", "ablate", "synth", "demo")


def _register() -> None:
    for name in COMMAND_MODULES:
        importlib.import_module(f"solens.commands.{name}").register(app)


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


def main(argv: list[str] | None = None) -> None:
    """Console entry point."""
    import click

    from solens.commands._args import expand_multi
    from solens.errors import SolensError

    _register()
    argv = expand_multi(sys.argv[1:] if argv is None else list(argv))
    try:
        app(args=argv, standalone_mode=False)
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
    except FileNotFoundError as e:
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv[1:])
