"""``align_piecewise``: lazy blockwise registration blended into one smooth displacement field.

The graph, built without computing anything:

1. one task per block reads the block's fixed region (a slice of ``fixed``) and the moving region
   resampled onto the same grid through ``static_transforms`` (one chunk of
   :func:`lazyreg.apply_transform`, which reads only what it needs even when the static transform
   is lazy), decides whether the block is worth aligning (foreground, inside the moving volume),
   runs the steps and returns the local transform as a few parameters plus a report row;
2. one small task per block fills a block without a result from its neighbours' parameters
   (:func:`lazyreg.registration.blend.fill_block`);
3. one task per chunk of the field blends the (at most 27) blocks whose weights reach it.

Memory per task: a block task holds its fixed and moving regions (``(blocksize * (1 + 2 overlap))^3``
voxels each, as float32) and the working copies of the registration; a field task holds one
chunk of the field plus a slab of points. Block results are kilobytes.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
from scipy import ndimage as ndi
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..errors import LazyregError
from ..images import Grid, grid_of, image, validate_image
from ..io.source import region_array
from ..resample import apply_transform, resample_array
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.points import normalize_transforms, transform_points
from .blend import field_chunk, fill_block
from .blocks import BlockLayout, block_layout
from .steps import _check_mask, _deform_grid, deform_options, parse_steps, run_steps

__all__ = ["align_piecewise", "MIN_INSIDE"]

log = logging.getLogger(__name__)

#: A block is aligned only if at least this fraction of its region maps inside the moving volume.
MIN_INSIDE = 0.5
#: Automatic foreground: voxels (after a Gaussian of ``FOREGROUND_SIGMA`` voxels) brighter than the
#: 1st percentile of fixed plus this fraction of its 1st-99th percentile range. On the tutorial
#: light-sheet pair this keeps tissue (91% of the volume) and drops only the empty margin.
FOREGROUND_LEVEL = 0.05
FOREGROUND_SIGMA = 2.0
#: Voxels of fixed sampled (at most) to find the automatic foreground threshold.
THRESHOLD_SAMPLES = 2_000_000
#: Lattice step (voxels) of the test of which block voxels map inside the moving volume.
_INSIDE_STEP = 4
#: Values per float64 slice in the block metric (8 MiB per temporary).
_PEARSON_SLICE = 1 << 20


@dataclass(frozen=True)
class _BlockTask:
    index: tuple[int, int, int]
    region: Grid
    steps: tuple
    field_grid: Grid | None
    moving_extent: tuple[np.ndarray, np.ndarray]
    static_kinds: tuple  # per static transform: "affine" (matrix follows), "field" (object), "skip"
    foreground_fraction: float
    seed: int
    has_mask: bool


def _auto_threshold(sample: np.ndarray) -> float:
    v = np.asarray(sample, dtype=np.float32).ravel()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo + FOREGROUND_LEVEL * (hi - lo))


def _threshold(fixed: xr.DataArray, given: float | None) -> Any:
    """The foreground threshold: given, or from a strided sample of ``fixed`` (lazy)."""
    if given is not None:
        return float(given)
    step = max(1, int(np.ceil((np.prod(fixed.shape) / THRESHOLD_SAMPLES) ** (1 / 3))))
    sample = fixed.data[::step, ::step, ::step]
    if isinstance(sample, da.Array):
        return dask.delayed(_auto_threshold, pure=True)(sample)
    return _auto_threshold(np.asarray(sample))


def _static_args(static: list) -> tuple[tuple, list]:
    """What the block tasks need to map their corners: affine matrices (maybe lazy) and fields."""
    kinds, args = [], []
    for t in static:
        if isinstance(t, Affine):
            kinds.append("affine")
            args.append(t.matrix)
        elif not t.is_lazy:
            kinds.append("field")
            args.append(t)
        else:
            kinds.append("skip")  # a lazy field is left out of the inside test (see docs)
    return tuple(kinds), args


def _inside_mask(task: _BlockTask, static_args: Sequence[Any]) -> np.ndarray:
    """Voxels of the block whose static mapping lands inside the moving volume (block shape, bool).

    Evaluated on a lattice every ``_INSIDE_STEP`` voxels (always including the last voxel) and
    spread to the block by nearest lattice point: the static transforms are smooth.
    """
    g = task.region
    axes = [np.unique(np.r_[np.arange(0, n, _INSIDE_STEP), n - 1]) for n in g.shape]
    pts = g.to_physical(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(float))
    ts = []
    it = iter(static_args)
    for kind in task.static_kinds:
        if kind == "affine":
            ts.append(Affine(np.asarray(next(it), dtype=float)))
        elif kind == "field":
            ts.append(next(it))
    mapped = transform_points(pts, ts) if ts else pts
    lo, hi = task.moving_extent
    lattice = np.all((mapped >= lo) & (mapped <= hi), axis=1).reshape([len(a) for a in axes])
    nearest = [np.abs(np.arange(n)[:, None] - a[None, :]).argmin(1) for n, a in zip(g.shape, axes)]
    return lattice[np.ix_(*nearest)]


def _pearson(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float | None:
    """Pearson correlation of ``a`` and ``b`` (over ``where``); None if either is constant.

    Accumulated in float64 over slices of ``_PEARSON_SLICE`` values, so that a block's metrics need
    no full-size float64 copies (np.corrcoef of a 160^3 block held ~200 MiB of temporaries).
    """
    a, b = a.ravel(), b.ravel()
    if where is not None:
        a, b = a[where.ravel()], b[where.ravel()]
    if a.size < 2:
        return None
    ma, mb = a.mean(dtype=np.float64), b.mean(dtype=np.float64)
    saa = sbb = sab = 0.0
    for i in range(0, a.size, _PEARSON_SLICE):
        x = a[i : i + _PEARSON_SLICE].astype(np.float64) - ma
        y = b[i : i + _PEARSON_SLICE].astype(np.float64) - mb
        saa, sbb, sab = saa + x @ x, sbb + y @ y, sab + x @ y
    if saa <= 0 or sbb <= 0:
        return None
    return float(sab / np.sqrt(saa * sbb))


def _warped(moving: np.ndarray, g: Grid, matrix: np.ndarray, field: tuple | None) -> np.ndarray:
    steps = [("affine", matrix, None)]
    if field is not None:
        steps.append(("field", field[0], field[1]))
    # NaN where the block's own transform leaves the block's moving region: not data, not compared
    return resample_array(moving, g, g, steps, order=1, fill_value=np.nan, dtype=np.dtype(np.float32))


def _align_block(task: _BlockTask, fixed: np.ndarray, moving: np.ndarray, mask: Any, threshold: float, *static_args) -> dict:
    t0 = time.perf_counter()
    row: dict[str, Any] = {
        "index": task.index,
        "status": "ok",
        "reason": None,
        "foreground": None,
        "inside": None,
        "metric_before": None,
        "metric_after": None,
        "inliers": None,
        "seconds": None,
        "matrix": None,
        "field": None,
    }

    def done(status: str | None = None, reason: str | None = None) -> dict:
        if status is not None:
            row["status"], row["reason"] = status, reason
            log.warning("align_piecewise block %s %s: %s", task.index, status, reason)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    if task.has_mask:
        fg = np.asarray(mask, dtype=bool)
    else:
        fg = ndi.gaussian_filter(np.asarray(fixed, dtype=np.float32), FOREGROUND_SIGMA) > threshold
    row["foreground"] = round(float(fg.mean()), 4)
    if row["foreground"] < task.foreground_fraction:
        return done(
            "skipped",
            f"foreground {row['foreground']:.0%} of the block is below foreground_fraction "
            f"{task.foreground_fraction:.0%}",
        )
    inside = _inside_mask(task, static_args)
    row["inside"] = round(float(inside.mean()), 4)
    if row["inside"] < MIN_INSIDE:
        return done("skipped", f"only {row['inside']:.0%} of the block maps inside the moving volume")
    partial = not inside.all()
    # voxels mapping outside moving hold fill values, not data: leave them out of every metric
    compare = inside if partial else None
    g = task.region
    fixed_f = np.asarray(fixed, dtype=np.float32)
    moving_f = np.asarray(moving, dtype=np.float32)
    row["metric_before"] = _pearson(fixed_f, moving_f, compare)
    if row["metric_before"] is None:
        return done("skipped", "the fixed or the moving block is constant")
    fx = image(fixed_f, g.spacing, g.origin)
    mv = image(moving_f, g.spacing, g.origin)
    fm = None
    if task.has_mask or partial:
        fm = image(fg & inside if partial else fg, g.spacing, g.origin)
    # the moving block is on the same grid: its voxels outside ``inside`` are fill (and its edge)
    mm = image(inside, g.spacing, g.origin) if partial else None
    try:
        state = run_steps(
            list(task.steps), fx, mv, fixed_mask=fm, moving_mask=mm, seed=task.seed, field_grid=task.field_grid,
            threads=1,
        )
    except (LazyregError, RuntimeError, ValueError, np.linalg.LinAlgError) as e:
        return done("failed", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    for rep in state["reports"]:
        if rep.get("inliers") is not None:
            row["inliers"] = rep["inliers"]
    matrix = np.asarray(state["matrix"], dtype=float)
    field = None if state["field"] is None else (np.asarray(state["field"], dtype=np.float32), task.field_grid)
    if not np.all(np.isfinite(matrix)) or (field is not None and not np.all(np.isfinite(field[0]))):
        return done("failed", "the registration returned NaN or infinite values")
    warped = _warped(moving_f, g, matrix, field)
    valid = np.isfinite(warped)
    if compare is not None:
        valid &= compare
    # compare before and after on the same voxels: those the result maps inside the block
    row["metric_before"] = _pearson(fixed_f, moving_f, valid)
    row["metric_after"] = _pearson(fixed_f, np.nan_to_num(warped), valid)
    if row["metric_before"] is None:
        return done("failed", "the result maps (almost) the whole block outside its moving region")
    if row["metric_after"] is None or row["metric_after"] < row["metric_before"]:
        return done(
            "failed",
            f"the metric got worse (Pearson {row['metric_before']:.3f} -> {row['metric_after']})",
        )
    row["matrix"], row["field"] = matrix, field
    return done()


def _report_rows(*results: dict) -> list[dict]:
    keys = ("index", "status", "reason", "foreground", "inside", "metric_before", "metric_after", "inliers", "seconds")
    return [{k: r[k] for k in keys} for r in results]


def _field_grid(fixed: Grid, field_spacing: Any) -> Grid:
    if field_spacing is None:
        return fixed
    sp = np.broadcast_to(np.asarray(field_spacing, dtype=float), (3,)) if np.ndim(field_spacing) == 0 else np.asarray(field_spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise LazyregError(f"field_spacing: expected a positive number or 3 (z, y, x), got {field_spacing!r}")
    lo, hi = fixed.extent  # voxel edges; the field's centres cover the fixed centres
    first = np.asarray(fixed.origin)
    last = first + (np.asarray(fixed.shape) - 1) * np.asarray(fixed.spacing)
    shape = np.floor((last - first) / sp + 1e-9).astype(int) + 1
    shape = shape + (first + (shape - 1) * sp < last - 1e-9)
    return Grid(tuple(int(n) for n in shape), tuple(sp), tuple(first))


def _single(x: Any, collections: list) -> Any:
    """The key of a one-chunk dask array or a Delayed (noted in ``collections``), or the value."""
    if isinstance(x, da.Array):
        x = x.rechunk(x.shape) if x.npartitions != 1 else x
        collections.append(x)
        return (x.name,) + (0,) * x.ndim
    if isinstance(x, Delayed):
        collections.append(x)
        return x.key
    return x


def _inline(x: Any, collections: list) -> Any:
    """The task of a one-chunk dask array, nested in the block task so that it runs inside it.

    A block's inputs (its fixed region, its moving region resampled through the static transforms,
    its mask) are then read only when a worker aligns the block: as separate tasks, a
    dask.distributed worker reads them ahead of the block tasks and holds or spills them. The
    array's other tasks (e.g. the moving image's reader, shared by all blocks) stay graph tasks;
    its own key is left unreferenced and culled. Falls back to :func:`_single` for anything else.
    """
    if isinstance(x, da.Array) and x.npartitions == 1:
        layer = x.__dask_graph__().layers.get(x.name)
        t = layer.get((x.name,) + (0,) * x.ndim) if layer is not None else None
        if isinstance(t, tuple) and t and callable(t[0]):
            collections.append(x)
            return t
    return _single(x, collections)


def align_piecewise(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    steps: Sequence[Any],
    *,
    blocksize: int | Sequence[int],
    overlap: float = 0.5,
    static_transforms: Any = (),
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    foreground_fraction: float = 0.5,
    foreground_threshold: float | None = None,
    field_spacing: float | Sequence[float] | None = None,
    seed: int = 0,
) -> DisplacementField:
    """Align overlapping blocks of ``fixed`` to ``moving`` and blend them into one lazy field.

    Nothing is computed here. The result is a dask-backed :class:`DisplacementField` on the fixed
    grid (or a grid of ``field_spacing``) to be used after the static transforms:
    ``apply_transform(fixed, moving, [*static_transforms, field])``.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images, lazy (e.g. from :func:`lazyreg.open_image`) or in memory.
    steps : sequence of (name, options)
        As in :func:`lazyreg.align`: ``"ransac"``, ``"random"``, ``"rigid"``, ``"affine"``,
        ``"deform"`` (last). Run in every block, starting from the identity.
    blocksize : int or 3 ints
        Block core size in fixed voxels (z, y, x), at least 8 and at most the image size.
    overlap : float
        Padding added to each side of a block, as a fraction of ``blocksize``, in [0, 1): blocks
        are registered on core + padding and their weights ramp linearly across the padding.
    static_transforms : Affine, DisplacementField or list
        Map fixed to moving before the blocks are aligned (e.g. the lazy result of
        :func:`lazyreg.align` on a downsampled level). Each block reads only the moving region it
        maps to.
    fixed_mask : xarray.DataArray, optional
        Boolean image on the fixed grid: foreground for the block test and metric sampling.
    moving_mask : xarray.DataArray, optional
        Accepted for symmetry with :func:`lazyreg.align` but not used per block (the moving block
        is resampled; pass masks to the global step).
    foreground_fraction : float
        Blocks whose foreground (mask, or voxels above ``foreground_threshold``) covers less than
        this fraction of the block are skipped.
    foreground_threshold : float, optional
        Intensity threshold of the foreground (compared with the block smoothed by a Gaussian of
        2 voxels); default: the 1st percentile of a strided sample of ``fixed`` (about two million
        voxels) plus 5% of its 1st-99th percentile range, which keeps dim tissue and drops empty
        space.
    field_spacing : float or 3 floats, optional
        Spacing of the output field grid (physical units); default the fixed grid.
    seed : int
        Seed of every random choice; block ``i`` (C order) uses ``seed + 100 * i``.

    Returns
    -------
    DisplacementField
        Lazy; chunks follow the block cores. ``field.report`` is a lazy list with one row per block:
        ``index``, ``status`` (``"ok"``, ``"skipped"``, ``"failed"``), ``reason``, ``foreground``,
        ``inside`` (fraction mapping inside moving), ``metric_before``/``metric_after`` (Pearson in
        the block), ``inliers``, ``seconds``. ``field.compute()`` computes values and report together.

    Notes
    -----
    Skipped and failed blocks have no displacement of their own; their aligned neighbours' local
    transforms are extrapolated over them, so the field stays continuous (no hole, no spike).
    A block with no aligned neighbour contributes zero displacement. Skips and failures are logged
    at WARNING. A lazy displacement field among ``static_transforms`` is not used for the "inside
    the moving volume" test (its affines are).

    Examples
    --------
    >>> import lazyreg
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((32, 64, 64), seed=0)
    >>> field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=32,
    ...                                 static_transforms=[lazyreg.Affine(truth)])
    >>> field.is_lazy, field.grid.shape
    (True, (32, 64, 64))
    """
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    parsed = parse_steps(steps)
    deform = deform_options(parsed)
    g_fixed = grid_of(fixed, "fixed")
    g_moving = grid_of(moving, "moving")
    layout = block_layout(g_fixed, blocksize, overlap)
    static = normalize_transforms(static_transforms, "static_transforms")
    fixed_mask = _check_mask(fixed_mask, fixed, "fixed_mask")
    _check_mask(moving_mask, moving, "moving_mask")
    try:
        ff = float(foreground_fraction)
    except (TypeError, ValueError):
        ff = -1.0
    if not 0.0 <= ff <= 1.0:
        raise LazyregError(f"foreground_fraction: expected a fraction in [0, 1], got {foreground_fraction!r}")
    if foreground_threshold is not None and not np.isfinite(np.float64(foreground_threshold)):
        raise LazyregError(f"foreground_threshold: expected a finite number, got {foreground_threshold!r}")
    if not isinstance(seed, (int, np.integer)):
        raise LazyregError(f"seed: expected an integer, got {seed!r}")
    fgrid = _field_grid(g_fixed, field_spacing)

    token = tokenize(fixed.data, moving.data, parsed, layout, [getattr(t, "data", None) for t in static],
                     [getattr(t, "matrix", None) for t in static], None if fixed_mask is None else fixed_mask.data,
                     ff, foreground_threshold, fgrid, seed)
    block_name = f"lazyreg-block-{token}"
    fill_name = f"lazyreg-fill-{token}"
    field_name = f"lazyreg-piecewise-{token}"
    collections: list = []
    layer: dict = {}
    extent = g_moving.extent
    kinds, sargs = _static_args(static)
    static_keys = [_single(a, collections) for a in sargs]
    thr = _single(_threshold(fixed, foreground_threshold) if fixed_mask is None else 0.0, collections)

    # in-memory arrays become one dask array each, so block regions are views, not graph copies
    fixed_arr = fixed.data if isinstance(fixed.data, da.Array) else da.from_array(fixed.data, chunks=layout.blocksize)
    mask_arr = None
    if fixed_mask is not None:
        mask_arr = fixed_mask.data if isinstance(fixed_mask.data, da.Array) else da.from_array(fixed_mask.data, chunks=layout.blocksize)
    for n, idx in enumerate(layout.indices()):
        region = layout.region(idx)
        rgrid = layout.region_grid(idx)
        fx = region_array(fixed, region, data=fixed_arr)
        mv = apply_transform(
            image(da.zeros(rgrid.shape, dtype=np.uint8, chunks=-1), rgrid.spacing, rgrid.origin),
            moving,
            static,
            chunks=rgrid.shape,
        ).data
        mk = region_array(fixed_mask, region, data=mask_arr) if mask_arr is not None else None
        args = [_inline(x, collections) for x in (fx, mv, mk)]
        task = _BlockTask(
            index=idx,
            region=rgrid,
            steps=tuple(parsed),
            field_grid=_deform_grid(rgrid, deform) if deform is not None else None,
            moving_extent=extent,
            static_kinds=kinds,
            foreground_fraction=ff,
            seed=int(seed) + 100 * n,
            has_mask=fixed_mask is not None,
        )
        layer[(block_name,) + idx] = (_align_block, task, *args, thr, *static_keys)

    for idx in layout.indices():
        layer[(fill_name,) + idx] = (fill_block, layout, (block_name,) + idx, *[(block_name,) + j for j in layout.neighbours(idx)])

    # field chunks follow the block cores, mapped onto the field grid
    fchunks = []
    for a in range(3):
        edges = [fgrid.origin[a] + (i * layout.blocksize[a] - 0.5) * g_fixed.spacing[a] for i in range(layout.nblocks[a])]
        pos = fgrid.origin[a] + np.arange(fgrid.shape[a]) * fgrid.spacing[a]
        starts = sorted({int(np.searchsorted(pos, e)) for e in edges} | {0})
        starts = [s for s in starts if s < fgrid.shape[a]]
        fchunks.append(tuple(np.diff(starts + [fgrid.shape[a]]).tolist()))
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in fchunks]
    for cidx in itertools.product(*(range(len(c)) for c in fchunks)):
        lo_i = np.array([offsets[a][cidx[a]] for a in range(3)])
        shape = tuple(int(fchunks[a][cidx[a]]) for a in range(3))
        cg = Grid(shape, fgrid.spacing, tuple(fgrid.to_physical(lo_i[None].astype(float))[0]))
        lo = np.asarray(cg.origin)
        hi = lo + (np.asarray(shape) - 1) * np.asarray(cg.spacing)
        deps = [(fill_name,) + j for j in layout.blocks_touching(lo, hi)]
        layer[(field_name,) + cidx + (0,)] = (field_chunk, layout, cg, *deps)

    hlg = HighLevelGraph.from_collections(field_name, layer, dependencies=collections)
    values = da.Array(hlg, field_name, chunks=tuple(fchunks) + ((3,),), dtype=np.float32)
    report_name = f"lazyreg-piecewise-report-{token}"
    rows = {report_name: (_report_rows, *[(block_name,) + i for i in layout.indices()])}
    report = Delayed(report_name, HighLevelGraph.from_collections(report_name, rows, dependencies=[values]))
    return DisplacementField.from_array(values, fgrid.spacing, fgrid.origin, report=report)
