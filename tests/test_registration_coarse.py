"""The coarse stage of align_piecewise (lazyreg.registration.coarse): a whole-image B-spline first."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import lazyreg
from lazyreg.errors import LazyregError
from lazyreg.images import Grid
from lazyreg.registration import block_align
from lazyreg.registration.blend import local_displacement
from lazyreg.registration.block_align import coarse_crop
from lazyreg.registration.coarse import COARSE_OPTIONS, coarse_field, coarse_options, coarse_stride
from lazyreg.registration.steps import parse_steps
from lazyreg.result_cache import Deferred, cache_info, clear_cache

SHAPE = (64, 96, 96)
STEPS = [("affine", {"shrink_factors": (2,)})]
KW = {"foreground_fraction": 0.1}  # the phantom is sparse
BLOCKS = (32, 48, 48)
#: The coarse stage's first two levels (shrink 4 and 2, the mesh refined once).
TWO_LEVELS = {"shrink_factors": (4, 2), "control_point_levels": (1, 2)}


@pytest.fixture(scope="module")
def pair():
    # the deformation reaches the edges: blocks there see part of it only
    fixed, moving, A, d = lazyreg.data.warped_pair(SHAPE, seed=5, amplitude=5.0, noise=0.02)
    return fixed, moving, lazyreg.Affine(A), d


def _error_voxels(transforms, fixed, d, A):
    """Mean error (voxels) of ``transforms`` against the truth ``[A, d]`` at the fixed voxels, inside."""
    g = lazyreg.images.grid_of(fixed)
    idx = np.stack(np.meshgrid(*[np.arange(4, n - 4, 4) for n in g.shape], indexing="ij"), -1).reshape(-1, 3)
    pts = g.to_physical(idx)
    truth = lazyreg.DisplacementField.from_array(d, g.spacing, g.origin)
    want = lazyreg.transform_points(pts, [A, truth])
    got = lazyreg.transform_points(pts, transforms)
    return float(np.mean(np.linalg.norm((got - want) / np.asarray(g.spacing), axis=1)))


def test_stride_and_options():
    assert coarse_stride((64, 64, 64)) == 1
    assert coarse_stride((298, 483, 913)) == 4 and coarse_stride((149, 241, 456)) == 2
    assert coarse_stride((10, 10, 10), max_voxels=125) == 2
    assert coarse_options(False) is None and coarse_options(None) is None
    assert coarse_options(True) == COARSE_OPTIONS
    assert coarse_options({"mesh_size": 3})["mesh_size"] == 3
    with pytest.raises(LazyregError, match="coarse: .*control_point_levels"):
        coarse_options({"shrink_factors": (2, 1)})


@pytest.mark.parametrize("bad, match", [
    ("yes", "coarse: expected True, False or a dict"),
    ({"mesh_size": -1}, "coarse: .*mesh_size"),
    ({"metrik": "correlation"}, "coarse: .*metrik"),
])
def test_bad_options_fail_when_the_graph_is_built(pair, bad, match):
    fixed, moving, A, _ = pair
    with pytest.raises(LazyregError, match=match):
        lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], coarse=bad)


def test_left_out_after_a_field_for_one_block_and_for_tiny_images(pair):
    fixed, moving, A, d = pair
    g = lazyreg.images.grid_of(fixed)
    D = lazyreg.DisplacementField.from_array(np.zeros(g.shape + (3,), np.float32), g.spacing, g.origin)
    assert coarse_field(fixed, moving, [A, D], COARSE_OPTIONS) is None
    assert coarse_field(fixed[:40], moving, [A], COARSE_OPTIONS) is None  # 40 // 4 < 16 slices
    assert coarse_field(fixed, moving, [A], None) is None
    assert coarse_field(fixed, moving, [A], COARSE_OPTIONS).is_lazy
    # one block: nothing to constrain, no coarse stage (the same graph as coarse=False)
    one = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=SHAPE, static_transforms=[A], coarse=True)
    off = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=SHAPE, static_transforms=[A])
    assert one.data.name == off.data.name


def test_the_images_are_read_and_put_in_local_contrast_once_with_the_coarse_field(pair):
    from lazyreg.testing import counting_image

    fixed, moving, A, _ = pair
    (f, flog), (m, mlog) = counting_image(fixed, chunks=(32, 48, 48)), counting_image(moving, chunks=(32, 48, 48))
    quick = {**COARSE_OPTIONS, "shrink_factors": (4,), "control_point_levels": (1,),
             "optimizer_args": {"numberOfIterations": 3}}
    G = coarse_field(f, m, [A], quick)
    first = G.compute(scheduler="threads")
    assert flog.voxels == fixed.size and mlog.voxels == moving.size
    flog.clear()
    mlog.clear()
    again = coarse_field(f, m, [A], quick).compute(scheduler="threads")  # e.g. a second to_zarr
    assert flog.reads == [] and mlog.reads == [] and cache_info()["align"]["computed"] == 1
    np.testing.assert_array_equal(first.values, again.values)


@pytest.mark.slow
def test_blocks_choose_their_start_and_the_coarse_stage_lowers_their_error(pair, monkeypatch):
    fixed, moving, A, d = pair
    # the stage's last level at full resolution (the default) costs 6 s more here and adds nothing
    # to what this test shows (measured mean error 0.42 voxel with the defaults, 0.38 with these)
    clear_cache()
    with dask.config.set(scheduler="threads"):
        field = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], coarse=TWO_LEVELS, **KW).compute()
        off = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], **KW).compute()
        assert cache_info()["align"]["computed"] == 1  # the coarse stage, once
        # blocks forced to keep the static start give the blocks alone: their maps leave the coarse field out
        monkeypatch.setattr(block_align, "_better_start", lambda runs, call, compare: (runs[0].step(0, call), runs[0])[1])
        clear_cache()
        static = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], coarse=TWO_LEVELS, **KW).compute()
    np.testing.assert_allclose(static.values, off.values, atol=1e-5)
    assert {r["start"] for r in static.report if r["status"] == "ok"} == {"static"}
    aligned = [r for r in field.report if r["status"] in ("ok", "unchanged")]
    assert len(aligned) >= 6 and {r["start"] for r in aligned} <= {"static", "coarse"}
    assert sum(r["start"] == "coarse" for r in aligned) >= 3
    assert all(r["start"] is None for r in off.report)
    # the deformation reaches the edges, where the blocks alone see part of it
    e_on, e_off, e_affine = (_error_voxels(t, fixed, d, A) for t in ([A, field], [A, off], [A]))
    print(f"mean error (voxels): affine {e_affine:.3f}, blocks {e_off:.3f}, coarse + blocks {e_on:.3f}")
    assert e_on < 0.8 * e_off < e_affine
    assert e_on < 0.5


def test_a_first_affine_of_several_levels_runs_its_first_level_from_both_starts_then_the_rest_once(monkeypatch):
    fixed, moving, truth = lazyreg.data.synthetic_pair((32, 48, 48), seed=3, noise=0.02)
    g = lazyreg.images.grid_of(fixed)
    task = block_align.BlockTask((0, 0, 0), g, (), None, g.extent, (), 0.1, 0, False)
    f = fixed.values.astype(np.float32)
    mirrored = np.ascontiguousarray(moving.values[:, :, ::-1], dtype=np.float32)  # a worse start: mirrored
    runs = [block_align._StepRunner(task, f, m, None, None, None) for m in (mirrored, moving.values.astype(np.float32))]
    levels = []
    real = block_align.run_steps

    def spy(steps, *args, **kwargs):
        levels.append(tuple(steps[0].options["shrink_factors"]))
        return real(steps, *args, **kwargs)

    monkeypatch.setattr(block_align, "run_steps", spy)
    (call,) = parse_steps([("affine", {"shrink_factors": (4, 2)})])
    run = block_align._better_start(runs, call, None)
    assert levels == [(4,), (4,), (2,)]  # level 1 from each start, level 2 from the chosen one
    assert run is runs[1]
    # one row for the step: both parts' levels, seconds and check; the rest refined level 1's result
    (st,) = run.rows
    assert st["step"] == "affine" and st["kept"], st
    assert [k for k in st["profile"] if k.startswith("level")] == ["level 1 (shrink 4)", "level 2 (shrink 2)"]
    parts = st["profile"]["level 1 (shrink 4)"] + st["profile"]["level 2 (shrink 2)"] + st["profile"]["check"]
    assert st["seconds"] >= parts - 1e-3
    assert len(runs[0].rows) == 1 and st["metric"] >= runs[1].best > 0.5


def test_a_block_from_the_coarse_start_maps_through_its_transform_then_the_coarse_field():
    """``u(x) = y + c(y) - x`` with ``y = L(x)``: the block's own transform first, then the crop of
    the coarse field it holds (a linear field here, which trilinear interpolation reproduces)."""
    g = Grid((12, 12, 12), 2.0, origin=(-4.0, -4.0, -4.0))
    c = 0.01 * g.to_physical(np.indices(g.shape).reshape(3, -1).T).reshape(g.shape + (3,)) + np.array([0.5, 0.0, -0.25])
    m = np.eye(4)
    m[:3, :3] *= 1.02
    m[:3, 3] = (1.0, -2.0, 0.5)
    region = Grid((8, 8, 8), 1.0, origin=(4.0, 4.0, 4.0))
    crop = coarse_crop(c.astype(np.float32), g, region)
    assert crop[1].shape < g.shape and crop[0].dtype == np.float16
    x = np.array([[5.0, 6.0, 7.0], [10.0, 4.0, 8.5]])
    y = x @ m[:3, :3].T + m[:3, 3]
    want = y + 0.01 * y + np.array([0.5, 0.0, -0.25]) - x
    got = local_displacement({"status": "ok", "matrix": m, "coarse": crop}, x)
    np.testing.assert_allclose(got, want, atol=2e-3)
    # without a result of its own or a neighbour's fill, the block takes the coarse field
    np.testing.assert_allclose(local_displacement({"status": "skipped", "coarse": crop}, x), 0.01 * x + [0.5, 0, -0.25], atol=2e-3)


def test_block_tasks_get_the_coarse_field_as_a_task_key_not_as_a_collection(pair):
    """The coarse field's values reach each block as the result of one task: a collection embedded
    in a task would be computed again inside every block (it cost 1.7 s per phantom block)."""
    fixed, moving, A, _ = pair
    field = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], coarse=True, **KW)
    graph = dict(field.data.__dask_graph__())
    blocks = [v for k, v in graph.items() if isinstance(k, tuple) and str(k[0]).startswith("lazyreg-block-")]
    assert len(blocks) == 8

    def embedded(x):
        if dask.is_dask_collection(x):
            return True
        if isinstance(x, Deferred):
            return embedded(x.spec)
        if isinstance(x, (tuple, list)):
            return any(embedded(a) for a in x)
        return False

    assert not any(embedded(getattr(t, "args", t)) for t in blocks)


def test_on_by_default_with_the_best_steps_only(pair):
    """``coarse=None`` (the default): the coarse stage with the default ("best") steps, not with the
    faster presets or steps of one's own; the command line follows the same rule."""
    from lazyreg.cli.parser import build_parser

    fixed, moving, A, _ = pair
    kw = dict(blocksize=BLOCKS, static_transforms=[A], **KW)

    def name(*args, **extra):
        return lazyreg.align_piecewise(fixed, moving, *args, **kw, **extra).data.name

    assert name() == name(coarse=True) == name(quality="best") != name(coarse=False)
    assert name(quality="fast") == name(quality="fast", coarse=False) != name(quality="fast", coarse=True)
    assert name(STEPS) == name(STEPS, coarse=False) != name(STEPS, coarse=True)
    base = ["align-piecewise", "fix.zarr", "mov.zarr", "-o", "out"]
    assert build_parser().parse_args(base).coarse is None
    assert build_parser().parse_args(base + ["--no-coarse"]).coarse is False
    assert build_parser().parse_args(base + ["--coarse"]).coarse is True
