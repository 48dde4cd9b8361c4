"""The built-in demo: a synthetic pair with a known affine, written, reopened lazily and resampled."""

from __future__ import annotations

import logging
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .data import warped_pair
from .errors import LazyregError
from .images import Grid, grid_of
from .io.omezarr import to_zarr
from .io.open import open_image
from .io.transform_files import save_transform
from .metrics import pearson, transform_error
from .registration.block_report import block_summary, summary_lines
from .registration.piecewise import align_piecewise
from .registration.pipeline import align
from .resample import apply_transform
from .transforms.affine import Affine
from .transforms.field import DisplacementField

__all__ = ["run_demo", "opening_hints"]

SHAPE = (64, 160, 160)
SPACING = (2.0, 0.8, 0.8)
AMPLITUDE = 2.4  # peak of the known deformation, micrometres (3 voxels in x)
STEPS = [("ransac", {"blob_sizes": [2, 8]}), ("affine", {})]
PIECEWISE_STEPS = [("affine", {})]
BLOCKSIZE = (32, 64, 64)
OVERLAP = 0.25
FOREGROUND_FRACTION = 0.1  # the phantom is sparse: a block needs 10% of its voxels on objects


@contextmanager
def _step(timings: dict, label: str, say: Callable[[str], None]) -> Iterator[None]:
    t0 = time.perf_counter()
    yield
    timings[label] = time.perf_counter() - t0
    say(f"  {label:<44s} {timings[label]:7.2f} s")


def run_demo(output: str | Path | None = None, *, overwrite: bool = False, say: Callable[[str], None] = print) -> dict:
    """Run the demo; return a summary (paths, timings, similarity and error figures).

    Builds a seeded synthetic pair related by a known affine on top of a known smooth deformation
    (anisotropic spacing), writes both as OME-Zarr and reopens them lazily; aligns globally
    (ransac + affine) on a 2x downsampled level, then piecewise (blockwise affine + B-spline) at
    full resolution on top of the global affine, streams ``[affine, field]`` applied to the moving
    image into OME-Zarr, and compares everything with the truth (Pearson correlations, and the
    mean distance in voxels between points mapped by the estimate and by the truth).

    Parameters
    ----------
    output : str or path-like, optional
        Folder of the outputs (created); default a new temporary folder. An existing, non-empty
        folder is refused unless ``overwrite``.
    overwrite : bool, optional
        Write into an existing, non-empty folder, replacing the demo's outputs.
    say : callable, optional
        Called with each line of the running commentary (default ``print``).

    Returns
    -------
    dict
        ``output``, ``timings`` (seconds per stage), ``pearson_before``, ``pearson_affine``,
        ``pearson_after``, ``error_affine`` and ``error_total`` (mean mapped-point error vs the
        truth, in voxels), ``blocks`` (piecewise blocks by status: ``ok``, ``unchanged``,
        ``skipped``, ``failed``; statuses with no block left out) and ``block_gain`` (mean
        Pearson gain of the ok blocks).

    Examples
    --------
    The demo takes about half a minute on two cores, so only its set-up runs here:

    >>> from lazyreg.demo import SHAPE, SPACING, STEPS, run_demo
    >>> SHAPE, SPACING, STEPS
    ((64, 160, 160), (2.0, 0.8, 0.8), [('ransac', {'blob_sizes': [2, 8]}), ('affine', {})])
    >>> summary = run_demo(say=lambda line: None)   # doctest: +SKIP
    >>> summary["pearson_after"] > 0.9   # doctest: +SKIP
    True
    """
    if output is None:
        out = Path(tempfile.mkdtemp(prefix="lazyreg-demo-"))
    else:
        out = Path(output)
        if out.exists() and any(out.iterdir()) and not overwrite:
            raise LazyregError(f"output: {out} exists and is not empty; pass --overwrite or choose another folder")
        out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    quiet = logging.NullHandler()  # block outcomes are printed below from the report
    logging.getLogger("lazyreg").addHandler(quiet)
    try:
        return _run(out, overwrite, say, timings)
    finally:
        logging.getLogger("lazyreg").removeHandler(quiet)


