"""The whole tutorial pipeline at full size, as one lazy graph (issue 16, items 2-4).

bigstream's projection for the tutorial's full-resolution pair (298 x 483 x 913, 131 M voxels) is
4.4-5 h on 2 cores. The full-resolution level is not shipped with the tutorial data, so this
benchmark makes a known-truth pair of that size from the shipped ``lowres`` level:

* ``moving``: the tutorial ``fix.n5`` lowres level resampled (linear) onto a grid 2x finer per axis
  (298 x 482 x 912 voxels, spacing (0.84, 0.92, 0.92) um), plus noise;
* ``fixed``: the same through a known transform ``[A_true, D_true]`` (the affine and plane-wave
  field of ``bench_accuracy.py``'s tutorial pair, 4 voxels of the lowres grid at most), plus noise;
* both generated chunk by chunk and written with ``lazyreg.to_zarr(..., levels=2)`` (OME-Zarr with
  a 2x pyramid level, uint16, 128^3 chunks): generation is bounded and not timed.

The timed pipeline, as a user writes it (README quick start), on the default threaded scheduler::

    fix1, mov1 = open_image(fixed, level=1), open_image(moving, level=1)   # 16 M voxels
    A = align(fix1, mov1, [ransac, affine])                                   # global, coarse level
    field = align_piecewise(fix0, mov0, steps, blocksize=128, static_transforms=[A])
    to_zarr(apply_transform(fix0, mov0, [A, field]), "aligned.ome.zarr")   # runs everything
    A, field = A.compute(), field.compute()                                   # reused, not rerun

Measured: wall and CPU seconds, peak RSS of the process tree (psutil, 50 ms), the time each block
spends in each step (and, inside a step, per ITK level or per ransac stage), block outcomes, target
registration error against the truth over a lattice of tissue points (affine alone and affine +
field), the Jacobian determinant of the field, and how often registration tasks ran
(``lazyreg.result_cache.cache_info``: each block once).

``--scaling`` (item 4) instead runs ``align_piecewise`` alone on a crop (3 x 2 x 4 blocks) on a
``distributed.LocalCluster`` of 1 and then 2 worker processes (1 thread each), each on a fresh
cluster, and measures the scheduler's overhead per task on a graph of trivial tasks; it writes the
parallel efficiency and a projection for 100 workers.
``--align-level0`` (item 3) also runs the global ``align`` on the full-size level (8x the voxels),
and the ransac step alone on each level, loaded whole and per chunk (each run in a fresh process).

Usage::

    .venv/bin/python benchmarks/bench_fullsize.py                    # the demons (default until 2026-12)
    .venv/bin/python benchmarks/bench_fullsize.py --steps best       # quality="best", now the default
    .venv/bin/python benchmarks/bench_fullsize.py --steps bigstream  # ransac + deform per block
    .venv/bin/python benchmarks/bench_fullsize.py --scaling
    .venv/bin/python benchmarks/bench_fullsize.py --align-levels-only   # global align / ransac on level 1 vs 0
    .venv/bin/python benchmarks/bench_fullsize.py --quick            # a 4x smaller pair, smoke run

Results: ``benchmarks/results/fullsize[_<steps>|_scaling|_align_levels].json`` (``--quick``: ``$TMPDIR``).
The generated pair is kept in ``--work`` (default ``$TMPDIR/lazyreg-fullsize``) for the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import GiB, RSSSampler, cpu_seconds, machine_info, table, write_json  # noqa: E402
from bench_accuracy import SEED, TUTORIAL_AFFINE, tutorial_noise_sigma, tutorial_truth  # noqa: E402

BIGSTREAM_HOURS = (4.4, 5.0)  # bigstream's projection for the full-resolution tutorial pair, 2 cores
GOAL_SECONDS = 600.0
GOAL_GIB = 2.0
BLOCKSIZE = 128
CHUNKS = 128
GLOBAL_STEPS = [("ransac", {"blob_sizes": [6, 20]}), ("affine", {})]
BIGSTREAM_BLOCK_STEPS = [
    ("ransac", {"blob_sizes": [6, 20], "nspots": 1000}),
    ("deform", {"control_point_spacing": 128.0, "smooth_sigmas": (0.25,), "shrink_factors": (1,),
                "control_point_levels": (1,), "optimizer_args": {"numberOfIterations": 10}}),
]
SCALING_CROP_BLOCKS = (3, 2, 4)
SCALING_TRIVIAL_TASKS = 2000
ITK_THREADS_VARIABLE = "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"
LATTICE_STEP = 2  # TRE lattice: every 2nd voxel of the pyramid level 1 inside the tissue


# ------------------------------------------------------------------------------------------- data


def make_pair(data: Path, work: Path, factor: int, crop: tuple | None) -> dict:
    """Write ``fixed.ome.zarr`` / ``moving.ome.zarr`` (2 levels) into ``work``; returns the truth."""
    import dask.array as da

    import lazyreg

    tut = lazyreg.open_image(data / "fix.n5", group="lowres")
    if crop is not None:
        tut = tut.isel(z=crop[0], y=crop[1], x=crop[2])
    tut = tut.compute()
    sp, org = np.asarray(lazyreg.spacing(tut)), np.asarray(lazyreg.origin(tut))
    A_true, D_true = tutorial_truth(tut)
    # the fine grid covers the lowres voxels: 2 fine voxels per coarse one, centres a quarter in
    fine_sp = sp / factor
    fine_org = org - sp / 2 + fine_sp / 2
    shape = tuple(int(n) * factor for n in tut.shape)
    template = lazyreg.image(da.zeros(shape, dtype=np.uint16, chunks=CHUNKS), tuple(fine_sp), tuple(fine_org))
    v = tut.values
    sigma = tutorial_noise_sigma(v)

    def noisy(img, seed):
        def add(block, block_info=None):
            rng = np.random.default_rng([seed, *block_info[0]["chunk-location"]])
            out = block.astype(np.float32) + rng.normal(0.0, sigma, size=block.shape).astype(np.float32)
            return np.clip(np.rint(out), 0, 65535).astype(np.uint16)

        return img.copy(data=img.data.map_blocks(add, dtype=np.uint16))

    tut_img = lazyreg.image(v, tuple(sp), tuple(org))
    fixed = noisy(lazyreg.apply_transform(template, tut_img, [A_true, D_true]), SEED + 1)
    moving = noisy(lazyreg.apply_transform(template, tut_img, []), SEED + 2)
    t0 = time.perf_counter()
    lazyreg.to_zarr(fixed, work / "fixed.ome.zarr", levels=2, chunks=CHUNKS)
    lazyreg.to_zarr(moving, work / "moving.ome.zarr", levels=2, chunks=CHUNKS)
    lazyreg.save_transform(A_true, work / "truth_affine.txt")
    lazyreg.save_transform(D_true, work / "truth_field.ome.zarr")
    info = {
        "shape": list(shape), "voxels": int(np.prod(shape)), "spacing": fine_sp.tolist(), "origin": fine_org.tolist(),
        "source": f"{data / 'fix.n5'}:lowres" + (f" crop {crop}" if crop else "") + f", linear resampling x{factor} per axis",
        "noise_sigma": sigma, "truth_affine": TUTORIAL_AFFINE, "truth_field_max_um": float(np.linalg.norm(D_true.values, axis=-1).max()),
        "seconds_to_generate": round(time.perf_counter() - t0, 1),
    }
    (work / "pair.json").write_text(json.dumps(info, indent=1))
    return info


def tissue_points(fix1) -> np.ndarray:
    """Physical points of a lattice inside the tissue of the fixed image's level 1 (as bench_accuracy)."""
    from scipy import ndimage as ndi

    import lazyreg
    from lazyreg.registration.block_align import FOREGROUND_LEVEL, FOREGROUND_SIGMA

    v = fix1.values.astype(np.float32)
    p1, p99 = np.percentile(v[::2, ::2, ::2], [1, 99])
    tissue = ndi.gaussian_filter(v, FOREGROUND_SIGMA) > p1 + FOREGROUND_LEVEL * (p99 - p1)
    sub = tissue[::LATTICE_STEP, ::LATTICE_STEP, ::LATTICE_STEP]
    idx = np.argwhere(sub) * LATTICE_STEP
    g = lazyreg.Grid(fix1.shape, lazyreg.spacing(fix1), lazyreg.origin(fix1))
    return g.to_physical(idx)


