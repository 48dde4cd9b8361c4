"""Blending block results into one displacement field, chunk by chunk.

A block result is a small dict: its ``status`` and, for blocks that aligned, the local transform
as parameters -- a 4x4 ``matrix`` and optionally a ``field`` (values on a coarse grid, from a
B-spline step) -- so that the local map is ``L_b(x) = matrix @ (x + v_b(x))`` and its displacement
``u_b(x) = L_b(x) - x`` can be evaluated anywhere (``v_b`` is extended beyond its grid by its edge
values). A block that started from the coarse stage's field ``c`` holds the crop of it that it
needs (``coarse``): its map is then ``y + c(y)`` with ``y = L_b(x)``, so every block's
displacement is relative to the static transforms alone and blocks that kept either start blend
alike. Blocks without a result (skipped or failed) are *filled* from their aligned neighbours:
their displacement is a tent-weighted mean of the neighbours' displacements, each *extended at
constant value* beyond the neighbour's own region (evaluated at the nearest point of that region),
so the neighbours' ramps take over with no hole and no jump, and a fill never exceeds what a
neighbour found on its own data (extrapolating a local affine or rotation would grow without bound
and can fold the field). A block with no aligned neighbour contributes zero displacement. Each chunk of the field is then the weighted mean of the
(at most 27, for overlap <= 0.5) blocks whose weights reach it (:mod:`lazyreg.registration.blocks`).
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from ..images import Grid
from .blocks import BlockLayout

__all__ = ["has_result", "local_displacement", "fill_block", "field_chunk"]

#: Tent half-width of the fill weights, in block sizes: positive over a neighbour's whole region.
FILL_REACH = 3.0
#: Points per axis of the grid a filled block's displacement is sampled on.
FILL_POINTS = 9
#: A block whose displacement differs, where their regions overlap, from more than half of its
#: (at least ``MIN_NEIGHBOURS``) aligned neighbours' by more than this fraction of the blending
#: ramp's width is an outlier (e.g. a wrong local RANSAC match): it is left out and filled from
#: them. Blending two results that differ by ``d`` across a ramp of width ``w`` adds a gradient of
#: about ``d / w`` to the field: this bound keeps it at 1/2.
DISAGREEMENT = 0.5
MIN_NEIGHBOURS = 3
#: Points per slab when evaluating a chunk (bounds the task's temporary memory).
SLAB_POINTS = 1 << 18
#: Up to this many points, interpolation gathers the corners itself (else scipy, on a float32 copy).
GATHER_POINTS = 4096


def _corners(idx: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation on axes of ``n`` points at continuous indices ``idx`` (clamped to the
    axes: edge values beyond): the lower and upper neighbours and the upper one's weight."""
    t = np.clip(idx, 0.0, n - 1)
    i0 = np.minimum(t.astype(np.intp), np.maximum(n - 2, 0))
    return i0, np.minimum(i0 + 1, n - 1), t - i0


