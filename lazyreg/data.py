"""Seeded synthetic volumes with known ground truth: phantoms of blobs and tubes, and warped pairs.

Every image is rendered analytically from one set of objects (Gaussian blobs and tubes, drawn from
the seed in physical units over the grid's extent), so the stated transform between a pair is the
truth up to sampling, with no interpolation error in it.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import xarray as xr

from .errors import LazyregError
from .images import Grid, image
from .regions import affine_box, index_region
from .transforms.affine import Affine
from .validation import check_int, check_number, check_points, check_positive_ints, check_seed, check_spacing, check_triple

__all__ = ["phantom", "synthetic_pair", "default_affine", "warped_pair", "smooth_displacement"]

#: Objects are rendered out to this many sigmas.
REACH_SIGMAS = 3.5


# --------------------------------------------------------------------------- arguments


def _grid(shape: Any, spacing: Any, origin: Any, prefix: str = "") -> Grid:
    sizes = check_positive_ints(shape, prefix + "shape")
    if len(sizes) != 3:
        raise LazyregError(f"{prefix}shape: expected 3 sizes (z, y, x), got {shape!r}")
    return Grid(sizes, check_spacing(spacing, prefix + "spacing"), check_triple(origin, prefix + "origin", "the origin"))


def _dtype(dtype: Any) -> np.dtype:
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or not (np.issubdtype(dt, np.integer) or np.issubdtype(dt, np.floating)):
        raise LazyregError(f"dtype: expected an integer or floating-point dtype, got {dtype!r}")
    return dt


def _matrix(matrix: Any, g: Grid) -> np.ndarray:
    """The 4x4 fixed -> moving matrix: :func:`default_affine` of ``g`` when None; checked invertible."""
    if matrix is None:
        return default_affine(g.shape, g.spacing, g.origin)
    A = Affine(matrix).compute()
    A.inverse()  # the moving image is rendered through the inverse
    return np.array(A.matrix, dtype=float)


def _counts(g: Grid, n_blobs: Any, n_tubes: Any) -> tuple[int, int]:
    """Numbers of objects: as given, or scaled with the number of voxels."""
    nvox = float(np.prod(g.shape))
    nb = int(max(20, nvox / 4000)) if n_blobs is None else check_int(n_blobs, "n_blobs", minimum=0)
    nt = int(max(4, nvox / 60000)) if n_tubes is None else check_int(n_tubes, "n_tubes", minimum=0)
    return nb, nt


# --------------------------------------------------------------------------- objects


def _blob(q: np.ndarray, c: np.ndarray, s: float, a: float) -> np.ndarray:
    return a * np.exp(-np.sum((q - c) ** 2, axis=-1) / (2 * s * s))


def _tube(q: np.ndarray, ta: np.ndarray, tb: np.ndarray, s: float, a: float) -> np.ndarray:
    ab = tb - ta
    t = np.clip(((q - ta) @ ab) / (ab @ ab), 0.0, 1.0)
    return a * np.exp(-np.sum((q - (ta + t[..., None] * ab)) ** 2, axis=-1) / (2 * s * s))


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

    def objects(self) -> Iterator[tuple[np.ndarray, np.ndarray, Callable[[np.ndarray], np.ndarray]]]:
        """``(lo, hi, value)`` per object: its physical box and its value at points ``q`` (..., 3)."""
        for c, s, a in zip(self.blob_centres, self.blob_sigmas, self.blob_amps):
            yield c - REACH_SIGMAS * s, c + REACH_SIGMAS * s, partial(_blob, c=c, s=s, a=a)
        for ta, tb, s, a in zip(self.tube_a, self.tube_b, self.tube_sigmas, self.tube_amps):
            lo, hi = np.minimum(ta, tb) - REACH_SIGMAS * s, np.maximum(ta, tb) + REACH_SIGMAS * s
            yield lo, hi, partial(_tube, ta=ta, tb=tb, s=s, a=a)


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


def _render(shapes: _Shapes, g: Grid, matrix: np.ndarray) -> np.ndarray:
    """Evaluate the phantom at ``inverse(matrix)(p)`` for every voxel centre p of grid ``g``.

    ``matrix`` maps object (fixed) space to the space of ``g``; identity renders the fixed image.
    Each object is evaluated only over the voxels its mapped box covers.
    """
    out = np.zeros(g.shape, dtype=np.float32)
    inv = np.linalg.inv(matrix)
    for lo, hi, value in shapes.objects():
        win = index_region(g, affine_box(matrix, (lo, hi)), 0)
        if win is None:
            continue
        axes = [g.origin[i] + np.arange(s.start, s.stop) * g.spacing[i] for i, s in enumerate(win)]
        p = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1)
        out[win] += value(p @ inv[:3, :3].T + inv[:3, 3]).astype(np.float32)
    return out


def _finish(values: np.ndarray, g: Grid, noise: float, noise_seed: list, dt: np.dtype) -> xr.DataArray:
    """The image of rendered ``values``: noise added (clipped at 0), scaled into ``dt``.

    Integers are scaled so that the brightest object uses about 1/8 of their range.
    """
    if noise:
        rng = np.random.default_rng(noise_seed)
        values = values + rng.normal(0.0, noise, size=values.shape).astype(np.float32)
        np.clip(values, 0, None, out=values)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        values = np.clip(np.rint(values * (info.max / 8.0)), info.min, info.max)
    return image(values.astype(dt), g.spacing, g.origin)


# --------------------------------------------------------------------------- public


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
        The grid (z, y, x); spacing and origin in physical units. The objects are drawn over the
        grid's physical extent, so another origin moves them with the grid.
    seed : int
        Random seed (non-negative); the same seed gives the same phantom.
    n_blobs, n_tubes : int, optional
        Number of objects; default scales with the volume.
    noise : float
        Standard deviation of additive Gaussian noise, relative to the brightest object.
    dtype : dtype
        Output dtype; integers are scaled to use about 1/8 of their range.

    Raises
    ------
    LazyregError
        Naming the bad argument.

    Examples
    --------
    >>> import lazyreg.data
    >>> img = lazyreg.data.phantom((32, 48, 48), seed=1)
    >>> img.dims, img.dtype.name
    (('z', 'y', 'x'), 'uint16')
    """
    return _phantom(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype)[2]


