"""Tests for lazyreg.data: seeded, deterministic, physically placed, and the stated truth is the truth."""

from __future__ import annotations

import numpy as np
import pytest

import lazyreg
from lazyreg import Affine, DisplacementField, LazyregError, apply_transform, transform_points
from lazyreg.data import default_affine, phantom, smooth_displacement, synthetic_pair, warped_pair
from lazyreg.images import Grid, grid_of
from lazyreg.metrics import pearson
from lazyreg.testing import assert_images_allclose

SHAPE = (20, 40, 44)
SPACING = (2.0, 1.0, 1.1)
ORIGIN = (3.0, -2.0, 5.0)


def _overlap(fixed, moving, transforms, margin=2):
    """Mask image of the fixed voxels that ``transforms`` map ``margin`` voxels inside ``moving``."""
    gf, gm = grid_of(fixed), grid_of(moving)
    pts = gf.to_physical(np.indices(gf.shape).reshape(3, -1).T)
    idx = gm.to_index(transform_points(pts, transforms))
    inside = np.all((idx >= margin) & (idx <= np.asarray(gm.shape) - 1 - margin), axis=1).reshape(gf.shape)
    assert inside.mean() > 0.2  # enough of the pair overlaps for the correlation to mean something
    return lazyreg.image(inside, gf.spacing, gf.origin)


def _similarity(fixed, moving, transforms):
    """Correlation of fixed with moving resampled through ``transforms``, where they overlap."""
    return pearson(apply_transform(fixed, moving, transforms), fixed, _overlap(fixed, moving, transforms))


# ---------------------------------------------------------------------------------- phantom


def test_phantom_is_deterministic_for_a_seed_and_differs_between_seeds():
    a = phantom(SHAPE, SPACING, ORIGIN, seed=4, noise=0.05)
    assert_images_allclose(a, phantom(SHAPE, SPACING, ORIGIN, seed=4, noise=0.05), rtol=0)
    b = phantom(SHAPE, SPACING, ORIGIN, seed=5, noise=0.05)
    assert pearson(a, b) < 0.5
    clean = phantom(SHAPE, SPACING, ORIGIN, seed=4)
    assert not np.array_equal(a.values, clean.values)  # noise is added, deterministically
    assert pearson(a, clean) > 0.8


def test_phantom_grid_dtype_and_content():
    img = phantom(SHAPE, SPACING, ORIGIN, seed=1)
    assert img.dims == ("z", "y", "x") and img.shape == SHAPE and img.dtype == np.uint16
    assert lazyreg.spacing(img) == SPACING and lazyreg.origin(img) == ORIGIN
    np.testing.assert_allclose(img.x.values, ORIGIN[2] + SPACING[2] * np.arange(SHAPE[2]))
    v = img.values
    assert 0.01 < np.count_nonzero(v) / v.size < 0.9  # sparse objects on a dark background
    assert v.max() <= np.iinfo(np.uint16).max / 8 * 1.7  # about 1/8 of the range for one object
    f = phantom(SHAPE, SPACING, ORIGIN, seed=1, dtype="float32")
    assert f.dtype == np.float32 and 0.3 < float(f.max()) < 1.7
    np.testing.assert_array_equal(np.rint(f.values * (np.iinfo(np.uint16).max / 8)), v)
    assert np.count_nonzero(phantom(SHAPE, SPACING, seed=1, n_blobs=0, n_tubes=0).values) == 0


def test_phantom_objects_move_with_the_origin_and_scale_with_the_extent():
    """Objects are drawn over the grid's physical extent: another origin translates them with it."""
    a = phantom(SHAPE, SPACING, (0.0, 0.0, 0.0), seed=2)
    b = phantom(SHAPE, SPACING, ORIGIN, seed=2)
    np.testing.assert_array_equal(a.values, b.values)
    assert lazyreg.origin(b) == ORIGIN
    # half the voxels at twice the spacing cover the same extent: about the same picture, coarser
    fine = phantom((20, 40, 40), 1.0, seed=3, dtype="float32")
    coarse = phantom((10, 20, 20), 2.0, seed=3, dtype="float32")
    assert np.isclose(lazyreg.spacing(coarse)[0], 2.0)
    assert pearson(fine[::2, ::2, ::2].assign_attrs(spacing=(2.0, 2.0, 2.0)), coarse) > 0.5


# ---------------------------------------------------------------------------------- default_affine


def test_default_affine_is_a_moderate_affine_about_the_centre():
    m = default_affine(SHAPE, SPACING, ORIGIN)
    assert m.shape == (4, 4)
    np.testing.assert_array_equal(m[3], [0, 0, 0, 1])
    assert np.linalg.det(m[:3, :3]) == pytest.approx(1.05 * 0.97 * 1.02, rel=1e-12)
    sv = np.linalg.svd(m[:3, :3], compute_uv=False)
    assert 0.95 < sv.min() and sv.max() < 1.1  # 5% scales, no shear beyond the rotations
    g = Grid(SHAPE, SPACING, ORIGIN)
    lo, hi = g.extent
    centre = (lo + hi) / 2
    np.testing.assert_allclose(Affine(m)(centre), centre + (hi - lo) * [0.04, -0.05, 0.06], atol=1e-12)
    angle = np.degrees(np.arccos((np.trace(m[:3, :3] / np.cbrt(np.linalg.det(m[:3, :3]))) - 1) / 2))
    assert 5 < angle < 15


