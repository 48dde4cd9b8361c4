"""Similarity metrics."""

import dask.array as da
import numpy as np
import pytest

import lazyreg
from lazyreg import LazyregError
from lazyreg.metrics import pearson


def test_pearson_with_a_mask_on_dask_images_equals_numpy():
    rng = np.random.default_rng(0)
    a = rng.random((8, 9, 10))
    b = a + rng.random(a.shape)
    m = a > 0.5
    A = lazyreg.image(da.from_array(a, chunks=4), 1.0)
    B = lazyreg.image(b, 1.0)
    assert pearson(A, B) == pytest.approx(np.corrcoef(a.ravel(), b.ravel())[0, 1], rel=1e-12)
    assert pearson(A, B, lazyreg.image(da.from_array(m, chunks=3), 1.0)) == pytest.approx(
        np.corrcoef(a[m], b[m])[0, 1], rel=1e-12
    )
    with pytest.raises(LazyregError, match="mask: selects no voxel"):
        pearson(A, B, lazyreg.image(np.zeros(a.shape, bool), 1.0))
