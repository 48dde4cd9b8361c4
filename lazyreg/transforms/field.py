"""Displacement fields: ``x -> x + d(x)`` with ``d`` sampled on a regular grid (zyx, physical)."""

from __future__ import annotations

from typing import Any, Sequence

import dask.array as da
import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..image import DIMS, Grid, grid_of, image

__all__ = ["DisplacementField", "interpolate_field"]

_FIELD_DIMS = DIMS + ("vector",)


def interpolate_field(values: np.ndarray, grid: Grid, points: np.ndarray) -> np.ndarray:
    """Trilinear interpolation of a field block at physical points, SimpleITK's convention.

    Points whose continuous index lies in ``[-0.5, n - 0.5)`` on every axis are interpolated with the
    edge values repeated; other points get zero displacement (as ``sitk.DisplacementFieldTransform``).

    Parameters
    ----------
    values : (Z, Y, X, 3) ndarray
        Displacements (dz, dy, dx) at the voxel centres of ``grid``.
    grid : Grid
        Where ``values`` lie.
    points : (N, 3) ndarray
        Physical points (z, y, x).

    Returns
    -------
    (N, 3) ndarray
        Displacements at ``points``.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    n = np.asarray(values.shape[:3])
    ci = grid.to_index(pts)
    inside = np.all((ci >= -0.5) & (ci < n - 0.5), axis=1)
    out = np.zeros((len(pts), 3), dtype=np.float64)
    if not inside.any():
        return out
    c = np.clip(ci[inside], 0, n - 1)
    i0 = np.minimum(np.floor(c).astype(np.int64), n - 1)
    f = c - i0
    i1 = np.minimum(i0 + 1, n - 1)
    acc = np.zeros((len(c), 3), dtype=np.float64)
    for dz in (0, 1):
        iz = i1[:, 0] if dz else i0[:, 0]
        wz = f[:, 0] if dz else 1 - f[:, 0]
        for dy in (0, 1):
            iy = i1[:, 1] if dy else i0[:, 1]
            wy = f[:, 1] if dy else 1 - f[:, 1]
            for dx in (0, 1):
                ix = i1[:, 2] if dx else i0[:, 2]
                wx = f[:, 2] if dx else 1 - f[:, 2]
                acc += (wz * wy * wx)[:, None] * values[iz, iy, ix]
    out[inside] = acc
    return out


class DisplacementField:
    """A dense displacement field: the transform ``x -> x + d(x)`` (fixed to moving, physical).

    Parameters
    ----------
    data : xarray.DataArray
        Dims ``("z", "y", "x", "vector")``, coordinates z, y, x as for images (the field's own
        grid), ``vector`` of length 3 holding (dz, dy, dx) in physical units. Usually dask-backed.
    report : object, optional
        What produced the field (e.g. the per-block report of a piecewise alignment).

    Notes
    -----
    Between voxel centres the field is interpolated trilinearly; points whose continuous index lies
    outside ``[-0.5, n - 0.5)`` on some axis are **not displaced** (zero displacement), as in
    SimpleITK's ``DisplacementFieldTransform``.

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
            data = data.data
        if not isinstance(data, xr.DataArray):
            raise LazyregError(f"field: expected an xarray.DataArray, got {type(data).__name__}")
        if tuple(data.dims) != _FIELD_DIMS:
            raise LazyregError(f"field: dims are {data.dims}, expected {_FIELD_DIMS}")
        if data.sizes["vector"] != 3:
            raise LazyregError(f"field: the 'vector' dim must have length 3 (dz, dy, dx), got {data.sizes['vector']}")
        if not np.issubdtype(data.dtype, np.floating):
            if not np.issubdtype(data.dtype, np.number) or np.issubdtype(data.dtype, np.complexfloating):
                raise LazyregError(f"field: expected real numbers, got dtype {data.dtype}")
            data = data.astype(np.float32)
        self.grid: Grid = grid_of(data.isel(vector=0), "field")
        if "vector" not in data.coords:
            data = data.assign_coords(vector=["z", "y", "x"])
        self.data = data
        self.report = report

    @classmethod
    def from_array(
        cls,
        values: Any,
        spacing: float | Sequence[float],
        origin: float | Sequence[float] = (0.0, 0.0, 0.0),
        *,
        report: Any = None,
    ) -> "DisplacementField":
        """Wrap a (Z, Y, X, 3) numpy or dask array of (dz, dy, dx) displacements on a grid."""
        if not isinstance(values, da.Array):
            values = np.asarray(values)
        if values.ndim != 4 or values.shape[-1] != 3:
            raise LazyregError(f"values: expected shape (Z, Y, X, 3), got {values.shape}")
        img = image(values[..., 0], spacing, origin)
        data = xr.DataArray(
            values,
            dims=_FIELD_DIMS,
            coords={**{d: img.coords[d].values for d in DIMS}, "vector": ["z", "y", "x"]},
            attrs={"spacing": img.attrs["spacing"], "units": img.attrs["units"]},
        )
        return cls(data, report=report)

    @property
    def is_lazy(self) -> bool:
        """Whether the values are a dask array (not computed yet)."""
        return isinstance(self.data.data, da.Array)

    @property
    def chunks(self):
        return self.data.chunks

    @property
    def values(self) -> np.ndarray:
        """The (Z, Y, X, 3) values, computed."""
        return np.asarray(self.data.values)

    def compute(self) -> "DisplacementField":
        """A numpy-backed copy (itself if already concrete); a lazy report is computed alongside."""
        if not self.is_lazy:
            return self
        import dask

        if hasattr(self.report, "__dask_graph__"):
            data, rep = dask.compute(self.data, self.report)
        else:
            data, rep = self.data.compute(), self.report
        return DisplacementField(data, report=rep)

    def displacement_at(self, points: Any) -> np.ndarray:
        """Displacement (N, 3) at physical points (N, 3); zero outside the grid (see Notes)."""
        p = np.asarray(points, dtype=float)
        if p.shape[-1:] != (3,) or p.ndim > 2:
            raise LazyregError(f"points: expected shape (N, 3) or (3,), got {p.shape}")
        d = interpolate_field(self.values, self.grid, p.reshape(-1, 3))
        return d.reshape(p.shape)

    def __call__(self, points: Any) -> np.ndarray:
        """Map physical points: ``x + d(x)``."""
        p = np.asarray(points, dtype=float)
        return p + self.displacement_at(p)

    def to_sitk(self) -> sitk.DisplacementFieldTransform:
        """An equivalent ``sitk.DisplacementFieldTransform`` (xyz; computes a lazy field)."""
        v = np.ascontiguousarray(self.values[..., ::-1], dtype=np.float64)
        img = sitk.GetImageFromArray(v, isVector=True)
        img.SetSpacing(self.grid.spacing[::-1])
        img.SetOrigin(self.grid.origin[::-1])
        return sitk.DisplacementFieldTransform(img)

    def __repr__(self) -> str:
        kind = "lazy" if self.is_lazy else "in memory"
        g = self.grid
        return f"DisplacementField({kind}, shape={g.shape}, spacing={g.spacing}, origin={g.origin})"
