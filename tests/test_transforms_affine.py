"""Tests for lazyreg.Affine: validation, algebra, parameters, SimpleITK conversion, laziness."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import SimpleITK as sitk
from hypothesis import given, settings
from hypothesis import strategies as st

from lazyreg import Affine, DisplacementField, LazyregError
from lazyreg.testing import count_tasks


def _random_affine(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    m = np.eye(4)
    m[:3, :3] = np.eye(3) + 0.3 * rng.normal(size=(3, 3))
    m[:3, 3] = rng.normal(scale=10.0, size=3)
    return m


def _nontrivial(center=(12.0, -5.0, 30.0)) -> Affine:
    return Affine.from_parameters(
        rotation=(25.0, -40.0, 70.0),
        scale=(1.2, 0.8, 1.5),
        shear=(0.1, -0.2, 0.3),
        translation=(3.0, -7.5, 11.0),
        center=center,
    )


def _sitk_map(t: sitk.Transform, points_zyx: np.ndarray) -> np.ndarray:
    return np.array([t.TransformPoint(p[::-1].tolist())[::-1] for p in points_zyx])


POINTS = np.random.default_rng(42).uniform(-50, 50, size=(25, 3))


# ---------------------------------------------------------------------------------- construction


def test_construction_stores_float64_readonly_and_validates():
    A = Affine(np.eye(4, dtype=np.int32))
    assert A.matrix.dtype == np.float64 and not A.is_lazy
    with pytest.raises(ValueError):
        A.matrix[0, 0] = 2.0
    with pytest.raises(LazyregError, match=r"^matrix: expected a 4x4 homogeneous matrix, got shape \(3, 3\)$"):
        Affine(np.eye(3))
    with pytest.raises(LazyregError, match=r"shape \(3, 3\)"):
        Affine(da.eye(3))
    bad = np.eye(4)
    bad[1, 2] = np.nan
    with pytest.raises(LazyregError, match="matrix.*NaN"):
        Affine(bad)
    row = np.eye(4)
    row[3, 0] = 0.5
    with pytest.raises(LazyregError, match="last row"):
        Affine(row)
    with pytest.raises(LazyregError, match="matrix"):
        Affine("identity")
    with pytest.raises(LazyregError, match="matrix"):
        Affine(da.zeros((4, 4), dtype=complex))
    assert isinstance(LazyregError("x"), ValueError)


def test_identity_translation_and_points_shapes():
    assert np.array_equal(np.asarray(Affine.identity()), np.eye(4))
    T = Affine.from_translation((1.0, -2.0, 3.5))
    assert np.array_equal(T(np.zeros(3)), [1.0, -2.0, 3.5])
    assert T(np.zeros((5, 3))).shape == (5, 3)
    assert T(np.zeros((0, 3))).shape == (0, 3)
    assert np.array_equal(Affine.from_translation(2.0)([1.0, 1.0, 1.0]), [3.0, 3.0, 3.0])
    for bad in (np.zeros((4, 2)), np.zeros(4), np.zeros((2, 2, 3)), 1.0):
        with pytest.raises(LazyregError, match="points"):
            T(bad)
    with pytest.raises(LazyregError, match="translation"):
        Affine.from_translation((1.0, 2.0))


def test_array_protocol_returns_a_copy_and_ndarray_matmul_is_refused():
    A = Affine(_random_affine(0))
    m = np.asarray(A)
    m[0, 0] = 99.0
    assert A.matrix[0, 0] != 99.0
    assert np.asarray(A, dtype=np.float32).dtype == np.float32
    with pytest.raises(TypeError):
        np.eye(4) @ A
    with pytest.raises(LazyregError, match="list"):
        A @ DisplacementField.from_array(np.zeros((2, 2, 2, 3)), 1.0)


def test_repr():
    assert "Affine(" in repr(Affine.from_translation(1.0))
    assert "lazy" in repr(Affine(da.from_array(np.eye(4))))


# ---------------------------------------------------------------------------------- algebra


def test_composition_inverse_and_points_agree_with_numpy():
    ma, mb = _random_affine(1), _random_affine(2)
    A, B = Affine(ma), Affine(mb)
    np.testing.assert_allclose(np.asarray(A @ B), ma @ mb, rtol=1e-14, atol=1e-12)
    np.testing.assert_allclose((A @ B)(POINTS), A(B(POINTS)), rtol=1e-12, atol=1e-10)
    hom = np.c_[POINTS, np.ones(len(POINTS))]
    np.testing.assert_allclose(A(POINTS), (hom @ ma.T)[:, :3], rtol=1e-13, atol=1e-10)
    np.testing.assert_allclose(np.asarray(A.inverse()), np.linalg.inv(ma), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(A.inverse()(A(POINTS)), POINTS, atol=1e-9)
    assert not (A @ B).allclose(B @ A)
    assert (A @ A.inverse()).allclose(Affine.identity())


def test_singular_inverse_is_refused():
    m = np.eye(4)
    m[2, :3] = m[1, :3] * 3  # rank 2 linear part
    with pytest.raises(LazyregError, match="matrix is not invertible"):
        Affine(m).inverse()
    with pytest.raises(LazyregError, match="matrix is not invertible"):
        Affine(np.diag([0.0, 0.0, 0.0, 1.0])).inverse()
    # Small but well-conditioned scales (e.g. metres) are invertible.
    tiny = Affine.from_parameters(scale=1e-6)
    assert tiny.inverse().allclose(Affine.from_parameters(scale=1e6), rtol=1e-12, atol=0)


@settings(max_examples=60, deadline=None)
@given(
    rotation=st.tuples(*[st.floats(-180, 180)] * 3),
    scale=st.tuples(*[st.floats(0.2, 5.0)] * 3),
    shear=st.tuples(*[st.floats(-1.0, 1.0)] * 3),
    translation=st.tuples(*[st.floats(-1e3, 1e3)] * 3),
    center=st.tuples(*[st.floats(-1e3, 1e3)] * 3),
)
def test_inverse_times_affine_is_identity(rotation, scale, shear, translation, center):
    A = Affine.from_parameters(rotation=rotation, scale=scale, shear=shear, translation=translation, center=center)
    m = np.asarray(A.inverse() @ A)
    np.testing.assert_allclose(m[:3, :3], np.eye(3), atol=1e-9)
    np.testing.assert_allclose(m[:3, 3], 0.0, atol=1e-9 * (1 + np.abs(translation).max() + np.abs(center).max()))
    np.testing.assert_allclose(A.inverse()(A(POINTS)), POINTS, atol=1e-7)


# ---------------------------------------------------------------------------------- from_parameters


def test_from_parameters_single_rotations_are_right_handed():
    # rotation = (about z, about y, about x) in degrees; +90 about z maps x -> y, about y z -> x, about x y -> z.
    z, y, x = np.eye(3)
    np.testing.assert_allclose(Affine.from_parameters(rotation=(90, 0, 0))(x), y, atol=1e-15)
    np.testing.assert_allclose(Affine.from_parameters(rotation=(0, 90, 0))(z), x, atol=1e-15)
    np.testing.assert_allclose(Affine.from_parameters(rotation=(0, 0, 90))(y), z, atol=1e-15)


def test_from_parameters_matches_hand_built_matrix():
    az, ay, ax = np.deg2rad([25.0, -40.0, 70.0])
    c, s = np.cos, np.sin
    # zyx-frame rotations (rows/cols ordered z, y, x)
    Rz = np.array([[1, 0, 0], [0, c(az), s(az)], [0, -s(az), c(az)]])
    Ry = np.array([[c(ay), 0, -s(ay)], [0, 1, 0], [s(ay), 0, c(ay)]])
    Rx = np.array([[c(ax), s(ax), 0], [-s(ax), c(ax), 0], [0, 0, 1]])
    H = np.array([[1, 0.1, -0.2], [0, 1, 0.3], [0, 0, 1]])
    S = np.diag([1.2, 0.8, 1.5])
    L = Rz @ Ry @ Rx @ H @ S
    cen, t = np.array([12.0, -5.0, 30.0]), np.array([3.0, -7.5, 11.0])
    expected = np.eye(4)
    expected[:3, :3] = L
    expected[:3, 3] = cen - L @ cen + t
    A = _nontrivial()
    np.testing.assert_allclose(np.asarray(A), expected, rtol=0, atol=1e-13)
    # y = L (x - c) + c + t, point by point
    np.testing.assert_allclose(A(POINTS), (POINTS - cen) @ L.T + cen + t, atol=1e-12)
    # the centre maps to centre + translation
    np.testing.assert_allclose(A(cen), cen + t, atol=1e-12)


def test_from_parameters_rotation_equals_itk_euler_zyx():
    angles = (25.0, -40.0, 70.0)  # z, y, x
    A = Affine.from_parameters(rotation=angles, center=(1.0, 2.0, 3.0), translation=(4.0, 5.0, 6.0))
    e = sitk.Euler3DTransform()
    e.SetComputeZYX(True)
    e.SetRotation(*np.deg2rad(angles[::-1]))
    e.SetCenter((3.0, 2.0, 1.0))
    e.SetTranslation((6.0, 5.0, 4.0))
    np.testing.assert_allclose(A(POINTS), _sitk_map(e, POINTS), atol=1e-11)


def test_from_parameters_bad_values():
    with pytest.raises(LazyregError, match="scale"):
        Affine.from_parameters(scale=(1.0, 0.0, 1.0))
    with pytest.raises(LazyregError, match="rotation"):
        Affine.from_parameters(rotation=(1.0, 2.0))
    with pytest.raises(LazyregError, match="center"):
        Affine.from_parameters(center=(np.nan, 0, 0))
    mirror = Affine.from_parameters(scale=(1.0, 1.0, -1.0))
    np.testing.assert_allclose(mirror([1.0, 2.0, 3.0]), [1.0, 2.0, -3.0])


# ---------------------------------------------------------------------------------- SimpleITK


def test_sitk_round_trip_nontrivial_point_by_point():
    A = _nontrivial()
    t = A.to_sitk()
    assert isinstance(t, sitk.AffineTransform)
    np.testing.assert_allclose(_sitk_map(t, POINTS), A(POINTS), atol=1e-11)
    back = Affine.from_sitk(t)
    np.testing.assert_allclose(np.asarray(back), np.asarray(A), atol=1e-12)
    # through a generic sitk.Transform, as returned by ReadTransform
    np.testing.assert_allclose(np.asarray(Affine.from_sitk(sitk.Transform(t))), np.asarray(A), atol=1e-12)


def _sitk_linear_transforms() -> dict[str, sitk.Transform]:
    cen = (4.0, -3.0, 10.0)
    aff = sitk.AffineTransform(3)
    aff.SetMatrix([1.1, 0.2, -0.1, 0.05, 0.9, 0.3, -0.2, 0.1, 1.3])
    aff.SetTranslation((1.0, 2.0, -3.0))
    aff.SetCenter(cen)
    eul = sitk.Euler3DTransform(cen, 0.3, -0.2, 0.7, (5.0, -1.0, 2.0))
    vr = sitk.VersorRigid3DTransform()
    vr.SetRotation((0.0, 0.6, 0.8), 0.9)
    vr.SetTranslation((1.0, 2.0, 3.0))
    vr.SetCenter(cen)
    sim = sitk.Similarity3DTransform()
    sim.SetScale(1.4)
    sim.SetRotation((0.6, 0.0, 0.8), 0.5)
    sim.SetTranslation((1.0, -2.0, 0.5))
    sim.SetCenter(cen)
    ssv = sitk.ScaleSkewVersor3DTransform()
    ssv.SetScale((1.2, 0.9, 1.1))
    ssv.SetSkew((0.1, -0.05, 0.2, 0.0, 0.15, -0.1))
    ssv.SetRotation((0.0, 0.0, 1.0), -0.4)
    ssv.SetTranslation((3.0, 1.0, -2.0))
    ssv.SetCenter(cen)
    tr = sitk.TranslationTransform(3, (1.5, -2.5, 3.5))
    sc = sitk.ScaleTransform(3, (2.0, 0.5, 1.5))
    sc.SetCenter(cen)
    return {
        "affine": aff,
        "euler": eul,
        "versorrigid": vr,
        "similarity": sim,
        "scaleskewversor": ssv,
        "translation": tr,
        "scale": sc,
        "generic": sitk.Transform(eul),
        "identity": sitk.Transform(),
    }


@pytest.mark.parametrize("name", list(_sitk_linear_transforms()))
def test_from_sitk_linear_types_match_transform_point(name):
    t = _sitk_linear_transforms()[name]
    A = Affine.from_sitk(t)
    np.testing.assert_allclose(A(POINTS), _sitk_map(t, POINTS), atol=1e-10)


def test_from_sitk_composite_uses_itk_order():
    ts = _sitk_linear_transforms()
    first, second = ts["translation"], ts["similarity"]
    comp = sitk.CompositeTransform([first, second])  # ITK applies `second` first
    A1, A2 = Affine.from_sitk(first), Affine.from_sitk(second)
    ref = _sitk_map(comp, POINTS)
    np.testing.assert_allclose(ref, A1(A2(POINTS)), atol=1e-10)  # check our understanding of ITK
    assert not np.allclose(ref, A2(A1(POINTS)), atol=1e-3)  # the order matters for this pair
    np.testing.assert_allclose(Affine.from_sitk(comp)(POINTS), ref, atol=1e-10)
    nested = sitk.CompositeTransform([ts["scale"], comp, ts["euler"]])
    np.testing.assert_allclose(Affine.from_sitk(nested)(POINTS), _sitk_map(nested, POINTS), atol=1e-9)


def test_from_sitk_refuses_nonlinear_and_wrong_inputs():
    with pytest.raises(LazyregError, match="BSplineTransform is not linear"):
        Affine.from_sitk(sitk.BSplineTransform(3))
    field = DisplacementField.from_array(np.zeros((3, 3, 3, 3)), 1.0).to_sitk()
    with pytest.raises(LazyregError, match="DisplacementField.from_sitk"):
        Affine.from_sitk(field)
    with pytest.raises(LazyregError, match="not linear"):
        Affine.from_sitk(sitk.CompositeTransform([sitk.Euler3DTransform(), sitk.BSplineTransform(3)]))
    with pytest.raises(LazyregError, match="3D"):
        Affine.from_sitk(sitk.Euler2DTransform())
    with pytest.raises(LazyregError, match="SimpleITK"):
        Affine.from_sitk(np.eye(4))


# ---------------------------------------------------------------------------------- laziness


def _lazy(matrix: np.ndarray, calls: list) -> Affine:
    def solve():
        calls.append(1)
        return matrix

    return Affine(da.from_delayed(dask.delayed(solve, pure=False)(), shape=(4, 4), dtype=float))


def test_lazy_affine_build_compose_invert_compute_nothing():
    calls: list = []
    ma, mb = _random_affine(3), _random_affine(4)
    with count_tasks() as tc:
        A = _lazy(ma, calls)
        B = Affine(mb)
        assert A.is_lazy and isinstance(A.matrix, da.Array) and A.matrix.numblocks == (1, 1)
        AB, BA, AA = A @ B, B @ A, A @ A
        inv, inv_ab = A.inverse(), AB.inverse()
        _ = repr(A), repr(inv)
        assert all(t.is_lazy for t in (AB, BA, AA, inv, inv_ab))
    assert tc.n == 0 and calls == []
    with count_tasks() as tc:
        np.testing.assert_allclose(np.asarray(AB.compute().matrix), ma @ mb, atol=1e-12)
    assert tc.n > 0 and len(calls) == 1
    concrete = A.compute()
    assert not concrete.is_lazy and concrete.compute() is concrete
    np.testing.assert_array_equal(concrete.matrix, ma)
    np.testing.assert_allclose(np.asarray(BA), mb @ ma, atol=1e-12)
    np.testing.assert_allclose(np.asarray(inv), np.linalg.inv(ma), atol=1e-12)
    np.testing.assert_allclose(np.asarray(inv_ab), np.linalg.inv(ma @ mb), atol=1e-10)
    np.testing.assert_allclose(A(POINTS), Affine(ma)(POINTS), atol=1e-12)
    np.testing.assert_allclose(np.asarray(A.to_sitk().GetMatrix()), ma[:3, :3][::-1, ::-1].ravel(), atol=1e-15)


def test_lazy_affine_is_validated_when_computed():
    calls: list = []
    with pytest.raises(LazyregError, match="NaN"):
        _lazy(np.full((4, 4), np.nan), calls).compute()
    singular = _lazy(np.diag([1.0, 0.0, 1.0, 1.0]), calls).inverse()  # no error yet: lazy
    with pytest.raises(LazyregError, match="matrix is not invertible"):
        singular.compute()


def test_lazy_report_is_computed_alongside():
    report = dask.delayed(dict)(score=0.5)
    A = Affine(da.from_array(np.eye(4), chunks=2), report=report)
    assert A.matrix.numblocks == (1, 1)
    C = A.compute()
    assert C.report == {"score": 0.5}


def test_an_image_passed_as_a_centre_is_named_briefly_in_the_error():
    from lazyreg import image

    img = image(np.zeros((20, 20, 20)), 1.0)
    with pytest.raises(LazyregError) as e:
        Affine.from_parameters(center=img)
    assert str(e.value) == "center: expected a number or 3 numbers (z, y, x), got a DataArray of shape (20, 20, 20)"
