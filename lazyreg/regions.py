"""Where a physical box falls: in a grid's indices, in a dask array's chunks, through a transform.

The geometry :mod:`lazyreg.resample` uses to find the moving voxels an output chunk needs (see
``docs/design.md``). A *box* is a pair ``(lo, hi)`` of physical (z, y, x) points, the first and the
last voxel centre it spans; a *region* is a tuple of index slices of a grid.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Iterator, Sequence

import dask.array as da
import numpy as np

from .errors import LazyregError
from .images import Grid

__all__ = [
    "box_corners",
    "affine_box",
    "field_box",
    "leaves_buffer",
    "index_region",
    "sub_grid",
    "chunk_grids",
    "chunk_groups",
    "ChunkRefs",
    "point_regions",
    "region_task",
]

Box = tuple[np.ndarray, np.ndarray]

_CORNERS = np.array(list(itertools.product((0, 1), repeat=3)), dtype=float)


def box_corners(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """The 8 corners (8, 3) of the box ``[lo, hi]``.

    Examples
    --------
    >>> box_corners(np.zeros(3), np.array([1.0, 2.0, 3.0]))[[0, -1]]
    array([[0., 0., 0.],
           [1., 2., 3.]])
    """
    return lo + _CORNERS * (hi - lo)


def affine_box(matrix: np.ndarray, box: Box) -> Box:
    """The box of the 8 corners of ``box`` mapped by a 4x4 affine ``matrix`` (an exact bound).

    Examples
    --------
    >>> m = np.diag([2.0, 1.0, 1.0, 1.0])
    >>> m[:3, 3] = (0.0, 5.0, 0.0)
    >>> lo, hi = affine_box(m, (np.zeros(3), np.ones(3)))
    >>> lo.tolist(), hi.tolist()
    ([0.0, 5.0, 0.0], [2.0, 6.0, 1.0])
    """
    pts = box_corners(*box) @ matrix[:3, :3].T + matrix[:3, 3]
    return pts.min(0), pts.max(0)


def leaves_buffer(g: Grid, box: Box) -> bool:
    """Whether part of the box lies outside the buffer of ``g`` (continuous index [-0.5, n - 0.5)).

    A point at index exactly ``n - 0.5`` is outside, as for :func:`lazyreg.transforms.field.interpolate_field`
    and SimpleITK (such a point is not displaced by a field on ``g``).

    Examples
    --------
    >>> g = Grid((4, 4, 4), 1.0)
    >>> leaves_buffer(g, (np.zeros(3), np.full(3, 3.4))), leaves_buffer(g, (np.zeros(3), np.full(3, 3.5)))
    (False, True)
    """
    idx = g.to_index(np.stack(box))
    return bool(np.any(idx[0] < -0.5) or np.any(idx[1] >= np.asarray(g.shape) - 0.5))


def field_box(values: np.ndarray, full: Grid, box: Box) -> Box:
    """``box`` widened by the extreme displacements ``values`` (Z, Y, X, 3) of a field on ``full``.

    ``values`` are the field over the part of ``full`` the box touches. Where the box leaves the
    field's buffer, points are not displaced, so the widening includes zero.

    Raises
    ------
    LazyregError
        If ``values`` hold NaN or infinite values.

    Examples
    --------
    >>> g = Grid((4, 4, 4), 1.0)
    >>> values = np.zeros((4, 4, 4, 3))
    >>> values[..., 2] = 2.0  # +2 along x everywhere
    >>> lo, hi = field_box(values, g, (np.ones(3), np.full(3, 2.0)))
    >>> lo.tolist(), hi.tolist()
    ([1.0, 1.0, 3.0], [2.0, 2.0, 4.0])
    >>> field_box(values, g, (np.ones(3), np.full(3, 9.0)))[0].tolist()  # leaves the buffer
    [1.0, 1.0, 1.0]
    """
    dmin = values.reshape(-1, 3).min(0)
    dmax = values.reshape(-1, 3).max(0)
    if not (np.all(np.isfinite(dmin)) and np.all(np.isfinite(dmax))):
        raise LazyregError("transforms: displacement field contains NaN or infinite values")
    if leaves_buffer(full, box):
        dmin, dmax = np.minimum(dmin, 0), np.maximum(dmax, 0)
    return box[0] + dmin, box[1] + dmax


def index_region(g: Grid, box: Box, margin: int) -> tuple[slice, slice, slice] | None:
    """Index slices of ``g`` covering the box with ``margin`` voxels around, clipped; None if disjoint.

    Examples
    --------
    >>> g = Grid((10, 10, 10), 2.0)
    >>> index_region(g, (np.array([4.0, 4.0, 0.0]), np.array([4.0, 5.0, 30.0])), 1)  # z index 2, y 2 to 2.5
    (slice(1, 4, None), slice(1, 5, None), slice(0, 10, None))
    >>> index_region(g, (np.full(3, 50.0), np.full(3, 60.0)), 1) is None
    True
    """
    idx = g.to_index(box_corners(*box))
    lo = np.floor(idx.min(0)).astype(np.int64) - margin
    hi = np.ceil(idx.max(0)).astype(np.int64) + margin + 1
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, g.shape)
    if np.any(hi <= lo):
        return None
    return tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))  # type: ignore[return-value]


def sub_grid(g: Grid, region: Sequence[slice]) -> Grid:
    """The grid of ``g[region]`` (unit-step slices): same spacing, origin at the region's start.

    Examples
    --------
    >>> sub_grid(Grid((10, 10, 10), (2.0, 1.0, 1.0), (5.0, 0.0, 0.0)), (slice(2, 5), slice(0, 10), slice(1, 3)))
    Grid(shape=(3, 10, 2), spacing=(2.0, 1.0, 1.0), origin=(9.0, 0.0, 1.0))
    """
    start = np.array([s.start for s in region])
    return Grid(tuple(s.stop - s.start for s in region), g.spacing, tuple(g.to_physical(start[None])[0]))


def chunk_grids(g: Grid, chunks: tuple) -> Iterator[tuple[tuple[int, ...], Grid]]:
    """``(block index, grid)`` of every chunk of ``g`` cut by normalised dask ``chunks``, in C order.

    Examples
    --------
    >>> [(i, c.shape, c.origin) for i, c in chunk_grids(Grid((4, 1, 1), 2.0), ((3, 1), (1,), (1,)))]
    [((0, 0, 0), (3, 1, 1), (0.0, 0.0, 0.0)), ((1, 0, 0), (1, 1, 1), (6.0, 0.0, 0.0))]
    """
    for idx, grid, _ in chunk_groups(g, chunks, 1):
        yield idx, grid


def chunk_groups(g: Grid, chunks: tuple, factor: int) -> Iterator[tuple[tuple[int, ...], Grid, list]]:
    """Neighbouring chunks of ``g`` in groups of up to ``factor`` per axis, in C order.

    Yields ``(group index, group grid, parts)``; ``parts`` lists ``(chunk index, slices)``, the
    slices cutting the chunk out of the group's array. ``factor=1`` gives every chunk alone.

    Examples
    --------
    >>> groups = list(chunk_groups(Grid((5, 2, 2), 1.0), ((2, 2, 1), (2,), (2,)), 2))
    >>> [(i, gg.shape, [p[0] for p in parts]) for i, gg, parts in groups]
    [((0, 0, 0), (4, 2, 2), [(0, 0, 0), (1, 0, 0)]), ((1, 0, 0), (1, 2, 2), [(2, 0, 0)])]
    >>> groups[0][2][1][1]
    (slice(2, 4, None), slice(0, 2, None), slice(0, 2, None))
    """
    bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in chunks]
    per_axis = [range(0, len(c), factor) for c in chunks]
    for first in itertools.product(*per_axis):
        idx = tuple(f // factor for f in first)
        last = [min(f + factor, len(c)) for f, c in zip(first, chunks)]
        start = np.array([b[f] for b, f in zip(bounds, first)])
        shape = tuple(int(b[e] - b[f]) for b, f, e in zip(bounds, first, last))
        grid = Grid(shape, g.spacing, tuple(g.to_physical(start[None])[0]))
        parts = []
        for cidx in itertools.product(*[range(f, e) for f, e in zip(first, last)]):
            sl = tuple(slice(int(b[i] - s0), int(b[i + 1] - s0)) for b, i, s0 in zip(bounds, cidx, start))
            parts.append((cidx, sl))
        yield idx, grid, parts


@dataclass
class ChunkRefs:
    """The keys of the chunks of a dask array that cover an index region, and where each part goes.

    A task that receives the blocks of ``keys`` (in that order) rebuilds the region with
    :meth:`assemble`. Axes that the region leaves out are taken whole.

    Examples
    --------
    >>> x = da.arange(10, chunks=4)
    >>> refs = ChunkRefs.of(x, (slice(3, 9),))
    >>> [k[1:] for k in refs.keys]
    [(0,), (1,), (2,)]
    >>> refs.assemble([b.compute() for b in x.blocks])
    array([3, 4, 5, 6, 7, 8])
    """

    keys: list
    dst: list
    src: list
    shape: tuple
    dtype: np.dtype

    @classmethod
    def of(cls, arr: da.Array, region: Sequence[slice]) -> "ChunkRefs":
        """The chunks of ``arr`` that ``region`` (unit-step slices, leading axes) intersects."""
        region = tuple(region) + tuple(slice(0, n) for n in arr.shape[len(region):])
        keys, dst, src = [], [], []
        per_axis = []
        for sl, chunks in zip(region, arr.chunks):
            bounds = np.concatenate([[0], np.cumsum(chunks)])
            hits = []
            for b in range(len(chunks)):
                lo, hi = max(sl.start, bounds[b]), min(sl.stop, bounds[b + 1])
                if hi > lo:
                    hits.append((b, slice(int(lo - sl.start), int(hi - sl.start)), slice(int(lo - bounds[b]), int(hi - bounds[b]))))
            per_axis.append(hits)
        for combo in itertools.product(*per_axis):
            keys.append((arr.name, *[c[0] for c in combo]))
            dst.append(tuple(c[1] for c in combo))
            src.append(tuple(c[2] for c in combo))
        shape = tuple(s.stop - s.start for s in region)
        return cls(keys, dst, src, shape, arr.dtype)

    def assemble(self, blocks: list[np.ndarray]) -> np.ndarray:
        """The region, from the blocks of :attr:`keys` in that order.

        A region inside one block is a read-only view of it (no copy); otherwise a new array.
        """
        if len(self.keys) == 1:
            view = np.asarray(blocks[0])[self.src[0]].view()
            view.flags.writeable = False
            return view
        out = np.empty(self.shape, dtype=self.dtype)
        for b, d, s in zip(blocks, self.dst, self.src):
            out[d] = b[s]
        return out


def region_task(data: da.Array, region: Sequence[slice]) -> Any:
    """``data[region]`` as one ``dask.delayed`` value (a numpy array), on ``data``'s graph as it
    is: the delayed values of many regions, computed together, share the chunks they read (an
    optimised graph per region would rename them, and every region would compute its chunks anew).

    Examples
    --------
    >>> import dask, dask.array as da
    >>> x = da.arange(64.0, chunks=4).reshape(4, 4, 4).rechunk(2)
    >>> a, b = region_task(x, (slice(0, 3),) * 3), region_task(x, (slice(1, 4),) * 3)
    >>> [v.shape for v in dask.compute(a, b)]
    [(3, 3, 3), (3, 3, 3)]
    """
    part = data[tuple(region)]
    if part.npartitions > 1:
        part = part.rechunk(part.shape)
    return part.to_delayed(optimize_graph=False).ravel()[0]


def _cut(region: np.ndarray, boxes: list) -> list[np.ndarray]:
    return [np.array(region[tuple(slice(a, b) for a, b in zip(lo, hi))]) for lo, hi in boxes]


def point_regions(
    data: da.Array, centres: np.ndarray, reach: Sequence[float]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The part of a dask array within ``reach`` (index units, per axis) of each point, with the
    neighbours trilinear interpolation needs; read in one computation, one task per chunk of
    ``data`` holding points, never the whole array.

    Returns ``(ids, lo, values)`` triples: ``values`` (numpy, clipped to the array) starts at
    index ``lo`` and covers the reach of points ``ids``. The points of a chunk share one region
    (the chunk plus the reach) when it is smaller than their boxes together, else each point
    gets its own box: what is held is at most the points' boxes, and at most about the array.

    Examples
    --------
    >>> import dask.array as da
    >>> x = da.arange(1000.0, chunks=5).reshape(10, 10, 10).rechunk(5)
    >>> [(ids.tolist(), lo.tolist(), v.shape) for ids, lo, v in
    ...  point_regions(x, np.array([[2.3, 5.0, 9.0]]), (1.0, 1.0, 1.0))]
    [([0], [0, 3, 7], (5, 5, 3))]
    >>> [(ids.tolist(), lo.tolist(), v.shape) for ids, lo, v in point_regions(x, np.array([[2.3, 1, 1], [2, 2, 2]]), (1, 1, 1))]
    [([0, 1], [0, 0, 0], (5, 5, 5))]
    """
    import dask

    shape = np.asarray(data.shape, dtype=int)
    c = np.asarray(centres, dtype=float).reshape(-1, 3)
    r = np.asarray(reach, dtype=float)
    lo = np.clip(np.floor(c - r).astype(int) - 1, 0, shape - 1)
    hi = np.clip(np.floor(c + r).astype(int) + 2, lo + 1, shape)
    near = np.clip(np.rint(c).astype(int), 0, shape - 1)
    tile = np.stack(
        [np.searchsorted(np.cumsum(ch), near[:, ax], side="right") for ax, ch in enumerate(data.chunks)], axis=1
    )
    groups: dict[tuple, list[int]] = {}
    for i, t in enumerate(map(tuple, tile)):
        groups.setdefault(t, []).append(i)
    tasks, owners = [], []
    for ids in groups.values():
        rlo, rhi = lo[ids].min(axis=0), hi[ids].max(axis=0)
        region = region_task(data, tuple(slice(int(a), int(b)) for a, b in zip(rlo, rhi)))
        if np.prod(rhi - rlo) <= np.prod(hi[ids] - lo[ids], axis=1).sum():
            boxes, own = [(np.zeros(3, dtype=int), rhi - rlo)], [(np.asarray(ids), rlo)]
        else:
            boxes, own = [(lo[i] - rlo, hi[i] - rlo) for i in ids], [(np.array([i]), lo[i]) for i in ids]
        # all delayed: dask.compute returns arrays before delayed values when they are mixed
        tasks.append(dask.delayed(_cut, pure=True)(region, boxes))
        owners.append(own)
    out = []
    for own, values in zip(owners, dask.compute(*tasks)):
        for (ids, first), v in zip(own, values):
            out.append((ids, first, v))
    return out
