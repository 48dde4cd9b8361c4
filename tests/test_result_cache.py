"""Registration results are computed once per session, whichever computation touches them first.

The README's snippets are run as written (on store-backed images, as ``open_image`` gives), then
everything a user does next - compute the transform, look at a slice, a metric, ``dask.compute``
of several - is checked to reuse the results: ``lazyreg.result_cache.cache_info`` counts, per
kind of task, results computed and reused. A changed input file is computed again.
"""

from __future__ import annotations

import dask
import numpy as np
import pytest
from distributed import Client

import lazyreg
from lazyreg.result_cache import Deferred, cache_info, cached_call, clear_cache
from lazyreg.testing import count_tasks

STEPS = [("affine", {"shrink_factors": (2, 1)})]


@pytest.fixture()
def stored_pair(tmp_path):
    fixed, moving, A, _ = lazyreg.data.warped_pair((32, 64, 64), seed=3)
    lazyreg.to_zarr(fixed, tmp_path / "fix.ome.zarr")
    lazyreg.to_zarr(moving, tmp_path / "mov.ome.zarr")
    return lazyreg.open_image(tmp_path / "fix.ome.zarr"), lazyreg.open_image(tmp_path / "mov.ome.zarr"), tmp_path


def _computed(kind: str) -> int:
    return cache_info().get(kind, {}).get("computed", 0)


def test_readme_snippet_1_runs_the_alignment_once(stored_pair):
    fixed, moving, out = stored_pair
    with dask.config.set(scheduler="threads"):
        A = lazyreg.align(fixed, moving, STEPS)
        aligned = lazyreg.apply_transform(fixed, moving, [A])
        lazyreg.to_zarr(aligned, out / "aligned.ome.zarr")
        A = A.compute()
        _ = aligned[5].values  # a slice
        _ = lazyreg.metrics.pearson(fixed, aligned)  # a metric
        lazyreg.save_transform(A, out / "affine.tfm")
    assert _computed("align") == 1
    assert cache_info()["align"]["reused"] >= 3
    assert A.report[0]["step"] == "affine"
    # a second graph built from scratch on the same inputs reuses it too
    with count_tasks() as c:
        B = lazyreg.align(fixed, moving, STEPS).compute(scheduler="threads")
    assert _computed("align") == 1 and c.n <= 5
    np.testing.assert_array_equal(np.asarray(A.matrix), np.asarray(B.matrix))


def test_readme_snippet_2_runs_every_block_once(stored_pair):
    fixed, moving, out = stored_pair
    with dask.config.set(scheduler="threads"):
        A = lazyreg.align(fixed, moving, STEPS)
        field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=32, static_transforms=[A],
                                        foreground_fraction=0.05)
        aligned = lazyreg.apply_transform(fixed, moving, [A, field])
        lazyreg.to_zarr(aligned, out / "aligned_local.ome.zarr")
        n_blocks = _computed("block")
        field = field.compute()
        _ = lazyreg.jacobian_determinant(field).values
        _ = lazyreg.metrics.pearson(fixed, aligned)
        dask.compute(aligned[3], field.report if dask.is_dask_collection(field.report) else None)
    assert n_blocks == len(field.report) == 4
    assert _computed("block") == 4 and _computed("align") == 1 and _computed("threshold") == 1
    assert cache_info()["block"]["reused"] >= 8


def test_the_block_inputs_are_not_read_when_the_result_is_cached(tmp_path):
    from lazyreg.testing import counting_image

    ph = lazyreg.data.phantom((32, 48, 48), seed=1)
    mem = lazyreg.image(ph.values.astype(np.float32), lazyreg.spacing(ph))
    fixed, flog = counting_image(mem, chunks=(16, 24, 24))
    moving, mlog = counting_image(mem, chunks=(16, 24, 24))
    field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=24, foreground_fraction=0.0)
    field.compute(scheduler="threads")
    assert flog.reads and mlog.reads
    flog.clear()
    mlog.clear()
    again = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=24, foreground_fraction=0.0)
    again.compute(scheduler="threads")
    assert flog.reads == [] and mlog.reads == []  # neither the blocks nor the threshold read anything
    assert cache_info()["block"]["computed"] == 8 and cache_info()["block"]["reused"] == 8


_PREPARED: list = []


def _scaled(img, factor):
    """A ``prepare`` function: module level, so that dask tokenizes it by name and arguments."""
    _PREPARED.append(img.shape)
    return img * factor


