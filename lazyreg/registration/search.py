"""Random affine search: many random candidates scored by a cheap correlation, the best kept."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from ..errors import LazyregError
from ..images import Grid, check_mask, grid_of, validate_image
from ..transforms.affine import Affine, as_matrix, rotation_matrices
from ..validation import check_int, check_number, check_seed, check_triple

__all__ = ["random_affine_search", "validate_search_options"]


def _coarse(img: xr.DataArray, target_voxels: int) -> tuple[np.ndarray, Grid]:
    """Smoothed, block-averaged in-memory copy with about ``target_voxels`` voxels."""
    g = grid_of(img)
    f = max(1.0, (np.prod(g.shape) / target_voxels) ** (1 / 3))
    # isotropic-ish physical coarse spacing
    phys = max(g.spacing) * f / max(1.0, max(g.spacing) / min(g.spacing)) ** (1 / 3)
    factors = np.maximum(1, np.round(phys / np.asarray(g.spacing))).astype(int)
    vals = np.asarray(img.data if isinstance(img.data, np.ndarray) else img.data.compute(), dtype=np.float32)
    if not np.all(np.isfinite(vals)):
        raise LazyregError("image: contains NaN or infinite values")
    vals = ndimage.gaussian_filter(vals, factors / 2.0)
    vals = vals[tuple(slice(None, None, int(k)) for k in factors)]
    return vals, Grid(vals.shape, tuple(np.asarray(g.spacing) * factors), g.origin)


def _param_triple(v: Any, name: str) -> np.ndarray:
    arr = np.asarray(check_triple(v, name, "the largest change"))
    if np.any(arr < 0):
        raise LazyregError(f"{name}: expected non-negative numbers, got {v!r}")
    return arr


def random_affine_search(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    candidates: int = 500,
    max_rotation: float | Sequence[float] = 30.0,
    max_translation: float | Sequence[float] | None = None,
    max_scale: float = 0.1,
    max_shear: float = 0.0,
    initial: Affine | np.ndarray | None = None,
    fixed_mask: xr.DataArray | None = None,
    samples: int = 5000,
    target_voxels: int = 200_000,
    refine_rounds: int = 2,
    seed: int = 0,
) -> Affine:
    """Find a rough affine by scoring many random candidates with a cheap correlation.

    Candidates rotate, scale and shear about the fixed image's centre (mapped by ``initial``) and
    translate; each is scored by the Pearson correlation of fixed and moving at ``samples``
    bright fixed points on smoothed, coarse copies of both images. The best candidate seeds
    ``refine_rounds`` further searches with ranges shrunk by 3 each round.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (computed here: pass a downsampled level of large data).
    candidates : int
        Random candidates per round.
    max_rotation : float or 3 floats
        Largest rotation about the z, y and x axes, in degrees.
    max_translation : float or 3 floats, optional
        Largest shift in physical units; default 10% of the fixed field of view per axis.
    max_scale, max_shear : float
        Largest relative scale change and shear.
    initial : Affine or (4, 4) array, optional
        Starting transform, fixed -> moving (zyx, physical).
    fixed_mask : xarray.DataArray, optional
        Boolean image on the fixed grid; samples are drawn inside it.
    seed : int
        Random seed; results are deterministic for a seed.

    Returns
    -------
    Affine
        The best transform found, fixed -> moving. Its ``report`` (a dict) holds the best score,
        the score of ``initial``, the candidates tried and the seconds.

    Notes
    -----
    Rotations follow :meth:`lazyreg.Affine.from_parameters` (angles about z, y, x; +90 degrees
    about z maps x onto y).

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.search import random_affine_search
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    >>> A = random_affine_search(fixed, moving, candidates=50, refine_rounds=0)
    >>> A.report["candidates"]
    50
    """
    t0 = time.perf_counter()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    validate_search_options(
        dict(candidates=candidates, max_rotation=max_rotation, max_translation=max_translation, max_scale=max_scale,
             max_shear=max_shear, samples=samples, target_voxels=target_voxels, refine_rounds=refine_rounds, seed=seed)
    )
    check_mask(fixed_mask, fixed, "fixed_mask", "fixed")
    gf = grid_of(fixed, "fixed")
    lo, hi = gf.extent
    rot = _param_triple(max_rotation, "max_rotation")
    shift = _param_triple(0.1 * (hi - lo) if max_translation is None else max_translation, "max_translation")
    init = np.eye(4) if initial is None else as_matrix(initial, "initial")
    fvals, fg = _coarse(fixed, target_voxels)
    mvals, mg = _coarse(moving, target_voxels)
    if fvals.std() == 0:
        raise LazyregError("fixed: image is constant (all voxels equal); nothing to align")
    if mvals.std() == 0:
        raise LazyregError("moving: image is constant (all voxels equal); nothing to align")
    rng = np.random.default_rng(seed)
    pts, fv = _sample_points(fvals, fg, gf, fixed_mask, int(samples), rng)
    centre = (lo + hi) / 2

    def score(mats: np.ndarray) -> np.ndarray:
        return _scores(mats, pts, fv, mvals, mg)

    best = init
    best_score = float(score(init[None])[0])
    start_score = best_score
    tried = 0
    ranges = (rot, shift, float(max_scale), float(max_shear))
    for r in range(int(refine_rounds) + 1):
        f = 3.0**-r
        mats = _draw(rng, int(candidates), best, centre, ranges[0] * f, ranges[1] * f, ranges[2] * f, ranges[3] * f)
        scores = np.concatenate([score(mats[i : i + 64]) for i in range(0, len(mats), 64)])
        tried += len(mats)
        k = int(np.argmax(scores))
        if scores[k] > best_score:
            best, best_score = mats[k], float(scores[k])
    report = {
        "step": "random",
        "candidates": tried,
        "score_initial": start_score,
        "score": best_score,
        "samples": len(pts),
        "coarse_spacing": tuple(float(s) for s in fg.spacing),
        "seconds": time.perf_counter() - t0,
    }
    return Affine(best, report=report)


def validate_search_options(opts: dict) -> None:
    """Check the options of :func:`random_affine_search` without reading any data.

    Examples
    --------
    >>> validate_search_options({"candidates": 0})
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: candidates: expected an integer >= 1, got 0
    """
    for key, minimum in (("candidates", 1), ("samples", 10), ("target_voxels", 1000), ("refine_rounds", 0)):
        if key in opts:
            check_int(opts[key], key, minimum=minimum)
    for key in ("max_rotation", "max_translation"):
        if opts.get(key) is not None:
            _param_triple(opts[key], key)
    if "max_scale" in opts:
        check_number(opts["max_scale"], "max_scale", 0.0, 1.0, hi_open=True)
    if "max_shear" in opts:
        check_number(opts["max_shear"], "max_shear", 0.0)
    if "seed" in opts:
        check_seed(opts["seed"])


def _sample_points(fvals, fg: Grid, gf: Grid, fixed_mask, samples: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Bright voxels of the coarse fixed image (inside the mask): physical points and z-scored values."""
    weight = fvals.ravel().astype(np.float64) - np.percentile(fvals, 50)
    weight = np.clip(weight, 0, None)
    if fixed_mask is not None:
        m = np.asarray(fixed_mask.values, dtype=bool)
        if not m.any():
            raise LazyregError("fixed_mask: the mask is empty")
        idx = np.round(gf.to_index(fg.to_physical(np.argwhere(np.ones(fvals.shape, bool))))).astype(int)
        idx = np.clip(idx, 0, np.asarray(gf.shape) - 1)
        weight = weight * m[tuple(idx.T)]
    if weight.sum() == 0:
        weight = np.ones_like(weight)
    n = min(samples, int(np.count_nonzero(weight)))
    flat = rng.choice(weight.size, size=n, replace=False, p=weight / weight.sum())
    pts = fg.to_physical(np.column_stack(np.unravel_index(flat, fvals.shape)))
    fv = fvals.ravel()[flat].astype(np.float64)
    return pts, (fv - fv.mean()) / (fv.std() + 1e-12)


