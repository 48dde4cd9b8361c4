"""SimpleITK registration options: the tables of names, lazyreg's defaults, and their validation.

:func:`validate_itk_options` checks every option of the ``rigid``, ``affine`` and ``deform`` steps
without images, so that a pipeline fails at build time on a misspelt name or a bad value. The
parameters of SimpleITK's ``SetMetricAs...`` / ``SetOptimizerAs...`` methods are read from
SimpleITK's own docstrings, so every SimpleITK option is accepted and checked by its C++ type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Mapping

import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..images import Grid
from ..transforms.affine import as_matrix
from ..validation import check_choice, check_int, check_number, check_positive_ints, check_seed, suggest

__all__ = [
    "AFFINE_TRANSFORMS", "AUTO_MIN_VOXELS", "AUTO_SHRINK", "DEFAULT_SAMPLES", "DEFORMABLE_TRANSFORMS",
    "FIELD_ONLY_METRICS", "FIELD_OPTIMIZERS", "INTERPOLATORS", "METRICS", "MIN_STEP_FRACTION", "OPTIMIZERS",
    "SAMPLING", "SCALES", "UNSCALED_OPTIMIZERS", "validate_itk_options",
]


#: Metric names -> ``ImageRegistrationMethod.SetMetricAs...`` method.
METRICS: dict[str, str] = {
    "ants_neighborhood_correlation": "SetMetricAsANTSNeighborhoodCorrelation",
    "correlation": "SetMetricAsCorrelation",
    "demons": "SetMetricAsDemons",
    "joint_histogram_mi": "SetMetricAsJointHistogramMutualInformation",
    "mattes_mi": "SetMetricAsMattesMutualInformation",
    "mean_squares": "SetMetricAsMeanSquares",
}

#: Optimizer names -> ``ImageRegistrationMethod.SetOptimizerAs...`` method.
OPTIMIZERS: dict[str, str] = {
    "amoeba": "SetOptimizerAsAmoeba",
    "conjugate_gradient_line_search": "SetOptimizerAsConjugateGradientLineSearch",
    "exhaustive": "SetOptimizerAsExhaustive",
    "gradient_descent": "SetOptimizerAsGradientDescent",
    "gradient_descent_line_search": "SetOptimizerAsGradientDescentLineSearch",
    "lbfgs2": "SetOptimizerAsLBFGS2",
    "lbfgsb": "SetOptimizerAsLBFGSB",
    "one_plus_one_evolutionary": "SetOptimizerAsOnePlusOneEvolutionary",
    "powell": "SetOptimizerAsPowell",
    "regular_step_gradient_descent": "SetOptimizerAsRegularStepGradientDescent",
}

#: Metric sampling strategies.
SAMPLING: dict[str, int] = {
    "none": sitk.ImageRegistrationMethod.NONE,
    "regular": sitk.ImageRegistrationMethod.REGULAR,
    "random": sitk.ImageRegistrationMethod.RANDOM,
}

#: Interpolators of the moving image during registration.
INTERPOLATORS: dict[str, int] = {
    "nearest": sitk.sitkNearestNeighbor,
    "linear": sitk.sitkLinear,
    "bspline": sitk.sitkBSpline,
    "bspline1": sitk.sitkBSpline1,
    "bspline2": sitk.sitkBSpline2,
    "bspline3": sitk.sitkBSpline3,
    "bspline4": sitk.sitkBSpline4,
    "bspline5": sitk.sitkBSpline5,
    "gaussian": sitk.sitkGaussian,
    "label_gaussian": sitk.sitkLabelGaussian,
    "hamming_sinc": sitk.sitkHammingWindowedSinc,
    "cosine_sinc": sitk.sitkCosineWindowedSinc,
    "welch_sinc": sitk.sitkWelchWindowedSinc,
    "lanczos_sinc": sitk.sitkLanczosWindowedSinc,
    "blackman_sinc": sitk.sitkBlackmanWindowedSinc,
}

#: How optimizer parameter scales are estimated (``SetOptimizerScalesFrom...``), or "none".
SCALES: tuple[str, ...] = ("physical_shift", "index_shift", "jacobian", "none")

#: Transforms of :func:`align_affine` and of :func:`align_deformable`.
AFFINE_TRANSFORMS: tuple[str, ...] = ("affine", "rigid")
DEFORMABLE_TRANSFORMS: tuple[str, ...] = ("bspline", "field")

#: Optimizers that accept a dense displacement field (a transform with local support in ITK).
FIELD_OPTIMIZERS: tuple[str, ...] = (
    "conjugate_gradient_line_search",
    "gradient_descent",
    "gradient_descent_line_search",
    "lbfgs2",
)
#: Metrics that need a dense displacement field (``align_deformable(..., transform="field")``).
FIELD_ONLY_METRICS: tuple[str, ...] = ("demons",)

_STEPS = ("affine", "deformable")
_LEARNING_RATE = {
    "never": sitk.ImageRegistrationMethod.Never,
    "once": sitk.ImageRegistrationMethod.Once,
    "each_iteration": sitk.ImageRegistrationMethod.EachIteration,
}
#: Optimizers that ignore parameter scales (ITK warns and sets them to one).
UNSCALED_OPTIMIZERS = ("lbfgsb", "lbfgs2")

#: Default number of random metric samples per level when ``sampling_percentage`` is None.
DEFAULT_SAMPLES = 5_000
#: RSGD stops when its step falls below this fraction of the level's smallest voxel size.
MIN_STEP_FRACTION = 0.005
#: Automatic multi-resolution of :func:`align_affine`: these factors, less those leaving fewer
#: than ``AUTO_MIN_VOXELS`` voxels along the shortest axis.
AUTO_SHRINK = (16, 8, 4, 2, 1)
AUTO_MIN_VOXELS = 8

#: Values of the required optimizer / metric parameters (SimpleITK has no default for them) and
#: lazyreg's choices where SimpleITK's default is unsuited to registration of microscopy volumes.
_OPTIMIZER_DEFAULTS: dict[str, dict[str, Any]] = {
    "amoeba": {"simplexDelta": 1.0, "numberOfIterations": 100},
    "conjugate_gradient_line_search": {"learningRate": 1.0, "numberOfIterations": 100},
    "exhaustive": {},
    "gradient_descent": {"learningRate": 1.0, "numberOfIterations": 100},
    "gradient_descent_line_search": {"learningRate": 1.0, "numberOfIterations": 100},
    "lbfgs2": {"numberOfIterations": 100},
    "lbfgsb": {"gradientConvergenceTolerance": 1e-4, "numberOfIterations": 50, "maximumNumberOfFunctionEvaluations": 200},
    "one_plus_one_evolutionary": {"numberOfIterations": 100},
    "powell": {"numberOfIterations": 100},
    # learningRate is replaced by the estimate: the first step moves points by one voxel
    "regular_step_gradient_descent": {
        "learningRate": 1.0, "numberOfIterations": 100, "relaxationFactor": 0.5, "gradientMagnitudeTolerance": 1e-6,
        "estimateLearningRate": "once",
    },
}
#: Parameters filled per level when not given (they depend on the level's voxel size or on the
#: number of transform parameters): RSGD ``minStep``, exhaustive ``numberOfSteps`` and the 1+1
#: evolutionary ``seed`` (from ``seed``).
_PER_LEVEL = ("minStep", "numberOfSteps", "seed")
_METRIC_DEFAULTS: dict[str, dict[str, Any]] = {"ants_neighborhood_correlation": {"radius": 2}, "mattes_mi": {"numberOfHistogramBins": 32}}

_COMMON_DEFAULTS: dict[str, Any] = {
    "initial": None,
    "metric": "correlation",
    "metric_args": None,
    "optimizer": "regular_step_gradient_descent",
    "optimizer_args": None,
    "scales": "physical_shift",
    "sampling": "random",
    "sampling_percentage": None,
    "samples": None,
    "interpolator": "linear",
    "shrink_factors": None,
    "smooth_sigmas": None,
    "fixed_mask": None,
    "moving_mask": None,
    "seed": 0,
    "threads": None,
}
_STEP_DEFAULTS: dict[str, dict[str, Any]] = {
    "affine": {"transform": "affine", **_COMMON_DEFAULTS},
    "deformable": {
        "transform": "bspline",
        **_COMMON_DEFAULTS,
        "control_point_spacing": None,
        "mesh_size": None,
        "control_point_levels": (1,),
        "field_grid": None,
        "field_smoothing": (1.75, 0.5),
        "optimizer": None,
        "scales": None,
        "sampling": None,
        "shrink_factors": (2, 1),
        "bending": 0.0,
        "bending_rounds": 4,
    },
}
#: Defaults of ``align_deformable`` that depend on its transform.
_DEFORMABLE_AUTO: dict[str, dict[str, str]] = {
    "bspline": {"optimizer": "lbfgsb", "scales": "none", "sampling": "random"},
    "field": {"optimizer": "gradient_descent", "scales": "physical_shift", "sampling": "none"},
}


# --------------------------------------------------------------------------- option checking


@dataclass(frozen=True)
class _Param:
    """One parameter of a SimpleITK ``SetMetricAs...`` / ``SetOptimizerAs...`` method."""

    name: str
    ctype: str
    required: bool


@lru_cache(maxsize=None)
def _method_params(method: str) -> tuple[_Param, ...]:
    """Parameters of an ``ImageRegistrationMethod`` method, read from SimpleITK's own docstring."""
    doc = getattr(sitk.ImageRegistrationMethod, method).__doc__ or ""
    m = re.search(re.escape(method) + r"\(ImageRegistrationMethod self,?(.*?)\)\s*\n", doc)
    if m is None:  # pragma: no cover - depends on the SimpleITK build
        raise LazyregError(f"optimizer: cannot read the parameters of SimpleITK's {method}")
    out = []
    for item in [s.strip() for s in m.group(1).split(",") if s.strip()]:
        decl, _, default = item.partition("=")
        *ctype, name = decl.split()
        out.append(_Param(name, " ".join(ctype), not default))
    return tuple(out)


