"""Piecewise alignment: block layout, blending, laziness, recovery of a known field, failures, errors."""

from __future__ import annotations

import logging

import dask
import numpy as np
import pytest

import lazyreg
from lazyreg import Affine, DisplacementField, LazyregError
from lazyreg.metrics import pearson_arrays
from lazyreg.registration import block_align
from lazyreg.result_cache import clear_cache
from lazyreg.testing import count_tasks, counting_image
from lazyreg.registration.blend import field_chunk, fill_block
from lazyreg.registration.blocks import block_layout
from lazyreg.data import smooth_displacement, warped_pair
from lazyreg.images import Grid, grid_of
from lazyreg.metrics import pearson

from _helpers import grid_points


# --------------------------------------------------------------------------- geometry


def test_layout_regions_and_weights_partition_unity():
    g = Grid((40, 64, 80), (2.0, 1.0, 0.5), (5.0, -3.0, 1.0))
    L = block_layout(g, (16, 16, 16), 0.25)
    assert L.nblocks == (3, 4, 5) and L.pad == (4, 4, 4)
    assert L.region((0, 1, 4)) == (slice(0, 20), slice(12, 36), slice(60, 80))
    # trapezoid weights of all blocks sum to one between the first and the last block centre
    # (before renormalisation, which the volume edges need)
    for a in range(3):
        c = g.coords()["zyx"[a]]
        blocks = [tuple(i if k == a else 0 for k in range(3)) for i in range(L.nblocks[a])]
        total = sum(L.weights_1d(b, a, c) for b in blocks)
        inner = (c >= L.centre(blocks[0])[a]) & (c <= L.centre(blocks[-2])[a])
        assert np.allclose(total[inner], 1.0) and np.all(total > 0), a
    # a block's weight is 1 in the middle of its core and 0 beyond core + pad
    c = g.coords()["x"]
    w = L.weights_1d((0, 0, 2), 2, c)
    idx = np.arange(len(c))
    assert np.all(w[(idx >= 36) & (idx <= 43)] == 1.0) and np.all(w[(idx < 28) | (idx > 51)] == 0.0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"blocksize": 4}, r"blocksize: every size must be at least 8"),
        ({"blocksize": (8, 8, 500)}, r"blocksize: larger than the fixed image .*x: 500 > 48"),
        ({"blocksize": "big"}, r"blocksize: expected an integer"),
        ({"blocksize": 16, "overlap": 1.0}, r"overlap: expected a fraction .* \[0, 1\)"),
        ({"blocksize": 16, "overlap": -0.1}, r"overlap: expected a fraction"),
        ({"blocksize": 16, "static_transforms": [np.eye(4)]}, r"static_transforms\[0\]: expected an Affine"),
        ({"blocksize": 16, "foreground_fraction": 2}, r"foreground_fraction: expected a number in \[0, 1\]"),
        ({"blocksize": 16, "field_spacing": -1}, r"field_spacing: expected a positive"),
    ],
)
def test_bad_input_is_refused_up_front(kwargs, match):
    fixed, moving, _ = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    with pytest.raises(LazyregError, match=match):
        lazyreg.align_piecewise(fixed, moving, [("affine", {})], **kwargs)


def test_bad_steps_and_masks_are_refused():
    fixed, moving, _ = lazyreg.data.synthetic_pair((24, 48, 48), seed=0)
    with pytest.raises(LazyregError, match=r"unknown step 'afine' \(did you mean 'affine'\?\)"):
        lazyreg.align_piecewise(fixed, moving, [("afine", {})], blocksize=16)
    wrong = lazyreg.image(np.ones((24, 48, 40), bool), lazyreg.spacing(fixed))
    with pytest.raises(LazyregError, match=r"fixed_mask: the mask's grid"):
        lazyreg.align_piecewise(fixed, moving, ["affine"], blocksize=16, fixed_mask=wrong)
    with pytest.raises(LazyregError, match=r"'deform' returns a displacement field, so only steps returning fields may follow it"):
        lazyreg.align_piecewise(fixed, moving, ["deform", "affine"], blocksize=16)


# --------------------------------------------------------------------------- blending


