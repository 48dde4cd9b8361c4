"""How a registration task gets its images: as recipes it runs only when its result is not cached.

A registration result is reused across computations (:mod:`lazyreg.result_cache`), so its inputs
must not be read before the task knows it needs them. Each function here returns a *recipe*
(see :class:`lazyreg.result_cache.Deferred`) plus the graph keys it refers to:

* a store-backed image (:func:`lazyreg.io.source.find_source`) is read inside the task;
* an in-memory image is passed as it is (it is in the graph already);
* any other dask image stays a graph dependency (it runs each time the graph runs).
"""

from __future__ import annotations

import itertools
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..images import Grid, grid_of, image
from ..io.source import find_source, read_region
from ..result_cache import Ref

__all__ = ["image_recipe", "in_memory", "single_chunk_recipe", "sample_recipe", "sample_boxes", "SAMPLE_BOX", "SAMPLE_BOXES"]

#: Side (voxels) of the boxes a foreground sample is read from, and most boxes read.
SAMPLE_BOX = 64
SAMPLE_BOXES = 64


def _store_image(source: Any, start: tuple, step: tuple, region: tuple, g: Grid) -> xr.DataArray:
    return image(read_region(source, start, step, region), g.spacing, g.origin)


def _in_memory(img: xr.DataArray) -> xr.DataArray:
    return img.compute()


def image_recipe(img: xr.DataArray | None, deps: list, collections: list) -> Any:
    """A recipe giving ``img`` in memory; graph keys it needs are appended to ``deps``.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.result_cache import Deferred
    >>> img = lazyreg.image(np.ones((2, 2, 2)), 1.0)
    >>> deps, cols = [], []
    >>> Deferred(image_recipe(img, deps, cols)).evaluate([]).shape, deps
    ((2, 2, 2), [])
    """
    if img is None or not isinstance(img.data, da.Array):
        return img
    found = find_source(img)
    if found is not None:
        source, start, step = found
        region = tuple(slice(0, n) for n in img.shape)
        return (_store_image, source, start, step, region, grid_of(img))
    d = dask.delayed(_in_memory, pure=True)(img)
    collections.append(d)
    deps.append(d.key)
    return Ref(len(deps) - 1)


def in_memory(img: xr.DataArray) -> xr.DataArray:
    """``img`` in memory, now: a store-backed image read in one piece (as :func:`image_recipe`'s
    recipe reads it), any other dask image computed.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.ones((8, 8, 8)), 1.0), chunks=(4, 4, 4))
    >>> type(in_memory(img).data).__name__, len(log.reads)
    ('ndarray', 1)
    """
    if not isinstance(img.data, da.Array):
        return img
    found = find_source(img)
    if found is None:
        return _in_memory(img)
    source, start, step = found
    return _store_image(source, start, step, tuple(slice(0, n) for n in img.shape), grid_of(img))


def single_chunk_recipe(x: da.Array | None, deps: list, collections: list) -> Any:
    """A recipe computing a one-chunk dask array inside the task that holds it.

    The array's own task becomes the recipe; the graph keys that task refers to (e.g. the moving
    image's reader, a lazy static affine) stay dependencies, appended to ``deps``. An array whose
    task cannot be taken apart is a dependency as a whole.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.source import region_array
    >>> from lazyreg.result_cache import Deferred
    >>> from lazyreg.testing import counting_image
    >>> img, log = counting_image(lazyreg.image(np.ones((8, 8, 8)), 1.0))
    >>> deps, cols = [], []
    >>> recipe = single_chunk_recipe(region_array(img, (slice(0, 4),)), deps, cols)
    >>> deps, log.reads   # nothing to wait for, nothing read yet
    ([], [])
    >>> Deferred(recipe).evaluate([]).shape
    (4, 8, 8)
    """
    if x is None:
        return None
    if x.npartitions != 1:
        x = x.rechunk(x.shape)
    graph = x.__dask_graph__()
    key = (x.name,) + (0,) * x.ndim
    layer = graph.layers.get(x.name)
    task = layer.get(key) if layer is not None else None
    collections.append(x)
    if not (isinstance(task, tuple) and task and callable(task[0])):
        deps.append(key)
        return Ref(len(deps) - 1)
    keys = set(graph.keys()) - {key}

    def convert(a: Any) -> Any:
        if isinstance(a, tuple) and a and callable(a[0]):
            return (a[0],) + tuple(convert(b) for b in a[1:])
        if isinstance(a, list):
            return [convert(b) for b in a]
        try:
            is_key = a in keys
        except TypeError:
            is_key = False
        if is_key:
            deps.append(a)
            return Ref(len(deps) - 1)
        return a

    return convert(task)


def sample_boxes(shape: tuple[int, ...]) -> list[tuple[slice, slice, slice]]:
    """At most :data:`SAMPLE_BOXES` boxes of :data:`SAMPLE_BOX` voxels, spread evenly over ``shape``.

    Examples
    --------
    >>> len(sample_boxes((149, 241, 456))), sample_boxes((10, 10, 10))
    (64, [(slice(0, 10, None), slice(0, 10, None), slice(0, 10, None))])
    """
    nb = [int(np.ceil(n / SAMPLE_BOX)) for n in shape]
    ids = list(itertools.product(*(range(k) for k in nb)))
    if len(ids) > SAMPLE_BOXES:
        ids = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, SAMPLE_BOXES).round().astype(int)]
    return [tuple(slice(i * SAMPLE_BOX, min((i + 1) * SAMPLE_BOX, n)) for i, n in zip(b, shape)) for b in ids]


def _strided(values: np.ndarray, k: int) -> np.ndarray:
    return np.asarray(values)[::k, ::k, ::k].ravel()


def sample_recipe(img: xr.DataArray, max_values: int, deps: list, collections: list) -> Any:
    """A recipe giving a sample of about ``max_values`` voxels of ``img`` (1-D), from evenly
    spread boxes, every ``k``-th voxel of each; the same voxels whatever the image's backing.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.result_cache import Deferred
    >>> img = lazyreg.image(np.arange(1000.0).reshape(10, 10, 10), 1.0)
    >>> Deferred(sample_recipe(img, 200, [], [])).evaluate([]).size
    125
    """
    boxes = sample_boxes(img.shape)
    nvox = sum(int(np.prod([s.stop - s.start for s in b])) for b in boxes)
    k = max(1, int(np.ceil((nvox / max_values) ** (1 / 3))))
    found = find_source(img)
    parts = []
    for b in boxes:
        if found is not None:
            part = (read_region, *found, b)
        elif not isinstance(img.data, da.Array):
            part = np.asarray(img.data[b])
        else:
            part = single_chunk_recipe(img.data[b], deps, collections)
        parts.append((_strided, part, k))
    return (np.concatenate, parts)