def _convert_arg(p: _Param, value: Any, argname: str) -> Any:
    """Check and convert one value for a SimpleITK parameter of C++ type ``p.ctype``."""
    where = f"{argname}: {p.name}"
    if "EstimateLearningRateType" in p.ctype:
        if isinstance(value, str):
            return _LEARNING_RATE[check_choice(value, list(_LEARNING_RATE), f"{argname}: {p.name}")]
        if value in _LEARNING_RATE.values():
            return value
        raise LazyregError(f"{where}: expected one of {', '.join(_LEARNING_RATE)}, got {value!r}")
    if p.ctype == "bool":
        if not isinstance(value, (bool, np.bool_)):
            raise LazyregError(f"{where}: expected True or False, got {value!r}")
        return bool(value)
    if p.ctype in ("unsigned int", "int", "uint32_t", "unsigned long"):
        try:
            ok = not isinstance(value, (bool, np.bool_)) and float(value).is_integer()
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise LazyregError(f"{where}: expected an integer, got {value!r}")
        if p.ctype != "int" and int(value) < 0:
            raise LazyregError(f"{where}: expected a non-negative integer, got {value!r}")
        return int(value)
    if p.ctype == "double":
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise LazyregError(f"{where}: expected a number, got {value!r}") from None
        if np.isnan(v):
            raise LazyregError(f"{where}: expected a number, got NaN")
        return v
    if p.ctype.startswith("Vector"):
        arr = np.atleast_1d(np.asarray(value))
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.number):
            raise LazyregError(f"{where}: expected a sequence of numbers, got {value!r}")
        if "UInt" in p.ctype or "Int" in p.ctype:
            if np.any(arr < 0) or np.any(arr != np.round(arr)):
                raise LazyregError(f"{where}: expected non-negative integers, got {value!r}")
            return [int(v) for v in arr]
        return [float(v) for v in arr]
    return value  # pragma: no cover - no other types in SimpleITK 2.x


