"""Which voxels of its store a lazily selected image holds, read from its dask graph.

An image opened from a store and then sliced or re-chunked (``img[2:, ::2]``, ``img.chunk(...)``)
is still a selection of the store, and tasks can read its regions straight from the store (see
:func:`lazyreg.io.source.find_source`). Which store voxels it holds must come from the graph, not
from the coordinates: coordinates can be reassigned (``img.assign_coords(z=img.z + 2)``) without
moving any data. :func:`store_indices` runs the image's selection tasks on a stand-in for the store
whose "chunks" are the store indices of their voxels, one vector per axis, so the answer costs a few
vectors per axis and reads nothing.
"""

from __future__ import annotations

from typing import Any

import dask.array as da
import numpy as np

__all__ = ["store_indices"]


class _IndexProbe:
    """Stands in for a chunk of a store: per axis, the store index of each voxel along it."""

    __array_priority__ = 1000

    def __init__(self, vectors: list[np.ndarray]):
        self.vectors = [np.asarray(v, dtype=np.int64) for v in vectors]
        self.shape = tuple(len(v) for v in self.vectors)
        self.ndim = len(self.vectors)
        self.dtype = np.dtype(np.int64)

    def __getitem__(self, index: Any) -> _IndexProbe:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) != self.ndim or not all(isinstance(i, slice) for i in index):
            raise TypeError("only a slice per axis keeps a selection")
        return _IndexProbe([v[i] for v, i in zip(self.vectors, index)])

    def __array__(self, *args, **kwargs):
        raise TypeError("an index probe is not data")

    def __array_function__(self, func, types, args, kwargs):
        if func is not np.concatenate:
            return NotImplemented
        arrays = list(args[0])
        axis = kwargs.get("axis", args[1] if len(args) > 1 else 0)
        first = arrays[0].vectors
        for a in arrays[1:]:
            for ax in range(len(first)):
                if ax != axis and not np.array_equal(a.vectors[ax], first[ax]):
                    raise TypeError("the pieces do not line up")
        joined = np.concatenate([a.vectors[axis] for a in arrays])
        return _IndexProbe([joined if ax == axis else v for ax, v in enumerate(first)])


def _probe_graph(arr: da.Array, read_layer: str) -> dict:
    """``arr``'s graph with each task of ``read_layer`` (reads of store boxes) replaced by a probe."""
    from dask._task_spec import DataNode, Task

    keys = _flatten(arr.__dask_keys__())
    dsk = dict(arr.__dask_graph__().cull(set(keys)))
    for key, task in list(dsk.items()):
        if isinstance(key, tuple) and key[0] == read_layer:
            if not isinstance(task, Task) or len(task.args) < 2:
                raise TypeError("unexpected reader task")
            box = task.args[1]
            box = box.value if isinstance(box, DataNode) else box
            dsk[key] = DataNode(key, _IndexProbe([np.arange(s.start, s.stop, s.step or 1) for s in box]))
    return dsk


def store_indices(arr: da.Array, read_layer: str) -> list[np.ndarray] | None:
    """Per axis, the store index of each voxel of ``arr``, or ``None`` when it cannot be traced.

    ``arr`` must be built from one store read by the tasks of the graph layer ``read_layer`` (a
    ``da.from_array`` layer) followed only by slicing and re-chunking. Nothing is read and no
    scheduler runs: the graph's tasks are called directly, on stand-ins that carry indices, one short graph per axis (the array's first row along
    that axis). ``None`` means the graph holds something else (a fancy index, an operation that
    mixes axes), so callers must not read regions from the store.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> class Store:  # an array-like that dask reads box by box
    ...     shape, dtype, ndim = (8, 8, 8), np.dtype("f4"), 3
    ...     def __getitem__(self, box):
    ...         return np.zeros([len(range(8)[s]) for s in box], "f4")
    >>> x = da.from_array(Store(), chunks=4, name="store")
    >>> z, y, x_ = store_indices(x[2:, ::3].rechunk(3), "store")
    >>> z, y, x_[:3]
    (array([2, 3, 4, 5, 6, 7]), array([0, 3, 6]), array([0, 1, 2]))
    """
    if arr.ndim == 0 or 0 in arr.shape:
        return None
    vectors = []
    try:
        for axis in range(arr.ndim):
            probe = arr[tuple(slice(None) if ax == axis else slice(0, 1) for ax in range(arr.ndim))]
            dsk, done = _probe_graph(probe, read_layer), {}
            pieces = [_run(dsk, key, done) for key in _flatten(probe.__dask_keys__())]
            vector = np.concatenate([p.vectors[axis] for p in pieces])
            if len(vector) != arr.shape[axis]:
                return None
            vectors.append(vector)
    except (TypeError, ValueError, IndexError, KeyError, AttributeError):
        return None
    return vectors


def _run(dsk: dict, key: Any, done: dict) -> Any:
    """The value of ``key``, its dependencies run first (no scheduler: this is not a computation)."""
    from dask._task_spec import GraphNode

    if key not in done:
        node = dsk[key]
        if isinstance(node, GraphNode):
            node = node({d: _run(dsk, d, done) for d in node.dependencies})
        done[key] = node
    return done[key]


def _flatten(keys: Any) -> list:
    if isinstance(keys, list):
        return [k for sub in keys for k in _flatten(sub)]
    return [keys]
