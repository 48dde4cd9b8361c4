"""Store-backed sources: indexing, the chunk cache and its size, and finding / reading the source of an image."""

from __future__ import annotations

import pickle
import threading
import time

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import lazyreg
from lazyreg import LazyregError
from lazyreg.images import Grid
from lazyreg.io.chunk_cache import CHUNK_CACHE_BYTES, ChunkCache, chunk_cache_bytes
from lazyreg.io.source import (
    HandleSource,
    Source,
    find_source,
    from_source,
    read_region,
    region_array,
)
from lazyreg.testing import count_tasks, counting_image

SHAPE = (20, 24, 28)
VALUES = np.arange(np.prod(SHAPE), dtype=np.float32).reshape(SHAPE)  # every voxel different
CHUNKS = (8, 8, 8)
CHUNK_BYTES = 8 * 8 * 8 * 4


def _store(spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0), chunks=CHUNKS):
    """A store-backed image of VALUES, its source and the log of the regions read from it."""
    img, log = counting_image(lazyreg.image(VALUES, spacing=spacing, origin=origin), chunks=chunks)
    return img, find_source(img)[0], log


class _SlowSource(Source):
    """An in-memory source whose reads take a while and are counted (to make threads overlap)."""

    def __init__(self, values: np.ndarray, chunks, delay: float = 0.05, fail_first: bool = False):
        self.values, self.delay, self.fail_first = values, delay, fail_first
        self.grid, self.dtype, self.chunks = Grid(values.shape, 1.0), values.dtype, tuple(chunks)
        self.reads: list = []
        self.lock = threading.Lock()

    def read(self, index):
        with self.lock:
            self.reads.append(index)
            fail = self.fail_first and len(self.reads) == 1
        time.sleep(self.delay)
        if fail:
            raise OSError("flaky disk")
        return self.values[index].copy()

    def token(self) -> str:
        return "slow"


def _run(threads: list[threading.Thread]) -> None:
    """Start the threads and wait for them; a thread still running after 10 s (e.g. waiting for a
    chunk that nobody reads any more) fails the test instead of hanging it."""
    for t in threads:
        t.start()
    deadline = time.monotonic() + 10
    for t in threads:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    assert not any(t.is_alive() for t in threads), "threads still waiting after 10 s"


# ------------------------------------------------------------------------------------------ Source


@pytest.mark.parametrize(
    "index",
    [
        (3,),
        (-1,),
        (2, -3, 5),
        (slice(2, 9), slice(None), slice(-5, None)),
        (slice(1, 19, 3), slice(None, None, 5), 7),
        (slice(None), -24, slice(3, 4)),
        np.int64(4),
        (slice(9, 2),),  # empty
        (slice(-100, 100),),  # clipped as numpy clips
    ],
)
def test_source_indexing_matches_numpy(index):
    _, src, log = _store()
    got = src[index]
    np.testing.assert_array_equal(got, VALUES[index])
    assert got.shape == VALUES[index].shape
    assert len(log.reads) == 1 and all(s.step is None for s in log.reads[0])  # one read, step 1


def test_source_reads_only_the_bounding_box_of_a_stepped_selection():
    _, src, log = _store()
    np.testing.assert_array_equal(src[2:11:4, -1, 3:20:8], VALUES[2:11:4, -1, 3:20:8])
    assert log.reads == [(slice(2, 11), slice(23, 24), slice(3, 20))]


def test_source_refuses_negative_steps_and_other_indices():
    _, src, log = _store()
    with pytest.raises(TypeError, match="negative steps are not supported"):
        src[::-1]
    with pytest.raises(TypeError, match="negative steps"):
        src[:, 5:1:-2]
    for bad in ([1, 2], None, Ellipsis, 1.5, np.array([0, 1])):
        with pytest.raises(TypeError, match="unsupported index"):
            src[0, bad]
    assert log.reads == []


def test_source_shape_repr_and_abstract_methods():
    _, src, _ = _store()
    assert src.shape == SHAPE and src.ndim == 3
    assert repr(src).startswith("<_CountingSource counting-") and "shape=(20, 24, 28)" in repr(src)

    class NoRead(Source):
        def token(self):
            return "x"

    with pytest.raises(TypeError, match="abstract"):
        NoRead()