def _run(out: Path, overwrite: bool, say: Callable[[str], None], timings: dict) -> dict:
    say(f"lazyreg demo -> {out}")
    with _step(timings, "build synthetic pair (seed 0)", say):
        fixed_mem, moving_mem, truth, true_disp = warped_pair(SHAPE, SPACING, seed=0, noise=0.02, amplitude=AMPLITUDE)
    with _step(timings, "write fixed and moving as OME-Zarr", say):
        to_zarr(fixed_mem, out / "fixed.ome.zarr", chunks=(32, 64, 64), overwrite=overwrite)
        to_zarr(moving_mem, out / "moving.ome.zarr", chunks=(32, 64, 64), overwrite=overwrite)
    with _step(timings, "open both lazily", say):
        fixed = open_image(out / "fixed.ome.zarr")
        moving = open_image(out / "moving.ome.zarr")
    gf, gm = grid_of(fixed), grid_of(moving)
    say(f"    fixed  {gf.shape} spacing {gf.spacing} origin {gf.origin} chunks {fixed.data.chunksize}")
    say(f"    moving {gm.shape} spacing {gm.spacing} origin {gm.origin} chunks {moving.data.chunksize}")
    say(f"    truth: moving = A(x + d(x)), d up to {np.abs(true_disp).max():.1f} um")
    with _step(timings, "build the whole pipeline graph (no compute)", say):
        lazy_affine = align(fixed[:, ::2, ::2], moving[:, ::2, ::2], STEPS, seed=0)
        lazy_field = align_piecewise(
            fixed, moving, PIECEWISE_STEPS, blocksize=BLOCKSIZE, overlap=OVERLAP, static_transforms=[lazy_affine], seed=0,
            foreground_fraction=FOREGROUND_FRACTION,
        )
        before = apply_transform(fixed, moving, [])
        aligned = apply_transform(fixed, moving, [lazy_affine, lazy_field])
    say(
        f"    global steps {STEPS} on a 2x downsampled level; piecewise {PIECEWISE_STEPS}, blocksize "
        f"{BLOCKSIZE}; {len(aligned.data.__dask_graph__())} tasks, all lazy"
    )
    with _step(timings, "global align (ransac + affine, 2x downsampled)", say):
        affine = lazy_affine.compute()
    for r in affine.report:
        keys = [k for k in ("fixed_blobs", "moving_blobs", "inliers", "iterations", "metric_value") if k in r]
        figures = {k: round(r[k], 3) if isinstance(r[k], float) else r[k] for k in keys}
        say(f"    {r['step']:<7s} {r['seconds_total']:6.2f} s  {figures}")
    with _step(timings, "piecewise align (blocks + blending)", say):
        field = align_piecewise(
            fixed, moving, PIECEWISE_STEPS, blocksize=BLOCKSIZE, overlap=OVERLAP, static_transforms=[affine], seed=0,
            foreground_fraction=FOREGROUND_FRACTION,
        ).compute()
    blocks = block_summary(field.report)  # counts by status and kind of reason; gain over the ok blocks
    for line in summary_lines(blocks):
        say(f"    {line}")
    with _step(timings, "resample [affine, field] + stream aligned.ome.zarr", say):
        aligned = apply_transform(fixed, moving, [affine, field])
        to_zarr(aligned, out / "aligned.ome.zarr", overwrite=overwrite)
        save_transform(affine, out / "affine.txt", overwrite=overwrite)
        save_transform(field, out / "field.ome.zarr", overwrite=overwrite)
    with _step(timings, "compare with the truth", say):
        r_before = pearson(fixed, before)
        r_affine = pearson(fixed, apply_transform(fixed, moving, [affine]))
        r_after = pearson(fixed, open_image(out / "aligned.ome.zarr"))
        true_transforms = [Affine(truth), _field(true_disp, gf)]
        r_truth = pearson(fixed, apply_transform(fixed, moving, true_transforms))
        err_affine = float(transform_error([affine], true_transforms, gf, step=4).mean())
        err_total = float(transform_error([affine, field], true_transforms, gf, step=4).mean())
    say(
        f"    Pearson(fixed, moving on fixed grid): before {r_before:.3f}, affine only {r_affine:.3f}, "
        f"after {r_after:.3f} (truth: {r_truth:.3f})"
    )
    say(f"    mean mapped-point error vs the truth: affine only {err_affine:.2f} voxels, affine + field {err_total:.2f} voxels")
    say("    recovered affine vs true affine (fixed -> moving, zyx, physical):")
    for row_a, row_b in zip(np.asarray(affine), np.asarray(truth)):
        say("      " + "  ".join(f"{v:9.4f}" for v in row_a) + "   |" + "  ".join(f"{v:9.4f}" for v in row_b))
    for line in opening_hints(out):
        say(line)
    say(f"Total {sum(timings.values()):.1f} s")
    return {
        "output": str(out),
        "timings": timings,
        "pearson_before": r_before,
        "pearson_affine": r_affine,
        "pearson_after": r_after,
        "error_affine": err_affine,
        "error_total": err_total,
        "blocks": {status: n for status, n in blocks["by_status"].items() if n},
        "block_gain": blocks["mean_gain"],
    }


def opening_hints(out: Path) -> list[str]:
    """How to open the demo's outputs: the lines the demo ends with.

    Examples
    --------
    >>> from pathlib import Path
    >>> from lazyreg.demo import opening_hints
    >>> print(opening_hints(Path("demo"))[2])
      python:  lazyreg.open_image("demo/aligned.ome.zarr"); lazyreg.load_transform("demo/field.ome.zarr")
    """
    return [
        f"Outputs in {out}: fixed.ome.zarr, moving.ome.zarr, aligned.ome.zarr (OME-Zarr 0.5 images), "
        "field.ome.zarr (displacement field), affine.txt (zyx 4x4 matrix). To look at them:",
        f"  shell:   lazyreg info {out / 'aligned.ome.zarr'}",
        f'  python:  lazyreg.open_image("{out / "aligned.ome.zarr"}"); lazyreg.load_transform("{out / "field.ome.zarr"}")',
        f"  napari:  napari --plugin napari-ome-zarr {out / 'fixed.ome.zarr'} {out / 'aligned.ome.zarr'}",
        "  Fiji:    File > Import > HDF5/N5/Zarr/OME-NGFF ... (or Plugins > BigDataViewer > HDF5/N5/Zarr/OME-NGFF "
        "Viewer), with a Fiji whose N5 plugins read zarr v3",
    ]


def _field(values: np.ndarray, g: Grid) -> DisplacementField:
    return DisplacementField.from_array(values, g.spacing, g.origin)
