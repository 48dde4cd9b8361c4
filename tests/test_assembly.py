"""lazyreg.assembly: the chunks of a computed result put together by several threads."""

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
from dask.array.core import concatenate3

import lazyreg
import lazyreg.assembly
from lazyreg.assembly import assemble_chunks, threaded_assembly


def _nested(x: da.Array) -> list:
    """The computed chunks of ``x`` in nested lists, as dask hands them to a finaliser."""
    blocks = dask.compute(*[x.blocks[idx] for idx in np.ndindex(*x.numblocks)], scheduler="sync")
    it = iter(blocks)

    def build(depth):
        if depth == x.ndim:
            return next(it)
        return [build(depth + 1) for _ in range(x.numblocks[depth])]

    return build(0)


@pytest.mark.parametrize(
    "shape, chunks, dtype",
    [
        ((37, 50, 23), (10, 17, 23), np.uint16),  # uneven edge chunks
        ((8, 9, 10, 3), (3, 4, 5, 3), np.float32),  # 4-D (a displacement field's vector axis)
        ((64, 64), (64, 7), np.int64),
        ((5,), (2,), np.float64),
    ],
)
def test_threaded_assembly_equals_dask_concatenation(shape, chunks, dtype, monkeypatch):
    monkeypatch.setattr(lazyreg.assembly, "MIN_THREADED_BYTES", 0)  # every size takes the threaded path
    x = da.random.default_rng(0).integers(0, 1000, shape, chunks=chunks).astype(dtype)
    nested = _nested(x)
    got = assemble_chunks(nested)
    ref = concatenate3(nested)
    assert got.dtype == ref.dtype and got.shape == ref.shape == shape
    np.testing.assert_array_equal(got, ref)


def test_small_single_or_unusual_results_go_to_dask(monkeypatch):
    calls = []
    monkeypatch.setattr(lazyreg.assembly.da.core, "concatenate3", lambda n: calls.append(1) or concatenate3(n))
    a = np.zeros((2, 2))
    assert assemble_chunks([[a, a]]).shape == (2, 4) and len(calls) == 1  # under MIN_THREADED_BYTES
    monkeypatch.setattr(lazyreg.assembly, "MIN_THREADED_BYTES", 0)
    assemble_chunks([[a]])  # one chunk
    assemble_chunks([[a, a.astype(np.float32)]])  # mixed dtypes
    assemble_chunks([[a, np.ma.masked_array(a)]])  # not plain numpy
    assert len(calls) == 4
    np.testing.assert_array_equal(assemble_chunks([[a, np.ones((2, 3))]]), np.hstack([a, np.ones((2, 3))]))
    assert len(calls) == 4  # threaded


def test_threaded_assembly_changes_only_how_compute_ends(monkeypatch):
    seen = []
    real = lazyreg.assembly.assemble_chunks
    monkeypatch.setattr(lazyreg.assembly, "assemble_chunks", lambda n: seen.append(1) or real(n))
    plain = da.arange(6 * 6 * 6, chunks=36).reshape(6, 6, 6).rechunk(3)
    x = threaded_assembly(plain)
    assert (x.name, x.chunks, x.dtype) == (plain.name, plain.chunks, plain.dtype)
    assert dict(x.__dask_graph__()) == dict(plain.__dask_graph__())
    np.testing.assert_array_equal(x.compute(), plain.compute())
    assert len(seen) == 1
    for derived in (x[1:4], x + 1, x.map_blocks(np.negative)):  # derived arrays are ordinary dask arrays
        assert type(derived) is da.Array
    np.testing.assert_array_equal(xr.DataArray(x, dims=("z", "y", "x")).compute().values, plain.compute())
    assert len(seen) == 2  # through xarray's compute too
    np.testing.assert_array_equal(dask.compute(x, scheduler="threads")[0], plain.compute())


