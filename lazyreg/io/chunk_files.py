"""Chunk files: which ones a zarr array or N5 dataset should have, which are there, which are missing.

A missing chunk file reads as the fill value (zeros) without a word, in zarr and N5 alike, and
writers skip chunks that hold only the fill value (zarr-python's default), so in a store written by
another program a missing chunk cannot be told from an empty one. lazyreg's writer
(:func:`lazyreg.to_zarr`) writes every chunk, empty ones included, and records their number and grid
in the group attributes (:data:`CHUNKS_ATTR`): for its stores a missing file is an error, found when
the store is opened (:func:`check_chunk_files`) and listed by ``lazyreg info --check``
(:func:`chunk_files`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Sequence

import dask
import numpy as np

from ..errors import LazyregError

__all__ = ["CHUNKS_ATTR", "VERIFY_MAX_CHUNKS", "ChunkFiles", "chunk_record", "check_chunk_files", "chunk_files"]

#: Group attribute of a store that lazyreg wrote whole, every chunk file included:
#: ``{"array": "0", "count": n, "grid": [chunks per axis], "prefix": "c"}`` (chunk keys
#: ``PREFIX/i/j/k``: ``c`` for zarr v3, ``""`` for lazyreg's zarr v2 stores), and for a pyramid
#: ``"levels"``: the same record for each level after the first.
CHUNKS_ATTR = "lazyreg_chunks"
#: Stores with more chunk files than this are not listed when opened (``lazyreg info --check`` is).
VERIFY_MAX_CHUNKS = 100_000
_ZARR_META = {"zarr.json", ".zarray", ".zattrs", ".zgroup"}
_SHOWN = 5


def chunk_record(grid: Sequence[int], array: str = "0", prefix: str = "c") -> dict:
    """The :data:`CHUNKS_ATTR` value of a written array whose chunk grid is ``grid`` (chunks per axis).

    ``prefix`` is the folder of the chunk keys inside the array: ``"c"`` (zarr v3) or ``""`` (zarr
    v2 with ``/``-separated keys).

    Examples
    --------
    >>> from lazyreg.io.chunk_files import chunk_record
    >>> chunk_record([2, 3, 1])
    {'array': '0', 'count': 6, 'grid': [2, 3, 1], 'prefix': 'c'}
    """
    grid = [int(g) for g in grid]
    return {"array": str(array), "count": int(np.prod(grid)), "grid": grid, "prefix": str(prefix)}


def _records(rec: Any) -> list[dict]:
    """The per-array records of a :data:`CHUNKS_ATTR` value (level 0, then the pyramid's levels)."""
    if not isinstance(rec, dict):
        return []
    levels = rec.get("levels")
    return [rec] + [r for r in (levels if isinstance(levels, list) else []) if isinstance(r, dict)]


def _files(root: Path, skip: set[str] = frozenset()) -> int:
    return sum(len([f for f in files if f not in skip]) for _, _, files in os.walk(root))


def _relpaths(root: Path, skip: set[str] = frozenset()) -> set[str]:
    return {
        Path(os.path.relpath(os.path.join(d, f), root)).as_posix() for d, _, files in os.walk(root) for f in files if f not in skip
    }


def check_chunk_files(attrs: Mapping[str, Any], where: Path) -> None:
    """Refuse a store written whole by lazyreg whose chunk files are not all there (they would read as zeros).

    Stores without :data:`CHUNKS_ATTR` (written by other programs, or by lazyreg before it recorded
    its chunks) and stores of more than :data:`VERIFY_MAX_CHUNKS` chunks are not checked, nor any with
    ``dask.config.set({"lazyreg.verify-chunks": False})`` (to read a damaged store anyway).

    Parameters
    ----------
    attrs : mapping
        The group's attributes.
    where : Path
        The group folder.

    Raises
    ------
    LazyregError
        Naming the store, the number of missing files and the first few.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg, zarr
    >>> from pathlib import Path
    >>> from lazyreg.io.chunk_files import check_chunk_files
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = lazyreg.to_zarr(lazyreg.image(np.zeros((4, 4, 4)), 1.0), Path(d, "a.ome.zarr"), chunks=2)
    ...     (p / "0/c/1/0/1").unlink()                  # a chunk file lost
    ...     check_chunk_files(zarr.open_group(p).attrs, p)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: path: ...a.ome.zarr is missing 1 of its 8 chunk files (0/c/1/0/1); they would read as zeros...
    """
    if not dask.config.get("lazyreg.verify-chunks", True):
        return
    records = _records(attrs.get(CHUNKS_ATTR))
    if sum(int(r.get("count", 0)) for r in records) > VERIFY_MAX_CHUNKS:
        return
    missing, count = [], 0
    for rec in records:
        n, array, prefix = int(rec.get("count", 0)), str(rec.get("array", "0")), str(rec.get("prefix", "c"))
        root = Path(where) / array / prefix if prefix else Path(where) / array
        count += n
        if _files(root, _ZARR_META) >= n:
            continue
        present = _relpaths(root, _ZARR_META)
        lead = f"{array}/{prefix}/" if prefix else f"{array}/"
        missing += [lead + k for k in ("/".join(map(str, i)) for i in np.ndindex(*rec.get("grid", []))) if k not in present]
    if not missing:
        return
    shown = ", ".join(missing[:_SHOWN]) + (", ..." if len(missing) > _SHOWN else "")
    raise LazyregError(
        f"path: {where} is missing {len(missing)} of its {count} chunk files ({shown}); they would read as zeros. "
        f"Write it again ('lazyreg info --check {where}' lists them all)"
    )


class ChunkFiles(NamedTuple):
    """What :func:`chunk_files` found: chunk files expected and present, the missing ones' keys.

    ``recorded`` is True for stores that lazyreg wrote whole (every chunk file must be there);
    otherwise a missing file may be an empty chunk that the writer skipped. ``missing`` (keys
    relative to the array folder, e.g. ``c/0/1/2``) is None unless names were asked for.

    Examples
    --------
    >>> from lazyreg.io.chunk_files import ChunkFiles
    >>> ChunkFiles(expected=8, present=7, missing=["c/1/0/1"], recorded=True).complete
    False
    """

    expected: int
    present: int
    missing: list[str] | None
    recorded: bool

    @property
    def complete(self) -> bool:
        """Whether no chunk file is missing."""
        return self.present >= self.expected if self.missing is None else not self.missing


def _recorded(array_dir: Path) -> dict | None:
    """The :data:`CHUNKS_ATTR` record of the group above ``array_dir`` if it describes that array."""
    try:
        if (array_dir.parent / "zarr.json").is_file():
            meta = json.loads((array_dir.parent / "zarr.json").read_text())
            attrs = meta.get("attributes", {}) if isinstance(meta, dict) else {}
        else:
            attrs = json.loads((array_dir.parent / ".zattrs").read_text())
    except (OSError, ValueError):
        return None
    found = [r for r in _records(attrs.get(CHUNKS_ATTR) if isinstance(attrs, dict) else None) if str(r.get("array")) == array_dir.name]
    return found[0] if found else None


def _layout(array_dir: Path) -> tuple[tuple[int, ...], Any, set[str]]:
    """(chunk grid, function coords -> key, metadata file names) of a zarr array or N5 dataset."""
    attrs_file = array_dir / "attributes.json"
    if not any((array_dir / m).is_file() for m in _ZARR_META) and attrs_file.is_file():
        a = json.loads(attrs_file.read_text())
        grid = tuple(-(-int(n) // int(b)) for n, b in zip(a["dimensions"], a["blockSize"]))
        return grid, lambda i: "/".join(map(str, i)), {"attributes.json"}
    import zarr

    arr = zarr.open_array(store=str(array_dir), mode="r")
    outer = getattr(arr.metadata, "chunk_grid", None)
    shape = tuple(outer.chunk_shape) if outer is not None else tuple(arr.metadata.chunks)
    grid = tuple(-(-int(n) // int(c)) for n, c in zip(arr.shape, shape))
    return grid, arr.metadata.encode_chunk_key, _ZARR_META


def chunk_files(array_dir: str | os.PathLike, *, names: bool = False) -> ChunkFiles:
    """Count the chunk (or shard) files of a zarr v2 / v3 array or an N5 dataset against its grid.

    Parameters
    ----------
    array_dir : str or path-like
        The array's folder (e.g. ``img.ome.zarr/0``) or the N5 dataset's.
    names : bool
        Also list the missing files' keys (reads every key; for ``lazyreg info --check``).

    Returns
    -------
    ChunkFiles

    Examples
    --------
    >>> import tempfile, numpy as np, zarr
    >>> from lazyreg.io.chunk_files import chunk_files
    >>> with tempfile.TemporaryDirectory() as d:   # zarr-python skips chunks that are all fill value
    ...     a = zarr.create_array(d + "/a.zarr", shape=(4, 4, 4), chunks=(2, 2, 2), dtype="uint8", fill_value=0)
    ...     a[:2] = 1
    ...     chunk_files(d + "/a.zarr", names=True)
    ChunkFiles(expected=8, present=4, missing=['c/1/0/0', 'c/1/0/1', 'c/1/1/0', 'c/1/1/1'], recorded=False)
    """
    array_dir = Path(array_dir)
    grid, key, meta = _layout(array_dir)
    rec = _recorded(array_dir)
    expected = int(rec["count"]) if rec else int(np.prod(grid))
    if not names:
        return ChunkFiles(expected, _files(array_dir, meta), None, rec is not None)
    present = _relpaths(array_dir, meta)
    missing = [k for k in (key(i) for i in np.ndindex(*grid)) if k not in present]
    return ChunkFiles(expected, expected - len(missing), missing, rec is not None)