class _Opened(HandleSource):
    opened: list = []  # one entry per open(), across copies

    def __init__(self):
        self.grid, self.dtype, self.chunks = Grid(SHAPE, 1.0), VALUES.dtype, CHUNKS

    def open(self):
        _Opened.opened.append(1)
        return VALUES.copy()  # stands for an open file: large, and not to be pickled

    def read(self, index):
        return self.handle()[index]

    def token(self) -> str:
        return "opened"


def test_handle_source_opens_once_per_copy_and_never_pickles_the_handle():
    _Opened.opened.clear()
    src = _Opened()
    assert _Opened.opened == []  # lazily
    np.testing.assert_array_equal(src[1:3, 4], VALUES[1:3, 4])
    np.testing.assert_array_equal(src[5], VALUES[5])
    assert len(_Opened.opened) == 1 and src.handle() is src.handle()
    blob = pickle.dumps(src)
    assert len(blob) < VALUES.nbytes // 10  # the handle stayed behind
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy[7, 2:5], VALUES[7, 2:5])
    assert len(_Opened.opened) == 2  # the copy opened its own
    with pytest.raises(TypeError, match="abstract"):
        type("NoOpen", (HandleSource,), {"read": _Opened.read, "token": _Opened.token})()


# ------------------------------------------------------------------------------------------ ChunkCache


def _chunk_region(ids):
    return tuple(slice(i * c, min((i + 1) * c, n)) for i, c, n in zip(ids, CHUNKS, SHAPE))


def test_chunk_cache_decodes_each_chunk_once_while_it_fits():
    _, src, log = _store()
    cache = ChunkCache(src, max_bytes=64 * CHUNK_BYTES)
    assert (cache.grid, cache.dtype, cache.chunks, cache.token()) == (src.grid, src.dtype, src.chunks, src.token())
    np.testing.assert_array_equal(cache[3:12, 5:9, 0:3], VALUES[3:12, 5:9, 0:3])  # chunks (0|1, 0|1, 0)
    assert sorted(map(str, log.reads)) == sorted(
        str(_chunk_region(ids)) for ids in [(0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0)]
    )  # whole chunks
    for index in [(slice(0, 16), slice(0, 16), slice(0, 8)), (4, slice(6, 10), 2)]:
        np.testing.assert_array_equal(cache[index], VALUES[index])
    assert len(log.reads) == 4  # inside the chunks read already
    np.testing.assert_array_equal(cache[8], VALUES[8])  # the 3 x 4 chunks at z chunk 1, 2 of them cached
    assert len(log.reads) == 4 + 10
    log.clear()
    np.testing.assert_array_equal(cache[:, :, :], VALUES)  # 3 x 3 x 4 chunks, the edge ones smaller
    assert len(log.reads) == 36 - 14 and len(set(map(str, log.reads))) == len(log.reads)
    log.clear()
    np.testing.assert_array_equal(cache[:], VALUES)
    assert log.reads == []  # the whole image fits: nothing is read again


def test_chunk_cache_evicts_the_least_recently_used_chunk_at_max_bytes():
    _, src, log = _store()
    cache = ChunkCache(src, max_bytes=4 * CHUNK_BYTES)  # room for 4 full chunks
    first = [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]
    for ids in first:
        cache.read(_chunk_region(ids))
    cache.read(_chunk_region((0, 0, 0)))  # used again: now the most recent
    assert len(log.reads) == 4
    cache.read(_chunk_region((1, 1, 1)))  # a fifth chunk: (0, 0, 1) goes
    log.clear()
    for ids in [(0, 0, 0), (0, 0, 2), (0, 1, 0), (1, 1, 1)]:
        np.testing.assert_array_equal(cache.read(_chunk_region(ids)), VALUES[_chunk_region(ids)])
    assert log.reads == []  # still cached
    cache.read(_chunk_region((0, 0, 1)))
    assert log.reads == [_chunk_region((0, 0, 1))]  # evicted, so decoded again


