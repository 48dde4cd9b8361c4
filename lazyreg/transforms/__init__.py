"""Transforms from fixed to moving physical space: affines, displacement fields, point mapping.

A transform maps fixed-space physical points (z, y, x) to moving-space points. A list ``[A, D]``
means ``moving = A(D(x))``: the last element is applied first, as in ITK's ``CompositeTransform``.
"""

from .affine import Affine
from .field import DisplacementField, interpolate_field
from .invert import invert_field
from .jacobian import jacobian_determinant
from .points import Transform, normalize_transforms, transform_points

__all__ = [
    "Affine",
    "DisplacementField",
    "Transform",
    "interpolate_field",
    "invert_field",
    "jacobian_determinant",
    "normalize_transforms",
    "transform_points",
]
