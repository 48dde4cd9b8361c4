"""Argument checks shared by every module: each returns the normalised value or raises a clear error.

Every check names the argument (``argname``) and the problem in a :class:`~lazyreg.LazyregError`,
so that bad input fails early with a message a user can act on. Checks of images and masks (which
need grids) live in :mod:`lazyreg.images`.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Sequence

import numpy as np

from .errors import LazyregError

#: Voxel spacings outside this range are refused: SimpleITK inverts the product of the three
#: spacings (1e-300 gives "Singular matrix. Determinant is 0."), and physical coordinates must
#: stay finite.
SPACING_RANGE = (1e-100, 1e100)
#: An origin farther than this many voxels from 0 cannot resolve the spacing in float64
#: coordinates (``origin + index * spacing`` would repeat or be unevenly spaced).
MAX_ORIGIN_VOXELS = 2.0**32
#: An affine whose linear part has a condition number above this is treated as singular.
MAX_CONDITION = 1e12

__all__ = [
    "suggest",
    "check_choice",
    "check_int",
    "check_number",
    "check_seed",
    "check_triple",
    "check_spacing",
    "check_origin",
    "affine_condition",
    "check_positive_ints",
    "check_points",
    "config_number",
    "short_repr",
]


def suggest(word: Any, choices: Sequence[str]) -> str:
    """A ``" (did you mean 'x'?)"`` hint for a misspelt name, or ``""``.

    Examples
    --------
    >>> suggest("afine", ["affine", "rigid"])
    " (did you mean 'affine'?)"
    >>> suggest("zzz", ["affine"])
    ''
    """
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_choice(value: Any, valid: Sequence[str], argname: str) -> str:
    """``value`` if it is one of ``valid``; otherwise an error listing them and the closest.

    Examples
    --------
    >>> check_choice("linear", ["nearest", "linear"], "interpolator")
    'linear'
    >>> check_choice("lienar", ["nearest", "linear"], "interpolator")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: interpolator: unknown value 'lienar' (did you mean 'linear'?); valid: nearest, linear
    """
    if not isinstance(value, str) or value not in valid:
        raise LazyregError(f"{argname}: unknown value {value!r}{suggest(value, valid)}; valid: {', '.join(valid)}")
    return value


def check_int(value: Any, argname: str, minimum: int | None = None, maximum: int | None = None) -> int:
    """An integer (not a bool, not a float) within ``[minimum, maximum]``.

    Examples
    --------
    >>> check_int(5, "nspots", minimum=4)
    5
    >>> check_int(2.5, "nspots")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: nspots: expected an integer, got 2.5
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise LazyregError(f"{argname}: expected an integer, got {short_repr(value)}")
    v = int(value)
    if minimum is not None and v < minimum:
        raise LazyregError(f"{argname}: expected an integer >= {minimum}, got {short_repr(value)}")
    if maximum is not None and v > maximum:
        raise LazyregError(f"{argname}: expected an integer <= {maximum}, got {short_repr(value)}")
    return v


def check_number(
    value: Any,
    argname: str,
    lo: float = -math.inf,
    hi: float = math.inf,
    *,
    lo_open: bool = False,
    hi_open: bool = False,
) -> float:
    """A finite real number in the interval from ``lo`` to ``hi`` (open or closed ends).

    Examples
    --------
    >>> check_number(0.5, "overlap", 0.0, 1.0, hi_open=True)
    0.5
    >>> check_number(1.0, "overlap", 0.0, 1.0, hi_open=True)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: overlap: expected a number in [0, 1), got 1.0
    """
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    bad = (
        isinstance(value, (bool, np.bool_, str))
        or not math.isfinite(v)
        or (v <= lo if lo_open else v < lo)
        or (v >= hi if hi_open else v > hi)
    )
    if bad:
        left, right = ("(" if lo_open else "["), (")" if hi_open else "]")
        if math.isinf(lo) and math.isinf(hi):
            raise LazyregError(f"{argname}: expected a finite number, got {short_repr(value)}")
        raise LazyregError(f"{argname}: expected a number in {left}{lo:g}, {hi:g}{right}, got {short_repr(value)}")
    return v


