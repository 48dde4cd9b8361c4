"""Transforms as NGFF (OME-Zarr RFC-5) coordinate transformations, other tools' NGFF transforms, bigstream arrays."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import dask.array as da
import numpy as np
import pytest
import tensorstore as ts
import zarr

import lazyreg
import lazyreg.io.transform_files
from lazyreg import Affine, DisplacementField, LazyregError
from lazyreg.io.omezarr import write_ome_zarr
from lazyreg.io.transform_files import load_transform, save_field_zarr, save_transform

CASES = Path(__file__).parent / "data" / "ngff_conformance"
CASE_DIRS = sorted(CASES.glob("*.ome.zarr"))
POINTS = np.random.default_rng(0).uniform(-6, 12, size=(30, 3))


def _field(seed: int = 1) -> DisplacementField:
    v = np.random.default_rng(seed).normal(size=(4, 5, 6, 3))
    return DisplacementField.from_array(v, spacing=(2.0, 1.5, 1.25), origin=(-3.0, 2.0, 5.0))


def _attrs(path: Path) -> dict:
    return json.loads((path / "zarr.json").read_text())["attributes"]


def _write_json(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc))
    return path


# --- the outside check: every case of ome-zarr-transformations-conformance 0.1.2 -------------------


def test_every_conformance_case_is_vendored():
    assert len(CASE_DIRS) == 24 and (CASES / "LICENSE").read_text().startswith("MIT License")


@pytest.mark.parametrize("case", CASE_DIRS, ids=[c.name.split(".")[0] for c in CASE_DIRS])
def test_conformance_case(case):
    conf = tomllib.loads((case / "conformance.toml").read_text())
    src, tgt = conf["source"], conf["target"]
    if conf["should_error"]:
        with pytest.raises(LazyregError, match="no coordinate system"):
            load_transform(case, input=src["name"], output=tgt["name"])
        return
    T = load_transform(case, input=src["name"], output=tgt["name"])
    pts = np.asarray(src["coordinates"], dtype=float)  # all cases are 2D (y, x): embedded with z = 7
    mapped = lazyreg.transform_points(np.column_stack([np.full(len(pts), 7.0), pts]), T)
    np.testing.assert_array_equal(mapped[:, 0], 7.0)  # z passes through
    expected = np.asarray(tgt["coordinates"], dtype=float)
    diff = np.abs(mapped[:, 1:] - expected)  # the conformance runner's check: both tolerances hold
    assert np.all(diff <= conf["absolute_tolerance"]), (mapped[:, 1:], expected)
    assert np.all(diff <= conf["relative_tolerance"] * np.maximum(np.abs(mapped[:, 1:]), np.abs(expected)))


# --- what lazyreg writes ---------------------------------------------------------------------------


def test_field_is_written_as_an_ngff_displacements_transform(tmp_path):
    p = save_transform(_field(), tmp_path / "field.ome.zarr")
    ome = _attrs(p)["ome"]
    ms = ome["multiscales"][0]
    assert ms["axes"][0] == {"name": "d", "type": "displacement", "discrete": True}  # was "c", type "channel"
    assert [(a["name"], a["type"], a["unit"]) for a in ms["axes"][1:]] == [(n, "space", "micrometer") for n in "zyx"]
    assert ms["coordinateSystems"][0]["axes"] == ms["axes"]
    assert ms["datasets"][0]["coordinateTransformations"][0]["scale"] == [1.0, 2.0, 1.5, 1.25]
    [t] = ome["scene"]["coordinateTransformations"]
    assert t["type"] == "displacements" and t["interpolation"] == "linear" and t["path"] == "."
    assert (t["input"], t["output"]) == ({"name": "fixed"}, {"name": "moving"})
    systems = {cs["name"]: [a["name"] for a in cs["axes"]] for cs in ome["scene"]["coordinateSystems"]}
    assert systems == {"fixed": ["z", "y", "x"], "moving": ["z", "y", "x"]}
    assert zarr.open_array(store=str(p / "0"), mode="r").metadata.dimension_names == ("d", "z", "y", "x")


def test_field_round_trip_lazy_and_streamed(tmp_path):
    D = _field()
    lazy = DisplacementField.from_array(da.from_array(D.values, chunks=(2, 3, 3, 3)), D.grid.spacing, D.grid.origin)
    write = save_field_zarr(lazy, tmp_path / "f.ome.zarr", compute=False)  # streamed by write_ome_zarr
    write.compute()
    back = load_transform(tmp_path / "f.ome.zarr")
    assert isinstance(back, DisplacementField) and back.is_lazy and back.grid == D.grid
    np.testing.assert_array_equal(back.values, D.values)
    # the same file read as NGFF in the other direction is refused: a field has no closed-form inverse
    with pytest.raises(LazyregError, match="cannot be inverted in closed form.*invert_field"):
        load_transform(tmp_path / "f.ome.zarr", input="moving", output="fixed")
    with pytest.raises(LazyregError, match="not one affine; use load_transform"):
        lazyreg.io.transform_files.load_affine(tmp_path / "f.ome.zarr")


def test_field_written_by_the_previous_lazyreg_format_still_reads(tmp_path):
    D = _field()
    old = write_ome_zarr(np.moveaxis(D.values, 3, 0), tmp_path / "old.ome.zarr", axes="czyx",
                         scale=(1.0, *D.grid.spacing), translation=(0.0, *D.grid.origin), units=[None] + ["micrometer"] * 3,
                         attrs={"lazyreg_transform": {"type": "displacement_field", "vector": ["z", "y", "x"], "units": "micrometer"}})
    back = load_transform(old)
    assert back.grid == D.grid
    np.testing.assert_allclose(back(POINTS), D(POINTS), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["affine.json", "affine.ome.zarr"])
def test_affine_is_written_as_an_ngff_affine(tmp_path, name):
    A = Affine.from_parameters(rotation=(25.0, -40.0, 70.0), scale=(1.2, 0.8, 1.5), translation=(3.0, -7.5, 11.0))
    p = save_transform(A, tmp_path / name)
    attrs = json.loads(p.read_text()) if p.is_file() else _attrs(p)
    [t] = attrs["ome"]["scene"]["coordinateTransformations"]
    assert t["type"] == "affine" and (t["input"], t["output"]) == ({"name": "fixed"}, {"name": "moving"})
    np.testing.assert_array_equal(np.asarray(t["affine"]), np.asarray(A)[:3])  # rows z, y, x; input z, y, x
    np.testing.assert_array_equal(np.asarray(load_transform(p)), np.asarray(A))
    np.testing.assert_array_equal(np.asarray(lazyreg.io.transform_files.load_affine(p)), np.asarray(A))
    inverse = load_transform(p, input="moving", output="fixed")
    np.testing.assert_allclose(inverse(A(POINTS)), POINTS, atol=1e-9)
    with pytest.raises(LazyregError, match="already exists"):
        save_transform(A, p)
    save_transform(Affine.identity(), p, overwrite=True)
    np.testing.assert_array_equal(np.asarray(load_transform(p)), np.eye(4))


# --- reading what others wrote -------------------------------------------------------------------------


def _xyz_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 0.6-style scene: input axes in x, y, z order, a field stored (x, y, z, d) in a subgroup, then an
    affine in x, y, z and a mapAxis to an output system in z, y, x order."""
    rng = np.random.default_rng(3)
    field_xyz = rng.normal(size=(5, 4, 3, 3))  # (x, y, z, d), d = (dx, dy, dz)
    xyz = [{"name": n, "type": "space", "unit": "micrometer"} for n in "xyz"]
    g = zarr.create_group(str(tmp_path / "scene.zarr"), zarr_format=3)
    sub = g.create_group("coordinateTransformations/dfield")
    sub.create_array("s0", data=field_xyz, chunks=(5, 4, 3, 3))
    sub.attrs["ome"] = {"version": "0.6.dev3", "multiscales": [{
        "coordinateSystems": [{"name": "dfield", "axes": xyz + [{"name": "d", "type": "displacement", "discrete": True}]}],
        "datasets": [{"path": "s0", "coordinateTransformations": [{"type": "sequence", "input": "s0", "output": "dfield",
                      "transformations": [{"type": "scale", "scale": [2.0, 1.0, 3.0, 1.0]},
                                          {"type": "translation", "translation": [1.0, 0.0, -2.0, 0.0]}]}]}]}]}
    m = np.array([[1.1, 0.1, 0.0, 2.0], [0.0, 0.9, 0.2, -1.0], [0.1, 0.0, 1.0, 0.5]])
    g.attrs["ome"] = {"version": "0.6.dev3", "scene": {
        "coordinateSystems": [{"name": "in", "axes": xyz}, {"name": "mid", "axes": xyz},
                              {"name": "out", "axes": xyz[::-1]}],
        "coordinateTransformations": [
            {"type": "displacements", "path": "coordinateTransformations/dfield", "input": {"name": "in"}, "output": {"name": "mid"}},
            {"type": "sequence", "input": {"name": "mid"}, "output": {"name": "out"},
             "transformations": [{"type": "affine", "affine": m.tolist()}, {"type": "mapAxis", "mapAxis": [2, 1, 0]}]},
        ]}}
    return tmp_path / "scene.zarr", field_xyz, m, np.array([2.0, 1.0, 3.0])


