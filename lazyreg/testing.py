"""Assertions and counters for testing code that uses lazyreg, as :mod:`xarray.testing` does for xarray.

* :func:`assert_images_allclose`: values *and* physical grid (shape, spacing, origin) agree.
* :func:`assert_transforms_allclose`: two transforms (or transform lists) map the points of a grid
  to within a tolerance, in voxels of that grid.
* :func:`count_tasks`: how many dask tasks a block of code runs (threaded and synchronous
  schedulers), e.g. to prove that building a graph computes nothing.
* :func:`counting_image`: a store-backed copy of an image that records every region read from it,
  e.g. to prove that a task reads only what it needs.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import xarray as xr
from dask.callbacks import Callback

from .images import Grid, grid_of
from .io.source import Source, from_source
from .metrics import transform_error

__all__ = [
    "assert_images_allclose",
    "assert_transforms_allclose",
    "count_tasks",
    "TaskCount",
    "counting_image",
    "ReadLog",
]


def assert_images_allclose(
    actual: xr.DataArray,
    desired: xr.DataArray,
    *,
    rtol: float = 1e-7,
    atol: float = 0.0,
    grid_rtol: float = 1e-9,
) -> None:
    """Assert that two images have the same physical grid and values within tolerances.

    Parameters
    ----------
    actual, desired : xarray.DataArray
        Images (lazy ones are computed).
    rtol, atol : float
        Tolerances of the values, as :func:`numpy.testing.assert_allclose`. NaNs compare equal.
    grid_rtol : float
        Relative tolerance of spacing and origin (origin relative to the spacing).

    Raises
    ------
    AssertionError
        Naming what differs: shape, spacing, origin or values (with the largest difference).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.testing import assert_images_allclose
    >>> a = lazyreg.image(np.ones((2, 3, 4)), spacing=(2, 1, 1))
    >>> assert_images_allclose(a, a + 1e-9, atol=1e-6)
    >>> assert_images_allclose(a, lazyreg.image(np.ones((2, 3, 4)), spacing=1))
    Traceback (most recent call last):
    ...
    AssertionError: spacing differs: (2.0, 1.0, 1.0) != (1.0, 1.0, 1.0)
    """
    ga, gd = grid_of(actual, "actual"), grid_of(desired, "desired")
    if ga.shape != gd.shape:
        raise AssertionError(f"shape differs: {ga.shape} != {gd.shape}")
    sp = np.asarray(gd.spacing)
    if not np.allclose(ga.spacing, gd.spacing, rtol=grid_rtol, atol=0):
        raise AssertionError(f"spacing differs: {ga.spacing} != {gd.spacing}")
    if not np.all(np.abs(np.subtract(ga.origin, gd.origin)) <= grid_rtol * sp + 1e-12):
        raise AssertionError(f"origin differs: {ga.origin} != {gd.origin}")
    np.testing.assert_allclose(
        np.asarray(actual.values), np.asarray(desired.values), rtol=rtol, atol=atol, equal_nan=True,
        err_msg="image values differ",
    )


def assert_transforms_allclose(actual: Any, desired: Any, grid: Grid | xr.DataArray, *, atol: float = 0.01, step: int = 4) -> None:
    """Assert that two transforms map every ``step``-th point of ``grid`` to within ``atol`` voxels.

    Parameters
    ----------
    actual, desired : Affine, DisplacementField or list of them
        Transforms (lists in lazyreg's order, the last applied first); lazy ones are computed.
    grid : Grid or xarray.DataArray
        Where to compare (usually the fixed image); distances are in its voxels.
    atol : float
        Largest allowed distance between mapped points, in voxels of ``grid`` (per-axis units).
    step : int
        Compare on every ``step``-th voxel along each axis.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.testing import assert_transforms_allclose
    >>> g = lazyreg.Grid((10, 10, 10), spacing=2.0)
    >>> assert_transforms_allclose(lazyreg.Affine.from_translation(0.01), lazyreg.Affine.identity(), g)
    >>> assert_transforms_allclose(lazyreg.Affine.from_translation(1.0), lazyreg.Affine.identity(), g)
    Traceback (most recent call last):
    ...
    AssertionError: transforms differ by up to 0.866 voxels (mean 0.866) > atol 0.01
    """
    g = grid if isinstance(grid, Grid) else grid_of(grid, "grid")
    d = transform_error(actual, desired, g, step=step)
    if d.max() > atol:
        raise AssertionError(f"transforms differ by up to {d.max():.3g} voxels (mean {d.mean():.3g}) > atol {atol:g}")


@dataclass
class TaskCount:
    """Tasks seen by :func:`count_tasks`: their number and keys.

    Examples
    --------
    >>> c = TaskCount(keys=[("lazyreg-block-1", 0, 0, 0), "other"])
    >>> c.n, c.named("lazyreg-block")
    (2, 1)
    """

    keys: list = field(default_factory=list)

    @property
    def n(self) -> int:
        """Number of tasks run."""
        return len(self.keys)

    def named(self, prefix: str) -> int:
        """Number of tasks whose key name starts with ``prefix``."""
        return sum(1 for k in self.keys if (k[0] if isinstance(k, tuple) else str(k)).startswith(prefix))


class _Counter(Callback):
    def __init__(self, count: TaskCount) -> None:
        super().__init__()
        self._count = count
        self._lock = threading.Lock()

    def _pretask(self, key: Any, dsk: Any, state: Any) -> None:
        with self._lock:
            self._count.keys.append(key)


@contextmanager
def count_tasks() -> Iterator[TaskCount]:
    """Count the dask tasks run inside the block (threaded and synchronous schedulers).

    Examples
    --------
    >>> import dask.array as da
    >>> from lazyreg.testing import count_tasks
    >>> with count_tasks() as c:
    ...     x = da.ones(10, chunks=5) + 1          # building a graph runs nothing
    >>> c.n
    0
    >>> with count_tasks() as c:
    ...     _ = x.compute(scheduler="sync")
    >>> c.n > 0
    True
    """
    count = TaskCount()
    with _Counter(count):
        yield count


_LOCK = threading.Lock()
_READS: dict[int, list] = {}


@dataclass
class ReadLog:
    """Regions read from a :func:`counting_image` (in this process), each a tuple of 3 slices.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img, log = counting_image(lazyreg.image(np.zeros((8, 8, 8)), 1.0), chunks=(8, 8, 8))
    >>> _ = img.values
    >>> log.voxels
    512
    """

    ident: int

    @property
    def reads(self) -> list:
        """Every region read so far, in order."""
        return _READS[self.ident]

    @property
    def voxels(self) -> int:
        """Total voxels read so far."""
        return int(sum(np.prod([s.stop - s.start for s in r]) for r in self.reads))

    def clear(self) -> None:
        """Forget the reads so far."""
        _READS[self.ident].clear()


class _CountingSource(Source):
    """An in-memory source that records every region it reads (shared by copies in this process)."""

    def __init__(self, values: np.ndarray, grid: Grid, chunks: Sequence[int], ident: int) -> None:
        self.values = values
        self.grid = grid
        self.dtype = values.dtype
        self.chunks = tuple(int(c) for c in chunks)
        self.ident = ident

    def read(self, index: tuple[slice, slice, slice]) -> np.ndarray:
        with _LOCK:
            _READS[self.ident].append(index)
        return self.values[index].copy()

    def token(self) -> str:
        return f"counting-{self.ident}"


def counting_image(img: xr.DataArray, chunks: Sequence[int] = (16, 16, 16)) -> tuple[xr.DataArray, ReadLog]:
    """A store-backed copy of an in-memory image, and the log of every region read from it.

    The copy behaves as an image opened with :func:`lazyreg.open_image`: tasks read regions from
    its source. Reads are recorded in this process only (threaded or synchronous schedulers).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.zeros((32, 32, 32)), 1.0))
    >>> _ = img[:16, :16, :16].values
    >>> len(log.reads), log.voxels
    (1, 4096)
    """
    ident = id(object()) ^ len(_READS)
    with _LOCK:
        while ident in _READS:
            ident += 1
        _READS[ident] = []
    src = _CountingSource(np.asarray(img.values), grid_of(img), chunks, ident)
    return from_source(src), ReadLog(ident)
