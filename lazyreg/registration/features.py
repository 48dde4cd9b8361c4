"""Global alignment by feature points: blobs, rotation-invariant descriptors, matching and RANSAC.

The pipeline of :func:`align_features`, all eager and on in-memory arrays (pass downsampled levels):

1. **Blobs** (:func:`detect_blobs`): a scale-normalised difference-of-Gaussians stack over a few
   sigmas, computed on a block-averaged copy whose voxels are about a third of the smallest blob
   radius (so the 16 M voxel tutorial volume is filtered at 2 M voxels), with sigmas given in physical
   units so that blobs are round in physical space whatever the voxel anisotropy. Local maxima of
   the maximum over scales, refined to sub-voxel positions by a parabola fit, strongest first.
2. **Descriptors** of each blob's neighbourhood (radius ``context_radius``, physical units,
   sampled by trilinear interpolation on a copy smoothed to half the sampling step):

   - *shells*: 8 concentric spheres of 100 directions each; per shell the mean and the energy in
     each spherical-harmonic degree ``l = 1..4``. These energies do not change when the
     neighbourhood rotates, by any angle; shells ``context_radius / 8`` apart on an image smoothed
     by half that change little under a 10% scale change.
   - *patches*: the values on a coarse 9x9x9 grid (within the sphere) - bigstream's context
     correlation, but sampled in physical units and smoothed. More distinctive than the shells
     while rotations stay below ~20 degrees (measured on the tutorial data: ~80% vs ~65% correct
     matches at 0-20 degrees, 52% vs 67% at 30 degrees).

3. **Global matching**: for each descriptor kind, all fixed against all moving blobs at once by
   matrix products of standardised vectors (Pearson correlation, in row blocks); a pair is kept
   when it is mutually best, its correlation is at least ``match_threshold`` and it passes a
   ratio test against the second-best candidate. The union of both kinds goes to RANSAC.
4. **RANSAC** (:func:`ransac_affine`): 4-point minimal samples solved in batches with
   ``numpy.linalg.solve``, scored by truncated squared residuals (MSAC), adaptive iteration count,
   then least-squares refits on the inliers.
5. **Guided matching** (twice): with the affine found, patches are compared again - the moving
   patch grid now mapped by the affine's linear part, so rotation, scale and shear are undone -
   but only against moving blobs within a small radius of where the affine predicts them. These
   matches are more numerous and reliable; RANSAC on them gives the result.

All point coordinates are physical (z, y, x); matrices map fixed points to moving points.
"""

from __future__ import annotations

import math
import time
from typing import Any, Sequence

import numpy as np
import xarray as xr
from scipy import ndimage
from scipy.spatial import cKDTree

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..validation import check_spacing

__all__ = ["detect_blobs", "ransac_affine", "align_features", "validate_options"]

_SQRT3 = math.sqrt(3.0)
_LMAX = 4  # spherical-harmonic degrees in the shell descriptor
_N_SHELLS = 8  # shells within the context radius
_N_DIRS = 100  # directions sampled on each shell
_N_PATCH = 4  # patch half-width in samples


# --------------------------------------------------------------------------------------------
# option checks


def _check_blob_sizes(blob_sizes: Any) -> tuple[float, float]:
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


