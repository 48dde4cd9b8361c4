"""Running SimpleITK registration: images to ITK, the multi-resolution loop, field sampling.

:func:`run_levels` is the loop every SimpleITK step shares: it builds a pyramid by block averaging
(plus a small Gaussian, so the total blur has the requested sigma), sets up one
``ImageRegistrationMethod`` per level from checked options (:mod:`.itk_options`), optimises the
transform in place and reports each level. The helpers below it know the deformable step's grids.
"""

from __future__ import annotations

import logging
import os
import re
import time
from typing import Any, Callable, Mapping

import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from .itk_options import (
    AUTO_MIN_VOXELS,
    AUTO_SHRINK,
    DEFAULT_SAMPLES,
    INTERPOLATORS,
    METRICS,
    MIN_STEP_FRACTION,
    OPTIMIZERS,
    SAMPLING,
    UNSCALED_OPTIMIZERS,
    validate_itk_options,
)

__all__ = ["run_levels", "deformable_field_grid", "checked_values", "sitk_image", "subsampled_grid"]

log = logging.getLogger(__name__)

# --------------------------------------------------------------------------- images


def checked_values(img: xr.DataArray, argname: str) -> np.ndarray:
    """Float32 copy of an image's values, refusing NaN/inf and constant images.

    Examples
    --------
    >>> import lazyreg
    >>> checked_values(lazyreg.image(np.arange(8.0).reshape(2, 2, 2), 1.0), "fixed").dtype
    dtype('float32')
    """
    data = img.data
    vals = np.asarray(data.compute() if hasattr(data, "compute") else data, dtype=np.float32)
    if not np.all(np.isfinite(vals)):
        raise LazyregError(f"{argname}: image contains NaN or infinite values; replace them (e.g. by 0) first")
    lo, hi = float(vals.min()), float(vals.max())
    if lo == hi:
        what = "all zero" if hi == 0 else f"constant ({hi:g})"
        raise LazyregError(f"{argname}: image is {what}; there is nothing to align (check the data or the crop)")
    return vals


def sitk_image(vals: np.ndarray, g: Grid) -> sitk.Image:
    """A SimpleITK image of ``vals`` (zyx) on grid ``g`` (spacing and origin reversed to xyz).

    Examples
    --------
    >>> sitk_image(np.zeros((2, 3, 4), np.float32), Grid((2, 3, 4), (2.0, 1.0, 1.0))).GetSpacing()
    (1.0, 1.0, 2.0)
    """
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
    return sitk_image(vals, g), frac


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


