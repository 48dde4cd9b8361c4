"""RANSAC: a robust affine from putative point correspondences.

4-point minimal samples are solved in batches with ``numpy.linalg.solve``, scored by truncated
squared residuals (MSAC) with an adaptive number of samples, then refit by least squares on the
inliers until the inlier set stops changing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import LazyregError
from ..validation import check_int, check_number, check_seed

__all__ = ["ransac_affine", "check_point_array"]


def check_point_array(points: Any, name: str, minimum: int = 1) -> np.ndarray:
    """An (N, 3) array of finite physical points with at least ``minimum`` rows.

    Examples
    --------
    >>> check_point_array([[0, 0, 0]], "fixed_points", 4)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: fixed_points: need at least 4 points, got 1
    """
    try:
        p = np.asarray(points, dtype=float)
    except (TypeError, ValueError):
        raise LazyregError(f"{name}: expected an (N, 3) array of physical (z, y, x) points") from None
    if p.ndim != 2 or p.shape[1] != 3:
        raise LazyregError(f"{name}: expected an (N, 3) array of physical (z, y, x) points, got shape {p.shape}")
    if not np.all(np.isfinite(p)):
        raise LazyregError(f"{name}: points must be finite (found NaN or infinity)")
    if len(p) < minimum:
        raise LazyregError(f"{name}: need at least {minimum} points, got {len(p)}")
    return p


def _affine_to_matrix(m: np.ndarray, cp: np.ndarray, cq: np.ndarray, scale: float) -> np.ndarray:
    """(4, 3) solution of ``[(p - cp) / scale, 1] @ m = q - cq`` as a 4x4 fixed -> moving matrix."""
    lin = m[:3].T / scale
    out = np.eye(4)
    out[:3, :3] = lin
    out[:3, 3] = m[3] + cq - lin @ cp
    return out


def ransac_affine(
    fixed_points: np.ndarray,
    moving_points: np.ndarray,
    *,
    align_threshold: float,
    max_iterations: int = 20000,
    seed: int = 0,
    diagonal_constraint: float | None = None,
    confidence: float = 0.9999,
) -> tuple[np.ndarray, np.ndarray]:
    """Robust affine from putative point correspondences by vectorised RANSAC.

    Minimal samples of 4 correspondences are drawn and solved in batches; each candidate is
    scored over all correspondences by the truncated squared residual (MSAC). Sampling stops
    after ``max_iterations`` candidates or once the best inlier ratio makes a better candidate
    unlikely (``confidence``). The best candidate is refit by least squares on its inliers until
    the inlier set stops changing.

    Parameters
    ----------
    fixed_points, moving_points : (N, 3) arrays
        Corresponding physical points (z, y, x), row ``i`` of each forming a putative pair.
    align_threshold : float
        Largest residual |M(p) - q| of an inlier, in physical units.
    max_iterations : int
        Most random minimal samples.
    seed : int
        Random seed; the result is deterministic for a seed.
    diagonal_constraint : float, optional
        Reject candidates whose linear part has a diagonal entry farther than this from 1
        (as bigstream does), e.g. 0.25 rejects scalings or rotations beyond that.
    confidence : float
        Probability of having drawn an all-inlier sample at which sampling stops.

    Returns
    -------
    matrix : (4, 4) ndarray
        Fixed -> moving affine (zyx, physical).
    inliers : (N,) bool ndarray
        Correspondences within ``align_threshold`` of the final fit.

    Raises
    ------
    LazyregError
        Fewer than 4 correspondences, bad options, or no candidate with 5 inliers.

    Examples
    --------
    >>> import numpy as np
    >>> from lazyreg.registration.ransac import ransac_affine
    >>> rng = np.random.default_rng(0)
    >>> p = rng.uniform(0, 100, (50, 3))
    >>> q = p @ np.diag([1.1, 0.9, 1.0]).T + [5, -3, 2]
    >>> q[:10] = rng.uniform(0, 100, (10, 3))  # outliers
    >>> m, inl = ransac_affine(p, q, align_threshold=1.0)
    >>> np.round(m[:3], 6) + 0.0, int(inl.sum())
    (array([[ 1.1,  0. ,  0. ,  5. ],
           [ 0. ,  0.9,  0. , -3. ],
           [ 0. ,  0. ,  1. ,  2. ]]), 40)
    """
    p = check_point_array(fixed_points, "fixed_points", 4)
    q = check_point_array(moving_points, "moving_points", 4)
    if len(p) != len(q):
        raise LazyregError(
            f"moving_points: expected as many points as fixed_points ({len(p)}), got {len(q)}"
        )
    thr = check_number(align_threshold, "align_threshold", 0.0, lo_open=True)
    max_iterations = check_int(max_iterations, "max_iterations", minimum=1)
    if diagonal_constraint is not None:
        diagonal_constraint = check_number(diagonal_constraint, "diagonal_constraint", 0.0)
    confidence = check_number(confidence, "confidence", 0.0, 1.0, lo_open=True)
    seed = check_seed(seed)
    n = len(p)
    cp, cq = p.mean(0), q.mean(0)
    scale = float(np.sqrt(((p - cp) ** 2).sum(1).mean())) or 1.0
    X = np.column_stack([(p - cp) / scale, np.ones(n)])
    Y = q - cq
    thr2 = thr * thr
    rng = np.random.default_rng(int(seed))
    batch = int(max(16, min(1024, 4_000_000 // n)))
    best_score, best_m, best_count = np.inf, None, 0
    done, needed = 0, max_iterations
    while done < min(needed, max_iterations):
        k = min(batch, max_iterations - done)
        done += k
        idx = rng.integers(0, n, size=(k, 4))
        s = np.sort(idx, axis=1)
        ok = np.all(s[:, 1:] != s[:, :-1], axis=1)
        Xs = X[idx[ok]]
        ok2 = np.abs(np.linalg.det(Xs)) > 1e-6
        if not ok2.any():
            continue
        m = np.linalg.solve(Xs[ok2], Y[idx[ok][ok2]])  # (k', 4, 3)
        good = np.all(np.isfinite(m), axis=(1, 2))
        if diagonal_constraint is not None:
            diag = np.stack([m[:, i, i] for i in range(3)], 1) / scale
            good &= np.all(np.abs(diag - 1.0) <= diagonal_constraint, axis=1)
        m = m[good]
        if len(m) == 0:
            continue
        r2 = ((X @ m - Y) ** 2).sum(-1)
        score = np.minimum(r2, thr2).sum(1)
        j = int(np.argmin(score))
        if score[j] < best_score:
            best_score, best_m = float(score[j]), m[j]
            best_count = int((r2[j] < thr2).sum())
            w = best_count / n
            if w >= 1:
                needed = done
            elif w > 0:
                needed = int(math.ceil(math.log(1 - confidence) / math.log(1 - w**4)))
    if best_m is None or best_count < 5:
        # a minimal sample always fits its own 4 points: at least one more must agree
        raise LazyregError(
            f"align_threshold: RANSAC found no affine with at least 5 of {n} correspondences within "
            f"{thr:g} (best: {best_count}); raise align_threshold or max_iterations, or improve the matches"
        )
    m = best_m
    inl = ((X @ m - Y) ** 2).sum(1) < thr2
    for _ in range(20):
        if inl.sum() < 4:
            break
        m_new = np.linalg.lstsq(X[inl], Y[inl], rcond=None)[0]
        new = ((X @ m_new - Y) ** 2).sum(1) < thr2
        if new.sum() < 4:
            break
        m = m_new
        if np.array_equal(new, inl):
            break
        inl = new
    inl = ((X @ m - Y) ** 2).sum(1) < thr2
    return _affine_to_matrix(m, cp, cq, scale), inl
