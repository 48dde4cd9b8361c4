"""Blob detection chunk by chunk, on dask-backed images that need not fit in memory.

The result is exactly :func:`lazyreg.registration.blobs.detect_blobs`'s (tested bit for bit):

1. **Binning** (:func:`binned_array`): the image cropped to whole blocks, re-chunked to multiples
   of the binning factors, and each chunk block-averaged by the same function as the in-memory
   path (element by element the same float32 sums).
2. **Tiles**: the binned image is cut into cores of :data:`DETECT_CHUNK` working voxels per axis;
   a task computes the DoG stack on its core plus a halo (:func:`detect_halo`) and keeps the local
   maxima whose centre lies in its core. The halo is the support of the filters a core voxel's
   peak test depends on: the Gaussians are applied in cascade (each adds its increment to the
   previous level), so their radii add up, ``sum_j int(3.5 sigma_j + 0.5)`` (sigmas in working
   voxels, as ``scipy.ndimage``'s kernels), plus the half-width of the local-maximum footprint
   (``sigmas[1]``, which also covers the neighbours of the sub-voxel parabola fit). Where a core
   meets the image's edge there is no halo and the filters' ``nearest`` mode sees the same edge as
   on the whole image. For the tutorial settings (6 levels, blob radii 6 to 20 voxels of level 1)
   this is 57 x 53 x 53 working voxels, about 2.5 times 3.5 sigma of the largest scale: the
   cascade's radii add up where its sigmas add in squares.
3. **The one global statistic**, the automatic threshold (median + 5 MADs of every
   ``sample_stride``-th value of the raveled response), is taken from the values each task
   returns for those positions inside its core; candidates are kept above the lower bound it
   always satisfies (0, or the given ``threshold``) and thresholded once gathered.
4. Gathered candidates are put in raster order (ties in strength then break as on the whole
   image), masked (the mask is read at the blobs only) and the ``nspots`` strongest kept.

Memory per task: its tile (core + halo) of the binned image in float32, times about 5 (the DoG
working arrays); the full-resolution image is read chunk by chunk, never whole.
"""

from __future__ import annotations

import itertools
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid
from ..regions import region_task
from ..validation import check_int, check_number, check_spacing
from .blobs import (
    TRUNCATE, auto_threshold, bin_mean, blob_sigmas, check_blob_sizes, check_volume_array, detect_factors, dog_filters,
    dog_response, local_maxima, refine_peaks, sample_stride, select_blobs,
)

__all__ = ["DETECT_CHUNK", "detect_blobs_chunked", "detect_halo", "binned_array", "is_chunked", "lazy_mask", "LazyPyramid"]

#: Side (working voxels, i.e. of the binned image) of the core of one detection task.
DETECT_CHUNK = 128


def is_chunked(img: Any) -> bool:
    """Whether an image is dask-backed with more than one chunk (then detected chunk by chunk).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.ones((8, 8, 8)), 1.0)
    >>> is_chunked(img), is_chunked(img.chunk({"z": 4}))
    (False, True)
    """
    data = img.data if isinstance(img, xr.DataArray) else img
    return isinstance(data, da.Array) and data.npartitions > 1


