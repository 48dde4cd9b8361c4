"""What each step of a pipeline is given, when the images are dask-backed and need not fit in memory.

:func:`lazyreg.align` hands a store-backed image of several chunks to its task unread when every
one of its steps can use it so (:func:`reads_in_chunks`). Inside the task, :class:`StepInputs`
gives each step its images:

* a *chunked* step (``Step.chunked``, e.g. ``"ransac"``: blobs detected tile by tile,
  descriptors read around the blobs) gets them as they are, never read whole;
* an affine step (``"affine"``, ``"rigid"``) whose every level is shrunk
  (``shrink_factors`` all >= 2, no masks) gets them **binned**: block means by ``b``, the greatest
  common divisor of its factors, computed chunk by chunk, and runs its levels with the factors
  divided by ``b`` and the same physical smoothing. Its finest level is then the same average of
  ``b`` voxels per axis it would have taken from the whole image (ITK's ``BinShrink`` of a
  binned image is the binned image's block mean), so it never holds more than ``1 / b**3`` of
  the level; the report says ``binned: b``;
* any other step gets them in memory, read once for all steps that need them (a store-backed
  image in one piece, :func:`lazyreg.registration.inputs.in_memory`).

In-memory images pass through unchanged: piecewise blocks, and ``align`` on in-memory levels,
behave as before.
"""

from __future__ import annotations

import math
from functools import reduce
from typing import Any, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..images import Grid, grid_of, image
from .blob_chunks import binned_array, is_chunked
from .inputs import in_memory
from .itk_runner import level_plan

__all__ = ["StepInputs", "binning_factor", "binned_options", "reads_in_chunks", "binned"]

#: Steps that run their levels on a binned image when every level is shrunk (see the module's doc).
BINNABLE_STEPS = ("affine", "rigid")


def binning_factor(name: str, options: dict, masks: Sequence[Any] = (None, None)) -> int:
    """The factor by which step ``name`` may take its images binned: the greatest common divisor
    of its ``shrink_factors`` (1: it needs full resolution, or masks, or it is not an affine step).

    Examples
    --------
    >>> binning_factor("affine", {"shrink_factors": (8, 4, 2)}), binning_factor("affine", {"shrink_factors": (6, 4)})
    (2, 2)
    >>> binning_factor("affine", {}), binning_factor("affine", {"shrink_factors": (4, 1)}), binning_factor("demons", {"shrink_factors": (4, 2)})
    (1, 1, 1)
    """
    factors = options.get("shrink_factors")
    if name not in BINNABLE_STEPS or not factors or any(m is not None for m in masks):
        return 1
    return int(reduce(math.gcd, (int(f) for f in factors)))


def binned_options(options: dict, b: int, binned_spacing: Sequence[float]) -> dict:
    """A step's options for its images binned by ``b``: shrink factors divided by ``b``, and each
    level's smoothing lowered by the variance the binning already applied, ``(b**2 - 1) / 12``
    voxels squared (along the coarsest axis), so that each level sees the same smoothing as on the
    whole image (exactly so for isotropic voxels).

    Examples
    --------
    >>> o = binned_options({"shrink_factors": (4, 2)}, 2, (2.0, 2.0, 2.0))
    >>> o["shrink_factors"], [round(s, 3) for s in o["smooth_sigmas"]]
    ((2, 1), [1.936, 0.866])
    """
    spacing = tuple(float(s) / b for s in binned_spacing)
    factors = tuple(int(f) for f in options["shrink_factors"])
    full = {"shrink_factors": factors, "smooth_sigmas": options.get("smooth_sigmas"), "sampling_percentage": None}
    sigmas = [sigma for _, sigma, _ in level_plan(full, Grid((1, 1, 1), spacing))]
    already = (b * b - 1) / 12.0 * max(spacing) ** 2
    out = dict(options)
    out["shrink_factors"] = tuple(f // b for f in factors)
    out["smooth_sigmas"] = tuple(math.sqrt(max(0.0, s * s - already)) for s in sigmas)
    return out


def reads_in_chunks(calls: Sequence[Any], masks: Sequence[Any] = (None, None)) -> bool:
    """Whether every step of a pipeline can do without the level in memory: each reads chunked
    images chunk by chunk, or takes them binned. If one step needs the level whole, it is read
    whole once for all (reading it chunk by chunk as well would only cost time: measured, the
    ransac step per chunk then the level whole took 21 s and 2.5 GiB on a 131 M-voxel level,
    against 16 s and 2.3 GiB for the level read whole).

    Examples
    --------
    >>> from lazyreg.registration.steps import parse_steps
    >>> reads_in_chunks(parse_steps("ransac")), reads_in_chunks(parse_steps("ransac,affine"))
    (True, False)
    >>> reads_in_chunks(parse_steps(["ransac", ("affine", {"shrink_factors": (4, 2)})]))
    True
    """
    return all(c.step.chunked or binning_factor(c.name, c.options, masks) > 1 for c in calls)


def binned(img: xr.DataArray, b: int) -> xr.DataArray:
    """``img`` block-averaged by ``b`` per axis (float32), computed chunk by chunk; the voxel
    centres move to the blocks' centres.

    Examples
    --------
    >>> import lazyreg
    >>> img = lazyreg.image(np.arange(4 * 4 * 6, dtype=np.float32).reshape(4, 4, 6), (2.0, 1.0, 1.0)).chunk(2)
    >>> out = binned(img, 2)
    >>> out.shape, grid_of(out).spacing, grid_of(out).origin, float(out[0, 0, 0])
    ((2, 2, 3), (4.0, 2.0, 2.0), (1.0, 0.5, 0.5), 15.5)
    """
    g = grid_of(img)
    values = binned_array(da.asarray(img.data), (b, b, b)).compute()
    origin = tuple(o + (b - 1) / 2 * s for o, s in zip(g.origin, g.spacing))
    return image(np.asarray(values), tuple(b * s for s in g.spacing), origin)


class StepInputs:
    """The images each step of one pipeline run is given (see the module's doc); each form is
    made once and shared by the steps that take it.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.registration.steps import parse_steps
    >>> fixed, moving, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> inputs = StepInputs(fixed.chunk(8), moving.chunk(8), (None, None))
    >>> ransac, affine, coarse = parse_steps(["ransac", "affine", ("affine", {"shrink_factors": (4, 2)})])
    >>> [is_chunked(x) for x in inputs.images(ransac)[0]], is_chunked(inputs.images(affine)[0][0])
    ([True, True], False)
    >>> (f, m), b = inputs.images(coarse)
    >>> f.shape, b
    ((8, 16, 16), 2)
    """

    def __init__(self, fixed: xr.DataArray, moving: xr.DataArray, masks: Sequence[Any]) -> None:
        self.given = (fixed, moving)
        self.masks = tuple(masks)
        self._made: dict[int, tuple] = {}

    def images(self, call: Any) -> tuple[tuple[xr.DataArray, xr.DataArray], int]:
        """``((fixed, moving), b)`` for step ``call``: ``b`` > 1 when they are binned by ``b``."""
        if call.step.chunked or not any(is_chunked(x) for x in self.given):
            return self.given, 1
        b = binning_factor(call.name, call.options, self.masks)
        if b not in self._made:
            self._made[b] = tuple(binned(x, b) if b > 1 else in_memory(x) for x in self.given)
        return self._made[b], b
