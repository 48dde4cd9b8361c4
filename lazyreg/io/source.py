"""Store-backed sources: picklable readers that let a task read any region of an image on disk.

An image opened by :func:`lazyreg.open_image` is a dask array built with ``da.from_array`` on a
:class:`Source`. The source knows its full grid, so a task that learns only at run time which region
it needs (because the region depends on transform values computed in the same graph) can read that
region itself, from a worker, without the graph depending on every chunk. :func:`find_source`
recovers the source of an image and checks that the image is still a pure selection of it;
:func:`read_region` is what such a task calls, and :func:`region_array` wraps one region read in a
single-task dask array (:class:`lazyreg.io.chunk_cache.ChunkCache` keeps decoded chunks for tasks
whose regions overlap). :class:`HandleSource` is the base of sources that read through a handle
opened lazily (zarr, TIFF).
"""

from __future__ import annotations

import abc
import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.highlevelgraph import HighLevelGraph

from ..errors import LazyregError
from ..images import Grid, image
from .selection import store_indices

__all__ = [
    "file_stamp", "Source", "from_source", "find_source", "read_region", "region_index", "region_array"]

_NAME_PREFIX = "lazyreg-read-"
# Graph layers that only select or re-chunk data: the values at a physical point are unchanged.
_SELECTION_PREFIXES = ("getitem-", "rechunk-")


class Source(abc.ABC):
    """A picklable reader of a 3D array in (z, y, x) order, on a known physical grid.

    Subclasses set ``grid`` (a :class:`lazyreg.images.Grid`), ``dtype``, ``chunks`` (the native chunk
    shape, z, y, x) and implement :meth:`read` and :meth:`token`. They must pickle cheaply (reopen
    lazily in a worker, see :class:`HandleSource`). Indexing a source (``source[2, 10:20, ::2]``)
    takes integers and slices with positive steps, reads the bounding region with :meth:`read`
    and applies the steps to it.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.images import Grid
    >>> from lazyreg.io.source import Source
    >>> class Ramp(Source):  # each voxel holds its flat index
    ...     grid, dtype, chunks = Grid((4, 5, 6), spacing=1.0), np.dtype("int64"), (2, 5, 6)
    ...     def read(self, index):
    ...         return np.arange(120).reshape(4, 5, 6)[index]
    ...     def token(self):
    ...         return "ramp"
    >>> src = Ramp()
    >>> src.shape
    (4, 5, 6)
    >>> src[1, -1, ::2]
    array([54, 56, 58])
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


class HandleSource(Source):
    """A source that reads through a handle (an open zarr array, file store ...) opened lazily.

    Subclasses implement :meth:`open`; :meth:`handle` opens it once per copy of the source, and a
    pickled copy leaves it behind: an unpickled source (e.g. on a distributed worker) reopens it.
    """

    @abc.abstractmethod
    def open(self) -> Any:
        """Open the handle that :meth:`read` uses (called by :meth:`handle`, once per copy)."""

    def handle(self) -> Any:
        """The open handle, opened now if this copy of the source has none."""
        handle = self.__dict__.get("_handle")
        if handle is None:
            handle = self._handle = self.open()
        return handle

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_handle", None)  # reopened lazily in the worker
        return state


def from_source(
    source: Source,
    *,
    chunks: Any = None,
    name: str | None = None,
    units: str = "micrometer",
    attrs: dict | None = None,
) -> xr.DataArray:
    """A lazy image whose chunks are read from ``source``; nothing is read now.

    Parameters
    ----------
    source : Source
        The reader; its grid gives the image's coordinates.
    chunks : optional
        dask chunks; default the source's native chunks.
    name : str, optional
        Name of the DataArray.
    units : str
        ``attrs["units"]`` of the image.
    attrs : dict, optional
        More attributes of the image.

    Returns
    -------
    xarray.DataArray
        A dask-backed lazyreg image; :func:`find_source` recovers ``source`` from it.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.images import Grid
    >>> from lazyreg.io.source import Source, from_source
    >>> class Ramp(Source):  # each voxel holds its flat index
    ...     grid, dtype, chunks = Grid((4, 5, 6), spacing=(2.0, 1.0, 1.0)), np.dtype("int64"), (2, 5, 6)
    ...     def read(self, index):
    ...         return np.arange(120).reshape(4, 5, 6)[index]
    ...     def token(self):
    ...         return "ramp"
    >>> img = from_source(Ramp(), name="ramp")
    >>> img.data.chunks, float(img.z[-1])
    (((2, 2), (5,), (6,)), 6.0)
    >>> int(img[3, 4, 5])
    119
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
    after opening (any graph layer other than reading, slicing and re-chunking). ``start`` and
    ``step`` are traced through the graph (:func:`lazyreg.io.selection.store_indices`), never taken
    from the coordinates, which can be reassigned without moving data.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.source import find_source
    >>> from lazyreg.testing import counting_image
    >>> img, _ = counting_image(lazyreg.image(np.zeros((8, 8, 8)), spacing=1.0))
    >>> src, start, step = find_source(img[2:, ::2])
    >>> start, step
    ((2, 0, 0), (1, 2, 1))
    >>> find_source(img * 2) is None
    True
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
    vectors = store_indices(arr, name)
    if vectors is None:
        return None
    start_i = tuple(int(v[0]) for v in vectors)
    step_i = tuple(int(v[1] - v[0]) if len(v) > 1 else 1 for v in vectors)
    for v, a, b in zip(vectors, start_i, step_i):
        if b < 1 or a < 0 or not np.array_equal(v, a + b * np.arange(len(v))):
            return None
    return source, start_i, step_i


