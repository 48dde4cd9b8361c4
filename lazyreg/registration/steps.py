"""``align``: global alignment as a lazy pipeline of steps, each starting from the previous result."""

from __future__ import annotations

import difflib
import importlib
import inspect
import logging
import time
from typing import Any, Callable, Sequence

import dask
import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.points import normalize_transforms

__all__ = ["align", "parse_steps", "run_steps", "STEPS"]

log = logging.getLogger(__name__)

#: Step name -> (module, function, fixed keyword arguments).
STEPS: dict[str, tuple[str, str, dict]] = {
    "ransac": ("lazyreg.registration.features", "align_features", {}),
    "random": ("lazyreg.registration.search", "random_affine_search", {}),
    "rigid": ("lazyreg.registration.itk", "align_affine", {"transform": "rigid"}),
    "affine": ("lazyreg.registration.itk", "align_affine", {"transform": "affine"}),
    "deform": ("lazyreg.registration.itk", "align_deformable", {}),
}
# Which SimpleITK option set validates each ITK step.
_ITK_KIND = {"rigid": "affine", "affine": "affine", "deform": "deformable"}
# Arguments that align() itself supplies to every step.
_SUPPLIED = {"fixed", "moving", "initial", "seed", "fixed_mask", "moving_mask", "field_grid"}


def _step_function(name: str) -> tuple[Callable, dict]:
    module, func, fixed_kwargs = STEPS[name]
    return getattr(importlib.import_module(module), func), fixed_kwargs


