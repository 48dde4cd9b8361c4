"""align_series: several rounds registered to one fixed round, or each to its neighbour, as one graph."""

import numpy as np
import pytest

import lazyreg
from lazyreg.errors import LazyregError
from lazyreg.result_cache import cache_info
from lazyreg.testing import assert_transforms_allclose, count_tasks

SHAPE, SPACING = (32, 64, 64), (2.0, 1.0, 1.0)
CENTRE = tuple((n - 1) * s / 2 for n, s in zip(SHAPE, SPACING))


def _truth(k: int) -> np.ndarray:
    """Round k's fixed -> moving affine: drifting a little more each round."""
    return lazyreg.Affine.from_parameters(rotation=(0.0, 0.0, 2.0 * k), translation=(1.0 * k, -1.5 * k, 2.0 * k), center=CENTRE).matrix


@pytest.fixture(scope="module")
def rounds():
    fixed = None
    movings = {}
    for k in (1, 2, 3):
        f, m, _ = lazyreg.data.synthetic_pair(SHAPE, SPACING, matrix=_truth(k), seed=4)
        fixed = f if fixed is None else fixed
        movings[f"r{k}"] = m
    return fixed, movings


@pytest.mark.parametrize("chain", [False, True])
def test_every_round_recovers_its_known_affine(rounds, chain):
    fixed, movings = rounds
    with count_tasks() as built:
        series = lazyreg.align_series(fixed, movings, "affine", chain=chain)
    assert built.n == 0  # nothing runs until asked
    assert [series.pairs[n][0] for n in series.names] == (["fixed", "r1", "r2"] if chain else ["fixed"] * 3)
    done = series.compute()
    g = lazyreg.Grid(SHAPE, SPACING)
    for k, name in enumerate(series.names, start=1):
        ts = done.transforms[name]
        assert len(ts) == (k if chain else 1)  # chained: [T_k, ..., T_1]
        # mapped points within 0.3 voxel of the truth; chained, the pairs' errors add up (0.5)
        assert_transforms_allclose(ts, [lazyreg.Affine(_truth(k))], grid=g, atol=0.5 if chain else 0.3, step=4)


def test_report_table_and_resampling_reuse_every_registration(rounds):
    fixed, movings = rounds
    series = lazyreg.align_series(fixed, movings, "affine")
    rows = series.report()
    assert [(r["round"], r["reference"], r["kind"], r["step"]) for r in rows] == [
        (n, "fixed", "step", "affine") for n in ("r1", "r2", "r3")
    ]
    aligned = series.apply(fixed, movings)
    assert set(aligned) == {"r1", "r2", "r3"}
    for name, img in aligned.items():
        r = lazyreg.metrics.pearson(fixed, img)
        assert r > 0.9, (name, r)
    assert cache_info()["align"]["computed"] == 3  # once per round, though reports, images and metrics used them


@pytest.mark.slow
def test_piecewise_rows_come_per_block_and_the_field_is_on_top_of_the_affine(rounds):
    fixed, movings = rounds
    series = lazyreg.align_series(fixed, {"r1": movings["r1"]}, "affine", piecewise={"blocksize": 32, "steps": [("affine", {})]})
    [(ref, ts)] = series.pairs.values()
    assert ref == "fixed" and isinstance(ts[0], lazyreg.Affine) and isinstance(ts[1], lazyreg.DisplacementField)
    rows = series.report()
    blocks = [r for r in rows if r["kind"] == "block"]
    assert len(blocks) == 2 * 2 and all(r["round"] == "r1" for r in blocks)
    assert [r["kind"] for r in rows].count("step") == 1
    assert lazyreg.metrics.pearson(fixed, series.apply(fixed, [movings["r1"]])["r1"]) > 0.9


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(movings=42), "movings: expected a list of images or a mapping"),
        (dict(movings=[]), "movings: no images"),
        (dict(movings={"fixed": None}), "'fixed' is the name of the fixed round"),
        (dict(steps="affine,afine"), "unknown step 'afine'"),
        (dict(piecewise={"static_transforms": []}), "'static_transforms' is set by align_series"),
        (dict(piecewise="yes"), "piecewise: expected True/False or a mapping"),
        (dict(chain="yes"), "chain: expected True or False"),
        (dict(steps="affine,deform", piecewise=True), "already end with a deformable step"),
    ],
)
def test_bad_arguments_fail_before_anything_runs(rounds, kwargs, words):
    fixed, movings = rounds
    args = dict(movings=[movings["r1"]], steps="affine") | kwargs
    with count_tasks() as ran, pytest.raises(LazyregError, match=words):
        lazyreg.align_series(fixed, args.pop("movings"), args.pop("steps"), **args)
    assert ran.n == 0


def test_apply_matches_rounds_by_name(rounds):
    fixed, movings = rounds
    series = lazyreg.align_series(fixed, {"r1": movings["r1"]}, "affine")
    with pytest.raises(LazyregError, match=r"movings: expected the rounds \['r1'\], got \['r9'\]"):
        series.apply(fixed, {"r9": movings["r1"]})