def _check_int(value: Any, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or int(value) < minimum:
        raise LazyregError(f"{name}: expected an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_float(value: Any, name: str, lo: float, hi: float = math.inf, *, lo_open: bool = True) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    bad = not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo)
    if bad or isinstance(value, bool):
        bracket = "(" if lo_open else "["
        raise LazyregError(f"{name}: expected a number in {bracket}{lo:g}, {hi:g}], got {value!r}")
    return v


def validate_options(name: str, opts: dict) -> None:
    """Check the options of an ``align_features`` step without reading any data.

    Called by :func:`lazyreg.registration.steps.parse_steps` so that a bad option fails before any work.

    Parameters
    ----------
    name : str
        The step name (used only in messages).
    opts : dict
        Keyword arguments meant for :func:`align_features`.

    Raises
    ------
    LazyregError
        Naming the first bad option.

    Examples
    --------
    >>> from lazyreg.registration.features import validate_options
    >>> validate_options("ransac", {"blob_sizes": (4, 12), "match_threshold": 0.6})
    """
    if "blob_sizes" in opts:
        _check_blob_sizes(opts["blob_sizes"])
    if "nspots" in opts:
        _check_int(opts["nspots"], "nspots", 4)
    if "num_sigma_max" in opts:
        _check_int(opts["num_sigma_max"], "num_sigma_max", 1)
    if "max_iterations" in opts:
        _check_int(opts["max_iterations"], "max_iterations", 1)
    if "match_threshold" in opts:
        _check_float(opts["match_threshold"], "match_threshold", -1.0, 1.0)
    if "match_ratio" in opts:
        _check_float(opts["match_ratio"], "match_ratio", 0.0, 1.0)
    for key in ("align_threshold", "context_radius"):
        if opts.get(key) is not None:
            _check_float(opts[key], key, 0.0)
    if opts.get("diagonal_constraint") is not None:
        _check_float(opts["diagonal_constraint"], "diagonal_constraint", 0.0, lo_open=False)
    if opts.get("threshold") is not None:
        _check_float(opts["threshold"], "threshold", -math.inf)
    if "fallback" in opts and opts["fallback"] not in (None, "identity"):
        raise LazyregError(
            f"fallback: expected None (raise an error) or 'identity', got {opts['fallback']!r}"
        )


# --------------------------------------------------------------------------------------------
# blob detection


def _as_volume(values: Any, name: str) -> np.ndarray:
    """A finite 3D array (not copied when already a numpy array), with clear errors."""
    if isinstance(values, xr.DataArray):
        values = values.data
    if hasattr(values, "compute") and not isinstance(values, np.ndarray):
        values = values.compute()
    v = np.asarray(values)
    if v.ndim != 3:
        raise LazyregError(f"{name}: expected a 3D (z, y, x) array, got shape {v.shape}")
    if v.size == 0:
        raise LazyregError(f"{name}: image is empty (shape {v.shape})")
    if v.dtype == np.bool_:
        v = v.astype(np.uint8)
    if not np.issubdtype(v.dtype, np.number) or np.issubdtype(v.dtype, np.complexfloating):
        raise LazyregError(f"{name}: expected a real numeric dtype, got {v.dtype}")
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


def _bin(v: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Block means (float32) by integer factors; a partial block at the far end is dropped.

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

        acc = part(0).astype(np.float32)
        for r in range(1, f):
            acc += part(r)
        out = acc
    if out is v:
        return np.asarray(v, dtype=np.float32)
    n = int(np.prod(factors))
    if n > 1:
        out *= np.float32(1.0 / n)
    return out


def _detect_factors(spacing: np.ndarray, sigma_lo: float) -> np.ndarray:
    """Integer block sizes so that the smallest sigma spans about 1.5 working voxels."""
    return np.maximum(1, np.floor(sigma_lo / (1.5 * spacing))).astype(int)


def _blob_sigmas(blob_sizes: tuple[float, float], unit: float, num_sigma_max: int) -> tuple[np.ndarray, float]:
    """Gaussian sigmas (physical) bracketing the DoG levels, and the ratio between levels."""
    s_lo = blob_sizes[0] * unit / _SQRT3
    s_hi = blob_sizes[1] * unit / _SQRT3
    ratio_span = s_hi / s_lo
    n = 1 if ratio_span < 1.05 else int(min(num_sigma_max, max(2, math.ceil(math.log(ratio_span) / math.log(1.3)) + 1)))
    k = ratio_span ** (1.0 / (n - 1)) if n > 1 else 1.3
    # DoG level j lies between Gaussians j and j + 1, at sigma ~ s_lo * k**j
    return s_lo * k ** (np.arange(n + 1) - 0.5), k


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
    # the block mean already blurs by a box of variance (f^2 - 1) / 12 voxels^2
    box_var = ((factors.astype(float) ** 2 - 1) / 12.0) / factors.astype(float) ** 2
    s0 = np.sqrt(np.maximum((sigmas[0] / wspacing) ** 2 - box_var, 0.09))
    prev = ndimage.gaussian_filter(work, s0, mode="nearest", truncate=3.5)
    best = np.full(work.shape, -np.inf, dtype=np.float32)
    norm = np.float32(1.0 / (k - 1.0))
    for j in range(1, len(sigmas)):
        inc = np.sqrt(sigmas[j] ** 2 - sigmas[j - 1] ** 2) / wspacing
        cur = ndimage.gaussian_filter(prev, inc, mode="nearest", truncate=3.5)
        dog = prev - cur  # ~ -(k - 1) sigma^2 laplacian: positive on bright blobs, scale-normalised
        dog *= norm
        np.maximum(best, dog, out=best)
        prev = cur
    del prev, dog
    rad = np.maximum(1, np.round(sigmas[1] / wspacing)).astype(int)
    peak = ndimage.maximum_filter(best, size=tuple(2 * rad + 1), mode="nearest") == best
    if threshold is None:
        # 5 robust standard deviations above the typical response: drops noise maxima
        sub = best.ravel()[:: max(1, best.size // 1_000_000)]
        med = float(np.median(sub))
        thr = max(0.0, med + 5 * 1.4826 * float(np.median(np.abs(sub - med))))
    else:
        thr = float(threshold)
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
    # sub-voxel refinement along each axis
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
    full = (idx + off) * factors + (factors - 1) / 2.0
    if mask is not None:
        near = np.clip(np.rint(full).astype(int), 0, np.asarray(mask.shape) - 1)
        inside = mask[tuple(near.T)]
        full, strength = full[inside], strength[inside]
    order = np.argsort(-strength, kind="stable")[:nspots]
    return np.column_stack([full[order], strength[order]])


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
    >>> from lazyreg.registration.features import detect_blobs
    >>> z, y, x = np.mgrid[:32, :40, :40]
    >>> img = np.exp(-((z - 15) ** 2 / 2 + (y - 20) ** 2 + (x - 12) ** 2) / (2 * 3.0**2))
    >>> detect_blobs(img, (2.0, 1.0, 1.0), blob_sizes=(3, 8), nspots=1)[:, :3].round(1)
    array([[15., 20., 12.]])
    """
    v = _as_volume(values, "values")
    sp = np.asarray(check_spacing(spacing), dtype=float)
    b = _check_blob_sizes(blob_sizes)
    nspots = _check_int(nspots, "nspots", 1)
    num_sigma_max = _check_int(num_sigma_max, "num_sigma_max", 1)
    unit = float(sp.min()) if unit is None else _check_float(unit, "unit", 0.0)
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
    sigmas, k = _blob_sigmas(b, unit, num_sigma_max)
    factors = _detect_factors(sp, sigmas[1])
    work = _bin(v, factors)
    return _detect(work, sp * factors, factors, sigmas, k, nspots, threshold, m)


# --------------------------------------------------------------------------------------------
# descriptors


def _fibonacci_sphere(n: int) -> np.ndarray:
    """``n`` nearly uniform unit vectors (z, y, x)."""
    i = np.arange(n) + 0.5
    z = 1 - 2 * i / n
    r = np.sqrt(1 - z * z)
    phi = np.pi * (1 + 5**0.5) * i
    return np.column_stack([z, r * np.sin(phi), r * np.cos(phi)])


def _sh_basis(dirs: np.ndarray, lmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Real orthonormal spherical harmonics (D, (lmax + 1)^2) at unit vectors, and each column's degree.

    For a real function the energy in degree ``l``, ``sum_m |<f, Y_lm>|^2``, is the sum of the
    squared projections on these columns (``Re Y_l0``, ``sqrt(2) Re Y_lm``, ``sqrt(2) Im Y_lm``,
    m > 0); it does not change when the function is rotated.
    """
    from scipy.special import sph_harm_y

    theta = np.arccos(np.clip(dirs[:, 0], -1, 1))  # polar angle from the z axis
    phi = np.arctan2(dirs[:, 1], dirs[:, 2])
    cols, degree = [], []
    for l in range(lmax + 1):
        cols.append(sph_harm_y(l, 0, theta, phi).real)
        degree.append(l)
        for m in range(1, l + 1):
            y = sph_harm_y(l, m, theta, phi)
            cols += [np.sqrt(2) * y.real, np.sqrt(2) * y.imag]
            degree += [l, l]
    return np.stack(cols, axis=1), np.asarray(degree)


class _Pyramid:
    """An in-memory image and its block-averaged copies (float32), computed once per factor."""

    def __init__(self, v: np.ndarray, g: Grid):
        self.v = v
        self.g = g
        self.spacing = np.asarray(g.spacing, dtype=float)
        self._cache: dict[tuple, np.ndarray] = {}

    def binned(self, factors: np.ndarray) -> np.ndarray:
        key = tuple(int(f) for f in factors)
        if key not in self._cache:
            self._cache[key] = _bin(self.v, np.asarray(key))
        return self._cache[key]


def _descriptor_volume(pyr: _Pyramid, step: float) -> tuple[np.ndarray, Grid]:
    """A copy smoothed to about half the sampling ``step`` (physical) on a grid no coarser than
    ``step``, for descriptor sampling; its grid's origin is relative to the image's origin."""
    sp = pyr.spacing
    factors = np.maximum(1, np.floor(step / sp)).astype(int)
    work = pyr.binned(factors)
    wsp = sp * factors
    box_var = ((factors.astype(float) ** 2 - 1) / 12.0) / factors.astype(float) ** 2
    s = np.sqrt(np.maximum((0.5 * step / wsp) ** 2 - box_var, 0.0))
    if np.any(s > 0.2):
        work = ndimage.gaussian_filter(work, s, mode="nearest", truncate=3.0)
    origin = (factors - 1) / 2.0 * sp
    return work, Grid(work.shape, tuple(wsp), tuple(origin))


def _sample(
    vol: np.ndarray, g: Grid, origin: np.ndarray, centres: np.ndarray, offsets: np.ndarray, lin: np.ndarray
) -> np.ndarray:
    """Values (N, P) at ``centres + lin @ offsets`` (physical) by trilinear interpolation."""
    sp = np.asarray(g.spacing)
    c = (centres - origin - np.asarray(g.origin)) / sp  # (N, 3) working indices
    o = (offsets @ lin.T) / sp  # (P, 3)
    idx = np.empty((3, len(c), len(o)), dtype=np.float64)
    for ax in range(3):
        np.add.outer(c[:, ax], o[:, ax], out=idx[ax])
    out = ndimage.map_coordinates(vol, idx.reshape(3, -1), order=1, mode="nearest", output=np.float32)
    return out.reshape(len(centres), len(offsets))


def _zscore_rows(a: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    sd = np.sqrt((a * a).mean(axis=1, keepdims=True))
    return a / np.where(sd > 0, sd, 1.0)


class _Describer:
    """Samples shell and patch descriptors of one image around physical points."""

    def __init__(self, pyr: _Pyramid, radius: float):
        self.step = radius / _N_SHELLS
        self.vol, self.wg = _descriptor_volume(pyr, self.step)
        self.origin = np.asarray(pyr.g.origin)
        self.radius = radius
        r = np.arange(-_N_PATCH, _N_PATCH + 1) * (radius / _N_PATCH)
        o = np.stack(np.meshgrid(r, r, r, indexing="ij"), -1).reshape(-1, 3)
        self.patch_offsets = o[np.linalg.norm(o, axis=1) <= radius * (1 + 1e-9)]

    def shells(self, pts: np.ndarray, lin: np.ndarray) -> np.ndarray:
        """Rotation-invariant descriptors (N, F): shell means and spherical-harmonic energies."""
        dirs = _fibonacci_sphere(_N_DIRS)
        radii = self.step * np.arange(1, _N_SHELLS + 1)
        offsets = np.concatenate([np.zeros((1, 3)), (radii[:, None, None] * dirs[None]).reshape(-1, 3)])
        vals = _zscore_rows(_sample(self.vol, self.wg, self.origin, pts, offsets, lin))
        shells = vals[:, 1:].reshape(len(pts), _N_SHELLS, _N_DIRS)
        Y, degree = _sh_basis(dirs, _LMAX)
        coef = shells @ (Y * (4 * np.pi / _N_DIRS)).astype(np.float32)
        energy = np.zeros((len(pts), _N_SHELLS, _LMAX + 1), dtype=np.float32)
        for l in range(_LMAX + 1):
            energy[:, :, l] = np.sqrt((coef[:, :, degree == l] ** 2).sum(-1))
        feats = [vals[:, :1], shells.mean(-1), energy[:, :, 1:].reshape(len(pts), -1)]
        return np.concatenate(feats, axis=1)

    def patches(self, pts: np.ndarray, lin: np.ndarray) -> np.ndarray:
        """Neighbourhood patches (N, P) on a regular physical grid within the context radius."""
        return _zscore_rows(_sample(self.vol, self.wg, self.origin, pts, self.patch_offsets, lin))


# --------------------------------------------------------------------------------------------
# matching


def _match_all(da: np.ndarray, db: np.ndarray, threshold: float, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual-best matches between all descriptors by Pearson correlation, with a ratio test.

    The correlation matrix is computed in row blocks (matrix products), never all at once.
    """
    # standardise each feature over both sets, so that correlations measure how two blobs'
    # neighbourhoods differ from the typical one, not their common blob-like profile
    both = np.concatenate([da, db])
    mu, sd = both.mean(axis=0), both.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    za = _zscore_rows((da - mu) / sd).astype(np.float32)
    zb = _zscore_rows((db - mu) / sd).astype(np.float32)
    n, m = len(za), len(zb)
    scale = np.float32(1.0 / za.shape[1])
    best_b = np.zeros(n, dtype=np.int64)
    score = np.zeros(n, dtype=np.float32)
    second = np.full(n, -1.0, dtype=np.float32)
    col_best = np.full(m, -np.inf, dtype=np.float32)
    col_arg = np.zeros(m, dtype=np.int64)
    rows = max(1, 8_000_000 // max(m, 1))
    for s in range(0, n, rows):
        c = (za[s : s + rows] @ zb.T) * scale
        r = np.arange(len(c))
        bb = np.argmax(c, axis=1)
        best_b[s : s + rows] = bb
        score[s : s + rows] = c[r, bb]
        if m > 1:
            second[s : s + rows] = np.partition(c, -2, axis=1)[:, -2]
        cm, ca = c.max(axis=0), np.argmax(c, axis=0) + s
        upd = cm > col_best
        col_best[upd], col_arg[upd] = cm[upd], ca[upd]
    ia = np.arange(n)
    mutual = col_arg[best_b] == ia
    # ratio of descriptor distances: the squared distance of z-scored vectors is 2F(1 - correlation)
    distinct = (1.0 - score) <= ratio**2 * (1.0 - second) if m > 1 else np.ones(n, bool)
    keep = mutual & (score >= threshold) & distinct
    return ia[keep], best_b[keep], score[keep].astype(np.float64)


def _match_guided(
    fpat: np.ndarray, mpat: np.ndarray, pred: np.ndarray, mpts: np.ndarray, gate: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual-best matches by patch correlation among moving points within ``gate`` of ``pred``."""
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(mpts), gate, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    i = pairs["i"].astype(np.int64)
    j = pairs["j"].astype(np.int64)
    corr = np.empty(len(i), dtype=np.float32)
    step = max(1, 2_000_000 // fpat.shape[1])
    for s in range(0, len(i), step):
        corr[s : s + step] = np.einsum("ij,ij->i", fpat[i[s : s + step]], mpat[j[s : s + step]])
    corr /= np.float32(fpat.shape[1])
    # best moving candidate per fixed point and best fixed candidate per moving point
    o = np.lexsort((-corr, i))
    first = np.ones(len(o), bool)
    first[1:] = i[o][1:] != i[o][:-1]
    best_i = o[first]
    o2 = np.lexsort((-corr, j))
    first2 = np.ones(len(o2), bool)
    first2[1:] = j[o2][1:] != j[o2][:-1]
    best_j = np.full(len(mpts), -1, dtype=np.int64)
    best_j[j[o2[first2]]] = i[o2[first2]]
    keep = (best_j[j[best_i]] == i[best_i]) & (corr[best_i] >= threshold)
    sel = best_i[keep]
    return i[sel], j[sel], corr[sel].astype(np.float64)


# --------------------------------------------------------------------------------------------
# RANSAC


def _check_points(points: Any, name: str, minimum: int = 1) -> np.ndarray:
    try:
        p = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise LazyregError(f"{name}: expected an (N, 3) array of physical (z, y, x) points") from None
    if p.ndim != 2 or p.shape[1] != 3:
        raise LazyregError(f"{name}: expected an (N, 3) array of physical (z, y, x) points, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise LazyregError(f"{name}: points must be finite (found NaN or infinity)")
    if len(p) < minimum:
        raise LazyregError(f"{name}: need at least {minimum} points, got {len(p)}")
    return p


def _affine_to_matrix(m: np.ndarray, cp: np.ndarray, cq: np.ndarray, scale: float) -> np.ndarray:
    """(4, 3) solution of ``[(p - cp) / scale, 1] @ m = q - cq`` as a 4x4 fixed -> moving matrix."""
    lin = m[:3].T / scale
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = m[3] + cq - lin @ cp
    return out


def ransac_affine(
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    *,
    align_threshold: float,
    max_iterations: int = 20000,
    seed: int = 0,
    diagonal_constraint: float | None = None,
    confidence: float = 0.9999,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust affine from putative point correspondences by vectorised RANSAC.

    Minimal samples of 4 correspondences are drawn and solved in batches; each candidate is
    scored over all correspondences by the truncated squared residual (MSAC). Sampling stops
    after ``max_iterations`` candidates or once the best inlier ratio makes a better candidate
    unlikely (``confidence``). The best candidate is refit by least squares on its inliers until
    the inlier set stops changing.

    Parameters
    ----------
    fixed_points, moving_points : (N, 3) arrays
        Corresponding physical points (z, y, x), row ``i`` of each forming a putative pair.
    align_threshold : float
        Largest residual |M(p) - q| of an inlier, in physical units.
    max_iterations : int
        Most random minimal samples.
    seed : int
        Random seed; the result is deterministic for a seed.
    diagonal_constraint : float, optional
        Reject candidates whose linear part has a diagonal entry farther than this from 1
        (as bigstream does), e.g. 0.25 rejects scalings or rotations beyond that.
    confidence : float
        Probability of having drawn an all-inlier sample at which sampling stops.

    Returns
    -------
    matrix : (4, 4) ndarray
        Fixed -> moving affine (zyx, physical).
    inliers : (N,) bool ndarray
        Correspondences within ``align_threshold`` of the final fit.

    Raises
    ------
    LazyregError
        Fewer than 4 correspondences, bad options, or no candidate with 5 inliers.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.registration.features import ransac_affine
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0, 100, (50, 3))
    >>> q = p @ np.diag([1.1, 0.9, 1.0]).T + [5, -3, 2]
    >>> q[:10] = rng.uniform(0, 100, (10, 3))  # outliers
    >>> m, inl = ransac_affine(p, q, align_threshold=1.0)
    >>> np.round(m[:3], 6) + 0.0, int(inl.sum())
    (array([[ 1.1,  0. ,  0. ,  5. ],
           [ 0. ,  0.9,  0. , -3. ],
           [ 0. ,  0. ,  1. ,  2. ]]), 40)
    """
    p = _check_points(fixed_points, "fixed_points", 4)
    q = _check_points(moving_points, "moving_points", 4)
    if len(p) != len(q):
        raise LazyregError(
            f"moving_points: expected as many points as fixed_points ({len(p)}), got {len(q)}"
        )
    thr = _check_float(align_threshold, "align_threshold", 0.0)
    max_iterations = _check_int(max_iterations, "max_iterations", 1)
    if diagonal_constraint is not None:
        diagonal_constraint = _check_float(diagonal_constraint, "diagonal_constraint", 0.0, lo_open=False)
    confidence = _check_float(confidence, "confidence", 0.0, 1.0)
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise LazyregError(f"seed: expected an integer, got {seed!r}")
    n = len(p)
    cp, cq = p.mean(0), q.mean(0)
    scale = float(np.sqrt(((p - cp) ** 2).sum(1).mean())) or 1.0
    X = np.column_stack([(p - cp) / scale, np.ones(n)])
    Y = q - cq
    thr2 = thr * thr
    rng = np.random.default_rng(int(seed))
    batch = int(max(16, min(1024, 4_000_000 // n)))
    best_score, best_m, best_count = np.inf, None, 0
    done, needed = 0, max_iterations
    while done < min(needed, max_iterations):
        k = min(batch, max_iterations - done)
        done += k
        idx = rng.integers(0, n, size=(k, 4))
        s = np.sort(idx, axis=1)
        ok = np.all(s[:, 1:] != s[:, :-1], axis=1)
        Xs = X[idx[ok]]
        ok2 = np.abs(np.linalg.det(Xs)) > 1e-6
        if not ok2.any():
            continue
        m = np.linalg.solve(Xs[ok2], Y[idx[ok][ok2]])  # (k', 4, 3)
        good = np.all(np.isfinite(m), axis=(1, 2))
        if diagonal_constraint is not None:
            diag = np.stack([m[:, i, i] for i in range(3)], 1) / scale
            good &= np.all(np.abs(diag - 1.0) <= diagonal_constraint, axis=1)
        m = m[good]
        if len(m) == 0:
            continue
        r2 = ((X @ m - Y) ** 2).sum(-1)
        score = np.minimum(r2, thr2).sum(1)
        j = int(np.argmin(score))
        if score[j] < best_score:
            best_score, best_m = float(score[j]), m[j]
            best_count = int((r2[j] < thr2).sum())
            w = best_count / n
            if w >= 1:
                needed = done
            elif w > 0:
                needed = int(math.ceil(math.log(1 - confidence) / math.log(1 - w**4)))
    if best_m is None or best_count < 5:
        # a minimal sample always fits its own 4 points: at least one more must agree
        raise LazyregError(
            f"align_threshold: RANSAC found no affine with at least 5 of {n} correspondences within "
            f"{thr:g} (best: {best_count}); raise align_threshold or max_iterations, or improve the matches"
        )
    m = best_m
    inl = ((X @ m - Y) ** 2).sum(1) < thr2
    for _ in range(20):
        if inl.sum() < 4:
            break
        m_new = np.linalg.lstsq(X[inl], Y[inl], rcond=None)[0]
        new = ((X @ m_new - Y) ** 2).sum(1) < thr2
        if new.sum() < 4:
            break
        m = m_new
        if np.array_equal(new, inl):
            break
        inl = new
    inl = ((X @ m - Y) ** 2).sum(1) < thr2
    return _affine_to_matrix(m, cp, cq, scale), inl


# --------------------------------------------------------------------------------------------
# the alignment step


def _check_matrix(initial: Any) -> np.ndarray | None:
    if initial is None:
        return None
    if hasattr(initial, "matrix"):
        initial = initial.matrix
    if hasattr(initial, "compute") and not isinstance(initial, np.ndarray):
        initial = initial.compute()
    try:
        m = np.asarray(initial, dtype=float)
    except (TypeError, ValueError):
        raise LazyregError("initial: expected a 4x4 matrix (fixed -> moving)") from None
    if m.shape != (4, 4) or not np.all(np.isfinite(m)):
        raise LazyregError(f"initial: expected a finite 4x4 matrix (fixed -> moving), got shape {m.shape}")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise LazyregError("initial: the matrix's linear part is singular")
    return m


def _mask_values(mask: Any, shape: tuple, name: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = mask.data if isinstance(mask, xr.DataArray) else mask
    if hasattr(m, "compute") and not isinstance(m, np.ndarray):
        m = m.compute()
    m = np.asarray(m)
    if m.shape != tuple(shape):
        raise LazyregError(f"{name}: shape {m.shape} differs from its image's shape {tuple(shape)}")
    m = m.astype(bool)
    if not m.any():
        raise LazyregError(f"{name}: the mask is empty (no True voxel); pass {name}=None or a larger mask")
    return m


def _user_points(points: Any, g: Grid, name: str, nspots: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """User points inside the image (physical); a seeded subset of ``nspots`` when there are more."""
    p = _check_points(points, name)
    idx = g.to_index(p)
    inside = np.all((idx >= -0.5) & (idx <= np.asarray(g.shape) - 0.5), axis=1)
    if not inside.any():
        lo, hi = g.extent
        raise LazyregError(
            f"{name}: none of the {len(p)} points lies inside the image (physical extent "
            f"{tuple(np.round(lo, 3))} to {tuple(np.round(hi, 3))}); pass physical (z, y, x) coordinates"
        )
    p = p[inside]
    if len(p) > nspots:
        p = p[np.sort(rng.choice(len(p), nspots, replace=False))]
    return p, int((~inside).sum())


def align_features(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    blob_sizes: tuple[float, float] = (6, 20),
    nspots: int = 2000,
    num_sigma_max: int = 6,
    threshold: float | None = None,
    context_radius: float | None = None,
    match_threshold: float = 0.5,
    match_ratio: float = 0.95,
    align_threshold: float | None = None,
    diagonal_constraint: float | None = None,
    fixed_points: np.ndarray | None = None,
    moving_points: np.ndarray | None = None,
    fixed_mask: Any = None,
    moving_mask: Any = None,
    initial: np.ndarray | None = None,
    fallback: str | None = None,
    seed: int = 0,
    max_iterations: int = 20000,
) -> tuple[np.ndarray, dict]:
    """Global affine from matched blobs: detection, neighbourhood descriptors and RANSAC.

    Blobs are detected in both images (:func:`detect_blobs`), described by rotation-invariant
    spherical-shell statistics and by coarse patches of their neighbourhood, and matched by
    correlation; RANSAC (:func:`ransac_affine`) finds an affine. Then patches aligned by that
    affine are matched among nearby blobs only, and RANSAC on these reliable matches gives the
    result. See the module docstring for the design. Handles rotations of any angle in
    principle and 10% scale changes (tested: 40 degrees on synthetic data, 20 degrees with 8%
    scale on the tutorial data).

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (numpy- or dask-backed; computed here, so pass a downsampled level).
    blob_sizes : (float, float)
        Smallest and largest blob radius in voxels of the fixed image's smallest spacing; the
        same physical sizes are used in both images.
    nspots : int
        Most blobs kept per image, strongest first.
    num_sigma_max : int
        Most scale levels in blob detection.
    threshold : float, optional
        Smallest DoG response of a blob (see :func:`detect_blobs`).
    context_radius : float, optional
        Radius of the neighbourhood described around each blob, physical units; default
        ``2 * sqrt(blob_sizes[0] * blob_sizes[1])`` voxels (about 4 typical blob radii).
    match_threshold : float
        Smallest descriptor correlation of a match in (-1, 1]; lower it when too few matches
        are found, raise it when RANSAC drowns in false matches.
    match_ratio : float
        Ratio test in (0, 1]: the best candidate's descriptor distance must be below this
        fraction of the second best's (1 disables the test).
    align_threshold : float, optional
        Largest inlier residual in RANSAC, physical units; default twice the geometric mean of
        the fixed image's spacing.
    diagonal_constraint : float, optional
        Reject candidate affines whose diagonal deviates from 1 by more than this.
    fixed_points, moving_points : (N, 3) arrays, optional
        Physical (z, y, x) positions to use instead of detected blobs (e.g. centroids of a
        segmentation); points outside the image are dropped, at most ``nspots`` are used.
    fixed_mask, moving_mask : boolean images or arrays, optional
        Keep only detected blobs inside the masks (same shape as their images); not applied to
        user points. Useful when one field of view is much larger than the other, since only
        the ``nspots`` strongest blobs of each image are used.
    initial : (4, 4) array, optional
        Starting transform fixed -> moving. Blobs are detected in both images as they are; the
        moving neighbourhoods are sampled on the shells mapped by ``initial``'s linear part
        (ellipsoids matching the fixed spheres), so any scale or shear in ``initial`` is undone
        before descriptors are compared (rotations need no help). When the global matches give no
        consistent affine, patches are matched among moving blobs within ``context_radius`` of
        where ``initial`` maps the fixed blobs instead, so a rough ``initial`` (e.g. from a random
        search) rescues images whose descriptors are ambiguous. The returned matrix is the
        complete fixed -> moving transform (not a correction to compose with ``initial``).
    fallback : {None, "identity"}
        What to do when too few blobs, matches or inliers are found: ``None`` raises a
        :class:`LazyregError`; ``"identity"`` leaves the transform unchanged - it returns
        ``initial`` (or the identity) and records the reason in ``report["fallback"]``.
    seed : int
        Random seed for RANSAC and point subsets; results are deterministic for a seed.
    max_iterations : int
        Most RANSAC samples per RANSAC run.

    Returns
    -------
    matrix : (4, 4) ndarray
        Fixed -> moving affine (zyx, physical).
    report : dict
        ``fixed_blobs``, ``moving_blobs`` (blobs or user points used), ``matches`` (global
        descriptor matches; ``matches_shells``, ``matches_patches`` by kind), ``global_inliers``
        (RANSAC inliers among them), ``guided_matches``, ``inliers`` (final RANSAC inliers),
        ``residual`` (mean inlier residual, physical), ``start`` (what the guided matching started
        from), ``context_radius``, ``align_threshold``, ``seconds_detect``, ``seconds_describe``,
        ``seconds_match``, ``seconds_ransac``, ``seconds``, ``fallback`` (None or the reason).

    Raises
    ------
    LazyregError
        Bad images or options (before any work), or too few blobs / matches / inliers without
        a ``fallback``; the message gives the counts and the option to change.

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.features import align_features
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((48, 96, 96), seed=0)
    >>> m, report = align_features(fixed, moving, blob_sizes=(2, 8))
    >>> bool(abs(m - truth)[:3, :3].max() < 0.05)
    True
    """
    t_start = time.perf_counter()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    validate_options(
        "ransac",
        dict(
            blob_sizes=blob_sizes, nspots=nspots, num_sigma_max=num_sigma_max, threshold=threshold,
            context_radius=context_radius, match_threshold=match_threshold, match_ratio=match_ratio,
            align_threshold=align_threshold, diagonal_constraint=diagonal_constraint, fallback=fallback,
            max_iterations=max_iterations,
        ),
    )
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise LazyregError(f"seed: expected an integer, got {seed!r}")
    b = _check_blob_sizes(blob_sizes)
    init = _check_matrix(initial)
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    unit = float(min(gf.spacing))
    for name, g in (("fixed", gf), ("moving", gm)):
        ext = np.asarray(g.shape) * np.asarray(g.spacing)
        if np.any(ext < 2 * b[0] * unit):
            raise LazyregError(
                f"{name}: the image ({g.shape} voxels, {tuple(np.round(ext, 3))} physical) is smaller than "
                f"the smallest blob diameter {2 * b[0] * unit:g}; lower blob_sizes or pass a finer level"
            )
    fv = _as_volume(fixed, "fixed")
    mv = _as_volume(moving, "moving")
    fmask = _mask_values(fixed_mask, fv.shape, "fixed_mask")
    mmask = _mask_values(moving_mask, mv.shape, "moving_mask")
    radius = float(context_radius) if context_radius is not None else 2.0 * math.sqrt(b[0] * b[1]) * unit
    thr = float(align_threshold) if align_threshold is not None else 2.0 * float(np.prod(gf.spacing)) ** (1 / 3)
    rng = np.random.default_rng(int(seed))
    start = np.eye(4) if init is None else init
    report: dict[str, Any] = {
        "step": "ransac",
        "fixed_blobs": 0,
        "moving_blobs": 0,
        "matches": 0,
        "guided_matches": 0,
        "inliers": 0,
        "residual": None,
        "context_radius": radius,
        "align_threshold": thr,
        "fallback": None,
    }

    def fail(message: str) -> tuple[np.ndarray, dict]:
        if fallback is None:
            raise LazyregError(message)
        report["fallback"] = message
        report["seconds"] = time.perf_counter() - t_start
        return start.copy(), report

    # 1. blobs
    t0 = time.perf_counter()
    sigmas, k = _blob_sigmas(b, unit, num_sigma_max)
    pts = []
    pyrs = (_Pyramid(fv, gf), _Pyramid(mv, gm))
    for name, pyr, g, mask, user in (
        ("fixed", pyrs[0], gf, fmask, fixed_points),
        ("moving", pyrs[1], gm, mmask, moving_points),
    ):
        if user is not None:
            p, dropped = _user_points(user, g, f"{name}_points", nspots, rng)
            report[f"{name}_points_outside"] = dropped
        else:
            factors = _detect_factors(pyr.spacing, sigmas[1])
            blobs = _detect(pyr.binned(factors), pyr.spacing * factors, factors, sigmas, k, nspots, threshold, mask)
            p = g.to_physical(blobs[:, :3])
        report[f"{name}_blobs"] = len(p)
        pts.append(p)
    fpts, mpts = pts
    report["seconds_detect"] = time.perf_counter() - t0
    counts = f"{len(fpts)} blobs in fixed and {len(mpts)} in moving"
    if min(len(fpts), len(mpts)) < 4:
        return fail(
            f"blob_sizes: found only {counts} (at least 4 each are needed); widen blob_sizes={b}, "
            "raise nspots, lower threshold or check the masks"
        )

    # 2. descriptors and global matching
    t0 = time.perf_counter()
    fdesc = _Describer(pyrs[0], radius)
    mdesc = _Describer(pyrs[1], radius)
    eye = np.eye(3)
    fsh = fdesc.shells(fpts, eye)
    msh = mdesc.shells(mpts, start[:3, :3])
    fpat = fdesc.patches(fpts, eye)
    mpat0 = mdesc.patches(mpts, start[:3, :3])
    report["seconds_describe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # union of the matches by both descriptors: shells are rotation invariant, patches are more
    # distinctive up to ~20 degrees; RANSAC sorts out the wrong ones
    sa, sb, _ = _match_all(fsh, msh, match_threshold, match_ratio)
    pa, pb, _ = _match_all(fpat, mpat0, match_threshold, match_ratio)
    pair = np.unique(np.concatenate([sa * len(mpts) + sb, pa * len(mpts) + pb]))
    ia, ib = pair // len(mpts), pair % len(mpts)
    report["matches"] = len(ia)
    report["matches_shells"], report["matches_patches"] = len(sa), len(pa)
    report["seconds_match"] = time.perf_counter() - t0

    # 3. RANSAC on the global matches
    t0 = time.perf_counter()
    m1, inl1 = None, np.zeros(len(ia), bool)
    if len(ia) >= 4:
        try:
            m1, inl1 = ransac_affine(
                fpts[ia], mpts[ib], align_threshold=thr, max_iterations=max_iterations,
                seed=int(rng.integers(2**31)), diagonal_constraint=diagonal_constraint,
            )
        except LazyregError:
            m1, inl1 = None, np.zeros(len(ia), bool)
    report["seconds_ransac"] = time.perf_counter() - t0
    report["global_inliers"] = int(inl1.sum())
    guide = dict(
        fpts=fpts, mpts=mpts, fpat=fpat, mdesc=mdesc, thr=thr, match_threshold=match_threshold,
        max_iterations=max_iterations, diagonal_constraint=diagonal_constraint, rng=rng, report=report,
    )
    # chance agreements among wrong matches: a few points, growing with the number of matches
    needed = max(8, int(math.ceil(0.05 * len(ia))))
    if m1 is not None and inl1.sum() >= needed:
        report["start"] = "global matches"
        matrix, inliers, gi, gj = _guided(m1, inl1, ia, ib, gate=max(2.0 * thr, 2.0 * fdesc.step), **guide)
    else:
        # the descriptors found no consistent set: try patches aligned by the starting transform,
        # among blobs within the context radius of where it maps the fixed blobs
        report["start"] = "initial" if init is not None else "identity"
        none = np.zeros(0, bool)
        matrix, inliers, gi, gj = _guided(start, none, none, none, gate=max(2.0 * thr, radius), **guide)
        # matches gated near the start are already roughly consistent: demand far more agreement
        if inliers.sum() < max(20, int(math.ceil(0.3 * report["guided_matches"]))):
            if len(ia) < 4:
                return fail(
                    f"match_threshold: {len(ia)} matches with correlation >= {match_threshold:g} among "
                    f"{counts} (at least 4 are needed); lower match_threshold, raise match_ratio, widen "
                    "blob_sizes, raise nspots, change context_radius or pass a rough initial (e.g. from "
                    "a 'random' step)"
                )
            return fail(
                f"match_threshold: RANSAC found {int(inl1.sum())} inliers within align_threshold={thr:g} "
                f"among {len(ia)} matches of {counts} (at least {needed} are needed); lower match_threshold, "
                "raise align_threshold, widen blob_sizes, raise nspots or pass a rough initial (e.g. "
                "from a 'random' step)"
            )
    res = np.linalg.norm(fpts[gi] @ matrix[:3, :3].T + matrix[:3, 3] - mpts[gj], axis=1)
    report["inliers"] = int(inliers.sum())
    report["residual"] = float(res[inliers].mean())
    report["seconds"] = time.perf_counter() - t_start
    return matrix, report


def _guided(
    matrix: np.ndarray,
    inliers: np.ndarray,
    gi: np.ndarray,
    gj: np.ndarray,
    *,
    gate: float,
    fpts: np.ndarray,
    mpts: np.ndarray,
    fpat: np.ndarray,
    mdesc: _Describer,
    thr: float,
    match_threshold: float,
    max_iterations: int,
    diagonal_constraint: float | None,
    rng: np.random.Generator,
    report: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two rounds of patch matching guided by ``matrix`` and RANSAC; keeps the best result."""
    for _ in range(2):
        t0 = time.perf_counter()
        mpat = mdesc.patches(mpts, matrix[:3, :3])
        pred = fpts @ matrix[:3, :3].T + matrix[:3, 3]
        gi_new, gj_new, _ = _match_guided(fpat, mpat, pred, mpts, gate, match_threshold)
        report["seconds_match"] += time.perf_counter() - t0
        if len(gi_new) < max(6, inliers.sum() // 2):
            break
        t0 = time.perf_counter()
        try:
            m2, inl2 = ransac_affine(
                fpts[gi_new], mpts[gj_new], align_threshold=thr, max_iterations=max_iterations,
                seed=int(rng.integers(2**31)), diagonal_constraint=diagonal_constraint,
            )
        except LazyregError:
            break
        finally:
            report["seconds_ransac"] += time.perf_counter() - t0
        if inl2.sum() < inliers.sum():
            break
        matrix, inliers, gi, gj = m2, inl2, gi_new, gj_new
        report["guided_matches"] = len(gi)
        gate = max(1.5 * thr, mdesc.step)
    return matrix, inliers, gi, gj