def _method_args(kind: str, name: str, method: str, args: Any, defaults: Mapping[str, Any]) -> dict[str, Any]:
    """Validate ``args`` (a dict of SimpleITK parameter names) for ``method``; add lazyreg defaults."""
    argname = f"{kind}_args"
    if args is None:
        args = {}
    if not isinstance(args, Mapping):
        raise LazyregError(f"{argname}: expected a dict of {method} parameters, got {type(args).__name__}")
    params = {p.name: p for p in _method_params(method)}
    for key in args:
        if key not in params:
            valid = ", ".join(params) or "none (it takes no parameters)"
            raise LazyregError(
                f"{argname}: {key!r} is not a parameter of {kind} {name!r} ({method})"
                f"{suggest(str(key), list(params))}; valid: {valid}"
            )
    out = {k: v for k, v in defaults.items() if k in params}
    out.update(args)
    converted = {k: _convert_arg(params[k], v, argname) for k, v in out.items()}
    return converted


def _float_seq(value: Any, argname: str, n: int, *, low: float, high: float = np.inf, strict_low: bool = False):
    try:
        arr = np.atleast_1d(np.asarray(value, dtype=float))
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected numbers, got {value!r}") from None
    if arr.ndim != 1 or arr.size not in (1, n):
        raise LazyregError(
            f"{argname}: expected one value or one per level ({n} levels, as shrink_factors), got {value!r}"
        )
    bad = (arr <= low) if strict_low else (arr < low)
    if np.any(bad) or np.any(arr > high) or not np.all(np.isfinite(arr)):
        lo = "(" if strict_low else "["
        raise LazyregError(f"{argname}: values must lie in {lo}{low}, {high}], got {value!r}")
    return tuple(float(v) for v in np.broadcast_to(arr, (n,)))