def _scores(mats: np.ndarray, pts: np.ndarray, fv: np.ndarray, mvals: np.ndarray, mg: Grid) -> np.ndarray:
    """Pearson correlation of the fixed samples with moving at the points mapped by each matrix."""
    q = np.einsum("kij,nj->kni", mats[:, :3, :3], pts) + mats[:, None, :3, 3]
    idx = mg.to_index(q.reshape(-1, 3)).T
    mv = ndimage.map_coordinates(mvals, idx, order=1, mode="constant", cval=0.0).reshape(len(mats), -1)
    mv = mv - mv.mean(1, keepdims=True)
    sd = mv.std(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (mv @ fv) / (len(fv) * sd)
    return np.where(sd > 0, r, -1.0)


def _draw(rng, k: int, base: np.ndarray, centre: np.ndarray, rot_r, shift_r, scale_r, shear_r) -> np.ndarray:
    """``k`` random candidates around ``base`` (the first is ``base`` itself), about ``centre``."""
    R = rotation_matrices(rng.uniform(-1, 1, (k, 3)) * rot_r)
    S = 1 + rng.uniform(-1, 1, (k, 3)) * scale_r
    H = np.repeat(np.eye(3)[None], k, 0)
    if shear_r:
        H[:, 0, 1], H[:, 0, 2], H[:, 1, 2] = rng.uniform(-1, 1, (3, k)) * shear_r
    lin = R @ H * S[:, None, :]
    t = rng.uniform(-1, 1, (k, 3)) * shift_r
    local = np.repeat(np.eye(4)[None], k, 0)
    local[:, :3, :3] = lin
    local[:, :3, 3] = centre - np.einsum("kij,j->ki", lin, centre) + t
    out = base[None] @ local  # base(local(x)): candidates perturb around the current best
    out[0] = base  # keep the current best among the candidates
    return out