def tre(points: np.ndarray, truth: list, estimate: list, unit: float) -> dict:
    import lazyreg

    e = np.linalg.norm(lazyreg.transform_points(points, truth) - lazyreg.transform_points(points, estimate), axis=1)
    return {"mean_um": float(e.mean()), "p95_um": float(np.percentile(e, 95)), "max_um": float(e.max()),
            "mean_vox": float(e.mean() / unit), "p95_vox": float(np.percentile(e, 95) / unit), "points": len(e)}


# ------------------------------------------------------------------------------------- profiling


def block_profile(report: list) -> dict:
    """Where the aligned blocks spent their time: per step, and inside steps per stage / level."""
    rows = [r for r in report if r["status"] in ("ok", "unchanged")]
    step_s: dict[str, list] = defaultdict(list)
    stage_s: dict[str, float] = defaultdict(float)
    for r in rows:
        for s in r["steps"] or []:
            step_s[s["step"]].append(s["seconds"] or 0.0)
            for k, v in (s.get("profile") or {}).items():
                stage_s[f"{s['step']}: {k}"] += v
    block_s = [r["seconds"] for r in rows]
    in_steps = sum(sum(v) for v in step_s.values())
    return {
        "blocks_aligned": len(rows),
        "block_seconds": {"sum": round(sum(block_s), 2), "mean": round(float(np.mean(block_s)), 2) if rows else None,
                          "max": round(max(block_s), 2) if rows else None},
        "step_seconds_sum": {k: round(sum(v), 2) for k, v in step_s.items()},
        "stage_seconds_sum": {k: round(v, 2) for k, v in sorted(stage_s.items(), key=lambda kv: -kv[1])},
        "outside_steps_seconds_sum": round(sum(block_s) - in_steps, 2),
    }


