"""Bright blobs by a fast, anisotropy-aware difference-of-Gaussians scale space.

A scale-normalised difference-of-Gaussians stack over a few sigmas is computed on a block-averaged
copy whose voxels are about a third of the smallest blob radius (so the 16 M voxel tutorial volume
is filtered at 2 M voxels), with sigmas given in physical units so that blobs are round in
physical space whatever the voxel anisotropy. Local maxima of the maximum over scales are refined
to sub-voxel positions by a parabola fit, strongest first.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage

from ..errors import LazyregError
from ..images import Grid
from ..validation import check_int, check_number, check_spacing

__all__ = ["detect_blobs", "Pyramid", "check_blob_sizes", "as_volume", "check_volume_array"]

_SQRT3 = math.sqrt(3.0)
#: Gaussian kernels of the DoG stack reach this many sigmas (``scipy.ndimage`` ``truncate``).
TRUNCATE = 3.5


def check_blob_sizes(blob_sizes: Any) -> tuple[float, float]:
    """Smallest and largest blob radius (voxels), both positive and in order.

    Examples
    --------
    >>> check_blob_sizes([6, 20])
    (6.0, 20.0)
    >>> check_blob_sizes((20, 6))
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: blob_sizes: the smallest radius 20 is larger than the largest 6; pass (smallest, largest)
    """
    try:
        b = np.asarray(blob_sizes, dtype=float)
    except (TypeError, ValueError):
        b = None
    if b is None or b.shape != (2,) or not np.all(np.isfinite(b)):
        raise LazyregError(
            f"blob_sizes: expected two numbers (smallest, largest blob radius in voxels), got {blob_sizes!r}"
        )
    if b[0] <= 0 or b[1] <= 0:
        raise LazyregError(f"blob_sizes: blob radii must be positive, got {tuple(b.tolist())}")
    if b[0] > b[1]:
        raise LazyregError(
            f"blob_sizes: the smallest radius {b[0]:g} is larger than the largest {b[1]:g}; "
            "pass (smallest, largest)"
        )
    return float(b[0]), float(b[1])


def check_volume_array(v: Any, name: str) -> Any:
    """``v`` (a numpy or dask array) checked as a 3-D real volume, booleans as uint8.

    The checks that need no pass over the values (shape, size, dtype), shared by the in-memory
    (:func:`as_volume`) and the chunked (:class:`~lazyreg.registration.blob_chunks.LazyPyramid`)
    paths.

    Examples
    --------
    >>> check_volume_array(np.ones((2, 2, 2), dtype=bool), "fixed").dtype
    dtype('uint8')
    >>> check_volume_array(np.ones((2, 2)), "fixed")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed: expected a 3D (z, y, x) array, got shape (2, 2)
    """
    if v.ndim != 3:
        raise LazyregError(f"{name}: expected a 3D (z, y, x) array, got shape {v.shape}")
    if v.size == 0:
        raise LazyregError(f"{name}: image is empty (shape {v.shape})")
    if v.dtype == np.bool_:
        v = v.astype(np.uint8)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise LazyregError(f"{name}: expected a real numeric dtype, got {v.dtype}")
    return v


def as_volume(values: Any, name: str) -> np.ndarray:
    """A finite, non-constant 3D array (not copied when already a numpy array), with clear errors.

    Examples
    --------
    >>> as_volume(np.zeros((2, 2, 2)), "fixed")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed: image is all zero; there is nothing to detect or align
    """
    if isinstance(values, xr.DataArray):
        values = values.data
    if hasattr(values, "compute") and not isinstance(values, np.ndarray):
        values = values.compute()
    v = check_volume_array(np.asarray(values), name)
    if np.issubdtype(v.dtype, np.floating):
        bad = ~np.isfinite(v)
        if bad.any():
            raise LazyregError(
                f"{name}: contains {int(bad.sum())} NaN or infinite voxels; replace them "
                "(e.g. numpy.nan_to_num) before aligning"
            )
    lo, hi = v.min(), v.max()
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant ({hi})"
        raise LazyregError(f"{name}: image is {what}; there is nothing to detect or align")
    return v


def bin_mean(v: np.ndarray, factors: np.ndarray, dtype: type = np.float32) -> np.ndarray:
    """Block means (float32, or ``dtype``) by integer factors; a partial block at the far end is dropped.

    Block ``i`` of an axis with factor ``f`` has its centre at full-resolution index
    ``i * f + (f - 1) / 2``.
    """
    factors = np.minimum(np.asarray(factors, dtype=int), v.shape)
    out: np.ndarray = v
    for ax, f in enumerate(int(k) for k in factors):
        if f == 1:
            continue
        full = (out.shape[ax] // f) * f

        def part(r: int) -> np.ndarray:
            sl = [slice(None)] * 3
            sl[ax] = slice(r, full, f)
            return out[tuple(sl)]

        acc = part(0).astype(dtype)
        for r in range(1, f):
            acc += part(r)
        out = acc
    if out is v:
        return np.asarray(v, dtype=dtype)
    n = int(np.prod(factors))
    if n > 1:
        out *= dtype(1.0 / n)
    return out


def detect_factors(spacing: np.ndarray, sigma_lo: float) -> np.ndarray:
    """Integer block sizes so that the smallest sigma spans about 1.5 working voxels."""
    return np.maximum(1, np.floor(sigma_lo / (1.5 * spacing))).astype(int)


def blob_sigmas(blob_sizes: tuple[float, float], unit: float, num_sigma_max: int) -> tuple[np.ndarray, float]:
    """Gaussian sigmas (physical) bracketing the DoG levels, and the ratio between levels."""
    s_lo = blob_sizes[0] * unit / _SQRT3
    s_hi = blob_sizes[1] * unit / _SQRT3
    ratio_span = s_hi / s_lo
    n = 1 if ratio_span < 1.05 else int(min(num_sigma_max, max(2, math.ceil(math.log(ratio_span) / math.log(1.3)) + 1)))
    k = ratio_span ** (1.0 / (n - 1)) if n > 1 else 1.3
    # DoG level j lies between Gaussians j and j + 1, at sigma ~ s_lo * k**j
    return s_lo * k ** (np.arange(n + 1) - 0.5), k


def dog_filters(wspacing: np.ndarray, factors: np.ndarray, sigmas: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """The Gaussian sigmas (working voxels, per axis) applied in turn, and the local-maximum radius.

    The first filter takes the binned image to ``sigmas[0]`` (the block mean already blurs by a
    box of variance ``(f^2 - 1) / 12`` voxels^2); each next one adds the increment to
    ``sigmas[j]``. The radius (per axis) of the local-maximum footprint is ``sigmas[1]`` in
    working voxels, at least 1.
    """
    box_var = ((factors.astype(float) ** 2 - 1) / 12.0) / factors.astype(float) ** 2
    filters = [np.sqrt(np.maximum((sigmas[0] / wspacing) ** 2 - box_var, 0.09))]
    for j in range(1, len(sigmas)):
        filters.append(np.sqrt(sigmas[j] ** 2 - sigmas[j - 1] ** 2) / wspacing)
    rad = np.maximum(1, np.round(sigmas[1] / wspacing)).astype(int)
    return filters, rad


def dog_response(work: np.ndarray, filters: list[np.ndarray], k: float) -> np.ndarray:
    """Maximum over the scale-normalised DoG levels (float32) of a binned volume."""
    prev = ndimage.gaussian_filter(work, filters[0], mode="nearest", truncate=TRUNCATE)
    best = np.full(work.shape, -np.inf, dtype=np.float32)
    norm = np.float32(1.0 / (k - 1.0))
    for inc in filters[1:]:
        cur = ndimage.gaussian_filter(prev, inc, mode="nearest", truncate=TRUNCATE)
        dog = prev - cur  # ~ -(k - 1) sigma^2 laplacian: positive on bright blobs, scale-normalised
        dog *= norm
        np.maximum(best, dog, out=best)
        prev = cur
    return best


def local_maxima(best: np.ndarray, rad: np.ndarray) -> np.ndarray:
    """Voxels equal to the maximum of ``best`` over a box of half-width ``rad`` (per axis)."""
    return ndimage.maximum_filter(best, size=tuple(2 * rad + 1), mode="nearest") == best


def auto_threshold(sample: np.ndarray) -> float:
    """5 robust standard deviations above the median of a sample of DoG responses (at least 0)."""
    med = float(np.median(sample))
    return max(0.0, med + 5 * 1.4826 * float(np.median(np.abs(sample - med))))


def sample_stride(size: int) -> int:
    """Every how many voxels (of the raveled response) the automatic threshold samples."""
    return max(1, size // 1_000_000)


def refine_peaks(best: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sub-voxel offsets (N, 3) of peaks ``idx`` by a parabola through each axis' neighbours."""
    strength = best[tuple(idx.T)].astype(np.float64)
    off = np.zeros(idx.shape, dtype=np.float64)
    for ax in range(3):
        e = np.zeros(3, dtype=int)
        e[ax] = 1
        lo = best[tuple((idx - e).T)].astype(np.float64)
        hi = best[tuple((idx + e).T)].astype(np.float64)
        den = lo - 2 * strength + hi
        with np.errstate(divide="ignore", invalid="ignore"):
            d = np.where(den < 0, 0.5 * (lo - hi) / den, 0.0)
        off[:, ax] = np.clip(d, -0.5, 0.5)
    return off


