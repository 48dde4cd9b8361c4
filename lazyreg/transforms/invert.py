"""Inverting a displacement field by fixed-point iteration, lazily (one task per output chunk).

The inverse of ``D: x -> x + u(x)`` is the field ``v`` with ``y + v(y) = x`` whenever
``x + u(x) = y``, i.e. ``v(y) = -u(y + v(y))``. Each output voxel ``y`` iterates
``v_{k+1}(y) = -u(y + v_k(y))`` from ``v_0 = 0`` on its own, so an output chunk needs only the
values of ``u`` around ``y + v(y)``: within ``max|u|`` (per axis) of the chunk, plus the trilinear
support. How that neighbourhood is found without computing anything is explained in
:func:`invert_field` (Notes).
"""

from __future__ import annotations

import itertools
import math
import numbers
import operator
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph
from scipy import ndimage

from ..errors import LazyregError, LazyregWarning
from ..images import Grid, grid_of

if TYPE_CHECKING:  # the inverse is built with type(field): no import cycle with field.py
    from .field import DisplacementField

__all__ = ["invert_field"]

#: A lazy field without ``max_displacement`` is given whole to every output task up to this size.
SMALL_FIELD_BYTES = 256 * 2**20
#: Output points iterated together (bounds the working memory of a task to about 60 MB).
_POINTS_PER_BATCH = 2**18
#: Extra field voxels read around the bounded neighbourhood of an output chunk (rounding safety).
_MARGIN = 1


# --------------------------------------------------------------------------- arguments


def _check_tolerance(tolerance: Any) -> float:
    ok = isinstance(tolerance, numbers.Real) and not isinstance(tolerance, (bool, np.bool_))
    if not ok or not math.isfinite(float(tolerance)) or float(tolerance) <= 0:
        raise LazyregError(f"tolerance: expected a positive number of voxels, got {tolerance!r}")
    return float(tolerance)


def _check_iterations(max_iterations: Any) -> int:
    if isinstance(max_iterations, bool) or not isinstance(max_iterations, (int, np.integer)) or max_iterations < 1:
        raise LazyregError(f"max_iterations: expected a positive integer, got {max_iterations!r}")
    return int(max_iterations)


def _check_bound(max_displacement: Any) -> np.ndarray | None:
    if max_displacement is None:
        return None
    try:
        md = np.asarray(max_displacement, dtype=float)
    except (TypeError, ValueError):
        md = None
    if md is None or md.ndim > 1 or (md.ndim == 1 and md.size != 3):
        raise LazyregError(
            f"max_displacement: expected a number or 3 numbers (z, y, x), physical units, got {max_displacement!r}"
        )
    md = np.broadcast_to(md, (3,)).copy()
    if not np.all(np.isfinite(md)) or np.any(md < 0):
        raise LazyregError(f"max_displacement: expected non-negative finite values, got {max_displacement!r}")
    return md


def _output_grid(grid: Any, field: DisplacementField) -> tuple[Grid, tuple | None]:
    """The inverse's grid, and the chunks of a dask-backed grid image (else None)."""
    if grid is None:
        return field.grid, None
    if isinstance(grid, Grid):
        return grid, None
    if isinstance(grid, xr.DataArray):
        g = grid_of(grid, "grid")
        return g, (grid.chunks if isinstance(grid.data, da.Array) else None)
    raise LazyregError(
        f"grid: expected None, a lazyreg.images.Grid or an image (e.g. lazyreg.grid(shape, spacing, origin)), "
        f"got {type(grid).__name__}"
    )


