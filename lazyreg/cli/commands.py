"""The commands that do not align: ``info``, ``apply``, ``invert`` and ``demo``.

Each command checks all its inputs and outputs before the dask scheduler starts, then computes
inside ``dask_scheduler(session)``; ``align`` and ``align-piecewise`` are in :mod:`.align_commands`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import LazyregError
from .inputs import image_spacing, input_paths, load_transforms, open_input, split_path
from .outputs import check_not_input, describe, jsonable, output_guard, prepare_file, prepare_folder, write_json
from ..result_cache import compute_together
from .session import Session, dask_scheduler

__all__ = ["info_command", "apply_command", "invert_command", "demo_command"]

_MAX_LISTED = 1000  # missing chunk files printed by ``info --check`` (``--json`` gives all)


def info_command(args: argparse.Namespace) -> None:
    """``lazyreg info``: print an image's dims, shape, dtype, spacing, origin, chunks and size on disk.

    No voxel is read; ``--json`` prints the description as JSON. For zarr and N5 stores it counts
    the chunk files on disk against the chunk grid; ``--check`` lists the missing ones by name and
    fails (exit code 2) when a store written by lazyreg misses any
    (:mod:`lazyreg.io.chunk_files`).

    Examples
    --------
    >>> import contextlib, io, json, tempfile, numpy as np, lazyreg
    >>> from lazyreg.cli.commands import info_command
    >>> from lazyreg.cli.parser import build_parser
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = lazyreg.to_zarr(lazyreg.image(np.zeros((4, 6, 8), np.uint16), spacing=1.0), d + "/img.ome.zarr")
    ...     args = build_parser().parse_args(["info", d + "/img.ome.zarr", "--json"])
    ...     with contextlib.redirect_stdout(io.StringIO()) as out:
    ...         info_command(args)
    >>> description = json.loads(out.getvalue())
    >>> description["dims"], description["shape"], description["dtype"], description["spacing"]
    (['z', 'y', 'x'], [4, 6, 8], 'uint16', [1.0, 1.0, 1.0])
    """
    import dask

    path, group = split_path(args.path, args.group)
    check = bool(getattr(args, "check", False))
    with dask.config.set({"lazyreg.verify-chunks": not check}):  # --check lists every missing file itself
        img = open_input(args.path, "path", args.group, spacing=image_spacing(args, "path"))
    desc = describe(img, path)
    desc["group"] = group
    desc["dims"] = list(img.dims)
    desc["uncompressed_bytes"] = int(img.nbytes)
    where = Path(path).expanduser()
    if group and (where / group).exists():
        where = where / group
    nbytes, nfiles = _disk_usage(where)
    desc["size_on_disk_bytes"] = nbytes
    desc["files"] = nfiles
    counted = _chunk_files(img, check)
    if counted is not None:
        desc["chunk_files"] = counted
    if args.json:
        print(json.dumps(desc, indent=2, default=jsonable))
        _fail_if_missing(counted, path)
        return
    units = desc["units"] or ""
    print(f"path     {path}" + (f" (group {group})" if group else ""))
    print(f"dims     {tuple(img.dims)}")
    for d, values in desc.get("non_spatial", {}).items():
        print(f"{d:<8s} {values}")
    print(f"shape    {tuple(desc['shape'])}")
    print(f"dtype    {desc['dtype']}")
    print(f"spacing  {tuple(desc['spacing'])} {units}".rstrip())
    print(f"origin   {tuple(desc['origin'])} {units}".rstrip())
    print(f"chunks   {tuple(desc['chunks'])}")
    print(f"size     {_size(img.nbytes)} uncompressed; {_size(nbytes)} on disk in {nfiles} file{'s' if nfiles != 1 else ''} ({where})")
    if counted is not None:
        _print_chunk_files(counted)
        _fail_if_missing(counted, path)


def _chunk_files(img: Any, names: bool) -> dict | None:
    """Chunk files of the zarr array / N5 dataset behind ``img`` (None for TIFF or a derived image)."""
    from ..io.chunk_files import chunk_files
    from ..io.source import find_source

    found = find_source(img)
    folder = getattr(found[0], "path", None) if found else None
    if folder is None or not Path(folder).is_dir():
        return None
    c = chunk_files(folder, names=names)
    out = {"folder": str(folder), "expected": c.expected, "present": c.present, "written_whole_by_lazyreg": c.recorded}
    if names:
        out["missing"] = c.missing
    return out


def _print_chunk_files(c: dict) -> None:
    absent = c["expected"] - c["present"]
    if c["written_whole_by_lazyreg"]:
        note = "every chunk written by lazyreg" if absent <= 0 else f"{absent} MISSING (lazyreg wrote every chunk)"
    else:
        note = "complete" if absent <= 0 else f"{absent} absent: read as the fill value (the writer may have skipped empty chunks)"
    print(f"on disk  {min(c['present'], c['expected'])} of {c['expected']} chunk files: {note}")
    missing = c.get("missing") or []
    for key in missing[:_MAX_LISTED]:
        print(f"  {'missing' if c['written_whole_by_lazyreg'] else 'absent '}  {Path(c['folder']) / key}")
    if len(missing) > _MAX_LISTED:
        print(f"  ... and {len(missing) - _MAX_LISTED} more (--json lists them all)")


def _fail_if_missing(c: dict | None, path: str) -> None:
    if c is not None and c["written_whole_by_lazyreg"] and c.get("missing"):
        raise LazyregError(
            f"path: {path} is missing {len(c['missing'])} of its {c['expected']} chunk files (listed above); "
            "they would read as zeros: write the image again"
        )


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


def apply_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg apply``: resample MOVING onto FIXED's grid through transform files, streamed to OME-Zarr.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.cli.commands import apply_command
    >>> from lazyreg.cli.parser import build_parser
    >>> from lazyreg.cli.session import Session, check_dask_args
    >>> img = lazyreg.image(np.arange(512, dtype=np.float32).reshape(8, 8, 8), spacing=1.0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = lazyreg.to_zarr(img, d + "/fix.ome.zarr"), lazyreg.to_zarr(img, d + "/mov.ome.zarr")
    ...     _ = lazyreg.save_transform(lazyreg.Affine.identity(), d + "/identity.txt")
    ...     args = build_parser().parse_args(["apply", d + "/fix.ome.zarr", d + "/mov.ome.zarr", "-t", d + "/identity.txt",
    ...                                       "-o", d + "/out.ome.zarr", "--scheduler", "synchronous", "--quiet"])
    ...     check_dask_args(args)
    ...     apply_command(args, Session(args))
    ...     np.array_equal(lazyreg.open_image(d + "/out.ome.zarr").values, img.values)
    True
    """
    from ..io.omezarr import output_format, to_zarr
    from ..progress import PeakMemory
    from ..resample import apply_transform

    fixed = open_input(args.fixed, "fixed", spacing=image_spacing(args, "fixed"))
    moving = open_input(args.moving, "moving", spacing=image_spacing(args, "moving"))
    session.data_bytes = moving.nbytes + fixed.size * moving.dtype.itemsize  # read + written
    transforms = load_transforms(args.transform, "-t")
    out = prepare_file(args.output, args.overwrite)
    report_path = prepare_file(args.report, args.overwrite) if args.report else None
    check_not_input([out], input_paths(args.fixed, args.moving, *args.transform))
    aligned = apply_transform(fixed, moving, transforms, order=args.order, fill_value=args.fill_value)
    with PeakMemory() as memory, dask_scheduler(session), output_guard(out), output_format(args.ome_zarr_version):
        with session.progress.phase("resampling"):
            to_zarr(aligned, out, overwrite=True if (args.overwrite or out.exists()) else False)
        if report_path is not None:
            write_json(
                report_path,
                session.report(
                    "apply",
                    memory,
                    fixed=describe(fixed, args.fixed),
                    moving=describe(moving, args.moving),
                    transforms=list(args.transform),
                    output=str(out),
                ),
            )
    session.say(f"wrote {out}: shape {tuple(aligned.shape)}, {aligned.dtype}, {len(transforms)} transform(s), in {session.seconds:.1f} s")


