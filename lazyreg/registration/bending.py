"""Bending energy of a B-spline's coefficient grid, and its proximal step (the "deform" ``bending`` option).

SimpleITK's ``ImageRegistrationMethod`` optimises one metric, so a smoothness penalty cannot be added
to it. :func:`align_deformable` alternates instead: a few optimiser iterations on the metric, then
the proximal step of the penalty on the coefficients ``c0``,

    c = argmin_c ||c - c0||^2 + bending * E(c),  i.e.  (I + bending * L) c = c0,

where ``E(c) = c^T L c`` is the discrete bending energy of the grid, per displacement component,

    E(c) = sum over control points of c_zz^2 + c_yy^2 + c_xx^2 + 2 c_zy^2 + 2 c_zx^2 + 2 c_yx^2,

with second differences in units of control points (``c_zz[i] = c[i+2] - 2 c[i+1] + c[i]``,
``c_zy`` the product of forward first differences along z and y, both only where the stencil
fits the grid). The weight ``bending`` is therefore dimensionless; the coefficients stay in
physical units (they are displacements). An affine (linear) coefficient field has no bending
energy and is left unchanged.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
import scipy.sparse as sp
import SimpleITK as sitk
from scipy.sparse.linalg import cg

#: Conjugate gradients of :func:`bending_prox` stop at this relative residual, or after
#: ``PROX_MAXITER`` iterations (weight 100 on a 35^3 grid needs about 1 300).
PROX_RTOL = 1e-10
PROX_MAXITER = 10_000

__all__ = [
    "PROX_RTOL", "PROX_MAXITER", "bending_operator", "bending_energy", "bending_prox", "bspline_coefficients",
    "smooth_bspline",
]


def _diff(n: int, order: int) -> sp.csr_matrix:
    """Forward difference of ``order`` (1 or 2) on ``n`` points: ``(n - order) x n`` (empty if n <= order)."""
    if n <= order:
        return sp.csr_matrix((0, n))
    stencil = [-1.0, 1.0] if order == 1 else [1.0, -2.0, 1.0]
    return sp.diags(stencil, list(range(order + 1)), shape=(n - order, n), format="csr")


def _second_differences(shape: Sequence[int]) -> list[tuple[float, sp.csr_matrix]]:
    """(weight, operator) of the six second differences on a C-ordered grid of ``shape`` (z, y, x)."""
    eye = [sp.identity(int(n), format="csr") for n in shape]
    ops = []
    for a in range(3):  # pure second differences: weight 1
        parts = [_diff(int(shape[i]), 2) if i == a else eye[i] for i in range(3)]
        ops.append((1.0, sp.kron(sp.kron(parts[0], parts[1]), parts[2], format="csr")))
    for a, b in ((0, 1), (0, 2), (1, 2)):  # mixed: weight 2
        parts = [_diff(int(shape[i]), 1) if i in (a, b) else eye[i] for i in range(3)]
        ops.append((2.0, sp.kron(sp.kron(parts[0], parts[1]), parts[2], format="csr")))
    return ops


def bending_operator(shape: Sequence[int]) -> sp.csr_matrix:
    """The matrix ``L`` of the bending energy ``E(c) = c^T L c`` on a grid of ``shape`` (z, y, x).

    ``L`` is the sum of ``w D^T D`` over the six second-difference operators ``D`` (Kronecker
    products of 1-D differences; ``w`` = 1 for zz, yy, xx and 2 for zy, zx, yx), acting on the
    C-ordered (x fastest) flattening of one component of the grid.

    Parameters
    ----------
    shape : 3 ints
        Control points along z, y, x.

    Returns
    -------
    scipy.sparse.csr_matrix
        Symmetric positive semi-definite, ``prod(shape)`` square.

    Examples
    --------
    >>> import numpy as np
    >>> L = bending_operator((4, 5, 6))
    >>> L.shape
    (120, 120)
    >>> z, y, x = np.meshgrid(*map(np.arange, (4, 5, 6)), indexing="ij")
    >>> float(np.abs(L @ (2 * z - y + 3 * x + 1.0).ravel()).max())  # a linear field does not bend
    0.0
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape: expected 3 positive integers (z, y, x), got {shape!r}")
    n = int(np.prod(shape))
    L = sp.csr_matrix((n, n))
    for w, D in _second_differences(shape):
        L = L + w * (D.T @ D)
    return L.tocsr()


def bending_energy(coefficients: np.ndarray) -> float:
    """The bending energy of a coefficient grid, summed over its leading (component) axes.

    Parameters
    ----------
    coefficients : array (..., nz, ny, nx)
        One or more grids of coefficients, e.g. ``(3, nz, ny, nx)`` from :func:`bspline_coefficients`.

    Returns
    -------
    float
        ``sum c_zz^2 + c_yy^2 + c_xx^2 + 2 (c_zy^2 + c_zx^2 + c_yx^2)`` over control points and
        components (in the coefficients' units squared).

    Examples
    --------
    >>> import numpy as np
    >>> c = np.zeros((5, 5, 5)); c[2, 2, 2] = 1.0
    >>> bending_energy(c)  # 3 * (1 + 4 + 1) from the pure, 2 * 3 * 4 from the mixed differences
    42.0
    >>> z, y, x = np.meshgrid(*map(np.arange, (5, 5, 5)), indexing="ij")
    >>> bending_energy(np.stack([z + 2.0 * x, y - z]))
    0.0
    """
    c = np.asarray(coefficients, dtype=np.float64)
    total = 0.0
    for a in (-3, -2, -1):
        total += float(np.sum(np.diff(c, 2, axis=a) ** 2))
    for a, b in ((-3, -2), (-3, -1), (-2, -1)):
        total += 2.0 * float(np.sum(np.diff(np.diff(c, axis=a), axis=b) ** 2))
    return total


