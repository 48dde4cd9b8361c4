"""Geometry of piecewise alignment: overlapping blocks on the fixed grid and their blending weights.

The fixed volume is tiled by block *cores* of ``blocksize`` voxels (the last core along an axis may
be shorter). Each block's *region* -- what is registered -- is its core padded by
``pad = round(overlap * blocksize)`` voxels on every side (clipped to the volume), so neighbouring
regions share ``2 * pad`` voxels. Blending weights are separable products of a 1D trapezoid along
each axis: 1 in the middle of the core, falling linearly to 0 across the overlap band
``[core_edge - pad, core_edge + pad]``. In the interior two neighbours' ramps sum to one; at the
volume edges and next to blocks without a result the weights are renormalised by their sum.
Everything here is pure geometry on :class:`lazyreg.images.Grid` and physical points.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from ..errors import LazyregError
from ..images import Grid

__all__ = ["BlockLayout", "block_layout"]


@dataclass(frozen=True)
class BlockLayout:
    """Blocks over a fixed grid.

    Attributes
    ----------
    grid : Grid
        The fixed grid.
    blocksize : tuple of int
        Core size in voxels (z, y, x).
    pad : tuple of int
        Overlap padding on each side, voxels.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> layout = block_layout(Grid((40, 64, 80), 1.0), blocksize=32, overlap=0.25)
    >>> layout.nblocks, layout.pad, layout.region((0, 1, 2))
    ((2, 2, 3), (8, 8, 8), (slice(0, 40, None), slice(24, 64, None), slice(56, 80, None)))
    """

    grid: Grid
    blocksize: tuple[int, int, int]
    pad: tuple[int, int, int]

    @property
    def nblocks(self) -> tuple[int, int, int]:
        """Number of blocks along z, y, x."""
        return tuple(-(-n // b) for n, b in zip(self.grid.shape, self.blocksize))

    def indices(self) -> Iterator[tuple[int, int, int]]:
        """Block indices in C order."""
        return itertools.product(*(range(n) for n in self.nblocks))

    def core(self, index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Index slices of a block's core in the fixed grid."""
        return tuple(
            slice(i * b, min((i + 1) * b, n)) for i, b, n in zip(index, self.blocksize, self.grid.shape)
        )

    def region(self, index: tuple[int, int, int]) -> tuple[slice, slice, slice]:
        """Index slices of a block's region (core plus overlap, clipped to the grid)."""
        return tuple(
            slice(max(0, c.start - p), min(n, c.stop + p))
            for c, p, n in zip(self.core(index), self.pad, self.grid.shape)
        )

    def region_grid(self, index: tuple[int, int, int]) -> Grid:
        """The grid of a block's region (fixed spacing, shifted origin)."""
        r = self.region(index)
        start = np.array([s.start for s in r], dtype=float)
        return Grid(
            tuple(s.stop - s.start for s in r), self.grid.spacing, tuple(self.grid.to_physical(start[None])[0])
        )

    def centre(self, index: tuple[int, int, int]) -> np.ndarray:
        """Physical centre of a block's core (the full-size core, even where the grid ends)."""
        c = (np.asarray(index) + 0.5) * np.asarray(self.blocksize) - 0.5
        return self.grid.to_physical(c[None])[0]

    def _physical(self) -> tuple[np.ndarray, np.ndarray]:
        sp = np.asarray(self.grid.spacing)
        return np.asarray(self.blocksize) * sp, np.asarray(self.pad) * sp

    def weights_1d(self, index: tuple[int, int, int], axis: int, coords: np.ndarray) -> np.ndarray:
        """Blending weight of a block along one axis at physical coordinates ``coords``.

        A trapezoid: 1 within ``blocksize/2 - pad`` of the core centre, 0 beyond
        ``blocksize/2 + pad``, linear between. With ``pad = 0`` it is the core's indicator.
        Two neighbours' weights sum to one wherever both are defined.
        """
        size, pad = self._physical()
        d = np.abs(np.asarray(coords, dtype=float) - self.centre(index)[axis])
        half = size[axis] / 2.0
        if pad[axis] == 0:
            return (d <= half).astype(float)  # ties at a core border: renormalisation halves them
        return np.clip((half + pad[axis] - d) / (2.0 * pad[axis]), 0.0, 1.0)

    def reach(self) -> np.ndarray:
        """Physical distance from a core centre beyond which a block's weight is zero, per axis."""
        size, pad = self._physical()
        return size / 2.0 + pad

    def blocks_touching(self, lo: np.ndarray, hi: np.ndarray) -> list[tuple[int, int, int]]:
        """Blocks whose weight is non-zero somewhere in the physical box ``[lo, hi]``.

        The box is first clamped to the fixed volume's extent, as the blending weights are
        (:func:`lazyreg.registration.blend.field_chunk`): a field node beyond the volume takes the
        weights of the nearest fixed position.
        """
        size, _ = self._physical()
        reach = self.reach()
        g_lo, g_hi = self.grid.extent
        lo = np.clip(np.asarray(lo, dtype=float), g_lo, g_hi)
        hi = np.clip(np.asarray(hi, dtype=float), g_lo, g_hi)
        ranges = []
        for a in range(3):
            first = self.centre((0, 0, 0))[a]
            # centre_i = first + i * size; need |x - centre_i| <= reach for some x in [lo, hi]
            i0 = int(np.floor((lo[a] - reach[a] - first) / size[a])) - 1
            i1 = int(np.ceil((hi[a] + reach[a] - first) / size[a])) + 1
            keep = [
                i
                for i in range(max(0, i0), min(self.nblocks[a], i1 + 1))
                if first + i * size[a] - reach[a] <= hi[a] and first + i * size[a] + reach[a] >= lo[a]
            ]
            ranges.append(keep)
        return list(itertools.product(*ranges))

    def neighbours(self, index: tuple[int, int, int]) -> list[tuple[int, int, int]]:
        """The (up to 26) blocks next to ``index`` (faces, edges and corners)."""
        out = []
        for off in itertools.product((-1, 0, 1), repeat=3):
            j = tuple(i + o for i, o in zip(index, off))
            if j != tuple(index) and all(0 <= v < n for v, n in zip(j, self.nblocks)):
                out.append(j)
        return out


