"""Reading zarr arrays (v2, v3) and OME-Zarr 0.4 / 0.5 multiscale images, lazily.

:func:`open_zarr` finds the level of a zarr array or OME-Zarr image for
:func:`lazyreg.open_image` (its time / channel axes in the source's ``lead``, see
:mod:`lazyreg.io.channels`); :func:`read_ome_zarr` opens any OME-Zarr image as an N-D dask array with
its axes and transforms (e.g. displacement fields). A store whose group still carries the
:data:`WRITE_MARKER` attribute of an interrupted :mod:`lazyreg.io.omezarr` write is refused.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from ..errors import LazyregError
from ..images import DIMS, Grid
from .chunk_files import CHUNKS_ATTR, check_chunk_files
from .channels import lead_axes
from .read_errors import ChunkNamingArray
from .source import file_stamp
from .zarr_source import ZarrSource, chunk_name

__all__ = ["ZarrSource", "OmeZarrArray", "is_zarr", "open_zarr", "read_ome_zarr", "AUTO_LEVEL_VOXELS"]

#: Group attribute present only while lazyreg writes an OME-Zarr store (set and removed by
#: :func:`lazyreg.io.omezarr.write_ome_zarr`); a store that has it is incomplete.
WRITE_MARKER = "lazyreg_write"
#: Default voxel budget of ``level="auto"`` (16 Mi voxels): the finest level that fits is opened.
AUTO_LEVEL_VOXELS = 16 * 2**20
_META_FILES = ("zarr.json", ".zarray", ".zgroup", ".zattrs")


def is_zarr(path: Path) -> bool:
    """Whether ``path`` is a zarr array or group (v2 or v3): a folder with zarr metadata files.

    Examples
    --------
    >>> import tempfile, zarr
    >>> from lazyreg.io.zarr_read import is_zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = zarr.create_array(f"{d}/a.zarr", shape=(2, 3, 4), dtype="uint8")
    ...     is_zarr(f"{d}/a.zarr"), is_zarr(d)
    (True, False)
    """
    return any((Path(path) / m).is_file() for m in _META_FILES)


def _meta_file(folder: Path) -> Path:
    """The file holding a zarr node's attributes (v3 ``zarr.json``, else v2 ``.zattrs``), for messages."""
    return folder / "zarr.json" if (folder / "zarr.json").is_file() else folder / ".zattrs"


def _multiscales(attrs: dict, where: Any = "the store") -> list | None:
    """The ``multiscales`` list (OME-Zarr 0.5 ``ome.multiscales`` or 0.4), its first image checked."""
    ome = attrs.get("ome")
    field = "ome.multiscales" if isinstance(ome, dict) and "multiscales" in ome else "multiscales"
    ms = ome["multiscales"] if field == "ome.multiscales" else attrs.get("multiscales")
    if ms is None or ms == []:
        return ms
    if not isinstance(ms, list) or not isinstance(ms[0], dict):
        raise LazyregError(f"path: {where}: '{field}' must be a list of objects, got {type(ms).__name__} {str(ms)[:60]!r}")
    datasets = ms[0].get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise LazyregError(f"path: {where}: '{field}[0].datasets' must be a non-empty list, got {datasets!r}"[:300])
    for i, d in enumerate(datasets):
        if not isinstance(d, dict) or not isinstance(d.get("path"), str) or not d["path"].strip("/"):
            raise LazyregError(f"path: {where}: '{field}[0].datasets[{i}]' needs a 'path' (the level's array), got {d!r}"[:300])
    lists = {"axes": ms[0].get("axes"), "coordinateTransformations": ms[0].get("coordinateTransformations")}
    lists.update({f"datasets[{i}].coordinateTransformations": d.get("coordinateTransformations") for i, d in enumerate(datasets)})
    for key, value in lists.items():
        if value is not None and not isinstance(value, list):
            raise LazyregError(f"path: {where}: '{field}[0].{key}' must be a list, got {value!r}"[:300])
    return ms


def _has_scale(*transform_lists: Any) -> bool:
    return any(isinstance(t, dict) and t.get("type") == "scale" for ts in transform_lists for t in ts or [])


