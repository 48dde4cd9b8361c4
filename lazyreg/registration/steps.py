"""The step protocol: how every alignment step is called, checked and registered.

A *step* is a plain function ``step(fixed, moving, *, initial, **options)`` that aligns two
in-memory images and returns a transform object whose ``.report`` (a dict) says what it did:

* an :class:`~lazyreg.Affine` - the whole fixed -> moving affine, ``initial`` included - or
* a :class:`~lazyreg.DisplacementField` ``D`` applied before ``initial``: the whole transform is
  the list ``[initial, D]``. Such steps come last in a pipeline. A field step after a field step
  ``F`` aligns fixed with moving resampled through ``[initial, F]`` (``initial`` the identity), and
  its field ``U`` is composed with ``F`` into one field, ``x -> F(U(x))``: several field steps, e.g.
  a B-spline then the demons, refine one another and still give ``[initial, D]``.

A step may also accept any of ``seed``, ``fixed_mask``, ``moving_mask``, ``threads`` and
``field_grid``; the pipeline supplies them. Each registered step has a *validator* that
:func:`parse_steps` calls for every step before any graph is built, so a bad option fails at once
with a message naming it (the default validator checks option names against the function's
keyword-only parameters). :data:`STEPS` maps names to steps; :func:`register_step` adds one.
"""

from __future__ import annotations

import inspect
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, image
from ..interpolation import resample_array
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField, interpolate_field
from ..validation import check_seed, suggest
from .features import align_features, validate_options
from .itk import align_affine, align_deformable
from .demons import align_demons, demons_field_grid, validate_demons_options
from .itk_options import validate_itk_options
from .itk_runner import deformable_field_grid
from .search import random_affine_search, validate_search_options
from .step_inputs import StepInputs, binned_options

__all__ = ["Step", "StepCall", "STEPS", "register_step", "parse_steps", "run_steps", "field_step_grid", "step_profile"]

log = logging.getLogger(__name__)

#: Arguments that the pipeline supplies to a step (when its function takes them).
SUPPLIED = ("fixed", "moving", "initial", "seed", "fixed_mask", "moving_mask", "threads", "field_grid")


@dataclass(frozen=True)
class Step:
    """A registered alignment step.

    Attributes
    ----------
    name : str
        The name used in step lists.
    func : callable
        ``func(fixed, moving, *, initial, **options)`` returning an Affine or a DisplacementField.
    returns : {"affine", "field"}
        What ``func`` returns.
    validate : callable, optional
        ``validate(options)`` raising :class:`~lazyreg.LazyregError` naming a bad option.
    fixed_options : dict
        Options always passed (e.g. ``{"transform": "rigid"}``), not settable by users.
    field_grid : callable, optional
        For ``returns="field"``: ``field_grid(fixed_grid, options) -> Grid``, the grid of the
        returned field, known before the step runs (default: the fixed grid).
    chunked : bool
        ``func`` reads dask-backed images of several chunks chunk by chunk, never whole (e.g.
        ``"ransac"``): :func:`lazyreg.align` then hands it store-backed levels unread
        (:mod:`lazyreg.registration.step_inputs`). Other steps get their images in memory.

    Examples
    --------
    >>> from lazyreg.registration.steps import STEPS
    >>> STEPS["rigid"].returns, STEPS["rigid"].fixed_options
    ('affine', {'transform': 'rigid'})
    """

    name: str
    func: Callable[..., Any]
    returns: str = "affine"
    validate: Callable[[dict], Any] | None = None
    fixed_options: dict = field(default_factory=dict)
    field_grid: Callable[[Grid, dict], Grid] | None = None
    chunked: bool = False

    @property
    def options(self) -> list[str]:
        """The option names users may set (the function's keyword-only parameters)."""
        params = inspect.signature(self.func).parameters
        return sorted(
            k for k, p in params.items()
            if p.kind == p.KEYWORD_ONLY and k not in SUPPLIED and k not in self.fixed_options
        )

    def accepts(self, name: str) -> bool:
        """Whether the function takes keyword ``name``."""
        params = inspect.signature(self.func).parameters
        return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


