"""``align`` on store-backed levels of several chunks (lazyreg.registration.step_inputs): the ransac
step reads them chunk by chunk, an affine step whose levels are all shrunk reads them binned chunk
by chunk, and neither ever holds a level whole; a pipeline with any other step reads the level
whole once, as before."""

from __future__ import annotations

import numpy as np
import pytest

import lazyreg
from lazyreg.data import synthetic_pair
from lazyreg.images import grid_of
from lazyreg.registration import blob_chunks
from lazyreg.registration.step_inputs import StepInputs, binned
from lazyreg.registration.steps import parse_steps
from lazyreg.testing import counting_image

CHUNKS = (32, 64, 64)


def _largest_read(log) -> int:
    return max(int(np.prod([s.stop - s.start for s in r])) for r in log.reads)


def _corner_gap(a: np.ndarray, b: np.ndarray, img) -> float:
    """How far apart two affines map the image's corners, in voxels of its finest axis."""
    g = grid_of(img)
    lo, hi = g.extent
    corners = np.array([[z, y, x, 1.0] for z in (lo[0], hi[0]) for y in (lo[1], hi[1]) for x in (lo[2], hi[2])])
    return float(np.linalg.norm(corners @ (np.asarray(a) - np.asarray(b)).T, axis=1).max() / min(g.spacing))


@pytest.fixture(scope="module")
def pair():
    fixed, moving, truth = synthetic_pair((64, 128, 128), (1.0, 1.0, 1.0), seed=11, noise=0.03)
    return fixed, moving, truth


def test_align_reads_chunked_levels_chunk_by_chunk_for_ransac_and_a_shrunk_affine(pair, monkeypatch):
    fixed, moving, truth = pair
    monkeypatch.setattr(blob_chunks, "DETECT_CHUNK", 64)
    steps = [("ransac", {"blob_sizes": (3, 6)}), ("affine", {"shrink_factors": (4, 2)})]
    eager = lazyreg.align(fixed, moving, steps, seed=4).compute()
    f_img, f_log = counting_image(fixed, chunks=CHUNKS)
    m_img, m_log = counting_image(moving, chunks=CHUNKS)
    lazy = lazyreg.align(f_img, m_img, steps, seed=4)
    assert f_log.reads == [] and m_log.reads == []  # building reads nothing
    lazy = lazy.compute()
    # no read larger than a store chunk: neither level was ever read whole
    for log in (f_log, m_log):
        assert _largest_read(log) <= int(np.prod(CHUNKS)), log.reads
    ransac, affine = lazy.report
    # the ransac step: the in-memory result, bit for bit
    assert ransac["inliers"] == eager.report[0]["inliers"]
    assert "binned" not in ransac and affine["binned"] == 2
    # the affine on the binned level: the same levels' smoothing, the in-memory result within a
    # tenth of a voxel at the corners, and the truth within a quarter
    assert _corner_gap(lazy.matrix, eager.matrix, fixed) < 0.1
    assert _corner_gap(lazy.matrix, truth, fixed) < 0.25
    assert _corner_gap(eager.matrix, truth, fixed) < 0.25


@pytest.mark.parametrize("steps", [
    [("affine", {"shrink_factors": (4, 1)}), ("affine", {"shrink_factors": (4, 2)})],
    # ransac could read chunk by chunk, but the affine after it needs the level whole anyway
    [("ransac", {"blob_sizes": (3, 6)}), ("affine", {"shrink_factors": (2, 1)})],
], ids=["affine to full resolution", "ransac then such an affine"])
def test_a_step_that_needs_the_level_whole_reads_it_whole_once_for_all_steps(pair, steps):
    fixed, moving, truth = pair
    eager = lazyreg.align(fixed, moving, steps, seed=4).compute()
    f_img, f_log = counting_image(fixed, chunks=CHUNKS)
    m_img, m_log = counting_image(moving, chunks=CHUNKS)
    lazy = lazyreg.align(f_img, m_img, steps, seed=4).compute()
    np.testing.assert_array_equal(np.asarray(lazy.matrix), np.asarray(eager.matrix))
    assert all("binned" not in r for r in lazy.report)
    for log, img in ((f_log, fixed), (m_log, moving)):  # one read of the whole level, for all steps
        assert len(log.reads) == 1 and log.voxels == img.size


def test_binned_levels_have_the_voxel_centres_and_means_of_the_blocks():
    fixed, _, _ = synthetic_pair((20, 32, 48), (2.0, 1.0, 0.5), seed=3)
    fixed = fixed.assign_coords(z=fixed.z + 100.0)  # a non-zero origin
    out = binned(fixed.chunk(8), 2)
    g, gb = grid_of(fixed), grid_of(out)
    assert out.shape == (10, 16, 24) and gb.spacing == (4.0, 2.0, 1.0)
    # each binned voxel sits at the centre of its 2 x 2 x 2 block, with the block's mean
    np.testing.assert_allclose(gb.to_physical(np.array([[3.0, 5.0, 7.0]])),
                               g.to_physical(np.array([[6.5, 10.5, 14.5]])))
    np.testing.assert_allclose(float(out[3, 5, 7]), float(fixed[6:8, 10:12, 14:16].astype(np.float64).mean()), rtol=1e-6)


def test_in_memory_images_pass_through_and_masks_keep_full_resolution(pair):
    fixed, moving, _ = pair
    coarse = parse_steps([("affine", {"shrink_factors": (4, 2)})])[0]
    assert StepInputs(fixed, moving, (None, None)).images(coarse) == ((fixed, moving), 1)
    mask = lazyreg.image(np.ones(fixed.shape, bool), 1.0)
    (f, m), b = StepInputs(fixed.chunk(32), moving.chunk(32), (mask, None)).images(coarse)
    assert b == 1 and f.shape == fixed.shape and not isinstance(f.data, type(fixed.chunk(32).data))
