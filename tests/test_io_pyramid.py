"""Pyramids (``to_zarr(levels=)``, ``open_image(level="auto")``), stable keys on dask.distributed,
stores written by xarray, and displacement-field stores opened as images."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import dask
import dask.array as da
import numpy as np
import pytest
import tensorstore as ts

import lazyreg
from lazyreg.errors import LazyregError
from lazyreg.testing import counting_image


def _ref_mean(values: np.ndarray, factors) -> np.ndarray:
    """Block means by explicit loops over the blocks (an independent reference); trailing voxels dropped."""
    out_shape = tuple(n // f for n, f in zip(values.shape, factors))
    out = np.empty(out_shape)
    for idx in np.ndindex(*out_shape):
        out[idx] = values[tuple(slice(i * f, (i + 1) * f) for i, f in zip(idx, factors))].astype(np.float64).mean()
    return out


def _levels(path):
    attrs = json.loads((path / "zarr.json").read_text())["attributes"] if (path / "zarr.json").is_file() else json.loads((path / ".zattrs").read_text())
    ms = attrs["ome"]["multiscales"][0] if "ome" in attrs else attrs["multiscales"][0]
    return [(d["path"], d["coordinateTransformations"][0]["scale"], d["coordinateTransformations"][1]["translation"]) for d in ms["datasets"]]


@pytest.mark.parametrize("version", ["0.5", "0.4"])
def test_float_levels_are_block_means_of_level_0_at_the_blocks_centres(tmp_path, version):
    values = np.random.default_rng(0).random((11, 37, 30)).astype(np.float32)  # odd sizes
    img = lazyreg.image(values, spacing=(3.0, 1.0, 1.0), origin=(5.0, -2.0, 0.5)).chunk({"z": 4, "y": 8, "x": 8})
    p = lazyreg.to_zarr(img, tmp_path / "p.ome.zarr", levels=4, format=version)
    levels = _levels(p)
    # y, x are halved alone while at most z's spacing / sqrt(2) (the nearest to isotropic); then all axes
    assert [s for _, s, _ in levels] == [[3, 1, 1], [3, 2, 2], [3, 4, 4], [6, 8, 8]]
    total = np.ones(3, int)
    for k, (path, scale, translation) in enumerate(levels):
        low = lazyreg.open_image(p, level=k)
        assert lazyreg.spacing(low) == tuple(scale) and lazyreg.origin(low) == tuple(translation)
        if k:
            total = total * (np.asarray(scale) // np.asarray(levels[k - 1][1])).astype(int)
        np.testing.assert_allclose(low.values, _ref_mean(values, total), rtol=1e-5)
        # voxel (0, 0, 0) sits at the centre of the level-0 voxels it averages
        centre = [float(img.coords[d].values[: total[i]].mean()) for i, d in enumerate("zyx")]
        np.testing.assert_allclose(translation, centre)
    assert low.shape == (11 // 2, 37 // 8, 30 // 8)


def test_integer_levels_are_rounded_means_of_the_level_before(tmp_path):
    values = np.random.default_rng(1).integers(0, 60000, (9, 20, 24)).astype(np.uint16)
    img = lazyreg.image(values, spacing=1.0).chunk(6)
    p = lazyreg.to_zarr(img, tmp_path / "p.ome.zarr", levels=3)
    before = values
    for k in (1, 2):
        low = lazyreg.open_image(p, level=k)
        assert low.dtype == np.uint16
        np.testing.assert_array_equal(low.values, np.rint(_ref_mean(before, (2, 2, 2))).astype(np.uint16))
        before = low.values


def test_levels_read_level_0_back_instead_of_computing_it_again(tmp_path):
    values = np.random.default_rng(2).random((16, 32, 32)).astype(np.float32)
    img, log = counting_image(lazyreg.image(values, spacing=1.0), chunks=(8, 16, 16))
    with dask.config.set(scheduler="threads"):
        lazyreg.to_zarr(img * 2, tmp_path / "p.ome.zarr", levels=3)
    assert log.voxels == values.size  # every source voxel read once, for level 0 only
    np.testing.assert_allclose(lazyreg.open_image(tmp_path / "p.ome.zarr", level=2).values, _ref_mean(values * 2, (4, 4, 4)), rtol=1e-5)


def test_levels_auto_stop_when_the_largest_axis_is_at_most_256(tmp_path):
    img = lazyreg.image(da.zeros((6, 1100, 40), np.uint8, chunks=(6, 256, 40)), spacing=1.0)
    p = lazyreg.to_zarr(img, tmp_path / "p.ome.zarr", levels="auto")
    shapes = [lazyreg.open_image(p, level=k).shape for k in range(len(_levels(p)))]
    assert shapes == [(6, 1100, 40), (3, 550, 20), (1, 275, 10), (1, 137, 5)]  # z stops at 1 voxel


def test_bad_levels_are_refused_before_writing(tmp_path):
    img = lazyreg.image(np.zeros((4, 4, 4)), 1.0)
    for bad in (0, -1, "many", 1.5, True):
        with pytest.raises(LazyregError, match="levels: expected"):
            lazyreg.to_zarr(img, tmp_path / "a.ome.zarr", levels=bad)
    with pytest.raises(LazyregError, match="can be halved only 2 times"):
        lazyreg.to_zarr(img, tmp_path / "a.ome.zarr", levels=5)
    assert not (tmp_path / "a.ome.zarr").exists()


def test_a_lost_chunk_file_of_a_coarse_level_is_found_on_open(tmp_path):
    p = lazyreg.to_zarr(lazyreg.image(np.ones((8, 8, 8)), 1.0), tmp_path / "p.ome.zarr", chunks=2, levels=3)
    (p / "1" / "c" / "1" / "0" / "1").unlink()
    with pytest.raises(LazyregError, match=r"missing 1 of its 73 chunk files \(1/c/1/0/1\)"):
        lazyreg.open_image(p)


def test_open_image_level_auto_picks_the_finest_level_under_the_budget(tmp_path):
    p = lazyreg.to_zarr(lazyreg.image(np.ones((16, 16, 16), np.uint8), 1.0), tmp_path / "p.ome.zarr", levels=4)
    assert lazyreg.open_image(p, level="auto").shape == (16, 16, 16)  # default budget 16 Mi voxels
    assert lazyreg.open_image(p, level="auto", max_voxels=512).shape == (8, 8, 8)
    assert lazyreg.open_image(p, level="auto", max_voxels=511).shape == (4, 4, 4)
    assert lazyreg.open_image(p, level="auto", max_voxels=1).shape == (2, 2, 2)  # the coarsest
    with dask.config.set({"lazyreg.auto-level-voxels": 64}):
        assert lazyreg.open_image(p, level="auto").shape == (4, 4, 4)
    with pytest.raises(LazyregError, match="max_voxels: expected a positive number"):
        lazyreg.open_image(p, level="auto", max_voxels=0)
    with pytest.raises(LazyregError, match="or 'auto'"):
        lazyreg.open_image(p, level="coarse")


def test_open_image_level_auto_on_an_n5_multiscale_group(tmp_path):
    root = tmp_path / "c.n5"
    root.mkdir()
    (root / "attributes.json").write_text(json.dumps({"n5": "2.0.0"}))
    for k in range(3):
        n = 16 >> k
        spec = {"driver": "n5", "kvstore": {"driver": "file", "path": str(root / "img" / f"s{k}")},
                "metadata": {"dimensions": [n, n, n], "blockSize": [8, 8, 8], "dataType": "uint8", "compression": {"type": "raw"}}}
        ts.open(spec, create=True).result().write(np.full((n, n, n), k, np.uint8)).result()
    img = lazyreg.open_image(root, group="img", level="auto", max_voxels=600, spacing=1.0)
    assert img.shape == (8, 8, 8) and int(img[0, 0, 0]) == 1


def test_write_after_persist_on_a_cluster_submits_the_same_tasks(tmp_path):
    """dask.distributed warned "Detected different run_spec for key ('transpose-...')" (graph not optimised)."""
    distributed = pytest.importorskip("distributed")
    records: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: records.append(r.getMessage())
    logger = logging.getLogger("distributed.scheduler")
    logger.addHandler(handler)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0") as cluster, \
                distributed.Client(cluster):
            img = lazyreg.image(da.arange(8000, dtype=np.float32, chunks=1000).reshape(20, 20, 20).transpose(2, 1, 0), 1.0)
            img = img.chunk(10)
            persisted = img.persist()
            distributed.wait(persisted)
            lazyreg.to_zarr(img, tmp_path / "a.ome.zarr")
            field = lazyreg.DisplacementField.from_array(np.zeros((5, 5, 5, 3)), spacing=4.0)
            moved = lazyreg.apply_transform(img, lazyreg.open_image(tmp_path / "a.ome.zarr"), [lazyreg.Affine.from_translation((1, 0, 0)), field])
            distributed.wait(moved.persist())
            lazyreg.to_zarr(moved, tmp_path / "b.ome.zarr", levels=2)
    finally:
        logger.removeHandler(handler)
    assert not [r for r in records if "run_spec" in r], records
    np.testing.assert_array_equal(lazyreg.open_image(tmp_path / "a.ome.zarr").values, img.values)


def test_stores_written_by_xarray_open_with_their_coordinates(tmp_path):
    values = np.random.default_rng(3).random((4, 6, 8)).astype(np.float32)
    img = lazyreg.image(values, spacing=(2.0, 0.25, 0.5), origin=(10.0, 1.0, -3.0), name="img", units="nanometer")
    img.to_dataset().to_zarr(tmp_path / "ds.zarr", consolidated=False)
    img.chunk({"z": 2, "y": 3, "x": 4}).to_zarr(tmp_path / "da_v2.zarr", zarr_format=2, consolidated=False)
    for path in ("ds.zarr", "da_v2.zarr", "ds.zarr/img"):
        back = lazyreg.open_image(tmp_path / path)
        assert lazyreg.spacing(back) == (2.0, 0.25, 0.5) and lazyreg.origin(back) == (10.0, 1.0, -3.0), path
        assert back.attrs["units"] == "nanometer"
        np.testing.assert_array_equal(back.values, values)
    assert lazyreg.open_image(tmp_path / "da_v2.zarr").data.chunks == ((2, 2), (3, 3), (4, 4))
    # a single-voxel axis takes its spacing from the image's attrs
    img[:1].to_dataset().to_zarr(tmp_path / "thin.zarr", consolidated=False)
    assert lazyreg.spacing(lazyreg.open_image(tmp_path / "thin.zarr")) == (2.0, 0.25, 0.5)
    # spacing= overrides the coordinates' spacing, their first values stay the origin
    assert lazyreg.spacing(lazyreg.open_image(tmp_path / "ds.zarr", spacing=1.0)) == (1.0, 1.0, 1.0)


def test_xarray_datasets_of_several_images_need_a_group(tmp_path):
    a = lazyreg.image(np.zeros((2, 3, 4)), spacing=1.0, name="a")
    ds = a.to_dataset()
    ds["b"] = a + 1
    ds.to_zarr(tmp_path / "two.zarr", consolidated=False)
    with pytest.raises(LazyregError, match=r"holds 2 images \['a', 'b'\].*pass group=NAME"):
        lazyreg.open_image(tmp_path / "two.zarr")
    assert float(lazyreg.open_image(tmp_path / "two.zarr", group="b").max()) == 1.0
    uneven = a.assign_coords(x=[0.0, 1.0, 3.0, 4.0])
    uneven.to_dataset().to_zarr(tmp_path / "uneven.zarr", consolidated=False)
    with pytest.raises(LazyregError, match="coordinate 'x' is not evenly spaced"):
        lazyreg.open_image(tmp_path / "uneven.zarr")


def test_a_field_store_is_named_a_transform_by_open_image_and_info(tmp_path):
    field = lazyreg.DisplacementField.from_array(np.zeros((4, 5, 6, 3)), spacing=2.0)
    p = lazyreg.save_transform(field, tmp_path / "field.ome.zarr")
    with pytest.raises(LazyregError, match=r"is a displacement field \(a transform\), not an image: load it with lazyreg.load_transform"):
        lazyreg.open_image(p)
    out = subprocess.run([sys.executable, "-m", "lazyreg", "info", str(p)], capture_output=True, text=True)
    assert out.returncode == 2 and "lazyreg.load_transform" in out.stderr, out.stderr