@dataclass(frozen=True)
class StepCall:
    """One step of a checked pipeline: the step and the options the user gave it.

    Examples
    --------
    >>> from lazyreg.registration.steps import parse_steps
    >>> call = parse_steps([("affine", {"metric": "mattes_mi"})])[0]
    >>> call.name, call.options
    ('affine', {'metric': 'mattes_mi'})
    """

    step: Step
    options: dict

    @property
    def name(self) -> str:
        """The step's name."""
        return self.step.name

    def as_pair(self) -> tuple[str, dict]:
        """The ``(name, options)`` pair it came from (for reports and files)."""
        return self.step.name, dict(self.options)

    def in_effect(self) -> dict:
        """Every option the step runs with: the user's, and the step's defaults for the rest.

        Examples
        --------
        >>> from lazyreg.registration.steps import parse_steps
        >>> opts = parse_steps([("random", {"candidates": 50})])[0].in_effect()
        >>> opts["candidates"], opts["max_rotation"]
        (50, 30.0)
        """
        params = inspect.signature(self.step.func).parameters
        options = {k: params[k].default for k in self.step.options if params[k].default is not inspect.Parameter.empty}
        options.update(self.options)
        return options


STEPS: dict[str, Step] = {}


def register_step(
    name: str,
    func: Callable[..., Any],
    *,
    returns: str = "affine",
    validate: Callable[[dict], Any] | None = None,
    fixed_options: Mapping[str, Any] | None = None,
    field_grid: Callable[[Grid, dict], Grid] | None = None,
    chunked: bool = False,
    replace: bool = False,
) -> Step:
    """Make ``func`` usable as a step called ``name`` in :func:`lazyreg.align` and piecewise blocks.

    Parameters
    ----------
    name : str
        The step's name in step lists.
    func : callable
        ``func(fixed, moving, *, initial, **options)``: images are in-memory xarray images,
        ``initial`` an :class:`~lazyreg.Affine` (the current fixed -> moving transform). Returns an
        Affine (the whole transform, ``initial`` included) or a DisplacementField applied before
        ``initial`` (see ``returns``), with a ``report`` dict. It may take ``seed``, ``fixed_mask``,
        ``moving_mask``, ``threads``, ``field_grid``: they are supplied. Keyword-only parameters
        are its options. It must be importable where the work runs (dask workers).
    returns : {"affine", "field"}
        What ``func`` returns. Field steps come last in a pipeline; a field step after another
        aligns moving as the transform so far leaves it (resampled onto fixed's grid, ``initial``
        the identity), and the pipeline composes the two fields into one.
    validate : callable, optional
        ``validate(options)`` called by :func:`parse_steps` before anything runs; raise a
        :class:`~lazyreg.LazyregError` naming the bad option. Option names are always checked.
    fixed_options : dict, optional
        Options always passed to ``func`` and not settable in step lists.
    field_grid : callable, optional
        For field steps: ``field_grid(fixed_grid, options) -> Grid``, the grid of the returned
        field (the pipeline needs it before the step runs); default the fixed grid.
    chunked : bool
        ``func`` also takes dask-backed images of several chunks and reads them chunk by chunk
        (never whole); :func:`lazyreg.align` then gives it store-backed images unread. Default:
        it gets in-memory images.
    replace : bool
        Allow replacing a registered step of the same name.

    Returns
    -------
    Step

    Examples
    --------
    >>> import lazyreg
    >>> def shift_x(fixed, moving, *, initial, dx=1.0):
    ...     A = initial @ lazyreg.Affine.from_translation((0.0, 0.0, dx))
    ...     return lazyreg.Affine(A.matrix, report={"dx": dx})
    >>> step = lazyreg.register_step("shift_x", shift_x, replace=True)
    >>> step.options
    ['dx']
    """
    if not isinstance(name, str) or not name:
        raise LazyregError(f"name: expected a non-empty string, got {name!r}")
    if name in STEPS and not replace:
        raise LazyregError(f"name: a step called {name!r} is registered already; pass replace=True to replace it")
    if not callable(func):
        raise LazyregError(f"func: expected a function, got {type(func).__name__}")
    if returns not in ("affine", "field"):
        raise LazyregError(f"returns: expected 'affine' or 'field', got {returns!r}")
    params = inspect.signature(func).parameters
    if "initial" not in params and not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        raise LazyregError(f"func: a step takes (fixed, moving, *, initial, ...); {func.__name__} has no 'initial'")
    step = Step(name, func, returns, validate, dict(fixed_options or {}), field_grid, bool(chunked))
    STEPS[name] = step
    return step


