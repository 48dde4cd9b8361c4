"""Intensity-based registration steps with SimpleITK: affine or rigid, and B-spline or dense field.

Both are steps of the usual protocol (:mod:`lazyreg.registration.steps`): images first, options
keyword-only, the result a transform object whose ``.report`` says what the step did. Options are
checked by :mod:`.itk_options`; the multi-resolution loop is :func:`.itk_runner.run_levels`.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..images import Grid, grid_of, image, validate_image
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from .bending import bending_energy, bspline_coefficients, smooth_bspline
from .itk_options import validate_itk_options
from .itk_runner import centre_xyz, deform_layout, field_image, refine_bspline, run_levels, sampled_field

__all__ = ["align_affine", "align_deformable"]


def align_affine(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    transform: str = "affine",
    initial: Affine | np.ndarray | None = None,
    metric: str = "correlation",
    metric_args: Mapping[str, Any] | None = None,
    optimizer: str = "regular_step_gradient_descent",
    optimizer_args: Mapping[str, Any] | None = None,
    scales: str = "physical_shift",
    sampling: str = "random",
    sampling_percentage: float | Sequence[float] | None = None,
    samples: int | None = None,
    interpolator: str = "linear",
    shrink_factors: Sequence[int] | None = None,
    smooth_sigmas: Sequence[float] | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> Affine:
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
    initial : Affine or (4, 4) array, optional
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
    samples : int, optional
        Random metric samples per level (inside ``fixed_mask``) when ``sampling_percentage`` is
        not given; default ``DEFAULT_SAMPLES`` (5 000).
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
    Affine
        The fixed -> moving transform (zyx, physical), ``initial`` included. Its ``report`` (a dict)
        holds ``step``, ``transform``, ``metric``, ``optimizer``, final ``metric_value`` (lower is
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
    >>> A = align_affine(fixed, moving, initial=truth, shrink_factors=(1,),
    ...                          optimizer_args={"numberOfIterations": 3})
    >>> A.matrix.shape, len(A.report["levels"])
    ((4, 4), 1)
    """
    o = validate_itk_options(
        "affine",
        dict(
            transform=transform, initial=initial, metric=metric, metric_args=metric_args, optimizer=optimizer,
            optimizer_args=optimizer_args, scales=scales, sampling=sampling,
            sampling_percentage=sampling_percentage, samples=samples, interpolator=interpolator,
            shrink_factors=shrink_factors, smooth_sigmas=smooth_sigmas, fixed_mask=fixed_mask, moving_mask=moving_mask, seed=seed,
            threads=threads,
        ),
    )
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    # run in units of the fixed voxel size, so that no optimizer setting depends on the unit
    # (the same pair in micrometres or nanometres gives the same transform)
    unit = float(min(grid_of(fixed, "fixed").spacing))
    init = np.eye(4) if o["initial"] is None else o["initial"]
    o = dict(o, initial=_in_unit(init, unit), fixed_mask=_rescaled(o["fixed_mask"], unit),
             moving_mask=_rescaled(o["moving_mask"], unit),
             smooth_sigmas=None if o["smooth_sigmas"] is None else tuple(v / unit for v in o["smooth_sigmas"]))
    fixed, moving = _rescaled(fixed, unit), _rescaled(moving, unit)
    centre = centre_xyz(grid_of(fixed, "fixed"))

    def make(_: sitk.Image) -> sitk.Transform:
        t = sitk.VersorRigid3DTransform() if o["transform"] == "rigid" else sitk.AffineTransform(3)
        t.SetCenter(centre)
        return t

    t, _, summary = run_levels(o, fixed, moving, make)
    local = _in_unit(Affine.from_sitk(t).matrix, 1.0 / unit)
    matrix = np.asarray(init @ local, dtype=float)
    report = {"step": "affine", "transform": o["transform"], **summary}
    return Affine(matrix, report=report)


def _rescaled(img: xr.DataArray | None, unit: float) -> xr.DataArray | None:
    """The image with its coordinates divided by ``unit`` (data not copied)."""
    if img is None:
        return None
    g = grid_of(img)
    out = image(img.data, tuple(s / unit for s in g.spacing), tuple(v / unit for v in g.origin))
    return out


def _in_unit(matrix: np.ndarray, unit: float) -> np.ndarray:
    """An affine matrix for coordinates divided by ``unit`` (its translation divided)."""
    m = np.array(matrix, dtype=float)
    m[:3, 3] /= unit
    return m