def _results_from_truth(L, truth, failed=()):
    """Block results whose local affine is the first-order fit of a smooth truth at the centre."""
    out = {}
    for idx in L.indices():
        c = L.centre(idx)
        eps = 1e-3
        jac = np.stack([(truth(c + eps * e) - truth(c - eps * e)) / (2 * eps) for e in np.eye(3)], 1)
        m = np.eye(4)
        m[:3, :3] = np.eye(3) + jac
        m[:3, 3] = c + truth(c) - m[:3, :3] @ c
        status = "failed" if idx in failed else "ok"
        out[idx] = {"index": idx, "status": status, "matrix": m if status == "ok" else None, "field": None}
    return out


def _blend(L, results, fgrid=None):
    fgrid = fgrid or L.grid
    filled = {i: fill_block(L, results[i], *[results[j] for j in L.neighbours(i)]) for i in L.indices()}
    lo = np.asarray(fgrid.origin)
    hi = lo + (np.asarray(fgrid.shape) - 1) * np.asarray(fgrid.spacing)
    return field_chunk(L, fgrid, *[filled[j] for j in L.blocks_touching(lo, hi)])


def test_blending_is_seamless_and_a_failed_block_is_covered_by_its_neighbours():
    g = Grid((64, 64, 64), (2.0, 1.0, 1.0), (3.0, 0.0, -2.0))
    L = block_layout(g, 8, 0.5)

    def truth(p):
        return smooth_displacement(np.atleast_2d(p), g, 4.0)[0]

    pts = grid_points(g)
    exact = smooth_displacement(pts, g, 4.0).reshape(g.shape + (3,))
    good = _blend(L, _results_from_truth(L, truth))
    failed = (3, 4, 4)
    holed = _blend(L, _results_from_truth(L, truth, failed=[failed]))
    sp = np.asarray(g.spacing)
    for u in (good, holed):
        err = np.linalg.norm((u - exact) / sp, axis=-1)
        assert err.mean() < 0.15, err.mean()  # first-order local fits of the smooth truth
        # no seams: neighbouring voxels differ no more than the smooth truth allows (+ a margin)
        for a in range(3):
            jump = np.abs(np.diff(u, axis=a)).max()
            assert jump <= np.abs(np.diff(exact, axis=a)).max() + 0.05 * sp[a], (a, jump)
    core = L.core(failed)
    assert np.linalg.norm(holed[core] - exact[core], axis=-1).max() < 0.5  # no hole where it failed


def test_fill_never_exceeds_what_the_aligned_neighbours_found():
    """One aligned block with a strong local scale among failed blocks: extrapolating its affine
    over the failed blocks would grow with distance (and fold the field); the fill extends its
    displacement at constant value, so the field stays within the block's own range, unfolded."""
    g = Grid((48, 48, 48), (2.0, 1.0, 1.0), (0.0, 5.0, -3.0))
    L = block_layout(g, 16, 0.25)
    ok = (1, 1, 1)
    c = L.centre(ok)
    m = np.eye(4)
    m[:3, :3] = np.diag([0.7, 1.3, 0.8])  # 30% local scale: u grows 0.3 * distance
    m[:3, 3] = c - m[:3, :3] @ c + np.array([1.0, -2.0, 0.5])
    results = {i: {"index": i, "status": "ok" if i == ok else "failed", "matrix": m if i == ok else None, "field": None}
               for i in L.indices()}
    u = _blend(L, results)
    rg = L.region_grid(ok)
    own = grid_points(rg) @ m[:3, :3].T + m[:3, 3] - grid_points(rg)
    lo, hi = own.min(0), own.max(0)
    flat = u.reshape(-1, 3)
    assert np.all(flat >= lo - 1e-4) and np.all(flat <= hi + 1e-4), (flat.min(0), lo, flat.max(0), hi)
    # the affine extrapolated to the far corner of the volume would reach far beyond that range
    far = np.asarray(g.origin) + (np.asarray(g.shape) - 1) * np.asarray(g.spacing)
    assert np.abs(far @ m[:3, :3].T + m[:3, 3] - far).max() > np.abs(np.stack([lo, hi])).max() + 5
    # no folds: x -> x + u keeps a positive Jacobian determinant everywhere
    grads = [np.gradient(u[..., i], *g.spacing) for i in range(3)]
    jac = np.stack([np.stack(gr, -1) for gr in grads], -2) + np.eye(3)
    assert np.linalg.det(jac).min() > 0


