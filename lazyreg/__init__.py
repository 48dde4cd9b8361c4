"""lazyreg: lazy, dask-native registration of 3D microscopy volumes larger than memory."""

from . import data, metrics
from .errors import LazyregError, LazyregWarning
from .image import grid, image, origin, spacing, validate_image
from .io.omezarr import to_zarr
from .io.open import open_image
from .io.transform_files import load_transform, save_transform
from .resample import apply_transform
from .transforms import Affine, DisplacementField, transform_points

__version__ = "0.1.0.dev0"

__all__ = [
    "Affine",
    "DisplacementField",
    "LazyregError",
    "LazyregWarning",
    "apply_transform",
    "data",
    "grid",
    "image",
    "load_transform",
    "open_image",
    "metrics",
    "origin",
    "spacing",
    "save_transform",
    "to_zarr",
    "transform_points",
    "validate_image",
]