def test_other_tools_scene_with_a_field_and_axes_in_another_order(tmp_path):
    path, field_xyz, m, spacing = _xyz_scene(tmp_path)
    T = load_transform(path, input="in", output="out")
    assert isinstance(T, list) and [type(t) for t in T] == [Affine, DisplacementField]
    assert T[1].grid.spacing == (3.0, 1.0, 2.0) and T[1].grid.origin == (-2.0, 0.0, 1.0)  # z, y, x
    idx = np.array([[0, 0, 0], [4, 3, 2], [2, 1, 1]])  # voxel centres (x, y, z): no interpolation
    p_xyz = idx * spacing + np.array([1.0, 0.0, -2.0])
    mid = p_xyz + field_xyz[idx[:, 0], idx[:, 1], idx[:, 2]]
    out_xyz = mid @ m[:, :3].T + m[:, 3]
    got = lazyreg.transform_points(p_xyz[:, ::-1], T)  # lazyreg points are z, y, x
    np.testing.assert_allclose(got, out_xyz[:, ::-1], atol=1e-12)  # "out" lists z, y, x: same order
    with pytest.raises(LazyregError, match="several transformations.*pass input= and output="):
        load_transform(path)


def test_json_bydimension_inverseof_and_clear_errors(tmp_path):
    zyx = [{"name": n, "type": "space"} for n in "zyx"]
    doc = {"coordinateSystems": [{"name": "a", "axes": zyx}, {"name": "b", "axes": zyx}],
           "coordinateTransformations": [{"type": "inverseOf", "input": "a", "output": "b", "transformation": {
               "type": "byDimension", "transformations": [
                   {"input_axes": ["z"], "output_axes": ["z"], "transformation": {"type": "translation", "translation": [4.0]}},
                   {"input_axes": [1, 2], "output_axes": [2, 1], "transformation": {"type": "scale", "scale": [2.0, 0.5]}}]}}]}
    T = load_transform(_write_json(tmp_path / "t.json", doc))
    # byDimension maps (z, y, x) -> (z + 4, 0.5 x, 2 y); inverseOf inverts it
    np.testing.assert_allclose(T([5.0, 1.0, 6.0]), [1.0, 3.0, 2.0])
    doc["coordinateSystems"][1]["axes"] = [{"name": "c", "type": "channel"}] + zyx[1:]
    with pytest.raises(LazyregError, match="'b' has axes \\['c', 'y', 'x'\\].*'space' axes only"):
        load_transform(_write_json(tmp_path / "c.json", doc))
    bad = {"coordinateSystems": [{"name": "a", "axes": zyx}, {"name": "b", "axes": zyx}],
           "coordinateTransformations": [{"type": "coordinates", "path": "c", "input": "a", "output": "b"}]}
    with pytest.raises(LazyregError, match="'coordinates' transformations are not supported"):
        load_transform(_write_json(tmp_path / "k.json", bad))


