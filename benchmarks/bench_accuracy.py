"""Accuracy benchmark (issues 13 and 17): lazyreg against SimpleITK, ANTs and elastix, same start, same run.

Two pairs whose true transform is known exactly, registered back by every tool from the same
starting affine, scored against the truth, and the real tutorial pair itself, scored by image
similarity:

* ``tutorial``: the real tutorial fixed image (``fix.n5``, group ``lowres``, 149 x 241 x 456 voxels
  of 1.68 x 1.84 x 1.84 um) warped by a known affine (3, -2, 2.5 degrees about z, y, x; scales 1.03,
  0.98, 1.02; shift (4, -6, 5) um, about the centre) after a known smooth displacement field (6
  random plane waves of wavelength 100-200 um, i.e. half-periods of 50-100 um, scaled to at most
  4 voxels = 7.1 um). ``T = [affine, field]`` maps the warped image's points into the tutorial
  image, so the warped image is **fixed** and the tutorial image is **moving**:
  ``fixed = apply_transform(tut, tut, [affine, field])``, ``fixed(x) = moving(T(x))``, i.e. T is the
  fixed -> moving transform in lazyreg's convention, exactly (had the warped image been the moving
  one, the truth would have been T's inverse). Both get Gaussian noise of 3 % of the image's
  1st-99th percentile range (independent seeds), so the pair is not trivially identical.
* ``phantom``: :func:`lazyreg.data.warped_pair` (seeded blobs and tubes rendered analytically on both
  sides; :func:`~lazyreg.data.default_affine`, 8/-5/6 degrees and 5 % scale, after
  :func:`~lazyreg.data.smooth_displacement` of amplitude 4 um), 80 x 192 x 192 voxels of 2 x 1 x 1
  um, noise 0.02; the same convention (its fixed image is the warped one).
* ``real``: the tutorial pair as it is (``fix.n5`` and ``mov.n5``, group ``lowres``; moving has 144
  z planes to fixed's 149): no truth, so no TRE; scored by issue 17's measures (below).

Registration, per pair (each tool in its own subprocess, so that its peak RSS and CPU time are its own):

* ``lazyreg global``: ``align(fixed, moving, [("ransac", {"blob_sizes": ...}), ("affine", {})])``:
  the starting affine ``A`` of every tool below.
* ``lazyreg default``: ``align_piecewise(fixed, moving, blocksize=..., static_transforms=[A])`` with
  its default options (``quality="best"``: ``lazyreg.registration.piecewise.DEFAULT_STEPS``, and the
  whole-image coarse B-spline first, :mod:`lazyreg.registration.coarse`, each block going on from the
  static transforms or from them and the coarse field, whichever its first step fitted better).
  Blocksize 128 (phantom: 64).
* ``lazyreg default (blocksize 64)``, tutorial pairs only, with ``--small-blocks``: the same on blocks
  half as large.
* ``lazyreg default steps, coarse=False``: the blocks alone (the default until the sixth session of
  2026-12-01).
* ``lazyreg balanced`` / ``lazyreg fast``: ``align_piecewise(..., quality="balanced" | "fast")``
  (the demons alone; the demons at a quarter resolution), same blocksize: the same-run comparison of
  the presets (the default is ``quality="best"``).
* ``lazyreg bspline`` (``--former``): the default steps before demons (2026-11: an affine, then a
  B-spline with 3 mesh intervals across the block's region on 20 000 samples), same blocksize.
* ``lazyreg bigstream``: bigstream's tutorial steps (ransac + deform, control points every 128 um,
  10 iterations) at blocksize 128 (phantom: 64), as ``bench_piecewise.py``; with ``--small-blocks``
  also at blocksize 64 on the tutorial pairs (README snippet 2's settings when issue 13 was filed).
* ``sitk bspline``: SimpleITK's ``ImageRegistrationMethod`` on the whole volume in memory, written
  here: cubic B-spline with control points every 50 um, correlation metric, LBFGSB (30 iterations
  per level), 3 levels (shrink 4, 2, 1; random samples 5, 1, 0.25 %), ``A`` as the moving initial
  transform.
* ``ants SyN`` (antspyx, when importable): ``ants.registration(type_of_transform="SyN")`` with its
  default settings (its own affine stage, then SyN 40/20/0, Mattes MI) and ``A`` as the initial
  transform; with ``--ants-full`` also SyN 40/20/10 (full resolution too; issue 17's best ANTs row),
  tutorial pairs only.
* ``elastix bspline`` (itk-elastix, when importable): elastix's default B-spline parameter map
  (Mattes MI, adaptive stochastic gradient descent) with 3 resolutions and a 20 um final grid, ``A``
  as the initial transform (``--quick``: 64 iterations per resolution instead of 256).

Every result is converted to lazyreg's transform list ``[A, D]`` with ``D`` a
:class:`lazyreg.DisplacementField` on the fixed grid (for ANTs and elastix, which refine the affine
themselves, ``D = A^-1 o T_tool - id``, so that ``[A, D]`` equals the tool's whole transform). The
conversions are checked on a known case (the initial affine alone through the same path) and on the
result (points mapped by the tool itself, and the tool's own resampled image against lazyreg's
resampling through ``[A, D]``); a failed check makes the script exit 1.

Scores, per pair and tool: target registration error against the truth (um and fixed voxels: mean,
95th percentile, max) over detected fixed blobs (:func:`lazyreg.registration.blobs.detect_blobs`)
and over a lattice of points inside the tissue (fixed, Gaussian-smoothed by 2 voxels, above its 1st
percentile + 5 % of the 1st-99th range); Pearson correlation of fixed with moving resampled through
the estimate, over the whole grid, over the fixed tissue, and over voxels where both images are
tissue (the resampled moving smoothed the same way, above moving's own level: outside moving's
field of view is not tissue); the Dice of the two tissue masks, and of the two images' bright
structures (each smoothed image above its own Otsu threshold: the tutorial tissue fills ~94 % of the
view, so its tissue Dice mostly measures field-of-view overlap); blob correspondence (the fraction
of fixed blobs the estimate maps within one voxel of a blob detected in moving on its own, and the
median distance: needs no truth, so it judges the real pair too); Jacobian determinant of ``D`` (min,
max, folded fraction); wall seconds, CPU seconds and peak RSS of the registration; for lazyreg's
piecewise configurations, block outcomes and starts, and (known truth) blocks whose own TRE got
worse than the affine's.

Usage::

    .venv/bin/python benchmarks/bench_accuracy.py            # three pairs, all tools (~25 min on 2 idle cores)
    .venv/bin/python benchmarks/bench_accuracy.py --small-blocks --ants-full   # + blocksize 64, ANTs 40/20/10
    .venv/bin/python benchmarks/bench_accuracy.py --quick    # small crops (~2-3 min)
    .venv/bin/python benchmarks/bench_accuracy.py --tools lazyreg,sitk --pairs tutorial --data PATH --out FILE

ANTs and elastix: ``pip install 'lazyreg[compare]'`` (antspyx, itk-elastix); a tool that is not
importable is listed as "not installed". Results: ``benchmarks/results/accuracy.json``
(``--quick``: ``$TMPDIR/lazyreg-bench-accuracy-quick.json``, so a smoke run never replaces the
recorded results; ``--out`` to choose). Exit 1 only when results are wrong (a conversion check
or the truth check fails, or lazyreg fails to run), never on speed.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _common as C  # noqa: E402

SEED = 13
THREADS = 2
NOISE_TUTORIAL = 0.03  # of the 1st-99th percentile range
NOISE_PHANTOM = 0.02  # of the brightest object (lazyreg.data convention)
AMPLITUDE_VOXELS = 4.0  # largest displacement of the tutorial truth field, in (mean) voxels
WAVELENGTHS_UM = (100.0, 200.0)
N_MODES = 6
TRUTH_FIELD_FACTOR = 4  # the truth field lives on a grid 4x coarser than the fixed one
TUTORIAL_AFFINE = {"rotation": (3.0, -2.0, 2.5), "scale": (1.03, 0.98, 1.02), "translation": (4.0, -6.0, 5.0)}
PHANTOM_SHAPE, PHANTOM_SHAPE_QUICK = (80, 192, 192), (32, 64, 64)
PHANTOM_SPACING = (2.0, 1.0, 1.0)
PHANTOM_AMPLITUDE = 4.0
TUTORIAL_CROP_QUICK = (slice(50, 98), slice(72, 168), slice(180, 276))  # 48 x 96 x 96
BLOB_SIZES = {"tutorial": [6, 20], "phantom": [2, 8], "real": [6, 20]}
BLOCKSIZE = {"tutorial": 128, "phantom": 64, "real": 128}
BLOCKSIZE_QUICK = {"tutorial": 48, "phantom": 32, "real": 48}
#: align_piecewise's foreground_fraction: the default (0.5) on the tutorial; the phantom's tissue is
#: sparse (30 % of the volume), and with 0.5 every one of its blocks is skipped (no field at all)
FOREGROUND_FRACTION = {"tutorial": None, "phantom": 0.1, "real": None}
LATTICE_STEP = {"tutorial": 4, "phantom": 2, "real": 4}
#: align_piecewise's default steps until 2026-12 (issue 13), kept as a same-run comparison
BSPLINE_STEPS = [
    ("affine", {"shrink_factors": (2, 1)}),
    ("deform", {"mesh_size": 3, "shrink_factors": (1,), "samples": 20_000, "optimizer_args": {"numberOfIterations": 20}}),
]
SITK = {
    # one mesh for all levels: SimpleITK 2.5's SetInitialTransformAsBSpline refinement breaks LBFGSB
    # ("Size of scales must equal number of local parameters")
    "control_point_spacing_um": 50.0,
    "shrink_factors": (4, 2, 1),
    "smoothing_sigmas_voxels": (2.0, 1.0, 0.0),
    # random samples per level: 13 k, 20 k and 41 k points on the tutorial (16 M voxels). The cost is
    # per evaluation ~ samples x parameters (ITK's B-spline Jacobian is dense: 5,760 parameters there);
    # (0.1, 0.05, 0.02) took > 13 min wall at load 5, (0.05, 0.02, 0.005) 625 CPU s
    "sampling_percentage": (0.05, 0.01, 0.0025),
    "iterations": 30,
}
ELASTIX = {"map": "bspline", "resolutions": 3, "final_grid_spacing_um": 20.0}
ELASTIX_QUICK_ITERATIONS = 64  # --quick only (the map's default is 256 per resolution)
ANTS = {"type_of_transform": "SyN", "note": "antspyx defaults: affine stage (2100/1200/1200/10 at shrink 6/4/2/1) then SyN (40/20/0), Mattes"}
ANTS_FULL_ITERATIONS = (40, 20, 10)  # --ants-full: SyN at full resolution too (issue 17's best ANTs row)
TOOLS = ("lazyreg", "sitk", "ants", "elastix")
PAIRS = ("tutorial", "phantom", "real")
CHECK_POINTS_TOL_VOXELS = 0.05  # field vs the tool's own point mapping
CHECK_KNOWN_TOL_UM = 1e-3  # the initial affine alone through a tool's conversion path
CHECK_IMAGE_MIN_PEARSON = 0.999  # the tool's own resampled image vs lazyreg's through [A, D]


def peak_rss() -> int:
    """Peak RSS of this process (``VmHWM``, bytes). Not ``getrusage``'s ``ru_maxrss``: Linux carries it
    over fork + exec, so a worker would report at least the parent's RSS at the time it was started."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return C.self_maxrss()


