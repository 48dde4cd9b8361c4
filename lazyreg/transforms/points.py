"""Mapping points through transform lists, and checking transform lists."""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import LazyregError
from .affine import Affine
from .field import DisplacementField

__all__ = ["transform_points", "normalize_transforms"]

Transform = Affine | DisplacementField


def normalize_transforms(transforms: Any, argname: str = "transforms") -> list[Transform]:
    """A list of transforms from one transform, a list or a tuple; anything else is an error.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.transforms.points import normalize_transforms
    >>> len(normalize_transforms(lazyreg.Affine.identity()))
    1
    """
    if transforms is None:
        return []
    if isinstance(transforms, (Affine, DisplacementField)):
        return [transforms]
    if not isinstance(transforms, (list, tuple)):
        raise LazyregError(
            f"{argname}: expected an Affine, a DisplacementField or a list of them, got {type(transforms).__name__}"
        )
    out = []
    for i, t in enumerate(transforms):
        if isinstance(t, (list, tuple)):
            out.extend(normalize_transforms(t, f"{argname}[{i}]"))
        elif isinstance(t, (Affine, DisplacementField)):
            out.append(t)
        else:
            hint = " (wrap matrices with lazyreg.Affine(matrix))" if isinstance(t, np.ndarray) else ""
            hint = hint or (" (load files with lazyreg.load_transform(path))" if isinstance(t, str) else "")
            raise LazyregError(
                f"{argname}[{i}]: expected an Affine or a DisplacementField, got {type(t).__name__}{hint}"
            )
    return out


def transform_points(points: Any, transforms: Any) -> np.ndarray:
    """Map physical fixed-space points (N, 3), zyx, through a transform list into moving space.

    A list ``[A, D]`` maps ``x`` to ``A(D(x))``: the last transform is applied first. Lazy
    transforms are computed.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> A = lazyreg.Affine.from_translation((0, 0, 1.0))
    >>> S = lazyreg.Affine.from_parameters(scale=2.0)
    >>> lazyreg.transform_points(np.ones((1, 3)), [A, S])   # A(S(x)) = 2x + (0, 0, 1)
    array([[2., 2., 3.]])
    """
    p = np.asarray(points, dtype=float)
    if p.shape[-1:] != (3,) or p.ndim > 2:
        raise LazyregError(f"points: expected shape (N, 3) or (3,), got {p.shape}")
    for t in reversed(normalize_transforms(transforms)):
        p = t(p)
    return p
