"""Demons: a dense, smooth displacement field fitted by ITK's demons filters, coarse to fine.

The moving image is first resampled onto the fixed grid through ``initial`` (one pass of
linear interpolation); the demons then find ``u`` with ``moving'(x + u(x)) ~ fixed(x)`` on a
pyramid of block-averaged images, each level starting from the previous level's field, with the
total field smoothed by a Gaussian after every iteration (the regularisation). The result is
``u`` on a grid of the finest level's spacing: ``[initial, field]`` in lazyreg's order.

The demons compare intensities directly (sum of squared differences), so moving's intensities
are first mapped linearly onto fixed's (same mean and standard deviation where both images have
data; :func:`lazyreg.registration.intensity.linear_map`): two rounds rarely keep their
brightness, and a gain left between them pulls the field towards the brighter side.
``intensity="match"`` matches histograms instead, ``"local"`` compares local contrast, ``"none"``
the raw values.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, check_mask, grid_of, validate_image
from ..interpolation import resample_array
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.jacobian import determinant_values
from ..validation import check_choice, check_int, check_number, check_positive_ints
from .contrast import contrast_values
from .intensity import linear_map, matched_histogram
from .itk_runner import checked_values, field_image, sitk_image, subsampled_grid

__all__ = ["align_demons", "validate_demons_options", "demons_field_grid", "VARIANTS", "INTENSITIES"]

#: Demons variants and their SimpleITK filters. "diffeomorphic" (the default) composes each
#: update through an exponential, so the field does not fold; "fast_symmetric" is about twice
#: as fast per iteration and may fold under large, rough updates.
VARIANTS = {
    "diffeomorphic": sitk.DiffeomorphicDemonsRegistrationFilter,
    "fast_symmetric": sitk.FastSymmetricForcesDemonsRegistrationFilter,
    "symmetric": sitk.SymmetricForcesDemonsRegistrationFilter,
    "classic": sitk.DemonsRegistrationFilter,
}
#: How moving's intensities are made comparable with fixed's before the demons run: mapped
#: linearly onto fixed's mean and standard deviation (the default), as they are, moving's
#: histogram matched to fixed's (:mod:`lazyreg.registration.intensity`), or both in local contrast
#: (:func:`lazyreg.registration.contrast.contrast_values`).
INTENSITIES = ("linear", "none", "match", "local")

_DEFAULTS: dict[str, Any] = {
    "variant": "diffeomorphic",
    "shrink_factors": (4, 2),
    "iterations": (40, 20),
    "smoothing": 1.5,
    "update_smoothing": 0.0,
    "image_smoothing": 0.5,
    "intensity": "linear",
    "contrast_window": 12.0,
}


def validate_demons_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Check the demons step's options (unknown names are checked by the step list) and fill defaults.

    Examples
    --------
    >>> validate_demons_options({"iterations": (30, 10)})["shrink_factors"]
    (4, 2)
    >>> validate_demons_options({"variant": "fast_symetric"})
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: demons variant: unknown value 'fast_symetric' (did you mean 'fast_symmetric'?); valid: diffeomorphic, fast_symmetric, symmetric, classic
    """
    o = {**_DEFAULTS, **{k: v for k, v in options.items() if v is not None or k not in _DEFAULTS}}
    o["variant"] = check_choice(o["variant"], list(VARIANTS), "demons variant")
    o["intensity"] = check_choice(o["intensity"], INTENSITIES, "demons intensity")
    o["shrink_factors"] = check_positive_ints(o["shrink_factors"], "demons shrink_factors")
    its = o["iterations"]
    its = (its,) * len(o["shrink_factors"]) if isinstance(its, (int, np.integer)) and not isinstance(its, bool) else its
    if not isinstance(its, (list, tuple)) or len(its) != len(o["shrink_factors"]):
        raise LazyregError(
            f"demons iterations: expected one count per shrink factor ({len(o['shrink_factors'])}), got {its!r}"
        )
    o["iterations"] = tuple(check_int(n, "demons iterations", minimum=1, maximum=10_000) for n in its)
    if list(o["shrink_factors"]) != sorted(o["shrink_factors"], reverse=True):
        raise LazyregError(f"demons shrink_factors: expected coarse to fine (decreasing), got {o['shrink_factors']}")
    o["smoothing"] = check_number(o["smoothing"], "demons smoothing", 0.0, 20.0)
    o["update_smoothing"] = check_number(o["update_smoothing"], "demons update_smoothing", 0.0, 20.0)
    o["image_smoothing"] = check_number(o["image_smoothing"], "demons image_smoothing", 0.0, 20.0)
    o["contrast_window"] = check_number(o["contrast_window"], "demons contrast_window", 1.0, 1000.0)
    if o["smoothing"] == 0 and o["update_smoothing"] == 0:
        raise LazyregError("demons smoothing: smoothing and update_smoothing are both 0: the field would not be regular")
    return o