# -------------------------------------------------------------------------------------- pipeline


def run_pipeline(work: Path, steps) -> dict:
    import lazyreg
    from lazyreg.result_cache import cache_info, clear_cache

    clear_cache()
    fix0 = lazyreg.open_image(work / "fixed.ome.zarr")
    mov0 = lazyreg.open_image(work / "moving.ome.zarr")
    fix1 = lazyreg.open_image(work / "fixed.ome.zarr", level=1)
    mov1 = lazyreg.open_image(work / "moving.ome.zarr", level=1)
    out_path = work / "aligned.ome.zarr"
    if out_path.exists():
        shutil.rmtree(out_path)
    load_start = [round(x, 2) for x in os.getloadavg()]
    t0, c0 = time.perf_counter(), cpu_seconds()
    with RSSSampler(interval=0.05) as rss:
        A = lazyreg.align(fix1, mov1, GLOBAL_STEPS)
        field = lazyreg.align_piecewise(fix0, mov0, steps, blocksize=BLOCKSIZE, static_transforms=[A])
        out = lazyreg.apply_transform(fix0, mov0, [A, field])
        t_build = time.perf_counter() - t0
        lazyreg.to_zarr(out, out_path)
        t_write = time.perf_counter() - t0
        A, field = A.compute(), field.compute()
        t_all = time.perf_counter() - t0
    cpu_all = cpu_seconds() - c0
    runs = cache_info()
    print(f"pipeline: {t_all:.1f} s wall ({t_build:.2f} s building the graph, {t_write:.1f} s to the end of to_zarr), "
          f"{cpu_all:.0f} CPU s, peak RSS {rss.peak / GiB:.2f} GiB", flush=True)
    # QC outside the timed part
    truth = [lazyreg.load_transform(work / "truth_affine.txt"), lazyreg.load_transform(work / "truth_field.ome.zarr")]
    pts = tissue_points(fix1)
    unit = float(np.exp(np.mean(np.log(lazyreg.spacing(fix0)))))
    tre_affine = tre(pts, truth, [A], unit)
    tre_field = tre(pts, truth, [A, field], unit)
    chunked = lazyreg.DisplacementField(field.data.chunk({"z": 64, "y": 64, "x": 64}))
    det = lazyreg.jacobian_determinant(chunked).data
    import dask

    det_min, det_max, folded = dask.compute(det.min(), det.max(), (det <= 0).mean())
    counts = Counter(r["status"] for r in field.report)
    voxels = int(np.prod(fix0.shape))
    return {
        "load_average_at_start": load_start,
        "steps": steps,
        "shape": list(fix0.shape), "voxels": voxels, "blocksize": BLOCKSIZE,
        "seconds_total": round(t_all, 1), "seconds_build_graph": round(t_build, 2),
        "seconds_to_zarr": round(t_write - t_build, 1), "seconds_reuse": round(t_all - t_write, 2),
        "cpu_seconds_total": round(cpu_all, 1),
        "peak_rss_gib": round(rss.peak / GiB, 3), "rss_sampler": rss.as_dict(),
        "goal_seconds": GOAL_SECONDS, "goal_gib": GOAL_GIB,
        "us_per_voxel_wall": round(t_all / voxels * 1e6, 2),
        "speedup_vs_bigstream": [round(h * 3600 / t_all, 1) for h in BIGSTREAM_HOURS],
        "global_report": A.report,
        "global_seconds": round(sum(s.get("seconds") or 0 for s in A.report), 2),
        "blocks": dict(counts),
        "block_profile": block_profile(field.report),
        "field_shape": list(field.grid.shape),
        "tre_affine": tre_affine, "tre_affine_field": tre_field,
        "jacobian_min": float(det_min), "jacobian_max": float(det_max), "folded_fraction": float(folded),
        "registration_tasks": runs,
        "block_rows": field.report,
    }


