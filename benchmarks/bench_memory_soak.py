"""Memory soak of ``apply_transform`` -> ``to_zarr`` on a dask.distributed LocalCluster (issue 14).

A large uint16 volume (default 512^3, ``--big`` 1024^3; 128^3 chunks) is resampled through
``[A, D]`` (``bench_apply.py``'s 10-degree rotation + 5 % scale + shift about the centre, and its
smooth displacement field on a 1/8-resolution grid, amplitude 3 voxels, numpy-backed) and streamed
to zarr with ``lazyreg.to_zarr`` on ``LocalCluster(n_workers=2, threads_per_worker=1,
memory_limit=1 GiB)``, for two moving images holding the same voxels:

* ``a_store``: store-backed, ``lazyreg.open_image`` of a zarr written first (each task reads its
  region from the store through the chunk cache);
* ``b_dask``: the dask graph that generated that zarr (``bench_apply._block`` per chunk: a smooth
  pattern + seeded noise), **not** store-backed - the path issue 14 found holding 1.86 GiB and
  spilling 1.14 GiB at 1024^3.

Measured per case (each in its own subprocess with its own cluster): wall and CPU seconds; the
summed RSS of every process (this client + scheduler + nannies process and the two workers, psutil,
50 ms) at its peak, and each process's peak; each worker's exact peak RSS (the kernel's ``VmHWM``,
reset through ``/proc/self/clear_refs`` just before the run); the scheduler's view of the workers'
dask-managed bytes in memory and spilled to disk (peaks, polled every 0.25 s). Checks (exit 1 when
one fails): both outputs are bit-identical, and three output chunks equal the same graph computed
on the threaded scheduler.

Usage::

    .venv/bin/python benchmarks/bench_memory_soak.py              # 512^3 (~3 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_memory_soak.py --big        # 1024^3 (2 GiB; ~15 min, 6 GB temp data)
    .venv/bin/python benchmarks/bench_memory_soak.py --size 256 --cases b_dask --memory-limit 0.5

Results: ``benchmarks/results/memory_soak_<size>.json`` (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

CHUNK = 128
WORKERS = 2
CASES = {
    "a_store": "moving opened with lazyreg.open_image (store-backed): tasks read their regions from the store",
    "b_dask": "moving = the generating dask graph (not store-backed)",
}


def _hwm_reset() -> int:
    """In a worker: reset the kernel's peak-RSS mark of this process; return its pid."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return os.getpid()


def _hwm() -> dict:
    """In a worker: its peak RSS (VmHWM) and current RSS, bytes."""
    txt = Path("/proc/self/status").read_text()
    get = lambda k: int(re.search(rf"{k}:\s+(\d+) kB", txt).group(1)) * 1024  # noqa: E731
    return {"pid": os.getpid(), "peak_rss_bytes": get("VmHWM"), "rss_bytes": get("VmRSS")}


