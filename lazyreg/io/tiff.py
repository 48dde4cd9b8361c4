"""TIFF stacks (read lazily, plane by plane), with spacing from ImageJ or OME-XML metadata."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import tifffile

from ..errors import LazyregError
from ..image import Grid
from .source import Source

__all__ = ["TiffSource"]

_UNITS = {"micron": "micrometer", "um": "micrometer", "µm": "micrometer", "\\u00B5m": "micrometer", "nm": "nanometer"}


def _resolution(page: tifffile.TiffPage, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value
    if not num or not den:
        return None
    return den / num  # pixels per unit -> unit per pixel


def _spacing(tif: tifffile.TiffFile) -> tuple[tuple[float, float, float] | None, str]:
    if tif.ome_metadata:
        found = {}
        for ax in "ZYX":
            m = re.search(rf'PhysicalSize{ax}="([0-9.eE+-]+)"', tif.ome_metadata)
            if m:
                found[ax] = float(m.group(1))
        if len(found) == 3:
            return (found["Z"], found["Y"], found["X"]), "micrometer"
    ij = tif.imagej_metadata
    if ij and "spacing" in ij:
        page = tif.pages[0]
        ry, rx = _resolution(page, "YResolution"), _resolution(page, "XResolution")
        if ry and rx:
            unit = _UNITS.get(str(ij.get("unit", "micron")), str(ij.get("unit", "micrometer")))
            return (float(ij["spacing"]), ry, rx), unit
    return None, "micrometer"


class TiffSource(Source):
    """The first series of a TIFF file as a (z, y, x) volume, read by planes (memory-mapped if possible)."""

    def __init__(self, path: Path, spacing: Any = None):
        self.path = Path(path).resolve()
        try:
            with tifffile.TiffFile(self.path) as tif:
                series = tif.series[0]
                shape = tuple(int(s) for s in series.shape)
                self.dtype = np.dtype(series.dtype)
                found, self.units = _spacing(tif)
        except (tifffile.TiffFileError, OSError) as e:
            raise LazyregError(f"path: cannot read {self.path} as TIFF ({e})") from None
        squeezed = tuple(s for s in shape if s != 1) if len(shape) > 3 else shape
        if len(squeezed) == 2:
            squeezed = (1,) + squeezed
        if len(squeezed) != 3:
            raise LazyregError(f"path: {self.path} holds an array of shape {shape}; lazyreg reads 3D (z, y, x) stacks")
        sp = spacing if spacing is not None else found
        if sp is None:
            raise LazyregError(
                f"path: voxel spacing is unknown for {self.path} (no ImageJ or OME resolution); pass spacing=(z, y, x)"
            )
        self.grid = Grid(squeezed, sp)
        plane = squeezed[1] * squeezed[2] * self.dtype.itemsize
        self.chunks = (max(1, min(squeezed[0], (64 * 2**20) // max(plane, 1))), squeezed[1], squeezed[2])
        self._mm = None

    def _data(self):
        if self._mm is None:
            try:
                self._mm = tifffile.memmap(self.path, mode="r")
            except ValueError:  # compressed or not contiguous: read planes
                self._mm = False
        return self._mm

    def read(self, index):
        mm = self._data()
        if mm is not False:
            return np.array(mm.reshape(self.grid.shape)[index])
        z = index[0]
        with tifffile.TiffFile(self.path) as tif:
            pages = tif.series[0].pages
            planes = [pages[i].asarray()[index[1], index[2]] for i in range(z.start, z.stop)]
        return np.stack(planes).reshape(tuple(s.stop - s.start for s in index))

    def token(self) -> str:
        return f"tiff:{self.path}:{self.path.stat().st_mtime_ns}"

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_mm"] = None
        return state
