"""Affine transforms: 4x4 homogeneous matrices in zyx order, concrete or lazy (dask)."""

from __future__ import annotations

from typing import Any, Sequence

import dask.array as da
import numpy as np
import SimpleITK as sitk

from ..errors import LazyregError

__all__ = ["Affine"]

_REV = np.array([2, 1, 0])


def _triple(v: Any, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=float)
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != 3):
        raise LazyregError(f"{name}: expected a number or 3 numbers (z, y, x), got {v!r}")
    arr = np.broadcast_to(arr, (3,)).copy()
    if not np.all(np.isfinite(arr)):
        raise LazyregError(f"{name}: expected finite numbers, got {v!r}")
    return arr


def _rotation_zyx(angles_deg: np.ndarray) -> np.ndarray:
    """R = Rz @ Ry @ Rx for angles (degrees) about the z, y and x axes, in the zyx frame."""
    az, ay, ax = np.deg2rad(angles_deg)
    rz = np.array([[1, 0, 0], [0, np.cos(az), -np.sin(az)], [0, np.sin(az), np.cos(az)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rx = np.array([[np.cos(ax), -np.sin(ax), 0], [np.sin(ax), np.cos(ax), 0], [0, 0, 1]])
    return rz @ ry @ rx


def _inv(m: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(m)):
        raise LazyregError("matrix: contains NaN or infinite values")
    if abs(np.linalg.det(m[:3, :3])) < 1e-12 * max(1.0, np.abs(m[:3, :3]).max() ** 3):
        raise LazyregError("matrix: the affine matrix is not invertible (singular linear part)")
    return np.linalg.inv(m)


class Affine:
    """An affine transform ``y = M[:3, :3] @ x + M[:3, 3]`` mapping fixed to moving points (zyx).

    Parameters
    ----------
    matrix : (4, 4) array_like or dask array
        Homogeneous matrix in (z, y, x) order, physical units. A dask array makes the affine
        *lazy* (e.g. the not-yet-run result of an alignment): building, composing and inverting
        lazy affines computes nothing.
    report : object, optional
        What produced the transform (e.g. an alignment report; lazy for lazy affines).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> A = lazyreg.Affine.from_translation((1.0, 2.0, 3.0))
    >>> A(np.zeros(3))
    array([1., 2., 3.])
    >>> (A @ A.inverse())(np.ones(3))
    array([1., 1., 1.])
    """

    def __init__(self, matrix: Any, *, report: Any = None) -> None:
        if isinstance(matrix, Affine):
            matrix = matrix.matrix
        if isinstance(matrix, da.Array):
            if matrix.shape != (4, 4):
                raise LazyregError(f"matrix: expected a 4x4 homogeneous matrix, got shape {matrix.shape}")
            self.matrix: np.ndarray | da.Array = matrix.astype(np.float64)
        else:
            try:
                m = np.array(matrix, dtype=np.float64)
            except (TypeError, ValueError):
                raise LazyregError(f"matrix: expected a 4x4 numeric matrix, got {type(matrix).__name__}") from None
            if m.shape != (4, 4):
                raise LazyregError(f"matrix: expected a 4x4 homogeneous matrix, got shape {m.shape}")
            if not np.all(np.isfinite(m)):
                raise LazyregError("matrix: contains NaN or infinite values")
            if not np.allclose(m[3], [0, 0, 0, 1], atol=1e-9):
                raise LazyregError(f"matrix: last row must be (0, 0, 0, 1), got {tuple(m[3])}")
            m[3] = (0, 0, 0, 1)
            m.setflags(write=False)
            self.matrix = m
        self.report = report

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> "Affine":
        """The identity transform."""
        return cls(np.eye(4))

    @classmethod
    def from_translation(cls, translation: float | Sequence[float]) -> "Affine":
        """A pure shift by ``translation`` (z, y, x), physical units."""
        m = np.eye(4)
        m[:3, 3] = _triple(translation, "translation")
        return cls(m)

    @classmethod
    def from_parameters(
        cls,
        *,
        rotation: float | Sequence[float] = (0.0, 0.0, 0.0),
        scale: float | Sequence[float] = 1.0,
        shear: float | Sequence[float] = (0.0, 0.0, 0.0),
        translation: float | Sequence[float] = (0.0, 0.0, 0.0),
        center: float | Sequence[float] = (0.0, 0.0, 0.0),
    ) -> "Affine":
        """Build from rotation, scale, shear and translation about a centre.

        ``y = L (x - c) + c + t`` with ``L = R @ H @ S``, where ``R = Rz @ Ry @ Rx`` rotates by
        ``rotation`` degrees about the z, y and x axes (z-rotation turns the y-x plane, y the z-x
        plane, x the z-y plane), ``H`` is upper unit-triangular with ``H[0, 1], H[0, 2], H[1, 2] =
        shear`` and ``S = diag(scale)``.

        Examples
        --------
        >>> import lazyreg
        >>> A = lazyreg.Affine.from_parameters(rotation=(90, 0, 0))
        >>> A([0.0, 1.0, 0.0]).round(12)
        array([0., 0., 1.])
        """
        R = _rotation_zyx(_triple(rotation, "rotation"))
        s = _triple(scale, "scale")
        if np.any(s <= 0):
            raise LazyregError(f"scale: expected positive values, got {tuple(s)}")
        sh = _triple(shear, "shear")
        H = np.eye(3)
        H[0, 1], H[0, 2], H[1, 2] = sh
        L = R @ H @ np.diag(s)
        c = _triple(center, "center")
        t = _triple(translation, "translation")
        m = np.eye(4)
        m[:3, :3] = L
        m[:3, 3] = c - L @ c + t
        return cls(m)

    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> "Affine":
        """Convert a linear SimpleITK transform (xyz) to an Affine (zyx).

        Accepts AffineTransform, Euler3D, VersorRigid3D, Similarity3D, ScaleSkewVersor3D,
        TranslationTransform, identity, a generic ``sitk.Transform`` wrapping one of these, and
        composite transforms of them. Non-linear transforms raise :class:`LazyregError`.
        """
        return cls(_sitk_to_matrix(transform))

    # -- properties --------------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        """Whether the matrix is a dask array not computed yet."""
        return isinstance(self.matrix, da.Array)

    def compute(self) -> "Affine":
        """A concrete Affine (itself if already concrete); a lazy report is computed alongside."""
        if not self.is_lazy:
            return self
        import dask

        if _is_dask(self.report):
            m, rep = dask.compute(self.matrix, self.report)
        else:
            m, rep = self.matrix.compute(), self.report
        return Affine(m, report=rep)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        m = np.asarray(self.compute().matrix)
        return m.astype(dtype) if dtype is not None else m.copy()

    def __repr__(self) -> str:
        if self.is_lazy:
            return f"Affine(<lazy {self.matrix.name}>)"
        rows = "\n       ".join(np.array2string(r, precision=5, suppress_small=True) for r in self.matrix)
        return f"Affine({rows})"

    # -- algebra -----------------------------------------------------------------------------
    def __matmul__(self, other: "Affine") -> "Affine":
        """``(A @ B)(x) == A(B(x))``; lazy if either is."""
        if not isinstance(other, Affine):
            return NotImplemented
        if self.is_lazy or other.is_lazy:
            a = self.matrix if self.is_lazy else da.from_array(np.asarray(self.matrix), chunks=4)
            b = other.matrix if other.is_lazy else da.from_array(np.asarray(other.matrix), chunks=4)
            return Affine(da.matmul(a.rechunk(4), b.rechunk(4)))
        return Affine(self.matrix @ other.matrix)

    def inverse(self) -> "Affine":
        """The inverse transform (lazy stays lazy; a singular matrix raises when known)."""
        if self.is_lazy:
            return Affine(self.matrix.rechunk(4).map_blocks(_inv, dtype=np.float64))
        return Affine(_inv(np.asarray(self.matrix)))

    def __call__(self, points: Any) -> np.ndarray:
        """Map (N, 3) or (3,) physical points (zyx); a lazy matrix is computed."""
        p = np.asarray(points, dtype=float)
        if p.shape[-1:] != (3,) or p.ndim > 2:
            raise LazyregError(f"points: expected shape (N, 3) or (3,), got {p.shape}")
        m = np.asarray(self.compute().matrix)
        return p @ m[:3, :3].T + m[:3, 3]

    def allclose(self, other: "Affine", *, atol: float = 1e-8) -> bool:
        """Whether two (computed) matrices agree within ``atol``."""
        return bool(np.allclose(np.asarray(self), np.asarray(other), atol=atol, rtol=0))

    # -- SimpleITK ---------------------------------------------------------------------------
    def to_sitk(self) -> sitk.AffineTransform:
        """A ``sitk.AffineTransform`` (xyz) equal to this transform (computed if lazy)."""
        m = np.asarray(self.compute().matrix)
        t = sitk.AffineTransform(3)
        t.SetMatrix(m[:3, :3][::-1, ::-1].ravel().tolist())
        t.SetTranslation(m[:3, 3][::-1].tolist())
        t.SetCenter((0.0, 0.0, 0.0))
        return t


def _is_dask(x: Any) -> bool:
    return hasattr(x, "__dask_graph__") and x.__dask_graph__() is not None


def _linear_to_matrix(t: sitk.Transform) -> np.ndarray:
    """zyx matrix of one linear ITK transform: y = A (x - c) + c + t."""
    name = t.GetName()
    n = t.GetDimension()
    if n != 3:
        raise LazyregError(f"transform: expected a 3D transform, got {n}D {name}")
    m = np.eye(4)
    if name == "IdentityTransform":
        return m
    if name == "TranslationTransform":
        m[:3, 3] = np.asarray(sitk.TranslationTransform(t).GetOffset())[::-1]
        return m
    casts = {
        "AffineTransform": sitk.AffineTransform,
        "Euler3DTransform": sitk.Euler3DTransform,
        "VersorRigid3DTransform": sitk.VersorRigid3DTransform,
        "Similarity3DTransform": sitk.Similarity3DTransform,
        "ScaleSkewVersor3DTransform": sitk.ScaleSkewVersor3DTransform,
        "ScaleVersor3DTransform": sitk.ScaleVersor3DTransform,
        "VersorTransform": sitk.VersorTransform,
        "ScaleTransform": sitk.ScaleTransform,
    }
    if name not in casts:
        raise LazyregError(
            f"transform: {name} is not linear; lazyreg.Affine accepts {', '.join(sorted(casts))} and composites of them"
        )
    lt = casts[name](t)
    A = np.asarray(lt.GetMatrix()).reshape(3, 3)
    c = np.asarray(lt.GetCenter())
    tr = np.asarray(lt.GetTranslation())
    off = c - A @ c + tr  # xyz
    m[:3, :3] = A[::-1, ::-1]
    m[:3, 3] = off[::-1]
    return m


def _sitk_to_matrix(transform: sitk.Transform) -> np.ndarray:
    if not isinstance(transform, sitk.Transform):
        raise LazyregError(f"transform: expected a SimpleITK transform, got {type(transform).__name__}")
    if transform.GetName() == "CompositeTransform":
        comp = sitk.CompositeTransform(transform)
        m = np.eye(4)
        # ITK applies the last added transform first: T = T0(T1(...(Tn(x))))
        for i in range(comp.GetNumberOfTransforms()):
            m = m @ _sitk_to_matrix(comp.GetNthTransform(i))
        return m
    return _linear_to_matrix(transform)