def _phantom(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype) -> tuple[Grid, _Shapes, xr.DataArray]:
    """The arguments of :func:`phantom` checked: its grid, its objects and the image."""
    g, dt, seed = _grid(shape, spacing, origin), _dtype(dtype), check_seed(seed)
    noise = check_number(noise, "noise", 0.0)
    shapes = _draw_shapes(g, seed, *_counts(g, n_blobs, n_tubes))
    return g, shapes, _finish(_render(shapes, g, np.eye(4)), g, noise, [seed, 7, *g.shape], dt)


def default_affine(
    shape: Sequence[int], spacing: float | Sequence[float], origin: float | Sequence[float] = (0, 0, 0)
) -> np.ndarray:
    """A moderate known affine about the volume centre: 8, -5, 6 degree rotations, 5% scale, shifts.

    The rotations are about z, y and x (in that order, right-handed); the scales are 1.05, 0.97
    and 1.02 along z, y and x; the centre of the grid moves by 4%, -5% and 6% of its extent.

    Returns
    -------
    ndarray
        A 4x4 matrix (zyx, physical) mapping fixed points to moving points.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.data import default_affine
    >>> A = default_affine((32, 64, 64), spacing=(2.0, 1.0, 1.0))
    >>> A.shape, round(float(np.linalg.det(A[:3, :3])), 4)  # the scales' product
    ((4, 4), 1.0389)
    >>> lazyreg.Affine(A)((31.0, 31.5, 31.5)).round(2)  # the centre moves by the shifts
    array([33.48, 28.35, 35.28])
    """
    g = _grid(shape, spacing, origin)
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
    shape, spacing, origin, seed, noise, dtype, n_blobs, n_tubes
        The fixed image, as :func:`phantom` (the moving image's noise is drawn from ``seed + 1``).
    matrix : (4, 4) array, optional
        Fixed -> moving physical transform (zyx), invertible. Default :func:`default_affine`.
    moving_shape, moving_spacing, moving_origin : optional
        Grid of the moving image; default the fixed grid.

    Returns
    -------
    fixed, moving : xarray.DataArray
        In-memory images.
    matrix : ndarray
        The true 4x4 transform, fixed -> moving.

    Raises
    ------
    LazyregError
        Naming the bad argument.

    Examples
    --------
    >>> import lazyreg.data
    >>> fixed, moving, A = lazyreg.data.synthetic_pair((32, 48, 48), seed=3)
    >>> A.shape
    (4, 4)
    """
    g, shapes, fixed = _phantom(shape, spacing, origin, seed, n_blobs, n_tubes, noise, dtype)
    m = _matrix(matrix, g)
    g_mov = _grid(
        moving_shape if moving_shape is not None else g.shape,
        moving_spacing if moving_spacing is not None else g.spacing,
        moving_origin if moving_origin is not None else g.origin,
        prefix="moving_",
    )
    moving = _finish(_render(shapes, g_mov, m), g_mov, noise, [seed + 1, 7, *g_mov.shape], np.dtype(dtype))
    return fixed, moving, m


def smooth_displacement(points: np.ndarray, g: Grid, amplitude: float) -> np.ndarray:
    """A smooth known displacement (zyx, physical units) at physical points, varying across the volume.

    Sums of low-frequency sines and cosines over the extent of grid ``g``; the components peak at
    about 0.6, 1.2 and 1 times ``amplitude`` (physical units) and change over a few tens of
    voxels, so blocks of a piecewise alignment see different local displacements.

    Parameters
    ----------
    points : (N, 3) or (3,) array
        Physical (z, y, x) points.
    g : Grid
        The grid whose extent the pattern spans.
    amplitude : float
        Scale of the displacement, in physical units (non-negative).

    Returns
    -------
    ndarray
        Displacements, the shape of ``points``.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.data import smooth_displacement
    >>> g = lazyreg.Grid((20, 40, 40), spacing=(2.0, 1.0, 1.0))
    >>> smooth_displacement(g.to_physical([[0, 0, 0], [10, 20, 20]]), g, amplitude=3.0).round(3)
    array([[ 0.   ,  1.2  ,  0.   ],
           [-0.072, -0.443,  1.937]])
    """
    p = check_points(points)
    if not isinstance(g, Grid):
        raise LazyregError(f"g: expected a lazyreg.Grid, got {type(g).__name__}")
    a = check_number(amplitude, "amplitude", 0.0)
    lo, hi = g.extent
    z, y, x = ((p - lo) / (hi - lo)).T
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
        The affine ``A``, invertible; default :func:`default_affine` of the grid.
    amplitude : float
        Scale of ``d`` in physical units (see :func:`smooth_displacement`).
    seed, noise, dtype, n_blobs
        As :func:`phantom`; ``moving`` is the phantom of ``seed``.

    Returns
    -------
    fixed, moving : xarray.DataArray
        In-memory images.
    matrix : ndarray
        ``A`` (4x4, zyx).
    displacement : ndarray
        ``d`` sampled at the fixed voxel centres, shape (Z, Y, X, 3), physical units.

    Raises
    ------
    LazyregError
        Naming the bad argument.

    Examples
    --------
    >>> import lazyreg.data
    >>> fixed, moving, A, d = lazyreg.data.warped_pair((24, 40, 40), amplitude=3.0, seed=1)
    >>> d.shape
    (24, 40, 40, 3)
    """
    g, shapes, moving = _phantom(shape, spacing, origin, seed, n_blobs, None, noise, dtype)
    m = _matrix(matrix, g)
    p = g.to_physical(np.indices(g.shape, dtype=np.float32).reshape(3, -1).T)
    disp = smooth_displacement(p, g, amplitude)
    q = (p + disp) @ m[:3, :3].T + m[:3, 3]  # where each fixed voxel centre lands in moving space
    q = q.reshape(g.shape + (3,)).astype(np.float32)
    out = np.zeros(g.shape, dtype=np.float32)
    reach = float(np.abs(disp).max()) + 1e-6
    inv = np.linalg.inv(m)
    for lo, hi, value in shapes.objects():
        back_lo, back_hi = affine_box(inv, (lo, hi))  # A^-1 of the object's box, widened by |d|
        win = index_region(g, (back_lo - reach, back_hi + reach), 0)
        if win is not None:
            out[win] += value(q[win]).astype(np.float32)
    fixed = _finish(out, g, noise, [seed, 11, *g.shape], np.dtype(dtype))
    return fixed, moving, m, disp.reshape(g.shape + (3,))
