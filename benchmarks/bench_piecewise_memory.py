"""Bounded memory end to end for piecewise alignment (issue 6).

A seeded synthetic pair, each image about twice the memory budget (the pair about 4x), goes
through ``align_piecewise`` -> ``apply_transform`` -> ``lazyreg.to_zarr`` as **one lazy graph**
computed on ``distributed.LocalCluster(n_workers=2, threads_per_worker=1, memory_limit=...)``.

* Data: ``fixed(x) = g(x)`` and ``moving(y) = g(A^-1 y)`` with ``g`` a sum of plane waves (a
  quasi-periodic texture, uint16) inside a soft ellipsoid of "tissue" (31 % of the volume, zero
  outside, as microscopy volumes have empty space) and ``A`` a known affine (3 degrees about z, 2 % scale,
  translation). Both are generated chunk by chunk as dask arrays and streamed with
  ``lazyreg.to_zarr`` (on the cluster, so generation is bounded too), then reopened with
  ``lazyreg.open_image`` (store-backed).
* Static transform ``S(p) = A(p + s)``: the known affine composed with a known shift ``s``; the
  piecewise step (``[("affine", cheap options)]`` per block) must find the field ``u = -s``.
* The graph: ``field = align_piecewise(fixed, moving, steps, blocksize, overlap,
  static_transforms=[S], field_spacing)``, ``out = apply_transform(fixed, moving, [S, field])``,
  computed together with a copy of the field (``da.to_zarr``) and the block report by one
  ``dask.compute`` so that the block tasks run once.
* Measured: wall and CPU seconds (all processes), peak RSS summed over this process (client +
  scheduler + nannies) and the workers (psutil, 50 ms), per-worker peaks, the scheduler's view of
  worker memory (dask-managed in memory, spilled, unmanaged; peaks), block outcomes.
* Checks: peak RSS <= budget + stated overhead; field mean vs ``-s``; a few output boxes equal
  SimpleITK (eager reference: the moving region they map into, through ``S`` and the stored field)
  within 1 grey level and close to the analytic truth; no temporary files left (work dir, dask
  scratch, ``.tmp`` files of lazyreg); writing again to the same output without ``overwrite``
  raises and leaves the output untouched.

Usage::

    .venv/bin/python benchmarks/bench_piecewise_memory.py                  # default sizes (below)
    .venv/bin/python benchmarks/bench_piecewise_memory.py --quick          # 256x512x512 smoke run
    .venv/bin/python benchmarks/bench_piecewise_memory.py --shape 768,1024,1024 --memory-limit 1.0

Results: ``benchmarks/results/piecewise_memory.json`` (``--quick``: ``$TMPDIR``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

CHUNK = 128
DEFAULT_SHAPE = (768, 1024, 2048)  # 1.61 G voxels, 3 GiB per uint16 image, pair 6 GiB = 4x the 1.5 GiB budget
QUICK_SHAPE = (256, 512, 512)
SHIFT = np.array([1.0, -1.5, 2.0])  # s, physical units (spacing 1): expected field u = -s
OVERHEAD_GIB = 1.0  # client + scheduler + 2 nannies (this process and its small children)
BLOCKSIZE = 128
OVERLAP = 0.125
FIELD_SPACING = 8.0
STEPS = [
    (
        "affine",
        {
            "shrink_factors": (4,),
            "smooth_sigmas": (2.0,),
            "sampling_percentage": 0.2,
            "optimizer_args": {"numberOfIterations": 25},
        },
    )
]
# plane waves: (amplitude, wave vector in cycles per voxel (z, y, x), phase)
WAVES = [
    (900.0, (0.031, 0.011, -0.017), 0.3),
    (700.0, (-0.009, 0.041, 0.013), 1.1),
    (600.0, (0.017, -0.023, 0.037), 2.0),
    (500.0, (0.047, 0.029, 0.007), 0.7),
    (400.0, (-0.027, 0.013, 0.053), 2.9),
]


def true_affine(shape):
    import lazyreg

    centre = (np.asarray(shape, float) - 1) / 2
    return lazyreg.Affine.from_parameters(rotation=(3.0, 0.0, 0.0), scale=1.02, translation=(4.0, -6.0, 5.0), center=centre)


def static_affine(A):
    """S(p) = A(p + s)."""
    import lazyreg

    t = np.eye(4)
    t[:3, 3] = SHIFT
    return lazyreg.Affine(np.asarray(A.matrix) @ t)


ELLIPSOID = 0.42  # semi-axes of the "tissue" as fractions of the volume sides (about 31 % of the volume)


def _chunk(matrix, full_shape, block_info=None):
    """One chunk of g(q) = f(q) * m(q) at q = matrix @ p: quasi-periodic texture f inside a soft
    ellipsoid m (the tissue; zero outside). A plane wave or a plane of ``M p + t`` is still one in
    ``p``, so everything is sums of broadcast 1D terms (no 3D coordinate arrays)."""
    info = block_info[None]
    loc, shape = info["array-location"], info["chunk-shape"]
    z, y, x = (np.arange(a, b, dtype=np.float64) for a, b in loc)
    M, t = matrix[:3, :3], matrix[:3, 3]

    def linear(w, w0=0.0):  # w . (M p + t) + w0, float32 broadcast
        k = M.T @ w
        return (
            (k[0] * z + w @ t + w0)[:, None, None].astype(np.float32)
            + (k[1] * y)[None, :, None].astype(np.float32)
            + (k[2] * x)[None, None, :].astype(np.float32)
        )

    n = np.asarray(full_shape, float)
    c, a = (n - 1) / 2, ELLIPSOID * n
    r2 = np.zeros(tuple(shape), np.float32)
    for i in range(3):
        e = np.zeros(3)
        e[i] = 1.0 / a[i]
        r2 += linear(e, -c[i] / a[i]) ** 2
    m = np.clip((1.0 - r2) / 0.15, 0.0, 1.0)
    if not m.any():
        return np.zeros(tuple(shape), np.uint16)
    v = np.full(tuple(shape), 3000.0, dtype=np.float32)
    for amp, w, ph in WAVES:
        v += np.float32(amp) * np.sin(linear(np.asarray(w) * 2 * np.pi, ph))
    return np.clip(np.rint(v * m), 0, 65535).astype(np.uint16)


def ellipsoid_r2(points, full_shape):
    n = np.asarray(full_shape, float)
    return ((((np.asarray(points, float) - (n - 1) / 2) / (ELLIPSOID * n)) ** 2).sum(-1))


def truth(region_slices, full_shape, matrix=np.eye(4)):
    info = {None: {"array-location": [(s.start, s.stop) for s in region_slices],
                   "chunk-shape": tuple(s.stop - s.start for s in region_slices)}}
    return _chunk(matrix, full_shape, block_info=info)


def make_image(path: Path, shape, matrix) -> None:
    import dask.array as da

    import lazyreg

    chunks = tuple(tuple([CHUNK] * (s // CHUNK) + ([s % CHUNK] if s % CHUNK else [])) for s in shape)
    arr = da.map_blocks(_chunk, np.asarray(matrix, float), tuple(shape), dtype=np.uint16, chunks=chunks, meta=np.empty((0, 0, 0), np.uint16))
    lazyreg.to_zarr(lazyreg.image(arr, 1.0), path, chunks=CHUNK)


def _files(p: Path) -> list[str]:
    return sorted(str(f.relative_to(p)) for f in p.rglob("*")) if p.exists() else []


def _tmp_entries() -> set[str]:
    d = Path(tempfile.gettempdir())
    return {e.name for e in d.iterdir() if e.name.startswith(("lazyreg", "dask-scratch", "tmp")) or ".tmp" in e.name}


def spot_check(work: Path, shape, S, rng, side: int = 48) -> dict:
    """An output box against SimpleITK on the moving region it maps into (eager reference)."""
    import SimpleITK as sitk
    import zarr

    import lazyreg

    while True:  # a box well inside the tissue
        start = [int(rng.integers(BLOCKSIZE // 2, s - side - BLOCKSIZE // 2)) for s in shape]
        if ellipsoid_r2(np.array(start) + side / 2, shape) < 0.5:
            break
    sl = tuple(slice(a, a + side) for a in start)
    fz = zarr.open_array(str(work / "field.zarr"), mode="r")
    fs = FIELD_SPACING
    f0 = [max(0, int(a // fs) - 2) for a in start]
    f1 = [min(n, int((a + side) // fs) + 3) for a, n in zip(start, fz.shape[:3])]
    fvals = np.asarray(fz[f0[0]:f1[0], f0[1]:f1[1], f0[2]:f1[2]])
    D = lazyreg.DisplacementField.from_array(fvals, spacing=fs, origin=tuple(float(a * fs) for a in f0))
    umax = float(np.abs(fvals).max())
    # moving region: box corners through D (bounded by umax) then S
    lo, hi = np.array(start, float) - umax - 1, np.array(start, float) + side + umax + 1
    corners = np.array([[a, b, c] for a in (lo[0], hi[0]) for b in (lo[1], hi[1]) for c in (lo[2], hi[2])])
    q = S(corners)
    r0 = np.maximum(np.floor(q.min(0)).astype(int) - 2, 0)
    r1 = np.minimum(np.ceil(q.max(0)).astype(int) + 3, shape)
    mov = lazyreg.open_image(work / "moving.ome.zarr")
    region = tuple(slice(int(a), int(b)) for a, b in zip(r0, r1))
    mvals = np.asarray(mov.data[region].compute(scheduler="threads")).astype(np.float32)
    mimg = sitk.GetImageFromArray(mvals)
    mimg.SetOrigin(tuple(float(v) for v in r0[::-1]))
    ref_img = sitk.Image([side] * 3, sitk.sitkFloat32)
    ref_img.SetOrigin(tuple(float(v) for v in start[::-1]))
    T = sitk.CompositeTransform([S.to_sitk(), D.to_sitk()])  # applied last first: S(D(x)), as lazyreg
    R = sitk.ResampleImageFilter()
    R.SetReferenceImage(ref_img)
    R.SetTransform(T)
    R.SetInterpolator(sitk.sitkLinear)
    R.SetDefaultPixelValue(0)
    R.SetOutputPixelType(sitk.sitkFloat32)
    ref = np.clip(np.rint(sitk.GetArrayFromImage(R.Execute(mimg))), 0, 65535).astype(np.int32)
    out = lazyreg.open_image(work / "out.ome.zarr")
    got = np.asarray(out.data[sl].compute(scheduler="threads")).astype(np.int32)
    true = truth(sl, shape).astype(np.int32)  # the ideal aligned image = fixed
    return {
        "start": start,
        "side": side,
        "max_abs_diff_vs_sitk": int(np.abs(got - ref).max()),
        "mean_abs_diff_vs_truth": round(float(np.abs(got - true).mean()), 2),
        "truth_std": round(float(true.std()), 1),
        "field_mean_in_box": [round(float(v), 3) for v in fvals.reshape(-1, 3).mean(0)],
    }


def run(work: Path, shape, n_workers: int, memory_limit_gib: float) -> dict:
    import dask
    import dask.array as da
    from dask.distributed import Client, LocalCluster

    import lazyreg

    budget = n_workers * memory_limit_gib * C.GiB
    limit = budget + OVERHEAD_GIB * C.GiB
    nbytes = int(np.prod(shape)) * 2
    rec: dict = {
        "shape": list(shape),
        "voxels": int(np.prod(shape)),
        "dtype": "uint16",
        "image_gib": round(nbytes / C.GiB, 3),
        "pair_gib": round(2 * nbytes / C.GiB, 3),
        "chunks": CHUNK,
        "cluster": {"n_workers": n_workers, "threads_per_worker": 1, "memory_limit_gib": memory_limit_gib},
        "budget_gib": budget / C.GiB,
        "pair_over_budget": round(2 * nbytes / budget, 2),
        "stated_overhead_gib": OVERHEAD_GIB,
        "limit_gib": limit / C.GiB,
        "blocksize": BLOCKSIZE,
        "overlap": OVERLAP,
        "field_spacing": FIELD_SPACING,
        "steps": STEPS,
        "shift_s": SHIFT.tolist(),
        "expected_field": (-SHIFT).tolist(),
    }
    A = true_affine(shape)
    S = static_affine(A)
    rec["affine_true"] = np.asarray(A.matrix).tolist()
    fix_p, mov_p, out_p, field_p = (work / n for n in ("fixed.ome.zarr", "moving.ome.zarr", "out.ome.zarr", "field.zarr"))
    scratch = work / "dask-scratch"
    tmp_before = _tmp_entries()
    with LocalCluster(
        n_workers=n_workers,
        threads_per_worker=1,
        memory_limit=f"{memory_limit_gib}GiB",
        processes=True,
        dashboard_address=":0",
        local_directory=str(scratch),
    ) as cluster, Client(cluster) as client:
        client.wait_for_workers(n_workers)
        time.sleep(1.0)
        rec["rss_cluster_started_bytes"] = C.tree_rss()[0]
        for phase in ("generate", "piecewise_apply_write"):
            info: dict = {}
            watch = C.SchedulerMemory(cluster.scheduler)
            with watch, C.RSSSampler(interval=0.05) as s:
                t0 = time.perf_counter()
                if phase == "generate":
                    make_image(fix_p, shape, np.eye(4))
                    make_image(mov_p, shape, np.linalg.inv(np.asarray(A.matrix)))
                else:
                    fixed = lazyreg.open_image(fix_p)
                    moving = lazyreg.open_image(mov_p)
                    field = lazyreg.align_piecewise(
                        fixed, moving, STEPS, blocksize=BLOCKSIZE, overlap=OVERLAP, static_transforms=[S],
                        field_spacing=FIELD_SPACING,
                    )
                    out = lazyreg.apply_transform(fixed, moving, [S, field])
                    w_out = lazyreg.to_zarr(out, out_p, compute=False)
                    fd = field.data.data.astype(np.float32)
                    fd = fd.rechunk(tuple(max(c) for c in fd.chunks))  # field chunks are small (KB)
                    w_field = da.to_zarr(fd, str(field_p), compute=False)
                    info["tasks_out_graph"] = len(w_out.__dask_graph__())
                    info["seconds_build"] = time.perf_counter() - t0
                    # Delayed objects first: dask 2026.8.0's dask.compute returns the results of
                    # mixed Delayed / Array arguments reordered (Delayed first) when an Array precedes a Delayed
                    res_out, report, _ = dask.compute(w_out, field.report, w_field)
                    assert isinstance(report, list) and isinstance(res_out, Path), (type(res_out), type(report))
                info["seconds"] = time.perf_counter() - t0
            info.update(s.as_dict())
            info["cpu_seconds_all_processes"] = s.cpu_seconds
            info["scheduler_memory_peaks"] = watch.peaks
            info["held_by_task_group_at_peak"] = watch.held_by_group_at_peak
            info["voxels_per_s"] = float(np.prod(shape)) / info["seconds"]
            info["peak_rss_per_process"] = {str(k): {"cmd": v[0], "peak_rss": v[1]} for k, v in s.per_process.items()}
            info["peak_rss_total_gib"] = round(s.peak / C.GiB, 3)
            info["peak_rss_worker_max_gib"] = round(
                max((v[1] for v in s.per_process.values() if "spawn" in v[0] or "multiprocessing" in v[0]), default=0) / C.GiB, 3
            )
            info["within_limit"] = bool(s.peak <= limit)
            rec[phase] = info
            print(
                f"{phase}: {info['seconds']:.0f} s, CPU {s.cpu_seconds:.0f} s (all processes), peak RSS sum "
                f"{s.peak / C.GiB:.2f} GiB (limit {limit / C.GiB:.1f}), dask-managed in memory "
                f"{watch.peaks['managed_bytes'] / C.GiB:.2f} GiB, spilled {watch.peaks['spilled_bytes'] / C.GiB:.2f} GiB",
                flush=True,
            )
        rec["workers_at_end"] = len(cluster.scheduler.workers)
        # writing again to the same output without overwrite must refuse (before computing anything)
        before = _files(out_p)
        mtimes = {f: (out_p / f).stat().st_mtime_ns for f in before if (out_p / f).is_file()}
        t0 = time.perf_counter()
        try:
            lazyreg.to_zarr(out, out_p)
            rec["rewrite_refused"] = False
            rec["rewrite_error"] = None
        except lazyreg.LazyregError as e:
            rec["rewrite_refused"] = True
            rec["rewrite_error"] = str(e).splitlines()[0]
        rec["rewrite_seconds"] = round(time.perf_counter() - t0, 3)
        rec["output_unchanged_after_rewrite"] = bool(
            _files(out_p) == before and all((out_p / f).stat().st_mtime_ns == m for f, m in mtimes.items())
        )
    # after the cluster closed: temporary files
    rec["work_dir_top_level"] = sorted(p.name for p in work.iterdir())
    left = _files(scratch)
    # distributed leaves its two empty lock files in the scratch root; spill files would be under worker-*/
    rec["dask_scratch_left"] = [f for f in left if not f.endswith(".lock") and not (scratch / f).is_dir()]
    rec["dask_scratch_lock_files"] = [f for f in left if f.endswith(".lock")]
    rec["lazyreg_tmp_files_left"] = [f for f in _files(work) if ".tmp" in Path(f).name]
    rec["new_tmp_entries"] = sorted(_tmp_entries() - tmp_before)
    rec["no_temp_files_left"] = not rec["dask_scratch_left"] and not rec["lazyreg_tmp_files_left"]
    # block outcomes and the field
    rec["blocks"] = dict(Counter(r["status"] for r in report))
    rec["block_seconds"] = {
        "sum": round(sum(r["seconds"] or 0 for r in report), 1),
        "median": round(float(np.median([r["seconds"] or 0 for r in report])), 2),
    }
    rec["block_rows_not_ok"] = [r for r in report if r["status"] != "ok"][:50]
    import zarr

    fz = zarr.open_array(str(field_p), mode="r")
    fv = np.asarray(fz[:])
    rec["field_shape"] = list(fv.shape)
    rec["field_mean"] = [round(float(v), 3) for v in fv.reshape(-1, 3).mean(0)]
    fpts = np.stack(np.meshgrid(*(np.arange(n) * FIELD_SPACING for n in fv.shape[:3]), indexing="ij"), -1)
    inner = fv[ellipsoid_r2(fpts, shape) < 0.6].reshape(-1, 3)  # well inside the tissue
    rec["field_interior_points"] = int(len(inner))
    rec["field_interior_max_abs_error"] = round(float(np.abs(inner + SHIFT).max()), 3)
    rec["field_interior_rms_error"] = round(float(np.sqrt(((inner + SHIFT) ** 2).sum(1).mean())), 3)
    rng = np.random.default_rng(0)
    rec["spot_checks"] = [spot_check(work, shape, S, rng) for _ in range(3)]
    ok_spots = all(c["max_abs_diff_vs_sitk"] <= 1 for c in rec["spot_checks"])
    rec["ok"] = bool(
        rec["generate"]["within_limit"] and rec["piecewise_apply_write"]["within_limit"] and ok_spots
        and rec["rewrite_refused"] and rec["output_unchanged_after_rewrite"] and rec["no_temp_files_left"]
    )
    return rec


def _lib_fingerprint() -> dict:
    """md5 of the library files that other work changes concurrently (which version was measured)."""
    names = ("lazyreg/resample.py", "lazyreg/registration/piecewise.py", "lazyreg/registration/blend.py", "lazyreg/io/source.py")
    return {n: hashlib.md5((ROOT / n).read_bytes()).hexdigest()[:10] for n in names if (ROOT / n).exists()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=lambda s: tuple(int(v) for v in s.split(",")), default=None)
    ap.add_argument("--quick", action="store_true", help=f"{QUICK_SHAPE}, results to $TMPDIR")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--memory-limit", type=float, default=0.75, help="GiB per worker (budget = workers x this)")
    ap.add_argument("--tmp", type=Path, default=None, help="where the temporary data go (default the roomiest of /tmp, /work)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary data")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    shape = args.shape or (QUICK_SHAPE if args.quick else DEFAULT_SHAPE)
    out = args.out or (
        Path(tempfile.gettempdir()) / "lazyreg-bench-piecewise-memory-quick.json" if args.quick
        else HERE / "results" / "piecewise_memory.json"
    )
    roots = [Path(p) for p in (os.environ.get("TMPDIR"), "/tmp", "/work") if p and Path(p).is_dir() and os.access(p, os.W_OK)]
    tmp_root = args.tmp or max(roots, key=lambda p: shutil.disk_usage(p).free)
    free = shutil.disk_usage(tmp_root).free
    need = 4.5 * np.prod(shape) * 2  # two inputs + output (compressible) + spill
    if free < need:
        print(f"skipped: {free / 1e9:.0f} GB free in {tmp_root}, need {need / 1e9:.0f} GB")
        return 0
    work = Path(tempfile.mkdtemp(prefix="lazyreg-bench-pwmem-", dir=tmp_root))
    t0 = time.perf_counter()
    try:
        rec = {"machine": C.machine_info(), "lazyreg_files_md5": _lib_fingerprint(), "tmp_root": str(tmp_root)}
        rec.update(run(work, shape, args.workers, args.memory_limit))
        rec["temp_data_gb"] = round(sum(f.stat().st_size for f in work.rglob("*") if f.is_file()) / 1e9, 2)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rec["seconds_script"] = round(time.perf_counter() - t0, 1)
    rec["machine"]["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]  # machine_info: at start
    C.write_json(out, rec)
    pa = rec["piecewise_apply_write"]
    print(json.dumps({k: rec[k] for k in ("blocks", "block_seconds", "field_mean", "field_interior_max_abs_error",
                                            "rewrite_refused", "output_unchanged_after_rewrite", "no_temp_files_left",
                                            "new_tmp_entries", "ok")}, default=str))
    for c in rec["spot_checks"]:
        print("spot", c)
    print(f"piecewise+apply+write: {pa['seconds']:.0f} s, peak RSS {pa['peak_rss_total_gib']} GiB, "
          f"max worker {pa['peak_rss_worker_max_gib']} GiB; script {rec['seconds_script']:.0f} s")
    return 0 if rec["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