def test_blend_chunks_equal_one_chunk():
    g = Grid((40, 48, 56), (1.5, 1.0, 1.0), (0.0, 2.0, 0.0))
    L = block_layout(g, (16, 16, 16), 0.5)
    res = _results_from_truth(L, lambda p: smooth_displacement(np.atleast_2d(p), g, 3.0)[0], failed=[(0, 0, 0)])
    whole = _blend(L, res)
    part = Grid((10, 20, 7), g.spacing, tuple(g.to_physical(np.array([[12.0, 9.0, 30.0]]))[0]))
    assert np.allclose(_blend(L, res, part), whole[12:22, 9:29, 30:37], atol=1e-6)


# --------------------------------------------------------------------------- the lazy graph


@pytest.fixture(scope="module")
def warped():
    fixed, moving, A, d = warped_pair((32, 80, 80), spacing=(2.0, 1.0, 1.0), origin=(4.0, -2.0, 1.0), amplitude=3.0, seed=2)
    return fixed, moving, A, d


def test_building_computes_nothing(warped, tmp_path):
    fixed, moving, A, _ = warped
    lazyreg.to_zarr(fixed, tmp_path / "f.ome.zarr")
    lazyreg.to_zarr(moving, tmp_path / "m.ome.zarr")
    f = lazyreg.open_image(tmp_path / "f.ome.zarr")
    m = lazyreg.open_image(tmp_path / "m.ome.zarr")
    static = lazyreg.align(f, m, [("affine", {})])  # lazy too
    with count_tasks() as cb:
        field = lazyreg.align_piecewise(f, m, [("affine", {})], blocksize=(16, 40, 40), static_transforms=[static])
        out = lazyreg.apply_transform(f, m, [static, field])
    assert cb.n == 0
    assert field.is_lazy and out.chunks is not None
    g = grid_of(f)  # the default field grid: every 2nd fixed voxel, covering the fixed grid
    assert field.grid.spacing == tuple(2 * s for s in g.spacing) and field.grid.origin == g.origin
    assert field.grid.shape == tuple((n + 2) // 2 for n in g.shape)


def _on_fixed(field, fixed):
    """The field's displacements at the fixed voxel centres (its own grid is coarser by default)."""
    g = grid_of(fixed)
    pts = g.to_physical(np.indices(g.shape).reshape(3, -1).T)
    return field.displacement_at(pts).reshape(g.shape + (3,))


def _mean_error(field, d, fixed):
    sp = np.asarray(lazyreg.spacing(fixed))
    err = np.linalg.norm((_on_fixed(field, fixed) - d) / sp, axis=-1)
    from scipy import ndimage as ndi

    fg = ndi.gaussian_filter(fixed.values.astype(float), 2) > 0.02 * fixed.values.max()
    return float(err[fg].mean()), fg


@pytest.mark.slow
def test_recovers_a_known_field_on_top_of_a_static_affine(warped):
    fixed, moving, A, d = warped
    steps = [("affine", {}), ("deform", {"control_point_spacing": 20.0})]
    field = lazyreg.align_piecewise(
        fixed, moving, steps, blocksize=(16, 40, 40), static_transforms=[Affine(A)], foreground_fraction=0.05
    ).compute()
    rows = field.report
    assert len(rows) == 2 * 2 * 2 and sum(r["status"] == "ok" for r in rows) >= 6, rows
    err, _ = _mean_error(field, d, fixed)
    truth_size, _ = _mean_error(DisplacementField.from_array(np.zeros_like(d), lazyreg.spacing(fixed), lazyreg.origin(fixed)), d, fixed)
    assert err < 1.0 and err < 0.5 * truth_size, (err, truth_size)
    after = pearson(fixed, lazyreg.apply_transform(fixed, moving, [Affine(A), field]))
    affine_only = pearson(fixed, lazyreg.apply_transform(fixed, moving, [Affine(A)]))
    assert after > affine_only + 0.05, (after, affine_only)


@pytest.mark.slow
def test_forced_failure_is_recorded_logged_and_covered(warped, monkeypatch, caplog):
    fixed, moving, A, d = warped
    real = block_align.run_steps

    def flaky(parsed, fx, mv, **kw):
        if lazyreg.origin(fx)[2] > 10:  # blocks of the second x column (region starts at x = 21)
            raise LazyregError("ransac: found 3 blobs in fixed, 2 in moving (forced)")
        return real(parsed, fx, mv, **kw)

    monkeypatch.setattr(block_align, "run_steps", flaky)
    with caplog.at_level(logging.WARNING, logger="lazyreg.registration"), dask.config.set(scheduler="threads"):
        field = lazyreg.align_piecewise(
            fixed, moving, [("affine", {})], blocksize=(16, 40, 40), static_transforms=[Affine(A)], foreground_fraction=0.05
        ).compute()
    failed = [r for r in field.report if r["status"] == "failed"]
    assert failed and all("forced" in r["reason"] for r in failed)
    assert any("failed" in m for m in caplog.messages)
    v = _on_fixed(field, fixed)
    assert np.all(np.isfinite(v))
    # the failed column is covered by its neighbours: displacement continues into it
    sp = np.asarray(lazyreg.spacing(fixed))
    assert np.abs(np.diff(v, axis=2)).max() < 1.0 * sp[2]
    assert np.linalg.norm(v[:, :, 60:], axis=-1).mean() > 0.3 * np.linalg.norm(v[:, :, :20], axis=-1).mean()


@pytest.mark.slow
def test_threads_and_local_cluster_agree_and_seed_is_deterministic(warped, local_cluster):
    from distributed import Client

    fixed, moving, A, _ = warped
    kw = dict(blocksize=(16, 40, 40), static_transforms=[Affine(A)], foreground_fraction=0.05, seed=3)
    steps = [("affine", {"optimizer_args": {"numberOfIterations": 20}})]
    a = lazyreg.align_piecewise(fixed, moving, steps, **kw).compute(scheduler="threads")
    clear_cache()  # each run computes its blocks (they would be reused otherwise)
    b = lazyreg.align_piecewise(fixed, moving, steps, **kw).compute(scheduler="threads")
    clear_cache()
    with Client(local_cluster):
        c = lazyreg.align_piecewise(fixed, moving, steps, **kw).compute()
    assert np.array_equal(a.values, b.values)
    assert np.array_equal(a.values, c.values)
    assert [r["status"] for r in a.report] == [r["status"] for r in c.report]


def test_skipped_blocks_and_field_spacing():
    fixed, moving, A = lazyreg.data.synthetic_pair((24, 48, 48), seed=1)
    empty = fixed.copy(data=np.zeros(fixed.shape, fixed.dtype))
    field = lazyreg.align_piecewise(empty, moving, ["affine"], blocksize=24, static_transforms=Affine(A), field_spacing=(4.0, 3.0, 3.0))
    assert field.grid.spacing == (4.0, 3.0, 3.0) and field.grid.origin == tuple(lazyreg.origin(fixed))
    lo, hi = field.grid.extent
    assert np.all(hi >= grid_of(fixed).to_physical(np.array([[23, 47, 47]]))[0])
    field = field.compute()
    assert all(r["status"] == "skipped" and "foreground" in r["reason"] for r in field.report)
    assert np.all(field.values == 0)


@pytest.mark.slow
def test_block_check_ignores_voxels_mapped_outside_the_block():
    """A pure shift on a bright background: every block improves and none is called worse
    because of the fill where its own transform leaves the block (regression)."""
    ph = lazyreg.data.phantom((48, 96, 160), seed=0)
    sp = lazyreg.spacing(ph)
    v = ph.values.astype(np.float32) + float(ph.values.max())
    big = lazyreg.image(v, sp)
    moving = lazyreg.apply_transform(big, big, [Affine.from_translation((0, 0, 1.5 * sp[2]))]).compute()
    fixed = lazyreg.image(v[:, :, 32:128], sp, origin=(0, 0, 32 * sp[2]))
    f = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=48, overlap=0.25, foreground_fraction=0.0).compute()
    assert [r["status"] for r in f.report] == ["ok"] * 4, f.report
    assert all(r["metric_after"] > r["metric_before"] + 0.03 for r in f.report)
    # moving(x) = fixed(x + 1.5), so fixed(x) = moving(x - 1.5): the field is -1.5 along x
    assert np.allclose(f.values[..., 2][8:-8, 8:-8, 8:-8], -1.5 * sp[2], atol=0.3 * sp[2])


