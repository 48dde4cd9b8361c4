"""Moving's intensities made comparable with fixed's, for metrics that compare them directly.

The demons fit intensity *differences*: a moving round that is 1.6x as bright as fixed (stains,
laser power, exposure) pulls every edge of the field towards the brighter side. The correlation
metrics of the affine and B-spline steps do not care; the demons do. Two remedies, each measured
over the voxels where both images have data only (outside the moving image's view the values
are fill, not tissue):

* :func:`linear_map` - a gain and an offset giving moving fixed's mean and standard deviation;
* :func:`matched_histogram` - a piecewise-linear map of quantiles (histogram matching).

For brightness that changes from region to region, see :mod:`lazyreg.registration.contrast`
(local contrast), or run the demons in blocks (``align_piecewise``): each block then fits its own
map.
"""

from __future__ import annotations

import numpy as np

from .blobs import bin_mean

__all__ = ["MAP_BIN", "linear_map", "matched_histogram"]

#: :func:`linear_map` measures the two images' statistics on means of ``MAP_BIN``^3 voxels: the
#: noise then hardly counts. Voxel statistics are biased wherever one image is noisier than the
#: other - e.g. moving after interpolation, which averages its noise away: on the known-truth
#: tutorial pair (equal brightness) the voxels' standard deviations gave a gain of 1.025 and a
#: mean error of 0.39 voxel after the demons, the 4^3 means 1.003 and 0.32 (0.33 with no map).
MAP_BIN = 4


def _usable(moving: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """The voxels the maps use: ``valid`` ones (default all) where ``moving`` is finite."""
    finite = np.isfinite(moving)
    return finite if valid is None else np.asarray(valid, dtype=bool) & finite


def linear_map(
    fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None, bin_size: int = MAP_BIN
) -> tuple[float, float]:
    """Gain and offset that give ``moving`` the mean and standard deviation of ``fixed``.

    Both arrays are on the same grid (moving already resampled onto fixed's). The statistics are
    taken over ``valid`` voxels (default: where ``moving`` is finite), on means of ``bin_size``^3
    voxels whose voxels are all valid, so that noise does not bias them; with fewer than 8 such
    bins (small images), on the voxels themselves. Where either image is flat the map is the
    identity, ``(1.0, 0.0)``.

    Parameters
    ----------
    fixed, moving : ndarray
        3-D arrays of the same shape.
    valid : ndarray of bool, optional
        The voxels where both images have data.
    bin_size : int
        Edge of the bins, in voxels (default :data:`MAP_BIN`).

    Returns
    -------
    gain, offset : float
        ``gain * moving + offset`` has fixed's mean and standard deviation over ``valid``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> f = rng.random((16, 16, 16)) * 100
    >>> gain, offset = linear_map(f, (f - 20) / 2)
    >>> round(gain, 6), round(offset, 6)
    (2.0, 20.0)
    """
    f = np.asarray(fixed)
    m = np.asarray(moving)
    if f.shape != m.shape:
        raise ValueError(f"linear_map: fixed {f.shape} and moving {m.shape} differ in shape")
    ok = _usable(m, valid)
    m = np.where(ok, m, 0.0)
    k = (bin_size,) * 3
    # bins whose voxels are all valid (a bin with one invalid voxel has a mean of 1 - 1 / k^3 at most)
    wb = bin_mean(ok, k) > 1 - 0.5 / bin_size**3 if min(f.shape) >= bin_size else np.zeros((0,), bool)
    if int(wb.sum()) >= 8:
        fs, ms = bin_mean(f, k, np.float64)[wb], bin_mean(m, k, np.float64)[wb]
    else:
        fs, ms = np.asarray(f, np.float64)[ok], np.asarray(m, np.float64)[ok]
    sf, sm = (float(fs.std()), float(ms.std())) if fs.size else (0.0, 0.0)
    if not (sf > 0 and sm > 0 and np.isfinite(sf) and np.isfinite(sm)):
        return 1.0, 0.0
    gain = sf / sm
    return gain, float(fs.mean()) - gain * float(ms.mean())


def matched_histogram(fixed: np.ndarray, moving: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """``moving`` with its histogram matched to ``fixed``'s over the ``valid`` voxels (float32).

    Each valid moving value goes to fixed's value at the same quantile (percentiles 0, 1, ...,
    100 of both, linear in between), the percentiles taken over the valid voxels of both arrays
    alone. Voxels outside ``valid`` (default: where ``moving`` is not finite) keep their values.
    (ITK's ``HistogramMatching`` maps each image's minimum and, below its mean, interpolates
    linearly between the two: one noisy voxel then moves the map of half the values.)

    Examples
    --------
    >>> f = np.random.default_rng(0).random((8, 8, 8)).astype(np.float32) * 100
    >>> out = matched_histogram(f, f * 0.5 + 7)
    >>> float(np.abs(out - f).max()) < 1e-3
    True
    """
    m = np.array(moving, dtype=np.float32)
    ok = _usable(m, valid)
    n = int(ok.sum())
    if n == 0:
        return m
    step = max(1, n // 1_000_000)  # percentiles of a million voxels are as good and cheaper
    q = np.linspace(0.0, 100.0, 101)
    qm = np.percentile(m[ok][::step], q)
    qf = np.percentile(np.asarray(fixed, dtype=np.float32)[ok][::step], q)
    m[ok] = np.interp(m[ok], qm, qf)
    return m
