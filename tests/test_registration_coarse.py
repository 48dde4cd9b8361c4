"""The coarse stage of align_piecewise (lazyreg.registration.coarse): a whole-image B-spline first."""

from __future__ import annotations

import dask
import numpy as np
import pytest

import lazyreg
from lazyreg.errors import LazyregError
from lazyreg.registration.coarse import COARSE_OPTIONS, coarse_field, coarse_options, coarse_stride
from lazyreg.result_cache import cache_info, clear_cache

SHAPE = (64, 96, 96)
STEPS = [("affine", {"shrink_factors": (2,)})]
KW = {"foreground_fraction": 0.1}  # the phantom is sparse
BLOCKS = (32, 48, 48)


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


@pytest.mark.slow
def test_the_field_is_the_blocks_composed_with_the_coarse_field_and_lowers_their_error(pair):
    fixed, moving, A, d = pair
    clear_cache()
    with dask.config.set(scheduler="threads"):
        field = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], coarse=True, **KW).compute()
        G = coarse_field(fixed, moving, [A], COARSE_OPTIONS)
        blocks = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A, G], coarse=False, **KW).compute()
        G = G.compute()
        off = lazyreg.align_piecewise(fixed, moving, STEPS, blocksize=BLOCKS, static_transforms=[A], **KW).compute()
    # the coarse stage ran once, for both graphs; its field moves points
    assert cache_info()["align"]["computed"] == 1
    assert sum(r["status"] == "ok" for r in field.report) >= 6
    assert np.abs(G.values).max() > 0.5
    pts = field.grid.to_physical(np.argwhere(np.ones(field.grid.shape, bool))[::7])
    np.testing.assert_allclose(lazyreg.transform_points(pts, [A, field]), lazyreg.transform_points(pts, [A, G, blocks]),
                               atol=2e-3)
    # the deformation reaches the edges, where the blocks alone see part of it
    e_on, e_off, e_affine = (_error_voxels(t, fixed, d, A) for t in ([A, field], [A, off], [A]))
    print(f"mean error (voxels): affine {e_affine:.3f}, blocks {e_off:.3f}, coarse + blocks {e_on:.3f}")
    assert e_on < 0.8 * e_off < e_affine
    assert e_on < 0.5
