"""Images as xarray DataArrays with physical coordinates: construction, grids and validation."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize

from .errors import LazyregError
from .validation import SPACING_RANGE, check_origin, check_spacing

__all__ = ["DIMS", "Grid", "image", "grid", "spacing", "origin", "validate_image", "grid_of", "check_mask", "single_block", "in_memory"]

DIMS = ("z", "y", "x")
_SPACING_ATTR = "spacing"
_RTOL = 1e-5
#: The name prefix of :func:`single_block`'s arrays.
_SINGLE_BLOCK = "lazyreg-moving-"


@dataclass(frozen=True)
class Grid:
    """A regular voxel grid in physical space: voxel centres at ``origin + index * spacing``.

    All triples are in (z, y, x) order.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> g = Grid((10, 20, 30), spacing=(2.0, 1.0, 1.0), origin=(5.0, 0.0, 0.0))
    >>> g.to_physical([[1, 0, 0]]), g.extent[1]
    (array([[7., 0., 0.]]), array([23., 19., 29.]))
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", check_spacing(self.spacing))
        object.__setattr__(self, "origin", check_origin(self.origin, self.spacing))

    def coords(self) -> dict[str, np.ndarray]:
        """Voxel-centre coordinates for each dim."""
        return {
            d: self.origin[i] + np.arange(self.shape[i], dtype=np.float64) * self.spacing[i]
            for i, d in enumerate(DIMS)
        }

    def to_index(self, points: np.ndarray) -> np.ndarray:
        """Physical (N, 3) points -> continuous voxel indices (N, 3)."""
        return (np.asarray(points, dtype=float) - np.asarray(self.origin)) / np.asarray(self.spacing)

    def to_physical(self, index: np.ndarray) -> np.ndarray:
        """Continuous voxel indices (N, 3) -> physical (N, 3) points."""
        return np.asarray(index, dtype=float) * np.asarray(self.spacing) + np.asarray(self.origin)

    @property
    def extent(self) -> tuple[np.ndarray, np.ndarray]:
        """Physical positions of the first and the last voxel centre."""
        lo = np.asarray(self.origin)
        return lo, lo + (np.asarray(self.shape) - 1) * np.asarray(self.spacing)


def image(
    data: Any,
    spacing: float | Sequence[float],
    origin: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    name: str | None = None,
    units: str = "micrometer",
) -> xr.DataArray:
    """Wrap a 3D (z, y, x) array into an image with physical coordinates.

    Parameters
    ----------
    data : array_like or dask.array.Array
        Voxel values in (z, y, x) order. Dask arrays stay lazy; nothing is computed.
    spacing : float or sequence of 3 floats
        Voxel size in (z, y, x), in ``units``. Must be positive.
    origin : float or sequence of 3 floats, optional
        Physical position of the centre of voxel (0, 0, 0).
    name : str, optional
        Name of the DataArray.
    units : str, optional
        Physical unit of spacing and origin (an OME-Zarr unit name).

    Returns
    -------
    xarray.DataArray
        Dims ``("z", "y", "x")``, float64 coordinates ``origin + index * spacing``; the spacing is
        also kept in ``attrs["spacing"]`` so that it survives length-1 axes.

    Raises
    ------
    LazyregError
        If ``data`` is not 3D, empty, non-numeric, or spacing/origin are invalid.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.zeros((4, 5, 6)), spacing=(2.0, 0.5, 0.5), origin=(10, 0, 0))
    >>> lazyreg.spacing(img), lazyreg.origin(img[1:])
    ((2.0, 0.5, 0.5), (12.0, 0.0, 0.0))
    """
    if isinstance(data, xr.DataArray):
        data = data.data
    if not isinstance(data, da.Array):
        data = np.asarray(data)
    _check_array(data, "data")
    sp = check_spacing(spacing)
    g = Grid(data.shape, sp, check_origin(origin, sp))
    img = xr.DataArray(data, dims=DIMS, coords=g.coords(), attrs={_SPACING_ATTR: g.spacing, "units": units})
    img.name = name  # xarray would otherwise take a dask array's key as the name
    return img


def grid(
    shape: Sequence[int],
    spacing: float | Sequence[float],
    origin: float | Sequence[float] = (0.0, 0.0, 0.0),
    *,
    chunks: Any = "auto",
    units: str = "micrometer",
) -> xr.DataArray:
    """An image that only defines a grid: lazy zeros that are never meant to be read.

    Use it as the ``fixed`` argument of :func:`lazyreg.apply_transform` to resample onto any grid.

    Examples
    --------
    >>> import lazyreg
    >>> g = lazyreg.grid((10, 20, 30), spacing=1.5)
    >>> g.shape, lazyreg.spacing(g)
    ((10, 20, 30), (1.5, 1.5, 1.5))
    """
    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3:
        raise LazyregError(f"shape: expected 3 sizes (z, y, x), got {tuple(shape)}")
    return image(da.zeros(shape_t, dtype=np.uint8, chunks=chunks), spacing, origin, units=units)


