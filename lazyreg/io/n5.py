"""N5 datasets (read), through tensorstore's n5 driver; N5 metadata is xyz, lazyreg presents zyx.

Why tensorstore: zarr-python 3 has no N5 support (its N5 store was dropped with zarr 2), whereas
tensorstore reads N5 natively (raw, gzip, bzip2, xz, blosc, zstd blocks) in C++, releases the GIL and
is safe to call from many dask threads at once.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LazyregError
from ..images import Grid
from .read_errors import read_naming_chunk
from .source import Source, file_stamp

__all__ = ["N5Source", "is_n5", "n5_datasets", "open_n5"]

_UNITS = {
    "um": "micrometer",
    "µm": "micrometer",
    "μm": "micrometer",
    "micron": "micrometer",
    "microns": "micrometer",
    "nm": "nanometer",
    "mm": "millimeter",
}
_CACHE_SIZE = 32
_STORES: OrderedDict[tuple[str, str], Any] = OrderedDict()  # per-process cache of open tensorstores
_STORES_LOCK = threading.Lock()


def unit_name(unit: Any, default: str = "micrometer") -> str:
    """An OME-Zarr unit name for common abbreviations (``"um"`` -> ``"micrometer"``)."""
    if not unit:
        return default
    return _UNITS.get(str(unit).strip(), str(unit).strip())


def _attrs(p: Path) -> dict:
    f = p / "attributes.json"
    if not f.is_file():
        return {}
    try:
        out = json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LazyregError(f"path: {f} is not valid JSON ({e})") from None
    return out if isinstance(out, dict) else {}


def _container(p: Path) -> Path | None:
    """The N5 container holding ``p``: the nearest folder up the tree (``p`` included) whose attributes
    name an N5 version or whose name ends in ``.n5``; None if there is none."""
    for c in [p, *p.parents][:32]:
        if c.suffix.lower() == ".n5" or "n5" in _attrs(c):
            return c
    return None


def is_n5(path: Path, group: str | None = None) -> bool:
    """Whether ``path`` (or ``path/group``) is an N5 container, group or dataset.

    True for a folder named ``*.n5``, or holding an ``attributes.json``.

    Examples
    --------
    >>> import os, tempfile
    >>> from lazyreg.io.n5 import is_n5
    >>> with tempfile.TemporaryDirectory() as d:
    ...     os.makedirs(f"{d}/data.n5")
    ...     is_n5(f"{d}/data.n5"), is_n5(d)
    (True, False)
    """
    p = Path(path)
    if not p.is_dir():
        return False
    return p.suffix.lower() == ".n5" or (p / "attributes.json").is_file() or (
        group is not None and (p / group.strip("/") / "attributes.json").is_file()
    )


def n5_datasets(root: Path) -> list[str]:
    """Relative paths of the datasets (folders whose attributes have "dimensions") below ``root``.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from lazyreg.io.n5 import n5_datasets
    >>> with tempfile.TemporaryDirectory() as d:
    ...     for ds in ("c.n5/raw/s0", "c.n5/raw/s1", "c.n5/labels"):
    ...         os.makedirs(f"{d}/{ds}")
    ...         with open(f"{d}/{ds}/attributes.json", "w") as f:
    ...             json.dump({"dimensions": [4, 4, 4]}, f)
    ...     n5_datasets(f"{d}/c.n5")
    ['labels', 'raw/s0', 'raw/s1']
    """
    out = []
    for dirpath, dirs, files in os.walk(root):
        if "attributes.json" in files and "dimensions" in _attrs(Path(dirpath)):
            out.append(Path(os.path.relpath(dirpath, root)).as_posix())
            dirs[:] = []  # block folders below a dataset
        dirs.sort()
    return sorted(out)


def _numbers(value: Any, where: Path, field: str, n: int | None = 3, positive: bool = False) -> np.ndarray:
    """A list of ``n`` finite numbers from an attribute (JSON numbers only), else a LazyregError naming it."""
    ok = isinstance(value, list) and (n is None or len(value) == n)
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    arr = np.asarray(value if ok else [], dtype=float)
    if not ok or not np.all(np.isfinite(arr)) or (positive and not np.all(arr > 0)):
        what = f"{n} " if n else ""
        raise LazyregError(
            f"path: {where / 'attributes.json'}: '{field}' must be a list of {what}finite{' positive' if positive else ''} "
            f"numbers (x, y, z), got {value!r}"[:300]
        )
    return arr


def _xyz(value: Any, where: Path, field: str, positive: bool = False) -> np.ndarray | None:
    """An xyz attribute (or the ``dimensions`` of a ``{"unit", "dimensions"}`` dict); None if absent."""
    if isinstance(value, dict):
        value, field = value.get("dimensions"), field + ".dimensions"
    return None if value is None else _numbers(value, where, field, positive=positive)


def _unit_of(value: Any) -> str | None:
    if isinstance(value, dict):
        return value.get("unit")
    return None


def _cosem_transform(t: Any, where: Path) -> tuple[np.ndarray, np.ndarray, str | None] | None:
    """The COSEM-style ``"transform"`` attribute (axes named, C order unless ``ordering == "F"``)."""
    if not isinstance(t, dict) or "scale" not in t or "axes" not in t:
        return None
    axes = t["axes"]
    if not isinstance(axes, list) or sorted(map(str, axes)) != ["x", "y", "z"]:
        raise LazyregError(f"path: {where / 'attributes.json'}: 'transform.axes' must name x, y and z once each, got {axes!r}")
    scale = list(_numbers(t["scale"], where, "transform.scale", positive=True))
    trans = list(_numbers(t.get("translate", [0.0] * 3), where, "transform.translate"))
    units = t.get("units", [None] * 3)
    units = list(units) if isinstance(units, list) and len(units) == 3 else [None] * 3
    if t.get("ordering", "C") == "F":
        axes, scale, trans, units = axes[::-1], scale[::-1], trans[::-1], units[::-1]
    idx = [axes.index(d) for d in "zyx"]
    return (
        np.asarray([scale[i] for i in idx], dtype=float),
        np.asarray([trans[i] for i in idx], dtype=float),
        units[idx[-1]],
    )


def _geometry(dataset_dir: Path, container: Path) -> tuple[tuple | None, tuple, str]:
    """Spacing, origin (both zyx) and units of a dataset.

    Spacing is ``pixelResolution * downsamplingFactors``; ``pixelResolution`` (or ``resolution``) comes
    from the dataset, else from its parents up to the container. The origin is ``offset`` (xyz,
    physical units) if present. A COSEM-style ``transform`` attribute takes precedence.
    """
    ds = _attrs(dataset_dir)
    cosem = _cosem_transform(ds.get("transform"), dataset_dir)
    if cosem is not None:
        sc, tr, unit = cosem
        return tuple(sc.tolist()), tuple(tr.tolist()), unit_name(unit)
    res, unit = None, None
    p = dataset_dir
    while True:
        a = ds if p == dataset_dir else _attrs(p)
        for key in ("pixelResolution", "resolution"):
            if res is None and _xyz(a.get(key), p, key, positive=True) is not None:
                res = _xyz(a.get(key), p, key, positive=True)
                unit = _unit_of(a.get(key))
        if unit is None and _unit_of(a.get("pixelResolution")):
            unit = _unit_of(a.get("pixelResolution"))
        if (res is not None and unit is not None) or p == container or p.parent == p:
            break
        p = p.parent
    factors = _xyz(ds.get("downsamplingFactors"), dataset_dir, "downsamplingFactors", positive=True)
    factors = np.ones(3) if factors is None else factors
    offset = _xyz(ds.get("offset"), dataset_dir, "offset")
    origin = (0.0, 0.0, 0.0) if offset is None else tuple(offset[::-1].tolist())
    spacing = None if res is None else tuple((res * factors)[::-1].tolist())
    return spacing, origin, unit_name(unit)


def _open_store(path: str, token: str) -> Any:
    """The tensorstore of an N5 dataset, opened once per process (and per metadata version)."""
    key = (path, token)
    with _STORES_LOCK:
        store = _STORES.get(key)
        if store is not None:
            _STORES.move_to_end(key)
            return store
        import tensorstore as ts

        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": path}}
        try:
            store = ts.open(spec, read=True, open=True).result()
        except Exception as e:  # tensorstore raises ValueError / its own status errors
            raise LazyregError(f"path: tensorstore cannot open the N5 dataset {path}: {e}") from None
        _STORES[key] = store
        while len(_STORES) > _CACHE_SIZE:
            _STORES.popitem(last=False)
        return store


class N5Source(Source):
    """A 3D dataset of an N5 container, read with tensorstore.

    Only ``attributes.json`` files are read when it is built. The tensorstore handle is opened once per
    process (module cache) and never pickled: an unpickled source reopens it by path.

    Parameters
    ----------
    path : Path
        The dataset folder (it holds an ``attributes.json`` with ``dimensions``).
    spacing : tuple of 3 floats, optional
        Overrides the spacing from the metadata.

    Examples
    --------
    >>> import tempfile, numpy as np, tensorstore as ts
    >>> from lazyreg.io.n5 import N5Source
    >>> with tempfile.TemporaryDirectory() as d:  # N5 metadata are in x, y, z order
    ...     meta = {"dimensions": [4, 3, 2], "blockSize": [4, 3, 2], "dataType": "uint16",
    ...             "compression": {"type": "gzip"}, "pixelResolution": [0.5, 0.5, 2.0]}
    ...     store = ts.open({"driver": "n5", "kvstore": f"file://{d}/c.n5/raw", "metadata": meta}, create=True).result()
    ...     store.T.write(np.arange(24, dtype="uint16").reshape(2, 3, 4)).result()
    ...     src = N5Source(f"{d}/c.n5/raw")
    ...     src.shape, src.grid.spacing, int(src[1, 2, 3])
    ((2, 3, 4), (2.0, 0.5, 0.5), 23)
    """

    def __init__(self, path: Path, spacing: Any = None):
        self.path = Path(path).resolve()
        attrs = _attrs(self.path)
        if "dimensions" not in attrs:
            raise LazyregError(f"path: {self.path} is not an N5 dataset (its attributes.json has no 'dimensions')")
        dims = [int(v) for v in _numbers(attrs["dimensions"], self.path, "dimensions", n=None)]
        if len(dims) != 3:
            raise LazyregError(f"path: {self.path} has {len(dims)} dimensions; lazyreg reads 3D (x, y, z) N5 datasets")
        block = _numbers(attrs.get("blockSize", dims), self.path, "blockSize", positive=True)
        try:
            self.dtype = np.dtype(str(attrs.get("dataType")))
        except TypeError:
            raise LazyregError(f"path: {self.path} has an unsupported dataType {attrs.get('dataType')!r}") from None
        self.chunks = tuple(int(v) for v in block)[::-1]  # type: ignore[assignment]
        found, origin, self.units = _geometry(self.path, _container(self.path) or self.path)
        if spacing is None and found is None:
            raise LazyregError(
                f"path: voxel spacing is unknown for {self.path} (no pixelResolution in the dataset or the "
                "container); pass spacing=(z, y, x)"
            )
        self.grid = Grid(tuple(dims[::-1]), found if spacing is None else spacing, origin)
        self._mtime = file_stamp(self.path)
        _open_store(str(self.path), self.token())  # fail now, not in a worker, if tensorstore cannot read it

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        return read_naming_chunk(self._read, index, self.chunks, self._describe, str(self.path))

    def _read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        store = _open_store(str(self.path), self.token())
        return store.T[index].read(order="C").result()

    def _describe(self, ids: tuple[int, ...]) -> str:
        key = "/".join(str(i) for i in ids[::-1])  # N5 block paths are x/y/z
        return f"block '{key}' (file {self.path / key})"

    def token(self) -> str:
        return f"n5:{self.path}:{self._mtime}"


def _list_hint(root: Path) -> str:
    found = n5_datasets(root)
    return f"datasets found below {root}: {found}" if found else f"no N5 dataset was found below {root}"


def open_n5(path: Path, *, group: str | None, level: int | None, spacing: Any) -> N5Source:
    """The :class:`N5Source` for ``path`` (a container, group or dataset) and optional ``group``.

    What :func:`lazyreg.open_image` calls for N5 (only ``attributes.json`` files are read).
    ``level=k`` selects the dataset ``s{k}`` of a multiscale group (the N5-viewer layout); a group
    without ``dimensions`` but with an ``s0`` dataset opens ``s0`` by default.

    Raises
    ------
    LazyregError
        ``group`` is not in ``path``; a group without the level asked; unknown spacing.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from lazyreg.io.n5 import open_n5
    >>> with tempfile.TemporaryDirectory() as d:  # a multiscale group: s0, and s1 at half resolution
    ...     for k, n in ((0, 8), (1, 4)):
    ...         os.makedirs(f"{d}/c.n5/img/s{k}")
    ...         meta = {"dimensions": [n] * 3, "blockSize": [4] * 3, "dataType": "uint8",
    ...                 "compression": {"type": "raw"}, "pixelResolution": [1.0] * 3,
    ...                 "downsamplingFactors": [8 // n] * 3}
    ...         with open(f"{d}/c.n5/img/s{k}/attributes.json", "w") as f:
    ...             json.dump(meta, f)
    ...     s0 = open_n5(f"{d}/c.n5", group="img", level=None, spacing=None)
    ...     s1 = open_n5(f"{d}/c.n5", group="img", level=1, spacing=None)
    ...     s0.path.name, s1.shape, s1.grid.spacing
    ('s0', (4, 4, 4), (2.0, 2.0, 2.0))
    """
    root = Path(path).resolve()
    target = root / group.strip("/") if group else root
    if group and not target.is_dir():
        raise LazyregError(f"group: '{group}' is not in the N5 container {root}; {_list_hint(root)}")
    is_dataset = "dimensions" in _attrs(target)
    if level is not None or not is_dataset:
        k = 0 if level is None else level
        scale = target / f"s{k}"
        if is_dataset or not (scale / "attributes.json").is_file():
            if level is None:
                raise LazyregError(
                    f"group: {target} is an N5 group, not a dataset; pass group= one of the {_list_hint(root)}"
                )
            levels = [d.name for d in sorted(target.glob("s[0-9]*")) if "dimensions" in _attrs(d)]
            raise LazyregError(
                f"level: {target} has no multiscale level s{k} (levels found: {levels or 'none'}); "
                f"{_list_hint(root)}"
            )
        target = scale
    return N5Source(target, spacing)