# ------------------------------------------------------------------------------------------ scaling


def trivial_overhead(client, n: int) -> float:
    """Seconds of scheduler + worker overhead per task: a graph of ``n`` tasks that do nothing."""
    import dask.array as da

    x = da.ones((n,), chunks=1).map_blocks(lambda b: b, dtype=float).sum(split_every=8)
    client.compute(x).result()  # warm up (function shipped, workers ready)
    t0 = time.perf_counter()
    client.compute(x + 0).result()
    seconds = time.perf_counter() - t0
    tasks = len(dict((x + 0).__dask_graph__()))
    return seconds / tasks


def run_scaling(work: Path, steps) -> dict:
    from distributed import Client, LocalCluster

    import lazyreg
    from lazyreg.result_cache import clear_cache

    fix0 = lazyreg.open_image(work / "fixed.ome.zarr")
    mov0 = lazyreg.open_image(work / "moving.ome.zarr")
    fix1 = lazyreg.open_image(work / "fixed.ome.zarr", level=1)
    mov1 = lazyreg.open_image(work / "moving.ome.zarr", level=1)
    A = lazyreg.align(fix1, mov1, GLOBAL_STEPS).compute()
    nb = SCALING_CROP_BLOCKS
    sl = {d: slice(0, min(n * BLOCKSIZE, s)) for d, n, s in zip("zyx", nb, fix0.shape)}
    fix_c = fix0.isel(**sl)
    runs = {}
    for workers in (1, 2):
        # a worker thread is a core: ITK's filters inside the demons take the process-wide default
        # (all cores) whatever the step asks; the variable sets it when ITK loads in the worker
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, memory_limit="4GiB",
                          dashboard_address=None, env={ITK_THREADS_VARIABLE: "1"}) as cluster, Client(cluster) as client:
            field = lazyreg.align_piecewise(fix_c, mov0, steps, blocksize=BLOCKSIZE, static_transforms=[A])
            tasks = len(dict(field.data.data.__dask_graph__()))
            t0 = time.perf_counter()
            with RSSSampler(interval=0.1) as rss:
                field = field.compute()
            seconds = time.perf_counter() - t0
            overhead = trivial_overhead(client, SCALING_TRIVIAL_TASKS)
            prof = block_profile(field.report)
            runs[workers] = {
                "seconds": round(seconds, 1), "cpu_seconds_all_processes": round(rss.cpu_seconds, 1),
                "peak_rss_gib": round(rss.peak / GiB, 3), "graph_tasks": tasks,
                "overhead_per_task_ms": round(overhead * 1e3, 3), "blocks": dict(Counter(r["status"] for r in field.report)),
                "block_profile": prof,
            }
            print(f"{workers} worker(s): {seconds:.1f} s, {tasks} tasks, overhead {overhead * 1e3:.2f} ms/task, "
                  f"block seconds sum {prof['block_seconds']['sum']}", flush=True)
            clear_cache()  # release the published results before the workers go
    eff = runs[1]["seconds"] / (2 * runs[2]["seconds"])
    # projection for 100 workers on the full-size pair: blocks run in waves of 100; the scheduler
    # handles every task of the graph serially
    info = json.loads((work / "pair.json").read_text())
    full_blocks = int(np.prod([int(np.ceil(n / BLOCKSIZE)) for n in info["shape"]]))
    crop_blocks = int(np.prod(nb))
    per_block = runs[1]["block_profile"]["block_seconds"]["mean"]
    slowest = runs[1]["block_profile"]["block_seconds"]["max"]
    graph_per_block = runs[2]["graph_tasks"] / crop_blocks
    overhead = runs[2]["overhead_per_task_ms"] / 1e3
    proj = {
        "full_size_blocks": full_blocks, "graph_tasks_estimate": int(graph_per_block * full_blocks),
        "block_seconds_mean": per_block, "block_seconds_max": slowest,
        "seconds_blocks_100_workers": round(np.ceil(full_blocks / 100) * slowest, 1),
        "seconds_scheduler_100_workers": round(graph_per_block * full_blocks * overhead, 1),
        "seconds_1_worker": round(full_blocks * per_block, 1),
    }
    proj["seconds_100_workers"] = round(proj["seconds_blocks_100_workers"] + proj["seconds_scheduler_100_workers"], 1)
    proj["speedup_100_vs_1"] = round(proj["seconds_1_worker"] / proj["seconds_100_workers"], 1)
    print(f"efficiency 1 -> 2 workers: {eff:.0%}; projection for 100 workers: {proj}", flush=True)
    return {"crop": {d: [s.start, s.stop] for d, s in sl.items()}, "crop_blocks": crop_blocks, "runs": runs,
            "efficiency_2_workers": round(eff, 3), "projection_100_workers": proj}


