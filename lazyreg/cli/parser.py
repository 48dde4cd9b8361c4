"""The ``lazyreg`` argument parser: commands, options, argument types and help texts."""

from __future__ import annotations

import argparse
import shutil
import textwrap
from importlib import metadata
from typing import Any

__all__ = ["build_parser", "Parser", "ArgumentError", "positive_int", "numbers", "ints", "lazyreg_version"]

PATH_HELP = (
    "PATH[:GROUP]; GROUP selects a group, dataset or level inside a container, e.g. fix.n5:lowres or "
    "img.ome.zarr:1 (the colon separates them only when PATH exists and PATH:GROUP does not)"
)
STEPS_HELP = (
    "alignment steps: a JSON file (.json) or a YAML file (.yaml/.yml, needs PyYAML) holding a list of "
    "[name, {options}] pairs, bare names or {name: {options}} mappings, e.g. "
    '[["ransac", {"blob_sizes": [6, 20]}], ["affine", {}]]; or step names separated by commas '
    "(e.g. ransac,affine). Steps: ransac, random, rigid, affine, deform; options are the keyword "
    "arguments of the step functions (see lazyreg.align)"
)
TRANSFORM_SUFFIXES = (
    "affines: .txt (zyx 4x4 matrix written by lazyreg), .tfm/.mat/.h5 (ITK); displacement fields: "
    ".ome.zarr/.zarr (written by lazyreg), .mha/.nrrd/.nii(.gz) (ITK vector images), .h5/.tfm (ITK)"
)
SCHEDULER_EPILOG = """\
dask scheduler (--scheduler; default 'auto', for 'lazyreg demo' 'threads'):
  --scheduler auto  'threads' when the inputs (fixed + moving) hold up to 4 GiB, else 'local'
                    ('local' also when --workers or --memory-limit is given); the output says
                    which was chosen
  --scheduler local start a LocalCluster on this machine (worker processes; sized by
                    --workers, --threads and --memory-limit, or by distributed's defaults
                    from the CPU count and the memory)
  --scheduler ADDR  connect to a running dask.distributed scheduler, e.g. tcp://10.0.0.5:8786
                    (any cluster: `dask scheduler`, dask-jobqueue, ...); the workers need lazyreg
                    installed and the input and output paths at the same place
  --scheduler threads
                    dask's threaded scheduler in this process, no cluster: fastest start, for
                    small data and tests (--threads sets the number of threads)
  --scheduler synchronous
                    one thread, in order (debugging)

progress: on stderr, a live line (tasks done / total, elapsed, ETA) on a terminal, a few summary
  lines otherwise, nothing with --quiet. Errors: one line on stderr (--debug: the traceback).
exit codes: 0 done, 1 the run failed, 2 bad usage or bad input, 130 interrupted.
"""
_FORMATTER = argparse.RawDescriptionHelpFormatter


class ArgumentError(Exception):
    """A command line :class:`Parser` refused (printed as one line, exit code 2)."""


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors: raised as :class:`ArgumentError` instead of exiting.

    :func:`lazyreg.cli.main` prints them on one line and returns exit code 2.

    Examples
    --------
    >>> from lazyreg.cli.parser import ArgumentError, Parser
    >>> p = Parser(prog="demo")
    >>> try:
    ...     p.parse_args(["--nope"])
    ... except ArgumentError as e:
    ...     print(e)
    unrecognized arguments: --nope (see 'demo --help')
    """

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise :class:`ArgumentError` (argparse would print the usage and exit)."""
        raise ArgumentError(f"{message} (see '{self.prog} --help')")


