"""Random affine search: many random candidates scored by a cheap correlation, the best kept."""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image

__all__ = ["random_affine_search"]


def _rotation(angles_deg: np.ndarray) -> np.ndarray:
    """Rotation matrices (K, 3, 3) from angles (K, 3) in degrees about the z, y and x axes (zyx frame)."""
    a = np.deg2rad(angles_deg)
    c, s = np.cos(a), np.sin(a)
    k = len(a)
    rz = np.zeros((k, 3, 3)); ry = np.zeros((k, 3, 3)); rx = np.zeros((k, 3, 3))
    # about z: rotates the y-x plane
    rz[:, 0, 0] = 1; rz[:, 1, 1] = c[:, 0]; rz[:, 1, 2] = -s[:, 0]; rz[:, 2, 1] = s[:, 0]; rz[:, 2, 2] = c[:, 0]
    # about y: rotates the z-x plane
    ry[:, 1, 1] = 1; ry[:, 0, 0] = c[:, 1]; ry[:, 0, 2] = s[:, 1]; ry[:, 2, 0] = -s[:, 1]; ry[:, 2, 2] = c[:, 1]
    # about x: rotates the z-y plane
    rx[:, 2, 2] = 1; rx[:, 0, 0] = c[:, 2]; rx[:, 0, 1] = -s[:, 2]; rx[:, 1, 0] = s[:, 2]; rx[:, 1, 1] = c[:, 2]
    return rz @ ry @ rx


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
    arr = np.broadcast_to(np.asarray(v, dtype=float), (3,)).copy()
    if np.any(arr < 0) or not np.all(np.isfinite(arr)):
        raise LazyregError(f"{name}: expected non-negative finite numbers, got {v!r}")
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
    initial: np.ndarray | None = None,
    fixed_mask: xr.DataArray | None = None,
    samples: int = 5000,
    target_voxels: int = 200_000,
    refine_rounds: int = 2,
    seed: int = 0,
) -> tuple[np.ndarray, dict]:
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
    initial : (4, 4) array, optional
        Starting transform, fixed -> moving (zyx, physical).
    fixed_mask : xarray.DataArray, optional
        Boolean image on the fixed grid; samples are drawn inside it.
    seed : int
        Random seed; results are deterministic for a seed.

    Returns
    -------
    matrix : (4, 4) ndarray
        Best transform found, fixed -> moving.
    report : dict
        Best score, score of ``initial``, candidates tried, seconds.

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.search import random_affine_search
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    >>> m, report = random_affine_search(fixed, moving, candidates=50, refine_rounds=0)
    >>> m.shape
    (4, 4)
    """
    t0 = time.perf_counter()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    if int(candidates) < 1:
        raise LazyregError(f"candidates: expected a positive number, got {candidates!r}")
    rot = _param_triple(max_rotation, "max_rotation")
    gf = grid_of(fixed, "fixed")
    lo, hi = gf.extent
    shift = _param_triple(0.1 * (hi - lo) if max_translation is None else max_translation, "max_translation")
    if not 0 <= max_scale < 1:
        raise LazyregError(f"max_scale: expected a value in [0, 1), got {max_scale!r}")
    init = np.eye(4) if initial is None else np.asarray(initial, dtype=float)
    if init.shape != (4, 4) or not np.all(np.isfinite(init)):
        raise LazyregError("initial: expected a finite 4x4 matrix")

    fvals, fg = _coarse(fixed, target_voxels)
    mvals, mg = _coarse(moving, target_voxels)
    if fvals.std() == 0:
        raise LazyregError("fixed: image is constant (all voxels equal); nothing to align")
    if mvals.std() == 0:
        raise LazyregError("moving: image is constant (all voxels equal); nothing to align")
    rng = np.random.default_rng(seed)
    # sample points: bright voxels of the coarse fixed image (inside the mask when given)
    weight = fvals.ravel().astype(np.float64) - np.percentile(fvals, 50)
    weight = np.clip(weight, 0, None)
    if fixed_mask is not None:
        validate_image(fixed_mask, "fixed_mask")
        if fixed_mask.shape != fixed.shape:
            raise LazyregError(f"fixed_mask: shape {fixed_mask.shape} differs from fixed {fixed.shape}")
        m = np.asarray(fixed_mask.values, dtype=bool)
        if not m.any():
            raise LazyregError("fixed_mask: the mask is empty")
        idx = np.round(gf.to_index(fg.to_physical(np.argwhere(np.ones(fvals.shape, bool))))).astype(int)
        idx = np.clip(idx, 0, np.asarray(gf.shape) - 1)
        weight = weight * m[tuple(idx.T)]
    if weight.sum() == 0:
        weight = np.ones_like(weight)
    n = min(int(samples), int(np.count_nonzero(weight)))
    flat = rng.choice(weight.size, size=n, replace=False, p=weight / weight.sum())
    pts = fg.to_physical(np.column_stack(np.unravel_index(flat, fvals.shape)))
    fv = fvals.ravel()[flat].astype(np.float64)
    fv = (fv - fv.mean()) / (fv.std() + 1e-12)
    centre = (lo + hi) / 2

    def score(mats: np.ndarray) -> np.ndarray:
        q = np.einsum("kij,nj->kni", mats[:, :3, :3], pts) + mats[:, None, :3, 3]
        idx = mg.to_index(q.reshape(-1, 3)).T
        mv = ndimage.map_coordinates(mvals, idx, order=1, mode="constant", cval=0.0).reshape(len(mats), -1)
        mv = mv - mv.mean(1, keepdims=True)
        sd = mv.std(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            r = (mv @ fv) / (len(fv) * sd)
        return np.where(sd > 0, r, -1.0)

    def draw(k: int, base: np.ndarray, rot_r, shift_r, scale_r, shear_r) -> np.ndarray:
        ang = rng.uniform(-1, 1, (k, 3)) * rot_r
        R = _rotation(ang)
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

    best = init
    best_score = float(score(init[None])[0])
    start_score = best_score
    tried = 0
    ranges = (rot, shift, float(max_scale), float(max_shear))
    for r in range(int(refine_rounds) + 1):
        f = 3.0**-r
        mats = draw(int(candidates), best, ranges[0] * f, ranges[1] * f, ranges[2] * f, ranges[3] * f)
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
        "samples": n,
        "coarse_spacing": tuple(float(s) for s in fg.spacing),
        "seconds": time.perf_counter() - t0,
    }
    return best, report
