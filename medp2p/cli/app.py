"""The CLI's frame: the typer app, one-line errors with exit codes, and the options commands share.

Heavy modules (torch, MONAI, nibabel...) are imported inside the commands, so ``medp2p --help``
stays fast. Exit codes: 0 success, 1 the command ran and found problems (bad data, a failed
case), 2 usage error (bad option, unrecognised data layout, refused overwrite). Every error a
user can cause is one line naming the file (or case and key) and the problem; a traceback only
with ``medp2p --debug`` or ``MEDP2P_DEBUG=1``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from medp2p import __version__

app = typer.Typer(
    name="medp2p",
    help="Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix.",
    rich_markup_mode=None,  # plain help, like nnU-Net's and TotalSegmentator's
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True, highlight=False, soft_wrap=True)
DEBUG_ENV = "MEDP2P_DEBUG"
_state = {"debug": os.environ.get(DEBUG_ENV, "").strip() not in ("", "0")}
F = TypeVar("F", bound=Callable[..., Any])


def _plain_arguments() -> None:
    """Positionals show by name (``DATA``), not as ``{data}`` and ``data <path>``.

    Typer renders a required argument in the usage line in braces and appends its Python type in
    the list; both read as noise next to argparse-style tools. Patched once, here, for this CLI
    (tests/test_cli.py checks the rendered help).
    """
    from typer.core import TyperArgument

    TyperArgument.display_type_rich = lambda self, ctx: None  # type: ignore[method-assign]
    TyperArgument._usage_display_name = lambda self: self.display_name_raw if self.required else f"[{self.display_name_raw}]"  # type: ignore[method-assign]


_plain_arguments()


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logging.addLevelName(logging.WARNING, "warning")
    logging.addLevelName(logging.ERROR, "error")
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)


def _fail(message: str, code: int) -> typer.Exit:
    # soft_wrap: a message naming a path must not be broken over lines.
    err.print(f"[bold red]error:[/] {escape(message)}")
    return typer.Exit(code)


def usage_error(message: str) -> typer.Exit:
    """Print ``error: message`` and return the exit (code 2) to raise."""
    return _fail(message, 2)


def _exit_code(exc: BaseException) -> int:
    """2 for usage errors (unknown key, layout, refused overwrite, missing run), 1 for bad data and failures."""
    from medp2p.config import ConfigError
    from medp2p.data import DataLayoutError
    from medp2p.infer.checkpoint import CheckpointError

    return 2 if isinstance(exc, (ConfigError, DataLayoutError, CheckpointError, FileExistsError, FileNotFoundError)) else 1


def _one_line_errors(fn: F) -> F:
    """Run a command; an exception becomes one ``error:`` line and exit code 1 or 2 (traceback with --debug)."""

    @functools.wraps(fn)
    def run(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: outputs being written were removed; finished ones are kept")
            raise typer.Exit(130) from None
        except Exception as exc:
            if _state["debug"]:
                raise
            from medp2p.data.case_reader import USER_ERRORS, error_text

            text = error_text(exc)
            if not isinstance(exc, USER_ERRORS):
                text += " (an internal error: `medp2p --debug ...` shows the traceback)"
            raise _fail(text, _exit_code(exc)) from None

    return run  # type: ignore[return-value]


def command(fn: F) -> F:
    """``@app.command()`` with one-line errors."""
    app.command()(_one_line_errors(fn))
    return fn


def _version(value: bool) -> None:
    if value:
        typer.echo(f"medp2p {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help=f"Show tracebacks instead of one-line errors (also {DEBUG_ENV}=1).")] = False,
) -> None:
    """Medical image-to-image translation: MRI->CT synthesis, tumour masks and inpainting with pix2pix."""
    _state["debug"] = _state["debug"] or debug
    _setup_logging()


# Options shared by the commands that read volumes.
AffineFrom = Annotated[
    str | None,
    typer.Option(
        "--affine-from",
        metavar="qform|sform",
        help="NIfTI files whose qform and sform disagree (or whose sform is sheared): use this one (refused otherwise).",
    ),
]
SeriesUid = Annotated[
    str | None, typer.Option("--series-uid", metavar="UID", help="DICOM folders holding several series: read this SeriesInstanceUID.")
]


def read_options_of(affine_from: str | None, series_uid: str | None) -> Any:
    """The ``ReadOptions`` of ``--affine-from`` and ``--series-uid`` (a bad choice is a usage error)."""
    from medp2p.data.checks import AFFINE_SOURCES, ReadOptions

    if affine_from is not None and affine_from not in AFFINE_SOURCES:
        raise usage_error(f"--affine-from must be qform or sform, got {affine_from!r}")
    return ReadOptions(affine_from=affine_from, series_uid=series_uid)