def moving_dask(shape):
    """The generating graph of the moving image (not store-backed), as a lazyreg image."""
    import dask.array as da
    import numpy as np

    import lazyreg
    from bench_apply import _block

    chunks = tuple(tuple([CHUNK] * (s // CHUNK) + ([s % CHUNK] if s % CHUNK else [])) for s in shape)
    arr = da.map_blocks(_block, dtype=np.uint16, chunks=chunks, meta=np.empty((0, 0, 0), np.uint16))
    return lazyreg.image(arr, 1.0)


def the_output(moving, shape):
    import lazyreg
    from bench_apply import moving_grid, the_affine, the_field

    g = moving_grid(shape)
    fixed = lazyreg.grid(g.shape, g.spacing, g.origin, chunks=CHUNK)
    return lazyreg.apply_transform(fixed, moving, [the_affine(g), the_field(g)], order=1)


def run_case(case: str, work: Path, shape, memory_limit_gib: float) -> dict:
    """One case in this (sub)process: its own LocalCluster, sampled while the output is written."""
    import numpy as np
    from dask.distributed import Client, LocalCluster

    import lazyreg

    out_path = work / f"out_{case}.ome.zarr"
    moving = lazyreg.open_image(work / "moving.ome.zarr") if case == "a_store" else moving_dask(shape)
    from lazyreg.io.source import find_source

    rec: dict = {"case": case, "description": CASES[case], "store_backed": find_source(moving) is not None}
    with LocalCluster(
        n_workers=WORKERS,
        threads_per_worker=1,
        memory_limit=f"{memory_limit_gib}GiB",
        processes=True,
        dashboard_address=":0",
        local_directory=str(work / "dask-scratch"),
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(WORKERS)
        time.sleep(1.0)
        rec["rss_cluster_started_bytes"] = C.tree_rss()[0]
        pids = client.run(_hwm_reset)
        watch = C.SchedulerMemory(cluster.scheduler)
        with watch, C.RSSSampler(interval=0.05) as s, C.timer(rec):
            out = the_output(moving, shape)
            rec["tasks"] = len(out.data.dask)
            lazyreg.to_zarr(out, out_path)
        workers = client.run(_hwm)
        rec["workers_at_end"] = len(cluster.scheduler.workers)
    rec.update(s.as_dict())
    rec["voxels_per_s"] = float(np.prod(shape)) / rec["seconds"]
    rec["scheduler_memory_peaks"] = watch.peaks
    rec["held_by_task_group_at_peak"] = watch.held_by_group_at_peak
    rec["peak_rss_per_process"] = {str(k): {"cmd": v[0], "peak_rss": v[1]} for k, v in s.per_process.items()}
    rec["workers"] = {a: dict(w, restarted=w["pid"] != pids.get(a)) for a, w in workers.items()}
    rec["worker_peak_rss_max_bytes"] = max(w["peak_rss_bytes"] for w in workers.values())
    return rec


def check(work: Path, shape) -> dict:
    """Both outputs bit-identical; three chunks equal the threaded computation of the same graph."""
    import dask
    import numpy as np

    import lazyreg

    a = lazyreg.open_image(work / "out_a_store.ome.zarr")
    b = lazyreg.open_image(work / "out_b_dask.ome.zarr")
    with dask.config.set(scheduler="threads"):
        differing = int((a.data != b.data).sum().compute())
        ref = the_output(moving_dask(shape), shape)
        rng = np.random.default_rng(0)
        spots = []
        for _ in range(3):
            idx = tuple(int(rng.integers(0, max(1, n // CHUNK))) * CHUNK for n in shape)
            sl = tuple(slice(i, i + CHUNK) for i in idx)
            spots.append({"start": list(idx), "equal": bool(np.array_equal(ref[sl].values, b[sl].values))})
    return {"voxels_differing_a_vs_b": differing, "spot_checks_b_vs_threaded": spots,
            "ok": differing == 0 and all(s["equal"] for s in spots)}


def _subprocess(args: list, work: Path, label: str) -> dict:
    result = work / f"result-{label}.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), *args, "--result", str(result)]
    proc = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0"))
    if proc.returncode != 0 or not result.exists():
        raise RuntimeError(f"{label} failed (exit code {proc.returncode}): {' '.join(cmd)}")
    return json.loads(result.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=None, help="edge of the cube (default 512; --big 1024)")
    ap.add_argument("--big", action="store_true", help="1024^3 (2 GiB), the size issue 14 measured")
    ap.add_argument("--memory-limit", type=float, default=1.0, help="GiB per worker (default 1)")
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated, of: " + ", ".join(CASES))
    ap.add_argument("--tmp", default=None, help="where temporary data go (default: the roomiest of $TMPDIR, /tmp, /work)")
    ap.add_argument("--out", default=None, help="results JSON (default benchmarks/results/memory_soak_<size>.json)")
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--make", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--check", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    n = args.size or (1024 if args.big else 512)
    shape = (n, n, n)
    if args.case or args.make or args.check:
        work = Path(args.work)
        if args.make:
            from bench_apply import make_moving

            rec: dict = {}
            with C.timer(rec):
                make_moving(work / "moving.ome.zarr", shape, CHUNK)
        elif args.check:
            rec = check(work, shape)
        else:
            rec = run_case(args.case, work, shape, args.memory_limit)
        Path(args.result).write_text(json.dumps(rec, default=C._json_default))
        return 0

    from bench_apply import pick_tmp_root

    cases = [c for c in args.cases.split(",") if c]
    unknown = set(cases) - set(CASES)
    if unknown:
        ap.error(f"--cases: unknown {sorted(unknown)}; choose from {list(CASES)}")
    out_path = Path(args.out) if args.out else HERE / "results" / f"memory_soak_{n}.json"
    machine = C.machine_info()
    budget = WORKERS * args.memory_limit
    print(f"bench_memory_soak: {n}^3 uint16 ({n**3 * 2 / C.GiB:.2f} GiB), chunks {CHUNK}^3, LocalCluster {WORKERS} x 1 thread "
          f"x {args.memory_limit} GiB, {machine['cpu_count']} CPUs, load {machine['load_average_1_5_15']}", flush=True)
    record: dict = {
        "benchmark": "memory soak: apply_transform [affine, field] -> to_zarr on a LocalCluster (issue 14)",
        "machine": machine,
        "config": {"shape": list(shape), "dtype": "uint16", "chunks": CHUNK, "order": 1,
                   "transforms": "bench_apply.the_affine + bench_apply.the_field (numpy-backed)",
                   "cluster": {"n_workers": WORKERS, "threads_per_worker": 1, "memory_limit_gib": args.memory_limit},
                   "budget_gib": budget},
        "cases": {},
    }
    work = Path(tempfile.mkdtemp(prefix="lazyreg-bench-soak-", dir=pick_tmp_root(args.tmp)))
    ok = True
    try:
        common = ["--work", str(work), "--size", str(n), "--memory-limit", str(args.memory_limit)]
        if "a_store" in cases or len(cases) == 2:
            made = _subprocess(["--make", *common], work, "make")
            record["make_moving_seconds"] = made["seconds"]
            print(f"moving image written to zarr in {made['seconds']:.0f} s", flush=True)
        for case in cases:
            res = _subprocess(["--case", case, *common], work, case)
            record["cases"][case] = res
            sm = res["scheduler_memory_peaks"]
            print(f"  {case}: {res['seconds']:.0f} s, peak RSS summed over all processes {res['peak_rss_total_bytes'] / C.GiB:.2f} GiB, "
                  f"worker peaks {[round(w['peak_rss_bytes'] / C.GiB, 2) for w in res['workers'].values()]} GiB, "
                  f"dask-managed {sm['managed_bytes'] / C.GiB:.2f} GiB, spilled {sm['spilled_bytes'] / C.GiB:.2f} GiB (peaks)", flush=True)
        if len(cases) == 2:
            record["check"] = _subprocess(["--check", *common], work, "check")
            ok = record["check"]["ok"]
            print(f"  outputs bit-identical: {ok} ({record['check']['voxels_differing_a_vs_b']} voxels differ)", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    record["machine"]["load_average_at_end"] = C.machine_info()["load_average_1_5_15"]
    C.write_json(out_path, record)
    rows = []
    for case, r in record["cases"].items():
        sm = r["scheduler_memory_peaks"]
        rows.append([case, r["seconds"], C.gib(r["peak_rss_total_bytes"]), C.gib(r["worker_peak_rss_max_bytes"]),
                     C.gib(sm["managed_bytes"]), C.gib(sm["spilled_bytes"]), r["workers_at_end"]])
    print(C.table(rows, ["case", "seconds", "peak RSS all GiB", "max worker peak GiB", "dask-held GiB", "spilled GiB", "workers"]))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