def lazyreg_identity() -> dict:
    """Which lazyreg ran: the git commit, whether the tree was dirty, and md5s of the registration code."""
    import hashlib

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.rstrip()
        except (OSError, subprocess.SubprocessError):
            return None

    files = sorted((ROOT / "lazyreg" / "registration").glob("*.py")) + [ROOT / "lazyreg" / "resample.py"]
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "dirty_files": [ln[3:] for ln in (git("status", "--porcelain", "--", "lazyreg") or "").splitlines()],
        "md5": {str(f.relative_to(ROOT)): hashlib.md5(f.read_bytes()).hexdigest()[:10] for f in files},
    }


def bigstream_steps(pair: str) -> list:
    return [
        ("ransac", {"blob_sizes": BLOB_SIZES[pair], "nspots": 1000}),
        (
            "deform",
            {
                "control_point_spacing": 128.0,  # physical (um), as bigstream (see bench_piecewise.py)
                "smooth_sigmas": (0.25,),
                "shrink_factors": (1,),
                "control_point_levels": (1,),
                "optimizer_args": {"numberOfIterations": 10},
            },
        ),
    ]


# ------------------------------------------------------------------------------------------ pairs


def coarse_grid(g, factor: int):
    """A grid ``factor`` times coarser than ``g`` whose voxel centres cover all of ``g``'s."""
    import lazyreg

    shape = tuple(int(np.ceil((n - 1) / factor)) + 1 for n in g.shape)
    return lazyreg.Grid(shape, tuple(s * factor for s in g.spacing), g.origin)


