"""The 3D (z, y, x) source of one zarr array, possibly one channel / time point of an N-D array.

:class:`ZarrSource` reads a zarr array (v2 or v3) whose stored axes may be permuted and may hold
non-spatial axes (time, channel): each of those is either dropped (size 1) or fixed at one index
(one channel of a (t, c, z, y, x) array), so that a task reads only that channel's chunks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import zarr

from ..errors import LazyregError
from ..images import DIMS, Grid
from .read_errors import read_naming_chunk
from .source import HandleSource, file_stamp

__all__ = ["ZarrSource", "chunk_name"]


def chunk_name(arr: Any, path: Path, coords: tuple[int, ...]) -> str:
    """How to name a chunk (or shard) of a zarr array in a message: its key and its file.

    Examples
    --------
    >>> import tempfile, pathlib, zarr
    >>> from lazyreg.io.zarr_source import chunk_name
    >>> with tempfile.TemporaryDirectory() as d:
    ...     a = zarr.create_array(f"{d}/a.zarr", shape=(4, 4), chunks=(2, 2), dtype="u1")
    ...     chunk_name(a, pathlib.Path("a.zarr"), (1, 0))
    "chunk 'c/1/0' (file a.zarr/c/1/0)"
    """
    key = arr.metadata.encode_chunk_key(coords)
    return f"chunk '{key}' (file {path / key})"


class ZarrSource(HandleSource):
    """A 3D (z, y, x) view of one zarr array (v2 or v3) that may have extra axes or permuted axes.

    Parameters
    ----------
    path : Path
        The array folder.
    grid : Grid
        Physical grid of the zyx view.
    layout : tuple
        For each stored axis: ``"z"``, ``"y"``, ``"x"``; ``None`` for a size-1 axis that is
        dropped; an ``int``, the index read along a non-spatial axis (one channel / time point);
        or another name (e.g. ``"c"``), a non-spatial axis not chosen yet (:meth:`select` picks
        one index; such a source cannot be read).

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from lazyreg.images import Grid
    >>> from lazyreg.io.zarr_source import ZarrSource
    >>> with tempfile.TemporaryDirectory() as d:  # an array stored in x, y, z order
    ...     _ = zarr.create_array(f"{d}/xyz.zarr", data=np.arange(24).reshape(4, 3, 2), chunks=(2, 3, 2))
    ...     src = ZarrSource(f"{d}/xyz.zarr", Grid((2, 3, 4), spacing=1.0), layout=("x", "y", "z"))
    ...     src.shape, src.chunks, int(src[1, 2, 3])  # voxel z=1, y=2, x=3 is stored at [3, 2, 1]
    ((2, 3, 4), (2, 3, 2), 23)

    Channel 1 of a (c, z, y, x) array:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = zarr.create_array(f"{d}/c.zarr", data=np.arange(48).reshape(2, 2, 3, 4), chunks=(1, 2, 3, 4))
    ...     both = ZarrSource(f"{d}/c.zarr", Grid((2, 3, 4), spacing=1.0), layout=("c", "z", "y", "x"))
    ...     one = both.select({"c": 1})
    ...     one.layout, int(one[0, 0, 0])
    ((1, 'z', 'y', 'x'), 24)
    """

    lead: tuple = ()

    def __init__(self, path: Path, grid: Grid, layout: Sequence[str | int | None] = DIMS):
        self.path = Path(path).resolve()
        self.layout = tuple(int(n) if isinstance(n, (int, np.integer)) else n for n in layout)
        self.grid = grid
        arr = self.handle()
        if arr.ndim != len(self.layout) or sorted(n for n in self.layout if n in DIMS) != sorted(DIMS):
            raise LazyregError(f"path: {self.path} has {arr.ndim} dimensions, expected {len(self.layout)}")
        self.dtype = np.dtype(arr.dtype)
        native = getattr(arr, "shards", None) or arr.chunks
        self.chunks = tuple(int(native[self.layout.index(d)]) for d in DIMS)  # type: ignore[assignment]
        self._mtime = file_stamp(self.path)

    def select(self, indices: Mapping[str, int]) -> ZarrSource:
        """A copy that reads index ``indices[name]`` along each named non-spatial axis."""
        layout = tuple(indices.get(n, n) if isinstance(n, str) and n not in DIMS else n for n in self.layout)
        return ZarrSource(self.path, self.grid, layout)

    def open(self) -> Any:
        return zarr.open_array(store=str(self.path), mode="r")

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        return read_naming_chunk(self._read, index, self.chunks, self._describe, str(self.path))

    def _stored(self, index: tuple) -> tuple:
        """The stored index of a zyx index (non-spatial axes at their fixed index, or 0)."""
        open_axes = [n for n in self.layout if isinstance(n, str) and n not in DIMS]
        if open_axes:
            raise LazyregError(f"path: {self.path}: pick one index along {open_axes} to read (select)")
        return tuple(n if isinstance(n, int) else 0 if n is None else index[DIMS.index(n)] for n in self.layout)

    def _describe(self, ids: tuple[int, ...]) -> str:
        arr = self.handle()
        native = getattr(arr, "shards", None) or arr.chunks
        coords = tuple(ids[DIMS.index(n)] if n in DIMS else n // native[k] if isinstance(n, int) else 0
                       for k, n in enumerate(self.layout))
        return chunk_name(arr, self.path, coords)

    def _read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        out = np.asarray(self.handle()[self._stored(index)])
        names = [n for n in self.layout if n in DIMS]
        order = [names.index(d) for d in DIMS]
        return out if order == [0, 1, 2] else out.transpose(order)

    def token(self) -> str:
        return f"zarr:{self.path}:{self._mtime}:{self.layout}"