def check_seed(seed: Any, argname: str = "seed") -> int:
    """A random seed: a non-negative integer.

    Examples
    --------
    >>> check_seed(3)
    3
    >>> check_seed(-1)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: seed: expected a non-negative integer, got -1
    """
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise LazyregError(f"{argname}: expected a non-negative integer, got {seed!r}")
    return int(seed)


def short_repr(value: Any) -> str:
    """``repr(value)`` for an error message, or its type and shape when that would flood it (an image).

    Examples
    --------
    >>> import numpy as np
    >>> short_repr((1, 2)), short_repr(np.zeros((50, 50)))
    ('(1, 2)', 'a ndarray of shape (50, 50)')
    """
    text = repr(value)
    if len(text) <= 80:
        return text
    shape = getattr(value, "shape", None)
    return f"a {type(value).__name__}" + (f" of shape {tuple(shape)}" if shape is not None else "")


def check_triple(value: Any, argname: str, what: str = "values") -> tuple[float, float, float]:
    """A number or 3 numbers (z, y, x), broadcast to a finite float triple.

    Examples
    --------
    >>> check_triple(2, "origin")
    (2.0, 2.0, 2.0)
    >>> check_triple((1, 2), "origin", "the origin")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: origin: expected a number or 3 numbers (z, y, x) for the origin, got (1, 2)
    """
    try:
        arr = None if isinstance(value, str) else np.asarray(value, dtype=float)
    except (TypeError, ValueError):
        arr = None
    if arr is None or arr.ndim > 1 or (arr.ndim == 1 and arr.size != 3):
        raise LazyregError(f"{argname}: expected a number or 3 numbers (z, y, x) for {what}, got {short_repr(value)}")
    arr = np.broadcast_to(arr, (3,))
    if not np.all(np.isfinite(arr)):
        raise LazyregError(f"{argname}: {what} must be finite, got {tuple(arr.tolist())}")
    return tuple(float(v) for v in arr)  # type: ignore[return-value]


def check_spacing(value: Any, argname: str = "spacing") -> tuple[float, float, float]:
    """A voxel spacing: a positive number or 3 positive numbers (z, y, x).

    Examples
    --------
    >>> check_spacing((2, 1, 1))
    (2.0, 1.0, 1.0)
    >>> check_spacing(0)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: spacing: voxel spacing must be positive, got (0.0, 0.0, 0.0)
    """
    sp = check_triple(value, argname, "voxel spacing")
    if min(sp) <= 0:
        raise LazyregError(f"{argname}: voxel spacing must be positive, got {sp}")
    lo, hi = SPACING_RANGE
    if min(sp) < lo or max(sp) > hi:
        raise LazyregError(
            f"{argname}: voxel spacing {sp} is outside [{lo:g}, {hi:g}], which SimpleITK and float64 "
            "coordinates cannot handle; give the spacing in a unit that makes it nearer 1 (e.g. micrometres)"
        )
    return sp


