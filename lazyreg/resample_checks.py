"""Checks of :func:`lazyreg.apply_transform`'s arguments and of the data its tasks read.

Everything that can be decided when the graph is built is checked then (fill value against the
output dtype, output chunking, singular affines, the size of the moving region one task reads);
what needs voxel values (infinite values, NaN under cubic interpolation) is checked by the tasks
on the regions they read anyway, never by an extra pass over the image.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Sequence

import dask
import numpy as np
from dask.utils import format_bytes

from .errors import LazyregError, LazyregWarning
from .images import Grid
from .io.chunk_cache import chunk_cache_bytes
from .transforms.affine import Affine
from .validation import MAX_CONDITION, affine_condition, config_number

__all__ = [
    "check_fill_value",
    "check_output_chunks",
    "warn_singular_affines",
    "max_region_bytes",
    "check_region_bytes",
    "check_moving_values",
    "SMALL_CHUNK_BYTES",
    "MAX_SMALL_CHUNK_TASKS",
    "MANY_TASKS",
]

#: Output chunks below this size are dominated by per-task overhead (about 0.3 ms to build and
#: 1.5 ms to schedule a task, measured on 2 cores, vs about 1 ms to resample 64 KiB).
SMALL_CHUNK_BYTES = 64 * 2**10
#: At most this many output tasks of chunks below :data:`SMALL_CHUNK_BYTES` (dask config
#: ``lazyreg.max-small-chunk-tasks``); ``chunks=1`` on 48 x 64 x 64 voxels made 196,608 tasks
#: and took 60 s to build.
MAX_SMALL_CHUNK_TASKS = 10_000
#: Above this many output tasks, whatever their size, a warning (building takes minutes).
MANY_TASKS = 1_000_000
#: Default bound of the moving region one task reads, as a multiple of the chunk cache.
REGION_CACHE_FACTOR = 4


def check_fill_value(fill_value: Any, dtype: np.dtype) -> float:
    """``fill_value`` as a float that the output dtype (moving's) can hold.

    Integer (and boolean) outputs need a finite fill value (out-of-range finite values are
    clipped, as voxel values are); float outputs take NaN and infinities, but not a finite value
    beyond the dtype's range.

    Examples
    --------
    >>> import numpy as np
    >>> check_fill_value(0, np.dtype(np.uint16))
    0.0
    >>> check_fill_value(np.nan, np.dtype(np.uint8))
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fill_value: nan cannot be stored in the output dtype uint8 (apply_transform's output has moving's dtype); pass a finite fill_value (e.g. 0), or resample a float image: apply_transform(fixed, moving.astype("float32"), ..., fill_value=np.nan)
    """
    try:
        fill = float(fill_value)
    except (TypeError, ValueError):
        raise LazyregError(f"fill_value: expected a number, got {fill_value!r}") from None
    dt = np.dtype(dtype)
    if (np.issubdtype(dt, np.integer) or dt == np.bool_) and not math.isfinite(fill):
        raise LazyregError(
            f"fill_value: {fill} cannot be stored in the output dtype {dt} (apply_transform's output has "
            'moving\'s dtype); pass a finite fill_value (e.g. 0), or resample a float image: '
            f'apply_transform(fixed, moving.astype("float32"), ..., fill_value={"-" if fill < 0 else ""}np.{abs(fill)})'
        )
    if np.issubdtype(dt, np.floating) and math.isfinite(fill) and abs(fill) > float(np.finfo(dt).max):
        raise LazyregError(
            f"fill_value: {fill:g} overflows the output dtype {dt} (largest {float(np.finfo(dt).max):.3g}); "
            "pass a smaller fill_value, or resample moving.astype('float64')"
        )
    return fill


def _about_4mib(shape: Sequence[int], dtype: np.dtype) -> tuple:
    side = max(1, round((4 * 2**20 / np.dtype(dtype).itemsize) ** (1 / 3)))
    return tuple(min(side, int(n)) for n in shape)


def check_output_chunks(chunks: Sequence[Sequence[int]], dtype: np.dtype, requested: Any) -> tuple:
    """The output chunks to use: refuse many tiny chunks; warn above :data:`MANY_TASKS` tasks.

    ``chunks`` are the normalised output chunks (one task each), ``requested`` what the caller
    passed. When ``requested`` is None (the default follows moving's chunks) and moving's chunks
    are many and tiny, chunks of about 4 MiB are returned instead of an error.

    Raises
    ------
    LazyregError
        More than :data:`MAX_SMALL_CHUNK_TASKS` tasks (dask config
        ``lazyreg.max-small-chunk-tasks``) whose largest chunk is below :data:`SMALL_CHUNK_BYTES`.

    Examples
    --------
    >>> import numpy as np
    >>> check_output_chunks(((64,) * 4, (64,) * 4, (64,) * 4), np.dtype(np.uint16), None)[0]
    (64, 64, 64, 64)
    >>> check_output_chunks(((1,) * 48, (1,) * 64, (1,) * 64), np.dtype(np.float32), None)
    ((48,), (64,), (64,))
    >>> check_output_chunks(((1,) * 48, (1,) * 64, (1,) * 64), np.dtype(np.float32), 1)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: chunks: 1 makes 196,608 output tasks of at most 4 B each; lazyreg refuses more than 10,000 tasks with chunks under 64.00 kiB (per-task overhead, about 0.3 ms to build and 1.5 ms to run each, would dominate). Pass larger chunks, e.g. chunks=(48, 64, 64) (1 task of 768.00 kiB), or raise dask config lazyreg.max-small-chunk-tasks
    """
    chunks = tuple(tuple(int(n) for n in c) for c in chunks)
    itemsize = np.dtype(dtype).itemsize
    ntasks = math.prod(len(c) for c in chunks)
    largest = math.prod(max(c) for c in chunks) * itemsize
    limit = config_number("lazyreg.max-small-chunk-tasks", MAX_SMALL_CHUNK_TASKS, minimum=1)
    if ntasks > limit and largest < SMALL_CHUNK_BYTES:
        shape = [sum(c) for c in chunks]
        better = _about_4mib(shape, dtype)
        if requested is None:  # moving's chunks are tiny: do not follow them
            return tuple(tuple([b] * (n // b) + ([n % b] if n % b else [])) for n, b in zip(shape, better))
        n_better = math.prod(-(-n // b) for n, b in zip(shape, better))
        size = format_bytes(math.prod(better) * itemsize)
        raise LazyregError(
            f"chunks: {requested!r} makes {ntasks:,} output tasks of at most {format_bytes(largest)} each; "
            f"lazyreg refuses more than {limit:,} tasks with chunks under {format_bytes(SMALL_CHUNK_BYTES)} (per-task "
            "overhead, about 0.3 ms to build and 1.5 ms to run each, would dominate). Pass larger chunks, e.g. "
            f"chunks={better} ({n_better:,} task{'s' if n_better != 1 else ''} of {size}), or raise dask config "
            "lazyreg.max-small-chunk-tasks"
        )
    if ntasks > MANY_TASKS:
        what = "the default output chunking (moving's chunks)" if requested is None else f"chunks={requested!r}"
        warnings.warn(
            f"{what} makes {ntasks:,} output tasks (more than {MANY_TASKS:,}): building the graph takes minutes "
            "and the scheduler needs gigabytes; pass larger chunks",
            LazyregWarning,
            stacklevel=3,
        )
    return chunks


def warn_singular_affines(transforms: Sequence[Any], argname: str = "transforms") -> None:
    """Warn about concrete affines of the list whose linear part is singular (condition > 1e12).

    Resampling through such an affine is defined (every fixed voxel still samples one moving
    point) but collapses a direction: the output is constant along it, which is almost always
    a wrong matrix (a zero scale, a missing row, xyz vs zyx). Lazy affines are not computed here.

    Examples
    --------
    >>> import numpy as np, warnings
    >>> from lazyreg import Affine
    >>> warn_singular_affines([Affine.identity()])
    >>> with warnings.catch_warnings(record=True) as w:
    ...     warnings.simplefilter("always")
    ...     warn_singular_affines([Affine(np.diag([0.0, 1.0, 1.0, 1.0]))])
    >>> str(w[0].message)[:59]
    'transforms[0]: the affine is singular (condition number inf'
    """
    for i, t in enumerate(transforms):
        if not isinstance(t, Affine) or t.is_lazy:
            continue
        cond = affine_condition(t.matrix)
        if cond > MAX_CONDITION:
            _, s, vt = np.linalg.svd(np.asarray(t.matrix)[:3, :3])
            flat = vt[-1] / np.abs(vt[-1]).max()
            warnings.warn(
                f"{argname}[{i}]: the affine is singular (condition number {cond:.3g} > {MAX_CONDITION:g}): it maps "
                f"the fixed direction (z, y, x) = {tuple(np.round(flat, 3).tolist())} to (almost) nothing, so the "
                "output is constant along it. Check the matrix (a zero scale? xyz instead of zyx order?)",
                LazyregWarning,
                stacklevel=3,
            )


def max_region_bytes() -> int:
    """Most bytes of moving region one resampling task may read: dask config
    ``lazyreg.max-region-bytes`` (an int or e.g. ``"1 GiB"``), default 4 x the chunk cache
    (``lazyreg.chunk-cache-bytes``, 128 MiB by default, so 512 MiB).

    Examples
    --------
    >>> import dask
    >>> max_region_bytes() == 4 * 128 * 2**20
    True
    >>> with dask.config.set({"lazyreg.max-region-bytes": "1 GiB"}):
    ...     max_region_bytes()
    1073741824
    """
    return config_number("lazyreg.max-region-bytes", REGION_CACHE_FACTOR * max(1, chunk_cache_bytes()), minimum=1)


def check_region_bytes(region: Sequence[slice], itemsize: int, out: Grid, bound: int) -> None:
    """Refuse a task whose moving region (index slices) exceeds ``bound`` bytes, with advice.

    Raises
    ------
    LazyregError
        Naming ``moving``, the region and chunk sizes, the bound, and what to do: read a
        downsampled moving image (a coarser pyramid level, or block averages with
        ``moving.coarsen``), use smaller output chunks, or raise ``lazyreg.max-region-bytes``.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> out = Grid((4, 4, 4), 32.0)
    >>> check_region_bytes((slice(0, 10),) * 3, 2, out, 2**20)
    >>> try:
    ...     check_region_bytes((slice(0, 1024),) * 3, 2, out, 2**20)
    ... except LazyregError as e:
    ...     print(str(e).split(", more")[0])
    moving: one output chunk of (4, 4, 4) voxels (128 B) needs a moving region of (1024, 1024, 1024) voxels (2.00 GiB)
    """
    shape = tuple(int(s.stop - s.start) for s in region)
    nbytes = math.prod(shape) * int(itemsize)
    if nbytes <= bound:
        return
    factors = tuple(max(1, int(r // max(1, c))) for r, c in zip(shape, out.shape))
    raise LazyregError(
        f"moving: one output chunk of {out.shape} voxels ({format_bytes(math.prod(out.shape) * int(itemsize))}) needs a "
        f"moving region of {shape} voxels ({format_bytes(nbytes)}), more than the bound of {format_bytes(bound)} per "
        "task (dask config lazyreg.max-region-bytes, default 4 x lazyreg.chunk-cache-bytes): the fixed grid is much "
        "coarser than the moving image. Downsample the moving image first: a coarser level, "
        "lazyreg.open_image(path, level=...), or block averages, "
        f'moving.coarsen(z={factors[0]}, y={factors[1]}, x={factors[2]}, boundary="trim").mean() '
        "(which also avoids aliasing); or pass smaller output chunks; or raise lazyreg.max-region-bytes"
    )


def check_moving_values(values: np.ndarray, order: int, region: Sequence[slice] | None = None) -> None:
    """Refuse infinite moving values (any order), and NaN under cubic interpolation (``order=3``).

    Called by each task on the region it has read, slab by slab as :func:`resample_array
    <lazyreg.interpolation.resample_array>` copies it into ITK (no pass of its own). SimpleITK
    clamps infinities to the dtype's largest value and interpolation turns their neighbours into
    NaN; the cubic prefilter spreads a NaN over the whole region a task reads, so the result
    would depend on the output chunks. NaN with ``order`` 0 or 1 stays local (the voxel itself,
    or the output voxels whose 8 neighbours include it) and is allowed as "no data".

    Examples
    --------
    >>> import numpy as np
    >>> check_moving_values(np.array([[[1.0, np.nan]]]), 1)
    >>> check_moving_values(np.array([[[1.0, np.inf]]]), 0, (slice(0, 1),) * 3)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: moving: contains infinite values (in moving voxels z 0:1, y 0:1, x 0:1); SimpleITK clamps them to the dtype's largest value and interpolation makes their neighbours NaN. Replace them first, e.g. moving.where(np.isfinite(moving), 0)
    """
    if not np.issubdtype(values.dtype, np.floating) or values.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = np.add.reduce(values, axis=None)  # one pass, no temporary: NaN and inf propagate
    if math.isfinite(total):
        return
    lo, hi = values.min(), values.max()  # (the sum also overflows for large finite values)
    if math.isfinite(lo) and math.isfinite(hi):
        return
    where = "" if region is None else " (in moving voxels " + ", ".join(
        f"{d} {s.start}:{s.stop}" for d, s in zip("zyx", region)) + ")"
    has_nan = math.isnan(lo) or math.isnan(hi)
    if (not has_nan and (math.isinf(lo) or math.isinf(hi))) or (has_nan and np.isinf(values).any()):
        raise LazyregError(
            f"moving: contains infinite values{where}; SimpleITK clamps them to the dtype's largest value and "
            "interpolation makes their neighbours NaN. Replace them first, e.g. moving.where(np.isfinite(moving), 0)"
        )
    if has_nan and order == 3:
        raise LazyregError(
            f"moving: contains NaN{where}; cubic interpolation (order=3) prefilters the whole region each task "
            "reads, which spreads a NaN over it, so the result would depend on the output chunks. Replace NaN "
            "first (e.g. moving.fillna(0)), or use order=1 (a NaN then only reaches the output voxels next to it)"
        )
