"""Tests for lazyreg.resample.apply_transform: lazy result == eager reference, laziness, reads."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import xarray as xr
import pytest
import SimpleITK as sitk

import lazyreg
from lazyreg import Affine, DisplacementField, LazyregError, LazyregWarning, apply_transform, transform_points
from lazyreg.images import grid_of
from lazyreg.testing import assert_images_allclose, count_tasks, counting_image

from _helpers import grid_points, scipy_reference, sitk_reference, smooth_volume


def _moving(shape=(40, 50, 60), spacing=(2.0, 1.0, 1.2), origin=(-3.0, 5.0, 2.0), chunks=(16, 16, 16), dtype=np.float32, seed=0):
    v = smooth_volume(shape, seed=seed, dtype=dtype)
    return lazyreg.image(da.from_array(v, chunks=chunks), spacing, origin)


def _rot30_shear_scale(centre):
    return Affine.from_parameters(rotation=(30.0, 5.0, -4.0), scale=(1.1, 0.95, 1.05), shear=(0.05, 0.0, 0.03),
                                  translation=(2.0, -3.0, 1.5), center=centre)


def _centre(img):
    lo, hi = grid_of(img).extent
    return (lo + hi) / 2


def _chunk_reads(img):
    """Keys of graph tasks that read chunks of a store-backed image (the store's own dask array)."""
    names = [k[0] if isinstance(k, tuple) else str(k) for k in dict(img.data.__dask_graph__())]
    return [n for n in names if n.startswith(("lazyreg-read-", "original-lazyreg-read-"))]


def _assert_matches(lazy, ref, rtol=1e-4):
    scale = max(1.0, float(np.abs(ref).max()))
    np.testing.assert_allclose(np.asarray(lazy, dtype=np.float64), ref, rtol=0, atol=rtol * scale)


# ------------------------------------------------------------------------------------------ affine


@pytest.mark.parametrize("chunks", [None, (17, 17, 17), ((5, 14, 11), (30, 7, 8), (1, 40, 9))])
def test_affine_equals_sitk_eager_reference(chunks):
    moving = _moving()
    fixed = lazyreg.grid((30, 45, 50), spacing=(1.5, 1.1, 1.3), origin=(1.0, 2.0, 3.0))
    A = _rot30_shear_scale(_centre(moving))
    out = apply_transform(fixed, moving, [A], chunks=chunks)
    assert out.dims == ("z", "y", "x") and out.shape == fixed.shape and out.dtype == moving.dtype
    np.testing.assert_array_equal(out.x.values, fixed.x.values)
    if chunks is not None and not isinstance(chunks[0], tuple):
        assert out.data.chunksize == (17, 17, 17)
    ref = sitk_reference(fixed, moving, A.to_sitk())
    _assert_matches(out.values, ref)
    assert np.count_nonzero(ref) > 0.3 * ref.size  # the test is not vacuous


def test_affine_equals_independent_scipy_reference():
    moving = _moving()
    fixed = lazyreg.grid((30, 45, 50), spacing=(1.5, 1.1, 1.3), origin=(1.0, 2.0, 3.0))
    A = _rot30_shear_scale(_centre(moving))
    out = apply_transform(fixed, moving, [A], chunks=(17, 17, 17)).values
    ref, safe = scipy_reference(fixed, moving, A(grid_points(grid_of(fixed))))
    np.testing.assert_allclose(out[safe], ref[safe], atol=1e-3 * ref.max())


@pytest.mark.parametrize("order", [0, 3])
def test_orders_match_reference(order):
    moving = _moving(dtype=np.float32)
    fixed = lazyreg.grid((24, 40, 40), spacing=(2.0, 1.0, 1.0), origin=(4.0, 8.0, 10.0))
    A = _rot30_shear_scale(_centre(moving))
    out = apply_transform(fixed, moving, A, order=order, chunks=(12, 16, 16)).values
    ref = sitk_reference(fixed, moving, A.to_sitk(), order=order)
    if order == 0:
        np.testing.assert_array_equal(out, ref.astype(np.float32))
    else:
        _assert_matches(out, ref)


def test_integer_output_is_rounded_and_clipped_not_wrapped():
    v = np.zeros((10, 10, 10), dtype=np.uint8)
    v[:, :, 5:] = 250
    moving = lazyreg.image(v, 1.0)
    out = apply_transform(moving, moving, [Affine.from_translation((0, 0, 0.5))], order=3).values
    assert out.dtype == np.uint8
    assert out.max() == 255 and out.min() == 0  # cubic overshoot clipped, undershoot clipped
    lin = apply_transform(moving, moving, [Affine.from_translation((0, 0, 0.5))], order=1).values
    assert lin[0, 0, 4] == 125  # 0.5 * 250 rounded


def test_fill_value_outside_and_disjoint_chunks_read_nothing():
    moving, log = counting_image(_moving())
    fixed = lazyreg.grid((20, 20, 60), spacing=2.0, origin=(0.0, 0.0, 0.0))
    far = Affine.from_translation((0.0, 0.0, 500.0))
    out = apply_transform(fixed, moving, [far], fill_value=-7, chunks=(10, 10, 10)).values
    assert np.all(out == -7)
    assert log.reads == []


def test_identity_on_same_grid_reproduces_moving():
    moving = _moving()
    assert_images_allclose(apply_transform(moving, moving), moving, rtol=1e-6)


# ------------------------------------------------------------------------------------------ fields


def _smooth_field(grid_shape=(8, 10, 12), spacing=(12.0, 6.0, 6.5), origin=(-6.0, 0.0, -1.0), amp=3.0, seed=1):
    rng = np.random.default_rng(seed)
    from scipy import ndimage

    vals = np.stack([ndimage.gaussian_filter(rng.normal(size=grid_shape), 1.5) for _ in range(3)], -1)
    vals *= amp / np.abs(vals).max()
    return DisplacementField.from_array(vals, spacing, origin)


def test_coarse_field_equals_sitk_reference():
    moving = _moving()
    fixed = lazyreg.grid((30, 40, 50), spacing=(2.0, 1.0, 1.2), origin=(-3.0, 5.0, 2.0))
    D = _smooth_field()
    out = apply_transform(fixed, moving, [D], chunks=(11, 13, 17)).values
    ref = sitk_reference(fixed, moving, D.to_sitk())
    _assert_matches(out, ref)
    ident = apply_transform(fixed, moving, []).values
    assert np.abs(out - ident).max() > 10  # the field really moves things


def test_lazy_field_with_store_backed_moving_equals_concrete():
    moving_mem = _moving()
    moving, _ = counting_image(moving_mem)
    fixed = lazyreg.grid((30, 40, 50), spacing=(2.0, 1.0, 1.2), origin=(-3.0, 5.0, 2.0))
    D = _smooth_field()
    D_lazy = DisplacementField(D.data.chunk({"z": 4, "y": 5, "x": 6}))
    assert D_lazy.is_lazy
    concrete = apply_transform(fixed, moving_mem, [D], chunks=16)
    lazy = apply_transform(fixed, moving, [D_lazy], chunks=16)
    assert_images_allclose(lazy, concrete, rtol=0, atol=1e-6 * float(np.abs(concrete).max()))
    bounded = apply_transform(fixed, moving_mem, [D_lazy], chunks=16, max_displacement=3.5)
    assert_images_allclose(bounded, concrete, rtol=0, atol=1e-6 * float(np.abs(concrete).max()))
    with pytest.raises(LazyregError, match="max_displacement"):
        apply_transform(fixed, moving_mem, [D_lazy], chunks=16, max_displacement=0.5).compute()


@pytest.mark.parametrize("lazy", [False, True])
def test_affine_then_field_list_order(lazy):
    """[A, D] means moving = A(D(x)); compared with SimpleITK's composite and with [D, A]."""
    moving_mem = _moving()
    moving, _ = counting_image(moving_mem)
    fixed = lazyreg.grid((30, 40, 50), spacing=(2.0, 1.0, 1.2), origin=(-3.0, 5.0, 2.0))
    A = Affine.from_parameters(rotation=(10.0, 0, 0), center=_centre(moving_mem), translation=(1.0, 2.0, 0.0))
    D = _smooth_field()
    if lazy:
        A = Affine(da.from_array(np.asarray(A.matrix), chunks=2))
        D = DisplacementField(D.data.chunk({"z": 4}))
    out = apply_transform(fixed, moving, [A, D], chunks=(15, 20, 25)).values
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(A.compute().to_sitk())
    comp.AddTransform(D.compute().to_sitk())
    ref = sitk_reference(fixed, moving_mem, comp)
    _assert_matches(out, ref)
    other = apply_transform(fixed, moving, [D, A], chunks=(15, 20, 25)).values
    assert np.abs(other - ref).max() > 10  # the order matters and is respected


# ------------------------------------------------------------------------------------------ points


def test_transform_points_agrees_with_apply_transform():
    v = np.zeros((30, 40, 50), dtype=np.float32)
    v[12, 25, 31] = 1000.0  # one bright voxel in moving
    moving = lazyreg.image(v, (2.0, 1.0, 1.1), (1.0, -2.0, 3.0))
    fixed = lazyreg.grid((30, 40, 50), (2.0, 1.0, 1.1), (0.0, 0.0, 0.0))
    A = Affine.from_parameters(rotation=(12.0, -6.0, 4.0), center=_centre(moving), translation=(1.0, 1.0, -2.0))
    D = _smooth_field(origin=(0.0, 0.0, 0.0), amp=2.0)
    out = apply_transform(fixed, moving, [A, D], order=1).values
    gf = grid_of(fixed)
    # fixed voxel centres whose mapped point lies closest to the bright voxel
    pts = grid_points(gf)
    mapped = transform_points(pts, [A, D])
    target = grid_of(moving).to_physical([[12, 25, 31]])[0]
    best = pts[np.argmin(np.linalg.norm((mapped - target) / grid_of(moving).spacing, axis=1))]
    brightest = gf.to_physical([np.unravel_index(np.argmax(out), out.shape)])[0]
    assert np.all(np.abs(brightest - best) <= np.asarray(gf.spacing) + 1e-9)


# ------------------------------------------------------------------------------------------ laziness


def test_building_reads_nothing_and_runs_nothing_even_with_lazy_affine():
    moving, log = counting_image(_moving())
    calls = []

    def solve():
        calls.append(1)
        return np.asarray(Affine.from_translation((1.0, 2.0, 3.0)).matrix)

    lazy_A = Affine(da.from_delayed(dask.delayed(solve)(), shape=(4, 4), dtype=float))
    with count_tasks() as counter:
        out = apply_transform(moving, moving, [lazy_A.inverse() @ lazy_A @ lazy_A])
        out2 = apply_transform(moving, moving, [Affine.identity()], order=3)
    assert counter.n == 0 and calls == [] and log.reads == []
    assert isinstance(out.data, da.Array) and isinstance(out2.data, da.Array)
    ref = apply_transform(moving, moving, [Affine.from_translation((1.0, 2.0, 3.0))]).values
    _assert_matches(out.values, ref, rtol=1e-6)
    assert len(calls) >= 1


def test_lazy_affine_reads_region_from_store_per_task(monkeypatch):
    monkeypatch.setattr(lazyreg.resample, "GROUP_VOXELS", 0)  # one task per chunk (small chunks are grouped by default)
    moving, log = counting_image(_moving(shape=(48, 64, 64)), chunks=(16, 16, 16))
    lazy_A = Affine(da.from_array(np.asarray(Affine.from_translation((4.0, 0.0, 0.0)).matrix), chunks=4))
    out = apply_transform(moving, moving, [lazy_A], chunks=(16, 16, 16))
    sub = out[:16, :16, :16].values  # one output chunk
    assert sub.shape == (16, 16, 16)
    # translation of 4 um = 2 voxels in z; region = chunk + 1 voxel margin on each side (clipped at 0):
    # z 1:19, y 0:17, x 0:17, read as the whole store chunks that cover it, each once
    read_chunks = sorted(tuple(s.start // 16 for s in r) for r in log.reads)
    assert read_chunks == [(z, y, x) for z in (0, 1) for y in (0, 1) for x in (0, 1)]
    assert all(s.stop - s.start == 16 for r in log.reads for s in r)


@pytest.mark.parametrize("path", ["store", "chunks"])
def test_read_economy_with_concrete_affine(path, monkeypatch):
    """A small output region reads only the moving chunks that its mapped chunks (+1 voxel) touch.

    Stated bound: for each needed output chunk, the moving voxels read are those of the chunks that
    intersect the box of the chunk's 8 mapped corner voxel centres, widened by 1 voxel (linear
    interpolation); each moving chunk is read at most once. Both ways of reading keep it: a
    store-backed image ("store": each task reads its box through the graph's chunk cache) and any
    other dask image ("chunks", here arithmetic on the store: tasks depend on the moving chunks).
    Per chunk with one task per chunk; small chunks are grouped by default (a group's task reads
    the box of the group: ``test_small_chunks_are_resampled_in_groups_equal_to_one_chunk_tasks``).
    """
    monkeypatch.setattr(lazyreg.resample, "GROUP_VOXELS", 0)
    moving_mem = _moving(shape=(96, 96, 96), spacing=1.0, origin=0.0)
    moving, log = counting_image(moving_mem, chunks=(16, 16, 16))
    if path == "chunks":
        moving = moving + 0  # no longer a pure selection of the store
    A = Affine.from_parameters(rotation=(10.0, 0, 0), center=(48.0, 48.0, 48.0))
    out = apply_transform(moving, moving, [A], chunks=(16, 16, 16))
    _ = out[40:56, 40:56, 40:56].values  # touches output chunks 2..3 on every axis
    expected = set()
    for cz in (2, 3):
        for cy in (2, 3):
            for cx in (2, 3):
                lo = np.array([cz, cy, cx]) * 16
                corners = np.array([[lo[0] + a * 15, lo[1] + b * 15, lo[2] + c * 15]
                                    for a in (0, 1) for b in (0, 1) for c in (0, 1)], dtype=float)
                mapped = A(corners)
                i0 = np.clip(np.floor(mapped.min(0)) - 1, 0, 95).astype(int)
                i1 = np.clip(np.ceil(mapped.max(0)) + 1, 0, 95).astype(int)
                expected |= {(z, y, x) for z in range(i0[0] // 16, i1[0] // 16 + 1)
                             for y in range(i0[1] // 16, i1[1] // 16 + 1)
                             for x in range(i0[2] // 16, i1[2] // 16 + 1)}
    read_chunks = [tuple(s.start // 16 for s in r) for r in log.reads]
    assert len(read_chunks) == len(set(read_chunks))  # each moving chunk read once
    assert set(read_chunks) == expected
    assert len(expected) <= 64 < 216  # 4x4x4 of the 6x6x6 chunks at most, not the whole volume
    assert all(r[0].stop - r[0].start <= 16 for r in log.reads)  # whole chunks, nothing more


def test_concrete_transform_on_store_reads_in_task_without_chunk_tasks():
    """Store-backed moving + concrete transforms: the graph is one task per output chunk plus the
    source value; no task reads a moving chunk, so a distributed worker cannot read ahead."""
    moving_mem = _moving(shape=(48, 64, 64))
    moving, log = counting_image(moving_mem, chunks=(16, 16, 16))
    A = _rot30_shear_scale(_centre(moving_mem))
    out = apply_transform(moving, moving, [A], chunks=(16, 32, 32))
    graph = dict(out.data.__dask_graph__())
    assert _chunk_reads(out) == []
    n_out = out.data.npartitions
    assert len(graph) == n_out + 1  # output tasks + the source
    # names are deterministic
    assert apply_transform(moving, moving, [A], chunks=(16, 32, 32)).data.name == out.data.name
    res = out.values
    read_chunks = [tuple(s.start // 16 for s in r) for r in log.reads]
    assert len(read_chunks) == len(set(read_chunks)) <= 3 * 4 * 4  # each store chunk read once
    ref = apply_transform(moving_mem, moving_mem, [A], chunks=(16, 32, 32)).values  # chunk path
    np.testing.assert_array_equal(res, ref)
    _assert_matches(res, sitk_reference(moving_mem, moving_mem, A.to_sitk()))


def test_not_store_backed_with_lazy_transform_warns_or_raises(monkeypatch):
    moving = _moving()
    lazy_A = Affine(da.from_array(np.eye(4), chunks=4))
    with pytest.warns(LazyregWarning, match="whole moving image"):
        out = apply_transform(moving, moving, [lazy_A])
    _assert_matches(out.values, moving.values, rtol=1e-6)
    monkeypatch.setattr(lazyreg.resample, "SMALL_MOVING_BYTES", 1000)
    with pytest.raises(LazyregError, match="lazyreg.to_zarr"):
        apply_transform(moving, moving, [lazy_A])
    # an in-memory image is used as it is: no warning (LazyregWarning is an error in this suite)
    in_memory = moving.compute()
    assert_images_allclose(apply_transform(in_memory, in_memory, [lazy_A]), in_memory, rtol=1e-6)


def test_lazy_transform_on_a_selection_of_a_store_reads_the_store():
    """A sliced, strided and re-chunked store-backed image is still read region by region."""
    moving, log = counting_image(_moving())
    sub = moving[4:20, ::2].chunk({"z": 4})
    lazy_A = Affine(da.from_array(np.eye(4), chunks=4))
    out = apply_transform(sub, sub, [lazy_A])  # no warning: the tasks read regions of the store
    assert_images_allclose(out, sub, rtol=1e-6)
    # whole store chunks (16 rows) around rows 3 to 20 of the selection: never the third z chunk
    assert log.reads and all(r[0].stop <= 32 for r in log.reads)


def _stored(img, path):
    """``img`` written to an OME-Zarr store and reopened: a store-backed image worker processes can read."""
    lazyreg.to_zarr(img, path)
    return lazyreg.open_image(path)


@pytest.mark.parametrize("scheduler", ["threads", "distributed"])
def test_concrete_store_backed_equals_chunk_path_threads_and_cluster(scheduler, request, tmp_path):
    moving_mem = _moving()
    A = _rot30_shear_scale(_centre(moving_mem))
    D = DisplacementField.from_array(np.full((6, 7, 8, 3), 0.7, dtype=np.float32), spacing=8.0, origin=(0.0, 0.0, 0.0))
    fixed = lazyreg.grid((30, 45, 50), spacing=(1.5, 1.1, 1.3), origin=(1.0, 2.0, 3.0))
    if scheduler == "distributed":
        from distributed import Client

        # reads happen in the worker processes, where a counting_image cannot record them: a real store
        moving, log = _stored(moving_mem, tmp_path / "moving.ome.zarr"), None
        client = Client(request.getfixturevalue("local_cluster"))
        request.addfinalizer(client.close)
    else:
        moving, log = counting_image(moving_mem)
    for order in (1, 3):
        got = apply_transform(fixed, moving, [A, D], chunks=16, order=order)
        assert _chunk_reads(got) == []  # the tasks read their regions themselves
        ref = apply_transform(fixed, moving_mem, [A, D], chunks=16, order=order)  # chunk path
        assert_images_allclose(got, ref, rtol=0)
    assert log is None or log.reads  # the store was read, by the tasks
    _assert_matches(got.values, sitk_reference(fixed, moving_mem, _sitk_composite(A, D), order=3), rtol=1e-3)


def _sitk_composite(A, D):
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(A.to_sitk())
    comp.AddTransform(D.to_sitk())
    return comp


def test_lazy_affine_on_a_cluster_matches_threaded(local_cluster, tmp_path):
    from distributed import Client

    moving_mem = _moving()
    moving = _stored(moving_mem, tmp_path / "moving.ome.zarr")
    lazy_A = Affine(da.from_array(np.asarray(_rot30_shear_scale(_centre(moving_mem)).matrix), chunks=4))
    fixed = lazyreg.grid((30, 45, 50), spacing=(1.5, 1.1, 1.3), origin=(1.0, 2.0, 3.0))
    threaded = apply_transform(fixed, moving_mem, [lazy_A.compute()], chunks=16).compute(scheduler="threads")
    with Client(local_cluster):
        dist = apply_transform(fixed, moving, [lazy_A], chunks=16).compute()
    assert_images_allclose(dist, threaded, rtol=0)


# ------------------------------------------------------------------------------------------ bad input


def test_bad_inputs_give_clear_errors():
    moving = _moving()
    with pytest.raises(LazyregError, match="order"):
        apply_transform(moving, moving, order=2)
    with pytest.raises(LazyregError, match="transforms"):
        apply_transform(moving, moving, [np.eye(4)])
    with pytest.raises(LazyregError, match="transforms"):
        apply_transform(moving, moving, ["affine.txt"])
    with pytest.raises(LazyregError, match="matrix"):
        Affine(np.eye(3))
    with pytest.raises(LazyregError, match="matrix"):
        Affine(np.full((4, 4), np.nan))
    with pytest.raises(LazyregError, match="invertible"):
        Affine(np.zeros((4, 4)) + np.diag([0, 0, 0, 1.0])).inverse()
    with pytest.raises(LazyregError, match="^moving"):
        apply_transform(moving, moving.values)
    with pytest.raises(LazyregError, match="^fixed"):
        apply_transform(moving.transpose("x", "y", "z"), moving)
    with pytest.raises(LazyregError, match="fill_value"):
        apply_transform(moving, moving, fill_value="zero")
    with pytest.raises(LazyregError):
        DisplacementField(moving)  # no vector dim
    for bad in (-1.0, (1.0, 2.0), "far", np.nan, (1.0, -1.0, 0.0)):
        with pytest.raises(LazyregError, match="^max_displacement: "):
            apply_transform(moving, moving, max_displacement=bad)  # checked before any graph, lazy field or not


def test_chunk_cache_size_from_dask_config():
    """``lazyreg.chunk-cache-bytes`` sizes the reader's cache (fewer decodes when it holds the
    image; the result is the same) and bad values are clear errors."""
    import dask

    from lazyreg.io.chunk_cache import CHUNK_CACHE_BYTES, chunk_cache_bytes

    assert chunk_cache_bytes() == CHUNK_CACHE_BYTES
    moving_mem = _moving(shape=(48, 64, 64))  # float32, 16^3 chunks of 16 KiB, 48 chunks
    A = Affine.from_parameters(rotation=(10.0, 0, 0), center=_centre(moving_mem))
    results, decodes = {}, {}
    for size in ("64 KiB", "1 MiB"):
        moving, log = counting_image(moving_mem, chunks=(16, 16, 16))
        with dask.config.set({"lazyreg.chunk-cache-bytes": size}):
            out = apply_transform(moving, moving, [A], chunks=(16, 16, 16))
        results[size] = out.values  # the value was read when the graph was built
        decodes[size] = len(log.reads)
    np.testing.assert_array_equal(results["64 KiB"], results["1 MiB"])
    assert decodes["1 MiB"] == 48 < decodes["64 KiB"]  # 4 chunks cached vs the whole image
    for bad in ("lots", -1):
        with dask.config.set({"lazyreg.chunk-cache-bytes": bad}), pytest.raises(lazyreg.LazyregError, match="chunk-cache-bytes"):
            apply_transform(moving, moving, [A])


def test_the_reader_keeps_the_chunks_that_tasks_still_read(monkeypatch):
    """The graph tells its chunk cache how many tasks read each store chunk: with a cache smaller
    than the tasks' working set, plain LRU decodes chunks again and again (140 decodes of 48
    chunks here), the planned eviction far fewer (92); the values are the same."""
    import dask

    from lazyreg.io.chunk_cache import ChunkCache

    moving_mem = _moving(shape=(48, 64, 64))  # float32, 16^3 chunks of 16 KiB, 48 chunks
    A = Affine.from_parameters(rotation=(10.0, 0, 0), scale=1.05, center=_centre(moving_mem))
    decodes, results = {}, {}
    for plan in (True, False):
        if not plan:  # planned reads never counted down: every chunk looks wanted, eviction is LRU
            monkeypatch.setattr(ChunkCache, "_done_with", lambda self, ids: None)
        moving, log = counting_image(moving_mem, chunks=(16, 16, 16))
        with dask.config.set({"lazyreg.chunk-cache-bytes": "384 KiB"}):  # 24 chunks
            results[plan] = apply_transform(moving, moving, [A], chunks=(16, 16, 16)).compute(scheduler="sync").values
        decodes[plan] = len(log.reads)
    np.testing.assert_array_equal(results[True], results[False])
    assert decodes[True] < 0.75 * decodes[False], decodes


def test_the_moving_images_name_and_attrs_are_kept_on_the_fixed_grid():
    fixed = lazyreg.image(np.zeros((4, 6, 8)), spacing=(2.0, 1.0, 1.0), origin=(1.0, 0.0, 0.0))
    moving = lazyreg.image(np.ones((5, 5, 5), np.uint16), spacing=1.5).rename("dapi")
    moving.attrs.update({"channel": "DAPI", "round": 3, "spacing": (1.5, 1.5, 1.5)})
    out = lazyreg.apply_transform(fixed, moving, [])
    assert out.name == "dapi"
    assert out.attrs["channel"] == "DAPI" and out.attrs["round"] == 3
    assert out.attrs["spacing"] == (2.0, 1.0, 1.0)  # the grid's own attrs are the fixed grid's


def test_channels_and_time_points_are_resampled_each_through_the_same_transforms():
    rng = np.random.default_rng(0)
    values = rng.random((2, 3, 8, 10, 12)).astype(np.float32)  # t, c, z, y, x
    coords = {"t": [0.0, 30.0], "c": ["dapi", "gfp", "rfp"]}
    spatial = lazyreg.image(values[0, 0], spacing=(2.0, 1.0, 1.0), origin=(1.0, 0.0, 0.0))
    moving = xr.DataArray(values, dims=("t", "c", "z", "y", "x"), coords={**coords, **spatial.coords}, attrs=dict(spatial.attrs), name="stack")
    moving = moving.chunk({"t": 1, "c": 1, "z": 4, "y": 5, "x": 6})
    fixed = lazyreg.image(np.zeros((6, 9, 11)), spacing=(2.0, 1.0, 1.0), origin=(2.0, 0.5, 0.5))
    A = [lazyreg.Affine.from_parameters(rotation=(0.0, 0.0, 5.0), translation=(0.5, -0.3, 0.2))]
    with count_tasks() as built:
        out = lazyreg.apply_transform(fixed, moving, A)
    assert built.n == 0
    assert out.dims == ("t", "c", "z", "y", "x") and out.shape == (2, 3, 6, 9, 11) and out.name == "stack"
    assert list(out.c.values) == coords["c"] and list(out.t.values) == coords["t"]
    for t in range(2):
        for c in range(3):
            one = lazyreg.image(values[t, c], spacing=(2.0, 1.0, 1.0), origin=(1.0, 0.0, 0.0))
            np.testing.assert_array_equal(out[t, c].values, lazyreg.apply_transform(fixed, one, A).values)
    # one channel of one time point runs about a sixth of the tasks of the whole stack
    with count_tasks() as whole:
        out.values
    with count_tasks() as one:
        out.sel(c="gfp", t=30.0).values
    assert 0 < one.n <= whole.n / 5


# --------------------------------------------------------------------------- small chunks computed in groups


def _resample_tasks(out):
    """The tasks that resample (not the cuts of a group, nor the reader)."""
    graph = dict(out.data.__dask_graph__())
    return [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("apply-transform-") and (
        str(k[0]).endswith("-group") or not any(str(kk[0]).endswith("-group") for kk in graph if isinstance(kk, tuple)))]


@pytest.mark.parametrize("lazy", ["concrete", "lazy affine", "lazy field"])
def test_small_chunks_are_resampled_in_groups_equal_to_one_chunk_tasks(monkeypatch, tmp_path, lazy):
    src = _moving(shape=(30, 35, 40), chunks=(11, 13, 17), dtype=np.uint16)
    lazyreg.to_zarr(src, tmp_path / "m.zarr", chunks=(11, 13, 17))
    mov = lazyreg.open_image(tmp_path / "m.zarr")
    A = _rot30_shear_scale(_centre(mov))
    vals = np.random.default_rng(3).normal(0.0, 1.5, (5, 6, 7, 3))
    field = da.from_array(vals, chunks=(2, 3, 4, 3)) if lazy == "lazy field" else vals
    D = DisplacementField.from_array(field, spacing=(8.0, 7.0, 7.0), origin=(-3.0, 5.0, 2.0))
    ts = {"concrete": [A, D], "lazy affine": [Affine(da.from_array(np.asarray(A.matrix), chunks=4))], "lazy field": [A, D]}[lazy]
    chunks = (7, 9, 5)  # odd chunks, a partial one at every edge: 5 x 4 x 8 = 160 chunks
    out = {}
    for label, group_voxels in (("alone", 0), ("grouped", lazyreg.resample.GROUP_VOXELS)):
        monkeypatch.setattr(lazyreg.resample, "GROUP_VOXELS", group_voxels)
        for order in (0, 1):
            res = apply_transform(mov, mov, ts, order=order, chunks=chunks)
            assert res.data.chunks == tuple(tuple(c) for c in da.core.normalize_chunks(chunks, mov.shape))
            out[label, order] = (res.values, len(_resample_tasks(res)))
    for order in (0, 1):
        np.testing.assert_array_equal(out["grouped", order][0], out["alone", order][0])
        assert out["alone", order][1] == 160
        assert out["grouped", order][1] < 160 / 4  # 2 x 2 x 2 chunks (or fewer at the edges) per task


def test_groups_keep_cubic_results_and_a_bounded_group_size(monkeypatch):
    mov = _moving(shape=(24, 24, 24), chunks=(8, 8, 8))
    A = _rot30_shear_scale(_centre(mov))
    grouped = apply_transform(mov, mov, [A], order=3, chunks=6)
    assert len(_resample_tasks(grouped)) == 8  # 2 x 2 x 2 chunks of 6^3 per task: 4 tasks per core at least
    monkeypatch.setattr(lazyreg.resample, "GROUP_VOXELS", 0)
    alone = apply_transform(mov, mov, [A], order=3, chunks=6)
    assert len(_resample_tasks(alone)) == 64
    # cubic prefilters each task's region: groups differ from single chunks only by that (margin 12)
    np.testing.assert_allclose(grouped.values, alone.values, rtol=0, atol=1e-4 * float(np.ptp(mov.values)))
    assert lazyreg.resample.GROUP_VOXELS == 0 and apply_transform(mov, mov, [A], chunks=24).data.npartitions == 1


def test_float_output_is_itk_buffer_without_copy_and_stays_valid():
    import gc

    from lazyreg.images import Grid
    from lazyreg.interpolation import cast_to, resample_array

    g = Grid((6, 7, 8), 1.0)
    values = np.random.default_rng(0).random(g.shape).astype(np.float32)
    shift = [("affine", Affine.from_translation((0.0, 0.0, 0.5)).matrix, None)]
    out = resample_array(values, g, g, shift, order=1, fill_value=0, dtype=np.dtype(np.float32))
    gc.collect()
    np.testing.assert_allclose(out[:, :, :-1], (values[:, :, :-1] + values[:, :, 1:]) / 2, rtol=1e-6)
    out[0, 0, 0] = -1.0  # writable, owned by the result alone
    assert out[0, 0, 0] == -1.0 and out.dtype == np.float32
    # integers: the one-pass rounding (values already in range) equals rounding then clipping
    res = np.array([0.0, 0.5, 1.5, 2.5, 65534.5, 65535.0, 3.49999], dtype=np.float32)
    np.testing.assert_array_equal(cast_to(res, np.dtype(np.uint16), in_range=True), cast_to(res, np.dtype(np.uint16)))
    top = np.full(g.shape, 65535, dtype=np.uint16)
    assert np.all(resample_array(top, g, g, shift, order=1, fill_value=65535, dtype=top.dtype) == 65535)


@pytest.mark.parametrize("order", [0, 1, 3])
@pytest.mark.parametrize(("in_dtype", "out_dtype", "fill"), [
    ("uint16", "uint16", 0), ("uint16", "uint16", 65535), ("uint8", "uint8", 300.6), ("int16", "uint16", 7.4),
    ("uint8", "uint16", 3),
])
def test_integer_outputs_written_by_itk_equal_the_rounded_float_output(order, in_dtype, out_dtype, fill):
    """Unsigned outputs of <= 16 bits come straight out of ITK (values + 0.5, truncated and
    clamped as ITK writes integers): the same values as rounding and clipping ITK's float output,
    except exact ties, which go up instead of to even; nearest neighbour is exact."""
    from lazyreg.images import Grid
    from lazyreg.interpolation import cast_to, resample_array

    rng = np.random.default_rng(11)
    info = np.iinfo(in_dtype)
    values = rng.integers(info.min, int(info.max) + 1, size=(9, 10, 11)).astype(in_dtype)
    values[:3] = info.max  # interpolation at the top of the range, and cubic overshoot beyond it
    g = Grid(values.shape, (2.0, 1.0, 0.7), (1.0, -2.0, 3.0))
    A = Affine.from_parameters(rotation=(8.0, 0.0, 5.0), center=(9.0, 4.0, 4.0), translation=(0.4, 1.3, -0.6))
    steps = [("affine", A.matrix, None)]
    dtype = np.dtype(out_dtype)
    out = resample_array(values, g, g, steps, order=order, fill_value=fill, dtype=dtype)
    assert out.dtype == dtype and type(out.base).__name__ == "_ItkBuffer"  # ITK's buffer, no cast pass
    exact = resample_array(values, g, g, steps, order=order, fill_value=fill, dtype=np.dtype(np.float64))
    ref = cast_to(exact, dtype)
    tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-6
    assert np.count_nonzero(ref) > 0.3 * ref.size and np.isclose(exact, fill, rtol=0, atol=1e-5).any()  # fill used
    np.testing.assert_array_equal(out[~tie], ref[~tie])
    np.testing.assert_array_equal(out[tie], cast_to(np.floor(exact[tie] + 0.5), dtype))  # ties up (then clipped)
    # ties: half a voxel between 2 and 3 gives 3 (up), where rounding to even gives 2
    two = np.broadcast_to(np.array([2, 3, 2, 3], dtype=in_dtype), (2, 2, 4)).copy()
    half = [("affine", Affine.from_translation((0.0, 0.0, 0.5)).matrix, None)]
    gg = Grid(two.shape, 1.0)
    assert list(resample_array(two, gg, gg, half, order=1, fill_value=0, dtype=dtype)[0, 0]) == [3, 3, 3, 0]


def test_in_memory_moving_is_one_block_and_tasks_take_views_of_it(monkeypatch):
    """A numpy moving image enters the graph as one block (dask's snapshot copy), and each task's
    region is a read-only view of it rather than a region assembled by copying chunk parts; the
    result is unchanged (equal to the SimpleITK reference)."""
    import lazyreg.interpolation as I
    import lazyreg.resample as R
    from lazyreg.regions import ChunkRefs

    moving = lazyreg.image(smooth_volume((20, 24, 28), seed=4), (2.0, 1.0, 1.2), (-3.0, 5.0, 2.0))
    fixed = lazyreg.grid((18, 22, 26), spacing=(2.0, 1.1, 1.3), origin=(-1.0, 6.0, 3.0), chunks=8)
    A = Affine.from_translation((0.7, -1.2, 0.4))
    seen: list[np.ndarray] = []
    orig = I.resample_array

    def spy(values, *a, **k):
        seen.append(values)
        return orig(values, *a, **k)

    monkeypatch.setattr(R, "resample_array", spy)
    out = apply_transform(fixed, moving, [A], order=1)
    moving_keys = [k for k in out.data.dask if isinstance(k, tuple) and str(k[0]).startswith("lazyreg-moving-")]
    assert len(moving_keys) == 1  # one block, not "auto" chunks
    with dask.config.set(scheduler="sync"):
        values = out.values
    assert seen and all(v.base is not None and not v.flags.writeable for v in seen)  # views, no copies
    ref = sitk_reference(fixed, moving, A.to_sitk())
    _assert_matches(values, ref)
    assert np.count_nonzero(ref) > 0.3 * ref.size
    # ChunkRefs: one block gives a read-only view; several blocks an assembled copy
    x = da.arange(10, chunks=4)
    one = ChunkRefs.of(x, (slice(1, 3),)).assemble([x.blocks[0].compute()])
    assert one.base is not None and not one.flags.writeable and list(one) == [1, 2]
    two = ChunkRefs.of(x, (slice(3, 6),)).assemble([x.blocks[0].compute(), x.blocks[1].compute()])
    assert two.flags.writeable and list(two) == [3, 4, 5]


def test_a_task_runs_itk_on_the_threads_it_is_given():
    """A task resamples with the ITK threads it is given (1 when dask runs a task per core): ITK's
    pool used to split every call over all the process's default threads whatever the filter was
    told, so 2 tasks on 2 cores ran 4 threads. Here the pool has 4 threads; the call runs in the
    calling thread alone (measured 98 % of the process CPU in it; 25-50 % before)."""
    import time

    from lazyreg.images import Grid
    from lazyreg.interpolation import resample_array

    g = Grid((96, 96, 96), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    values = smooth_volume((96, 96, 96)).astype(np.float32)
    steps = [("affine", Affine.from_parameters(rotation=(7.0, 3.0, 0.0), center=(48.0, 48.0, 48.0)).matrix, None)]
    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(4)
    try:
        resample_array(values, g, g, steps, order=1, fill_value=0, dtype=values.dtype, threads=1)  # warm up
        t_proc, t_thread = time.process_time(), time.thread_time()
        for _ in range(5):
            out = resample_array(values, g, g, steps, order=1, fill_value=0, dtype=values.dtype, threads=1)
        t_proc, t_thread = time.process_time() - t_proc, time.thread_time() - t_thread
    finally:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    assert t_thread > 0.8 * t_proc, (t_thread, t_proc)
    ref = resample_array(values, g, g, steps, order=1, fill_value=0, dtype=values.dtype, threads=4)
    np.testing.assert_array_equal(out, ref)  # the same values whatever the threads