register_step("ransac", align_features, validate=lambda o: validate_options("ransac", o), chunked=True)
register_step("random", random_affine_search, validate=validate_search_options)
register_step(
    "rigid", align_affine, fixed_options={"transform": "rigid"},
    validate=lambda o: validate_itk_options("affine", dict(o, transform="rigid")),
)
register_step(
    "affine", align_affine, fixed_options={"transform": "affine"},
    validate=lambda o: validate_itk_options("affine", dict(o, transform="affine")),
)
register_step(
    "deform", align_deformable, returns="field", validate=lambda o: validate_itk_options("deformable", o),
    field_grid=deformable_field_grid,
)
register_step("demons", align_demons, returns="field", validate=validate_demons_options, field_grid=demons_field_grid)


def parse_steps(steps: Any) -> list[StepCall]:
    """Check a step list up front - names, option names and values - and return the calls.

    ``steps`` is a sequence of ``(name, options)`` pairs, bare names, or :class:`StepCall`
    objects (already checked), or a string of comma-separated names (``"ransac,affine"``). At
    most one step returns a field, and it comes last.

    Examples
    --------
    >>> from lazyreg.registration.steps import parse_steps
    >>> [c.as_pair() for c in parse_steps("ransac,affine")]
    [('ransac', {}), ('affine', {})]
    >>> parse_steps([("affine", {"metrc": "mattes_mi"})])
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: steps[0] ('affine'): unknown option 'metrc' (did you mean 'metric'?); valid options: interpolator, metric, ...
    """
    if isinstance(steps, str):
        steps = [s.strip() for s in steps.split(",") if s.strip()]
    elif isinstance(steps, StepCall) or (
        isinstance(steps, tuple) and len(steps) == 2 and isinstance(steps[0], str) and isinstance(steps[1], dict)
    ):
        steps = [steps]
    if not isinstance(steps, (list, tuple)) or not steps:
        raise LazyregError(f"steps: expected a non-empty list of (name, options) pairs, got {steps!r}")
    calls = [_parse_one(i, st) for i, st in enumerate(steps)]
    fields = [i for i, c in enumerate(calls) if c.step.returns == "field"]
    if fields and fields != list(range(fields[0], len(calls))):  # field steps: all of them at the end
        after = next(c for c in calls[fields[0]:] if c.step.returns != "field")
        raise LazyregError(
            f"steps: {calls[fields[0]].name!r} returns a displacement field, so only steps returning fields may "
            f"follow it (got {after.name!r} after it)"
        )
    return calls


def _parse_one(i: int, st: Any) -> StepCall:
    if isinstance(st, StepCall):
        return st
    if isinstance(st, str):
        name, opts = st, {}
    elif isinstance(st, (list, tuple)) and len(st) == 2 and isinstance(st[0], str):
        name, opts = st[0], st[1] if st[1] is not None else {}
    else:
        raise LazyregError(f"steps[{i}]: expected a (name, options) pair, got {st!r}")
    if name not in STEPS:
        raise LazyregError(f"steps[{i}]: unknown step '{name}'{suggest(name, list(STEPS))}; valid steps: {', '.join(STEPS)}")
    if not isinstance(opts, Mapping):
        raise LazyregError(f"steps[{i}] ('{name}'): options must be a dict, got {type(opts).__name__}")
    step = STEPS[name]
    allowed = step.options
    for key in opts:
        if key not in allowed:
            raise LazyregError(
                f"steps[{i}] ('{name}'): unknown option '{key}'{suggest(key, allowed)}; valid options: {', '.join(allowed)}"
            )
    if step.validate is not None:
        try:
            step.validate(dict(opts))
        except LazyregError as e:
            raise LazyregError(f"steps[{i}] ('{name}'): {e}") from None
    return StepCall(step, dict(opts))


