"""Benchmark of ``lazyreg.align_piecewise`` on the real tutorial pair (issue 6).

The established tool (bigstream) needs about 1,700 s and 5 GiB on 2 cores for
``[("ransac", {"blob_sizes": [6, 20], "nspots": 1000}), ("deform", {"control_point_spacing": 128,
"smooth_sigmas": (0.25,), "control_point_levels": (1,), 10 iterations})]`` with blocksize 128 on a
298 x 256 x 256 volume (about 20 M voxels). Goal: >= 10x faster at equal or better accuracy.

Here: the tutorial ``lowres`` pair (149 x 241 x 456, 16 M voxels), opened lazily; global
``align`` (ransac + affine) first, then ``align_piecewise`` with the steps above on top of it, on
the default threaded scheduler (2 cores). Measured: seconds per stage, peak RSS of the process tree,
block outcomes, foreground Pearson correlation of fixed with moving resampled through the affine
alone and through ``[affine, field]``, and the Jacobian determinant of the field (folds).

Usage::

    .venv/bin/python benchmarks/bench_piecewise.py [--blocksize 128] [--data PATH] [--out FILE]

Results: ``benchmarks/results/piecewise.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _common import GiB, RSSSampler, machine_info, write_json  # noqa: E402

BIGSTREAM_SECONDS = 1700.0
BIGSTREAM_GIB = 5.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tutorial")
    ap.add_argument("--blocksize", type=int, default=128)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "piecewise.json")
    args = ap.parse_args()

    import lazyreg
    from lazyreg.align.piecewise import FOREGROUND_LEVEL, FOREGROUND_SIGMA
    from lazyreg.metrics import pearson
    from scipy import ndimage as ndi

    fix = lazyreg.open_image(args.data / "fix.n5", group="lowres")
    mov = lazyreg.open_image(args.data / "mov.n5", group="lowres")
    steps = [
        ("ransac", {"blob_sizes": [6, 20], "nspots": 1000}),
        (
            "deform",
            {
                "control_point_spacing": 128 * min(lazyreg.spacing(fix)),
                "smooth_sigmas": (0.25,),
                "shrink_factors": (1,),
                "control_point_levels": (1,),
                "optimizer_args": {"numberOfIterations": 10},
            },
        ),
    ]
    stages: dict[str, float] = {}
    with RSSSampler() as rss:
        t0 = time.perf_counter()
        A = lazyreg.align(fix, mov, [("ransac", {"blob_sizes": [6, 20]}), ("affine", {})]).compute()
        stages["global align (ransac + affine)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        field = lazyreg.align_piecewise(fix, mov, steps, blocksize=args.blocksize, static_transforms=[A])
        stages["build piecewise graph"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        field = field.compute()
        stages["piecewise (blocks + blended field)"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        det = lazyreg.jacobian_determinant(field).values
        stages["Jacobian determinant"] = time.perf_counter() - t0
    v = fix.values.astype(np.float32)
    p1, p99 = np.percentile(v[::2, ::2, ::2], [1, 99])
    mask = fix.copy(data=ndi.gaussian_filter(v, FOREGROUND_SIGMA) > p1 + FOREGROUND_LEVEL * (p99 - p1))
    r_affine = pearson(fix, lazyreg.apply_transform(fix, mov, [A]), mask)
    r_field = pearson(fix, lazyreg.apply_transform(fix, mov, [A, field]), mask)
    counts = Counter(r["status"] for r in field.report)
    piecewise_s = stages["piecewise (blocks + blended field)"]
    record = {
        "machine": machine_info(),
        "data": str(args.data),
        "shape": list(fix.shape),
        "voxels": int(np.prod(fix.shape)),
        "blocksize": args.blocksize,
        "steps": steps,
        "seconds": {k: round(s, 2) for k, s in stages.items()},
        "peak_rss_gib": round(rss.peak / GiB, 3),
        "blocks": dict(counts),
        "block_rows": field.report,
        "pearson_foreground_affine": r_affine,
        "pearson_foreground_affine_field": r_field,
        "jacobian_min": float(det.min()),
        "jacobian_fraction_nonpositive": float((det <= 0).mean()),
        "bigstream_seconds_20M_voxels": BIGSTREAM_SECONDS,
        "speedup_vs_bigstream_per_voxel": round(
            (BIGSTREAM_SECONDS / 20e6) / (piecewise_s / np.prod(fix.shape)), 1
        ),
    }
    for k, s in stages.items():
        print(f"{k:<40s} {s:8.2f} s")
    print(f"peak RSS (process tree)                  {rss.peak / GiB:8.2f} GiB   (bigstream {BIGSTREAM_GIB} GiB)")
    print(f"blocks {dict(counts)}")
    print(f"foreground Pearson: affine {r_affine:.4f} -> affine + field {r_field:.4f}")
    print(f"Jacobian determinant min {det.min():.3f}, fraction <= 0: {(det <= 0).mean():.2e}")
    print(f"speed-up vs bigstream per voxel: {record['speedup_vs_bigstream_per_voxel']}x")
    write_json(args.out, record)


if __name__ == "__main__":
    main()