@pytest.mark.slow
def test_blocks_partly_outside_moving_register_only_on_moving_data():
    """Moving covers only part of fixed (on a bright background): the voxels of a block that map
    outside moving hold fill values, not data, and are left out of the block's masks and metrics
    (before, the last block column registered against the zero fill: 5.5 voxels mean error)."""
    ph = lazyreg.data.phantom((48, 96, 144), seed=0)
    sp = lazyreg.spacing(ph)
    v = ph.values.astype(np.float32) + float(ph.values.max())
    fixed = lazyreg.image(v, sp)
    shifted = lazyreg.apply_transform(fixed, fixed, [Affine.from_translation((0, 0, 1.5 * sp[2]))]).compute()
    moving = shifted[:, :, :125]  # the last block column (region x 84-143) is 70% inside moving
    f = lazyreg.align_piecewise(fixed, moving, [("affine", {})], blocksize=48, overlap=0.25, foreground_fraction=0.0).compute()
    assert [r["status"] for r in f.report] == ["ok"] * 6, f.report
    partial = [r for r in f.report if r["index"][2] == 2]
    assert all(0.69 < r["inside"] < 0.74 for r in partial), partial  # (125.5 - 83.5) / 60, on a 4-voxel lattice
    assert all(r["metric_before"] > 0.2 and r["metric_after"] > 0.95 for r in partial), partial
    err = np.abs(_on_fixed(f, fixed)[..., 2][8:-8, 8:-8, 90:118] / sp[2] + 1.5)  # truth: -1.5 voxels along x
    assert err.mean() < 0.5, err.mean()


