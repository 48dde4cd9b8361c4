"""OME-Zarr images: streaming writes (OME-Zarr 0.5, zarr v3), and the public names of the reader.

Writes are made safe against interruption: the group is created with a ``lazyreg_write`` marker
attribute (:data:`~lazyreg.io.zarr_read.WRITE_MARKER`), the array is written, and only then are the
``multiscales`` metadata written, in the same single metadata write that removes the marker. A store
without multiscales is never opened as an image. Reading lives in :mod:`lazyreg.io.zarr_read`; its
public names are importable from here too.
"""

from __future__ import annotations

import dataclasses

import shutil
from pathlib import Path
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from ..errors import LazyregError
from ..images import DIMS, grid_of, validate_image
from .source import Source
from .zarr_read import WRITE_MARKER, OmeZarrArray, ZarrSource, is_zarr, open_zarr, read_ome_zarr

__all__ = [
    "to_zarr",
    "write_ome_zarr",
    # re-exported from zarr_read, where they are defined and documented
    "ZarrSource",
    "OmeZarrArray",
    "is_zarr",
    "open_zarr",
    "read_ome_zarr",
]

_AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "c": "channel", "t": "time"}
#: zstd level of written images. Level 1 writes a chunk 1.6-1.8x faster than level 3: the same size
#: on bench_apply.py's data, 9 % larger on the tutorial image (benchmarks/README.md).
ZSTD_LEVEL = 1
_WRITE_CHUNK_BYTES = 16 * 2**20  # default chunk size on disk when the input chunks are irregular or absent


def _write_chunks(arr: da.Array, chunks: Any) -> da.Array:
    """``arr`` rechunked to regular chunks (all equal but the last one per axis), as zarr needs."""
    if chunks is not None:
        try:
            norm = da.core.normalize_chunks(chunks, arr.shape, dtype=arr.dtype, limit=_WRITE_CHUNK_BYTES)
        except (ValueError, TypeError) as e:
            raise LazyregError(f"chunks: cannot use {chunks!r} for shape {arr.shape} ({e})") from None
        if not _is_regular(norm):
            raise LazyregError(f"chunks: must be regular (equal sizes but the last) to write zarr, got {chunks!r}")
        return arr.rechunk(norm)
    if _is_regular(arr.chunks):
        return arr
    if np.prod(arr.chunksize) * arr.dtype.itemsize <= 4 * _WRITE_CHUNK_BYTES:
        return arr.rechunk(arr.chunksize)  # the largest chunk, made regular
    return arr.rechunk(da.core.normalize_chunks("auto", arr.shape, dtype=arr.dtype, limit=_WRITE_CHUNK_BYTES))


def _is_regular(chunks: tuple[tuple[int, ...], ...]) -> bool:
    return all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in chunks)


