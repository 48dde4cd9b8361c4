"""Blob detection tile by tile (lazyreg.registration.blob_chunks) and the ransac step on images that
are never loaded whole: the same blobs and the same affine as in memory, bit for bit."""

from __future__ import annotations

import dask.array as da
import numpy as np
import pytest
from dask.callbacks import Callback

import lazyreg
from lazyreg import LazyregError
from lazyreg.data import phantom, synthetic_pair
from lazyreg.images import grid_of
from lazyreg.registration import blob_chunks
from lazyreg.registration.blob_chunks import LazyPyramid, detect_blobs_chunked, detect_halo
from lazyreg.registration.blobs import Pyramid, blob_sigmas, detect_blobs, detect_factors, dog_filters
from lazyreg.registration.descriptors import Describer
from lazyreg.registration.features import align_features
from lazyreg.testing import count_tasks, counting_image


class _LargestResult(Callback):
    """The most voxels any one dask task returned (arrays, or lists / tuples of arrays)."""

    def __init__(self) -> None:
        super().__init__()
        self.voxels = 0

    def _posttask(self, key, result, dsk, state, id) -> None:
        items = result if isinstance(result, (list, tuple)) else [result]
        n = sum(int(getattr(r, "size", 0)) for r in items if isinstance(r, np.ndarray))
        self.voxels = max(self.voxels, n)


def _with_border_blobs(img, spacing, centres, sigma=2.0, amplitude=800.0):
    """``img`` plus Gaussian blobs (round in physical space) centred at voxel indices ``centres``."""
    z, y, x = np.meshgrid(*(np.arange(n) for n in img.shape), indexing="ij")
    sp = np.asarray(spacing, dtype=float)
    v = img.values.astype(np.float32)
    for c in centres:
        r2 = ((z - c[0]) * sp[0]) ** 2 + ((y - c[1]) * sp[1]) ** 2 + ((x - c[2]) * sp[2]) ** 2
        v += amplitude * np.exp(-r2 / (2 * sigma**2))
    return np.clip(np.rint(v), 0, 65535).astype(np.uint16)


def _halo(spacing, blob_sizes):
    sp = np.asarray(spacing, dtype=float)
    sigmas, k = blob_sigmas(blob_sizes, float(sp.min()), 6)
    f = detect_factors(sp, sigmas[1])
    return f, detect_halo(*dog_filters(sp * f, f, sigmas))


# (shape, spacing, blob_sizes, input chunks, tile core in working voxels, threshold and mask)
CASES = {
    # working voxels = voxels; blobs centred on the tiles' core borders (32, 64 in y and x; 32 in
    # z); the automatic threshold (a global statistic, gathered from the tiles)
    "unbinned, auto threshold": ((48, 96, 96), (2.0, 1.0, 1.0), (2, 8), (16, 32, 32), 32, False),
    # binned 2x per axis; input chunks that are not multiples of the factors (re-chunked); a
    # threshold and a dask mask (read at the blobs)
    "binned, threshold, dask mask": ((64, 96, 112), (1.0, 1.0, 1.0), (6, 20), (25, 35, 30), 16, True),
}


