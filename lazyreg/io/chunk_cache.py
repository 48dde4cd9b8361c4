"""A per-process cache of decoded store chunks, shared by the tasks of a graph that read regions.

Regions read by neighbouring resampling tasks overlap, and a compressed chunk is decoded whole
whatever part of it is wanted: :class:`ChunkCache` wraps a :class:`lazyreg.io.source.Source` and
keeps its decoded chunks (within :func:`chunk_cache_bytes`) while the tasks that share them run.
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from ..validation import config_number
from .source import Source

__all__ = ["ChunkCache", "chunk_cache_bytes", "CHUNK_CACHE_BYTES"]

#: Default of the most bytes of decoded chunks a :class:`ChunkCache` keeps (one per graph and
#: process); dask config ``lazyreg.chunk-cache-bytes`` overrides it (see :func:`chunk_cache_bytes`).
CHUNK_CACHE_BYTES = 128 * 2**20


class ChunkCache(Source):
    """A source that reads whole native chunks of another and keeps the last ones decoded.

    Regions read by neighbouring tasks overlap, and a compressed chunk is decoded whole whatever
    part of it is wanted; with the cache each chunk is decoded about once while the tasks that
    share it run. At most ``max_bytes`` of chunks are kept (least recently used dropped first,
    those with planned reads left last: see ``uses``); a source whose chunks are larger than a
    quarter of that is read directly, region by region.
    It is meant to be created by a graph task, so that it lives while that graph runs (one per
    process: a copy sent to another worker starts empty). Threads asking for the same chunk at
    once wait for the one that decodes it.

    Parameters
    ----------
    inner : Source
        The source read, a whole native chunk at a time (its ``chunks``, or the per-axis chunk
        boundaries in ``inner.block_bounds`` when it has them, e.g. unequal dask blocks).
    max_bytes : int, optional
        Most bytes of decoded chunks kept; default :func:`chunk_cache_bytes`.
    uses : mapping, optional
        For each chunk (its index tuple, as :meth:`chunk_ids` gives), how many reads will touch it
        (e.g. counted from the regions of a graph's tasks). When the cache is full, a chunk whose
        planned reads are all done (or that was never planned) goes first, least recently used
        first, so that chunks still wanted stay: plain least-recently-used eviction of a working
        set slightly larger than ``max_bytes`` re-reads most chunks (a 512^3 affine resampling in
        128^3 chunks read 109 chunks of 64 with the default 128 MiB; 73-83 with ``uses``). The
        counts only order evictions: a wrong count (e.g. another graph sharing the cache) costs
        a re-read, never a wrong value.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.chunk_cache import ChunkCache
    >>> from lazyreg.io.source import find_source
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.zeros((32, 32, 32)), spacing=1.0), chunks=(16, 16, 16))
    >>> cache = ChunkCache(find_source(img)[0], max_bytes=2**20)
    >>> a, b = cache[0:4, 0:4, 0:4], cache[4:8, 0:4, 0:4]  # both inside the first chunk
    >>> log.reads  # that chunk was read once, whole
    [(slice(0, 16, None), slice(0, 16, None), slice(0, 16, None))]
    >>> cache.chunk_ids((slice(0, 4), slice(12, 20), slice(0, 4)))
    [(0, 0, 0), (0, 1, 0)]
    """

    def __init__(self, inner: Source, max_bytes: int | None = None, uses: dict | None = None):
        self.inner = inner
        self._uses = dict(uses) if uses else None  # as given (pickled with the cache)
        self._left = dict(uses) if uses else {}  # planned reads not done yet
        self.grid, self.dtype, self.chunks = inner.grid, np.dtype(inner.dtype), tuple(inner.chunks)
        self.max_bytes = chunk_cache_bytes() if max_bytes is None else int(max_bytes)
        # chunk boundaries per axis: regular from ``chunks``, or the source's own (e.g. dask blocks)
        bounds = getattr(inner, "block_bounds", None) or [np.r_[0:n:c, n] for n, c in zip(self.shape, self.chunks)]
        self._bounds = [np.asarray(b, dtype=np.int64) for b in bounds]
        largest = int(np.prod([np.diff(b).max() if len(b) > 1 else 0 for b in self._bounds]))
        self._direct = largest * self.dtype.itemsize > self.max_bytes // 4  # chunks too big to cache
        self._blocks: OrderedDict = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()
        self._reading: dict = {}  # chunk ids -> Event set when the thread reading it is done

    def __reduce__(self) -> Any:
        return (ChunkCache, (self.inner, self.max_bytes, self._uses))

    def chunk_ids(self, index: tuple[slice, ...]) -> list[tuple[int, ...]]:
        """The native chunks that reading ``index`` (slices, as ``cache[index]`` takes them) touches."""
        box = [slice(*s.indices(n)[:2]) for s, n in zip(index, self.shape)]
        ranges = [range(int(np.searchsorted(b, s.start, "right")) - 1, int(np.searchsorted(b, s.stop - 1, "right")))
                  if s.stop > s.start else range(0) for s, b in zip(box, self._bounds)]
        return list(itertools.product(*ranges))

    def _done_with(self, ids: tuple[int, ...]) -> None:
        """One planned read of chunk ``ids`` is done."""
        with self._lock:
            left = self._left.get(ids)
            if left is not None:
                if left > 1:
                    self._left[ids] = left - 1
                else:
                    del self._left[ids]

    def _evict(self) -> None:
        """Drop chunks until within ``max_bytes`` (the newest kept): first those with no planned
        read left, least recently used first; then the least recently used. Holds ``_lock``."""
        while self._nbytes > self.max_bytes and len(self._blocks) > 1:
            victim = next((ids for ids in itertools.islice(self._blocks, len(self._blocks) - 1) if ids not in self._left),
                          next(iter(self._blocks)))
            self._nbytes -= self._blocks.pop(victim).nbytes

    def token(self) -> str:
        return self.inner.token()

    def _chunk(self, ids: tuple[int, ...]) -> np.ndarray:
        while True:
            with self._lock:
                block = self._blocks.get(ids)
                if block is not None:
                    self._blocks.move_to_end(ids)
                    return block
                busy = self._reading.get(ids)
                if busy is None:  # this thread reads it; others wanting it wait
                    busy = self._reading[ids] = threading.Event()
                    break
            busy.wait()
        try:
            index = tuple(slice(int(b[i]), int(b[i + 1])) for i, b in zip(ids, self._bounds))
            block = np.asarray(self.inner.read(index))
            with self._lock:
                self._blocks[ids] = block
                self._nbytes += block.nbytes
                self._evict()
        finally:
            with self._lock:
                self._reading.pop(ids).set()
        return block

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        if self._direct:
            return self.inner.read(index)
        out = np.empty(tuple(s.stop - s.start for s in index), dtype=self.dtype)
        for ids in self.chunk_ids(index):
            block = self._chunk(ids)
            lo = [int(b[i]) for i, b in zip(ids, self._bounds)]
            dst = tuple(slice(max(s.start, a) - s.start, min(s.stop, a + b) - s.start) for s, a, b in zip(index, lo, block.shape))
            src = tuple(slice(max(s.start, a) - a, min(s.stop, a + b) - a) for s, a, b in zip(index, lo, block.shape))
            out[dst] = block[src]
            self._done_with(ids)
        return out


def chunk_cache_bytes() -> int:
    """Bytes a :class:`ChunkCache` may hold: dask config ``lazyreg.chunk-cache-bytes`` (an int or a
    string such as ``"512 MiB"``), else :data:`CHUNK_CACHE_BYTES`.

    Read when a graph is built, so the value travels with the graph to distributed workers.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"lazyreg.chunk-cache-bytes": "512 MiB"}):
    ...     chunk_cache_bytes()
    536870912
    """
    return config_number("lazyreg.chunk-cache-bytes", CHUNK_CACHE_BYTES)
