"""Transforms as NGFF (OME-Zarr RFC-5) coordinate transformations: lazyreg's files, and others'.

**Direction and axis order.** lazyreg transforms map fixed-space points to moving-space points, in
(z, y, x) order. Written as NGFF, a transform goes from the coordinate system ``"fixed"`` (its
``input``) to ``"moving"`` (its ``output``), both with axes ``z, y, x`` (``space``, with units): NGFF
parameters are in the axis order of their coordinate systems, here the same z, y, x.

**What is written.**

* A displacement field (``save_transform(field, "f.ome.zarr")``): one zarr v3 group, streamed chunk
  by chunk by :func:`lazyreg.io.omezarr.write_ome_zarr`, with the array ``0`` of shape
  ``(3, Z, Y, X)`` holding (dz, dy, dx) in physical units. Its ``ome`` metadata are an OME-Zarr 0.5
  image (readable by today's tools) whose first axis ``d`` has the type ``"displacement"``
  (``discrete``) and whose spatial axes carry units; the image's ``coordinateSystems`` repeat the axes
  (the field coordinate system of RFC-5), and ``ome.scene`` holds the RFC-5 transformation graph:
  coordinate systems ``fixed`` and ``moving`` and one ``{"type": "displacements", "path": ".",
  "input": {"name": "fixed"}, "output": {"name": "moving"}, "interpolation": "linear"}``. The vector
  axis comes first, not last as RFC-5 recommends (a SHOULD), because OME-Zarr 0.5 images must put a
  non-space axis before the space axes; the i-th displacement is that of the i-th output axis (z, y, x).
* An affine (``.json`` file, or a ``.zarr`` / ``.ome.zarr`` group holding only metadata): ``ome``
  version :data:`SCENE_VERSION` with a ``scene`` of the same two coordinate systems and one
  ``{"type": "affine", "affine": <3x4 rows, z, y, x>, "input": {"name": "fixed"}, ...}``.

Both carry a ``lazyreg_transform`` attribute saying so. Reading others' files is
:func:`load_ngff_transform` (see :mod:`lazyreg.io.ngff_graph` for the transformation types).
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import dask.array as da
import numpy as np
import zarr

from ..errors import LazyregError
from ..images import Grid
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from .locks import acquire_lock
from .ngff_graph import NgffField, graph_of, transforms_from_ngff
from .zarr_read import is_zarr, read_ome_zarr

__all__ = [
    "FIXED",
    "MOVING",
    "SCENE_VERSION",
    "TRANSFORM_ATTR",
    "field_ome_metadata",
    "field_attr",
    "affine_ome_metadata",
    "save_affine_ngff",
    "ngff_document",
    "load_ngff_transform",
]

#: Names of the coordinate systems of lazyreg's NGFF transforms: input (fixed) and output (moving).
FIXED, MOVING = "fixed", "moving"
#: OME-Zarr version written with a ``scene`` and no image (the RFC-5 draft of the specification).
SCENE_VERSION = "0.6.dev3"
#: The group attribute by which lazyreg recognises the transforms it wrote.
TRANSFORM_ATTR = "lazyreg_transform"
_DIRECTION = "input = fixed space, output = moving space (points map fixed -> moving); axes z, y, x"


def _space(unit: str) -> list[dict]:
    return [{"name": a, "type": "space", "unit": unit} for a in "zyx"]


def _scene(transformation: dict, unit: str) -> dict:
    return {
        "coordinateSystems": [{"name": FIXED, "axes": _space(unit)}, {"name": MOVING, "axes": _space(unit)}],
        "coordinateTransformations": [
            {**transformation, "name": f"{FIXED} -> {MOVING}", "input": {"name": FIXED}, "output": {"name": MOVING}}
        ],
    }


def field_ome_metadata(grid: Grid, unit: str = "micrometer") -> dict:
    """The ``ome`` metadata of a displacement field store (array ``0`` of shape (3, Z, Y, X)).

    Parameters
    ----------
    grid : Grid
        The field's grid (z, y, x spacing and origin).
    unit : str
        Unit of the spatial axes and of the displacements.

    Returns
    -------
    dict
        An OME-Zarr 0.5 ``multiscales`` image with a ``displacement`` axis, plus the RFC-5
        ``scene`` (``fixed`` -> ``moving``, type ``displacements``, ``path`` ``"."``).

    Examples
    --------
    >>> from lazyreg.images import Grid
    >>> from lazyreg.io.ngff_transforms import field_ome_metadata
    >>> meta = field_ome_metadata(Grid((2, 3, 4), spacing=(2.0, 1.0, 1.0)))
    >>> [a["type"] for a in meta["multiscales"][0]["axes"]]
    ['displacement', 'space', 'space', 'space']
    >>> t = meta["scene"]["coordinateTransformations"][0]
    >>> t["type"], t["input"], t["output"]
    ('displacements', {'name': 'fixed'}, {'name': 'moving'})
    """
    axes = [{"name": "d", "type": "displacement", "discrete": True}] + _space(unit)
    transforms = [
        {"type": "scale", "scale": [1.0, *map(float, grid.spacing)]},
        {"type": "translation", "translation": [0.0, *map(float, grid.origin)]},
    ]
    image = {
        "name": "displacement field",
        "axes": axes,
        "coordinateSystems": [{"name": "displacement field", "axes": axes}],
        "datasets": [{"path": "0", "coordinateTransformations": transforms}],
    }
    scene = _scene({"type": "displacements", "path": ".", "interpolation": "linear"}, unit)
    return {"version": "0.5", "multiscales": [image], "scene": scene}


def affine_ome_metadata(affine: Affine, unit: str = "micrometer") -> dict:
    """The ``ome`` metadata of an affine: a ``scene`` with one NGFF ``affine`` from ``fixed`` to ``moving``.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.io.ngff_transforms import affine_ome_metadata
    >>> t = affine_ome_metadata(lazyreg.Affine.from_translation((1, 2, 3)))["scene"]["coordinateTransformations"][0]
    >>> t["type"], t["affine"][2]
    ('affine', [0.0, 0.0, 1.0, 3.0])
    """
    m = np.asarray(affine.compute().matrix, dtype=float)
    return {"version": SCENE_VERSION, "scene": _scene({"type": "affine", "affine": m[:3].tolist()}, unit)}


def field_attr(unit: str) -> dict:
    """The ``lazyreg_transform`` attribute of a field store (format 2: NGFF).

    Examples
    --------
    >>> from lazyreg.io.ngff_transforms import field_attr
    >>> field_attr("micrometer")["vector"]
    ['z', 'y', 'x']
    """
    return {"type": "displacement_field", "format": 2, "vector": ["z", "y", "x"], "vector_axis": "d",
            "units": unit, "direction": _DIRECTION}


def save_affine_ngff(affine: Affine, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write an affine as an NGFF ``affine`` transformation: a ``.json`` file, or a zarr v3 group.

    A path ending in ``.json`` gets the attributes document ``{"ome": ..., "lazyreg_transform": ...}``;
    any other path (``.zarr``, ``.ome.zarr``) a zarr v3 group with those attributes and no array.
    The write goes to a temporary name beside ``path`` first, under the writer lock of ``path``.

    Parameters
    ----------
    affine : Affine
        The transform (fixed -> moving, zyx); a lazy one is computed.
    path : str or path-like
        Destination.
    overwrite : bool
        Replace an existing file or zarr store.

    Returns
    -------
    pathlib.Path

    Raises
    ------
    LazyregError
        An existing path without ``overwrite``, or an existing folder that is not a zarr store.

    Examples
    --------
    >>> import tempfile, lazyreg
    >>> from lazyreg.io.ngff_transforms import save_affine_ngff, load_ngff_transform
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = save_affine_ngff(lazyreg.Affine.from_translation((1, 2, 3)), d + "/a.ome.zarr")
    ...     [A] = load_ngff_transform(p)
    ...     A([0.0, 0.0, 0.0])
    array([1., 2., 3.])
    """
    path = Path(os.fspath(path)).absolute()
    if not path.parent.is_dir():
        raise LazyregError(f"path: the directory {str(path.parent)!r} does not exist")
    attrs = {"ome": affine_ome_metadata(affine), TRANSFORM_ATTR: {"type": "affine", "direction": _DIRECTION}}
    tmp = path.with_name(f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}-{path.name}")
    with acquire_lock(path):
        if path.exists() and not overwrite:
            raise LazyregError(f"path: {str(path)!r} already exists; pass overwrite=True to replace it")
        if path.is_dir() and not is_zarr(path):
            raise LazyregError(f"path: {path} exists and is not a zarr store; refusing to delete it")
        try:
            if path.name.lower().endswith(".json"):
                tmp.write_text(json.dumps(attrs, indent=2))
            else:
                zarr.create_group(store=str(tmp), zarr_format=3, attributes=attrs)
            old = path.with_name(f".{path.name}.lazyreg-old-{uuid.uuid4().hex[:8]}") if path.is_dir() else None
            if old is not None:
                os.rename(path, old)
            os.replace(tmp, path)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
    return path


