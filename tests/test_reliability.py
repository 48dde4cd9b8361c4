"""Reliability: no silent data loss or change (issue 14). Each test failed on the code before its fix."""

from __future__ import annotations

import numpy as np
import pytest

import lazyreg
from lazyreg import Affine, LazyregError


@pytest.fixture()
def stored(tmp_path):
    img = lazyreg.image(np.random.default_rng(0).random((16, 24, 24)).astype(np.float32), (2.0, 1.0, 1.0))
    lazyreg.to_zarr(img, tmp_path / "a.ome.zarr")
    return lazyreg.open_image(tmp_path / "a.ome.zarr"), tmp_path / "a.ome.zarr"


@pytest.mark.parametrize("transforms", [[Affine.from_translation(1.0)], []], ids=["affine", "empty"])
def test_overwriting_its_own_input_is_refused_and_the_input_is_kept(stored, transforms):
    img, path = stored
    before = img.values.copy()
    with pytest.raises(LazyregError, match="cannot be overwritten: the image being written is read from"):
        lazyreg.to_zarr(lazyreg.apply_transform(img, img, transforms), path, overwrite=True)
    np.testing.assert_array_equal(lazyreg.open_image(path).values, before)


def test_a_piecewise_field_or_image_cannot_overwrite_the_images_it_reads(stored):
    img, path = stored
    field = lazyreg.align_piecewise(img, img, [("affine", {})], blocksize=(16, 12, 12), foreground_fraction=0.0)
    for target in (lazyreg.apply_transform(img, img, [field]),):
        with pytest.raises(LazyregError, match="cannot be overwritten"):
            lazyreg.to_zarr(target, path, overwrite=True)
    with pytest.raises(LazyregError, match="cannot be overwritten"):
        lazyreg.save_transform(field, path, overwrite=True)
    assert lazyreg.open_image(path).shape == img.shape


@pytest.mark.parametrize("dtype, base", [(np.int32, 2**30), (np.uint32, 2**31 + 5), (np.int64, 2**60 + 7), (np.uint64, 2**63 + 9)])
def test_nearest_neighbour_keeps_large_integer_labels_exact(dtype, base):
    labels = np.random.default_rng(1).integers(0, 64, (16, 16, 16)).astype(dtype) + dtype(base)
    img = lazyreg.image(labels, 1.0)
    same = lazyreg.apply_transform(img, img, [], order=0).values
    assert same.dtype == labels.dtype and np.array_equal(same, labels)
    shifted = lazyreg.apply_transform(img, img, [Affine.from_translation(1.0)], order=0, fill_value=0).values
    np.testing.assert_array_equal(shifted[:-1, :-1, :-1], labels[1:, 1:, 1:])
    assert len(np.unique(shifted[:-1, :-1, :-1])) == 64


def test_the_affine_step_is_unit_free():
    """The same pair in micrometres and in nanometres gives the same transform (up to the unit);
    it made no iteration in nanometres (its minimum step scaled with the spacing)."""
    f, m, _ = lazyreg.data.synthetic_pair((32, 64, 64), seed=0)
    out = []
    for k in (1.0, 1000.0):
        F = lazyreg.image(f.values, np.asarray(lazyreg.spacing(f)) * k, np.asarray(lazyreg.origin(f)) * k)
        M = lazyreg.image(m.values, np.asarray(lazyreg.spacing(m)) * k, np.asarray(lazyreg.origin(m)) * k)
        A = lazyreg.align(F, M, [("affine", {})]).compute(scheduler="threads")
        assert all(lv["iterations"] > 0 for lv in A.report[0]["levels"]) and A.report[0]["warning"] is None
        m_k = np.asarray(A.matrix).copy()
        m_k[:3, 3] /= k
        out.append(m_k)
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)


def test_an_optimizer_that_does_not_move_says_so(caplog):
    f, m, _ = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    with caplog.at_level("WARNING", logger="lazyreg"):
        A = lazyreg.align_affine(f, m, shrink_factors=(1,), optimizer_args={"minStep": 10.0})
    assert "no iteration" in A.report["warning"] and any("no iteration" in r.message for r in caplog.records)
