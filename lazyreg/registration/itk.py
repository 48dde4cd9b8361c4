"""Intensity-based registration with SimpleITK (affine, rigid, B-spline, dense field) on in-memory images."""

from __future__ import annotations

import difflib
import os
import re
import time
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField

__all__ = [
    "AFFINE_TRANSFORMS",
    "DEFAULT_SAMPLES",
    "DEFORMABLE_TRANSFORMS",
    "FIELD_ONLY_METRICS",
    "FIELD_OPTIMIZERS",
    "INTERPOLATORS",
    "METRICS",
    "OPTIMIZERS",
    "SAMPLING",
    "SCALES",
    "align_affine",
    "align_deformable",
    "validate_itk_options",
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
_UNSCALED = ("lbfgsb", "lbfgs2")

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
    "lbfgsb": {
        "gradientConvergenceTolerance": 1e-4,
        "numberOfIterations": 50,
        "maximumNumberOfFunctionEvaluations": 200,
    },
    "one_plus_one_evolutionary": {"numberOfIterations": 100},
    "powell": {"numberOfIterations": 100},
    "regular_step_gradient_descent": {
        "learningRate": 1.0,  # replaced by the estimate: the first step moves points by one voxel
        "numberOfIterations": 100,
        "relaxationFactor": 0.5,
        "gradientMagnitudeTolerance": 1e-6,
        "estimateLearningRate": "once",
    },
}
#: Parameters filled per level when not given (they depend on the level's voxel size or on the
#: number of transform parameters): RSGD ``minStep``, exhaustive ``numberOfSteps`` and the 1+1
#: evolutionary ``seed`` (from ``seed``).
_PER_LEVEL = ("minStep", "numberOfSteps", "seed")
_METRIC_DEFAULTS: dict[str, dict[str, Any]] = {
    "ants_neighborhood_correlation": {"radius": 2},
    "mattes_mi": {"numberOfHistogramBins": 32},
}

_COMMON_DEFAULTS: dict[str, Any] = {
    "initial": None,
    "metric": "correlation",
    "metric_args": None,
    "optimizer": "regular_step_gradient_descent",
    "optimizer_args": None,
    "scales": "physical_shift",
    "sampling": "random",
    "sampling_percentage": None,
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
        "control_point_levels": (1,),
        "field_grid": None,
        "field_smoothing": (1.75, 0.5),
        "optimizer": None,
        "scales": None,
        "sampling": None,
        "shrink_factors": (2, 1),
    },
}
#: Defaults of ``align_deformable`` that depend on its transform.
_DEFORMABLE_AUTO: dict[str, dict[str, str]] = {
    "bspline": {"optimizer": "lbfgsb", "scales": "none", "sampling": "random"},
    "field": {"optimizer": "gradient_descent", "scales": "physical_shift", "sampling": "none"},
}


# --------------------------------------------------------------------------- option checking