def test_apply_transform_result_is_assembled_by_threads_and_unchanged(monkeypatch):
    monkeypatch.setattr(lazyreg.assembly, "MIN_THREADED_BYTES", 0)
    moving = lazyreg.image(np.random.default_rng(1).random((24, 28, 32), dtype=np.float32), spacing=(2.0, 1.0, 1.0))
    A = lazyreg.Affine.from_parameters(rotation=(8.0, 0.0, 0.0), center=(24.0, 14.0, 16.0))
    out = lazyreg.apply_transform(moving, moving, [A], chunks=(8, 16, 16))
    ref = concatenate3(_nested(out.data))
    np.testing.assert_array_equal(out.compute().values, ref)
    np.testing.assert_array_equal(out[3:9].values, ref[3:9])  # a slice: dask's own assembly


def _peak_bytes(fn) -> int:
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("scheduler", ["sync", "threads"])
def test_chunks_go_straight_into_the_computed_result(scheduler, monkeypatch):
    """In this process's threads, each chunk task writes its chunk into the final array: the
    chunks are not all held beside it until the end (peak ~1x the result instead of ~2x)."""
    monkeypatch.setattr(lazyreg.assembly, "MIN_THREADED_BYTES", 0)
    plain = da.random.default_rng(0).random((60, 80, 100), chunks=(20, 32, 40), dtype=np.float32)  # uneven
    x = threaded_assembly(plain)
    ref = plain.compute(scheduler="sync")
    got = x.compute(scheduler=scheduler)
    assert got.dtype == ref.dtype and got.flags.c_contiguous and got.flags.writeable
    np.testing.assert_array_equal(got, ref)
    with dask.config.set(scheduler="sync"):
        ours, dasks = _peak_bytes(x.compute), _peak_bytes(plain.compute)
    assert dasks > 1.9 * ref.nbytes and ours < 1.35 * ref.nbytes, (ours, dasks, ref.nbytes)
    again = x.compute(scheduler=scheduler)  # each compute has its own result
    got[0, 0, 0] = -1.0
    assert again[0, 0, 0] == ref[0, 0, 0] and not np.shares_memory(got, again)
    np.testing.assert_array_equal(np.asarray(xr.DataArray(x, dims=("z", "y", "x"))), ref)
    # chunks wanted as such (persist, dask.optimize as to_zarr uses it) are not parts of a canvas,
    # which would keep all of it alive while any one is
    del got, again
    import gc

    gc.collect()
    before = len(lazyreg.assembly._CANVASES)
    (kept,) = dask.persist(x, scheduler=scheduler)
    (opt,) = dask.optimize(x)
    assert len(lazyreg.assembly._CANVASES) == before and dict(opt.dask) == dict(dask.optimize(plain)[0].dask)
    np.testing.assert_array_equal(kept.compute(scheduler="sync"), ref)


def test_chunks_computed_elsewhere_or_unexpected_are_assembled_by_copying(monkeypatch):
    monkeypatch.setattr(lazyreg.assembly, "MIN_THREADED_BYTES", 0)
    plain = da.random.default_rng(1).random((20, 24, 12), chunks=(8, 8, 12))
    x = threaded_assembly(plain)
    ref = plain.compute(scheduler="sync")
    np.testing.assert_array_equal(x.compute(scheduler="processes", num_workers=2), ref)  # chunks arrive as copies
    # a chunk that is not what the array says (dtype) is passed on as it is
    odd = threaded_assembly(plain.map_blocks(lambda b: b.astype(np.float32), dtype=np.float64))
    np.testing.assert_array_equal(odd.compute(scheduler="threads"), ref.astype(np.float32))
    # a compute that fails leaves no final array behind
    import gc

    before = len(lazyreg.assembly._CANVASES)

    def fail(b, block_info=None):
        if block_info[0]["chunk-location"] == (2, 1, 0):
            raise RuntimeError("boom")
        return b

    bad = threaded_assembly(plain.map_blocks(fail, dtype=plain.dtype))
    try:  # (not pytest.raises: its traceback would keep the computed chunks alive)
        bad.compute(scheduler="threads")
    except RuntimeError as e:
        assert "boom" in str(e)
    else:
        raise AssertionError("the failing chunk did not raise")
    plain.compute(scheduler="threads")  # (the pool's threads drop what their last task held)
    gc.collect()
    assert len(lazyreg.assembly._CANVASES) == before
