"""Putting computed chunks together into one numpy array without dask's final copy.

``.compute()`` of a dask array holds every chunk until the last one is done, then copies them all
into a new array (dask's ``concatenate3``) on one thread: for a 256 MiB result the chunks take
256 MiB of fresh memory of their own, and the copy is 0.1-0.6 s (most of it first touches of
fresh memory) during which the other cores are idle. :func:`threaded_assembly` marks an array
so that, when it is itself computed:

* on a scheduler that runs tasks in this process's threads (dask's default), each chunk task
  writes its chunk straight into the final array (a *canvas*, allocated by the first task that
  needs it) and returns that part of it: the chunks' memory is freed as they go, and there is
  nothing left to copy at the end;
* otherwise (worker processes: the chunks arrive as copies) the final copy is shared among
  threads (numpy copies release the GIL).

Only how the result is put together changes: the chunks' values, the graph of the array and
every other use of it (slicing, arithmetic, ``to_zarr``, ``persist``, ``dask.optimize``) are
those of the array given; a chunk that is not a numpy array of the expected shape and dtype is passed
on as it is, and the result is then assembled by copying.
"""

from __future__ import annotations

import functools
import operator
import os
import threading
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array
from dask.core import flatten
from dask.utils import ensure_dict

__all__ = ["threaded_assembly", "assemble_chunks"]

#: Results smaller than this are assembled by dask's own single-threaded copy.
MIN_THREADED_BYTES = 32 * 2**20
#: Threads that copy chunks into the result, at most.
MAX_THREADS = 8


def _block_grid(nested: Any) -> tuple[int, ...]:
    shape = []
    while isinstance(nested, (list, tuple)):
        shape.append(len(nested))
        nested = nested[0]
    return tuple(shape)


def _offsets(sizes: Any) -> list[np.ndarray]:
    """Where each block row starts along each axis (and the total, last), from the sizes of the
    blocks along each axis (dask's ``chunks``)."""
    return [np.concatenate([[0], np.cumsum(s)]).astype(int) for s in sizes]


def _starts(blocks: dict, grid: tuple[int, ...]) -> list[np.ndarray]:
    """:func:`_offsets` from the blocks' own shapes."""
    zero = (0,) * len(grid)
    return _offsets([[blocks[zero[:k] + (i,) + zero[k + 1 :]].shape[k] for i in range(n)] for k, n in enumerate(grid)])


def _where(starts: list[np.ndarray], idx: tuple[int, ...]) -> tuple[slice, ...]:
    """The slices of block ``idx`` in the whole array."""
    return tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx))


def assemble_chunks(nested: Any) -> np.ndarray:
    """The array that nested lists of numpy chunks make, copied into place by several threads.

    ``nested`` is what dask hands a dask array's finalisation: the chunks in nested lists, one
    level per dimension. Anything else (a single chunk, small results, non-numpy or mixed-dtype
    chunks) is put together by dask's own ``concatenate3``, with the same result.

    Examples
    --------
    >>> import numpy as np
    >>> a, b = np.zeros((2, 2)), np.ones((2, 3))
    >>> assemble_chunks([[a, b], [a, b]]).shape
    (4, 5)
    """
    grid = _block_grid(nested)
    blocks = {idx: functools.reduce(operator.getitem, idx, nested) for idx in np.ndindex(*grid)} if grid else {}
    first = next(iter(blocks.values()), None)
    if (
        len(blocks) < 2
        or not all(type(b) is np.ndarray and b.dtype == first.dtype and b.ndim == len(grid) for b in blocks.values())
        or sum(b.nbytes for b in blocks.values()) < MIN_THREADED_BYTES
    ):
        return da.core.concatenate3(nested)
    starts = _starts(blocks, grid)
    out = np.empty(tuple(int(s[-1]) for s in starts), dtype=first.dtype)

    def put(idx: tuple[int, ...]) -> None:
        out[_where(starts, idx)] = blocks[idx]

    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(blocks)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, blocks))  # list(): raises a copy's error, if any
    return out


class _Canvas:
    """The final array of one ``.compute()``, as a handle: a picklable spec (shape, dtype and an
    id unique to that compute); each process allocates its own array on first use, held only by
    the parts of it that tasks returned (so a failed compute leaves nothing behind once the
    scheduler's threads have moved on)."""

    __slots__ = ("id", "shape", "dtype")

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype):
        self.id, self.shape, self.dtype = uuid.uuid4().hex, shape, np.dtype(dtype)

    def __getstate__(self) -> tuple:
        return self.id, self.shape, self.dtype

    def __setstate__(self, state: tuple) -> None:
        self.id, self.shape, self.dtype = state

    def array(self) -> np.ndarray:
        with _CANVAS_LOCK:
            arr = _CANVASES.get(self.id)
            if arr is None:
                arr = np.empty(self.shape, dtype=self.dtype)
                _CANVASES[self.id] = arr
            return arr