def _suggest(value: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(str(value), list(valid), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _choice(value: Any, valid: Sequence[str], argname: str) -> str:
    if not isinstance(value, str) or value not in valid:
        raise LazyregError(
            f"{argname}: unknown value {value!r}{_suggest(str(value), valid)}; valid: {', '.join(valid)}"
        )
    return value


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
            return _LEARNING_RATE[_choice(value, list(_LEARNING_RATE), f"{argname}: {p.name}")]
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
                f"{_suggest(str(key), list(params))}; valid: {valid}"
            )
    out = {k: v for k, v in defaults.items() if k in params}
    out.update(args)
    converted = {k: _convert_arg(params[k], v, argname) for k, v in out.items()}
    return converted


def _positive_ints(value: Any, argname: str) -> tuple[int, ...]:
    arr = np.atleast_1d(np.asarray(value, dtype=object))
    try:
        vals = [float(v) for v in arr.ravel()]
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected positive integers, got {value!r}") from None
    if arr.ndim != 1 or not vals or any(v < 1 or not v.is_integer() for v in vals):
        raise LazyregError(f"{argname}: expected a non-empty sequence of positive integers, got {value!r}")
    return tuple(int(v) for v in vals)


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
        ``smooth_sigmas`` not of the length of ``shrink_factors``), the "demons" metric without
        ``transform="field"``, or an optimizer that cannot optimise a dense field.

    Examples
    --------
    >>> from lazyreg.registration.itk import validate_itk_options
    >>> validate_itk_options("affine", {"metric": "mattes_mi"})["metric_args"]
    {'numberOfHistogramBins': 32}
    >>> validate_itk_options("affine", {"metric": "mattes"})
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: metric: unknown value 'mattes' (did you mean 'mattes_mi'?); valid: ants_neighborhood_correlation, correlation, demons, joint_histogram_mi, mattes_mi, mean_squares
    """
    step = _choice(step, _STEPS, "step")
    if not isinstance(options, Mapping):
        raise LazyregError(f"options: expected a dict of keyword arguments, got {type(options).__name__}")
    defaults = _STEP_DEFAULTS[step]
    for key in options:
        if key not in defaults:
            raise LazyregError(
                f"options: {key!r} is not an option of the {step!r} step{_suggest(str(key), list(defaults))}; "
                f"valid: {', '.join(defaults)}"
            )
    o = {**defaults, **options}
    if step == "affine":
        o["transform"] = _choice(o["transform"], AFFINE_TRANSFORMS, "transform")
    else:
        o["transform"] = _choice(o["transform"], DEFORMABLE_TRANSFORMS, "transform")
        for key, value in _DEFORMABLE_AUTO[o["transform"]].items():
            if o[key] is None:
                o[key] = value
    o["metric"] = _choice(o["metric"], list(METRICS), "metric")
    o["optimizer"] = _choice(o["optimizer"], list(OPTIMIZERS), "optimizer")
    o["sampling"] = _choice(o["sampling"], list(SAMPLING), "sampling")
    o["interpolator"] = _choice(o["interpolator"], list(INTERPOLATORS), "interpolator")
    o["scales"] = _choice(o["scales"], SCALES, "scales")
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
        "optimizer",
        o["optimizer"],
        OPTIMIZERS[o["optimizer"]],
        o["optimizer_args"],
        _OPTIMIZER_DEFAULTS[o["optimizer"]],
    )
    missing = [
        p.name
        for p in _method_params(OPTIMIZERS[o["optimizer"]])
        if p.required and p.name not in o["optimizer_args"] and p.name not in _PER_LEVEL
    ]
    if missing:  # pragma: no cover - lazyreg has a default for every required parameter
        raise LazyregError(f"optimizer_args: {o['optimizer']!r} needs {', '.join(missing)}")
    if o["shrink_factors"] is None:
        if o["smooth_sigmas"] is not None:
            raise LazyregError("smooth_sigmas: give shrink_factors too (one sigma per level)")
        n = None
    else:
        o["shrink_factors"] = _positive_ints(o["shrink_factors"], "shrink_factors")
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
    if o["sampling_percentage"] is not None:
        if n is None and np.size(o["sampling_percentage"]) != 1:
            raise LazyregError("sampling_percentage: give shrink_factors too, or a single value for every level")
        o["sampling_percentage"] = _float_seq(
            o["sampling_percentage"], "sampling_percentage", n or 1, low=0.0, high=1.0, strict_low=True
        )
    if o["initial"] is not None:
        o["initial"] = np.asarray(Affine(o["initial"]).compute().matrix, dtype=float)
    seed = o["seed"]
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise LazyregError(f"seed: expected a non-negative integer, got {seed!r}")
    threads = o["threads"]
    if threads is not None and (
        isinstance(threads, (bool, np.bool_)) or not isinstance(threads, (int, np.integer)) or threads < 1
    ):
        raise LazyregError(f"threads: expected a positive integer or None (all cores), got {threads!r}")
    o["fixed_mask"] = _mask_arg(o["fixed_mask"], "fixed_mask")
    o["moving_mask"] = _mask_arg(o["moving_mask"], "moving_mask")
    if step == "deformable":
        cps = o["control_point_spacing"]
        if cps is not None:
            try:
                arr = np.atleast_1d(np.asarray(cps, dtype=float))
            except (TypeError, ValueError):
                arr = np.array([np.nan])
            if arr.ndim != 1 or arr.size not in (1, 3) or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
                raise LazyregError(
                    f"control_point_spacing: expected a positive number or 3 (z, y, x), got {cps!r}"
                )
            o["control_point_spacing"] = tuple(float(v) for v in np.broadcast_to(arr, (3,)))
        lv = _positive_ints(o["control_point_levels"], "control_point_levels")
        if n is not None and len(lv) > n:
            raise LazyregError(
                f"control_point_levels: got {len(lv)} levels {lv} but shrink_factors has {n}; "
                "give at most one refinement factor per level"
            )
        for a, b in zip(lv, lv[1:]):
            if b % a:
                raise LazyregError(
                    f"control_point_levels: each factor must be a multiple of the previous one "
                    f"(e.g. (1, 2, 4)), got {lv}"
                )
        o["control_point_levels"] = lv
        fg = o["field_grid"]
        if fg is not None and not isinstance(fg, Grid):
            raise LazyregError(f"field_grid: expected a lazyreg.images.Grid or None, got {type(fg).__name__}")
        sm = np.atleast_1d(np.asarray(o["field_smoothing"], dtype=float))
        if sm.shape != (2,) or np.any(sm < 0) or not np.all(np.isfinite(sm)):
            raise LazyregError(
                f"field_smoothing: expected 2 non-negative variances (update, total) in field voxels, "
                f"got {o['field_smoothing']!r}"
            )
        o["field_smoothing"] = (float(sm[0]), float(sm[1]))
    return o


# --------------------------------------------------------------------------- images


def _values(img: xr.DataArray, argname: str) -> np.ndarray:
    """Float32 copy of an image's values, refusing NaN/inf and constant images."""
    data = img.data
    vals = np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=np.float32)
    if not np.all(np.isfinite(vals)):
        raise LazyregError(f"{argname}: image contains NaN or infinite values; replace them (e.g. by 0) first")
    lo, hi = float(vals.min()), float(vals.max())
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant ({hi:g})"
        raise LazyregError(f"{argname}: image is {what}; there is nothing to align (check the data or the crop)")
    return vals


