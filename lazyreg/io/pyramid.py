"""Multiscale pyramids: which axes each level halves, and the tasks that write a level from the one before.

Level ``k + 1`` of a pyramid written by :func:`lazyreg.to_zarr` (``levels=``) is the block mean of
level ``k`` over 2 voxels along each halved axis, read back from level ``k``'s *written* chunks, so
that level 0 is never computed twice and a task holds one output chunk and one input chunk at a
time. Which axes are halved (:func:`pyramid_plan`), as a BigDataViewer or napari user expects of
anisotropic data:

* an axis whose spacing is at most the coarsest spacing / sqrt(2) is halved alone: e.g. spacing
  (5, 1, 1) gives (5, 2, 2), (5, 4, 4), then (10, 8, 8), ...;
* when no axis is that much finer than the coarsest (nearly isotropic data), every axis is halved;
* an axis of 1 voxel is never halved; an axis of odd size loses its last voxel (as ITK's
  ``BinShrink``), so that every voxel of a level is the mean of whole blocks and sits exactly at
  their centre: level ``k + 1``'s translation is level ``k``'s plus (factor - 1) / 2 * spacing.

Integers are rounded to the nearest value (half to even) after averaging; booleans are true where
most of the block is (a tie gives false).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ..errors import LazyregError

__all__ = ["AUTO_LEVEL_MAX_SIZE", "pyramid_plan", "block_mean", "write_level_chunk", "level_tasks"]

#: ``levels="auto"`` adds levels until the largest axis is at most this many voxels.
AUTO_LEVEL_MAX_SIZE = 256
_FINER = math.sqrt(2.0)


def _halved(shape: Sequence[int], spacing: Sequence[float], spatial: Sequence[bool]) -> tuple[int, ...]:
    """Per axis 2 (halved) or 1 for the next level; all 1 when no axis can be halved."""
    can = [s and n >= 2 for n, s in zip(shape, spatial)]
    if not any(can):
        return (1,) * len(shape)
    coarsest = max(sp for sp, c in zip(spacing, can) if c)
    fine = [c and sp * _FINER <= coarsest for sp, c in zip(spacing, can)]
    pick = fine if any(fine) else can
    return tuple(2 if p else 1 for p in pick)


def pyramid_plan(
    shape: Sequence[int], spacing: Sequence[float], levels: int | str, spatial: Sequence[bool] | None = None
) -> list[tuple[int, ...]]:
    """The factor per axis (1 or 2) of each level after the first, from level 0's shape and spacing.

    Parameters
    ----------
    shape, spacing : sequence
        Level 0's size and voxel spacing per axis.
    levels : int or "auto"
        Number of levels, level 0 included (1: no pyramid), or ``"auto"``: until the largest axis
        has at most :data:`AUTO_LEVEL_MAX_SIZE` voxels (or no axis can be halved).
    spatial : sequence of bool, optional
        Which axes may be halved (default all); e.g. not a channel axis.

    Returns
    -------
    list of tuple of int
        ``levels - 1`` factors; level ``k``'s shape is level ``k - 1``'s divided by its factors.

    Raises
    ------
    LazyregError
        ``levels`` is not a positive integer or "auto", or more levels than the image can be halved.

    Examples
    --------
    >>> from lazyreg.io.pyramid import pyramid_plan
    >>> pyramid_plan((40, 512, 512), (5.0, 1.0, 1.0), 4)   # anisotropic: y, x first
    [(1, 2, 2), (1, 2, 2), (2, 2, 2)]
    >>> pyramid_plan((300, 600, 600), (1.0, 1.0, 1.0), "auto")
    [(2, 2, 2), (2, 2, 2)]
    """
    spatial = [True] * len(shape) if spatial is None else list(spatial)
    auto = isinstance(levels, str) and levels == "auto"
    if not auto and (isinstance(levels, bool) or not isinstance(levels, (int, np.integer)) or levels < 1):
        raise LazyregError(f"levels: expected a number of levels >= 1 (1: full resolution only) or 'auto', got {levels!r}")
    shape, spacing = [int(n) for n in shape], [float(s) for s in spacing]
    out: list[tuple[int, ...]] = []
    while auto or len(out) < int(levels) - 1:
        if auto and max(n for n, s in zip(shape, spatial) if s) <= AUTO_LEVEL_MAX_SIZE:
            break
        f = _halved(shape, spacing, spatial)
        if max(f) == 1:
            if auto:
                break
            raise LazyregError(
                f"levels: {levels} levels asked, but shape {tuple(shape)} can be halved only {len(out)} times "
                f"(every axis down to 1 voxel); pass levels={len(out) + 1} or 'auto'"
            )
        out.append(f)
        shape = [n // k for n, k in zip(shape, f)]
        spacing = [s * k for s, k in zip(spacing, f)]
    return out


def block_mean(values: np.ndarray, factors: Sequence[int], dtype: Any = None) -> np.ndarray:
    """Mean over blocks of ``factors`` voxels (trailing voxels that fill no block are dropped).

    Computed in float64; integers are rounded (half to even), booleans true where most are.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.io.pyramid import block_mean
    >>> block_mean(np.arange(10, dtype=np.uint8).reshape(2, 5), (2, 2))
    array([[3, 5]], dtype=uint8)
    """
    dtype = np.dtype(values.dtype if dtype is None else dtype)
    values = np.asarray(values)
    trim = tuple(slice(0, (n // f) * f) for n, f in zip(values.shape, factors))
    shape = [v for n, f in zip(values.shape, factors) for v in (n // f, f)]
    mean = values[trim].reshape(shape).mean(axis=tuple(range(1, 2 * values.ndim, 2)), dtype=np.float64)
    if dtype == np.bool_:
        return mean > 0.5
    if np.issubdtype(dtype, np.integer):
        return np.rint(mean).astype(dtype)
    return mean.astype(dtype)


def _open(path: str, mode: str) -> Any:
    import zarr

    arr = zarr.open_array(store=path, mode=mode)
    # every chunk is written, all-zero ones included (lazyreg's stores count them)
    return arr if mode == "r" else arr.with_config({"write_empty_chunks": True})


def write_level_chunk(_written: Any, source: str, target: str, region: tuple[tuple[int, int], ...], factors: Sequence[int]) -> None:
    """Write one chunk (``region``: (start, stop) per axis) of a level from the level before it.

    The region is filled piece by piece, each piece read from (about) one chunk of ``source``, so
    a task holds one output chunk and one input chunk. ``_written`` is the result of the tasks that
    wrote the input chunks (the graph dependency).

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from lazyreg.io.pyramid import write_level_chunk
    >>> with tempfile.TemporaryDirectory() as d:
    ...     a = zarr.create_array(d + "/0", data=np.arange(16.0).reshape(4, 4), chunks=(2, 2))
    ...     b = zarr.create_array(d + "/1", shape=(2, 2), chunks=(2, 2), dtype="f8")
    ...     write_level_chunk(None, d + "/0", d + "/1", ((0, 2), (0, 2)), (2, 2))
    ...     b[:]
    array([[ 2.5,  4.5],
           [10.5, 12.5]])
    """
    src, dst = _open(source, "r"), _open(target, "r+")
    out = np.empty(tuple(b - a for a, b in region), dtype=dst.dtype)
    # per halved axis: the output range split where the input moves to its next chunk
    pieces = []
    for (a, b), f, c in zip(region, factors, src.chunks):
        half = max(1, c // f) if f > 1 else b - a
        pieces.append([(s, min(b, s + half)) for s in range(a, b, half)])
    for piece in np.ndindex(*[len(p) for p in pieces]):
        ranges = [p[i] for p, i in zip(pieces, piece)]
        read = tuple(slice(a * f, b * f) for (a, b), f in zip(ranges, factors))
        put = tuple(slice(a - r[0], b - r[0]) for (a, b), r in zip(ranges, region))
        out[put] = block_mean(np.asarray(src[read]), factors, dst.dtype)
    dst[tuple(slice(a, b) for a, b in region)] = out


def level_tasks(
    name: str,
    prev_keys: Any,
    prev_chunks: Sequence[int],
    source: str,
    target: str,
    shape: Sequence[int],
    chunks: Sequence[int],
    factors: Sequence[int],
) -> tuple[dict, Any]:
    """The tasks writing every chunk of one level: ``({key: task}, key of chunk index -> key)``.

    ``prev_keys(index)`` names the task that wrote chunk ``index`` of the level before; each task
    depends only on the input chunks it reads.

    Examples
    --------
    >>> from lazyreg.io.pyramid import level_tasks
    >>> tasks, key = level_tasks("lvl1", lambda i: ("lvl0",) + i, (2, 2), "a/0", "a/1", (2, 3), (2, 2), (2, 2))
    >>> sorted(tasks), tasks[key((0, 1))][1]
    ([('lvl1', 0, 0), ('lvl1', 0, 1)], [('lvl0', 0, 2), ('lvl0', 1, 2)])
    """
    grid = [-(-int(n) // int(c)) for n, c in zip(shape, chunks)]
    tasks = {}
    for idx in np.ndindex(*grid):
        region = tuple((i * c, min(n, (i + 1) * c)) for i, c, n in zip(idx, chunks, shape))
        spans = [range((a * f) // pc, (b * f - 1) // pc + 1) for (a, b), f, pc in zip(region, factors, prev_chunks)]
        deps = [prev_keys(tuple(s[k] for s, k in zip(spans, j))) for j in np.ndindex(*[len(s) for s in spans])]
        tasks[(name,) + tuple(int(i) for i in idx)] = (write_level_chunk, deps, source, target, region, tuple(factors))
    return tasks, lambda idx: (name,) + tuple(int(i) for i in idx)
