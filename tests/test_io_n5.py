"""N5 via tensorstore: the tutorial volumes, metadata conventions, errors and pickling."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import tensorstore as ts

import lazyreg
from lazyreg import LazyregError, open_image
from lazyreg.io import n5 as n5_module
from lazyreg.io.n5 import N5Source
from lazyreg.io.source import find_source
from lazyreg.testing import count_tasks


def _write_n5(dataset: Path, values: np.ndarray, block=(4, 8, 8), **attrs) -> None:
    """Write a zyx array as an N5 dataset (xyz on disk) with tensorstore, then add attributes."""
    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(dataset.resolve())},
        "metadata": {
            "dimensions": list(values.shape[::-1]),
            "blockSize": list(block[::-1]),
            "dataType": str(values.dtype),
            "compression": {"type": "gzip"},
        },
    }
    store = ts.open(spec, create=True, delete_existing=True).result()
    store.T.write(values).result()
    if attrs:
        meta = json.loads((dataset / "attributes.json").read_text())
        meta.update(attrs)
        (dataset / "attributes.json").write_text(json.dumps(meta))


def _container(path: Path, **attrs) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "attributes.json").write_text(json.dumps({"n5": "2.0.0", **attrs}))
    return path


def _volume(shape=(9, 10, 11), dtype=np.uint16, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 4000, shape).astype(dtype)


# ------------------------------------------------------------------------------------------ tutorial


@pytest.mark.shared_data
@pytest.mark.parametrize("which, shape", [("fix", (149, 241, 456)), ("mov", (144, 241, 456))])
def test_tutorial_volumes(tutorial_dir, which, shape):
    img = open_image(tutorial_dir / f"{which}.n5", group="lowres")
    assert img.shape == shape and img.dtype == np.uint16
    assert img.dims == ("z", "y", "x")
    assert lazyreg.spacing(img) == (1.68, 1.84, 1.84)
    assert lazyreg.origin(img) == (0.0, 0.0, 0.0)
    assert img.attrs["units"] == "micrometer"
    assert img.name == which
    assert img.data.chunksize == (70, 128, 128)  # N5 blocks (128, 128, 70) in zyx
    direct = ts.open(
        {"driver": "n5", "kvstore": {"driver": "file", "path": str((tutorial_dir / f"{which}.n5" / "lowres").resolve())}}
    ).result()
    expected = direct.T[60:75, 100:140, 120:133].read().result()
    np.testing.assert_array_equal(img[60:75, 100:140, 120:133].values, expected)
    for z, y, x in [(0, 0, 0), (shape[0] - 1, 240, 455), (70, 128, 128), (33, 7, 301)]:
        assert int(img[z, y, x]) == int(direct[x, y, z].read().result())
    found = find_source(img)
    assert found is not None and isinstance(found[0], N5Source)
    assert found[1:] == ((0, 0, 0), (1, 1, 1))
    sub = find_source(img[10:, ::2, 5:])
    assert sub is not None and sub[0] is found[0] and sub[1:] == ((10, 0, 5), (1, 2, 1))


@pytest.mark.shared_data
def test_tutorial_dataset_path_given_directly(tutorial_dir):
    a = open_image(tutorial_dir / "mov.n5" / "lowres")
    b = open_image(str(tutorial_dir / "mov.n5"), group="lowres")
    assert a.shape == b.shape and lazyreg.spacing(a) == lazyreg.spacing(b) == (1.68, 1.84, 1.84)
    np.testing.assert_array_equal(a[70:72].values, b[70:72].values)


@pytest.mark.shared_data
def test_tutorial_open_reads_no_data(tutorial_dir, monkeypatch):
    reads = []
    original = N5Source.read
    monkeypatch.setattr(N5Source, "read", lambda self, index: reads.append(index) or original(self, index))
    with count_tasks() as counter:
        img = open_image(tutorial_dir / "fix.n5", group="lowres")
        cropped = img[10:50, ::2] * 2.0 + 1
        smaller = cropped.mean("z")
    assert counter.n == 0 and reads == []
    assert smaller.shape == (121, 456)
    img[3, 4, 5].values
    assert reads == [(slice(0, 70), slice(0, 128), slice(0, 128))]  # one block only


@pytest.mark.shared_data
def test_tutorial_errors(tutorial_dir):
    with pytest.raises(LazyregError, match=r"group: 'highres' is not in the N5 container .*datasets found .*\['lowres'\]"):
        open_image(tutorial_dir / "fix.n5", group="highres")
    with pytest.raises(LazyregError, match=r"is an N5 group, not a dataset; pass group= .*\['lowres'\]"):
        open_image(tutorial_dir / "fix.n5")


# ------------------------------------------------------------------------------------------ synthetic


def test_round_trip_with_container_resolution_dict_and_downsampling(tmp_path):
    values = _volume((9, 10, 11))
    root = _container(tmp_path / "c.n5", pixelResolution={"dimensions": [0.25, 0.5, 2.0], "unit": "nm"})
    _write_n5(root / "s1", values, downsamplingFactors=[2, 2, 1])
    img = open_image(root, group="s1")
    np.testing.assert_array_equal(img.values, values)
    assert lazyreg.spacing(img) == (2.0, 1.0, 0.5)  # (z, y, x) = (2*1, 0.5*2, 0.25*2)
    assert img.attrs["units"] == "nanometer"
    assert img.data.chunksize == (4, 8, 8)
    np.testing.assert_array_equal(img[2:7, 3:9:2, 10].values, values[2:7, 3:9:2, 10])


def test_dataset_resolution_list_offset_and_multiscale_levels(tmp_path):
    values = _volume((8, 12, 16), dtype=np.float32)
    root = _container(tmp_path / "ms.n5", pixelResolution={"dimensions": [1.0, 1.0, 1.0], "unit": "um"})
    _write_n5(root / "img" / "s0", values, pixelResolution=[0.5, 0.5, 3.0], offset=[10.0, 20.0, 30.0])
    _write_n5(
        root / "img" / "s1", values[:, ::2, ::2].copy(), pixelResolution=[0.5, 0.5, 3.0], downsamplingFactors=[2, 2, 1]
    )
    s0 = open_image(root, group="img")  # a multiscale group opens s0
    np.testing.assert_array_equal(s0.values, values)
    assert lazyreg.spacing(s0) == (3.0, 0.5, 0.5) and lazyreg.origin(s0) == (30.0, 20.0, 10.0)
    assert s0.attrs["units"] == "micrometer"  # the unit comes from the container
    s1 = open_image(root, group="img", level=1)
    np.testing.assert_array_equal(s1.values, values[:, ::2, ::2])
    assert lazyreg.spacing(s1) == (3.0, 1.0, 1.0)
    with pytest.raises(LazyregError, match=r"level: .* no multiscale level s2 \(levels found: \['s0', 's1'\]\)"):
        open_image(root, group="img", level=2)


def test_cosem_transform_attribute(tmp_path):
    values = _volume((4, 5, 6))
    _write_n5(
        tmp_path / "e.n5" / "em",
        values,
        transform={"axes": ["z", "y", "x"], "scale": [8.0, 4.0, 4.0], "translate": [80.0, 0.0, -4.0], "units": ["nm"] * 3},
    )
    img = open_image(tmp_path / "e.n5" / "em")
    assert lazyreg.spacing(img) == (8.0, 4.0, 4.0) and lazyreg.origin(img) == (80.0, 0.0, -4.0)
    assert img.attrs["units"] == "nanometer"


def test_unknown_spacing_needs_spacing_argument(tmp_path):
    values = _volume((3, 4, 5), dtype=np.uint8)
    _write_n5(tmp_path / "bare.n5" / "d", values)
    with pytest.raises(LazyregError, match=r"path: voxel spacing is unknown for .*d .*pass spacing=\(z, y, x\)"):
        open_image(tmp_path / "bare.n5", group="d")
    img = open_image(tmp_path / "bare.n5", group="d", spacing=(5, 1, 1))
    assert lazyreg.spacing(img) == (5.0, 1.0, 1.0)
    np.testing.assert_array_equal(img.values, values)


def test_spacing_argument_overrides_metadata(tmp_path):
    root = _container(tmp_path / "o.n5", pixelResolution=[1.0, 1.0, 1.0])
    _write_n5(root / "d", _volume((3, 4, 5)))
    assert lazyreg.spacing(open_image(root, group="d", spacing=0.5)) == (0.5, 0.5, 0.5)


def test_pickled_source_reopens_the_store(tmp_path):
    values = _volume((6, 7, 8))
    root = _container(tmp_path / "p.n5", pixelResolution=[1, 1, 1])
    _write_n5(root / "d", values)
    src = find_source(open_image(root, group="d"))[0]
    blob = pickle.dumps(src)
    assert len(blob) < 2000  # paths and metadata only
    n5_module._STORES.clear()  # as in a fresh worker process
    copy = pickle.loads(blob)
    np.testing.assert_array_equal(copy.read((slice(1, 4), slice(0, 7), slice(2, 5))), values[1:4, :, 2:5])
    np.testing.assert_array_equal(copy[2], values[2])


def test_stores_are_cached_per_process(tmp_path):
    root = _container(tmp_path / "k.n5", pixelResolution=[1, 1, 1])
    _write_n5(root / "d", _volume((4, 4, 4)))
    a, b = open_image(root, group="d"), open_image(root, group="d")
    sa, sb = find_source(a)[0], find_source(b)[0]
    assert n5_module._open_store(str(sa.path), sa.token()) is n5_module._open_store(str(sb.path), sb.token())
    assert float(a.mean()) == float(b.mean())