def select_blobs(full: np.ndarray, strength: np.ndarray, nspots: int, inside: np.ndarray | None) -> np.ndarray:
    """The ``nspots`` strongest blobs (N, 4), ties in the order given; ``inside``: a mask per blob."""
    if inside is not None:
        full, strength = full[inside], strength[inside]
    order = np.argsort(-strength, kind="stable")[:nspots]
    return np.column_stack([full[order], strength[order]]) if len(order) else np.zeros((0, 4))


def _detect(
    work: np.ndarray,
    wspacing: np.ndarray,
    factors: np.ndarray,
    sigmas: np.ndarray,
    k: float,
    nspots: int,
    threshold: float | None,
    mask: np.ndarray | None,
) -> np.ndarray:
    """Blob detection on a binned volume; returns (N, 4) full-resolution indices and strengths."""
    filters, rad = dog_filters(wspacing, factors, sigmas)
    best = dog_response(work, filters, k)
    peak = local_maxima(best, rad)
    # 5 robust standard deviations above the typical response: drops noise maxima
    thr = auto_threshold(best.ravel()[:: sample_stride(best.size)]) if threshold is None else float(threshold)
    peak &= best > thr
    # drop the outermost working voxels: a parabola fit needs both neighbours
    for ax in range(3):
        sl = [slice(None)] * 3
        sl[ax] = 0
        peak[tuple(sl)] = False
        sl[ax] = -1
        peak[tuple(sl)] = False
    idx = np.argwhere(peak)
    if len(idx) == 0:
        return np.zeros((0, 4))
    strength = best[tuple(idx.T)].astype(np.float64)
    full = (idx + refine_peaks(best, idx)) * factors + (factors - 1) / 2.0
    inside = None
    if mask is not None:
        near = np.clip(np.rint(full).astype(int), 0, np.asarray(mask.shape) - 1)
        inside = mask[tuple(near.T)]
    return select_blobs(full, strength, nspots, inside)


