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
chunk of the field plus a slab of points. A block result is its matrix plus, for field steps, the
field on the step's grid over the block's region (5.5 MB for a 128^3 block with the default
demons, kept as float16: :func:`lazyreg.registration.block_align.compact_field`).
"""

from __future__ import annotations

import itertools
import math
import time
from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..errors import LazyregError
from ..images import Grid, check_mask, grid_of, image, single_block, validate_image
from ..io.source import region_array
from ..resample import apply_transform
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.points import normalize_transforms
from ..result_cache import Deferred, Ref, cached_call
from ..validation import check_choice, check_number, check_seed
from .blend import field_chunk, fill_block
from .coarse import coarse_field, coarse_options
from .block_align import FOREGROUND_LEVEL, BlockTask, align_block, report_rows
from .blocks import BlockLayout, block_layout
from .inputs import sample_recipe, single_chunk_recipe
from .steps import field_step_grid, parse_steps

__all__ = ["align_piecewise", "DEFAULT_STEPS", "DEFAULT_QUALITY", "QUALITIES", "quality_steps", "default_coarse"]

#: Block steps by ``quality``, chosen by measurement (docs/from-bigstream.md, "Choosing a
#: deformable step"; tutorial known truth, blocksize 128, 2 cores: mean error in voxels, wall s;
#: real tutorial pair: Pearson where both images are tissue, 0.833 after the global affine): "fast"
#: - fast symmetric-forces demons, 20 + 10 iterations (0.353 voxel, 15 s; 0.885); "balanced" - a
#: B-spline (control points every 1/8 of the block's region, on the block shrunk by 2), then those
#: demons refining it (0.259, 51 s; 0.884); "best" - a local affine, the B-spline, then
#: diffeomorphic demons, 40 + 20 iterations, field smoothing 1.0 (0.270, 88 s with the coarse
#: stage; 0.890). The local affine stops at half resolution (shrink 4, then 2): the B-spline and the
#: demons refine after it, and its full-resolution level changed nothing but the time (same run,
#: with the coarse stage: tutorial 0.2264 -> 0.2269 voxel, phantom 0.1198 -> 0.1197, real pair
#: Pearson 0.8738 -> 0.8735, blobs matched 34.5 % -> 35.2 %; wall -14 % to -28 %).
_FAST_DEMONS = ("demons", {"variant": "fast_symmetric", "iterations": (20, 10)})
_BSPLINE = ("deform", {"shrink_factors": (2,)})
_LOCAL_AFFINE = ("affine", {"shrink_factors": (4, 2)})
#: The default blocks' demons: the field smoothed less than the step's default (1.0 voxel of each
#: level instead of 1.5). With moving's intensities mapped onto fixed's (the demons' default since
#: 2026-12-02), same run, default blocks with the coarse stage: real tutorial pair Pearson where
#: both are tissue 0.8858 (1.5) / 0.8878 (1.25) / 0.8902 (1.0); known-truth mean error, tutorial
#: 0.226 / 0.241 / 0.270 voxel, phantom 0.108 / 0.111 / 0.118 (elastix 0.126, SimpleITK 0.309).
_BEST_DEMONS = ("demons", {"smoothing": 1.0})
QUALITIES: dict[str, tuple] = {
    "fast": (_FAST_DEMONS,),
    "balanced": (_BSPLINE, _FAST_DEMONS),
    "best": (_LOCAL_AFFINE, _BSPLINE, _BEST_DEMONS),
}
#: The quality used when neither ``steps`` nor ``quality`` is given.
DEFAULT_QUALITY = "best"
#: The steps of each block when none are given: ``QUALITIES[DEFAULT_QUALITY]``.
DEFAULT_STEPS = QUALITIES[DEFAULT_QUALITY]
#: The blended field's default spacing, in fixed voxels (per axis): the grid of the demons' finest
#: level. On the tutorial's known truth a field on every fixed voxel gives the same error (0.334
#: voxel) at 8x the memory and a third more CPU (benchmarks/README.md, 2026-12-01).
FIELD_SPACING_VOXELS = 2
#: Voxels of fixed sampled (at most) to find the automatic foreground threshold.
THRESHOLD_SAMPLES = 2_000_000


def _check_finite(values: Any, name: str, where: str) -> None:
    """Refuse NaN or infinite voxels, naming the image: the foreground test and the metrics would
    silently see nothing (a NaN fixed block was reported as "foreground 0%")."""
    v = np.asarray(values)
    if v.dtype.kind != "f" or v.size == 0 or (np.isfinite(v.min()) and np.isfinite(v.max())):  # no temporary
        return
    bad = int(np.count_nonzero(~np.isfinite(v)))
    raise LazyregError(
        f"{name}: contains {bad} NaN or infinite voxels {where}; replace them (e.g. {name}.fillna(0), or "
        f"{name}.where(np.isfinite({name}), 0)) before align_piecewise"
    )


def _align_checked_block(task: Any, started: float, fixed: Any, moving: Any, *rest: Any) -> dict:
    """:func:`align_block` on finite inputs only (checked on the regions the block reads anyway);
    ``started`` is when the block began reading its inputs (``seconds_inputs`` of its row)."""
    seconds_inputs = round(time.perf_counter() - started, 3)
    where = f"in block {task.index}"
    _check_finite(fixed, "fixed", where)
    for m in moving if isinstance(moving, list) else [moving]:
        _check_finite(m, "moving", where + " (its region resampled through static_transforms)")
    row = align_block(task, fixed, moving, *rest)
    row["seconds_inputs"] = seconds_inputs
    return row


def _auto_threshold(sample: np.ndarray) -> float:
    _check_finite(sample, "fixed", "in the sample read for the foreground threshold")
    v = np.asarray(sample, dtype=np.float32).ravel()
    if v.size == 0:
        return 0.0
    lo, hi = np.percentile(v, [1, 99])
    return float(lo + FOREGROUND_LEVEL * (hi - lo))


def _threshold(fixed: xr.DataArray, given: float | None, collections: list) -> Any:
    """The foreground threshold: given, or a task on a sample of ``fixed`` (computed once)."""
    if given is not None:
        return float(given)
    token = tokenize(fixed.data, grid_of(fixed, "fixed"), THRESHOLD_SAMPLES)
    deps: list = []
    recipe = Deferred([sample_recipe(fixed, THRESHOLD_SAMPLES, deps, collections)])
    name = f"lazyreg-threshold-{token}"
    layer = {name: (cached_call, f"threshold:{token}", "threshold", _auto_threshold, recipe, *deps)}
    d = Delayed(name, HighLevelGraph.from_collections(name, layer, dependencies=list(collections)))
    collections.append(d)
    return name


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


def _field_grid(fixed: Grid, field_spacing: Any) -> Grid:
    if field_spacing is None:
        field_spacing = tuple(FIELD_SPACING_VOXELS * s for s in fixed.spacing)
    sp = np.broadcast_to(np.asarray(field_spacing, dtype=float), (3,)) if np.ndim(field_spacing) == 0 else np.asarray(field_spacing, dtype=float)
    if sp.shape != (3,) or not np.all(np.isfinite(sp)) or np.any(sp <= 0):
        raise LazyregError(f"field_spacing: expected a positive number or 3 (z, y, x), got {field_spacing!r}")
    lo, hi = fixed.extent  # voxel edges; the field's centres cover the fixed centres
    first = np.asarray(fixed.origin)
    last = first + (np.asarray(fixed.shape) - 1) * np.asarray(fixed.spacing)
    shape = np.floor((last - first) / sp + 1e-9).astype(int) + 1
    shape = shape + (first + (shape - 1) * sp < last - 1e-9)
    return Grid(tuple(int(n) for n in shape), tuple(sp), tuple(first))


def quality_steps(quality: str | None = None, steps: Any = None) -> tuple:
    """The block steps for ``quality`` (a key of :data:`QUALITIES`), or ``steps`` if given.

    Examples
    --------
    >>> [name for name, _ in quality_steps("best")]
    ['affine', 'deform', 'demons']
    >>> quality_steps("fastest")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: quality: unknown value 'fastest' (did you mean 'fast'?); valid: fast, balanced, best
    """
    if quality is None:
        return DEFAULT_STEPS if steps is None else steps
    if steps is not None:
        raise LazyregError("quality: give steps or quality, not both (quality chooses the steps)")
    return QUALITIES[check_choice(quality, list(QUALITIES), "quality")]


def default_coarse(quality: str | None = None, steps: Any = None) -> bool:
    """Whether ``align_piecewise(coarse=None)`` runs the coarse stage: with the default steps
    (``quality`` None or "best"), not with the faster presets or steps of your own.

    Examples
    --------
    >>> default_coarse(), default_coarse("best"), default_coarse("fast"), default_coarse(steps="demons")
    (True, True, False, False)
    """
    return steps is None and quality in (None, DEFAULT_QUALITY)


def _key(x: Any, collections: list) -> Any:
    """The key of a one-chunk dask array (noted in ``collections``), or the value itself."""
    if isinstance(x, da.Array):
        x = x.rechunk(x.shape) if x.npartitions != 1 else x
        collections.append(x)
        return (x.name,) + (0,) * x.ndim
    return x


def align_piecewise(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    steps: Sequence[Any] | str | None = None,
    *,
    blocksize: int | Sequence[int] | None = None,
    overlap: float = 0.25,
    static_transforms: Any = (),
    fixed_mask: xr.DataArray | None = None,
    foreground_fraction: float = 0.5,
    foreground_threshold: float | None = None,
    field_spacing: float | Sequence[float] | None = None,
    seed: int = 0,
    quality: str | None = None,
    coarse: bool | Mapping[str, Any] | None = None,
) -> DisplacementField:
    """Align overlapping blocks of ``fixed`` to ``moving`` and blend them into one lazy field.

    Nothing is computed here. The result is a dask-backed :class:`DisplacementField` on a grid
    covering the fixed one (every 2nd fixed voxel, or ``field_spacing``) to be used after the
    static transforms:
    ``apply_transform(fixed, moving, [*static_transforms, field])``.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images, lazy (e.g. from :func:`lazyreg.open_image`) or in memory.
    steps : sequence of (name, options), or str, optional
        As in :func:`lazyreg.align` (registered steps, your own included): ``"ransac"``,
        ``"random"``, ``"rigid"``, ``"affine"``, then field steps last: ``"deform"`` and / or
        ``"demons"`` (a field step after another refines it; the block keeps one composed
        field). Run in every block one at a time, starting from the identity; a step's result is
        kept only if it raises the block's Pearson correlation, so the next step starts from the
        best result so far. Checked now, before anything runs. Default: the steps of ``quality``.
    blocksize : int or 3 ints, optional
        Block core size in fixed voxels (z, y, x), at least 8 and at most the image size.
        Default 128 (or the image size along a shorter axis).
    overlap : float
        Padding added to each side of a block, as a fraction of ``blocksize``, in [0, 1): blocks
        are registered on core + padding and their weights ramp linearly across the padding.
        Default 0.25 (bigstream: 0.5): the demons are local, and on the tutorial pair 0.25 gave
        the same accuracy as 0.5 in half the time (blocks of 1.5^3 instead of 2^3 their core).
    static_transforms : Affine, DisplacementField or list
        Map fixed to moving before the blocks are aligned (e.g. the lazy result of
        :func:`lazyreg.align` on a downsampled level). Each block reads only the moving region it
        maps to.
    fixed_mask : xarray.DataArray, optional
        Boolean image on the fixed grid: foreground for the block test and metric sampling.
    foreground_fraction : float
        Blocks whose foreground (mask, or voxels above ``foreground_threshold``) covers less than
        this fraction of the block are skipped.
    foreground_threshold : float, optional
        Intensity threshold of the foreground (compared with the block smoothed by a Gaussian of
        2 voxels); default: the 1st percentile of a strided sample of ``fixed`` (about two million
        voxels) plus 5% of its 1st-99th percentile range, which keeps dim tissue and drops empty
        space.
    field_spacing : float or 3 floats, optional
        Spacing of the output field grid (physical units); default every
        :data:`FIELD_SPACING_VOXELS` (2) fixed voxels along each axis, the grid of the demons'
        finest level. ``lazyreg.spacing(fixed)`` puts it on every fixed voxel (8x the memory).
    seed : int
        Seed of every random choice; block ``i`` (C order) uses ``seed + 100 * i``.
    quality : {"best", "balanced", "fast"}, optional
        Chooses the steps when ``steps`` is not given (:data:`QUALITIES`; give one or the other).
        Default ``"best"``: a local affine, a B-spline, then diffeomorphic demons refining it.
        Measured (16 M voxels, blocksize 128, 2 cores; benchmarks/README.md, eleventh session):
        tutorial known truth, mean error / wall: "best" 0.270 voxel / 88 s (with the coarse stage
        it runs by default, see ``coarse``), "balanced" (B-spline, then fast demons) 0.259 / 51 s,
        "fast" (fast demons alone) 0.353 / 15 s; whole-volume SimpleITK B-spline 0.309, elastix
        0.373, ANTs SyN 0.740. Real tutorial pair, Pearson where both images are tissue: 0.890,
        0.884, 0.885; ANTs SyN 0.890, elastix 0.869.
    coarse : bool, dict or None
        None (default): True with the default steps (``quality="best"``), False with
        ``quality="balanced" | "fast"`` or ``steps`` of your own.
        True: first register the whole image with a coarse B-spline
        (:mod:`lazyreg.registration.coarse`: control points 4x, 2x, then 1x a quarter of the fixed
        image's shortest side apart, 3 random samples per parameter, on the image read every k-th
        voxel down to 4 Mi voxels, both in local contrast). Each block runs its first step from the
        static transforms alone and from them and the coarse field, and goes on from the better
        (its row's ``start``); the returned field contains the coarse field where blocks kept it.
        It constrains blocks near the moving image's edge and blocks with little structure.
        Known truth ("best" steps, blocks alone -> with it): phantom 0.174 -> 0.118 voxel
        (elastix 0.126), tutorial 0.270 -> 0.270; real tutorial pair, Pearson where both images
        are tissue, 0.8898 -> 0.8902. It costs a whole-image registration first (tutorial lowres:
        about 10 s) and a second first step per block (tutorial known truth: +11 % wall), hence
        not with the faster presets. False: the blocks
        alone. A dict sets its ``"deform"`` options
        (:data:`~lazyreg.registration.coarse.COARSE_OPTIONS`). Left out when
        ``static_transforms`` hold a displacement field, for a single block, or when the image is
        too small for its first level.

    Returns
    -------
    DisplacementField
        Lazy; chunks follow the block cores. ``field.report`` is a lazy list with one row per block:
        ``index``, ``status``, ``reason``, ``foreground``, ``inside`` (fraction mapping inside
        moving), ``metric_before``/``metric_after`` (Pearson in the block, on the voxels the kept
        result maps inside it), ``inliers``, ``steps`` (per step: ``seconds``, ``metric``, whether
        it was ``kept`` and why not, ``profile``: seconds per level or stage and for checking the
        result; for a field step its ``field_scale`` and ``det_min``; ``peak_mib``), ``seconds``
        (aligning), ``seconds_inputs`` (reading the block's regions and resampling moving through
        the static transforms) and ``peak_mib`` / ``peak_rss_mib`` (the process's resident memory
        at its largest during the block, above its start / in all:
        :mod:`lazyreg.registration.step_memory`). ``field.compute()`` computes values and report together. Statuses: ``"ok"``
        (some step improved the block), ``"unchanged"`` (the steps ran, none improved it: its local
        transform is the identity), ``"skipped"`` (little foreground, or mostly outside moving),
        ``"failed"`` (every step raised an error, or its result disagrees with most of its
        neighbours where they overlap).

    Notes
    -----
    No block folds: a block's own deformation is scaled down until its Jacobian determinant is at
    least 0.2 (``row["steps"][...]["field_scale"]``). Skipped and failed blocks have no
    displacement of their own; their aligned neighbours' displacements are extended over them at
    constant value, so the field stays continuous (no hole, no spike). A block with no aligned
    neighbour contributes zero displacement. Skips and failures are logged at WARNING. A lazy
    displacement field among ``static_transforms`` is not used for the "inside the moving volume"
    test (its affines are). Results are computed once per session (:mod:`lazyreg.result_cache`).

    Examples
    --------
    >>> import lazyreg
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((32, 64, 64), seed=0)
    >>> field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=32,
    ...                                 static_transforms=[lazyreg.Affine(truth)])
    >>> field.is_lazy, field.grid.shape     # every 2nd fixed voxel (field_spacing)
    (True, (17, 33, 33))
    """
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    calls = parse_steps(quality_steps(quality, steps))
    g_fixed = grid_of(fixed, "fixed")
    if blocksize is None:
        blocksize = tuple(min(128, n) for n in g_fixed.shape)
    layout = block_layout(g_fixed, blocksize, overlap)
    static = normalize_transforms(static_transforms, "static_transforms")
    fixed_mask = check_mask(fixed_mask, fixed, "fixed_mask", "fixed")
    ff = check_number(foreground_fraction, "foreground_fraction", 0.0, 1.0)
    if foreground_threshold is not None:
        foreground_threshold = check_number(foreground_threshold, "foreground_threshold")
    seed = check_seed(seed)
    fgrid = _field_grid(g_fixed, field_spacing)
    copts = coarse_options(default_coarse(quality, steps) if coarse is None else coarse)
    # block regions stop at the fixed image, but the blocks' crops of the coarse field reach a
    # quarter of their region beyond it (block_align.COARSE_CROP_MARGIN), and the points their own
    # transforms move further: a generous margin, the blocks' padding plus a quarter block
    margin = (np.asarray(layout.pad) + np.asarray(layout.blocksize) / 4) * np.asarray(g_fixed.spacing)
    G = coarse_field(fixed, moving, static, copts if math.prod(layout.nblocks) > 1 else None, margin=margin,
                     fixed_mask=fixed_mask, seed=seed)
    token = tokenize(fixed.data, moving.data, g_fixed, grid_of(moving, "moving"),
                     [(c.as_pair(), c.step.func, c.step.fixed_options) for c in calls], layout,
                     [getattr(t, "data", None) for t in static], [getattr(t, "matrix", None) for t in static],
                     None if G is None else (G.data, G.grid),
                     None if fixed_mask is None else fixed_mask.data, ff, foreground_threshold, fgrid, seed)
    names = {k: f"lazyreg-{k}-{token}" for k in ("block", "fill", "piecewise", "piecewise-report")}
    collections: list = []
    layer = _block_tasks(names["block"], calls, layout, fixed, moving, static, G, fixed_mask, ff,
                         foreground_threshold, seed, collections)
    for idx in layout.indices():
        layer[(names["fill"],) + idx] = (
            fill_block, layout, (names["block"],) + idx, *[(names["block"],) + j for j in layout.neighbours(idx)]
        )
    fchunks = _field_chunks(layout, g_fixed, fgrid)
    offsets = [np.concatenate([[0], np.cumsum(c)]) for c in fchunks]
    for cidx in itertools.product(*(range(len(c)) for c in fchunks)):
        lo_i = np.array([offsets[a][cidx[a]] for a in range(3)])
        shape = tuple(int(fchunks[a][cidx[a]]) for a in range(3))
        cg = Grid(shape, fgrid.spacing, tuple(fgrid.to_physical(lo_i[None].astype(float))[0]))
        lo = np.asarray(cg.origin)
        hi = lo + (np.asarray(shape) - 1) * np.asarray(cg.spacing)
        deps = [(names["fill"],) + j for j in layout.blocks_touching(lo, hi)]
        layer[(names["piecewise"],) + cidx + (0,)] = (field_chunk, layout, cg, *deps)
    hlg = HighLevelGraph.from_collections(names["piecewise"], layer, dependencies=collections)
    values = da.Array(hlg, names["piecewise"], chunks=tuple(fchunks) + ((3,),), dtype=np.float32)
    rows = {names["piecewise-report"]: (report_rows, *[(names["fill"],) + i for i in layout.indices()])}
    report = Delayed(names["piecewise-report"], HighLevelGraph.from_collections(names["piecewise-report"], rows, dependencies=[values]))
    return DisplacementField.from_array(values, fgrid.spacing, fgrid.origin, report=report)


def _block_tasks(name, calls, layout: BlockLayout, fixed, moving, static, coarse, fixed_mask, ff, threshold, seed, collections) -> dict:
    """One task per block: its inputs (read inside it), the steps, the static transforms' values
    (and with a ``coarse`` field, its values and the moving region read through it as well)."""
    kinds, sargs = _static_args(static)
    if coarse is not None:
        kinds, sargs = (*kinds, "coarse"), [*sargs, coarse.data.data]  # its values: one task key
    static_keys = [_key(a, collections) for a in sargs]
    thr = _threshold(fixed, threshold, collections) if fixed_mask is None else 0.0
    # in-memory arrays become one dask array each, so block regions are views, not graph copies
    fixed_arr = fixed.data if isinstance(fixed.data, da.Array) else da.from_array(fixed.data, chunks=layout.blocksize)
    mask_arr = None
    if fixed_mask is not None:
        mask_arr = fixed_mask.data if isinstance(fixed_mask.data, da.Array) else da.from_array(fixed_mask.data, chunks=layout.blocksize)
    extent = grid_of(moving, "moving").extent
    # an in-memory moving image is wrapped once: wrapped per block, every block's graph held its own
    # copy until they were merged (96 blocks of 64: +3 GiB while the graph was built)
    moving = moving.copy(data=single_block(moving.data))
    layer = {}
    for n, idx in enumerate(layout.indices()):
        region = layout.region(idx)
        rgrid = layout.region_grid(idx)
        fx = region_array(fixed, region, data=fixed_arr)
        target = image(da.zeros(rgrid.shape, dtype=np.uint8, chunks=-1), rgrid.spacing, rgrid.origin)
        mv = apply_transform(target, moving, static, chunks=rgrid.shape).data
        mk = region_array(fixed_mask, region, data=mask_arr) if mask_arr is not None else None
        # the block's inputs run inside its task, and only when its result is not cached yet: as
        # tasks of their own, they would run each time, and dask.distributed workers would read
        # them ahead of the blocks and hold or spill them
        deps: list = []
        inputs = [single_chunk_recipe(x, deps, collections) for x in (fx, mv, mk)]
        if coarse is not None:  # the moving region from both starts: without and with the coarse field
            mvc = apply_transform(target, moving, [*static, coarse], chunks=rgrid.shape).data
            inputs[1] = [inputs[1], single_chunk_recipe(mvc, deps, collections)]
        task = BlockTask(
            index=idx, region=rgrid, steps=tuple(calls), field_grid=field_step_grid(calls, rgrid), moving_extent=extent,
            static_kinds=kinds, foreground_fraction=ff, seed=int(seed) + 100 * n, has_mask=fixed_mask is not None,
            coarse_grid=None if coarse is None else coarse.grid,
        )
        refs = []
        for k in [thr, *static_keys]:
            if isinstance(k, (str, tuple)):
                deps.append(k)
                refs.append(Ref(len(deps) - 1))
            else:
                refs.append(k)
        # the clock is read first: the block's row tells how long reading its inputs took
        recipe = Deferred([task, (time.perf_counter,), *inputs, *refs])
        layer[(name,) + idx] = (cached_call, f"block:{name}:{idx}", "block", _align_checked_block, recipe, *deps)
    return layer


def _field_chunks(layout: BlockLayout, g_fixed: Grid, fgrid: Grid) -> list[tuple[int, ...]]:
    """Chunks of the field grid along each axis, following the block cores."""
    fchunks = []
    for a in range(3):
        edges = [fgrid.origin[a] + (i * layout.blocksize[a] - 0.5) * g_fixed.spacing[a] for i in range(layout.nblocks[a])]
        pos = fgrid.origin[a] + np.arange(fgrid.shape[a]) * fgrid.spacing[a]
        starts = sorted({int(np.searchsorted(pos, e)) for e in edges} | {0})
        starts = [s for s in starts if s < fgrid.shape[a]]
        fchunks.append(tuple(np.diff(starts + [fgrid.shape[a]]).tolist()))
    return fchunks