def test_block_inputs_are_read_inside_the_block_tasks():
    """Store-backed fixed and moving: a block's fixed region and its moving region are read by the
    block task itself (no separate input tasks a distributed worker could read ahead and hold), each
    region once, and the field equals the one from in-memory images."""
    ph = lazyreg.data.phantom((48, 64, 64), seed=1)
    mem = lazyreg.image(ph.values.astype(np.float32), lazyreg.spacing(ph))
    fixed, fsrc = counting_image(mem, chunks=(16, 32, 32))
    moving, msrc = counting_image(mem, chunks=(16, 32, 32))
    A = Affine.from_translation((0.0, 0.0, 1.0 * lazyreg.spacing(ph)[2]))
    kw = dict(blocksize=32, overlap=0.25, static_transforms=[A], foreground_fraction=0.0, foreground_threshold=0.0)
    f = lazyreg.align_piecewise(fixed, moving, [("affine", {})], **kw)
    assert not fsrc.reads and not msrc.reads  # building reads nothing
    graph = dict(dask.optimize(f.data)[0].__dask_graph__())
    names = {k[0] if isinstance(k, tuple) else k for k in graph}
    assert not any(n.startswith(("lazyreg-region-", "apply-transform-")) for n in names), sorted(names)
    got = f.compute(scheduler="threads")
    n_blocks = len(got.report)
    assert len(fsrc.reads) == n_blocks  # one read of each block's fixed region (store-backed, uncached)
    assert len(set(map(str, msrc.reads))) == len(msrc.reads)  # moving store chunks decoded once each
    ref = lazyreg.align_piecewise(mem, mem, [("affine", {})], **kw).compute()
    np.testing.assert_allclose(got.values, ref.values, atol=1e-4)
    assert [r["status"] for r in got.report] == [r["status"] for r in ref.report]


