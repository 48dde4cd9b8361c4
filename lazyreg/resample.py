"""The lazy resampling engine: ``apply_transform`` builds one task per output chunk (or group of small chunks).

How a task finds the moving voxels it needs is explained in ``docs/design.md``. In short:

* Every transform in the list is *concrete* (values known now) or *lazy* (values computed by the
  same graph). A physical box is pushed through the list in application order (last element
  first): an affine maps the box to the box of its mapped corners; a displacement field widens it by
  the extreme displacements over the part of the field the box touches (plus zero where the box
  leaves the field's buffer, since points outside a field are not displaced).
* If every transform is concrete, the moving box is known while building the graph. A task reads
  that box (plus the margin of the interpolator) itself from the moving image's store when the
  image is store-backed (:func:`lazyreg.io.source.find_source`), so no moving chunk is a graph
  task (a distributed worker cannot read chunks ahead and hold them). Another dask image is read
  the same way through :class:`lazyreg.moving_regions.GraphSource` (the task computes the moving
  blocks its box intersects); an in-memory one (or a graph holding its data) gives each task
  exactly the moving chunks that intersect the box as dependencies.
* If a transform is lazy, the box is known only inside the task. The task then receives the small
  transform values as dependencies and reads its moving box itself from the image's store
  (:func:`lazyreg.io.source.find_source`), or, for a lazy field, the box is bounded by a stated
  ``max_displacement`` and checked at run time. A moving image that is neither store-backed nor
  small is refused with advice instead of making every task depend on the whole volume.

The box geometry (boxes through transforms, index regions, the dask chunks covering a region) is
in :mod:`lazyreg.regions`; this module builds the graph and holds the task.
"""

from __future__ import annotations

import functools
import operator
import os
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from .assembly import threaded_assembly
from .errors import LazyregError, LazyregWarning
from .images import Grid, grid_of, in_memory, single_block, validate_image
from .io.chunk_cache import ChunkCache, chunk_cache_bytes
from .io.source import find_source, read_region, region_index
from .interpolation import cast_to, resample_array
from .moving_regions import graph_source
from .regions import ChunkRefs, affine_box, chunk_groups, field_box, index_region, sub_grid
from .resample_checks import (
    check_fill_value, check_moving_values, check_output_chunks, check_region_bytes, max_region_bytes, warn_singular_affines,
)
from .transforms.affine import Affine
from .transforms.field import DisplacementField
from .transforms.points import normalize_transforms
from .validation import check_triple

__all__ = ["apply_transform"]

#: Largest default output chunk, in bytes.
CHUNK_LIMIT_BYTES = 128 * 2**20
#: A moving image without a store may be read whole by every task (with a warning) up to this size.
SMALL_MOVING_BYTES = 256 * 2**20
#: Extra moving voxels read around the mapped box, by interpolation order. Cubic interpolation
#: prefilters the region it reads; the prefilter's influence decays as 0.268**n voxels, so a
#: margin of 12 keeps the difference from filtering the whole image below 1e-6 of the signal.
MARGIN = {0: 1, 1: 1, 3: 12}

# --------------------------------------------------------------------------- graph pieces


@dataclass
class _Step:
    """One transform of the list, as a task sees it."""

    kind: str  # "affine" or "field"
    matrix: np.ndarray | None = None  # concrete affine
    values: np.ndarray | None = None  # concrete field values over ``region`` (numpy-backed fields)
    full: Grid | None = None  # the whole field grid
    region: tuple | None = None  # field index region this task uses (None: whole field)
    refs: ChunkRefs | None = None  # chunks the task receives for a lazy value
    max_displacement: np.ndarray | None = None


@dataclass
class _Plan:
    """Everything one output-chunk task needs besides its dependencies."""

    out: Grid
    moving: Grid
    steps: list[_Step]
    order: int
    fill_value: float
    dtype: np.dtype
    threads: int
    region: tuple | None = None  # moving index region, when known at build time
    moving_refs: ChunkRefs | None = None
    source: tuple | None = None  # (start, step): the task receives the Source and reads its region
    max_region_bytes: int | None = None  # bound of a region found in the task (lazy transforms)