def _check_array(data: Any, argname: str) -> None:
    if data.ndim != 3:
        raise LazyregError(
            f"{argname}: expected a 3D (z, y, x) array, got {data.ndim} dimensions with shape {data.shape}"
        )
    if 0 in data.shape:
        raise LazyregError(f"{argname}: image is empty (shape {data.shape})")
    dt = np.dtype(data.dtype)
    if not (np.issubdtype(dt, np.number) or dt == np.bool_) or np.issubdtype(dt, np.complexfloating):
        raise LazyregError(f"{argname}: expected a real numeric dtype, got {dt}")


def _axis_spacing(img: xr.DataArray, i: int, d: str, argname: str) -> float:
    sp = _raw_axis_spacing(img, i, d, argname)
    if not SPACING_RANGE[0] <= sp <= SPACING_RANGE[1]:
        raise LazyregError(
            f"{argname}: voxel spacing {sp:g} along '{d}' is outside [{SPACING_RANGE[0]:g}, {SPACING_RANGE[1]:g}], "
            "which SimpleITK and float64 coordinates cannot handle; give coordinates in a unit that makes it nearer 1"
        )
    return sp


def _raw_axis_spacing(img: xr.DataArray, i: int, d: str, argname: str) -> float:
    c = np.asarray(img.coords[d].values, dtype=float)
    if c.size >= 2:
        steps = np.diff(c)
        step = float(steps[0])
        if step <= 0 or np.any(steps <= 0):
            raise LazyregError(f"{argname}: coordinate '{d}' is not increasing")
        if not np.allclose(steps, step, rtol=_RTOL, atol=0):
            raise LazyregError(f"{argname}: coordinate '{d}' is not evenly spaced")
        # the exact spacing from attrs when the coordinates agree with it (not after img[::2])
        step = (c[-1] - c[0]) / (c.size - 1)
        sp = img.attrs.get(_SPACING_ATTR)
        if sp is not None and np.size(sp) == 3:
            exact = float(np.asarray(sp, dtype=float)[i])
            if abs(exact - step) <= 1e-6 * exact:
                return exact
        return float(step)
    sp = img.attrs.get(_SPACING_ATTR)
    if sp is None or np.size(sp) != 3:
        raise LazyregError(
            f"{argname}: axis '{d}' has a single voxel and attrs['spacing'] is missing, so its spacing is unknown"
        )
    return float(np.asarray(sp, dtype=float)[i])


def validate_image(img: Any, argname: str = "image") -> xr.DataArray:
    """Check that ``img`` is a lazyreg image and return it unchanged.

    An image is an :class:`xarray.DataArray` with dims ``("z", "y", "x")``, a real numeric dtype,
    no empty axis, and 1-D, evenly spaced, increasing coordinates for every dim. Every public
    entry point calls this; the error names ``argname`` and the problem. Data are never read.

    Raises
    ------
    LazyregError
        Naming ``argname`` and the first problem found.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> lazyreg.validate_image(np.zeros((2, 2, 2)), "moving")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: moving: expected an xarray.DataArray image (wrap arrays with lazyreg.image(data, spacing)), got ndarray
    """
    if not isinstance(img, xr.DataArray):
        raise LazyregError(
            f"{argname}: expected an xarray.DataArray image (wrap arrays with lazyreg.image(data, spacing)), "
            f"got {type(img).__name__}"
        )
    if img.ndim != 3:
        extra = [d for d in img.dims if d not in DIMS]
        hint = ""
        if img.ndim > 3 and tuple(img.dims[-3:]) == DIMS:
            pick = ", ".join(f"{d}={img[d].values[0].item()!r}" if d in img.coords else f"{d}=0" for d in extra)
            how = "sel" if all(d in img.coords for d in extra) else "isel"
            hint = f"; this takes one 3D image: select one {'/'.join(extra)}, e.g. {argname}.{how}({pick})"
        raise LazyregError(f"{argname}: expected 3 dims ('z', 'y', 'x'), got {img.ndim}: {img.dims}{hint}")
    if tuple(img.dims) != DIMS:
        if set(img.dims) == set(DIMS):
            raise LazyregError(
                f"{argname}: dims are {img.dims}, expected ('z', 'y', 'x'); use img.transpose('z', 'y', 'x')"
            )
        raise LazyregError(f"{argname}: dims are {img.dims}, expected ('z', 'y', 'x')")
    _check_array(img, argname)
    for i, d in enumerate(DIMS):
        if d not in img.coords:
            raise LazyregError(f"{argname}: coordinate '{d}' is missing (physical positions are unknown)")
        if img.coords[d].ndim != 1 or img.coords[d].dims != (d,):
            raise LazyregError(f"{argname}: coordinate '{d}' must be 1-D along dim '{d}'")
        c = np.asarray(img.coords[d].values)
        if not np.issubdtype(c.dtype, np.number) or not np.all(np.isfinite(c)):
            raise LazyregError(f"{argname}: coordinate '{d}' must be finite numbers")
        _axis_spacing(img, i, d, argname)
    return img