def field_step_grid(calls: Sequence[StepCall], fixed: Grid) -> Grid | None:
    """The grid of the field the pipeline returns (None if no step returns a field).

    Examples
    --------
    >>> from lazyreg.images import Grid
    >>> calls = parse_steps([("affine", {}), ("deform", {"control_point_spacing": 16.0})])
    >>> field_step_grid(calls, Grid((40, 80, 80), 1.0)).spacing
    (4.0, 4.0, 4.0)
    """
    for c in reversed(calls):
        if c.step.returns == "field":
            opts = dict(c.options, **c.step.fixed_options)
            return c.step.field_grid(fixed, opts) if c.step.field_grid is not None else fixed
    return None


def _run_one(call: StepCall, fixed, moving, state: dict, *, seed: int, masks: tuple, threads, field_grid, binned: int = 1) -> dict:
    step = call.step
    kwargs = dict(call.options, **step.fixed_options)
    if binned > 1:
        kwargs = binned_options(kwargs, binned, grid_of(fixed).spacing)
    supplied = {"seed": seed, "fixed_mask": masks[0], "moving_mask": masks[1], "threads": threads,
                "field_grid": field_grid if step.returns == "field" else None}
    for key, value in supplied.items():
        if value is not None and key not in kwargs and step.accepts(key):
            kwargs[key] = value
    t0 = time.perf_counter()
    chained = step.returns == "field" and state["field"] is not None
    if chained:
        # a field step after a field step aligns moving as the previous steps left it
        moving, moving_mask = _warped_image(fixed, moving, state["affine"], state["field"], masks[1], threads)
        if step.accepts("moving_mask"):
            kwargs["moving_mask"] = moving_mask
    result = step.func(fixed, moving, initial=np.eye(4) if chained else state["affine"], **kwargs)
    report = dict(getattr(result, "report", None) or {})
    report["step"] = call.name  # the pipeline's name for the step (the function may use its own)
    if binned > 1:
        report["binned"] = binned
    report["seconds_total"] = time.perf_counter() - t0
    log.info("align step %s: %s", call.name, {k: v for k, v in report.items() if not isinstance(v, (list, dict, np.ndarray))})
    new = dict(state, reports=state["reports"] + [report])
    if step.returns == "field":
        if not isinstance(result, DisplacementField):
            raise LazyregError(f"steps: {call.name!r} must return a lazyreg.DisplacementField, got {type(result).__name__}")
        if field_grid is not None and result.grid != field_grid:
            raise LazyregError(f"steps: {call.name!r} returned a field on {result.grid}, expected {field_grid}")
        new["field"] = _after(state["field"], result.compute()) if chained else result.compute()
    else:
        if not isinstance(result, Affine):
            raise LazyregError(f"steps: {call.name!r} must return a lazyreg.Affine, got {type(result).__name__}")
        new["affine"] = Affine(result.compute().matrix)
    return new


def _warped_image(fixed, moving, affine: Affine, field: DisplacementField, moving_mask, threads: int | None) -> tuple:
    """Moving resampled onto fixed's grid through ``[affine, field]`` (0 outside moving), and the
    mask of the fixed voxels that received moving data (inside ``moving_mask`` if given), with
    ``threads`` ITK threads (default: all cores, as the steps)."""
    threads = int(threads or os.cpu_count() or 1)
    fg, mg = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    fv = np.asarray(field.values, dtype=np.float32)
    chain = [("affine", np.asarray(affine.matrix, dtype=float), None), ("field", fv, field.grid)]
    warped = resample_array(np.asarray(moving.values), mg, fg, chain, order=3, fill_value=np.nan,
                            dtype=np.dtype(np.float32), threads=threads)
    inside = np.isfinite(warped)
    if moving_mask is not None:
        inside &= resample_array(np.asarray(moving_mask.values, dtype=np.uint8), mg, fg, chain, order=0,
                                 fill_value=0, dtype=np.dtype(np.uint8), threads=threads).astype(bool)
    return image(np.where(inside, warped, 0).astype(np.float32), fg.spacing, fg.origin), image(inside, fg.spacing, fg.origin)


