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
from .locks import acquire_lock
from .field_arrays import is_bare_array, load_field_array
from .ngff_graph import graph_of
from .ngff_transforms import TRANSFORM_ATTR, field_attr, field_ome_metadata, load_ngff_transform, ngff_document, save_affine_ngff

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


def _write_atomically(path: Path, write: Callable[[str], None], overwrite: bool = True) -> Path:
    """Call ``write(tmp)`` on a temporary name beside ``path`` (same suffixes), then move it in place.

    Under the writer lock of ``path`` (:mod:`lazyreg.io.locks`): a second writer fails at once, and
    without ``overwrite`` a file that appeared since :func:`_prepare_destination` is not replaced.
    """
    with acquire_lock(path):
        if path.exists() and not overwrite:
            raise LazyregError(f"path: {str(path)!r} already exists; pass overwrite=True to replace it")
        return _replace_with(path, write)


def _replace_with(path: Path, write: Callable[[str], None]) -> Path:
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


def _is_binary(path: Path) -> bool:
    """A NUL byte in the first 4 KiB: ITK's binary files (MATLAB ``.mat``, HDF5) have them, text never."""
    with open(path, "rb") as f:
        return b"\x00" in f.read(4096)


def _is_itk_file(path: Path) -> bool:
    """ITK text (by its first line), or a file with an ITK suffix; but a text ``.mat`` is a matrix, as
    bigstream's ``np.savetxt("affine.mat", affine)`` writes it (zyx, physical, fixed -> moving, as lazyreg's)."""
    if _is_itk_text(path):
        return True
    return _is_binary(path) if _has_suffix(path, (".mat",)) else _has_suffix(path, ITK_SUFFIXES)


def _read_itk(path: Path) -> sitk.Transform:
    try:
        return sitk.ReadTransform(str(path)).Downcast()
    except RuntimeError as e:
        raise LazyregError(f"path: SimpleITK could not read a transform from {str(path)!r}: {str(e).strip()}") from None


def save_affine(affine: Affine, path: str | os.PathLike, *, overwrite: bool = False, format: str | None = None) -> Path:
    """Write an affine to a file: a plain-text zyx matrix, or an ITK transform file.

    The format follows the suffix unless ``format`` is given: ``.tfm``, ``.mat``, ``.h5`` and
    ``.hdf5`` are written by ``sitk.WriteTransform`` as an ITK ``AffineTransform`` (xyz, as
    :meth:`Affine.to_sitk`); ``.json``, ``.zarr`` and ``.ome.zarr`` as an NGFF ``affine``
    transformation from the coordinate system ``fixed`` to ``moving`` (axes z, y, x; a JSON file or a
    zarr group holding only metadata, see :mod:`lazyreg.io.ngff_transforms`); anything else as text:
    the 4x4 matrix in (z, y, x) order, full
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
    if format is None and _has_suffix(Path(os.fspath(path)), (".json", ".zarr")):
        return save_affine_ngff(affine, path, overwrite=overwrite)
    path = _prepare_destination(path, overwrite)
    fmt = format or ("itk" if _has_suffix(path, ITK_SUFFIXES) else "text")
    concrete = affine.compute()
    if fmt == "itk":
        itk = concrete.to_sitk()
        return _write_atomically(path, lambda p: sitk.WriteTransform(itk, p), overwrite)
    m = np.asarray(concrete.matrix)
    return _write_atomically(path, lambda p: np.savetxt(p, m, fmt="%.17g", header=TEXT_HEADER, comments="# "), overwrite)


def load_affine(path: str | os.PathLike) -> Affine:
    """Read an affine saved by :func:`save_affine`, or any linear ITK transform file.

    NGFF affines (``.json`` files, zarr groups) are read by :func:`load_transform`. ITK files are
    recognised by their first line ``#Insight Transform File`` (text, any suffix) or
    by their suffix (``.tfm``, ``.h5``, ``.hdf5``, and binary ``.mat``); they are read with
    ``sitk.ReadTransform`` and converted by :meth:`Affine.from_sitk` (xyz to zyx; composites of
    linear transforms are composed). Other files, text ``.mat`` files included (bigstream saves its
    affines with ``np.savetxt("affine.mat", affine)``: the same zyx, physical, fixed -> moving
    matrix), are read as a whitespace-separated 4x4 matrix in (z, y, x) order, ``#`` starting comments.

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
    if path.is_dir() or _has_suffix(path, (".json",)):  # NGFF (or a field folder: refused below)
        t = load_transform(path)
        if not isinstance(t, Affine):
            raise LazyregError(f"path: {str(path)!r} holds a displacement field or a list, not one affine; use load_transform")
        return t
    if not path.is_file():
        raise LazyregError(f"path: no such file {str(path)!r}")
    if _is_itk_file(path):
        return Affine.from_sitk(_read_itk(path))
    try:
        m = np.loadtxt(path, dtype=np.float64, comments="#", ndmin=2)
    except (ValueError, UnicodeDecodeError) as e:
        hint = " (neither an ITK transform file nor a text matrix)" if _has_suffix(path, (".mat",)) else ""
        raise LazyregError(f"path: could not read a 4x4 matrix from {str(path)!r}{hint}: {e}") from None
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
      ``.mat``, ``.h5``, ``.hdf5``, NGFF ``affine`` for ``.json``, ``.zarr``, ``.ome.zarr``,
      otherwise a plain-text zyx 4x4 matrix.
    * A :class:`DisplacementField` is written either as an ITK ``DisplacementFieldTransform``
      (``.h5``, ``.hdf5``, ``.tfm``) or as a 3-component vector image of xyz displacements with
      its spacing and origin (``.mha``, ``.nrrd``, ``.nii``, ``.nii.gz``), ITK's/ANTs' convention,
      or streamed chunk by chunk (lazy fields are not loaded whole) to OME-Zarr (``.zarr``,
      ``.ome.zarr``) as an NGFF ``displacements`` transformation from ``fixed`` to ``moving``
      (:func:`save_field_zarr`).

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
        return _write_atomically(path, lambda p: sitk.WriteTransform(itk, p), overwrite)
    if _has_suffix(path, FIELD_IMAGE_SUFFIXES):
        img = field.to_sitk().GetDisplacementField()
        return _write_atomically(path, lambda p: sitk.WriteImage(img, p), overwrite)
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


