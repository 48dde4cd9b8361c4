"""zarr / OME-Zarr: reading 0.4 and 0.5 images and plain arrays, and the streaming 0.5 writer."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from dask.delayed import Delayed

import lazyreg
import lazyreg.io.omezarr
import lazyreg.io.zarr_read
from lazyreg import LazyregError, open_image, to_zarr
from lazyreg.io.omezarr import write_ome_zarr
from lazyreg.io.source import find_source
from lazyreg.io.zarr_read import ZarrSource, read_ome_zarr
from lazyreg.testing import count_tasks, counting_image


def _volume(shape=(12, 20, 30), dtype=np.float32, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random(shape) * 1000).astype(dtype)


def _snapshot(path: Path) -> dict:
    """Every file below ``path`` with its bytes, to prove a store was left untouched."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def _write_ome_04(path: Path, levels: list[np.ndarray], scales, translations, *, ms_transforms=None, axes=None):
    """A hand-written OME-Zarr 0.4 image (zarr v2 arrays, ``.zattrs`` multiscales)."""
    root = zarr.open_group(str(path), mode="w", zarr_format=2)
    datasets = []
    for i, (a, s, t) in enumerate(zip(levels, scales, translations)):
        root.create_array(str(i), data=a, chunks=(4, 8, 8)[-a.ndim :] if a.ndim == 3 else a.shape)
        datasets.append(
            {
                "path": str(i),
                "coordinateTransformations": [{"type": "scale", "scale": s}, {"type": "translation", "translation": t}],
            }
        )
    ms = {
        "version": "0.4",
        "axes": axes
        or [{"name": n, "type": "space", "unit": "micrometer"} for n in ("z", "y", "x")],
        "datasets": datasets,
    }
    if ms_transforms:
        ms["coordinateTransformations"] = ms_transforms
    (path / ".zattrs").write_text(json.dumps({"multiscales": [ms]}))


def _write_ome_05(path: Path, a: np.ndarray, axes: list[dict], scale, translation):
    """A hand-written OME-Zarr 0.5 image (zarr v3, ``{"ome": {...}}`` attributes)."""
    root = zarr.create_group(str(path), zarr_format=3)
    root.create_array("s0", data=a, chunks=a.shape)
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"] = {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "axes": axes,
                    "datasets": [
                        {
                            "path": "s0",
                            "coordinateTransformations": [
                                {"type": "scale", "scale": scale},
                                {"type": "translation", "translation": translation},
                            ],
                        }
                    ],
                }
            ],
        }
    }
    (path / "zarr.json").write_text(json.dumps(meta))


# ------------------------------------------------------------------------------------------ writing


def test_to_zarr_round_trip_is_exact_and_metadata_is_ome_05(tmp_path):
    values = _volume()
    img = lazyreg.image(values, spacing=(2.5, 0.3, 0.7), origin=(-4.0, 10.25, 3.5), name="vol", units="nanometer")
    out = to_zarr(img, tmp_path / "a.ome.zarr")
    assert out == (tmp_path / "a.ome.zarr").resolve()
    back = open_image(out)
    np.testing.assert_array_equal(back.values, values)
    assert back.dtype == values.dtype
    assert lazyreg.spacing(back) == (2.5, 0.3, 0.7)
    assert lazyreg.origin(back) == (-4.0, 10.25, 3.5)
    assert back.attrs["units"] == "nanometer"
    group = json.loads((out / "zarr.json").read_text())
    assert group["zarr_format"] == 3 and group["node_type"] == "group"
    ome = group["attributes"]["ome"]
    assert ome["version"] == "0.5" and "lazyreg_write" not in group["attributes"]
    ms = ome["multiscales"][0]
    assert ms["name"] == "vol"
    assert ms["axes"] == [{"name": d, "type": "space", "unit": "nanometer"} for d in ("z", "y", "x")]
    assert ms["datasets"][0]["coordinateTransformations"] == [
        {"type": "scale", "scale": [2.5, 0.3, 0.7]},
        {"type": "translation", "translation": [-4.0, 10.25, 3.5]},
    ]
    arr = json.loads((out / "0" / "zarr.json").read_text())
    assert arr["dimension_names"] == ["z", "y", "x"]
    assert [c["name"] for c in arr["codecs"]] == ["bytes", "zstd"]


