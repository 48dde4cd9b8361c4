"""``align``: global alignment as a lazy pipeline of steps, each starting from the previous result."""

from __future__ import annotations

from typing import Any, Callable, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph

from ..errors import LazyregError
from ..images import check_mask, grid_of, validate_image
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.points import normalize_transforms
from ..result_cache import Deferred, Ref, cached_call
from ..validation import check_seed
from ..io.source import find_source
from .blob_chunks import is_chunked
from .inputs import image_recipe
from .step_inputs import reads_in_chunks
from .steps import field_step_grid, parse_steps, run_steps

__all__ = ["align"]


def _run(calls: list, fixed, moving, fixed_mask, moving_mask, initial, seed: int, field_grid) -> dict:
    state = run_steps(
        calls, fixed, moving, fixed_mask=fixed_mask, moving_mask=moving_mask, initial=initial, seed=seed,
        field_grid=field_grid,
    )
    field = state["field"]
    return {
        "matrix": np.asarray(state["affine"].matrix, dtype=np.float64),
        "field": None if field is None else np.asarray(field.values, dtype=np.float32),
        "reports": state["reports"],
    }


def _prepared(prepare: Callable, img: xr.DataArray, name: str) -> xr.DataArray:
    out = prepare(img)
    if not isinstance(out, xr.DataArray) or out.shape != img.shape:
        raise LazyregError(
            f"prepare: expected an image of {name}'s shape {img.shape}, got "
            f"{getattr(out, 'shape', type(out).__name__)}"
        )
    return out


def _pick(state: dict, key: str) -> Any:
    return state[key]


def align(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    steps: Sequence[Any] | str,
    *,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initial: Any = None,
    seed: int = 0,
    prepare: Callable[[xr.DataArray], xr.DataArray] | None = None,
) -> Affine | list:
    """Global alignment of ``moving`` to ``fixed`` by a pipeline of steps, returned lazily.

    Nothing runs here: the result is an :class:`Affine` whose matrix is a dask array (or
    ``[affine, field]`` when a step returns a displacement field, e.g. ``"deform"``) that can go
    straight into :func:`lazyreg.apply_transform`, or be computed with ``.compute()``. Every
    option of every step is checked now, before anything runs.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images, usually a downsampled level of large data. Most steps load them into memory.
        A store-backed level of several chunks (e.g. from :func:`lazyreg.open_image`) is never
        read whole when every step can do without: the ``"ransac"`` step reads it chunk by
        chunk, and an ``"affine"`` / ``"rigid"`` step whose ``shrink_factors`` are all >= 2 runs
        on it binned by their greatest common divisor, chunk by chunk (its report says
        ``binned``). So ``[("ransac", {...}), ("affine", {"shrink_factors": (8, 4, 2)})]`` aligns a
        level that does not fit in memory (:mod:`lazyreg.registration.step_inputs`).
    steps : sequence of (name, options), or str
        Run in order, each starting from the previous result. Names (see
        :data:`lazyreg.registration.steps.STEPS`, and :func:`lazyreg.register_step` for your
        own): ``"ransac"`` (feature points + RANSAC, :func:`lazyreg.align_features`),
        ``"random"`` (random affine search, :func:`lazyreg.random_affine_search`), ``"rigid"``
        and ``"affine"`` (:func:`lazyreg.align_affine`), ``"deform"`` (B-spline or dense field,
        :func:`lazyreg.align_deformable`; last), ``"demons"`` (a dense diffeomorphic field,
        :func:`lazyreg.registration.demons.align_demons`; last). Options are those functions' keyword arguments.
        A string of comma-separated names (``"ransac,affine"``) runs them with default options.
    fixed_mask, moving_mask : xarray.DataArray, optional
        Boolean images on each image's grid; restrict blob detection and metric sampling.
    initial : Affine, optional
        Starting transform (concrete or lazy); default identity.
    seed : int
        Seed for every random choice (step ``i`` gets ``seed + i``); results are deterministic.
    prepare : callable, optional
        Applied to ``fixed`` and to ``moving`` (in memory, read whole) inside the registration
        task, before the steps - e.g. a filter: ``prepare(image) -> image`` on the same grid. It
        runs only when the result is not cached yet, so later computations do not pay for it
        again (a lazily filtered image passed instead would be filtered at every computation
        that needs the result). It must be deterministic; it is part of the result's cache key
        (a module-level function or a ``functools.partial`` of one).

    Returns
    -------
    Affine or list
        Lazy; ``.report`` holds (lazily) one dict per step: iterations, metric, blobs/inliers,
        seconds. ``Affine.compute()`` computes matrix and report together.

    Examples
    --------
    >>> import lazyreg
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((32, 64, 64), seed=0)
    >>> A = lazyreg.align(fixed, moving, [("affine", {})])
    >>> A.is_lazy
    True
    >>> lazyreg.align(fixed, moving, [("affine", {"metric": "mattes"})])
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: steps[0] ('affine'): metric: unknown value 'mattes' (did you mean 'mattes_mi'?); valid: ...
    """
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    calls = parse_steps(steps)
    fixed_mask = check_mask(fixed_mask, fixed, "fixed_mask", "fixed")
    moving_mask = check_mask(moving_mask, moving, "moving_mask", "moving")
    if initial is None:
        init: Any = np.eye(4)
    else:
        ts = normalize_transforms(initial, "initial")
        if len(ts) != 1 or not isinstance(ts[0], Affine):
            raise LazyregError("initial: expected one Affine (a displacement field cannot start a global alignment)")
        init = ts[0].matrix
    seed = check_seed(seed)
    field_grid = field_step_grid(calls, grid_of(fixed, "fixed"))
    if prepare is not None and not callable(prepare):
        raise LazyregError(f"prepare: expected a function of an image, got {type(prepare).__name__}")

    state = _state(calls, fixed, moving, fixed_mask, moving_mask, init, seed, field_grid, prepare)
    matrix = da.from_delayed(dask.delayed(_pick, pure=True)(state, "matrix"), (4, 4), dtype=np.float64)
    report = dask.delayed(_pick, pure=True)(state, "reports")
    affine = Affine(matrix, report=report)
    if field_grid is None:
        return affine
    values = da.from_delayed(dask.delayed(_pick, pure=True)(state, "field"), field_grid.shape + (3,), dtype=np.float32)
    field = DisplacementField.from_array(values, field_grid.spacing, field_grid.origin, report=report)
    return [affine, field]


