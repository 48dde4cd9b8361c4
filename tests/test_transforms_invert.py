"""Tests for lazyreg.transforms.invert: accuracy of the inverse, laziness, chunk borders, reports."""

from __future__ import annotations

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr

import lazyreg
from lazyreg import DisplacementField, LazyregError, LazyregWarning
from lazyreg.images import Grid
from lazyreg.metrics import transform_error
from lazyreg.regions import sub_grid
from lazyreg.testing import assert_transforms_allclose, count_tasks
from lazyreg.transforms.invert import invert_field

SPACING = (2.0, 0.7, 1.3)
ORIGIN = (-3.0, 10.0, 4.5)
SHAPE = (24, 28, 26)


def _smooth(shape=SHAPE, spacing=SPACING, origin=ORIGIN, amplitude=3.0, seed=4) -> np.ndarray:
    """A sum of Gaussian bumps, each of ``amplitude`` voxels (per axis) and width 7 to 9 voxels."""
    rng = np.random.default_rng(seed)
    idx = np.stack(np.meshgrid(*[np.arange(n, dtype=float) for n in shape], indexing="ij"), axis=-1)
    u = np.zeros(tuple(shape) + (3,))
    for _ in range(4):
        centre = rng.uniform(0, np.asarray(shape))
        sigma = rng.uniform(7.0, 9.0)
        a = rng.uniform(-1, 1, 3) * amplitude * np.asarray(spacing)
        u += np.exp(-((idx - centre) ** 2).sum(-1) / (2 * sigma**2))[..., None] * a
    return u


def _max_grad(u: np.ndarray, spacing=SPACING) -> float:
    g = np.stack(np.gradient(u, *spacing, axis=(0, 1, 2)), axis=-1)  # d u_i / d x_j
    return float(np.linalg.norm(g, ord=2, axis=(-2, -1)).max())


#: Spacing of the comparison points, in voxels of the field: they fall at every fraction of a voxel.
STEP = 0.87


def _margin(grid: Grid, u: np.ndarray) -> np.ndarray:
    """The largest displacement in voxels of ``grid``, rounded up, plus 2 voxels."""
    return np.ceil(np.abs(u).reshape(-1, 3).max(0) / np.asarray(grid.spacing)) + 2


def _interior(grid: Grid, u: np.ndarray) -> Grid:
    """Points ``STEP`` voxels of ``grid`` apart, between its voxel centres, farther from its border
    than the largest displacement plus 2 voxels (where the inverse is defined both ways)."""
    margin = _margin(grid, u)
    n = np.floor((np.asarray(grid.shape) - 1 - 2 * margin - 0.31) / STEP).astype(int) + 1
    return Grid(tuple(n), tuple(STEP * np.asarray(grid.spacing)), tuple(grid.to_physical(margin + 0.31)))


def _voxel_error(actual, desired, grid: Grid, u: np.ndarray) -> float:
    """Largest distance between two transforms on :func:`_interior` points, in voxels of ``grid``."""
    return float(STEP * transform_error(actual, desired, _interior(grid, u), step=1).max())


@pytest.fixture(scope="module")
def smooth():
    u = _smooth()
    assert 0.3 < _max_grad(u) < 0.5 and np.abs(u / np.asarray(SPACING)).max() > 2.5
    return u


# ---------------------------------------------------------------------------------- accuracy


def test_composition_is_the_identity_in_the_interior(smooth):
    D = DisplacementField.from_array(smooth, SPACING, ORIGIN)
    inv = invert_field(D)
    assert not inv.is_lazy and inv.grid == D.grid and inv.data.dtype == np.float64
    rep = inv.report
    assert rep["converged"] and rep["not_converged"] == 0 and rep["max_residual"] < 0.01
    assert 1 <= rep["iterations"] <= 20 and rep["points"] == np.prod(SHAPE)
    assert rep["chunk_max_residual"].shape == (1, 1, 1)
    assert _voxel_error([D, inv], [], D.grid, smooth) < 0.1  # field(inverse(y)) = y
    assert _voxel_error([inv, D], [], D.grid, smooth) < 0.1  # inverse(field(x)) = x
    assert _voxel_error([D], [], D.grid, smooth) > 2  # the field itself is far from the identity
    # at the voxel centres the error is the residual itself
    err = transform_error([D, inv], [], D.grid, step=1)  # every voxel centre, in C order
    nodes = D.grid.to_physical(np.indices(SHAPE).reshape(3, -1).T)
    half = (np.asarray(SHAPE) - 1) / 2
    inside = np.all(np.abs(D.grid.to_index(inv(nodes)) - half) < half, axis=1)  # preimage inside the field
    assert inside.mean() > 0.5 and err[inside].max() < 0.01


