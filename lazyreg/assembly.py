"""Putting computed chunks together into one numpy array, with several threads.

``.compute()`` of a dask array ends with one task that copies every chunk into a new array
(dask's ``concatenate3``), on one thread, after all the chunks are done: for a 256 MiB result
that is 0.1-0.6 s (most of it first touches of fresh memory) during which the other cores are
idle. :func:`threaded_assembly` marks an array so that this last copy is shared among threads
(numpy copies release the GIL), which halves it on 2 cores. Only how the result is put together
changes: the chunks, the graph and every other use of the array (slicing, ``to_zarr``, ``persist``)
are those of the array given.
"""

from __future__ import annotations

import functools
import operator
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dask.array as da
import numpy as np
from dask.array.utils import meta_from_array

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
    zero = (0,) * len(grid)
    sizes = [[blocks[zero[:k] + (i,) + zero[k + 1 :]].shape[k] for i in range(n)] for k, n in enumerate(grid)]
    starts = [np.concatenate([[0], np.cumsum(s)]) for s in sizes]
    out = np.empty(tuple(int(s[-1]) for s in starts), dtype=first.dtype)

    def put(idx: tuple[int, ...]) -> None:
        where = tuple(slice(int(st[i]), int(st[i + 1])) for st, i in zip(starts, idx))
        out[where] = blocks[idx]

    threads = max(1, min(MAX_THREADS, os.cpu_count() or 1, len(blocks)))
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, blocks))  # list(): raises a copy's error, if any
    return out


def _finalize(results: Any) -> np.ndarray:
    """dask's finalisation step for :class:`_ThreadAssembled` (a module function: picklable)."""
    return assemble_chunks(results)


class _ThreadAssembled(da.Array):
    """A dask array whose ``.compute()`` result is assembled by :func:`assemble_chunks`."""

    __slots__ = ()

    def __dask_postcompute__(self) -> tuple:
        if self.npartitions < 2:
            return super().__dask_postcompute__()
        return _finalize, ()


def threaded_assembly(arr: da.Array) -> da.Array:
    """The same dask array (graph, name, chunks), its computed result assembled by several threads.

    Operations on it (slicing, arithmetic, ``map_blocks``) return ordinary dask arrays.

    Examples
    --------
    >>> import dask.array as da
    >>> x = threaded_assembly(da.ones((4, 4), chunks=2))
    >>> x.name == da.ones((4, 4), chunks=2).name, float(x.sum().compute()), x.compute().shape
    (True, 16.0, (4, 4))
    """
    return _ThreadAssembled(arr.dask, arr.name, arr.chunks, meta=meta_from_array(arr))