def test_blocks_run_once_when_a_write_and_the_report_are_computed_together(tmp_path, monkeypatch):
    """``dask.compute(to_zarr(..., compute=False), field.report)`` (what the CLI and the memory
    benchmark do) shares the block tasks: each block runs once (it ran twice when to_zarr's delayed
    optimised the array graph under new task names)."""
    ph = lazyreg.data.phantom((48, 64, 64), seed=1)
    mem = lazyreg.image(ph.values.astype(np.float32), lazyreg.spacing(ph))
    f = lazyreg.align_piecewise(mem, mem, [("affine", {})], blocksize=32, overlap=0.25, foreground_fraction=0.0)
    out = lazyreg.apply_transform(mem, mem, [f])
    write = lazyreg.to_zarr(out, tmp_path / "out.ome.zarr", compute=False)
    with count_tasks() as c:
        path, report = dask.compute(write, f.report, scheduler="threads")
    assert len(report) == 8 and c.named("lazyreg-block-") == 8
    np.testing.assert_array_equal(lazyreg.open_image(path).values, out.values)


def test_block_metric_matches_corrcoef_without_full_float64_copies():
    """The block metric equals np.corrcoef in float64 (with and without a mask; NaN when constant)
    and, on a 160^3 float32 block, allocates less than 80 MiB at its peak (np.corrcoef on float64
    copies: about 200 MiB), which keeps blocks within small distributed workers."""
    import tracemalloc

    rng = np.random.default_rng(0)
    a = (rng.random((160, 160, 160), dtype=np.float32) * 1000).astype(np.float32)
    b = a + rng.normal(0, 300, a.shape).astype(np.float32)
    where = rng.random(a.shape) > 0.1
    for w in (None, where):
        x, y = (a, b) if w is None else (a[w], b[w])
        ref = np.corrcoef(x.astype(np.float64).ravel(), y.astype(np.float64).ravel())[0, 1]
        assert abs(pearson_arrays(a, b, w) - ref) < 1e-12
    assert np.isnan(pearson_arrays(np.full((8, 8, 8), 3.0, np.float32), a[:8, :8, :8]))
    assert np.isnan(pearson_arrays(a[:1, :1, :1], b[:1, :1, :1]))
    tracemalloc.start()
    try:
        pearson_arrays(a, b, where)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 80 * 2**20, peak / 2**20


# --------------------------------------------------------------------------- steps kept only if they help


def _shift_by(fixed, moving, *, initial, shift=(0.0, 0.0, 0.0)):
    """A registered test step: the current transform followed by a fixed shift."""
    A = initial @ Affine.from_translation(shift)
    return Affine(A.matrix, report={"shift": shift})


@pytest.fixture()
def shift_step():
    lazyreg.register_step("test_shift_by", _shift_by, replace=True)
    yield "test_shift_by"
    del lazyreg.registration.steps.STEPS["test_shift_by"]


def _shifted_pair(shift=(0.0, 0.0, 1.5)):
    ph = lazyreg.data.phantom((32, 48, 48), seed=2, spacing=(2.0, 1.0, 1.0))
    fixed = lazyreg.image(ph.values.astype(np.float32), lazyreg.spacing(ph))
    moving = lazyreg.apply_transform(fixed, fixed, [Affine.from_translation(shift)]).compute()
    return fixed, moving


def test_a_step_that_makes_a_block_worse_is_not_kept(shift_step):
    fixed, moving = _shifted_pair()
    steps = [("affine", {"shrink_factors": (1,)}), (shift_step, {"shift": (0.0, 6.0, 0.0)})]
    field = lazyreg.align_piecewise(fixed, moving, steps, blocksize=24, foreground_fraction=0.05).compute(scheduler="threads")
    ok = [r for r in field.report if r["status"] == "ok"]
    assert ok
    for r in ok:
        kept = {s["step"]: s["kept"] for s in r["steps"]}
        assert kept == {"affine": True, shift_step: False}, r["steps"]
        assert "not kept" in next(s["reason"] for s in r["steps"] if s["step"] == shift_step)
        assert r["metric_after"] > r["metric_before"]
    # the field is the affines' result: moving(x) = fixed(x + 1.5), so fixed -> moving is x - 1.5
    centre = np.asarray(lazyreg.origin(fixed)) + (np.asarray(fixed.shape) - 1) * np.asarray(lazyreg.spacing(fixed)) / 2
    np.testing.assert_allclose(field.displacement_at(centre), [0.0, 0.0, -1.5], atol=0.3)