def _suggest(word: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def parse_steps(steps: Any) -> list[tuple[str, dict]]:
    """Check a step list up front: names, option names and option values where cheap.

    ``steps`` is a sequence of ``(name, options)`` pairs (or bare names). Returns normalised pairs.

    Examples
    --------
    >>> from lazyreg.registration.steps import parse_steps
    >>> parse_steps(["affine"])
    [('affine', {})]
    """
    if isinstance(steps, (str, tuple)) and (isinstance(steps, str) or (len(steps) == 2 and isinstance(steps[0], str) and isinstance(steps[1], dict))):
        steps = [steps]
    if not isinstance(steps, (list, tuple)) or not steps:
        raise LazyregError(f"steps: expected a non-empty list of (name, options) pairs, got {steps!r}")
    out = []
    for i, st in enumerate(steps):
        if isinstance(st, str):
            name, opts = st, {}
        elif isinstance(st, (list, tuple)) and len(st) == 2 and isinstance(st[0], str):
            name, opts = st[0], st[1] if st[1] is not None else {}
        else:
            raise LazyregError(f"steps[{i}]: expected a (name, options) pair, got {st!r}")
        if name not in STEPS:
            raise LazyregError(
                f"steps[{i}]: unknown step '{name}'{_suggest(name, STEPS)}; valid steps: {', '.join(STEPS)}"
            )
        if not isinstance(opts, dict):
            raise LazyregError(f"steps[{i}] ('{name}'): options must be a dict, got {type(opts).__name__}")
        func, fixed_kwargs = _step_function(name)
        params = inspect.signature(func).parameters
        allowed = sorted(k for k, p in params.items() if p.kind == p.KEYWORD_ONLY and k not in _SUPPLIED and k not in fixed_kwargs)
        for key in opts:
            if key not in allowed:
                raise LazyregError(
                    f"steps[{i}] ('{name}'): unknown option '{key}'{_suggest(key, allowed)}; valid options: {', '.join(allowed)}"
                )
        if name in _ITK_KIND:
            from .itk import validate_itk_options

            try:
                validate_itk_options(_ITK_KIND[name], dict(opts, **fixed_kwargs))
            except LazyregError as e:
                raise LazyregError(f"steps[{i}] ('{name}'): {e}") from None
        out.append((name, dict(opts)))
    return out


def _check_mask(mask: Any, img: xr.DataArray, argname: str) -> xr.DataArray | None:
    if mask is None:
        return None
    validate_image(mask, argname)
    g, gi = grid_of(mask, argname), grid_of(img)
    if g.shape != gi.shape or not np.allclose(g.spacing, gi.spacing) or not np.allclose(g.origin, gi.origin):
        raise LazyregError(f"{argname}: the mask's grid {g} differs from its image's grid {gi}")
    return mask


def deform_options(parsed: list[tuple[str, dict]]) -> dict | None:
    """Options of the one ``"deform"`` step (which must come last), or None without one."""
    deform_opts = [o for n, o in parsed if n == "deform"]
    if len(deform_opts) > 1:
        raise LazyregError("steps: at most one 'deform' step (it must be the last)")
    if deform_opts and parsed[-1][0] != "deform":
        raise LazyregError("steps: 'deform' must be the last step")
    return deform_opts[0] if deform_opts else None


def _deform_grid(fixed: Grid, opts: dict) -> Grid:
    """The grid of the displacement field of a deform step (known before the step runs)."""
    from .itk import deformable_field_grid

    return deformable_field_grid(fixed, opts)


def _run_step(name: str, opts: dict, fixed, moving, fixed_mask, moving_mask, state: dict, seed: int, field_grid) -> dict:
    func, fixed_kwargs = _step_function(name)
    t0 = time.perf_counter()
    kwargs = dict(opts, **fixed_kwargs)
    params = inspect.signature(func).parameters
    if "seed" in params:
        kwargs["seed"] = seed
    if "fixed_mask" in params and fixed_mask is not None:
        kwargs["fixed_mask"] = fixed_mask
    if "moving_mask" in params and moving_mask is not None:
        kwargs["moving_mask"] = moving_mask
    if name == "deform":
        kwargs["field_grid"] = field_grid
        values, _grid, report = func(fixed, moving, initial=state["matrix"], **kwargs)
        new = dict(state, field=np.asarray(values, dtype=np.float32))
    else:
        matrix, report = func(fixed, moving, initial=state["matrix"], **kwargs)
        new = dict(state, matrix=np.asarray(matrix, dtype=float))
    report = dict(report or {})
    report["step"] = name  # the pipeline's name for the step (the function may use its own)
    report["seconds_total"] = time.perf_counter() - t0
    log.info("align step %s: %s", name, {k: v for k, v in report.items() if not isinstance(v, (list, dict, np.ndarray))})
    new["reports"] = state["reports"] + [report]
    return new


def run_steps(
    parsed: list[tuple[str, dict]],
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initial: Any = None,
    seed: int = 0,
    field_grid: Grid | None = None,
    threads: int | None = None,
) -> dict:
    """Run checked steps (from :func:`parse_steps`) eagerly on in-memory images.

    Returns the state: ``matrix`` (4x4), ``field`` ((Z, Y, X, 3) values on ``field_grid``, or
    None) and ``reports`` (one dict per step). ``threads`` sets the SimpleITK threads of steps
    that take it and were not given it. Used by :func:`align` (one task per step) and by
    piecewise alignment (all steps of a block in one task).
    """
    state = _start(np.eye(4) if initial is None else initial)
    for i, (name, opts) in enumerate(parsed):
        if threads is not None and "threads" not in opts and "threads" in inspect.signature(_step_function(name)[0]).parameters:
            opts = dict(opts, threads=threads)
        state = _run_step(name, opts, fixed, moving, fixed_mask, moving_mask, state, int(seed) + i, field_grid)
    return state


def _start(initial: Any) -> dict:
    return {"matrix": np.asarray(initial, dtype=float), "field": None, "reports": []}


def _pick(state: dict, key: str) -> Any:
    return state[key]


def _in_memory(img: xr.DataArray | None) -> xr.DataArray | None:
    return None if img is None else img.compute()


def align(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    steps: Sequence[Any],
    *,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initial: Any = None,
    seed: int = 0,
) -> Affine | list:
    """Global alignment of ``moving`` to ``fixed`` by a pipeline of steps, returned lazily.

    Nothing runs here: the result is an :class:`Affine` whose matrix is a dask array (or
    ``[affine, field]`` when a ``"deform"`` step is included) that can go straight into
    :func:`lazyreg.apply_transform`, or be computed with ``.compute()``.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (a downsampled level of large data: each step loads them into memory).
    steps : sequence of (name, options)
        Run in order, each starting from the previous result. Names: ``"ransac"`` (feature points +
        RANSAC, :func:`lazyreg.registration.features.align_features`), ``"random"`` (random affine search,
        :func:`lazyreg.registration.search.random_affine_search`), ``"rigid"`` and ``"affine"``
        (:func:`lazyreg.registration.itk.align_affine`), ``"deform"`` (B-spline,
        :func:`lazyreg.registration.itk.align_deformable`). Options are those functions' keyword arguments,
        validated up front.
    fixed_mask, moving_mask : xarray.DataArray, optional
        Boolean images on each image's grid; restrict blob detection and metric sampling.
    initial : Affine, optional
        Starting transform (concrete or lazy); default identity.
    seed : int
        Seed for every random choice; results are deterministic for a seed.

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
    """
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    parsed = parse_steps(steps)
    fixed_mask = _check_mask(fixed_mask, fixed, "fixed_mask")
    moving_mask = _check_mask(moving_mask, moving, "moving_mask")
    if initial is None:
        init: Any = np.eye(4)
    else:
        ts = normalize_transforms(initial, "initial")
        if len(ts) != 1 or not isinstance(ts[0], Affine):
            raise LazyregError("initial: expected one Affine (a displacement field cannot start a global alignment)")
        init = ts[0].matrix
    if not isinstance(seed, (int, np.integer)):
        raise LazyregError(f"seed: expected an integer, got {seed!r}")
    g_fixed = grid_of(fixed, "fixed")
    deform = deform_options(parsed)
    field_grid = _deform_grid(g_fixed, deform) if deform is not None else None

    fx = dask.delayed(_in_memory, pure=True)(fixed)
    mv = dask.delayed(_in_memory, pure=True)(moving)
    fm = dask.delayed(_in_memory, pure=True)(fixed_mask)
    mm = dask.delayed(_in_memory, pure=True)(moving_mask)
    state = dask.delayed(_start, pure=True)(init)
    for i, (name, opts) in enumerate(parsed):
        state = dask.delayed(_run_step, pure=True)(name, opts, fx, mv, fm, mm, state, int(seed) + i, field_grid)
    matrix = da.from_delayed(dask.delayed(_pick, pure=True)(state, "matrix"), (4, 4), dtype=np.float64)
    report = dask.delayed(_pick, pure=True)(state, "reports")
    affine = Affine(matrix, report=report)
    if field_grid is None:
        return affine
    values = da.from_delayed(
        dask.delayed(_pick, pure=True)(state, "field"), field_grid.shape + (3,), dtype=np.float32
    )
    field = DisplacementField.from_array(values, field_grid.spacing, field_grid.origin, report=report)
    return [affine, field]