def load_transform(
    path: str | os.PathLike,
    *,
    input: str | None = None,
    output: str | None = None,
    spacing: Any = None,
    origin: Any = None,
) -> Affine | DisplacementField | list[Affine | DisplacementField]:
    """Read a transform written by :func:`save_transform`, by ITK/SimpleITK/ANTs, as NGFF, or by bigstream.

    * ITK transform files (binary ``.mat``, ``.h5``, ``.hdf5``, or text starting with
      ``#Insight Transform File``): linear transforms give an :class:`Affine`, a
      ``DisplacementFieldTransform`` a :class:`DisplacementField`. A composite holding only linear
      transforms gives one Affine; a composite mixing in fields gives a **list** in ITK's order
      (the last applied first, as lazyreg lists), consecutive linear parts composed.
    * Vector images (``.mha``, ``.nrrd``, ``.nii``, ``.nii.gz``): a DisplacementField (xyz
      displacements, identity direction).
    * NGFF (OME-Zarr RFC-5) ``coordinateTransformations`` in a zarr group or a ``.json`` file (what
      :func:`save_transform` writes to ``.ome.zarr`` / ``.zarr`` / ``.json``, and other tools'
      ``scene`` / ``multiscales`` transformations): the chain from coordinate system ``input`` to
      ``output`` (identity, scale, translation, affine, rotation, mapAxis, byDimension, sequence,
      bijection, inverseOf, displacements; walked backwards where it inverts in closed form), in
      lazyreg's z, y, x order (axes matched by name); 2D (y, x) transforms act on every z plane
      (z passes through). Fields are lazy. See :mod:`lazyreg.io.ngff_graph`.
    * An OME-Zarr field folder of the earlier lazyreg format (axes c, z, y, x): a lazy DisplacementField.
    * A bare zarr array or N5 dataset of shape (z, y, x, 3), e.g. bigstream's ``deform``: a lazy
      DisplacementField on a grid of the given ``spacing`` (required) and ``origin`` (default 0).
    * Anything else: a plain-text zyx 4x4 matrix (:func:`load_affine`), e.g. bigstream's
      ``np.savetxt("affine.mat", affine)`` (a text ``.mat``; bigstream's matrices map fixed to moving
      physical points in the arrays' axis order, as lazyreg's).

    Parameters
    ----------
    path : str or path-like
        The file or folder to read.
    input, output : str, optional
        NGFF only: the coordinate systems of fixed-space points (the transform's input) and of
        moving-space points (its output). Default ``"fixed"`` -> ``"moving"`` for lazyreg's files,
        else the file's only transformation.
    spacing, origin : float or 3 floats, optional
        Bare (z, y, x, 3) arrays only: the grid of the field (z, y, x), which such arrays do not store.

    Returns
    -------
    Affine, DisplacementField, or list of them
        Usable directly as the ``transforms`` argument of lazyreg functions (an NGFF identity gives
        the identity Affine).

    Raises
    ------
    LazyregError
        Missing or unreadable file, an unsupported transform (e.g. B-spline), a bare array without
        ``spacing``, or ``input`` / ``output`` / ``spacing`` / ``origin`` where they do not apply.

    Examples
    --------
    >>> import tempfile, os, lazyreg
    >>> p = lazyreg.save_transform(lazyreg.Affine.from_translation(1.0), os.path.join(tempfile.mkdtemp(), "a.tfm"))
    >>> lazyreg.load_transform(p)([0.0, 0.0, 0.0])
    array([1., 1., 1.])
    """
    path = Path(os.fspath(path))
    if path.is_dir() and is_bare_array(path):
        if input is not None or output is not None:
            raise LazyregError(f"input: {str(path)!r} is a bare array, not NGFF; input= / output= do not apply")
        return load_field_array(path, spacing=spacing, origin=origin)
    if spacing is not None or origin is not None:
        raise LazyregError(f"spacing: {str(path)!r} is not a bare (z, y, x, 3) array; spacing= / origin= apply only to those")
    if path.is_dir() or (path.is_file() and _has_suffix(path, (".json",))):
        doc = ngff_document(path)
        if doc is not None and graph_of(doc[0])[1]:
            parts = load_ngff_transform(path, input=input, output=output)
            return parts[0] if len(parts) == 1 else (parts or Affine.identity())
    if input is not None or output is not None:
        raise LazyregError(f"input: {str(path)!r} holds no NGFF coordinateTransformations; input= / output= do not apply")
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
_FIELD_ATTR = TRANSFORM_ATTR


