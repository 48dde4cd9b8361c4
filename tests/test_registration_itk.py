"""SimpleITK registration: recovery of known transforms, option checking, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import xarray as xr
from scipy import ndimage

import lazyreg
import lazyreg.data as D
from lazyreg.registration import itk_options, itk_runner
from lazyreg.registration.itk import align_affine, align_deformable
from lazyreg.registration.itk_options import METRICS, OPTIMIZERS, validate_itk_options


def _to_sitk(values: np.ndarray, g) -> sitk.Image:
    img = sitk.GetImageFromArray(values)
    img.SetSpacing(g.spacing[::-1])
    img.SetOrigin(g.origin[::-1])
    return img
from lazyreg.errors import LazyregError
from lazyreg.images import Grid, grid_of
from lazyreg.transforms.affine import Affine

from _helpers import grid_points


def _apply(m: np.ndarray, p: np.ndarray) -> np.ndarray:
    return p @ m[:3, :3].T + m[:3, 3]


def _mean_error(a: np.ndarray, b: np.ndarray, spacing) -> float:
    """Mean distance between two point sets, in voxels of ``spacing``."""
    return float(np.mean(np.linalg.norm((a - b) / np.asarray(spacing), axis=1)))


def _centre(g: Grid) -> np.ndarray:
    lo, hi = g.extent
    return (lo + hi) / 2


# --------------------------------------------------------------------------- data


@pytest.fixture(scope="module")
def affine_pair():
    """Known affine (8/-5/6 degrees, 5% scale, shift), anisotropic, different fixed/moving grids."""
    fixed, moving, truth = D.synthetic_pair(
        (40, 96, 96),
        (2.0, 1.0, 1.0),
        moving_shape=(44, 100, 104),
        moving_spacing=(1.8, 1.1, 0.95),
        moving_origin=(-6.0, -4.0, -3.0),
        seed=1,
    )
    return fixed, moving, truth


@pytest.fixture(scope="module")
def tiny_pair():
    return D.synthetic_pair((12, 24, 24), (2.0, 1.0, 1.0), seed=0, n_blobs=15)


@pytest.fixture(scope="module")
def deformed_pair():
    """fixed(x) = moving(A(x + d(x))) with a smooth known d on top of an affine A.

    Both images are sampled (cubic) from one finer phantom that lives in moving space.
    """
    fine = D.phantom((56, 104, 104), spacing=1.0, origin=(-4.0, -4.0, -4.0), seed=5, dtype="float32")
    gfine = grid_of(fine)
    fv = np.asarray(fine.values, dtype=np.float64)
    gfix = Grid((24, 80, 80), (2.0, 1.2, 1.2), (0.0, 0.0, 0.0))
    gmov = Grid((50, 96, 96), (1.0, 1.0, 1.0), (-1.0, -1.0, -1.0))
    lo, hi = gfix.extent
    size = hi - lo
    A = Affine.from_parameters(
        rotation=(3, -2, 2), scale=(1.02, 0.99, 1.0), translation=(1.0, -1.5, 1.0), center=_centre(gfix)
    ).matrix
    amp = 3.5

    def disp(p: np.ndarray) -> np.ndarray:
        z, y, x = ((p - lo) / size).T
        return np.stack(
            [
                0.6 * amp * np.sin(np.pi * y) * np.cos(np.pi * x),
                0.8 * amp * np.sin(np.pi * x) * np.sin(2 * np.pi * z) + 0.5 * amp * np.cos(np.pi * y),
                amp * np.sin(np.pi * y) * np.sin(np.pi * (z + 0.25)),
            ],
            -1,
        )

    pf = grid_points(gfix)
    true_b = pf + disp(pf)
    fixed_vals = ndimage.map_coordinates(fv, gfine.to_index(_apply(A, true_b)).T, order=3, mode="constant")
    mov_vals = ndimage.map_coordinates(fv, gfine.to_index(grid_points(gmov)).T, order=3, mode="constant")
    fixed = lazyreg.image(fixed_vals.reshape(gfix.shape).astype(np.float32), gfix.spacing, gfix.origin)
    moving = lazyreg.image(mov_vals.reshape(gmov.shape).astype(np.float32), gmov.spacing, gmov.origin)
    return fixed, moving, A, pf, true_b


# --------------------------------------------------------------------------- affine / rigid


def test_affine_recovers_known_affine_from_rough_start(affine_pair):
    fixed, moving, truth = affine_pair
    gf, gm = grid_of(fixed), grid_of(moving)
    perturb = Affine.from_parameters(
        rotation=(3, -2, 2.5), scale=(1.02, 0.98, 1.0), translation=(3, -4, 3), center=_centre(gf)
    ).matrix
    initial = truth @ perturb
    p = grid_points(gf)
    start = _mean_error(_apply(initial, p), _apply(truth, p), gm.spacing)
    assert start > 3.0  # a rough start: several voxels off

    _T = align_affine(fixed, moving, initial=initial, threads=2)
    m, report = np.asarray(_T.matrix), _T.report
    err = _mean_error(_apply(m, p), _apply(truth, p), gm.spacing)
    # well under half a voxel (about 0.04 here): composing initial on the wrong side gives 0.43
    assert err < 0.15, (start, err)
    # the report: every automatic level (40 z-slices: factors 4, 2, 1), with its figures
    assert report["step"] == "affine" and report["transform"] == "affine"
    assert [lv["shrink_factor"] for lv in report["levels"]] == [4, 2, 1]
    for lv in report["levels"]:
        assert lv["iterations"] > 0 and lv["seconds"] > 0 and isinstance(lv["stop_condition"], str)
        assert np.isfinite(lv["metric_value"])
    assert report["metric_value"] < -0.9  # correlation, ITK's sign: lower is better
    assert report["iterations"] == sum(lv["iterations"] for lv in report["levels"])


def test_rigid_recovers_rigid_transform(affine_pair):
    fixed, _, _ = affine_pair
    gf = grid_of(fixed)
    truth = Affine.from_parameters(rotation=(6, -4, 5), translation=(4, -3, 5), center=_centre(gf)).matrix
    _, moving, truth = D.synthetic_pair((40, 96, 96), (2.0, 1.0, 1.0), matrix=truth, seed=1)
    perturb = Affine.from_parameters(rotation=(2, -2, 2), translation=(3, 3, -3), center=_centre(gf)).matrix
    initial = truth @ perturb
    _T = align_affine(fixed, moving, transform="rigid", initial=initial, threads=2)
    m, report = np.asarray(_T.matrix), _T.report
    p = grid_points(gf)
    assert _mean_error(_apply(initial, p), _apply(truth, p), gf.spacing) > 2.0
    assert _mean_error(_apply(m, p), _apply(truth, p), gf.spacing) < 0.5
    lin = m[:3, :3]
    np.testing.assert_allclose(lin.T @ lin, np.eye(3), atol=1e-9)  # still rigid
    assert report["transform"] == "rigid"


def test_affine_is_deterministic_and_seeded(tiny_pair):
    fixed, moving, truth = tiny_pair
    kw = dict(initial=truth @ Affine.from_translation((1.0, -1.0, 1.0)).matrix, threads=2, shrink_factors=(2, 1))
    _T = align_affine(fixed, moving, sampling_percentage=0.3, **kw)
    m1, r1 = np.asarray(_T.matrix), _T.report
    _T = align_affine(fixed, moving, sampling_percentage=0.3, **kw)
    m2, r2 = np.asarray(_T.matrix), _T.report
    assert np.array_equal(m1, m2)
    assert r1["metric_value"] == r2["metric_value"]
    _T = align_affine(fixed, moving, sampling_percentage=0.3, seed=7, **kw)
    m3, _ = np.asarray(_T.matrix), _T.report
    assert not np.array_equal(m1, m3)  # the seed chooses the samples


def test_affine_without_initial_is_identity_based(tiny_pair):
    fixed, _, _ = tiny_pair
    _T = align_affine(fixed, fixed, shrink_factors=(1,), threads=1)
    m, report = np.asarray(_T.matrix), _T.report
    np.testing.assert_allclose(m, np.eye(4), atol=0.05)
    assert report["threads"] == 1


def test_masks_restrict_sampling(tiny_pair):
    fixed, moving, truth = tiny_pair
    mask = xr.zeros_like(fixed, dtype=bool)
    mask[:, :12, :] = True
    _T = align_affine(fixed, moving, initial=truth, shrink_factors=(1,), sampling="none",
                           optimizer_args={"numberOfIterations": 2})
    _, full = np.asarray(_T.matrix), _T.report
    _T = align_affine(fixed, moving, initial=truth, shrink_factors=(1,), sampling="none",
                           fixed_mask=mask, moving_mask=xr.ones_like(moving, dtype=bool),
                           optimizer_args={"numberOfIterations": 2})
    _, half = np.asarray(_T.matrix), _T.report
    assert half["levels"][0]["samples"] == full["levels"][0]["samples"] // 2
    assert half["metric_value"] != full["metric_value"]
    with pytest.raises(LazyregError, match=r"^fixed_mask: shape \(12, 12, 24\) differs"):
        align_affine(fixed, moving, fixed_mask=mask[:, :12], shrink_factors=(1,))
    with pytest.raises(LazyregError, match=r"^moving_mask: the mask is empty"):
        align_affine(fixed, moving, moving_mask=xr.zeros_like(moving, dtype=bool), shrink_factors=(1,))
    shifted = mask.assign_coords(z=mask.z + 1.0)
    with pytest.raises(LazyregError, match=r"^fixed_mask: grid .* differs from fixed"):
        align_affine(fixed, moving, fixed_mask=shifted, shrink_factors=(1,))


def test_bad_images_fail_before_itk(tiny_pair):
    fixed, moving, _ = tiny_pair
    nan = fixed.astype(np.float32).copy()
    nan[0, 0, 0] = np.nan
    with pytest.raises(LazyregError, match=r"^fixed: image contains NaN"):
        align_affine(nan, moving)
    with pytest.raises(LazyregError, match=r"^moving: image is all zero"):
        align_affine(fixed, xr.zeros_like(moving), shrink_factors=(1,))
    with pytest.raises(LazyregError, match=r"^fixed: expected an xarray.DataArray"):
        align_deformable(np.zeros((4, 4, 4)), moving)


def test_samples_outside_moving_image_gives_advice(tiny_pair):
    fixed, moving, _ = tiny_pair
    far = Affine.from_translation((0.0, 0.0, 1000.0)).matrix
    with pytest.raises(LazyregError, match=r"^initial: .*outside the moving image.*start closer"):
        align_affine(fixed, moving, initial=far, shrink_factors=(1,))


# --------------------------------------------------------------------------- every name runs


@pytest.mark.parametrize("metric", sorted(METRICS))
def test_every_metric_runs(tiny_pair, metric):
    fixed, moving, truth = tiny_pair
    if metric in itk_options.FIELD_ONLY_METRICS:
        _T = align_deformable(
            fixed, moving, transform="field", metric=metric, initial=truth, shrink_factors=(1,),
            control_point_spacing=8, optimizer_args={"numberOfIterations": 1},
        )
        values, g, report = _T.values, _T.grid, _T.report
        assert values.shape == (*g.shape, 3)
    else:
        _T = align_affine(
            fixed, moving, metric=metric, initial=truth, shrink_factors=(1,), optimizer_args={"numberOfIterations": 1}
        )
        _, report = np.asarray(_T.matrix), _T.report
    assert report["metric"] == metric
    assert report["iterations"] >= 1 and np.isfinite(report["metric_value"])


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_every_optimizer_runs(tiny_pair, optimizer):
    fixed, moving, truth = tiny_pair
    args = {} if optimizer == "exhaustive" else {"numberOfIterations": 1}
    if optimizer == "powell":
        args["maximumLineIterations"] = 3
    _T = align_affine(
        fixed, moving, optimizer=optimizer, initial=truth, shrink_factors=(1,), optimizer_args=args
    )
    m, report = np.asarray(_T.matrix), _T.report
    assert report["optimizer"] == optimizer and report["iterations"] >= 1
    assert np.all(np.isfinite(m))
    if optimizer in itk_options.FIELD_OPTIMIZERS or optimizer in ("lbfgsb", "regular_step_gradient_descent"):
        transform = "field" if optimizer in itk_options.FIELD_OPTIMIZERS else "bspline"
        _T = align_deformable(
            fixed, moving, transform=transform, optimizer=optimizer, initial=truth, shrink_factors=(1,),
            control_point_spacing=12, optimizer_args=args,
        )
        values, _, rep = _T.values, _T.grid, _T.report
        assert np.all(np.isfinite(values)) and rep["optimizer"] == optimizer


def test_exhaustive_steps_are_checked(tiny_pair):
    fixed, moving, truth = tiny_pair
    with pytest.raises(LazyregError, match=r"^optimizer_args: numberOfSteps needs one value per .* \(6\)"):
        align_affine(fixed, moving, transform="rigid", optimizer="exhaustive", shrink_factors=(1,),
                     optimizer_args={"numberOfSteps": [1, 1]})
    _T = align_affine(fixed, moving, transform="rigid", optimizer="exhaustive", initial=truth,
                             shrink_factors=(1,), optimizer_args={"numberOfSteps": [0, 0, 0, 1, 0, 0]})
    m, report = np.asarray(_T.matrix), _T.report
    assert report["iterations"] == 3  # -1, 0, +1 steps along one translation


# --------------------------------------------------------------------------- option checking


def test_validate_fills_defaults():
    o = validate_itk_options("affine", {})
    assert o["metric"] == "correlation" and o["optimizer"] == "regular_step_gradient_descent"
    assert o["optimizer_args"]["estimateLearningRate"] == sitk.ImageRegistrationMethod.Once
    assert o["sampling"] == "random" and o["scales"] == "physical_shift" and o["shrink_factors"] is None
    d = validate_itk_options("deformable", {})
    assert (d["transform"], d["optimizer"], d["scales"], d["sampling"]) == ("bspline", "lbfgsb", "none", "random")
    f = validate_itk_options("deformable", {"transform": "field"})
    assert (f["optimizer"], f["sampling"]) == ("gradient_descent", "none")
    o = validate_itk_options(
        "affine", {"shrink_factors": [4, 2], "smooth_sigmas": [2, 0], "sampling_percentage": 0.1, "seed": 3}
    )
    assert o["shrink_factors"] == (4, 2) and o["smooth_sigmas"] == (2.0, 0.0)
    assert o["sampling_percentage"] == (0.1, 0.1)
    o = validate_itk_options("affine", {"optimizer": "gradient_descent",
                                        "optimizer_args": {"estimateLearningRate": "each_iteration"}})
    assert o["optimizer_args"]["estimateLearningRate"] == sitk.ImageRegistrationMethod.EachIteration


@pytest.mark.parametrize(
    "step, options, pattern",
    [
        ("affine", {"metric": "mattes"}, r"^metric: unknown value 'mattes' \(did you mean 'mattes_mi'\?\); "
                                         r"valid: ants_neighborhood_correlation, correlation, demons"),
        ("affine", {"optimizer": "lbfgs"}, r"^optimizer: unknown value 'lbfgs' \(did you mean 'lbfgsb'\?\).*"
                                           r"regular_step_gradient_descent"),
        ("affine", {"metrc": "correlation"}, r"^options: 'metrc' is not an option of the 'affine' step "
                                             r"\(did you mean 'metric'\?\); valid: transform, initial, metric"),
        ("affine", {"optimizer_args": {"numberOfIteration": 3}},
         r"^optimizer_args: 'numberOfIteration' is not a parameter of optimizer 'regular_step_gradient_descent' "
         r"\(SetOptimizerAsRegularStepGradientDescent\) \(did you mean 'numberOfIterations'\?\); valid: learningRate"),
        ("affine", {"metric": "correlation", "metric_args": {"bins": 3}},
         r"^metric_args: 'bins' is not a parameter .*valid: none"),
        ("affine", {"metric": "mattes_mi", "metric_args": {"numberOfHistogramBins": 2.5}},
         r"^metric_args: numberOfHistogramBins: expected an integer"),
        ("affine", {"optimizer_args": {"estimateLearningRate": "sometimes"}},
         r"^optimizer_args: estimateLearningRate: unknown value 'sometimes'.*valid: never, once, each_iteration"),
        ("affine", {"optimizer_args": {"learningRate": "fast"}}, r"^optimizer_args: learningRate: expected a number"),
        ("affine", {"shrink_factors": (4, 2, 1), "smooth_sigmas": (2, 1)},
         r"^smooth_sigmas: expected one sigma per level, 3 \(the length of shrink_factors \(4, 2, 1\)\), got 2"),
        ("affine", {"smooth_sigmas": (2, 1)}, r"^smooth_sigmas: give shrink_factors too"),
        ("affine", {"shrink_factors": (4, 0)}, r"^shrink_factors: expected a non-empty sequence of positive integers"),
        ("affine", {"shrink_factors": (2, 1), "sampling_percentage": 1.5}, r"^sampling_percentage: values must lie"),
        ("affine", {"sampling": "stratified"}, r"^sampling: unknown value 'stratified'; valid: none, regular, random"),
        ("affine", {"interpolator": "cubic"}, r"^interpolator: unknown value 'cubic'.*valid: nearest, linear"),
        ("affine", {"scales": "physical"}, r"^scales: unknown value 'physical' \(did you mean 'physical_shift'\?\)"),
        ("affine", {"transform": "similarity"}, r"^transform: unknown value 'similarity'; valid: affine, rigid"),
        ("affine", {"metric": "demons"}, r"^metric: 'demons' needs a dense displacement field"),
        ("affine", {"initial": np.eye(3)}, r"^initial: matrix: expected a 4x4"),
        ("affine", {"seed": -1}, r"^seed: expected a non-negative integer"),
        ("affine", {"threads": 0}, r"^threads: expected a positive integer"),
        ("affine", {"fixed_mask": np.ones((2, 2, 2))}, r"^fixed_mask: expected a boolean xarray.DataArray"),
        ("deformable", {"transform": "field", "optimizer": "lbfgsb"},
         r"^optimizer: 'lbfgsb' cannot optimise a dense displacement field .*valid: conjugate_gradient_line_search"),
        ("deformable", {"transform": "affine"}, r"^transform: unknown value 'affine'; valid: bspline, field"),
        ("deformable", {"control_point_levels": (1, 3, 4)}, r"^control_point_levels: got 3 levels"),
        ("deformable", {"control_point_levels": (2, 3)}, r"^control_point_levels: each factor must be a multiple"),
        ("deformable", {"control_point_spacing": -5}, r"^control_point_spacing: expected a positive number"),
        ("deformable", {"field_smoothing": (1.0,)}, r"^field_smoothing: expected 2 non-negative variances"),
        ("deformable", {"field_grid": (4, 4, 4)}, r"^field_grid: expected a lazyreg.Grid"),
        ("rigid", {}, r"^step: unknown value 'rigid'; valid: affine, deformable"),
    ],
)
def test_validate_errors_name_the_option_and_list_choices(step, options, pattern):
    with pytest.raises(LazyregError, match=pattern):
        validate_itk_options(step, options)


def test_public_functions_validate_before_reading(tiny_pair):
    fixed, moving, _ = tiny_pair
    with pytest.raises(LazyregError, match=r"^optimizer: unknown value 'adam'"):
        align_affine(fixed, moving, optimizer="adam")
    with pytest.raises(LazyregError, match=r"^metric: unknown value 'ncc'"):
        align_deformable(fixed, moving, metric="ncc")
    with pytest.raises(LazyregError, match=r"^control_point_levels: got 2 levels .* 1 resolution levels"):
        align_deformable(fixed, moving, shrink_factors=None, control_point_levels=(1, 2))


# --------------------------------------------------------------------------- deformable


def test_bspline_to_field_matches_transform_point():
    g = Grid((10, 12, 14), (2.0, 1.5, 1.0), (3.0, -2.0, 1.0))
    ref = itk_runner.field_image(g)
    t = sitk.BSplineTransformInitializer(ref, [3, 2, 2], 3)
    rng = np.random.default_rng(0)
    t.SetParameters(rng.normal(0, 2.0, t.GetNumberOfParameters()).tolist())
    field = itk_runner.sampled_field(t, g, threads=2)
    assert field.grid == g
    p = grid_points(g)
    expected = np.array([t.TransformPoint(q[::-1].tolist())[::-1] for q in p]) - p
    np.testing.assert_allclose(field.values.reshape(-1, 3), expected, atol=1e-9)
    assert np.abs(expected).max() > 0.5  # the check is not trivial
    # between the samples the field interpolates the B-spline closely
    lo, hi = g.extent
    q = rng.uniform(lo, hi, (200, 3))
    exact = np.array([t.TransformPoint(v[::-1].tolist())[::-1] for v in q])
    assert np.abs(field(q) - exact).max() < 0.25 * np.abs(expected).max()


def test_deformable_recovers_smooth_deformation(deformed_pair):
    fixed, moving, A, pf, true_b = deformed_pair
    sp = grid_of(fixed).spacing
    no_deformation = _mean_error(pf, true_b, sp)
    _T = align_affine(fixed, moving, initial=A, shrink_factors=(2, 1), threads=2)
    m, _ = np.asarray(_T.matrix), _T.report
    affine_only = _mean_error(_apply(np.linalg.inv(A) @ m, pf), true_b, sp)
    _T = align_deformable(
        fixed, moving, initial=A, control_point_spacing=16, sampling_percentage=(0.1, 0.02), threads=2
    )
    values, g, report = _T.values, _T.grid, _T.report
    field = lazyreg.DisplacementField.from_array(values, g.spacing, g.origin)
    err = _mean_error(field(pf), true_b, sp)
    assert affine_only > 1.0 and no_deformation > 1.5
    assert err < 1.0 and err < 0.6 * affine_only, (no_deformation, affine_only, err)
    assert report["transform"] == "bspline" and report["mesh_size"] == (3, 6, 6)
    assert report["field_shape"] == g.shape and values.shape == (*g.shape, 3)
    assert np.all(np.asarray(g.spacing) >= np.asarray(sp))  # never finer than the fixed grid
    assert report["max_displacement"] > 2.0
    # the whole transform is [initial, field]: points mapped by lazyreg land on the truth
    mapped = lazyreg.transform_points(pf, [Affine(A), field])
    assert _mean_error(mapped, _apply(A, true_b), sp) < 1.0


def test_dense_field_with_demons_reduces_error(deformed_pair):
    fixed, moving, A, pf, true_b = deformed_pair
    sp = grid_of(fixed).spacing
    _T = align_deformable(
        fixed, moving, transform="field", metric="demons", initial=A, control_point_spacing=16, threads=2
    )
    values, g, report = _T.values, _T.grid, _T.report
    field = lazyreg.DisplacementField.from_array(values, g.spacing, g.origin)
    assert _mean_error(field(pf), true_b, sp) < 0.8 * _mean_error(pf, true_b, sp)
    assert report["transform"] == "field" and report["levels"][0]["sampling_percentage"] == 1.0


def test_bspline_mesh_refinement_levels(tiny_pair):
    fixed, moving, truth = tiny_pair
    for optimizer in ("lbfgsb", "gradient_descent"):
        _T = align_deformable(
            fixed, moving, initial=truth, control_point_spacing=12, control_point_levels=(1, 2),
            shrink_factors=(2, 1), optimizer=optimizer, optimizer_args={"numberOfIterations": 2},
        )
        values, g, report = _T.values, _T.grid, _T.report
        assert [lv["mesh_size"] for lv in report["levels"]] == [(2, 2, 2), (4, 4, 4)]
        assert report["control_point_spacing"] == (6.0, 6.0, 6.0)


def test_field_grid_can_be_chosen(tiny_pair):
    fixed, moving, truth = tiny_pair
    g = Grid((4, 5, 6), (6.0, 5.0, 4.0), (1.0, 2.0, 3.0))
    _T = align_deformable(fixed, moving, initial=truth, field_grid=g, shrink_factors=(1,),
                                     control_point_spacing=12, optimizer_args={"numberOfIterations": 1})
    values, g2, _ = _T.values, _T.grid, _T.report
    assert g2 == g and values.shape == (4, 5, 6, 3)


def test_too_coarse_level_is_refused(tiny_pair):
    fixed, moving, _ = tiny_pair
    with pytest.raises(LazyregError, match=r"^shrink_factors: factor 8 leaves fewer than 2 voxels .* \(12, 24, 24\)"):
        align_affine(fixed, moving, shrink_factors=(8, 1))
    _T = align_affine(fixed, moving, optimizer_args={"numberOfIterations": 1})
    _, report = np.asarray(_T.matrix), _T.report
    assert [lv["shrink_factor"] for lv in report["levels"]] == [1]  # automatic levels fit the image


# --------------------------------------------------------------------------- real data


@pytest.mark.slow
@pytest.mark.shared_data
def test_real_tutorial_affine_from_centres(tutorial_dir):
    fix = lazyreg.open_image(tutorial_dir / "fix.n5", group="lowres").compute()
    mov = lazyreg.open_image(tutorial_dir / "mov.n5", group="lowres").compute()
    gf, gm = grid_of(fix), grid_of(mov)
    F = _to_sitk(np.asarray(fix.values, np.float32), gf)
    M = _to_sitk(np.asarray(mov.values, np.float32), gm)
    init = sitk.CenteredTransformInitializer(F, M, sitk.AffineTransform(3),
                                             sitk.CenteredTransformInitializerFilter.GEOMETRY)
    initial = Affine.from_sitk(init).matrix

    def pearson(m):
        r = sitk.Resample(M, F, Affine(m).to_sitk(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        return float(np.corrcoef(np.asarray(fix.values, float).ravel(), sitk.GetArrayFromImage(r).ravel())[0, 1])

    assert pearson(initial) < 0.1
    _T = align_affine(fix, mov, initial=initial, threads=2)
    m, report = np.asarray(_T.matrix), _T.report
    assert pearson(m) > 0.45, report