def test_chunk_cache_chunk_ids_are_the_chunks_a_read_touches():
    _, src, log = _store()
    cache = ChunkCache(src, max_bytes=64 * CHUNK_BYTES)
    assert cache.chunk_ids((slice(0, 8), slice(7, 9), slice(27, 28))) == [(0, 0, 3), (0, 1, 3)]
    assert cache.chunk_ids((slice(None), slice(0, 1), slice(0, 1))) == [(0, 0, 0), (1, 0, 0), (2, 0, 0)]
    assert cache.chunk_ids((slice(3, 3), slice(0, 8), slice(0, 8))) == []
    cache[2:17:5, 7:9, 27]  # a stepped read touches the chunks of its bounding box
    assert sorted(map(str, log.reads)) == sorted(str(_chunk_region(i)) for i in cache.chunk_ids((slice(2, 17), slice(7, 9), slice(27, 28))))


def test_chunk_cache_evicts_chunks_whose_planned_reads_are_done_first():
    """With planned reads, a full cache drops a chunk nobody will read again before an older one
    still wanted; plain LRU would drop the older one and decode it again."""
    _, src, log = _store()
    first = [(0, 0, 0), (0, 0, 1), (0, 0, 2), (0, 1, 0)]

    def rereads_of_the_oldest(cache):
        log.clear()
        for ids in first:
            cache.read(_chunk_region(ids))
        cache.read(_chunk_region((0, 0, 1)))  # (0, 0, 1): its second planned read, the last
        cache.read(_chunk_region((1, 1, 1)))  # a fifth chunk: LRU drops (0, 0, 0), the plan (0, 0, 1)
        np.testing.assert_array_equal(cache.read(_chunk_region((0, 0, 0))), VALUES[_chunk_region((0, 0, 0))])
        assert len(log.reads) == 5 + (log.reads.count(_chunk_region((0, 0, 0))) - 1)
        return log.reads.count(_chunk_region((0, 0, 0))) - 1

    plan = {ids: 2 for ids in first} | {(1, 1, 1): 1}
    assert rereads_of_the_oldest(ChunkCache(src, max_bytes=4 * CHUNK_BYTES)) == 1
    planned = ChunkCache(src, max_bytes=4 * CHUNK_BYTES, uses=plan)
    assert rereads_of_the_oldest(planned) == 0
    assert rereads_of_the_oldest(pickle.loads(pickle.dumps(ChunkCache(src, 4 * CHUNK_BYTES, plan)))) == 0  # the plan travels


def test_chunk_cache_reads_directly_when_chunks_are_too_large():
    _, src, log = _store()
    for max_bytes in (4 * CHUNK_BYTES - 1, 0):  # a chunk is over a quarter of the cache
        cache = ChunkCache(src, max_bytes=max_bytes)
        log.clear()
        for _ in range(2):
            np.testing.assert_array_equal(cache[3:5, 6:7, 1:20], VALUES[3:5, 6:7, 1:20])
        assert log.reads == [(slice(3, 5), slice(6, 7), slice(1, 20))] * 2  # the region, not cached


def test_chunk_cache_size_defaults_to_the_dask_config():
    _, src, log = _store()
    assert ChunkCache(src).max_bytes == CHUNK_CACHE_BYTES
    with dask.config.set({"lazyreg.chunk-cache-bytes": "1 MiB"}):
        cache = ChunkCache(src)
    assert cache.max_bytes == 2**20
    with dask.config.set({"lazyreg.chunk-cache-bytes": "1 KiB"}):
        small = ChunkCache(src)
    np.testing.assert_array_equal(small[0:2, 0:2, 0:2], VALUES[0:2, 0:2, 0:2])
    np.testing.assert_array_equal(cache[0:2, 0:2, 0:2], VALUES[0:2, 0:2, 0:2])
    assert log.reads == [(slice(0, 2),) * 3, _chunk_region((0, 0, 0))]  # 2 KiB chunks: not cached in 1 KiB