ALIGN_MODES = ("align", "ransac_in_memory", "ransac_per_chunk", "align_shrunk_in_memory", "align_shrunk_per_chunk")
#: The global steps of the ``align_shrunk_*`` modes: an affine stopping at shrink 2, which ``align``
#: runs on the level binned chunk by chunk (lazyreg.registration.step_inputs).
SHRUNK_AFFINE = ("affine", {"shrink_factors": (8, 4, 2)})


def align_level(work: Path, level: int, mode: str = "align") -> dict:
    """Global align on one pyramid level (run in a process of its own: its memory is its own).

    ``align``: ``lazyreg.align`` with [ransac, affine] (its task loads the level whole, as before);
    ``ransac_in_memory``: the ransac step alone on the level loaded whole (whole-image detection);
    ``ransac_per_chunk``: the ransac step alone on the store-backed level, never loaded whole
    (blobs detected tile by tile, descriptors read around the blobs);
    ``align_shrunk_in_memory`` / ``align_shrunk_per_chunk``: ``lazyreg.align`` with [ransac,
    affine stopping at shrink 2] on the level loaded whole / on the store-backed level (the ransac
    step reads it chunk by chunk, the affine binned by 2 chunk by chunk: never whole).
    """
    import lazyreg
    from lazyreg.registration.features import align_features

    fix = lazyreg.open_image(work / "fixed.ome.zarr", level=level)
    mov = lazyreg.open_image(work / "moving.ome.zarr", level=level)
    blob_sizes = [6 * 2**(1 - level), 20 * 2**(1 - level)]  # the same physical sizes, in voxels of the level
    t0, c0 = time.perf_counter(), cpu_seconds()
    if mode.startswith("align"):
        if mode == "align_shrunk_in_memory":
            fix, mov = fix.compute(), mov.compute()
        affine = SHRUNK_AFFINE if mode.startswith("align_shrunk") else ("affine", {})
        A = lazyreg.align(fix, mov, [("ransac", {"blob_sizes": blob_sizes}), affine]).compute()
        report = A.report
    else:
        if mode == "ransac_in_memory":
            fix, mov = fix.compute(), mov.compute()
        A = align_features(fix, mov, blob_sizes=blob_sizes)
        report = [A.report]
    return {"level": level, "mode": mode, "shape": list(fix.shape), "voxels": int(np.prod(fix.shape)),
            "chunks": [int(max(c)) for c in fix.chunks] if fix.chunks else None, "blob_sizes": blob_sizes,
            "seconds": round(time.perf_counter() - t0, 1), "cpu_seconds": round(cpu_seconds() - c0, 1),
            "report": report, "matrix": np.asarray(A.matrix).tolist()}


