"""Displacement fields stored as bare arrays of shape (z, y, x, 3), as bigstream writes its ``deform``.

Such an array (zarr v2 / v3, or an N5 dataset) holds (dz, dy, dx) in physical units at the voxel
centres of a grid whose spacing (and origin) it does not store: they are given by the caller.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr
from dask.base import tokenize

from ..errors import LazyregError
from ..transforms.field import DisplacementField
from ..validation import check_origin, check_spacing
from .source import file_stamp

__all__ = ["N5Array", "is_bare_array", "load_field_array"]


def _n5_dimensions(path: Path) -> list | None:
    f = path / "attributes.json"
    try:
        attrs = json.loads(f.read_text()) if f.is_file() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    dims = attrs.get("dimensions") if isinstance(attrs, dict) else None
    return dims if isinstance(dims, list) else None


def is_bare_array(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a zarr array (v2 or v3) or an N5 dataset (not a group).

    Examples
    --------
    >>> import tempfile, zarr
    >>> from lazyreg.io.field_arrays import is_bare_array
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = zarr.create_array(f"{d}/a.zarr", shape=(2, 3, 4, 3), dtype="float32")
    ...     _ = zarr.create_group(f"{d}/g.zarr")
    ...     is_bare_array(f"{d}/a.zarr"), is_bare_array(f"{d}/g.zarr")
    (True, False)
    """
    p = Path(os.fspath(path))
    if (p / ".zarray").is_file() or _n5_dimensions(p) is not None:
        return True
    try:
        return json.loads((p / "zarr.json").read_text()).get("node_type") == "array"
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


class N5Array:
    """An N-D N5 dataset as a numpy-like array in C order (N5 stores dimensions reversed), via tensorstore.

    The tensorstore handle is opened on first read in each process and never pickled.

    Examples
    --------
    >>> import tempfile, numpy as np, tensorstore as ts
    >>> from lazyreg.io.field_arrays import N5Array
    >>> with tempfile.TemporaryDirectory() as d:
    ...     meta = {"dimensions": [3, 4, 2, 2], "blockSize": [3, 4, 2, 2], "dataType": "float32",
    ...             "compression": {"type": "raw"}}
    ...     s = ts.open({"driver": "n5", "kvstore": f"file://{d}/f.n5/deform", "metadata": meta}, create=True).result()
    ...     s.T.write(np.ones((2, 2, 4, 3), "float32")).result()
    ...     a = N5Array(f"{d}/f.n5/deform")
    ...     a.shape, float(a[1, 1, 3, 2])
    ((2, 2, 4, 3), 1.0)
    """

    def __init__(self, path: str | os.PathLike):
        self.path = str(Path(os.fspath(path)).resolve())
        store = self._open()
        self.shape = tuple(int(v) for v in store.shape)
        self.dtype = np.dtype(store.dtype.numpy_dtype)
        self.ndim = len(self.shape)
        self.chunks = tuple(int(v) for v in store.chunk_layout.read_chunk.shape)
        self._store: Any = store

    def _open(self) -> Any:
        import tensorstore as ts

        try:
            store = ts.open({"driver": "n5", "kvstore": {"driver": "file", "path": self.path}}, read=True, open=True).result()
        except Exception as e:  # tensorstore raises ValueError / its own status errors
            raise LazyregError(f"path: tensorstore cannot open the N5 dataset {self.path}: {e}") from None
        return store.T

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_store": None}

    def __getitem__(self, index: Any) -> np.ndarray:
        if self._store is None:
            self._store = self._open()
        return np.asarray(self._store[index].read().result())


def load_field_array(
    path: str | os.PathLike, *, spacing: Any = None, origin: Any = None
) -> DisplacementField:
    """A lazy DisplacementField from a bare (z, y, x, 3) zarr array or N5 dataset (e.g. bigstream's deform).

    Parameters
    ----------
    path : str or path-like
        The array (zarr v2 / v3 folder, or an N5 dataset folder).
    spacing : float or 3 floats
        Voxel spacing (z, y, x) of the field's grid: bigstream's fields are on the fixed image's grid
        (the spacing given to bigstream as ``fix_spacing``). Required: a bare array does not store it.
    origin : float or 3 floats, optional
        Physical position of voxel (0, 0, 0); default 0 (bigstream's convention).

    Returns
    -------
    DisplacementField
        Lazy: chunks are read when computed.

    Raises
    ------
    LazyregError
        Missing ``spacing``, a shape other than (z, y, x, 3), or an unreadable array.

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from lazyreg.io.field_arrays import load_field_array
    >>> with tempfile.TemporaryDirectory() as d:
    ...     z = zarr.create_array(f"{d}/deform.zarr", shape=(4, 5, 6, 3), chunks=(2, 5, 6, 3), dtype="float32", zarr_format=2)
    ...     z[..., 2] = 1.5
    ...     D = load_field_array(f"{d}/deform.zarr", spacing=(2.0, 1.0, 1.0))
    ...     D.grid.spacing, D([0.0, 0.0, 0.0])
    ((2.0, 1.0, 1.0), array([0. , 0. , 1.5]))
    """
    p = Path(os.fspath(path)).resolve()
    if spacing is None:
        raise LazyregError(
            f"spacing: {p} is a bare array (e.g. bigstream's deform field), which does not store its voxel spacing; "
            "pass spacing=(z, y, x) of the grid it was computed on (bigstream: the fixed image's spacing), and origin= if not 0"
        )
    sp = check_spacing(spacing)
    org = check_origin((0.0, 0.0, 0.0) if origin is None else origin, sp)
    if _n5_dimensions(p) is not None:
        arr: Any = N5Array(p)
    else:
        try:
            arr = zarr.open_array(store=str(p), mode="r")
        except Exception as e:  # zarr raises several kinds for a broken array
            raise LazyregError(f"path: cannot open the zarr array {p}: {e}") from None
    if len(arr.shape) != 4 or arr.shape[-1] != 3:
        raise LazyregError(
            f"path: {p} has shape {tuple(arr.shape)}; a displacement field array must be (z, y, x, 3) "
            "with (dz, dy, dx) in physical units last"
        )
    chunks = tuple(int(c) for c in arr.chunks)
    data = da.from_array(arr, chunks=chunks, name="lazyreg-field-array-" + tokenize(str(p), file_stamp(p)), asarray=True)
    return DisplacementField.from_array(data, sp, org)