def test_chunk_cache_threads_asking_for_the_same_chunk_decode_it_once():
    src = _SlowSource(VALUES, CHUNKS)
    cache = ChunkCache(src, max_bytes=64 * CHUNK_BYTES)
    n = 16
    barrier = threading.Barrier(n)
    results: list = [None] * n

    def work(i):
        barrier.wait()
        results[i] = cache[i % 8, 0:8, 0:8]  # all in chunk (0, 0, 0)

    _run([threading.Thread(target=work, args=(i,), daemon=True) for i in range(n)])
    assert src.reads == [_chunk_region((0, 0, 0))]
    for i, r in enumerate(results):
        np.testing.assert_array_equal(r, VALUES[i % 8, 0:8, 0:8])


def test_chunk_cache_a_failed_read_raises_and_the_next_caller_reads_again():
    src = _SlowSource(VALUES, CHUNKS, delay=0.05, fail_first=True)
    cache = ChunkCache(src, max_bytes=64 * CHUNK_BYTES)
    errors, results = [], []

    def work():
        try:
            results.append(cache[0, 0, 0])
        except OSError as e:
            errors.append(e)

    _run([threading.Thread(target=work, daemon=True) for _ in range(4)])
    assert len(errors) == 1 and len(results) == 3 and len(src.reads) == 2  # one failed, one good decode
    assert all(r == VALUES[0, 0, 0] for r in results)


def test_pickled_chunk_cache_starts_empty():
    _, src, log = _store()
    cache = ChunkCache(src, max_bytes=64 * CHUNK_BYTES)
    cache[0:8, 0:8, 0:8]
    cache[0:8, 0:8, 0:8]
    assert len(log.reads) == 1
    copy = pickle.loads(pickle.dumps(cache))
    assert isinstance(copy, ChunkCache) and copy.max_bytes == cache.max_bytes and copy.chunks == cache.chunks
    np.testing.assert_array_equal(copy[0:8, 0:8, 0:8], VALUES[0:8, 0:8, 0:8])
    assert len(log.reads) == 2  # the copy read the chunk again
    cache[0:8, 0:8, 0:8]
    assert len(log.reads) == 2  # the original still has it


# ------------------------------------------------------------------------------------------ chunk_cache_bytes


@pytest.mark.parametrize(
    "value, expected",
    [(None, CHUNK_CACHE_BYTES), (1000, 1000), (0, 0), ("512 MiB", 512 * 2**20), ("1kB", 1000), (2.0**20, 2**20)],
)
def test_chunk_cache_bytes_from_dask_config(value, expected):
    with dask.config.set({"lazyreg.chunk-cache-bytes": value}):
        assert chunk_cache_bytes() == expected


@pytest.mark.parametrize("value", ["lots", "12 parsecs", -1, "-5", [1], {"a": 1}])
def test_chunk_cache_bytes_bad_values_are_lazyreg_errors(value):
    with dask.config.set({"lazyreg.chunk-cache-bytes": value}):
        with pytest.raises(LazyregError, match=r"dask config lazyreg.chunk-cache-bytes: "):
            chunk_cache_bytes()


# ------------------------------------------------------------------------------------------ from_source


def test_from_source_is_lazy_and_placed_on_the_source_grid():
    _, src, log = _store(spacing=(2.0, 1.0, 0.5), origin=(1.0, 2.0, 3.0))
    with count_tasks() as c:
        img = from_source(src, name="vol", units="nanometer", attrs={"scan": 7})
    assert c.n == 0 and log.reads == []
    assert img.dims == ("z", "y", "x") and img.shape == SHAPE and img.dtype == np.float32
    assert img.name == "vol" and img.attrs["units"] == "nanometer" and img.attrs["scan"] == 7
    assert lazyreg.spacing(img) == (2.0, 1.0, 0.5) and lazyreg.origin(img) == (1.0, 2.0, 3.0)
    assert img.data.chunksize == CHUNKS  # the native chunks
    assert img.data.name == from_source(src).data.name  # named by the source's token
    np.testing.assert_array_equal(img.values, VALUES)
    assert len(log.reads) == 3 * 3 * 4  # one read per chunk