def test_default_affine_follows_the_origin_in_physical_units():
    """Moving the grid by ``o`` conjugates the affine by that translation: A_o(p + o) = A_0(p) + o."""
    m0 = default_affine(SHAPE, SPACING)
    mo = default_affine(SHAPE, SPACING, ORIGIN)
    pts = np.random.default_rng(0).uniform(-20, 60, size=(50, 3))
    np.testing.assert_allclose(Affine(mo)(pts + ORIGIN), Affine(m0)(pts) + ORIGIN, atol=1e-10)
    np.testing.assert_allclose(mo[:3, :3], m0[:3, :3])
    # anisotropic spacing: the shifts scale with the physical extent of each axis
    iso = default_affine(SHAPE, 1.0)
    assert not np.allclose(iso[:3, 3], m0[:3, 3])


# ---------------------------------------------------------------------------------- synthetic_pair


def test_synthetic_pair_is_deterministic_and_seeds_differ():
    a = synthetic_pair(SHAPE, SPACING, ORIGIN, seed=3, noise=0.02)
    b = synthetic_pair(SHAPE, SPACING, ORIGIN, seed=3, noise=0.02)
    c = synthetic_pair(SHAPE, SPACING, ORIGIN, seed=4, noise=0.02)
    for x, y in zip(a[:2], b[:2]):
        assert_images_allclose(x, y, rtol=0)
    np.testing.assert_array_equal(a[2], b[2])
    assert pearson(a[0], c[0]) < 0.5 and pearson(a[1], c[1]) < 0.5
    np.testing.assert_array_equal(a[2], default_affine(SHAPE, SPACING, ORIGIN))
    assert_images_allclose(a[0], phantom(SHAPE, SPACING, ORIGIN, seed=3, noise=0.02), rtol=0)


def test_synthetic_pair_truth_maps_moving_onto_fixed():
    fixed, moving, m = synthetic_pair(SHAPE, SPACING, ORIGIN, seed=3, dtype="float32")
    truth = Affine(m)
    assert _similarity(fixed, moving, [truth]) > 0.99
    assert _similarity(fixed, moving, []) < 0.8
    assert _similarity(fixed, moving, [Affine.from_translation((0.0, 2.0, 0.0)) @ truth]) < 0.95
    assert _similarity(fixed, moving, [truth.inverse()]) < 0.8  # the direction is fixed -> moving


def test_synthetic_pair_on_another_moving_grid_and_a_given_matrix():
    m_in = Affine.from_parameters(rotation=(15.0, 0.0, -5.0), translation=(2.0, -3.0, 1.0), center=(22.0, 17.0, 28.0))
    fixed, moving, m = synthetic_pair(
        SHAPE, SPACING, ORIGIN, matrix=np.asarray(m_in), seed=6, dtype="float32",
        moving_shape=(30, 40, 60), moving_spacing=(1.5, 1.3, 0.9), moving_origin=(-4.0, 1.0, 2.0),
    )
    np.testing.assert_array_equal(m, np.asarray(m_in))
    g = grid_of(moving)
    assert g.shape == (30, 40, 60) and g.spacing == (1.5, 1.3, 0.9) and g.origin == (-4.0, 1.0, 2.0)
    assert _similarity(fixed, moving, [Affine(m)]) > 0.99
    assert _similarity(fixed, moving, [Affine.from_translation((0.0, 0.0, 2.0)) @ Affine(m)]) < 0.95


# ---------------------------------------------------------------------------------- warped_pair


def test_warped_pair_truth_is_affine_after_field():
    fixed, moving, m, d = warped_pair(SHAPE, SPACING, ORIGIN, amplitude=4.0, seed=2, dtype="float32")
    assert d.shape == SHAPE + (3,) and d.dtype == np.float64
    np.testing.assert_array_equal(m, default_affine(SHAPE, SPACING, ORIGIN))
    assert_images_allclose(moving, phantom(SHAPE, SPACING, ORIGIN, seed=2, dtype="float32"), rtol=0)
    field = DisplacementField.from_array(d, SPACING, ORIGIN)
    A = Affine(m)
    assert _similarity(fixed, moving, [A, field]) > 0.99
    assert _similarity(fixed, moving, [A]) < 0.9  # the deformation is real
    assert _similarity(fixed, moving, [field, A]) < 0.98  # and the order is [A, field]


