"""OME-Zarr images: streaming writes (OME-Zarr 0.5 on zarr v3, or 0.4 on zarr v2), and the reader's names.

Writes are made safe against interruption: the group is created with a ``lazyreg_write`` marker
attribute (:data:`~lazyreg.io.zarr_read.WRITE_MARKER`), the arrays are written, and only then are the
``multiscales`` metadata written, in the same single metadata write that removes the marker. A store
without multiscales is never opened as an image. Every chunk is written, empty ones included, and
the final metadata record the chunk count of every level (:data:`~lazyreg.io.chunk_files.CHUNKS_ATTR`),
so that a missing chunk file is found on open instead of read as zeros. One writer at a time: the
whole write (old store removed, chunks, metadata) holds the lock of :mod:`lazyreg.io.locks`. Pyramid
levels (``levels=``) are written from the level before, read back (:mod:`lazyreg.io.pyramid`).
Reading lives in :mod:`lazyreg.io.zarr_read`; its public names are importable from here too.
"""

from __future__ import annotations

import contextlib
import weakref
from pathlib import Path
from typing import Any, Iterator, Sequence

import dask
import dask.array as da
import numpy as np
import numcodecs
import xarray as xr
import zarr
from dask.base import tokenize
from dask.core import flatten
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..errors import LazyregError
from ..images import DIMS
from .channels import per_channel_chunks, write_layout
from .chunk_files import CHUNKS_ATTR, chunk_record
from .locks import WriteLock, acquire_lock
from .pyramid import level_tasks, pyramid_plan
from .write_target import prepare_target
from .zarr_read import WRITE_MARKER, OmeZarrArray, ZarrSource, is_zarr, open_zarr, read_ome_zarr

__all__ = [
    "to_zarr",
    "write_ome_zarr",
    "output_format",
    "OME_ZARR_VERSIONS",
    # re-exported from zarr_read, where they are defined and documented
    "ZarrSource",
    "OmeZarrArray",
    "is_zarr",
    "open_zarr",
    "read_ome_zarr",
]

#: OME-Zarr versions written: "0.5" (zarr v3, the default) and "0.4" (zarr v2, for tools on zarr 2).
#: The default comes from the dask config ``lazyreg.ome-zarr-version`` (see :func:`output_format`).
OME_ZARR_VERSIONS = ("0.5", "0.4")
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


def _axis_type(name: str) -> str:
    """OME-Zarr axis type: z, y, x are "space", t "time", any other axis (c, a vector axis) "channel"."""
    return "space" if name in DIMS else "time" if name == "t" else "channel"