class Pyramid:
    """An in-memory image on its grid and its block-averaged copies (float32), each made once.

    Blob detection and descriptor sampling share the copies.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.images import Grid
    >>> pyr = Pyramid(np.ones((8, 8, 8)), Grid((8, 8, 8), 1.0))
    >>> pyr.binned((2, 2, 4)).shape
    (4, 4, 2)
    """

    def __init__(self, v: np.ndarray, g: Grid):
        self.v = v
        self.g = g
        self.spacing = np.asarray(g.spacing, dtype=float)
        self._cache: dict[tuple, np.ndarray] = {}

    def binned(self, factors: Sequence[int]) -> np.ndarray:
        """The image block-averaged by integer ``factors`` (z, y, x)."""
        key = tuple(int(f) for f in factors)
        if key not in self._cache:
            self._cache[key] = bin_mean(self.v, np.asarray(key))
        return self._cache[key]

    def blobs(
        self, sigmas: np.ndarray, k: float, nspots: int, threshold: float | None, mask: np.ndarray | None
    ) -> np.ndarray:
        """Blobs for the DoG ``sigmas`` (from :func:`blob_sigmas`): (N, 4) voxel indices and strengths."""
        factors = detect_factors(self.spacing, sigmas[1])
        return _detect(self.binned(factors), self.spacing * factors, factors, sigmas, k, nspots, threshold, mask)


