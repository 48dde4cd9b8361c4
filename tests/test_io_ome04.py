"""OME-Zarr 0.4 on zarr v2 (``format="0.4"``, CLI ``--ome-zarr-version``) and ome-zarr-models validation.

Tools still on zarr 2 (bigstream 5.0.3) open ``zarr.open(path + "/0")``; the 0.4 writer keeps every
guarantee of the 0.5 one: streamed, marker removed last, every chunk written and counted, the writer
lock, never overwriting its own input. Every layout lazyreg writes (0.4 / 0.5, one level or a
pyramid, image or vector field) is validated by ome-zarr-models.
"""

from __future__ import annotations

import json
from pathlib import Path

import dask
import dask.array as da
import numpy as np
import pytest
import zarr
from ome_zarr_models import v04, v05

import lazyreg
from lazyreg.cli import main
from lazyreg.errors import LazyregError
from lazyreg.io.omezarr import output_format, write_ome_zarr


def _img(shape=(6, 10, 12), dtype=np.float32, seed=0):
    values = np.random.default_rng(seed).random(shape).astype(dtype) * 100
    return lazyreg.image(values, spacing=(2.0, 0.5, 0.5), origin=(10.0, -1.0, 3.0), name="vol")


def validate(path: Path, version: str):
    """The store as an ome-zarr-models Image (raises if the metadata are not valid OME-Zarr ``version``)."""
    group = zarr.open_group(str(path), mode="r", zarr_format=2 if version == "0.4" else 3)
    model = (v04 if version == "0.4" else v05).Image.from_zarr(group)
    ms = model.attributes.multiscales if version == "0.4" else model.attributes.ome.multiscales
    return ms[0]