def _axes_meta(axes: Sequence[str], units: Any) -> list[dict]:
    if isinstance(units, str) or units is None:
        units = [units if _axis_type(a) == "space" else None for a in axes]
    if len(units) != len(axes):
        raise LazyregError(f"units: expected one unit per axis {tuple(axes)}, got {units!r}")
    out = []
    for a, u in zip(axes, units):
        ax: dict = {"name": a, "type": _axis_type(a)}
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
    levels: int | str = 1,
    format: str | None = None,
    omero: dict | None = None,
) -> Path | Any:
    """Stream an N-D array to an OME-Zarr image (0.5 on zarr v3, or 0.4 on zarr v2; zstd level 1).

    Parameters
    ----------
    data : dask.array.Array or array_like
        The voxels, in the order of ``axes``. Dask arrays are written chunk by chunk.
    path : str or Path
        Target folder: a zarr group, level ``k``'s array at ``path/k``.
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
        Replace an existing zarr store at ``path`` (moved aside and deleted before writing). Refused
        when ``data`` is read from ``path``, when ``path`` is not a zarr store, or when a folder of the
        old store is not writable (the old store is then left as it was).
    compute : bool
        If False, return a ``dask.delayed`` object that writes the data, then the metadata. The group
        and arrays are created (and an old store removed) now; the store stays marked incomplete until
        the delayed is computed. The writer lock of ``path`` is held until then (or until the delayed
        is dropped).
    name : str, optional
        Name in the multiscales metadata.
    attrs : dict, optional
        Extra JSON attributes stored beside the OME metadata in the group (written last, with them).
        An ``"ome"`` entry replaces the writer's OME-Zarr 0.5 metadata; it is left out of a 0.4
        store, which holds only the writer's OME-Zarr 0.4 ``multiscales``.
    levels : int or "auto"
        Number of multiscale levels, full resolution included (1: no pyramid), or "auto"; only the
        spatial axes z, y, x are downsampled (:mod:`lazyreg.io.pyramid`).
    format : {"0.5", "0.4"}, optional
        OME-Zarr version: "0.5" (zarr v3) or "0.4" (zarr v2, ``/``-separated chunk keys, for tools on
        zarr 2). Default: the dask config ``lazyreg.ome-zarr-version``, else "0.5".
    omero : dict, optional
        OME ``omero`` metadata (e.g. ``{"channels": [{"label": ..., "color": ..., "window": ...}]}``),
        stored under ``"ome"`` (0.5) or at the top (0.4).

    Returns
    -------
    Path or dask.delayed.Delayed

    Raises
    ------
    LazyregError
        Existing path without ``overwrite``, bad axes / scale / chunks / levels / format, an output
        folder that is not writable, or another writer writing ``path`` (:mod:`lazyreg.io.locks`).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from lazyreg.io.omezarr import write_ome_zarr
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = write_ome_zarr(np.ones((2, 3, 4)), f"{d}/a.ome.zarr", scale=(2, 1, 1))
    ...     q = write_ome_zarr(np.ones((2, 3, 4)), f"{d}/b.ome.zarr", scale=(2, 1, 1), format="0.4")
    ...     sorted(f.name for f in p.iterdir()), sorted(f.name for f in q.iterdir())
    (['0', 'zarr.json'], ['.zattrs', '.zgroup', '0'])
    """
    path = Path(path).resolve()
    axes = tuple(axes)
    version = _version(format)
    arr = _as_dask(data)
    if arr.ndim != len(axes) or len(set(axes)) != len(axes):
        raise LazyregError(f"axes: expected {arr.ndim} distinct axis names for shape {arr.shape}, got {axes}")
    arr = _write_chunks(arr, chunks)
    scale_l = _per_axis(scale, axes, 1.0, "scale")
    trans_l = _per_axis((0.0,) * len(axes) if translation is None else translation, axes, 0.0, "translation")
    plan = pyramid_plan(arr.shape, scale_l, levels, [a in DIMS for a in axes])
    final = _group_attrs(axes, _datasets(scale_l, trans_l, plan), units, name, attrs, version, omero)  # checked first
    lock = _lock(path)
    try:
        prepare_target(path, overwrite, arr)
        if compute:  # the tasks that compute / persist would run for ``arr``: keys stay stable (see _as_computed)
            arr = _as_computed(arr)
        done = _store(arr, path, axes, final, lock, version, plan)
    except BaseException:
        lock.release()
        raise
    if not compute:
        # dropped before computing: this process forgets the lock (a later write here takes it
        # over), but a graph already submitted (client.compute) still finishes and releases it
        weakref.finalize(done, lock.abandon)
        return done
    with lock:
        done.compute()
    return path


def _version(format: Any) -> str:
    v = dask.config.get("lazyreg.ome-zarr-version", "0.5") if format is None else format
    if str(v) not in OME_ZARR_VERSIONS:
        where = "format" if format is not None else "dask config lazyreg.ome-zarr-version"
        raise LazyregError(f"{where}: expected an OME-Zarr version '0.5' (zarr v3) or '0.4' (zarr v2), got {v!r}")
    return str(v)


