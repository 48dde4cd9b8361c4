"""The coarse stage of ``align_piecewise``: one smooth B-spline over the whole image, before the blocks.

Blocks see only their own region: near the moving image's edge, or where a block holds little
structure, a block's deformation is poorly constrained and its neighbours cannot help. A
whole-volume B-spline with a coarse mesh (elastix's and ANTs' starting point) is constrained by
all of the image and extrapolates smoothly towards the edges. ``align_piecewise`` runs it first,
through :func:`lazyreg.align` (one task, computed once per session), on both images in local
contrast (:func:`lazyreg.registration.contrast.local_contrast`, inside that task), and each block runs its first step from the static transforms
alone and from them and the coarse field, and goes on from the better
(:func:`lazyreg.registration.block_align.align_block`).

Measured (default block steps, after the same global affine): known-truth phantom 0.170 -> 0.120
voxel mean tissue error (elastix 0.126); real tutorial pair (its overlap as mask) overlap Pearson
0.8805 for the blocks alone, 0.8810 with the coarse stage (0.875 when every block had to start
from it). It costs a whole-image registration (tutorial lowres: about 10 s) and a second first
step per block (tutorial known truth: 98.5 s -> 121 s wall; phantom: 45 -> 42 s in one run, 37.5 ->
53 s in another), so ``align_piecewise`` runs it by default with its default ("best") steps
only, not with the faster presets or steps of one's own (``coarse=True`` / ``False`` decide).

Memory: the stage holds both images at most :data:`COARSE_MAX_VOXELS` voxels each (read with
a whole stride per axis when larger), plus SimpleITK's pyramid of them: on the 131 M-voxel
full-size pair (stride 4) 0.84 GiB peak RSS of the process, 13 s.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from .contrast import local_contrast
from .pipeline import align
from .steps import parse_steps

__all__ = [
    "COARSE_OPTIONS", "COARSE_SPACING_FRACTION", "COARSE_MAX_INTERVALS", "COARSE_SAMPLES_PER_PARAMETER", "COARSE_SAMPLES",
    "COARSE_MAX_VOXELS", "COARSE_MIN_SIDE", "COARSE_CONTRAST_FRACTION", "coarse_spacing",
    "coarse_stride", "coarse_options", "coarse_field",
]

#: Options of the coarse stage's ``"deform"`` step (:func:`lazyreg.registration.itk.align_deformable`):
#: the mesh refined twice (control points 4x, 2x, then 1x the finest spacing of
#: :func:`coarse_spacing` apart), on images shrunk by 4, 2, then at full resolution (of the coarse
#: images). On the phantom, finishing at shrink 2 gave 0.174 voxel, 3 intervals across each axis
#: refined once 0.176, 2 refined to 16 0.146, 2 refined to 8 0.121.
COARSE_OPTIONS: dict[str, Any] = {"control_point_levels": (1, 2, 4), "shrink_factors": (4, 2, 1)}
#: The finest control-point spacing: this fraction of the fixed image's shortest physical side ...
COARSE_SPACING_FRACTION = 1 / 4
#: ... but at most this many mesh intervals along the longest side (bounds the parameters).
COARSE_MAX_INTERVALS = 16
#: Random samples per level: this many per B-spline parameter of the finest mesh, within
#: :data:`COARSE_SAMPLES`. The real tutorial pair (finest spacing 62 um, 3 400 parameters):
#: 5 000 samples lowered the overlap Pearson of the affine (0.839 -> 0.830: the B-spline fits the
#: noise of too few samples), 10 000 raised it (0.851); at 31 um, 20 000 gave 0.848.
COARSE_SAMPLES_PER_PARAMETER = 3
COARSE_SAMPLES = (10_000, 50_000)
#: Largest image (voxels) the coarse stage reads; larger ones are read every ``k``-th voxel.
COARSE_MAX_VOXELS = 2**22
#: Smallest side (voxels) of the coarse images at the first level: below it the stage is left out.
COARSE_MIN_SIDE = 16
#: Both images are put in local contrast (:func:`~lazyreg.registration.contrast.local_contrast`) before the coarse B-spline, with
#: Gaussian windows of this fraction of its finest control-point spacing (50 um on the tutorial).
#: The whole-image correlation metric otherwise favours bright regions: on the real tutorial pair
#: (rounds whose brightness changes across the volume) the raw images' B-spline raised the overlap
#: Pearson of the affine from 0.838 to 0.855 but lowered 6 of 12 block-sized regions (by up to
#: 0.011); in local contrast (sigma 50 um) 0.863, no region lower by more than 0.001 (20 um: 0.864,
#: 100 um: 0.855). Known-truth phantom, coarse stage then blocks: 0.117 -> 0.115 voxel.
COARSE_CONTRAST_FRACTION = 0.8


def coarse_stride(shape: tuple[int, ...], max_voxels: int = COARSE_MAX_VOXELS) -> int:
    """The smallest stride ``k`` (same on every axis) for which ``shape[::k]`` has at most ``max_voxels``.

    Examples
    --------
    >>> coarse_stride((149, 241, 456)), coarse_stride((298, 483, 913))
    (2, 4)
    """
    k = 1
    while math.prod(-(-n // k) for n in shape) > max_voxels:
        k += 1
    return k


def coarse_spacing(g: Grid) -> tuple[float, int]:
    """The coarse stage's finest control-point spacing on ``g`` (physical) and its samples per level.

    Examples
    --------
    >>> from lazyreg import Grid
    >>> coarse_spacing(Grid((149, 241, 456), (1.68, 1.84, 1.84)))   # the tutorial's lowres level
    (62.16, 11781)
    >>> coarse_spacing(Grid((50, 2000, 2000), 1.0))   # a thin slab: 16 intervals along y and x
    (124.94, 12996)
    """
    lo, hi = g.extent
    side = np.asarray(hi) - np.asarray(lo)
    finest = round(float(max(side.min() * COARSE_SPACING_FRACTION, side.max() / COARSE_MAX_INTERVALS)), 2)
    parameters = 3 * math.prod(int(np.ceil(s / finest)) + 3 for s in side)
    lo_s, hi_s = COARSE_SAMPLES
    return finest, int(np.clip(COARSE_SAMPLES_PER_PARAMETER * parameters, lo_s, hi_s))


def coarse_options(coarse: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The coarse stage's step options for ``align_piecewise(coarse=...)``, checked; None when off.

    Examples
    --------
    >>> coarse_options(False) is None, coarse_options(True)["shrink_factors"]
    (True, (4, 2, 1))
    >>> coarse_options({"mesh_size": 3})["mesh_size"]
    3
    >>> coarse_options("yes")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: coarse: expected True, False or a dict of "deform" options, got 'yes'
    """
    if coarse is None or coarse is False:
        return None
    if coarse is True:
        opts = dict(COARSE_OPTIONS)
    elif isinstance(coarse, Mapping):
        opts = {**COARSE_OPTIONS, **coarse}
    else:
        raise LazyregError(f'coarse: expected True, False or a dict of "deform" options, got {coarse!r}')
    try:
        parse_steps([("deform", opts)])
    except LazyregError as e:
        raise LazyregError(f"coarse: {e}") from None
    return opts


