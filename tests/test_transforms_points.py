"""Tests for transform lists: the [A, D] order, normalize_transforms, transform_points."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk

import lazyreg
from lazyreg import Affine, DisplacementField, LazyregError, transform_points
from lazyreg.transforms import normalize_transforms


def _affine() -> Affine:
    return Affine.from_parameters(rotation=(35.0, 10.0, -20.0), scale=(1.1, 0.9, 1.2), translation=(2.0, -1.0, 3.0),
                                  center=(10.0, 12.0, 14.0))


def _field() -> DisplacementField:
    """A smooth, strongly non-uniform field, so that it does not commute with the affine."""
    z, y, x = np.meshgrid(np.arange(8), np.arange(9), np.arange(10), indexing="ij")
    v = np.stack([np.sin(x / 2.0) * 3, np.cos(z / 3.0) * 2, (y - 4.0) ** 2 / 4], axis=-1)
    return DisplacementField.from_array(v, spacing=(3.0, 2.5, 2.8), origin=(-1.0, 0.5, 2.0))


def _points(n=200, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0.0, 22.0, size=(n, 3))


def test_list_order_last_applied_first_with_non_commuting_transforms():
    A, D = _affine(), _field()
    p = _points()
    ad = transform_points(p, [A, D])
    np.testing.assert_allclose(ad, A(D(p)), atol=1e-12)
    da_ = transform_points(p, [D, A])
    np.testing.assert_allclose(da_, D(A(p)), atol=1e-12)
    assert np.abs(ad - da_).max() > 1.0  # they do not commute, so the test can tell the orders apart
    # same as ITK's CompositeTransform, which also applies the last added transform first
    comp = sitk.CompositeTransform(3)
    comp.AddTransform(A.to_sitk())
    comp.AddTransform(D.to_sitk())
    ref = np.array([comp.TransformPoint(q[::-1].tolist())[::-1] for q in p])
    np.testing.assert_allclose(ad, ref, atol=1e-9)


def test_transform_points_shapes_identity_and_lazy():
    A, D = _affine(), _field()
    p = _points(5)
    np.testing.assert_array_equal(transform_points(p, []), p)
    np.testing.assert_array_equal(transform_points(p, None), p)
    np.testing.assert_allclose(transform_points(p[0], A), A(p[0]))
    assert transform_points(p[0], [A, D]).shape == (3,)
    lazy_A = Affine(da.from_array(np.asarray(A), chunks=2))
    lazy_D = DisplacementField(D.data.chunk({"z": 3}))
    np.testing.assert_allclose(transform_points(p, (lazy_A, lazy_D)), A(D(p)), atol=1e-12)
    assert lazy_A.is_lazy and lazy_D.is_lazy  # the transforms themselves stay lazy
    q = p.copy()
    transform_points(q, [A])
    np.testing.assert_array_equal(q, p)  # input untouched
    with pytest.raises(LazyregError, match="points"):
        transform_points(np.zeros((4, 2)), [A])


def test_normalize_transforms_accepts_transforms_and_sequences():
    A, D = _affine(), _field()
    assert normalize_transforms(A) == [A]
    assert normalize_transforms(D) == [D]
    assert normalize_transforms((A, D)) == [A, D]
    lst = [D, A]
    out = normalize_transforms(lst)
    assert out == lst and out is not lst
    assert normalize_transforms([]) == [] and normalize_transforms(None) == []


@pytest.mark.parametrize(
    "bad, pattern",
    [
        ([Affine.identity(), np.eye(4)], r"^transforms\[1\]: expected an Affine or a DisplacementField, got ndarray.*lazyreg\.Affine\(matrix\)"),
        ([[Affine.identity()]], r"^transforms\[0\]: .*got list.*lazyreg\.Affine\(matrix\)"),
        (["affine.txt"], r"^transforms\[0\]: .*got str.*load_transform"),
        ([sitk.Euler3DTransform()], r"^transforms\[0\]: .*got Euler3DTransform.*Affine\.from_sitk"),
        (np.eye(4), r"^transforms: expected an Affine, a DisplacementField or a list of them, got ndarray.*lazyreg\.Affine\(matrix\)"),
        ("affine.txt", r"^transforms: .*got str.*load_transform"),
        (3, r"^transforms: .*got int"),
    ],
)
def test_normalize_transforms_rejects_other_types_with_index_and_type(bad, pattern):
    with pytest.raises(LazyregError, match=pattern):
        normalize_transforms(bad)
    with pytest.raises(LazyregError, match=pattern):
        transform_points(np.zeros(3), bad)


def test_normalize_transforms_uses_argname():
    with pytest.raises(LazyregError, match=r"^initial\[0\]"):
        normalize_transforms([1.0], argname="initial")


def test_public_names():
    assert lazyreg.transform_points is transform_points
    assert lazyreg.transforms.normalize_transforms is normalize_transforms
