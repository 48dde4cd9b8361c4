"""The alignment commands: ``align`` (global steps) and ``align-piecewise`` (blocks blended into a field).

Both write into a folder OUT: the transforms, the aligned image (unless ``--no-image``), a
``report.json`` and pictures of the outcome (with matplotlib).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .inputs import image_spacing, input_paths, load_transforms, open_input, read_steps
from .outputs import check_not_input, describe, output_guard, pictures, prepare_folder, quality_pictures, write_json
from ..result_cache import compute_together
from .session import Session, dask_scheduler

__all__ = ["align_command", "piecewise_command", "steps_in_effect"]


ALIGN_OUTPUTS = ("affine.txt", "affine.tfm", "field.ome.zarr", "aligned.ome.zarr", "report.json", "overlay_before.png", "overlay_after.png")
PIECEWISE_OUTPUTS = ("field.ome.zarr", "aligned.ome.zarr", "report.json", "overlay_before.png", "overlay_after.png", "block_map.png")


def align_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg align``: global alignment by a pipeline of steps; transforms, image, report, pictures.

    The steps are validated, and the inputs and OUT checked, before the dask scheduler starts.
    An alignment takes seconds even on small data; the example shows the arguments.

    Examples
    --------
    >>> from lazyreg.cli.parser import build_parser
    >>> args = build_parser().parse_args(["align", "fix.n5:lowres", "mov.n5:lowres", "-o", "out", "--steps", "steps.json"])
    >>> args.command, args.steps, args.seed, args.order, args.no_image
    ('align', 'steps.json', 0, 1, False)
    """
    import numpy as np

    from ..io.omezarr import output_format
    from ..io.transform_files import save_affine, save_transform
    from ..progress import PeakMemory
    from ..registration.pipeline import align

    steps = read_steps(args.steps)
    fixed = open_input(args.fixed, "fixed", spacing=image_spacing(args, "fixed"))
    moving = open_input(args.moving, "moving", spacing=image_spacing(args, "moving"))
    session.data_bytes = fixed.nbytes + moving.nbytes
    out = prepare_folder(args.output, args.overwrite)
    check_not_input([out / n for n in ALIGN_OUTPUTS], input_paths(args.fixed, args.moving), folder=out)
    lazy = align(fixed, moving, steps, seed=args.seed)  # validates everything before any compute

    with PeakMemory() as memory, dask_scheduler(session), output_guard(out, folder=True), output_format(args.ome_zarr_version):
        with session.progress.phase("global alignment"):
            affine, field, step_reports = _compute_alignment(lazy)
        align_seconds = session.progress.phases["global alignment"]["seconds"]
        written = ["affine.txt", "affine.tfm"]
        save_affine(affine, out / "affine.txt", overwrite=True)
        save_affine(affine, out / "affine.tfm", overwrite=True)
        if field is not None:
            save_transform(field, out / "field.ome.zarr", overwrite=True)
            written.append("field.ome.zarr")
        transforms = [affine] if field is None else [affine, field]
        quality = _aligned_and_quality(session, args, out, fixed, moving, [], transforms, written)
        report = session.report(
            "align",
            memory,
            fixed=describe(fixed, args.fixed),
            moving=describe(moving, args.moving),
            steps=[list(st) for st in steps],
            steps_in_effect=steps_in_effect(steps),
            step_reports=list(step_reports),
            affine=np.asarray(affine.matrix).tolist(),
            field=None if field is None else {"shape": list(field.grid.shape), "spacing": list(field.grid.spacing)},
            **_quality_fields(quality, align_seconds, written),
        )
        write_json(out / "report.json", report)
    session.say(f"aligned in {align_seconds:.1f} s; Pearson(fixed, moving) before {quality['before']:.3f}, after {quality['after']:.3f}")
    for r in step_reports:
        figures = {k: r[k] for k in ("inliers", "iterations", "metric_value") if k in r}
        session.say(f"  {r.get('step', '?'):<7s} {_fmt(figures)}")
    session.say(f"wrote {out}: {', '.join(written + ['report.json'])}")


def steps_in_effect(steps: Any) -> list:
    """Every step with every option it runs with, defaults included (for ``report.json``).

    Examples
    --------
    >>> from lazyreg.cli.align_commands import steps_in_effect
    >>> name, options = steps_in_effect("ransac,affine")[1]
    >>> name, options["metric"]
    ('affine', 'correlation')
    """
    from ..registration.steps import parse_steps

    return [[call.name, call.in_effect()] for call in parse_steps(steps)]


