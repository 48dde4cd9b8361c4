"""Tests for lazyreg.images: coordinates, grids, validation and masks."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import lazyreg
from lazyreg import LazyregError
from lazyreg.images import Grid, check_mask, grid_of
from lazyreg.testing import count_tasks


def _img(shape=(4, 5, 6), spacing=(2.0, 0.5, 0.25), origin=(10.0, -3.0, 7.5)):
    return lazyreg.image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), spacing, origin)


def test_coords_are_voxel_centres_with_anisotropic_spacing_and_origin():
    img = _img()
    assert img.dims == ("z", "y", "x")
    np.testing.assert_allclose(img.z.values, 10.0 + 2.0 * np.arange(4))
    np.testing.assert_allclose(img.y.values, -3.0 + 0.5 * np.arange(5))
    np.testing.assert_allclose(img.x.values, 7.5 + 0.25 * np.arange(6))
    assert img.z.dtype == np.float64
    assert lazyreg.spacing(img) == (2.0, 0.5, 0.25)
    assert lazyreg.origin(img) == (10.0, -3.0, 7.5)


def test_scalar_spacing_and_origin_broadcast():
    img = lazyreg.image(np.zeros((2, 3, 4)), 1.5, 2.0)
    assert lazyreg.spacing(img) == (1.5, 1.5, 1.5)
    assert lazyreg.origin(img) == (2.0, 2.0, 2.0)


def test_slicing_moves_origin_keeps_spacing():
    img = _img()
    sub = img[1:3, 2:, ::2]
    assert lazyreg.origin(sub) == (12.0, -2.0, 7.5)
    assert lazyreg.spacing(sub) == (2.0, 0.5, 0.5)  # a step of 2 doubles the spacing
    # the same physical point holds the same value
    assert float(sub.sel(z=12.0, y=-2.0, x=8.0)) == float(img.sel(z=12.0, y=-2.0, x=8.0))


def test_length_one_axis_keeps_spacing():
    img = _img()
    one = img[2:3, 0:1, 3:4]
    assert one.shape == (1, 1, 1)
    assert lazyreg.spacing(one) == (2.0, 0.5, 0.25)
    assert lazyreg.origin(one) == (14.0, -3.0, 8.25)
    assert lazyreg.spacing(lazyreg.image(np.zeros((1, 1, 1)), (3, 2, 1))) == (3.0, 2.0, 1.0)


def test_length_one_axis_without_attrs_is_an_error():
    img = _img()[0:1]
    img.attrs.clear()
    with pytest.raises(LazyregError, match="axis 'z' has a single voxel"):
        lazyreg.spacing(img)


def test_dask_data_stays_lazy():
    calls = []

    def make():
        calls.append(1)
        return np.ones((4, 4, 4))

    arr = da.from_delayed(dask.delayed(make)(), shape=(4, 4, 4), dtype=float)
    with count_tasks() as c:
        img = lazyreg.image(arr, 1.0)
        lazyreg.validate_image(img)
        lazyreg.spacing(img), lazyreg.origin(img), grid_of(img)
        check_mask(img > 0, img, "mask")
    assert isinstance(img.data, da.Array)
    assert calls == [] and c.n == 0


def test_grid_without_data():
    g = lazyreg.grid((10, 20, 30), spacing=(2, 1, 1), origin=(5, 0, 0))
    assert g.shape == (10, 20, 30)
    assert lazyreg.spacing(g) == (2.0, 1.0, 1.0)
    assert lazyreg.origin(g) == (5.0, 0.0, 0.0)
    assert isinstance(g.data, da.Array)


def test_grid_dataclass_index_physical_round_trip():
    g = Grid((4, 5, 6), (2.0, 0.5, 0.25), (10.0, -3.0, 7.5))
    idx = np.array([[0, 0, 0], [3, 4, 5], [1.5, 2.25, 0.1]])
    np.testing.assert_allclose(g.to_index(g.to_physical(idx)), idx)
    np.testing.assert_allclose(g.to_physical([[1, 1, 1]]), [[12.0, -2.5, 7.75]])
    assert grid_of(_img()) == g
    assert lazyreg.Grid is Grid  # public
    lo, hi = g.extent  # first and last voxel centres
    np.testing.assert_array_equal(lo, [10.0, -3.0, 7.5])
    np.testing.assert_allclose(hi, [16.0, -1.0, 8.75])
    assert Grid((4, 5, 6), 2, 1) == Grid((4, 5, 6), (2.0, 2.0, 2.0), (1.0, 1.0, 1.0))  # broadcast, as floats
    for k, v in g.coords().items():
        np.testing.assert_array_equal(v, _img()[k].values)
    with pytest.raises(LazyregError, match="^spacing"):
        Grid((4, 5, 6), (1.0, 0.0, 1.0))
    with pytest.raises(LazyregError, match="^origin"):
        Grid((4, 5, 6), 1.0, (0.0, np.inf, 0.0))


def test_grid_image_needs_three_sizes():
    with pytest.raises(LazyregError, match=r"^shape: expected 3 sizes"):
        lazyreg.grid((10, 20), spacing=1.0)


# ---------------------------------------------------------------------------------- masks


def test_check_mask_accepts_boolean_and_integer_masks_on_the_grid():
    img = _img()
    assert check_mask(None, img, "fixed_mask") is None
    m = img > 5
    assert check_mask(m, img, "fixed_mask", "fixed") is m
    assert check_mask(m.astype(np.uint8), img, "fixed_mask") is not None
    lazy = lazyreg.image(da.ones(img.shape, dtype=bool, chunks=2), lazyreg.spacing(img), lazyreg.origin(img))
    assert check_mask(lazy, img, "fixed_mask") is lazy


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda img: np.ones(img.shape, bool), r"^moving_mask: expected an xarray.DataArray"),
        (lambda img: img.astype(np.float32), r"^moving_mask: expected a boolean mask .* got dtype float32"),
        (lambda img: (img > 0)[1:], r"^moving_mask: the mask's grid .* differs from the grid of moving"),
        (lambda img: lazyreg.image(np.ones(img.shape, bool), 1.0, lazyreg.origin(img)), r"grid of moving"),
        (lambda img: (img > 0).assign_coords(z=img.z.values + 0.5), r"grid of moving"),
    ],
)
def test_check_mask_names_the_mask_and_the_problem(make, message):
    img = _img()
    with pytest.raises(LazyregError, match=message):
        check_mask(make(img), img, "moving_mask", "moving")


@pytest.mark.parametrize(
    "data, message",
    [
        (np.zeros((3, 3)), "expected a 3D"),
        (np.zeros((2, 3, 3, 3)), "expected a 3D"),
        (np.zeros((0, 3, 3)), "empty"),
        (np.array([[["a"]]]), "numeric dtype"),
        (np.zeros((2, 2, 2), dtype=complex), "numeric dtype"),
    ],
)
def test_image_rejects_bad_arrays(data, message):
    with pytest.raises(LazyregError, match=message):
        lazyreg.image(data, 1.0)


@pytest.mark.parametrize("sp", [0, -1.0, (1, 0, 1), (1, 2), np.nan, "a"])
def test_image_rejects_bad_spacing(sp):
    with pytest.raises(LazyregError, match="spacing"):
        lazyreg.image(np.zeros((2, 2, 2)), sp)


def test_errors_are_value_errors():
    assert issubclass(LazyregError, ValueError)


def test_validate_names_argument_and_problem():
    good = _img()
    assert lazyreg.validate_image(good, "fixed") is good
    with pytest.raises(LazyregError, match=r"^moving: expected an xarray.DataArray"):
        lazyreg.validate_image(np.zeros((2, 2, 2)), "moving")
    with pytest.raises(LazyregError, match=r"^moving: expected 3 dims"):
        lazyreg.validate_image(xr.DataArray(np.zeros((2, 2)), dims=("y", "x")), "moving")
    with pytest.raises(LazyregError, match=r"^fixed: dims are \('x', 'y', 'z'\).*transpose"):
        lazyreg.validate_image(good.transpose("x", "y", "z"), "fixed")
    with pytest.raises(LazyregError, match=r"^fixed: dims are \('a', 'y', 'x'\)"):
        lazyreg.validate_image(good.rename(z="a"), "fixed")
    uneven = good.assign_coords(x=np.array([0, 1, 2, 4, 5, 6], dtype=float))
    with pytest.raises(LazyregError, match=r"^moving: coordinate 'x' is not evenly spaced"):
        lazyreg.validate_image(uneven, "moving")
    decreasing = good.assign_coords(y=good.y.values[::-1])
    with pytest.raises(LazyregError, match=r"coordinate 'y' is not increasing"):
        lazyreg.validate_image(decreasing, "moving")
    nocoord = good.drop_vars("z")
    with pytest.raises(LazyregError, match=r"coordinate 'z' is missing"):
        lazyreg.validate_image(nocoord, "moving")
    strings = xr.DataArray(np.full((2, 2, 2), "s"), dims=("z", "y", "x"), coords=_img((2, 2, 2)).coords)
    with pytest.raises(LazyregError, match=r"^moving: expected a real numeric dtype"):
        lazyreg.validate_image(strings, "moving")


@pytest.mark.parametrize("entry", ["align", "align_piecewise"])
def test_registration_of_a_multichannel_image_names_the_dims_and_how_to_select_one(entry):
    fixed = lazyreg.image(np.zeros((8, 8, 8)), 1.0)
    moving = xr.DataArray(np.zeros((2, 8, 8, 8)), dims=("c", "z", "y", "x"), coords={"c": ["dapi", "gfp"], **fixed.coords})
    with pytest.raises(LazyregError, match=r"moving: expected 3 dims .* \('c', 'z', 'y', 'x'\); .*select one c, e\.g\. moving\.sel\(c='dapi'\)"):
        getattr(lazyreg, entry)(fixed, moving, "affine")
