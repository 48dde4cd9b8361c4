"""TIFF stacks, read lazily through tifffile's zarr store, with spacing from ImageJ or OME-XML metadata."""

from __future__ import annotations

import struct
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import tifffile
import zarr

from ..errors import LazyregError
from ..images import Grid
from .n5 import unit_name
from .read_errors import read_naming_chunk
from .source import HandleSource, file_stamp

__all__ = ["TiffSource", "is_tiff"]

_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")  # classic and BigTIFF, both byte orders
_CHUNK_BYTES = 32 * 2**20  # dask chunks: whole pages / tiles grouped up to about this size
_PLANE_AXES = "ZQI"  # tifffile's names for the stacked axis: z, unknown, image sequence


def is_tiff(path: Path) -> bool:
    """Whether ``path`` is a TIFF file (by its magic bytes; classic or BigTIFF).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from lazyreg.io.tiff import is_tiff
    >>> with tempfile.TemporaryDirectory() as d:
    ...     tifffile.imwrite(f"{d}/a.tif", np.zeros((2, 3, 4), "uint8"))
    ...     is_tiff(f"{d}/a.tif"), is_tiff(d)
    (True, False)
    """
    try:
        with open(path, "rb") as f:
            return f.read(4) in _MAGIC
    except OSError:
        return False


def _ome_spacing(xml: str, nz: int) -> tuple[tuple | None, str]:
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None, "micrometer"
    pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
    if pixels is None:
        return None, "micrometer"
    sizes = {a: pixels.get(f"PhysicalSize{a}") for a in "ZYX"}
    units = {unit_name(pixels.get(f"PhysicalSize{a}Unit", "µm")) for a in "ZYX" if sizes[a] is not None}
    if sizes["Z"] is None and nz == 1:
        sizes["Z"] = "1"
    if any(v is None for v in sizes.values()) or len(units) > 1:
        return None, "micrometer"
    return tuple(float(sizes[a]) for a in "ZYX"), units.pop() if units else "micrometer"


def _resolution(page: Any, tag: str) -> float | None:
    t = page.tags.get(tag)
    if t is None:
        return None
    num, den = t.value
    return float(den) / float(num) if num and den else None  # pixels per unit -> unit per pixel


def _imagej_spacing(tif: tifffile.TiffFile) -> tuple[tuple | None, str]:
    ij = tif.imagej_metadata or {}
    if not ("spacing" in ij or "unit" in ij):  # uncalibrated: ImageJ writes neither
        return None, "micrometer"
    page = tif.pages.first
    ry, rx = _resolution(page, "YResolution"), _resolution(page, "XResolution")
    if not (ry and rx):
        return None, "micrometer"
    unit = str(ij.get("unit", "micron")).replace("\\u00B5", "µ")
    return (float(ij.get("spacing", 1.0)), ry, rx), unit_name(unit)


def _planes(series: Any) -> int:
    """Number of (y, x) planes in a series (samples are part of a plane)."""
    return int(np.prod([n for n, a in zip(series.shape, series.axes) if a not in "YXS"], dtype=np.int64))