def _to_sitk(vals: np.ndarray, g: Grid) -> sitk.Image:
    img = sitk.GetImageFromArray(vals)
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin[::-1])
    return img


def _mask_image(
    mask: xr.DataArray | None, g: Grid, argname: str, image_arg: str
) -> tuple[sitk.Image | None, float]:
    """A uint8 SimpleITK mask on the image's grid, and the fraction of voxels inside it."""
    if mask is None:
        return None, 1.0
    validate_image(mask, argname)
    if tuple(mask.shape) != g.shape:
        raise LazyregError(
            f"{argname}: shape {tuple(mask.shape)} differs from {image_arg} {g.shape}; "
            f"a mask must lie on the grid of {image_arg}"
        )
    mg = grid_of(mask, argname)
    same_origin = np.allclose(mg.origin, g.origin, rtol=0, atol=1e-6 * max(g.spacing))
    if not (np.allclose(mg.spacing, g.spacing, rtol=1e-6) and same_origin):
        raise LazyregError(
            f"{argname}: grid (spacing {mg.spacing}, origin {mg.origin}) differs from {image_arg} "
            f"(spacing {g.spacing}, origin {g.origin}); a mask must lie on the grid of {image_arg}"
        )
    vals = np.asarray(mask.values)
    if not (vals.dtype == np.bool_ or np.all((vals == 0) | (vals == 1))):
        raise LazyregError(f"{argname}: expected a boolean mask (or 0/1 values), got dtype {vals.dtype}")
    vals = vals.astype(np.uint8)
    frac = float(vals.mean())
    if frac == 0:
        raise LazyregError(f"{argname}: the mask is empty (no True voxel); pass None to use the whole image")
    return _to_sitk(vals, g), frac


def _level_image(img: sitk.Image, factor: int, sigma: float, threads: int) -> sitk.Image:
    """Smooth by ``sigma`` (physical) and subsample by ``factor``: block average, then the rest as Gaussian.

    Averaging ``factor`` voxels blurs with variance ``(factor**2 - 1) / 12`` voxels squared; the
    Gaussian adds what is missing to reach ``sigma**2`` on each axis (nothing if the block average
    already blurs more). Much cheaper than smoothing the full-resolution image.
    """
    out = img
    sp = np.asarray(img.GetSpacing())
    var = np.full(3, float(sigma) ** 2)
    if factor > 1:
        f = sitk.BinShrinkImageFilter()
        f.SetShrinkFactors([int(factor)] * 3)
        f.SetNumberOfThreads(threads)
        out = f.Execute(img)
        var = var - (factor**2 - 1) / 12.0 * sp**2
    var = np.clip(var, 0.0, None)
    if np.any(var > 1e-12 * sp**2):
        g = sitk.DiscreteGaussianImageFilter()
        g.SetVariance(var.tolist())
        g.SetUseImageSpacing(True)
        g.SetMaximumKernelWidth(64)
        g.SetNumberOfThreads(threads)
        out = g.Execute(out)
    return out