def _compose(transforms: Any, n: int, where: str) -> tuple[np.ndarray, np.ndarray]:
    """Compose OME-Zarr ``scale`` / ``translation`` transformations (in order) into one scale + shift."""
    scale, shift = np.ones(n), np.zeros(n)
    for t in transforms or []:
        kind = t.get("type") if isinstance(t, dict) else None
        if kind == "identity":
            continue
        if kind not in ("scale", "translation") or kind not in t:
            raise LazyregError(f"path: {where} has an unsupported coordinateTransformation {t!r}")
        raw = t[kind]
        if not isinstance(raw, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in raw):
            raise LazyregError(f"path: {where}: '{kind}' must be a list of {n} numbers, got {raw!r}"[:300])
        v = np.asarray(raw, dtype=float)
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
    if WRITE_MARKER in node.attrs:
        raise LazyregError(
            f"path: {where} is incomplete (interrupted write?): its multiscales metadata were never written; "
            "write it again"
        )
    check_chunk_files(node.attrs, where)  # a store lazyreg wrote whole: refuse it if chunk files are lost


def _members(node: Any) -> str:
    arrays, groups = sorted(node.array_keys()), sorted(node.group_keys())
    return f"arrays {arrays} and groups {groups}" if arrays or groups else "no arrays or groups"


def _auto_level(group_dir: Path, paths: list[str], max_voxels: int | None) -> int:
    """The finest level of at most ``max_voxels`` voxels (the coarsest if none is that small)."""
    budget = AUTO_LEVEL_VOXELS if max_voxels is None else max_voxels
    for i, p in enumerate(paths):
        if is_zarr(group_dir / p) and int(np.prod(_open_node(group_dir / p, "path", array=True).shape)) <= budget:
            return i
    return len(paths) - 1


def _transform_kind(attrs: dict, axes: list[dict]) -> str | None:
    """What a store holds instead of an image: a displacement field (lazyreg's, or an NGFF one), or None."""
    info = attrs.get("lazyreg_transform")
    if isinstance(info, dict):
        return str(info.get("type") or "transform").replace("_", " ")
    if any(str(a.get("type", "")).lower() in ("displacement", "coordinate") for a in axes):
        return "displacement field"
    return None


def _level_source(group_dir: Path, attrs: dict, lev: Any, spacing: Any, max_voxels: int | None = None) -> tuple[ZarrSource, str]:
    """The source of one level of the (first) multiscale image described by ``attrs``."""
    meta = _meta_file(group_dir)
    ms = _multiscales(attrs, meta)[0]
    datasets = ms.get("datasets") or []
    paths = [d.get("path") for d in datasets]
    if lev is None:
        lev = 0
    elif lev == "auto":
        lev = _auto_level(group_dir, paths, max_voxels)
    if isinstance(lev, bool) or not isinstance(lev, (int, np.integer)) or not 0 <= lev < len(paths):
        raise LazyregError(f"level: expected an index into the {len(paths)} levels {paths} of {group_dir}, got {lev!r}")
    ds = datasets[lev]
    arr_dir = group_dir / ds["path"]
    if not is_zarr(arr_dir):
        raise LazyregError(f"path: {group_dir} lists the level '{ds['path']}' but {arr_dir} is not a zarr array")
    arr = _open_node(arr_dir, "path", array=True)
    axes = _axes(ms, arr.ndim)
    names = [str(a.get("name", "")).lower() for a in axes]
    where = f"{group_dir} (axes {names}, shape {arr.shape})"
    kind = _transform_kind(attrs, axes)
    if kind:
        raise LazyregError(
            f"path: {group_dir} is a {kind} (a transform), not an image: load it with "
            f"lazyreg.load_transform('{group_dir}') (on the command line: lazyreg apply ... -t {group_dir})"
        )
    if len(names) != arr.ndim:
        raise LazyregError(
            f"path: {group_dir} declares {len(names)} axes {names} but level '{ds['path']}' has {arr.ndim}"
        )
    if sorted(n for n in names if n in DIMS) != sorted(DIMS):
        raise LazyregError(f"path: {where} must have exactly one each of the spatial axes z, y, x")
    scale, shift = _compose(ds.get("coordinateTransformations"), len(names), f"{meta}: datasets[{lev}] ('{ds['path']}')")
    s2, t2 = _compose(ms.get("coordinateTransformations"), len(names), f"{meta}: multiscales[0]")
    if spacing is None and not _has_scale(ds.get("coordinateTransformations"), ms.get("coordinateTransformations")):
        raise LazyregError(
            f"path: voxel spacing is unknown for {group_dir}: {meta.name} has no 'scale' in the "
            f"coordinateTransformations of datasets[{lev}] ('{ds['path']}') or of the multiscale; pass spacing=(z, y, x)"
        )
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
    layout, lead = lead_axes(axes, arr.shape, scale, shift, attrs, where)  # time / channel axes of size > 1
    src = ZarrSource(arr_dir, grid, layout)
    src.lead = tuple(lead)
    return src, units.pop() if units else "micrometer"


