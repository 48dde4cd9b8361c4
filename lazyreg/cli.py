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
    i.add_argument("path", help="image path; PATH:GROUP selects a group/dataset (e.g. fix.n5:lowres)")
    i.add_argument("--group", default=None, help="group or dataset inside the container (e.g. lowres)")
    a = sub.add_parser("align", help="global alignment (e.g. ransac + affine); writes transform, image, report")
    a.add_argument("fixed", help="fixed image; PATH:GROUP selects a group/dataset (e.g. fix.n5:lowres)")
    a.add_argument("moving", help="moving image; PATH:GROUP as for fixed")
    a.add_argument("-o", "--output", required=True, help="output folder (refused if it exists, unless --overwrite)")
    a.add_argument(
        "--steps",
        default="ransac,affine",
        help="a JSON file with [[name, {options}], ...], or step names separated by commas (default ransac,affine)",
    )
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    a.add_argument("--no-image", action="store_true", help="do not write the aligned image")
    return p


def _split_path(spec: str, group: str | None = None) -> tuple[str, str | None]:
    """``PATH:GROUP`` -> (PATH, GROUP) when PATH exists and the whole string does not."""
    from pathlib import Path

    if group is None and ":" in spec and not Path(spec).exists():
        head, _, tail = spec.rpartition(":")
        if Path(head).exists():
            return head, tail
    return spec, group


def _open(spec: str):
    from .io.open import open_image

    path, group = _split_path(spec)
    return open_image(path, group=group)


def _steps_arg(text: str):
    import json
    from pathlib import Path

    p = Path(text)
    if p.suffix.lower() == ".json" or p.exists():
        if not p.exists():
            raise LazyregError(f"--steps: {p} does not exist")
        try:
            return json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise LazyregError(f"--steps: {p} is not valid JSON ({e.msg}, line {e.lineno})") from None
    return [(name.strip(), {}) for name in text.split(",") if name.strip()]


def _align(args) -> None:
    import json
    import shutil
    import time
    from pathlib import Path

    import numpy as np

    from . import __version__
    from .align.steps import align
    from .io.omezarr import to_zarr
    from .io.transform_files import save_affine
    from .metrics import pearson
    from .resample import apply_transform

    out = Path(args.output)
    steps = _steps_arg(args.steps)
    fixed = _open(args.fixed)
    moving = _open(args.moving)
    if out.exists() and not args.overwrite:
        raise LazyregError(f"output: {out} exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    affine = align(fixed, moving, steps, seed=args.seed).compute()
    seconds = time.perf_counter() - t0
    if out.exists():  # --overwrite: replaced only once the new result exists
        shutil.rmtree(out)
    out.mkdir(parents=True)
    save_affine(affine, out / "affine.txt")
    save_affine(affine, out / "affine.tfm")
    before = pearson(fixed, apply_transform(fixed, moving))
    aligned = apply_transform(fixed, moving, [affine])
    after = pearson(fixed, aligned)
    if not args.no_image:
        to_zarr(aligned, out / "aligned.ome.zarr")
    report = {
        "lazyreg": __version__,
        "fixed": args.fixed,
        "moving": args.moving,
        "steps": steps,
        "seed": args.seed,
        "seconds": seconds,
        "pearson_before": before,
        "pearson_after": after,
        "affine": np.asarray(affine).tolist(),
        "report": affine.report,
    }
    (out / "report.json").write_text(json.dumps(report, indent=2, default=_jsonable))
    print(f"aligned in {seconds:.1f} s; Pearson before {before:.3f}, after {after:.3f}")
    print(f"wrote {out}/affine.txt (zyx), affine.tfm (ITK), report.json" + ("" if args.no_image else ", aligned.ome.zarr"))


def _jsonable(o):
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    return str(o)


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
            _info(*_split_path(args.path, args.group))
        elif args.command == "align":
            _align(args)
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