def _check_shrink(factors: list[int], g: Grid, name: str) -> None:
    """Every level must keep at least 2 voxels along every axis (the same factor shrinks all axes);
    factor 1 does not shrink, so it is fine on a 1-voxel axis too. The advice names the largest
    factor that ``g`` allows."""
    f_max = max(factors)
    n = min(g.shape)
    if f_max == 1 or n // f_max >= 2:
        return
    axis = "zyx"[int(np.argmin(g.shape))]
    allowed = max(1, n // 2)
    fixed_up = tuple(dict.fromkeys(min(f, allowed) for f in factors))
    raise LazyregError(
        f"shrink_factors: factor {f_max} leaves fewer than 2 voxels ({n // f_max}) along axis {axis} of {name} {g.shape} "
        f"(every axis is shrunk by the same factor; a level needs at least 2 voxels per axis, or no shrinking); the "
        f"largest factor {name} allows is {allowed}: use shrink_factors={fixed_up}, or None for automatic ones"
    )


def level_plan(o: Mapping[str, Any], g: Grid) -> list[tuple[int, float, float | None]]:
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


def centre_xyz(g: Grid) -> tuple[float, float, float]:
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
        opt_args.setdefault("minStep", MIN_STEP_FRACTION)  # steps are in scaled units: a first step is about one voxel
    if o["optimizer"] == "one_plus_one_evolutionary":
        opt_args.setdefault("seed", _itk_seed(o["seed"]))
    getattr(R, OPTIMIZERS[o["optimizer"]])(**opt_args)
    if o["scales"] != "none" and o["optimizer"] not in UNSCALED_OPTIMIZERS:
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


def run_levels(
    o: Mapping[str, Any],
    fixed: xr.DataArray,
    moving: xr.DataArray,
    make_transform: Callable[[sitk.Image], sitk.Transform],
    before_level: Callable[[int, sitk.Transform, sitk.Image, sitk.Image, int], None] | None = None,
    virtual: sitk.Image | None = None,
    rounds: int = 1,
    after_round: Callable[[int, sitk.Transform], None] | None = None,
) -> tuple[sitk.Transform, list[dict], dict]:
    """The multi-resolution loop shared by every SimpleITK step; the transform is optimised in place.

    Parameters
    ----------
    o : dict
        Options checked by :func:`~lazyreg.registration.itk_options.validate_itk_options`.
    fixed, moving : xarray.DataArray
        Images (read into memory here).
    make_transform : callable
        ``make_transform(fixed_itk_image) -> sitk.Transform``, the transform to optimise.
    before_level : callable, optional
        ``before_level(k, transform, fixed_k, moving_k, threads)``, called before level ``k``
        (e.g. to refine a B-spline mesh).
    virtual : sitk.Image, optional
        The virtual domain (a dense field's grid).
    rounds : int
        Split each level's optimizer run into this many runs (at most one per iteration),
        each with its share of ``numberOfIterations`` / ``maximumNumberOfFunctionEvaluations``
        (rounded up); levels then report their ``rounds``. 1 (default): one run per level.
    after_round : callable, optional
        ``after_round(k, transform)``, called after every run of level ``k`` (e.g. a proximal step).

    Returns
    -------
    transform, levels, summary
        The optimised transform, one dict per level and a summary dict (metric, optimizer,
        final metric value, stop condition, iterations, threads, seed, seconds).

    Examples
    --------
    >>> import SimpleITK as sitk, lazyreg.data
    >>> from lazyreg.registration.itk_options import validate_itk_options
    >>> from lazyreg.registration.itk_runner import run_levels
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> o = validate_itk_options("affine", {"shrink_factors": (1,), "optimizer_args": {"numberOfIterations": 2}})
    >>> t, levels, summary = run_levels(o, fixed, moving, lambda F: sitk.TranslationTransform(3))
    >>> len(levels), summary["optimizer"]
    (1, 'regular_step_gradient_descent')
    """
    t_start = time.perf_counter()
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    threads = int(o["threads"] or os.cpu_count() or 1)
    fmask, ffrac = _mask_image(o["fixed_mask"], gf, "fixed_mask", "fixed")
    mmask, _ = _mask_image(o["moving_mask"], gm, "moving_mask", "moving")
    F = sitk_image(checked_values(fixed, "fixed"), gf)
    M = sitk_image(checked_values(moving, "moving"), gm)
    moving_init = None if o["initial"] is None else Affine(o["initial"]).to_sitk()
    transform = make_transform(F)
    plan = level_plan(o, gf)
    for name, g in (("fixed", gf), ("moving", gm)):
        _check_shrink([f for f, _, _ in plan], g, name)
    levels: list[dict] = []
    for k, (f, s, pct) in enumerate(plan):
        t0 = time.perf_counter()
        Fk = _level_image(F, f, s, threads)
        Mk = _level_image(M, f, s, threads)
        nvox = int(np.prod((virtual if virtual is not None else Fk).GetSize()))
        if pct is None:
            pct = min(1.0, (o.get("samples") or DEFAULT_SAMPLES) / max(1.0, nvox * ffrac))
        if before_level is not None:
            before_level(k, transform, Fk, Mk, threads)
        ok, nk = _round_options(o, rounds)
        for r in range(nk):  # a new method per run: it must start from the transform as it is now
            R = _setup_method(ok, transform.GetNumberOfParameters(), min(Fk.GetSpacing()), pct, threads, (fmask, mmask))
            if moving_init is not None:
                R.SetMovingInitialTransform(moving_init)
            if virtual is not None:
                R.SetVirtualDomainFromImage(virtual)
            R.SetInitialTransform(transform, inPlace=True)
            run = _execute(R, o, transform, Fk, Mk, k, f)
            if r:
                run.update(iterations=level["iterations"] + run["iterations"], rounds=r + 1,
                           seconds_optimizer=level["seconds_optimizer"] + run["seconds_optimizer"])
            level = run
            if after_round is not None:
                after_round(k, transform)
        sampled = o["sampling"] != "none"
        levels.append({
            "level": k + 1, "shrink_factor": int(f), "smooth_sigma": float(s),
            "shape": tuple(int(v) for v in Fk.GetSize()[::-1]), "sampling_percentage": float(pct) if sampled else 1.0,
            "samples": int(round(nvox * ffrac * (pct if sampled else 1.0))), **level,
            "seconds": time.perf_counter() - t0,
        })
    idle = [lv["level"] for lv in levels if lv["iterations"] == 0]
    warning = None
    if idle:
        warning = (
            f"the optimizer made no iteration at level(s) {idle} ({levels[idle[0] - 1]['stop_condition'][:160]}); "
            "the transform there is the start: check optimizer_args"
        )
        log.warning("%s", warning)
    summary = {
        "warning": warning, "metric": o["metric"], "optimizer": o["optimizer"],
        "metric_value": levels[-1]["metric_value"], "stop_condition": levels[-1]["stop_condition"],
        "iterations": sum(lv["iterations"] for lv in levels), "levels": levels, "threads": threads,
        "seed": int(o["seed"]), "seconds": time.perf_counter() - t_start,
    }
    return transform, levels, summary


def _round_options(o: Mapping[str, Any], rounds: int) -> tuple[Mapping[str, Any], int]:
    """Options for one of ``rounds`` runs of a level (iterations and evaluations shared out), and their number."""
    args = dict(o["optimizer_args"])
    rounds = min(int(rounds), max(1, int(args.get("numberOfIterations", rounds))))
    if rounds == 1:
        return o, 1
    shared = ("numberOfIterations", "maximumNumberOfFunctionEvaluations")
    args.update({key: -(-int(v) // rounds) for key, v in args.items() if key in shared})  # rounded up
    return dict(o, optimizer_args=args), rounds


def _execute(
    R: sitk.ImageRegistrationMethod, o: Mapping[str, Any], transform: sitk.Transform, Fk: sitk.Image,
    Mk: sitk.Image, k: int, f: int,
) -> dict:
    """Run one level; its iterations, metric, valid points and stop condition (clear errors)."""
    iters = [0]

    def on_iteration() -> None:
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
    return {
        "iterations": int(iters[0]),
        "metric_value": value,
        "valid_points": valid,
        "stop_condition": R.GetOptimizerStopConditionDescription(),
        "seconds_optimizer": time.perf_counter() - t1,
    }


# --------------------------------------------------------------------------- deformable grids


def deform_layout(o: Mapping[str, Any], gf: Grid) -> tuple[np.ndarray, np.ndarray, list[int], Grid]:
    """Field extent, control-point spacing, per-level refinement factors and field grid."""
    lo, hi = gf.extent
    size = np.maximum(hi - lo, np.asarray(gf.spacing))
    if o.get("mesh_size") is not None:
        cps = size / np.asarray(o["mesh_size"], dtype=float)
    else:
        cps = np.asarray(o["control_point_spacing"] or np.full(3, size.max() / 8.0), dtype=float)
    lv = o["control_point_levels"]
    nlev = len(level_plan(o, gf))
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
    >>> from lazyreg.registration.itk_runner import deformable_field_grid
    >>> deformable_field_grid(Grid((40, 80, 80), 1.0), {"control_point_spacing": 16.0}).spacing
    (4.0, 4.0, 4.0)
    """
    o = validate_itk_options("deformable", dict(options))
    return deform_layout(o, fixed_grid)[3]


def _default_field_grid(gf: Grid, finest_cps: np.ndarray) -> Grid:
    """Fixed grid subsampled so its spacing is about a quarter of the finest control-point spacing."""
    return subsampled_grid(gf, np.floor(finest_cps / 4.0 / np.asarray(gf.spacing)))


def subsampled_grid(g: Grid, step: Any) -> Grid:
    """Every ``step``-th voxel of ``g`` per axis (at least 1), extended to cover ``g``'s last voxel.

    Examples
    --------
    >>> subsampled_grid(Grid((9, 10, 10), 1.0), 2).shape
    (5, 6, 6)
    """
    step = np.maximum(1, np.broadcast_to(np.asarray(step), (3,))).astype(int)
    shape = (np.asarray(g.shape) - 1 + step - 1) // step + 1  # covers the last voxel
    return Grid(tuple(int(v) for v in shape), tuple(np.asarray(g.spacing) * step), g.origin)


def field_image(g: Grid) -> sitk.Image:
    """A zero displacement-field image (xyz vectors) on grid ``g``."""
    img = sitk.Image([int(v) for v in g.shape[::-1]], sitk.sitkVectorFloat64, 3)
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin[::-1])
    return img


def sampled_field(t: sitk.Transform, g: Grid, threads: int) -> DisplacementField:
    """``t(x) - x`` at the voxel centres of ``g`` as a (zyx) DisplacementField."""
    conv = sitk.TransformToDisplacementFieldFilter()
    conv.SetOutputPixelType(sitk.sitkVectorFloat64)
    conv.SetReferenceImage(field_image(g))
    conv.SetNumberOfThreads(threads)
    return DisplacementField.from_sitk(conv.Execute(t))


def refine_bspline(t: sitk.Transform, ratio: int, Fk: sitk.Image, threads: int) -> None:
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


