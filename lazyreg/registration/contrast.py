"""Local contrast: an image minus its local mean, over its local standard deviation.

Two rounds of light-sheet imaging rarely keep their brightness: stains fade, the light sheet's
intensity falls off across the volume. Metrics that compare intensities directly (the demons'
squared difference) or correlate the whole image at once (the coarse B-spline) then follow the
bright regions. In local contrast every region counts alike, as in a windowed (local)
correlation. Used by the coarse stage (:mod:`lazyreg.registration.coarse`) and by the demons'
``intensity="local"`` (:func:`lazyreg.registration.demons.align_demons`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr
from scipy import ndimage as ndi

from ..images import grid_of

__all__ = ["CONTRAST_FLOOR", "contrast_values", "local_contrast"]

#: The local standard deviation is floored at this fraction of its mean over the image, so that
#: flat background is not amplified into noise.
CONTRAST_FLOOR = 0.05


def contrast_values(values: np.ndarray, sigma: Sequence[float]) -> np.ndarray:
    """Local contrast of an array: Gaussian windows of ``sigma`` voxels per axis (float32).

    The edges repeat the nearest voxel (``mode="nearest"``); the local standard deviation is
    floored at :data:`CONTRAST_FLOOR` of its mean over the array.

    Examples
    --------
    >>> v = np.random.default_rng(0).random((8, 8, 32)) * np.arange(1, 33)   # brighter along x
    >>> c = contrast_values(v, (2.0, 2.0, 2.0))
    >>> c.dtype, round(float(v[..., -8:].std() / v[..., :8].std()), 1), round(float(c[..., -8:].std() / c[..., :8].std()), 1)
    (dtype('float32'), 4.7, 1.3)
    """
    v = np.asarray(values, dtype=np.float32)
    d = v - ndi.gaussian_filter(v, sigma, mode="nearest")
    sd = np.sqrt(ndi.gaussian_filter(d * d, sigma, mode="nearest"))
    return d / (sd + np.float32(CONTRAST_FLOOR * max(float(sd.mean()), 1e-12)))


def local_contrast(img: xr.DataArray, sigma: float) -> xr.DataArray:
    """``img`` (in memory) in local contrast (:func:`contrast_values`), with windows of ``sigma``
    physical units per axis, on the same grid (float32). The coarse stage passes it to
    :func:`lazyreg.align` as ``prepare``, so that it runs inside the registration task.

    Examples
    --------
    >>> import lazyreg
    >>> img = lazyreg.image(np.random.default_rng(0).random((16, 16, 48)) * np.arange(1, 49), 1.0)
    >>> out = local_contrast(img, 3.0)    # the brightness ramp along x is gone:
    >>> [round(float(x[..., 8:16].std() / x[..., 32:40].std()), 2) for x in (img, out)]
    [0.37, 0.92]
    """
    sig = tuple(float(sigma) / s for s in grid_of(img).spacing)
    return img.copy(data=contrast_values(np.asarray(img.values), sig))
