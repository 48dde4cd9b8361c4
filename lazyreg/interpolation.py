"""The work of one resampling task: interpolate an in-memory moving region with SimpleITK.

:func:`resample_array` takes the region, its grid, the output grid and the transform steps with
their values known (affine matrices, field blocks) and returns the output chunk in its dtype.
The lazy engine that decides which region each task reads is :mod:`lazyreg.resample`.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from .images import Grid
from .transforms.affine import Affine
from .transforms.field import DisplacementField

__all__ = ["resample_array", "cast_to"]

#: Bytes of the region copied into ITK's buffer between two calls of ``resample_array``'s check
#: (about a core's L2 cache, so that the check reads from it).
_CHECK_SLAB_BYTES = 1 << 19

_INTERPOLATORS = {0: sitk.sitkNearestNeighbor, 1: sitk.sitkLinear, 3: sitk.sitkBSpline}


#: Pixel types SimpleITK images hold as they are (others are converted to float before resampling).
_SITK_PIXEL_TYPES = {
    np.dtype(t): getattr(sitk, "sitk" + n)
    for t, n in [(np.uint8, "UInt8"), (np.int8, "Int8"), (np.uint16, "UInt16"), (np.int16, "Int16"), (np.uint32, "UInt32"),
                 (np.int32, "Int32"), (np.float32, "Float32"), (np.float64, "Float64")]
}


def _to_sitk_transform(steps: list[tuple[str, Any, Any]]) -> sitk.Transform:
    parts: list[sitk.Transform] = []
    pending: np.ndarray | None = None
    for kind, a, g in steps:
        if kind == "affine":
            pending = a if pending is None else pending @ a
            continue
        if a is None:
            continue
        if pending is not None:
            parts.append(Affine(pending).to_sitk())
            pending = None
        parts.append(DisplacementField.from_array(a, g.spacing, g.origin).to_sitk())
    if pending is not None:
        parts.append(Affine(pending).to_sitk())
    if not parts:
        return sitk.Transform(3, sitk.sitkIdentity)
    if len(parts) == 1:
        return parts[0]
    comp = sitk.CompositeTransform(3)
    for p in parts:  # ITK applies the last added first, as our lists do
        comp.AddTransform(p)
    return comp


def resample_array(
    values: np.ndarray,
    values_grid: Grid,
    out: Grid,
    steps: list[tuple[str, Any, Any]],
    *,
    order: int,
    fill_value: float,
    dtype: np.dtype,
    threads: int = 1,
    check: Callable[[np.ndarray], None] | None = None,
) -> np.ndarray:
    """Resample an in-memory moving region onto the ``out`` grid with SimpleITK (one task's work).

    Interpolation runs in double precision inside ITK whatever the pixel type, so integer and
    float32 regions are handed over as they are (no float copy); the output is float32 (float64
    for float64 input and for integers of 32 or 64 bits, which float32 cannot hold exactly),
    rounded to nearest and clipped into ``dtype``. Unsigned outputs of 8 and 16 bits from
    integer regions of up to 16 bits are rounded and clipped by ITK itself as it writes them (no
    float output, no cast pass; exact ties round up there, to even otherwise). Nearest-neighbour
    resampling (``order=0``) of integers is exact, 64-bit labels beyond 2^53 included (resampled
    as two 32-bit halves). ``check``, if given, is called on the values as they are copied into
    ITK's image, z-slab by z-slab (e.g. :func:`lazyreg.resample_checks.check_moving_values`, at
    no pass over memory of its own); integer regions that ITK rounds itself are not passed to it.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg import Affine, Grid
    >>> g = Grid((4, 4, 4), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    >>> values = np.arange(64, dtype=np.uint16).reshape(4, 4, 4)
    >>> shift = ("affine", Affine.from_translation((0.0, 0.0, 1.0)).matrix, None)
    >>> out = resample_array(values, g, g, [shift], order=1, fill_value=0, dtype=values.dtype)
    >>> out[0, 0]
    array([1, 2, 3, 0], dtype=uint16)
    """
    wide = np.issubdtype(values.dtype, np.integer) and values.dtype.itemsize >= 4
    if order == 0 and values.dtype.itemsize == 8 and wide and values.size and np.abs(values).max() >= 2**53:
        return _resample_halves(values, values_grid, out, steps, fill_value, dtype, threads)
    work = np.float64 if values.dtype == np.float64 or wide else np.float32
    direct = _itk_output_type(values.dtype, np.dtype(dtype), order, fill_value)
    if direct is not None:  # ITK writes the output dtype itself (see _itk_output_type)
        out_type, fill = direct, float(cast_to(np.array([fill_value]), dtype)[0])
        img = _itk_image(values, half=order > 0, check=check)
    else:
        if values.dtype not in _SITK_PIXEL_TYPES:
            values = values.astype(work)
        out_type, fill = _SITK_PIXEL_TYPES[np.dtype(work)], float(fill_value)
        img = _itk_image(values, check=check)
    img.SetSpacing(values_grid.spacing[::-1])
    img.SetOrigin(values_grid.origin[::-1])
    f = sitk.ResampleImageFilter()
    f.SetSize([int(s) for s in out.shape[::-1]])
    f.SetOutputSpacing(out.spacing[::-1])
    f.SetOutputOrigin(out.origin[::-1])
    f.SetTransform(_to_sitk_transform(steps))
    f.SetInterpolator(_INTERPOLATORS[order])
    f.SetDefaultPixelValue(fill)
    f.SetOutputPixelType(out_type)
    # work units, not threads, bound ITK's threads: ITK's pool otherwise splits the call over all
    # the process's default threads, and the tasks dask runs at once oversubscribe the cores
    f.SetNumberOfThreads(int(threads))
    f.SetNumberOfWorkUnits(int(threads))
    res_img = f.Execute(img)
    if direct is not None or dtype == work:
        return _array_of(res_img)  # ITK's buffer itself, no copy
    # nearest and linear interpolation (convex combinations) of values in ``dtype`` stay in its range
    in_range = order <= 1 and values.dtype == dtype and np.issubdtype(dtype, np.integer) and (
        np.iinfo(dtype).min <= fill_value <= np.iinfo(dtype).max
    )
    # a view on ITK's buffer (valid while res_img lives): cast_to makes the one new array
    return cast_to(sitk.GetArrayViewFromImage(res_img), dtype, in_range=in_range)


def _itk_output_type(values_dtype: np.dtype, dtype: np.dtype, order: int, fill_value: float) -> int | None:
    """The SimpleITK pixel type ITK can write ``dtype`` outputs in itself, or None (float, then cast).

    Nearest neighbour into the moving dtype is exact. ITK casts interpolated values to integer
    outputs by truncation, clamped to the type's range; for unsigned outputs of up to 16 bits and
    integer moving values of up to 16 bits, handing ITK ``values + 0.5`` in float32 (exact there)
    makes that truncation a rounding to nearest with clipping: the output needs no float array and
    no cast pass (same values as the cast, up to exact ties, which go up instead of to even).
    """
    if not math.isfinite(float(fill_value)):
        return None
    if order == 0 and values_dtype == dtype and dtype in _SITK_PIXEL_TYPES:
        return _SITK_PIXEL_TYPES[dtype]
    small_int = np.issubdtype(values_dtype, np.integer) and values_dtype.itemsize <= 2
    if small_int and dtype in (np.dtype(np.uint8), np.dtype(np.uint16)):
        return _SITK_PIXEL_TYPES[dtype]
    return None


def _itk_image(values: np.ndarray, *, half: bool = False, check: Callable[[np.ndarray], None] | None = None) -> sitk.Image:
    """A new ITK image holding ``values`` (often a strided view), copied once into its buffer;
    ``half=True`` holds ``values + 0.5`` in float32 instead (see :func:`_itk_output_type`).

    ``check`` is called on the copied values, z-slab by z-slab while each slab is still in the
    cache (contiguous there, unlike ``values``): a check that costs no pass over memory of its own.
    """
    size = [int(n) for n in values.shape[::-1]]
    if half:
        img = sitk.Image(size, sitk.sitkFloat32)
        np.add(values, np.float32(0.5), out=_array_of(img), dtype=np.float32)
        return img
    img = sitk.Image(size, _SITK_PIXEL_TYPES[values.dtype])
    buf = _array_of(img)
    if check is None:
        buf[...] = values
        return img
    step = max(1, _CHECK_SLAB_BYTES // max(1, buf[:1].nbytes))
    for z in range(0, len(buf), step):
        buf[z:z + step] = values[z:z + step]
        check(buf[z:z + step])
    return img


class _ItkBuffer:
    """Exposes an ITK image's pixel buffer to numpy and keeps the image alive as the array's base."""

    def __init__(self, image: sitk.Image):
        view = sitk.GetArrayViewFromImage(image)  # makes the buffer unique to ``image``
        self.image = image
        self.__array_interface__ = {
            "shape": view.shape, "typestr": view.dtype.str, "data": (view.__array_interface__["data"][0], False), "version": 3,
        }


def _array_of(image: sitk.Image) -> np.ndarray:
    """A writable numpy array on the buffer of ``image`` (nobody else holds it), without copying."""
    return np.asarray(_ItkBuffer(image))


def _resample_halves(values, values_grid, out, steps, fill_value, dtype, threads) -> np.ndarray:
    """Nearest-neighbour resampling of 64-bit integers, exactly: the high and low 32 bits apart
    (nearest neighbour picks the same voxel for both)."""
    v = np.asarray(values)
    fill = int(fill_value)
    kw = dict(order=0, dtype=np.dtype(np.int64), threads=threads)
    hi = resample_array((v >> 32).astype(np.int64), values_grid, out, steps, fill_value=fill >> 32, **kw)
    lo = resample_array((v & 0xFFFFFFFF).astype(np.int64), values_grid, out, steps, fill_value=fill & 0xFFFFFFFF, **kw)
    joined = (hi.astype(np.int64) << 32) | lo.astype(np.int64)
    return joined.astype(dtype) if np.dtype(dtype) != np.int64 else joined


def cast_to(res: np.ndarray, dtype: np.dtype, *, in_range: bool = False) -> np.ndarray:
    """``res`` (float) in ``dtype``: integers rounded to nearest and clipped, never wrapped.

    Always returns a new array when ``dtype`` differs from ``res.dtype``; ``res`` is not modified.
    ``in_range=True`` states that ``res`` lies within the range of ``dtype`` already (e.g. linear
    interpolation of ``dtype`` values): the clipping pass is skipped, the result is the same.

    Examples
    --------
    >>> import numpy as np
    >>> cast_to(np.array([-3.0, 1.4, 1.6, 300.0]), np.dtype(np.uint8))
    array([  0,   1,   2, 255], dtype=uint8)
    """
    if dtype == np.bool_:
        return res >= 0.5
    if np.issubdtype(dtype, np.integer):
        out = np.empty(res.shape, dtype=dtype)
        if in_range:  # one pass: rounded in res's float type, cast while written (as astype casts)
            np.rint(res, out=out, casting="unsafe")
            return out
        info = np.iinfo(dtype)
        tmp = np.rint(res)  # the one float temporary, then in place
        np.clip(tmp, info.min, info.max, out=tmp)
        np.copyto(out, tmp, casting="unsafe")
        return out
    return res.astype(dtype, copy=False)
