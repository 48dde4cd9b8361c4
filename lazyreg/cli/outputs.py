"""A command's outputs: checked before anything runs, removed after a failed run; JSON reports and pictures.

Existing outputs are never replaced without ``--overwrite``, and no output may be, contain or sit
inside an input. Output folders must be writable (checked before anything runs), and a command
holds the writer lock of its output (:mod:`lazyreg.io.locks`) for the whole run: a second command
writing the same output fails at once.
"""

from __future__ import annotations

import json
import os
import shutil
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

from ..errors import LazyregError
from ..io.locks import LOCK_SUFFIX, acquire_lock, check_writable
from .session import has_module

if TYPE_CHECKING:
    from .session import Session

__all__ = [
    "prepare_folder",
    "prepare_file",
    "check_not_input",
    "output_guard",
    "write_json",
    "jsonable",
    "describe",
    "pictures",
    "quality_pictures",
]

_NO_MATPLOTLIB = "matplotlib is not installed (pip install 'lazyreg[plot]')"


def prepare_folder(path: str, overwrite: bool) -> Path:
    """An output folder OUT: refused if it is a file, or a non-empty folder without ``overwrite``.

    Examples
    --------
    >>> import tempfile
    >>> from lazyreg.cli.outputs import prepare_folder
    >>> with tempfile.TemporaryDirectory() as d:
    ...     prepare_folder(d + "/out", overwrite=False).name
    'out'
    """
    out = Path(path).expanduser()
    if out.exists() and not out.is_dir():
        raise LazyregError(f"output: {out} exists and is not a folder")
    if out.is_dir() and any(p.name != LOCK_SUFFIX for p in out.iterdir()) and not overwrite:
        raise LazyregError(f"output: {out} exists and is not empty; pass --overwrite to replace its outputs, or choose another folder")
    if not out.parent.exists():
        raise LazyregError(f"output: the parent folder {out.parent} does not exist")
    check_writable(out if out.is_dir() else out.parent, f"output: {out}")
    return out


def prepare_file(path: str, overwrite: bool) -> Path:
    """An output file (or store) OUT: refused if it exists without ``overwrite`` (an empty folder is fine),
    or if its folder is not writable.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from lazyreg.cli.outputs import prepare_file
    >>> with tempfile.TemporaryDirectory() as d:
    ...     _ = Path(d, "report.json").write_text("{}")
    ...     prepare_file(d + "/report.json", overwrite=False)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: output: ... exists; pass --overwrite to replace it
    """
    out = Path(path).expanduser()
    if out.exists():
        empty_dir = out.is_dir() and not any(out.iterdir())
        if not empty_dir and not overwrite:
            raise LazyregError(f"output: {out} exists; pass --overwrite to replace it")
    if not out.parent.exists():
        raise LazyregError(f"output: the parent folder {out.parent} does not exist")
    check_writable(out.parent, f"output: {out}")
    return out


def check_not_input(outputs: Sequence[Path], inputs: Sequence[Path], folder: Path | None = None) -> None:
    """Refuse outputs that are, contain or sit inside an input (and a folder OUT inside an input).

    Examples
    --------
    >>> from pathlib import Path
    >>> from lazyreg.cli.outputs import check_not_input
    >>> fix = Path("fix.ome.zarr").resolve()
    >>> check_not_input([Path("out.ome.zarr")], [fix])
    >>> check_not_input([Path("fix.ome.zarr/0")], [fix])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: output: ... would overwrite or sit inside the input ...; choose another output
    """
    for i in inputs:
        if folder is not None and (folder.resolve() == i or i in folder.resolve().parents):
            raise LazyregError(f"output: {folder} is or sits inside the input {i}; choose another output folder")
        for o in outputs:
            o = o.resolve()
            if o == i or i in o.parents or o in i.parents:
                raise LazyregError(f"output: {o} would overwrite or sit inside the input {i}; choose another output")


@contextmanager
def output_guard(out: Path, folder: bool = False) -> Iterator[Path]:
    """Lock OUT for the run (creating it first if it is a folder); if the run fails and OUT did not
    exist before, remove it.

    A failed run therefore leaves no partial output behind unless OUT was there already (then
    ``--overwrite`` was given, or OUT was an empty folder). The writer lock (beside OUT, or inside
    an OUT folder: :func:`lazyreg.io.locks.acquire_lock`) is taken before anything is written or
    removed, so a second command writing OUT fails at once and never deletes the first one's output.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from lazyreg.cli.outputs import output_guard
    >>> with tempfile.TemporaryDirectory() as d:
    ...     out = Path(d, "out")
    ...     try:
    ...         with output_guard(out, folder=True):
    ...             _ = (out / "half-written.txt").write_text("...")
    ...             raise RuntimeError("the run failed")
    ...     except RuntimeError:
    ...         pass
    ...     out.exists()
    False
    """
    existed = out.exists()
    if folder:
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise LazyregError(f"output: cannot create the folder {out} ({e.strerror or e})") from None
    lock = acquire_lock(out, inside=folder, reentrant=True)  # this command's own writes may take it again
    try:
        yield out
    except BaseException:
        if not existed:
            if out.is_dir():
                shutil.rmtree(out, ignore_errors=True)
            elif out.exists():
                out.unlink()
        raise
    finally:
        lock.release()