def _declared_planes(tif: tifffile.TiffFile) -> tuple[int, str] | None:
    """The plane count the ImageJ or OME metadata declare, and how they say it (None: they say nothing)."""
    ij = tif.imagej_metadata
    if ij:
        counts = {k: int(ij.get(k, 1)) for k in ("images", "channels", "slices", "frames")}
        product = counts["channels"] * counts["slices"] * counts["frames"]
        declared = product if product > 1 else counts["images"]
        said = ", ".join(f"{k}={v}" for k, v in counts.items() if k in ij)
        return (declared, f"its ImageJ metadata ({said})") if declared > 1 else None
    if tif.ome_metadata:
        try:
            root = ET.fromstring(tif.ome_metadata)
        except ET.ParseError:
            return None
        pixels = next((e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)
        if pixels is None:
            return None
        sizes = {f"Size{a}": int(pixels.get(f"Size{a}", 1)) for a in "ZCT"}
        return int(np.prod(list(sizes.values()))), "its OME-XML metadata (" + ", ".join(f"{k}={v}" for k, v in sizes.items()) + ")"
    return None


def _truncation(tif: tifffile.TiffFile) -> str | None:
    """Why the file is cut short, if it is: the last page's data or its next-page pointer lie past the end."""
    fh, fmt, size = tif.filehandle, tif.tiff, tif.filehandle.size
    last = tif.pages[len(tif.pages) - 1]
    ends = [int(o) + int(n) for o, n in zip(getattr(last, "dataoffsets", ()), getattr(last, "databytecounts", ()))]
    if ends and max(ends) > size:
        return f"the data of page {len(tif.pages) - 1} end at byte {max(ends)}, past the end of the file ({size} bytes)"
    try:
        fh.seek(last.offset)
        ntags = struct.unpack(fmt.tagnoformat, fh.read(fmt.tagnosize))[0]
        fh.seek(last.offset + fmt.tagnosize + ntags * fmt.tagsize)
        following = struct.unpack(fmt.offsetformat, fh.read(fmt.offsetsize))[0]
    except (struct.error, OSError):
        return f"the directory of page {len(tif.pages) - 1} is cut short"
    if following >= size:
        return f"page {len(tif.pages) - 1} points to a next page at byte {following}, past the end of the file ({size} bytes)"
    return None


def _check_planes(tif: tifffile.TiffFile, series: Any, path: Path) -> None:
    """Refuse a file whose pages disagree with its metadata, or that is cut short (tifffile only logs these)."""
    declared = _declared_planes(tif)
    found = _planes(series) - sum(p is None for p in series.pages)  # OME pages that are missing read as zeros
    if declared is not None and declared[0] != found:
        raise LazyregError(
            f"path: {path} is truncated or corrupt: {declared[1]} declare {declared[0]} planes, but the file "
            f"holds {found}; copy or write it again"
        )
    cut = _truncation(tif)
    if cut is not None:
        raise LazyregError(f"path: {path} is truncated or corrupt: {cut}; copy or write it again")


class TiffSource(HandleSource):
    """The first series of a TIFF file as a (z, y, x) volume.

    Reads go through ``tifffile.imread(path, aszarr=True)`` opened with zarr: only the pages (or tiles)
    of the region asked are read and decoded. The open store is never pickled: an unpickled source
    reopens the file by path. Size-1 axes are dropped; a 2D image is one z plane.

    Parameters
    ----------
    path : Path
        The TIFF file.
    spacing : tuple of 3 floats, optional
        Overrides the spacing from the metadata (OME-XML ``PhysicalSize*``, or ImageJ ``spacing`` and
        ``XResolution`` / ``YResolution``).

    Examples
    --------
    >>> import tempfile, numpy as np, tifffile
    >>> from lazyreg.io.tiff import TiffSource
    >>> with tempfile.TemporaryDirectory() as d:  # an ImageJ stack: 3 um between planes, 0.5 um pixels
    ...     tifffile.imwrite(f"{d}/a.tif", np.arange(24, dtype="uint8").reshape(2, 3, 4), imagej=True,
    ...                      resolution=(2.0, 2.0), metadata={"spacing": 3.0, "unit": "um", "axes": "ZYX"})
    ...     src = TiffSource(f"{d}/a.tif")
    ...     src.shape, src.grid.spacing, src.units, int(src[1, 2, 3])
    ((2, 3, 4), (3.0, 0.5, 0.5), 'micrometer', 23)
    """

    def __init__(self, path: Path, spacing: Any = None):
        self.path = Path(path).resolve()
        try:
            with tifffile.TiffFile(self.path) as tif:
                if not tif.series:
                    raise LazyregError(f"path: {self.path} holds no image series")
                series = tif.series[0]
                shape, axes = tuple(int(s) for s in series.shape), series.axes
                if axes[-2:] == "YX" and len(axes) <= 3:  # a 3D stack, as lazyreg reads: its planes must all be there
                    _check_planes(tif, series, self.path)
                self.dtype = np.dtype(series.dtype)
                nz = shape[0] if len(shape) == 3 else 1
                found, self.units = _ome_spacing(tif.ome_metadata, nz) if tif.ome_metadata else (None, "")
                if found is None:
                    found, self.units = _imagej_spacing(tif)
            native = self.handle().chunks
        except LazyregError:
            raise
        except (tifffile.TiffFileError, OSError, ValueError, KeyError, TypeError) as e:
            raise LazyregError(f"path: cannot read {self.path} as TIFF ({type(e).__name__}: {e})") from None
        if axes[-2:] != "YX" or len(axes) > 3 or (len(axes) == 3 and axes[0] not in _PLANE_AXES):
            raise LazyregError(
                f"path: {self.path} holds a series with axes '{axes}' and shape {shape}; lazyreg reads TIFF "
                "files as 3D (z, y, x) stacks of single-channel planes (open_image's channel= and time= select "
                "channels and time points of OME-Zarr images: convert it, e.g. with bioformats2raw, or save "
                "one TIFF per channel)"
            )
        self._planar = len(shape) == 2
        if self._planar:
            shape, native = (1, *shape), (1, *native)
        self._native = (1, *native[1:])  # what one decode covers: a page, or a tile of one
        if spacing is None and found is None:
            raise LazyregError(
                f"path: voxel spacing is unknown for {self.path} (no ImageJ or OME-XML calibration); "
                "pass spacing=(z, y, x)"
            )
        self.grid = Grid(shape, found if spacing is None else spacing)
        auto = da.core.normalize_chunks("auto", shape, limit=_CHUNK_BYTES, dtype=self.dtype, previous_chunks=native)
        self.chunks = tuple(int(c[0]) for c in auto)  # type: ignore[assignment]
        self._mtime = file_stamp(self.path)

    def open(self) -> Any:
        return zarr.open(tifffile.imread(self.path, aszarr=True, series=0, level=0), mode="r")

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        return read_naming_chunk(self._read, index, self._native, self._describe, str(self.path))

    def _read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        if self._planar:
            return np.asarray(self.handle()[index[1:]])[None][index[0]]
        return np.asarray(self.handle()[index])

    def _describe(self, ids: tuple[int, ...]) -> str:
        tiled = self._native[1:] != self.shape[1:]
        return f"page {ids[0]}" + (f" (tile {ids[1]}, {ids[2]})" if tiled else "")

    def token(self) -> str:
        return f"tiff:{self.path}:{self._mtime}"