def _open_node(p: Path, argname: str, array: bool = False) -> Any:
    try:
        return zarr.open_array(store=str(p), mode="r") if array else zarr.open(store=str(p), mode="r")
    except Exception as e:  # zarr raises several types for missing / broken metadata
        for f in (p / m for m in _META_FILES if (p / m).is_file()):
            try:
                json.loads(f.read_bytes())
            except (ValueError, UnicodeDecodeError) as bad:  # JSONDecodeError is a ValueError
                raise LazyregError(f"{argname}: {f} is not valid JSON ({type(bad).__name__}: {bad})") from None
        raise LazyregError(f"{argname}: cannot open {p} as zarr ({type(e).__name__}: {e})") from None


def _level_paths(attrs: dict, where: Any = "the store") -> list[str]:
    ms = _multiscales(attrs, where)
    return [str(d.get("path", "")).strip("/") for d in (ms[0].get("datasets") or [])] if ms else []


def _dataset_index(attrs: dict, path: str, where: Any = "the store") -> int | None:
    paths = _level_paths(attrs, where)
    return paths.index(path.strip("/")) if path.strip("/") in paths else None


def _no_group(root: Path, node: Any, group: str) -> LazyregError:
    if not isinstance(node, zarr.Group):
        return LazyregError(f"group: '{group}' is not in {root}, which is an array (it has no groups)")
    levels = _level_paths(dict(node.attrs), _meta_file(root))
    hint = f"levels {levels}, " if levels else ""
    return LazyregError(f"group: '{group}' is not in {root}; found {hint}{_members(node)}")


def open_zarr(
    path: Path, *, group: str | None, level: int | str | None, spacing: Any, max_voxels: int | None = None
) -> tuple[ZarrSource, str]:
    """A source for a zarr array or an OME-Zarr multiscale level; returns ``(source, units)``.

    What :func:`lazyreg.open_image` calls for zarr stores (only metadata are read).

    Parameters
    ----------
    path : Path
        A zarr array, an OME-Zarr image (group), or a level's array inside one.
    group : str or None
        A level's dataset path (e.g. ``"1"``) or a subgroup / array inside ``path``.
    level : int, "auto" or None
        Index into the OME-Zarr multiscale datasets (default 0); "auto": the finest level of at most
        ``max_voxels`` voxels (or the coarsest).
    spacing : tuple of 3 floats or None
        Overrides the OME-Zarr scale; required for a plain array.
    max_voxels : int, optional
        Budget of ``level="auto"``; default :data:`AUTO_LEVEL_VOXELS`.

    Returns
    -------
    tuple
        ``(ZarrSource, units)``, ``units`` the spatial axes' unit (default ``"micrometer"``).

    Raises
    ------
    LazyregError
        Unknown group or level, an interrupted write, axes that are not 3D, unknown spacing.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.io.zarr_read import open_zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     path = lazyreg.to_zarr(lazyreg.image(np.zeros((2, 3, 4)), spacing=(2, 1, 1)), f"{d}/a.ome.zarr")
    ...     src, units = open_zarr(path, group=None, level=None, spacing=None)
    ...     src.shape, src.grid.spacing, units
    ((2, 3, 4), (2.0, 1.0, 1.0), 'micrometer')
    """
    root = Path(path).resolve()
    node = _open_node(root, "path")
    if group:
        if isinstance(node, zarr.Group):
            _check_complete(node, root)
            i = _dataset_index(dict(node.attrs), group, _meta_file(root))
            if i is not None:
                if level not in (None, "auto") and level != i:
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
            i = _dataset_index(dict(pnode.attrs), root.name, _meta_file(parent)) if isinstance(pnode, zarr.Group) else None
            if i is not None:  # the array of an OME-Zarr level, given directly
                if level not in (None, "auto") and level != i:
                    raise LazyregError(f"level: {root} is level {i} of {parent}, not level {level}")
                return _level_source(parent, dict(pnode.attrs), i, spacing)
        if level not in (None, "auto"):
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
    if not _multiscales(attrs, _meta_file(root)):
        raise LazyregError(
            f"path: {root} is a zarr group without OME-Zarr multiscales metadata; it holds {_members(node)} "
            "(pass group= to open one)"
        )
    return _level_source(root, attrs, level, spacing, max_voxels)


