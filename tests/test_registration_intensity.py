"""Moving's intensities mapped onto fixed's: a gain and offset robust to noise, over valid voxels only."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lazyreg.registration.intensity import linear_map, matched_histogram

SHAPE = (32, 48, 48)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    """Smooth structures of varied brightness (as tissue), no noise."""
    rng = np.random.default_rng(11)
    return ndi.gaussian_filter(rng.random(SHAPE), 2.0) * 1000.0


def test_the_map_is_exact_for_a_linear_pair(scene):
    gain, offset = linear_map(scene, (scene - 30.0) / 1.6)
    assert gain == pytest.approx(1.6, rel=1e-9) and offset == pytest.approx(30.0, abs=1e-6)


def test_noise_that_only_one_image_has_does_not_bias_the_gain(scene):
    """Fixed noisy, moving smoother (interpolation averages noise away): the voxels' standard
    deviations then differ by the noise, and a map from them is off; block means are not."""
    rng = np.random.default_rng(12)
    sd = float(scene.std())
    fixed = scene + rng.normal(0, 0.5 * sd, SHAPE)
    moving = (scene + rng.normal(0, 0.05 * sd, SHAPE)) * 0.625 + 40.0  # true map: gain 1.6, offset -64
    gain, offset = linear_map(fixed, moving)
    voxel_gain, _ = linear_map(fixed, moving, bin_size=1)
    assert gain == pytest.approx(1.6, rel=0.03), gain
    assert abs(voxel_gain - 1.6) > 0.1, voxel_gain  # what the bins avoid
    mapped = (scene * 0.625 + 40.0) * gain + offset  # the noise-free moving, mapped: back to the scene
    assert np.abs(mapped - scene).mean() < 0.05 * sd


def test_only_valid_voxels_count(scene):
    moving = scene / 2.0
    filled = moving.copy()
    filled[:, :, :20] = 0.0  # fill where moving has no data: it must not count
    nan = moving.copy()
    nan[:, :, :20] = np.nan
    valid = np.ones(SHAPE, bool)
    valid[:, :, :20] = False
    for gain, offset in (linear_map(scene, filled, valid), linear_map(scene, nan)):
        assert gain == pytest.approx(2.0, rel=1e-9) and offset == pytest.approx(0.0, abs=1e-6)
    assert abs(linear_map(scene, filled)[0] - 2.0) > 0.1  # the fill, counted, would bias it


def test_flat_or_tiny_images_keep_the_identity_and_small_ones_use_voxels(scene):
    assert linear_map(scene, np.full(SHAPE, 7.0)) == (1.0, 0.0)
    assert linear_map(np.full(SHAPE, 7.0), scene) == (1.0, 0.0)
    assert linear_map(scene, np.full(SHAPE, np.nan)) == (1.0, 0.0)
    small = scene[:3, :5, :5]  # no 4^3 bin fits: voxel statistics
    gain, offset = linear_map(small, small * 0.5 + 3.0)
    assert gain == pytest.approx(2.0, rel=1e-9) and offset == pytest.approx(-6.0, abs=1e-6)
    with pytest.raises(ValueError, match="differ in shape"):
        linear_map(scene, scene[:-1])


def test_histogram_matching_ignores_voxels_without_data(scene):
    """Half of moving is fill (0): matched over the valid half, moving's quantiles there become
    fixed's; ITK's matching of the whole array, fill included, is far off."""
    import SimpleITK as sitk

    moving = scene * 0.5 + 100.0
    moving[:, :, :24] = 0.0
    valid = np.zeros(SHAPE, bool)
    valid[:, :, 24:] = True
    out = matched_histogram(scene, moving, valid)
    assert out.dtype == np.float32
    q = [10, 25, 50, 75, 90]
    rng_ = float(np.ptp(scene[valid]))
    assert np.abs(np.percentile(out[valid], q) - np.percentile(scene[valid], q)).max() < 0.02 * rng_
    np.testing.assert_array_equal(out[~valid], 0.0)  # the fill is left as it is
    whole = sitk.GetArrayFromImage(sitk.HistogramMatching(
        sitk.GetImageFromArray(moving.astype(np.float32)), sitk.GetImageFromArray(scene.astype(np.float32)), 256, 15, True))
    assert np.abs(np.percentile(whole[valid], q) - np.percentile(scene[valid], q)).max() > 0.05 * rng_
