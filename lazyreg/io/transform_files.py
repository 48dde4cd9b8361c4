"""Saving and loading transforms: plain-text zyx matrices, ITK transform files, vector images."""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from typing import Any, Callable

import numpy as np
import SimpleITK as sitk

from ..errors import LazyregError
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField

__all__ = ["save_affine", "load_affine", "save_transform", "load_transform", "save_field_zarr", "ITK_SUFFIXES", "FIELD_IMAGE_SUFFIXES", "TEXT_HEADER"]

#: Suffixes written with ``sitk.WriteTransform`` by default.
ITK_SUFFIXES = (".tfm", ".mat", ".h5", ".hdf5")
_ITK_MAGIC = "#Insight Transform File"
TEXT_HEADER = (
    "lazyreg affine: 4x4 homogeneous matrix in (z, y, x) order, physical units.\n"
    "It maps fixed-space points to moving-space points: moving = M[:3, :3] @ fixed + M[:3, 3]."
)
_FORMATS = ("text", "itk")
_FIELD_TRANSFORM_SUFFIXES = (".h5", ".hdf5", ".tfm")
#: Vector-image suffixes read and written as displacement fields (xyz vectors, ITK convention).
FIELD_IMAGE_SUFFIXES = (".mha", ".nrrd", ".nii", ".nii.gz")


