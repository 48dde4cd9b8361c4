"""Tests for lazyreg.align (the step pipeline): laziness, validation, accuracy end to end."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest

import lazyreg
from _helpers import voxel_error
from lazyreg import Affine, LazyregError
from lazyreg.transforms.affine import rotation_matrices
from lazyreg import align
from lazyreg.registration.steps import parse_steps
from lazyreg.result_cache import clear_cache
from lazyreg.testing import count_tasks
from lazyreg.data import synthetic_pair
from lazyreg.images import grid_of

from test_registration_itk import deformed_pair  # noqa: F401  (fixture)



def _pair(angles=(8.0, -4.0, 5.0), shift=(4.0, -6.0, 5.0), scale=(1.05, 0.97, 1.0), seed=2, **kw):
    shape, spacing = (64, 128, 128), (2.0, 1.0, 1.0)
    centre = np.array([63.0, 63.5, 63.5])
    m = np.eye(4)
    m[:3, :3] = rotation_matrices(angles) @ np.diag(scale)
    m[:3, 3] = centre - m[:3, :3] @ centre + np.asarray(shift)
    return synthetic_pair(shape, spacing, matrix=m, seed=seed, **kw)


def test_building_runs_nothing_and_result_is_lazy():
    fixed, moving, _ = _pair()
    fixed = fixed.chunk(32)
    with count_tasks() as c:
        A = align(fixed, moving, [("random", {"candidates": 50}), ("affine", {})])
        out = lazyreg.apply_transform(fixed, moving, [A])
    assert c.n == 0
    assert isinstance(A, Affine) and A.is_lazy
    assert isinstance(out.data, da.Array)


@pytest.mark.parametrize(
    "steps, message",
    [
        ([("afine", {})], r"unknown step 'afine' \(did you mean 'affine'\?\); valid steps: ransac, random, rigid, affine, deform"),
        ([("affine", {"metrc": "correlation"})], r"unknown option 'metrc' \(did you mean 'metric'\?\)"),
        ([("random", {"candidate": 5})], r"unknown option 'candidate'"),
        ([("affine", [])], "options must be a dict"),
        ([], "non-empty list"),
        ([("deform", {}), ("affine", {})], "'deform' returns a displacement field, so only steps returning fields may follow it"),
        ([("demons", {}), ("deform", {}), ("rigid", {}), ("demons", {})], r"'demons' returns a displacement field, so only steps returning fields may follow it \(got 'rigid' after it\)"),
    ],
)
def test_step_validation_is_up_front(steps, message):
    fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
    with pytest.raises(LazyregError, match=message):
        align(fixed, moving, steps)


def test_masks_on_wrong_grid_and_bad_initial():
    fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
    bad = lazyreg.image(np.ones((16, 24, 25), bool), lazyreg.spacing(fixed))
    with pytest.raises(LazyregError, match="fixed_mask: the mask's grid"):
        align(fixed, moving, ["affine"], fixed_mask=bad)
    with pytest.raises(LazyregError, match="initial"):
        align(fixed, moving, ["affine"], initial=np.eye(4))


@pytest.mark.slow
def test_random_then_affine_recovers_a_20_degree_rotation():
    fixed, moving, truth = _pair(angles=(-20.0, -4.0, 3.0), noise=0.02)  # public convention (see search tests)
    # 2000 candidates find this rotation for every seed tried (500, the default, for 5 of 8)
    A = align(fixed, moving, [("random", {"candidates": 2000}), ("affine", {})], seed=0).compute()
    assert voxel_error(Affine(np.eye(4)), Affine(truth), fixed) > 10
    err = voxel_error(A, Affine(truth), fixed)
    assert err < 0.5, err
    assert [r["step"] for r in A.report] == ["random", "affine"]
    assert all("seconds_total" in r for r in A.report)


def test_deterministic_for_a_seed():
    fixed, moving, _ = _pair()
    steps = [("random", {"candidates": 100, "refine_rounds": 0}), ("affine", {"shrink_factors": (4,)})]
    a = align(fixed, moving, steps, seed=5).compute()
    clear_cache()  # the second run computes again (it would reuse the first's result)
    b = align(fixed, moving, steps, seed=5).compute()
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_itk_option_values_are_checked_up_front():
    fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
    with pytest.raises(LazyregError, match=r"steps\[0\] \('affine'\): .*metric"):
        align(fixed, moving, [("affine", {"metric": "mutual_info"})])
    with pytest.raises(LazyregError, match=r"steps\[1\] \('rigid'\): .*optimizer"):
        align(fixed, moving, [("random", {}), ("rigid", {"optimizer": "adam"})])


def test_deform_step_returns_lazy_affine_and_field(deformed_pair):
    """`align(..., [..., ("deform", ...)])` -> lazy [affine, field] recovering a known deformation."""
    from test_registration_itk import _mean_error

    fixed, moving, A, pf, true_b = deformed_pair
    sp = grid_of(fixed).spacing
    with count_tasks() as c:
        result = align(
            fixed,
            moving,
            [("affine", {"shrink_factors": (2, 1)}), ("deform", {"control_point_spacing": 16, "sampling_percentage": (0.1, 0.02)})],
            initial=Affine(A),
        )
    assert c.n == 0
    affine, field = result
    assert affine.is_lazy and field.is_lazy
    field = field.compute()
    affine = affine.compute()
    mapped = lazyreg.transform_points(pf, [affine, field])
    err = _mean_error(mapped, lazyreg.transform_points(true_b, [Affine(A)]), sp)
    assert err < 1.0, err
    assert [r["step"] for r in field.report] == ["affine", "deform"]
    aligned = lazyreg.apply_transform(fixed, moving, [affine, field]).values
    before = lazyreg.apply_transform(fixed, moving, [affine]).values
    r_def = np.corrcoef(aligned.ravel(), fixed.values.ravel())[0, 1]
    r_aff = np.corrcoef(before.ravel(), fixed.values.ravel())[0, 1]
    assert r_def > r_aff + 0.05, (r_aff, r_def)


# --------------------------------------------------------------------------- the step protocol


@pytest.mark.parametrize(
    "step, options, option",
    [
        ("ransac", {"blob_sizes": (12, 4)}, "blob_sizes"),
        ("ransac", {"nspots": 2}, "nspots"),
        ("ransac", {"match_threshold": 1.5}, "match_threshold"),
        ("random", {"candidates": 0}, "candidates"),
        ("random", {"max_scale": 1.5}, "max_scale"),
        ("random", {"max_rotation": (1, 2)}, "max_rotation"),
        ("rigid", {"metric": "mutual"}, "metric"),
        ("affine", {"shrink_factors": (4, 0)}, "shrink_factors"),
        ("affine", {"optimizer_args": {"learningrate": 1.0}}, "optimizer_args"),
        ("deform", {"control_point_spacing": -3}, "control_point_spacing"),
        ("deform", {"control_point_levels": (2, 3)}, "control_point_levels"),
    ],
)
def test_every_step_checks_its_options_when_the_graph_is_built(step, options, option):
    """A bad value fails in align/align_piecewise, before anything runs, naming the step and option."""
    fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
    with count_tasks() as c:
        for build in (
            lambda: align(fixed, moving, [(step, options)]),
            lambda: lazyreg.align_piecewise(fixed, moving, [(step, options)], blocksize=8),
        ):
            with pytest.raises(LazyregError, match=rf"steps\[0\] \('{step}'\): .*{option}"):
                build()
    assert c.n == 0


def _shift_step(fixed, moving, *, initial, shift=(0.0, 0.0, 0.0), seed=0):
    """A custom step: the current transform followed by a fixed shift (reports its seed)."""
    A = initial @ Affine.from_translation(shift)
    return Affine(A.matrix, report={"shift": tuple(shift), "seed": seed})


def _check_shift(options):
    if "shift" in options and np.shape(options["shift"]) != (3,):
        raise LazyregError(f"shift: expected 3 numbers (z, y, x), got {options['shift']!r}")


def test_a_registered_step_runs_in_align_and_in_piecewise_blocks():
    lazyreg.register_step("test_shift", _shift_step, validate=_check_shift, replace=True)
    try:
        fixed, moving, _ = synthetic_pair((16, 24, 24), seed=0)
        # checked up front, by name and by its validator
        with pytest.raises(LazyregError, match=r"unknown option 'shfit' \(did you mean 'shift'\?\)"):
            align(fixed, moving, [("test_shift", {"shfit": 1})])
        with pytest.raises(LazyregError, match=r"steps\[0\] \('test_shift'\): shift: expected 3 numbers"):
            align(fixed, moving, [("test_shift", {"shift": 1.0})])
        A = align(fixed, moving, [("test_shift", {"shift": (0.0, 1.0, 2.0)})], seed=7).compute()
        np.testing.assert_allclose(np.asarray(A.matrix)[:3, 3], [0.0, 1.0, 2.0])
        assert A.report == [{"shift": (0.0, 1.0, 2.0), "seed": 7, "step": "test_shift", "seconds_total": A.report[0]["seconds_total"]}]
        # chained after a built-in step, and in every block of a piecewise alignment
        B = align(fixed, moving, [("affine", {"shrink_factors": (2,)}), ("test_shift", {"shift": (0.0, 0.0, 1.0)})]).compute()
        assert [r["step"] for r in B.report] == ["affine", "test_shift"]
        field = lazyreg.align_piecewise(
            fixed, fixed, [("test_shift", {"shift": (0.0, 0.0, 0.5)})], blocksize=12, foreground_fraction=0.0
        ).compute(scheduler="threads")
        # a pure shift of an image against itself makes every block worse: no block keeps it
        assert {r["status"] for r in field.report} == {"unchanged"}
        assert all(r["steps"][0]["step"] == "test_shift" and not r["steps"][0]["kept"] for r in field.report)
    finally:
        del lazyreg.registration.steps.STEPS["test_shift"]


def test_register_step_refuses_bad_steps():
    with pytest.raises(LazyregError, match="registered already"):
        lazyreg.register_step("affine", _shift_step)
    with pytest.raises(LazyregError, match="no 'initial'"):
        lazyreg.register_step("bad", lambda fixed, moving: None)
    with pytest.raises(LazyregError, match="returns: expected"):
        lazyreg.register_step("bad", _shift_step, returns="matrix")
    assert "bad" not in lazyreg.registration.steps.STEPS
