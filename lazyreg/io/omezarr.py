"""zarr arrays and OME-Zarr 0.4 / 0.5 multiscale images: reading, and streaming writes (0.5)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
import zarr

from ..errors import LazyregError
from ..image import DIMS, Grid, grid_of, validate_image
from .source import Source, find_source

__all__ = ["ZarrSource", "open_zarr", "to_zarr", "write_ome_zarr", "read_ome_zarr"]

_STATUS = "lazyreg"  # group attribute present only while a write is in progress


def _multiscales(attrs: dict) -> list | None:
    if "ome" in attrs and isinstance(attrs["ome"], dict) and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"]
    return attrs.get("multiscales")


def _compose(transforms: list | None, n: int) -> tuple[np.ndarray, np.ndarray]:
    scale, trans = np.ones(n), np.zeros(n)
    for t in transforms or []:
        if t.get("type") == "scale":
            s = np.asarray(t["scale"], dtype=float)
            scale, trans = scale * s, trans * s
        elif t.get("type") == "translation":
            trans = trans + np.asarray(t["translation"], dtype=float)
    return scale, trans


class ZarrSource(Source):
    """A 3D (zyx) view of a zarr array (v2 or v3), possibly with leading size-1 axes dropped."""

    def __init__(self, root: Path, array_path: str, grid: Grid, prefix: tuple = (), perm: tuple = (0, 1, 2)):
        self.root = Path(root).resolve()
        self.array_path = array_path
        self.prefix = tuple(prefix)
        self.perm = tuple(perm)
        arr = self._open()
        self.dtype = np.dtype(arr.dtype)
        chunks = arr.chunks[len(self.prefix):]
        self.chunks = tuple(int(chunks[p]) for p in self.perm)
        self.grid = grid

    def _open(self):
        if getattr(self, "_arr", None) is None:
            self._arr = zarr.open_array(store=str(self.root), path=self.array_path or None, mode="r")
        return self._arr

    def read(self, index):
        inv = np.argsort(self.perm)
        idx = tuple(index[i] for i in inv)
        out = np.asarray(self._open()[self.prefix + idx])
        return out.transpose(self.perm) if self.perm != (0, 1, 2) else out

    def token(self) -> str:
        meta = [self.root / self.array_path / n for n in ("zarr.json", ".zarray")]
        mtime = max((m.stat().st_mtime_ns for m in meta if m.exists()), default=0)
        return f"zarr:{self.root}/{self.array_path}:{mtime}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_arr"] = None
        return state


def _levels(ms: dict) -> list[str]:
    return [d["path"] for d in ms.get("datasets", [])]


def open_zarr(path: Path, *, group: str | None, level: int | None, spacing: Any) -> tuple[ZarrSource, str]:
    """A source for a zarr array or an OME-Zarr multiscale level; returns (source, units)."""
    root = Path(path)
    target = root / group if group else root
    try:
        node = zarr.open(store=str(target), mode="r")
    except Exception as e:  # zarr raises several types for a missing node
        raise LazyregError(f"path: cannot open {target} as zarr ({type(e).__name__}: {e})") from None
    if isinstance(node, zarr.Array):
        if node.ndim != 3:
            raise LazyregError(f"path: {target} has {node.ndim} dimensions; lazyreg reads 3D arrays (z, y, x)")
        if spacing is None:
            raise LazyregError(f"path: voxel spacing is unknown for the plain zarr array {target}; pass spacing=(z, y, x)")
        return ZarrSource(target, "", Grid(node.shape, spacing)), "micrometer"
    attrs = dict(node.attrs)
    ms = _multiscales(attrs)
    if not ms:
        if _STATUS in attrs:
            raise LazyregError(f"path: {target} is incomplete (interrupted write?); write it again")
        arrays = sorted(k for k, _ in node.arrays())
        groups = sorted(k for k, _ in node.groups())
        raise LazyregError(
            f"path: {target} is a zarr group without OME-Zarr multiscales; pass group= one of arrays {arrays} or groups {groups}"
        )
    ms0 = ms[0]
    names = _levels(ms0)
    lev = 0 if level is None else level
    if not isinstance(lev, int) or not 0 <= lev < len(names):
        raise LazyregError(f"level: expected an index into the levels {names}, got {level!r}")
    ds = ms0["datasets"][lev]
    axes = ms0.get("axes") or [{"name": n} for n in ("z", "y", "x")]
    axes = [a if isinstance(a, dict) else {"name": a} for a in axes]
    axis_names = [a["name"] for a in axes]
    arr = zarr.open_array(store=str(target), path=ds["path"], mode="r")
    if arr.ndim != len(axis_names):
        raise LazyregError(f"path: {target}/{ds['path']} has {arr.ndim} dims but axes {axis_names}")
    missing = [n for n in DIMS if n not in axis_names]
    if missing:
        raise LazyregError(f"path: {target} has axes {axis_names}; spatial axes {missing} are missing")
    extra = [i for i, n in enumerate(axis_names) if n not in DIMS]
    if any(arr.shape[i] != 1 for i in extra):
        raise LazyregError(f"path: {target} has non-spatial axes of size > 1 ({axis_names}, shape {arr.shape})")
    if extra and max(extra) >= min(axis_names.index(n) for n in DIMS):
        raise LazyregError(f"path: non-spatial axes must come before z, y, x (axes {axis_names})")
    spatial = [axis_names.index(n) - len(extra) for n in DIMS]
    scale, trans = _compose(ds.get("coordinateTransformations"), len(axis_names))
    s2, t2 = _compose(ms0.get("coordinateTransformations"), len(axis_names))
    scale, trans = scale * s2, trans * s2 + t2
    sp_idx = [axis_names.index(n) for n in DIMS]
    sp = tuple(scale[sp_idx]) if spacing is None else spacing
    shape = tuple(arr.shape[i] for i in sp_idx)
    units = axes[sp_idx[-1]].get("unit", "micrometer")
    src = ZarrSource(target, ds["path"], Grid(shape, sp, tuple(trans[sp_idx])), (0,) * len(extra), tuple(spatial))
    return src, units


# ------------------------------------------------------------------------------------------ writing


def _regular_chunks(arr: da.Array, chunks: Any) -> da.Array:
    if chunks is not None:
        return arr.rechunk(chunks)
    if all(len(set(c[:-1])) <= 1 and c[-1] <= c[0] for c in arr.chunks):
        return arr
    return arr.rechunk(arr.chunksize)


def _check_target(path: Path, overwrite: bool, data: Any = None) -> None:
    if path.exists():
        if not overwrite:
            raise LazyregError(f"path: {path} exists; pass overwrite=True to replace it")
        if data is not None:
            src = find_source(data) if isinstance(data, xr.DataArray) else None
            root = getattr(src[0], "root", getattr(src[0], "path", None)) if src else None
            if root is not None and (Path(root).resolve() == path.resolve() or path.resolve() in Path(root).resolve().parents):
                raise LazyregError(f"path: {path} is where the image being written is read from; write elsewhere")


def write_ome_zarr(
    data: Any,
    path: str | Path,
    *,
    axes: Sequence[tuple[str, str, str | None]],
    scale: Sequence[float],
    translation: Sequence[float],
    chunks: Any = None,
    overwrite: bool = False,
    compute: bool = True,
    name: str | None = None,
    attrs: dict | None = None,
    source_image: xr.DataArray | None = None,
):
    """Stream an array to a one-level OME-Zarr 0.5 image; metadata marking completion is written last.

    ``axes`` are ``(name, type, unit)`` triples, e.g. ``("c", "channel", None)`` then z, y, x.
    Returns the path (``compute=True``) or a ``dask.delayed`` object that writes when computed.
    """
    path = Path(path)
    _check_target(path, overwrite, source_image)
    arr = data if isinstance(data, da.Array) else da.from_array(np.asarray(data), chunks="auto")
    arr = _regular_chunks(arr, chunks)
    if path.exists():
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs[_STATUS] = {"status": "writing"}
    zarr_arr = group.create_array(
        "0",
        shape=arr.shape,
        chunks=tuple(int(c[0]) for c in arr.chunks),
        dtype=arr.dtype,
        dimension_names=tuple(a[0] for a in axes),
        fill_value=0,
    )
    ome_axes = []
    for n, t, u in axes:
        ax = {"name": n, "type": t}
        if u:
            ax["unit"] = u
        ome_axes.append(ax)
    meta = {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "axes": ome_axes,
                    "datasets": [
                        {
                            "path": "0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": [float(s) for s in scale]},
                                {"type": "translation", "translation": [float(t) for t in translation]},
                            ],
                        }
                    ],
                    **({"name": name} if name else {}),
                }
            ],
        },
        **(attrs or {}),
    }
    stored = da.store(arr, zarr_arr, lock=False, compute=False, return_stored=False)
    done = dask.delayed(_finalize)(stored, str(path), meta)
    if compute:
        done.compute()
        return path
    return done


def _finalize(_stored: Any, path: str, meta: dict) -> str:
    group = zarr.open_group(path, mode="r+")
    attrs = dict(group.attrs)
    attrs.pop(_STATUS, None)
    attrs.update(meta)
    group.attrs.put(attrs)  # one metadata write: the image is complete from here on
    return path


def to_zarr(
    img: xr.DataArray,
    path: str | Path,
    *,
    chunks: Any = None,
    overwrite: bool = False,
    compute: bool = True,
    name: str | None = None,
):
    """Stream a (lazy) image to an OME-Zarr 0.5 image that viewers place in physical space.

    Parameters
    ----------
    img : xarray.DataArray
        A lazyreg image, dask-backed or in memory.
    path : str or Path
        Target folder (a zarr v3 group, the array at ``path/0``, zstd-compressed).
    chunks : tuple, optional
        Chunks on disk; default the image's chunks (made regular).
    overwrite : bool
        Replace an existing ``path``. Refused anyway when ``img`` is read from ``path``.
    compute : bool
        If False, return a ``dask.delayed`` object that writes when computed.
    name : str, optional
        Name stored in the multiscales metadata.

    Returns
    -------
    Path or dask.delayed.Delayed

    Notes
    -----
    The array is written first and the ``multiscales`` metadata last, so an interrupted write is
    recognised as incomplete by :func:`lazyreg.open_image`. Peak memory is bounded by the chunks in
    flight, not by the image size.

    Examples
    --------
    >>> import numpy as np, lazyreg, tempfile, os
    >>> img = lazyreg.image(np.ones((4, 8, 8), "uint16"), spacing=(2, 1, 1), origin=(5, 0, 0))
    >>> out = lazyreg.to_zarr(img, os.path.join(tempfile.mkdtemp(), "img.ome.zarr"))
    >>> lazyreg.origin(lazyreg.open_image(out))
    (5.0, 0.0, 0.0)
    """
    validate_image(img, "img")
    g = grid_of(img, "img")
    unit = img.attrs.get("units", "micrometer")
    data = img.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=chunks if chunks is not None else "auto")
    return write_ome_zarr(
        data,
        path,
        axes=[(d, "space", unit) for d in DIMS],
        scale=g.spacing,
        translation=g.origin,
        chunks=chunks,
        overwrite=overwrite,
        compute=compute,
        name=name or (str(img.name) if img.name is not None else None),
        source_image=img,
    )


def read_ome_zarr(path: str | Path) -> tuple[da.Array, list[dict], np.ndarray, np.ndarray, dict]:
    """Raw read of a one-level OME-Zarr written by :func:`write_ome_zarr`.

    Returns ``(dask array, axes, scale, translation, group attrs)``.
    """
    path = Path(path)
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as e:
        raise LazyregError(f"path: cannot open {path} as a zarr group ({type(e).__name__})") from None
    attrs = dict(group.attrs)
    ms = _multiscales(attrs)
    if not ms:
        if _STATUS in attrs:
            raise LazyregError(f"path: {path} is incomplete (interrupted write?)")
        raise LazyregError(f"path: {path} has no OME-Zarr multiscales metadata")
    ds = ms[0]["datasets"][0]
    arr = zarr.open_array(store=str(path), path=ds["path"], mode="r")
    axes = ms[0]["axes"]
    scale, trans = _compose(ds.get("coordinateTransformations"), len(axes))
    return da.from_zarr(arr), axes, scale, trans, attrs