def _is_itk_text(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(256)
    return head.lstrip(b"\xef\xbb\xbf").lstrip().startswith(_ITK_MAGIC.encode())


def _prepare_destination(path: str | os.PathLike, overwrite: bool) -> Path:
    """Check a destination path (refusing an existing file unless ``overwrite``)."""
    path = Path(os.fspath(path))
    if path.is_dir():
        raise LazyregError(f"path: {str(path)!r} is a directory, expected a file name")
    if path.exists() and not overwrite:
        raise LazyregError(f"path: {str(path)!r} already exists; pass overwrite=True to replace it")
    if not path.parent.is_dir():
        raise LazyregError(f"path: the directory {str(path.parent)!r} does not exist")
    return path


def _write_atomically(path: Path, write: Callable[[str], None]) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (same suffixes), then move it in place."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    try:
        try:
            write(str(tmp))
        except RuntimeError as e:  # SimpleITK's I/O errors
            raise LazyregError(f"path: SimpleITK could not write {str(path)!r}: {str(e).strip()}") from None
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def _has_suffix(path: Path, suffixes: tuple[str, ...]) -> bool:
    name = path.name.lower()
    return any(name.endswith(s) for s in suffixes)


def _is_itk_file(path: Path) -> bool:
    return _has_suffix(path, ITK_SUFFIXES) or _is_itk_text(path)


def _read_itk(path: Path) -> sitk.Transform:
    try:
        return sitk.ReadTransform(str(path)).Downcast()
    except RuntimeError as e:
        raise LazyregError(f"path: SimpleITK could not read a transform from {str(path)!r}: {str(e).strip()}") from None


def save_affine(affine: Affine, path: str | os.PathLike, *, overwrite: bool = False, format: str | None = None) -> Path:
    """Write an affine to a file: a plain-text zyx matrix, or an ITK transform file.

    The format follows the suffix unless ``format`` is given: ``.tfm``, ``.mat``, ``.h5`` and
    ``.hdf5`` are written by ``sitk.WriteTransform`` as an ITK ``AffineTransform`` (xyz, as
    :meth:`Affine.to_sitk`); anything else as text: the 4x4 matrix in (z, y, x) order, full
    precision, after a ``#`` comment header saying so. A lazy affine is computed. The file is
    written beside its destination first and then moved into place, so a failed write leaves any
    existing file untouched.

    Parameters
    ----------
    affine : Affine
        The transform to save.
    path : str or path-like
        Destination file.
    overwrite : bool, optional
        Replace an existing file. By default an existing file is an error (and left untouched).
    format : {"text", "itk"}, optional
        Force a format regardless of the suffix (with ``"itk"``, the suffix must be one ITK
        knows: ``.txt``, ``.tfm``, ``.mat``, ``.h5``, ``.hdf5``).

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    LazyregError
        If ``affine`` is not an Affine, the file exists and ``overwrite`` is false, the path is a
        directory, or the format is unknown.

    Examples
    --------
    >>> import tempfile, os, lazyreg
    >>> from lazyreg.io.transform_files import save_affine, load_affine
    >>> d = tempfile.mkdtemp()
    >>> p = save_affine(lazyreg.Affine.from_translation((1, 2, 3)), os.path.join(d, "shift.txt"))
    >>> load_affine(p)([0.0, 0.0, 0.0])
    array([1., 2., 3.])
    """
    if not isinstance(affine, Affine):
        hint = " (wrap matrices with lazyreg.Affine(matrix))" if isinstance(affine, np.ndarray) else ""
        raise LazyregError(f"affine: expected a lazyreg.Affine, got {type(affine).__name__}{hint}")
    if format is not None and format not in _FORMATS:
        raise LazyregError(f"format: expected one of {_FORMATS} or None, got {format!r}")
    path = _prepare_destination(path, overwrite)
    fmt = format or ("itk" if _has_suffix(path, ITK_SUFFIXES) else "text")
    concrete = affine.compute()
    if fmt == "itk":
        itk = concrete.to_sitk()
        return _write_atomically(path, lambda p: sitk.WriteTransform(itk, p))
    m = np.asarray(concrete.matrix)
    return _write_atomically(path, lambda p: np.savetxt(p, m, fmt="%.17g", header=TEXT_HEADER, comments="# "))


def load_affine(path: str | os.PathLike) -> Affine:
    """Read an affine saved by :func:`save_affine`, or any linear ITK transform file.

    ITK files are recognised by their suffix (``.tfm``, ``.mat``, ``.h5``, ``.hdf5``) or, for
    text files of any suffix, by their first line ``#Insight Transform File``; they are read with
    ``sitk.ReadTransform`` and converted by :meth:`Affine.from_sitk` (xyz to zyx; composites of
    linear transforms are composed). Other files are read as a whitespace-separated 4x4 matrix in
    (z, y, x) order, ``#`` starting comments.

    Parameters
    ----------
    path : str or path-like
        The file to read.

    Returns
    -------
    Affine

    Raises
    ------
    LazyregError
        If the file does not exist, cannot be parsed, holds no 4x4 matrix, or holds a
        non-linear transform.

    Examples
    --------
    >>> import tempfile, os, SimpleITK as sitk
    >>> from lazyreg.io.transform_files import load_affine
    >>> p = os.path.join(tempfile.mkdtemp(), "t.tfm")
    >>> sitk.WriteTransform(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), p)
    >>> load_affine(p)([0.0, 0.0, 0.0])     # ITK's xyz offset, as zyx
    array([3., 2., 1.])
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        return _load_field_zarr(path)
    if not path.is_file():
        raise LazyregError(f"path: no such file {str(path)!r}")
    if _is_itk_file(path):
        return Affine.from_sitk(_read_itk(path))
    try:
        m = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        raise LazyregError(f"path: could not read a 4x4 matrix from {str(path)!r}: {e}") from None
    if m.shape != (4, 4):
        raise LazyregError(f"path: expected a 4x4 homogeneous matrix in {str(path)!r}, got shape {m.shape}")
    try:
        return Affine(m)
    except LazyregError as e:
        raise LazyregError(f"path: {str(path)!r}: {e}") from None


def save_transform(
    transform: Affine | DisplacementField, path: str | os.PathLike, *, overwrite: bool = False
) -> Path:
    """Write an Affine or a DisplacementField to a file (lazy ones are computed).

    * An :class:`Affine` is written by :func:`save_affine`: ITK transform file for ``.tfm``,
      ``.mat``, ``.h5``, ``.hdf5``, otherwise a plain-text zyx 4x4 matrix.
    * A :class:`DisplacementField` is written either as an ITK ``DisplacementFieldTransform``
      (``.h5``, ``.hdf5``, ``.tfm``) or as a 3-component vector image of xyz displacements with
      its spacing and origin (``.mha``, ``.nrrd``, ``.nii``, ``.nii.gz``), ITK's/ANTs' convention,
      or streamed chunk by chunk (lazy fields are not loaded whole) to OME-Zarr 0.5 (``.zarr``,
      ``.ome.zarr``) with axes (c, z, y, x), c = (dz, dy, dx) in physical units.

    An existing file is refused (and left untouched) unless ``overwrite=True``.

    Parameters
    ----------
    transform : Affine or DisplacementField
        The transform to save.
    path : str or path-like
        Destination file; its suffix selects the format.
    overwrite : bool, optional
        Replace an existing file.

    Returns
    -------
    pathlib.Path
        The written path.

    Raises
    ------
    LazyregError
        Wrong transform type, an existing file, or a suffix the transform cannot be written to.

    Examples
    --------
    >>> import tempfile, os, numpy as np, lazyreg
    >>> D = lazyreg.DisplacementField.from_array(np.ones((2, 3, 4, 3)), spacing=2.0)
    >>> p = lazyreg.save_transform(D, os.path.join(tempfile.mkdtemp(), "field.mha"))
    >>> lazyreg.load_transform(p).grid.shape
    (2, 3, 4)
    """
    if isinstance(transform, Affine):
        return save_affine(transform, path, overwrite=overwrite)
    if not isinstance(transform, DisplacementField):
        raise LazyregError(
            f"transform: expected a lazyreg.Affine or lazyreg.DisplacementField, got {type(transform).__name__}"
        )
    if _has_suffix(Path(os.fspath(path)), (".zarr",)):
        return save_field_zarr(transform, path, overwrite=overwrite)
    if _has_suffix(Path(os.fspath(path)), (".nii", ".nii.gz")) and transform.grid.shape[0] == 1:
        raise LazyregError(
            f"path: NIfTI drops a trailing axis of length 1, and this field has a single z plane "
            f"{transform.grid.shape}, so it would not read back as 3D; use .mha, .nrrd or .ome.zarr"
        )
    path = _prepare_destination(path, overwrite)
    field = transform.compute()
    if _has_suffix(path, _FIELD_TRANSFORM_SUFFIXES):
        itk = field.to_sitk()
        return _write_atomically(path, lambda p: sitk.WriteTransform(itk, p))
    if _has_suffix(path, FIELD_IMAGE_SUFFIXES):
        img = field.to_sitk().GetDisplacementField()
        return _write_atomically(path, lambda p: sitk.WriteImage(img, p))
    raise LazyregError(
        f"path: a DisplacementField is written to an ITK transform file ({', '.join(_FIELD_TRANSFORM_SUFFIXES)}) "
        f"or a vector image ({', '.join(FIELD_IMAGE_SUFFIXES)}), got {path.name!r}"
    )


def _from_itk(t: sitk.Transform) -> list[Affine | DisplacementField]:
    """lazyreg transforms (list order = ITK composite order) from one ITK transform."""
    t = t.Downcast()
    if isinstance(t, sitk.CompositeTransform):
        parts: list[Affine | DisplacementField] = []
        for i in range(t.GetNumberOfTransforms()):
            parts.extend(_from_itk(t.GetNthTransform(i)))
        merged: list[Affine | DisplacementField] = []
        for p in parts:  # consecutive affines are composed: [A, B] == [A @ B]
            if merged and isinstance(p, Affine) and isinstance(merged[-1], Affine):
                merged[-1] = merged[-1] @ p
            else:
                merged.append(p)
        return merged or [Affine.identity()]
    if isinstance(t, sitk.DisplacementFieldTransform):
        return [DisplacementField.from_sitk(t)]
    return [Affine.from_sitk(t)]


def load_transform(path: str | os.PathLike) -> Affine | DisplacementField | list[Affine | DisplacementField]:
    """Read a transform file written by :func:`save_transform` or by ITK/SimpleITK/ANTs.

    * ITK transform files (``.tfm``, ``.mat``, ``.h5``, ``.hdf5``, or text starting with
      ``#Insight Transform File``): linear transforms give an :class:`Affine`, a
      ``DisplacementFieldTransform`` a :class:`DisplacementField`. A composite holding only linear
      transforms gives one Affine; a composite mixing in fields gives a **list** in ITK's order
      (the last applied first, as lazyreg lists), consecutive linear parts composed.
    * Vector images (``.mha``, ``.nrrd``, ``.nii``, ``.nii.gz``): a DisplacementField (xyz
      displacements, identity direction).
    * An OME-Zarr field folder written by :func:`save_transform`: a lazy DisplacementField.
    * Anything else: a plain-text zyx 4x4 matrix (:func:`load_affine`).

    Parameters
    ----------
    path : str or path-like
        The file to read.

    Returns
    -------
    Affine, DisplacementField, or list of them
        Usable directly as the ``transforms`` argument of lazyreg functions.

    Raises
    ------
    LazyregError
        Missing or unreadable file, or an unsupported transform (e.g. B-spline).

    Examples
    --------
    >>> import tempfile, os, lazyreg
    >>> p = lazyreg.save_transform(lazyreg.Affine.from_translation(1.0), os.path.join(tempfile.mkdtemp(), "a.tfm"))
    >>> lazyreg.load_transform(p)([0.0, 0.0, 0.0])
    array([1., 1., 1.])
    """
    path = Path(os.fspath(path))
    if path.is_dir():
        return _load_field_zarr(path)
    if not path.is_file():
        raise LazyregError(f"path: no such file {str(path)!r}")
    if _has_suffix(path, FIELD_IMAGE_SUFFIXES):
        try:
            img = sitk.ReadImage(str(path))
        except RuntimeError as e:
            raise LazyregError(f"path: SimpleITK could not read an image from {str(path)!r}: {str(e).strip()}") from None
        return DisplacementField.from_sitk(img)
    if _is_itk_file(path):
        parts = _from_itk(_read_itk(path))
        return parts[0] if len(parts) == 1 else parts
    return load_affine(path)


#: The attribute of an OME-Zarr displacement field written by lazyreg (checked when it is read).
_FIELD_ATTR = "lazyreg_transform"


def save_field_zarr(
    field: DisplacementField, path: str | os.PathLike, *, overwrite: bool = False, compute: bool = True
) -> Path | Any:
    """Stream a displacement field to OME-Zarr 0.5, chunk by chunk (a lazy field is not loaded whole).

    The image has axes (c, z, y, x), c = (dz, dy, dx) in physical units, the field's spacing and
    origin, and a ``lazyreg_transform`` attribute by which :func:`load_transform` recognises it.
    :func:`save_transform` calls this for ``.zarr`` and ``.ome.zarr`` paths.

    Parameters
    ----------
    field : DisplacementField
        The field to write (lazy or in memory).
    path : str or path-like
        Target folder (a zarr v3 group).
    overwrite : bool, optional
        Replace an existing zarr store at ``path``.
    compute : bool, optional
        If False, return a ``dask.delayed`` that writes the values: the store is created now and
        stays marked incomplete until it is computed. This lets a caller compute the write together
        with results sharing the field's tasks (e.g. its ``report``) in one pass.

    Returns
    -------
    pathlib.Path or dask.delayed.Delayed
        The written path, or (``compute=False``) the delayed write.

    Raises
    ------
    LazyregError
        If ``field`` is not a DisplacementField, or ``path`` exists and ``overwrite`` is false.

    Examples
    --------
    >>> import tempfile, dask, numpy as np, lazyreg
    >>> from lazyreg.io.transform_files import save_field_zarr
    >>> D = lazyreg.DisplacementField.from_array(np.ones((2, 3, 4, 3)), spacing=2.0)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     write = save_field_zarr(D, d + "/field.ome.zarr", compute=False)
    ...     _ = dask.compute(write)
    ...     float(lazyreg.load_transform(d + "/field.ome.zarr").compute().data.max())
    1.0
    """
    import dask.array as da

    from .omezarr import write_ome_zarr

    if not isinstance(field, DisplacementField):
        raise LazyregError(f"field: expected a lazyreg.DisplacementField, got {type(field).__name__}")
    g = field.grid
    data = field.data.data
    if not isinstance(data, da.Array):
        data = da.from_array(np.asarray(data), chunks=(64, 64, 64, 3))
    data = da.moveaxis(data.rechunk({3: 3}), 3, 0)
    unit = field.data.attrs.get("units", "micrometer")
    return write_ome_zarr(
        data,
        Path(os.fspath(path)),
        axes="czyx",
        scale=(1.0,) + tuple(g.spacing),
        translation=(0.0,) + tuple(g.origin),
        units=[None, unit, unit, unit],
        overwrite=overwrite,
        compute=compute,
        name="displacement field",
        attrs={_FIELD_ATTR: {"type": "displacement_field", "vector": ["z", "y", "x"], "units": unit}},
    )


def _load_field_zarr(path: Path) -> DisplacementField:
    from .omezarr import read_ome_zarr

    r = read_ome_zarr(path)
    info = r.attrs.get(_FIELD_ATTR, {})
    if info.get("type") != "displacement_field" or list(r.axes) != ["c", "z", "y", "x"]:
        raise LazyregError(f"path: {str(path)!r} is not a displacement field written by lazyreg.save_transform")
    values = r.data.transpose(1, 2, 3, 0)
    scale = np.asarray(r.scale, dtype=float)[1:]
    trans = np.asarray(r.translation, dtype=float)[1:]
    return DisplacementField.from_array(values, tuple(scale), tuple(trans))