def test_to_zarr_streams_a_lazy_image_chunk_by_chunk(tmp_path):
    values = _volume((32, 48, 40), dtype=np.uint16)
    img, log = counting_image(lazyreg.image(values, spacing=(3, 1, 1), origin=(1, 2, 3)), chunks=(16, 16, 16))
    with count_tasks() as built:
        delayed = to_zarr(img, tmp_path / "s.ome.zarr", compute=False)
    assert log.reads == [] and built.n == 0  # building the write reads and runs nothing
    with count_tasks() as ran:
        delayed.compute()
    assert len(log.reads) == 2 * 3 * 3 and len(set(map(str, log.reads))) == len(log.reads)  # each chunk once
    assert ran.named("lazyreg-finalize-") == 1  # the metadata are written once, after the chunks
    back = open_image(tmp_path / "s.ome.zarr")
    np.testing.assert_array_equal(back.values, values)
    assert back.data.chunksize == (16, 16, 16)
    assert lazyreg.origin(back) == (1.0, 2.0, 3.0)


def test_irregular_dask_chunks_are_written_with_regular_zarr_chunks(tmp_path):
    values = _volume((10, 17, 13))
    arr = da.from_array(values, chunks=((3, 5, 2), (9, 8), (13,)))
    out = to_zarr(lazyreg.image(arr, spacing=1.0), tmp_path / "irr.ome.zarr")
    z = zarr.open_array(str(out / "0"), mode="r")
    assert z.chunks == (5, 9, 13)  # the largest chunk, made regular
    np.testing.assert_array_equal(z[:], values)
    out2 = to_zarr(lazyreg.image(arr, spacing=1.0), tmp_path / "irr2.ome.zarr", chunks=(4, 8, 8))
    assert zarr.open_array(str(out2 / "0"), mode="r").chunks == (4, 8, 8)
    np.testing.assert_array_equal(open_image(out2).values, values)
    with pytest.raises(LazyregError, match="chunks"):
        to_zarr(lazyreg.image(arr, spacing=1.0), tmp_path / "bad.ome.zarr", chunks=((3, 7), 17, 13))


def test_write_memory_is_bounded_by_the_chunks_in_flight(tmp_path):
    shape, chunks = (64, 256, 256), (8, 128, 128)  # 32 MiB of float64 in 1 MiB chunks
    arr = da.random.default_rng(0).random(shape, chunks=chunks)
    img = lazyreg.image(arr, spacing=1.0)
    to_zarr(lazyreg.image(np.zeros((2, 2, 2)), spacing=1.0), tmp_path / "warm.ome.zarr")  # imports, codecs
    tracemalloc.start()
    try:
        with dask.config.set(scheduler="synchronous"):
            to_zarr(img, tmp_path / "big.ome.zarr")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10 * 2**20, f"peak {peak / 2**20:.1f} MiB while writing 32 MiB"
    assert open_image(tmp_path / "big.ome.zarr").data.chunksize == chunks


def test_compute_false_store_is_incomplete_until_computed(tmp_path):
    img = lazyreg.image(_volume(), spacing=(2, 1, 1))
    d = to_zarr(img, tmp_path / "d.ome.zarr", compute=False)
    assert isinstance(d, Delayed)
    with pytest.raises(LazyregError, match=r"incomplete \(interrupted write\?\)"):
        open_image(tmp_path / "d.ome.zarr")
    assert d.compute() == (tmp_path / "d.ome.zarr").resolve()
    np.testing.assert_array_equal(open_image(tmp_path / "d.ome.zarr").values, img.values)