def test_tighter_tolerance_gives_smaller_residuals_and_the_inverse_of_the_inverse_is_the_field(smooth):
    D = DisplacementField.from_array(smooth, SPACING, ORIGIN)
    loose, tight = invert_field(D, tolerance=0.1), invert_field(D, tolerance=1e-4)
    assert loose.report["max_residual"] < 0.1 and tight.report["max_residual"] < 1e-4
    assert loose.report["iterations"] < tight.report["iterations"]
    back = tight.inverse(tolerance=1e-4)
    margin = _margin(D.grid, smooth).astype(int)
    core = sub_grid(D.grid, tuple(slice(m, n - m) for m, n in zip(margin, SHAPE)))
    assert_transforms_allclose(back, D, core, atol=0.05, step=1)  # at the voxel centres: the values


def test_constant_displacement_inverts_exactly_up_to_the_borders_with_clamped_extension():
    u = np.zeros((6, 7, 8, 3))
    u[...] = (0.5, -1.0, 2.6)  # 2 voxels in x: preimages of the first two x columns lie outside
    D = DisplacementField.from_array(u, SPACING, ORIGIN)
    inv = D.inverse()
    np.testing.assert_allclose(inv.values, -u, atol=1e-12)
    assert inv.report["iterations"] == 2 and inv.report["max_residual"] < 1e-12
    assert inv.report["outside"] == 6 * 7 * 2 + 6 * 1 * 8 - 6 * 1 * 2  # x band of 2, y band of 1


def test_inverse_on_another_grid(smooth):
    D = DisplacementField.from_array(smooth, SPACING, ORIGIN)
    g = Grid((30, 36, 36), (1.6, 0.55, 1.0), (-2.5, 10.2, 4.8))  # finer in y and x, shifted
    inv = invert_field(D, grid=g)
    assert inv.grid == g and inv.report["converged"]
    lo, hi = _interior(D.grid, smooth).extent
    assert np.all((g.to_index(np.stack([lo, hi])) > 0) & (g.to_index(np.stack([lo, hi])) < np.asarray(g.shape) - 1))
    assert _voxel_error([D, inv], [], D.grid, smooth) < 0.1
    # an image as the grid: its grid, and its chunks for a lazy inverse
    L = DisplacementField.from_array(da.from_array(smooth, chunks=(12, 14, 13, 3)), SPACING, ORIGIN)
    img = lazyreg.grid(g.shape, g.spacing, g.origin, chunks=(10, 15, 30))
    linv = invert_field(L, grid=img)
    assert linv.is_lazy and linv.chunks == ((10, 10, 10), (15, 15, 6), (30, 6), (3,))
    np.testing.assert_allclose(linv.values, inv.values, atol=1e-5)
    assert invert_field(L, grid=g).chunks == ((12, 12, 6), (14, 14, 8), (13, 13, 10), (3,))


# ---------------------------------------------------------------------------------- laziness


@pytest.mark.parametrize("bounded", [False, True])
def test_lazy_equals_eager_and_each_chunk_runs_once(smooth, bounded):
    eager = invert_field(DisplacementField.from_array(smooth, SPACING, ORIGIN))
    L = DisplacementField.from_array(da.from_array(smooth, chunks=(8, 10, 9, 3)), SPACING, ORIGIN)
    md = np.abs(smooth).reshape(-1, 3).max(0) if bounded else None
    inv = invert_field(L, max_displacement=md)
    assert inv.is_lazy and inv.chunks == L.chunks and dask.is_dask_collection(inv.report)
    with count_tasks() as tc:
        C = inv.compute()
    kernel = [k for k in tc.keys if isinstance(k, tuple) and str(k[0]).startswith("invert-field-task-")]
    assert len(kernel) == len(set(kernel)) == tc.named("invert-field-task-") == 3 * 3 * 3  # once, with the report
    assert not C.is_lazy and C.grid == eager.grid
    np.testing.assert_allclose(C.values, eager.values, rtol=0, atol=1e-5)
    rep = C.report
    assert rep["converged"] and rep["points"] == np.prod(SHAPE)
    assert rep["chunk_max_residual"].shape == (3, 3, 3)
    assert rep["max_residual"] == pytest.approx(eager.report["max_residual"], abs=1e-9)
    assert rep["outside"] == eager.report["outside"] and rep["iterations"] == eager.report["iterations"]
    assert rep["max_displacement"] == (None if md is None else tuple(md))


def _exploding(u: np.ndarray, chunks) -> da.Array:
    def boom():
        raise RuntimeError("the field was computed")

    return da.from_delayed(dask.delayed(boom, pure=False)(), shape=u.shape, dtype=u.dtype).rechunk(chunks)


def test_building_the_inverse_runs_no_task(smooth):
    arr = _exploding(smooth, (8, 10, 9, 3))
    L = DisplacementField.from_array(arr, SPACING, ORIGIN)
    with count_tasks() as tc:
        a = invert_field(L)
        b = L.inverse(max_displacement=5.0, tolerance=0.05)
        c = invert_field(L, grid=Grid((10, 10, 10), 1.0, (0.0, 12.0, 8.0)), max_displacement=(4, 2, 3))
        _ = repr(a), a.grid, b.chunks, c.chunks
    assert tc.keys == []
    for inv in (a, b, c):
        with pytest.raises(RuntimeError, match="the field was computed"):
            inv.data[:2, :2, :2].compute()


