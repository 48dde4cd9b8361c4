"""``open_image``: one entry point that recognises N5, zarr / OME-Zarr and TIFF."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import xarray as xr

from ..errors import LazyregError
from ..image import _check_spacing
from .n5 import N5Source, is_n5
from .omezarr import open_zarr
from .source import from_source
from .tiff import TiffSource

__all__ = ["open_image"]


def _is_zarr(p: Path) -> bool:
    return any((p / m).exists() for m in ("zarr.json", ".zarray", ".zgroup", ".zattrs")) or p.suffix == ".zarr"


def open_image(
    path: str | Path,
    *,
    group: str | None = None,
    level: int | None = None,
    chunks: Any = None,
    spacing: Any = None,
    name: str | None = None,
) -> xr.DataArray:
    """Open an image on disk as a lazy, dask-backed lazyreg image (only metadata is read).

    Parameters
    ----------
    path : str or Path
        An N5 container or dataset, a zarr array or group, an OME-Zarr image (0.4 or 0.5), or a TIFF.
    group : str, optional
        Dataset or group inside the container (N5: e.g. ``"lowres"``; OME-Zarr: a subgroup).
    level : int, optional
        Multiscale level of an OME-Zarr image (default 0, full resolution).
    chunks : optional
        dask chunks; default the chunks on disk (N5 blocks, transposed to zyx).
    spacing : float or 3 floats, optional
        Voxel spacing (z, y, x) overriding the metadata; required when the file has none.
    name : str, optional
        Name of the returned DataArray.

    Returns
    -------
    xarray.DataArray
        Dims ``("z", "y", "x")`` with physical coordinates; chunks are read on demand, also from
        dask.distributed workers.

    Raises
    ------
    LazyregError
        Missing path, unknown format, unknown group/level, unknown spacing, an incomplete write.

    Examples
    --------
    >>> import lazyreg
    >>> fix = lazyreg.open_image("../shared/data/tutorial/fix.n5", group="lowres")  # doctest: +SKIP
    >>> fix.shape, lazyreg.spacing(fix)                                            # doctest: +SKIP
    ((149, 241, 456), (1.68, 1.84, 1.84))
    """
    p = Path(path)
    if spacing is not None:
        spacing = _check_spacing(spacing)
    if not p.exists():
        raise LazyregError(f"path: {p} does not exist")
    if p.suffix.lower() in (".tif", ".tiff"):
        if group is not None or level is not None:
            raise LazyregError("group: TIFF files have no groups or levels")
        src, units = TiffSource(p, spacing), None
        units = src.units
    elif is_n5(p):
        container, dataset = p, group or ""
        if group is None and (p / "attributes.json").exists():
            # a dataset path given directly: find the container above it
            c = p
            while c.suffix != ".n5" and c.parent != c:
                c = c.parent
            if c.suffix == ".n5":
                container, dataset = c, str(p.relative_to(c))
        src = N5Source(container, dataset, spacing)
        units = src.units
    elif _is_zarr(p):
        src, units = open_zarr(p, group=group, level=level, spacing=spacing)
    else:
        raise LazyregError(
            f"path: {p} is not a format lazyreg reads (N5 container, zarr / OME-Zarr, or .tif/.tiff)"
        )
    return from_source(src, chunks=chunks, name=name, units=units)
