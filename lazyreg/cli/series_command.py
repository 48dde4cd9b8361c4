"""The ``align-series`` command: several rounds registered to one fixed round, one folder each, one report."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from ..errors import LazyregError
from .align_commands import steps_in_effect
from .inputs import image_spacing, input_paths, open_input, read_steps, split_path
from .outputs import check_not_input, describe, output_guard, prepare_folder, write_json
from .session import Session, dask_scheduler

__all__ = ["series_command", "check_series_args", "round_names"]

_SUFFIXES = re.compile(r"(\.ome\.zarr|\.zarr|\.n5|\.ome\.tiff?|\.tiff?)$", re.IGNORECASE)


def round_names(specs: list[str]) -> list[str]:
    """Folder names of the rounds: each MOVING's file name without its suffix (and its group when
    two share a file); a number is appended when names still clash.

    Examples
    --------
    >>> from lazyreg.cli.series_command import round_names
    >>> round_names(["r2.n5:lowres", "data/r3.ome.zarr", "r4.tif"])
    ['r2', 'r3', 'r4']
    >>> round_names(["rounds.n5:r2", "rounds.n5:r3", "x.zarr", "x.zarr"])
    ['rounds-r2', 'rounds-r3', 'x', 'x-2']
    """
    parts = [_path_and_group(s) for s in specs]
    bases = [_SUFFIXES.sub("", Path(p).name) or "round" for p, _ in parts]
    names = []
    for (_, group), base in zip(parts, bases):
        if bases.count(base) > 1 and group:
            base = f"{base}-{re.sub(r'[^A-Za-z0-9_.-]+', '-', group).strip('-')}"
        names.append(base)
    seen: dict[str, int] = {}
    unique = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        unique.append(n if seen[n] == 1 else f"{n}-{seen[n]}")
    return unique


def _path_and_group(spec: str) -> tuple[str, str | None]:
    path, group = split_path(spec)
    head, _, tail = spec.rpartition(":")
    if group is None and head and _SUFFIXES.search(head):  # PATH:GROUP of a path not on disk (yet)
        return head, tail
    return path, group


def series_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg align-series``: every MOVING round registered to FIXED (or to the previous round).

    Writes OUT/ROUND/affine.txt (the round's own global transform), OUT/ROUND/field.ome.zarr with
    ``--piecewise``, OUT/ROUND/aligned.ome.zarr (through the whole list from FIXED, composed with
    ``--chain``) unless ``--no-image``, and OUT/report.json: one table (round x step/block) and per
    round the transform files that map FIXED to it, in lazyreg's order.

    Examples
    --------
    >>> from lazyreg.cli.parser import build_parser
    >>> args = build_parser().parse_args(["align-series", "r1.n5:lowres", "r2.n5:lowres", "r3.n5:lowres", "-o", "out", "--chain"])
    >>> args.movings, args.chain, args.piecewise, args.steps
    (['r2.n5:lowres', 'r3.n5:lowres'], True, False, 'ransac,affine')
    """
    from ..io.omezarr import output_format, to_zarr
    from ..io.transform_files import save_affine, save_transform
    from ..metrics import pearson
    from ..progress import PeakMemory
    from ..registration.series import align_series
    from ..resample import apply_transform

    check_series_args(args)
    steps = read_steps(args.steps)
    names = round_names(args.movings)
    fixed = open_input(args.fixed, "fixed", spacing=image_spacing(args, "fixed"))
    movings = {n: open_input(s, f"moving {s}", spacing=image_spacing(args, "moving")) for n, s in zip(names, args.movings)}
    session.data_bytes = fixed.nbytes + sum(m.nbytes for m in movings.values())
    out = prepare_folder(args.output, args.overwrite)
    check_not_input([out / n for n in names] + [out / "report.json"], input_paths(args.fixed, *args.movings), folder=out)
    piecewise: Any = False
    if args.piecewise:
        piecewise = {"blocksize": args.blocksize, "quality": args.quality}  # align_piecewise's default field grid
    series = align_series(fixed, movings, steps, piecewise=piecewise, chain=args.chain, seed=args.seed)

    with PeakMemory() as memory, dask_scheduler(session), output_guard(out, folder=True), output_format(args.ome_zarr_version):
        with session.progress.phase("registration"):
            done = series.compute()
            rows = done.report()
        files: dict[str, list[str]] = {}
        for n in names:
            (out / n).mkdir(exist_ok=True)
            own = done.pairs[n][1]
            save_affine(own[0], out / n / "affine.txt", overwrite=True)
            written = [f"{n}/affine.txt"]
            if len(own) > 1:
                save_transform(own[1], out / n / "field.ome.zarr", overwrite=True)
                written.append(f"{n}/field.ome.zarr")
            files[n] = written + (files[done.pairs[n][0]] if args.chain and done.pairs[n][0] != "fixed" else [])
        quality = {}
        if not args.no_image:
            with session.progress.phase("aligned images"):
                for n in names:
                    to_zarr(apply_transform(fixed, movings[n], done.transforms[n], order=args.order), out / n / "aligned.ome.zarr", overwrite=True)
            with session.progress.phase("quality control"):
                from ..io.open import open_image

                quality = {n: float(pearson(fixed, open_image(out / n / "aligned.ome.zarr"))) for n in names}
        report = session.report(
            "align-series",
            memory,
            fixed=describe(fixed, args.fixed),
            rounds={
                n: {"moving": describe(movings[n], s), "reference": done.pairs[n][0], "transforms": files[n],
                    "pearson_after": quality.get(n)}
                for n, s in zip(names, args.movings)
            },
            steps=[list(s) for s in steps],
            steps_in_effect=steps_in_effect(steps),
            table=rows,
        )
        write_json(out / "report.json", report)
    seconds = session.progress.phases["registration"]["seconds"]
    session.say(f"registered {len(names)} rounds in {seconds:.1f} s ({'each to the previous' if args.chain else 'each to FIXED'})")
    for n in names:
        after = f"; Pearson(fixed, aligned) {quality[n]:.3f}" if n in quality else ""
        session.say(f"  {n:<12s} FIXED -> {n}: [{', '.join(files[n])}] (lazyreg order: the last applied first){after}")
    session.say(f"wrote {out}: {', '.join(names)}, report.json")


def check_series_args(args: argparse.Namespace) -> None:
    """Errors of ``align-series`` arguments that argparse cannot see.

    Examples
    --------
    >>> import argparse
    >>> from lazyreg.cli.series_command import check_series_args
    >>> check_series_args(argparse.Namespace(blocksize=(64, 64, 64), quality=None, piecewise=False))
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: --blocksize applies with --piecewise
    """
    for name, value in (("--blocksize", args.blocksize), ("--quality", args.quality)):
        if value is not None and not args.piecewise:
            raise LazyregError(f"{name} applies with --piecewise")