def detect_blobs(
    values: np.ndarray,
    spacing: float | Sequence[float],
    *,
    blob_sizes: tuple[float, float] = (6, 20),
    nspots: int = 2000,
    num_sigma_max: int = 6,
    threshold: float | None = None,
    mask: np.ndarray | None = None,
    unit: float | None = None,
) -> np.ndarray:
    """Bright blobs by a fast, anisotropy-aware difference-of-Gaussians scale space.

    Parameters
    ----------
    values : (Z, Y, X) array_like
        The image (numpy, dask or an xarray image; computed here).
    spacing : float or 3 floats
        Voxel spacing (z, y, x) in physical units; sigmas are set in physical units so that
        blobs are round in physical space.
    blob_sizes : (float, float)
        Smallest and largest blob radius, in voxels of size ``unit``. A Gaussian blob of sigma
        ``s`` has radius ``s * sqrt(3)``.
    nspots : int
        Keep at most this many blobs, strongest first.
    num_sigma_max : int
        Most scale levels; levels are spaced by a factor of about 1.3 between the sizes.
    threshold : float, optional
        Smallest scale-normalised DoG response (in image intensity units) kept; default 5
        robust standard deviations (1.4826 median absolute deviations) above the median response,
        which drops maxima of noise and background texture.
    mask : (Z, Y, X) bool array, optional
        Keep only blobs whose nearest voxel is inside the mask.
    unit : float, optional
        Physical size of one voxel of ``blob_sizes``; default the smallest spacing.

    Returns
    -------
    (N, 4) ndarray
        Sub-voxel voxel indices (z, y, x) in columns 0-2 and the response strength in column 3,
        strongest first.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.registration.blobs import detect_blobs
    >>> z, y, x = np.mgrid[:32, :40, :40]
    >>> img = np.exp(-((z - 15) ** 2 / 2 + (y - 20) ** 2 + (x - 12) ** 2) / (2 * 3.0**2))
    >>> detect_blobs(img, (2.0, 1.0, 1.0), blob_sizes=(3, 8), nspots=1)[:, :3].round(1)
    array([[15., 20., 12.]])
    """
    v = as_volume(values, "values")
    sp = np.asarray(check_spacing(spacing), dtype=float)
    b = check_blob_sizes(blob_sizes)
    nspots = check_int(nspots, "nspots", minimum=1)
    num_sigma_max = check_int(num_sigma_max, "num_sigma_max", minimum=1)
    unit = float(sp.min()) if unit is None else check_number(unit, "unit", 0.0, lo_open=True)
    m = None
    if mask is not None:
        m = np.asarray(mask.data if isinstance(mask, xr.DataArray) else mask)
        if hasattr(m, "compute"):
            m = np.asarray(m.compute())
        if m.shape != v.shape:
            raise LazyregError(f"mask: shape {m.shape} differs from the image's {v.shape}")
        m = m.astype(bool)
        if not m.any():
            raise LazyregError("mask: the mask is empty (no True voxel); pass mask=None or a larger mask")
    sigmas, k = blob_sigmas(b, unit, num_sigma_max)
    return Pyramid(v, Grid(v.shape, tuple(sp))).blobs(sigmas, k, nspots, threshold, m)