def _int3(value, name: str) -> tuple[int, int, int]:
    v = np.broadcast_to(np.asarray(value), (3,)) if np.ndim(value) == 0 else np.asarray(value)
    if v.shape != (3,) or not all(float(x).is_integer() for x in v.ravel()):
        raise LazyregError(f"{name}: expected an integer or 3 integers (z, y, x), got {value!r}")
    return tuple(int(x) for x in v)


def block_layout(grid: Grid, blocksize, overlap: float) -> BlockLayout:
    """Check ``blocksize`` and ``overlap`` against ``grid`` and lay out the blocks.

    Examples
    --------
    >>> from lazyreg.images import Grid
    >>> from lazyreg.registration.blocks import block_layout
    >>> L = block_layout(Grid((100, 64, 64), 1.0), 32, 0.25)
    >>> L.nblocks, L.pad, L.region((1, 0, 0))
    ((4, 2, 2), (8, 8, 8), (slice(24, 72, None), slice(0, 40, None), slice(0, 40, None)))
    """
    try:
        bs = _int3(blocksize, "blocksize")
    except (TypeError, ValueError):
        raise LazyregError(f"blocksize: expected an integer or 3 integers (z, y, x), got {blocksize!r}") from None
    if min(bs) < 8:
        raise LazyregError(f"blocksize: every size must be at least 8 voxels, got {bs}")
    too_big = [f"{d}: {b} > {n}" for d, b, n in zip("zyx", bs, grid.shape) if b > n]
    if too_big:
        raise LazyregError(
            f"blocksize: larger than the fixed image {grid.shape} ({', '.join(too_big)}); "
            "use a smaller blocksize, or align() for one global transform"
        )
    try:
        ov = float(overlap)
    except (TypeError, ValueError):
        raise LazyregError(f"overlap: expected a number in [0, 1), got {overlap!r}") from None
    if not 0.0 <= ov < 1.0:
        raise LazyregError(f"overlap: expected a fraction of the block size in [0, 1), got {overlap!r}")
    pad = tuple(int(round(ov * b)) for b in bs)
    return BlockLayout(grid, bs, pad)