def _corners_apart(work: Path, m0: np.ndarray, m1: np.ndarray) -> float:
    """How far apart two affines map the corners of the volume (um)."""
    info = json.loads((work / "pair.json").read_text())
    hi = np.asarray(info["origin"]) + (np.asarray(info["shape"]) - 1) * np.asarray(info["spacing"])
    corners = np.array([[a, b, c, 1.0] for a in (info["origin"][0], hi[0]) for b in (info["origin"][1], hi[1])
                        for c in (info["origin"][2], hi[2])])
    return float(np.linalg.norm(corners @ (np.asarray(m0) - np.asarray(m1)).T, axis=1).max())


def run_align_levels(work: Path) -> dict:
    """Global align, and the ransac step alone (in memory / per chunk), on level 1 and on level 0
    (8x the voxels), each in a fresh process with its own peak RSS."""
    import subprocess

    out: dict = {}
    for mode in ALIGN_MODES:
        runs = {}
        for level in (1, 0):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--work", str(work), "--align-level", str(level),
                   "--align-mode", mode]
            with RSSSampler(interval=0.05) as rss:
                proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            r["peak_rss_gib"] = round(rss.peak / GiB, 3)
            ransac = r["report"][0]
            r["seconds_detect"] = round(ransac.get("seconds_detect") or 0.0, 2)
            r["seconds_describe"] = round(ransac.get("seconds_describe") or 0.0, 2)
            runs[f"level{level}"] = r
            print(f"{mode} on level {level} ({r['voxels'] / 1e6:.0f} M voxels): {r['seconds']} s, {r['cpu_seconds']} CPU s, "
                  f"peak RSS {r['peak_rss_gib']} GiB; detection {r['seconds_detect']} s, descriptors "
                  f"{r['seconds_describe']} s", flush=True)
        runs["time_ratio"] = round(runs["level0"]["seconds"] / runs["level1"]["seconds"], 2)
        runs["detect_time_ratio"] = round(runs["level0"]["seconds_detect"] / max(runs["level1"]["seconds_detect"], 1e-9), 2)
        runs["memory_ratio"] = round(runs["level0"]["peak_rss_gib"] / runs["level1"]["peak_rss_gib"], 2)
        runs["voxel_ratio"] = round(runs["level0"]["voxels"] / runs["level1"]["voxels"], 2)
        runs["corners_apart_um_max"] = _corners_apart(work, runs["level0"]["matrix"], runs["level1"]["matrix"])
        out[mode] = runs
    for level in ("level1", "level0"):  # the per-chunk path gives the in-memory result
        out[f"per_chunk_vs_in_memory_{level}_max_abs"] = float(np.abs(
            np.asarray(out["ransac_per_chunk"][level]["matrix"]) - np.asarray(out["ransac_in_memory"][level]["matrix"])).max())
        out[f"align_shrunk_per_chunk_vs_in_memory_{level}_corners_um"] = _corners_apart(
            work, out["align_shrunk_per_chunk"][level]["matrix"], out["align_shrunk_in_memory"][level]["matrix"])
    return out


