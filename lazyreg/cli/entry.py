"""The entry point :func:`main`: parse, dispatch to a command, turn errors into one line and an exit code."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from contextlib import contextmanager
from typing import Iterator, Sequence

from ..errors import LazyregError
from .align_commands import align_command, piecewise_command
from .commands import apply_command, demo_command, info_command, invert_command
from .parser import ArgumentError, build_parser
from .series_command import series_command
from .session import Session, check_dask_args, show_warning

__all__ = ["main", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_INTERRUPTED"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130
#: The commands that run in a :class:`Session` (``info`` needs none), by name.
COMMANDS = {
    "align": align_command,
    "align-piecewise": piecewise_command,
    "align-series": series_command,
    "apply": apply_command,
    "invert": invert_command,
    "demo": demo_command,
}


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


@contextmanager
def _log_and_warnings(debug: bool) -> Iterator[None]:
    """lazyreg's log on stderr with --debug (else kept quiet), one-line warnings unless --debug."""
    lazyreg_log = logging.getLogger("lazyreg")
    handler: logging.Handler
    if debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        lazyreg_log.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()  # outcomes go to report.json and the summary lines
    lazyreg_log.addHandler(handler)
    saved_showwarning = warnings.showwarning
    if not debug:
        warnings.showwarning = show_warning
    try:
        yield
    finally:
        lazyreg_log.removeHandler(handler)
        warnings.showwarning = saved_showwarning


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazyreg`` console script (and ``python -m lazyreg``); returns the exit code.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after the program name; default ``sys.argv[1:]``.

    Returns
    -------
    int
        0 done, 1 the run failed, 2 bad usage or bad input, 130 interrupted. Errors are printed as
        one line on stderr (with ``--debug``, the traceback too).

    Examples
    --------
    >>> from lazyreg.cli import main
    >>> main(["info", "no-such-image.ome.zarr"])   # "lazyreg: error: path: ... does not exist" on stderr
    2
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except ArgumentError as e:
        print(f"lazyreg: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.debug = bool(getattr(args, "debug", False))
    args.quiet = bool(getattr(args, "quiet", False))
    with _log_and_warnings(args.debug):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run the parsed command; errors become one line on stderr and an exit code."""
    try:
        if args.command == "info":
            info_command(args)
            return EXIT_OK
        if hasattr(args, "scheduler"):
            check_dask_args(args)
        COMMANDS[args.command](args, Session(args))
        return EXIT_OK
    except (LazyregError, FileNotFoundError, NotADirectoryError) as e:
        if args.debug:
            traceback.print_exc()
        msg = _one_line(e)
        if isinstance(e, (FileNotFoundError, NotADirectoryError)) and getattr(e, "filename", None):
            msg = f"{e.strerror or 'not found'}: {e.filename}"
        print(f"lazyreg: error: {msg}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("lazyreg: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # a failed run: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"lazyreg: failed: {type(e).__name__}: {_one_line(e)} (--debug shows the traceback)", file=sys.stderr)
        return EXIT_FAILED