def _interp_clamped(values: np.ndarray, grid: Grid, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of (Z, Y, X, 3) values at physical points (N, 3), edge values beyond.

    A few points gather their eight corners (float16 block fields need no float32 copy); many
    go through scipy, on a float32 copy of the part of the field they reach."""
    idx = grid.to_index(points)
    n = np.asarray(grid.shape)
    out = np.zeros((len(points), 3))
    if len(points) <= GATHER_POINTS:
        i0, i1, f = _corners(idx, n)
        for corner in itertools.product((0, 1), repeat=3):
            w = np.prod([f[:, a] if c else 1.0 - f[:, a] for a, c in enumerate(corner)], axis=0)
            out += w[:, None] * values[tuple((i1 if c else i0)[:, a] for a, c in enumerate(corner))]
        return out
    lo, hi = _corners(idx.min(axis=0), n)[0], _corners(idx.max(axis=0), n)[1]
    part = values[tuple(slice(int(a), int(b) + 1) for a, b in zip(lo, hi))].astype(np.float32)
    idx = (idx - lo).T
    for c in range(3):
        out[:, c] = ndi.map_coordinates(part[..., c], idx, order=1, mode="nearest")
    return out


def _interp_on_lattice(values: np.ndarray, grid: Grid, axes: tuple[np.ndarray, ...]) -> np.ndarray:
    """:func:`_interp_clamped` at every point of the lattice ``axes`` (z, y and x coordinates) ->
    (N, 3): trilinear interpolation is separable there, one axis at a time (float32)."""
    corners = [_corners((np.asarray(c, dtype=float) - o) / s, np.int64(n))
               for c, o, s, n in zip(axes, grid.origin, grid.spacing, grid.shape)]
    lo = [int(i0.min()) for i0, _, _ in corners]
    out = values[tuple(slice(a, int(i1.max()) + 1) for a, (_, i1, _) in zip(lo, corners))].astype(np.float32)
    for a, (i0, i1, f) in enumerate(corners):  # only the part of the field the lattice reads
        f = f.astype(np.float32).reshape((-1,) + (1,) * (3 - a))
        out = np.take(out, i0 - lo[a], axis=a) * (1 - f) + np.take(out, i1 - lo[a], axis=a) * f
    return out.reshape(-1, 3)


def has_result(result: dict) -> bool:
    """Whether a block has a local transform of its own (status "ok" or "unchanged").

    Examples
    --------
    >>> has_result({"status": "unchanged"}), has_result({"status": "failed"})
    (True, False)
    """
    return result["status"] in ("ok", "unchanged")


def local_displacement(result: dict, points: np.ndarray) -> np.ndarray:
    """Displacement ``u_b`` of one block result at physical points (N, 3).

    Aligned blocks evaluate their local map (then the coarse field, if they started from it);
    filled blocks interpolate their fill; others their crop of the coarse field, or zero.

    Examples
    --------
    >>> m = np.eye(4); m[:3, 3] = (0.0, 0.0, 2.0)
    >>> local_displacement({"status": "ok", "matrix": m}, np.zeros((1, 3)))
    array([[0., 0., 2.]])
    >>> local_displacement({"status": "skipped"}, np.zeros((1, 3)))
    array([[0., 0., 0.]])
    """
    return _displacement(result, points, lambda values, g: _interp_clamped(values, g, points))


def _displacement(result: dict, points: np.ndarray, at_points) -> np.ndarray:
    """:func:`local_displacement`, with ``at_points(values, grid)`` interpolating a field given on
    ``grid`` at ``points`` themselves (the coarse field after a block's matrix is interpolated at
    the mapped points)."""
    coarse = result.get("coarse")
    if has_result(result):
        y = points
        if result.get("field") is not None:
            y = points + at_points(*result["field"])
        m = result["matrix"]
        y = y @ m[:3, :3].T + m[:3, 3]
        if coarse is not None:
            y = y + _interp_clamped(coarse[0], coarse[1], y)
        return y - points
    if result.get("fill") is not None:
        return at_points(*result["fill"])
    if coarse is not None:  # no result of its own and no aligned neighbour: the coarse field
        return at_points(*coarse)
    return np.zeros_like(points, dtype=float)


def _fill_grid(layout: BlockLayout, index: tuple[int, int, int]) -> Grid:
    g = layout.region_grid(index)
    n = np.asarray(g.shape)
    pts = np.minimum(n, FILL_POINTS)
    sp = np.asarray(g.spacing) * np.where(pts > 1, (n - 1) / np.maximum(pts - 1, 1), 1.0)
    return Grid(tuple(int(p) for p in pts), tuple(sp), g.origin)


def fill_block(layout: BlockLayout, result: dict, *neighbours: dict) -> dict:
    """Give a block without its own result a displacement taken from its aligned neighbours.

    Aligned blocks are returned unchanged. Otherwise the block's region is sampled on a coarse
    grid; at each sample ``x`` the aligned neighbours' displacements are averaged with tent
    weights ``prod_a max(0, 1 - |x_a - c_a| / (FILL_REACH * blocksize_a))`` around their centres.
    Each neighbour's displacement is evaluated at the point of its own region nearest to ``x``
    (constant extension), so the fill stays within the displacements the neighbours found.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> from lazyreg.registration.blocks import block_layout
    >>> layout = block_layout(Grid((32, 32, 32), 1.0), blocksize=16, overlap=0.25)
    >>> m = np.eye(4); m[:3, 3] = 1.0
    >>> ok = {"index": (0, 0, 1), "status": "ok", "matrix": m}
    >>> filled = fill_block(layout, {"index": (0, 0, 0), "status": "failed"}, ok)
    >>> np.allclose(filled["fill"][0], 1.0)
    True
    """
    ok = [n for n in neighbours if has_result(n)]
    if has_result(result):
        outlier = _disagreement(layout, result, ok)
        if outlier is None:
            return result
        result = dict(result, status="failed", reason=outlier, matrix=None, field=None)
    if not ok:
        return dict(result, fill=None)
    g = _fill_grid(layout, result["index"])
    pts = g.to_physical(np.indices(g.shape).reshape(3, -1).T)
    size = np.asarray(layout.blocksize) * np.asarray(layout.grid.spacing)
    num = np.zeros_like(pts)
    den = np.zeros(len(pts))
    for n in ok:
        w = np.prod(np.clip(1.0 - np.abs(pts - layout.centre(n["index"])) / (FILL_REACH * size), 0.0, None), axis=1)
        rg = layout.region_grid(n["index"])
        lo = np.asarray(rg.origin)
        hi = lo + (np.asarray(rg.shape) - 1) * np.asarray(rg.spacing)
        num += w[:, None] * local_displacement(n, np.clip(pts, lo, hi))
        den += w
    values = (num / den[:, None]).reshape(g.shape + (3,))
    return dict(result, fill=(values, g))


def _disagreement(layout: BlockLayout, result: dict, ok: list[dict]) -> str | None:
    """Why ``result`` is an outlier among its aligned neighbours (None if it is not, or too few).

    Each neighbour and the block are compared where both hold their own results: on a lattice of
    the overlap of their regions. The block is an outlier when it differs from more than half of
    its aligned neighbours by more than ``DISAGREEMENT`` of the blending ramp's width there.
    """
    if len(ok) < MIN_NEIGHBOURS:
        return None
    size = np.asarray(layout.blocksize) * np.asarray(layout.grid.spacing)
    pad = np.asarray(layout.pad) * np.asarray(layout.grid.spacing)
    ramp = float(np.min(np.where(pad > 0, 2 * pad, size)))
    own = layout.region(result["index"])
    far, worst = 0, 0.0
    for n in ok:
        other = layout.region(n["index"])
        both = [slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(own, other)]
        if any(s.stop <= s.start for s in both):
            continue
        idx = np.stack(np.meshgrid(*[np.linspace(s.start, s.stop - 1, 4) for s in both], indexing="ij"), -1)
        pts = layout.grid.to_physical(idx.reshape(-1, 3))
        d = float(np.linalg.norm(local_displacement(result, pts) - local_displacement(n, pts), axis=1).max())
        worst = max(worst, d)
        far += d > DISAGREEMENT * ramp
    if far > len(ok) / 2:
        return (
            f"its displacement differs from {far} of its {len(ok)} aligned neighbours' by up to {worst:.3g} "
            f"(more than {DISAGREEMENT:g} of the {ramp:.3g} blending ramp) where they overlap: left out"
        )
    return None


def field_chunk(layout: BlockLayout, chunk: Grid, *results: dict) -> np.ndarray:
    """Blend block results over one chunk of the field grid -> (Z, Y, X, 3) float32.

    ``results`` are (filled) results of every block whose weight may reach the chunk.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> from lazyreg.registration.blocks import block_layout
    >>> layout = block_layout(Grid((32, 32, 32), 1.0), blocksize=16, overlap=0.25)
    >>> m = np.eye(4); m[:3, 3] = 1.0
    >>> results = [{"index": i, "status": "ok", "matrix": m} for i in layout.indices()]
    >>> out = field_chunk(layout, Grid((4, 4, 4), 1.0, origin=(14, 14, 14)), *results)
    >>> out.shape, bool(np.allclose(out, 1.0))
    ((4, 4, 4, 3), True)
    """
    coords = chunk.coords()
    zc, yc, xc = (coords[d] for d in "zyx")
    # field nodes past the last fixed voxel (a coarse field grid) take the weights of the nearest
    # fixed position: no block's weight reaches beyond the volume, and a node with no weight
    # would get zero displacement, pulling the last field interval towards zero
    lo, hi = layout.grid.extent
    clamped = [np.clip(c, lo[a], hi[a]) for a, c in enumerate((zc, yc, xc))]
    weights = []
    for r in results:
        w = [layout.weights_1d(r["index"], a, c) for a, c in enumerate(clamped)]
        if all(v.any() for v in w):
            weights.append((r, w))
    out = np.zeros(chunk.shape + (3,), dtype=np.float32)
    step = max(1, SLAB_POINTS // max(len(yc) * len(xc), 1))
    for z0 in range(0, len(zc), step):
        zs = zc[z0 : z0 + step]
        num = np.zeros((len(zs), len(yc), len(xc), 3))
        den = np.zeros((len(zs), len(yc), len(xc)))
        for r, (wz, wy, wx) in weights:
            # a block's weight is positive on a box of the lattice (a product of intervals)
            box = tuple(_positive(v) for v in (wz[z0 : z0 + step], wy, wx))
            if any(b is None for b in box):
                continue
            bz, by, bx = ((v[b] for v, b in zip((wz[z0 : z0 + step], wy, wx), box)))
            w = bz[:, None, None] * by[None, :, None] * bx[None, None, :]
            axes = tuple(c[b] for c, b in zip((zs, yc, xc), box))
            pts = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)
            u = _displacement(r, pts, lambda values, g: _interp_on_lattice(values, g, axes))
            num[box] += w[..., None] * u.reshape(w.shape + (3,))
            den[box] += w
        good = den > 0
        num[good] /= den[good, None]
        out[z0 : z0 + step] = num
    return out


def _positive(w: np.ndarray) -> slice | None:
    """The slice from the first to the last positive weight (None if none is)."""
    nz = np.flatnonzero(w > 0)
    return slice(int(nz[0]), int(nz[-1]) + 1) if len(nz) else None