def demons_field_grid(fixed_grid: Grid, options: Mapping[str, Any]) -> Grid:
    """The grid of the demons field: every ``f``-th fixed voxel, ``f`` the finest shrink factor.

    Examples
    --------
    >>> demons_field_grid(Grid((40, 80, 80), 1.0), {"shrink_factors": (4, 2)}).shape
    (21, 41, 41)
    """
    o = validate_demons_options(options)
    return subsampled_grid(fixed_grid, o["shrink_factors"][-1])


def _comparable(fv: np.ndarray, warped: np.ndarray, invalid: np.ndarray | None, intensity: str) -> tuple[np.ndarray, dict]:
    """Moving (on fixed's grid) made comparable with fixed; voxels without moving data take
    fixed's values (no force). Returns the values and what was done to them (for the report)."""
    valid = None if invalid is None else ~invalid
    m = np.asarray(warped, dtype=np.float32)
    done: dict = {}
    if intensity == "linear":
        gain, offset = linear_map(fv, m, valid)
        m = m * np.float32(gain)  # a new array (``warped`` may be the caller's): the offset added in place
        m += np.float32(offset)
        done = {"gain": round(gain, 4), "offset": round(offset, 3)}
    elif intensity == "match":
        m = matched_histogram(fv, m, valid)
    if invalid is not None and invalid.any():
        m = np.where(invalid, np.asarray(fv, dtype=np.float32), m)
    return m, done


def _level(img: sitk.Image, f: int, sigma: float) -> sitk.Image:
    img = sitk.BinShrink(img, [int(f)] * 3) if f > 1 else img
    if sigma > 0:
        img = sitk.SmoothingRecursiveGaussian(img, [float(sigma) * s for s in img.GetSpacing()])
    return img