@lru_cache(maxsize=8)
def _system(shape: tuple[int, int, int], weight: float) -> tuple[sp.csr_matrix, sp.dia_matrix]:
    """``I + weight * L`` and its Jacobi preconditioner (cached: every round of a level reuses them)."""
    n = int(np.prod(shape))
    A = (sp.identity(n, format="csr") + weight * bending_operator(shape)).tocsr()
    return A, sp.diags(1.0 / A.diagonal())


def bending_prox(coefficients: np.ndarray, weight: float) -> np.ndarray:
    """The proximal step of the bending energy: ``argmin_c ||c - c0||^2 + weight * E(c)`` per grid.

    Solves ``(I + weight * L) c = c0`` for every leading index of ``coefficients`` by conjugate
    gradients (Jacobi preconditioned, started at ``c0``, relative residual ``PROX_RTOL``): control
    grids are small (35^3 points: 0.15 s for weight 1, 2 s for weight 100; a sparse LU takes 55 s).
    Every iteration lowers the objective, so the energy never increases, and a grid in the null
    space of ``L`` (an affine field) is returned exactly as it came.

    Parameters
    ----------
    coefficients : array (..., nz, ny, nx)
        The grids ``c0`` (e.g. the three displacement components of a B-spline).
    weight : float
        ``bending`` >= 0; 0 returns a copy of ``c0``.

    Returns
    -------
    numpy.ndarray
        The smoothed grids, same shape, float64. Affine (linear) grids are returned unchanged
        (to rounding), and the bending energy never increases.

    Examples
    --------
    >>> import numpy as np
    >>> c0 = np.random.default_rng(0).normal(size=(3, 6, 6, 6))
    >>> c = bending_prox(c0, 1.0)
    >>> bool(bending_energy(c) < 0.1 * bending_energy(c0))
    True
    """
    c0 = np.asarray(coefficients, dtype=np.float64)
    if weight == 0:
        return c0.copy()
    shape = tuple(int(n) for n in c0.shape[-3:])
    A, M = _system(shape, float(weight))  # type: ignore[arg-type]
    flat = c0.reshape(-1, int(np.prod(shape)))
    out = np.empty_like(flat)
    for i, b in enumerate(flat):
        out[i] = cg(A, b, x0=b.copy(), rtol=PROX_RTOL, atol=0.0, M=M, maxiter=PROX_MAXITER)[0]
    return out.reshape(c0.shape)


def bspline_coefficients(t: sitk.Transform) -> np.ndarray:
    """The coefficients of a 3-D SimpleITK B-spline as an array ``(3, nz, ny, nx)``.

    SimpleITK's parameters are the x, y, z coefficient images one after the other, each x-fastest,
    so the components come in that (x, y, z) order, each a zyx grid as ``GetArrayFromImage`` of
    ``t.GetCoefficientImages()[i]``; values are displacements in physical units.

    Parameters
    ----------
    t : SimpleITK.BSplineTransform
        A 3-D B-spline (e.g. ``sitk.BSplineTransformInitializer(image, mesh, 3)``).

    Returns
    -------
    numpy.ndarray
        float64, shape ``(3, nz, ny, nx)``.

    Examples
    --------
    >>> import SimpleITK as sitk
    >>> t = sitk.BSplineTransformInitializer(sitk.Image([8, 8, 8], sitk.sitkFloat32), [2, 3, 4], 3)
    >>> bspline_coefficients(t).shape
    (3, 7, 6, 5)
    """
    t = sitk.BSplineTransform(t) if not isinstance(t, sitk.BSplineTransform) else t
    nx, ny, nz = t.GetCoefficientImages()[0].GetSize()
    return np.asarray(t.GetParameters(), dtype=np.float64).reshape(3, nz, ny, nx)


def smooth_bspline(t: sitk.Transform, weight: float) -> float:
    """Replace a B-spline's coefficients in place by their proximal step; returns the new bending energy.

    Parameters
    ----------
    t : SimpleITK.BSplineTransform
        Smoothed in place (its parameters set with ``SetParameters``).
    weight : float
        ``bending`` >= 0, as :func:`bending_prox` (0 leaves ``t`` unchanged).

    Returns
    -------
    float
        :func:`bending_energy` of the coefficients after the step.

    Examples
    --------
    >>> import numpy as np, SimpleITK as sitk
    >>> t = sitk.BSplineTransformInitializer(sitk.Image([8, 8, 8], sitk.sitkFloat32), [3, 3, 3], 3)
    >>> t.SetParameters(np.random.default_rng(0).normal(size=t.GetNumberOfParameters()).tolist())
    >>> before = bending_energy(bspline_coefficients(t))
    >>> bool(smooth_bspline(t, 2.0) < 0.1 * before)
    True
    """
    c = bspline_coefficients(t)
    if weight > 0:
        c = bending_prox(c, weight)
        t.SetParameters(c.ravel().tolist())
    return bending_energy(c)