def test_prepare_runs_inside_the_registration_task_once():
    from functools import partial

    from lazyreg.testing import counting_image

    fixed, moving, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    f, flog = counting_image(fixed)
    m, mlog = counting_image(moving)
    _PREPARED.clear()
    A = lazyreg.align(f, m, STEPS, prepare=partial(_scaled, factor=2.0))
    assert _PREPARED == [] and flog.reads == []  # lazy
    A.compute(scheduler="threads")
    assert _PREPARED == [fixed.shape, moving.shape] and flog.reads and mlog.reads
    flog.clear()
    mlog.clear()
    A.compute(scheduler="threads")
    assert len(_PREPARED) == 2 and flog.reads == [] and mlog.reads == [] and _computed("align") == 1
    # part of the cache key: another prepare is another result, equal to aligning the prepared images
    B = lazyreg.align(f, m, STEPS, prepare=partial(_scaled, factor=3.0)).compute(scheduler="threads")
    assert _computed("align") == 2
    ref = lazyreg.align(fixed * 3.0, moving * 3.0, STEPS).compute(scheduler="threads")
    np.testing.assert_allclose(np.asarray(B.matrix), np.asarray(ref.matrix), rtol=0, atol=1e-9)
    with pytest.raises(lazyreg.LazyregError, match="prepare: expected a function of an image, got str"):
        lazyreg.align(f, m, STEPS, prepare="contrast")
    with pytest.raises(lazyreg.LazyregError, match=r"prepare: expected an image of fixed's shape \(16, 32, 32\), got \(32, 32\)"):
        lazyreg.align(f, m, STEPS, prepare=lambda img: img[0]).compute(scheduler="threads")


def test_a_changed_input_file_is_computed_again(stored_pair):
    fixed, moving, out = stored_pair
    lazyreg.align(fixed, moving, STEPS).compute(scheduler="threads")
    assert _computed("align") == 1
    # the user rewrites the moving image on disk (same shape, other content) and opens it again
    shifted = lazyreg.apply_transform(moving, moving, [lazyreg.Affine.from_translation((0.0, 1.0, 2.0))]).compute()
    lazyreg.to_zarr(shifted, out / "mov.ome.zarr", overwrite=True)
    moved = lazyreg.open_image(out / "mov.ome.zarr")
    B = lazyreg.align(fixed, moved, STEPS).compute(scheduler="threads")
    assert _computed("align") == 2
    # and the same happens for in-memory inputs whose values differ
    C = lazyreg.align(fixed, lazyreg.image(shifted.values + 1, lazyreg.spacing(shifted)), STEPS).compute(scheduler="threads")
    assert _computed("align") == 3
    assert not np.allclose(np.asarray(B.matrix), np.eye(4)) and np.asarray(C.matrix).shape == (4, 4)


def test_same_data_on_another_grid_is_not_served_stale():
    fixed, moving, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    lazyreg.align(fixed, moving, STEPS).compute(scheduler="threads")
    other = lazyreg.image(moving.data, spacing=np.asarray(lazyreg.spacing(moving)) * 1.1, origin=lazyreg.origin(moving))
    lazyreg.align(fixed, other, STEPS).compute(scheduler="threads")
    assert _computed("align") == 2


def test_the_cache_is_bounded_and_can_be_cleared():
    fixed, moving, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    with dask.config.set({"lazyreg.result-cache-bytes": 0}):
        A = lazyreg.align(fixed, moving, STEPS)
        A.compute(scheduler="threads")
        A.compute(scheduler="threads")
    assert _computed("align") >= 2 and cache_info()["bytes"] == 0  # nothing kept: each compute runs it
    before = _computed("align")
    A.compute(scheduler="threads")
    A.compute(scheduler="threads")
    assert _computed("align") == before + 1 and cache_info()["bytes"] > 0
    clear_cache()
    assert cache_info() == {"bytes": 0}
    with dask.config.set({"lazyreg.result-cache-bytes": "lots"}), pytest.raises(lazyreg.LazyregError, match="result-cache-bytes"):
        A.compute(scheduler="threads")