def test_warped_pair_displacement_is_smooth_displacement_at_the_fixed_voxel_centres():
    fixed, _, _, d = warped_pair(SHAPE, SPACING, ORIGIN, amplitude=3.0, seed=1)
    g = grid_of(fixed)
    pts = g.to_physical(np.indices(SHAPE).reshape(3, -1).T)
    np.testing.assert_allclose(d.reshape(-1, 3), smooth_displacement(pts, g, 3.0), rtol=1e-6, atol=1e-6)
    a = warped_pair(SHAPE, SPACING, ORIGIN, amplitude=3.0, seed=1, noise=0.03)
    b = warped_pair(SHAPE, SPACING, ORIGIN, amplitude=3.0, seed=1, noise=0.03)
    assert_images_allclose(a[0], b[0], rtol=0)
    assert pearson(a[0], warped_pair(SHAPE, SPACING, ORIGIN, amplitude=3.0, seed=9)[0]) < 0.5
    flat = warped_pair(SHAPE, SPACING, ORIGIN, amplitude=0.0, seed=1)
    assert np.abs(flat[3]).max() == 0
    assert _similarity(flat[0], flat[1], [Affine(flat[2])]) > 0.99  # no deformation: the affine alone


# ---------------------------------------------------------------------------------- smooth_displacement


def test_smooth_displacement_scales_with_amplitude_and_follows_the_grid():
    g = Grid(SHAPE, SPACING, ORIGIN)
    pts = g.to_physical(np.random.default_rng(1).uniform(0, np.asarray(SHAPE) - 1, size=(500, 3)))
    d = smooth_displacement(pts, g, 2.0)
    assert d.shape == (500, 3)
    np.testing.assert_allclose(smooth_displacement(pts, g, 5.0), 2.5 * d, rtol=1e-12)
    np.testing.assert_array_equal(smooth_displacement(pts, g, 0.0), 0.0)
    peaks = np.abs(smooth_displacement(g.to_physical(np.indices(SHAPE).reshape(3, -1).T), g, 1.0)).max(0)
    assert np.all(peaks > 0.5) and np.all(peaks <= np.array([0.6, 1.2, 1.0]) + 1e-12)
    # a pattern over the grid's extent, in physical units: moving the grid moves the pattern
    shifted = Grid(SHAPE, SPACING, (0.0, 0.0, 0.0))
    np.testing.assert_allclose(smooth_displacement(pts - ORIGIN, shifted, 2.0), d, atol=1e-12)
    np.testing.assert_allclose(smooth_displacement(pts[0], g, 2.0), d[0])
    # smooth: neighbouring voxel centres differ by a small part of the amplitude
    grid_d = smooth_displacement(g.to_physical(np.indices(SHAPE).reshape(3, -1).T), g, 1.0).reshape(SHAPE + (3,))
    assert max(np.abs(np.diff(grid_d, axis=ax)).max() for ax in range(3)) < 0.5


# ---------------------------------------------------------------------------------- bad arguments


@pytest.mark.parametrize(
    "call, argname",
    [
        (lambda: phantom((4, 4)), "shape"),
        (lambda: phantom((4, 0, 4)), "shape"),
        (lambda: phantom((4, 4, 4), spacing=(1.0, -1.0, 1.0)), "spacing"),
        (lambda: phantom((4, 4, 4), origin=(0.0, np.nan, 0.0)), "origin"),
        (lambda: phantom((4, 4, 4), seed=-1), "seed"),
        (lambda: phantom((4, 4, 4), seed=1.5), "seed"),
        (lambda: phantom((4, 4, 4), noise=-0.1), "noise"),
        (lambda: phantom((4, 4, 4), n_blobs=-2), "n_blobs"),
        (lambda: phantom((4, 4, 4), n_tubes=2.5), "n_tubes"),
        (lambda: phantom((4, 4, 4), dtype="complex64"), "dtype"),
        (lambda: phantom((4, 4, 4), dtype="not a dtype"), "dtype"),
        (lambda: synthetic_pair((4, 4, 4), matrix=np.eye(3)), "matrix"),
        (lambda: synthetic_pair((4, 4, 4), matrix=np.diag([1.0, 0.0, 1.0, 1.0])), "matrix"),
        (lambda: synthetic_pair((4, 4, 4), moving_spacing=0.0), "moving_spacing"),
        (lambda: synthetic_pair((4, 4, 4), moving_shape=(4, 4)), "moving_shape"),
        (lambda: synthetic_pair((4, 4, 4), moving_origin="here"), "moving_origin"),
        (lambda: warped_pair((4, 4, 4), amplitude=np.inf), "amplitude"),
        (lambda: warped_pair((4, 4, 4), matrix=np.full((4, 4), np.nan)), "matrix"),
        (lambda: default_affine((4, 4, 4), spacing=0.0), "spacing"),
        (lambda: smooth_displacement(np.zeros((5, 2)), Grid((4, 4, 4), 1.0), 1.0), "points"),
        (lambda: smooth_displacement(np.zeros((5, 3)), (4, 4, 4), 1.0), "g"),
        (lambda: smooth_displacement(np.zeros((5, 3)), Grid((4, 4, 4), 1.0), -1.0), "amplitude"),
    ],
)
def test_bad_arguments_name_the_argument(call, argname):
    with pytest.raises(LazyregError, match=rf"^{argname}: "):
        call()