def plane_waves(points: np.ndarray, seed: int, amplitude: float) -> np.ndarray:
    """Sum of N_MODES random plane waves (wavelengths in WAVELENGTHS_UM), unscaled; zyx physical."""
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(N_MODES, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    k = 2 * np.pi * dirs / rng.uniform(*WAVELENGTHS_UM, size=(N_MODES, 1))
    amps = rng.normal(size=(N_MODES, 3))
    phase = rng.uniform(0, 2 * np.pi, size=N_MODES)
    d = np.zeros(points.shape, dtype=np.float64)
    for m in range(N_MODES):
        d += amps[m] * np.sin(points @ k[m] + phase[m])[:, None]
    return d * amplitude


def _noisy(values: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    v = values.astype(np.float32) + rng.normal(0.0, sigma, size=values.shape).astype(np.float32)
    return np.clip(np.rint(v), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def tutorial_truth(tut) -> list:
    """The known transform ``[A_true, D_true]`` of the tutorial pair, on the image ``tut``'s grid:
    :data:`TUTORIAL_AFFINE` about the grid centre, and :func:`plane_waves` on a grid
    :data:`TRUTH_FIELD_FACTOR` times coarser, scaled to :data:`AMPLITUDE_VOXELS` (mean) voxels."""
    import lazyreg

    sp = lazyreg.spacing(tut)
    g = lazyreg.Grid(tut.shape, sp, lazyreg.origin(tut))
    lo, hi = g.extent
    A_true = lazyreg.Affine.from_parameters(center=(lo + hi) / 2, **TUTORIAL_AFFINE)
    fg = coarse_grid(g, TRUTH_FIELD_FACTOR)
    pts = fg.to_physical(np.indices(fg.shape).reshape(3, -1).T)
    d = plane_waves(pts, SEED, 1.0)
    d *= AMPLITUDE_VOXELS * float(np.exp(np.mean(np.log(sp)))) / np.linalg.norm(d, axis=1).max()
    D_true = lazyreg.DisplacementField.from_array(d.reshape(fg.shape + (3,)).astype(np.float32), fg.spacing, fg.origin)
    return [A_true, D_true]


def tutorial_noise_sigma(values: np.ndarray) -> float:
    """Standard deviation of the noise added to the tutorial pairs: :data:`NOISE_TUTORIAL` of the
    1st-99th percentile range."""
    p1, p99 = np.percentile(values[::2, ::2, ::2], [1, 99])
    return NOISE_TUTORIAL * float(p99 - p1)


def tutorial_pair(data: Path, quick: bool) -> dict:
    import lazyreg

    tut = lazyreg.open_image(data / "fix.n5", group="lowres")
    if quick:
        tut = tut.isel(z=TUTORIAL_CROP_QUICK[0], y=TUTORIAL_CROP_QUICK[1], x=TUTORIAL_CROP_QUICK[2])
    tut = tut.compute()
    sp, org = lazyreg.spacing(tut), lazyreg.origin(tut)
    truth = tutorial_truth(tut)
    A_true, D_true = truth
    fg = D_true.grid
    d = D_true.values.reshape(-1, 3)
    warped = lazyreg.apply_transform(tut, tut, truth).values
    v = tut.values
    sigma = tutorial_noise_sigma(v)
    return {
        "fixed": _noisy(warped, sigma, SEED + 1),
        "moving": _noisy(v, sigma, SEED + 2),
        "spacing": tuple(float(s) for s in sp),
        "origin": tuple(float(o) for o in org),
        "truth": truth,
        "description": {
            "source": str(data / "fix.n5") + ":lowres" + (f" crop {[(s.start, s.stop) for s in TUTORIAL_CROP_QUICK]}" if quick else ""),
            "fixed": "tutorial fix.n5 warped by the truth [A, D] (apply_transform(tut, tut, [A, D])) + noise",
            "moving": "tutorial fix.n5 + noise",
            "truth_affine": {**TUTORIAL_AFFINE, "center": "grid centre", "matrix": np.asarray(A_true.matrix).tolist()},
            "truth_field": {
                "kind": f"{N_MODES} random plane waves, wavelengths {WAVELENGTHS_UM} um, seed {SEED}",
                "max_norm_um": float(np.linalg.norm(d, axis=1).max()),
                "max_norm_voxels_mean_spacing": AMPLITUDE_VOXELS,
                "grid": {"shape": list(fg.shape), "spacing": list(fg.spacing)},
            },
            "noise_sigma": sigma,
            "noise": f"{NOISE_TUTORIAL} x (p99 - p1) = {sigma:.1f} grey levels, independent seeds",
        },
    }


def phantom_pair(quick: bool) -> dict:
    import lazyreg

    shape = PHANTOM_SHAPE_QUICK if quick else PHANTOM_SHAPE
    fixed, moving, m, d = lazyreg.data.warped_pair(
        shape, PHANTOM_SPACING, amplitude=PHANTOM_AMPLITUDE, seed=SEED, noise=NOISE_PHANTOM
    )
    sp, org = lazyreg.spacing(fixed), lazyreg.origin(fixed)
    truth = [lazyreg.Affine(m), lazyreg.DisplacementField.from_array(d.astype(np.float32), sp, org)]
    return {
        "fixed": fixed.values,
        "moving": moving.values,
        "spacing": tuple(float(s) for s in sp),
        "origin": tuple(float(o) for o in org),
        "truth": truth,
        "description": {
            "source": f"lazyreg.data.warped_pair({shape}, {PHANTOM_SPACING}, amplitude={PHANTOM_AMPLITUDE}, seed={SEED}, noise={NOISE_PHANTOM})",
            "truth_affine": {"kind": "lazyreg.data.default_affine", "matrix": np.asarray(m).tolist()},
            "truth_field": {"kind": "lazyreg.data.smooth_displacement", "max_norm_um": float(np.linalg.norm(d, axis=-1).max())},
        },
    }


def real_pair(data: Path, quick: bool) -> dict:
    """The tutorial pair itself (``fix.n5`` / ``mov.n5``, group ``lowres``): no truth, scored by
    image similarity (issue 17's measures) only."""
    import lazyreg

    fix = lazyreg.open_image(data / "fix.n5", group="lowres")
    mov = lazyreg.open_image(data / "mov.n5", group="lowres")
    if quick:
        crop = dict(zip("zyx", TUTORIAL_CROP_QUICK))
        fix, mov = fix.isel(**crop), mov.isel(**crop)
    fix, mov = fix.compute(), mov.compute()
    for name, im in (("moving", mov),):
        if not (np.allclose(lazyreg.spacing(im), lazyreg.spacing(fix)) and np.allclose(lazyreg.origin(im), lazyreg.origin(fix))):
            raise SystemExit(f"real pair: the {name} image's spacing/origin differ from fixed's; the workers assume one")
    return {
        "fixed": fix.values,
        "moving": mov.values,
        "spacing": tuple(float(s) for s in lazyreg.spacing(fix)),
        "origin": tuple(float(o) for o in lazyreg.origin(fix)),
        "truth": None,
        "description": {
            "source": f"{data / 'fix.n5'}:lowres and {data / 'mov.n5'}:lowres"
            + (f" crop {[(s.start, s.stop) for s in TUTORIAL_CROP_QUICK]}" if quick else ""),
            "fixed_shape": list(fix.shape),
            "moving_shape": list(mov.shape),
            "truth": "none: scored by Pearson (all, fixed tissue, both tissue) and the Dice of the tissue masks",
        },
    }


PAIR_BUILDERS = {"tutorial": lambda a: tutorial_pair(a.data, a.quick), "phantom": lambda a: phantom_pair(a.quick),
                 "real": lambda a: real_pair(a.data, a.quick)}


# ------------------------------------------------------------------------------------------ workers
# Each runs in its own process: loads the pair (npy), runs one tool, writes D (npy) and a JSON record.


def _load_pair(work: Path):
    import lazyreg

    meta = json.loads((work / "pair.json").read_text())
    fixed = lazyreg.image(np.load(work / "fixed.npy"), meta["spacing"], meta["origin"])
    moving = lazyreg.image(np.load(work / "moving.npy"), meta["spacing"], meta["origin"])
    return meta, fixed, moving


def _to_sitk(values: np.ndarray, spacing, origin):
    import SimpleITK as sitk

    im = sitk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
    im.SetSpacing(tuple(float(s) for s in spacing[::-1]))
    im.SetOrigin(tuple(float(o) for o in origin[::-1]))
    return im


def _fixed_points(shape, spacing, origin, z: int) -> np.ndarray:
    yy, xx = np.meshgrid(np.arange(shape[1]), np.arange(shape[2]), indexing="ij")
    idx = np.stack([np.full(yy.size, z), yy.ravel(), xx.ravel()], -1)
    return idx * np.asarray(spacing) + np.asarray(origin)


def relative_field(total: np.ndarray, A: np.ndarray, spacing, origin) -> np.ndarray:
    """``D = A^-1 o T - id`` on the fixed grid from the total displacement ``T(x) - x`` (zyx), by z slab."""
    Ainv = np.linalg.inv(A)
    out = np.empty(total.shape, dtype=np.float32)
    for z in range(total.shape[0]):
        p = _fixed_points(total.shape[:3], spacing, origin, z)
        q = p + total[z].reshape(-1, 3)
        out[z] = (q @ Ainv[:3, :3].T + Ainv[:3, 3] - p).reshape(total.shape[1:])
    return out


def _random_points(shape, spacing, origin, n: int, margin: int = 3) -> np.ndarray:
    rng = np.random.default_rng(SEED)
    idx = rng.uniform(margin, np.asarray(shape) - 1 - margin, size=(n, 3))
    return idx * np.asarray(spacing) + np.asarray(origin)


def _image_check(tool_image: np.ndarray, fixed, moving, A: np.ndarray, D: np.ndarray, margin: int = 5) -> dict:
    """The tool's own resampled moving image against lazyreg's resampling through ``[A, D]``."""
    import lazyreg

    est = [lazyreg.Affine(A), lazyreg.DisplacementField.from_array(D, lazyreg.spacing(fixed), lazyreg.origin(fixed))]
    mine = lazyreg.apply_transform(fixed, moving.astype(np.float32), est).values
    inner = (slice(margin, -margin),) * 3
    a, b = np.asarray(tool_image, dtype=np.float64)[inner], mine.astype(np.float64)[inner]
    r = float(np.corrcoef(a.ravel(), b.ravel())[0, 1])
    return {
        "pearson_tool_vs_lazyreg_resampling": r,
        "max_abs_diff": float(np.abs(a - b).max()),
        "p99_abs_diff": float(np.percentile(np.abs(a - b), 99)),
        "ok": bool(r >= CHECK_IMAGE_MIN_PEARSON),
    }


def worker_global(work: Path, spec: dict) -> dict:
    import lazyreg

    meta, fixed, moving = _load_pair(work)
    steps = [("ransac", {"blob_sizes": BLOB_SIZES[spec["pair"]]}), ("affine", {})]
    rec: dict = {"steps": steps, "rss_before_bytes": C.current_rss()}
    with C.timer(rec):
        A = lazyreg.align(fixed, moving, steps).compute()
    rec["peak_rss_bytes"] = peak_rss()
    np.save(work / "A.npy", np.asarray(A.matrix))
    rec["report"] = A.report
    return rec


def worker_lazyreg(work: Path, spec: dict) -> dict:
    import lazyreg

    meta, fixed, moving = _load_pair(work)
    A = lazyreg.Affine(np.load(work / "A.npy"))
    half = spec["config"].endswith("-half")
    bs = tuple(min(spec["blocksize"] // (2 if half else 1), n) for n in fixed.shape)
    ff = FOREGROUND_FRACTION[spec["pair"]]
    kw = {"blocksize": bs, "static_transforms": [A], **({} if ff is None else {"foreground_fraction": ff})}
    rec: dict = {"rss_before_bytes": C.current_rss(), "foreground_fraction": ff or "default"}
    with C.timer(rec):
        if spec["config"] in ("default", "default-half"):
            field = lazyreg.align_piecewise(fixed, moving, **kw)
            rec["steps"] = "align_piecewise default steps"
        elif spec["config"] in ("balanced", "fast"):
            field = lazyreg.align_piecewise(fixed, moving, quality=spec["config"], **kw)
            rec["steps"] = f"quality={spec['config']}"
        elif spec["config"] == "local":
            from lazyreg.registration.piecewise import DEFAULT_STEPS

            (name, opts), rest = DEFAULT_STEPS[-1], DEFAULT_STEPS[:-1]
            rec["steps"] = [*rest, (name, {**opts, "intensity": "local"})]
            field = lazyreg.align_piecewise(fixed, moving, rec["steps"], coarse=True, **kw)
        elif spec["config"] == "nocoarse":
            field = lazyreg.align_piecewise(fixed, moving, coarse=False, **kw)
            rec["steps"] = "align_piecewise default steps, coarse=False"
        else:
            rec["steps"] = BSPLINE_STEPS if spec["config"] == "bspline" else bigstream_steps(spec["pair"])  # bigstream[-half]
            field = lazyreg.align_piecewise(fixed, moving, rec["steps"], **kw)
        # the block cores in fixed voxels (the field's own chunks are on its grid, every 2nd voxel)
        rec["chunks"] = [[b] * (n // b) + ([n % b] if n % b else []) for b, n in zip(bs, fixed.shape)]
        field = field.compute()
    rec["peak_rss_bytes"] = peak_rss()
    rec["blocksize"] = list(bs)
    np.save(work / "field.npy", np.asarray(field.values, dtype=np.float32))
    # align_piecewise's field grid is not the fixed grid (every 2nd fixed voxel by default)
    rec["field_grid"] = {"spacing": list(field.grid.spacing), "origin": list(field.grid.origin)}
    rec["block_rows"] = field.report
    return rec


def worker_sitk(work: Path, spec: dict) -> dict:
    import SimpleITK as sitk

    import lazyreg

    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(THREADS)
    meta, fixed, moving = _load_pair(work)
    A = np.load(work / "A.npy")
    sp, org = meta["spacing"], meta["origin"]
    F, M = _to_sitk(fixed.values, sp, org), _to_sitk(moving.values, sp, org)
    extent = np.asarray(F.GetSize()) * np.asarray(F.GetSpacing())
    mesh = [max(1, int(round(e / SITK["control_point_spacing_um"]))) for e in extent]
    rec: dict = {"settings": {**SITK, "initial_mesh_xyz": mesh, "metric": "correlation", "optimizer": "LBFGSB"},
                 "rss_before_bytes": C.current_rss()}
    with C.timer(rec):
        tx = sitk.BSplineTransformInitializer(F, mesh, 3)
        R = sitk.ImageRegistrationMethod()
        R.SetMetricAsCorrelation()
        R.SetMetricSamplingStrategy(R.RANDOM)
        R.SetMetricSamplingPercentagePerLevel(list(SITK["sampling_percentage"]), SEED)
        R.SetInterpolator(sitk.sitkLinear)
        n = SITK["iterations"]
        R.SetOptimizerAsLBFGSB(gradientConvergenceTolerance=1e-5, numberOfIterations=n,
                               maximumNumberOfCorrections=5, maximumNumberOfFunctionEvaluations=2 * n,
                               costFunctionConvergenceFactor=1e7)
        R.SetShrinkFactorsPerLevel(list(SITK["shrink_factors"]))
        R.SetSmoothingSigmasPerLevel(list(SITK["smoothing_sigmas_voxels"]))
        R.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
        R.SetMovingInitialTransform(lazyreg.Affine(A).to_sitk())
        R.SetInitialTransform(tx, inPlace=True)
        out = R.Execute(F, M)
    rec["peak_rss_bytes"] = peak_rss()
    rec["optimizer_stop"] = R.GetOptimizerStopConditionDescription()
    rec["metric_value"] = R.GetMetricValue()
    bs = out.Downcast() if hasattr(out, "Downcast") else out
    with C.timer(rec, "convert_seconds"):
        img = sitk.TransformToDisplacementField(bs, sitk.sitkVectorFloat64, F.GetSize(), F.GetOrigin(),
                                                F.GetSpacing(), F.GetDirection())
        D = lazyreg.DisplacementField.from_sitk(img)
        Dv = np.asarray(D.values, dtype=np.float32)
    del img
    # checks: the field against the B-spline's own point mapping; sitk's resampling against lazyreg's
    q = _random_points(fixed.shape, sp, org, 500)
    ref = np.array([bs.TransformPoint(tuple(float(v) for v in p[::-1])) for p in q])[:, ::-1]
    err = np.abs(D(q) - ref) / np.asarray(sp)
    comp = sitk.CompositeTransform([lazyreg.Affine(A).to_sitk(), bs])  # ITK: the last added first -> A(B(x))
    tool_img = sitk.GetArrayFromImage(sitk.Resample(M, F, comp, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    rec["checks"] = {
        "field_vs_tool_points_max_voxels": float(err.max()),
        "field_vs_tool_points_ok": bool(err.max() <= CHECK_POINTS_TOL_VOXELS),
        "image": _image_check(tool_img, fixed, moving, A, Dv),
    }
    np.save(work / "field.npy", Dv)
    return rec


def worker_ants(work: Path, spec: dict) -> dict:
    import ants
    import pandas as pd
    import SimpleITK as sitk

    import lazyreg

    meta, fixed, moving = _load_pair(work)
    A = np.load(work / "A.npy")
    sp, org = meta["spacing"], meta["origin"]

    def to_ants(values):  # ANTs arrays are indexed (x, y, z): transpose, and reverse spacing/origin
        return ants.from_numpy(np.ascontiguousarray(np.asarray(values, dtype=np.float32).transpose(2, 1, 0)),
                               origin=tuple(org[::-1]), spacing=tuple(sp[::-1]))

    F, M = to_ants(fixed.values), to_ants(moving.values)
    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=A[:3, :3][::-1, ::-1],
                                    translation=A[:3, 3][::-1], center=(0.0, 0.0, 0.0))
    tmp = work / "ants"
    tmp.mkdir(exist_ok=True)
    init = str(tmp / "initial.mat")
    ants.write_transform(tx, init)
    ants.config._random_seed = SEED  # passed as --random-seed (ants.set_ants_deterministic would force 1 thread)
    kw = {"reg_iterations": ANTS_FULL_ITERATIONS} if spec.get("config") == "full" else {}
    rec: dict = {"settings": {**ANTS, **kw}, "rss_before_bytes": C.current_rss(), "version": metadata.version("antspyx")}
    with C.timer(rec):
        reg = ants.registration(F, M, type_of_transform=ANTS["type_of_transform"], initial_transform=[init],
                                outprefix=str(tmp / "reg_"), **kw)
    rec["peak_rss_bytes"] = peak_rss()
    rec["fwdtransforms"] = [Path(p).name for p in reg["fwdtransforms"]]

    def compose(transforms, prefix):  # ANTs' list (the last applied first to points) -> one total field
        path = ants.apply_transforms(F, M, transforms, compose=str(tmp / prefix))
        return np.asarray(lazyreg.DisplacementField.from_sitk(sitk.ReadImage(path)).values, dtype=np.float64)

    q = _random_points(fixed.shape, sp, org, 500)
    # known case: the initial affine alone through the same path must give A
    known = lazyreg.DisplacementField.from_array(compose([init], "known_"), sp, org)
    known_err = float(np.abs(known(q) - lazyreg.Affine(A)(q)).max())
    with C.timer(rec, "convert_seconds"):
        total = compose(reg["fwdtransforms"], "total_")
        Dtot = lazyreg.DisplacementField.from_array(total, sp, org)
        Dv = relative_field(total, A, sp, org)
    ref = ants.apply_transforms_to_points(3, pd.DataFrame(q[:, ::-1], columns=["x", "y", "z"]), reg["fwdtransforms"])
    err = np.abs(Dtot(q) - ref[["x", "y", "z"]].values[:, ::-1]) / np.asarray(sp)
    del total, Dtot
    tool_img = reg["warpedmovout"].numpy().transpose(2, 1, 0)
    rec["checks"] = {
        "known_initial_affine_max_um": known_err,
        "known_initial_affine_ok": bool(known_err <= CHECK_KNOWN_TOL_UM),
        "field_vs_tool_points_max_voxels": float(err.max()),
        "field_vs_tool_points_ok": bool(err.max() <= CHECK_POINTS_TOL_VOXELS),
        "image": _image_check(tool_img, fixed, moving, A, Dv),
    }
    np.save(work / "field.npy", Dv)
    return rec


def worker_elastix(work: Path, spec: dict) -> dict:
    import itk

    import lazyreg

    meta, fixed, moving = _load_pair(work)
    A = np.load(work / "A.npy")
    sp, org = meta["spacing"], meta["origin"]

    def to_itk(values):  # itk's numpy bridge is zyx like SimpleITK's; spacing and origin are xyz
        im = itk.GetImageFromArray(np.ascontiguousarray(values, dtype=np.float32))
        im.SetSpacing(tuple(float(s) for s in sp[::-1]))
        im.SetOrigin(tuple(float(o) for o in org[::-1]))
        return im

    F, M = to_itk(fixed.values), to_itk(moving.values)
    init = itk.AffineTransform[itk.D, 3].New()
    init.SetMatrix(itk.matrix_from_array(np.ascontiguousarray(A[:3, :3][::-1, ::-1])))
    init.SetTranslation([float(v) for v in A[:3, 3][::-1]])
    po = itk.ParameterObject.New()
    pm = po.GetDefaultParameterMap(ELASTIX["map"], ELASTIX["resolutions"], ELASTIX["final_grid_spacing_um"])
    pm["FinalBSplineInterpolationOrder"] = ["1"]  # linear output image, to compare with lazyreg's resampling
    if spec["quick"]:
        pm["MaximumNumberOfIterations"] = [str(ELASTIX_QUICK_ITERATIONS)]
    po.AddParameterMap(pm)
    rec: dict = {"settings": {**ELASTIX, "parameter_map": {k: list(v) for k, v in dict(pm).items()}},
                 "rss_before_bytes": C.current_rss(), "version": metadata.version("itk-elastix")}

    def field_of(transform) -> np.ndarray:  # an ITK transform -> total displacement (zyx) on the fixed grid
        FT = itk.Image[itk.Vector[itk.F, 3], 3]
        flt = itk.TransformToDisplacementFieldFilter[FT, itk.D].New()
        flt.SetTransform(transform)
        flt.SetReferenceImage(F)
        flt.SetUseReferenceImage(True)
        flt.Update()
        return np.ascontiguousarray(itk.GetArrayFromImage(flt.GetOutput())[..., ::-1], dtype=np.float64)

    with C.timer(rec):
        reg = itk.ElastixRegistrationMethod[type(F), type(M)].New(fixed_image=F, moving_image=M, parameter_object=po,
                                                                   log_to_console=False)
        reg.SetInitialTransform(init)
        reg.Update()
    rec["peak_rss_bytes"] = peak_rss()
    q = _random_points(fixed.shape, sp, org, 500)
    known = lazyreg.DisplacementField.from_array(field_of(init), sp, org)
    known_err = float(np.abs(known(q) - lazyreg.Affine(A)(q)).max())
    with C.timer(rec, "convert_seconds"):
        ct = reg.GetCombinationTransform()  # the initial affine and elastix's B-spline, as one transform
        total = field_of(ct)
        Dtot = lazyreg.DisplacementField.from_array(total, sp, org)
        Dv = relative_field(total, A, sp, org)
    ref = np.array([ct.TransformPoint([float(v) for v in p[::-1]]) for p in q])[:, ::-1]
    err = np.abs(Dtot(q) - ref) / np.asarray(sp)
    del total, Dtot
    tool_img = itk.GetArrayFromImage(reg.GetOutput())
    rec["checks"] = {
        "known_initial_affine_max_um": known_err,
        "known_initial_affine_ok": bool(known_err <= CHECK_KNOWN_TOL_UM),
        "field_vs_tool_points_max_voxels": float(err.max()),
        "field_vs_tool_points_ok": bool(err.max() <= CHECK_POINTS_TOL_VOXELS),
        "image": _image_check(tool_img, fixed, moving, A, Dv),
    }
    np.save(work / "field.npy", Dv)
    return rec


WORKERS = {"global": worker_global, "lazyreg": worker_lazyreg, "sitk": worker_sitk, "ants": worker_ants,
           "elastix": worker_elastix}


def run_worker(spec: dict) -> int:
    work = Path(spec["work"])
    rec = WORKERS[spec["tool"]](work, spec)
    rec["cpu_seconds_process"] = C.cpu_seconds()
    Path(spec["result"]).write_text(json.dumps(rec, default=C._json_default))
    return 0


def spawn(spec: dict, timeout: float) -> tuple[dict | None, str | None]:
    """Run one worker in a subprocess; (its record, None) or (None, why it failed)."""
    spec = dict(spec, result=str(Path(spec["work"]) / f"result-{spec['tool']}-{spec.get('config', '')}.json"))
    env = dict(os.environ, ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS=str(THREADS), OMP_NUM_THREADS=str(THREADS),
               ANTS_RANDOM_SEED=str(SEED), PYTHONWARNINGS="ignore")
    try:
        p = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], env=env, capture_output=True,
                           text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout:.0f} s"
    if p.returncode != 0:
        tail = [ln for ln in (p.stderr or "").strip().splitlines() if ln.strip()][-3:]
        return None, f"exit {p.returncode}: " + " | ".join(tail)[-400:]
    return json.loads(Path(spec["result"]).read_text()), None


# ------------------------------------------------------------------------------------------ scoring


def tissue_level(values: np.ndarray) -> float:
    """The tissue threshold of an image (applied after a Gaussian of FOREGROUND_SIGMA voxels): its 1st
    percentile + FOREGROUND_LEVEL of the 1st-99th percentile range, as ``align_piecewise``'s foreground."""
    from lazyreg.registration.block_align import FOREGROUND_LEVEL

    p1, p99 = np.percentile(np.asarray(values, dtype=np.float32)[::2, ::2, ::2], [1, 99])
    return float(p1 + FOREGROUND_LEVEL * (p99 - p1))


def bright_level(values: np.ndarray) -> float:
    """Otsu's threshold of an image smoothed by FOREGROUND_SIGMA voxels (on every 2nd voxel): its
    bright structures, whose overlap (Dice) tells alignment apart where the tissue fills the view.
    Meaningful on the real pair only: the known-truth pairs' fixed image is a warped one whose empty
    margins become Otsu's dark class there (their TRE is the measure)."""
    from scipy import ndimage as ndi
    from skimage.filters import threshold_otsu

    from lazyreg.registration.block_align import FOREGROUND_SIGMA

    return float(threshold_otsu(ndi.gaussian_filter(np.asarray(values, dtype=np.float32), FOREGROUND_SIGMA)[::2, ::2, ::2]))


def _summary(d: np.ndarray) -> dict:
    d = np.asarray(d, dtype=float)
    if d.size == 0:
        return {"mean": None, "p95": None, "max": None, "n": 0}
    return {"mean": float(d.mean()), "p95": float(np.percentile(d, 95)), "max": float(d.max()), "n": int(d.size)}


class Scorer:
    """Everything about one pair that does not depend on the tool: grid, tissue, blobs, lattice, truth."""

    def __init__(self, name: str, pair: dict) -> None:
        import lazyreg
        from lazyreg.registration.blobs import detect_blobs
        from lazyreg.registration.block_align import FOREGROUND_SIGMA
        from scipy import ndimage as ndi
        from scipy.spatial import cKDTree

        self.name = name
        self.sp, self.org = pair["spacing"], pair["origin"]
        self.fixed = lazyreg.image(pair["fixed"], self.sp, self.org)
        self.moving = lazyreg.image(pair["moving"], self.sp, self.org)
        self.grid = lazyreg.Grid(self.fixed.shape, self.sp, self.org)
        self.truth = pair["truth"]
        v = pair["fixed"].astype(np.float32)
        smooth = ndi.gaussian_filter(v, FOREGROUND_SIGMA)
        self.tissue = smooth > tissue_level(v)
        self.tissue_img = self.fixed.copy(data=self.tissue)
        self.moving_level = tissue_level(pair["moving"])
        # bright structures (cells, nuclei): each image's Otsu threshold after the same smoothing
        self.bright = smooth > bright_level(v)
        self.moving_bright_level = bright_level(pair["moving"])
        self.step = LATTICE_STEP[name]
        axes = [np.arange(0, s, self.step) for s in self.grid.shape]
        idx = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)  # as metrics.transform_error
        self.lattice_idx = idx
        self.lattice_in = self.tissue[tuple(idx.T)]
        blobs = detect_blobs(v, self.sp, blob_sizes=tuple(BLOB_SIZES[name]), nspots=2000, mask=self.tissue)
        self.blob_pts = self.grid.to_physical(blobs[:, :3])
        self.truth_blob = None if self.truth is None else lazyreg.transform_points(self.blob_pts, self.truth)
        # blobs of moving, found on their own: after a good registration a fixed blob lands on one
        mv = pair["moving"].astype(np.float32)
        moving_tissue = ndi.gaussian_filter(mv, FOREGROUND_SIGMA) > self.moving_level
        mblobs = detect_blobs(mv, self.sp, blob_sizes=tuple(BLOB_SIZES[name]), nspots=4000, mask=moving_tissue)
        self.moving_blob_tree = cKDTree(self.grid.to_physical(mblobs[:, :3]))
        self.blob_radius = float(np.exp(np.mean(np.log(self.sp))))  # one voxel (geometric mean spacing)
        self.info = {
            "shape": list(self.grid.shape),
            "voxels": int(np.prod(self.grid.shape)),
            "spacing": list(self.sp),
            "tissue_fraction": float(self.tissue.mean()),
            "lattice_step_voxels": self.step,
            "lattice_points_in_tissue": int(self.lattice_in.sum()),
            "blobs": int(len(self.blob_pts)),
            "moving_blobs": int(self.moving_blob_tree.n),
            "blob_match_radius_um": self.blob_radius,
        }

    def score(self, est: list, D=None) -> dict:
        import dask.array as da

        import lazyreg
        from lazyreg.metrics import pearson, transform_error

        from scipy import ndimage as ndi

        from lazyreg.registration.block_align import FOREGROUND_SIGMA

        out: dict = {}
        sp = np.asarray(self.sp)
        if self.truth is not None:
            for units, key in (("physical", "um"), ("voxels", "vox")):
                e = transform_error(est, self.truth, self.grid, step=self.step, units=units)
                out[f"tre_tissue_{key}"] = _summary(e[self.lattice_in])
                if units == "voxels":
                    self._lattice_err_vox = e
            diff = lazyreg.transform_points(self.blob_pts, est) - self.truth_blob
            out["tre_blobs_um"] = _summary(np.linalg.norm(diff, axis=1))
            out["tre_blobs_vox"] = _summary(np.linalg.norm(diff / sp, axis=1))
        # blob correspondence, needing no truth and no intensities: each fixed blob mapped into moving,
        # the distance to the nearest blob found in moving on its own
        near, _ = self.moving_blob_tree.query(lazyreg.transform_points(self.blob_pts, est))
        out["blob_match"] = {"median_um": float(np.median(near)), "within_voxel": float((near <= self.blob_radius).mean())}
        res = lazyreg.apply_transform(self.fixed, self.moving.astype(np.float32), est).compute()
        out["pearson_all"] = pearson(self.fixed, res)
        out["pearson_tissue"] = pearson(self.fixed, res, self.tissue_img)
        # issue 17's measures: Pearson where both images are tissue, Dice of the two tissue masks
        moved_tissue = ndi.gaussian_filter(res.values, FOREGROUND_SIGMA) > self.moving_level
        both = self.tissue & moved_tissue
        out["pearson_both_tissue"] = pearson(self.fixed, res, self.fixed.copy(data=both))
        out["dice_tissue"] = float(2 * both.sum() / (self.tissue.sum() + moved_tissue.sum()))
        moved_bright = ndi.gaussian_filter(res.values, FOREGROUND_SIGMA) > self.moving_bright_level
        out["dice_bright"] = float(2 * (self.bright & moved_bright).sum() / (self.bright.sum() + moved_bright.sum()))
        if D is not None:
            chunked = lazyreg.DisplacementField.from_array(da.from_array(D.values, chunks=(64, 64, 64, 3)),
                                                           D.grid.spacing, D.grid.origin)
            det = lazyreg.jacobian_determinant(chunked).data
            mn, mx, fold = da.compute(det.min(), det.max(), (det <= 0).mean())
            out["jacobian_min"], out["jacobian_max"], out["folded_fraction"] = float(mn), float(mx), float(fold)
        return out

    def per_block(self, chunks: list, rows: list, affine_err: np.ndarray) -> dict:
        """Mean TRE (voxels, tissue lattice) per block core: the affine alone against affine + field."""
        bounds = [np.cumsum([0] + list(c)) for c in chunks]
        bid = np.stack([np.searchsorted(b, self.lattice_idx[:, a], side="right") - 1 for a, b in enumerate(bounds)], -1)
        status = {tuple(r["index"]): r["status"] for r in rows}
        blocks, worse = [], []
        for key in sorted(status):
            sel = self.lattice_in & np.all(bid == np.asarray(key), axis=1)
            if not sel.any():
                continue
            a, f = float(affine_err[sel].mean()), float(self._lattice_err_vox[sel].mean())
            b = {"index": list(key), "status": status[key], "points": int(sel.sum()), "tre_affine_vox": a, "tre_field_vox": f}
            blocks.append(b)
            if f > a + 0.05:
                worse.append(b)
        return {"blocks": blocks, "worse_than_affine": worse}


# ------------------------------------------------------------------------------------------ main


def available(tool: str) -> str | None:
    """None when the tool can run, else why not."""
    if tool == "ants" and importlib.util.find_spec("ants") is None:
        return "not installed: antspyx (pip install 'lazyreg[compare]')"
    if tool == "elastix":
        try:
            metadata.version("itk-elastix")
        except metadata.PackageNotFoundError:
            return "not installed: itk-elastix (pip install 'lazyreg[compare]')"
    return None


def _fmt_row(pair: str, r: dict) -> list:
    s = r.get("scores") or {}
    t = s.get("tre_tissue_um") or {}
    tv = s.get("tre_tissue_vox") or {}
    b = s.get("tre_blobs_um") or {}
    bv = s.get("tre_blobs_vox") or {}
    jac = None if s.get("jacobian_min") is None else f"{s['jacobian_min']:.2f}..{s['jacobian_max']:.2f}"
    fold = None if s.get("folded_fraction") is None else f"{100 * s['folded_fraction']:.3f}%"
    return [pair, r["label"], t.get("mean"), t.get("p95"), t.get("max"), tv.get("mean"), tv.get("p95"), b.get("mean"),
            b.get("p95"), b.get("max"), bv.get("mean"), s.get("pearson_all"), s.get("pearson_tissue"),
            s.get("pearson_both_tissue"), s.get("dice_tissue"), s.get("dice_bright"),
            (s.get("blob_match") or {}).get("within_voxel"), (s.get("blob_match") or {}).get("median_um"), jac, fold,
            r.get("seconds"), r.get("cpu_seconds"), C.gib(r.get("peak_rss_bytes")), r.get("note") or ""]


HEADER = ["pair", "tool / config", "TRE tis um mean", "p95", "max", "vox mean", "vox p95", "TRE blobs um mean", "p95",
          "max", "vox mean", "r all", "r tissue", "r both", "Dice", "Dice bright", "blobs matched", "blob dist um", "Jacobian", "folded", "wall s", "CPU s", "peak GiB", "note"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small crops: a smoke run of a few minutes")
    ap.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {','.join(TOOLS)}")
    ap.add_argument("--pairs", default=",".join(PAIRS), help=f"comma-separated, of {','.join(PAIRS)}")
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "tutorial")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--small-blocks", action="store_true",
                    help="also the default steps at half the blocksize on the tutorial (64: 96 blocks, ~10 min more)")
    ap.add_argument("--former", action="store_true", help="also the block steps of 2026-11 (affine + B-spline)")
    ap.add_argument("--ants-full", action="store_true",
                    help=f"also ANTs SyN with iterations {ANTS_FULL_ITERATIONS} (full resolution too) on the tutorial pairs")
    ap.add_argument("--local-demons", action="store_true",
                    help="also the default steps with the demons in local contrast (intensity='local')")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return run_worker(json.loads(args.worker))

    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    pairs = [p.strip() for p in args.pairs.split(",") if p.strip()]
    bad = [t for t in tools if t not in TOOLS] + [p for p in pairs if p not in PAIRS]
    if bad:
        ap.error(f"unknown tool or pair: {bad}")
    out_path = args.out or (
        Path(tempfile.gettempdir()) / "lazyreg-bench-accuracy-quick.json" if args.quick else HERE / "results" / "accuracy.json"
    )
    timeout = 900.0 if args.quick else 2400.0
    machine = C.machine_info()
    print(f"bench_accuracy: pairs {pairs}, tools {tools}{' (quick)' if args.quick else ''}; {machine['cpu_count']} CPUs, "
          f"load {machine['load_average_1_5_15']}", flush=True)
    record: dict = {
        "benchmark": "known-truth accuracy (issues 13, 17)",
        "machine": machine,
        "quick": args.quick,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker"},
        "seed": SEED,
        "threads": THREADS,
        "tool_versions": {p: (metadata.version(p) if importlib.util.find_spec(m) else None)
                          for p, m in (("antspyx", "ants"), ("itk-elastix", "itk"), ("SimpleITK", "SimpleITK"))},
        "settings": {"sitk": SITK, "ants": ANTS, "elastix": ELASTIX, "lattice_step": LATTICE_STEP,
                     "blocksize": BLOCKSIZE_QUICK if args.quick else BLOCKSIZE, "blob_sizes": BLOB_SIZES,
                     "foreground_fraction": FOREGROUND_FRACTION,
                     "checks": {"points_tol_voxels": CHECK_POINTS_TOL_VOXELS, "known_tol_um": CHECK_KNOWN_TOL_UM,
                                "image_min_pearson": CHECK_IMAGE_MIN_PEARSON}},
        "lazyreg_at_start": lazyreg_identity(),
        "pairs": {},
        "rows": [],
        "load_average_per_run": [],
    }
    wrong: list[str] = []
    t0 = time.perf_counter()
    import lazyreg

    with tempfile.TemporaryDirectory(prefix="lazyreg-bench-accuracy-") as tmp:
        for pname in pairs:
            tp = time.perf_counter()
            pair = PAIR_BUILDERS[pname](args)
            work = Path(tmp) / pname
            work.mkdir()
            np.save(work / "fixed.npy", pair["fixed"])
            np.save(work / "moving.npy", pair["moving"])
            (work / "pair.json").write_text(json.dumps({"spacing": pair["spacing"], "origin": pair["origin"]}))
            sc = Scorer(pname, pair)
            info = {**pair["description"], **sc.info, "seconds_to_build": round(time.perf_counter() - tp, 1)}
            known = pair["truth"] is not None
            if known:
                det_true = np.asarray(lazyreg.jacobian_determinant(pair["truth"][1]).values)
                info["truth_field_jacobian"] = [float(det_true.min()), float(det_true.max())]
            record["pairs"][pname] = info
            print(f"\n[{pname}] {info['shape']} voxels {info['voxels']:,}, tissue {info['tissue_fraction']:.0%}, "
                  + (f"{info['blobs']} blobs, {info['lattice_points_in_tissue']:,} lattice points in tissue; truth field "
                     f"max {info['truth_field']['max_norm_um']:.2f} um, Jacobian {det_true.min():.2f}..{det_true.max():.2f}"
                     if known else "no truth: image measures only"), flush=True)

            def add(label: str, tool: str, est=None, D=None, rec=None, note=None, extra=None) -> dict:
                row = {"pair": pname, "label": label, "tool": tool, "note": note}
                if rec is not None:
                    row.update(seconds=rec.get("seconds"), cpu_seconds=rec.get("seconds_cpu"),
                               peak_rss_bytes=rec.get("peak_rss_bytes"), rss_before_bytes=rec.get("rss_before_bytes"),
                               convert_seconds=rec.get("convert_seconds"), worker=rec)
                if est is not None:
                    row["scores"] = sc.score(est, D)
                if extra:
                    row.update(extra)
                record["rows"].append(row)
                sc_ = row.get("scores") or {}
                tre = (sc_.get("tre_tissue_vox") or {}).get("mean")
                print(f"  {label:<52} TRE tissue {'-' if tre is None else f'{tre:.3f}'} vox, Pearson tissue "
                      f"{sc_.get('pearson_tissue', float('nan')):.4f}, both tissue {sc_.get('pearson_both_tissue', float('nan')):.4f}, "
                      f"Dice {sc_.get('dice_tissue', float('nan')):.4f} / bright {sc_.get('dice_bright', float('nan')):.4f}, {row.get('seconds') or 0:.1f} s  {note or ''}", flush=True)
                return row

            # references: the truth (noise-limited Pearson, its own Jacobian) and no registration
            if known:
                truth_row = add("truth (reference)", "truth", est=pair["truth"])
                truth_row["scores"].update(jacobian_min=info["truth_field_jacobian"][0],
                                           jacobian_max=info["truth_field_jacobian"][1],
                                           folded_fraction=float((det_true <= 0).mean()))
                if not truth_row["scores"]["tre_tissue_um"]["max"] < 1e-6 or not truth_row["scores"]["pearson_tissue"] > 0.8:
                    wrong.append(f"{pname}: truth check failed (TRE {truth_row['scores']['tre_tissue_um']['max']}, "
                                 f"Pearson {truth_row['scores']['pearson_tissue']})")
            add("identity (before)", "identity", est=[lazyreg.Affine.identity()])

            load0 = os.getloadavg()
            rec, err = spawn({"tool": "global", "work": str(work), "pair": pname}, timeout)
            record["load_average_per_run"].append({"pair": pname, "run": "global", "before": load0, "after": os.getloadavg()})
            if rec is None:
                add("lazyreg global affine", "lazyreg", note=f"failed: {err}")
                wrong.append(f"{pname}: lazyreg global affine failed: {err}")
                continue
            A = lazyreg.Affine(np.load(work / "A.npy"))
            g_row = add("lazyreg global affine (start of all)", "lazyreg", est=[A], rec=rec,
                        extra={"global_affine": np.asarray(A.matrix).tolist()})
            affine_err = sc._lattice_err_vox if known else None

            runs = []
            if "lazyreg" in tools:
                bs = (BLOCKSIZE_QUICK if args.quick else BLOCKSIZE)[pname]
                ff = "" if FOREGROUND_FRACTION[pname] is None else f", foreground_fraction {FOREGROUND_FRACTION[pname]}"
                small = pname in ("tutorial", "real") and args.small_blocks
                runs += [("lazyreg", "default", f"lazyreg piecewise default (blocksize {bs}{ff})")]
                if small:  # the default steps on smaller blocks (their mesh scales with the block)
                    runs.append(("lazyreg", "default-half", f"lazyreg piecewise default (blocksize {bs // 2})"))
                runs.append(("lazyreg", "nocoarse", f"lazyreg piecewise default steps, coarse=False (blocksize {bs}{ff})"))
                if args.local_demons:
                    runs.append(("lazyreg", "local", f"lazyreg piecewise default, demons in local contrast (blocksize {bs}{ff})"))
                for q in ("balanced", "fast"):
                    runs.append(("lazyreg", q, f"lazyreg piecewise quality={q} (blocksize {bs}{ff})"))
                if args.former:
                    runs.append(("lazyreg", "bspline", f"lazyreg piecewise former default, affine + B-spline (blocksize {bs}{ff})"))
                runs.append(("lazyreg", "bigstream", f"lazyreg piecewise bigstream steps (blocksize {bs}{ff})"))
                if small:
                    runs.append(("lazyreg", "bigstream-half", f"lazyreg piecewise bigstream steps (blocksize {bs // 2})"))
            if "sitk" in tools:
                runs.append(("sitk", "", "SimpleITK B-spline, whole volume"))
            if "ants" in tools:
                runs.append(("ants", "", "ANTs SyN (own affine stage + SyN)"))
                if args.ants_full and pname != "phantom":
                    runs.append(("ants", "full", f"ANTs SyN, iterations {'/'.join(map(str, ANTS_FULL_ITERATIONS))}"))
            if "elastix" in tools:
                runs.append(("elastix", "", "elastix B-spline (default map)"))
            for tool, config, label in runs:
                why = available(tool)
                if why:
                    add(label, tool, note=why)
                    continue
                spec = {"tool": tool, "config": config, "work": str(work), "pair": pname, "quick": args.quick,
                        "blocksize": (BLOCKSIZE_QUICK if args.quick else BLOCKSIZE)[pname]}
                load0 = os.getloadavg()
                rec, err = spawn(spec, timeout)
                record["load_average_per_run"].append({"pair": pname, "run": label, "before": load0, "after": os.getloadavg()})
                if rec is None:
                    add(label, tool, note=f"failed: {err}")
                    if tool == "lazyreg":
                        wrong.append(f"{pname}: {label} failed: {err}")
                    continue
                Dv = np.load(work / "field.npy")
                fg = rec.pop("field_grid", {"spacing": sc.sp, "origin": sc.org})  # other tools: the fixed grid
                D = lazyreg.DisplacementField.from_array(Dv, fg["spacing"], fg["origin"])
                note, extra = None, {}
                if tool == "lazyreg":
                    rows = rec.pop("block_rows")
                    counts = Counter(r["status"] for r in rows)
                    reasons = Counter((r["reason"] or "")[:60] for r in rows if r["status"] != "ok")
                    blk = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: -kv[1]))
                    starts = Counter(r["start"] for r in rows if r.get("start"))
                    note = f"blocks: {blk}" + (f"; starts {dict(starts)}" if starts else "")
                    extra = {"blocks": dict(counts), "starts": dict(starts), "failed_reasons": dict(reasons),
                             "block_rows": rows}
                else:
                    checks = rec["checks"]
                    oks = [v for k, v in checks.items() if k.endswith("_ok")] + [checks["image"]["ok"]]
                    if not all(oks):
                        wrong.append(f"{pname}: {label}: conversion check failed: {checks}")
                        note = "CONVERSION CHECK FAILED"
                row = add(label, tool, est=[A, D], D=D, rec=rec, note=note, extra=extra)
                if tool == "lazyreg" and known:
                    row["per_block"] = sc.per_block(rec["chunks"], rows, affine_err)
                    w = row["per_block"]["worse_than_affine"]
                    if w:
                        print(f"    blocks whose TRE got worse than the affine's (> +0.05 voxel): "
                              + ", ".join(f"{b['index']} {b['status']} {b['tre_affine_vox']:.2f}->{b['tre_field_vox']:.2f}" for b in w))
                del D, Dv
                (work / "field.npy").unlink(missing_ok=True)
            del g_row, pair, sc

    record["seconds_total"] = round(time.perf_counter() - t0, 1)
    record["lazyreg_at_end"] = lazyreg_identity()
    if record["lazyreg_at_end"] != record["lazyreg_at_start"]:
        print("note: lazyreg's code changed during the run (see lazyreg_at_start / lazyreg_at_end)")
    record["load_average_at_end"] = [round(x, 2) for x in os.getloadavg()]
    record["wrong"] = wrong
    print()
    print(C.table([_fmt_row(r["pair"], r) for r in record["rows"]], HEADER))
    print(f"\ntotal {record['seconds_total']:.0f} s; load at start {machine['load_average_1_5_15']}, at end {record['load_average_at_end']}")
    C.write_json(out_path, record)
    if wrong:
        print("WRONG RESULTS:\n  " + "\n  ".join(wrong))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