# --------------------------------------------------------------------------- the task


def _concrete_steps(plan: _Plan, dep_blocks: list[list[np.ndarray]]) -> list[tuple[str, Any, Any]]:
    """Resolve every step into ("affine", matrix, None) or ("field", values, grid)."""
    out = []
    it = iter(dep_blocks)
    for st in plan.steps:
        if st.kind == "affine":
            m = st.matrix if st.refs is None else st.refs.assemble(next(it))
            if not np.all(np.isfinite(m)):
                raise LazyregError("transforms: an affine matrix computed to NaN or infinite values")
            out.append(("affine", np.asarray(m, dtype=float), None))
        else:
            if st.region is None and st.refs is None and st.values is None:
                out.append(("field", None, None))  # the task's box misses the field: no displacement
                continue
            vals = st.values if st.refs is None else st.refs.assemble(next(it))
            region = st.region if st.region is not None else tuple(slice(0, n) for n in st.full.shape)
            out.append(("field", vals, sub_grid(st.full, region)))
    return out


def _box_through(steps: list[tuple[str, Any, Any]], plan: _Plan, box):
    """Push the output chunk's box through concrete steps (last first); check stated bounds."""
    for (kind, a, g), st in zip(reversed(steps), reversed(plan.steps)):
        if kind == "affine":
            box = affine_box(a, box)
        elif a is not None:
            new = field_box(a, st.full, box)
            if st.max_displacement is not None:
                if np.any(box[0] - new[0] > st.max_displacement + 1e-9) or np.any(new[1] - box[1] > st.max_displacement + 1e-9):
                    raise LazyregError(
                        "max_displacement: the displacement field exceeds the stated bound "
                        f"{tuple(st.max_displacement)}; pass a larger max_displacement"
                    )
            box = new
    return box


def _resample_chunk(plan: _Plan, moving: Any, *dep_blocks: list) -> np.ndarray:
    """One output chunk. ``moving`` is the Source when ``plan.source`` is set, else the moving blocks."""
    steps = _concrete_steps(plan, list(dep_blocks))
    region = plan.region
    box = plan.out.extent
    if region is None:  # lazy transforms: the region is known now
        region = index_region(plan.moving, _box_through(steps, plan, box), MARGIN[plan.order])
        if region is None:
            return np.full(plan.out.shape, plan.fill_value, dtype=plan.dtype)
        if plan.max_region_bytes is not None and plan.source is not None:
            check_region_bytes(region, plan.dtype.itemsize, plan.out, plan.max_region_bytes)
    elif any(st.max_displacement is not None for st in plan.steps):
        _box_through(steps, plan, box)  # check the stated bounds
    if plan.source is not None:
        values = read_region(moving, *plan.source, region)
    elif plan.region is None:  # small moving image, every chunk at hand
        values = plan.moving_refs.assemble(moving)[region]
    else:
        values = plan.moving_refs.assemble(moving)
    return resample_array(values, sub_grid(plan.moving, region), plan.out, steps, order=plan.order,
                          fill_value=plan.fill_value, dtype=plan.dtype, threads=plan.threads,
                          check=functools.partial(check_moving_values, order=plan.order, region=region))


# --------------------------------------------------------------------------- graph building


#: Output chunks smaller than this many voxels are computed in groups of neighbours, one task (one
#: moving region, one ITK call) per group, cut into the chunks on return; a group is never larger
#: than a 128^3 chunk, so a task's memory stays within that of one default-sized chunk.
GROUP_VOXELS = 2**21