def test_2d_field_is_one_plane_thick_and_z_passes_through(tmp_path):
    yx = [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    g = zarr.create_group(str(tmp_path / "s.zarr"), zarr_format=3)
    f = g.create_group("f")
    f.create_array("0", data=np.full((3, 4, 2), [1.0, -2.0]), chunks=(3, 4, 2))
    f.attrs["ome"] = {"version": "0.6.dev3", "multiscales": [{"coordinateSystems": [
        {"name": "f", "axes": yx + [{"name": "d", "type": "displacement"}]}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0], "input": "0", "output": "f"}]}]}]}
    g.attrs["ome"] = {"version": "0.6.dev3", "scene": {
        "coordinateSystems": [{"name": "a", "axes": yx}, {"name": "b", "axes": yx}],
        "coordinateTransformations": [{"type": "displacements", "path": "f", "input": {"name": "a"}, "output": {"name": "b"}}]}}
    D = load_transform(tmp_path / "s.zarr")
    np.testing.assert_allclose(D([[0.0, 1.0, 1.0], [0.4, 1.0, 1.0], [3.0, 1.0, 1.0]]),
                               [[0.0, 2.0, -1.0], [0.4, 2.0, -1.0], [3.0, 1.0, 1.0]])


# --- bigstream: bare (z, y, x, 3) arrays ------------------------------------------------------------------