def _auto_shrink(g: Grid) -> tuple[int, ...]:
    """Factors of :data:`AUTO_SHRINK` that leave at least ``AUTO_MIN_VOXELS`` on the shortest axis."""
    n = min(g.shape)
    return tuple(f for f in AUTO_SHRINK if f == 1 or n // f >= AUTO_MIN_VOXELS)


def _levels(o: Mapping[str, Any], g: Grid) -> list[tuple[int, float, float | None]]:
    """(shrink factor, smoothing sigma, sampling percentage or None = automatic) per level."""
    factors = o["shrink_factors"] or _auto_shrink(g)
    sigmas = o["smooth_sigmas"]
    if sigmas is None:
        sigmas = tuple(0.5 * f * max(g.spacing) if f > 1 else 0.0 for f in factors)
    pcts = o["sampling_percentage"]
    if pcts is None:
        pcts = (None,) * len(factors)
    elif len(pcts) == 1:
        pcts = pcts * len(factors)
    return list(zip(factors, sigmas, pcts))


def _centre_xyz(g: Grid) -> tuple[float, float, float]:
    lo, hi = g.extent
    return tuple(float(v) for v in ((lo + hi) / 2)[::-1])  # type: ignore[return-value]


# --------------------------------------------------------------------------- registration core


_OUTSIDE = ("outside moving image buffer", "outside the moving image", "no valid points", "not enough samples")


def _itk_error(exc: RuntimeError, level: int, factor: int) -> LazyregError:
    """Turn a SimpleITK exception into one LazyregError with advice."""
    text = str(exc)
    lines = [ln.strip() for ln in text.splitlines() if "ITK ERROR" in ln]
    short = lines[-1] if lines else (text.strip().splitlines() or ["unknown error"])[-1]
    short = re.sub(r"^ITK ERROR: [^:]*\([^)]*\): ", "", short).strip()
    where = f"level {level + 1} (shrink {factor})"
    if any(s in text.lower() for s in _OUTSIDE) or "samples map outside" in text.lower():
        return LazyregError(
            f"initial: at {where} the metric samples map outside the moving image ({short}); start closer: "
            "pass a better `initial` (e.g. from a `ransac` or `random` step), or check spacing and origin"
        )
    if "mask" in text.lower():
        return LazyregError(
            f"fixed_mask: SimpleITK failed at {where}: {short}; check that the masks overlap the images"
        )
    return LazyregError(
        f"optimizer: SimpleITK registration failed at {where}: {short}; check metric/optimizer options "
        "or start closer with `initial`"
    )


def _itk_seed(seed: int) -> int:
    # 0 means "wall clock" to SimpleITK: shift so that every lazyreg seed is reproducible.
    return int(seed) % (2**32 - 1) + 1


def _setup_method(
    o: Mapping[str, Any],
    nparams: int,
    min_spacing: float,
    percentage: float,
    threads: int,
    masks: tuple[sitk.Image | None, sitk.Image | None],
) -> sitk.ImageRegistrationMethod:
    R = sitk.ImageRegistrationMethod()
    R.SetNumberOfThreads(threads)
    getattr(R, METRICS[o["metric"]])(**o["metric_args"])
    # Gradient images of the whole level would cost more than the optimisation on sampled points.
    R.SetMetricUseFixedImageGradientFilter(False)
    R.SetMetricUseMovingImageGradientFilter(False)
    R.SetMetricSamplingStrategy(SAMPLING[o["sampling"]])
    if o["sampling"] != "none":
        R.SetMetricSamplingPercentage(float(percentage), _itk_seed(o["seed"]))
    R.SetInterpolator(INTERPOLATORS[o["interpolator"]])
    opt_args = dict(o["optimizer_args"])
    if o["optimizer"] == "exhaustive":
        opt_args.setdefault("numberOfSteps", [0] * nparams)
        if len(opt_args["numberOfSteps"]) != nparams:
            raise LazyregError(
                f"optimizer_args: numberOfSteps needs one value per transform parameter ({nparams}), "
                f"got {len(opt_args['numberOfSteps'])}"
            )
    if o["optimizer"] == "regular_step_gradient_descent":
        opt_args.setdefault("minStep", MIN_STEP_FRACTION * min_spacing)
    if o["optimizer"] == "one_plus_one_evolutionary":
        opt_args.setdefault("seed", _itk_seed(o["seed"]))
    getattr(R, OPTIMIZERS[o["optimizer"]])(**opt_args)
    if o["scales"] != "none" and o["optimizer"] not in _UNSCALED:
        {
            "physical_shift": R.SetOptimizerScalesFromPhysicalShift,
            "index_shift": R.SetOptimizerScalesFromIndexShift,
            "jacobian": R.SetOptimizerScalesFromJacobian,
        }[o["scales"]]()
    if masks[0] is not None:
        R.SetMetricFixedMask(masks[0])
    if masks[1] is not None:
        R.SetMetricMovingMask(masks[1])
    R.SetShrinkFactorsPerLevel([1])
    R.SetSmoothingSigmasPerLevel([0.0])
    return R


def _run_levels(
    o: Mapping[str, Any],
    fixed: xr.DataArray,
    moving: xr.DataArray,
    make_transform: Callable[[sitk.Image], sitk.Transform],
    before_level: Callable[[int, sitk.Transform, sitk.Image, sitk.Image, int], None] | None = None,
    virtual: sitk.Image | None = None,
) -> tuple[sitk.Transform, list[dict], dict]:
    """The multi-resolution loop shared by every step; the transform is optimised in place."""
    t_start = time.perf_counter()
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    threads = int(o["threads"] or os.cpu_count() or 1)
    fmask, ffrac = _mask_image(o["fixed_mask"], gf, "fixed_mask", "fixed")
    mmask, _ = _mask_image(o["moving_mask"], gm, "moving_mask", "moving")
    F = _to_sitk(_values(fixed, "fixed"), gf)
    M = _to_sitk(_values(moving, "moving"), gm)
    moving_init = None if o["initial"] is None else Affine(o["initial"]).to_sitk()
    transform = make_transform(F)
    plan = _levels(o, gf)
    for name, g in (("fixed", gf), ("moving", gm)):
        f_max = max(f for f, _, _ in plan)
        if min(g.shape) // f_max < 2:
            raise LazyregError(
                f"shrink_factors: factor {f_max} leaves fewer than 2 voxels along the shortest axis of "
                f"{name} {g.shape}; use smaller factors (or None for automatic ones)"
            )
    levels: list[dict] = []
    for k, (f, s, pct) in enumerate(plan):
        t0 = time.perf_counter()
        Fk = _level_image(F, f, s, threads)
        Mk = _level_image(M, f, s, threads)
        nvox = int(np.prod((virtual if virtual is not None else Fk).GetSize()))
        if pct is None:
            pct = min(1.0, DEFAULT_SAMPLES / max(1.0, nvox * ffrac))
        if before_level is not None:
            before_level(k, transform, Fk, Mk, threads)
        R = _setup_method(
            o, transform.GetNumberOfParameters(), min(Fk.GetSpacing()), pct, threads, (fmask, mmask)
        )
        if moving_init is not None:
            R.SetMovingInitialTransform(moving_init)
        if virtual is not None:
            R.SetVirtualDomainFromImage(virtual)
        R.SetInitialTransform(transform, inPlace=True)
        iters = [0]

        def on_iteration(R=R, iters=iters) -> None:
            iters[0] += 1

        R.AddCommand(sitk.sitkIterationEvent, on_iteration)
        t1 = time.perf_counter()
        try:
            R.Execute(Fk, Mk)
        except RuntimeError as exc:
            raise _itk_error(exc, k, f) from None
        value = float(R.GetMetricValue())
        valid = int(R.GetMetricNumberOfValidPoints())
        if valid == 0:
            raise _itk_error(RuntimeError("All samples map outside moving image buffer"), k, f)
        params = np.asarray(transform.GetParameters(), dtype=float)
        if not np.all(np.isfinite(params)):
            raise LazyregError(
                f"optimizer: the {o['optimizer']!r} optimizer diverged at level {k + 1} (non-finite "
                "parameters); lower its learningRate in optimizer_args or start closer with `initial`"
            )
        levels.append(
            {
                "level": k + 1,
                "shrink_factor": int(f),
                "smooth_sigma": float(s),
                "shape": tuple(int(v) for v in Fk.GetSize()[::-1]),
                "sampling_percentage": float(pct) if o["sampling"] != "none" else 1.0,
                "samples": int(round(nvox * ffrac * (pct if o["sampling"] != "none" else 1.0))),
                "iterations": int(iters[0]),
                "metric_value": value,
                "valid_points": valid,
                "stop_condition": R.GetOptimizerStopConditionDescription(),
                "seconds": time.perf_counter() - t0,
                "seconds_optimizer": time.perf_counter() - t1,
            }
        )
    summary = {
        "metric": o["metric"],
        "optimizer": o["optimizer"],
        "metric_value": levels[-1]["metric_value"],
        "stop_condition": levels[-1]["stop_condition"],
        "iterations": sum(lv["iterations"] for lv in levels),
        "levels": levels,
        "threads": threads,
        "seed": int(o["seed"]),
        "seconds": time.perf_counter() - t_start,
    }
    return transform, levels, summary


# --------------------------------------------------------------------------- public steps


def align_affine(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    transform: str = "affine",
    initial: np.ndarray | None = None,
    metric: str = "correlation",
    metric_args: Mapping[str, Any] | None = None,
    optimizer: str = "regular_step_gradient_descent",
    optimizer_args: Mapping[str, Any] | None = None,
    scales: str = "physical_shift",
    sampling: str = "random",
    sampling_percentage: float | Sequence[float] | None = None,
    interpolator: str = "linear",
    shrink_factors: Sequence[int] | None = None,
    smooth_sigmas: Sequence[float] | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> tuple[np.ndarray, dict]:
    """Refine an affine or rigid transform by intensity-based registration with SimpleITK.

    The optimised transform ``T`` (an ``AffineTransform`` or a ``VersorRigid3DTransform``, both
    about the centre of the fixed image) is applied before ``initial``: the result is
    ``initial @ T``, the full fixed -> moving matrix. Eager: both images are read into memory
    (pass a downsampled level of large data).

    The defaults are chosen for light-sheet volumes (the same tissue imaged twice; sparse cells,
    background, tens of micrometres and a few degrees apart): correlation metric, regular-step
    gradient descent with physical-shift scales and a first step of one voxel per level, about
    5 000 random samples per level, and an automatic pyramid from 16x coarser down to full
    resolution. On the tutorial volumes (149 x 241 x 456 voxels) this reaches a Pearson
    correlation of 0.46 from the identity or from a centre / moments initialisation in about 2 s
    on 2 cores.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (dims z, y, x with physical coordinates); any grids, dtypes and spacings.
    transform : {"affine", "rigid"}
        What ``T`` may do: a general affine (12 parameters) or a rotation and translation (6).
    initial : (4, 4) array, optional
        Starting fixed -> moving transform (zyx, physical), e.g. from a feature or random step.
        Default: identity. Intensity registration converges only from roughly aligned images
        (the coarse levels extend the capture range to several coarse voxels).
    metric : str
        One of :data:`METRICS` except "demons" (which needs a dense field, see
        :func:`align_deformable`): "correlation" (default: fast and accurate for the same stain
        imaged twice), "mattes_mi" (when intensities differ between rounds), "mean_squares",
        "joint_histogram_mi", "ants_neighborhood_correlation".
    metric_args : dict, optional
        Parameters of SimpleITK's ``SetMetricAs...`` method by their SimpleITK names, e.g.
        ``{"numberOfHistogramBins": 64}``. lazyreg uses 32 bins for Mattes MI and radius 2 for
        ANTS neighbourhood correlation.
    optimizer : str
        One of :data:`OPTIMIZERS`. Default "regular_step_gradient_descent".
    optimizer_args : dict, optional
        Parameters of SimpleITK's ``SetOptimizerAs...`` method by their SimpleITK names, e.g.
        ``{"numberOfIterations": 200}``; ``estimateLearningRate`` as "never", "once" or
        "each_iteration". lazyreg's defaults: 100 iterations per level for every optimizer;
        regular-step gradient descent with ``estimateLearningRate="once"`` (the first step moves
        points by at most one voxel of the level, whatever the units), relaxationFactor 0.5,
        gradientMagnitudeTolerance 1e-6 and ``minStep`` = ``MIN_STEP_FRACTION`` (1/200) of the
        level's smallest voxel size; LBFGSB with gradientConvergenceTolerance 1e-4, 50 iterations
        and 200 evaluations; exhaustive with ``numberOfSteps`` 0 per parameter (one evaluation).
    scales : {"physical_shift", "index_shift", "jacobian", "none"}
        How parameter scales are estimated (``SetOptimizerScalesFrom...``); "physical_shift"
        (default) makes a unit step move points by about the same distance for rotations, scales
        and shifts. LBFGS optimizers ignore scales.
    sampling : {"random", "regular", "none"}
        Metric sampling strategy; "none" uses every voxel.
    sampling_percentage : float or sequence of floats, optional
        Fraction (0, 1] of fixed voxels sampled, one value or one per level. Default: about
        ``DEFAULT_SAMPLES`` (5 000) points per level inside ``fixed_mask``, which keeps an
        iteration at a few milliseconds whatever the image size.
    interpolator : str
        One of :data:`INTERPOLATORS` for the moving image; default "linear".
    shrink_factors : sequence of int, optional
        Multi-resolution levels, coarse to fine. Default: (16, 8, 4, 2, 1) without the levels
        that would leave fewer than ``AUTO_MIN_VOXELS`` (8) voxels along the shortest axis.
    smooth_sigmas : sequence of float, optional
        Gaussian sigma per level in **physical units**, same length as ``shrink_factors``.
        Default: half a shrunk voxel, ``0.5 * f * max(fixed spacing)`` for ``f > 1``, 0 for 1.
    fixed_mask, moving_mask : xarray.DataArray, optional
        Boolean images on the fixed / moving grid; metric samples are taken inside them.
    seed : int
        Seed of random sampling (and of the 1+1 evolutionary optimizer): the same seed and
        ``threads`` give identical results run after run.
    threads : int, optional
        ITK threads; default ``os.cpu_count()``.

    Returns
    -------
    matrix : (4, 4) ndarray
        Fixed -> moving transform (zyx, physical), ``initial`` included.
    report : dict
        ``step``, ``transform``, ``metric``, ``optimizer``, final ``metric_value`` (lower is
        better, as ITK reports it), ``stop_condition``, total ``iterations`` and ``seconds``,
        ``threads``, ``seed`` and ``levels``: per level the shrink factor, sigma, shape, samples,
        valid points, iterations (metric evaluations reported by the optimizer), metric value,
        optimizer stop condition and seconds.

    Raises
    ------
    LazyregError
        For invalid options (see :func:`validate_itk_options`), NaN or constant images, masks
        not on the image grid, or a SimpleITK failure (with advice, e.g. start closer with
        ``initial`` when samples map outside the moving image).

    Notes
    -----
    Each level is a separate SimpleITK run on a pyramid built by block averaging (``BinShrink``)
    and a small Gaussian, so that the total blur has the requested sigma; this is several times
    cheaper than SimpleITK's own pyramid (which smooths at full resolution and computes gradient
    images). Block averaging drops the last ``f - 1`` voxels of an axis at a level of factor ``f``.

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.itk import align_affine
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    >>> m, report = align_affine(fixed, moving, initial=truth, shrink_factors=(1,),
    ...                          optimizer_args={"numberOfIterations": 3})
    >>> m.shape, len(report["levels"])
    ((4, 4), 1)
    """
    o = validate_itk_options(
        "affine",
        dict(
            transform=transform, initial=initial, metric=metric, metric_args=metric_args, optimizer=optimizer,
            optimizer_args=optimizer_args, scales=scales, sampling=sampling,
            sampling_percentage=sampling_percentage, interpolator=interpolator, shrink_factors=shrink_factors,
            smooth_sigmas=smooth_sigmas, fixed_mask=fixed_mask, moving_mask=moving_mask, seed=seed,
            threads=threads,
        ),
    )
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    centre = _centre_xyz(grid_of(fixed, "fixed"))

    def make(_: sitk.Image) -> sitk.Transform:
        t = sitk.VersorRigid3DTransform() if o["transform"] == "rigid" else sitk.AffineTransform(3)
        t.SetCenter(centre)
        return t

    t, _, summary = _run_levels(o, fixed, moving, make)
    local = Affine.from_sitk(t).matrix
    init = np.eye(4) if o["initial"] is None else o["initial"]
    matrix = np.asarray(init @ local, dtype=float)
    report = {"step": "affine", "transform": o["transform"], **summary}
    return matrix, report


def _deform_layout(o: Mapping[str, Any], gf: Grid) -> tuple[np.ndarray, np.ndarray, list[int], Grid]:
    """Field extent, control-point spacing, per-level refinement factors and field grid."""
    lo, hi = gf.extent
    size = np.maximum(hi - lo, np.asarray(gf.spacing))
    cps = np.asarray(o["control_point_spacing"] or np.full(3, size.max() / 8.0), dtype=float)
    lv = o["control_point_levels"]
    nlev = len(_levels(o, gf))
    if len(lv) > nlev:
        raise LazyregError(
            f"control_point_levels: got {len(lv)} levels {lv} but there are {nlev} resolution levels; "
            "give at most one refinement factor per level (or pass shrink_factors)"
        )
    factors = list(lv) + [lv[-1]] * (nlev - len(lv))
    g = o["field_grid"] or _default_field_grid(gf, cps / factors[-1])
    return size, cps, factors, g


def deformable_field_grid(fixed_grid: Grid, options: Mapping[str, Any]) -> Grid:
    """The grid on which :func:`align_deformable` returns its field, known before it runs.

    Examples
    --------
    >>> from lazyreg.images import Grid
    >>> from lazyreg.registration.itk import deformable_field_grid
    >>> deformable_field_grid(Grid((40, 80, 80), 1.0), {"control_point_spacing": 16.0}).spacing
    (4.0, 4.0, 4.0)
    """
    o = validate_itk_options("deformable", dict(options))
    return _deform_layout(o, fixed_grid)[3]


def _default_field_grid(gf: Grid, finest_cps: np.ndarray) -> Grid:
    """Fixed grid subsampled so its spacing is about a quarter of the finest control-point spacing."""
    sp = np.asarray(gf.spacing)
    step = np.maximum(1, np.floor(finest_cps / 4.0 / sp)).astype(int)
    shape = (np.asarray(gf.shape) - 1 + step - 1) // step + 1  # covers the last fixed voxel
    return Grid(tuple(int(v) for v in shape), tuple(sp * step), gf.origin)


def _field_image(g: Grid) -> sitk.Image:
    """A zero displacement-field image (xyz vectors) on grid ``g``."""
    img = sitk.Image([int(v) for v in g.shape[::-1]], sitk.sitkVectorFloat64, 3)
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin[::-1])
    return img


def _sampled_field(t: sitk.Transform, g: Grid, threads: int) -> DisplacementField:
    """``t(x) - x`` at the voxel centres of ``g`` as a (zyx) DisplacementField."""
    conv = sitk.TransformToDisplacementFieldFilter()
    conv.SetOutputPixelType(sitk.sitkVectorFloat64)
    conv.SetReferenceImage(_field_image(g))
    conv.SetNumberOfThreads(threads)
    return DisplacementField.from_sitk(conv.Execute(t))


def _refine_bspline(t: sitk.Transform, ratio: int, Fk: sitk.Image, threads: int) -> None:
    """Refine the B-spline mesh of ``t`` in place by ``ratio`` with SimpleITK's adaptor.

    The adaptor runs when a registration starts; a run of zero iterations refines the mesh for
    every optimizer (LBFGSB cannot resize its bounds when the adaptor runs inside its own run).
    """
    R = sitk.ImageRegistrationMethod()
    R.SetNumberOfThreads(threads)
    R.SetMetricAsMeanSquares()
    R.SetMetricSamplingStrategy(R.RANDOM)
    R.SetMetricSamplingPercentage(min(1.0, 1000 / max(1, int(np.prod(Fk.GetSize())))), 1)
    R.SetOptimizerAsGradientDescent(learningRate=1.0, numberOfIterations=0)
    R.SetInitialTransformAsBSpline(t, inPlace=True, scaleFactors=[int(ratio)])
    R.Execute(Fk, Fk)


def align_deformable(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    transform: str = "bspline",
    initial: np.ndarray | None = None,
    control_point_spacing: float | Sequence[float] | None = None,
    control_point_levels: Sequence[int] = (1,),
    field_grid: Grid | None = None,
    field_smoothing: Sequence[float] = (1.75, 0.5),
    metric: str = "correlation",
    metric_args: Mapping[str, Any] | None = None,
    optimizer: str | None = None,
    optimizer_args: Mapping[str, Any] | None = None,
    scales: str | None = None,
    sampling: str | None = None,
    sampling_percentage: float | Sequence[float] | None = None,
    interpolator: str = "linear",
    shrink_factors: Sequence[int] | None = (2, 1),
    smooth_sigmas: Sequence[float] | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> tuple[np.ndarray, Grid, dict]:
    """Optimise a deformation on top of an affine and return it as a displacement field.

    The deformation ``B`` (a cubic B-spline, or a dense displacement field) is applied before
    ``initial``: the whole transform is ``initial(B(x))``, i.e. the list
    ``[Affine(initial), DisplacementField]`` in lazyreg's order (the last is applied first). The
    returned values are ``B(x) - x`` sampled on a grid (zyx, physical units).

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (dims z, y, x with physical coordinates), read into memory.
    transform : {"bspline", "field"}
        "bspline" (default): a cubic B-spline with control points ``control_point_spacing`` apart,
        converted at the end with ``TransformToDisplacementFieldFilter``. "field": a dense
        displacement field on ``field_grid``, smoothed at each update by ``field_smoothing``
        (the transform of the "demons" metric; optimizers: :data:`FIELD_OPTIMIZERS`).
    initial : (4, 4) array, optional
        Affine fixed -> moving (zyx, physical), e.g. from :func:`align_affine`. Default identity.
    control_point_spacing : float or 3 floats, optional
        Distance between B-spline control points at the first level, physical units (z, y, x).
        Default: an eighth of the longest side of the fixed image, on every axis.
    control_point_levels : sequence of int
        Refinement factor of the control-point mesh per level, each a multiple of the previous
        (as ``scaleFactors`` of SimpleITK / bigstream): ``(1, 2, 4)`` halves the spacing at each of
        three levels. At most one per level of ``shrink_factors``; later levels keep the last mesh.
    field_grid : Grid, optional
        Where the displacements are sampled (and, for "field", optimised). Default: the fixed grid
        subsampled by whole voxels per axis to a spacing of about a quarter of the finest
        control-point spacing, never finer than the fixed spacing.
    field_smoothing : 2 floats
        For "field": variances (update field, total field) of ITK's Gaussian smoothing on update,
        in voxels of ``field_grid`` (SimpleITK's defaults, 1.75 and 0.5).
    metric, metric_args, optimizer_args, interpolator
        As in :func:`align_affine`.
    optimizer : str, optional
        Default "lbfgsb" for "bspline" (50 iterations and at most 200 evaluations per level),
        "gradient_descent" for "field".
    scales : str, optional
        Default "none" for "bspline" (every parameter is a shift in physical units already, and
        estimating scales for thousands of parameters is slow), "physical_shift" for "field".
    sampling : str, optional
        Default "random" (``DEFAULT_SAMPLES`` per level) for "bspline", "none" (every point of
        ``field_grid``) for "field".
    sampling_percentage, smooth_sigmas, fixed_mask, moving_mask, seed, threads
        As in :func:`align_affine`.
    shrink_factors : sequence of int, optional
        Multi-resolution levels; default (2, 1); None = automatic as in :func:`align_affine`.

    Returns
    -------
    values : (Z, Y, X, 3) ndarray
        Displacements (dz, dy, dx) at the voxel centres of ``grid``; wrap with
        ``DisplacementField.from_array(values, grid.spacing, grid.origin)``.
    grid : Grid
        The grid of ``values``.
    report : dict
        As for :func:`align_affine`, plus ``control_point_spacing`` and ``mesh_size`` (z, y, x,
        per level for "bspline"), ``field_shape`` and the largest displacement ``max_displacement``.

    Raises
    ------
    LazyregError
        As :func:`align_affine`.

    Notes
    -----
    SimpleITK evaluates the B-spline's Jacobian densely, so one metric evaluation costs about
    ``samples x parameters`` (tens of microseconds per sample for a few thousand parameters):
    keep the mesh coarse, or register blocks separately.

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.itk import align_deformable
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    >>> values, grid, report = align_deformable(fixed, moving, initial=truth, control_point_spacing=24,
    ...                                         optimizer_args={"numberOfIterations": 2})
    >>> values.shape[-1], values.shape[:3] == grid.shape
    (3, True)
    """
    o = validate_itk_options(
        "deformable",
        dict(
            transform=transform, initial=initial, control_point_spacing=control_point_spacing,
            control_point_levels=control_point_levels, field_grid=field_grid, field_smoothing=field_smoothing,
            metric=metric, metric_args=metric_args, optimizer=optimizer, optimizer_args=optimizer_args,
            scales=scales, sampling=sampling, sampling_percentage=sampling_percentage, interpolator=interpolator,
            shrink_factors=shrink_factors, smooth_sigmas=smooth_sigmas, fixed_mask=fixed_mask,
            moving_mask=moving_mask, seed=seed, threads=threads,
        ),
    )
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    gf = grid_of(fixed, "fixed")
    size, cps, factors, g = _deform_layout(o, gf)
    extra: dict[str, Any] = {}

    if o["transform"] == "field":

        def make(_: sitk.Image) -> sitk.Transform:
            t = sitk.DisplacementFieldTransform(_field_image(g))
            t.SetSmoothingGaussianOnUpdate(*o["field_smoothing"])
            return t

        t, levels, summary = _run_levels(o, fixed, moving, make, virtual=_field_image(g))
        field = DisplacementField.from_sitk(t)
        extra["field_smoothing"] = o["field_smoothing"]
    else:
        mesh = np.maximum(1, np.round(size / cps)).astype(int)  # zyx
        mesh_per_level = [tuple(int(v) for v in mesh * f) for f in factors]

        def make(F: sitk.Image) -> sitk.Transform:
            return sitk.BSplineTransformInitializer(F, [int(v) for v in mesh[::-1]], 3)

        def refine(k: int, t: sitk.Transform, Fk: sitk.Image, Mk: sitk.Image, threads: int) -> None:
            ratio = factors[k] // factors[k - 1] if k else 1
            if ratio > 1:
                _refine_bspline(t, ratio, Fk, threads)

        t, levels, summary = _run_levels(o, fixed, moving, make, refine)
        for lvl, m in zip(levels, mesh_per_level):
            lvl["mesh_size"] = m
        field = _sampled_field(t, g, summary["threads"])
        extra["control_point_spacing"] = tuple(float(v) for v in cps / factors[-1])
        extra["mesh_size"] = mesh_per_level[-1]
    values = np.asarray(field.values, dtype=np.float64)
    report = {
        "step": "deformable",
        "transform": o["transform"],
        **extra,
        "field_shape": field.grid.shape,
        "max_displacement": float(np.sqrt((values**2).sum(-1)).max()),
        **summary,
    }
    return values, field.grid, report