def check_origin(value: Any, spacing: Sequence[float], argname: str = "origin") -> tuple[float, float, float]:
    """An origin (z, y, x) whose coordinates ``origin + index * spacing`` resolve the spacing.

    An origin more than :data:`MAX_ORIGIN_VOXELS` voxels from 0 is refused: float64 coordinates
    that far out are not evenly spaced (or repeat).

    Examples
    --------
    >>> check_origin((0, 5, 1e6), (1.0, 1.0, 1.0))
    (0.0, 5.0, 1000000.0)
    >>> check_origin((0, 0, 1e30), (1.0, 1.0, 1.0))
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: origin: (0.0, 0.0, 1e+30) is 1e+30 voxels from 0 along x, more than 2^32: float64 coordinates that far out cannot resolve the voxel spacing (1.0, 1.0, 1.0); move the origin nearer 0
    """
    org = check_triple(value, argname, "origin")
    voxels = [abs(o) / s for o, s in zip(org, spacing)]
    worst = int(np.argmax(voxels))
    if voxels[worst] > MAX_ORIGIN_VOXELS:
        raise LazyregError(
            f"{argname}: {org} is {voxels[worst]:.3g} voxels from 0 along {'zyx'[worst]}, more than 2^32: float64 "
            f"coordinates that far out cannot resolve the voxel spacing {tuple(spacing)}; move the origin nearer 0"
        )
    return org


def affine_condition(matrix: Any) -> float:
    """Condition number of the linear (3, 3) part of a (4, 4) affine matrix (inf if singular or not finite).

    Above :data:`MAX_CONDITION` the affine is treated as singular: it collapses some direction,
    so it has no inverse and an image resampled through it is constant along that direction.

    Examples
    --------
    >>> affine_condition(np.diag([2.0, 1.0, 1.0, 1.0]))
    2.0
    >>> affine_condition(np.diag([0.0, 1.0, 1.0, 1.0]))
    inf
    """
    m = np.asarray(matrix, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        return math.inf
    cond = float(np.linalg.cond(m[:3, :3]))
    return cond if math.isfinite(cond) else math.inf


def check_positive_ints(value: Any, argname: str) -> tuple[int, ...]:
    """A non-empty sequence of positive integers (a single one is accepted too).

    Examples
    --------
    >>> check_positive_ints((4, 2, 1), "shrink_factors")
    (4, 2, 1)
    >>> check_positive_ints([2, 0], "shrink_factors")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: shrink_factors: expected a non-empty sequence of positive integers, got [2, 0]
    """
    arr = np.atleast_1d(np.asarray(value, dtype=object))
    try:
        vals = [float(v) for v in arr.ravel()]
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected positive integers, got {short_repr(value)}") from None
    if arr.ndim != 1 or not vals or any(v < 1 or not v.is_integer() for v in vals):
        raise LazyregError(f"{argname}: expected a non-empty sequence of positive integers, got {short_repr(value)}")
    return tuple(int(v) for v in vals)


def check_points(points: Any, argname: str = "points") -> np.ndarray:
    """Physical points as float64 of shape (N, 3) or (3,), in (z, y, x) order.

    Examples
    --------
    >>> check_points([1, 2, 3]).shape
    (3,)
    >>> check_points([[1, 2]])
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: points: expected shape (N, 3) or (3,) in (z, y, x) order, got (1, 2)
    """
    try:
        p = np.asarray(points, dtype=np.float64)
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected numbers of shape (N, 3) or (3,), got {type(points).__name__}") from None
    if p.ndim not in (1, 2) or p.shape[-1] != 3:
        raise LazyregError(f"{argname}: expected shape (N, 3) or (3,) in (z, y, x) order, got {p.shape}")
    return p


def config_number(key: str, default: int, minimum: int = 0) -> int:
    """A size or count from dask config ``key`` (a number, or bytes like ``"512 MiB"``), else ``default``.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"lazyreg.example-bytes": "1 KiB"}):
    ...     config_number("lazyreg.example-bytes", 0)
    1024
    >>> config_number("lazyreg.example-bytes", 7)
    7
    """
    import dask
    from dask.utils import parse_bytes

    value = dask.config.get(key, None)
    if value is None:
        return int(default)
    try:
        n = parse_bytes(value) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise LazyregError(f"dask config {key}: expected a number or a size (e.g. 536870912 or '512 MiB'), got {short_repr(value)}") from None
    if n < minimum:
        raise LazyregError(f"dask config {key}: must be >= {minimum}, got {short_repr(value)}")
    return int(n)
