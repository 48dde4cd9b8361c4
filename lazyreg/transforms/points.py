"""Mapping points through transform lists, and checking transform lists."""

from __future__ import annotations

from typing import Any, Union

import numpy as np

from ..errors import LazyregError
from ..validation import check_points
from .affine import Affine
from .field import DisplacementField

__all__ = ["Transform", "transform_points", "normalize_transforms"]

Transform = Union[Affine, DisplacementField]


def _hint(t: Any) -> str:
    """A suggestion for a wrong transform type."""
    import SimpleITK as sitk

    if isinstance(t, sitk.Transform):
        return " (convert with lazyreg.Affine.from_sitk(t) or lazyreg.DisplacementField.from_sitk(t))"
    if isinstance(t, (str, bytes)) or hasattr(t, "__fspath__"):
        return " (read transform files with lazyreg.load_transform(path))"
    return " (wrap a 4x4 matrix with lazyreg.Affine(matrix), a (Z, Y, X, 3) array with lazyreg.DisplacementField.from_array)"


def normalize_transforms(transforms: Any, argname: str = "transforms") -> list[Transform]:
    """Check a transform argument and return it as a list.

    Every entry point taking transforms calls this.

    Parameters
    ----------
    transforms : Affine, DisplacementField, list or tuple of them, or None
        A single transform, or a sequence applied last to first (``[A, D]`` maps ``x`` to
        ``A(D(x))``). ``None`` and an empty sequence mean the identity (an empty list).
    argname : str, optional
        Name of the argument in error messages.

    Returns
    -------
    list of Affine and DisplacementField
        A new list (the transforms themselves are not copied).

    Raises
    ------
    LazyregError
        Naming ``argname``, the index and the type of the first entry that is not a transform
        (e.g. a numpy matrix, a file name, a nested list), with a hint on how to convert it.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.transforms import normalize_transforms
    >>> len(normalize_transforms(lazyreg.Affine.identity()))
    1
    >>> normalize_transforms([np.eye(4)])
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: transforms[0]: expected an Affine or a DisplacementField, got ndarray (wrap a 4x4 matrix with lazyreg.Affine(matrix), a (Z, Y, X, 3) array with lazyreg.DisplacementField.from_array)
    """
    if transforms is None:
        return []
    if isinstance(transforms, (Affine, DisplacementField)):
        return [transforms]
    if not isinstance(transforms, (list, tuple)):
        raise LazyregError(
            f"{argname}: expected an Affine, a DisplacementField or a list of them, "
            f"got {type(transforms).__name__}{_hint(transforms)}"
        )
    out: list[Transform] = []
    for i, t in enumerate(transforms):
        if not isinstance(t, (Affine, DisplacementField)):
            raise LazyregError(
                f"{argname}[{i}]: expected an Affine or a DisplacementField, got {type(t).__name__}{_hint(t)}"
            )
        out.append(t)
    return out


def transform_points(points: Any, transforms: Any) -> np.ndarray:
    """Map physical fixed-space points (z, y, x) through a transform list into moving space.

    A list ``[A, D]`` maps ``x`` to ``A(D(x))``: the last transform is applied first (as ITK's
    ``CompositeTransform``). Lazy transforms are computed (each time this is called; compute them
    once with ``t.compute()`` to map many batches).

    Parameters
    ----------
    points : (N, 3) or (3,) array_like
        Physical points in fixed space.
    transforms : Affine, DisplacementField or list/tuple of them
        See :func:`normalize_transforms`; empty means the identity.

    Returns
    -------
    float64 ndarray
        The mapped points, same shape as ``points``.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> A = lazyreg.Affine.from_translation((0, 0, 1.0))
    >>> S = lazyreg.Affine.from_parameters(scale=2.0)
    >>> lazyreg.transform_points(np.ones((1, 3)), [A, S])   # A(S(x)) = 2x + (0, 0, 1)
    array([[2., 2., 3.]])
    """
    ts = normalize_transforms(transforms)
    p = check_points(points).copy()
    for t in reversed(ts):
        p = t(p)
    return p
