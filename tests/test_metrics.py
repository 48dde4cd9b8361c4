"""Tests for lazyreg.metrics: one Pearson correlation (streamed and in memory) and transform_error."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np
import pytest

import lazyreg
from lazyreg import Affine, DisplacementField, LazyregError
from lazyreg.images import Grid
from lazyreg.metrics import correlation_from_sums, pearson, pearson_arrays, transform_error
from lazyreg.testing import count_tasks

SHAPE = (8, 9, 10)
SPACING = (2.0, 1.0, 0.5)
ORIGIN = (1.0, -3.0, 4.0)


def _pair(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    a = rng.random(SHAPE)
    b = a + rng.random(SHAPE)
    return a.astype(dtype), b.astype(dtype)


def _img(values, chunks=None):
    data = values if chunks is None else da.from_array(values, chunks=chunks)
    return lazyreg.image(data, SPACING, ORIGIN)


def _corr(a, b):
    return np.corrcoef(np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64))[0, 1]


# ---------------------------------------------------------------------------------- pearson


@pytest.mark.parametrize(
    "chunks_a, chunks_b",
    [(None, None), (4, None), (4, 3), ((3, 4, 5), (8, 1, 10)), (((1, 7), (2, 7), (5, 5)), 2)],
)
def test_pearson_equals_numpy_on_any_chunking(chunks_a, chunks_b):
    a, b = _pair()
    assert pearson(_img(a, chunks_a), _img(b, chunks_b)) == pytest.approx(_corr(a, b), rel=1e-12)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float32])
def test_pearson_of_other_dtypes_is_accumulated_in_float64(dtype):
    a, b = _pair(1)
    a, b = (a * 100).astype(dtype), (b * 100).astype(dtype)
    assert pearson(_img(a, 4), _img(b)) == pytest.approx(_corr(a, b), rel=1e-9)
    assert pearson_arrays(a, b) == pytest.approx(_corr(a, b), rel=1e-9)


@pytest.mark.parametrize("mask_chunks", [None, 3, (8, 9, 1)])
def test_pearson_with_a_mask_equals_numpy_on_the_masked_voxels(mask_chunks):
    a, b = _pair(2)
    m = a > 0.5
    got = pearson(_img(a, 4), _img(b, (2, 9, 5)), _img(m, mask_chunks))
    assert got == pytest.approx(_corr(a[m], b[m]), rel=1e-12)
    assert abs(got - _corr(a, b)) > 1e-3  # the mask really selects


def test_pearson_is_symmetric_and_invariant_to_affine_changes_of_scale():
    a, b = _pair(3)
    A, B = _img(a, 4), _img(b)
    r = pearson(A, B)
    assert pearson(B, A) == pytest.approx(r, rel=1e-12)
    assert pearson(3 * A + 7, B) == pytest.approx(r, rel=1e-12)
    assert pearson(-A, B) == pytest.approx(-r, rel=1e-12)
    assert pearson(A, A) == pytest.approx(1.0)


def test_pearson_streams_chunk_by_chunk():
    a, b = _pair(4)
    A, B = _img(a, 4), _img(b, 4)
    with count_tasks() as c:
        pearson(A, B)
    assert c.n > A.data.npartitions  # a task per chunk, not one over the whole image


def test_pearson_is_nan_for_constant_images_and_masks_that_make_them_constant():
    a, _ = _pair(5)
    const = np.full(SHAPE, 3.0)
    assert math.isnan(pearson(_img(a, 4), _img(const)))
    assert math.isnan(pearson(_img(const, 4), _img(const)))
    one = np.zeros(SHAPE, bool)
    one[2, 3, 4] = True
    assert math.isnan(pearson(_img(a), _img(a + 1), _img(one)))  # a single voxel: no variance


def test_pearson_refuses_grids_that_differ_and_empty_masks():
    a, b = _pair(6)
    A = _img(a)
    for other in (
        lazyreg.image(b, SPACING),  # another origin
        lazyreg.image(b, (1.0, 1.0, 0.5), ORIGIN),  # another spacing
        lazyreg.image(b[:, :, :9], SPACING, ORIGIN),  # another shape
    ):
        with pytest.raises(LazyregError, match="^b: grid .* differs"):
            pearson(A, other)
    with pytest.raises(LazyregError, match="^mask: shape"):
        pearson(A, _img(b), lazyreg.image(np.ones((2, 2, 2), bool), SPACING, ORIGIN))
    with pytest.raises(LazyregError, match="^mask: selects no voxel"):
        pearson(A, _img(b), _img(np.zeros(SHAPE, bool)))
    with pytest.raises(LazyregError, match="^a: "):
        pearson(a, _img(b))


# ---------------------------------------------------------------------------------- pearson_arrays


def test_pearson_arrays_equals_numpy_with_and_without_where(monkeypatch):
    a, b = _pair(7)
    w = b > 1.0
    assert pearson_arrays(a, b) == pytest.approx(_corr(a, b), rel=1e-12)
    assert pearson_arrays(a, b, where=w) == pytest.approx(_corr(a[w], b[w]), rel=1e-12)
    # accumulated over slices: any slice length gives the same figure
    monkeypatch.setattr(lazyreg.metrics, "SLICE_VALUES", 7)
    assert pearson_arrays(a, b, where=w) == pytest.approx(_corr(a[w], b[w]), rel=1e-12)
    assert pearson_arrays(a, b) == pytest.approx(pearson(_img(a, 3), _img(b)), rel=1e-12)


def test_pearson_arrays_nan_and_errors():
    a, b = _pair(8)
    assert math.isnan(pearson_arrays(a, np.ones_like(a)))
    assert math.isnan(pearson_arrays(a, b, where=np.zeros(SHAPE, bool)))
    w = np.zeros(SHAPE, bool)
    w[0, 0, 0] = True
    assert math.isnan(pearson_arrays(a, b, where=w))  # one value
    with pytest.raises(LazyregError, match="^b: shape"):
        pearson_arrays(a, b[:, :, :5])


# ---------------------------------------------------------------------------------- correlation_from_sums


def test_correlation_from_sums_equals_numpy_and_is_nan_when_undefined():
    rng = np.random.default_rng(9)
    x = rng.normal(size=1000)
    y = 0.3 * x + rng.normal(size=1000)
    sums = (x.size, x.sum(), y.sum(), x @ x, y @ y, x @ y)
    assert correlation_from_sums(*sums) == pytest.approx(_corr(x, y), rel=1e-10)
    assert correlation_from_sums(*sums[:2], sums[2] * -1, sums[3], sums[4], -sums[5]) == pytest.approx(
        -_corr(x, y), rel=1e-10
    )  # y -> -y
    c = np.full(50, 1e6 + 0.1)  # a constant large value: round-off must not pass for variance
    assert math.isnan(correlation_from_sums(c.size, c.sum(), x[:50].sum(), c @ c, x[:50] @ x[:50], c @ x[:50]))
    assert math.isnan(correlation_from_sums(0, 0, 0, 0, 0, 0))
    assert correlation_from_sums(2, 1.0, 1.0, 1.0, 1.0, 1.0 + 1e-12) == 1.0  # round-off above 1 is clipped


# ---------------------------------------------------------------------------------- transform_error


def test_transform_error_of_a_known_shift_in_voxels_and_physical_units():
    g = Grid((12, 16, 20), SPACING, ORIGIN)
    shift = Affine.from_translation((4.0, 0.0, 0.0))  # 4 physical units along z = 2 voxels
    err = transform_error(shift, Affine.identity(), g)
    assert err.shape == (3 * 4 * 5,)  # every 4th voxel along each axis
    np.testing.assert_allclose(err, 2.0)
    np.testing.assert_allclose(transform_error(shift, Affine.identity(), g, units="physical"), 4.0)
    diag = Affine.from_translation((2.0, 3.0, 2.0))  # 1, 3 and 4 voxels
    np.testing.assert_allclose(transform_error(diag, [], g), np.sqrt(1 + 9 + 16))
    np.testing.assert_allclose(transform_error(diag, [], g, units="physical"), np.sqrt(4 + 9 + 4))
    assert transform_error(shift, shift, g, step=1).shape == (12 * 16 * 20,)
    np.testing.assert_array_equal(transform_error(shift, shift, g), 0.0)


def test_transform_error_of_a_rotation_grows_with_the_distance_from_its_centre():
    g = Grid((10, 10, 10), 1.0)
    rot = Affine.from_parameters(rotation=(90.0, 0.0, 0.0), center=(0.0, 0.0, 0.0))
    err = transform_error(rot, Affine.identity(), g, step=1, units="physical")
    pts = g.to_physical(np.indices(g.shape).reshape(3, -1).T)
    np.testing.assert_allclose(err, np.sqrt(2) * np.hypot(pts[:, 1], pts[:, 2]), atol=1e-9)


def test_transform_error_of_lists_and_fields():
    g = Grid((8, 8, 8), SPACING, ORIGIN)
    D = DisplacementField.from_array(np.broadcast_to([1.0, 0.0, 0.0], (8, 8, 8, 3)), SPACING, ORIGIN)
    A = Affine.from_translation((0.0, 0.0, 1.5))  # 3 voxels in x
    np.testing.assert_allclose(transform_error(D, [], g), 0.5)  # 1 unit along z: half a voxel
    np.testing.assert_allclose(transform_error([A, D], [], g), np.hypot(0.5, 3.0))
    lazy = Affine(da.from_array(np.asarray(A.matrix), chunks=4))
    np.testing.assert_allclose(transform_error([lazy, D], [D, A], g), 0.0, atol=1e-12)
    with pytest.raises(LazyregError, match="^units"):
        transform_error(A, [], g, units="mm")
