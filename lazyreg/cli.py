"""The ``lazyreg`` command line (``lazyreg ...`` or ``python -m lazyreg ...``).

Commands: ``info``, ``align``, ``align-piecewise``, ``apply``, ``invert``, ``demo``; see
``lazyreg COMMAND --help``. Conventions shared by all commands:

* an input image may carry its group / dataset / level after a colon: ``fix.n5:lowres``;
* transform lists keep lazyreg's order: ``-t T1 -t T2`` means ``moving = T1(T2(x))``;
* ``--scheduler local`` (the default, but for ``demo``) starts a ``LocalCluster``, ``--scheduler
  ADDRESS`` uses a running dask.distributed scheduler, ``--scheduler threads`` the threaded
  scheduler in this process (no cluster; the default of ``demo``);
* errors are one line on stderr, exit code 2 for bad usage or input, 1 for a failed run
  (``--debug`` shows the traceback); existing outputs are never replaced without ``--overwrite``;
* progress goes to stderr: a live line on a terminal, a few summary lines otherwise, nothing with
  ``--quiet``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

from .errors import LazyregError

__all__ = ["main"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

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
dask scheduler (--scheduler; default 'local', for 'lazyreg demo' 'threads'):
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


# ----------------------------------------------------------------------------------- parsing
class _ArgumentError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors (raised, then printed by :func:`main` with exit code 2)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise _ArgumentError(f"{message} (see '{self.prog} --help')")


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return v


def _numbers(text: str, kind: type = float) -> float | tuple:
    """``"2"`` -> 2.0, ``"2,1,1"`` -> (2.0, 1.0, 1.0) (z, y, x)."""
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


def _ints(text: str) -> int | tuple:
    return _numbers(text, int)  # type: ignore[return-value]


def _common_options() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("general")
    g.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show full tracebacks and lazyreg's log")
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS, help="no progress or summary lines; only errors and warnings")
    return p


def _dask_options() -> argparse.ArgumentParser:
    p = _Parser(add_help=False)
    g = p.add_argument_group("dask (see the end of --help)")
    g.add_argument(
        "--scheduler",
        metavar="local|ADDRESS|threads|synchronous",
        default=None,
        help="'local' starts a LocalCluster (the default, but for demo); ADDRESS connects to a running "
        "dask.distributed scheduler; 'threads' / 'synchronous' run in this process without a cluster",
    )
    g.add_argument("--workers", type=_positive_int, default=None, metavar="N", help="LocalCluster: number of worker processes (default: from the CPU count)")
    g.add_argument(
        "--threads",
        type=_positive_int,
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
    p = _Parser(add_help=False)
    g = p.add_argument_group("output")
    if folder:
        g.add_argument("-o", "--output", required=True, metavar="OUT", help="output folder (created; refused if it exists and is not empty, unless --overwrite)")
        g.add_argument("--overwrite", action="store_true", help="write into an existing, non-empty OUT, replacing the outputs of this command")
        g.add_argument("--no-image", action="store_true", help="do not write the aligned image (aligned.ome.zarr)")
    else:
        g.add_argument("--overwrite", action="store_true", help="replace an existing OUT")
    return p


def _wrap(text: str) -> str:
    import textwrap

    return textwrap.fill(" ".join(text.split()), width=min(100, max(60, _columns() - 2)))


def _columns() -> int:
    import shutil

    return shutil.get_terminal_size((100, 20)).columns


def _parser() -> argparse.ArgumentParser:
    common, dask_opts = _common_options(), _dask_options()
    p = _Parser(
        prog="lazyreg",
        description="Lazy registration of large 3D microscopy volumes (dask, xarray, SimpleITK).",
        epilog="Run 'lazyreg COMMAND --help' for a command's options.\n\n" + SCHEDULER_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--debug", action="store_true", help="show full tracebacks and lazyreg's log")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress or summary lines")
    p.add_argument("--version", action="version", version=f"lazyreg {_lazyreg_version()}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.RawDescriptionHelpFormatter

    i = sub.add_parser(
        "info",
        parents=[common],
        help="describe an image: dims, shape, dtype, spacing, origin, chunks, size on disk",
        description="Describe an image without reading its voxels: dims, shape, dtype, spacing, origin, chunks, size on disk.",
    )
    i.add_argument("path", metavar="PATH[:GROUP]", help="image (N5, zarr, OME-Zarr, TIFF); " + PATH_HELP)
    i.add_argument("--group", default=None, help="group / dataset inside the container (instead of PATH:GROUP)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")

    a = sub.add_parser(
        "align",
        parents=[common, _output_options(True), dask_opts],
        help="global alignment (e.g. ransac + affine): transform, aligned image, report, pictures",
        description=_wrap(
            "Global alignment of MOVING to FIXED by a pipeline of steps. Writes into OUT: affine.txt "
            "(zyx matrix) and affine.tfm (ITK), field.ome.zarr if a 'deform' step is included, "
            "aligned.ome.zarr, report.json, overlay_before.png and overlay_after.png (with matplotlib). "
            "Each step loads the images into memory: use a downsampled level of large data (PATH:GROUP)."
        ),
        epilog=SCHEDULER_EPILOG,
        formatter_class=fmt,
    )
    a.add_argument("fixed", metavar="FIXED", help="fixed image; " + PATH_HELP)
    a.add_argument("moving", metavar="MOVING", help="moving image; PATH[:GROUP] as for FIXED")
    a.add_argument("--steps", default="ransac,affine", help=STEPS_HELP + " (default: ransac,affine)")
    a.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    a.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation of the aligned image: 0 nearest, 1 linear (default), 3 cubic")

    w = sub.add_parser(
        "align-piecewise",
        parents=[common, _output_options(True), dask_opts],
        help="blockwise alignment blended into one displacement field, on top of --static transforms",
        description=_wrap(
            "Align overlapping blocks of FIXED to MOVING (after the --static transforms) and blend them into "
            "one smooth displacement field. Writes into OUT: field.ome.zarr, aligned.ome.zarr (through "
            "[static..., field]), report.json (one row per block, Jacobian determinant summary), "
            "overlay_before.png (through the static transforms only), overlay_after.png and block_map.png "
            "(with matplotlib)."
        ),
        epilog=SCHEDULER_EPILOG,
        formatter_class=fmt,
    )
    w.add_argument("fixed", metavar="FIXED", help="fixed image; " + PATH_HELP)
    w.add_argument("moving", metavar="MOVING", help="moving image; PATH[:GROUP] as for FIXED")
    w.add_argument("--steps", required=True, help=STEPS_HELP + "; run in every block")
    w.add_argument("--blocksize", type=_ints, default=128, metavar="N|Z,Y,X", help="block core size in fixed voxels (default 128)")
    w.add_argument("--overlap", type=float, default=0.5, help="padding on each side of a block, as a fraction of the block size, in [0, 1) (default 0.5)")
    w.add_argument(
        "--static",
        action="append",
        default=[],
        metavar="T",
        help="transform applied before the blocks, e.g. OUT/affine.txt of 'lazyreg align'; repeat for a list "
        "(moving = T1(T2(x)) for --static T1 --static T2). " + TRANSFORM_SUFFIXES,
    )
    w.add_argument("--field-spacing", type=_numbers, default=None, metavar="S|Z,Y,X", help="spacing of the output field grid, physical units (default: the fixed grid)")
    w.add_argument("--foreground-fraction", type=float, default=0.5, help="skip blocks with less foreground than this fraction (default 0.5)")
    w.add_argument("--foreground-threshold", type=float, default=None, help="intensity threshold of the foreground (default: automatic)")
    w.add_argument("--seed", type=int, default=0, help="seed of every random choice (default 0)")
    w.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation of the aligned image (default 1)")

    ap = sub.add_parser(
        "apply",
        parents=[common, _output_options(False), dask_opts],
        help="resample MOVING onto FIXED's grid through transforms; stream to OME-Zarr",
        description=_wrap(
            "Resample MOVING onto the grid of FIXED (FIXED's voxels are not read) through the transforms, "
            "streamed chunk by chunk to OME-Zarr 0.5. Transforms map fixed points to moving points; "
            "-t T1 -t T2 means moving = T1(T2(x)) (the last is applied first), as lazyreg lists."
        ),
        epilog=SCHEDULER_EPILOG,
        formatter_class=fmt,
    )
    ap.add_argument("fixed", metavar="FIXED", help="fixed image (defines the output grid); " + PATH_HELP)
    ap.add_argument("moving", metavar="MOVING", help="moving image; PATH[:GROUP] as for FIXED")
    ap.add_argument("-t", "--transform", action="append", default=[], metavar="T", help="transform file; repeat for a list. " + TRANSFORM_SUFFIXES)
    ap.add_argument("-o", "--output", required=True, metavar="OUT.ome.zarr", help="output image (refused if it exists, unless --overwrite)")
    ap.add_argument("--order", type=int, choices=(0, 1, 3), default=1, help="interpolation: 0 nearest, 1 linear (default), 3 cubic")
    ap.add_argument("--fill-value", type=float, default=0.0, help="value of voxels mapping outside MOVING (default 0)")
    ap.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report there")

    v = sub.add_parser(
        "invert",
        parents=[common, _output_options(False), dask_opts],
        help="invert a displacement field (fixed-point iteration)",
        description=_wrap(
            "Invert a displacement field by fixed-point iteration, on the field's grid. OUT's suffix selects "
            "the format: .ome.zarr/.zarr (streamed chunk by chunk), .mha/.nrrd/.nii(.gz) (ITK vector image) "
            "or .h5/.tfm (ITK transform)."
        ),
        epilog=SCHEDULER_EPILOG,
        formatter_class=fmt,
    )
    v.add_argument("field", metavar="FIELD", help="displacement field: .ome.zarr/.zarr (lazyreg), .mha/.nrrd/.nii(.gz), .h5/.tfm (ITK)")
    v.add_argument("-o", "--output", required=True, metavar="OUT", help="the inverse field (refused if it exists, unless --overwrite)")
    v.add_argument(
        "--max-displacement",
        type=_numbers,
        default=None,
        metavar="D|Z,Y,X",
        help="bound on the displacement (physical units): each output chunk then reads only the field chunks "
        "within it (checked: larger values fail the run). Without it every chunk reads the whole field "
        "(allowed up to 256 MiB)",
    )
    v.add_argument("--tolerance", type=float, default=0.01, help="largest accepted residual, in field voxels (default 0.01)")
    v.add_argument("--max-iterations", type=_positive_int, default=50, help="most iterations per voxel (default 50)")
    v.add_argument("--report", default=None, metavar="FILE.json", help="also write a JSON report there")

    d = sub.add_parser(
        "demo",
        parents=[common, dask_opts],
        help="register built-in synthetic data end to end and report",
        description=_wrap("Build a synthetic pair with a known affine and deformation, align it globally and piecewise, and compare with the truth."),
        epilog=SCHEDULER_EPILOG,
        formatter_class=fmt,
    )
    d.add_argument("-o", "--output", default=None, help="output folder (default: a new temporary folder)")
    d.add_argument("--overwrite", action="store_true", help="allow writing into an existing, non-empty folder")
    return p


# ------------------------------------------------------------------------------------ inputs
def _split_path(spec: str, group: str | None = None) -> tuple[str, str | None]:
    """``PATH:GROUP`` -> (PATH, GROUP) when PATH exists and the whole string does not."""
    if group is None and ":" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition(":")
        if head and Path(head).exists():
            return head, (tail or None)
    return spec, group


def _open(spec: str, what: str = "path", group: str | None = None):
    """Open an image given as PATH[:GROUP]; a missing path is a one-line error naming ``what``."""
    from .io.open import open_image

    path, group = _split_path(spec, group)
    if not Path(path).expanduser().exists():
        head = spec.rpartition(":")[0] if (":" in spec and group is None and spec.rpartition(":")[0]) else spec
        raise LazyregError(f"{what}: {head} does not exist")
    try:
        return open_image(path, group=group)
    except LazyregError as e:
        msg = str(e)
        msg = msg[len("path: "):] if msg.startswith("path: ") else msg
        if "group=" in msg:
            msg += " (on the command line: PATH:GROUP, e.g. fix.n5:lowres)"
        raise LazyregError(msg if msg.startswith(f"{what}:") else f"{what}: {msg}") from None


def _steps_from_data(data: Any, where: str) -> list:
    """Steps as loaded from JSON / YAML: pairs, bare names, {name: options} or {"steps": [...]}."""
    if isinstance(data, dict) and "steps" in data:
        data = data["steps"]
    if isinstance(data, dict):  # {ransac: {...}, affine: {}} (ordered)
        data = [[k, v] for k, v in data.items()]
    if not isinstance(data, list) or not data:
        raise LazyregError(f"--steps: {where}: expected a non-empty list of steps, e.g. [[\"ransac\", {{}}], [\"affine\", {{}}]]")
    out = []
    for i, st in enumerate(data):
        if isinstance(st, dict) and len(st) == 1:
            (name, opts), = st.items()
            st = [name, opts if opts is not None else {}]
        out.append(st)
    return out


def _read_steps(text: str) -> list[tuple[str, dict]]:
    """``--steps``: a JSON / YAML file or comma-separated names, validated (one-line errors)."""
    from .registration.steps import parse_steps

    p = Path(text)
    suffix = p.suffix.lower()
    if suffix in (".json", ".yaml", ".yml") or p.is_file():
        if not p.is_file():
            raise LazyregError(f"--steps: {p} does not exist" + (" (it is a folder)" if p.exists() else ""))
        raw = p.read_text()
        if suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise LazyregError(
                    f"--steps: reading {p.name} needs PyYAML, which is not installed (pip install pyyaml); "
                    'or write the steps as JSON, e.g. [["ransac", {"blob_sizes": [6, 20]}], ["affine", {}]]'
                ) from None
            try:
                data = yaml.safe_load(raw)
            except yaml.YAMLError as e:
                mark = getattr(e, "problem_mark", None)
                where = f", line {mark.line + 1}" if mark is not None else ""
                problem = getattr(e, "problem", None) or str(e).splitlines()[0]
                raise LazyregError(f"--steps: {p} is not valid YAML ({problem}{where})") from None
        else:
            try:
                data = json.loads(raw)
            except json.JSONDecodeError as e:
                raise LazyregError(f"--steps: {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
        steps = _steps_from_data(data, str(p))
        where = str(p)
    else:
        steps = [name.strip() for name in text.split(",") if name.strip()]
        where = repr(text)
        if not steps:
            raise LazyregError(f"--steps: no step names in {where}")
    try:
        return parse_steps(steps)
    except LazyregError as e:
        raise LazyregError(f"--steps: {where}: {e}") from None


def _load_transforms(specs: Sequence[str], flag: str) -> list:
    """Transform files, in the order given (a composite ITK file contributes its list)."""
    from .io.transform_files import load_transform

    out: list = []
    for spec in specs:
        if not Path(spec).exists():
            raise LazyregError(f"{flag}: {spec} does not exist")
        try:
            t = load_transform(spec)
        except LazyregError as e:
            msg = str(e)
            msg = msg[len("path: "):] if msg.startswith("path: ") else msg
            raise LazyregError(f"{flag}: {msg}") from None
        out.extend(t if isinstance(t, list) else [t])
    return out


def _input_paths(*specs: str) -> list[Path]:
    return [Path(_split_path(s)[0]).expanduser().resolve() for s in specs if s]


def _check_not_input(outputs: Sequence[Path], inputs: Sequence[Path], folder: Path | None = None) -> None:
    """Refuse outputs that are, contain or sit inside an input (and a folder OUT inside an input)."""
    for i in inputs:
        if folder is not None and (folder.resolve() == i or i in folder.resolve().parents):
            raise LazyregError(f"output: {folder} is or sits inside the input {i}; choose another output folder")
        for o in outputs:
            o = o.resolve()
            if o == i or i in o.parents or o in i.parents:
                raise LazyregError(f"output: {o} would overwrite or sit inside the input {i}; choose another output")


def _prepare_folder(path: str, overwrite: bool) -> Path:
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise LazyregError(f"output: {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise LazyregError(f"output: {out} exists and is not empty; pass --overwrite to replace its outputs, or choose another folder")
    if not out.parent.exists():
        raise LazyregError(f"output: the parent folder {out.parent} does not exist")
    return out


def _prepare_file(path: str, overwrite: bool) -> Path:
    out = Path(path).expanduser()
    if out.exists():
        empty_dir = out.is_dir() and not any(out.iterdir())
        if not empty_dir and not overwrite:
            raise LazyregError(f"output: {out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise LazyregError(f"output: the parent folder {out.parent} does not exist")
    return out


# ------------------------------------------------------------------------------------ running
class _Session:
    """Progress, peak memory, the dask scheduler and the timings of one command."""

    def __init__(self, args: argparse.Namespace) -> None:
        from .progress import Progress

        self.args = args
        self.progress = Progress("off" if args.quiet else "auto")
        self.scheduler: dict = {}
        self.t0 = time.perf_counter()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def info(self, text: str) -> None:
        """A summary line on stderr (not with --quiet)."""
        self.progress.line(text)

    def say(self, text: str) -> None:
        """A result line on stdout (not with --quiet)."""
        if not self.args.quiet:
            self.progress.line(text, file=sys.stdout)

    @property
    def seconds(self) -> float:
        return time.perf_counter() - self.t0

    def report(self, command: str, memory: Any, **fields: Any) -> dict:
        params = {k: v for k, v in vars(self.args).items() if k not in ("command", "debug", "quiet", "argv")}
        return {
            "command": command,
            "argv": list(self.args.argv),
            "started": self.started,
            "parameters": params,
            "versions": _versions(),
            "scheduler": self.scheduler,
            **fields,
            "seconds": self.seconds,
            "phases": {k: {"seconds": v["seconds"], "tasks": v["tasks"]} for k, v in self.progress.phases.items()},
            "peak_memory": memory.result() | {"scope": self._memory_scope()},
        }

    def _memory_scope(self) -> str:
        kind = self.scheduler.get("kind")
        if kind == "address":
            return "this process only: the workers of the remote cluster are not included"
        if kind == "local-cluster":
            return "this process and its LocalCluster worker processes"
        return "this process (the dask scheduler ran in it)"


def _check_dask_args(args: argparse.Namespace) -> None:
    if args.scheduler is None:
        args.scheduler = "threads" if args.command == "demo" else "local"
    s = args.scheduler = args.scheduler.strip()
    if not s:
        raise LazyregError("--scheduler: expected 'local', an address, 'threads' or 'synchronous'")
    if s != "local":
        for flag, value in (("--workers", args.workers), ("--memory-limit", args.memory_limit)):
            if value is not None:
                raise LazyregError(f"{flag} applies to --scheduler local (a LocalCluster), not to --scheduler {s}")
        if args.threads is not None and s != "threads":
            raise LazyregError(f"--threads applies to --scheduler local or threads, not to --scheduler {s}")
    if args.memory_limit is not None and args.memory_limit.lower() not in ("auto", "0", "none"):
        from dask.utils import parse_bytes

        try:
            parse_bytes(args.memory_limit)
        except (ValueError, TypeError):
            raise LazyregError(f"--memory-limit: expected a size like 4GiB, 'auto' or 0, got {args.memory_limit!r}") from None


def _worker_setup(debug: bool) -> None:
    """On LocalCluster workers: one-line warnings, and lazyreg's log kept for the report."""
    import logging

    warnings.showwarning = _show_warning
    if not debug:
        logging.getLogger("lazyreg").addHandler(logging.NullHandler())