def _compute_alignment(lazy: Any) -> tuple[Any, Any, Any]:
    """(Affine, DisplacementField or None, step reports) from the lazy result of ``align``, in one compute."""
    from ..transforms.affine import Affine
    from ..transforms.field import DisplacementField

    if isinstance(lazy, list):
        aff, fld = lazy
        matrix, rep, values = compute_together(aff.matrix, aff.report, fld.data.data)
        field = DisplacementField.from_array(values, fld.grid.spacing, fld.grid.origin, report=rep)
    else:
        matrix, rep = compute_together(lazy.matrix, lazy.report)
        field = None
    return Affine(matrix, report=rep), field, rep


def _aligned_and_quality(
    session: Session,
    args: argparse.Namespace,
    out: Path,
    fixed: Any,
    moving: Any,
    before: list,
    after: list,
    written: list,
    *,
    field: Any = None,
    blocks: list | None = None,
) -> dict:
    """Write the aligned image (unless --no-image) and the pictures; Pearson before / after.

    ``before`` and ``after`` are the transform lists of the two comparisons; the names written
    are appended to ``written``. Returns ``before``, ``after`` (the Pearson correlations),
    ``pictures`` (for the report) and, with a ``field``, ``jacobian`` (its determinant's summary).
    ``blocks`` (a piecewise block report) adds the block map to the pictures.
    """
    from ..io.omezarr import to_zarr
    from ..io.open import open_image
    from ..metrics import pearson
    from ..resample import apply_transform

    aligned = apply_transform(fixed, moving, after, order=args.order)
    if not args.no_image:
        with session.progress.phase("aligned image"):
            to_zarr(aligned, out / "aligned.ome.zarr", overwrite=True)
        written.append("aligned.ome.zarr")
        aligned = open_image(out / "aligned.ome.zarr")
    with session.progress.phase("quality control"):
        before_img = apply_transform(fixed, moving, before)
        quality = {"before": pearson(fixed, before_img), "after": pearson(fixed, aligned)}
        if field is not None:
            quality["jacobian"] = _jacobian_summary(field)
        quality["pictures"] = pictures(session, out, quality_pictures(fixed, before_img, aligned, blocks))
    written += quality["pictures"].get("written", [])
    return quality


def _quality_fields(quality: dict, align_seconds: float, written: list) -> dict:
    """The last fields of an alignment's report: Pearson before / after, timing, pictures, outputs."""
    return {
        "pearson_before": quality["before"],
        "pearson_after": quality["after"],
        "alignment_seconds": align_seconds,
        "pictures": quality["pictures"],
        "outputs": written + ["report.json"],
    }


def _jacobian_summary(field: Any) -> dict:
    import dask

    from ..transforms.jacobian import jacobian_determinant

    det = jacobian_determinant(field)
    jmin, jmax, folded = dask.compute(det.data.min(), det.data.max(), (det.data <= 0).mean())
    return {"min": float(jmin), "max": float(jmax), "folded_fraction": float(folded)}


def _fmt(d: dict) -> str:
    """``key value, ...`` with floats at 3 decimals (in scientific notation below 0.001).

    >>> _fmt({"inliers": 40, "metric_value": -0.812345, "tiny": 1.5e-05})
    'inliers 40, metric_value -0.812, tiny 1.500e-05'
    """

    def text(v: Any) -> str:
        return f"{v:.3e}" if isinstance(v, float) and 0 < abs(v) < 1e-3 else f"{v:.3f}" if isinstance(v, float) else str(v)

    return ", ".join(f"{k} {text(v)}" for k, v in d.items())


