"""Tests for lazyreg.DisplacementField: validation, SimpleITK's interpolation convention, laziness."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk
import xarray as xr

from lazyreg import DisplacementField, LazyregError
from lazyreg.images import Grid
from lazyreg.transforms.field import interpolate_field
from lazyreg.testing import count_tasks

SPACING = (2.0, 0.7, 1.3)
ORIGIN = (-3.0, 10.0, 4.5)
SHAPE = (5, 6, 7)


def _field(seed=0, shape=SHAPE, spacing=SPACING, origin=ORIGIN) -> DisplacementField:
    v = np.random.default_rng(seed).normal(scale=2.0, size=(*shape, 3))
    return DisplacementField.from_array(v, spacing, origin)


def _sitk_map(t: sitk.Transform, points_zyx: np.ndarray) -> np.ndarray:
    return np.array([t.TransformPoint(p[::-1].tolist())[::-1] for p in points_zyx])


def _test_points(grid: Grid, seed=1) -> np.ndarray:
    """Random points inside, on and near the buffer border (index -0.5 / n - 0.5), and outside."""
    rng = np.random.default_rng(seed)
    n = np.asarray(grid.shape)
    ci = rng.uniform(-1.5, n + 0.5, size=(3000, 3))
    for ax in range(3):
        k = rng.integers(0, len(ci), 400)
        ci[k, ax] = rng.choice([-0.5, n[ax] - 0.5], len(k)) + rng.choice([-1e-7, 0.0, 1e-7, -0.2, 0.2], len(k))
    return grid.to_physical(ci)


# ---------------------------------------------------------------------------------- construction


def test_from_array_builds_the_expected_dataarray():
    D = _field()
    assert D.data.dims == ("z", "y", "x", "vector")
    assert list(D.data.coords["vector"].values) == ["z", "y", "x"]
    assert D.grid.shape == SHAPE and D.grid.origin == ORIGIN
    np.testing.assert_allclose(D.grid.spacing, SPACING, rtol=1e-14)  # grid_of reads it from the coordinates
    np.testing.assert_allclose(D.data.x.values, ORIGIN[2] + np.arange(SHAPE[2]) * SPACING[2])
    assert not D.is_lazy and D.chunks is None and D.compute() is D
    assert "in memory" in repr(D) and "(5, 6, 7)" in repr(D)


def test_bad_fields_give_clear_errors():
    good = _field().data
    with pytest.raises(LazyregError, match=r"^field: dims are \('z', 'y', 'x'\), expected"):
        DisplacementField(good.isel(vector=0))
    with pytest.raises(LazyregError, match="transpose"):
        DisplacementField(good.transpose("vector", "z", "y", "x"))
    with pytest.raises(LazyregError, match="'vector' dim must have length 3"):
        DisplacementField(good.isel(vector=[0, 1]))
    with pytest.raises(LazyregError, match="real numbers"):
        DisplacementField(good.astype(complex))
    with pytest.raises(LazyregError, match="real numbers"):
        DisplacementField(good > 0)
    with pytest.raises(LazyregError, match="field: expected an xarray.DataArray"):
        DisplacementField(good.values)
    with pytest.raises(LazyregError, match="'vector' coordinate"):
        DisplacementField(good.assign_coords(vector=["a", "b", "c"]))
    uneven = good.assign_coords(x=good.x.values ** 2)
    with pytest.raises(LazyregError, match="^field: coordinate 'x' is not evenly spaced"):
        DisplacementField(uneven)
    nan = good.copy()
    nan[0, 0, 0, 0] = np.nan
    with pytest.raises(LazyregError, match="NaN"):
        DisplacementField(nan)
    with pytest.raises(LazyregError, match=r"values: expected shape \(Z, Y, X, 3\)"):
        DisplacementField.from_array(np.zeros((4, 4, 4, 2)), 1.0)
    with pytest.raises(LazyregError, match="spacing"):
        DisplacementField.from_array(np.zeros((4, 4, 4, 3)), -1.0)
    with pytest.raises(LazyregError, match="^values: expected real numbers"):
        DisplacementField.from_array(np.full((4, 4, 4, 3), "a"), 1.0)


def test_integer_values_are_cast_and_vector_coordinate_reordered():
    D = DisplacementField.from_array(np.ones((2, 2, 2, 3), dtype=np.int16), 1.0)
    assert D.data.dtype == np.float32
    assert DisplacementField.from_array(np.ones((2, 2, 2, 3), dtype=np.int64), 1.0).data.dtype == np.float64
    v = np.zeros((2, 2, 2, 3))
    v[..., 2] = 5.0  # dx
    xyz = xr.DataArray(
        v[..., ::-1],
        dims=("z", "y", "x", "vector"),
        coords={"z": [0.0, 1.0], "y": [0.0, 1.0], "x": [0.0, 1.0], "vector": ["x", "y", "z"]},
    )
    D = DisplacementField(xyz)
    assert list(D.data.vector.values) == ["z", "y", "x"]
    np.testing.assert_array_equal(D([0.0, 0.0, 0.0]), [0.0, 0.0, 5.0])


# ---------------------------------------------------------------------------------- interpolation


def test_values_at_voxel_centres_are_exact():
    D = _field()
    idx = np.array([[0, 0, 0], [4, 5, 6], [2, 3, 1]])
    np.testing.assert_allclose(D.displacement_at(D.grid.to_physical(idx)), D.values[tuple(idx.T)], atol=1e-12)


def test_call_matches_sitk_displacement_field_transform_inside_border_and_outside():
    D = _field()
    pts = _test_points(D.grid)
    ours = D(pts)
    ref = _sitk_map(D.to_sitk(), pts)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)
    # the sample really covers the three regimes
    ci = D.grid.to_index(pts)
    n = np.asarray(D.grid.shape)
    inside = np.all((ci >= -0.5) & (ci < n - 0.5), axis=1)
    clamped = inside & np.any((ci < 0) | (ci > n - 1), axis=1)
    assert (~inside).sum() > 100 and clamped.sum() > 100 and (inside & ~clamped).sum() > 100
    np.testing.assert_array_equal(ours[~inside], pts[~inside])  # outside: not displaced


def test_outside_convention_on_one_axis_by_hand():
    v = np.zeros((1, 1, 3, 3))
    v[0, 0, :, 2] = [1.0, 2.0, 4.0]  # dx along x
    D = DisplacementField.from_array(v, spacing=1.0)
    x = np.array([-0.6, -0.5, -0.2, 0.0, 0.5, 1.5, 2.0, 2.4, 2.5, 3.0])
    d = D.displacement_at(np.c_[np.zeros_like(x), np.zeros_like(x), x])[:, 2]
    np.testing.assert_allclose(d, [0.0, 1.0, 1.0, 1.0, 1.5, 3.0, 4.0, 4.0, 0.0, 0.0])


def test_interpolate_field_on_a_block_equals_the_full_field():
    D = _field(shape=(8, 9, 10))
    full = D.grid
    pts = _test_points(full, seed=3)
    ref = interpolate_field(D.values, full, pts)
    lo, hi = np.array([2, 3, 1]), np.array([6, 8, 10])  # a block; keep points whose support lies in it
    block = Grid(tuple(hi - lo), full.spacing, full.to_physical(lo))
    ci = np.clip(full.to_index(pts), 0, np.asarray(full.shape) - 1)
    in_full = np.all((full.to_index(pts) >= -0.5) & (full.to_index(pts) < np.asarray(full.shape) - 0.5), axis=1)
    ok = in_full & np.all((np.floor(ci) >= lo) & (np.ceil(ci) <= hi - 1), axis=1)
    assert ok.sum() > 50
    vals = D.values[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    got = interpolate_field(vals, block, pts[ok], full_grid=full)
    np.testing.assert_allclose(got, ref[ok], atol=1e-12)
    # points outside the full field are zero even if the block cannot hold them
    far = full.to_physical(np.array([[-3.0, 0, 0], [0, 0, 50.0]]))
    np.testing.assert_array_equal(interpolate_field(vals, block, far, full_grid=full), 0.0)
    miss = full.to_physical(np.array([[0.0, 0.0, 0.0]]))
    with pytest.raises(LazyregError, match="does not cover"):
        interpolate_field(vals, block, miss, full_grid=full)
    with pytest.raises(LazyregError, match="does not match grid shape"):
        interpolate_field(vals, full, pts)
    with pytest.raises(LazyregError, match="voxel centre"):
        interpolate_field(vals, Grid(block.shape, full.spacing, np.asarray(block.origin) + 0.1), pts, full_grid=full)


# ---------------------------------------------------------------------------------- SimpleITK


def test_to_sitk_and_from_sitk_round_trip():
    D = _field(seed=5)
    t = D.to_sitk()
    img = t.GetDisplacementField()
    assert img.GetSize() == SHAPE[::-1] and img.GetOrigin() == ORIGIN[::-1]
    np.testing.assert_allclose(img.GetSpacing(), SPACING[::-1], rtol=1e-14)
    for back in (DisplacementField.from_sitk(t), DisplacementField.from_sitk(sitk.Transform(D.to_sitk())),
                 DisplacementField.from_sitk(img)):
        assert back.grid.shape == D.grid.shape and back.grid.origin == D.grid.origin
        np.testing.assert_allclose(back.grid.spacing, D.grid.spacing, rtol=1e-14)
        np.testing.assert_array_equal(back.values, D.values)
    with pytest.raises(LazyregError, match="Affine.from_sitk"):
        DisplacementField.from_sitk(sitk.Euler3DTransform())
    rotated = sitk.Image(img)
    rotated.SetDirection((0, 1, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(LazyregError, match="direction"):
        DisplacementField.from_sitk(rotated)


# ---------------------------------------------------------------------------------- laziness


def test_lazy_field_builds_without_computing():
    calls: list = []
    v = np.random.default_rng(7).normal(size=(*SHAPE, 3))

    def make():
        calls.append(1)
        return v

    lazy = da.from_delayed(dask.delayed(make, pure=False)(), shape=v.shape, dtype=v.dtype)
    with count_tasks() as tc:
        D = DisplacementField.from_array(lazy.rechunk((3, 3, 4, 3)), SPACING, ORIGIN)
        D2 = DisplacementField(D.data)
        _ = repr(D2), D2.grid, D2.chunks
    assert tc.n == 0 and calls == []
    assert D.is_lazy and "lazy" in repr(D) and D.chunks == ((3, 2), (3, 3), (4, 3), (3,))
    C = D.compute()
    assert not C.is_lazy and len(calls) == 1
    np.testing.assert_array_equal(C.values, v)
    pts = _test_points(D.grid)[:50]
    np.testing.assert_allclose(D(pts), C(pts))
