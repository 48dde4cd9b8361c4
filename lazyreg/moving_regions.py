"""Moving images that are dask graphs but not store-backed, read region by region inside tasks.

:func:`lazyreg.apply_transform` reads a store-backed moving image (:func:`lazyreg.io.source.find_source`)
inside its output tasks, so no moving chunk is a graph task that a distributed worker could run
ahead of its consumers and hold. Any other dask image (``img * 2``, ``img.where(...)``, a generated
graph) used to make every output task depend on the moving chunks its region intersects: on
dask.distributed those chunks were computed ahead, kept until their last consumer ran, copied
between workers and spilled (issue 14: 1.86 GiB held and 1.14 GiB spilled for a 2 GiB image on
2 workers of 1 GiB).

:class:`GraphSource` makes such an image a :class:`lazyreg.io.source.Source` instead: reading a
region computes, inside the task and with dask's synchronous scheduler, only the moving blocks
that the region intersects (and what they depend on). Wrapped in the per-process
:class:`lazyreg.io.chunk_cache.ChunkCache` like a store, each block is usually computed about
once per process while the tasks that share it run. The values are those of the graph (the same functions
on the same inputs), so the result is bit-identical to the chunk-dependency path.

:func:`graph_source` decides when this applies: a dask graph that holds no data itself. Graphs that
hold their data (``da.from_array`` of a numpy array, a persisted image, futures) keep the chunk
dependencies: their chunks are in memory already, and copying them into every process would cost
more than it saves.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict

import dask.array as da
import numpy as np
import xarray as xr
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

try:  # dask's task classes (2024.12 on); before, tasks were tuples only
    from dask._task_spec import DataNode, GraphNode
except ImportError:  # pragma: no cover
    DataNode = GraphNode = ()  # type: ignore[assignment,misc]

from .images import Grid, grid_of
from .io.chunk_cache import chunk_cache_bytes
from .io.source import Source

__all__ = ["GraphSource", "graph_source", "GRAPH_DATA_BYTES"]

#: A moving graph holding more than this many bytes of data itself (arrays embedded in the graph,
#: e.g. ``da.from_array`` of numpy or a persisted image) is not recomputed inside tasks.
GRAPH_DATA_BYTES = 2**20


class GraphSource(Source):
    """A :class:`lazyreg.io.source.Source` that computes the blocks of a dask array when read.

    ``read(index)`` computes ``array[index]`` with dask's synchronous scheduler, in the calling
    thread (inside a task on a distributed worker), so only the blocks that ``index`` intersects
    and their dependencies run, and nothing is held once the region is returned.
    ``block_bounds`` gives :class:`lazyreg.io.chunk_cache.ChunkCache` the dask blocks (possibly
    unequal) to cache whole.

    Parameters
    ----------
    array : dask.array.Array
        A 3D dask array; it pickles with its graph.
    grid : Grid
        Its physical grid.

    Examples
    --------
    >>> import dask.array as da
    >>> from lazyreg.images import Grid
    >>> from lazyreg.moving_regions import GraphSource
    >>> x = da.arange(4 * 5 * 6, chunks=30).reshape(4, 5, 6) * 2
    >>> src = GraphSource(x, Grid((4, 5, 6), 1.0))
    >>> src[3, 4, 4:]
    array([236, 238])
    >>> src.chunks, [b.tolist() for b in src.block_bounds]
    ((1, 5, 6), [[0, 1, 2, 3, 4], [0, 5], [0, 6]])
    """

    def __init__(self, array: da.Array, grid: Grid):
        if array.ndim != 3 or tuple(array.shape) != tuple(grid.shape):
            raise ValueError(f"array of shape {array.shape} does not match the grid {grid.shape}")
        self.array = array
        self.grid = grid
        self.dtype = np.dtype(array.dtype)
        self.chunks = tuple(int(max(c)) for c in array.chunks)  # type: ignore[assignment]
        self.block_bounds = [np.concatenate([[0], np.cumsum(c)]).astype(np.int64) for c in array.chunks]

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        return np.asarray(self.array[index].compute(scheduler="sync"))

    def token(self) -> str:
        return "dask-graph:" + self.array.name


_HELD: OrderedDict = OrderedDict()  # id(graph) -> (weakref to it, bytes held): align_piecewise asks once per block


def _held_bytes(arr: da.Array) -> float:
    """Bytes of numpy data the graph of ``arr`` holds in its values (inf for futures).

    Only materialised layers hold values; generated ones (blockwise, ...) make tasks.
    """
    graph = arr.__dask_graph__()
    found = _HELD.get(id(graph))
    if found is not None and found[0]() is graph:  # the same graph object (a persisted copy has the same name)
        return found[1]
    layers = graph.layers.values() if isinstance(graph, HighLevelGraph) else [graph]
    total = 0.0
    for layer in layers:
        mapping = layer.mapping if isinstance(layer, MaterializedLayer) else layer if isinstance(layer, dict) else {}
        for value in mapping.values():
            if isinstance(value, DataNode):
                value = value.value
            elif isinstance(value, GraphNode) or (isinstance(value, tuple) and value and callable(value[0])):
                continue  # a task: computed, not held
            if type(value).__name__ == "Future":
                total = float("inf")
            elif isinstance(value, np.ndarray):  # not handles (zarr, h5py arrays): their nbytes is on disk
                total += value.nbytes
    try:
        _HELD[id(graph)] = (weakref.ref(graph), total)
    except TypeError:  # a graph type without weak references: not cached
        pass
    while len(_HELD) > 64:
        _HELD.popitem(last=False)
    return total


def graph_source(moving: xr.DataArray) -> tuple[GraphSource, tuple[int, int, int], tuple[int, int, int]] | None:
    """A :class:`GraphSource` for a dask-backed image whose graph holds no data itself, else None.

    Returns ``(source, start, step)`` as :func:`lazyreg.io.source.find_source` does (here always
    the whole image: start 0, step 1), or ``None`` when ``moving`` is in memory, or its graph
    holds more than :data:`GRAPH_DATA_BYTES` of data (arrays embedded in the graph) or futures of
    a cluster (a persisted image), or its blocks are too large for the chunk cache (over a quarter
    of :func:`lazyreg.io.chunk_cache.chunk_cache_bytes`): such blocks would be computed again by
    every task that reads them, so they stay task dependencies, computed once.

    Examples
    --------
    >>> import dask.array as da, numpy as np, lazyreg
    >>> from lazyreg.moving_regions import graph_source
    >>> img = lazyreg.image(da.random.default_rng(0).random((8, 8, 8), chunks=4), 1.0)
    >>> src, start, step = graph_source(img * 2)
    >>> start, step, src.shape
    ((0, 0, 0), (1, 1, 1), (8, 8, 8))
    >>> big = lazyreg.image(da.zeros((128, 128, 128), chunks=64), 1.0)
    >>> graph_source(big.compute()) is None, graph_source(big.persist()) is None  # data in memory already
    (True, True)
    >>> graph_source(big) is None  # generated: its blocks are computed where they are read
    False
    >>> huge = lazyreg.image(da.zeros((256, 256, 256), chunks=-1), 1.0)  # one block of 128 MiB
    >>> graph_source(huge) is None  # more than a quarter of the chunk cache: computed once, as a task
    True
    """
    arr = moving.data
    if not isinstance(arr, da.Array) or arr.ndim != 3:
        return None
    if _held_bytes(arr) > GRAPH_DATA_BYTES:
        return None
    block_bytes = int(np.prod([max(c) for c in arr.chunks])) * arr.dtype.itemsize
    if block_bytes > chunk_cache_bytes() // 4:  # not cached: every task would compute its huge blocks again
        return None
    return GraphSource(arr, grid_of(moving, "moving")), (0, 0, 0), (1, 1, 1)
