"""lazyreg: lazy, dask-native registration of 3D microscopy volumes larger than memory."""

from . import data, metrics
from .registration.features import align_features
from .registration.itk import align_affine, align_deformable
from .registration.piecewise import align_piecewise
from .registration.search import random_affine_search
from .registration.pipeline import align
from .registration.series import align_series
from .registration.steps import register_step
from .errors import LazyregError, LazyregWarning
from .images import Grid, grid, image, origin, spacing, validate_image
from .io.omezarr import to_zarr
from .io.open import open_image
from .io.transform_files import load_transform, save_transform
from .resample import apply_transform
from .transforms import Affine, DisplacementField, invert_field, jacobian_determinant, transform_points

__version__ = "0.1.0.dev0"

__all__ = [
    "align",
    "align_affine",
    "align_deformable",
    "align_piecewise",
    "align_series",
    "align_features",
    "Affine",
    "DisplacementField",
    "Grid",
    "LazyregError",
    "LazyregWarning",
    "apply_transform",
    "data",
    "grid",
    "image",
    "invert_field",
    "jacobian_determinant",
    "load_transform",
    "open_image",
    "metrics",
    "origin",
    "random_affine_search",
    "register_step",
    "spacing",
    "save_transform",
    "to_zarr",
    "transform_points",
    "validate_image",
]