def _source_paths(arr: da.Array) -> list[Path]:
    """Folders / files that lazyreg sources anywhere in the graph of ``arr`` read from.

    Sources sit in graph layers, in task arguments (the reader task of ``apply_transform``, a
    chunk's plan), in recipes run inside tasks (:class:`lazyreg.result_cache.Deferred`) and inside
    chunk caches: every task and its arguments are walked, so that a write can never delete what
    it reads.
    """
    out: list[Path] = []
    seen: set[int] = set()
    # only materialized layers hold sources (lazyreg's own layers are); walking a blockwise
    # layer would materialize it
    stack: list = [layer for layer in arr.dask.layers.values() if isinstance(layer, MaterializedLayer)]
    while stack:
        v = stack.pop()
        if id(v) in seen or isinstance(v, (str, bytes, int, float, np.ndarray, np.generic)) or v is None:
            continue
        seen.add(id(v))
        if isinstance(v, Source):
            if getattr(v, "path", None) is not None:
                out.append(Path(v.path).resolve())
            inner = getattr(v, "inner", None)
            if inner is not None:
                stack.append(inner)
            continue
        if isinstance(v, MaterializedLayer):
            stack.extend(v.mapping.values())
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (tuple, list, set, frozenset)):
            stack.extend(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        else:
            for attr in ("value", "args", "kwargs", "spec", "dependencies"):
                if hasattr(v, attr) and not callable(getattr(v, attr)):
                    stack.append(getattr(v, attr))
    return out


def _prepare_target(path: Path, overwrite: bool, arr: da.Array) -> None:
    """Refuse an existing path (unless overwrite) or one the data are read from; remove old content."""
    if not path.exists():
        return
    if not overwrite:
        raise LazyregError(f"path: {path} exists; pass overwrite=True to replace it")
    for src in _source_paths(arr):
        if src == path or path in src.parents or src in path.parents:
            raise LazyregError(
                f"path: {path} cannot be overwritten: the image being written is read from {src}; write elsewhere"
            )
    if not path.is_dir() or (any(path.iterdir()) and not is_zarr(path)):
        raise LazyregError(f"path: {path} exists and is not a zarr store; refusing to delete it")
    shutil.rmtree(path)


def _axes_meta(axes: Sequence[str], units: Any) -> list[dict]:
    if isinstance(units, str) or units is None:
        units = [units if _AXIS_TYPES.get(a, "space") == "space" else None for a in axes]
    if len(units) != len(axes):
        raise LazyregError(f"units: expected one unit per axis {tuple(axes)}, got {units!r}")
    out = []
    for a, u in zip(axes, units):
        ax: dict = {"name": a, "type": _AXIS_TYPES.get(a, "space")}
        if u:
            ax["unit"] = u
        out.append(ax)
    return out


def _per_axis(values: Sequence[float], axes: Sequence[str], fill: float, argname: str) -> list[float]:
    """Per-axis values; a triple is taken for the spatial axes (z, y, x) and ``fill`` used elsewhere."""
    try:
        v = [float(x) for x in np.asarray(values, dtype=float).ravel()]
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected numbers, got {values!r}") from None
    spatial = [a for a in axes if a in DIMS]
    if len(v) == 1 and spatial:
        v = v * len(spatial)
    if len(v) == len(spatial) != len(axes):
        it = iter(v)
        v = [next(it) if a in DIMS else fill for a in axes]
    if len(v) != len(axes):
        raise LazyregError(f"{argname}: expected {len(axes)} values for axes {tuple(axes)}, got {len(v)}")
    if not all(np.isfinite(v)) or (fill == 1.0 and min(v) <= 0):
        raise LazyregError(f"{argname}: expected finite{' positive' if fill == 1.0 else ''} values, got {v}")
    return v


def write_ome_zarr(
    data: Any,
    path: str | Path,
    *,
    axes: Sequence[str] = DIMS,
    scale: Sequence[float],
    translation: Sequence[float] | None = None,
    units: str | Sequence[str | None] | None = "micrometer",
    chunks: Any = None,
    overwrite: bool = False,
    compute: bool = True,
    name: str | None = None,
    attrs: dict | None = None,
) -> Path | Any:
    """Stream an N-D array to a one-level OME-Zarr 0.5 image (zarr v3, zstd level 1).

    Parameters
    ----------
    data : dask.array.Array or array_like
        The voxels, in the order of ``axes``. Dask arrays are written chunk by chunk.
    path : str or Path
        Target folder: a zarr v3 group, the array at ``path/0``.
    axes : sequence of str
        Axis names, e.g. ``"zyx"`` or ``("c", "z", "y", "x")``; ``c`` is a channel axis, ``t`` time.
    scale, translation : sequence of float
        Per axis, or only for the spatial axes z, y, x (then 1 / 0 for the others).
    units : str or sequence, optional
        Unit of the spatial axes, or one unit (or None) per axis.
    chunks : optional
        Chunks on disk (regular); default the dask chunks if regular, else the largest dask chunk
        (or about 16 MiB chunks if that is over 64 MiB); numpy input: about 16 MiB chunks.
    overwrite : bool
        Replace an existing zarr store at ``path`` (removed before writing). Refused when ``data`` is
        read from ``path``, or when ``path`` is not a zarr store.
    compute : bool
        If False, return a ``dask.delayed`` object that writes the data, then the metadata. The group
        and array are created (and an old store removed) now; the store stays marked incomplete until
        the delayed is computed.
    name : str, optional
        Name in the multiscales metadata.
    attrs : dict, optional
        Extra JSON attributes stored beside ``"ome"`` in the group (written with the metadata, last).

    Returns
    -------
    Path or dask.delayed.Delayed

    Raises
    ------
    LazyregError
        Existing path without ``overwrite``, bad axes / scale / chunks.

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from lazyreg.io.omezarr import write_ome_zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_ome_zarr(np.ones((2, 3, 4)), f"{d}/a.ome.zarr", scale=(2, 1, 1))
    ...     p.name, sorted(f.name for f in p.iterdir())
    ('a.ome.zarr', ['0', 'zarr.json'])
    """
    path = Path(path).resolve()
    axes = tuple(axes)
    arr = _as_dask(data)
    if arr.ndim != len(axes) or len(set(axes)) != len(axes):
        raise LazyregError(f"axes: expected {arr.ndim} distinct axis names for shape {arr.shape}, got {axes}")
    arr = _write_chunks(arr, chunks)
    final = _group_attrs(axes, scale, translation, units, name, attrs)  # checked before anything is written
    _prepare_target(path, overwrite, arr)
    done = _store(arr, path, axes, final)
    if compute:
        done.compute()
        return path
    return done


def _as_dask(data: Any) -> da.Array:
    """``data`` as a dask array; numpy input in chunks of about ``_WRITE_CHUNK_BYTES``."""
    if isinstance(data, da.Array):
        return data
    values = np.asarray(data)
    auto = da.core.normalize_chunks("auto", values.shape, dtype=values.dtype, limit=_WRITE_CHUNK_BYTES)
    return da.from_array(values, chunks=auto, name=False)


def _group_attrs(
    axes: tuple[str, ...], scale: Any, translation: Any, units: Any, name: str | None, attrs: dict | None
) -> dict:
    """The group's final attributes: OME-Zarr 0.5 ``multiscales`` of one level ``"0"``, and ``attrs``."""
    scale_l = _per_axis(scale, axes, 1.0, "scale")
    trans_l = _per_axis((0.0,) * len(axes) if translation is None else translation, axes, 0.0, "translation")
    multiscale: dict = {
        "axes": _axes_meta(axes, units),
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale_l},
                    {"type": "translation", "translation": trans_l},
                ],
            }
        ],
    }
    if name:
        multiscale["name"] = str(name)
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}, **(attrs or {})}


