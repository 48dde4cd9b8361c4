"""N5 datasets (read), through tensorstore's n5 driver; N5 metadata is xyz, lazyreg presents zyx."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import LazyregError
from ..image import Grid
from .source import Source

__all__ = ["N5Source", "is_n5", "n5_datasets"]


def is_n5(path: Path) -> bool:
    """Whether ``path`` is inside an N5 container (an attributes.json with an "n5" version up the tree)."""
    p = path
    for _ in range(8):
        attrs = p / "attributes.json"
        if attrs.is_file():
            if "n5" in _attrs(p) or p.suffix == ".n5":
                return True
        if p.suffix == ".n5":
            return True
        if p.parent == p:
            break
        p = p.parent
    return False


def _attrs(p: Path) -> dict:
    f = p / "attributes.json"
    if not f.is_file():
        return {}
    try:
        return json.loads(f.read_text())
    except json.JSONDecodeError as e:
        raise LazyregError(f"path: {f} is not valid JSON ({e})") from None


def n5_datasets(container: Path) -> list[str]:
    """Relative paths of the datasets (folders whose attributes have "dimensions") in a container."""
    out = []
    for root, dirs, files in os.walk(container):
        if "attributes.json" in files and "dimensions" in _attrs(Path(root)):
            out.append(os.path.relpath(root, container))
            dirs[:] = []
        dirs[:] = [d for d in dirs if not d.isdigit()]
    return sorted(out)


def _resolution(value: Any) -> np.ndarray | None:
    if value is None:
        return None
    if isinstance(value, dict):
        value = value.get("dimensions")
    arr = np.asarray(value, dtype=float)
    return arr if arr.shape == (3,) else None


def _n5_spacing(container: Path, dataset_dir: Path) -> tuple[tuple[float, float, float] | None, str]:
    """Spacing (zyx) = pixelResolution * downsamplingFactors, from the dataset or up to the container."""
    ds = _attrs(dataset_dir)
    res = _resolution(ds.get("pixelResolution"))
    unit = ds.get("pixelResolution", {}).get("unit") if isinstance(ds.get("pixelResolution"), dict) else None
    p = dataset_dir
    while res is None and p != container.parent:
        a = _attrs(p)
        res = _resolution(a.get("pixelResolution"))
        if isinstance(a.get("pixelResolution"), dict):
            unit = a["pixelResolution"].get("unit", unit)
        p = p.parent
    if res is None:
        return None, "micrometer"
    factors = np.asarray(ds.get("downsamplingFactors", [1, 1, 1]), dtype=float)
    sp = (res * factors)[::-1]
    units = {"um": "micrometer", "µm": "micrometer", "nm": "nanometer", "mm": "millimeter"}.get(unit or "um", unit)
    return tuple(float(v) for v in sp), units or "micrometer"


class N5Source(Source):
    """A dataset of an N5 container, read with tensorstore (opened lazily, once per process)."""

    def __init__(self, container: Path, dataset: str, spacing: Any = None):
        self.container = Path(container).resolve()
        self.dataset = dataset.strip("/")
        self.path = self.container / self.dataset if self.dataset else self.container
        attrs = _attrs(self.path)
        if "dimensions" not in attrs:
            found = n5_datasets(self.container)
            raise LazyregError(
                f"group: '{self.dataset}' is not a dataset of {self.container}; datasets found: {found or 'none'}"
            )
        shape = tuple(int(v) for v in attrs["dimensions"])[::-1]
        if len(shape) != 3:
            raise LazyregError(f"path: {self.path} has {len(shape)} dimensions; lazyreg reads 3D datasets")
        if spacing is None:
            spacing, self.units = _n5_spacing(self.container, self.path)
            if spacing is None:
                raise LazyregError(
                    f"path: voxel spacing is unknown for {self.path} (no pixelResolution); pass spacing=(z, y, x)"
                )
        else:
            self.units = "micrometer"
        self.grid = Grid(shape, spacing, (0.0, 0.0, 0.0))
        self.dtype = np.dtype(attrs["dataType"])
        self.chunks = tuple(int(v) for v in attrs["blockSize"])[::-1]
        self._store = None

    def _open(self):
        if self._store is None:
            import tensorstore as ts

            spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(self.path)}}
            self._store = ts.open(spec, read=True).result().T  # N5 is xyz: present zyx
        return self._store

    def read(self, index):
        return np.asarray(self._open()[index].read().result())

    def token(self) -> str:
        mtime = (self.path / "attributes.json").stat().st_mtime_ns
        return f"n5:{self.path}:{mtime}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None
        return state