def spacing(img: xr.DataArray) -> tuple[float, float, float]:
    """Voxel spacing (z, y, x) of an image, in physical units.

    Read from the coordinates; for a length-1 axis from ``attrs["spacing"]``.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> lazyreg.spacing(lazyreg.image(np.zeros((1, 3, 3)), spacing=(4, 1, 1))[:, :1])
    (4.0, 1.0, 1.0)
    """
    validate_image(img)
    return tuple(_axis_spacing(img, i, d, "image") for i, d in enumerate(DIMS))  # type: ignore[return-value]


def origin(img: xr.DataArray) -> tuple[float, float, float]:
    """Physical position (z, y, x) of the centre of the first voxel.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> lazyreg.origin(lazyreg.image(np.zeros((3, 3, 3)), 2.0, origin=(1, 2, 3))[1:, 2:])
    (3.0, 6.0, 3.0)
    """
    validate_image(img)
    return tuple(float(img.coords[d].values[0]) for d in DIMS)  # type: ignore[return-value]


def grid_of(img: xr.DataArray, argname: str = "image") -> Grid:
    """The :class:`Grid` (shape, spacing, origin) of a validated image.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.images import grid_of
    >>> grid_of(lazyreg.image(np.zeros((2, 3, 4)), spacing=(2, 1, 1), origin=(1, 0, 0)))
    Grid(shape=(2, 3, 4), spacing=(2.0, 1.0, 1.0), origin=(1.0, 0.0, 0.0))
    """
    validate_image(img, argname)
    return Grid(
        tuple(img.shape),
        tuple(_axis_spacing(img, i, d, argname) for i, d in enumerate(DIMS)),
        tuple(float(img.coords[d].values[0]) for d in DIMS),
    )


def check_mask(mask: Any, img: xr.DataArray, argname: str, image_argname: str = "image") -> xr.DataArray | None:
    """Check that ``mask`` is None or a boolean (or 0/1 integer) image on the grid of ``img``.

    Only the dtype and the grid are checked (nothing is read), so this is cheap on lazy masks;
    steps check the values when they read them.

    Raises
    ------
    LazyregError
        Naming ``argname``: not an image, not boolean, or on another grid than ``image_argname``.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.images import check_mask
    >>> img = lazyreg.image(np.zeros((4, 4, 4)), spacing=1.0)
    >>> check_mask(lazyreg.image(np.ones((4, 4, 4), bool), spacing=2.0), img, "fixed_mask", "fixed")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed_mask: the mask's grid Grid(shape=(4, 4, 4), spacing=(2.0, 2.0, 2.0), origin=(0.0, 0.0, 0.0)) differs from the grid of fixed Grid(shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)); a mask must lie on its image's grid
    """
    if mask is None:
        return None
    validate_image(mask, argname)
    dt = np.dtype(mask.dtype)
    if not (dt == np.bool_ or np.issubdtype(dt, np.integer)):
        raise LazyregError(f"{argname}: expected a boolean mask (or 0/1 integers), got dtype {dt}")
    g, gi = grid_of(mask, argname), grid_of(img, image_argname)
    tol = 1e-6 * max(gi.spacing)
    if (
        g.shape != gi.shape
        or not np.allclose(g.spacing, gi.spacing, rtol=1e-6, atol=0)
        or not np.allclose(g.origin, gi.origin, rtol=0, atol=tol)
    ):
        raise LazyregError(
            f"{argname}: the mask's grid {g} differs from the grid of {image_argname} {gi}; "
            "a mask must lie on its image's grid"
        )
    return mask


def single_block(values: Any) -> da.Array:
    """An in-memory array as a dask array of one chunk named by its content.

    The array is wrapped as it is, without the copy ``dask.array.from_array`` makes (a 256 MiB
    image costs 0.25-0.35 s to copy, serially, before any task runs): its values are read when
    the graph is computed, so an array modified in place before then gives the modified values.
    Naming the chunk by the values' token makes every graph built from the same values share that
    one key. A dask array is returned as it is.

    Examples
    --------
    >>> a = np.arange(8).reshape(2, 2, 2)
    >>> x, y = single_block(a), single_block(a)
    >>> x.name == y.name, x.numblocks, single_block(x) is x
    (True, (1, 1, 1), True)
    """
    if isinstance(values, da.Array):
        return values
    v = np.asarray(values)
    name = _SINGLE_BLOCK + tokenize(v)
    return da.Array({(name,) + (0,) * v.ndim: v}, name, chunks=tuple((n,) for n in v.shape), dtype=v.dtype)


def in_memory(values: Any) -> bool:
    """Whether image data are in memory: not a dask array, or one made by :func:`single_block`.

    Examples
    --------
    >>> a = np.zeros((2, 2, 2))
    >>> in_memory(a), in_memory(single_block(a)), in_memory(da.zeros((2, 2, 2)))
    (True, True, False)
    """
    return not isinstance(values, da.Array) or values.name.startswith(_SINGLE_BLOCK)
