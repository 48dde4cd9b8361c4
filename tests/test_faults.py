"""Fault tolerance on dask.distributed (issue 14): a worker killed mid-run (SIGKILL; its nanny
starts a new one and the scheduler reruns its tasks) leaves a bit-identical result, for
apply_transform -> to_zarr (store-backed and dask-backed moving images) and for align_piecewise
-> apply_transform -> to_zarr with the field's report."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest

import lazyreg
from lazyreg import Affine
from lazyreg.data import warped_pair
from lazyreg.result_cache import clear_cache


@contextlib.contextmanager
def _cluster():
    """2 worker processes; registration-result locks held by a killed worker expire after 3 s
    (default 30 s: lazyreg.result_cache's per-token lock would keep the rerun waiting that long)."""
    from distributed import LocalCluster

    locks = {"distributed.scheduler.locks.lease-timeout": "3s", "distributed.scheduler.locks.lease-validation-interval": "0.5s"}
    with dask.config.set(locks), LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster:
        yield cluster


def _chunks_written(path: Path) -> int:
    return sum(1 for p in Path(path).rglob("*") if p.is_file() and p.name.isdigit())


def _kill_a_worker_when(client, started, futures, timeout: float = 120.0) -> int:
    """SIGKILL one worker process as soon as ``started()`` is true, while ``futures`` still run."""
    pids = client.run(os.getpid)
    t0 = time.monotonic()
    while not started():
        assert time.monotonic() - t0 < timeout, "the run did not get going"
        time.sleep(0.01)
    assert not all(f.done() for f in futures), "the run finished before a worker could be killed"
    victim = sorted(pids.values())[0]
    os.kill(victim, signal.SIGKILL)
    return victim


def _assert_replaced(client, victim: int) -> None:
    client.wait_for_workers(2, timeout=60)
    assert victim not in client.run(os.getpid).values()


def _block(block_info=None):
    loc = block_info[None]["array-location"]
    rng = np.random.default_rng(loc[0][0] * 1_000_003 + loc[1][0] * 1009 + loc[2][0])
    return (rng.random(block_info[None]["chunk-shape"]) * 1000).astype(np.uint16)


@pytest.mark.slow
def test_apply_to_zarr_survives_a_killed_worker(tmp_path):
    """Store-backed moving (regions read from the store) and dask-backed moving (blocks computed
    in the tasks, lazyreg.moving_regions), one worker killed in each run."""
    n = 128
    chunks = da.core.normalize_chunks(32, (n, n, n))
    generated = lazyreg.image(da.map_blocks(_block, dtype=np.uint16, chunks=chunks, meta=np.empty((0, 0, 0), np.uint16)), 1.0)
    lazyreg.to_zarr(generated, tmp_path / "m.ome.zarr", chunks=32)
    c = (n - 1) / 2
    A = Affine.from_parameters(rotation=(10.0, 0.0, 0.0), scale=1.05, translation=(3.0, -5.0, 4.0), center=(c, c, c))
    with _cluster() as cluster, cluster.get_client() as client:
        for kind, moving in (("store", lazyreg.open_image(tmp_path / "m.ome.zarr")), ("dask", generated)):
            out = lazyreg.apply_transform(moving, moving, [A], order=3, chunks=32)  # 64 tasks, cubic: long enough
            with dask.config.set(scheduler="threads"):
                ref = out.values
            path = tmp_path / f"out_{kind}.ome.zarr"
            write = lazyreg.to_zarr(out, path, compute=False)
            fut = client.compute(write)
            victim = _kill_a_worker_when(client, lambda: _chunks_written(path) >= 8, [fut])
            assert Path(fut.result(timeout=300)) == path.resolve()
            _assert_replaced(client, victim)
            assert np.array_equal(lazyreg.open_image(path).values, ref), kind


@pytest.mark.slow
def test_piecewise_apply_to_zarr_survives_a_killed_worker(tmp_path):
    fixed, moving, A, _ = warped_pair((32, 80, 80), spacing=(2.0, 1.0, 1.0), origin=(4.0, -2.0, 1.0), amplitude=3.0, seed=2)
    kw = dict(blocksize=(16, 40, 40), static_transforms=[Affine(A)], foreground_fraction=0.05, seed=3)
    steps = [("affine", {"optimizer_args": {"numberOfIterations": 20}})]

    def graph(path):
        field = lazyreg.align_piecewise(fixed, moving, steps, **kw)
        out = lazyreg.apply_transform(fixed, moving, [Affine(A), field], chunks=(16, 40, 40))
        return lazyreg.to_zarr(out, path, compute=False), field

    write, field = graph(tmp_path / "ref.ome.zarr")
    _, report = dask.compute(write, field.report, scheduler="threads")
    ref_field = field.values
    clear_cache(client=False)
    path = tmp_path / "out.ome.zarr"
    with _cluster() as cluster, cluster.get_client() as client:
        write, field = graph(path)
        futures = client.compute([write, field.report])
        blocks = lambda: sum(  # noqa: E731  blocks finished so far
            tp.states.get("memory", 0) + tp.states.get("released", 0)
            for name, tp in cluster.scheduler.task_prefixes.items() if name == "lazyreg-block"
        )
        victim = _kill_a_worker_when(client, lambda: blocks() >= 2, futures)
        got_report = futures[1].result(timeout=300)
        futures[0].result(timeout=300)
        _assert_replaced(client, victim)
        got_field = field.values
    assert [r["status"] for r in got_report] == [r["status"] for r in report]
    assert np.array_equal(got_field, ref_field)
    assert np.array_equal(lazyreg.open_image(path).values, lazyreg.open_image(tmp_path / "ref.ome.zarr").values)