def piecewise_command(args: argparse.Namespace, session: Session) -> None:
    """``lazyreg align-piecewise``: blockwise alignment blended into one displacement field.

    Writes the field, the image aligned through ``[static..., field]``, a report with one row per
    block and a Jacobian determinant summary, and pictures (overlays, block map). The example
    shows the arguments (a run takes seconds even on small data).

    Examples
    --------
    >>> from lazyreg.cli.parser import build_parser
    >>> args = build_parser().parse_args(["align-piecewise", "fix.zarr", "mov.zarr", "-o", "out", "--steps", "affine",
    ...                                   "--static", "affine.txt", "--blocksize", "64,128,128"])
    >>> args.static, args.blocksize, args.overlap
    (['affine.txt'], (64, 128, 128), 0.25)
    """
    from ..io.omezarr import output_format
    from ..io.transform_files import load_transform, save_field_zarr
    from ..progress import PeakMemory
    from ..registration.piecewise import align_piecewise, default_coarse, quality_steps

    steps = list(quality_steps(args.quality, None if args.steps is None else read_steps(args.steps)))
    if args.coarse is None:  # as align_piecewise decides it from quality and steps (resolved above)
        args.coarse = default_coarse(args.quality, args.steps)
    fixed = open_input(args.fixed, "fixed", spacing=image_spacing(args, "fixed"))
    moving = open_input(args.moving, "moving", spacing=image_spacing(args, "moving"))
    session.data_bytes = fixed.nbytes + moving.nbytes
    static = load_transforms(args.static, "--static")
    out = prepare_folder(args.output, args.overwrite)
    check_not_input([out / n for n in PIECEWISE_OUTPUTS], input_paths(args.fixed, args.moving, *args.static), folder=out)
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
        coarse=args.coarse,
    )
    args.field_spacing = tuple(float(s) for s in lazy.grid.spacing)  # in effect (default included), for the report

    with PeakMemory() as memory, dask_scheduler(session), output_guard(out, folder=True), output_format(args.ome_zarr_version):
        with session.progress.phase("piecewise alignment"):
            store = save_field_zarr(lazy, out / "field.ome.zarr", overwrite=True, compute=False)
            _, blocks = compute_together(store, lazy.report)
        align_seconds = session.progress.phases["piecewise alignment"]["seconds"]
        written = ["field.ome.zarr"]
        field = load_transform(out / "field.ome.zarr")
        quality = _aligned_and_quality(session, args, out, fixed, moving, static, [*static, field], written, field=field, blocks=blocks)
        report = session.report(
            "align-piecewise",
            memory,
            fixed=describe(fixed, args.fixed),
            moving=describe(moving, args.moving),
            steps=[list(s) for s in steps],
            steps_in_effect=steps_in_effect(steps),
            static=list(args.static),
            field={"shape": list(field.grid.shape), "spacing": list(field.grid.spacing), "origin": list(field.grid.origin)},
            **_block_summary(blocks),
            blocks=list(blocks),
            jacobian=quality["jacobian"],
            **_quality_fields(quality, align_seconds, written),
        )
        write_json(out / "report.json", report)
    _say_piecewise(session, blocks, align_seconds, quality)
    session.say(f"wrote {out}: {', '.join(written + ['report.json'])}")


def _block_summary(blocks: list) -> dict:
    """The report's block figures: ``block_counts`` (blocks by status), ``mean_block_gain`` (mean
    Pearson gain of the ok blocks) and ``block_summary`` (counts by status and by kind of reason,
    the gain and the steps kept: :func:`lazyreg.registration.block_report.block_summary`), at full precision."""
    from ..registration.block_report import block_summary

    summary = block_summary(blocks)
    return {
        "block_counts": {s: n for s, n in summary["by_status"].items() if n},
        "mean_block_gain": summary["mean_gain"],
        "block_summary": summary,
    }


def _say_piecewise(session: Session, blocks: list, align_seconds: float, quality: dict) -> None:
    """Print the outcome: blocks by status, one line per kind of reason, gains (floats: 3 decimals)."""
    from ..registration.block_report import summary_lines

    summary = _block_summary(blocks)["block_summary"]
    head, *rest = summary_lines(summary)
    session.say(f"piecewise alignment in {align_seconds:.1f} s; {head}")
    for line in rest:
        session.say(line if line.startswith(" ") else f"  {line}")
    session.say(
        f"Pearson(fixed, moving) before {quality['before']:.3f} (static transforms only), after {quality['after']:.3f}"
    )
    if not summary["by_status"].get("ok"):
        session.info("warning: no block was aligned; the field is zero (see 'reason' in report.json)")
    folded = quality["jacobian"]["folded_fraction"]
    if folded > 0:
        session.info(f"warning: the field folds on {100 * folded:.2f}% of its voxels (Jacobian determinant <= 0)")
