"""Test helpers: eager references (SimpleITK, scipy), smooth volumes, and a transform error in voxels."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

import lazyreg
from lazyreg.images import Grid, grid_of
from lazyreg.metrics import transform_error


def smooth_volume(shape, seed=0, sigma=2.0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    v = ndimage.gaussian_filter(rng.random(shape), sigma)
    v = (v - v.min()) / (v.max() - v.min())
    return (v * 1000).astype(dtype)


def _sitk_image(values, g: Grid):
    img = sitk.GetImageFromArray(np.asarray(values, dtype=np.float64))
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin[::-1])
    return img


def sitk_reference(fixed, moving, transform: sitk.Transform, order=1, fill=0.0):
    """Whole moving image in memory, resampled by SimpleITK at the fixed grid points."""
    gf, gm = grid_of(fixed), grid_of(moving)
    interp = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}[order]
    out = sitk.Resample(
        _sitk_image(moving.values, gm),
        [int(s) for s in gf.shape[::-1]],
        transform,
        interp,
        gf.origin[::-1],
        gf.spacing[::-1],
        (1, 0, 0, 0, 1, 0, 0, 0, 1),
        float(fill),
        sitk.sitkFloat64,
    )
    return sitk.GetArrayFromImage(out)


def grid_points(g: Grid) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(s) for s in g.shape], indexing="ij"), -1).reshape(-1, 3)
    return g.to_physical(idx)


def scipy_reference(fixed, moving, mapped_points: np.ndarray, order=1, fill=0.0):
    """map_coordinates at given moving-space points; also returns a mask of points far from the edge."""
    gf, gm = grid_of(fixed), grid_of(moving)
    idx = gm.to_index(mapped_points)
    n = np.asarray(gm.shape)
    inside = np.all((idx >= -0.5) & (idx <= n - 0.5), axis=1)
    safe = np.all((np.abs(idx + 0.5) > 1e-3) & (np.abs(idx - (n - 0.5)) > 1e-3), axis=1)
    vals = ndimage.map_coordinates(np.asarray(moving.values, dtype=np.float64), idx.T, order=order, mode="nearest")
    vals[~inside] = fill
    return vals.reshape(gf.shape), safe.reshape(gf.shape)


def voxel_error(est, truth, fixed) -> float:
    """Mean distance, in fixed voxels, between the fixed grid's points mapped by two affines."""
    return float(transform_error(lazyreg.Affine(est), lazyreg.Affine(truth), lazyreg.images.grid_of(fixed)).mean())