def _strided(img: xr.DataArray | None, k: int) -> xr.DataArray | None:
    return img if img is None or k == 1 else img[::k, ::k, ::k]


def coarse_field(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    static: list,
    options: Mapping[str, Any] | None,
    *,
    margin: Any = 0.0,
    fixed_mask: xr.DataArray | None = None,
    seed: int = 0,
) -> DisplacementField | None:
    """The lazy coarse B-spline field on top of the affine ``static`` transforms, or None.

    The field's grid reaches ``margin`` (physical units, per axis) beyond the fixed image's, with
    the edge values repeated: field nodes past the fixed image's last voxel and the points the
    blocks' fields move reach past the fixed image, and a field is zero beyond its grid (:func:`lazyreg.transforms.field.interpolate_field`),
    which would make a step there.

    None when ``options`` is None, when ``static`` holds a displacement field (it carries a
    deformation of its own already), or when the coarse fixed image is smaller than
    :data:`COARSE_MIN_SIDE` voxels along an axis after the first shrink.

    Examples
    --------
    >>> import lazyreg
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((64, 64, 64), seed=0)
    >>> G = coarse_field(fixed, moving, [lazyreg.Affine(truth)], COARSE_OPTIONS)
    >>> G.is_lazy
    True
    """
    if options is None or any(not isinstance(t, Affine) for t in static):
        return None
    kf, km = coarse_stride(fixed.shape), coarse_stride(moving.shape)
    shrink = max(options.get("shrink_factors") or (1,))
    if min(fixed.shape) // (kf * shrink) < COARSE_MIN_SIDE:
        return None
    opts = dict(options)
    finest, samples = coarse_spacing(grid_of(fixed))
    if opts.get("control_point_spacing") is None and opts.get("mesh_size") is None:
        opts["control_point_spacing"] = finest * max(opts.get("control_point_levels") or (1,))
        if opts.get("samples") is None and opts.get("sampling_percentage") is None:
            opts["samples"] = samples
    initial = Affine.identity()
    for t in static:
        initial = initial @ t
    sigma = COARSE_CONTRAST_FRACTION * finest
    # in local contrast inside the registration task: computed once, with the coarse field
    _, field = align(_strided(fixed, kf), _strided(moving, km), [("deform", opts)], fixed_mask=_strided(fixed_mask, kf),
                     initial=initial, seed=seed, prepare=functools.partial(local_contrast, sigma=sigma))
    g = field.grid
    pad = np.ceil(np.broadcast_to(np.asarray(margin, dtype=float), (3,)) / np.asarray(g.spacing)).astype(int) + 1
    values = da.pad(field.data, [(int(p), int(p)) for p in pad] + [(0, 0)], mode="edge")
    origin = np.asarray(g.origin) - pad * np.asarray(g.spacing)
    return DisplacementField.from_array(values, g.spacing, tuple(origin), report=field.report)