def binned_array(x: da.Array, factors: Sequence[int]) -> da.Array:
    """Lazy block means (float32) by integer ``factors``, equal to :func:`blobs.bin_mean` on the whole.

    A partial block at the far end of an axis is dropped; chunks are made multiples of the factors
    (re-chunking only axes whose chunks are not).

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> v = np.arange(7 * 8 * 9, dtype=np.uint16).reshape(7, 8, 9)
    >>> b = binned_array(da.from_array(v, chunks=3), (2, 2, 3))
    >>> b.shape, b.chunks[0]
    ((3, 4, 3), (1, 1, 1))
    >>> from lazyreg.registration.blobs import bin_mean
    >>> bool((b.compute() == bin_mean(v, np.array([2, 2, 3]))).all())
    True
    """
    f = np.minimum(np.asarray(factors, dtype=int), x.shape)
    n = np.asarray(x.shape) // f
    x = x[tuple(slice(0, int(a * b)) for a, b in zip(n, f))]
    target = []
    for ax, c in enumerate(x.chunks):
        if all(s % f[ax] == 0 for s in c):
            target.append(c)
        else:
            target.append(int(max(f[ax], (max(c) // f[ax]) * f[ax])))
    x = x.rechunk(tuple(target))
    out_chunks = tuple(tuple(s // int(f[ax]) for s in c) for ax, c in enumerate(x.chunks))
    return x.map_blocks(bin_mean, factors=tuple(int(a) for a in f), dtype=np.float32, chunks=out_chunks)


def detect_halo(filters: list[np.ndarray], rad: np.ndarray) -> np.ndarray:
    """Halo (working voxels per axis) that makes a tile's peaks equal to the whole image's.

    ``filters`` and ``rad`` as returned by :func:`lazyreg.registration.blobs.dog_filters`: the sum
    of the cascaded Gaussian kernels' radii plus the local-maximum footprint's half-width.

    Examples
    --------
    >>> detect_halo([np.array([1.0, 1.0, 1.0]), np.array([2.0, 2.0, 1.0])], np.array([1, 1, 1]))
    array([12, 12,  9])
    """
    radii = sum(np.array([int(TRUNCATE * float(s) + 0.5) for s in sig]) for sig in filters)
    return np.asarray(radii, dtype=int) + np.asarray(rad, dtype=int)


def _sample_positions(own: tuple, shape: tuple, stride: int) -> tuple[np.ndarray, ...]:
    """Indices, relative to the core, of the core's voxels whose raveled global index is a multiple of ``stride``."""
    (z0, z1), (y0, y1), (x0, x1) = own
    zz, yy = np.meshgrid(np.arange(z0, z1, dtype=np.int64), np.arange(y0, y1, dtype=np.int64), indexing="ij")
    base = ((zz * shape[1] + yy) * shape[2] + x0).ravel()
    first = (-base) % stride  # offset from x0 of the first multiple in each row
    counts = np.maximum(0, -(-((x1 - x0) - first) // stride))
    rows = np.repeat(np.arange(len(base)), counts)
    within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    xs = first[rows] + within * stride
    return zz.ravel()[rows] - z0, yy.ravel()[rows] - y0, xs


def _tile_peaks(work, ext_lo, own, shape, filters, k, rad, lower, stride):
    """One task: candidate peaks in the core (global working indices, strengths, sub-voxel offsets)
    and the response at the threshold's sample positions inside the core."""
    best = dog_response(np.asarray(work, dtype=np.float32), filters, k)
    peak = local_maxima(best, rad)
    rel = tuple(slice(a - e, b - e) for (a, b), e in zip(own, ext_lo))
    core = best[rel]
    p = peak[rel] & (core > lower)
    for ax in range(3):  # the outermost working voxels of the image: a parabola fit needs both neighbours
        sl = [slice(None)] * 3
        if own[ax][0] == 0:
            sl[ax] = 0
            p[tuple(sl)] = False
        if own[ax][1] == shape[ax]:
            sl[ax] = -1
            p[tuple(sl)] = False
    idx = np.argwhere(p) + np.array([r.start for r in rel])
    strength = best[tuple(idx.T)].astype(np.float64)
    off = refine_peaks(best, idx) if len(idx) else np.zeros((0, 3))
    sample = core[_sample_positions(own, shape, stride)]
    return idx + np.asarray(ext_lo), strength, off, sample


def _tiles(shape: tuple, chunk: int, halo: np.ndarray):
    """(core, extended box) per tile, as ((lo, hi) x 3) pairs of global working indices."""
    starts = [range(0, n, chunk) for n in shape]
    for lo in itertools.product(*starts):
        own = tuple((a, min(a + chunk, n)) for a, n in zip(lo, shape))
        ext = tuple((max(0, a - int(h)), min(n, b + int(h))) for (a, b), h, n in zip(own, halo, shape))
        yield own, ext


def _value_checks(x: da.Array) -> list:
    """Lazy statistics for :func:`as_volume`'s checks: min, max, and (floats) the non-finite count."""
    out = [x.min(), x.max()]
    if np.issubdtype(x.dtype, np.floating):
        out.append((~da.isfinite(x)).sum())
    return out


def _raise_bad_values(stats: Sequence, name: str) -> None:
    if len(stats) > 2 and int(stats[2]):
        raise LazyregError(
            f"{name}: contains {int(stats[2])} NaN or infinite voxels; replace them "
            "(e.g. numpy.nan_to_num) before aligning"
        )
    lo, hi = stats[0], stats[1]
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant ({hi})"
        raise LazyregError(f"{name}: image is {what}; there is nothing to detect or align")


class LazyPyramid:
    """A dask-backed image on its grid, with lazy binned copies: :class:`blobs.Pyramid` for
    images that are not loaded whole. ``blobs`` detects chunk by chunk; descriptors
    (:class:`lazyreg.registration.descriptors.Describer`) read the binned copy around points.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from lazyreg.images import Grid
    >>> pyr = LazyPyramid(da.ones((8, 8, 8), chunks=4), Grid((8, 8, 8), 1.0), "fixed")
    >>> pyr.binned((2, 2, 4)).shape
    (4, 4, 2)
    """

    def __init__(self, data: da.Array, g: Grid, name: str, chunk: int | None = None):
        data = check_volume_array(data, name)
        self.data, self.g, self.name = data, g, name
        self.chunk = int(DETECT_CHUNK if chunk is None else chunk)
        self.spacing = np.asarray(g.spacing, dtype=float)
        self._cache: dict[tuple, da.Array] = {}
        self._checked = False

    def binned(self, factors: Sequence[int]) -> da.Array:
        """The image block-averaged by integer ``factors`` (z, y, x), lazily."""
        key = tuple(int(f) for f in factors)
        if key not in self._cache:
            self._cache[key] = binned_array(self.data, key)
        return self._cache[key]

    def check(self) -> None:
        """Raise as :func:`blobs.as_volume` on NaN / infinite voxels or a constant image (one pass)."""
        if not self._checked:
            _raise_bad_values(dask.compute(*_value_checks(self.data)), self.name)
            self._checked = True

    def blobs(
        self, sigmas: np.ndarray, k: float, nspots: int, threshold: float | None, mask: Any
    ) -> np.ndarray:
        """Blobs for the DoG ``sigmas``, tile by tile: as :meth:`blobs.Pyramid.blobs`."""
        factors = detect_factors(self.spacing, sigmas[1])
        f = np.minimum(factors, self.data.shape)
        work = self.binned(f)
        filters, rad = dog_filters(self.spacing * factors, factors, sigmas)
        halo = detect_halo(filters, rad)
        lower = 0.0 if threshold is None else float(threshold)  # the automatic threshold is >= 0
        stride = sample_stride(work.size)
        tasks = [
            dask.delayed(_tile_peaks, pure=True)(
                region_task(work, tuple(slice(a, b) for a, b in ext)), tuple(a for a, _ in ext), own, work.shape,
                filters, k, rad, lower, stride,
            )
            for own, ext in _tiles(work.shape, self.chunk, halo)
        ]
        checks = [] if self._checked else _value_checks(self.data)
        # one computation (the image is read once for both); all delayed, so results stay in order
        *parts, stats = dask.compute(*tasks, dask.delayed(list)(checks))
        if checks:
            _raise_bad_values(stats, self.name)
            self._checked = True
        idx = np.concatenate([p[0] for p in parts]).reshape(-1, 3)
        strength = np.concatenate([p[1] for p in parts])
        off = np.concatenate([p[2] for p in parts]).reshape(-1, 3)
        thr = auto_threshold(np.concatenate([p[3] for p in parts])) if threshold is None else float(threshold)
        keep = strength > thr
        idx, strength, off = idx[keep], strength[keep], off[keep]
        order = np.lexsort((idx[:, 2], idx[:, 1], idx[:, 0]))  # raster order, as on the whole image
        idx, strength, off = idx[order], strength[order], off[order]
        full = (idx + off) * factors + (factors - 1) / 2.0
        inside = None
        if mask is not None and len(full):
            near = np.clip(np.rint(full).astype(int), 0, np.asarray(mask.shape) - 1)
            inside = np.asarray(mask.vindex[tuple(near.T)].compute() if isinstance(mask, da.Array)
                                else np.asarray(mask)[tuple(near.T)], dtype=bool)
        return select_blobs(full, strength, nspots, inside)


def lazy_mask(mask: Any, shape: tuple, name: str) -> Any:
    """A mask for :meth:`LazyPyramid.blobs`, not loaded: shape and emptiness checked (one pass).

    Examples
    --------
    >>> import dask.array as da
    >>> lazy_mask(da.zeros((4, 4, 4), chunks=2, dtype=bool), (4, 4, 4), "fixed_mask")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed_mask: the mask is empty (no True voxel); pass fixed_mask=None or a larger mask
    """
    if mask is None:
        return None
    m = mask.data if isinstance(mask, xr.DataArray) else mask
    if not isinstance(m, da.Array):
        m = np.asarray(m)
    if tuple(m.shape) != tuple(shape):
        raise LazyregError(f"{name}: shape {tuple(m.shape)} differs from its image's shape {tuple(shape)}")
    m = m.astype(bool)
    if not bool(m.any()):
        raise LazyregError(f"{name}: the mask is empty (no True voxel); pass {name}=None or a larger mask")
    return m


def detect_blobs_chunked(
    values: Any,
    spacing: float | Sequence[float],
    *,
    blob_sizes: tuple[float, float] = (6, 20),
    nspots: int = 2000,
    num_sigma_max: int = 6,
    threshold: float | None = None,
    mask: Any = None,
    unit: float | None = None,
    chunk: int = DETECT_CHUNK,
) -> np.ndarray:
    """:func:`lazyreg.registration.blobs.detect_blobs`, computed tile by tile on a dask array.

    The same parameters and the same result (bit for bit), but the image is never loaded whole:
    it is binned chunk by chunk, and the DoG stack runs on tiles of ``chunk`` working voxels per
    axis plus a halo (see the module docstring: how the halo is derived, and the one global
    statistic, gathered from the tiles). ``mask`` may be a dask array; it is read at the blobs.

    Parameters
    ----------
    values : dask array, xarray image or array_like
        The image (z, y, x).
    spacing, blob_sizes, nspots, num_sigma_max, threshold, mask, unit
        As :func:`lazyreg.registration.blobs.detect_blobs`.
    chunk : int
        Side of a tile's core in working (binned) voxels; memory per task grows with
        ``(chunk + 2 * halo)^3``.

    Returns
    -------
    (N, 4) ndarray
        Sub-voxel voxel indices (z, y, x) and strengths, strongest first.

    Examples
    --------
    >>> import numpy as np, dask.array as da
    >>> from lazyreg.registration.blobs import detect_blobs
    >>> z, y, x = np.mgrid[:32, :40, :40]
    >>> img = np.exp(-((z - 15) ** 2 / 2 + (y - 20) ** 2 + (x - 12) ** 2) / (2 * 3.0**2))
    >>> a = detect_blobs_chunked(da.from_array(img, chunks=16), (2.0, 1.0, 1.0), blob_sizes=(3, 8), chunk=8)
    >>> a[:1, :3].round(1), bool((a == detect_blobs(img, (2.0, 1.0, 1.0), blob_sizes=(3, 8))).all())
    (array([[15., 20., 12.]]), True)
    """
    data = values.data if isinstance(values, xr.DataArray) else values
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=-1)
    sp = np.asarray(check_spacing(spacing), dtype=float)
    b = check_blob_sizes(blob_sizes)
    nspots = check_int(nspots, "nspots", minimum=1)
    num_sigma_max = check_int(num_sigma_max, "num_sigma_max", minimum=1)
    chunk = check_int(chunk, "chunk", minimum=1)
    unit = float(sp.min()) if unit is None else check_number(unit, "unit", 0.0, lo_open=True)
    pyr = LazyPyramid(data, Grid(data.shape, tuple(sp)), "values", chunk=chunk)
    m = lazy_mask(mask, data.shape, "mask")
    sigmas, k = blob_sigmas(b, unit, num_sigma_max)
    return pyr.blobs(sigmas, k, nspots, threshold, m)