def _run_levels(F: sitk.Image, M: sitk.Image, o: dict, threads: int) -> tuple[sitk.Image, list[dict]]:
    field, levels = None, []
    for f, n in zip(o["shrink_factors"], o["iterations"]):
        t0 = time.perf_counter()
        size = tuple(int(n) // int(f) for n in F.GetSize()[::-1])
        if min(size) < 4:
            raise LazyregError(
                f"demons shrink_factors: the image shrunk by {f} is {size} voxels (z, y, x); use smaller shrink factors"
            )
        Fk, Mk = _level(F, f, o["image_smoothing"]), _level(M, f, o["image_smoothing"])
        if field is None:
            field = sitk.Image(Fk.GetSize(), sitk.sitkVectorFloat64, 3)
            field.CopyInformation(Fk)
        else:
            field = sitk.Resample(field, Fk, sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID(), True)
        filt = VARIANTS[o["variant"]]()
        filt.SetNumberOfThreads(threads)
        filt.SetNumberOfIterations(int(n))
        filt.SetSmoothDisplacementField(o["smoothing"] > 0)
        if o["smoothing"] > 0:
            filt.SetStandardDeviations(float(o["smoothing"]))
        filt.SetSmoothUpdateField(o["update_smoothing"] > 0)
        if o["update_smoothing"] > 0:
            filt.SetUpdateFieldStandardDeviations(float(o["update_smoothing"]))
        field = filt.Execute(Fk, Mk, field)
        levels.append({
            "shrink": int(f), "iterations": int(filt.GetElapsedIterations()), "metric": float(filt.GetMetric()),
            "rms_change": float(filt.GetRMSChange()), "seconds": round(time.perf_counter() - t0, 3),
        })
    return field, levels


def align_demons(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    initial: Affine | np.ndarray | None = None,
    variant: str = "diffeomorphic",
    shrink_factors: Sequence[int] = (4, 2),
    iterations: int | Sequence[int] = (40, 20),
    smoothing: float = 1.5,
    update_smoothing: float = 0.0,
    image_smoothing: float = 0.5,
    intensity: str = "linear",
    contrast_window: float = 12.0,
    field_grid: Grid | None = None,
    fixed_mask: xr.DataArray | None = None,
    moving_mask: xr.DataArray | None = None,
    threads: int | None = None,
) -> DisplacementField:
    """Fit a dense, smooth deformation with the demons, on top of an affine; the ``"demons"`` step.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images (dims z, y, x with physical coordinates), read into memory.
    initial : Affine or (4, 4) array, optional
        Affine fixed -> moving applied after the field (``[initial, field]``). Default identity.
    variant : {"diffeomorphic", "fast_symmetric", "symmetric", "classic"}
        The demons filter (:data:`VARIANTS`); "diffeomorphic" does not fold.
    shrink_factors : sequence of int
        Pyramid levels, coarse to fine, by block averaging; the field is returned at the
        finest level's spacing. Default (4, 2): fine enough for deformations of tens of voxels'
        wavelength, and 8x cheaper than full resolution.
    iterations : int or sequence of int
        Iterations per level.
    smoothing : float
        Standard deviation (voxels of each level) of the Gaussian that smooths the total field
        after each iteration: larger is stiffer. 0 turns it off.
    update_smoothing : float
        Standard deviation (voxels) of the Gaussian smoothing each update (0: off): a fluid-like
        regulariser, as SyN's update sigma.
    image_smoothing : float
        Standard deviation (voxels of each level) of a Gaussian applied to both images at each
        level before the demons (0: off). The demons follow intensity differences, noise
        included. Measured (benchmarks/README.md): 0, 0.5, 0.75, 1 give a mean error of 0.34,
        0.33, 0.36, 0.39 voxel on the tutorial's known-truth pair and 0.63, 0.54, 0.44, 0.39 on
        the sparse, noisy phantom; on the real tutorial pair 0.75 and 1 left half the blocks
        worse (their steps not kept), 0.5 none.
    intensity : {"linear", "none", "match", "local"}
        How moving's intensities are made comparable with fixed's, over the voxels where both
        have data. "linear" (default): a gain and an offset giving moving fixed's mean and
        standard deviation (:func:`~lazyreg.registration.intensity.linear_map`; reported as
        ``intensity_map``). "none": as they are. "match": moving's histogram matched to fixed's
        (:func:`~lazyreg.registration.intensity.matched_histogram`). "local": both images in
        local contrast (:func:`~lazyreg.registration.contrast.contrast_values`: minus the local
        mean, over the local standard deviation), for brightness that changes from region to
        region. Measured on the whole real tutorial pair after the same affine (Pearson where
        both images are tissue, 0.833 before; moving is 1.58x as bright): "none" 0.868,
        "linear" 0.885, "match" 0.885, "local" 0.885; on the known-truth tutorial pair (equal
        brightness; mean error in voxels) 0.326, 0.318, 0.46, 0.91. "local" is not for images
        with empty regions inside the array (zero-filled margins of a volume warped before, as
        that pair's fixed image): windows across such an edge shift the contrast of one image
        only.
    contrast_window : float
        With ``intensity="local"``: the windows' Gaussian standard deviation, in fixed voxels
        (of their geometric-mean spacing; the same physical window on both images). Default 12.
    field_grid : Grid, optional
        Where the field is returned; default :func:`demons_field_grid`.
    fixed_mask, moving_mask : xarray.DataArray, optional
        Boolean images on the fixed / moving grids: voxels outside them exert no force (moving
        takes fixed's value there). Moving voxels ``initial`` maps outside moving exert none either.
    threads : int, optional
        ITK threads (default: all cores).

    Returns
    -------
    DisplacementField
        ``u`` (dz, dy, dx, physical units) in memory; the whole transform is
        ``[Affine(initial), field]``. ``report``: ``step``, ``variant``, ``intensity`` (and
        ``intensity_map``: ``gain``, ``offset`` with "linear"),
        ``levels`` (per level: ``shrink``, ``iterations``, ``metric`` (mean squared difference),
        ``rms_change``, ``seconds``), ``field_shape``, ``max_displacement``, ``det_min`` and
        ``folded_fraction`` (Jacobian determinant <= 0) of the field, ``threads``, ``seconds``.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.registration.demons import align_demons
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    >>> D = align_demons(fixed, moving, initial=truth, shrink_factors=(2,), iterations=5)
    >>> D.grid.shape, D.report["folded_fraction"]
    ((13, 25, 25), 0.0)
    """
    t_start = time.perf_counter()
    o = validate_demons_options(dict(
        variant=variant, shrink_factors=shrink_factors, iterations=iterations, smoothing=smoothing,
        update_smoothing=update_smoothing, image_smoothing=image_smoothing, intensity=intensity,
        contrast_window=contrast_window,
    ))
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    fixed_mask = check_mask(fixed_mask, fixed, "fixed_mask", "fixed")
    moving_mask = check_mask(moving_mask, moving, "moving_mask", "moving")
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    threads = int(threads or os.cpu_count() or 1)
    A = Affine(np.eye(4) if initial is None else initial)
    fv = checked_values(fixed, "fixed")
    mv = checked_values(moving, "moving")
    if o["intensity"] == "local":
        window = o["contrast_window"] * float(np.exp(np.mean(np.log(gf.spacing))))  # physical
        fv = contrast_values(fv, [window / s for s in gf.spacing])
        mv = contrast_values(mv, [window / s for s in gm.spacing])
    identity = gf == gm and np.allclose(A.matrix, np.eye(4))
    warped = mv if identity else resample_array(
        mv, gm, gf, [("affine", A.matrix, None)], order=1, fill_value=np.nan, dtype=np.dtype(np.float32), threads=threads,
    )
    invalid = ~np.isfinite(warped) if not identity else None
    if moving_mask is not None:
        mm = np.asarray(moving_mask.values, dtype=np.uint8)
        inside = mm.astype(bool) if identity else resample_array(
            mm, gm, gf, [("affine", A.matrix, None)], order=0, fill_value=0, dtype=np.dtype(np.uint8), threads=threads,
        ).astype(bool)
        invalid = ~inside if invalid is None else invalid | ~inside
    if fixed_mask is not None:
        outside = ~np.asarray(fixed_mask.values, dtype=bool)
        invalid = outside if invalid is None else invalid | outside
    if invalid is not None and invalid.all():
        raise LazyregError("demons: no voxel of fixed has moving data (check the masks and the initial transform)")
    mvals, intensity_map = _comparable(fv, warped, invalid, o["intensity"])
    F, M = sitk_image(np.asarray(fv, dtype=np.float32), gf), sitk_image(mvals, gf)
    field, levels = _run_levels(F, M, o, threads)
    fg = field_grid or subsampled_grid(gf, o["shrink_factors"][-1])
    field = sitk.Resample(field, field_image(fg), sitk.Transform(), sitk.sitkLinear, 0.0, field.GetPixelID(), True)
    values = DisplacementField.from_sitk(field).values.astype(np.float32)
    det = determinant_values(values, fg.spacing)
    report = {
        "step": "demons", "variant": o["variant"], "intensity": o["intensity"], **({"intensity_map": intensity_map} if intensity_map else {}),
        "levels": levels,
        "field_shape": fg.shape, "max_displacement": float(np.sqrt((values.astype(np.float64) ** 2).sum(-1)).max()),
        "det_min": round(float(det.min()), 4), "folded_fraction": float((det <= 0).mean()),
        "threads": threads, "seconds": round(time.perf_counter() - t_start, 3),
    }
    return DisplacementField.from_array(values, fg.spacing, fg.origin, report=report)