@contextmanager
def _dask(session: _Session) -> Iterator[dict]:
    """Run the block's dask computations on the scheduler chosen by the arguments."""
    import dask

    args = session.args
    kind = args.scheduler
    if kind in ("threads", "synchronous"):
        cfg: dict = {"scheduler": kind}
        threads = 1 if kind == "synchronous" else (args.threads or os.cpu_count() or 1)
        if kind == "threads" and args.threads:
            cfg["num_workers"] = args.threads
        session.scheduler = {"kind": kind, "threads": threads}
        session.info(f"dask: {kind} scheduler in this process, {threads} thread{'s' if threads > 1 else ''}")
        with dask.config.set(cfg):
            yield session.scheduler
        return

    import logging

    from distributed import Client, LocalCluster

    cluster = None
    if kind == "local":
        limit: Any = args.memory_limit or "auto"
        if str(limit).lower() in ("0", "none"):
            limit = 0
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads,
            memory_limit=limit,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster)
        except BaseException:
            cluster.close()
            raise
    else:
        try:
            client = Client(kind, timeout="10s")
        except (OSError, TimeoutError, ValueError, TypeError) as e:
            raise LazyregError(
                f"--scheduler: could not connect to {kind!r} ({type(e).__name__}: {' '.join(str(e).split())}); "
                "expected the address of a running dask scheduler (e.g. tcp://host:8786), 'local', 'threads' or 'synchronous'"
            ) from None
    try:
        workers = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) else client.scheduler_info()["workers"]
        nthreads = sum(w.get("nthreads", 0) for w in workers.values())
        limits = sorted({int(w.get("memory_limit") or 0) for w in workers.values()})
        session.scheduler = {
            "kind": "local-cluster" if cluster is not None else "address",
            "address": client.scheduler.address,
            "workers": len(workers),
            "threads": nthreads,
            "memory_limit_per_worker": limits[0] if len(limits) == 1 else limits,
        }
        if cluster is not None:
            client.run(_worker_setup, bool(args.debug))
        mem = f", {_gib(limits[0])} memory limit each" if len(limits) == 1 and limits[0] else ""
        where = "LocalCluster" if cluster is not None else f"scheduler {client.scheduler.address}"
        link = ""
        if _has_module("bokeh"):
            link = f"; dashboard {client.dashboard_link}"
        session.info(f"dask: {where}, {len(workers)} workers, {nthreads} threads{mem}{link}")
        with session.progress.distributed(client):
            yield session.scheduler
    finally:
        client.close()
        if cluster is not None:
            logging.getLogger("distributed").setLevel(logging.CRITICAL)  # no shutdown chatter
            cluster.close()


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def _has_module(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _lazyreg_version() -> str:
    from . import __version__

    return __version__


def _versions() -> dict:
    import platform
    from importlib import metadata

    out = {"lazyreg": _lazyreg_version(), "python": platform.python_version()}
    for dist in ("dask", "distributed", "numpy", "xarray", "zarr", "SimpleITK", "matplotlib", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def _jsonable(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    os.replace(tmp, path)


def _describe(img: Any, spec: str) -> dict:
    from .images import grid_of

    g = grid_of(img)
    return {
        "path": spec,
        "shape": list(g.shape),
        "spacing": list(g.spacing),
        "origin": list(g.origin),
        "dtype": str(img.dtype),
        "chunks": list(img.data.chunksize),
        "units": img.attrs.get("units"),
    }


def _values(*values: Any) -> tuple:
    return values


def _compute_together(*objs: Any) -> tuple:
    """``dask.compute(*objs)`` in one graph (shared tasks run once), results in argument order.

    Wrapped in one delayed call: with dask 2026.8, ``dask.compute(array, delayed, array)``
    returns the results grouped by collection type, not in argument order.
    """
    import dask

    return dask.compute(dask.delayed(_values, pure=True)(*objs))[0]


def _field_store(field: Any, path: Path, overwrite: bool) -> Any:
    """A delayed that streams a lazy field to OME-Zarr exactly as ``lazyreg.save_transform`` does.

    ``save_transform`` computes at once; returning the write as a delayed lets the CLI compute it
    together with the field's report (the block / inversion statistics) in one pass.
    """
    import dask.array as da
    import numpy as np

    from .io import transform_files
    from .io.omezarr import write_ome_zarr

    g = field.grid
    data = field.data.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(64, 64, 64, 3))
    data = da.moveaxis(data.rechunk({3: 3}), 3, 0)
    unit = field.data.attrs.get("units", "micrometer")
    return write_ome_zarr(
        data,
        path,
        axes="czyx",
        scale=(1.0,) + tuple(g.spacing),
        translation=(0.0,) + tuple(g.origin),
        units=[None, unit, unit, unit],
        overwrite=overwrite,
        compute=False,
        name="displacement field",
        attrs={transform_files._FIELD_ATTR: {"type": "displacement_field", "vector": ["z", "y", "x"], "units": unit}},
    )


def _pictures(session: _Session, out: Path, draw: dict) -> dict:
    """Write the pictures of ``draw`` (name -> function(path)) when matplotlib is importable."""
    if not _has_module("matplotlib"):
        session.info("pictures skipped: matplotlib is not installed (pip install 'lazyreg[plot]')")
        return {"skipped": "matplotlib is not installed (pip install 'lazyreg[plot]')"}
    written = []
    for name, fn in draw.items():
        fn(out / name)
        written.append(name)
    return {"written": written}


def _quality_pictures(fixed: Any, before: Any, after: Any) -> dict:
    from . import plot

    return {
        "overlay_before.png": lambda p: plot.overlay(fixed, before, title="before alignment (fixed magenta, moving green)", path=p, overwrite=True),
        "overlay_after.png": lambda p: plot.overlay(fixed, after, title="after alignment (fixed magenta, moving green)", path=p, overwrite=True),
    }


# ----------------------------------------------------------------------------------- commands
def _cmd_info(args: argparse.Namespace) -> None:
    path, group = _split_path(args.path, args.group)
    img = _open(args.path, "path", args.group)
    desc = _describe(img, path)
    desc["group"] = group
    desc["dims"] = list(img.dims)
    desc["uncompressed_bytes"] = int(img.nbytes)
    where = Path(path).expanduser()
    if group and (where / group).exists():
        where = where / group
    nbytes, nfiles = _disk_usage(where)
    desc["size_on_disk_bytes"] = nbytes
    desc["files"] = nfiles
    if args.json:
        print(json.dumps(desc, indent=2, default=_jsonable))
        return
    units = desc["units"] or ""
    print(f"path     {path}" + (f" (group {group})" if group else ""))
    print(f"dims     {tuple(img.dims)}")
    print(f"shape    {tuple(desc['shape'])}")
    print(f"dtype    {desc['dtype']}")
    print(f"spacing  {tuple(desc['spacing'])} {units}".rstrip())
    print(f"origin   {tuple(desc['origin'])} {units}".rstrip())
    print(f"chunks   {tuple(desc['chunks'])}")
    print(f"size     {_size(img.nbytes)} uncompressed; {_size(nbytes)} on disk in {nfiles} file{'s' if nfiles != 1 else ''} ({where})")


def _disk_usage(path: Path) -> tuple[int, int]:
    if path.is_file():
        return path.stat().st_size, 1
    total = files = 0
    for root, _dirs, names in os.walk(path):
        for n in names:
            try:
                total += os.stat(os.path.join(root, n)).st_size
                files += 1
            except OSError:
                pass
    return total, files


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"  # pragma: no cover


@contextmanager
def _output(out: Path, folder: bool = False) -> Iterator[Path]:
    """Create OUT (a folder) if asked; if the run fails and OUT did not exist before, remove it.

    A failed run therefore leaves no partial output behind unless OUT was there already (then
    ``--overwrite`` was given, or OUT was an empty folder).
    """
    import shutil

    existed = out.exists()
    if folder:
        out.mkdir(parents=True, exist_ok=True)
    try:
        yield out
    except BaseException:
        if not existed:
            if out.is_dir():
                shutil.rmtree(out, ignore_errors=True)
            elif out.exists():
                out.unlink()
        raise


def _cmd_align(args: argparse.Namespace, session: _Session) -> None:
    import numpy as np

    from .registration.steps import align
    from .io.omezarr import to_zarr
    from .io.transform_files import save_affine, save_transform
    from .metrics import pearson
    from .progress import PeakMemory
    from .resample import apply_transform
    from .transforms.affine import Affine
    from .transforms.field import DisplacementField

    steps = _read_steps(args.steps)
    fixed = _open(args.fixed, "fixed")
    moving = _open(args.moving, "moving")
    out = _prepare_folder(args.output, args.overwrite)
    names = ("affine.txt", "affine.tfm", "field.ome.zarr", "aligned.ome.zarr", "report.json", "overlay_before.png", "overlay_after.png")
    _check_not_input([out / n for n in names], _input_paths(args.fixed, args.moving), folder=out)
    lazy = align(fixed, moving, steps, seed=args.seed)  # validates everything before any compute

    with PeakMemory() as memory, _dask(session), _output(out, folder=True):
        with session.progress.phase("global alignment"):
            if isinstance(lazy, list):
                aff, fld = lazy
                matrix, rep, values = _compute_together(aff.matrix, aff.report, fld.data.data)
                affine = Affine(matrix, report=rep)
                field = DisplacementField.from_array(values, fld.grid.spacing, fld.grid.origin, report=rep)
                transforms = [affine, field]
            else:
                matrix, rep = _compute_together(lazy.matrix, lazy.report)
                affine = Affine(matrix, report=rep)
                field = None
                transforms = [affine]
        align_seconds = session.progress.phases["global alignment"]["seconds"]
        written = ["affine.txt", "affine.tfm"]
        save_affine(affine, out / "affine.txt", overwrite=True)
        save_affine(affine, out / "affine.tfm", overwrite=True)
        if field is not None:
            save_transform(field, out / "field.ome.zarr", overwrite=True)
            written.append("field.ome.zarr")
        aligned = apply_transform(fixed, moving, transforms, order=args.order)
        if not args.no_image:
            with session.progress.phase("aligned image"):
                to_zarr(aligned, out / "aligned.ome.zarr", overwrite=True)
            written.append("aligned.ome.zarr")
            from .io.open import open_image

            aligned = open_image(out / "aligned.ome.zarr")
        with session.progress.phase("quality control"):
            before_img = apply_transform(fixed, moving, [])
            before = pearson(fixed, before_img)
            after = pearson(fixed, aligned)
            pictures = _pictures(session, out, _quality_pictures(fixed, before_img, aligned))
        written += pictures.get("written", [])
        report = session.report(
            "align",
            memory,
            fixed=_describe(fixed, args.fixed),
            moving=_describe(moving, args.moving),
            steps=[list(st) for st in steps],
            step_reports=list(rep),
            affine=np.asarray(matrix).tolist(),
            field=None if field is None else {"shape": list(field.grid.shape), "spacing": list(field.grid.spacing)},
            pearson_before=before,
            pearson_after=after,
            alignment_seconds=align_seconds,
            pictures=pictures,
            outputs=written + ["report.json"],
        )
        _write_json(out / "report.json", report)
    session.say(f"aligned in {align_seconds:.1f} s; Pearson(fixed, moving) before {before:.3f}, after {after:.3f}")
    for r in rep:
        figures = {k: r[k] for k in ("inliers", "iterations", "metric_value") if k in r}
        session.say(f"  {r.get('step', '?'):<7s} {_fmt(figures)}")
    session.say(f"wrote {out}: {', '.join(written + ['report.json'])}")


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in d.items())


def _cmd_piecewise(args: argparse.Namespace, session: _Session) -> None:
    from collections import Counter

    import dask
    import numpy as np

    from .registration.piecewise import align_piecewise
    from .io.omezarr import to_zarr
    from .io.open import open_image
    from .io.transform_files import load_transform
    from .metrics import pearson
    from .progress import PeakMemory
    from .resample import apply_transform
    from .transforms.jacobian import jacobian_determinant

    steps = _read_steps(args.steps)
    fixed = _open(args.fixed, "fixed")
    moving = _open(args.moving, "moving")
    static = _load_transforms(args.static, "--static")
    out = _prepare_folder(args.output, args.overwrite)
    names = ("field.ome.zarr", "aligned.ome.zarr", "report.json", "overlay_before.png", "overlay_after.png", "block_map.png")
    _check_not_input([out / n for n in names], _input_paths(args.fixed, args.moving, *args.static), folder=out)
    lazy = align_piecewise(
        fixed,
        moving,
        steps,
        blocksize=args.blocksize,
        overlap=args.overlap,
        static_transforms=static,
        field_spacing=args.field_spacing,
        foreground_fraction=args.foreground_fraction,
        foreground_threshold=args.foreground_threshold,
        seed=args.seed,
    )

    with PeakMemory() as memory, _dask(session), _output(out, folder=True):
        with session.progress.phase("piecewise alignment"):
            store = _field_store(lazy, out / "field.ome.zarr", overwrite=True)
            _, blocks = _compute_together(store, lazy.report)
        align_seconds = session.progress.phases["piecewise alignment"]["seconds"]
        written = ["field.ome.zarr"]
        field = load_transform(out / "field.ome.zarr")
        transforms = [*static, field]
        aligned = apply_transform(fixed, moving, transforms, order=args.order)
        if not args.no_image:
            with session.progress.phase("aligned image"):
                to_zarr(aligned, out / "aligned.ome.zarr", overwrite=True)
            written.append("aligned.ome.zarr")
            aligned = open_image(out / "aligned.ome.zarr")
        with session.progress.phase("quality control"):
            before_img = apply_transform(fixed, moving, static)
            before = pearson(fixed, before_img)
            after = pearson(fixed, aligned)
            det = jacobian_determinant(field)
            jmin, jmax, folded = dask.compute(det.data.min(), det.data.max(), (det.data <= 0).mean())
            draw = _quality_pictures(fixed, before_img, aligned)
            if _has_module("matplotlib"):
                from . import plot

                draw["block_map.png"] = lambda p: plot.block_map(blocks, title="per-block outcome", path=p, overwrite=True)
            pictures = _pictures(session, out, draw)
        written += pictures.get("written", [])
        counts = Counter(r["status"] for r in blocks)
        gains = [r["metric_after"] - r["metric_before"] for r in blocks if r["status"] == "ok"]
        report = session.report(
            "align-piecewise",
            memory,
            fixed=_describe(fixed, args.fixed),
            moving=_describe(moving, args.moving),
            steps=[list(s) for s in steps],
            static=list(args.static),
            field={"shape": list(field.grid.shape), "spacing": list(field.grid.spacing), "origin": list(field.grid.origin)},
            block_counts=dict(counts),
            mean_block_gain=float(np.mean(gains)) if gains else None,
            blocks=list(blocks),
            jacobian={"min": float(jmin), "max": float(jmax), "folded_fraction": float(folded)},
            pearson_before=before,
            pearson_after=after,
            alignment_seconds=align_seconds,
            pictures=pictures,
            outputs=written + ["report.json"],
        )
        _write_json(out / "report.json", report)
    gain = f"{np.mean(gains):+.3f}" if gains else "n/a"
    session.say(
        f"piecewise alignment in {align_seconds:.1f} s: blocks {dict(counts)}, mean block Pearson gain {gain}; "
        f"Pearson(fixed, moving) before {before:.3f} (static transforms only), after {after:.3f}"
    )
    reasons = Counter(f"{r['status']}: {r['reason']}" for r in blocks if r["status"] != "ok")
    for reason, n in reasons.most_common(3):
        session.say(f"  {n} block{'s' if n > 1 else ''} {reason}")
    if not counts.get("ok"):
        session.info("warning: no block was aligned; the field is zero (see 'reason' in report.json)")
    if folded > 0:
        session.info(f"warning: the field folds on {100 * folded:.2f}% of its voxels (Jacobian determinant <= 0)")
    session.say(f"wrote {out}: {', '.join(written + ['report.json'])}")


def _cmd_apply(args: argparse.Namespace, session: _Session) -> None:
    from .io.omezarr import to_zarr
    from .progress import PeakMemory
    from .resample import apply_transform

    fixed = _open(args.fixed, "fixed")
    moving = _open(args.moving, "moving")
    transforms = _load_transforms(args.transform, "-t")
    out = _prepare_file(args.output, args.overwrite)
    report_path = _prepare_file(args.report, args.overwrite) if args.report else None
    _check_not_input([out], _input_paths(args.fixed, args.moving, *args.transform))
    aligned = apply_transform(fixed, moving, transforms, order=args.order, fill_value=args.fill_value)
    with PeakMemory() as memory, _dask(session), _output(out):
        with session.progress.phase("resampling"):
            to_zarr(aligned, out, overwrite=True if (args.overwrite or out.exists()) else False)
        if report_path is not None:
            _write_json(
                report_path,
                session.report(
                    "apply",
                    memory,
                    fixed=_describe(fixed, args.fixed),
                    moving=_describe(moving, args.moving),
                    transforms=list(args.transform),
                    output=str(out),
                ),
            )
    session.say(f"wrote {out}: shape {tuple(aligned.shape)}, {aligned.dtype}, {len(transforms)} transform(s), in {session.seconds:.1f} s")


def _cmd_invert(args: argparse.Namespace, session: _Session) -> None:
    from .io.transform_files import FIELD_IMAGE_SUFFIXES, save_transform
    from .progress import PeakMemory
    from .transforms.field import DisplacementField
    from .transforms.invert import invert_field

    loaded = _load_transforms([args.field], "field")
    field = loaded[0]
    if len(loaded) != 1 or not isinstance(field, DisplacementField):
        kinds = " + ".join(type(t).__name__ for t in loaded)
        raise LazyregError(f"field: {args.field} holds {kinds}, not one displacement field (an affine is inverted by its matrix inverse)")
    out = _prepare_file(args.output, args.overwrite)
    report_path = _prepare_file(args.report, args.overwrite) if args.report else None
    _check_not_input([out], _input_paths(args.field))
    name = out.name.lower()
    to_zarr = name.endswith(".zarr")
    allowed = (".zarr",) + FIELD_IMAGE_SUFFIXES + (".h5", ".hdf5", ".tfm")
    if not any(name.endswith(s) for s in allowed):
        raise LazyregError(f"output: expected a field file name ending in one of {', '.join(allowed)}, got {out.name!r}")
    inverse = invert_field(field, tolerance=args.tolerance, max_iterations=args.max_iterations, max_displacement=args.max_displacement)
    with PeakMemory() as memory, _dask(session), _output(out):
        with session.progress.phase("inversion"):
            if to_zarr and inverse.is_lazy:
                store = _field_store(inverse, out, overwrite=True if (args.overwrite or out.exists()) else False)
                _, stats = _compute_together(store, inverse.report)
            else:
                inverse = inverse.compute()
                stats = inverse.report
                save_transform(inverse, out, overwrite=True if (args.overwrite or out.exists()) else False)
        stats = {k: v for k, v in dict(stats).items() if k != "chunk_max_residual"}
        if report_path is not None:
            _write_json(report_path, session.report("invert", memory, field=args.field, output=str(out), inversion=stats))
    session.say(
        f"wrote {out}: converged {stats.get('converged')}, max residual {stats.get('max_residual', float('nan')):.3g} voxels, "
        f"{stats.get('iterations')} iterations at most, {stats.get('not_converged')} voxels not converged, "
        f"{stats.get('outside')} outside the field, in {session.seconds:.1f} s"
    )


def _cmd_demo(args: argparse.Namespace, session: _Session) -> None:
    from .demo import run_demo
    from .progress import PeakMemory

    if args.output is not None:  # refused before the scheduler starts (run_demo checks it too)
        _prepare_folder(args.output, args.overwrite)
    with PeakMemory(), _dask(session):
        with session.progress.phase("demo"):
            run_demo(args.output, overwrite=args.overwrite, say=session.say)


# --------------------------------------------------------------------------------------- main
def _show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    text = " ".join(str(message).split())
    print(f"lazyreg: warning: {category.__name__}: {text}", file=sys.stderr if file is None else file)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lazyreg`` console script; returns the exit code."""
    import logging

    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except _ArgumentError as e:
        print(f"lazyreg: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_USAGE
    except SystemExit as e:  # --help, --version
        return int(e.code or 0) if not isinstance(e.code, str) else EXIT_USAGE
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.debug = bool(getattr(args, "debug", False))
    args.quiet = bool(getattr(args, "quiet", False))

    lazyreg_log = logging.getLogger("lazyreg")
    handler: logging.Handler
    if args.debug:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s: %(message)s"))
        lazyreg_log.setLevel(logging.INFO)
    else:
        handler = logging.NullHandler()  # outcomes go to report.json and the summary lines
    lazyreg_log.addHandler(handler)
    saved_showwarning = warnings.showwarning
    if not args.debug:
        warnings.showwarning = _show_warning
    try:
        if args.command == "info":
            _cmd_info(args)
            return EXIT_OK
        if hasattr(args, "scheduler"):
            _check_dask_args(args)
        session = _Session(args)
        {
            "align": _cmd_align,
            "align-piecewise": _cmd_piecewise,
            "apply": _cmd_apply,
            "invert": _cmd_invert,
            "demo": _cmd_demo,
        }[args.command](args, session)
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
    finally:
        lazyreg_log.removeHandler(handler)
        warnings.showwarning = saved_showwarning


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