def _readable_in_chunks(img: xr.DataArray) -> bool:
    return is_chunked(img) and find_source(img) is not None


def _state(calls, fixed, moving, fixed_mask, moving_mask, init, seed: int, field_grid, prepare=None) -> Delayed:
    """One task running every step, computed at most once per session (:mod:`lazyreg.result_cache`).

    Store-backed images are read inside the task, only when its result is not cached yet: whole,
    or chunk by chunk when all its steps can work so (:mod:`lazyreg.registration.step_inputs`);
    then ``prepare``, if any, is applied to them there.
    """
    deps: list = []
    collections: list = []
    unread = prepare is None and reads_in_chunks(calls, (fixed_mask, moving_mask))
    # a store-backed level of several chunks goes in unread when every step reads it chunk by
    # chunk or binned (step_inputs); otherwise the task reads it whole, once
    images = [x if unread and _readable_in_chunks(x) else image_recipe(x, deps, collections) for x in (fixed, moving)]
    if prepare is not None:
        images = [(_prepared, prepare, x, name) for x, name in zip(images, ("fixed", "moving"))]
    images += [image_recipe(x, deps, collections) for x in (fixed_mask, moving_mask)]
    if isinstance(init, da.Array):
        collections.append(init)
        deps.append((init.name, 0, 0))
        init_spec: Any = Ref(len(deps) - 1)
    else:
        init_spec = np.asarray(init, dtype=float)
    token = tokenize(
        "align", [(c.as_pair(), c.step.func, c.step.fixed_options) for c in calls],
        [None if x is None else x.data for x in (fixed, moving, fixed_mask, moving_mask)],
        [None if x is None else grid_of(x) for x in (fixed, moving)], init, seed, field_grid,
        *(() if prepare is None else (prepare,)),
    )
    name = f"lazyreg-align-{token}"
    recipe = Deferred([calls, *images, init_spec, seed, field_grid])
    layer = {name: (cached_call, f"align:{token}", "align", _run, recipe, *deps)}
    return Delayed(name, HighLevelGraph.from_collections(name, layer, dependencies=collections))
