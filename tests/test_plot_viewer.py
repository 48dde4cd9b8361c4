"""napari layers of images, fields and block reports: placed in physical space, data kept lazy."""

import sys
import types

import dask.array as da
import numpy as np
import pytest

import lazyreg
from lazyreg.errors import LazyregError
from lazyreg.plot.viewer import STATUS_COLOURS, napari_layers, view_in_napari
from lazyreg.testing import count_tasks


def _world(meta, index):
    """Where napari puts voxel ``index`` of a layer: translate + index * scale."""
    return np.asarray(meta["translate"]) + np.asarray(index) * np.asarray(meta["scale"])


def test_images_are_placed_at_their_physical_coordinates_and_stay_lazy():
    fixed = lazyreg.image(da.zeros((6, 8, 10), chunks=3), spacing=(2.0, 0.5, 0.25), origin=(-3.0, 1.0, 7.5))
    moving = lazyreg.image(np.ones((5, 5, 5), np.uint16), spacing=1.5, origin=(0.0, 2.0, 4.0))
    with count_tasks() as ran:
        layers = napari_layers(fixed, moving, names=["fixed", "moving"])
    assert ran.n == 0
    (d0, m0, k0), (d1, m1, k1) = layers
    assert (k0, k1) == ("image", "image") and (m0["name"], m1["name"]) == ("fixed", "moving")
    assert d0 is fixed.data  # napari reads the planes it shows
    for img, meta in ((fixed, m0), (moving, m1)):
        corner = np.array([[img.z.values[-1], img.y.values[2], img.x.values[3]]])
        np.testing.assert_allclose(_world(meta, [img.sizes["z"] - 1, 2, 3]), corner[0])


def test_a_field_gives_its_magnitude_and_arrows_in_physical_units():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(9, 10, 11, 3)).astype(np.float32)
    field = lazyreg.DisplacementField.from_array(values, spacing=(2.0, 1.0, 1.0), origin=(5.0, 0.0, -1.0))
    img = lazyreg.image(np.zeros((9, 10, 11)), spacing=(2.0, 1.0, 1.0), origin=(5.0, 0.0, -1.0))
    _, (mag, mmeta, mkind), (vec, vmeta, vkind) = napari_layers(img, field=field, vector_step=4)
    assert (mkind, vkind) == ("image", "vectors")
    np.testing.assert_allclose(np.asarray(mag), np.linalg.norm(values, axis=-1), rtol=1e-6)
    assert mmeta["scale"] == (2.0, 1.0, 1.0) and mmeta["translate"] == (5.0, 0.0, -1.0)
    assert vec.shape == (3 * 3 * 3, 2, 3)
    # the arrow at node (4, 8, 4) starts at that node's physical position and is its displacement
    k = 1 * 9 + 2 * 3 + 1
    np.testing.assert_allclose(vec[k, 0], [5.0 + 4 * 2.0, 8.0, -1.0 + 4.0])
    np.testing.assert_allclose(vec[k, 1], values[4, 8, 4], rtol=1e-6)


def test_a_block_report_gives_one_point_per_block_at_its_centre_coloured_by_status():
    img = lazyreg.image(np.zeros((20, 40, 40)), spacing=(2.0, 1.0, 1.0), origin=(100.0, 0.0, 0.0))
    report = [
        {"index": (0, 0, 0), "status": "ok", "metric_before": 0.2, "metric_after": 0.5},
        {"index": (0, 1, 1), "status": "failed", "metric_before": None, "metric_after": None},
    ]
    *_, (points, meta, kind) = napari_layers(img, report=report, blocksize=(20, 20, 20))
    assert kind == "points"
    np.testing.assert_allclose(points, [[100.0 + 9.5 * 2.0, 9.5, 9.5], [100.0 + 9.5 * 2.0, 29.5, 29.5]])
    assert meta["face_color"] == [STATUS_COLOURS["ok"], STATUS_COLOURS["failed"]]
    assert meta["properties"]["gain"][0] == pytest.approx(0.3) and np.isnan(meta["properties"]["gain"][1])


@pytest.mark.parametrize(
    "call, words",
    [
        (lambda img: napari_layers(img, names=["a", "b"]), "names: expected 1 names"),
        (lambda img: napari_layers(img, report=[{"index": (0, 0, 0), "status": "ok"}]), "blocksize"),
        (lambda img: napari_layers(img, field=np.zeros((2, 2, 2, 3))), "field: expected a lazyreg.DisplacementField"),
        (lambda img: napari_layers(img.rename(z="t")), "images[0]"),
    ],
)
def test_bad_arguments_are_named(call, words):
    img = lazyreg.image(np.zeros((4, 4, 4)), spacing=1.0)
    with pytest.raises(LazyregError, match=words.replace("[", r"\[").replace("]", r"\]")):
        call(img)


def test_view_in_napari_adds_every_layer_to_the_viewer(monkeypatch):
    added = []

    class Viewer:
        def __getattr__(self, name):
            return lambda data, **meta: added.append((name, meta["name"]))

    monkeypatch.setitem(sys.modules, "napari", types.SimpleNamespace(Viewer=Viewer))
    img = lazyreg.image(np.zeros((4, 4, 4)), spacing=1.0)
    field = lazyreg.DisplacementField.from_array(np.zeros((4, 4, 4, 3)), spacing=1.0)
    view_in_napari(img, names=["fixed"], field=field)
    assert added == [("add_image", "fixed"), ("add_image", "field magnitude"), ("add_vectors", "field")]


def test_view_in_napari_without_napari_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "napari", None)
    with pytest.raises(LazyregError, match=r"pip install 'napari\[all\]'"):
        view_in_napari(lazyreg.image(np.zeros((2, 2, 2)), spacing=1.0))
