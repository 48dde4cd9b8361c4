"""Transforms from fixed to moving physical space: affines, displacement fields, point mapping."""

from .affine import Affine
from .field import DisplacementField
from .points import normalize_transforms, transform_points

__all__ = ["Affine", "DisplacementField", "normalize_transforms", "transform_points"]