def _output_chunks(chunks: Any, g: Grid, field: DisplacementField, grid_chunks: tuple | None, same: bool) -> tuple:
    dtype = field.data.dtype
    if chunks is None:
        if grid_chunks is not None:
            return tuple(tuple(int(c) for c in cs) for cs in grid_chunks)
        fchunks = field.chunks[:3]
        if same:
            return tuple(fchunks)
        chunks = tuple(max(cs) for cs in fchunks)
    try:
        return da.core.normalize_chunks(chunks, shape=g.shape, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise LazyregError(f"chunks: cannot chunk the inverse's grid {g.shape} with {chunks!r} ({e})") from None


# --------------------------------------------------------------------------- the numerical kernel


def _interp(comps: Sequence[np.ndarray], start: np.ndarray, full: Grid, points: np.ndarray) -> np.ndarray:
    """u at (N, 3) physical points, extended beyond the field by its edge values (clamped index).

    ``comps`` are the three components over a block of the field whose first voxel is at index
    ``start`` of ``full``; the block must hold the trilinear support of every (clamped) point.
    """
    n = np.asarray(full.shape)
    c = np.clip(full.to_index(points), 0, n - 1) - start
    nb = np.asarray(comps[0].shape)
    if len(c) and (np.any(c.min(0) < -1e-6) or np.any(c.max(0) > nb - 1 + 1e-6)):
        raise LazyregError(
            "field: the field region read for an output chunk does not hold the points the iteration "
            "reached (the displacements exceed max_displacement)"
        )
    coords = np.clip(c, 0, nb - 1).T
    u = np.empty((len(c), 3), dtype=np.float64)
    for k in range(3):
        u[:, k] = ndimage.map_coordinates(comps[k], coords, order=1, mode="nearest", prefilter=False)
    return u


def _solve(comps, start, full: Grid, y: np.ndarray, tol: float, maxit: int) -> tuple[np.ndarray, dict]:
    """Fixed-point iteration ``v <- -u(y + v)`` for (N, 3) physical points ``y``."""
    inv_sp = 1.0 / np.asarray(full.spacing)
    v = np.zeros_like(y)
    iters = np.zeros(len(y), dtype=np.int64)
    active = np.arange(len(y))
    for _ in range(maxit):
        if not len(active):
            break
        u = _interp(comps, start, full, y[active] + v[active])
        res = np.sqrt((((v[active] + u) * inv_sp) ** 2).sum(1))  # residual of the current iterate
        v[active] = -u
        iters[active] += 1
        active = active[res >= tol]
    u = _interp(comps, start, full, y + v)
    res = np.sqrt((((v + u) * inv_sp) ** 2).sum(1))
    # where D itself does not displace (continuous index outside [-0.5, n - 0.5)): see Notes
    ci = full.to_index(y + v)
    outside = np.any((ci < -0.5) | (ci >= np.asarray(full.shape) - 0.5), axis=1)
    stats = {
        "points": int(len(y)),
        "max_residual": float(res.max()) if len(res) else 0.0,
        "iterations": int(iters.max()) if len(iters) else 0,
        "not_converged": int((res >= tol).sum()),
        "outside": int(outside.sum()),
    }
    return v, stats


def _invert_grid(
    values: np.ndarray, start: np.ndarray, full: Grid, out: Grid, tol: float, maxit: int, dtype: np.dtype
) -> tuple[np.ndarray, dict]:
    """The inverse's values on grid ``out`` from a block of ``u`` (z-slabs of bounded size)."""
    comps = [np.ascontiguousarray(values[..., k], dtype=np.float64) for k in range(3)]
    Z, Y, X = out.shape
    result = np.empty((Z, Y, X, 3), dtype=dtype)
    step = max(1, _POINTS_PER_BATCH // max(1, Y * X))
    yy, xx = np.meshgrid(np.arange(Y, dtype=float), np.arange(X, dtype=float), indexing="ij")
    parts = []
    for z0 in range(0, Z, step):
        z1 = min(Z, z0 + step)
        zz = np.broadcast_to(np.arange(z0, z1, dtype=float)[:, None, None], (z1 - z0, Y, X))
        idx = np.stack([zz, np.broadcast_to(yy, zz.shape), np.broadcast_to(xx, zz.shape)], axis=-1).reshape(-1, 3)
        v, st = _solve(comps, start, full, out.to_physical(idx), tol, maxit)
        result[z0:z1] = v.reshape(z1 - z0, Y, X, 3)
        parts.append(st)
    return result, _merge(parts)


def _merge(parts: list[dict]) -> dict:
    return {
        "points": sum(p["points"] for p in parts),
        "max_residual": max(p["max_residual"] for p in parts),
        "iterations": max(p["iterations"] for p in parts),
        "not_converged": sum(p["not_converged"] for p in parts),
        "outside": sum(p["outside"] for p in parts),
    }


def _warn_unconverged(stats: dict, tol: float, maxit: int, where: str = "") -> None:
    if stats["not_converged"]:
        warnings.warn(
            f"invert_field: {stats['not_converged']} of {stats['points']} points{where} did not converge to "
            f"{tol:g} voxel in {maxit} iterations (largest residual {stats['max_residual']:.3g} voxel). "
            "The field may fold (see lazyreg.jacobian_determinant) or change too fast for fixed-point "
            "iteration (|grad u| >= 1); the inverse's report holds the figures",
            LazyregWarning,
            stacklevel=3,
        )


def _report(stats: dict, chunk_residual: np.ndarray, tol: float, maxit: int, md: np.ndarray | None) -> dict:
    return {
        "operation": "invert_field",
        "method": "fixed-point",
        "tolerance": tol,
        "max_iterations": maxit,
        "max_displacement": None if md is None else tuple(float(m) for m in md),
        "converged": stats["not_converged"] == 0,
        **stats,
        "chunk_max_residual": chunk_residual,
    }


# --------------------------------------------------------------------------- the lazy graph


@dataclass
class _ChunkPlan:
    """What one output-chunk task needs besides the field blocks it depends on."""

    index: tuple[int, int, int]
    out: Grid
    full: Grid
    start: np.ndarray  # index in ``full`` of the region's first voxel
    shape: tuple  # region shape (Z, Y, X, 3)
    dst: list  # where each dependency block goes in the region
    src: list  # which part of each dependency block
    bound: np.ndarray | None
    tol: float
    maxit: int
    dtype: np.dtype


def _invert_chunk(plan: _ChunkPlan, blocks: list[np.ndarray]) -> tuple[np.ndarray, dict]:
    region = np.empty(plan.shape, dtype=np.float64)
    for b, d, s in zip(blocks, plan.dst, plan.src):
        region[d] = b[s]
    if not np.all(np.isfinite(region)):
        raise LazyregError("field: displacements contain NaN or infinite values")
    if plan.bound is not None:
        big = np.abs(region).reshape(-1, 3).max(0)
        if np.any(big > plan.bound * (1 + 1e-6) + 1e-12):
            raise LazyregError(
                f"max_displacement: the displacement field exceeds the stated bound {tuple(plan.bound.tolist())} "
                f"(largest |u| per axis near chunk {plan.index}: {tuple(big.tolist())}); pass a larger max_displacement"
            )
    values, stats = _invert_grid(region, plan.start, plan.full, plan.out, plan.tol, plan.maxit, plan.dtype)
    _warn_unconverged(stats, plan.tol, plan.maxit, f" of chunk {plan.index}")
    return values, stats


def _values_of(result: tuple[np.ndarray, dict], _stats: dict) -> np.ndarray:
    return result[0]


def _gather_report(stats: list[dict], numblocks: tuple, tol: float, maxit: int, md: np.ndarray | None) -> dict:
    per_chunk = np.array([s["max_residual"] for s in stats], dtype=np.float64).reshape(numblocks)
    return _report(_merge(stats), per_chunk, tol, maxit, md)


def _region_refs(arr: da.Array, region: Sequence[slice]) -> tuple[list, list, list]:
    """Keys of the (Z, Y, X, 3) array's chunks covering the index region, and where each goes."""
    per_axis = []
    for sl, chunks in zip(region, arr.chunks[:3]):
        bounds = np.concatenate([[0], np.cumsum(chunks)])
        hits = []
        for b in range(len(chunks)):
            lo, hi = max(sl.start, bounds[b]), min(sl.stop, bounds[b + 1])
            if hi > lo:
                into = slice(int(lo - sl.start), int(hi - sl.start))
                hits.append((b, into, slice(int(lo - bounds[b]), int(hi - bounds[b]))))
        per_axis.append(hits)
    keys, dst, src = [], [], []
    for combo in itertools.product(*per_axis):
        keys.append((arr.name, *[c[0] for c in combo], 0))
        dst.append(tuple(c[1] for c in combo))
        src.append(tuple(c[2] for c in combo))
    return keys, dst, src


def _bounded_region(full: Grid, out: Grid, md: np.ndarray) -> tuple[slice, slice, slice]:
    """Field index region holding the support of every point within ``md`` of the chunk ``out``."""
    lo, hi = out.extent
    n = np.asarray(full.shape)
    ilo = np.clip(full.to_index((lo - md)[None])[0], 0, n - 1)
    ihi = np.clip(full.to_index((hi + md)[None])[0], 0, n - 1)
    a = np.maximum(np.floor(ilo).astype(np.int64) - _MARGIN, 0)
    b = np.minimum(np.ceil(ihi).astype(np.int64) + _MARGIN, n - 1)
    return tuple(slice(int(i), int(j) + 1) for i, j in zip(a, b))  # type: ignore[return-value]


def _lazy_inverse(
    field: DisplacementField, g: Grid, chunks: tuple, tol: float, maxit: int, md: np.ndarray | None
) -> DisplacementField:
    full = field.grid
    dtype = np.dtype(field.data.dtype)
    arr = field.data.data.rechunk({3: 3})
    if md is None:
        if arr.nbytes > SMALL_FIELD_BYTES:
            raise LazyregError(
                f"max_displacement: this lazy {arr.nbytes / 2**20:.0f} MiB field would be read whole by every "
                "output chunk of its inverse, because how far each chunk must look is known only once the "
                "field is computed. Pass max_displacement= (a bound on |u| per axis, physical units) so each "
                "chunk reads only the field around it, or compute the field first (field.compute())"
            )
        arr = arr.rechunk(arr.shape)  # one key: every task gets the whole (small) field
    token = tokenize(arr.name, full, g, chunks, tol, maxit, None if md is None else md.tolist())
    name_t, name, name_r = "invert-field-task-" + token, "invert-field-" + token, "invert-field-report-" + token
    starts = [np.concatenate([[0], np.cumsum(c)[:-1]]) for c in chunks]
    numblocks = tuple(len(c) for c in chunks)
    # Each chunk task returns (values, stats). The values key depends on the task *and* on the
    # stats key, so no linear fusion applies: computing the inverse with its report
    # (DisplacementField.compute, which groups array and delayed collections apart) then shares
    # the same task keys and runs each chunk once.
    name_s = "invert-field-stats-" + token
    dsk_t: dict = {}
    dsk_v: dict = {}
    for idx in itertools.product(*[range(n) for n in numblocks]):
        first = np.array([starts[a][i] for a, i in enumerate(idx)], dtype=float)
        shape = tuple(int(chunks[a][i]) for a, i in enumerate(idx))
        out = Grid(shape, g.spacing, tuple(g.to_physical(first[None])[0]))
        if md is None:
            region = tuple(slice(0, n) for n in full.shape)
        else:
            region = _bounded_region(full, out, md)
        keys, dst, src = _region_refs(arr, region)
        rshape = tuple(s.stop - s.start for s in region) + (3,)
        start = np.array([s.start for s in region], dtype=float)
        plan = _ChunkPlan(idx, out, full, start, rshape, dst, src, md, tol, maxit, dtype)
        dsk_t[(name_t, *idx)] = (_invert_chunk, plan, keys)
        dsk_t[(name_s, *idx)] = (operator.getitem, (name_t, *idx), 1)
        dsk_v[(name, *idx, 0)] = (_values_of, (name_t, *idx), (name_s, *idx))
    stats_keys = [k for k in dsk_t if k[0] == name_s]
    dsk_r = {name_r: (_gather_report, stats_keys, numblocks, tol, maxit, md)}
    base = arr.__dask_graph__()
    layers = dict(base.layers)
    deps = {k: set(v) for k, v in base.dependencies.items()}
    layers[name_t], deps[name_t] = dsk_t, set(arr.__dask_layers__())
    layers[name], deps[name] = dsk_v, {name_t}
    layers[name_r], deps[name_r] = dsk_r, {name_t}
    hlg = HighLevelGraph(layers, deps)
    values = da.Array(hlg, name, chunks=tuple(chunks) + ((3,),), meta=np.empty((0, 0, 0, 0), dtype=dtype))
    report = Delayed(name_r, hlg, layer=name_r)
    return type(field).from_array(values, g.spacing, g.origin, report=report)


def _is_field(obj: Any) -> bool:
    """Whether ``obj`` is a lazyreg DisplacementField, by its interface (no import of field.py,
    which imports this module for :meth:`DisplacementField.inverse`)."""
    return isinstance(getattr(obj, "grid", None), Grid) and hasattr(obj, "is_lazy") and hasattr(type(obj), "from_array")


# --------------------------------------------------------------------------- public


def invert_field(
    field: DisplacementField,
    *,
    grid: Grid | xr.DataArray | None = None,
    tolerance: float = 0.01,
    max_iterations: int = 50,
    max_displacement: float | Sequence[float] | None = None,
    chunks: Any = None,
) -> DisplacementField:
    """The inverse of a displacement field, by fixed-point iteration (lazy for a lazy field).

    For ``D: x -> x + u(x)`` the inverse is the field ``v`` with ``y + v(y) = x`` whenever
    ``x + u(x) = y``, i.e. ``v(y) = -u(y + v(y))``. Every voxel ``y`` of the output grid iterates
    ``v <- -u(y + v)`` from ``v = 0`` until the residual ``|y + v + u(y + v) - y|`` (the mismatch
    of ``D`` at the found point, in voxels of the field grid, Euclidean) is below ``tolerance``, or
    ``max_iterations`` evaluations of ``u`` have been made.

    Parameters
    ----------
    field : DisplacementField
        The field to invert, numpy- or dask-backed.
    grid : Grid or xarray.DataArray, optional
        Where the inverse is sampled: a :class:`lazyreg.images.Grid`, or an image whose grid (and,
        if dask-backed, chunks) is used, e.g. ``lazyreg.grid(shape, spacing, origin)``.
        Default: the field's grid.
    tolerance : float, optional
        Largest accepted residual, in voxels of the field grid. Must be positive.
    max_iterations : int, optional
        Most evaluations of ``u`` per output voxel (at least 1).
    max_displacement : float or 3 floats, optional
        Lazy fields only: a bound on ``|u|`` per axis (z, y, x), physical units. Each output chunk
        then reads only the field chunks within this distance of it (plus the interpolation
        support), and raises :class:`LazyregError` at run time if the values it reads exceed the
        bound. Without it, every output chunk receives the whole field (allowed up to 256 MiB).
        For a numpy-backed field it is only checked against the values.
    chunks : optional
        Chunks (z, y, x) of a lazy inverse, as for :func:`dask.array.from_array`. Default: the
        field's chunks on the field's grid, the chunks of a dask-backed ``grid`` image, else the
        field's largest chunk size per axis. Ignored for a numpy-backed field.

    Returns
    -------
    DisplacementField
        The inverse on ``grid``, same dtype as ``field``. Dask-backed (nothing computed yet) when
        ``field`` is; numpy-backed otherwise. Its ``report`` is a dict (a ``dask.delayed`` dict
        for a lazy inverse, computed along with :meth:`DisplacementField.compute`) with
        ``converged`` (bool), ``max_residual`` (voxels), ``iterations`` (most used by a voxel),
        ``not_converged`` and ``outside`` (voxel counts, see Notes), ``points``, ``tolerance``,
        ``max_iterations``, ``max_displacement`` and ``chunk_max_residual`` (the largest
        residual of each output chunk, an array shaped like the chunk grid).

    Raises
    ------
    LazyregError
        If ``field`` is not a :class:`DisplacementField`, ``tolerance`` is not positive,
        ``max_iterations`` is not a positive integer, ``grid``, ``chunks`` or
        ``max_displacement`` are invalid, a numpy-backed field exceeds ``max_displacement``, or a
        lazy field larger than 256 MiB comes without ``max_displacement``. At compute time, if
        a lazy field exceeds ``max_displacement`` or holds NaN.

    Warns
    -----
    LazyregWarning
        When some voxels did not converge (at once for a numpy-backed field, when a chunk is
        computed for a lazy one); the report records it either way.

    Notes
    -----
    *Convergence.* The iteration contracts when ``u`` does, i.e. when ``|grad u| < 1``
    (physical units) along the path; each step divides the error by about ``1 / |grad u|``. A
    smooth field with ``|grad u| < 0.5`` converges to 0.01 voxel in about 10 steps, and the
    composition ``D(inverse(y))`` is then the identity within 0.1 voxel in the interior (the
    remainder is the trilinear interpolation of the inverse between its voxels). A field that
    folds (Jacobian determinant <= 0, see :func:`lazyreg.jacobian_determinant`) has no inverse;
    its voxels are reported as not converged.

    *Outside the field.* While iterating, ``u`` is extended beyond the field's voxels by its
    nearest edge values (the continuous index is clamped), which keeps the iteration continuous.
    ``D`` itself does not displace points outside its buffer (SimpleITK's convention), so where
    the preimage ``y + v(y)`` lies outside the buffer (typically a band about ``max|u|`` wide at
    the borders of an output grid equal to the field grid) the inverse inverts this extension,
    not ``D``; ``report["outside"]`` counts those voxels.

    *Laziness.* The inverse at ``y`` depends only on ``u`` within ``max|u|`` of ``y``, since every
    iterate is ``-u`` at some point (so ``|v_i| <= max|u_i|``). The size of this neighbourhood
    cannot be read from a field that is not computed, and dask fixes each task's dependencies
    when the graph is built, so: a numpy-backed field is inverted at once; a lazy field with
    ``max_displacement`` gets one task per output chunk depending on the field chunks within the
    bound (checked in the task: a value above the bound raises, never a silently wrong
    inverse); a lazy field without it gets one task per output chunk depending on the whole
    field as a single block (fields are coarse), which is refused beyond 256 MiB. Building the
    inverse computes nothing.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.transforms.invert import invert_field
    >>> z, y, x = np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij")
    >>> u = np.zeros((16, 16, 16, 3)); u[..., 2] = 1.5 * np.sin(2 * np.pi * x / 16)
    >>> D = lazyreg.DisplacementField.from_array(u, spacing=1.0)
    >>> inv = invert_field(D)
    >>> inv.report["converged"], inv.report["max_residual"] < 0.01
    (True, True)
    >>> p = np.array([[8.0, 8.0, 5.0], [8.0, 8.0, 5.3]])   # on a voxel centre, between voxels
    >>> np.round(D(inv(p)) - p, 3)[:, 2]                   # between: the inverse is interpolated
    array([0.001, 0.039])
    """
    if not _is_field(field):
        raise LazyregError(
            f"field: expected a lazyreg.DisplacementField, got {type(field).__name__} "
            "(wrap a (Z, Y, X, 3) array with lazyreg.DisplacementField.from_array)"
        )
    tol = _check_tolerance(tolerance)
    maxit = _check_iterations(max_iterations)
    md = _check_bound(max_displacement)
    g, grid_chunks = _output_grid(grid, field)
    if field.is_lazy:
        same = grid is None or g == field.grid
        out_chunks = _output_chunks(chunks, g, field, grid_chunks, same)
        return _lazy_inverse(field, g, out_chunks, tol, maxit, md)
    values = np.asarray(field.data.values)
    big = np.abs(values).reshape(-1, 3).max(0)
    if md is not None and np.any(big > md * (1 + 1e-6) + 1e-12):
        raise LazyregError(
            f"max_displacement: the field's largest |u| per axis {tuple(big.tolist())} exceeds the stated bound "
            f"{tuple(md.tolist())}"
        )
    result, stats = _invert_grid(values, np.zeros(3), field.grid, g, tol, maxit, values.dtype)
    _warn_unconverged(stats, tol, maxit)
    report = _report(stats, np.array([[[stats["max_residual"]]]]), tol, maxit, big if md is None else md)
    return type(field).from_array(result, g.spacing, g.origin, report=report)