def _store(arr: da.Array, path: Path, axes: tuple[str, ...], final: dict) -> Delayed:
    """Create the marked group and its array ``0`` now; return the delayed write of data, then ``final``."""
    group = zarr.create_group(store=str(path), zarr_format=3, attributes={WRITE_MARKER: {"status": "writing"}})
    target = group.create_array(
        "0",
        shape=arr.shape,
        chunks=tuple(int(c[0]) for c in arr.chunks),
        dtype=arr.dtype,
        compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL),
        dimension_names=axes,
        fill_value=0,
    )
    stored = da.store(arr, target, lock=False, compute=False)
    key = "lazyreg-finalize-" + tokenize(str(path), final, arr.name)
    # depend on the store tasks by key: ``dask.delayed(f)(stored)`` would optimise the array graph
    # now, under new task names, so that tasks shared with other collections computed together
    # (e.g. the blocks behind a piecewise field and its report) would run twice
    store_keys = list(flatten(stored.__dask_keys__()))
    layer = {key: (_finalize, store_keys, str(path), final)}
    return Delayed(key, HighLevelGraph.from_collections(key, layer, dependencies=[stored]))


def _finalize(_stored: Any, path: str, final: dict) -> Path:
    """Write the metadata and drop the in-progress marker in one write: the image is complete now."""
    zarr.open_group(store=path, mode="r+").attrs.put(final)
    return Path(path)


def to_zarr(
    img: xr.DataArray,
    path: str | Path,
    *,
    chunks: Any = None,
    overwrite: bool = False,
    compute: bool = True,
    name: str | None = None,
) -> Path | Any:
    """Stream a (lazy) image to an OME-Zarr 0.5 image that viewers place in physical space.

    Parameters
    ----------
    img : xarray.DataArray
        A lazyreg image, dask-backed or in memory.
    path : str or Path
        Target folder: a zarr v3 group with the array at ``path/0`` (zstd, dimension names z, y, x).
    chunks : int or tuple, optional
        Chunks on disk; default the image's chunks if regular, else the largest chunk made regular
        (about 16 MiB chunks if that is over 64 MiB, or for an in-memory image).
    overwrite : bool
        Replace an existing zarr store at ``path``. Refused anyway when ``img`` is read from ``path``.
    compute : bool
        If False, return a ``dask.delayed`` object that writes the data, then the metadata.
    name : str, optional
        Name stored in the multiscales metadata (default the image's name).

    Returns
    -------
    Path or dask.delayed.Delayed
        The absolute path written (``compute=True``), or the delayed write.

    Raises
    ------
    LazyregError
        ``path`` exists and ``overwrite`` is False; ``img`` is read from ``path``; invalid image.

    Notes
    -----
    The spacing becomes the OME-Zarr ``scale`` and the origin the ``translation``. The array is
    written first and the ``multiscales`` metadata last, so an interrupted write is recognised as
    incomplete by :func:`lazyreg.open_image`. Memory is bounded by the chunks in flight.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> img = lazyreg.image(np.ones((4, 8, 8), "uint16"), spacing=(2, 1, 1), origin=(5, 0, 0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = lazyreg.open_image(lazyreg.to_zarr(img, f"{d}/img.ome.zarr"))
    ...     lazyreg.spacing(back), lazyreg.origin(back), int(back.sum())
    ((2.0, 1.0, 1.0), (5.0, 0.0, 0.0), 256)
    """
    validate_image(img, "img")
    g = grid_of(img, "img")
    if name is None and img.name is not None and img.name != getattr(img.data, "name", None):
        name = str(img.name)  # not the dask key that xarray adopts as the name of an unnamed array
    return write_ome_zarr(
        img.data,
        path,
        axes=DIMS,
        scale=g.spacing,
        translation=g.origin,
        units=img.attrs.get("units", "micrometer"),
        chunks=chunks,
        overwrite=overwrite,
        compute=compute,
        name=name,
    )