def main() -> int:
    from lazyreg.registration.piecewise import QUALITIES

    block_steps = {"demons": [["demons", {}]], **{q: [list(c) for c in QUALITIES[q]] for q in QUALITIES},
                   "bigstream": BIGSTREAM_BLOCK_STEPS}
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tutorial")
    ap.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "lazyreg-fullsize")
    ap.add_argument("--steps", choices=list(block_steps), default="demons",
                    help="block steps: the demons alone (align_piecewise's default when the recorded run was "
                         "made), a quality preset of align_piecewise, or bigstream's tutorial steps")
    ap.add_argument("--scaling", action="store_true", help="1 vs 2 workers on a crop, and a projection for 100")
    ap.add_argument("--align-level0", action="store_true", help="also the global align on the full-size level")
    ap.add_argument("--align-levels-only", action="store_true",
                    help="only the --align-level0 runs (results/fullsize_align_levels.json), not the pipeline")
    ap.add_argument("--quick", action="store_true", help="a crop of the tutorial (4x fewer voxels): smoke run")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--align-level", type=int, default=None, help=argparse.SUPPRESS)  # internal: one level, JSON out
    ap.add_argument("--align-mode", choices=ALIGN_MODES, default="align", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.align_level is not None:
        print(json.dumps(align_level(args.work, args.align_level, args.align_mode), default=str))
        return 0

    work = args.work.with_name(args.work.name + "-quick") if args.quick else args.work
    work.mkdir(parents=True, exist_ok=True)
    crop = (slice(0, 149), slice(0, 128), slice(0, 240)) if args.quick else None
    if not (work / "pair.json").exists():
        print(f"generating the pair in {work} ...", flush=True)
        for name in ("fixed.ome.zarr", "moving.ome.zarr", "truth_field.ome.zarr"):
            shutil.rmtree(work / name, ignore_errors=True)
        make_pair(args.data, work, 2, crop)
    info = json.loads((work / "pair.json").read_text())
    print(f"pair: {info['shape']} = {info['voxels'] / 1e6:.1f} M voxels ({info['source']}; generated in "
          f"{info['seconds_to_generate']} s)", flush=True)
    steps = block_steps[args.steps]
    record: dict = {"pair": info}
    if args.scaling:
        record["scaling"] = run_scaling(work, steps)
        suffix = "_scaling"
    elif args.align_levels_only:
        suffix = "_align_levels"
    else:
        r = run_pipeline(work, steps)
        record["pipeline"] = r
        suffix = "" if args.steps == "demons" else f"_{args.steps}"
        print(table([[k, v] for k, v in r["block_profile"]["stage_seconds_sum"].items()], ["block time in", "s (sum)"]))
        print(f"blocks {r['blocks']}; block seconds {r['block_profile']['block_seconds']}; outside steps "
              f"{r['block_profile']['outside_steps_seconds_sum']} s")
        print(f"TRE (tissue lattice): affine {r['tre_affine']['mean_vox']:.3f} voxel -> affine + field "
              f"{r['tre_affine_field']['mean_vox']:.3f} voxel (p95 {r['tre_affine_field']['p95_vox']:.3f}); "
              f"Jacobian {r['jacobian_min']:.3f}..{r['jacobian_max']:.3f}, folded {r['folded_fraction']:.1e}")
        print(f"registration tasks: {r['registration_tasks']}")
        print(f"goal: <= {GOAL_SECONDS:.0f} s and <= {GOAL_GIB} GiB: {r['seconds_total']} s, {r['peak_rss_gib']} GiB; "
              f"bigstream's projection {BIGSTREAM_HOURS} h -> {r['speedup_vs_bigstream']}x")
    if args.align_level0 or args.align_levels_only:
        record["align_levels"] = run_align_levels(work)
    record["machine"] = machine_info()
    out = args.out or (Path(tempfile.gettempdir()) / f"lazyreg-bench-fullsize-quick{suffix}.json" if args.quick
                       else HERE / "results" / f"fullsize{suffix}.json")
    write_json(out, record)
    print(f"results: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
