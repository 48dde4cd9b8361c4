"""Channels and time points of images on disk: (t, c, z, y, x) images read and written.

Microscopes and converters (bioformats2raw, ngff-zarr, napari) write OME-Zarr images with time and
channel axes. :func:`lead_axes` finds them in a level's axes (channel names from the OME ``omero``
metadata, time coordinates from the axis scale and unit); :func:`stack_image` opens them as one
lazy DataArray with dims ``(t, c, z, y, x)`` (those of size > 1), or selects one channel / time
point, each 3D image read from its own :class:`lazyreg.io.source.Source`, so that a task reads
only the chunks of its channel. :func:`write_layout` gives :func:`lazyreg.to_zarr` the axes,
transforms and ``omero`` channel metadata of such an image.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import dask.array as da
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import DIMS, grid_of, validate_image
from .source import from_source

__all__ = ["LEAD_DIMS", "LeadAxis", "lead_axes", "channel_labels", "stack_image", "write_layout", "per_channel_chunks"]

#: Non-spatial dims lazyreg keeps, in this order before z, y, x.
LEAD_DIMS = ("t", "c")
#: Colours of the channels written in ``omero`` metadata (cycled).
_COLORS = ("00FF00", "FF00FF", "00FFFF", "FFFF00", "FF0000", "0000FF", "FFFFFF")


class LeadAxis(NamedTuple):
    """A non-spatial axis of size > 1: ``dim`` ("t" or "c"), its ``size``, ``coords`` and coordinate ``attrs``.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.io.channels import LeadAxis
    >>> LeadAxis("c", 2, np.array(["dapi", "gfp"]), {}).dim
    'c'
    """

    dim: str
    size: int
    coords: np.ndarray
    attrs: dict


def _kind(axis: dict) -> str | None:
    """"t" or "c" for an OME-Zarr time / channel axis (by type, else by name), else None."""
    kind = str(axis.get("type") or "").lower()
    name = str(axis.get("name", "")).lower()
    if kind == "time" or (not kind and name == "t"):
        return "t"
    if kind == "channel" or (not kind and name == "c"):
        return "c"
    return None


def channel_labels(attrs: dict, n: int) -> list[str] | None:
    """The channel names of OME ``omero.channels[].label`` (0.5 under ``"ome"``), if there are ``n`` distinct ones.

    Examples
    --------
    >>> from lazyreg.io.channels import channel_labels
    >>> channel_labels({"omero": {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}}, 2)
    ['DAPI', 'GFP']
    >>> channel_labels({"omero": {"channels": [{"label": "DAPI"}]}}, 2) is None
    True
    """
    ome = attrs.get("ome")
    omero = ome.get("omero") if isinstance(ome, dict) and "omero" in ome else attrs.get("omero")
    channels = omero.get("channels") if isinstance(omero, dict) else None
    if not isinstance(channels, list) or len(channels) != n:
        return None
    labels = [c.get("label") if isinstance(c, dict) else None for c in channels]
    if not all(isinstance(s, str) and s for s in labels) or len(set(labels)) != n:
        return None
    return labels


def lead_axes(
    axes: Sequence[dict], shape: Sequence[int], scale: Sequence[float], shift: Sequence[float], attrs: dict, where: str
) -> tuple[tuple[str | None, ...], list[LeadAxis]]:
    """The layout of a level's stored axes, and its time / channel axes of size > 1 (t first).

    ``layout`` names each stored axis ``"z"``, ``"y"``, ``"x"``, ``"t"`` or ``"c"`` (size > 1), or
    None (size 1, dropped), as :class:`lazyreg.io.zarr_source.ZarrSource` takes it. Channel
    coordinates are the ``omero`` labels when there are as many distinct ones, else 0..n-1;
    time coordinates are ``translation + scale * index`` with the axis unit as ``attrs["units"]``.

    Raises
    ------
    LazyregError
        A non-spatial axis of size > 1 that is neither time nor channel, or two of a kind.

    Examples
    --------
    >>> from lazyreg.io.channels import lead_axes
    >>> axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}] + [
    ...     {"name": d, "type": "space"} for d in "zyx"]
    >>> layout, lead = lead_axes(axes, (3, 2, 4, 4, 4), (2.0, 1, 1, 1, 1), (10.0, 0, 0, 0, 0),
    ...                          {"omero": {"channels": [{"label": "DAPI"}, {"label": "GFP"}]}}, "img")
    >>> layout, [(a.dim, a.coords.tolist(), a.attrs) for a in lead]
    (('t', 'c', 'z', 'y', 'x'), [('t', [10.0, 12.0, 14.0], {'units': 'second'}), ('c', ['DAPI', 'GFP'], {})])
    """
    names = [str(a.get("name", "")).lower() for a in axes]
    layout: list[str | None] = []
    found: dict[str, LeadAxis] = {}
    for i, (a, name, n) in enumerate(zip(axes, names, shape)):
        if name in DIMS:
            layout.append(name)
            continue
        kind = _kind(a)
        if n == 1:
            layout.append(None)
            continue
        if kind is None or kind in found:
            extra = [(m, s) for m, s in zip(names, shape) if m not in DIMS and s != 1]
            why = f"two {kind} axes" if kind else f"axis '{name}' is neither time nor channel"
            raise LazyregError(
                f"path: {where} has non-spatial axes of size > 1 {extra} ({why}); lazyreg reads (t, c, z, y, x) "
                "images: store other axes as separate images"
            )
        if kind == "c":
            labels = channel_labels(attrs, int(n))
            coords = np.array(labels) if labels else np.arange(int(n))
            found["c"] = LeadAxis("c", int(n), coords, {})
        else:
            unit = a.get("unit")
            found["t"] = LeadAxis("t", int(n), float(shift[i]) + float(scale[i]) * np.arange(int(n)), {"units": unit} if unit else {})
        layout.append(kind)
    return tuple(layout), [found[d] for d in LEAD_DIMS if d in found]


def _index(axis: LeadAxis | None, value: Any, argname: str, where: str) -> int:
    """The index along ``axis`` that ``value`` (a name / coordinate, or an index) selects."""
    what = "channel" if argname == "channel" else "time point"
    if axis is None:  # no such axis of size > 1: the one channel / time point is 0
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value == 0:
            return 0
        raise LazyregError(f"{argname}: {where} has a single {what} (no '{argname[0]}' axis of size > 1); pass {argname}=None or 0, got {value!r}")
    names = axis.coords.tolist()
    if isinstance(value, str) and axis.dim == "c":
        if value in names:
            return names.index(value)
        raise LazyregError(f"{argname}: {where} has no channel named {value!r}; its channels are {names} (or pass an index 0..{axis.size - 1})")
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        kind = "a channel name or index" if argname == "channel" else "an index"
        raise LazyregError(f"{argname}: expected {kind}, got {type(value).__name__} {value!r}")
    if not -axis.size <= value < axis.size:
        raise LazyregError(f"{argname}: index {value} is out of range for the {axis.size} {what}s {names} of {where}")
    return int(value) % axis.size


def stack_image(
    source: Any, lead: Sequence[LeadAxis], *, channel: Any = None, time: Any = None, chunks: Any = None,
    name: str | None = None, units: str = "micrometer", where: str = "the image",
) -> xr.DataArray:
    """The lazy image of a source with time / channel axes: dims ``(t, c, z, y, x)`` (those kept).

    ``source.select({dim: index})`` must return the 3D source of one channel / time point (e.g.
    :meth:`lazyreg.io.zarr_source.ZarrSource.select`). ``channel`` (a name or an index) and ``time``
    (an index) select one, dropping that dim (its value goes to ``attrs["channel"]`` /
    ``attrs["time"]``): the result is then a plain store-backed 3D image. Each 3D image of the
    stack is read from its own source, so a task reading one channel reads only its chunks.

    Raises
    ------
    LazyregError
        An unknown channel name (the valid ones listed), an index out of range.

    Examples
    --------
    >>> import tempfile, numpy as np, lazyreg
    >>> values = np.arange(2 * 2 * 3 * 4, dtype="uint8").reshape(2, 2, 3, 4)
    >>> xa = lazyreg.image(values[0], 1.0).expand_dims(c=["dapi", "gfp"]).copy(data=values)
    >>> with tempfile.TemporaryDirectory() as d:
    ...     p = lazyreg.to_zarr(xa, d + "/two.ome.zarr")
    ...     both, gfp = lazyreg.open_image(p), lazyreg.open_image(p, channel="gfp")
    ...     both.dims, both.c.values.tolist(), gfp.dims, int(gfp[0, 0, 0])
    (('c', 'z', 'y', 'x'), ['dapi', 'gfp'], ('z', 'y', 'x'), 24)
    """
    axes = {a.dim: a for a in lead}
    fixed: dict[str, int] = {}
    attrs: dict[str, Any] = {}
    for argname, dim, value in (("time", "t", time), ("channel", "c", channel)):
        if value is not None:
            i = _index(axes.get(dim), value, argname, where)
            if dim in axes:
                fixed[dim] = i
                attrs[argname] = axes[dim].coords[i].item()
    rest = [a for a in lead if a.dim not in fixed]
    base = source.select({**fixed, **{a.dim: 0 for a in rest}}) if lead else source
    first = from_source(base, chunks=chunks, name=name, units=units, attrs=attrs)
    if not rest:
        return first

    def nest(done: tuple[int, ...]) -> da.Array:  # one from_source array per channel / time point
        if len(done) == len(rest):
            return from_source(source.select({**fixed, **{a.dim: i for a, i in zip(rest, done)}}), chunks=chunks).data
        return da.stack([nest(done + (i,)) for i in range(rest[len(done)].size)])

    arr = nest(())
    coords = {a.dim: xr.Variable(a.dim, a.coords, attrs=a.attrs) for a in rest}
    coords.update({d: first.coords[d] for d in DIMS})
    return xr.DataArray(arr, dims=tuple(a.dim for a in rest) + DIMS, coords=coords, name=name, attrs=dict(first.attrs))


def write_layout(img: Any, argname: str = "img") -> dict:
    """Axes, scale, translation, units and ``omero`` metadata to write an image with time / channel dims.

    ``img`` has dims ``(z, y, x)``, ``(c, z, y, x)``, ``(t, z, y, x)`` or ``(t, c, z, y, x)``. The
    channel axis gets scale 1 and ``omero`` channels (names from the ``c`` coordinate when it is not
    just 0..n-1, so that napari and Fiji show them); the time axis its coordinate's step and first
    value (else 1 and 0) and its ``attrs["units"]``.

    Raises
    ------
    LazyregError
        Other dims, or a 3D part that is not a valid image.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.io.channels import write_layout
    >>> img = lazyreg.image(np.zeros((2, 3, 4)), 2.0).expand_dims(c=["dapi", "gfp"])
    >>> lay = write_layout(img)
    >>> lay["axes"], lay["scale"], [c["label"] for c in lay["omero"]["channels"]]
    (('c', 'z', 'y', 'x'), [1.0, 2.0, 2.0, 2.0], ['dapi', 'gfp'])
    """
    if not isinstance(img, xr.DataArray) or img.ndim <= 3:
        validate_image(img, argname)
        g = grid_of(img, argname)
        return {"axes": DIMS, "scale": list(g.spacing), "translation": list(g.origin), "units": img.attrs.get("units", "micrometer"), "omero": None}
    lead = tuple(img.dims[:-3])
    if tuple(img.dims[-3:]) != DIMS or lead not in (("c",), ("t",), ("t", "c")):
        raise LazyregError(f"{argname}: dims are {img.dims}; lazyreg writes (z, y, x), (c, z, y, x), (t, z, y, x) or (t, c, z, y, x) images")
    one = img.isel({d: 0 for d in lead}, drop=True)
    validate_image(one, argname)
    g = grid_of(one, argname)
    t_scale, t_shift = 1.0, 0.0
    if "t" in lead and "t" in img.coords and np.issubdtype(img.t.dtype, np.number):
        t = np.asarray(img.t.values, dtype=float)
        t_shift = float(t[0])
        steps = np.diff(t)
        if t.size >= 2 and steps[0] > 0 and np.allclose(steps, steps[0], rtol=1e-6):
            t_scale = float(steps[0])
    space_unit = img.attrs.get("units", "micrometer")
    t_unit = img.t.attrs.get("units") if "t" in img.coords else None
    omero = None
    if "c" in lead:
        n = img.sizes["c"]
        values = img.c.values.tolist() if "c" in img.coords else list(range(n))
        named = values != list(range(n))
        lo, hi = (float(np.iinfo(img.dtype).min), float(np.iinfo(img.dtype).max)) if np.issubdtype(img.dtype, np.integer) else (0.0, 1.0)
        omero = {"channels": [
            {**({"label": str(v)} if named else {}), "color": _COLORS[i % len(_COLORS)] if n > 1 else "FFFFFF",
             "active": True, "window": {"min": lo, "max": hi, "start": lo, "end": hi}} for i, v in enumerate(values)]}
    per_dim = {"t": (t_scale, t_shift, t_unit), "c": (1.0, 0.0, None)}
    per_dim.update({d: (s, o, space_unit) for d, s, o in zip(DIMS, g.spacing, g.origin)})
    axes = lead + DIMS
    return {"axes": axes, "scale": [per_dim[a][0] for a in axes], "translation": [per_dim[a][1] for a in axes],
            "units": [per_dim[a][2] for a in axes], "omero": omero}


def per_channel_chunks(data: Any, chunks: Any, nlead: int) -> tuple[Any, Any]:
    """``(data, chunks)`` to write an image with ``nlead`` time / channel dims first: one channel and
    time point per chunk on disk, so that reading one channel reads only its chunks.

    ``chunks`` may be given for the spatial axes only (an int or 3 sizes), or for every axis.

    Examples
    --------
    >>> import dask.array as da
    >>> from lazyreg.io.channels import per_channel_chunks
    >>> data, chunks = per_channel_chunks(da.zeros((3, 4, 8, 8), chunks=(3, 2, 8, 8)), None, 1)
    >>> data.chunksize, chunks
    ((1, 2, 8, 8), None)
    >>> per_channel_chunks(data, (2, 4, 4), 1)[1]
    (1, 2, 4, 4)
    """
    if chunks is not None:
        spatial = (chunks,) * 3 if isinstance(chunks, (int, np.integer, str)) else tuple(chunks)
        return data, ((1,) * nlead + spatial) if len(spatial) == 3 else spatial
    if not isinstance(data, da.Array):
        values = np.asarray(data)
        space = da.core.normalize_chunks("auto", values.shape[nlead:], dtype=values.dtype, limit=16 * 2**20)
        return da.from_array(values, chunks=(1,) * nlead + tuple(c[0] for c in space), name=False), None
    return data.rechunk({i: 1 for i in range(nlead)}), None
