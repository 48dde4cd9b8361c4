"""Naming the chunk behind a failed read: what a store-backed source raises when its data do not decode.

A corrupt chunk file makes zarr, tensorstore or tifffile raise their own errors (``RuntimeError:
Zstd decompression error``, ``ValueError: FAILED_PRECONDITION ...``) from inside a dask task, with
no hint of which store or chunk. :func:`read_naming_chunk` wraps a source's region read: when the
read fails it reads the region's native chunks one by one to find the first that fails, and raises
a :class:`~lazyreg.errors.LazyregError` naming the store and that chunk (its key and file).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Sequence

import numpy as np

from ..errors import LazyregError

__all__ = ["chunk_ids", "read_naming_chunk", "ChunkNamingArray"]


def chunk_ids(index: Sequence[slice], chunks: Sequence[int]) -> list[tuple[int, ...]]:
    """The ids (grid positions) of the native chunks that a region of step-1 slices touches, in order.

    Examples
    --------
    >>> from lazyreg.io.read_errors import chunk_ids
    >>> chunk_ids((slice(0, 4), slice(6, 10), slice(0, 2)), (4, 4, 4))
    [(0, 1, 0), (0, 2, 0)]
    """
    ranges = [range(s.start // c, (s.stop - 1) // c + 1) if s.stop > s.start else range(0) for s, c in zip(index, chunks)]
    return list(itertools.product(*ranges))


def read_naming_chunk(
    read: Callable[[tuple[slice, ...]], np.ndarray],
    index: tuple[slice, ...],
    chunks: Sequence[int],
    describe: Callable[[tuple[int, ...]], str],
    store: str,
) -> np.ndarray:
    """``read(index)``; if it fails, a :class:`LazyregError` naming ``store`` and the first failing chunk.

    Only the failure path reads chunk by chunk (each probe is the part of one native chunk inside
    ``index``; decoding it decodes the whole chunk). Errors that are already a ``LazyregError``, and
    ``MemoryError``, pass unchanged.

    Parameters
    ----------
    read : callable
        Reads a region given as step-1 slices (the source's own read).
    index : tuple of slice
        The region asked for.
    chunks : sequence of int
        The native chunk shape (what one decode covers), same axes as ``index``.
    describe : callable
        Chunk id -> how to name it, e.g. ``"chunk 'c/0/1/0' (file /data/a.zarr/0/c/0/1/0)"``.
    store : str
        The store, file or dataset read (named in the message).

    Returns
    -------
    numpy.ndarray
        What ``read(index)`` returns.

    Raises
    ------
    LazyregError
        ``"path: cannot read <store>: <chunk> is corrupt or unreadable (<error>)"``.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.io.read_errors import read_naming_chunk
    >>> data = np.zeros((8, 8, 8))
    >>> def read(index):  # the chunk at z 4..8, y 0..4, x 0..4 is broken
    ...     if index[0].stop > 4 and index[1].start < 4 and index[2].start < 4:
    ...         raise RuntimeError("bad block")
    ...     return data[index]
    >>> read_naming_chunk(read, (slice(0, 4),) * 3, (4, 4, 4), "chunk {}".format, "a.zarr").shape
    (4, 4, 4)
    >>> read_naming_chunk(read, (slice(0, 8),) * 3, (4, 4, 4), "chunk {}".format, "a.zarr")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: path: cannot read a.zarr: chunk (1, 0, 0) is corrupt or unreadable (RuntimeError: bad block)
    """
    try:
        return read(index)
    except (LazyregError, MemoryError):
        raise
    except Exception as e:  # codecs and stores raise many types
        failed, error = None, e
        for ids in chunk_ids(index, chunks):
            part = tuple(slice(max(s.start, i * c), min(s.stop, (i + 1) * c)) for s, i, c in zip(index, ids, chunks))
            try:
                read(part)
            except Exception as e2:
                failed, error = ids, e2
                break
        what = describe(failed) if failed is not None else f"the region {tuple((s.start, s.stop) for s in index)}"
        detail = " ".join(f"{type(error).__name__}: {error}".split())
        raise LazyregError(f"path: cannot read {store}: {what} is corrupt or unreadable ({detail})") from e


class ChunkNamingArray:
    """An array for ``dask.array.from_array`` whose failed reads name the chunk (:func:`read_naming_chunk`).

    Parameters
    ----------
    arr : array-like
        What is read (e.g. a zarr array), indexed with step-1 slices.
    chunks : sequence of int
        Its native chunk shape.
    describe : callable
        Chunk id -> its name (a picklable function, e.g. a ``functools.partial``).
    store : str
        The store named in errors.

    Examples
    --------
    >>> import dask.array as da, numpy as np
    >>> from lazyreg.io.read_errors import ChunkNamingArray
    >>> a = ChunkNamingArray(np.arange(8.0).reshape(2, 4), (1, 4), "row {}".format, "rows.zarr")
    >>> float(da.from_array(a, chunks=(1, 4), asarray=False).sum().compute())
    28.0
    """

    def __init__(self, arr: Any, chunks: Sequence[int], describe: Callable[[tuple[int, ...]], str], store: str):
        self.arr, self.chunks, self.describe, self.store = arr, tuple(chunks), describe, store
        self.shape, self.dtype, self.ndim = tuple(arr.shape), np.dtype(arr.dtype), len(arr.shape)

    def __getitem__(self, index: Any) -> np.ndarray:
        index = index if isinstance(index, tuple) else (index,)
        index = tuple(slice(*s.indices(n)[:2]) for s, n in zip(index + (slice(None),) * (self.ndim - len(index)), self.shape))
        return read_naming_chunk(self._read, index, self.chunks, self.describe, self.store)

    def _read(self, index: tuple[slice, ...]) -> np.ndarray:
        return np.asarray(self.arr[index])