def test_from_source_chunks_argument():
    _, src, log = _store()
    img = from_source(src, chunks=(20, 12, 28))
    assert img.data.chunks == ((20,), (12, 12), (28,))
    assert img.data.name != from_source(src).data.name
    np.testing.assert_array_equal(img[:, 13:14].values, VALUES[:, 13:14])
    assert log.reads == [(slice(0, 20), slice(12, 24), slice(0, 28))]


# ------------------------------------------------------------------------------------------ find_source


def test_find_source_of_the_opened_image():
    img, src, _ = _store()
    found = find_source(img)
    assert found == (src, (0, 0, 0), (1, 1, 1)) and found[0] is src


@pytest.mark.parametrize(
    "select, start, step",
    [
        (lambda im: im[4:], (4, 0, 0), (1, 1, 1)),
        (lambda im: im[4:, ::2, 1:20:3], (4, 0, 1), (1, 2, 3)),
        (lambda im: im[2:][1:, 3:][:, ::2], (3, 3, 0), (1, 2, 1)),
        (lambda im: im.isel(z=slice(5, 9), x=slice(None, None, 4)), (5, 0, 0), (1, 1, 4)),
        (lambda im: im.sel(y=slice(10.0, 20.0)), (0, 8, 0), (1, 1, 1)),
        (lambda im: im[1:].chunk({"z": 3, "y": 24}), (1, 0, 0), (1, 1, 1)),
        (lambda im: im[:, 3:7].chunk({"y": 1})[::3], (0, 3, 0), (3, 1, 1)),
    ],
)
def test_find_source_of_pure_selections(select, start, step):
    img, src, _ = _store()
    sub = select(img)
    found = find_source(sub)
    assert found is not None and found[0] is src and found[1:] == (start, step)
    z, y, x = (slice(a, None, b) for a, b in zip(start, step))
    np.testing.assert_array_equal(sub.values, VALUES[z, y, x][tuple(slice(0, n) for n in sub.shape)])


@pytest.mark.parametrize(
    "change",
    [
        lambda im: im * 2,
        lambda im: im + 0,
        lambda im: im.astype("float64"),
        lambda im: im.where(im > 5),
        lambda im: xr.concat([im[:5], im[5:]], dim="z"),
        lambda im: im.copy(data=im.data.map_blocks(np.negative)),
        lambda im: im.compute(),  # in memory
    ],
)
def test_find_source_is_none_for_anything_but_a_pure_selection(change):
    img, _, _ = _store()
    assert find_source(change(img)) is None


def test_find_source_is_none_without_a_source():
    assert find_source(lazyreg.image(VALUES, spacing=1.0)) is None
    assert find_source(lazyreg.image(da.from_array(VALUES, chunks=8), spacing=1.0)) is None
    a, _, _ = _store()
    b, _, _ = _store()
    assert find_source(a + b) is None  # two sources


@pytest.mark.parametrize("shift", [2.0, 0.5, -2.0])
@pytest.mark.parametrize("select", [lambda im: im, lambda im: im[3:, ::2, 1:-1].chunk({"z": 5})])
def test_find_source_follows_the_data_not_reassigned_coordinates(select, shift):
    img, _, _ = _store()
    moved = select(img).assign_coords(z=select(img).z + shift)  # same voxels, placed elsewhere
    src, start, step = find_source(moved)
    whole = tuple(slice(0, n) for n in moved.shape)
    np.testing.assert_array_equal(read_region(src, start, step, whole), select(img).values)


def test_apply_transform_of_a_store_image_with_moved_coordinates_matches_the_in_memory_image():
    img, _, _ = _store()
    moved = img[2:].assign_coords(z=img.z[2:] + 6.0)  # 3 voxels
    shift = [lazyreg.Affine.from_translation((1.5, 0.25, -0.75))]
    lazy = lazyreg.apply_transform(moved, moved, shift, order=1)
    eager = lazyreg.apply_transform(moved.compute(), moved.compute(), shift, order=1)
    np.testing.assert_allclose(lazy.values, eager.values, rtol=0, atol=1e-4)


def test_find_source_is_none_for_a_fancy_index_or_a_reversed_axis():
    img, _, _ = _store()
    assert find_source(img.isel(z=[0, 2, 3, 6])) is None
    assert find_source(img[::-1]) is None


# ------------------------------------------------------------------------------------------ read_region


