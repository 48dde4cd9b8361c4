"""The ``lazyreg`` command line."""

from __future__ import annotations

import argparse
import sys
import traceback
from typing import Sequence

from .errors import LazyregError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lazyreg", description="Lazy registration of large 3D microscopy volumes.")
    p.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    d = sub.add_parser("demo", help="register built-in synthetic data end to end and report")
    d.add_argument("-o", "--output", default=None, help="output folder (default: a new temporary folder)")
    d.add_argument("--overwrite", action="store_true", help="allow writing into an existing, non-empty folder")
    i = sub.add_parser("info", help="describe an image: shape, dtype, spacing, origin, chunks")
    i.add_argument("path")
    i.add_argument("--group", default=None, help="group or dataset inside the container (e.g. lowres)")
    return p


def _info(path: str, group: str | None) -> None:
    from .image import grid_of
    from .io.open import open_image

    img = open_image(path, group=group)
    g = grid_of(img)
    print(f"path     {path}" + (f" (group {group})" if group else ""))
    print(f"dims     {img.dims}")
    print(f"shape    {g.shape}")
    print(f"dtype    {img.dtype}")
    print(f"spacing  {g.spacing} {img.attrs.get('units', '')}")
    print(f"origin   {g.origin}")
    print(f"chunks   {img.data.chunksize}")
    print(f"size     {img.nbytes / 2**20:.1f} MiB uncompressed")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazyreg`` console script; returns the exit code."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import run_demo

            run_demo(args.output, overwrite=args.overwrite)
        elif args.command == "info":
            _info(args.path, args.group)
        return 0
    except LazyregError as e:
        if args.debug:
            traceback.print_exc()
        print(f"lazyreg: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # a failed run: one line unless --debug
        if args.debug:
            traceback.print_exc()
        print(f"lazyreg: failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