def invert_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg invert``: invert a displacement field file; OUT's suffix selects the format.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.cli.commands import invert_command
    >>> from lazyreg.cli.parser import build_parser
    >>> from lazyreg.cli.session import Session, check_dask_args
    >>> field = lazyreg.DisplacementField.from_array(np.full((4, 4, 4, 3), 0.5), spacing=1.0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = lazyreg.save_transform(field, d + "/field.ome.zarr")
    ...     args = build_parser().parse_args(["invert", d + "/field.ome.zarr", "-o", d + "/inverse.ome.zarr",
    ...                                       "--scheduler", "synchronous", "--quiet"])
    ...     check_dask_args(args)
    ...     invert_command(args, Session(args))
    ...     inverse = lazyreg.load_transform(d + "/inverse.ome.zarr").compute()
    >>> inverse.grid.shape, float(inverse.data[1, 1, 1, 0])
    ((4, 4, 4), -0.5)
    """
    from ..io.omezarr import output_format
    from ..io.transform_files import FIELD_IMAGE_SUFFIXES, save_field_zarr, save_transform
    from ..progress import PeakMemory
    from ..transforms.field import DisplacementField
    from ..transforms.invert import invert_field

    loaded = load_transforms([args.field], "field")
    field = loaded[0]
    if len(loaded) != 1 or not isinstance(field, DisplacementField):
        kinds = " + ".join(type(t).__name__ for t in loaded)
        raise LazyregError(f"field: {args.field} holds {kinds}, not one displacement field (an affine is inverted by its matrix inverse)")
    out = prepare_file(args.output, args.overwrite)
    report_path = prepare_file(args.report, args.overwrite) if args.report else None
    check_not_input([out], input_paths(args.field))
    name = out.name.lower()
    to_zarr = name.endswith(".zarr")
    allowed = (".zarr",) + FIELD_IMAGE_SUFFIXES + (".h5", ".hdf5", ".tfm")
    if not any(name.endswith(s) for s in allowed):
        raise LazyregError(f"output: expected a field file name ending in one of {', '.join(allowed)}, got {out.name!r}")
    session.data_bytes = 2 * 3 * 4 * math.prod(field.grid.shape)  # the field and its inverse, float32
    inverse = invert_field(field, tolerance=args.tolerance, max_iterations=args.max_iterations, max_displacement=args.max_displacement)
    with PeakMemory() as memory, dask_scheduler(session), output_guard(out), output_format(args.ome_zarr_version):
        with session.progress.phase("inversion"):
            if to_zarr and inverse.is_lazy:
                store = save_field_zarr(inverse, out, overwrite=True if (args.overwrite or out.exists()) else False, compute=False)
                _, stats = compute_together(store, inverse.report)
            else:
                inverse = inverse.compute()
                stats = inverse.report
                save_transform(inverse, out, overwrite=True if (args.overwrite or out.exists()) else False)
        stats = {k: v for k, v in dict(stats).items() if k != "chunk_max_residual"}
        if report_path is not None:
            write_json(report_path, session.report("invert", memory, field=args.field, output=str(out), inversion=stats))
    session.say(
        f"wrote {out}: converged {stats.get('converged')}, max residual {stats.get('max_residual', float('nan')):.3g} voxels, "
        f"{stats.get('iterations')} iterations at most, {stats.get('not_converged')} voxels not converged, "
        f"{stats.get('outside')} outside the field, in {session.seconds:.1f} s"
    )


def demo_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg demo``: :func:`lazyreg.demo.run_demo` on the chosen scheduler (threads by default).

    The demo takes about half a minute; the example shows its arguments.

    Examples
    --------
    >>> from lazyreg.cli.parser import build_parser
    >>> args = build_parser().parse_args(["demo", "-o", "demo-out"])
    >>> args.command, args.output, args.overwrite, args.scheduler   # scheduler None: threads
    ('demo', 'demo-out', False, None)
    """
    from ..demo import run_demo
    from ..progress import PeakMemory

    if args.output is not None:  # refused before the scheduler starts (run_demo checks it too)
        prepare_folder(args.output, args.overwrite)
    with PeakMemory(), dask_scheduler(session):
        with session.progress.phase("demo"):
            run_demo(args.output, overwrite=args.overwrite, say=session.say)
