"""Blending block results into the field: each chunk equals the weighted mean of the blocks'
displacements evaluated point by point (an eager reference written here with scipy)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from lazyreg import Grid
from lazyreg.registration.blend import GATHER_POINTS, field_chunk, fill_block, local_displacement
from lazyreg.registration.blocks import block_layout

FIXED = Grid((40, 56, 48), (2.0, 0.8, 1.1), origin=(5.0, -3.0, 12.5))  # anisotropic, not at zero


def _field_on(grid: Grid, rng: np.random.Generator, dtype) -> tuple[np.ndarray, Grid]:
    return (rng.normal(0.0, 1.5, grid.shape + (3,))).astype(dtype), grid


def _interp(values: np.ndarray, g: Grid, pts: np.ndarray) -> np.ndarray:
    """Reference: scipy's trilinear interpolation of the whole field, edge values beyond."""
    idx = g.to_index(pts).T
    return np.stack([ndi.map_coordinates(values[..., c].astype(np.float64), idx, order=1, mode="nearest")
                     for c in range(3)], axis=-1)


def _reference(result: dict, pts: np.ndarray) -> np.ndarray:
    """u_b(x) as the module docstring defines it, point by point."""
    coarse = result.get("coarse")
    if result["status"] in ("ok", "unchanged"):
        y = pts + (_interp(*result["field"], pts) if result.get("field") is not None else 0.0)
        y = y @ result["matrix"][:3, :3].T + result["matrix"][:3, 3]
        if coarse is not None:
            y = y + _interp(*coarse, y)
        return y - pts
    if result.get("fill") is not None:
        return _interp(*result["fill"], pts)
    return _interp(*coarse, pts) if coarse is not None else np.zeros_like(pts)


def _results(layout, rng: np.random.Generator) -> dict:
    """Every kind of block result: local affine, affine + float16 B-spline field (on a grid
    finer and one coarser than the field's, reaching past the block), coarse start, failed."""
    spacing = np.asarray(FIXED.spacing)
    coarse = _field_on(Grid((7, 9, 8), tuple(spacing * 8), tuple(np.asarray(FIXED.origin) - 10.0)), rng, np.float32)
    out = {}
    for k, idx in enumerate(layout.indices()):
        m = np.eye(4)
        m[:3, :3] += rng.normal(0.0, 0.01, (3, 3))
        m[:3, 3] = rng.normal(0.0, 1.0, 3)
        rg = layout.region_grid(idx)
        kind = k % 5
        r = {"index": idx, "status": "ok", "matrix": m}
        if kind in (1, 2):  # a block field, kept in half precision, on a grid of its own
            step = 1.7 if kind == 1 else 3.3
            shape = tuple(int(np.ceil(n / step)) + 1 for n in rg.shape)
            r["field"] = _field_on(Grid(shape, tuple(spacing * step), tuple(np.asarray(rg.origin) - spacing)), rng, np.float16)
        if kind == 2 or kind == 3:
            r["coarse"] = coarse
        if kind == 4:
            r = {"index": idx, "status": "failed"}
        out[idx] = r
    return out


@pytest.mark.parametrize("field_step", [1, 3])
def test_each_field_chunk_equals_the_pointwise_weighted_mean_of_the_blocks(field_step):
    rng = np.random.default_rng(7)
    layout = block_layout(FIXED, blocksize=(16, 24, 20), overlap=0.25)
    raw = _results(layout, rng)
    filled = {i: fill_block(layout, raw[i], *[raw[j] for j in layout.neighbours(i)]) for i in layout.indices()}
    assert any(r.get("fill") is not None for r in filled.values())
    spacing = np.asarray(FIXED.spacing) * field_step
    # a chunk reaching past the last fixed voxel (nodes there take the nearest position's weights)
    chunk = Grid((9, 40, 13), tuple(spacing), tuple(np.asarray(FIXED.origin) + (3.0, 7.0, 4.0)))
    out = field_chunk(layout, chunk, *filled.values())
    assert out.dtype == np.float32 and out.shape == chunk.shape + (3,)
    pts = chunk.to_physical(np.indices(chunk.shape).reshape(3, -1).T)
    lo, hi = FIXED.extent
    num, den = np.zeros_like(pts), np.zeros(len(pts))
    for r in filled.values():
        w = np.prod([layout.weights_1d(r["index"], a, np.clip(pts[:, a], lo[a], hi[a])) for a in range(3)], axis=0)
        num += w[:, None] * _reference(r, pts)
        den += w
    assert den.min() > 0
    expected = (num / den[:, None]).reshape(out.shape)
    np.testing.assert_allclose(out, expected, rtol=0, atol=2e-5 * np.abs(expected).max())
    # the module's pointwise evaluation agrees with the reference too, for few points (gathered
    # corners) and for many (scipy)
    assert len(pts) > GATHER_POINTS
    for r in filled.values():
        for p in (pts[::50], pts):
            np.testing.assert_allclose(local_displacement(r, p), _reference(r, p), rtol=0, atol=1e-4)


def test_points_far_outside_a_block_field_take_its_edge_values():
    g = Grid((3, 4, 5), 1.0, origin=(0.0, 0.0, 0.0))
    values = np.arange(60 * 3, dtype=np.float16).reshape(g.shape + (3,))
    r = {"index": (0, 0, 0), "status": "ok", "matrix": np.eye(4), "field": (values, g)}
    pts = np.array([[-50.0, -50.0, -50.0], [50.0, 50.0, 50.0], [1.0, 2.0, 3.0], [-3.0, 1.5, 99.0]])
    expected = np.stack([values[0, 0, 0], values[-1, -1, -1], values[1, 2, 3],
                         (values[0, 1, 4].astype(float) + values[0, 2, 4]) / 2])
    np.testing.assert_allclose(local_displacement(r, pts), expected, rtol=0, atol=1e-9)
    many = np.repeat(pts, GATHER_POINTS, axis=0)  # the same through scipy
    np.testing.assert_allclose(local_displacement(r, many), np.repeat(expected, GATHER_POINTS, axis=0), rtol=0, atol=1e-9)