def _failing_image(values: np.ndarray, fail_block: tuple[int, int, int]):
    def fill(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == fail_block:
            raise RuntimeError("disk unplugged")
        return block

    arr = da.from_array(values, chunks=(4, 10, 10)).map_blocks(fill, dtype=values.dtype)
    return lazyreg.image(arr, spacing=(2, 1, 1))


def test_interrupted_write_is_refused_on_open(tmp_path):
    path = tmp_path / "cut.ome.zarr"
    with pytest.raises(RuntimeError, match="disk unplugged"):
        to_zarr(_failing_image(_volume(), (2, 1, 0)), path)
    assert (path / "0").is_dir()  # data were partly written ...
    with pytest.raises(LazyregError, match=r"incomplete \(interrupted write\?\)"):
        open_image(path)  # ... but it does not open as a complete image
    with pytest.raises(LazyregError, match="incomplete"):
        read_ome_zarr(path)
    with pytest.raises(LazyregError, match="incomplete"):
        open_image(path / "0")
    # writing again over it works
    to_zarr(lazyreg.image(_volume(), spacing=1.0), path, overwrite=True)
    np.testing.assert_array_equal(open_image(path).values, _volume())


def test_overwrite_is_refused_and_existing_data_untouched(tmp_path):
    path = tmp_path / "keep.ome.zarr"
    first = lazyreg.image(_volume(seed=1), spacing=(2, 1, 1))
    to_zarr(first, path)
    before = _snapshot(path)
    with pytest.raises(LazyregError, match=f"path: {path.resolve()} exists; pass overwrite=True"):
        to_zarr(lazyreg.image(_volume(seed=2), spacing=1.0), path)
    with pytest.raises(LazyregError, match="exists"):
        to_zarr(lazyreg.image(_volume(seed=2), spacing=1.0), path, compute=False)
    assert _snapshot(path) == before
    np.testing.assert_array_equal(open_image(path).values, first.values)


def test_overwrite_replaces_all_old_content(tmp_path):
    path = tmp_path / "o.ome.zarr"
    to_zarr(lazyreg.image(_volume((12, 20, 30)), spacing=1.0), path, chunks=(4, 4, 4))
    new = _volume((5, 6, 7), seed=3)
    to_zarr(lazyreg.image(new, spacing=(3, 2, 1), origin=(1, 1, 1)), path, overwrite=True, chunks=(5, 6, 7))
    back = open_image(path)
    np.testing.assert_array_equal(back.values, new)
    assert lazyreg.spacing(back) == (3.0, 2.0, 1.0)
    chunk_files = [f for f in (path / "0").rglob("*") if f.is_file() and f.name != "zarr.json"]
    assert len(chunk_files) == 1  # no stale chunks of the old, larger array


def test_overwrite_refused_when_the_image_is_read_from_that_path(tmp_path):
    path = tmp_path / "self.ome.zarr"
    to_zarr(lazyreg.image(_volume(), spacing=1.0), path)
    before = _snapshot(path)
    img = open_image(path)
    for derived in (img, img[2:, ::2], img * 2 + 1):
        with pytest.raises(LazyregError, match="is read from"):
            to_zarr(derived, path, overwrite=True)
    assert _snapshot(path) == before


def test_overwrite_refuses_a_folder_that_is_not_zarr(tmp_path):
    folder = tmp_path / "precious"
    folder.mkdir()
    (folder / "thesis.txt").write_text("do not delete")
    with pytest.raises(LazyregError, match="not a zarr store; refusing"):
        to_zarr(lazyreg.image(_volume(), spacing=1.0), folder, overwrite=True)
    assert (folder / "thesis.txt").read_text() == "do not delete"


def test_numpy_and_bool_inputs(tmp_path):
    mask = _volume() > 500
    out = to_zarr(lazyreg.image(mask, spacing=1.0), tmp_path / "m.ome.zarr")
    back = open_image(out)
    assert back.dtype == bool
    np.testing.assert_array_equal(back.values, mask)


def test_write_and_read_a_vector_field_with_a_channel_axis(tmp_path):
    field = _volume((3, 6, 7, 8), dtype=np.float64)
    out = write_ome_zarr(
        da.from_array(field, chunks=(3, 3, 7, 4)),
        tmp_path / "f.ome.zarr",
        axes=("c", "z", "y", "x"),
        scale=(2.0, 1.5, 0.5),
        translation=(1.0, -2.0, 3.0),
        attrs={"lazyreg": {"kind": "displacement", "version": 1}},
    )
    r = read_ome_zarr(out)
    assert r.axes == ("c", "z", "y", "x")
    assert r.scale == (1.0, 2.0, 1.5, 0.5) and r.translation == (0.0, 1.0, -2.0, 3.0)
    assert r.units == (None, "micrometer", "micrometer", "micrometer")
    assert r.attrs == {"lazyreg": {"kind": "displacement", "version": 1}}
    assert isinstance(r.data, da.Array) and r.data.chunksize == (3, 3, 7, 4)
    np.testing.assert_array_equal(r.data.compute(), field)
    ms = json.loads((out / "zarr.json").read_text())["attributes"]["ome"]["multiscales"][0]
    assert ms["axes"][0] == {"name": "c", "type": "channel"}
    assert open_image(out).dims == ("c", "z", "y", "x")  # read as a 3-channel image (issue 15)
    with pytest.raises(LazyregError, match="axes"):
        write_ome_zarr(field, tmp_path / "g.ome.zarr", axes="zyx", scale=1.0)
    with pytest.raises(LazyregError, match="scale: expected finite positive values"):
        write_ome_zarr(field, tmp_path / "g.ome.zarr", axes="czyx", scale=(1.0, 0.0, 1.0))
    with pytest.raises(LazyregError, match=r"translation: expected 4 values"):
        write_ome_zarr(field, tmp_path / "g.ome.zarr", axes="czyx", scale=2.0, translation=(1, 2))
    assert not (tmp_path / "g.ome.zarr").exists()  # checked before anything is written
    iso = read_ome_zarr(write_ome_zarr(field, tmp_path / "g.ome.zarr", axes="czyx", scale=2.0))
    assert iso.scale == (1.0, 2.0, 2.0, 2.0) and iso.translation == (0.0,) * 4


# ------------------------------------------------------------------------------------------ reading


def test_read_hand_written_ome_04_levels_and_composed_transforms(tmp_path):
    full = _volume((8, 16, 16))
    half = full[:, ::2, ::2].copy()
    path = tmp_path / "v04.zarr"
    _write_ome_04(
        path,
        [full, half],
        scales=[[1.0, 0.5, 0.25], [1.0, 1.0, 0.5]],
        translations=[[0.0, 0.0, 0.0], [0.0, 0.25, 0.125]],
        ms_transforms=[{"type": "scale", "scale": [2.0, 2.0, 2.0]}, {"type": "translation", "translation": [10, 0, -1]}],
    )
    zero = open_image(path)
    np.testing.assert_array_equal(zero.values, full)
    assert lazyreg.spacing(zero) == (2.0, 1.0, 0.5)
    assert lazyreg.origin(zero) == (10.0, 0.0, -1.0)
    one = open_image(path, level=1)
    np.testing.assert_array_equal(one.values, half)
    assert lazyreg.spacing(one) == (2.0, 2.0, 1.0)
    assert lazyreg.origin(one) == (10.0, 0.5, -0.75)
    by_group = open_image(path, group="1")
    assert lazyreg.origin(by_group) == (10.0, 0.5, -0.75)
    direct = open_image(path / "1")  # the level's array given directly
    assert lazyreg.spacing(direct) == (2.0, 2.0, 1.0) and lazyreg.origin(direct) == (10.0, 0.5, -0.75)
    assert isinstance(find_source(one)[0], ZarrSource)
    with pytest.raises(LazyregError, match=r"level: expected an index into the 2 levels \['0', '1'\]"):
        open_image(path, level=2)
    with pytest.raises(LazyregError, match=r"group: 'nope' is not in .*levels \['0', '1'\]"):
        open_image(path, group="nope")
    with pytest.raises(LazyregError, match="contradicts"):
        open_image(path, group="1", level=0)


def test_read_hand_written_ome_05_drops_size_one_t_and_c(tmp_path):
    values = _volume((5, 6, 7))
    axes = [
        {"name": "t", "type": "time", "unit": "second"},
        {"name": "c", "type": "channel"},
        {"name": "z", "type": "space", "unit": "nanometer"},
        {"name": "y", "type": "space", "unit": "nanometer"},
        {"name": "x", "type": "space", "unit": "nanometer"},
    ]
    path = tmp_path / "v05.zarr"
    _write_ome_05(path, values[None, None], axes, [1.0, 1.0, 40.0, 8.0, 8.0], [0.0, 0.0, 400.0, -8.0, 16.0])
    img = open_image(path)
    assert img.shape == (5, 6, 7)
    np.testing.assert_array_equal(img.values, values)
    assert lazyreg.spacing(img) == (40.0, 8.0, 8.0) and lazyreg.origin(img) == (400.0, -8.0, 16.0)
    assert img.attrs["units"] == "nanometer"
    np.testing.assert_array_equal(img[1:3, 2, 4:].values, values[1:3, 2, 4:])
    over = open_image(path, spacing=(1, 2, 3))
    assert lazyreg.spacing(over) == (1.0, 2.0, 3.0) and lazyreg.origin(over) == (400.0, -8.0, 16.0)

    two = tmp_path / "two_channels.zarr"
    _write_ome_05(two, np.stack([values, values])[None], axes, [1.0] * 5, [0.0] * 5)
    both = open_image(two)  # the channel axis is kept (issue 15; tests/test_io_channels.py)
    assert both.dims == ("c", "z", "y", "x") and both.c.values.tolist() == [0, 1]


def test_axes_are_mapped_to_zyx_by_name(tmp_path):
    zyx = _volume((4, 5, 6))
    xyz = np.ascontiguousarray(zyx.transpose(2, 1, 0))
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in ("x", "y", "z")]
    path = tmp_path / "xyz.zarr"
    _write_ome_05(path, xyz, axes, [0.5, 1.0, 3.0], [1.0, 2.0, 3.0])
    img = open_image(path)
    assert img.shape == (4, 5, 6)
    np.testing.assert_array_equal(img.values, zyx)
    np.testing.assert_array_equal(img[1:3, ::2, 4].values, zyx[1:3, ::2, 4])
    assert lazyreg.spacing(img) == (3.0, 1.0, 0.5) and lazyreg.origin(img) == (3.0, 2.0, 1.0)
    assert img.data.chunksize == (4, 5, 6)


