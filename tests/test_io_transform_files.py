"""Tests for lazyreg.io.transform_files: text and ITK round trips, overwrite refusal, fields."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk

from lazyreg import Affine, DisplacementField, LazyregError
from lazyreg.io.transform_files import load_affine, load_transform, save_affine, save_transform

POINTS = np.random.default_rng(0).uniform(-40, 40, size=(20, 3))


def _affine() -> Affine:
    return Affine.from_parameters(rotation=(25.0, -40.0, 70.0), scale=(1.2, 0.8, 1.5), shear=(0.1, -0.2, 0.3),
                                  translation=(3.0, -7.5, 11.0), center=(12.0, -5.0, 30.0))


def _field(seed=1) -> DisplacementField:
    v = np.random.default_rng(seed).normal(size=(4, 5, 6, 3))
    return DisplacementField.from_array(v, spacing=(2.0, 1.5, 1.25), origin=(-3.0, 2.0, 5.0))


def _sitk_map(t, points):
    return np.array([t.TransformPoint(p[::-1].tolist())[::-1] for p in points])


def test_text_round_trip_is_exact_and_documented(tmp_path):
    A = _affine()
    p = save_affine(A, tmp_path / "a.txt")
    text = p.read_text()
    assert text.startswith("#") and "(z, y, x)" in text and "fixed" in text
    np.testing.assert_array_equal(np.loadtxt(p), np.asarray(A))  # plain numpy can read it
    B = load_affine(p)
    np.testing.assert_array_equal(np.asarray(B), np.asarray(A))
    np.testing.assert_array_equal(np.asarray(load_transform(p)), np.asarray(A))
    assert [f.name for f in tmp_path.iterdir()] == ["a.txt"]  # no temporary files left


@pytest.mark.parametrize("suffix", [".tfm", ".mat", ".h5"])
def test_itk_round_trip(tmp_path, suffix):
    A = _affine()
    p = save_affine(A, tmp_path / f"a{suffix}")
    t = sitk.ReadTransform(str(p))
    np.testing.assert_allclose(_sitk_map(t, POINTS), A(POINTS), atol=1e-9)  # other ITK tools see the same map
    np.testing.assert_allclose(np.asarray(load_affine(p)), np.asarray(A), rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.asarray(load_transform(p)), np.asarray(A), rtol=0, atol=1e-12)


def test_itk_text_detected_by_header_whatever_the_suffix(tmp_path):
    t = sitk.Euler3DTransform((1.0, 2.0, 3.0), 0.2, -0.3, 0.4, (5.0, 6.0, 7.0))
    p = tmp_path / "euler.txt"
    sitk.WriteTransform(t, str(p))
    assert p.read_text().startswith("#Insight Transform File")
    np.testing.assert_allclose(load_affine(p)(POINTS), _sitk_map(t, POINTS), atol=1e-9)
    forced = save_affine(_affine(), tmp_path / "forced.txt", format="itk")
    assert forced.read_text().startswith("#Insight Transform File")
    np.testing.assert_allclose(np.asarray(load_affine(forced)), np.asarray(_affine()), atol=1e-12)


def test_itk_composite_file(tmp_path):
    A = _affine()
    comp = sitk.CompositeTransform([sitk.TranslationTransform(3, (1.0, 2.0, 3.0)), A.to_sitk()])
    p = tmp_path / "comp.tfm"
    sitk.WriteTransform(comp, str(p))
    np.testing.assert_allclose(load_affine(p)(POINTS), _sitk_map(comp, POINTS), atol=1e-9)


@pytest.mark.parametrize("name", ["a.txt", "a.tfm", "a.mat"])
def test_overwrite_is_refused_and_existing_file_untouched(tmp_path, name):
    p = tmp_path / name
    save_affine(Affine.from_translation(1.0), p)
    before = p.read_bytes()
    with pytest.raises(LazyregError, match="already exists.*overwrite=True"):
        save_affine(_affine(), p)
    with pytest.raises(LazyregError, match="already exists"):
        save_transform(_affine(), p)
    assert p.read_bytes() == before
    save_affine(_affine(), p, overwrite=True)
    np.testing.assert_allclose(np.asarray(load_affine(p)), np.asarray(_affine()), atol=1e-12)
    assert sorted(f.name for f in tmp_path.iterdir()) == [name]


def test_lazy_affine_is_computed_when_saved(tmp_path):
    calls = []

    def solve():
        calls.append(1)
        return np.asarray(_affine())

    lazy = Affine(da.from_delayed(dask.delayed(solve, pure=False)(), shape=(4, 4), dtype=float))
    p = save_affine(lazy, tmp_path / "lazy.txt")
    assert len(calls) == 1
    np.testing.assert_array_equal(np.asarray(load_affine(p)), np.asarray(_affine()))


def test_bad_files_and_arguments(tmp_path):
    with pytest.raises(LazyregError, match="no such file"):
        load_affine(tmp_path / "missing.txt")
    (tmp_path / "small.txt").write_text("1 0 0\n0 1 0\n0 0 1\n")
    with pytest.raises(LazyregError, match=r"4x4.*\(3, 3\)"):
        load_affine(tmp_path / "small.txt")
    (tmp_path / "junk.txt").write_text("hello world\n")
    with pytest.raises(LazyregError, match="could not read"):
        load_affine(tmp_path / "junk.txt")
    (tmp_path / "row.txt").write_text("1 0 0 0\n0 1 0 0\n0 0 1 0\n1 0 0 1\n")
    with pytest.raises(LazyregError, match="last row"):
        load_affine(tmp_path / "row.txt")
    sitk.WriteTransform(sitk.BSplineTransform(3), str(tmp_path / "bspline.tfm"))
    with pytest.raises(LazyregError, match="not linear"):
        load_affine(tmp_path / "bspline.tfm")
    (tmp_path / "broken.tfm").write_text("not a transform\n")
    with pytest.raises(LazyregError, match="SimpleITK could not read"):
        load_affine(tmp_path / "broken.tfm")
    with pytest.raises(LazyregError, match=r"affine: .*Affine\(matrix\)"):
        save_affine(np.eye(4), tmp_path / "m.txt")
    with pytest.raises(LazyregError, match="directory"):
        save_affine(Affine.identity(), tmp_path)
    with pytest.raises(LazyregError, match="does not exist"):
        save_affine(Affine.identity(), tmp_path / "nope" / "a.txt")
    with pytest.raises(LazyregError, match="format"):
        save_affine(Affine.identity(), tmp_path / "a.txt", format="json")


@pytest.mark.parametrize("name", ["field.mha", "field.nii.gz", "field.nrrd", "field.h5", "field.tfm"])
def test_displacement_field_round_trip(tmp_path, name):
    D = _field()
    p = save_transform(D, tmp_path / name)
    back = load_transform(p)
    assert isinstance(back, DisplacementField) and back.grid.shape == D.grid.shape
    np.testing.assert_allclose(back.values, D.values, atol=1e-12)
    pts = D.grid.to_physical(np.random.default_rng(2).uniform(-1, 6, size=(50, 3)))
    np.testing.assert_allclose(back(pts), D(pts), atol=1e-9)
    with pytest.raises(LazyregError, match="already exists"):
        save_transform(D, p)
    assert sorted(f.name for f in tmp_path.iterdir()) == [name]


def test_field_to_text_is_refused_and_mixed_composite_gives_a_list(tmp_path):
    D, A = _field(), _affine()
    with pytest.raises(LazyregError, match="DisplacementField is written to"):
        save_transform(D, tmp_path / "field.txt")
    with pytest.raises(LazyregError, match="transform: expected"):
        save_transform("field", tmp_path / "field.mha")
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(Affine.from_translation(1.0).to_sitk())
    comp.AddTransform(A.to_sitk())
    comp.AddTransform(D.to_sitk())
    p = tmp_path / "comp.h5"
    sitk.WriteTransform(comp, str(p))
    loaded = load_transform(p)
    assert isinstance(loaded, list) and [type(t) for t in loaded] == [Affine, DisplacementField]
    from lazyreg import transform_points

    pts = D.grid.to_physical(np.random.default_rng(3).uniform(-1, 6, size=(50, 3)))
    np.testing.assert_allclose(transform_points(pts, loaded), _sitk_map(comp, pts), atol=1e-9)


def test_field_ome_zarr_round_trip_streams_lazily(tmp_path):
    import dask.array as da

    from lazyreg import DisplacementField, load_transform, save_transform

    v = np.random.default_rng(4).normal(size=(5, 6, 7, 3))
    D = DisplacementField.from_array(da.from_array(v, chunks=(2, 3, 4, 3)), (2.0, 1.5, 1.0), (1.0, -2.0, 3.0))
    p = save_transform(D, tmp_path / "field.ome.zarr")
    E = load_transform(p)
    assert isinstance(E, DisplacementField) and E.is_lazy
    assert E.grid == D.grid
    np.testing.assert_array_equal(E.values, v)
    pts = np.array([[3.0, 0.5, 6.2], [9.0, 4.0, 1.0]])
    np.testing.assert_allclose(E(pts), D(pts))
    stamp = (p / "zarr.json").stat().st_mtime_ns
    with pytest.raises(LazyregError, match="exists"):
        save_transform(D, p)
    assert (p / "zarr.json").stat().st_mtime_ns == stamp