def _after(first: DisplacementField, then: DisplacementField) -> DisplacementField:
    """One field for ``[first, then]``: ``x + u(x) + f(x + u(x))``, on ``then``'s grid."""
    g = then.grid
    u = np.asarray(then.values, dtype=np.float64)
    lo, hi = first.grid.extent
    # points that ``then`` moves past the edge of ``first``'s grid take its edge value (not zero)
    pts = np.clip(g.to_physical(np.indices(g.shape).reshape(3, -1).T) + u.reshape(-1, 3), lo, hi)
    f = interpolate_field(np.asarray(first.values, dtype=np.float64), first.grid, pts).reshape(u.shape)
    return DisplacementField.from_array((u + f).astype(np.float32), g.spacing, g.origin, report=then.report)


def run_steps(
    steps: Any,
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    initial: Any = None,
    initial_field: DisplacementField | None = None,
    seed: int = 0,
    field_grid: Grid | None = None,
    threads: int | None = None,
) -> dict:
    """Run steps eagerly, each starting from the previous result.

    Images are in memory, or dask-backed: then steps that read them chunk by chunk get them as
    they are, affine steps whose levels are all shrunk get them binned, the others in memory
    (:mod:`lazyreg.registration.step_inputs`).

    Returns the state: ``affine`` (an :class:`~lazyreg.Affine`), ``field`` (a
    :class:`~lazyreg.DisplacementField` on ``field_grid``, or None) and ``reports`` (one dict per
    step). Step ``i`` gets ``seed + i``; ``threads`` goes to steps that take it and were not given
    it. ``initial_field`` (a field applied before ``initial``, as a previous field step returns it)
    may only be followed by field steps. A field step after a field step aligns moving resampled
    through the transform so far, and the state's field becomes the composition of both. Used by
    :func:`lazyreg.align` (one task) and by piecewise alignment (one task per block).

    Examples
    --------
    >>> import lazyreg
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> state = run_steps([("affine", {"shrink_factors": (1,)})], fixed, moving, initial=truth)
    >>> state["field"] is None, [r["step"] for r in state["reports"]]
    (True, ['affine'])
    """
    calls = parse_steps(steps)
    check_seed(seed)
    if initial_field is not None and any(c.step.returns != "field" for c in calls):
        raise LazyregError("run_steps: an initial field can only be followed by steps returning fields")
    state = {"affine": Affine(np.eye(4) if initial is None else initial), "field": initial_field, "reports": []}
    inputs = StepInputs(fixed, moving, (fixed_mask, moving_mask))
    for i, call in enumerate(calls):
        (f, m), b = inputs.images(call)
        state = _run_one(
            call, f, m, state, seed=int(seed) + i, masks=(fixed_mask, moving_mask), threads=threads,
            field_grid=field_grid, binned=b,
        )
    return state


def step_profile(report: dict) -> dict:
    """Where a step spent its time, from its report: seconds per stage (``seconds_<stage>``
    keys, e.g. ransac's detect / describe / match / ransac) and per level (ITK steps, demons),
    the rest as ``other``.

    Examples
    --------
    >>> step_profile({"seconds": 3.0, "levels": [{"shrink": 4, "seconds": 0.5}, {"shrink": 2, "seconds": 2.0}]})
    {'level 1 (shrink 4)': 0.5, 'level 2 (shrink 2)': 2.0, 'other': 0.5}
    >>> step_profile({"seconds": 1.0, "seconds_detect": 0.6, "seconds_match": 0.1, "seconds_total": 1.0})
    {'detect': 0.6, 'match': 0.1, 'other': 0.3}
    """
    out: dict[str, float] = {}
    for k, v in report.items():
        if k.startswith("seconds_") and k != "seconds_total" and isinstance(v, (int, float)):
            out[k[len("seconds_"):]] = round(float(v), 3)
    for i, lv in enumerate(report.get("levels") or []):
        if isinstance(lv, dict) and isinstance(lv.get("seconds"), (int, float)):
            shrink = lv.get("shrink", lv.get("shrink_factor"))
            out[f"level {i + 1}" + (f" (shrink {shrink})" if shrink is not None else "")] = round(float(lv["seconds"]), 3)
    total = report.get("seconds", report.get("seconds_total"))
    if isinstance(total, (int, float)) and out:
        out["other"] = round(max(0.0, float(total) - sum(out.values())), 3)
    return out
