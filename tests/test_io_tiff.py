"""TIFF: ImageJ and OME-TIFF calibration, lazy reads through tifffile's zarr store, errors, pickling."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import tifffile

import lazyreg
from lazyreg import LazyregError, open_image
from lazyreg.io.source import find_source
from lazyreg.io.tiff import TiffSource
from lazyreg.testing import count_tasks


def _volume(shape=(7, 20, 24), dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 60000, shape).astype(dtype)


def _imagej(path, values, spacing=(2.0, 0.25, 0.5), unit="um"):
    tifffile.imwrite(
        path,
        values,
        imagej=True,
        resolution=(1 / spacing[2], 1 / spacing[1]),  # (x, y) in pixels per unit
        metadata={"spacing": spacing[0], "unit": unit, "axes": "ZYX"},
    )


def test_imagej_round_trip(tmp_path):
    values = _volume()
    _imagej(tmp_path / "a.tif", values, spacing=(2.0, 0.25, 0.5))
    img = open_image(tmp_path / "a.tif")
    assert img.shape == values.shape and img.dtype == np.uint16 and img.name == "a"
    np.testing.assert_array_equal(img.values, values)
    assert lazyreg.spacing(img) == (2.0, 0.25, 0.5)
    assert lazyreg.origin(img) == (0.0, 0.0, 0.0)
    assert img.attrs["units"] == "micrometer"
    np.testing.assert_array_equal(img[2:5, 3:17:3, -4:].values, values[2:5, 3:17:3, -4:])
    assert isinstance(find_source(img)[0], TiffSource)


def test_imagej_float_stack_with_micron_sign_unit(tmp_path):
    values = _volume(dtype=np.float32)
    _imagej(tmp_path / "f.tif", values, spacing=(1.5, 0.75, 0.75), unit="\\u00B5m")
    img = open_image(tmp_path / "f.tif")
    assert lazyreg.spacing(img) == (1.5, 0.75, 0.75) and img.attrs["units"] == "micrometer"
    np.testing.assert_array_equal(img.values, values)


def test_ome_tiff_round_trip(tmp_path):
    values = _volume((5, 9, 11), dtype=np.int16)
    tifffile.imwrite(
        tmp_path / "b.ome.tif",
        values,
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.4, "PhysicalSizeX": 0.3,
                  "PhysicalSizeXUnit": "nm", "PhysicalSizeYUnit": "nm", "PhysicalSizeZUnit": "nm"},
    )
    img = open_image(tmp_path / "b.ome.tif")
    assert img.name == "b"
    np.testing.assert_array_equal(img.values, values)
    assert lazyreg.spacing(img) == (3.0, 0.4, 0.3) and img.attrs["units"] == "nanometer"


def test_tiled_compressed_tiff_reads_regions(tmp_path):
    values = _volume((4, 40, 50))
    tifffile.imwrite(tmp_path / "t.tif", values, tile=(16, 16), compression="zlib", photometric="minisblack")
    img = open_image(tmp_path / "t.tif", spacing=(1, 2, 3))
    np.testing.assert_array_equal(img.values, values)
    np.testing.assert_array_equal(img[1:3, 17:33, 5:40].values, values[1:3, 17:33, 5:40])
    assert lazyreg.spacing(img) == (1.0, 2.0, 3.0)


def test_uncalibrated_tiff_needs_spacing(tmp_path):
    values = _volume((3, 8, 9))
    tifffile.imwrite(tmp_path / "plain.tiff", values, photometric="minisblack")
    with pytest.raises(LazyregError, match=r"path: voxel spacing is unknown for .*plain.tiff .*pass spacing=\(z, y, x\)"):
        open_image(tmp_path / "plain.tiff")
    img = open_image(tmp_path / "plain.tiff", spacing=(4, 1, 1))
    assert lazyreg.spacing(img) == (4.0, 1.0, 1.0)
    np.testing.assert_array_equal(img.values, values)


def test_spacing_argument_overrides_calibration(tmp_path):
    _imagej(tmp_path / "a.tif", _volume((3, 4, 5)))
    assert lazyreg.spacing(open_image(tmp_path / "a.tif", spacing=7)) == (7.0, 7.0, 7.0)


def test_single_plane_is_one_z_slice(tmp_path):
    values = _volume((1, 12, 13))[0]
    tifffile.imwrite(tmp_path / "p.tif", values)
    img = open_image(tmp_path / "p.tif", spacing=1.0)
    assert img.shape == (1, 12, 13)
    np.testing.assert_array_equal(img.values[0], values)
    np.testing.assert_array_equal(img[0, 2:5, 3].values, values[2:5, 3])


def test_channels_and_rgb_are_refused(tmp_path):
    tifffile.imwrite(tmp_path / "rgb.tif", _volume((8, 9, 3), dtype=np.uint8), photometric="rgb")
    with pytest.raises(LazyregError, match="axes 'YXS'"):
        open_image(tmp_path / "rgb.tif", spacing=1.0)
    tifffile.imwrite(tmp_path / "c.tif", _volume((4, 2, 8, 9)), imagej=True, metadata={"axes": "ZCYX"})
    with pytest.raises(LazyregError, match="axes 'ZCYX'"):
        open_image(tmp_path / "c.tif", spacing=1.0)


def test_group_and_level_are_refused(tmp_path):
    _imagej(tmp_path / "a.tif", _volume((3, 4, 5)))
    with pytest.raises(LazyregError, match="group: TIFF files have no groups"):
        open_image(tmp_path / "a.tif", group="0")
    with pytest.raises(LazyregError, match="level: TIFF"):
        open_image(tmp_path / "a.tif", level=1)
    assert open_image(tmp_path / "a.tif", level=0).shape == (3, 4, 5)


def test_open_is_lazy_and_pages_are_grouped_into_chunks(tmp_path, monkeypatch):
    values = _volume((40, 32, 32))
    _imagej(tmp_path / "a.tif", values)
    reads = []
    original = TiffSource.read
    monkeypatch.setattr(TiffSource, "read", lambda self, index: reads.append(index) or original(self, index))
    with count_tasks() as counter:
        img = open_image(tmp_path / "a.tif")
        lazy = (img[::2] + 1).sum("z")
    assert counter.n == 0 and reads == [] and lazy.shape == (32, 32)
    assert img.data.chunksize == (40, 32, 32)  # whole planes, grouped (all 40 fit in 32 MiB)
    small = open_image(tmp_path / "a.tif", chunks=(5, 32, 32))
    np.testing.assert_array_equal(small[11].values, values[11])
    assert reads == [(slice(10, 15), slice(0, 32), slice(0, 32))]


def test_pickled_source_reads_after_unpickling(tmp_path):
    values = _volume((6, 10, 12))
    _imagej(tmp_path / "a.tif", values)
    src = find_source(open_image(tmp_path / "a.tif"))[0]
    src.read((slice(0, 1), slice(0, 1), slice(0, 1)))  # the store is open in this process ...
    blob = pickle.dumps(src)  # ... but is not pickled
    assert len(blob) < 2000
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.read((slice(2, 5), slice(1, 9), slice(0, 12))), values[2:5, 1:9])
    assert copy.grid == src.grid and copy.token() == src.token()