class OmeZarrArray(NamedTuple):
    """What :func:`read_ome_zarr` returns: a lazy N-D array and its OME-Zarr metadata.

    ``axes``, ``scale``, ``translation`` and ``units`` have one entry per axis of ``data``; ``attrs``
    are the group's other attributes.

    Examples
    --------
    >>> import dask.array as da
    >>> from lazyreg.io.zarr_read import OmeZarrArray
    >>> r = OmeZarrArray(da.zeros((3, 4, 5, 6)), ("c", "z", "y", "x"), (1.0, 2.0, 2.0, 2.0), (0.0,) * 4,
    ...                  (None, "micrometer", "micrometer", "micrometer"), {})
    >>> dict(zip(r.axes, r.scale))
    {'c': 1.0, 'z': 2.0, 'y': 2.0, 'x': 2.0}
    >>> data, axes, scale, translation, units, attrs = r  # a tuple
    """

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
    >>> import tempfile, numpy as np
    >>> from lazyreg.io.omezarr import write_ome_zarr
    >>> from lazyreg.io.zarr_read import read_ome_zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_ome_zarr(np.zeros((3, 4, 5, 6)), f"{d}/field.ome.zarr", axes="czyx", scale=(1, 2, 2),
    ...                        translation=(0, 0, 0), attrs={"kind": "field"})
    ...     r = read_ome_zarr(p)
    ...     r.axes, r.scale, r.data.shape, r.attrs["kind"], float(r.data.sum())
    (('c', 'z', 'y', 'x'), (1.0, 1.0, 2.0, 2.0), (3, 4, 5, 6), 'field', 0.0)
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
    meta = _meta_file(p)
    ms = _multiscales(attrs, meta)
    if not ms:
        raise LazyregError(f"path: {p} has no OME-Zarr multiscales metadata; it holds {_members(node)}")
    datasets = ms[0].get("datasets") or []
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level < len(datasets):
        raise LazyregError(f"level: expected an index into the {len(datasets)} levels of {p}, got {level!r}")
    ds = datasets[level]
    arr = _open_node(p / ds["path"], "path", array=True)
    axes = _axes(ms[0], arr.ndim)
    if len(axes) != arr.ndim:
        raise LazyregError(f"path: {p} declares {len(axes)} axes but its array has {arr.ndim} dimensions")
    scale, shift = _compose(ds.get("coordinateTransformations"), arr.ndim, f"{meta}: datasets[{level}]")
    s2, t2 = _compose(ms[0].get("coordinateTransformations"), arr.ndim, f"{meta}: multiscales[0]")
    if not _has_scale(ds.get("coordinateTransformations"), ms[0].get("coordinateTransformations")):
        raise LazyregError(f"path: {meta} has no 'scale' in the coordinateTransformations of datasets[{level}]; the spacing is unknown")
    mtime = file_stamp(p / ds["path"])
    native = getattr(arr, "shards", None) or arr.chunks
    reader = ChunkNamingArray(arr, native, partial(chunk_name, arr, p / ds["path"]), str(p / ds["path"]))
    name = "lazyreg-omezarr-" + tokenize(str(p), ds["path"], mtime)
    data = da.from_array(reader, chunks=arr.chunks, name=name, asarray=False, fancy=False, meta=np.empty((0,) * arr.ndim, arr.dtype))
    others = {k: v for k, v in attrs.items() if k not in ("ome", "multiscales", WRITE_MARKER, CHUNKS_ATTR)}
    return OmeZarrArray(
        data,
        tuple(str(a.get("name")) for a in axes),
        tuple((scale * s2).tolist()),
        tuple((shift * s2 + t2).tolist()),
        tuple(a.get("unit") for a in axes),
        others,
    )