def ngff_document(path: str | os.PathLike) -> tuple[dict, Path] | None:
    """The attributes of a zarr group (or of a JSON document) and the folder its ``path``s are relative to.

    A JSON file may hold a zarr v3 ``zarr.json`` (its ``attributes`` are taken) or the attributes
    themselves. None for a zarr array, or a folder that is not a zarr group.

    Examples
    --------
    >>> import json, tempfile, os
    >>> from lazyreg.io.ngff_transforms import ngff_document
    >>> d = tempfile.mkdtemp()
    >>> with open(os.path.join(d, "t.json"), "w") as f:
    ...     json.dump({"zarr_format": 3, "node_type": "group", "attributes": {"ome": {}}}, f)
    >>> ngff_document(os.path.join(d, "t.json"))[0]
    {'ome': {}}
    """
    p = Path(os.fspath(path))
    meta = p / "zarr.json" if p.is_dir() else p
    if p.is_dir() and not meta.is_file():
        meta = p / ".zattrs"
        if not meta.is_file() or (p / ".zarray").is_file():
            return None
    try:
        doc = json.loads(meta.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LazyregError(f"path: {meta} is not readable JSON ({e})") from None
    if not isinstance(doc, dict):
        raise LazyregError(f"path: {meta} holds {type(doc).__name__}, expected a JSON object")
    if doc.get("node_type") == "array":
        return None
    attrs = doc.get("attributes", {}) if "zarr_format" in doc else doc
    return (attrs if isinstance(attrs, dict) else {}), (p if p.is_dir() else p.parent)


def _load_system(root: Path, path: str, name: str) -> list | None:
    found = ngff_document(root / path)
    if found is None:
        return None
    systems, _ = graph_of(found[0])
    return systems.get(name)


def _param(root: Path, where: str) -> Any:
    def read(t: dict, key: str) -> Any:
        if isinstance(t.get("path"), str) and (root / t["path"]).is_dir() and t.get("type") != "displacements":
            try:
                return np.asarray(zarr.open_array(store=str(root / t["path"]), mode="r")[...])
            except Exception as e:  # zarr raises several kinds for a missing / broken array
                raise LazyregError(f"path: {where}: cannot read the {t.get('type')} parameters at {t['path']!r} ({e})") from None
        return t.get(key)

    return read


def _flat(transforms: Any) -> list:
    out = []
    for t in transforms or []:
        out += _flat(t.get("transformations")) if isinstance(t, dict) and t.get("type") == "sequence" else [t]
    return out


def _field_reader(root: Path, where: str) -> Any:
    def read(t: dict, n: int) -> NgffField:
        if t.get("interpolation", "linear") != "linear":
            raise LazyregError(f"path: {where}: lazyreg interpolates fields linearly, not {t['interpolation']!r}")
        target = (root / str(t.get("path", "")).strip("/")).resolve()
        found = ngff_document(target) if is_zarr(target) else None
        meta = found[0].get("ome") if found and isinstance(found[0].get("ome"), dict) else (found[0] if found else {})
        ms = (meta.get("multiscales") or [None])[0] if isinstance(meta.get("multiscales"), list) else None
        if not isinstance(ms, dict) or not ms.get("datasets"):
            raise LazyregError(f"path: {where}: the displacements at {t.get('path')!r} ({target}) are not an OME-Zarr multiscales group")
        if "axes" in ms:  # OME-Zarr 0.4 / 0.5 image (lazyreg's own fields)
            r = read_ome_zarr(target)
            data, axes, scale, shift = r.data, ms["axes"], np.asarray(r.scale), np.asarray(r.translation)
        else:  # RFC-5 image: axes from the coordinate system its dataset transformation outputs
            ds = ms["datasets"][0]
            cts = _flat(ds.get("coordinateTransformations"))
            systems, _ = graph_of({"multiscales": [ms]})
            out = [t2.get("output") for t2 in ds.get("coordinateTransformations") or [] if isinstance(t2, dict)]
            key = out[0].get("name") if out and isinstance(out[0], dict) else (out[0] if out else None)
            axes = systems.get(key) or list(systems.values())[-1]
            data = da.from_zarr(zarr.open_array(store=str(target / ds["path"]), mode="r"))
            scale, shift = np.ones(data.ndim), np.zeros(data.ndim)
            for c in cts:
                if c.get("type") == "scale":
                    scale, shift = scale * np.asarray(c["scale"], float), shift * np.asarray(c["scale"], float)
                elif c.get("type") == "translation":
                    shift = shift + np.asarray(c["translation"], float)
        vec = [i for i, a in enumerate(axes) if isinstance(a, dict) and a.get("type") == "displacement"]
        if len(vec) != 1 or data.ndim != n + 1 or data.shape[vec[0]] != n:
            raise LazyregError(
                f"path: {where}: the displacements at {target} must have {n} space axes and one 'displacement' axis "
                f"of length {n}; got axes {[a.get('name') for a in axes]} and shape {data.shape}"
            )
        keep = [i for i in range(n + 1) if i != vec[0]]
        return NgffField(da.moveaxis(data, vec[0], -1), tuple(scale[keep]), tuple(shift[keep]))

    return read


def load_ngff_transform(
    path: str | os.PathLike, *, input: str | None = None, output: str | None = None
) -> list[Affine | DisplacementField]:
    """Read the NGFF transformation from coordinate system ``input`` to ``output`` as a lazyreg list.

    Parameters
    ----------
    path : str or path-like
        A zarr group (its attributes) or a JSON document holding ``coordinateTransformations``
        (``ome.scene``, ``multiscales``, or at the top level).
    input, output : str, optional
        Coordinate system names: ``input`` is the space of fixed-space points, ``output`` that of
        moving-space points. ``"path/name"`` names the system ``name`` of the image at ``path``.
        Default: ``fixed`` -> ``moving`` for files lazyreg wrote, else the document's only
        transformation.

    Returns
    -------
    list of Affine and DisplacementField
        In lazyreg order (the last applied first); empty for an identity.

    Raises
    ------
    LazyregError
        No transformations, ambiguous or unknown coordinate systems, unsupported transformations.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from lazyreg.io.ngff_transforms import load_ngff_transform
    >>> yx = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    >>> doc = {"coordinateSystems": [{"name": "in", "axes": yx}, {"name": "out", "axes": yx[::-1]}],
    ...        "coordinateTransformations": [{"type": "scale", "scale": [2, 3], "input": "in", "output": "out"}]}
    >>> p = os.path.join(tempfile.mkdtemp(), "t.json")
    >>> with open(p, "w") as f:
    ...     json.dump(doc, f)
    >>> [A] = load_ngff_transform(p)   # "out" lists x first: x_out = 2 * y_in, y_out = 3 * x_in
    >>> A([0.0, 1.0, 10.0])            # (z, y, x) in, (z, y, x) out; z passes through (2D)
    array([ 0., 30.,  2.])
    """
    p = Path(os.fspath(path))
    found = ngff_document(p)
    if found is None:
        raise LazyregError(f"path: {p} is not a zarr group or JSON document with NGFF transformations")
    attrs, root = found
    systems, edges = graph_of(attrs, lambda sub, name: _load_system(root, sub, name))
    if not edges:
        raise LazyregError(f"path: {p} has no NGFF coordinateTransformations with an input and an output")
    if (input is None) != (output is None):
        raise LazyregError("input: pass both input= and output= (coordinate system names), or neither")
    if input is None:
        if TRANSFORM_ATTR in attrs and {FIXED, MOVING} <= set(systems):
            input, output = FIXED, MOVING
        elif len(edges) == 1:
            input, output = edges[0][0], edges[0][1]
        else:
            listed = "; ".join(f"{a!r} -> {b!r}" for a, b, _ in edges)
            raise LazyregError(f"input: {p} holds several transformations ({listed}); pass input= and output=")
    return transforms_from_ngff(
        systems, edges, str(input), str(output), where=str(p),
        read_field=_field_reader(root, str(p)), read_param=_param(root, str(p)),
    )