def test_bounded_inverse_reads_only_nearby_field_chunks(smooth):
    L = DisplacementField.from_array(da.from_array(smooth, chunks=(6, 7, 13, 3)), SPACING, ORIGIN)
    md = np.abs(smooth).reshape(-1, 3).max(0)
    inv = invert_field(L, max_displacement=md)
    graph = dict(inv.data.data.__dask_graph__())
    field_keys = {k for k in graph if isinstance(k, tuple) and k[0] == L.data.data.name}
    tasks = [k for k in graph if isinstance(k, tuple) and str(k[0]).startswith("invert-field-task-")]
    deps = {k: {d for d in dask.core.get_dependencies(graph, k) if d in field_keys} for k in tasks}
    assert len(field_keys) == 4 * 4 * 2
    assert max(len(d) for d in deps.values()) < len(field_keys)
    assert min(len(d) for d in deps.values()) <= 3 * 3 * 2
    # the slice of a lazy inverse needs only its own region of the field
    np.testing.assert_allclose(inv.data[:6, :7, :13].values, invert_field(L).data[:6, :7, :13].values, atol=1e-12)


def test_a_lazy_field_exceeding_max_displacement_raises_at_compute_time(smooth):
    L = DisplacementField.from_array(da.from_array(smooth, chunks=(8, 10, 9, 3)), SPACING, ORIGIN)
    inv = invert_field(L, max_displacement=0.5)
    with pytest.raises(LazyregError, match="exceeds the stated bound"):
        inv.compute()
    with pytest.raises(LazyregError, match="exceeds the stated bound"):
        invert_field(DisplacementField.from_array(smooth, SPACING, ORIGIN), max_displacement=0.5)


def test_a_large_lazy_field_needs_max_displacement():
    L = DisplacementField.from_array(da.zeros((300, 300, 300, 3), chunks=(100, 100, 100, 3)), 1.0)
    with pytest.raises(LazyregError, match="^max_displacement: this lazy 618 MiB field"):
        invert_field(L)
    inv = invert_field(L, max_displacement=2.0)
    assert inv.is_lazy and inv.chunks == L.chunks


# ---------------------------------------------------------------------------------- failures


def test_a_folding_field_does_not_converge_warns_and_reports_it():
    z, y, x = np.meshgrid(*[np.arange(16.0)] * 3, indexing="ij")
    u = np.zeros((16, 16, 16, 3))
    u[..., 2] = 4.0 * np.sin(2 * np.pi * x / 16)  # d ux / dx up to 1.6: folds
    D = DisplacementField.from_array(u, 1.0)
    with pytest.warns(LazyregWarning, match="did not converge"):
        inv = invert_field(D, max_iterations=20)
    rep = inv.report
    assert not rep["converged"] and rep["not_converged"] > 0 and rep["max_residual"] >= 0.01
    assert rep["iterations"] == 20
    L = DisplacementField.from_array(da.from_array(u, chunks=(16, 16, 8, 3)), 1.0)
    lazy = invert_field(L, max_iterations=20)  # building does not warn
    with pytest.warns(LazyregWarning, match="of chunk"):
        C = lazy.compute(scheduler="synchronous")
    assert not C.report["converged"] and C.report["not_converged"] == rep["not_converged"]


def test_bad_arguments_give_clear_errors(smooth):
    D = DisplacementField.from_array(smooth[:4, :4, :4], SPACING, ORIGIN)
    with pytest.raises(LazyregError, match="^field: expected a lazyreg.DisplacementField, got ndarray"):
        invert_field(smooth)
    with pytest.raises(LazyregError, match="got DataArray"):
        invert_field(D.data)
    for bad in (0, -0.1, np.nan, np.inf, "0.1", True, None):
        with pytest.raises(LazyregError, match="^tolerance: expected a positive number"):
            invert_field(D, tolerance=bad)
    for bad in (0, -3, 2.5, True, "10"):
        with pytest.raises(LazyregError, match="^max_iterations: expected a positive integer"):
            invert_field(D, max_iterations=bad)
    with pytest.raises(LazyregError, match="^grid: expected None, a lazyreg.images.Grid or an image"):
        invert_field(D, grid=(4, 4, 4))
    with pytest.raises(LazyregError, match="^grid: expected an xarray.DataArray|^grid: expected 3 dims"):
        invert_field(D, grid=xr.DataArray(np.zeros((2, 2))))
    for bad in (-1.0, (1, 2), np.nan, "a"):
        with pytest.raises(LazyregError, match="^max_displacement: expected"):
            invert_field(D, max_displacement=bad)
    L = DisplacementField.from_array(da.from_array(smooth[:4, :4, :4]), SPACING, ORIGIN)
    with pytest.raises(LazyregError, match="^chunks: cannot chunk"):
        invert_field(L, chunks=(1, 2))
    with pytest.raises(LazyregError, match="^tolerance"):
        D.inverse(tolerance=0)