def test_missing_spatial_axis_is_an_error(tmp_path):
    path = tmp_path / "bad.zarr"
    axes = [{"name": n, "type": "space"} for n in ("c", "y", "x")]
    _write_ome_05(path, _volume((2, 5, 6)), axes, [1.0] * 3, [0.0] * 3)
    with pytest.raises(LazyregError, match="exactly one each of the spatial axes"):
        open_image(path)


@pytest.mark.parametrize("fmt", [2, 3])
def test_plain_zarr_arrays_need_spacing(tmp_path, fmt):
    values = _volume((6, 7, 8), dtype=np.int16)
    path = tmp_path / f"plain{fmt}.zarr"
    zarr.create_array(str(path), data=values, chunks=(3, 7, 4), zarr_format=fmt)
    with pytest.raises(LazyregError, match=r"path: voxel spacing is unknown for .*; pass spacing=\(z, y, x\)"):
        open_image(path)
    img = open_image(path, spacing=(4, 2, 1))
    assert lazyreg.spacing(img) == (4.0, 2.0, 1.0) and lazyreg.origin(img) == (0.0, 0.0, 0.0)
    assert img.data.chunksize == (3, 7, 4) and img.dtype == np.int16
    np.testing.assert_array_equal(img.values, values)
    with pytest.raises(LazyregError, match="level: .* single zarr array"):
        open_image(path, spacing=1.0, level=1)


def test_zarr_group_without_multiscales_lists_its_members(tmp_path):
    g = zarr.open_group(str(tmp_path / "g.zarr"), mode="w")
    g.create_array("raw", shape=(2, 3, 4), dtype="u1")
    g.create_group("labels")
    with pytest.raises(LazyregError, match=r"without OME-Zarr multiscales .*arrays \['raw'\] and groups \['labels'\]"):
        open_image(tmp_path / "g.zarr")
    assert open_image(tmp_path / "g.zarr", group="raw", spacing=1.0).shape == (2, 3, 4)
    with pytest.raises(LazyregError, match=r"group: 'missing' is not in .*arrays \['raw'\]"):
        open_image(tmp_path / "g.zarr", group="missing")


def test_reading_names_stay_importable_from_omezarr():
    for name in ("ZarrSource", "OmeZarrArray", "is_zarr", "open_zarr", "read_ome_zarr"):
        assert getattr(lazyreg.io.omezarr, name) is getattr(lazyreg.io.zarr_read, name)
        assert name in lazyreg.io.omezarr.__all__
    assert lazyreg.to_zarr is lazyreg.io.omezarr.to_zarr