@contextlib.contextmanager
def output_format(version: str | None) -> Iterator[None]:
    """Within the block, OME-Zarr images and fields are written as ``version`` ("0.4" or "0.5").

    Sets the dask config ``lazyreg.ome-zarr-version`` (the command line's ``--ome-zarr-version``);
    None leaves the default as it is.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.io.omezarr import output_format
    >>> with tempfile.TemporaryDirectory() as d, output_format("0.4"):
    ...     p = lazyreg.to_zarr(lazyreg.image(np.zeros((2, 3, 4)), 1.0), d + "/a.ome.zarr")
    ...     (p / ".zattrs").is_file()
    True
    """
    if version is None:
        yield
        return
    with dask.config.set({"lazyreg.ome-zarr-version": _version(version)}):
        yield


def _as_computed(arr: da.Array) -> da.Array:
    """``arr`` on the optimised graph that ``dask.compute`` / ``persist`` run for it alone.

    The same keys with the same tasks: a write after ``persist`` of the same image then submits no
    key whose task differs from the persisted one (which dask.distributed warns of, "Detected
    different run_spec"), and reuses the persisted chunks. Only for writes computed here: a
    ``compute=False`` write is optimised with whatever it is computed together with.
    """
    (opt,) = dask.optimize(arr)
    return opt


def _lock(path: Path) -> WriteLock:
    """The writer lock of ``path`` (its parent folders created first, as zarr would)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise LazyregError(f"path: cannot write {path}: cannot create the folder {path.parent} ({e.strerror or e})") from None
    return acquire_lock(path)


def _as_dask(data: Any) -> da.Array:
    """``data`` as a dask array; numpy input in chunks of about ``_WRITE_CHUNK_BYTES``."""
    if isinstance(data, da.Array):
        return data
    values = np.asarray(data)
    auto = da.core.normalize_chunks("auto", values.shape, dtype=values.dtype, limit=_WRITE_CHUNK_BYTES)
    return da.from_array(values, chunks=auto, name=False)


def _datasets(scale: list[float], translation: list[float], plan: list[tuple[int, ...]]) -> list[dict]:
    """One ``datasets`` entry per level: voxel centres of level k + 1 at the centre of their 2 voxels of level k."""
    out = []
    for k in range(len(plan) + 1):
        out.append({"path": str(k), "coordinateTransformations": [
            {"type": "scale", "scale": list(scale)}, {"type": "translation", "translation": list(translation)}]})
        if k < len(plan):
            translation = [t + (f - 1) / 2 * s for t, s, f in zip(translation, scale, plan[k])]
            scale = [s * f for s, f in zip(scale, plan[k])]
    return out


def _group_attrs(axes: tuple[str, ...], datasets: list[dict], units: Any, name: str | None, attrs: dict | None, version: str,
                 omero: dict | None = None) -> dict:
    """The group's final attributes: OME-Zarr ``multiscales`` (0.5 under ``"ome"``, 0.4 at the top), ``omero``, and ``attrs``."""
    multiscale: dict = {"axes": _axes_meta(axes, units), "datasets": datasets}
    if name:
        multiscale["name"] = str(name)
    extra = {"omero": omero} if omero else {}
    if version == "0.4":  # an "ome" entry of ``attrs`` is OME-Zarr 0.5 metadata: not in a 0.4 store
        return {"multiscales": [{"version": "0.4", **multiscale}], **extra, **{k: v for k, v in (attrs or {}).items() if k != "ome"}}
    return {"ome": {"version": "0.5", "multiscales": [multiscale], **extra}, **(attrs or {})}


def _create_array(group: Any, key: str, shape: Sequence[int], chunks: Sequence[int], dtype: Any, axes: tuple[str, ...]) -> Any:
    """An empty array of the group, every chunk written even if empty; zarr v2 keys ``i/j/k``."""
    kw: dict = {"shape": tuple(shape), "chunks": tuple(chunks), "dtype": dtype, "fill_value": 0, "config": {"write_empty_chunks": True}}
    if group.metadata.zarr_format == 3:
        return group.create_array(key, compressors=zarr.codecs.ZstdCodec(level=ZSTD_LEVEL), dimension_names=axes, **kw)
    return group.create_array(key, compressors=numcodecs.Zstd(level=ZSTD_LEVEL), chunk_key_encoding={"name": "v2", "separator": "/"}, **kw)