#: This process's canvases, by compute (weak: alive while a part of one is).
_CANVASES: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_CANVAS_LOCK = threading.Lock()


def _place(canvas: _Canvas, where: tuple[slice, ...], chunk: Any) -> Any:
    """Write ``chunk`` into its place in the canvas and return that part of the canvas."""
    shape = tuple(s.stop - s.start for s in where)
    if type(chunk) is not np.ndarray or chunk.shape != shape or chunk.dtype != canvas.dtype:
        return chunk
    part = canvas.array()[where]
    part[...] = chunk
    return part


def _canvas_of(nested: Any) -> np.ndarray | None:
    """The canvas that the chunks in ``nested`` are all parts of, each in its place, or None."""
    grid = _block_grid(nested)
    if not grid:
        return None
    blocks = {idx: functools.reduce(operator.getitem, idx, nested) for idx in np.ndindex(*grid)}
    canvas = getattr(blocks[(0,) * len(grid)], "base", None)
    if type(canvas) is not np.ndarray or not any(c is canvas for c in list(_CANVASES.values())):
        return None
    if not all(type(b) is np.ndarray and b.base is canvas for b in blocks.values()):
        return None
    starts = _starts(blocks, grid)
    if canvas.shape != tuple(int(st[-1]) for st in starts):
        return None
    for idx, b in blocks.items():
        part = canvas[_where(starts, idx)]
        if b.shape != part.shape or b.__array_interface__ != part.__array_interface__:
            return None
    return canvas


def _finalize(results: Any) -> np.ndarray:
    """dask's finalisation step for :class:`_ThreadAssembled` (a module function: picklable)."""
    canvas = _canvas_of(results)
    return canvas if canvas is not None else assemble_chunks(results)


def _optimize_into_canvas(dsk: Any, keys: Any, *, name: str, chunks: tuple, dtype: np.dtype, **kwargs: Any) -> Any:
    """dask's array optimisation, then each chunk's task (keys ``(name, i, j, ...)``) also writes
    the chunk into a canvas, when ``keys`` (those dask computes) is the step that puts the chunks
    together (``.compute()``); not when the chunks themselves are wanted (``persist``,
    ``dask.optimize``): held apart, parts of one canvas would keep all of it alive."""
    out = da.Array.__dask_optimize__(dsk, keys, **kwargs)
    if (name,) + (0,) * len(chunks) in set(flatten(keys)):
        # the chunks themselves are wanted (persist, dask.optimize, to_zarr's writes): as they are
        return out
    shape = tuple(int(sum(c)) for c in chunks)
    small = int(np.prod(shape)) * np.dtype(dtype).itemsize < MIN_THREADED_BYTES
    if small or int(np.prod([len(c) for c in chunks])) < 2 or any(n == 0 for c in chunks for n in c):
        return out
    try:
        from dask._task_spec import DataNode, Task, convert_legacy_graph
    except ImportError:  # another dask: its own assembly, by copying
        return out
    graph = convert_legacy_graph(ensure_dict(out))
    canvas = _Canvas(shape, dtype)
    starts = _offsets(chunks)
    for idx in np.ndindex(*[len(c) for c in chunks]):
        key = (name, *idx)
        if key not in graph:
            return out
        graph[key] = Task(key, _place, DataNode(None, canvas), DataNode(None, _where(starts, idx)), graph[key])
    return graph


class _ThreadAssembled(da.Array):
    """A dask array whose chunks, when it is itself computed, go straight into the final array
    (:func:`_optimize_into_canvas`), or else are assembled by :func:`assemble_chunks`."""

    __slots__ = ()

    @property
    def __dask_optimize__(self) -> Any:  # type: ignore[override]
        return functools.partial(_optimize_into_canvas, name=self.name, chunks=self.chunks, dtype=self.dtype)

    def __dask_postcompute__(self) -> tuple:
        if self.npartitions < 2:
            return super().__dask_postcompute__()
        return _finalize, ()


def threaded_assembly(arr: da.Array) -> da.Array:
    """The same dask array (graph, name, chunks), its computed result put together without
    dask's final copy.

    When it is computed itself on a scheduler that runs tasks in this process (dask's default
    threads, ``"sync"``, an in-process ``distributed`` cluster), each chunk task writes its chunk
    into the final array, so ``.compute()`` needs about the result's memory instead of twice it;
    with worker processes, several threads copy the chunks into place. Operations on it
    (slicing, arithmetic, ``map_blocks``, ``to_zarr``) return ordinary dask arrays.

    Examples
    --------
    >>> import dask.array as da
    >>> x = threaded_assembly(da.ones((4, 4), chunks=2))
    >>> x.name == da.ones((4, 4), chunks=2).name, float(x.sum().compute()), x.compute().shape
    (True, 16.0, (4, 4))
    """
    return _ThreadAssembled(arr.dask, arr.name, arr.chunks, meta=meta_from_array(arr))
