"""The bending penalty of the B-spline "deform" step: energy, proximal step, layout, effect, validation."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import lazyreg
import lazyreg.data as D
from lazyreg import LazyregError, align
from lazyreg.images import grid_of
from lazyreg.registration.bending import (
    bending_energy,
    bending_operator,
    bending_prox,
    bspline_coefficients,
    smooth_bspline,
)
from lazyreg.registration.itk import align_deformable
from lazyreg.registration.itk_options import validate_itk_options
from lazyreg.testing import count_tasks

from test_registration_itk import _mean_error, deformed_pair  # noqa: F401  (fixture)


def _linear(shape, rng) -> np.ndarray:
    """Three affine (linear + constant) fields on a grid of ``shape``."""
    z, y, x = np.meshgrid(*map(np.arange, shape), indexing="ij")
    a = rng.normal(size=(3, 4))
    return np.stack([a[i, 0] * z + a[i, 1] * y + a[i, 2] * x + a[i, 3] for i in range(3)])


# --------------------------------------------------------------------------- energy and proximal step


def test_prox_lowers_energy_and_keeps_affine_fields():
    rng = np.random.default_rng(0)
    shape = (6, 7, 9)
    c0 = rng.normal(0, 2.0, (3, *shape))
    L = bending_operator(shape)
    # the energy is c^T L c (the operator and the direct sum agree)
    assert bending_energy(c0) == pytest.approx(sum(float(c @ (L @ c)) for c in c0.reshape(3, -1)), rel=1e-12)
    for w in (0.1, 1.0, 30.0):
        c = bending_prox(c0, w)
        # it is the minimiser: (I + w L) c = c0
        np.testing.assert_allclose(c.reshape(3, -1) + w * (L @ c.reshape(3, -1).T).T, c0.reshape(3, -1), atol=1e-8)
        assert bending_energy(c) < 0.5 * bending_energy(c0)
    assert bending_energy(bending_prox(c0, 30.0)) < bending_energy(bending_prox(c0, 1.0))
    lin = _linear(shape, rng)
    assert bending_energy(lin) < 1e-20
    np.testing.assert_allclose(bending_prox(lin, 5.0), lin, rtol=0, atol=1e-9)
    # affine parts pass through untouched: prox(lin + r) = lin + prox(r)
    np.testing.assert_allclose(bending_prox(lin + c0, 5.0), lin + bending_prox(c0, 5.0), rtol=0, atol=1e-7)
    np.testing.assert_array_equal(bending_prox(c0, 0.0), c0)


def test_parameter_layout_matches_coefficient_images():
    ref = sitk.Image([20, 14, 9], sitk.sitkFloat32)
    ref.SetSpacing((1.0, 1.5, 2.0))
    t = sitk.BSplineTransformInitializer(ref, [4, 3, 2], 3)  # mesh x, y, z
    rng = np.random.default_rng(1)
    t.SetParameters(rng.normal(size=t.GetNumberOfParameters()).tolist())
    c = bspline_coefficients(t)
    assert c.shape == (3, 5, 6, 7)  # components (x, y, z), then the zyx control grid (mesh + 3)
    for i, img in enumerate(t.GetCoefficientImages()):
        np.testing.assert_array_equal(c[i], sitk.GetArrayFromImage(img))
    # component 0 is the x displacement: a constant 1 there moves every point by +1 along x only
    t.SetParameters(np.concatenate([np.ones(c[0].size), np.zeros(2 * c[0].size)]).tolist())
    np.testing.assert_allclose(np.subtract(t.TransformPoint((7.0, 8.0, 5.0)), (7.0, 8.0, 5.0)), (1.0, 0.0, 0.0))
    # smooth_bspline writes the proximal step back in the same layout
    t.SetParameters(rng.normal(size=t.GetNumberOfParameters()).tolist())
    before = bspline_coefficients(t)
    energy = smooth_bspline(t, 2.0)
    after = np.stack([sitk.GetArrayFromImage(img) for img in t.GetCoefficientImages()])
    np.testing.assert_allclose(after, bending_prox(before, 2.0), rtol=0, atol=1e-12)
    assert energy == pytest.approx(bending_energy(after)) and energy < 0.2 * bending_energy(before)


# --------------------------------------------------------------------------- in the deform step


def test_bending_splits_levels_into_rounds_and_smooths():
    fixed, moving, truth = D.synthetic_pair((12, 24, 24), (2.0, 1.0, 1.0), seed=0, n_blobs=15)
    kw = dict(initial=truth, control_point_spacing=8, threads=2, optimizer_args={"numberOfIterations": 4})
    off = align_deformable(fixed, moving, **kw)
    on = align_deformable(fixed, moving, bending=3.0, bending_rounds=2, **kw)
    assert on.report["bending"] == 3.0 and on.report["bending_rounds"] == 2
    assert [lv["rounds"] for lv in on.report["levels"]] == [2, 2]  # shrink_factors (2, 1)
    assert "rounds" not in off.report["levels"][0] and off.report["bending"] == 0.0
    assert on.report["bending_energy"] < 0.2 * off.report["bending_energy"]
    # more rounds than iterations: one run per iteration
    few = align_deformable(fixed, moving, bending=1.0, bending_rounds=50, **dict(kw, shrink_factors=(2,)))
    assert [lv["rounds"] for lv in few.report["levels"]] == [4]


@pytest.mark.slow
def test_bending_keeps_recovery_and_lowers_energy_and_jacobian_range(deformed_pair):  # noqa: F811
    fixed, moving, A, pf, true_b = deformed_pair
    sp = grid_of(fixed).spacing
    kw = dict(initial=A, control_point_spacing=16, sampling_percentage=(0.1, 0.02), threads=2)
    plain = align_deformable(fixed, moving, **kw)
    off = align_deformable(fixed, moving, bending=0.0, **kw)
    np.testing.assert_array_equal(off.values, plain.values)  # bending=0 is the step as it was
    moderate = align_deformable(fixed, moving, bending=0.1, **kw)
    strong = align_deformable(fixed, moving, bending=10.0, bending_rounds=2, **kw)
    errors = [_mean_error(f(pf), true_b, sp) for f in (off, moderate, strong)]
    assert _mean_error(pf, true_b, sp) > 1.5  # the deformation to recover
    assert errors[0] < 0.6 and errors[1] < 0.9, errors  # moderate: still sub-voxel (measured 0.41, 0.63)
    energies = [f.report["bending_energy"] for f in (off, moderate, strong)]
    assert energies[2] < 0.01 * energies[1] < 0.005 * energies[0], energies
    ranges = [np.ptp(np.asarray(lazyreg.jacobian_determinant(f).values)) for f in (off, strong)]
    assert ranges[1] < 0.85 * ranges[0], ranges  # measured 1.61 -> 0.85


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"bending": -1.0}, r"^bending: expected a number in \[0, inf\], got -1.0"),
        ({"bending": float("nan")}, r"^bending: expected a number in \[0, inf\], got nan"),
        ({"bending": "strong"}, r"^bending: expected a number"),
        ({"bending": 1.0, "transform": "field"}, r"^bending: penalises the B-spline's coefficients, so it needs "
                                                 r"transform='bspline' \(got 'field'\)"),
        ({"bending_rounds": 0}, r"^bending_rounds: expected an integer >= 1, got 0"),
        ({"bending_rounds": 2.5}, r"^bending_rounds: expected an integer, got 2.5"),
    ],
)
def test_bad_bending_options_are_refused(options, pattern):
    with pytest.raises(LazyregError, match=pattern):
        validate_itk_options("deformable", options)
    fixed, moving, _ = D.synthetic_pair((16, 24, 24), seed=0)
    with count_tasks() as c:  # at build time, before any task runs, naming the step and the option
        for build in (
            lambda: align(fixed, moving, [("deform", options)]),
            lambda: lazyreg.align_piecewise(fixed, moving, [("deform", options)], blocksize=8),
        ):
            with pytest.raises(LazyregError, match=r"steps\[0\] \('deform'\): .*" + pattern.lstrip("^")[:20]):
                build()
        with pytest.raises(LazyregError, match=pattern):
            align_deformable(fixed, moving, **options)
    assert c.n == 0


def test_bending_passes_through_the_deform_step():
    fixed, moving, truth = D.synthetic_pair((12, 24, 24), (2.0, 1.0, 1.0), seed=0, n_blobs=15)
    opts = {"bending": 2.0, "bending_rounds": 2, "control_point_spacing": 8, "shrink_factors": (1,),
            "optimizer_args": {"numberOfIterations": 4}}
    field = align(fixed, moving, [("deform", opts)], initial=lazyreg.Affine(truth))[-1].compute()
    report = field.report[-1]
    assert report["bending"] == 2.0 and report["levels"][0]["rounds"] == 2 and report["bending_energy"] >= 0
