"""Benchmark of ``lazyreg.align`` on the real tutorial pair (issue 5).

The pipeline ``align(fix, mov, [("ransac", {"blob_sizes": [6, 20]}), ("affine", {})])`` on the
``lowres`` level of ``fix.n5`` / ``mov.n5`` (149x241x456 and 144x241x456 uint16, opened lazily with
``lazyreg.open_image``), computed with ``.compute()`` on the default (threaded) dask scheduler:

* wall time per step (the report's ``seconds_total``) and in total (``align`` + ``compute``,
  which includes loading the two images);
* peak RSS of the process (the kernel's high-water mark; each run is its own subprocess, so this
  is the run's own peak; the sampled RSS of the process tree is recorded too);
* Pearson correlation of the fixed image with the moving image resampled onto it, before
  (identity) and after (the computed affine), with ``lazyreg.metrics.pearson``.

Reference (issue 5): bigstream takes 165 s (94 s RANSAC + 71 s affine) and 4.3 GiB on this pair.
Goals: <= 16 s, < 2 GiB, Pearson >= 0.46.

Usage::

    .venv/bin/python benchmarks/bench_align.py              # 3 runs (about 1-2 min on 2 cores)
    .venv/bin/python benchmarks/bench_align.py --runs 1     # one run
    .venv/bin/python benchmarks/bench_align.py --data PATH  # another copy of the tutorial data

Results: ``benchmarks/results/align.json`` (``--out`` to choose).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "tutorial"
STEPS = [("ransac", {"blob_sizes": [6, 20]}), ("affine", {})]
BIGSTREAM = {"seconds_total": 165.0, "seconds_ransac": 94.0, "seconds_affine": 71.0, "peak_rss_gib": 4.3}
GOALS = {"seconds_total_max": 16.0, "peak_rss_gib_max": 2.0, "pearson_min": 0.46}
REFERENCE = ROOT / "tests" / "data" / "tutorial_reference_affine.json"


def one_run(data: Path) -> dict:
    """One timed alignment in this (fresh) process."""
    import numpy as np

    import lazyreg
    from lazyreg.images import grid_of
    from lazyreg.metrics import pearson

    rec: dict = {"rss_after_imports_bytes": C.current_rss()}
    with C.RSSSampler(interval=0.02) as s:
        t0, c0 = time.perf_counter(), C.cpu_seconds()
        fix = lazyreg.open_image(data / "fix.n5", group="lowres")
        mov = lazyreg.open_image(data / "mov.n5", group="lowres")
        A = lazyreg.align(fix, mov, STEPS)
        t_build = time.perf_counter() - t0
        A = A.compute()
        rec["seconds_total"] = time.perf_counter() - t0
        rec["cpu_seconds_total"] = C.cpu_seconds() - c0
    rec["seconds_build_graph"] = t_build
    rec["peak_rss_bytes"] = C.self_maxrss()
    rec["sampled"] = s.as_dict()
    rec["steps"] = []
    for r in A.report:
        rec["steps"].append(
            {
                "step": r.get("step"),
                "seconds_total": r.get("seconds_total"),
                **{k: v for k, v in r.items() if isinstance(v, (int, float, str, bool)) and k not in ("step", "seconds_total")},
            }
        )
    rec["seconds_in_steps"] = sum(st["seconds_total"] for st in rec["steps"])
    rec["seconds_outside_steps"] = rec["seconds_total"] - rec["seconds_in_steps"]
    rec["matrix"] = np.asarray(A.matrix).tolist()
    t1 = time.perf_counter()
    fixv = fix.compute()
    rec["pearson_before"] = float(pearson(fixv, lazyreg.apply_transform(fixv, mov, [])))
    rec["pearson_after"] = float(pearson(fixv, lazyreg.apply_transform(fixv, mov, [A])))
    rec["seconds_pearson"] = time.perf_counter() - t1
    if REFERENCE.exists():
        ref = lazyreg.Affine(json.loads(REFERENCE.read_text())["matrix"])
        g = grid_of(fix)
        pts = g.to_physical(np.stack(np.meshgrid(*[np.linspace(0, n - 1, 12) for n in g.shape], indexing="ij"), -1).reshape(-1, 3))
        err = np.linalg.norm((A(pts) - ref(pts)) / np.asarray(g.spacing), axis=1)
        rec["vs_reference_mean_voxel_error"] = float(err.mean())
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3, help="separate processes, one alignment each (default 3)")
    ap.add_argument("--data", default=str(DEFAULT_DATA), help=f"folder with fix.n5 and mov.n5 (default {DEFAULT_DATA})")
    ap.add_argument("--out", default=str(HERE / "results" / "align.json"), help="results JSON")
    ap.add_argument("--run", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args()
    data = Path(args.data)

    if args.run:
        Path(args.result).write_text(json.dumps(one_run(data), default=C._json_default))
        return 0

    if not (data / "fix.n5").exists() or not (data / "mov.n5").exists():
        print(f"bench_align: tutorial data not found in {data} (pass --data)")
        return 2
    machine = C.machine_info()
    print(
        f"bench_align: {data}, steps {STEPS}, {args.runs} run(s), {machine['cpu_count']} CPUs, "
        f"{machine['ram_total_gib']} GiB RAM, load {machine['load_average_1_5_15']}",
        flush=True,
    )
    runs = []
    with tempfile.TemporaryDirectory(prefix="lazyreg-bench-align-") as tmp:
        for i in range(args.runs):
            result = Path(tmp) / f"run{i}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--run", "--data", str(data), "--result", str(result)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, env=dict(os.environ, PYTHONHASHSEED="0"))
            if proc.returncode != 0 or not result.exists():
                print(f"run {i + 1} failed (exit code {proc.returncode})")
                return 1
            r = json.loads(result.read_text())
            r["seconds_process"] = time.perf_counter() - t0
            runs.append(r)
            steps = ", ".join(f"{st['step']} {st['seconds_total']:.1f} s" for st in r["steps"])
            print(
                f"  run {i + 1}/{args.runs}: total {r['seconds_total']:.1f} s ({steps}; CPU {r['cpu_seconds_total']:.1f} s), peak RSS "
                f"{r['peak_rss_bytes'] / C.GiB:.2f} GiB, Pearson {r['pearson_before']:.3f} -> {r['pearson_after']:.4f}",
                flush=True,
            )

    names = [st["step"] for st in runs[0]["steps"]]
    summary = {
        "seconds_total_median": C.median(r["seconds_total"] for r in runs),
        "seconds_total_min": min(r["seconds_total"] for r in runs),
        "seconds_total_max": max(r["seconds_total"] for r in runs),
        "cpu_seconds_total_median": C.median(r["cpu_seconds_total"] for r in runs),
        "seconds_per_step_median": {n: C.median(r["steps"][i]["seconds_total"] for r in runs) for i, n in enumerate(names)},
        "seconds_outside_steps_median": C.median(r["seconds_outside_steps"] for r in runs),
        "peak_rss_bytes_median": C.median(r["peak_rss_bytes"] for r in runs),
        "peak_rss_bytes_max": max(r["peak_rss_bytes"] for r in runs),
        "pearson_before": C.median(r["pearson_before"] for r in runs),
        "pearson_after_median": C.median(r["pearson_after"] for r in runs),
        "pearson_after_min": min(r["pearson_after"] for r in runs),
        "same_matrix_every_run": all(r["matrix"] == runs[0]["matrix"] for r in runs),
    }
    if all("vs_reference_mean_voxel_error" in r for r in runs):
        summary["vs_reference_mean_voxel_error_max"] = max(r["vs_reference_mean_voxel_error"] for r in runs)
    med = summary["seconds_per_step_median"]
    summary["speedup_vs_bigstream"] = {
        "total": BIGSTREAM["seconds_total"] / summary["seconds_total_median"],
        "ransac": BIGSTREAM["seconds_ransac"] / med["ransac"] if med.get("ransac") else None,
        "affine": BIGSTREAM["seconds_affine"] / med["affine"] if med.get("affine") else None,
        "peak_rss": BIGSTREAM["peak_rss_gib"] * C.GiB / summary["peak_rss_bytes_max"],
    }
    goals = {
        f"median total <= {GOALS['seconds_total_max']:g} s": summary["seconds_total_median"] <= GOALS["seconds_total_max"],
        f"peak RSS < {GOALS['peak_rss_gib_max']:g} GiB (max over runs)": summary["peak_rss_bytes_max"] < GOALS["peak_rss_gib_max"] * C.GiB,
        f"Pearson after >= {GOALS['pearson_min']:g} (min over runs)": summary["pearson_after_min"] >= GOALS["pearson_min"],
    }
    record = {
        "benchmark": "align tutorial lowres pair (issue 5)",
        "machine": machine,
        "config": {
            "data": str(data),
            "group": "lowres",
            "steps": STEPS,
            "runs": args.runs,
            "how": "each run a separate process: open_image (lazy) + align + .compute() on the default "
            "threaded dask scheduler; peak RSS = getrusage high-water mark of that process",
        },
        "bigstream_reference": BIGSTREAM,
        "goals": GOALS,
        "goals_met": goals,
        "summary": summary,
        "runs": runs,
    }
    record["machine"]["load_average_at_end"] = C.machine_info()["load_average_1_5_15"]
    C.write_json(Path(args.out), record)

    print(f"\nalign tutorial lowres, {args.runs} run(s), medians (bigstream figures from issue 5):\n")
    rows = [["total (open + align + compute)", summary["seconds_total_median"], BIGSTREAM["seconds_total"], summary["speedup_vs_bigstream"]["total"]]]
    for n in names:
        rows.append([f"step {n}", med[n], BIGSTREAM.get(f"seconds_{n}"), summary["speedup_vs_bigstream"].get(n)])
    rows.append(["outside steps (loading, graph)", summary["seconds_outside_steps_median"], None, None])
    rows.append(["CPU seconds, total (2 cores)", summary["cpu_seconds_total_median"], None, None])
    rows.append(["peak RSS GiB (max of runs)", C.gib(summary["peak_rss_bytes_max"]), BIGSTREAM["peak_rss_gib"], summary["speedup_vs_bigstream"]["peak_rss"]])
    print(C.table(rows, ["", "lazyreg", "bigstream", "bigstream / lazyreg"]))
    print(
        f"\nper run total s: {[round(r['seconds_total'], 1) for r in runs]}; Pearson before {summary['pearson_before']:.4f}, "
        f"after {summary['pearson_after_median']:.4f} (min {summary['pearson_after_min']:.4f}); "
        f"same matrix every run: {summary['same_matrix_every_run']}"
    )
    if "vs_reference_mean_voxel_error_max" in summary:
        print(f"mean mapped-point distance to the careful reference: {summary['vs_reference_mean_voxel_error_max']:.2f} voxels")
    for k, v in goals.items():
        print(f"goal {'met' if v else 'NOT met'}: {k}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
