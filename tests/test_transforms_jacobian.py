"""Tests for lazyreg.transforms.jacobian: known determinants, folds, exact chunk borders, laziness."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk

from lazyreg import DisplacementField, LazyregError, spacing, origin
from lazyreg.testing import count_tasks
from lazyreg.transforms.jacobian import jacobian_determinant

SPACING = (2.0, 0.7, 1.3)
ORIGIN = (-3.0, 10.0, 4.5)
SHAPE = (9, 11, 10)


def _positions(shape=SHAPE, spacing_=SPACING, origin_=ORIGIN) -> np.ndarray:
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    return idx * np.asarray(spacing_) + np.asarray(origin_)


def _random_field(seed=0, shape=SHAPE) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=0.3, size=(*shape, 3))


def test_linear_field_has_the_determinant_of_its_matrix_everywhere():
    M = np.array([[1.1, 0.2, -0.1], [0.05, 0.9, 0.3], [-0.2, 0.1, 1.3]])
    c = np.array([5.0, 15.0, 12.0])
    x = _positions()
    u = (x - c) @ (M - np.eye(3)).T  # u(x) = (M - I)(x - c): D(x) = M (x - c) + c
    for values in (u, da.from_array(u, chunks=(4, 5, 3, 2))):
        J = jacobian_determinant(DisplacementField.from_array(values, SPACING, ORIGIN))
        assert J.dims == ("z", "y", "x") and J.shape == SHAPE and J.name == "jacobian_determinant"
        assert spacing(J) == pytest.approx(SPACING, rel=1e-12) and origin(J) == ORIGIN
        np.testing.assert_allclose(J.values, np.linalg.det(M), rtol=1e-12)  # edges included


def test_a_folding_field_has_negative_determinants_where_it_folds():
    x = _positions()
    u = np.zeros_like(x)
    k = 2 * np.pi / (10 * SPACING[2])
    u[..., 2] = 1.5 / k * np.sin(k * (x[..., 2] - ORIGIN[2]))  # d ux / dx = 1.5 cos(.): folds where cos < -2/3
    J = jacobian_determinant(DisplacementField.from_array(u, SPACING, ORIGIN)).values
    assert J.min() < -0.2 and J.max() > 2.0
    cos = np.cos(k * (x[..., 2] - ORIGIN[2]))
    interior = (slice(None), slice(None), slice(1, -1))
    np.testing.assert_array_equal(J[interior] < 0, (cos < -0.75)[interior])  # central differences damp a little


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("chunks", [(4, 5, 3, 3), (1, 4, 10, 1), (2, 11, 1, 3), (9, 11, 10, 3), (8, 3, 9, 2)])
def test_lazy_equals_eager_exactly_across_chunk_borders(chunks, dtype):
    u = _random_field().astype(dtype)
    eager = jacobian_determinant(DisplacementField.from_array(u, SPACING, ORIGIN))
    lazy = jacobian_determinant(DisplacementField.from_array(da.from_array(u, chunks=chunks), SPACING, ORIGIN))
    assert isinstance(lazy.data, da.Array) and isinstance(eager.data, np.ndarray)
    assert lazy.chunks == da.from_array(u, chunks=chunks).chunks[:3]
    assert lazy.dtype == eager.dtype == dtype
    np.testing.assert_array_equal(lazy.values, eager.values)
    np.testing.assert_array_equal(lazy.x.values, eager.x.values)


def test_matches_numpy_gradient_and_sitk_in_the_interior():
    u = _random_field(seed=3)
    J = jacobian_determinant(DisplacementField.from_array(u, SPACING, ORIGIN)).values
    grad = np.stack([np.gradient(u, SPACING[j], axis=j) for j in range(3)], axis=-1)  # [..., i, j] = d u_i / d x_j
    np.testing.assert_allclose(J, np.linalg.det(np.eye(3) + grad), rtol=1e-10, atol=1e-12)
    img = sitk.GetImageFromArray(np.ascontiguousarray(u[..., ::-1]), isVector=True)  # xyz vectors
    img.SetSpacing(SPACING[::-1])
    img.SetOrigin(ORIGIN[::-1])
    ref = sitk.GetArrayFromImage(sitk.DisplacementFieldJacobianDeterminant(img, True))
    np.testing.assert_allclose(J[1:-1, 1:-1, 1:-1], ref[1:-1, 1:-1, 1:-1], rtol=1e-5, atol=1e-6)


def test_single_voxel_axes_have_no_derivative():
    u = _random_field(seed=5, shape=(1, 6, 7))
    J = jacobian_determinant(DisplacementField.from_array(u, SPACING, ORIGIN)).values
    g = np.zeros((1, 6, 7, 3, 3))
    g[..., 1] = np.gradient(u, SPACING[1], axis=1)
    g[..., 2] = np.gradient(u, SPACING[2], axis=2)
    np.testing.assert_allclose(J, np.linalg.det(np.eye(3) + g), rtol=1e-12)
    lazy = jacobian_determinant(DisplacementField.from_array(da.from_array(u, chunks=(1, 2, 3, 3)), SPACING, ORIGIN))
    np.testing.assert_array_equal(lazy.values, J)


def test_building_computes_nothing():
    arr = da.from_array(_random_field(), chunks=(4, 5, 3, 3))
    with count_tasks() as tc:
        J = jacobian_determinant(DisplacementField.from_array(arr, SPACING, ORIGIN))
        _ = J[2:5].data
    assert tc.n == 0 and isinstance(J.data, da.Array)


def test_bad_input():
    with pytest.raises(LazyregError, match="^field: expected a lazyreg.DisplacementField, got ndarray"):
        jacobian_determinant(np.zeros((2, 2, 2, 3)))
    D = DisplacementField.from_array(np.zeros((2, 2, 2, 3)), 1.0)
    with pytest.raises(LazyregError, match="got DataArray"):
        jacobian_determinant(D.data)