def test_bigstream_zarr_v2_deform_array_needs_spacing(tmp_path):
    D = _field()
    arr = zarr.create_array(str(tmp_path / "deform.zarr"), shape=D.values.shape, chunks=(2, 5, 6, 3), dtype="float32", zarr_format=2)
    arr[...] = D.values
    F = load_transform(tmp_path / "deform.zarr", spacing=D.grid.spacing, origin=D.grid.origin)
    assert isinstance(F, DisplacementField) and F.is_lazy and F.grid == D.grid
    np.testing.assert_allclose(F(POINTS), D(POINTS), atol=1e-5)  # float32 on disk
    with pytest.raises(LazyregError, match=r"^spacing: .*deform\.zarr is a bare array .*pass spacing=\(z, y, x\)"):
        load_transform(tmp_path / "deform.zarr")
    zarr.create_array(str(tmp_path / "img.zarr"), shape=(4, 5, 6), dtype="float32")
    with pytest.raises(LazyregError, match=r"shape \(4, 5, 6\); a displacement field array must be \(z, y, x, 3\)"):
        load_transform(tmp_path / "img.zarr", spacing=1.0)


def test_bigstream_n5_deform_dataset(tmp_path):
    D = _field()
    meta = {"dimensions": [3, 6, 5, 4], "blockSize": [3, 6, 5, 2], "dataType": "float64", "compression": {"type": "raw"}}
    store = ts.open({"driver": "n5", "kvstore": f"file://{tmp_path}/f.n5/deform", "metadata": meta}, create=True).result()
    store.T.write(D.values).result()  # numpy (z, y, x, 3) as bigstream writes through zarr's N5Store
    F = load_transform(tmp_path / "f.n5" / "deform", spacing=D.grid.spacing, origin=D.grid.origin)
    np.testing.assert_allclose(F(POINTS), D(POINTS), atol=1e-12)


def test_spacing_or_input_where_they_do_not_apply(tmp_path):
    p = save_transform(Affine.identity(), tmp_path / "a.txt")
    with pytest.raises(LazyregError, match="^spacing: .*not a bare"):
        load_transform(p, spacing=1.0)
    with pytest.raises(LazyregError, match="^input: .*no NGFF coordinateTransformations"):
        load_transform(p, input="fixed", output="moving")