def save_field_zarr(
    field: DisplacementField, path: str | os.PathLike, *, overwrite: bool = False, compute: bool = True
) -> Path | Any:
    """Stream a displacement field to OME-Zarr as an NGFF transform, chunk by chunk (a lazy field is not loaded whole).

    The array ``0`` has axes (d, z, y, x): ``d`` of type ``"displacement"`` holds (dz, dy, dx) in
    physical units (the unit of the z, y, x axes); the image has the field's spacing and origin. The
    group's ``ome.scene`` describes it as the NGFF (RFC-5) transformation ``displacements`` from the
    coordinate system ``fixed`` (input) to ``moving`` (output), both with axes z, y, x (see
    :mod:`lazyreg.io.ngff_transforms`), and a ``lazyreg_transform`` attribute says lazyreg wrote it.
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
        axes="dzyx",
        scale=(1.0,) + tuple(g.spacing),
        translation=(0.0,) + tuple(g.origin),
        units=[None, unit, unit, unit],
        overwrite=overwrite,
        compute=compute,
        name="displacement field",
        # "ome" replaces the writer's OME-Zarr 0.5 metadata (same image, axis d typed "displacement", plus the scene)
        attrs={"ome": field_ome_metadata(g, unit), TRANSFORM_ATTR: field_attr(unit)},
    )


def _load_field_zarr(path: Path) -> DisplacementField:
    from .omezarr import read_ome_zarr

    r = read_ome_zarr(path)
    info = r.attrs.get(_FIELD_ATTR, {})
    if info.get("type") != "displacement_field" or list(r.axes)[1:] != ["z", "y", "x"]:
        raise LazyregError(f"path: {str(path)!r} is neither a lazyreg displacement field nor NGFF coordinateTransformations")
    values = r.data.transpose(1, 2, 3, 0)
    scale = np.asarray(r.scale, dtype=float)[1:]
    trans = np.asarray(r.translation, dtype=float)[1:]
    return DisplacementField.from_array(values, tuple(scale), tuple(trans))