def test_0_4_is_zarr_v2_that_plain_zarr_opens_with_ome_04_metadata(tmp_path):
    img = _img()
    p = lazyreg.to_zarr(img.chunk({"z": 3, "y": 5, "x": 6}), tmp_path / "a.ome.zarr", format="0.4")
    assert sorted(f.name for f in p.iterdir()) == [".zattrs", ".zgroup", "0"]
    zarray = json.loads((p / "0" / ".zarray").read_text())
    assert zarray["zarr_format"] == 2 and zarray["dimension_separator"] == "/" and zarray["compressor"]["id"] == "zstd"
    arr = zarr.open(str(p / "0"), mode="r", zarr_format=2)  # what bigstream does (zarr 2)
    np.testing.assert_array_equal(arr[...], img.values)
    attrs = json.loads((p / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4" and ms["name"] == "vol" and "ome" not in attrs
    assert ms["axes"] == [{"name": d, "type": "space", "unit": "micrometer"} for d in "zyx"]
    assert ms["datasets"] == [
        {"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [2.0, 0.5, 0.5]},
                                                     {"type": "translation", "translation": [10.0, -1.0, 3.0]}]}
    ]
    assert attrs["lazyreg_chunks"]["count"] == 8 == len([f for f in (p / "0").rglob("*") if f.is_file() and not f.name.startswith(".")])
    validate(p, "0.4")
    back = lazyreg.open_image(p)
    assert lazyreg.spacing(back) == (2.0, 0.5, 0.5) and lazyreg.origin(back) == (10.0, -1.0, 3.0)
    np.testing.assert_array_equal(back.values, img.values)


def test_0_4_interrupted_write_is_refused_and_lost_chunks_are_found(tmp_path):
    values = np.arange(4 * 8 * 8, dtype=np.uint16).reshape(4, 8, 8)

    def boom(block, block_info=None):
        if block_info[0]["chunk-location"] == (1, 1, 1):
            raise RuntimeError("disk full")
        return block

    failing = lazyreg.image(da.from_array(values, chunks=(2, 4, 4)).map_blocks(boom, dtype=values.dtype), 1.0)
    with pytest.raises(RuntimeError, match="disk full"):
        lazyreg.to_zarr(failing, tmp_path / "bad.ome.zarr", format="0.4")
    with pytest.raises(LazyregError, match="incomplete"):
        lazyreg.open_image(tmp_path / "bad.ome.zarr")
    # empty chunks are written too, and a lost chunk file is an error, not zeros
    p = lazyreg.to_zarr(lazyreg.image(np.zeros((4, 8, 8), np.uint8), 1.0), tmp_path / "z.ome.zarr", chunks=(2, 4, 4), format="0.4")
    (p / "0" / "1" / "0" / "1").unlink()
    with pytest.raises(LazyregError, match=r"missing 1 of its 8 chunk files \(0/1/0/1\)"):
        lazyreg.open_image(p)


def test_0_4_keeps_the_lock_and_never_overwrites_its_input(tmp_path):
    p = lazyreg.to_zarr(_img(), tmp_path / "a.ome.zarr", format="0.4")
    img = lazyreg.open_image(p)
    with pytest.raises(LazyregError, match="is read from"):
        lazyreg.to_zarr(img + 1, p, overwrite=True, format="0.4")
    pending = lazyreg.to_zarr(_img(), tmp_path / "b.ome.zarr", format="0.4", compute=False)
    with pytest.raises(LazyregError, match="lock"):
        lazyreg.to_zarr(_img(), tmp_path / "b.ome.zarr", overwrite=True, format="0.4")
    dask.compute(pending)
    np.testing.assert_array_equal(lazyreg.open_image(tmp_path / "b.ome.zarr").values, _img().values)


def test_format_is_checked_before_anything_is_written(tmp_path):
    with pytest.raises(LazyregError, match=r"format: expected an OME-Zarr version '0.5' \(zarr v3\) or '0.4'"):
        lazyreg.to_zarr(_img(), tmp_path / "a.ome.zarr", format="0.6")
    with dask.config.set({"lazyreg.ome-zarr-version": "3"}), pytest.raises(LazyregError, match="lazyreg.ome-zarr-version"):
        lazyreg.to_zarr(_img(), tmp_path / "a.ome.zarr")
    assert not (tmp_path / "a.ome.zarr").exists()


def test_fields_are_written_as_0_4_under_output_format(tmp_path):
    field = lazyreg.DisplacementField.from_array(np.random.default_rng(1).random((4, 5, 6, 3)), spacing=(2, 1, 1), origin=(1, 0, 0))
    with output_format("0.4"):
        p = lazyreg.save_transform(field, tmp_path / "field.ome.zarr")
    assert (p / ".zattrs").is_file() and not (p / "zarr.json").exists()
    validate(p, "0.4")
    back = lazyreg.load_transform(p).compute()
    np.testing.assert_allclose(back.data.values, field.data.values)
    assert back.grid == field.grid


@pytest.mark.parametrize("version", ["0.4", "0.5"])
@pytest.mark.parametrize("levels", [1, 3])
@pytest.mark.parametrize("kind", ["image", "field"])
def test_every_layout_written_validates_with_ome_zarr_models(tmp_path, version, levels, kind):
    if kind == "image":
        p = lazyreg.to_zarr(_img((8, 16, 16), np.uint16), tmp_path / "x.ome.zarr", levels=levels, format=version)
        expected_axes = ["z", "y", "x"]
    else:
        data = np.random.default_rng(2).random((3, 8, 16, 16)).astype(np.float32)
        p = write_ome_zarr(data, tmp_path / "x.ome.zarr", axes="czyx", scale=(1, 1, 1), units=[None] + ["micrometer"] * 3,
                           levels=levels, format=version, attrs={"kind": "field"})
        expected_axes = ["c", "z", "y", "x"]
    ms = validate(p, version)
    assert [a.name for a in ms.axes] == expected_axes
    assert [d.path for d in ms.datasets] == [str(k) for k in range(levels)]


def test_cli_ome_zarr_version_writes_zarr_v2_images_and_fields(tmp_path):
    img = _img((8, 8, 8))
    lazyreg.to_zarr(img, tmp_path / "fix.ome.zarr")
    lazyreg.save_transform(lazyreg.Affine.from_translation((0.5, 0, 0)), tmp_path / "t.txt")
    code = main(["apply", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "fix.ome.zarr"), "-t", str(tmp_path / "t.txt"),
                 "-o", str(tmp_path / "out.ome.zarr"), "--ome-zarr-version", "0.4", "--scheduler", "synchronous", "--quiet"])
    assert code in (0, None)
    assert json.loads((tmp_path / "out.ome.zarr" / "0" / ".zarray").read_text())["zarr_format"] == 2
    validate(tmp_path / "out.ome.zarr", "0.4")
    field = lazyreg.DisplacementField.from_array(np.full((4, 4, 4, 3), 0.5), spacing=1.0)
    lazyreg.save_transform(field, tmp_path / "field.ome.zarr")
    code = main(["invert", str(tmp_path / "field.ome.zarr"), "-o", str(tmp_path / "inv.ome.zarr"), "--ome-zarr-version", "0.4",
                 "--scheduler", "synchronous", "--quiet"])
    assert code in (0, None)
    assert (tmp_path / "inv.ome.zarr" / ".zattrs").is_file()
    assert float(lazyreg.load_transform(tmp_path / "inv.ome.zarr").compute().data[1, 1, 1, 0]) == pytest.approx(-0.5)
    # the default stays OME-Zarr 0.5 (zarr v3)
    main(["apply", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "fix.ome.zarr"), "-t", str(tmp_path / "t.txt"),
          "-o", str(tmp_path / "out5.ome.zarr"), "--scheduler", "synchronous", "--quiet"])
    assert (tmp_path / "out5.ome.zarr" / "zarr.json").is_file()
