"""Matching descriptors between two point sets: all against all, or guided by a transform.

Global matching compares all fixed against all moving descriptors by matrix products of
standardised vectors (Pearson correlation, in row blocks); a pair is kept when it is mutually best,
its correlation is at least a threshold and it passes a ratio test against the second-best
candidate. Guided matching compares patches only among moving points within a gate of where a
transform predicts each fixed point.
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree

from .descriptors import zscore_rows

__all__ = ["match_all", "match_guided"]


def match_all(da: np.ndarray, db: np.ndarray, threshold: float, ratio: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual-best matches between all descriptors by Pearson correlation, with a ratio test.

    The correlation matrix is computed in row blocks (matrix products), never all at once.
    Returns the indices of the matched rows of ``da`` and ``db`` and their correlations.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> a = rng.normal(size=(5, 20))
    >>> i, j, r = match_all(a, a[[2, 0, 1, 4, 3]], threshold=0.5, ratio=0.95)
    >>> j[np.argsort(i)].tolist()
    [1, 2, 0, 4, 3]
    """
    # standardise each feature over both sets, so that correlations measure how two blobs'
    # neighbourhoods differ from the typical one, not their common blob-like profile
    both = np.concatenate([da, db])
    mu, sd = both.mean(axis=0), both.std(axis=0)
    sd = np.where(sd > 0, sd, 1.0)
    za = zscore_rows((da - mu) / sd).astype(np.float32)
    zb = zscore_rows((db - mu) / sd).astype(np.float32)
    n, m = len(za), len(zb)
    scale = np.float32(1.0 / za.shape[1])
    best_b = np.zeros(n, dtype=np.int64)
    score = np.zeros(n, dtype=np.float32)
    second = np.full(n, -1.0, dtype=np.float32)
    col_best = np.full(m, -np.inf, dtype=np.float32)
    col_arg = np.zeros(m, dtype=np.int64)
    rows = max(1, 8_000_000 // max(m, 1))
    for s in range(0, n, rows):
        c = (za[s : s + rows] @ zb.T) * scale
        r = np.arange(len(c))
        bb = np.argmax(c, axis=1)
        best_b[s : s + rows] = bb
        score[s : s + rows] = c[r, bb]
        if m > 1:
            second[s : s + rows] = np.partition(c, -2, axis=1)[:, -2]
        cm, ca = c.max(axis=0), np.argmax(c, axis=0) + s
        upd = cm > col_best
        col_best[upd], col_arg[upd] = cm[upd], ca[upd]
    ia = np.arange(n)
    mutual = col_arg[best_b] == ia
    # ratio of descriptor distances: the squared distance of z-scored vectors is 2F(1 - correlation)
    distinct = (1.0 - score) <= ratio**2 * (1.0 - second) if m > 1 else np.ones(n, bool)
    keep = mutual & (score >= threshold) & distinct
    return ia[keep], best_b[keep], score[keep].astype(np.float64)


def match_guided(
    fpat: np.ndarray, mpat: np.ndarray, pred: np.ndarray, mpts: np.ndarray, gate: float, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mutual-best matches by patch correlation among moving points within ``gate`` of ``pred``.

    ``fpat`` and ``mpat`` are z-scored patches (rows), ``pred`` the predicted moving positions of
    the fixed points, ``mpts`` the moving points. Returns fixed and moving indices and correlations.

    Examples
    --------
    >>> from lazyreg.registration.descriptors import zscore_rows
    >>> rng = np.random.default_rng(0)
    >>> pat = zscore_rows(rng.normal(size=(3, 30)))
    >>> pts = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0]])
    >>> i, j, r = match_guided(pat, pat, pts + 0.5, pts, gate=2.0, threshold=0.5)
    >>> i.tolist(), j.tolist()
    ([0, 1, 2], [0, 1, 2])
    """
    pairs = cKDTree(pred).sparse_distance_matrix(cKDTree(mpts), gate, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros(0, int), np.zeros(0, int), np.zeros(0)
    i = pairs["i"].astype(np.int64)
    j = pairs["j"].astype(np.int64)
    corr = np.empty(len(i), dtype=np.float32)
    step = max(1, 2_000_000 // fpat.shape[1])
    for s in range(0, len(i), step):
        corr[s : s + step] = np.einsum("ij,ij->i", fpat[i[s : s + step]], mpat[j[s : s + step]])
    corr /= np.float32(fpat.shape[1])
    # best moving candidate per fixed point and best fixed candidate per moving point
    o = np.lexsort((-corr, i))
    first = np.ones(len(o), bool)
    first[1:] = i[o][1:] != i[o][:-1]
    best_i = o[first]
    o2 = np.lexsort((-corr, j))
    first2 = np.ones(len(o2), bool)
    first2[1:] = j[o2][1:] != j[o2][:-1]
    best_j = np.full(len(mpts), -1, dtype=np.int64)
    best_j[j[o2[first2]]] = i[o2[first2]]
    keep = (best_j[j[best_i]] == i[best_i]) & (corr[best_i] >= threshold)
    sel = best_i[keep]
    return i[sel], j[sel], corr[sel].astype(np.float64)