def test_blocks_of_one_alignment_do_not_evict_each_other(caplog):
    """When one alignment's block results exceed the cache, those that fit stay (the next pass
    reuses them) instead of each evicting the oldest (LRU: a second pass would recompute all);
    other computations' results make room first; a warning says what to raise, once."""
    import pickle

    clear_cache()

    def result(i):
        return np.full(1000, float(i))

    size = len(pickle.dumps(result(0), protocol=pickle.HIGHEST_PROTOCOL))
    blocks = [f"block:lazyreg-block-a:({i}, 0, 0)" for i in range(5)]
    with dask.config.set({"lazyreg.result-cache-bytes": int(3.5 * size)}), caplog.at_level("WARNING", "lazyreg"):
        cached_call("align:x", "align", result, Deferred([9]))
        for _ in range(2):  # two passes over the blocks, e.g. to_zarr then field.compute()
            got = [cached_call(t, "block", result, Deferred([i])) for i, t in enumerate(blocks)]
        assert all(g[0] == i for i, g in enumerate(got))
        info = cache_info()
        assert info["block"] == {"computed": 7, "reused": 3, "fetched": 0}, info  # blocks 3, 4 twice
        assert info["not_kept"] == 4 and info["bytes"] <= 3.5 * size
        warnings = [m for m in caplog.messages if "exceed the result cache" in m]
        assert len(warnings) == 1 and "lazyreg.result-cache-bytes" in warnings[0]
        cached_call("align:x", "align", result, Deferred([9]))  # evicted for the blocks: computed again
        assert cache_info()["align"]["computed"] == 2
        # another alignment's blocks evict the first one's, least recently used first
        for i in range(3):
            cached_call(f"block:lazyreg-block-b:({i}, 0, 0)", "block", result, Deferred([10 + i]))
        assert cache_info()["block"]["computed"] == 10 and cache_info()["not_kept"] == 4
    clear_cache()
    assert "not_kept" not in cache_info()


def test_threads_asking_for_the_same_result_wait_for_one_computation():
    import threading
    import time

    calls = []

    def slow(x):
        calls.append(x)
        time.sleep(0.2)
        return x * 2

    out = []
    threads = [threading.Thread(target=lambda: out.append(cached_call("t", "slow", slow, Deferred([21])))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out == [42] * 4 and calls == [21]
    assert cache_info()["slow"] == {"computed": 1, "reused": 3, "fetched": 0}


def test_persist_holds_the_transforms(stored_pair):
    fixed, moving, _ = stored_pair
    A = lazyreg.align(fixed, moving, STEPS).persist(scheduler="threads")
    assert not A.is_lazy and A.report[0]["step"] == "affine"
    field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=32, static_transforms=[A],
                                    foreground_fraction=0.05).persist(scheduler="threads")
    assert field.is_lazy and isinstance(field.report, list) and len(field.report) == 4
    clear_cache()
    with count_tasks() as c:
        field.compute(scheduler="threads")
    assert c.named("lazyreg-") == 0 and _computed("block") == 0  # the persisted values are read, nothing runs


@pytest.mark.slow
def test_on_a_local_cluster_every_block_runs_once(stored_pair, local_cluster):
    fixed, moving, out = stored_pair
    with Client(local_cluster) as client:
        clear_cache(client)
        A = lazyreg.align(fixed, moving, STEPS)
        field = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=32, static_transforms=[A],
                                        foreground_fraction=0.05)
        aligned = lazyreg.apply_transform(fixed, moving, [A, field])
        lazyreg.to_zarr(aligned, out / "aligned.ome.zarr")
        field.compute()
        A.compute()
        _ = aligned[2].values
        info = client.run(cache_info)
        total = {k: sum(v.get(k, {}).get("computed", 0) for v in info.values()) for k in ("align", "block", "threshold")}
        assert total == {"align": 1, "block": 4, "threshold": 1}, info
        again = sum(v.get("block", {}).get("reused", 0) + v.get("block", {}).get("fetched", 0) for v in info.values())
        assert again >= 0  # the scheduler may also have kept the keys in memory: nothing ran at all
        clear_cache(client)
        assert all(v == {"bytes": 0} for v in client.run(cache_info).values())


def test_a_chunk_rewritten_in_place_changes_the_inputs_token(stored_pair):
    import os

    fixed, _, out = stored_pair
    before = lazyreg.open_image(out / "fix.ome.zarr").data.name
    assert lazyreg.open_image(out / "fix.ome.zarr").data.name == before  # same files: same token
    chunk = next(p for p in sorted((out / "fix.ome.zarr").rglob("*")) if p.is_file() and "json" not in p.name)
    st = chunk.stat()
    os.utime(chunk, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # metadata untouched
    assert lazyreg.open_image(out / "fix.ome.zarr").data.name != before