def _mask_arg(value: Any, argname: str) -> xr.DataArray | None:
    if value is None:
        return None
    if not isinstance(value, xr.DataArray):
        raise LazyregError(
            f"{argname}: expected a boolean xarray.DataArray on the image's grid, got {type(value).__name__}"
        )
    return value


def validate_itk_options(step: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Check every option of a SimpleITK step up front and return them normalised, defaults filled.

    Nothing is computed and images are not needed: call this while building a pipeline so that a
    misspelt name fails at once, not after the previous steps ran.

    Parameters
    ----------
    step : {"affine", "deformable"}
        ``"affine"`` checks the options of :func:`align_affine` (rigid included, through
        ``transform="rigid"``), ``"deformable"`` those of :func:`align_deformable`.
    options : dict
        Keyword arguments of that function (without ``fixed`` and ``moving``).

    Returns
    -------
    dict
        Every option of the step, with defaults for those not given, names checked,
        ``metric_args`` / ``optimizer_args`` checked against the SimpleITK method's parameters
        (required ones filled with lazyreg's defaults), sequences as tuples and one
        ``sampling_percentage`` / ``smooth_sigmas`` value per level (``None`` = automatic).

    Raises
    ------
    LazyregError
        For an unknown step, option, metric, optimizer, sampling, interpolator, scales or
        transform name (listing the valid ones and the closest match), a parameter that the
        SimpleITK method does not take, values of the wrong type or range (e.g.
        ``smooth_sigmas`` not of the length of ``shrink_factors``, a negative ``bending``), the
        "demons" metric without ``transform="field"``, ``bending`` without ``transform="bspline"``,
        or an optimizer that cannot optimise a dense field.

    Examples
    --------
    >>> from lazyreg.registration.itk_options import validate_itk_options
    >>> validate_itk_options("affine", {"metric": "mattes_mi"})["metric_args"]
    {'numberOfHistogramBins': 32}
    >>> validate_itk_options("affine", {"metric": "mattes"})
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: metric: unknown value 'mattes' (did you mean 'mattes_mi'?); valid: ants_neighborhood_correlation, correlation, demons, joint_histogram_mi, mattes_mi, mean_squares
    """
    step = check_choice(step, _STEPS, "step")
    o = _with_defaults(step, options)
    _check_method(o)
    n = _check_pyramid(o)
    o["initial"] = as_matrix(o["initial"], "initial")
    o["seed"] = check_seed(o["seed"])
    threads = o["threads"]
    if threads is not None and (
        isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1
    ):
        raise LazyregError(f"threads: expected a positive integer or None (all cores), got {threads!r}")
    o["fixed_mask"] = _mask_arg(o["fixed_mask"], "fixed_mask")
    o["moving_mask"] = _mask_arg(o["moving_mask"], "moving_mask")
    if step == "deformable":
        _check_deformable(o, n)
    return o


def _with_defaults(step: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """The options merged over the step's defaults, every name checked, choices resolved."""
    if not isinstance(options, Mapping):
        raise LazyregError(f"options: expected a dict of keyword arguments, got {type(options).__name__}")
    defaults = _STEP_DEFAULTS[step]
    for key in options:
        if key not in defaults:
            raise LazyregError(
                f"options: {key!r} is not an option of the {step!r} step{suggest(str(key), list(defaults))}; "
                f"valid: {', '.join(defaults)}"
            )
    o = {**defaults, **options}
    if step == "affine":
        o["transform"] = check_choice(o["transform"], AFFINE_TRANSFORMS, "transform")
    else:
        o["transform"] = check_choice(o["transform"], DEFORMABLE_TRANSFORMS, "transform")
        for key, value in _DEFORMABLE_AUTO[o["transform"]].items():
            if o[key] is None:
                o[key] = value
    o["metric"] = check_choice(o["metric"], list(METRICS), "metric")
    o["optimizer"] = check_choice(o["optimizer"], list(OPTIMIZERS), "optimizer")
    o["sampling"] = check_choice(o["sampling"], list(SAMPLING), "sampling")
    o["interpolator"] = check_choice(o["interpolator"], list(INTERPOLATORS), "interpolator")
    o["scales"] = check_choice(o["scales"], SCALES, "scales")
    return o


def _check_method(o: dict[str, Any]) -> None:
    """Metric and optimizer: compatible with the transform, their SimpleITK arguments checked."""
    if o["metric"] in FIELD_ONLY_METRICS and o["transform"] != "field":
        valid = [m for m in METRICS if m not in FIELD_ONLY_METRICS]
        raise LazyregError(
            f"metric: {o['metric']!r} needs a dense displacement field: use "
            f"align_deformable(..., transform='field'); valid with transform {o['transform']!r}: {', '.join(valid)}"
        )
    if o["transform"] == "field" and o["optimizer"] not in FIELD_OPTIMIZERS:
        raise LazyregError(
            f"optimizer: {o['optimizer']!r} cannot optimise a dense displacement field (transform='field'); "
            f"valid: {', '.join(FIELD_OPTIMIZERS)}"
        )
    o["metric_args"] = _method_args(
        "metric", o["metric"], METRICS[o["metric"]], o["metric_args"], _METRIC_DEFAULTS.get(o["metric"], {})
    )
    o["optimizer_args"] = _method_args(
        "optimizer", o["optimizer"], OPTIMIZERS[o["optimizer"]], o["optimizer_args"], _OPTIMIZER_DEFAULTS[o["optimizer"]]
    )
    missing = [
        p.name
        for p in _method_params(OPTIMIZERS[o["optimizer"]])
        if p.required and p.name not in o["optimizer_args"] and p.name not in _PER_LEVEL
    ]
    if missing:  # pragma: no cover - lazyreg has a default for every required parameter
        raise LazyregError(f"optimizer_args: {o['optimizer']!r} needs {', '.join(missing)}")


def _check_pyramid(o: dict[str, Any]) -> int | None:
    """Shrink factors, sigmas and sampling per level; returns the number of levels (None: automatic)."""
    if o["shrink_factors"] is None:
        if o["smooth_sigmas"] is not None:
            raise LazyregError("smooth_sigmas: give shrink_factors too (one sigma per level)")
        n = None
    else:
        o["shrink_factors"] = check_positive_ints(o["shrink_factors"], "shrink_factors")
        n = len(o["shrink_factors"])
    if o["smooth_sigmas"] is not None:
        try:
            k = np.atleast_1d(np.asarray(o["smooth_sigmas"], dtype=float)).size
        except (TypeError, ValueError):
            raise LazyregError(f"smooth_sigmas: expected numbers, got {o['smooth_sigmas']!r}") from None
        if k != n:
            raise LazyregError(
                f"smooth_sigmas: expected one sigma per level, {n} (the length of shrink_factors "
                f"{o['shrink_factors']}), got {k}: {o['smooth_sigmas']!r}"
            )
        o["smooth_sigmas"] = _float_seq(o["smooth_sigmas"], "smooth_sigmas", n, low=0.0)
    if o["samples"] is not None:
        o["samples"] = check_int(o["samples"], "samples", minimum=100)
        if o["sampling_percentage"] is not None:
            raise LazyregError("samples: give samples or sampling_percentage, not both")
    if o["sampling_percentage"] is not None:
        if n is None and np.size(o["sampling_percentage"]) != 1:
            raise LazyregError("sampling_percentage: give shrink_factors too, or a single value for every level")
        o["sampling_percentage"] = _float_seq(
            o["sampling_percentage"], "sampling_percentage", n or 1, low=0.0, high=1.0, strict_low=True
        )
    return n


def _check_deformable(o: dict[str, Any], n: int | None) -> None:
    """Control points, refinement levels, field grid, field smoothing and bending of the deformable step."""
    cps = o["control_point_spacing"]
    if cps is not None:
        try:
            arr = np.atleast_1d(np.asarray(cps, dtype=float))
        except (TypeError, ValueError):
            arr = np.array([np.nan])
        if arr.ndim != 1 or arr.size not in (1, 3) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
            raise LazyregError(f"control_point_spacing: expected a positive number or 3 (z, y, x), got {cps!r}")
        o["control_point_spacing"] = tuple(float(v) for v in np.broadcast_to(arr, (3,)))
    if o["mesh_size"] is not None:
        if cps is not None:
            raise LazyregError("mesh_size: give mesh_size or control_point_spacing, not both")
        ms = check_positive_ints(o["mesh_size"], "mesh_size")
        if len(ms) not in (1, 3):
            raise LazyregError(f"mesh_size: expected one or 3 (z, y, x) positive integers, got {o['mesh_size']!r}")
        o["mesh_size"] = tuple(ms) * 3 if len(ms) == 1 else tuple(ms)
    lv = check_positive_ints(o["control_point_levels"], "control_point_levels")
    if n is not None and len(lv) > n:
        raise LazyregError(
            f"control_point_levels: got {len(lv)} levels {lv} but shrink_factors has {n}; "
            "give at most one refinement factor per level"
        )
    for a, b in zip(lv, lv[1:]):
        if b % a:
            raise LazyregError(
                f"control_point_levels: each factor must be a multiple of the previous one (e.g. (1, 2, 4)), got {lv}"
            )
    o["control_point_levels"] = lv
    fg = o["field_grid"]
    if fg is not None and not isinstance(fg, Grid):
        raise LazyregError(f"field_grid: expected a lazyreg.Grid or None, got {type(fg).__name__}")
    sm = np.atleast_1d(np.asarray(o["field_smoothing"], dtype=float))
    if sm.shape != (2,) or np.any(sm < 0) or not np.all(np.isfinite(sm)):
        raise LazyregError(
            f"field_smoothing: expected 2 non-negative variances (update, total) in field voxels, "
            f"got {o['field_smoothing']!r}"
        )
    o["field_smoothing"] = (float(sm[0]), float(sm[1]))
    o["bending"] = check_number(o["bending"], "bending", 0.0)
    o["bending_rounds"] = check_int(o["bending_rounds"], "bending_rounds", minimum=1)
    if o["bending"] and o["transform"] != "bspline":
        raise LazyregError(
            f"bending: penalises the B-spline's coefficients, so it needs transform='bspline' (got {o['transform']!r}); "
            "a dense field is smoothed by field_smoothing instead: pass bending=0"
        )
