"""Where a write goes: refuse an existing output (unless asked), or one the data are read from.

:func:`prepare_target` is what :func:`lazyreg.to_zarr` checks before it writes anything: an
existing path is replaced only with ``overwrite=True``, never when the image being written reads
from it (every lazyreg source in the graph is found by :func:`source_paths`), never when it is not
a zarr store, and the old store is moved aside in one step before it is deleted, so that a failure
leaves it whole.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import uuid
from pathlib import Path

import dask.array as da
import numpy as np
from dask.highlevelgraph import MaterializedLayer

from ..errors import LazyregError
from .source import Source
from .zarr_read import is_zarr

__all__ = ["source_paths", "prepare_target"]

_log = logging.getLogger("lazyreg")


def source_paths(arr: da.Array) -> list[Path]:
    """Folders / files that lazyreg sources anywhere in the graph of ``arr`` read from.

    Sources sit in graph layers, in task arguments (the reader task of ``apply_transform``, a
    chunk's plan), in recipes run inside tasks (:class:`lazyreg.result_cache.Deferred`) and inside
    chunk caches: every task and its arguments are walked, so that a write can never delete what
    it reads.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> from lazyreg.io.write_target import source_paths
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = lazyreg.to_zarr(lazyreg.image(np.zeros((2, 3, 4)), 1.0), d + "/a.ome.zarr")
    ...     source_paths(lazyreg.open_image(p).data + 1) == [p / "0"]
    True
    """
    out: list[Path] = []
    seen: set[int] = set()
    # only materialized layers hold sources (lazyreg's own layers are); walking a blockwise
    # layer would materialize it
    stack: list = [layer for layer in arr.dask.layers.values() if isinstance(layer, MaterializedLayer)]
    while stack:
        v = stack.pop()
        if id(v) in seen or isinstance(v, (str, bytes, int, float, np.ndarray, np.generic)) or v is None:
            continue
        seen.add(id(v))
        if isinstance(v, Source):
            if getattr(v, "path", None) is not None:
                out.append(Path(v.path).resolve())
            inner = getattr(v, "inner", None)
            if inner is not None:
                stack.append(inner)
            continue
        if isinstance(v, MaterializedLayer):
            stack.extend(v.mapping.values())
        elif isinstance(v, dict):
            stack.extend(v.values())
        elif isinstance(v, (tuple, list, set, frozenset)):
            stack.extend(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            stack.extend(getattr(v, f.name) for f in dataclasses.fields(v))
        else:
            for attr in ("value", "args", "kwargs", "spec", "dependencies"):
                if hasattr(v, attr) and not callable(getattr(v, attr)):
                    stack.append(getattr(v, attr))
    return out


def prepare_target(path: Path, overwrite: bool, arr: da.Array) -> None:
    """Refuse an existing path (unless ``overwrite``) or one the data are read from; remove old content.

    Raises
    ------
    LazyregError
        ``path`` exists without ``overwrite``; ``arr`` reads from ``path``; ``path`` is not a zarr
        store; a folder of the old store is not writable (it is then left as it was).

    Examples
    --------
    >>> import tempfile, dask.array as da
    >>> from pathlib import Path
    >>> from lazyreg.io.write_target import prepare_target
    >>> with tempfile.TemporaryDirectory() as d:
    ...     Path(d, "notes").mkdir(); Path(d, "notes", "a.txt").write_text("keep")
    ...     prepare_target(Path(d, "notes"), True, da.zeros(3))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: path: .../notes exists and is not a zarr store; refusing to delete it
    """
    if not path.exists():
        return
    if not overwrite:
        raise LazyregError(f"path: {path} exists; pass overwrite=True to replace it")
    for src in source_paths(arr):
        if src == path or path in src.parents or src in path.parents:
            raise LazyregError(
                f"path: {path} cannot be overwritten: the image being written is read from {src}; write elsewhere"
            )
    if not path.is_dir() or (any(path.iterdir()) and not is_zarr(path)):
        raise LazyregError(f"path: {path} exists and is not a zarr store; refusing to delete it")
    _remove_store(path)


def _remove_store(path: Path) -> None:
    """Delete an old store such that a failure leaves it whole and openable.

    Every folder of the store must be writable (else nothing is touched); the store is then renamed
    aside in one step and the renamed copy deleted.
    """
    for folder, _dirs, _files in os.walk(path):
        if not os.access(folder, os.W_OK | os.X_OK):
            raise LazyregError(
                f"path: {path} cannot be overwritten: {folder} is not writable, so the old store cannot be deleted; "
                "it is left as it was (make it writable, or write elsewhere)"
            )
    aside = path.with_name(f".{path.name}.lazyreg-old-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(path, aside)
    except OSError as e:
        raise LazyregError(
            f"path: {path} cannot be overwritten: it cannot be moved aside ({e.strerror or e}); it is left as it was"
        ) from None
    try:
        shutil.rmtree(aside)
    except OSError as e:  # the old store is out of the way: write anyway, and say what is left
        _log.warning("the old content of %s, moved to %s, could not be deleted (%s); delete it by hand", path, aside, e)
