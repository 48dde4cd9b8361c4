"""open_image across formats: dispatch, errors, laziness, pickling and dask.distributed."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts
import tifffile
import zarr

import lazyreg
from lazyreg import LazyregError, open_image, to_zarr
from lazyreg.io.source import Source, find_source
from lazyreg.testing import count_tasks


VALUES = np.random.default_rng(7).integers(0, 1000, (10, 12, 14)).astype(np.uint16)
SPACING = (3.0, 0.5, 0.25)


def _make(fmt: str, folder: Path) -> tuple[Path, dict]:
    """The same volume in ``fmt``, with spacing SPACING; returns the path and open_image kwargs."""
    if fmt == "ome-zarr":
        return to_zarr(lazyreg.image(VALUES, SPACING, origin=(1, 2, 3)), folder / "v.ome.zarr", chunks=(5, 6, 7)), {}
    if fmt == "zarr-v2":
        zarr.create_array(str(folder / "v2.zarr"), data=VALUES, chunks=(5, 6, 7), zarr_format=2)
        return folder / "v2.zarr", {"spacing": SPACING}
    if fmt == "n5":
        ds = (folder / "v.n5" / "d").resolve()
        spec = {
            "driver": "n5",
            "kvstore": {"driver": "file", "path": str(ds)},
            "metadata": {"dimensions": [14, 12, 10], "blockSize": [7, 6, 5], "dataType": "uint16",
                         "compression": {"type": "gzip"}},
        }
        ts.open(spec, create=True).result().T.write(VALUES).result()
        (folder / "v.n5" / "attributes.json").write_text(json.dumps({"n5": "2.0.0", "pixelResolution": SPACING[::-1]}))
        return folder / "v.n5", {"group": "d"}
    if fmt == "tiff":
        tifffile.imwrite(
            folder / "v.tif", VALUES, imagej=True, resolution=(1 / SPACING[2], 1 / SPACING[1]),
            metadata={"spacing": SPACING[0], "unit": "um", "axes": "ZYX"},
        )
        return folder / "v.tif", {}
    raise AssertionError(fmt)


FORMATS = ["ome-zarr", "zarr-v2", "n5", "tiff"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_opens_lazily_with_exact_values_and_spacing(tmp_path, fmt, monkeypatch):
    path, kw = _make(fmt, tmp_path)
    reads = []
    original = Source.__getitem__
    monkeypatch.setattr(Source, "__getitem__", lambda self, index: reads.append(index) or original(self, index))
    with count_tasks() as counter:
        img = open_image(path, **kw)
        derived = (img[1:, ::2] * 2).mean(("y", "x"))
        assert derived.shape == (9,)
    assert counter.n == 0 and reads == []  # nothing computed or read at open / while wrapping
    assert img.dims == ("z", "y", "x") and img.dtype == np.uint16
    assert lazyreg.spacing(img) == SPACING
    assert find_source(img) is not None
    np.testing.assert_array_equal(img.values, VALUES)
    assert len(reads) == len(img.data.to_delayed().ravel())  # one read per chunk


@pytest.mark.parametrize("fmt", FORMATS)
def test_pickled_sources_read_the_same_data(tmp_path, fmt):
    path, kw = _make(fmt, tmp_path)
    src = find_source(open_image(path, **kw))[0]
    copy = pickle.loads(pickle.dumps(src))
    region = (slice(2, 7), slice(0, 12), slice(3, 9))
    np.testing.assert_array_equal(copy.read(region), VALUES[region])
    assert copy.token() == src.token() and copy.grid == src.grid and copy.chunks == src.chunks


def test_chunks_argument_and_native_chunks(tmp_path):
    path, kw = _make("n5", tmp_path)
    assert open_image(path, **kw).data.chunksize == (5, 6, 7)  # N5 blocks (7, 6, 5) in zyx
    img = open_image(path, chunks=(10, 4, 14), **kw)
    assert img.data.chunks == ((10,), (4, 4, 4), (14,))
    np.testing.assert_array_equal(img.values, VALUES)


def test_open_then_write_then_open(tmp_path):
    n5_path, kw = _make("n5", tmp_path)
    img = open_image(n5_path, **kw)
    out = to_zarr(img[2:, 1:], tmp_path / "copy.ome.zarr")
    back = open_image(out)
    np.testing.assert_array_equal(back.values, VALUES[2:, 1:])
    assert lazyreg.origin(back) == (6.0, 0.5, 0.0) and lazyreg.spacing(back) == SPACING
    assert back.data.chunksize == (5, 6, 7)


def test_missing_path(tmp_path):
    with pytest.raises(LazyregError, match=r"path: .*nothing.zarr does not exist"):
        open_image(tmp_path / "nothing.zarr")


def test_unknown_formats_say_what_was_found(tmp_path):
    (tmp_path / "pic.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")
    with pytest.raises(LazyregError, match=r"not a format lazyreg reads .*suffix '.png' starting with bytes"):
        open_image(tmp_path / "pic.png")
    (tmp_path / "fake.tif").write_text("not a tiff")
    with pytest.raises(LazyregError, match=r"not a format lazyreg reads .*suffix '.tif'"):
        open_image(tmp_path / "fake.tif")
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "notes.txt").write_text("x")
    with pytest.raises(LazyregError, match=r"folder without zarr or N5 metadata \(entries: \['notes.txt'\]\)"):
        open_image(folder)


def test_bad_arguments(tmp_path):
    path, kw = _make("ome-zarr", tmp_path)
    with pytest.raises(LazyregError, match="level: expected a non-negative integer"):
        open_image(path, level=-1)
    with pytest.raises(LazyregError, match="level: expected a non-negative integer"):
        open_image(path, level="0")
    with pytest.raises(LazyregError, match="group: expected a str"):
        open_image(path, group=0)
    with pytest.raises(LazyregError, match="spacing: voxel spacing must be positive"):
        open_image(path, spacing=(1, 0, 1))
    with pytest.raises(LazyregError, match="path: expected a str or path"):
        open_image(42)
    with pytest.raises(LazyregError, match=r"level: expected an index into the 1 levels \['0'\]"):
        open_image(path, level=3)


def test_missing_group_lists_what_exists(tmp_path):
    path, _ = _make("n5", tmp_path)
    with pytest.raises(LazyregError, match=r"group: 'e' is not in the N5 container .*\['d'\]"):
        open_image(path, group="e")


def test_name_defaults_to_the_file_name(tmp_path):
    path, kw = _make("ome-zarr", tmp_path)
    assert open_image(path).name == "v"
    assert open_image(path, name="fixed").name == "fixed"


@pytest.mark.slow
def test_distributed_workers_read_and_write_zarr_n5_and_tiff(tmp_path, local_cluster):
    from distributed import Client

    opened = [open_image(p, **kw) for p, kw in (_make(f, tmp_path) for f in FORMATS)]
    with Client(local_cluster):
        means = [float(img.mean().compute()) for img in opened]
        window = float(opened[2][3:8, 2:9, 1:13].astype("float64").sum().compute())
        out = to_zarr(opened[2][1:] + 1, tmp_path / "from_worker.ome.zarr")  # N5 -> OME-Zarr on the workers
    assert means == pytest.approx([float(VALUES.mean())] * len(FORMATS), rel=1e-12)
    assert window == float(VALUES[3:8, 2:9, 1:13].astype("float64").sum())
    back = open_image(out)
    np.testing.assert_array_equal(back.values, VALUES[1:] + 1)
    assert lazyreg.origin(back) == (3.0, 0.0, 0.0)
