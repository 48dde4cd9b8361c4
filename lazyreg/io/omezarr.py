"""zarr arrays (v2, v3) and OME-Zarr 0.4 / 0.5 multiscale images: reading, and streaming writes (0.5).

Writes are made safe against interruption: the group is created with a ``lazyreg_write`` marker
attribute, the array is written, and only then are the ``multiscales`` metadata written, in the same
single metadata write that removes the marker. A store without multiscales is never opened as an image.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, NamedTuple, Sequence

import dask.array as da
import numpy as np
import xarray as xr
import zarr
from dask.base import tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from ..errors import LazyregError
from ..images import DIMS, Grid, grid_of, validate_image
from .source import Source

__all__ = ["ZarrSource", "OmeZarrArray", "is_zarr", "open_zarr", "read_ome_zarr", "to_zarr", "write_ome_zarr"]

_MARKER = "lazyreg_write"  # group attribute present only while lazyreg writes the store
_META_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")
_AXIS_TYPES = {"z": "space", "y": "space", "x": "space", "c": "channel", "t": "time"}
#: zstd level of written images. Level 1 writes a chunk 1.6-1.8x faster than level 3: the same size
#: on bench_apply.py's data, 9 % larger on the tutorial image (benchmarks/README.md).
ZSTD_LEVEL = 1
_WRITE_CHUNK_BYTES = 16 * 2**20  # default chunk size on disk when the input chunks are irregular or absent


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr array or group (v2 or v3)."""
    return any((Path(path) / m).is_file() for m in _META_FILES)


# ------------------------------------------------------------------------------------------ reading


class ZarrSource(Source):
    """A 3D (z, y, x) view of one zarr array (v2 or v3) that may have extra size-1 axes or permuted axes.

    Parameters
    ----------
    path : Path
        The array folder.
    grid : Grid
        Physical grid of the zyx view.
    layout : tuple
        For each stored axis, ``"z"``, ``"y"``, ``"x"`` or ``None`` for a size-1 axis that is dropped.
    """

    def __init__(self, path: Path, grid: Grid, layout: Sequence[str | None] = DIMS):
        self.path = Path(path).resolve()
        self.layout = tuple(layout)
        self.grid = grid
        arr = self._array()
        if arr.ndim != len(self.layout) or sorted(n for n in self.layout if n) != sorted(DIMS):
            raise LazyregError(f"path: {self.path} has {arr.ndim} dimensions, expected {len(self.layout)}")
        self.dtype = np.dtype(arr.dtype)
        native = getattr(arr, "shards", None) or arr.chunks
        self.chunks = tuple(int(native[self.layout.index(d)]) for d in DIMS)  # type: ignore[assignment]
        self._mtime = max((self.path / m).stat().st_mtime_ns for m in _META_FILES if (self.path / m).is_file())

    def _array(self) -> Any:
        arr = self.__dict__.get("_arr")
        if arr is None:
            arr = self._arr = zarr.open_array(store=str(self.path), mode="r")
        return arr

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        stored = tuple(0 if n is None else index[DIMS.index(n)] for n in self.layout)
        out = np.asarray(self._array()[stored])
        names = [n for n in self.layout if n is not None]
        order = [names.index(d) for d in DIMS]
        return out if order == [0, 1, 2] else out.transpose(order)

    def token(self) -> str:
        return f"zarr:{self.path}:{self._mtime}:{self.layout}"

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state.pop("_arr", None)  # reopened lazily in the worker
        return state


def _multiscales(attrs: dict) -> list | None:
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"]
    return attrs.get("multiscales")