def align_deformable(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    transform: str = "bspline",
    initial: Affine | np.ndarray | None = None,
    control_point_spacing: float | Sequence[float] | None = None,
    mesh_size: int | Sequence[int] | None = None,
    control_point_levels: Sequence[int] = (1,),
    field_grid: Grid | None = None,
    field_smoothing: Sequence[float] = (1.75, 0.5),
    bending: float = 0.0,
    bending_rounds: int = 4,
    metric: str = "correlation",
    metric_args: Mapping[str, Any] | None = None,
    optimizer: str | None = None,
    optimizer_args: Mapping[str, Any] | None = None,
    scales: str | None = None,
    sampling: str | None = None,
    sampling_percentage: float | Sequence[float] | None = None,
    samples: int | None = None,
    interpolator: str = "linear",
    shrink_factors: Sequence[int] | None = (2, 1),
    smooth_sigmas: Sequence[float] | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    seed: int = 0,
    threads: int | None = None,
) -> DisplacementField:
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
    initial : Affine or (4, 4) array, optional
        Affine fixed -> moving (zyx, physical), e.g. from :func:`align_affine`. Default identity.
    control_point_spacing : float or 3 floats, optional
        Distance between B-spline control points at the first level, physical units (z, y, x).
        Default: an eighth of the longest side of the fixed image, on every axis.
    mesh_size : int or 3 ints, optional
        Instead of ``control_point_spacing``: the number of B-spline mesh intervals across the
        fixed image (z, y, x), i.e. a spacing of extent / mesh_size, which scales with the image
        (a piecewise block).
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
    bending : float
        For "bspline": weight (>= 0, dimensionless) of a bending (smoothness) penalty on the
        B-spline coefficients; 0 (default) = off, the results of before. The optimiser runs of each
        level are split into ``bending_rounds`` runs, each followed by the proximal step of the
        penalty, ``c = argmin ||c - c0||^2 + bending * E(c)`` (:mod:`.bending`; ``E`` sums the
        squared second differences of the coefficients in units of control points). A weight of 1
        damps a wave 8 control points long by a quarter and the finest wiggles 17-fold, per step.
        Each run restarts the optimizer: with 4 rounds a level costs about 3.5 times as much.
        The reported metric values are those of each level's last run, before its proximal step.
    bending_rounds : int
        Runs (>= 1) per level when ``bending`` > 0, sharing the level's ``numberOfIterations`` and
        ``maximumNumberOfFunctionEvaluations`` (each run at least one iteration); default 4.
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
    sampling_percentage, samples, smooth_sigmas, fixed_mask, moving_mask, seed, threads
        As in :func:`align_affine`.
    shrink_factors : sequence of int, optional
        Multi-resolution levels; default (2, 1); None = automatic as in :func:`align_affine`.

    Returns
    -------
    DisplacementField
        ``B(x) - x`` (dz, dy, dx) at the voxel centres of ``field_grid``, in memory; the whole
        transform is ``[Affine(initial), field]``. Its ``report`` (a dict) is as for
        :func:`align_affine`, plus ``control_point_spacing`` and ``mesh_size`` (z, y, x,
        per level for "bspline"), ``field_shape`` and the largest displacement ``max_displacement``;
        for "bspline" also ``bending``, ``bending_rounds`` and ``bending_energy``, the energy ``E``
        of the final coefficients (physical units squared, summed over the three components).

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
    >>> D = align_deformable(fixed, moving, initial=truth, control_point_spacing=24,
    ...                      optimizer_args={"numberOfIterations": 2})
    >>> D.report["transform"], D.grid.spacing
    ('bspline', (6.0, 6.0, 6.0))
    """
    o = validate_itk_options(
        "deformable",
        dict(
            transform=transform, initial=initial, control_point_spacing=control_point_spacing,
            mesh_size=mesh_size, control_point_levels=control_point_levels, field_grid=field_grid, field_smoothing=field_smoothing,
            bending=bending, bending_rounds=bending_rounds,
            metric=metric, metric_args=metric_args, optimizer=optimizer, optimizer_args=optimizer_args,
            scales=scales, sampling=sampling, sampling_percentage=sampling_percentage, samples=samples,
            interpolator=interpolator,
            shrink_factors=shrink_factors, smooth_sigmas=smooth_sigmas, fixed_mask=fixed_mask,
            moving_mask=moving_mask, seed=seed, threads=threads,
        ),
    )
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    gf = grid_of(fixed, "fixed")
    size, cps, factors, g = deform_layout(o, gf)
    extra: dict[str, Any] = {}

    if o["transform"] == "field":

        def make(_: sitk.Image) -> sitk.Transform:
            t = sitk.DisplacementFieldTransform(field_image(g))
            t.SetSmoothingGaussianOnUpdate(*o["field_smoothing"])
            return t

        t, levels, summary = run_levels(o, fixed, moving, make, virtual=field_image(g))
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
                refine_bspline(t, ratio, Fk, threads)

        def prox(k: int, t: sitk.Transform) -> None:
            smooth_bspline(t, o["bending"])

        rounds = o["bending_rounds"] if o["bending"] else 1
        t, levels, summary = run_levels(o, fixed, moving, make, refine, rounds=rounds,
                                        after_round=prox if o["bending"] else None)
        for lvl, m in zip(levels, mesh_per_level):
            lvl["mesh_size"] = m
        field = sampled_field(t, g, summary["threads"])
        extra["control_point_spacing"] = tuple(float(v) for v in cps / factors[-1])
        extra["mesh_size"] = mesh_per_level[-1]
        extra.update(bending=o["bending"], bending_rounds=rounds,
                     bending_energy=bending_energy(bspline_coefficients(t)))
    values = np.asarray(field.values, dtype=np.float64)
    report = {
        "step": "deformable",
        "transform": o["transform"],
        **extra,
        "field_shape": field.grid.shape,
        "max_displacement": float(np.sqrt((values**2).sum(-1)).max()),
        **summary,
    }
    return DisplacementField.from_array(values, field.grid.spacing, field.grid.origin, report=report)
