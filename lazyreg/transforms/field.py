"""Displacement fields: ``x -> x + d(x)`` with ``d`` sampled on a regular grid (zyx, physical)."""

from __future__ import annotations

from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..images import DIMS, Grid, grid_of, image
from ..validation import check_points

__all__ = ["DisplacementField", "interpolate_field"]

FIELD_DIMS = DIMS + ("vector",)
VECTOR = ["z", "y", "x"]


def _block_offset(grid: Grid, full: Grid) -> np.ndarray:
    """Integer index of ``grid``'s first voxel in ``full``; both must share the spacing."""
    if not np.allclose(grid.spacing, full.spacing, rtol=1e-9, atol=0):
        raise LazyregError(f"grid: spacing {grid.spacing} differs from full_grid spacing {full.spacing}")
    off = (np.asarray(grid.origin) - np.asarray(full.origin)) / np.asarray(full.spacing)
    k = np.round(off)
    if not np.allclose(off, k, rtol=0, atol=1e-6):
        raise LazyregError(f"grid: origin {grid.origin} is not on a voxel centre of full_grid")
    return k.astype(np.int64)


def interpolate_field(
    values: np.ndarray,
    grid: Grid,
    points: np.ndarray,
    *,
    full_grid: Grid | None = None,
) -> np.ndarray:
    """Trilinear interpolation of displacement values at physical points (SimpleITK's convention).

    With ``n`` the number of voxels of the (full) field on an axis, a point whose continuous index
    ``(p - origin) / spacing`` lies in ``[-0.5, n - 0.5)`` on every axis is inside: it is
    interpolated trilinearly, the edge values being repeated up to the buffer border (between the
    outermost voxel centres and ``-0.5`` / ``n - 0.5``). Any other point gets **zero**
    displacement. This is what ``sitk.DisplacementFieldTransform`` does with its default linear
    interpolator.

    A pure numpy function, meant to run inside dask tasks on a sub-block of a field: ``values``
    and ``grid`` may describe a block of a larger field described by ``full_grid``; the inside
    test and the edge clamping then use ``full_grid``, and the block must contain the 2x2x2
    support of every inside point.

    Parameters
    ----------
    values : (Z, Y, X, 3) ndarray
        Displacements (dz, dy, dx), physical units, at the voxel centres of ``grid``.
    grid : Grid
        The grid of ``values`` (``grid.shape == values.shape[:3]``).
    points : (N, 3) ndarray
        Physical points (z, y, x).
    full_grid : Grid, optional
        The whole field's grid when ``values`` is a block of it (same spacing, the block's origin
        on one of its voxel centres). Defaults to ``grid``.

    Returns
    -------
    (N, 3) float64 ndarray
        Displacements at ``points``.

    Raises
    ------
    LazyregError
        On inconsistent shapes or grids, or when the block misses the support of an inside point.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.images import Grid
    >>> from lazyreg.transforms.field import interpolate_field
    >>> v = np.zeros((2, 2, 2, 3)); v[:, :, 1, 2] = 1.0          # dx = 1 on the second x column
    >>> interpolate_field(v, Grid((2, 2, 2), 1.0), np.array([[0, 0, 0.25], [0, 0, 5.0]]))
    array([[0.  , 0.  , 0.25],
           [0.  , 0.  , 0.  ]])
    """
    values = np.asarray(values)
    if values.ndim != 4 or values.shape[3] != 3:
        raise LazyregError(f"values: expected shape (Z, Y, X, 3), got {values.shape}")
    if tuple(values.shape[:3]) != tuple(grid.shape):
        raise LazyregError(f"values: shape {values.shape[:3]} does not match grid shape {grid.shape}")
    full = grid if full_grid is None else full_grid
    k = np.zeros(3, dtype=np.int64) if full_grid is None else _block_offset(grid, full)
    pts = check_points(points).reshape(-1, 3)
    n_full = np.asarray(full.shape, dtype=np.int64)
    ci = full.to_index(pts)
    inside = np.all((ci >= -0.5) & (ci < n_full - 0.5), axis=1)
    out = np.zeros((len(pts), 3), dtype=np.float64)
    if not inside.any():
        return out
    c = np.clip(ci[inside], 0, n_full - 1)
    i0 = np.minimum(np.floor(c).astype(np.int64), n_full - 1)
    f = c - i0
    i1 = np.where(f > 0, np.minimum(i0 + 1, n_full - 1), i0)
    # to block indices
    n = np.asarray(values.shape[:3], dtype=np.int64)
    i0 -= k
    i1 -= k
    if np.any(i0 < 0) or np.any(i1 >= n):
        raise LazyregError(
            "values: the field block does not cover the interpolation support of all points inside the field"
        )
    flat = values.reshape(-1, 3)
    strides = np.array([n[1] * n[2], n[2], 1], dtype=np.int64)
    acc = np.zeros((len(c), 3), dtype=np.float64)
    for corner in np.ndindex(2, 2, 2):
        sel = np.asarray(corner, dtype=bool)
        idx = np.where(sel, i1, i0)
        w = np.prod(np.where(sel, f, 1.0 - f), axis=1)
        acc += w[:, None] * flat[idx @ strides]
    out[inside] = acc
    return out


