"""Channels and time points on disk (issue 15): (t, c, z, y, x) OME-Zarr images read, selected, resampled and written."""

from __future__ import annotations

import json
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
import zarr
from ome_zarr_models import v04, v05
from ome_zarr_models.common.omero import Omero

import lazyreg
from lazyreg import LazyregError, open_image, to_zarr
from lazyreg.io.source import find_source
from lazyreg.io.zarr_source import ZarrSource

LABELS = ["DAPI", "GFP", "RFP"]


def _values(shape=(2, 3, 6, 10, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(np.uint16)


def _converter_store(path: Path, values: np.ndarray) -> Path:
    """An OME-Zarr 0.4 image as bioformats2raw writes it: zarr v2, (t, c, z, y, x), one chunk per
    channel and time point, two levels, channel names in ``omero``, time in seconds."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    levels = [values, values[:, :, :, ::2, ::2]]
    datasets = []
    for i, a in enumerate(levels):
        root.create_array(str(i), data=a, chunks=(1, 1, 3, 5, 6), chunk_key_encoding={"name": "v2", "separator": "/"})
        datasets.append({"path": str(i), "coordinateTransformations": [
            {"type": "scale", "scale": [2.5, 1.0, 3.0, 0.5 * 2**i, 0.5 * 2**i]},
            {"type": "translation", "translation": [10.0, 0.0, 1.0, 0.0, 0.0]}]})
    axes = [{"name": "t", "type": "time", "unit": "second"}, {"name": "c", "type": "channel"}] + [
        {"name": d, "type": "space", "unit": "micrometer"} for d in "zyx"]
    omero = {"id": 1, "name": "cells.czi", "version": "0.4", "rdefs": {"defaultT": 0, "model": "color"}, "channels": [
        {"label": name, "color": color, "active": True, "coefficient": 1.0, "family": "linear", "inverted": False,
         "window": {"min": 0.0, "max": 65535.0, "start": 0.0, "end": 4000.0}}
        for name, color in zip(LABELS, ["0000FF", "00FF00", "FF0000"])]}
    attrs = {"multiscales": [{"version": "0.4", "name": "cells", "axes": axes, "datasets": datasets}], "omero": omero}
    (path / ".zattrs").write_text(json.dumps(attrs))
    return path


def _stack(values: np.ndarray, c=LABELS, t=(0.0, 30.0)) -> xr.DataArray:
    """A (t, c, z, y, x) image in memory."""
    spatial = lazyreg.image(values[0, 0], spacing=(3.0, 0.5, 0.5), origin=(1.0, 0.0, 0.0))
    coords = {"t": xr.Variable("t", list(t), attrs={"units": "second"}), "c": list(c), **spatial.coords}
    return xr.DataArray(values, dims=("t", "c", "z", "y", "x"), coords=coords, attrs=dict(spatial.attrs), name="cells")


@pytest.fixture
def read_log(monkeypatch):
    """Every region read from a zarr source in this process: (layout, zyx slices)."""
    log: list = []
    original = ZarrSource._read

    def logged(self, index):
        log.append((self.layout, index))
        return original(self, index)

    monkeypatch.setattr(ZarrSource, "_read", logged)
    return log


def test_converter_store_opens_with_channel_names_and_times(tmp_path):
    values = _values()
    img = open_image(_converter_store(tmp_path / "cells.ome.zarr", values))
    assert img.dims == ("t", "c", "z", "y", "x") and img.shape == values.shape
    assert img.c.values.tolist() == LABELS
    assert img.t.values.tolist() == [10.0, 12.5] and img.t.attrs["units"] == "second"
    assert img.data.chunksize[:2] == (1, 1)
    np.testing.assert_array_equal(img.values, values)
    one = img.isel(t=1, c=2)
    assert lazyreg.spacing(one) == (3.0, 0.5, 0.5) and lazyreg.origin(one) == (1.0, 0.0, 0.0)
    low = open_image(tmp_path / "cells.ome.zarr", level=1)  # only the spatial axes are downsampled
    assert low.shape == (2, 3, 6, 5, 6) and lazyreg.spacing(low.isel(t=0, c=0)) == (3.0, 1.0, 1.0)


def test_channel_and_time_select_one_store_backed_3d_image(tmp_path, read_log):
    values = _values()
    path = _converter_store(tmp_path / "cells.ome.zarr", values)
    gfp = open_image(path, channel="GFP", time=1)
    assert gfp.dims == ("z", "y", "x") and gfp.attrs["channel"] == "GFP" and gfp.attrs["time"] == 12.5
    assert isinstance(find_source(gfp)[0], ZarrSource)  # a pure slice of the store: tasks read regions of it
    np.testing.assert_array_equal(gfp.values, values[1, 1])
    assert {layout for layout, _ in read_log} == {(1, 1, "z", "y", "x")}  # only that channel's chunks
    by_index = open_image(path, channel=-1)
    assert by_index.dims == ("t", "z", "y", "x") and by_index.attrs["channel"] == "RFP"
    np.testing.assert_array_equal(by_index.values, values[:, 2])
    at_t0 = open_image(path, time=0)
    assert at_t0.dims == ("c", "z", "y", "x") and at_t0.c.values.tolist() == LABELS


def test_unknown_channel_names_list_the_valid_ones(tmp_path):
    path = _converter_store(tmp_path / "cells.ome.zarr", _values())
    with pytest.raises(LazyregError, match=r"channel: .* has no channel named 'Cy5'; its channels are \['DAPI', 'GFP', 'RFP'\]"):
        open_image(path, channel="Cy5")
    with pytest.raises(LazyregError, match=r"channel: index 3 is out of range for the 3 channels"):
        open_image(path, channel=3)
    with pytest.raises(LazyregError, match=r"time: index 2 is out of range for the 2 time points"):
        open_image(path, time=2)
    with pytest.raises(LazyregError, match=r"time: expected an index, got str 'first'"):
        open_image(path, time="first")
    single = to_zarr(lazyreg.image(np.zeros((2, 3, 4)), 1.0), tmp_path / "one.ome.zarr")
    assert open_image(single, channel=0).dims == ("z", "y", "x")  # its one channel
    with pytest.raises(LazyregError, match=r"channel: .* has a single channel .* pass channel=None or 0, got 'GFP'"):
        open_image(single, channel="GFP")


def test_axes_other_than_time_and_channel_are_refused(tmp_path):
    root = zarr.create_group(str(tmp_path / "a.zarr"), zarr_format=3)
    root.create_array("0", data=np.zeros((2, 3, 4, 5), "u1"))
    axes = [{"name": "angle", "type": "angle"}] + [{"name": d, "type": "space"} for d in "zyx"]
    ms = {"axes": axes, "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0] * 4}]}]}
    root.attrs.put({"ome": {"version": "0.5", "multiscales": [ms]}})
    with pytest.raises(LazyregError, match=r"non-spatial axes of size > 1 \[\('angle', 2\)\] \(axis 'angle' is neither time nor channel\)"):
        open_image(tmp_path / "a.zarr")


def _validate(path: Path, version: str):
    """The multiscale (validated by ome-zarr-models) and the ``omero`` dict (validated by its Omero model)."""
    group = zarr.open_group(str(path), mode="r", zarr_format=2 if version == "0.4" else 3)
    model = (v04 if version == "0.4" else v05).Image.from_zarr(group)
    attrs = model.attributes if version == "0.4" else model.attributes.ome
    omero = dict(group.attrs)["omero"] if version == "0.4" else dict(group.attrs)["ome"]["omero"]
    Omero.model_validate(omero)  # colours and windows as the spec wants them (0.5 models leave omero unchecked)
    return attrs.multiscales[0], omero


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_to_zarr_writes_time_and_channels_that_round_trip(tmp_path, version):
    values = _values()
    img = _stack(values)
    path = to_zarr(img.chunk({"z": 3}), tmp_path / "out.ome.zarr", format=version, levels=2)
    ms, omero = _validate(path, version)  # valid OME-Zarr, pyramid and omero included
    assert [(a.name, a.type) for a in ms.axes] == [("t", "time"), ("c", "channel"), ("z", "space"), ("y", "space"), ("x", "space")]
    assert ms.axes[0].unit == "second" and ms.axes[1].unit is None
    scales = [d.coordinateTransformations[0].scale for d in ms.datasets]
    assert scales == [[30.0, 1.0, 3.0, 0.5, 0.5], [30.0, 1.0, 3.0, 1.0, 1.0]]  # levels halve space only
    assert [c["label"] for c in omero["channels"]] == LABELS
    assert zarr.open_array(str(path / "0"), mode="r").chunks[:2] == (1, 1)  # a chunk per channel and time point
    back = open_image(path)
    assert back.dims == img.dims
    np.testing.assert_array_equal(back.values, values)
    for d in img.dims:
        np.testing.assert_array_equal(back[d].values, img[d].values)
    assert back.t.attrs["units"] == "second" and back.attrs["units"] == "micrometer"
    assert open_image(path, level=1).shape == (2, 3, 6, 5, 6)
    unnamed = to_zarr(img.isel(t=0).drop_vars("c"), tmp_path / "unnamed.ome.zarr", format=version)
    again = open_image(unnamed)  # no names: no labels written, indices read back
    assert again.dims == ("c", "z", "y", "x") and again.c.values.tolist() == [0, 1, 2]
    assert [c.get("label") for c in _validate(unnamed, version)[1]["channels"]] == [None] * 3
    np.testing.assert_array_equal(again.values, values[0])


def test_to_zarr_refuses_other_dims(tmp_path):
    img = _stack(_values())
    with pytest.raises(LazyregError, match=r"img: dims are \('c', 't', 'z', 'y', 'x'\); lazyreg writes .*\(t, c, z, y, x\)"):
        to_zarr(img.transpose("c", "t", "z", "y", "x"), tmp_path / "a.ome.zarr")
    with pytest.raises(LazyregError, match=r"img: dims are \('q', 'z', 'y', 'x'\)"):
        to_zarr(img.isel(t=0).rename(c="q"), tmp_path / "a.ome.zarr")
    assert not (tmp_path / "a.ome.zarr").exists()


def test_apply_transform_of_a_multichannel_store_reads_only_each_channels_chunks(tmp_path, read_log):
    values = _values((1, 3, 8, 16, 16))
    path = to_zarr(_stack(values, t=(0.0,)).isel(t=0).chunk({"z": 4, "y": 8, "x": 8}), tmp_path / "m.ome.zarr")
    moving = open_image(path)
    fixed = moving.isel(c=0)
    A = [lazyreg.Affine.from_translation((1.0, 0.5, -0.5))]
    out = lazyreg.apply_transform(fixed, moving, A, chunks=(4, 8, 8))
    assert out.dims == ("c", "z", "y", "x") and out.c.values.tolist() == LABELS
    with dask.config.set(scheduler="sync"):
        out.sel(c="GFP").data.blocks[0, 0, 0].compute()  # one output task of one channel
    assert read_log and {layout for layout, _ in read_log} == {(1, "z", "y", "x")}
    read_log.clear()
    with dask.config.set(scheduler="threads"):
        result = out.values
    per_channel = {c: sum(np.prod([s.stop - s.start for s in box]) for layout, box in read_log if layout[0] == c) for c in range(3)}
    assert all(0 < n <= values[0, 0].size for n in per_channel.values())  # each chunk read about once, no other channel
    for c in range(3):
        one = lazyreg.image(values[0, c], spacing=(3.0, 0.5, 0.5), origin=(1.0, 0.0, 0.0))
        np.testing.assert_array_equal(result[c], lazyreg.apply_transform(fixed, one, A).values)
    back = open_image(to_zarr(out, tmp_path / "aligned.ome.zarr"))
    assert back.c.values.tolist() == LABELS
    np.testing.assert_array_equal(back.values, result)


def test_align_names_the_dims_of_a_multichannel_image(tmp_path):
    path = to_zarr(_stack(_values((1, 3, 6, 10, 12)), t=(0.0,)).isel(t=0), tmp_path / "m.ome.zarr")
    moving = open_image(path)
    with pytest.raises(LazyregError, match=r"moving: expected 3 dims .*\('c', 'z', 'y', 'x'\).*moving\.sel\(c='DAPI'\)"):
        lazyreg.align(moving.isel(c=0), moving, "affine")


def test_tiff_hyperstack_error_names_channel_and_how_to_read_it(tmp_path):
    import tifffile

    path = tmp_path / "hyper.tif"
    tifffile.imwrite(path, np.zeros((2, 3, 4, 5), "uint8"), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(LazyregError, match=r"axes 'ZCYX'.*channel= and time= select channels .* of OME-Zarr images: convert it"):
        open_image(path, spacing=1.0, channel=1)