def positive_int(text: str) -> int:
    """Argument type: an integer >= 1.

    Examples
    --------
    >>> from lazyreg.cli.parser import positive_int
    >>> positive_int("4")
    4
    >>> positive_int("0")
    Traceback (most recent call last):
    ...
    argparse.ArgumentTypeError: expected a positive integer, got '0'
    """
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def numbers(text: str, kind: type = float) -> float | tuple:
    """Argument type: one number, or three (z, y, x) separated by commas.

    Examples
    --------
    >>> from lazyreg.cli.parser import numbers
    >>> numbers("2")
    2.0
    >>> numbers("2, 1,1")
    (2.0, 1.0, 1.0)
    """
    parts = [p for p in text.replace(" ", "").split(",") if p]
    try:
        values = [kind(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one number or three (z,y,x) separated by commas, got {text!r}") from None
    if len(values) == 1:
        return values[0]
    if len(values) != 3:
        raise argparse.ArgumentTypeError(f"expected one number or three (z,y,x) separated by commas, got {text!r}")
    return tuple(values)


def ints(text: str) -> int | tuple:
    """Argument type: one integer, or three (z, y, x) separated by commas.

    Examples
    --------
    >>> from lazyreg.cli.parser import ints
    >>> ints("128"), ints("64,128,128")
    (128, (64, 128, 128))
    """
    return numbers(text, int)  # type: ignore[return-value]


def lazyreg_version() -> str:
    """The installed version of lazyreg (``"unknown"`` when it is not installed).

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.cli.parser import lazyreg_version
    >>> lazyreg_version() == lazyreg.__version__
    True
    """
    try:
        return metadata.version("lazyreg")
    except metadata.PackageNotFoundError:
        return "unknown"


def _common_options() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks and lazyreg's log")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress or summary lines; only errors and warnings")
    return p


def _dask_options() -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    g = p.add_argument_group("dask (see the end of --help)")
    g.add_argument(
        "--scheduler",
        metavar="auto|local|ADDRESS|threads|synchronous",
        default=None,
        help="'auto' (the default, but for demo) picks 'threads' up to 4 GiB of inputs, else 'local'; "
        "'local' starts a LocalCluster; ADDRESS connects to a running "
        "dask.distributed scheduler; 'threads' / 'synchronous' run in this process without a cluster",
    )
    g.add_argument("--workers", type=positive_int, default=None, metavar="N", help="LocalCluster: number of worker processes (default: from the CPU count)")
    g.add_argument(
        "--threads",
        type=positive_int,
        default=None,
        metavar="N",
        help="LocalCluster: threads per worker (default: CPU count / workers); with --scheduler threads: the number of threads",
    )
    g.add_argument(
        "--memory-limit",
        default=None,
        metavar="SIZE",
        help="LocalCluster: memory limit per worker, e.g. 4GiB, 'auto' (the default: the machine's memory "
        "shared among the workers) or 0 (none); workers spill to disk, pause and restart near it",
    )
    return p


def _output_options(folder: bool) -> argparse.ArgumentParser:
    p = Parser(add_help=False)
    g = p.add_argument_group("output")
    if folder:
        g.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created; refused if it exists and is not empty, unless --overwrite)")
        g.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty OUT, replacing the outputs of this command")
        g.add_argument("--no-image", action="store_true", help="do not write the aligned image (aligned.ome.zarr)")
    else:
        g.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    g.add_argument(
        "--ome-zarr-version",
        choices=("0.4", "0.5"),
        default=None,
        help="OME-Zarr version of the images and fields written: 0.5 (zarr v3, the default) or 0.4 (zarr v2, for tools on zarr 2 such as bigstream 5)",
    )
    return p


def _wrap(text: str) -> str:
    columns = shutil.get_terminal_size((100, 20)).columns
    return textwrap.fill(" ".join(text.split()), width=min(100, max(60, columns - 2)))


def build_parser() -> argparse.ArgumentParser:
    """The parser of the ``lazyreg`` command line (one sub-parser per command).

    Errors raise :class:`ArgumentError`; ``--help`` and ``--version`` exit (``SystemExit``).

    Examples
    --------
    >>> from lazyreg.cli.parser import build_parser
    >>> args = build_parser().parse_args(["apply", "fix.n5:lowres", "mov.n5:lowres", "-t", "affine.txt", "-o", "out.ome.zarr"])
    >>> args.command, args.fixed, args.transform, args.order, args.scheduler
    ('apply', 'fix.n5:lowres', ['affine.txt'], 1, None)
    """
    common, dask_opts = _common_options(), _dask_options()
    p = Parser(
        prog="lazyreg",
        description="Lazy registration of large 3D microscopy volumes (dask, xarray, SimpleITK).",
        epilog="Run 'lazyreg COMMAND --help' for a command's options.\n\n" + SCHEDULER_EPILOG,
        formatter_class=_FORMATTER,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks and lazyreg's log")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")
    p.add_argument("--version", action="version", version=f"lazyreg {lazyreg_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_info(sub, [common])
    _add_align(sub, [common, _output_options(True), dask_opts])
    _add_align_piecewise(sub, [common, _output_options(True), dask_opts])
    _add_align_series(sub, [common, _output_options(True), dask_opts])
    _add_apply(sub, [common, _output_options(False), dask_opts])
    _add_invert(sub, [common, _output_options(False), dask_opts])
    _add_demo(sub, [common, dask_opts])
    return p


def _command(sub: Any, name: str, parents: list, summary: str, description: str) -> argparse.ArgumentParser:
    """A command's sub-parser, its description wrapped and the scheduler notes as its epilog."""
    return sub.add_parser(
        name, parents=parents, help=summary, description=_wrap(description), epilog=SCHEDULER_EPILOG, formatter_class=_FORMATTER
    )


SPACING_HELP = "voxel spacing (z,y,x, physical units) of {what}, overriding its metadata; needed for images without (plain zarr arrays, uncalibrated TIFF, OME-Zarr without a scale)"


def _add_images(p: argparse.ArgumentParser, fixed_help: str = "fixed image; ") -> None:
    p.add_argument("fixed", metavar="FIXED", help=fixed_help + PATH_HELP)
    p.add_argument("moving", metavar="MOVING", help="moving image; PATH[:GROUP] as for FIXED")
    _add_spacing(p, "both images", "MOVING")


def _add_spacing(p: argparse.ArgumentParser, all_images: str, moving: str) -> None:
    """--spacing (for ``all_images``), --fixed-spacing and --moving-spacing (for ``moving``)."""
    g = p.add_argument_group("voxel spacing")
    g.add_argument("--spacing", type=numbers, default=None, metavar="S|Z,Y,X", help=SPACING_HELP.format(what=all_images))
    g.add_argument("--fixed-spacing", type=numbers, default=None, metavar="S|Z,Y,X", help=SPACING_HELP.format(what="FIXED") + "; wins over --spacing")
    g.add_argument("--moving-spacing", type=numbers, default=None, metavar="S|Z,Y,X", help=SPACING_HELP.format(what=moving) + "; wins over --spacing")


def _add_info(sub: Any, parents: list) -> None:
    i = sub.add_parser(
        "info",
        parents=parents,
        help="describe an image: dims, shape, dtype, spacing, origin, chunks, size on disk",
        description="Describe an image without reading its voxels: dims, shape, dtype, spacing, origin, chunks, size on disk.",
    )
    i.add_argument("path", metavar="PATH[:GROUP]", help="image (N5, zarr, OME-Zarr, TIFF); " + PATH_HELP)
    i.add_argument("--group", default=None, help="group / dataset inside the container (instead of PATH:GROUP)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.add_argument(
        "--check",
        action="store_true",
        help="check that every chunk file is on disk and list the missing ones by name; exit code 2 if a store "
        "written by lazyreg (which writes every chunk) misses any (other writers may skip empty chunks: listed only)",
    )
    i.add_argument("--spacing", type=numbers, default=None, metavar="S|Z,Y,X", help=SPACING_HELP.format(what="the image"))


def _add_align(sub: Any, parents: list) -> None:
    a = _command(
        sub,
        "align",
        parents,
        "global alignment (e.g. ransac + affine): transform, aligned image, report, pictures",
        "Global alignment of MOVING to FIXED by a pipeline of steps. Writes into OUT: affine.txt "
        "(zyx matrix) and affine.tfm (ITK), field.ome.zarr if a 'deform' step is included, "
        "aligned.ome.zarr, report.json, overlay_before.png and overlay_after.png (with matplotlib). "
        "Each step loads the images into memory: use a downsampled level of large data (PATH:GROUP).",
    )
    _add_images(a)
    a.add_argument("--steps", default="ransac,affine", help=STEPS_HELP + " (default: ransac,affine)")
    a.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    a.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation of the aligned image: 0 nearest, 1 linear (default), 3 cubic")


#: ``--quality`` values: the keys of ``lazyreg.registration.piecewise.QUALITIES`` (written out so that
#: building the parser does not import the registration code; a test keeps them equal).
QUALITY_CHOICES = ("fast", "balanced", "best")


def _add_align_series(sub: Any, parents: list) -> None:
    s = _command(
        sub,
        "align-series",
        parents,
        "register several rounds to one fixed round (or each to the previous): one folder per round, one report",
        "Registers every MOVING round to FIXED (with --chain, each round to the previous one, round 1 to "
        "FIXED, the transforms composed), as one graph. Writes into OUT a folder per round, named after "
        "its MOVING path: affine.txt, field.ome.zarr (with --piecewise), aligned.ome.zarr (unless "
        "--no-image); and report.json: one table (round x step/block) and, per round, the transform "
        "files that map FIXED to it (lazyreg's order).",
    )
    s.add_argument("fixed", metavar="FIXED", help="fixed round; " + PATH_HELP)
    s.add_argument("movings", metavar="MOVING", nargs="+", help="moving rounds, in acquisition order; PATH[:GROUP] as for FIXED")
    _add_spacing(s, "every image", "every MOVING")
    s.add_argument("--steps", default="ransac,affine", help=STEPS_HELP + " (default: ransac,affine)")
    s.add_argument("--piecewise", action="store_true", help="refine every round with align-piecewise's default steps (or --quality) on top of its affine")
    s.add_argument("--blocksize", type=ints, default=None, metavar="N|Z,Y,X", help="with --piecewise: block core size in fixed voxels (default 128)")
    s.add_argument("--quality", choices=QUALITY_CHOICES, default=None,
                   help="with --piecewise: the block steps, as align-piecewise --quality (default best)")
    s.add_argument("--chain", action="store_true", help="register each round to the previous one and compose (drifting series)")
    s.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    s.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation of the aligned images (default 1)")


def _add_align_piecewise(sub: Any, parents: list) -> None:
    w = _command(
        sub,
        "align-piecewise",
        parents,
        "blockwise alignment blended into one displacement field, on top of --static transforms",
        "Align overlapping blocks of FIXED to MOVING (after the --static transforms) and blend them into "
        "one smooth displacement field. Writes into OUT: field.ome.zarr, aligned.ome.zarr (through "
        "[static..., field]), report.json (one row per block, Jacobian determinant summary), "
        "overlay_before.png (through the static transforms only), overlay_after.png and block_map.png "
        "(with matplotlib).",
    )
    _add_images(w)
    w.add_argument("--steps", default=None, help=STEPS_HELP + "; run in every block (default: the steps of --quality, "
                   "as recorded in report.json)")
    w.add_argument("--quality", choices=QUALITY_CHOICES, default=None,
                   help="block steps by measured quality/time trade-off, instead of --steps: best (default; local affine, "
                   "B-spline, then demons), balanced (B-spline, then fast demons; 1.4x faster), fast (fast demons alone; 4x faster)")
    w.add_argument("--blocksize", type=ints, default=128, metavar="N|Z,Y,X", help="block core size in fixed voxels (default 128)")
    w.add_argument("--coarse", action=argparse.BooleanOptionalAction, default=None,
                   help="first a whole-image coarse B-spline that each block may start from (default: with --quality "
                   "best, not with the faster presets or --steps; see align_piecewise's coarse)")
    w.add_argument("--overlap", type=float, default=0.25, help="padding on each side of a block, as a fraction of the block size, in [0, 1) (default 0.25)")
    w.add_argument(
        "--static",
        action="append",
        default=[],
        metavar="T",
        help="transform applied before the blocks, e.g. OUT/affine.txt of 'lazyreg align'; repeat for a list "
        "(moving = T1(T2(x)) for --static T1 --static T2). " + TRANSFORM_SUFFIXES,
    )
    w.add_argument("--field-spacing", type=numbers, default=None, metavar="S|Z,Y,X", help="spacing of the output field grid, physical units (default: every 2 fixed voxels, "
                   "the grid of the demons' finest level)")
    w.add_argument("--foreground-fraction", type=float, default=0.5, help="skip blocks with less foreground than this fraction (default 0.5)")
    w.add_argument("--foreground-threshold", type=float, default=None, help="intensity threshold of the foreground (default: automatic)")
    w.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    w.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation of the aligned image (default 1)")


def _add_apply(sub: Any, parents: list) -> None:
    ap = _command(
        sub,
        "apply",
        parents,
        "resample MOVING onto FIXED's grid through transforms; stream to OME-Zarr",
        "Resample MOVING onto the grid of FIXED (FIXED's voxels are not read) through the transforms, "
        "streamed chunk by chunk to OME-Zarr 0.5. Transforms map fixed points to moving points; "
        "-t T1 -t T2 means moving = T1(T2(x)) (the last is applied first), as lazyreg lists.",
    )
    _add_images(ap, "fixed image (defines the output grid); ")
    ap.add_argument("-t", "--transform", action="append", default=[], metavar="T", help="transform file; repeat for a list. " + TRANSFORM_SUFFIXES)
    ap.add_argument("-o", "--output", required=True, metavar="OUT.ome.zarr", help="output image (refused if it exists, unless --overwrite)")
    ap.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation: 0 nearest, 1 linear (default), 3 cubic")
    ap.add_argument("--fill-value", type=float, default=0.0, help="value of voxels mapping outside MOVING (default 0)")
    ap.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report there")


def _add_invert(sub: Any, parents: list) -> None:
    v = _command(
        sub,
        "invert",
        parents,
        "invert a displacement field (fixed-point iteration)",
        "Invert a displacement field by fixed-point iteration, on the field's grid. OUT's suffix selects "
        "the format: .ome.zarr/.zarr (streamed chunk by chunk), .mha/.nrrd/.nii(.gz) (ITK vector image) "
        "or .h5/.tfm (ITK transform).",
    )
    v.add_argument("field", metavar="FIELD", help="displacement field: .ome.zarr/.zarr (lazyreg), .mha/.nrrd/.nii(.gz), .h5/.tfm (ITK)")
    v.add_argument("-o", "--output", required=True, metavar="OUT", help="the inverse field (refused if it exists, unless --overwrite)")
    v.add_argument(
        "--max-displacement",
        type=numbers,
        default=None,
        metavar="D|Z,Y,X",
        help="bound on the displacement (physical units): each output chunk then reads only the field chunks "
        "within it (checked: larger values fail the run). Without it every chunk reads the whole field "
        "(allowed up to 256 MiB)",
    )
    v.add_argument("--tolerance", type=float, default=0.01, help="largest accepted residual, in field voxels (default 0.01)")
    v.add_argument("--max-iterations", type=positive_int, default=50, help="most iterations per voxel (default 50)")
    v.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report there")


def _add_demo(sub: Any, parents: list) -> None:
    d = _command(
        sub,
        "demo",
        parents,
        "register built-in synthetic data end to end and report",
        "Build a synthetic pair with a known affine and deformation, align it globally and piecewise, and compare with the truth.",
    )
    d.add_argument("-o", "--output", default=None, help="output folder (default: a new temporary folder)")
    d.add_argument("--overwrite", action="store_true", help="allow writing into an existing, non-empty folder")
