"""The Jacobian determinant of a displacement field, chunk by chunk (exactly the eager result)."""

from __future__ import annotations

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import image
from .field import DisplacementField

__all__ = ["jacobian_determinant", "determinant_values"]


def _det(values: np.ndarray, spacing: tuple[float, float, float], trim: tuple) -> np.ndarray:
    """det(I + grad u) of a (Z, Y, X, 3) block, then ``trim`` ((lo, hi) per axis) voxels removed.

    ``np.gradient`` (central differences inside, one-sided at the block's ends); an axis of a
    single voxel has zero derivative.
    """
    u = np.asarray(values, dtype=np.float64)
    J = np.empty(u.shape[:3] + (3, 3), dtype=np.float64)
    for j in range(3):
        if u.shape[j] < 2:
            J[..., :, j] = 0.0
        else:
            J[..., :, j] = np.gradient(u, spacing[j], axis=j, edge_order=1)
    J[..., 0, 0] += 1.0
    J[..., 1, 1] += 1.0
    J[..., 2, 2] += 1.0
    a, b, c = J[..., 0, 0], J[..., 0, 1], J[..., 0, 2]
    d, e, f = J[..., 1, 0], J[..., 1, 1], J[..., 1, 2]
    g, h, i = J[..., 2, 0], J[..., 2, 1], J[..., 2, 2]
    det = a * (e * i - f * h) - b * (d * i - f * g) + c * (d * h - e * g)
    sl = tuple(slice(lo, det.shape[ax] - hi) for ax, (lo, hi) in enumerate(trim))
    return det[sl]


def determinant_values(values: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """det(I + grad u) of in-memory (Z, Y, X, 3) displacements on a grid of ``spacing`` (numpy).

    The eager kernel of :func:`jacobian_determinant`, for use inside tasks.

    Examples
    --------
    >>> u = np.zeros((4, 4, 4, 3)); u[..., 2] = 0.5 * np.arange(4.0)   # dx/dx = 0.5
    >>> float(determinant_values(u, (1.0, 1.0, 1.0)).min())
    1.5
    """
    return _det(values, spacing, ((0, 0), (0, 0), (0, 0)))


def jacobian_determinant(field: DisplacementField) -> xr.DataArray:
    """The Jacobian determinant ``det(I + grad u)`` of ``D: x -> x + u(x)`` at the field's voxels.

    The gradient is taken in physical units (each axis divided by its spacing) by central
    differences, one-sided at the field's borders (:func:`numpy.gradient` with ``edge_order=1``);
    an axis of a single voxel contributes no derivative. Values below 1 mean local compression,
    above 1 expansion; values <= 0 mean the field folds (it is not invertible there).

    Parameters
    ----------
    field : DisplacementField
        Numpy- or dask-backed.

    Returns
    -------
    xarray.DataArray
        An image with dims ``("z", "y", "x")`` on the field's grid (coordinates and
        ``attrs["spacing"]`` as for :func:`lazyreg.image`), named ``"jacobian_determinant"``,
        dtype of the field (computed in float64). Dask-backed with the field's chunks when the
        field is (nothing computed yet; each chunk reads one voxel of its neighbours, so the
        values equal the eager result exactly, chunk borders included); numpy otherwise.

    Raises
    ------
    LazyregError
        If ``field`` is not a :class:`DisplacementField`.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.transforms.jacobian import jacobian_determinant
    >>> z, y, x = np.meshgrid(*[np.arange(4.0)] * 3, indexing="ij")
    >>> u = np.stack([0.0 * z, 0.0 * y, 0.5 * x], axis=-1)      # stretch x by 1.5
    >>> D = lazyreg.DisplacementField.from_array(u, spacing=(1.0, 1.0, 2.0))
    >>> float(jacobian_determinant(D).min()), float(jacobian_determinant(D).max())
    (1.25, 1.25)
    """
    if not isinstance(field, DisplacementField):
        raise LazyregError(
            f"field: expected a lazyreg.DisplacementField, got {type(field).__name__} "
            "(wrap a (Z, Y, X, 3) array with lazyreg.DisplacementField.from_array)"
        )
    g = field.grid
    dtype = np.dtype(field.data.dtype)
    arr = field.data.data
    if isinstance(arr, da.Array):
        arr = arr.rechunk({3: 3})
        depth = {ax: (1 if g.shape[ax] > 1 else 0) for ax in range(3)}
        depth[3] = 0
        padded = da.overlap.overlap(arr, depth=depth, boundary="none")
        nblocks = arr.numblocks[:3]

        def block(values: np.ndarray, block_id: tuple = ()) -> np.ndarray:
            trim = tuple(
                (depth[ax] if block_id[ax] > 0 else 0, depth[ax] if block_id[ax] < nblocks[ax] - 1 else 0)
                for ax in range(3)
            )
            return _det(values, g.spacing, trim).astype(dtype, copy=False)

        det = padded.map_blocks(
            block, drop_axis=3, chunks=arr.chunks[:3], dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype)
        )
    else:
        det = _det(np.asarray(arr), g.spacing, ((0, 0),) * 3).astype(dtype, copy=False)
    units = field.data.attrs.get("units", "micrometer")
    return image(det, g.spacing, g.origin, name="jacobian_determinant", units=units)