def _float_dtype(dtype: np.dtype) -> np.dtype:
    """float32/float64 kept; other real numbers promoted to a float that holds them."""
    if dtype in (np.float32, np.float64):
        return dtype
    return np.result_type(dtype, np.float32)


class DisplacementField:
    """A dense displacement field: the transform ``x -> x + d(x)`` (fixed to moving, physical).

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``("z", "y", "x", "vector")``; coordinates z, y, x as for images (the field's own
        regular grid, checked with :func:`lazyreg.validate_image`); ``vector`` of length 3 holding
        (dz, dy, dx) in physical units (a ``vector`` coordinate, if present, must name "z", "y",
        "x"; it is reordered to that order). Usually dask-backed. Integer values are cast to float.
    report : object, optional
        What produced the field (e.g. the per-block report of a piecewise alignment).

    Notes
    -----
    Between voxel centres the field is interpolated trilinearly. A point whose continuous index
    lies outside ``[-0.5, n - 0.5)`` on some axis (``n`` voxels on that axis) is **not displaced**
    (zero displacement); inside it, beyond the outermost voxel centres, the edge values are
    repeated. This matches ``sitk.DisplacementFieldTransform`` (linear interpolation); see
    :func:`interpolate_field`.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> d = np.zeros((4, 4, 4, 3)); d[..., 2] = 1.5
    >>> D = lazyreg.DisplacementField.from_array(d, spacing=2.0)
    >>> D(np.array([[2.0, 2.0, 2.0], [100.0, 0.0, 0.0]]))
    array([[  2. ,   2. ,   3.5],
           [100. ,   0. ,   0. ]])
    """

    def __init__(self, data: xr.DataArray, *, report: Any = None) -> None:
        if isinstance(data, DisplacementField):
            report = data.report if report is None else report
            data = data.data
        if not isinstance(data, xr.DataArray):
            raise LazyregError(
                f"field: expected an xarray.DataArray with dims {FIELD_DIMS} "
                f"(wrap arrays with lazyreg.DisplacementField.from_array), got {type(data).__name__}"
            )
        if tuple(data.dims) != FIELD_DIMS:
            if set(data.dims) == set(FIELD_DIMS):
                raise LazyregError(
                    f"field: dims are {data.dims}, expected {FIELD_DIMS}; use data.transpose{FIELD_DIMS}"
                )
            raise LazyregError(f"field: dims are {data.dims}, expected {FIELD_DIMS}")
        if data.sizes["vector"] != 3:
            raise LazyregError(
                f"field: the 'vector' dim must have length 3 (dz, dy, dx), got {data.sizes['vector']}"
            )
        dt = np.dtype(data.dtype)
        if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
            raise LazyregError(f"field: expected real numbers, got dtype {dt}")
        if "vector" in data.coords:
            names = [str(v) for v in np.asarray(data.coords["vector"].values).tolist()]
            if names != VECTOR:
                if sorted(names) != sorted(VECTOR):
                    raise LazyregError(f"field: the 'vector' coordinate must be ['z', 'y', 'x'], got {names}")
                data = data.sel(vector=VECTOR)
        else:
            data = data.assign_coords(vector=VECTOR)
        if _float_dtype(dt) != dt:
            data = data.astype(_float_dtype(dt))
        self.grid: Grid = grid_of(data.isel(vector=0), "field")
        if not isinstance(data.data, da.Array) and not np.all(np.isfinite(data.values)):
            raise LazyregError("field: displacements contain NaN or infinite values")
        self.data: xr.DataArray = data
        self.report = report

    @classmethod
    def from_array(
        cls,
        values: Any,
        spacing: float | Sequence[float],
        origin: float | Sequence[float] = (0.0, 0.0, 0.0),
        *,
        report: Any = None,
    ) -> DisplacementField:
        """Wrap a (Z, Y, X, 3) numpy or dask array of (dz, dy, dx) displacements on a grid.

        Parameters
        ----------
        values : (Z, Y, X, 3) array_like or dask.array.Array
            Displacements in physical units at the voxel centres; dask arrays stay lazy.
        spacing : float or 3 floats
            Voxel spacing of the field grid (z, y, x).
        origin : float or 3 floats, optional
            Physical position of the centre of voxel (0, 0, 0).
        report : object, optional
            What produced the field.

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> D = lazyreg.DisplacementField.from_array(np.zeros((2, 3, 4, 3)), spacing=(4, 2, 2))
        >>> D.grid.shape, D.grid.spacing
        ((2, 3, 4), (4.0, 2.0, 2.0))
        """
        if not isinstance(values, da.Array):
            values = np.asarray(values)
        if values.ndim != 4 or values.shape[-1] != 3:
            raise LazyregError(f"values: expected shape (Z, Y, X, 3) with (dz, dy, dx) last, got {values.shape}")
        dt = np.dtype(values.dtype)
        if not np.issubdtype(dt, np.number) or np.issubdtype(dt, np.complexfloating):
            raise LazyregError(f"values: expected real numbers, got dtype {dt}")
        img = image(values[..., 0], spacing, origin)
        data = xr.DataArray(
            values,
            dims=FIELD_DIMS,
            coords={**{d: img.coords[d].values for d in DIMS}, "vector": VECTOR},
            attrs=dict(img.attrs),
        )
        return cls(data, report=report)

    @classmethod
    def from_sitk(cls, transform: sitk.DisplacementFieldTransform | sitk.Image) -> DisplacementField:
        """Convert a ``sitk.DisplacementFieldTransform`` (or its vector image) to a field (zyx).

        The image must be 3D with 3 components and an identity direction. Vectors and axes are
        reversed from ITK's xyz to zyx.

        Examples
        --------
        >>> import numpy as np, SimpleITK as sitk, lazyreg
        >>> img = sitk.Image([4, 3, 2], sitk.sitkVectorFloat64, 3)   # x, y, z sizes
        >>> lazyreg.DisplacementField.from_sitk(img).grid.shape
        (2, 3, 4)
        """
        if isinstance(transform, sitk.Transform):
            t = transform.Downcast()
            if not isinstance(t, sitk.DisplacementFieldTransform):
                raise LazyregError(
                    f"transform: expected a DisplacementFieldTransform, got {type(t).__name__} "
                    "(linear transforms: lazyreg.Affine.from_sitk)"
                )
            img = t.GetDisplacementField()
        elif isinstance(transform, sitk.Image):
            img = transform
        else:
            raise LazyregError(
                f"transform: expected a sitk.DisplacementFieldTransform or sitk.Image, got {type(transform).__name__}"
            )
        if img.GetDimension() != 3 or img.GetNumberOfComponentsPerPixel() != 3:
            raise LazyregError(
                f"transform: expected a 3D image of 3-vectors, got {img.GetDimension()}D with "
                f"{img.GetNumberOfComponentsPerPixel()} components"
            )
        if not np.allclose(img.GetDirection(), np.eye(3).ravel(), atol=1e-9):
            raise LazyregError(f"transform: only an identity direction is supported, got {img.GetDirection()}")
        values = sitk.GetArrayFromImage(img)[..., ::-1]
        return cls.from_array(np.ascontiguousarray(values), img.GetSpacing()[::-1], img.GetOrigin()[::-1])

    # -- properties --------------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        """Whether the values are a dask array (not computed yet).

        Examples
        --------
        >>> import dask.array as da, lazyreg
        >>> lazyreg.DisplacementField.from_array(da.zeros((2, 2, 2, 3)), 1.0).is_lazy
        True
        """
        return isinstance(self.data.data, da.Array)

    @property
    def chunks(self) -> tuple[tuple[int, ...], ...] | None:
        """The dask chunks along (z, y, x, vector), or None for an in-memory field.

        Examples
        --------
        >>> import dask.array as da, lazyreg
        >>> lazyreg.DisplacementField.from_array(da.zeros((4, 2, 2, 3), chunks=(2, 2, 2, 3)), 1.0).chunks
        ((2, 2), (2,), (2,), (3,))
        """
        return self.data.chunks

    @property
    def values(self) -> np.ndarray:
        """The (Z, Y, X, 3) values as numpy (computes a lazy field, every time).

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> lazyreg.DisplacementField.from_array(np.ones((1, 1, 1, 3)), 1.0).values.shape
        (1, 1, 1, 3)
        """
        return np.asarray(self.data.values)

    def compute(self, **kwargs: Any) -> DisplacementField:
        """A numpy-backed field (``self`` if already concrete); a lazy report is computed alongside.

        Keyword arguments go to :func:`dask.compute`.

        Examples
        --------
        >>> import dask.array as da, lazyreg
        >>> lazyreg.DisplacementField.from_array(da.zeros((2, 2, 2, 3)), 1.0).compute().is_lazy
        False
        """
        if not self.is_lazy:
            return self
        if dask.is_dask_collection(self.report):
            data, rep = dask.compute(self.data, self.report, **kwargs)
        else:
            (data,), rep = dask.compute(self.data, **kwargs), self.report
        return DisplacementField(data, report=rep)

    def persist(self, **kwargs: Any) -> DisplacementField:
        """The field with its values held in memory (dask-backed still) and its report computed.

        With dask.distributed the values stay on the workers (as futures); otherwise in this
        process. Graphs built on the result read the held values: nothing before them runs
        again. Keyword arguments go to :func:`dask.persist`.

        Examples
        --------
        >>> import dask.array as da, lazyreg
        >>> D = lazyreg.DisplacementField.from_array(da.zeros((2, 2, 2, 3)), 1.0).persist()
        >>> D.is_lazy, len(D.data.data.dask)
        (True, 1)
        """
        if not self.is_lazy:
            return self
        if dask.is_dask_collection(self.report):
            data, rep = dask.persist(self.data.data, self.report, **kwargs)
            (rep,) = dask.compute(rep)
        else:
            (data,), rep = dask.persist(self.data.data, **kwargs), self.report
        return DisplacementField(self.data.copy(data=data), report=rep)

    def inverse(
        self,
        *,
        tolerance: float = 0.01,
        max_iterations: int = 50,
        grid: Any = None,
        max_displacement: float | Sequence[float] | None = None,
        chunks: Any = None,
    ) -> DisplacementField:
        """The inverse field, by fixed-point iteration (lazy for a lazy field).

        See :func:`lazyreg.transforms.invert.invert_field` for the parameters, the report and
        how a lazy inverse finds the field values it needs (``max_displacement``).

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> D = lazyreg.DisplacementField.from_array(np.ones((4, 4, 4, 3)), 1.0)
        >>> D.inverse()([[1.5, 1.5, 1.5]])
        array([[0.5, 0.5, 0.5]])
        """
        from .invert import invert_field

        return invert_field(
            self,
            grid=grid,
            tolerance=tolerance,
            max_iterations=max_iterations,
            max_displacement=max_displacement,
            chunks=chunks,
        )

    # -- mapping -----------------------------------------------------------------------------
    def displacement_at(self, points: Any) -> np.ndarray:
        """Displacement at physical points (z, y, x); zero outside the field (see Notes).

        Parameters
        ----------
        points : (N, 3) or (3,) array_like
            Physical points.

        Returns
        -------
        ndarray
            Same shape as ``points``. A lazy field is computed.

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> d = np.zeros((2, 2, 2, 3)); d[1, :, :, 0] = 2.0
        >>> lazyreg.DisplacementField.from_array(d, 1.0).displacement_at([0.5, 0.0, 0.0])
        array([1., 0., 0.])
        """
        p = check_points(points)
        d = interpolate_field(self.values, self.grid, p.reshape(-1, 3))
        return d.reshape(p.shape)

    def __call__(self, points: Any) -> np.ndarray:
        """Map physical points: ``x + d(x)`` (same shape as ``points``).

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> D = lazyreg.DisplacementField.from_array(np.ones((2, 2, 2, 3)), 1.0)
        >>> D([0.0, 0.0, 0.0])
        array([1., 1., 1.])
        """
        p = check_points(points)
        return p + self.displacement_at(p)

    def to_sitk(self) -> sitk.DisplacementFieldTransform:
        """An equal ``sitk.DisplacementFieldTransform`` (xyz vectors; a lazy field is computed).

        Examples
        --------
        >>> import numpy as np, lazyreg
        >>> D = lazyreg.DisplacementField.from_array(np.ones((2, 2, 2, 3)) * [0, 0, 1], 1.0)
        >>> D.to_sitk().TransformPoint((0.0, 0.0, 0.0))
        (1.0, 0.0, 0.0)
        """
        v = np.ascontiguousarray(self.values[..., ::-1], dtype=np.float64)
        img = sitk.GetImageFromArray(v, isVector=True)
        img.SetSpacing(self.grid.spacing[::-1])
        img.SetOrigin(self.grid.origin[::-1])
        return sitk.DisplacementFieldTransform(img)

    def __rmatmul__(self, other: Any) -> Any:
        raise LazyregError(
            "other: an Affine cannot be multiplied with a DisplacementField; "
            "use the list [affine, field] (applied last to first) instead"
        )

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        g = self.grid
        return f"DisplacementField({kind}, shape={g.shape}, spacing={g.spacing}, origin={g.origin})"