def read_region(
    source: Source, start: Sequence[int], step: Sequence[int], region: Sequence[slice]
) -> np.ndarray:
    """Read ``region`` (step-1 slices in the image's index space) of an image that is the selection
    ``source[start::step, ...]`` (as returned by :func:`find_source`); runs inside a task.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.source import find_source, read_region
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.zeros((8, 8, 8)), spacing=1.0))
    >>> src, start, step = find_source(img[2:, ::2])
    >>> read_region(src, start, step, (slice(0, 2), slice(1, 3), slice(0, 8))).shape
    (2, 2, 8)
    >>> log.reads  # rows 2, 4 of the store's y axis, read as one box
    [(slice(2, 4, None), slice(2, 5, None), slice(0, 8, None))]
    """
    return source[region_index(start, step, region)]


def region_index(start: Sequence[int], step: Sequence[int], region: Sequence[slice]) -> tuple[slice, ...]:
    """The slices of the store that :func:`read_region` reads for ``region`` of ``source[start::step]``.

    Examples
    --------
    >>> region_index((2, 0, 0), (1, 2, 1), (slice(0, 2), slice(1, 3), slice(0, 8)))
    (slice(2, 4, 1), slice(2, 5, 2), slice(0, 8, 1))
    """
    return tuple(slice(a + s.start * b, a + (s.stop - 1) * b + 1, b) for s, a, b in zip(region, start, step))


def _normalize_region(region: Any, shape: Sequence[int]) -> tuple[slice, ...]:
    if not isinstance(region, tuple):
        region = (region,)
    region = region + (slice(None),) * (len(shape) - len(region))
    out = []
    for s, n in zip(region, shape):
        if not isinstance(s, slice):
            raise TypeError(f"region: expected slices, got {s!r}")
        start, stop, step = s.indices(n)
        if step != 1:
            raise TypeError(f"region: expected slices with step 1, got {s!r}")
        out.append(slice(start, max(start, stop)))
    return tuple(out)


def region_array(img: xr.DataArray, region: Any, *, data: da.Array | None = None) -> da.Array:
    """``img[region]`` as a single-chunk dask array; nothing is read now.

    When ``img`` is store-backed (:func:`find_source`), the array's one task reads exactly the region
    from the store and depends on nothing, so a distributed worker reads it when the task runs
    instead of receiving the image's chunks. Otherwise it is ``data[region]`` in one chunk, with
    ``data`` defaulting to ``img.data`` (pass a dask array built once from an in-memory image to
    take many regions without copying each into the graph).

    ``region``: slices with step 1 (as for numpy; missing trailing axes mean the whole axis).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.source import region_array
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.ones((8, 8, 8)), spacing=1.0))
    >>> r = region_array(img, (slice(0, 4), slice(2, 6)))
    >>> r.shape, r.npartitions, log.reads  # one task; nothing read yet
    ((4, 4, 8), 1, [])
    >>> float(r.sum()), log.reads
    (128.0, [(slice(0, 4, None), slice(2, 6, None), slice(0, 8, None))])
    """
    region = _normalize_region(region, img.shape)
    found = find_source(img)
    if found is None:
        if data is None:
            data = img.data
            if not isinstance(data, da.Array):  # in memory: only the region goes into the graph
                return da.from_array(np.asarray(data)[region], chunks=-1)
        return data[region].rechunk(-1)
    source, start, step = found
    bounds = tuple((s.start, s.stop) for s in region)
    name = "lazyreg-region-" + tokenize(source.token(), start, step, bounds)
    shape = tuple(s.stop - s.start for s in region)
    layer = {(name,) + (0,) * len(shape): (read_region, source, start, step, region)}
    graph = HighLevelGraph.from_collections(name, layer, dependencies=[])
    return da.Array(graph, name, chunks=tuple((n,) for n in shape), meta=np.empty((0,) * len(shape), dtype=source.dtype))


def file_stamp(path: str | os.PathLike) -> str:
    """A short hash of the names, sizes and modification times of every file at ``path`` (a file or
    a directory tree): it changes when any of them is rewritten. Part of every source's token, so
    results computed from an input (:mod:`lazyreg.result_cache`) are never served for a changed
    one. Costs one ``stat`` per file (about 1 s per 100 000 files on a local disk).

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "a").write_bytes(b"1")
    >>> before = file_stamp(d)
    >>> _ = (d / "a").write_bytes(b"22")
    >>> file_stamp(d) != before
    True
    """
    p = Path(path)
    h = hashlib.sha1()
    if p.is_file():
        st = p.stat()
        h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]
    for root, dirs, files in os.walk(p):
        dirs.sort()
        for name in sorted(files):
            f = Path(root) / name
            try:
                st = f.stat()
            except OSError:
                continue
            h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns};".encode())
    return h.hexdigest()[:16]