def _group_factor(chunks: tuple) -> int:
    """Chunks per axis in a task: the largest power of 2 keeping a group within GROUP_VOXELS and
    at least 4 tasks per core."""
    cores = os.cpu_count() or 1
    k = 1
    while not all(k >= len(c) for c in chunks):
        voxels = np.prod([max(c) * min(2 * k, len(c)) for c in chunks])
        tasks = np.prod([-(-len(c) // (2 * k)) for c in chunks])
        if voxels > GROUP_VOXELS or tasks < 4 * cores:
            break
        k *= 2
    return k


def _threads_per_task(nchunks: int) -> int:
    """ITK threads per task: share the cores among the tasks that can run at once."""
    cores = os.cpu_count() or 1
    return max(1, cores // max(1, min(nchunks, cores)))


def _default_chunks(fixed: Grid, moving: xr.DataArray, dtype: np.dtype, chunks: Any) -> tuple:
    if chunks is None:
        prev = None if in_memory(moving.data) else moving.data.chunksize
        if prev is not None and np.prod(prev) * dtype.itemsize <= CHUNK_LIMIT_BYTES:
            chunks = tuple(min(int(c), n) for c, n in zip(prev, fixed.shape))
        else:
            chunks = "auto"
    try:
        return da.core.normalize_chunks(chunks, shape=fixed.shape, limit=CHUNK_LIMIT_BYTES, dtype=dtype)
    except (ValueError, TypeError) as e:
        raise LazyregError(f"chunks: {e}") from None


@dataclass
class _Prepared:
    """A transform of the list, prepared once for every chunk."""

    kind: str
    lazy: bool
    matrix: np.ndarray | None = None  # concrete affine
    array: da.Array | None = None  # lazy affine (4, 4) or field (Z, Y, X, 3), vector in one chunk
    values: np.ndarray | None = None  # concrete (numpy-backed) field values
    full: Grid | None = None
    max_displacement: np.ndarray | None = None


def _prepare(transforms: list, max_displacement: np.ndarray | None) -> list[_Prepared]:
    out = []
    for t in transforms:
        if isinstance(t, Affine):
            if t.is_lazy:
                out.append(_Prepared("affine", True, array=t.matrix.rechunk((4, 4))))
            else:
                out.append(_Prepared("affine", False, matrix=np.asarray(t.matrix, dtype=float)))
        else:
            data = t.data.data
            full = t.grid
            if isinstance(data, da.Array):
                arr = data.rechunk({3: 3})
                out.append(_Prepared("field", True, array=arr, full=full, max_displacement=max_displacement))
            else:
                vals = np.asarray(data)
                if not np.all(np.isfinite(vals)):
                    raise LazyregError("transforms: displacement field contains NaN or infinite values")
                out.append(_Prepared("field", False, values=vals, full=full))
    return out


def _plan_steps(prepared: list[_Prepared], box) -> tuple[list[_Step], list[ChunkRefs], Any]:
    """Steps for one chunk, the lazy dependencies they need, and the moving box (None if unknown)."""
    steps: list[_Step | None] = [None] * len(prepared)
    refs: list[ChunkRefs | None] = [None] * len(prepared)
    for i in reversed(range(len(prepared))):
        p = prepared[i]
        if p.kind == "affine":
            if p.lazy:
                refs[i] = ChunkRefs.of(p.array, (slice(0, 4), slice(0, 4)))
                steps[i] = _Step("affine", refs=refs[i])
                box = None
            else:
                steps[i] = _Step("affine", matrix=p.matrix)
                box = affine_box(p.matrix, box) if box is not None else None
            continue
        region = None if box is None else index_region(p.full, box, 1)
        if box is not None and region is None:
            steps[i] = _Step("field", full=p.full)  # the box misses the field: nothing is displaced
            continue
        if p.lazy:
            refs[i] = ChunkRefs.of(p.array, region if region is not None else ())  # () is the whole field
            steps[i] = _Step("field", full=p.full, region=region, refs=refs[i], max_displacement=p.max_displacement)
            if box is not None and p.max_displacement is not None:
                box = (box[0] - p.max_displacement, box[1] + p.max_displacement)
            else:
                box = None
        else:
            if region is None:
                region = tuple(slice(0, n) for n in p.full.shape)
            vals = p.values[region]
            steps[i] = _Step("field", values=vals, full=p.full, region=region)
            if box is not None:
                box = field_box(vals, p.full, box)
    return steps, [r for r in refs if r is not None], box


def _check_order(order: Any) -> int:
    if order not in MARGIN or isinstance(order, bool):
        raise LazyregError(f"order: expected 0 (nearest), 1 (linear) or 3 (cubic), got {order!r}")
    return int(order)


def _check_max_displacement(value: Any) -> np.ndarray | None:
    md = None if value is None else np.array(check_triple(value, "max_displacement", "the bound"))
    if md is not None and np.any(md < 0):
        raise LazyregError(f"max_displacement: expected non-negative values, got {value!r}")
    return md


SPATIAL_DIMS = ("z", "y", "x")


def _per_channel(fixed: xr.DataArray, moving: xr.DataArray, transforms: Any, options: dict) -> xr.DataArray:
    """``moving`` with leading non-spatial dims (channel, time, ...): each 3D image resampled
    through the same transforms (their tasks read only that image), stacked back, lazily."""
    lead = moving.dims[0]
    parts = [apply_transform(fixed, moving.isel({lead: i}), transforms, **options) for i in range(moving.sizes[lead])]
    if lead in moving.coords:
        return xr.concat(parts, dim=moving[lead], coords="minimal", compat="override", combine_attrs="override")
    return xr.concat(parts, dim=lead, coords="minimal", compat="override", combine_attrs="override")


def apply_transform(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    transforms: Any = (),
    *,
    order: int = 1,
    fill_value: float = 0,
    chunks: Any = None,
    max_displacement: float | Sequence[float] | None = None,
) -> xr.DataArray:
    """Resample ``moving`` onto the grid of ``fixed`` through a list of transforms, lazily.

    For every voxel centre ``x`` of ``fixed`` the result holds ``moving(T1(T2(...Tn(x))))`` for
    ``transforms = [T1, ..., Tn]`` (transforms map fixed physical points to moving ones).
    Nothing is computed here: the result is a dask-backed DataArray with one task per output chunk,
    and each task reads only the part of ``moving`` that its chunk maps into.

    Parameters
    ----------
    fixed : xarray.DataArray
        Defines the output grid (shape, spacing, origin); its data are never read. Use
        :func:`lazyreg.grid` for a grid without data.
    moving : xarray.DataArray
        The image to resample, lazy or in memory, on its own grid. Dims ``(z, y, x)``, or with
        leading non-spatial dims (e.g. ``(c, z, y, x)``, ``(t, c, z, y, x)``): every channel /
        time point is resampled through the same transforms (one task per output chunk per
        channel, each reading only its channel), non-spatial coordinates kept. An in-memory
        array is not copied: it is read when the result is computed.
    transforms : Affine, DisplacementField or sequence of them
        Concrete or lazy (dask-backed) transforms; empty means identity.
    order : {0, 1, 3}
        Interpolation: nearest neighbour, linear, or cubic B-spline.
    fill_value : float
        Value of voxels that map outside ``moving`` (continuous index outside [-0.5, n - 0.5]).
    chunks : int, tuple or "auto", optional
        Output chunks. Default: moving's chunk size, capped so a chunk is at most 128 MiB.
    max_displacement : float or 3 floats, optional
        Physical bound on the displacement of lazy fields. With it, each task's moving region is
        known when the graph is built (the bound is checked when the field is computed: exceeding
        it raises), so a moving image that is not store-backed is read chunk by chunk, where
        needed, instead of whole by every task.

    Returns
    -------
    xarray.DataArray
        Lazy image on the fixed grid, with the fixed coordinates and the dtype of ``moving``
        (integers are rounded and clipped, not wrapped).

    Raises
    ------
    LazyregError
        Bad images, transforms or options; or lazy transforms with a moving image that is neither
        store-backed (opened with :func:`lazyreg.open_image`) nor small.

    Notes
    -----
    Interpolation runs in SimpleITK inside each task, with ITK threads (work units) set so that
    the tasks dask runs at once do not oversubscribe the cores. ``.compute()`` of the result has
    each task write its chunk into the final array (:mod:`lazyreg.assembly`; with worker
    processes, the chunks are copied into it by several threads). Integer outputs of 8 and 16 bits
    are rounded to nearest by ITK itself (exact ties up). Cubic interpolation prefilters each
    task's region with a margin of ``MARGIN[3]`` voxels. See ``docs/design.md`` for lazy transforms.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> moving = lazyreg.image(np.arange(1000.0).reshape(10, 10, 10), spacing=1.0)
    >>> shift = lazyreg.Affine.from_translation((1.0, 0.0, 0.0))
    >>> out = lazyreg.apply_transform(moving, moving, [shift])
    >>> float(out[0, 0, 0]), float(moving[1, 0, 0])
    (100.0, 100.0)
    """
    validate_image(fixed, "fixed")
    options = dict(order=order, fill_value=fill_value, chunks=chunks, max_displacement=max_displacement)
    if isinstance(moving, xr.DataArray) and moving.ndim > 3 and tuple(moving.dims[-3:]) == SPATIAL_DIMS:
        return _per_channel(fixed, moving, transforms, options)
    validate_image(moving, "moving")
    order = _check_order(order)
    transforms = normalize_transforms(transforms, "transforms")
    g_out = grid_of(fixed, "fixed")
    g_mov = grid_of(moving, "moving")
    dtype = np.dtype(moving.dtype)
    fill = check_fill_value(fill_value, dtype)
    fill_cast = cast_to(np.array([fill]), dtype)[0]
    out_chunks = _default_chunks(g_out, moving, dtype, chunks)
    out_chunks = check_output_chunks(out_chunks, dtype, chunks)
    warn_singular_affines(transforms)
    resident = in_memory(moving.data)
    region_bound = None if resident else max_region_bytes()  # in memory already: no bound to keep
    prepared = _prepare(transforms, _check_max_displacement(max_displacement))

    # in memory: one block (the array itself, not copied); a task's region is a view of it, not an assembled copy
    mov_arr = single_block(moving.data)
    source = find_source(moving)
    # a dask graph without a store: blocks computed where read
    in_task = source or (None if resident else graph_source(moving))

    factor = _group_factor(out_chunks)  # small chunks: one task per group of neighbours
    groups = list(chunk_groups(g_out, out_chunks, factor))
    threads = _threads_per_task(len(groups))
    name = "apply-transform-" + tokenize(
        g_out, g_mov, mov_arr.name, [_token(p) for p in prepared], order, fill, out_chunks, max_displacement
    )
    dsk: dict = {}
    deps: list[da.Array] = [p.array for p in prepared if p.array is not None]
    whole_moving: ChunkRefs | None = None
    src_key = None
    if in_task is not None:  # one reader per process, shared by the tasks that read regions (see ChunkCache)
        cache_bytes = chunk_cache_bytes()
        src_key = "lazyreg-source-" + tokenize(in_task[0].token(), in_task[1], in_task[2], cache_bytes)
    else:
        deps.append(mov_arr)
    task_name = name if factor == 1 else name + "-group"
    for idx, g_chunk, _ in groups:
        steps, refs, box = _plan_steps(prepared, g_chunk.extent)
        plan = _Plan(g_chunk, g_mov, steps, order, fill_cast, dtype, threads, max_region_bytes=region_bound)
        key = (task_name, *idx)
        dep_keys = [r.keys for r in refs]
        if box is not None:
            region = index_region(g_mov, box, MARGIN[order])
            if region is None:
                dsk[key] = (np.full, g_chunk.shape, fill_cast, dtype)  # the chunk maps outside moving
                continue
            plan.region = region
            if region_bound is not None:
                check_region_bytes(region, dtype.itemsize, g_chunk, region_bound)
        if source is not None or (in_task is not None and box is not None):  # the task reads its region itself
            plan.source = (in_task[1], in_task[2])
            dsk[key] = (_resample_chunk, plan, src_key, *dep_keys)
        elif box is not None:
            plan.moving_refs = ChunkRefs.of(mov_arr, region)
            dsk[key] = (_resample_chunk, plan, plan.moving_refs.keys, *dep_keys)
        else:
            if whole_moving is None:
                whole_arr, whole_moving = _whole_moving_refs(mov_arr, moving)
                deps.append(whole_arr)
            plan.moving_refs = whole_moving
            dsk[key] = (_resample_chunk, plan, whole_moving.keys, *dep_keys)
    if src_key is not None and (reader := _reader_task(in_task[0], cache_bytes, dsk.values(), src_key)) is not None:
        dsk[src_key] = reader
    if factor > 1:  # every chunk cut from its group's array
        dsk.update({(name, *c): (operator.getitem, (task_name, *i), sl) for i, _, parts in groups for c, sl in parts})
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)
    # .compute() puts the chunks together with several threads (the copy is otherwise a serial tail)
    arr = threaded_assembly(da.Array(graph, name, chunks=out_chunks, meta=np.empty((0, 0, 0), dtype=dtype)))
    out = xr.DataArray(arr, dims=fixed.dims, coords={d: fixed.coords[d].values for d in fixed.dims}, name=moving.name)
    # the moving image's attrs and name are kept (channel, acquisition metadata ...); the grid is the fixed one
    out.attrs.update({**moving.attrs, "spacing": g_out.spacing, "units": moving.attrs.get("units", fixed.attrs.get("units", "micrometer"))})
    return out


def _reader_task(source: Any, cache_bytes: int, tasks: Any, src_key: str) -> tuple | None:
    """The graph's reader task: a ChunkCache told how many of the tasks will read each store chunk
    (those whose region is known now), so that, when full, it evicts first the chunks nobody reads
    again. None when no task reads a region (all map outside moving, or need it whole)."""
    plans = [t[1] for t in tasks if len(t) > 2 and isinstance(t[2], str) and t[2] == src_key]
    if not plans:
        return None
    cache = ChunkCache(source, cache_bytes)  # reads nothing: here for its chunk_ids
    reads = Counter(ids for p in plans if p.region is not None for ids in cache.chunk_ids(region_index(*p.source, p.region)))
    return (ChunkCache, source, cache_bytes, dict(reads))


def _whole_moving_refs(mov_arr: da.Array, moving: xr.DataArray) -> tuple[da.Array, ChunkRefs]:
    """Every task depends on the whole moving image: free when it is in memory already (then
    ``mov_arr`` is its one block)."""
    if in_memory(moving.data):
        return mov_arr, ChunkRefs.of(mov_arr, tuple(slice(0, n) for n in mov_arr.shape))
    if mov_arr.nbytes > SMALL_MOVING_BYTES:
        raise LazyregError(
            "moving: the transforms are lazy, so which moving voxels each output chunk needs is known only "
            f"when they are computed, and this {mov_arr.nbytes / 2**30:.1f} GiB moving image is not read from "
            "a store lazyreg can read regions of. Write it first with lazyreg.to_zarr(moving, path) and "
            "reopen it with lazyreg.open_image(path), or compute the transforms first (t.compute()), "
            "or bound lazy fields with max_displacement="
        )
    warnings.warn(
        "moving is not store-backed and the transforms are lazy: every output chunk depends on the whole "
        f"moving image ({mov_arr.nbytes / 2**20:.0f} MiB). Open it with lazyreg.open_image to read regions only.",
        LazyregWarning,
        stacklevel=3,
    )
    return mov_arr, ChunkRefs.of(mov_arr, tuple(slice(0, n) for n in mov_arr.shape))


def _token(p: _Prepared) -> Any:
    if p.array is not None:
        return (p.kind, p.array.name, p.full)
    return (p.kind, tokenize(p.matrix if p.matrix is not None else p.values), p.full)