def _store(arr: da.Array, path: Path, axes: tuple[str, ...], final: dict, lock: WriteLock, version: str, plan: list) -> Delayed:
    """Create the marked group and its arrays now; return the delayed write of data, then ``final``.

    Every chunk is written (``write_empty_chunks``), and ``final`` gains the chunk count and grid of
    every level (:data:`CHUNKS_ATTR`) by which a reader finds missing chunk files. Level ``k + 1``'s
    chunks are written from level ``k``'s, each task after the ones that wrote its input chunks.
    """
    try:
        group = zarr.create_group(store=str(path), zarr_format=3 if version == "0.5" else 2, attributes={WRITE_MARKER: {"status": "writing"}})
    except OSError as e:
        raise LazyregError(f"path: cannot write {path} ({e.strerror or e})") from None
    chunks = tuple(int(c[0]) for c in arr.chunks)
    prefix = "c" if version == "0.5" else ""
    record = chunk_record([len(c) for c in arr.chunks], "0", prefix)
    stored = da.store(arr, _create_array(group, "0", arr.shape, chunks, arr.dtype, axes), lock=False, compute=False)
    # depend on the store tasks by key: ``dask.delayed(f)(stored)`` would optimise the array graph
    # now, under new task names, so that tasks shared with other collections computed together
    # (e.g. the blocks behind a piecewise field and its report) would run twice
    keys = list(flatten(stored.__dask_keys__()))
    layer: dict = {}
    prev, prev_chunks, shape = (lambda idx: (stored.name,) + idx), chunks, arr.shape
    for k, factors in enumerate(plan, 1):
        shape = tuple(n // f for n, f in zip(shape, factors))
        level_chunks = tuple(min(c, n) for c, n in zip(chunks, shape))
        _create_array(group, str(k), shape, level_chunks, arr.dtype, axes)
        name = f"lazyreg-pyramid-{k}-" + tokenize(str(path), stored.name, lock.token)
        tasks, prev = level_tasks(name, prev, prev_chunks, str(path / str(k - 1)), str(path / str(k)), shape, level_chunks, factors)
        layer.update(tasks)
        keys += list(tasks)
        record.setdefault("levels", []).append(chunk_record([-(-n // c) for n, c in zip(shape, level_chunks)], str(k), prefix))
        prev_chunks = level_chunks
    final = {**final, CHUNKS_ATTR: record}
    key = "lazyreg-finalize-" + tokenize(str(path), final, arr.name, lock.token)
    layer[key] = (_finalize, keys, str(path), final, lock)
    return Delayed(key, HighLevelGraph.from_collections(key, layer, dependencies=[stored]))


def _finalize(_stored: Any, path: str, final: dict, lock: WriteLock) -> Path:
    """Write the metadata and drop the in-progress marker in one write: the image is complete now.

    Only while the write still holds its lock; the lock is released after.
    """
    lock.check()
    zarr.open_group(store=path, mode="r+").attrs.put(final)
    lock.release()
    return Path(path)


def to_zarr(
    img: xr.DataArray,
    path: str | Path,
    *,
    chunks: Any = None,
    overwrite: bool = False,
    compute: bool = True,
    name: str | None = None,
    levels: int | str = 1,
    format: str | None = None,
) -> Path | Any:
    """Stream a (lazy) image to an OME-Zarr image that viewers place in physical space, optionally a pyramid.

    Parameters
    ----------
    img : xarray.DataArray
        A lazyreg image, dask-backed or in memory: dims ``(z, y, x)``, or with time / channel dims
        ``(c, z, y, x)``, ``(t, z, y, x)``, ``(t, c, z, y, x)`` (axes typed time / channel; the
        channel names of the ``c`` coordinate go to the OME ``omero`` metadata, so that napari and
        Fiji show them; the ``t`` coordinate's step and ``attrs["units"]`` to the time axis).
    path : str or Path
        Target folder: a zarr group with full resolution at ``path/0`` (zstd; zarr v3 with dimension
        names z, y, x, or zarr v2 with ``format="0.4"``) and level ``k`` at ``path/k``.
    chunks : int or tuple, optional
        Chunks on disk; default the image's chunks if regular, else the largest chunk made regular
        (about 16 MiB chunks if that is over 64 MiB, or for an in-memory image).
    overwrite : bool
        Replace an existing zarr store at ``path``. Refused anyway when ``img`` is read from ``path``.
    compute : bool
        If False, return a ``dask.delayed`` object that writes the data, then the metadata.
    name : str, optional
        Name stored in the multiscales metadata (default the image's name).
    levels : int or "auto"
        Multiscale levels, full resolution included: 1 (the default) writes no pyramid; ``N`` adds
        ``N - 1`` levels, each 2x smaller than the one before along the axes it halves (axes much
        finer than the coarsest first, see :mod:`lazyreg.io.pyramid`), block means computed from the
        chunks of the level before as written (so memory stays bounded and level 0 is computed
        once); "auto": levels until the largest axis has at most 256 voxels.
    format : {"0.5", "0.4"}, optional
        OME-Zarr 0.5 on zarr v3 (the default, from the dask config ``lazyreg.ome-zarr-version``), or
        OME-Zarr 0.4 on zarr v2 for tools still on zarr 2 (e.g. bigstream 5, which opens
        ``zarr.open(path + "/0")``).

    Returns
    -------
    Path or dask.delayed.Delayed
        The absolute path written (``compute=True``), or the delayed write.

    Raises
    ------
    LazyregError
        ``path`` exists and ``overwrite`` is False; ``img`` is read from ``path``; invalid image;
        ``path`` is not writable; another writer is writing ``path`` (a second writer fails at once);
        more ``levels`` than the image can be halved; an unknown ``format``.

    Notes
    -----
    The spacing becomes the OME-Zarr ``scale`` and the origin the ``translation``. The array is
    written first and the ``multiscales`` metadata last, so an interrupted write is recognised as
    incomplete by :func:`lazyreg.open_image`. Every chunk is written (empty ones too) and counted in
    the metadata, so that a chunk file lost later is reported on open rather than read as zeros.
    The whole write holds an exclusive lock (``.NAME.lazyreg-lock`` beside ``path``; a stale one
    left by a killed writer on this host is taken over). Memory is bounded by the chunks in flight.
    Written with ``compute=True``, the image's tasks are the ones ``dask.persist`` runs, so writing an
    image persisted on a dask.distributed cluster reuses its chunks.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> img = lazyreg.image(np.ones((4, 8, 8), "uint16"), spacing=(2, 1, 1), origin=(5, 0, 0))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     back = lazyreg.open_image(lazyreg.to_zarr(img, f"{d}/img.ome.zarr"))
    ...     lazyreg.spacing(back), lazyreg.origin(back), int(back.sum())
    ((2.0, 1.0, 1.0), (5.0, 0.0, 0.0), 256)

    A pyramid on zarr v2 (OME-Zarr 0.4): level 1 halves y and x, finer than z, and its voxel centres
    move by half a voxel of level 0:

    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = lazyreg.to_zarr(img, f"{d}/img.ome.zarr", levels=2, format="0.4")
    ...     low = lazyreg.open_image(p, level=1)
    ...     low.shape, lazyreg.spacing(low), lazyreg.origin(low)
    ((4, 4, 4), (2.0, 2.0, 2.0), (5.0, 0.5, 0.5))
    """
    layout = write_layout(img, "img")  # (t, c, z, y, x) axes, scale, translation, units, omero channels
    if name is None and img.name is not None and img.name != getattr(img.data, "name", None):
        name = str(img.name)  # not the dask key that xarray adopts as the name of an unnamed array
    data, nlead = img.data, len(layout["axes"]) - 3
    if nlead:  # a chunk per channel / time point
        data, chunks = per_channel_chunks(data, chunks, nlead)
    return write_ome_zarr(
        data,
        path,
        **layout,
        chunks=chunks,
        overwrite=overwrite,
        compute=compute,
        name=name,
        levels=levels,
        format=format,
    )
