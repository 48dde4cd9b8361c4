"""Figures of alignment quality: similarity of images and distance between transforms.

One Pearson correlation (:func:`correlation_from_sums`) serves both the lazy image version
(:func:`pearson`, streamed chunk by chunk) and the in-memory one used inside tasks
(:func:`pearson_arrays`, accumulated in float64 slices without full-size copies).
"""

from __future__ import annotations

import math
from typing import Any

import dask.array as da
import numpy as np
import xarray as xr

from .errors import LazyregError
from .images import Grid, grid_of
from .transforms.points import transform_points

__all__ = ["pearson", "pearson_arrays", "correlation_from_sums", "transform_error"]

#: Values per float64 slice in :func:`pearson_arrays` (8 MiB per temporary).
SLICE_VALUES = 1 << 20


def correlation_from_sums(n: float, sx: float, sy: float, sxx: float, syy: float, sxy: float) -> float:
    """Pearson correlation from the count and the (co)moment sums of two samples.

    Returns NaN when either sample is constant (the correlation is undefined).

    Examples
    --------
    >>> x, y = np.array([1.0, 2.0, 3.0]), np.array([2.0, 4.0, 7.0])
    >>> round(correlation_from_sums(3, x.sum(), y.sum(), x @ x, y @ y, x @ y), 4)
    0.9934
    """
    if n <= 0:
        return math.nan
    vx = sxx / n - (sx / n) ** 2
    vy = syy / n - (sy / n) ** 2
    # relative round-off of the moment sums: a variance this small is a constant sample
    if vx <= 1e-12 * (sxx / n) or vy <= 1e-12 * (syy / n) or vx <= 0 or vy <= 0:
        return math.nan
    cov = sxy / n - (sx / n) * (sy / n)
    return float(np.clip(cov / math.sqrt(vx * vy), -1.0, 1.0))


def _sums(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(n, sx, sy, sxx, syy, sxy) of two equal-length 1-D arrays, in float64 slices."""
    out = np.zeros(6)
    for i in range(0, x.size, SLICE_VALUES):
        a = x[i : i + SLICE_VALUES].astype(np.float64)
        b = y[i : i + SLICE_VALUES].astype(np.float64)
        out += (a.size, a.sum(), b.sum(), a @ a, b @ b, a @ b)
    return out


def pearson_arrays(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Pearson correlation of two in-memory arrays (over ``where``); NaN if either is constant.

    Sums are accumulated in float64 over slices of :data:`SLICE_VALUES` values, so a large block
    needs no full-size float64 copies.

    Examples
    --------
    >>> a = np.arange(24.0).reshape(2, 3, 4)
    >>> pearson_arrays(a, 2 * a + 1)
    1.0
    >>> pearson_arrays(a, np.ones_like(a))
    nan
    """
    x, y = np.asarray(a).ravel(), np.asarray(b).ravel()
    if x.shape != y.shape:
        raise LazyregError(f"b: shape {np.shape(b)} differs from a {np.shape(a)}")
    if where is not None:
        w = np.asarray(where, dtype=bool).ravel()
        x, y = x[w], y[w]
    if x.size < 2:
        return math.nan
    return correlation_from_sums(*_sums(x, y))


def _chunk_sums(x: np.ndarray, y: np.ndarray, w: np.ndarray | None) -> np.ndarray:
    if w is not None:
        m = np.asarray(w, dtype=bool).ravel()
        x, y = x.ravel()[m], y.ravel()[m]
    return _sums(x.ravel(), y.ravel()).reshape(1, 1, 1, 6)


def pearson(a: xr.DataArray, b: xr.DataArray, mask: xr.DataArray | None = None) -> float:
    """Pearson correlation of two images on the same grid (computed; dask inputs stream by chunk).

    Parameters
    ----------
    a, b : xarray.DataArray
        Images with the same shape, spacing and origin.
    mask : xarray.DataArray, optional
        Boolean image on the same grid; only voxels where it is true count.

    Returns
    -------
    float
        The correlation, or NaN when either image is constant (over the mask).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.random.default_rng(0).random((8, 8, 8)), 1.0)
    >>> round(lazyreg.metrics.pearson(img, 2 * img + 1), 6)
    1.0
    """
    ga, gb = grid_of(a, "a"), grid_of(b, "b")
    if ga.shape != gb.shape or not np.allclose(ga.spacing, gb.spacing) or not np.allclose(ga.origin, gb.origin):
        raise LazyregError(f"b: grid {gb} differs from the grid of a {ga}; resample one onto the other first")
    x = da.asarray(a.data)
    y = da.asarray(b.data).rechunk(x.chunks)
    args = [x, "ijk", y, "ijk"]
    if mask is not None:
        gm = grid_of(mask, "mask")
        if gm.shape != ga.shape:
            raise LazyregError(f"mask: shape {gm.shape} differs from the image shape {ga.shape}")
        args += [da.asarray(mask.data).rechunk(x.chunks), "ijk"]
    else:
        args += [None, None]
    parts = da.blockwise(_chunk_sums, "ijkl", *args, new_axes={"l": 6}, dtype=np.float64,
                         adjust_chunks={"i": 1, "j": 1, "k": 1})
    sums = np.asarray(parts.sum(axis=(0, 1, 2)).compute())
    if mask is not None and sums[0] == 0:
        raise LazyregError("mask: selects no voxel")
    return correlation_from_sums(*sums)


def transform_error(estimate: Any, truth: Any, grid: Grid, *, step: int = 4, units: str = "voxels") -> np.ndarray:
    """Distances between the points of ``grid`` mapped by two transforms (target registration error).

    Parameters
    ----------
    estimate, truth : Affine, DisplacementField or list of them
        Transforms in lazyreg's order (the last applied first); lazy ones are computed.
    grid : Grid
        The points compared: every ``step``-th voxel centre along each axis.
    step : int
        Lattice step in voxels.
    units : {"voxels", "physical"}
        Distances in voxels of ``grid`` (each axis divided by its spacing) or in physical units.

    Returns
    -------
    ndarray
        One distance per lattice point (take ``.mean()``, ``np.percentile(..., 95)``, ``.max()``).

    Examples
    --------
    >>> import lazyreg
    >>> g = lazyreg.Grid((8, 8, 8), spacing=2.0)
    >>> float(transform_error(lazyreg.Affine.from_translation((0, 0, 1.0)), lazyreg.Affine.identity(), g).max())
    0.5
    """
    if units not in ("voxels", "physical"):
        raise LazyregError(f"units: expected 'voxels' or 'physical', got {units!r}")
    idx = np.stack(np.meshgrid(*[np.arange(0, s, int(step)) for s in grid.shape], indexing="ij"), -1).reshape(-1, 3)
    p = grid.to_physical(idx)
    diff = transform_points(p, estimate) - transform_points(p, truth)
    if units == "voxels":
        diff = diff / np.asarray(grid.spacing)
    return np.linalg.norm(diff, axis=1)
