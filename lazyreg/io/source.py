"""Store-backed sources: picklable readers that let a task read any region of an image on disk.

An image opened by :func:`lazyreg.open_image` is a dask array built with ``da.from_array`` on a
:class:`Source`. The source knows its full grid, so a task that learns only at run time which region
it needs (because the region depends on transform values computed in the same graph) can read that
region itself, from a worker, without the graph depending on every chunk. :func:`find_source`
recovers the source of an image and checks that the image is still a pure selection of it.
"""

from __future__ import annotations

import abc
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from ..image import Grid, grid_of, image

__all__ = ["Source", "from_source", "find_source"]

_NAME_PREFIX = "lazyreg-read-"
# Graph layers that only select or re-chunk data: the values at a physical point are unchanged.
_SELECTION_PREFIXES = ("getitem-", "rechunk-")


class Source(abc.ABC):
    """A picklable reader of a 3D array in (z, y, x) order, on a known physical grid.

    Subclasses set ``grid`` (a :class:`lazyreg.image.Grid`), ``dtype``, ``chunks`` (the native chunk
    shape, z, y, x) and implement :meth:`read`. They must pickle cheaply (reopen lazily in a worker).
    """

    grid: Grid
    dtype: np.dtype
    chunks: tuple[int, int, int]
    ndim = 3

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.grid.shape

    @abc.abstractmethod
    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        """Read the region given by three slices with step 1 and bounds inside the shape."""

    @abc.abstractmethod
    def token(self) -> str:
        """A string that identifies the data (path, group, modification time ...), for naming."""

    def __getitem__(self, index: Any) -> np.ndarray:
        if not isinstance(index, tuple):
            index = (index,)
        index = index + (slice(None),) * (3 - len(index))
        slices = []
        post = []
        for s, n in zip(index, self.shape):
            if isinstance(s, (int, np.integer)):
                i = int(s) + n if s < 0 else int(s)
                slices.append(slice(i, i + 1))
                post.append(0)
            elif isinstance(s, slice):
                start, stop, step = s.indices(n)
                if step < 1:
                    raise TypeError(f"negative steps are not supported by a lazyreg source: {s!r}")
                slices.append(slice(start, max(start, stop)))
                post.append(slice(None, None, step))
            else:
                raise TypeError(f"unsupported index {s!r} for a lazyreg source")
        out = self.read(tuple(slices))
        return out[tuple(post)]

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.token()} shape={self.shape} dtype={self.dtype}>"


def from_source(
    source: Source,
    *,
    chunks: Any = None,
    name: str | None = None,
    units: str = "micrometer",
    attrs: dict | None = None,
) -> xr.DataArray:
    """A lazy image whose chunks are read from ``source``; nothing is read now.

    ``chunks`` defaults to the source's native chunks.
    """
    dchunks = source.chunks if chunks is None else chunks
    arr = da.from_array(
        source,
        chunks=dchunks,
        name=_NAME_PREFIX + tokenize(source.token(), dchunks),
        inline_array=False,
        meta=np.empty((0, 0, 0), dtype=source.dtype),
        asarray=False,
        fancy=False,
    )
    g = source.grid
    img = image(arr, g.spacing, g.origin, name=name, units=units)
    if attrs:
        img.attrs.update(attrs)
    return img


def find_source(img: xr.DataArray) -> tuple[Source, tuple[int, int, int], tuple[int, int, int]] | None:
    """The store behind an image, if the image is a pure selection of one.

    Returns ``(source, start, step)`` such that ``img.values == source[start::step, ...]`` (cropped to
    ``img.shape``), or ``None`` when the image is in memory, computed from something else, or changed
    after opening (any graph layer other than reading, slicing and re-chunking).
    """
    arr = img.data
    if not isinstance(arr, da.Array):
        return None
    layers = arr.dask.layers
    src_names = [k for k in layers if k.startswith(_NAME_PREFIX)]
    if len(src_names) != 1:
        return None
    name = src_names[0]
    original = layers.get("original-" + name)
    if original is None:
        return None
    source = dict(original).get("original-" + name)
    if not isinstance(source, Source):
        return None
    allowed = {name, "original-" + name}
    for k in layers:
        if k not in allowed and not k.startswith(_SELECTION_PREFIXES):
            return None
    g = grid_of(img)
    start = (np.asarray(g.origin) - np.asarray(source.grid.origin)) / np.asarray(source.grid.spacing)
    step = np.asarray(g.spacing) / np.asarray(source.grid.spacing)
    if not (np.allclose(start, np.round(start), atol=1e-3) and np.allclose(step, np.round(step), atol=1e-3)):
        return None
    start_i = tuple(int(v) for v in np.round(start))
    step_i = tuple(int(v) for v in np.round(step))
    if min(step_i) < 1 or min(start_i) < 0:
        return None
    return source, start_i, step_i
