"""Tests for lazyreg.registration.features: blob detection, RANSAC and feature-based global alignment."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

import lazyreg
from _helpers import voxel_error
from lazyreg import LazyregError
from lazyreg.registration import features
from lazyreg.registration.blobs import blob_sigmas, detect_blobs, detect_factors
from lazyreg.registration.features import align_features, validate_options
from lazyreg.registration.ransac import ransac_affine
from lazyreg.transforms.affine import rotation_matrices
from lazyreg.data import phantom, synthetic_pair
from lazyreg.images import grid_of

SHAPE, SPACING = (64, 128, 128), (2.0, 1.0, 1.0)
CENTRE = np.array([63.0, 63.5, 63.5])





def affine(angles=(0, 0, 0), scale=(1, 1, 1), shear=0.0, shift=(0, 0, 0)) -> np.ndarray:
    """Rotation (degrees about z, y, x), shear and scale about the volume centre, then a shift."""
    lin = rotation_matrices(angles)
    lin = lin @ np.array([[1, shear, 0], [0, 1, shear], [0, 0, 1]]) @ np.diag(scale)
    m = np.eye(4)
    m[:3, :3] = lin
    m[:3, 3] = CENTRE - lin @ CENTRE + np.asarray(shift, dtype=float)
    return m


# shifts of about 10% of the 128-unit field of view; different moving grids; a little noise
CASES = {
    "rot15-scale8": dict(
        matrix=affine((15, 0, 0), (1.08, 1.0, 1.0), 0.0, (12, -10, 8)),
        moving_spacing=(1.6, 1.2, 1.2), moving_origin=(-6.0, -5.0, -8.0), moving_shape=(90, 120, 120),
    ),
    "oblique-shear": dict(
        matrix=affine((10, -8, 6), (1.06, 0.94, 1.03), 0.05, (-12, 12, -10)),
        moving_spacing=(2.5, 0.9, 0.9), moving_origin=(4.0, -3.0, 5.0), moving_shape=(56, 150, 150),
    ),
    "rot15-about-x": dict(
        matrix=affine((-5, 4, 15), (0.93, 1.05, 1.0), 0.03, (10, 13, -12)),
        moving_spacing=(2.0, 1.0, 1.0), moving_origin=(0.0, 0.0, 0.0), moving_shape=SHAPE,
    ),
}


@pytest.fixture(scope="module")
def pairs():
    cache = {}

    def get(name):
        if name not in cache:
            kw = CASES[name]
            cache[name] = synthetic_pair(SHAPE, SPACING, seed=len(cache) + 11, noise=0.03, **kw)
        return cache[name]

    return get


# --------------------------------------------------------------------------------------------
# detect_blobs


def _blob_volume(shape, spacing, centres, sigma):
    """Gaussian blobs, round in physical space, at physical ``centres``."""
    g = lazyreg.image(np.zeros(shape), spacing)
    coords = [g.coords[d].values for d in ("z", "y", "x")]
    zz, yy, xx = np.meshgrid(*coords, indexing="ij")
    v = np.zeros(shape)
    for c in centres:
        v += np.exp(-((zz - c[0]) ** 2 + (yy - c[1]) ** 2 + (xx - c[2]) ** 2) / (2 * sigma**2))
    return v


def test_detect_blobs_is_anisotropy_aware_and_subvoxel():
    spacing = (2.0, 0.7, 0.7)
    centres = np.array([[20.3, 12.2, 30.9], [40.8, 30.4, 11.6], [15.1, 33.7, 35.2]])
    v = _blob_volume((32, 64, 64), spacing, centres, sigma=3.0)
    blobs = detect_blobs(v, spacing, blob_sizes=(4, 10), nspots=10)
    assert blobs.shape[1] == 4
    assert np.all(np.diff(blobs[:, 3]) <= 0)  # strongest first
    found = blobs[:, :3] * np.asarray(spacing)
    assert len(found) == 3
    d = np.linalg.norm(found[:, None] - centres[None], axis=-1).min(axis=0)
    assert np.all(d < 0.5)  # physical units, i.e. < 0.25 z-voxel


def test_detect_blobs_on_a_binned_copy_stays_accurate():
    # large blobs: detection runs on a 2x2x2 or coarser block average, positions map back
    spacing = (1.0, 1.0, 1.0)
    centres = np.array([[30.4, 40.6, 50.2], [70.1, 30.3, 80.7]])
    v = _blob_volume((100, 110, 120), spacing, centres, sigma=8.0)
    sig, _ = blob_sigmas((10, 20), 1.0, 6)
    assert detect_factors(np.asarray(spacing), sig[1]).min() >= 2
    blobs = detect_blobs(v, spacing, blob_sizes=(10, 20))
    d = np.linalg.norm(blobs[:, None, :3] - centres[None], axis=-1).min(axis=0)
    assert np.all(d < 0.75)


def test_detect_blobs_mask_and_nspots():
    spacing = (1.0, 1.0, 1.0)
    centres = np.array([[10.0, 10.0, 10.0], [10.0, 30.0, 30.0], [30.0, 10.0, 30.0], [30.0, 30.0, 10.0]])
    v = _blob_volume((40, 40, 40), spacing, centres[:1], 2.0) + 2 * _blob_volume((40, 40, 40), spacing, centres[1:2], 2.0)
    v += 3 * _blob_volume((40, 40, 40), spacing, centres[2:3], 2.0) + 4 * _blob_volume((40, 40, 40), spacing, centres[3:], 2.0)
    top2 = detect_blobs(v, spacing, blob_sizes=(2, 6), nspots=2)
    np.testing.assert_allclose(top2[:, :3], centres[[3, 2]], atol=0.3)
    mask = np.zeros(v.shape, bool)
    mask[:20] = True
    inside = detect_blobs(v, spacing, blob_sizes=(2, 6), mask=mask)
    np.testing.assert_allclose(inside[:, :3], centres[[1, 0]], atol=0.3)


# --------------------------------------------------------------------------------------------
# ransac_affine


def _point_sets(seed=0, n=200, outlier_fraction=0.5, noise=0.0):
    rng = np.random.default_rng(seed)
    truth = affine((12, -7, 9), (1.07, 0.95, 1.02), 0.04, (9, -11, 6))
    p = rng.uniform(0, 128, (n, 3))
    q = p @ truth[:3, :3].T + truth[:3, 3] + rng.normal(0, noise, (n, 3))
    bad = rng.permutation(n)[: int(n * outlier_fraction)]
    q[bad] = rng.uniform(0, 128, (len(bad), 3))
    return p, q, truth, bad


def test_ransac_recovers_an_exact_affine_with_half_outliers():
    p, q, truth, bad = _point_sets()
    m, inl = ransac_affine(p, q, align_threshold=2.0, seed=1)
    assert np.abs(m - truth).max() < 1e-6
    expected = np.ones(len(p), bool)
    expected[bad] = False
    # an outlier may by chance land within the threshold of its true position
    assert inl[expected].all() and inl.sum() <= expected.sum() + 2


def test_ransac_is_deterministic_for_a_seed_and_least_squares_on_noise():
    p, q, truth, _ = _point_sets(seed=3, noise=0.3)
    a = ransac_affine(p, q, align_threshold=1.5, seed=7, max_iterations=300)
    b = ransac_affine(p, q, align_threshold=1.5, seed=7, max_iterations=300)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    pts = np.random.default_rng(0).uniform(0, 128, (500, 3))
    err = np.linalg.norm(pts @ (a[0] - truth)[:3, :3].T + (a[0] - truth)[:3, 3], axis=1)
    assert err.mean() < 0.3


def test_ransac_diagonal_constraint_rejects_large_scalings():
    p, q, truth, _ = _point_sets(outlier_fraction=0.2)
    q = q * 1.5  # diagonal 1.5 * ~1.0
    m, _ = ransac_affine(p, q, align_threshold=2.0)
    assert abs(m[0, 0] - 1.5 * truth[0, 0]) < 1e-6
    try:
        _, inl = ransac_affine(p, q, align_threshold=2.0, diagonal_constraint=0.25, max_iterations=2000)
    except LazyregError as e:
        assert str(e).startswith("align_threshold: RANSAC found no affine")
    else:
        assert inl.sum() < 10  # only chance agreements among the outliers
    m, inl = ransac_affine(p, q, align_threshold=2.0, diagonal_constraint=0.6)
    assert abs(m[0, 0] - 1.5 * truth[0, 0]) < 1e-6 and inl.sum() >= 160


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fixed_points=np.zeros((3, 3)), moving_points=np.zeros((3, 3))), "^fixed_points: need at least 4"),
        (dict(fixed_points=np.zeros((5, 3)), moving_points=np.zeros((6, 3))), "^moving_points: expected as many"),
        (dict(fixed_points=np.zeros((5, 2)), moving_points=np.zeros((5, 2))), r"^fixed_points: expected an \(N, 3\)"),
        (dict(align_threshold=0.0), "^align_threshold"),
        (dict(max_iterations=0), "^max_iterations"),
        (dict(diagonal_constraint=-1), "^diagonal_constraint"),
    ],
)
def test_ransac_bad_inputs(kwargs, match):
    p, q, _, _ = _point_sets(n=20)
    args = dict(fixed_points=p, moving_points=q, align_threshold=1.0)
    args.update(kwargs)
    with pytest.raises(LazyregError, match=match):
        ransac_affine(args.pop("fixed_points"), args.pop("moving_points"), **args)


# --------------------------------------------------------------------------------------------
# align_features on synthetic pairs


@pytest.mark.parametrize("name", list(CASES))
def test_align_features_recovers_known_affines(pairs, name):
    fixed, moving, truth = pairs(name)
    assert voxel_error(np.eye(4), truth, fixed) > 10
    _T = align_features(fixed, moving, seed=0)
    m, report = np.asarray(_T.matrix), _T.report
    err = voxel_error(m, truth, fixed)
    assert err < 1.5, (err, report)
    assert report["fallback"] is None
    assert report["fixed_blobs"] >= 50 and report["moving_blobs"] >= 50
    assert report["inliers"] >= 30
    assert 0 < report["residual"] < report["align_threshold"]
    for key in ("seconds_detect", "seconds_describe", "seconds_match", "seconds_ransac"):
        assert report[key] >= 0


def test_align_features_is_deterministic_and_accepts_dask_images(pairs):
    fixed, moving, truth = pairs("rot15-scale8")
    _T = align_features(fixed, moving, seed=4)
    a, ra = np.asarray(_T.matrix), _T.report
    _T = align_features(fixed.chunk({"z": 32, "y": 64, "x": 64}), moving.chunk({"z": 30}), seed=4)
    b, rb = np.asarray(_T.matrix), _T.report
    np.testing.assert_array_equal(a, b)
    assert ra["inliers"] == rb["inliers"]


def _centroids(img, spacing):
    """Centroids (physical) of a crude segmentation: bright connected components."""
    v = ndimage.gaussian_filter(img.values.astype(float), 1.0)
    labels, n = ndimage.label(v > np.percentile(v, 97))
    c = np.array(ndimage.center_of_mass(v, labels, np.arange(1, n + 1)))
    return grid_of(img).to_physical(c)


def test_align_features_with_user_points(pairs):
    fixed, moving, truth = pairs("oblique-shear")
    fp, mp = _centroids(fixed, SPACING), _centroids(moving, None)
    outside = np.array([[1e4, 0.0, 0.0]])
    _T = align_features(fixed, moving, fixed_points=np.vstack([fp, outside]), moving_points=mp)
    m, report = np.asarray(_T.matrix), _T.report
    assert report["fixed_blobs"] == len(fp) and report["fixed_points_outside"] == 1
    assert voxel_error(m, truth, fixed) < 1.5


def test_align_features_with_masks(pairs):
    fixed, moving, truth = pairs("rot15-about-x")
    fmask = np.zeros(fixed.shape, bool)
    fmask[:, :, :96] = True
    _T = align_features(fixed, moving, fixed_mask=lazyreg.image(fmask, SPACING))
    m, report = np.asarray(_T.matrix), _T.report
    assert voxel_error(m, truth, fixed) < 1.5
    _T = align_features(fixed, moving)
    _, full = np.asarray(_T.matrix), _T.report
    assert report["fixed_blobs"] < full["fixed_blobs"]


def test_initial_scale_is_undone_and_result_is_complete(pairs):
    fixed, moving, truth = pairs("rot15-scale8")
    # a rough starting transform: right scale, 3 degrees and 4 units off
    rough = truth @ affine((3, 0, 0), shift=(4, -3, 2))
    _T = align_features(fixed, moving, initial=rough)
    m, report = np.asarray(_T.matrix), _T.report
    assert voxel_error(m, truth, fixed) < 1.5
    assert report["start"] == "global matches"


def test_initial_rescues_when_descriptors_find_no_consistent_matches(pairs, monkeypatch):
    fixed, moving, truth = pairs("rot15-scale8")
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    monkeypatch.setattr(features, "match_all", lambda *a, **k: empty)
    rough = truth @ affine((2, 0, 0), shift=(3, -2, 2))
    _T = align_features(fixed, moving, initial=rough)
    m, report = np.asarray(_T.matrix), _T.report
    assert report["start"] == "initial" and report["matches"] == 0
    assert voxel_error(m, truth, fixed) < 1.5


# --------------------------------------------------------------------------------------------
# failures and fallback


def _sparse_pair():
    fixed = phantom((32, 64, 64), SPACING, seed=1, n_blobs=2, n_tubes=0)
    moving = phantom((32, 64, 64), SPACING, seed=2, n_blobs=2, n_tubes=0)
    return fixed, moving


def test_too_few_blobs_raises_with_counts_and_the_option_to_change():
    fixed, moving = _sparse_pair()
    with pytest.raises(LazyregError, match=r"^blob_sizes: found only \d+ blobs in fixed and \d+ in moving.*nspots"):
        align_features(fixed, moving, blob_sizes=(2, 6))


def test_fallback_identity_returns_initial_and_records_the_reason():
    fixed, moving = _sparse_pair()
    _T = align_features(fixed, moving, blob_sizes=(2, 6), fallback="identity")
    m, report = np.asarray(_T.matrix), _T.report
    np.testing.assert_array_equal(m, np.eye(4))
    assert report["fallback"].startswith("blob_sizes: found only")
    start = affine(shift=(1, 2, 3))
    _T = align_features(fixed, moving, blob_sizes=(2, 6), fallback="identity", initial=start)
    m, report = np.asarray(_T.matrix), _T.report
    np.testing.assert_array_equal(m, start)


def test_no_matches_raises_with_counts(pairs, monkeypatch):
    fixed, moving, _ = pairs("rot15-scale8")
    empty = (np.zeros(0, int), np.zeros(0, int), np.zeros(0))
    monkeypatch.setattr(features, "match_all", lambda *a, **k: empty)
    monkeypatch.setattr(features, "match_guided", lambda *a, **k: empty)
    with pytest.raises(LazyregError, match=r"^match_threshold: 0 matches .* \d+ blobs in fixed and \d+ in moving.*lower match_threshold"):
        align_features(fixed, moving)
    _T = align_features(fixed, moving, fallback="identity")
    m, report = np.asarray(_T.matrix), _T.report
    np.testing.assert_array_equal(m, np.eye(4))
    assert "match_threshold" in report["fallback"]


@pytest.mark.parametrize("blob_sizes", [(6, 20), (2, 8)])
def test_unrelated_images_are_not_aligned_by_chance(blob_sizes):
    fixed = phantom(SHAPE, SPACING, seed=0, noise=0.03)
    moving = phantom(SHAPE, SPACING, seed=7, noise=0.03)
    with pytest.raises(LazyregError, match=r"^match_threshold: RANSAC found \d+ inliers"):
        align_features(fixed, moving, blob_sizes=blob_sizes)


@pytest.fixture(scope="module")
def small():
    fixed, moving, _ = synthetic_pair((24, 48, 48), SPACING, seed=5)
    return fixed, moving


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(blob_sizes=(0, 5)), "^blob_sizes: blob radii must be positive"),
        (dict(blob_sizes=(-2, 5)), "^blob_sizes: blob radii must be positive"),
        (dict(blob_sizes=(10, 5)), "^blob_sizes: the smallest radius 10 is larger"),
        (dict(blob_sizes=(5,)), "^blob_sizes: expected two numbers"),
        (dict(nspots=0), "^nspots"),
        (dict(match_threshold=1.5), "^match_threshold"),
        (dict(align_threshold=-1.0), "^align_threshold"),
        (dict(diagonal_constraint=-0.1), "^diagonal_constraint"),
        (dict(fallback="warn"), "^fallback: expected None"),
        (dict(seed=1.5), "^seed"),
        (dict(initial=np.eye(3)), "^initial: matrix: expected a 4x4"),
        (dict(fixed_points=np.zeros((10, 2))), r"^fixed_points: expected an \(N, 3\)"),
        (dict(moving_points=np.full((10, 3), 1e5)), "^moving_points: none of the 10 points lies inside"),
    ],
)
def test_bad_options_fail_up_front(small, kwargs, match):
    fixed, moving = small
    with pytest.raises(LazyregError, match=match):
        align_features(fixed, moving, **kwargs)


def test_bad_masks(small):
    fixed, moving = small
    with pytest.raises(LazyregError, match="^fixed_mask: the mask is empty"):
        align_features(fixed, moving, fixed_mask=np.zeros(fixed.shape, bool))
    with pytest.raises(LazyregError, match=r"^moving_mask: shape \(24, 48, 47\) differs"):
        align_features(fixed, moving, moving_mask=np.ones((24, 48, 47), bool))


def test_bad_images(small):
    fixed, moving = small
    zeros = lazyreg.image(np.zeros(fixed.shape, np.uint16), SPACING)
    with pytest.raises(LazyregError, match="^fixed: image is all zero"):
        align_features(zeros, moving)
    nan = fixed.astype(np.float32).copy()
    nan.values[3, 4, 5] = np.nan
    with pytest.raises(LazyregError, match="^moving: contains 1 NaN"):
        align_features(fixed, nan)
    tiny = lazyreg.image(np.random.default_rng(0).random((4, 8, 8)), SPACING)
    with pytest.raises(LazyregError, match="^moving: the image .* is smaller than the smallest blob diameter 12"):
        align_features(fixed, tiny)
    with pytest.raises(LazyregError, match="^fixed: expected an xarray.DataArray"):
        align_features(fixed.values, moving)


def test_validate_options_checks_values_without_data():
    validate_options("ransac", {"blob_sizes": (4, 12), "match_threshold": 0.6, "fallback": "identity"})
    with pytest.raises(LazyregError, match="^blob_sizes: the smallest radius"):
        validate_options("ransac", {"blob_sizes": (12, 4)})
    with pytest.raises(LazyregError, match="^num_sigma_max"):
        validate_options("ransac", {"num_sigma_max": 0})


# --------------------------------------------------------------------------------------------
# slower robustness checks


@pytest.mark.slow
@pytest.mark.parametrize("angle", [20.0, 30.0])
def test_large_rotations_and_scale(angle):
    rng = np.random.default_rng(int(angle))
    axis = rng.normal(size=3)
    m_true = affine(tuple(axis / np.linalg.norm(axis) * angle), (1.1, 0.92, 1.05), 0.04, (11, -12, 9))
    fixed, moving, truth = synthetic_pair(SHAPE, SPACING, matrix=m_true, seed=21, noise=0.05,
                                          moving_spacing=(2.2, 1.1, 1.1), moving_origin=(-4, 5, -6),
                                          moving_shape=(64, 128, 128))
    _T = align_features(fixed, moving)
    m, report = np.asarray(_T.matrix), _T.report
    assert voxel_error(m, truth, fixed) < 1.0, report
