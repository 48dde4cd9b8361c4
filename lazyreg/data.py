"""Seeded synthetic volumes with known ground truth: phantoms of blobs and tubes, and warped pairs."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import xarray as xr

from .images import Grid, image

__all__ = ["phantom", "synthetic_pair", "default_affine", "warped_pair", "smooth_displacement"]


@dataclass(frozen=True)
class _Shapes:
    """Blobs (centre, sigma, amplitude) and tubes (end a, end b, sigma, amplitude), physical units."""

    blob_centres: np.ndarray
    blob_sigmas: np.ndarray
    blob_amps: np.ndarray
    tube_a: np.ndarray
    tube_b: np.ndarray
    tube_sigmas: np.ndarray
    tube_amps: np.ndarray


def _draw_shapes(g: Grid, seed: int, n_blobs: int, n_tubes: int) -> _Shapes:
    rng = np.random.default_rng(seed)
    lo, hi = g.extent
    size = hi - lo
    min_sp = min(g.spacing)
    # Blobs of a few voxels' radius, kept away from the borders by 5% of the field of view.
    centres = lo + size * rng.uniform(0.05, 0.95, size=(n_blobs, 3))
    sigmas = min_sp * rng.uniform(1.2, 4.0, size=n_blobs)
    amps = rng.uniform(0.4, 1.0, size=n_blobs)
    a = lo + size * rng.uniform(0.1, 0.9, size=(n_tubes, 3))
    direction = rng.normal(size=(n_tubes, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    length = np.linalg.norm(size) * rng.uniform(0.15, 0.4, size=(n_tubes, 1))
    b = a + direction * length
    tsig = min_sp * rng.uniform(0.8, 1.8, size=n_tubes)
    tamps = rng.uniform(0.3, 0.7, size=n_tubes)
    return _Shapes(centres, sigmas, amps, a, b, tsig, tamps)


def _window(g: Grid, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, ...] | None:
    """Index window of grid ``g`` that covers the physical box [lo, hi] (None if disjoint)."""
    i0 = np.floor(g.to_index(lo[None])[0]).astype(int)
    i1 = np.ceil(g.to_index(hi[None])[0]).astype(int) + 1
    i0 = np.maximum(i0, 0)
    i1 = np.minimum(i1, g.shape)
    if np.any(i1 <= i0):
        return None
    return tuple(slice(a, b) for a, b in zip(i0, i1))


def _render(shapes: _Shapes, g: Grid, matrix: np.ndarray) -> np.ndarray:
    """Evaluate the phantom at ``inverse(matrix)(p)`` for every voxel centre p of grid ``g``.

    ``matrix`` maps object (fixed) space to the space of ``g``; identity renders the fixed image.
    """
    out = np.zeros(g.shape, dtype=np.float32)
    inv = np.linalg.inv(matrix)
    corners = np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T

    def boxed(lo: np.ndarray, hi: np.ndarray):
        pts = lo + corners * (hi - lo)
        mapped = pts @ matrix[:3, :3].T + matrix[:3, 3]
        win = _window(g, mapped.min(0), mapped.max(0))
        if win is None:
            return None, None
        axes = [g.origin[i] + np.arange(s.start, s.stop) * g.spacing[i] for i, s in enumerate(win)]
        p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        q = p @ inv[:3, :3].T + inv[:3, 3]
        return win, q

    for c, s, a in zip(shapes.blob_centres, shapes.blob_sigmas, shapes.blob_amps):
        win, q = boxed(c - 3.5 * s, c + 3.5 * s)
        if win is not None:
            d2 = np.sum((q - c) ** 2, axis=-1)
            out[win] += (a * np.exp(-d2 / (2 * s * s))).astype(np.float32)
    for ta, tb, s, a in zip(shapes.tube_a, shapes.tube_b, shapes.tube_sigmas, shapes.tube_amps):
        win, q = boxed(np.minimum(ta, tb) - 3.5 * s, np.maximum(ta, tb) + 3.5 * s)
        if win is not None:
            ab = tb - ta
            t = np.clip(((q - ta) @ ab) / (ab @ ab), 0.0, 1.0)
            d2 = np.sum((q - (ta + t[..., None] * ab)) ** 2, axis=-1)
            out[win] += (a * np.exp(-d2 / (2 * s * s))).astype(np.float32)
    return out


def _to_dtype(values: np.ndarray, dtype: np.dtype, scale: float) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values * scale), info.min, info.max).astype(dtype)
    return values.astype(dtype)


def phantom(
    shape: Sequence[int] = (64, 128, 128),
    spacing: float | Sequence[float] = (2.0, 1.0, 1.0),
    origin: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    seed: int = 0,
    n_blobs: int | None = None,
    n_tubes: int | None = None,
    noise: float = 0.0,
    dtype: str | np.dtype = "uint16",
) -> xr.DataArray:
    """A seeded 3D phantom of Gaussian blobs and tubes, like sparse labelled tissue.

    Parameters
    ----------
    shape, spacing, origin
        The grid (z, y, x); spacing and origin in physical units.
    seed : int
        Random seed; the same seed gives the same phantom.
    n_blobs, n_tubes : int, optional
        Number of objects; default scales with the volume.
    noise : float
        Standard deviation of additive Gaussian noise, relative to the brightest object.
    dtype : dtype
        Output dtype; integers are scaled to use about 1/8 of their range.

    Examples
    --------
    >>> import lazyreg.data
    >>> img = lazyreg.data.phantom((32, 48, 48), seed=1)
    >>> img.dims, img.dtype.name
    (('z', 'y', 'x'), 'uint16')
    """
    img, _ = _phantom_and_shapes(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype)
    return img


def _phantom_and_shapes(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype, matrix=None, g_render=None):
    g = Grid(tuple(shape), spacing, origin)
    nvox = float(np.prod(g.shape))
    n_blobs = int(n_blobs if n_blobs is not None else max(20, nvox / 4000))
    n_tubes = int(n_tubes if n_tubes is not None else max(4, nvox / 60000))
    shapes = _draw_shapes(g, seed, n_blobs, n_tubes)
    img = _make_image(shapes, g, np.eye(4), seed, noise, dtype)
    return img, shapes


def _make_image(shapes: _Shapes, g: Grid, matrix: np.ndarray, seed: int, noise: float, dtype) -> xr.DataArray:
    values = _render(shapes, g, matrix)
    if noise:
        rng = np.random.default_rng([seed, 7, *g.shape])
        values = values + rng.normal(0.0, noise, size=values.shape).astype(np.float32)
        np.clip(values, 0, None, out=values)
    dt = np.dtype(dtype)
    scale = (np.iinfo(dt).max / 8.0) if np.issubdtype(dt, np.integer) else 1.0
    return image(_to_dtype(values, dt, scale), g.spacing, g.origin)


def default_affine(shape: Sequence[int], spacing: Sequence[float], origin: Sequence[float] = (0, 0, 0)) -> np.ndarray:
    """A moderate known affine about the volume centre: 8, -5, 6 degree rotations, 5% scale, shifts.

    Returns a 4x4 matrix (zyx, physical) mapping fixed points to moving points.
    """
    g = Grid(tuple(shape), spacing, origin)
    lo, hi = g.extent
    centre = (lo + hi) / 2
    angles = np.deg2rad([8.0, -5.0, 6.0])
    cz, cy, cx = np.cos(angles)
    sz, sy, sx = np.sin(angles)
    rz = np.array([[1, 0, 0], [0, cz, -sz], [0, sz, cz]])  # rotation in the y-x plane (about z)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])  # about y
    rx = np.array([[cx, -sx, 0], [sx, cx, 0], [0, 0, 1]])  # about x
    lin = rz @ ry @ rx @ np.diag([1.05, 0.97, 1.02])
    shift = (hi - lo) * np.array([0.04, -0.05, 0.06])
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = centre - lin @ centre + shift
    return m


def synthetic_pair(
    shape: Sequence[int] = (64, 128, 128),
    spacing: float | Sequence[float] = (2.0, 1.0, 1.0),
    origin: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    matrix: np.ndarray | None = None,
    moving_shape: Sequence[int] | None = None,
    moving_spacing: float | Sequence[float] | None = None,
    moving_origin: float | Sequence[float] | None = None,
    seed: int = 0,
    noise: float = 0.0,
    dtype: str | np.dtype = "uint16",
    n_blobs: int | None = None,
    n_tubes: int | None = None,
) -> tuple[xr.DataArray, xr.DataArray, np.ndarray]:
    """A fixed phantom and a moving image related by a known affine, rendered exactly.

    Both images are rendered analytically from the same objects, so ``fixed(x) == moving(A(x))``
    up to sampling (no interpolation error in the ground truth).

    Parameters
    ----------
    matrix : (4, 4) array, optional
        Fixed -> moving physical transform (zyx). Default :func:`default_affine`.
    moving_shape, moving_spacing, moving_origin : optional
        Grid of the moving image; default the fixed grid.

    Returns
    -------
    fixed, moving : xarray.DataArray
        In-memory images.
    matrix : ndarray
        The true 4x4 transform, fixed -> moving.

    Examples
    --------
    >>> import lazyreg.data
    >>> fixed, moving, A = lazyreg.data.synthetic_pair((32, 48, 48), seed=3)
    >>> A.shape
    (4, 4)
    """
    fixed, shapes = _phantom_and_shapes(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype)
    g_fixed = Grid(tuple(shape), spacing, origin)
    m = default_affine(g_fixed.shape, g_fixed.spacing, g_fixed.origin) if matrix is None else np.asarray(matrix, float)
    g_mov = Grid(
        tuple(moving_shape if moving_shape is not None else g_fixed.shape),
        moving_spacing if moving_spacing is not None else g_fixed.spacing,
        moving_origin if moving_origin is not None else g_fixed.origin,
    )
    moving = _make_image(shapes, g_mov, m, seed + 1, noise, dtype)
    return fixed, moving, m


def smooth_displacement(points: np.ndarray, g: Grid, amplitude: float) -> np.ndarray:
    """A smooth known displacement (zyx, physical units) at physical points, varying across the volume.

    Sums of low-frequency sines and cosines over the extent of grid ``g``; each component peaks at
    about ``amplitude`` (physical units) and changes over a few tens of voxels, so blocks of a
    piecewise alignment see different local displacements.
    """
    lo, hi = g.extent
    z, y, x = ((np.asarray(points, dtype=float) - lo) / (hi - lo)).T
    a = float(amplitude)
    return np.stack(
        [
            0.6 * a * np.sin(np.pi * y) * np.cos(np.pi * x),
            0.8 * a * np.sin(np.pi * x) * np.sin(2 * np.pi * z) + 0.4 * a * np.cos(np.pi * y),
            a * np.sin(np.pi * y) * np.sin(np.pi * (z + 0.25)),
        ],
        -1,
    )


def warped_pair(
    shape: Sequence[int] = (64, 128, 128),
    spacing: float | Sequence[float] = (2.0, 1.0, 1.0),
    origin: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    matrix: np.ndarray | None = None,
    amplitude: float = 4.0,
    seed: int = 0,
    noise: float = 0.0,
    dtype: str | np.dtype = "uint16",
    n_blobs: int | None = None,
) -> tuple[xr.DataArray, xr.DataArray, np.ndarray, np.ndarray]:
    """A pair related by a known affine on top of a known smooth deformation.

    ``fixed(x) == moving(A(x + d(x)))`` exactly (both rendered analytically from one set of
    objects that lives in moving space), i.e. the transform list ``[Affine(A), field]``.

    Parameters
    ----------
    shape, spacing, origin
        The grid of both images.
    matrix : (4, 4) array, optional
        The affine ``A``; default :func:`default_affine` of the grid.
    amplitude : float
        Peak displacement of ``d`` in physical units (see :func:`smooth_displacement`).

    Returns
    -------
    fixed, moving : xarray.DataArray
        In-memory images.
    matrix : ndarray
        ``A`` (4x4, zyx).
    displacement : ndarray
        ``d`` sampled at the fixed voxel centres, shape (Z, Y, X, 3), physical units.

    Examples
    --------
    >>> import lazyreg.data
    >>> fixed, moving, A, d = lazyreg.data.warped_pair((24, 40, 40), amplitude=3.0, seed=1)
    >>> d.shape
    (24, 40, 40, 3)
    """
    g = Grid(tuple(shape), spacing, origin)
    m = default_affine(g.shape, g.spacing, g.origin) if matrix is None else np.asarray(matrix, float)
    moving, shapes = _phantom_and_shapes(shape, spacing, origin, seed, n_blobs, None, noise, dtype)
    idx = np.indices(g.shape, dtype=np.float32).reshape(3, -1).T
    p = g.to_physical(idx)
    disp = smooth_displacement(p, g, amplitude)
    q = (p + disp) @ m[:3, :3].T + m[:3, 3]  # where each fixed voxel centre lands in moving space
    q = q.reshape(g.shape + (3,)).astype(np.float32)
    out = np.zeros(g.shape, dtype=np.float32)
    reach = float(np.abs(disp).max()) + 1e-6
    inv = np.linalg.inv(m)

    def add(lo_m: np.ndarray, hi_m: np.ndarray, value) -> None:
        corners = lo_m + np.array(np.meshgrid([0, 1], [0, 1], [0, 1], indexing="ij")).reshape(3, -1).T * (hi_m - lo_m)
        back = corners @ inv[:3, :3].T + inv[:3, 3]  # A^-1 of the box, then widen by |d|
        win = _window(g, back.min(0) - reach, back.max(0) + reach)
        if win is not None:
            out[win] += value(q[win]).astype(np.float32)

    for c, s, a in zip(shapes.blob_centres, shapes.blob_sigmas, shapes.blob_amps):
        add(c - 3.5 * s, c + 3.5 * s, lambda qq, c=c, s=s, a=a: a * np.exp(-np.sum((qq - c) ** 2, -1) / (2 * s * s)))
    for ta, tb, s, a in zip(shapes.tube_a, shapes.tube_b, shapes.tube_sigmas, shapes.tube_amps):
        def tube(qq, ta=ta, tb=tb, s=s, a=a):
            ab = tb - ta
            t = np.clip(((qq - ta) @ ab) / (ab @ ab), 0.0, 1.0)
            return a * np.exp(-np.sum((qq - (ta + t[..., None] * ab)) ** 2, -1) / (2 * s * s))

        add(np.minimum(ta, tb) - 3.5 * s, np.maximum(ta, tb) + 3.5 * s, tube)
    if noise:
        rng = np.random.default_rng([seed, 11, *g.shape])
        out = np.clip(out + rng.normal(0.0, noise, size=out.shape).astype(np.float32), 0, None)
    dt = np.dtype(dtype)
    scale = (np.iinfo(dt).max / 8.0) if np.issubdtype(dt, np.integer) else 1.0
    fixed = image(_to_dtype(out, dt, scale), g.spacing, g.origin)
    return fixed, moving, m, disp.reshape(g.shape + (3,))