@pytest.mark.parametrize("name", list(CASES))
def test_per_chunk_detection_equals_whole_image_detection(name):
    shape, spacing, blob_sizes, chunks, core, masked = CASES[name]
    base = phantom(shape, spacing, seed=5, noise=0.02)
    f, halo = _halo(spacing, blob_sizes)
    # blobs straddling the core borders (in voxels of the full image)
    borders = [np.arange(core, n // fa, core) * fa for n, fa in zip(shape, f)]
    centres = [(bz, by, bx) for bz in borders[0] for by in borders[1][:2] for bx in borders[2][:2]]
    values = _with_border_blobs(base, spacing, centres, sigma=1.5 * blob_sizes[0])
    kw = dict(blob_sizes=blob_sizes, nspots=500)
    if masked:
        mask = np.zeros(shape, bool)
        mask[:, : shape[1] * 3 // 4] = True
        kw.update(threshold=5.0, mask=mask)
    whole = detect_blobs(values, spacing, **kw)
    if "mask" in kw:
        kw["mask"] = da.from_array(kw["mask"], chunks=chunks)
    tiled = detect_blobs_chunked(da.from_array(values, chunks=chunks), spacing, chunk=core, **kw)
    assert len(whole) >= 20
    np.testing.assert_array_equal(tiled, whole)
    # several tiles per axis, and blobs found on their borders
    assert all(n // fa > core for n, fa in zip(shape, f))
    working = whole[:, :3] / f
    near_border = np.any(np.abs(working - core * np.round(working / core)) <= 1.0, axis=1)
    assert near_border.sum() >= 3
    assert np.all(halo > 0)


def test_building_is_lazy_and_descriptors_read_around_the_points_only():
    fixed, _, _ = synthetic_pair((48, 128, 192), (2.0, 1.0, 1.0), seed=2, noise=0.02)
    img, log = counting_image(fixed, chunks=(16, 32, 32))
    g = grid_of(fixed)
    with count_tasks() as c:
        pyr = LazyPyramid(img.data, g, "fixed")
        desc = Describer(pyr, radius=6.0)
    assert c.n == 0 and log.reads == []
    pts = g.to_physical(np.array([[8.0, 10.0, 12.0], [12.0, 20.0, 9.0], [5.0, 6.0, 25.0]]))
    eager = Describer(Pyramid(fixed.values, g), radius=6.0)
    lin = np.array([[1.05, 0.1, 0.0], [-0.1, 1.0, 0.0], [0.0, 0.0, 0.95]])
    np.testing.assert_array_equal(desc.patches(pts, lin), eager.patches(pts, lin))
    np.testing.assert_array_equal(desc.shells(pts, np.eye(3)), eager.shells(pts, np.eye(3)))
    # the chunks around the three points (one corner), not the image
    assert 0 < log.voxels <= fixed.size // 4


def test_ransac_on_a_chunked_pair_equals_in_memory_and_never_loads_an_image_whole(monkeypatch):
    fixed, moving, truth = synthetic_pair((64, 128, 128), (2.0, 1.0, 1.0), seed=11, noise=0.03)
    eager = align_features(fixed, moving, blob_sizes=(3, 6), seed=4)
    assert np.abs(np.asarray(eager.matrix) - truth)[:3].max() < 0.25  # a real alignment
    monkeypatch.setattr(blob_chunks, "DETECT_CHUNK", 64)
    f_img, f_log = counting_image(fixed, chunks=(32, 64, 64))
    m_img, m_log = counting_image(moving, chunks=(30, 50, 70))
    with _LargestResult() as largest:
        lazy = align_features(f_img, m_img, blob_sizes=(3, 6), seed=4)
    # the same affine, bit for bit (tolerance: none)
    np.testing.assert_array_equal(np.asarray(lazy.matrix), np.asarray(eager.matrix))
    assert lazy.report["inliers"] == eager.report["inliers"]
    # no task held an image whole: the largest is a detection tile (core + halo)
    assert largest.voxels <= 0.75 * fixed.size, largest.voxels
    assert max(max(np.prod([s.stop - s.start for s in r]) for r in log.reads) for log in (f_log, m_log)) <= 64 * 64 * 32


def test_chunked_images_are_checked_as_in_memory_ones():
    fixed, moving, _ = synthetic_pair((24, 48, 48), (2.0, 1.0, 1.0), seed=1)
    chunked = {"z": 12, "y": 24, "x": 24}
    zeros = lazyreg.image(da.zeros(fixed.shape, dtype=np.uint16, chunks=16), (2.0, 1.0, 1.0))
    with pytest.raises(LazyregError, match="^fixed: image is all zero"):
        align_features(zeros, moving.chunk(chunked), blob_sizes=(2, 6))
    nan = fixed.astype(np.float32).copy()
    nan.values[3, 4, 5] = np.nan
    with pytest.raises(LazyregError, match="^moving: contains 1 NaN"):
        align_features(fixed.chunk(chunked), nan.chunk(chunked), blob_sizes=(2, 6))
    with pytest.raises(LazyregError, match="^moving: contains 1 NaN"):  # user points skip detection
        align_features(fixed, nan.chunk(chunked), fixed_points=np.ones((5, 3)), moving_points=np.ones((5, 3)))
    with pytest.raises(LazyregError, match="^fixed_mask: the mask is empty"):
        align_features(fixed.chunk(chunked), moving, fixed_mask=da.zeros(fixed.shape, dtype=bool, chunks=12))
    with pytest.raises(LazyregError, match=r"^moving_mask: shape \(24, 48, 47\) differs"):
        align_features(fixed, moving.chunk(chunked), moving_mask=np.ones((24, 48, 47), bool))
