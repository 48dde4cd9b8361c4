"""Similarity figures between images on the same grid."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from .errors import LazyregError
from .images import grid_of

__all__ = ["pearson"]


def pearson(a: xr.DataArray, b: xr.DataArray, mask: xr.DataArray | None = None) -> float:
    """Pearson correlation of two images on the same grid (computed; dask inputs stream by chunk).

    Parameters
    ----------
    a, b : xarray.DataArray
        Images with the same shape, spacing and origin.
    mask : xarray.DataArray, optional
        Boolean image on the same grid; only voxels where it is true count.

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
    x = da.asarray(a.data).astype(np.float64).ravel()
    y = da.asarray(b.data).astype(np.float64).ravel()
    if mask is not None:
        gm = grid_of(mask, "mask")
        if gm.shape != ga.shape:
            raise LazyregError(f"mask: shape {gm.shape} differs from the image shape {ga.shape}")
        w = da.asarray(mask.data).astype(bool).astype(np.float64).ravel()
    else:
        w = da.ones_like(x)
    # weighted sums (a boolean selection would give dask arrays of unknown size)
    n, sx, sy, sxx, syy, sxy = da.compute(
        w.sum(), (w * x).sum(), (w * y).sum(), (w * x * x).sum(), (w * y * y).sum(), (w * x * y).sum()
    )
    if not n:
        raise LazyregError("mask: selects no voxel")
    cov = sxy / n - sx * sy / n**2
    vx, vy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2
    if vx <= 0 or vy <= 0:
        return 0.0
    return float(cov / np.sqrt(vx * vy))