def test_a_block_no_step_improves_is_unchanged_with_zero_displacement(shift_step):
    fixed, _ = _shifted_pair()
    field = lazyreg.align_piecewise(
        fixed, fixed, [(shift_step, {"shift": (0.0, 0.0, 2.0)})], blocksize=24, foreground_fraction=0.05
    ).compute(scheduler="threads")
    statuses = {r["status"] for r in field.report}
    assert "unchanged" in statuses and "failed" not in statuses, field.report
    assert all(r["steps"][0]["kept"] is False for r in field.report if r["status"] == "unchanged")
    assert np.abs(field.values).max() < 1e-6  # identity where nothing helped, and filled around it


def _folding_field(fixed, moving, *, initial, field_grid=None, amplitude=3.0):
    """A registered test step returning a field whose Jacobian determinant goes negative."""
    g = field_grid
    z = g.to_physical(np.indices(g.shape).reshape(3, -1).T)[:, 2].reshape(g.shape)
    values = np.zeros(g.shape + (3,), np.float32)
    values[..., 2] = -amplitude * (z - z.mean())  # d(dx)/dx = -amplitude: det = 1 - amplitude
    return lazyreg.DisplacementField.from_array(values, g.spacing, g.origin, report={})


def test_no_block_folds_its_deformation_is_scaled_down():
    from lazyreg.registration.block_align import BLOCK_DET_MIN, regular_field

    lazyreg.register_step("test_fold", _folding_field, returns="field", replace=True)
    try:
        fixed, moving = _shifted_pair()
        field = lazyreg.align_piecewise(
            fixed, moving, [("test_fold", {"amplitude": 3.0})], blocksize=24, foreground_fraction=0.05
        ).compute(scheduler="threads")
        for r in field.report:
            for s in r["steps"] or []:
                if s["field_scale"] is not None:
                    assert s["field_scale"] < 1.0 and s["det_min"] >= BLOCK_DET_MIN, s
        assert float(lazyreg.jacobian_determinant(field).min()) > 0
    finally:
        del lazyreg.registration.steps.STEPS["test_fold"]
    u = np.zeros((6, 6, 6, 3), np.float32)
    u[..., 0] = -2.0 * np.arange(6.0)[:, None, None]
    _, scale, det_min = regular_field(u, Grid((6, 6, 6), 1.0))
    assert scale == 0.25 and det_min == pytest.approx(0.5)


def test_an_outlier_block_is_left_out_and_filled_from_its_neighbours():
    g = Grid((48, 48, 48), 1.0)
    layout = block_layout(g, 16, 0.5)  # pad 8: a blending ramp 16 voxels wide
    shift = np.eye(4)
    shift[:3, 3] = (0.0, 0.0, 9.0)  # more than half the ramp away from its neighbours
    rows = {i: {"index": i, "status": "ok", "reason": None, "matrix": np.eye(4)} for i in layout.indices()}
    rows[(1, 1, 1)] = dict(rows[(1, 1, 1)], matrix=shift)
    centre = fill_block(layout, rows[(1, 1, 1)], *[rows[j] for j in layout.neighbours((1, 1, 1))])
    assert centre["status"] == "failed" and "differs from 26 of its 26 aligned neighbours" in centre["reason"]
    assert np.allclose(centre["fill"][0], 0.0)  # filled from the neighbours: no displacement
    # a neighbour disagrees with one block only: kept
    side = fill_block(layout, rows[(1, 1, 0)], *[rows[j] for j in layout.neighbours((1, 1, 0))])
    assert side["status"] == "ok"
    # a small disagreement (below half the ramp) is not an outlier
    shift[:3, 3] = (0.0, 0.0, 7.0)
    rows[(1, 1, 1)] = dict(rows[(1, 1, 1)], matrix=shift)
    assert fill_block(layout, rows[(1, 1, 1)], *[rows[j] for j in layout.neighbours((1, 1, 1))])["status"] == "ok"


