"""Zarr stores that xarray wrote (``DataArray.to_zarr``, ``Dataset.to_zarr``): the image and its coordinates.

xarray stores a lazyreg image as a zarr group holding the voxels (an array whose dimension names are
z, y, x: zarr v3 ``dimension_names`` or the v2 attribute ``_ARRAY_DIMENSIONS``) beside one 1D array
per coordinate. :func:`open_xarray_store` reads the spacing and origin from those coordinates
(evenly spaced voxel centres, as :func:`lazyreg.image` makes them; the image's ``attrs["spacing"]``
for an axis of one voxel), so no ``spacing=`` is needed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
import zarr

from ..errors import LazyregError
from ..images import DIMS, Grid, grid_of
from .zarr_read import WRITE_MARKER, ZarrSource, is_zarr

__all__ = ["open_xarray_store"]

_ENCODED = ("scale_factor", "add_offset")


def _dims(arr: Any) -> tuple[str, ...] | None:
    names = getattr(arr.metadata, "dimension_names", None)
    if names is None:
        names = arr.attrs.get("_ARRAY_DIMENSIONS")
    if not isinstance(names, (list, tuple)) or any(n is None for n in names) or len(names) != arr.ndim:
        return None
    return tuple(str(n) for n in names)


def _is_image(arr: Any) -> bool:
    dims = _dims(arr)
    return dims is not None and set(DIMS) <= set(dims)


def _is_ome(attrs: Any) -> bool:
    """OME-Zarr metadata, or a lazyreg write still in progress (its metadata come last)."""
    return "multiscales" in attrs or "ome" in attrs or WRITE_MARKER in attrs


def _find(root: Path, group: str | None) -> tuple[Path, Any, str] | None:
    """(group folder, group, variable name) of an xarray store's image, or None if ``root`` is none."""
    try:
        node = zarr.open(store=str(root), mode="r")
    except Exception:  # not readable as zarr: open_zarr names the problem
        return None
    if isinstance(node, zarr.Array):
        if group or not is_zarr(root.parent):
            return None
        try:
            parent = zarr.open_group(store=str(root.parent), mode="r")
        except Exception:
            return None
        return (root.parent, parent, root.name) if not _is_ome(parent.attrs) and _is_image(node) else None
    if _is_ome(node.attrs):
        return None
    if group:
        name = group.strip("/")
        return (root, node, name) if name in node.array_keys() and _is_image(node[name]) else None
    images = sorted(k for k, a in node.arrays() if _is_image(a))
    if len(images) > 1:
        raise LazyregError(
            f"path: {root} holds {len(images)} images {images} (an xarray Dataset); pass group=NAME "
            f"(PATH:NAME on the command line) to open one"
        )
    return (root, node, images[0]) if images else None


def open_xarray_store(path: str | Path, *, group: str | None, level: Any, spacing: Any) -> tuple[ZarrSource, str] | None:
    """A source for the image of a zarr store that xarray wrote, with its coordinates; None for other stores.

    Parameters
    ----------
    path : str or Path
        The group xarray wrote, or the image's array inside it.
    group : str or None
        The variable's name, when the store holds several images.
    level : int, "auto" or None
        Only 0 (or None, "auto"): such stores have one level.
    spacing : tuple of 3 floats or None
        Overrides the spacing of the coordinates (their first values stay the origin); needed for
        axes without a coordinate array.

    Returns
    -------
    tuple or None
        ``(ZarrSource, units)``; None when ``path`` is not an xarray store of a z, y, x image (e.g. an
        OME-Zarr image, a plain array without dimension names).

    Raises
    ------
    LazyregError
        Several images and no ``group``; coordinates not evenly spaced; an axis without coordinates
        and no ``spacing``; another axis of size > 1; values stored encoded (``scale_factor``).

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.io.xarray_store import open_xarray_store
    >>> img = lazyreg.image(np.zeros((2, 3, 4), np.uint8), spacing=(2, 1, 1), origin=(10, 0, 5), name="img")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = img.to_dataset().to_zarr(d + "/img.zarr", consolidated=False)
    ...     src, units = open_xarray_store(d + "/img.zarr", group=None, level=None, spacing=None)
    >>> src.grid, units
    (Grid(shape=(2, 3, 4), spacing=(2.0, 1.0, 1.0), origin=(10.0, 0.0, 5.0)), 'micrometer')
    """
    found = _find(Path(path).resolve(), group)
    if found is None:
        return None
    root, node, name = found
    arr, where = node[name], root / name
    if level not in (None, 0, "auto"):
        raise LazyregError(f"level: {root} is a zarr store written by xarray, with one level; got level={level!r}")
    if any(k in arr.attrs for k in _ENCODED):
        raise LazyregError(
            f"path: {where} stores encoded values ({', '.join(k for k in _ENCODED if k in arr.attrs)}); open it with "
            "xarray.open_zarr and wrap the decoded variable with lazyreg.image"
        )
    dims = _dims(arr)
    extra = [(d, n) for d, n in zip(dims, arr.shape) if d not in DIMS and n != 1]
    if extra:
        raise LazyregError(f"path: {where} has dims {dims} with non-spatial axes of size > 1 {extra}; lazyreg reads 3D (z, y, x) images")
    shape = tuple(int(arr.shape[dims.index(d)]) for d in DIMS)
    coords = {}
    for d, n in zip(DIMS, shape):
        if d in node.array_keys() and node[d].shape == (n,):
            coords[d] = np.asarray(node[d][...], dtype=float)
    missing = [d for d in DIMS if d not in coords]
    if spacing is None and missing:
        raise LazyregError(f"path: voxel spacing is unknown for {where}: the store has no coordinate array for {missing}; pass spacing=(z, y, x)")
    if spacing is None:
        stand_in = xr.DataArray(np.broadcast_to(np.uint8(0), shape), dims=DIMS, coords=coords, attrs=dict(arr.attrs))
        grid = grid_of(stand_in, f"path: {where}")
    else:
        grid = Grid(shape, spacing, tuple(float(coords[d][0]) if d in coords else 0.0 for d in DIMS))
    layout = tuple(d if d in DIMS else None for d in dims)
    return ZarrSource(where, grid, layout), str(arr.attrs.get("units", "micrometer"))