def _compose(transforms: Any, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Compose OME-Zarr ``scale`` / ``translation`` transformations (in order) into one scale + shift."""
    scale, shift = np.ones(n), np.zeros(n)
    for t in transforms or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in t:
            raise LazyregError(f"path: {where} has an unsupported coordinateTransformation {t!r}")
        v = np.asarray(t[kind], dtype=float)
        if v.shape != (n,):
            raise LazyregError(f"path: {where} has a {kind} of {v.size} values for {n} axes")
        if kind == "scale":
            scale, shift = scale * v, shift * v
        else:
            shift = shift + v
    return scale, shift


def _axes(ms: dict, ndim: int) -> list[dict]:
    axes = ms.get("axes")
    if axes is None:  # OME-Zarr <= 0.2: always t, c, z, y, x
        axes = list("tczyx")[5 - ndim :] if ndim <= 5 else []
    return [dict(a) if isinstance(a, dict) else {"name": str(a)} for a in axes]


def _check_complete(node: Any, where: Path) -> None:
    if _MARKER in node.attrs:
        raise LazyregError(
            f"path: {where} is incomplete (interrupted write?): its multiscales metadata were never written; "
            "write it again"
        )


def _members(node: Any) -> str:
    arrays, groups = sorted(node.array_keys()), sorted(node.group_keys())
    return f"arrays {arrays} and groups {groups}" if arrays or groups else "no arrays or groups"


def _level_source(group_dir: Path, attrs: dict, lev: Any, spacing: Any) -> tuple[ZarrSource, str]:
    """The source of one level of the (first) multiscale image described by ``attrs``."""
    ms = _multiscales(attrs)[0]
    datasets = ms.get("datasets") or []
    paths = [d.get("path") for d in datasets]
    if lev is None:
        lev = 0
    if isinstance(lev, bool) or not isinstance(lev, (int, np.integer)) or not 0 <= lev < len(paths):
        raise LazyregError(f"level: expected an index into the {len(paths)} levels {paths} of {group_dir}, got {lev!r}")
    ds = datasets[lev]
    arr_dir = group_dir / ds["path"]
    if not is_zarr(arr_dir):
        raise LazyregError(f"path: {group_dir} lists the level '{ds['path']}' but {arr_dir} is not a zarr array")
    arr = zarr.open_array(store=str(arr_dir), mode="r")
    axes = _axes(ms, arr.ndim)
    names = [str(a.get("name", "")).lower() for a in axes]
    where = f"{group_dir} (axes {names}, shape {arr.shape})"
    if len(names) != arr.ndim:
        raise LazyregError(
            f"path: {group_dir} declares {len(names)} axes {names} but level '{ds['path']}' has {arr.ndim}"
        )
    if sorted(n for n in names if n in DIMS) != sorted(DIMS):
        raise LazyregError(f"path: {where} must have exactly one each of the spatial axes z, y, x")
    extra = [(n, s) for n, s in zip(names, arr.shape) if n not in DIMS and s != 1]
    if extra:
        raise LazyregError(
            f"path: {where} has non-spatial axes of size > 1 {extra}; lazyreg reads 3D (z, y, x) images, "
            "so store each channel / time point as its own image"
        )
    scale, shift = _compose(ds.get("coordinateTransformations"), len(names), f"{group_dir} level '{ds['path']}'")
    s2, t2 = _compose(ms.get("coordinateTransformations"), len(names), f"{group_dir} multiscales")
    scale, shift = scale * s2, shift * s2 + t2  # the dataset's transforms first, then the multiscale's
    idx = [names.index(d) for d in DIMS]
    if spacing is None and not np.all(scale[idx] > 0):
        raise LazyregError(f"path: {where} has a non-positive scale {tuple(scale[idx])} for z, y, x")
    units = {axes[i].get("unit") for i in idx} - {None}
    if len(units) > 1:
        raise LazyregError(f"path: {where} has spatial axes in different units {sorted(units)}")
    grid = Grid(
        tuple(arr.shape[i] for i in idx),
        tuple(scale[idx].tolist()) if spacing is None else spacing,
        tuple(shift[idx].tolist()),
    )
    layout = tuple(n if n in DIMS else None for n in names)
    return ZarrSource(arr_dir, grid, layout), units.pop() if units else "micrometer"


def _open_node(p: Path, argname: str) -> Any:
    try:
        return zarr.open(store=str(p), mode="r")
    except Exception as e:  # zarr raises several types for missing / broken metadata
        raise LazyregError(f"{argname}: cannot open {p} as zarr ({type(e).__name__}: {e})") from None


def _level_paths(attrs: dict) -> list[str]:
    ms = _multiscales(attrs)
    return [str(d.get("path", "")).strip("/") for d in (ms[0].get("datasets") or [])] if ms else []


def _dataset_index(attrs: dict, path: str) -> int | None:
    paths = _level_paths(attrs)
    return paths.index(path.strip("/")) if path.strip("/") in paths else None


def _no_group(root: Path, node: Any, group: str) -> LazyregError:
    if not isinstance(node, zarr.Group):
        return LazyregError(f"group: '{group}' is not in {root}, which is an array (it has no groups)")
    levels = _level_paths(dict(node.attrs))
    hint = f"levels {levels}, " if levels else ""
    return LazyregError(f"group: '{group}' is not in {root}; found {hint}{_members(node)}")


def open_zarr(path: Path, *, group: str | None, level: int | None, spacing: Any) -> tuple[ZarrSource, str]:
    """A source for a zarr array or an OME-Zarr multiscale level; returns ``(source, units)``.

    ``group`` is a level's dataset path (e.g. ``"1"``) or a subgroup / array inside ``path``.
    """
    root = Path(path).resolve()
    node = _open_node(root, "path")
    if group:
        if isinstance(node, zarr.Group):
            _check_complete(node, root)
            i = _dataset_index(dict(node.attrs), group)
            if i is not None:
                if level is not None and level != i:
                    raise LazyregError(f"level: level={level} contradicts group='{group}' (level {i}); pass one")
                return _level_source(root, dict(node.attrs), i, spacing)
        child = root / group.strip("/")
        if not is_zarr(child):
            raise _no_group(root, node, group)
        root, node = child, _open_node(child, "group")
    if isinstance(node, zarr.Array):
        parent = root.parent
        if is_zarr(parent):
            pnode = _open_node(parent, "path")
            _check_complete(pnode, parent)
            i = _dataset_index(dict(pnode.attrs), root.name) if isinstance(pnode, zarr.Group) else None
            if i is not None:  # the array of an OME-Zarr level, given directly
                if level is not None and level != i:
                    raise LazyregError(f"level: {root} is level {i} of {parent}, not level {level}")
                return _level_source(parent, dict(pnode.attrs), i, spacing)
        if level is not None:
            raise LazyregError(f"level: {root} is a single zarr array without multiscale levels")
        if node.ndim != 3:
            raise LazyregError(
                f"path: {root} has {node.ndim} dimensions (shape {node.shape}); lazyreg reads 3D (z, y, x) arrays"
            )
        if spacing is None:
            raise LazyregError(
                f"path: voxel spacing is unknown for {root} (a zarr array without OME-Zarr metadata); "
                "pass spacing=(z, y, x)"
            )
        return ZarrSource(root, Grid(node.shape, spacing)), "micrometer"
    _check_complete(node, root)
    attrs = dict(node.attrs)
    if not _multiscales(attrs):
        raise LazyregError(
            f"path: {root} is a zarr group without OME-Zarr multiscales metadata; it holds {_members(node)} "
            "(pass group= to open one)"
        )
    return _level_source(root, attrs, level, spacing)


class OmeZarrArray(NamedTuple):
    """What :func:`read_ome_zarr` returns: a lazy N-D array and its OME-Zarr metadata."""

    data: da.Array
    axes: tuple[str, ...]
    scale: tuple[float, ...]
    translation: tuple[float, ...]
    units: tuple[str | None, ...]
    attrs: dict


def read_ome_zarr(path: str | Path, *, level: int = 0) -> OmeZarrArray:
    """Open any OME-Zarr (0.4 / 0.5) image as a raw N-D dask array with its axes and transforms.

    The low-level counterpart of :func:`write_ome_zarr` (for e.g. displacement fields with a channel
    axis). Only metadata are read.

    Parameters
    ----------
    path : str or Path
        The OME-Zarr group.
    level : int
        Index into the multiscale datasets.

    Returns
    -------
    OmeZarrArray
        ``(data, axes, scale, translation, units, attrs)``: per-axis names, scale, translation and
        units; ``attrs`` are the group's other attributes (without ``"ome"`` / ``"multiscales"``).

    Raises
    ------
    LazyregError
        Missing path, not OME-Zarr, an interrupted write, or a bad level.

    Examples
    --------
    >>> import numpy as np, tempfile, os
    >>> from lazyreg.io.omezarr import write_ome_zarr, read_ome_zarr
    >>> p = os.path.join(tempfile.mkdtemp(), "field.ome.zarr")
    >>> _ = write_ome_zarr(np.zeros((3, 4, 5, 6)), p, axes="czyx", scale=(1, 2, 2), translation=(0, 0, 0),
    ...                    attrs={"kind": "field"})
    >>> r = read_ome_zarr(p)
    >>> r.axes, r.scale, r.data.shape, r.attrs["kind"]
    (('c', 'z', 'y', 'x'), (1.0, 1.0, 2.0, 2.0), (3, 4, 5, 6), 'field')
    """
    p = Path(path).resolve()
    if not p.exists():
        raise LazyregError(f"path: {p} does not exist")
    if not is_zarr(p):
        raise LazyregError(f"path: {p} is not a zarr store")
    node = _open_node(p, "path")
    if not isinstance(node, zarr.Group):
        raise LazyregError(f"path: {p} is a zarr array, not an OME-Zarr group")
    _check_complete(node, p)
    attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if not ms:
        raise LazyregError(f"path: {p} has no OME-Zarr multiscales metadata; it holds {_members(node)}")
    datasets = ms[0].get("datasets") or []
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(datasets):
        raise LazyregError(f"level: expected an index into the {len(datasets)} levels of {p}, got {level!r}")
    ds = datasets[level]
    arr = zarr.open_array(store=str(p / ds["path"]), mode="r")
    axes = _axes(ms[0], arr.ndim)
    if len(axes) != arr.ndim:
        raise LazyregError(f"path: {p} declares {len(axes)} axes but its array has {arr.ndim} dimensions")
    scale, shift = _compose(ds.get("coordinateTransformations"), arr.ndim, str(p))
    s2, t2 = _compose(ms[0].get("coordinateTransformations"), arr.ndim, str(p))
    mtime = (p / ds["path"] / "zarr.json").stat().st_mtime_ns if (p / ds["path"] / "zarr.json").exists() else 0
    data = da.from_zarr(arr, name="lazyreg-omezarr-" + tokenize(str(p), ds["path"], mtime))
    others = {k: v for k, v in attrs.items() if k not in ("ome", "multiscales", _MARKER)}
    return OmeZarrArray(
        data,
        tuple(str(a.get("name")) for a in axes),
        tuple((scale * s2).tolist()),
        tuple((shift * s2 + t2).tolist()),
        tuple(a.get("unit") for a in axes),
        others,
    )


# ------------------------------------------------------------------------------------------ writing


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
    """Folders / files that lazyreg sources in the graph of ``arr`` read from."""
    out = []
    for layer in arr.dask.layers.values():
        if not isinstance(layer, MaterializedLayer):  # sources live in materialized layers only
            continue
        for v in layer.mapping.values():
            v = getattr(v, "value", v)  # dask task-spec DataNode
            if isinstance(v, Source) and getattr(v, "path", None) is not None:
                out.append(Path(v.path).resolve())
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
    >>> import numpy as np, tempfile, os
    >>> from lazyreg.io.omezarr import write_ome_zarr
    >>> p = write_ome_zarr(np.ones((2, 3, 4)), os.path.join(tempfile.mkdtemp(), "a.ome.zarr"), scale=(2, 1, 1))
    >>> p.name
    'a.ome.zarr'
    """
    path = Path(path).resolve()
    axes = tuple(axes)
    if isinstance(data, da.Array):
        arr = data
    else:
        values = np.asarray(data)
        auto = da.core.normalize_chunks("auto", values.shape, dtype=values.dtype, limit=_WRITE_CHUNK_BYTES)
        arr = da.from_array(values, chunks=auto, name=False)
    if arr.ndim != len(axes) or len(set(axes)) != len(axes):
        raise LazyregError(f"axes: expected {arr.ndim} distinct axis names for shape {arr.shape}, got {axes}")
    arr = _write_chunks(arr, chunks)
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
    final = {"ome": {"version": "0.5", "multiscales": [multiscale]}, **(attrs or {})}

    _prepare_target(path, overwrite, arr)
    group = zarr.create_group(store=str(path), zarr_format=3, attributes={_MARKER: {"status": "writing"}})
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
    done = Delayed(key, HighLevelGraph.from_collections(key, layer, dependencies=[stored]))
    if compute:
        done.compute()
        return path
    return done


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
    >>> import numpy as np, lazyreg, tempfile, os
    >>> img = lazyreg.image(np.ones((4, 8, 8), "uint16"), spacing=(2, 1, 1), origin=(5, 0, 0))
    >>> out = lazyreg.to_zarr(img, os.path.join(tempfile.mkdtemp(), "img.ome.zarr"))
    >>> back = lazyreg.open_image(out)
    >>> lazyreg.spacing(back), lazyreg.origin(back)
    ((2.0, 1.0, 1.0), (5.0, 0.0, 0.0))
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