def jsonable(o: Any) -> Any:
    """``json.dumps(default=...)``: numpy arrays and scalars as numbers, sets as sorted lists, else ``str``.

    Examples
    --------
    >>> import json, numpy as np
    >>> from lazyreg.cli.outputs import jsonable
    >>> json.dumps({"n": np.int64(3), "m": np.eye(2), "s": {2, 1}}, default=jsonable)
    '{"n": 3, "m": [[1.0, 0.0], [0.0, 1.0]], "s": [1, 2]}'
    """
    import numpy as np

    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    return str(o)


def write_json(path: Path, data: dict) -> None:
    """Write ``data`` as indented JSON, atomically (a temporary file beside ``path``, then renamed).

    Examples
    --------
    >>> import tempfile, numpy as np
    >>> from pathlib import Path
    >>> from lazyreg.cli.outputs import write_json
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write_json(Path(d, "report.json"), {"pearson": np.float32(0.5)})
    ...     Path(d, "report.json").read_text()
    '{\\n  "pearson": 0.5\\n}\\n'
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, default=jsonable) + "\n")
    os.replace(tmp, path)


def describe(img: Any, spec: str) -> dict:
    """An image's grid, dtype, chunks and units, for reports (``spec``: how it was given).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.cli.outputs import describe
    >>> img = lazyreg.image(np.zeros((4, 6, 8), np.uint16), spacing=(2.0, 1.0, 1.0)).chunk(4)
    >>> d = describe(img, "fix.ome.zarr")
    >>> d["shape"], d["spacing"], d["dtype"], d["chunks"]
    ([4, 6, 8], [2.0, 1.0, 1.0], 'uint16', [4, 4, 4])
    """
    from ..images import grid_of

    spatial, other = img, {}
    for d in [d for d in img.dims if d not in ("z", "y", "x")]:  # channels, time points
        other[d] = [v.item() for v in img[d].values] if d in img.coords else list(range(img.sizes[d]))
        spatial = spatial.isel({d: 0})
    g = grid_of(spatial)
    return {
        "path": spec,
        "shape": list(img.shape),
        "spacing": list(g.spacing),
        "origin": list(g.origin),
        "dtype": str(img.dtype),
        "chunks": list(img.data.chunksize),
        "units": img.attrs.get("units"),
        **({"non_spatial": other} if other else {}),
    }


def pictures(session: Session, out: Path, draw: dict[str, Callable[[Path], Any]]) -> dict:
    """Write the pictures of ``draw`` (name -> function(path)) into ``out`` when matplotlib is importable.

    Returns what goes into the report: ``{"written": [names]}``, or ``{"skipped": reason}`` (also
    said on stderr) without matplotlib.

    Examples
    --------
    >>> import argparse, tempfile
    >>> from pathlib import Path
    >>> from lazyreg.cli.outputs import pictures
    >>> from lazyreg.cli.session import Session
    >>> s = Session(argparse.Namespace(quiet=True, argv=[]))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     pictures(s, Path(d), {"note.txt": lambda p: p.write_text("a picture")})
    {'written': ['note.txt']}
    """
    if not has_module("matplotlib"):
        session.info(f"pictures skipped: {_NO_MATPLOTLIB}")
        return {"skipped": _NO_MATPLOTLIB}
    written = []
    for name, fn in draw.items():
        fn(out / name)
        written.append(name)
    return {"written": written}


def quality_pictures(fixed: Any, before: Any, after: Any, blocks: list | None = None) -> dict[str, Callable[[Path], Any]]:
    """The pictures of an alignment, for :func:`pictures`: overlays before and after, and the block map.

    ``blocks`` (the block report of ``align_piecewise``) adds ``block_map.png``.

    Examples
    --------
    >>> from lazyreg.cli.outputs import quality_pictures
    >>> sorted(quality_pictures(None, None, None, blocks=[]))  # nothing is drawn until called
    ['block_map.png', 'overlay_after.png', 'overlay_before.png']
    """
    from .. import plot

    draw = {
        "overlay_before.png": lambda p: plot.overlay(fixed, before, title="before alignment (fixed magenta, moving green)", path=p, overwrite=True),
        "overlay_after.png": lambda p: plot.overlay(fixed, after, title="after alignment (fixed magenta, moving green)", path=p, overwrite=True),
    }
    if blocks is not None:
        draw["block_map.png"] = lambda p: plot.block_map(blocks, title="per-block outcome", path=p, overwrite=True)
    return draw
