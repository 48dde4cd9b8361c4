"""Tests for lazyreg.registration.search.random_affine_search."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import lazyreg
from _helpers import voxel_error
from lazyreg import LazyregError
from lazyreg.registration.search import random_affine_search
from lazyreg.transforms.affine import rotation_matrices
from lazyreg.data import synthetic_pair
from lazyreg.images import grid_of





def _rotated_pair(angles, shift=(4.0, -6.0, 5.0), seed=2):
    shape, spacing = (64, 128, 128), (2.0, 1.0, 1.0)
    centre = np.array([63.0, 63.5, 63.5])
    m = np.eye(4)
    m[:3, :3] = rotation_matrices(angles)
    m[:3, 3] = centre - m[:3, :3] @ centre + np.asarray(shift)
    return synthetic_pair(shape, spacing, matrix=m, seed=seed)


def test_one_rotation_convention_public_and_itk():
    # the search draws rotations with the public convention: +90 degrees about z maps x onto y
    R = rotation_matrices([90.0, 0, 0])
    np.testing.assert_allclose(R @ [0, 0, 1], [0, 1, 0], atol=1e-12)
    angles = np.random.default_rng(0).uniform(-40, 40, (5, 3))
    Rs = rotation_matrices(angles)
    np.testing.assert_allclose(Rs @ Rs.transpose(0, 2, 1), np.repeat(np.eye(3)[None], 5, 0), atol=1e-12)
    for a, Rk in zip(angles, Rs):
        np.testing.assert_allclose(lazyreg.Affine.from_parameters(rotation=a).matrix[:3, :3], Rk, atol=1e-12)
        e = sitk.Euler3DTransform()
        e.SetComputeZYX(True)
        e.SetRotation(*np.deg2rad(a[::-1]))
        np.testing.assert_allclose(np.asarray(e.GetMatrix()).reshape(3, 3)[::-1, ::-1], Rk, atol=1e-12)


def test_recovers_a_20_degree_rotation_roughly():
    # rotations as in lazyreg.Affine.from_parameters (this is the rotation the search was tuned on
    # before its convention was unified with the public one, which turns the other way)
    fixed, moving, truth = _rotated_pair((-20.0, -5.0, 4.0))
    _T = random_affine_search(fixed, moving, seed=0)
    est, report = np.asarray(_T.matrix), _T.report
    assert voxel_error(np.eye(4), truth, fixed) > 10
    assert voxel_error(est, truth, fixed) < 5.0  # close enough for an affine refinement
    assert report["score"] > report["score_initial"] + 0.3


def test_deterministic_for_a_seed():
    fixed, moving, _ = _rotated_pair((8.0, 0.0, 0.0))
    _T = random_affine_search(fixed, moving, candidates=100, refine_rounds=0, seed=3)
    a, _ = np.asarray(_T.matrix), _T.report
    _T = random_affine_search(fixed, moving, candidates=100, refine_rounds=0, seed=3)
    b, _ = np.asarray(_T.matrix), _T.report
    np.testing.assert_array_equal(a, b)


def test_bad_inputs():
    fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
    with pytest.raises(LazyregError, match="candidates"):
        random_affine_search(fixed, moving, candidates=0)
    with pytest.raises(LazyregError, match="max_rotation"):
        random_affine_search(fixed, moving, max_rotation=-5)
    with pytest.raises(LazyregError, match="max_scale"):
        random_affine_search(fixed, moving, max_scale=1.5)
    with pytest.raises(LazyregError, match="constant"):
        random_affine_search(fixed, moving * 0)
    nan = fixed.astype(float).copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(LazyregError, match="NaN"):
        random_affine_search(nan, moving)
    with pytest.raises(LazyregError, match="fixed_mask: the mask is empty"):
        random_affine_search(fixed, moving, fixed_mask=lazyreg.image(np.zeros(fixed.shape, bool), lazyreg.spacing(fixed)))