def test_block_fields_kept_in_half_precision_change_the_field_by_under_a_thousandth(monkeypatch):
    """Block fields are kept (and cached) as float16 when their displacements are at most 20
    voxels: blending the same block results kept as float16 and as float32 gives fields that
    differ by less than 1e-3 of the largest displacement (float16 rounds to 2**-11 of the value).
    One registration, its results blended both ways: the comparison does not depend on two runs
    of ITK being bit-identical."""
    from lazyreg.registration import piecewise

    fixed, moving, A, _ = lazyreg.data.warped_pair((32, 64, 64), seed=2)
    filled = {}

    def recording_fill(layout, result, *neighbours):
        out = fill_block(layout, result, *neighbours)
        filled[out["index"]] = out
        return out

    monkeypatch.setattr(block_align, "HALF_PRECISION_VOXELS", 0.0)  # blocks keep float32
    monkeypatch.setattr(piecewise, "fill_block", recording_fill)
    clear_cache()
    full = lazyreg.align_piecewise(fixed, moving, blocksize=32, static_transforms=[Affine(A)],
                                   foreground_fraction=0.05).compute(scheduler="threads")
    clear_cache()
    assert sum(r["status"] == "ok" for r in full.report) >= 4, full.report
    results = list(filled.values())
    assert all(r["field"] is None or r["field"][0].dtype == np.float32 for r in results)
    monkeypatch.setattr(block_align, "HALF_PRECISION_VOXELS", 20.0)
    half = [dict(r, field=block_align.compact_field(r["field"])) for r in results]
    assert any(r["field"] is not None and r["field"][0].dtype == np.float16 for r in half)
    layout = block_layout(grid_of(fixed), 32, 0.25)
    g = full.grid
    f32 = field_chunk(layout, g, *results)
    f16 = field_chunk(layout, g, *half)
    np.testing.assert_allclose(f32, full.values, atol=1e-5)  # the blend above is the field's
    scale = np.abs(f32).max()
    assert scale > 0.5 * min(lazyreg.spacing(fixed))  # a real deformation was found
    diff = np.abs(f16 - f32).max()
    assert 0 < diff < 1e-3 * scale, (diff, scale)


def test_block_rows_say_where_the_time_went():
    """Each aligned block's row gives the seconds reading its inputs and, per step, a profile:
    seconds per level (demons, ITK) or stage (ransac) and for checking the result."""
    fixed, moving, A, _ = lazyreg.data.warped_pair((32, 64, 64), seed=2)
    steps = [("ransac", {"blob_sizes": (2, 8), "fallback": "identity"}), ("demons", {})]
    f = lazyreg.align_piecewise(fixed, moving, steps, blocksize=32, static_transforms=[Affine(A)],
                                foreground_fraction=0.05).compute(scheduler="threads")
    ok = [r for r in f.report if r["status"] == "ok"]
    assert ok, f.report
    for r in ok:
        assert 0 <= r["seconds_inputs"] < 60 and r["seconds"] > 0
        ransac, demons = r["steps"]
        assert set(demons["profile"]) == {"level 1 (shrink 4)", "level 2 (shrink 2)", "other", "check"}
        assert sum(v for k, v in demons["profile"].items() if k != "check") <= demons["seconds"] + 1e-3
        if ransac["profile"] is not None:  # ran (it may fail on a small block: then no profile)
            assert {"detect", "describe", "match"} <= set(ransac["profile"])


def test_step_results_are_checked_on_every_other_voxel_of_the_warped_block():
    rng = np.random.default_rng(0)
    g = Grid((10, 12, 15), (2.0, 1.0, 1.0), origin=(5.0, -3.0, 0.0))
    moving = rng.random(g.shape).astype(np.float32)
    m = np.eye(4)
    m[:3, :3] += rng.normal(0.0, 0.02, (3, 3))
    m[:3, 3] = (0.5, -0.25, 0.3)
    field = (rng.normal(0.0, 0.3, g.shape + (3,)).astype(np.float32), g)
    assert block_align.CHECK_STRIDE == 2
    check = Grid((5, 6, 8), (4.0, 2.0, 2.0), g.origin)
    full = block_align._warped(moving, g, m, field, g)
    np.testing.assert_allclose(block_align._warped(moving, g, m, field, check), full[::2, ::2, ::2], atol=1e-6)
    assert block_align._checked(full).shape == check.shape
