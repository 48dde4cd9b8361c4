"""Images, a displacement field and a block report as napari layers, placed in physical space.

:func:`napari_layers` builds napari's layer-data tuples ``(data, metadata, kind)`` without importing
napari: images keep their dask arrays (napari reads the planes it shows) with ``scale`` = voxel
spacing and ``translate`` = origin, so an image and its aligned version overlap where they should
whatever their grids; a field gives its magnitude (an image layer) and arrows on a coarse subgrid (a
vectors layer, in physical units); a piecewise report gives one point per block, coloured by status.
:func:`view_in_napari` opens them in a viewer (``pip install napari[all]``).

napari's own OME-Zarr reader is not needed for lazyreg's outputs: ``lazyreg.open_image`` reads them
and these layers carry the physical placement (napari-ome-zarr 0.10 drops the translation of
OME-Zarr 0.5 images; 0.8.2 keeps it).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..transforms.field import DisplacementField
from ..validation import check_int

__all__ = ["napari_layers", "view_in_napari", "STATUS_COLOURS"]

#: Point colours of the blocks of a piecewise report, by status.
STATUS_COLOURS = {"ok": "#2ca02c", "unchanged": "#f2d649", "skipped": "#c8c8c8", "failed": "#ff2a2a"}


def _image_layer(img: xr.DataArray, name: str) -> tuple:
    g = grid_of(img, name)
    meta = {"name": name, "scale": g.spacing, "translate": g.origin, "blending": "additive"}
    return img.data, meta, "image"


def _field_layers(field: DisplacementField, step: int) -> list[tuple]:
    g = field.grid
    values = field.data.data
    arr = values if isinstance(values, da.Array) else da.from_array(np.asarray(values), chunks=-1)
    magnitude = da.sqrt((arr.astype(np.float32) ** 2).sum(axis=-1))
    meta = {"name": "field magnitude", "scale": g.spacing, "translate": g.origin, "colormap": "magma", "visible": False}
    sub = np.asarray(field.data[::step, ::step, ::step].values, dtype=np.float64)
    idx = np.stack(np.meshgrid(*(np.arange(0, n, step) for n in g.shape), indexing="ij"), axis=-1).reshape(-1, 3)
    vectors = np.stack([g.to_physical(idx), sub.reshape(-1, 3)], axis=1)  # (N, 2, 3): position, displacement
    return [(magnitude, meta, "image"), (vectors, {"name": "field", "edge_color": "cyan", "edge_width": 0.5 * min(g.spacing)}, "vectors")]


def _report_layer(report: Sequence[Mapping[str, Any]], grid: Grid, blocksize: Sequence[int]) -> tuple:
    rows = [r for r in report if r.get("index") is not None]
    if not rows:
        raise LazyregError("report: expected rows with an 'index' (a piecewise field's report)")
    index = np.array([r["index"] for r in rows], dtype=float)
    centre = index * np.asarray(blocksize) + (np.asarray(blocksize) - 1) / 2.0
    centre = np.minimum(centre, np.asarray(grid.shape) - 1)
    status = [str(r.get("status")) for r in rows]
    gain = [float(r["metric_after"] - r["metric_before"]) if r.get("metric_after") is not None and r.get("metric_before") is not None
            else float("nan") for r in rows]
    meta = {
        "name": "blocks",
        "face_color": [STATUS_COLOURS.get(s, "white") for s in status],
        "size": 0.25 * float(np.min(np.asarray(blocksize) * np.asarray(grid.spacing))),
        "properties": {"status": status, "gain": gain},
        "text": {"string": "{status}", "size": 8, "color": "white"},
    }
    return grid.to_physical(centre), meta, "points"


def napari_layers(
    *images: xr.DataArray,
    names: Sequence[str] | None = None,
    field: DisplacementField | None = None,
    report: Sequence[Mapping[str, Any]] | None = None,
    blocksize: int | Sequence[int] | None = None,
    vector_step: int = 8,
) -> list[tuple]:
    """napari layer-data tuples for images, a field and a block report, in physical space.

    Parameters
    ----------
    *images : xarray.DataArray
        Images (dims z, y, x); their data stay lazy. The first one's grid places the report.
    names : sequence of str, optional
        Layer names (default: each image's ``name``, else ``image 0``, ``image 1``, ...).
    field : DisplacementField, optional
        Adds its magnitude (hidden at first) and its arrows every ``vector_step`` nodes (this
        computes that subgrid of a lazy field).
    report : sequence of dict, optional
        A piecewise field's report (``field.compute().report``): one point per block at its centre,
        coloured by status (:data:`STATUS_COLOURS`), with status and Pearson gain as properties.
    blocksize : int or 3 ints, optional
        The blocks' size in voxels of the first image (needed with ``report``).
    vector_step : int
        Node step of the field's arrows (default 8).

    Returns
    -------
    list of tuple
        ``(data, metadata, kind)`` per layer, for ``viewer.add_<kind>(data, **metadata)`` or a napari
        reader plugin.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.plot.viewer import napari_layers
    >>> img = lazyreg.image(np.zeros((4, 8, 8)), spacing=(2.0, 1.0, 1.0), origin=(10.0, 0.0, 0.0))
    >>> [(meta["name"], meta["scale"], meta["translate"], kind) for _, meta, kind in napari_layers(img, names=["fixed"])]
    [('fixed', (2.0, 1.0, 1.0), (10.0, 0.0, 0.0), 'image')]
    """
    if names is not None and len(names) != len(images):
        raise LazyregError(f"names: expected {len(images)} names (one per image), got {len(names)}")
    layers = []
    for i, img in enumerate(images):
        validate_image(img, f"images[{i}]")
        name = names[i] if names is not None else (str(img.name) if img.name is not None else f"image {i}")
        layers.append(_image_layer(img, name))
    if field is not None:
        if not isinstance(field, DisplacementField):
            raise LazyregError(f"field: expected a lazyreg.DisplacementField, got {type(field).__name__}")
        layers.extend(_field_layers(field, check_int(vector_step, "vector_step", 1)))
    if report is not None:
        if not images or blocksize is None:
            raise LazyregError("report: needs an image (its grid places the blocks) and blocksize")
        bs = np.broadcast_to(np.asarray(blocksize, dtype=int), (3,))
        layers.append(_report_layer(report, grid_of(images[0], "images[0]"), tuple(int(b) for b in bs)))
    return layers


def view_in_napari(*images: xr.DataArray, viewer: Any = None, **kwargs: Any) -> Any:
    """Open :func:`napari_layers` in a napari viewer (a new one unless ``viewer`` is given).

    Takes the arguments of :func:`napari_layers`; returns the viewer. Needs napari
    (``pip install 'napari[all]'``); raises a clear error without it.

    Examples
    --------
    >>> import lazyreg
    >>> from lazyreg.plot.viewer import view_in_napari
    >>> fixed, moving, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> viewer = view_in_napari(fixed, moving, names=["fixed", "moving"])  # doctest: +SKIP
    """
    try:
        import napari
    except ImportError:
        raise LazyregError("view_in_napari needs napari: pip install 'napari[all]'") from None
    layers = napari_layers(*images, **kwargs)
    viewer = napari.Viewer() if viewer is None else viewer
    for data, meta, kind in layers:
        getattr(viewer, f"add_{kind}")(data, **meta)
    return viewer