@pytest.mark.parametrize(
    "start, step, region",
    [
        ((0, 0, 0), (1, 1, 1), (slice(3, 9), slice(0, 24), slice(27, 28))),
        ((4, 2, 1), (1, 2, 3), (slice(0, 5), slice(1, 4), slice(2, 8))),
        ((19, 0, 0), (1, 1, 1), (slice(0, 1), slice(5, 6), slice(0, 0))),
    ],
)
def test_read_region_reads_the_region_of_a_selection(start, step, region):
    _, src, log = _store()
    selection = VALUES[tuple(slice(a, None, b) for a, b in zip(start, step))]
    np.testing.assert_array_equal(read_region(src, start, step, region), selection[region])
    assert len(log.reads) == 1
    first = [a + s.start * b for s, a, b in zip(region, start, step)]
    last = [a + (s.stop - 1) * b for s, a, b in zip(region, start, step)]
    assert log.reads[0] == tuple(slice(f, max(f, la + 1)) for f, la in zip(first, last))  # the bounding box


# ------------------------------------------------------------------------------------------ region_array


def test_region_array_is_one_task_that_reads_exactly_the_region():
    img, _, log = _store()
    region = (slice(3, 17), slice(5, 20), slice(0, 7))
    with count_tasks() as built:
        r = region_array(img, region)
    assert built.n == 0 and log.reads == []
    assert r.shape == (14, 15, 7) and r.npartitions == 1 and r.dtype == np.float32
    assert len(r.__dask_graph__()) == 1  # depends on nothing
    assert r.name == region_array(img, region).name and r.name != region_array(img, region[:2]).name
    with count_tasks() as ran:
        np.testing.assert_array_equal(r.compute(scheduler="threads"), VALUES[region])
    assert ran.named("lazyreg-region-") == 1 and ran.named("lazyreg-read-") == 0  # no chunk of the image
    assert log.reads == [region]


def test_region_array_of_a_selection_maps_back_to_the_store():
    img, _, log = _store()
    sub = img[4:, ::2]
    r = region_array(sub, (slice(1, 3), slice(2, 5)))  # missing trailing axis: the whole axis
    assert r.shape == (2, 3, 28) and len(r.__dask_graph__()) == 1
    np.testing.assert_array_equal(r.compute(), VALUES[4:, ::2][1:3, 2:5])
    assert log.reads == [(slice(5, 7), slice(4, 9), slice(0, 28))]  # rows 4, 6, 8 of the store


def test_region_array_in_memory_puts_only_the_region_in_the_graph():
    img = lazyreg.image(VALUES, spacing=1.0)
    r = region_array(img, (slice(2, 4), slice(None), slice(1, 3)))
    assert r.npartitions == 1 and len(r.__dask_graph__()) == 1
    stored = [v for v in dict(r.__dask_graph__()).values() if isinstance(v, np.ndarray)]
    assert sum(a.nbytes for a in stored) <= r.nbytes  # not the whole image
    np.testing.assert_array_equal(r.compute(), VALUES[2:4, :, 1:3])


def test_region_array_of_a_computed_dask_image_is_one_chunk():
    img, _, log = _store()
    derived = img * 2  # not store-backed
    r = region_array(derived, (slice(2, 9),))
    assert r.npartitions == 1 and r.shape == (7, 24, 28)
    np.testing.assert_array_equal(r.compute(), 2 * VALUES[2:9])
    data = da.from_array(VALUES, chunks=10)
    r2 = region_array(lazyreg.image(VALUES, spacing=1.0), (slice(2, 9),), data=data)
    assert r2.npartitions == 1 and data.name in {k[0] if isinstance(k, tuple) else k for k in r2.__dask_graph__()}
    np.testing.assert_array_equal(r2.compute(), VALUES[2:9])


def test_region_array_refuses_steps_and_indices():
    img, _, _ = _store()
    with pytest.raises(TypeError, match="region: expected slices with step 1"):
        region_array(img, (slice(0, 10, 2),))
    with pytest.raises(TypeError, match="region: expected slices, got 3"):
        region_array(img, (slice(0, 4), 3))
