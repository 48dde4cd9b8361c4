"""``open_image``: one entry point that recognises N5, zarr / OME-Zarr and TIFF, and opens lazily."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import dask
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..validation import check_spacing
from .n5 import is_n5, open_n5
from .channels import stack_image
from .tiff import TiffSource, is_tiff
from .xarray_store import open_xarray_store
from .zarr_read import AUTO_LEVEL_VOXELS, is_zarr, open_zarr

__all__ = ["open_image"]


def _describe(p: Path) -> str:
    """What was found at a path of an unknown format, for the error message."""
    if p.is_dir():
        entries = sorted(e.name for e in p.iterdir())
        shown = entries[:8] + (["..."] if len(entries) > 8 else [])
        return f"a folder without zarr or N5 metadata (entries: {shown or 'none'})"
    try:
        with open(p, "rb") as f:
            head = f.read(8)
    except OSError as e:
        return f"an unreadable file ({e})"
    return f"a file with suffix '{p.suffix}' starting with bytes {head!r}"


_SUFFIXES = (".ome.zarr", ".ome.tiff", ".ome.tif", ".zarr", ".n5", ".tiff", ".tif")


def _default_name(p: Path) -> str:
    name = p.resolve().name
    for suffix in _SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return name


def _check_level(level: Any) -> int | str | None:
    if level is None or (isinstance(level, str) and level == "auto"):
        return level
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or level < 0:
        raise LazyregError(f"level: expected a non-negative integer (0 is full resolution) or 'auto', got {level!r}")
    return int(level)


def _budget(max_voxels: Any) -> int:
    """The voxel budget of ``level="auto"``: ``max_voxels``, else the dask config ``lazyreg.auto-level-voxels``."""
    value = dask.config.get("lazyreg.auto-level-voxels", AUTO_LEVEL_VOXELS) if max_voxels is None else max_voxels
    where = "max_voxels" if max_voxels is not None else "dask config lazyreg.auto-level-voxels"
    try:
        n = int(float(value))
    except (TypeError, ValueError):
        raise LazyregError(f"{where}: expected a number of voxels, got {value!r}") from None
    if n < 1 or isinstance(value, bool):
        raise LazyregError(f"{where}: expected a positive number of voxels, got {value!r}")
    return n


def _open_n5_auto(p: Path, group: str | None, spacing: Any, budget: int) -> Any:
    """The finest level ``s{k}`` of an N5 multiscale group with at most ``budget`` voxels (else the coarsest)."""
    base = p / group if group else p
    if not (base / "s0").is_dir():
        return open_n5(p, group=group, level=None, spacing=spacing)
    k = 0
    while True:
        src = open_n5(p, group=group, level=k, spacing=spacing)
        if math.prod(src.shape) <= budget or not (base / f"s{k + 1}").is_dir():
            return src
        k += 1


def open_image(
    path: str | os.PathLike,
    *,
    group: str | None = None,
    level: int | str | None = None,
    chunks: Any = None,
    spacing: Any = None,
    name: str | None = None,
    max_voxels: int | None = None,
    channel: int | str | None = None,
    time: int | None = None,
) -> xr.DataArray:
    """Open an image on disk as a lazy, dask-backed lazyreg image (only metadata are read).

    Parameters
    ----------
    path : str or path-like
        An N5 container, group or dataset; a zarr array (v2 or v3); an OME-Zarr 0.4 / 0.5 image; a
        zarr store that xarray wrote (``DataArray.to_zarr``: spacing and origin from its coordinates);
        or a TIFF file.
    group : str, optional
        Inside ``path``: the N5 dataset (e.g. ``"lowres"``), the OME-Zarr level's dataset path (e.g.
        ``"1"``), or a zarr subgroup / array.
    level : int or "auto", optional
        Multiscale level (0, the default, is full resolution): an index into the OME-Zarr datasets, or
        the dataset ``s{level}`` of an N5 multiscale group. "auto": the finest level of at most
        ``max_voxels`` voxels (the coarsest if none is that small), e.g. to run :func:`lazyreg.align`
        on a level that fits in memory, as multiview-stitcher chooses its registration binning;
        transforms are in physical units, so they apply to the full-resolution images as they are.
    chunks : optional
        dask chunks (z, y, x); default the chunks on disk (N5 blocks transposed to zyx, zarr chunks or shards;
        for TIFF, pages or tiles grouped to about 32 MiB).
    spacing : float or 3 floats, optional
        Voxel spacing (z, y, x) overriding the metadata; required when the file has none.
    name : str, optional
        Name of the returned DataArray; default the file / folder name without its suffix.
    max_voxels : int, optional
        Voxel budget of ``level="auto"``; default the dask config ``lazyreg.auto-level-voxels``, else
        16 Mi (16 777 216) voxels.
    channel : str or int, optional
        Of an OME-Zarr image with a channel axis: the channel to open, by name (OME ``omero``
        label) or index; the ``c`` dim is then dropped (the name goes to ``attrs["channel"]``) and
        the image is a plain 3D one that tasks read only that channel of. Default: every channel.
    time : int, optional
        Of an OME-Zarr image with a time axis: the index of the time point to open (dropping ``t``).

    Returns
    -------
    xarray.DataArray
        Dims ``("z", "y", "x")`` with physical coordinates (voxel centres) and ``attrs["units"]``;
        chunks are read on demand, also from dask.distributed workers. An OME-Zarr image with time
        / channel axes of size > 1 keeps them first, ``("t", "c", "z", "y", "x")`` (those present),
        with the channel names as the ``c`` coordinate (else 0..n-1) and the times as the ``t``
        coordinate (from the axis scale and unit); axes of size 1 are dropped.

    Raises
    ------
    LazyregError
        Missing path, unknown format, unknown group or level, unknown spacing, an interrupted write,
        a displacement field (to open with :func:`lazyreg.load_transform`), an unknown channel
        name (the names are listed) or an index out of range.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = lazyreg.to_zarr(lazyreg.image(np.ones((4, 8, 8), "uint16"), spacing=(2, 1, 1)), f"{d}/fix.ome.zarr")
    ...     fix = lazyreg.open_image(path)  # only metadata are read
    ...     fix.name, fix.shape, lazyreg.spacing(fix), int(fix.sum())
    ('fix', (4, 8, 8), (2.0, 1.0, 1.0), 256)

    The finest level of a pyramid that holds at most 100 voxels:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = lazyreg.to_zarr(lazyreg.image(np.ones((8, 8, 8)), 1.0), f"{d}/p.ome.zarr", levels=3)
    ...     lazyreg.open_image(path, level="auto", max_voxels=100).shape
    (4, 4, 4)

    The tutorial's N5 volume (a dataset of an N5 container):

    >>> fix = lazyreg.open_image("../shared/data/tutorial/fix.n5", group="lowres")  # doctest: +SKIP
    >>> fix.shape, lazyreg.spacing(fix)                                            # doctest: +SKIP
    ((149, 241, 456), (1.68, 1.84, 1.84))

    Channels: every one, or one by name (tasks then read only its chunks):

    >>> two = lazyreg.image(np.zeros((4, 8, 8), "uint16"), 1.0).expand_dims(c=["DAPI", "GFP"])
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = lazyreg.to_zarr(two, f"{d}/two.ome.zarr")
    ...     lazyreg.open_image(path).dims, lazyreg.open_image(path, channel="GFP").dims
    (('c', 'z', 'y', 'x'), ('z', 'y', 'x'))
    """
    if not isinstance(path, (str, os.PathLike)):
        raise LazyregError(f"path: expected a str or path, got {type(path).__name__}")
    if group is not None and not isinstance(group, str):
        raise LazyregError(f"group: expected a str (a dataset / group path), got {type(group).__name__}")
    level = _check_level(level)
    budget = _budget(max_voxels) if level == "auto" else None
    if spacing is not None:
        spacing = check_spacing(spacing)
    p = Path(path).expanduser()
    if not p.exists():
        raise LazyregError(f"path: {p} does not exist")
    if p.is_file() and is_tiff(p):
        if group is not None:
            raise LazyregError(f"group: TIFF files have no groups ({p})")
        if level and level != "auto":
            raise LazyregError(f"level: TIFF files are read at full resolution only, got level={level}")
        src = TiffSource(p, spacing)
        units = src.units
    elif is_zarr(p):
        found = open_xarray_store(p, group=group, level=level, spacing=spacing)
        src, units = found if found else open_zarr(p, group=group, level=level, spacing=spacing, max_voxels=budget)
    elif is_n5(p, group):
        src = _open_n5_auto(p, group, spacing, budget) if level == "auto" else open_n5(p, group=group, level=level, spacing=spacing)
        units = src.units
    else:
        raise LazyregError(
            f"path: {p} is not a format lazyreg reads (N5, zarr / OME-Zarr, or TIFF); found {_describe(p)}"
        )
    return stack_image(src, getattr(src, "lead", ()), channel=channel, time=time, chunks=chunks,
                       name=_default_name(p) if name is None else name, units=units, where=str(p))
