"""Affine transforms: 4x4 homogeneous matrices in zyx order, concrete or lazy (dask)."""

from __future__ import annotations

from typing import Any, Sequence

import dask
import dask.array as da
import numpy as np
import SimpleITK as sitk

from ..errors import LazyregError
from ..validation import MAX_CONDITION, affine_condition, check_points, short_repr

__all__ = ["Affine", "rotation_matrices", "as_matrix"]

_LAST_ROW = np.array([0.0, 0.0, 0.0, 1.0])


def _vector3(value: Any, argname: str) -> np.ndarray:
    """Broadcast a number or 3 numbers (z, y, x) to a finite float64 (3,) array."""
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected a number or 3 numbers (z, y, x), got {short_repr(value)}") from None
    if arr.ndim > 1 or (arr.ndim == 1 and arr.size != 3):
        raise LazyregError(f"{argname}: expected a number or 3 numbers (z, y, x), got {short_repr(value)}")
    arr = np.broadcast_to(arr, (3,)).copy()
    if not np.all(np.isfinite(arr)):
        raise LazyregError(f"{argname}: expected finite numbers, got {tuple(arr.tolist())}")
    return arr


def rotation_matrices(angles_deg: Any) -> np.ndarray:
    """Rotation matrices acting on (z, y, x) vectors, for angles (z, y, x) in degrees.

    The convention of :meth:`Affine.from_parameters`: ``R = Rz @ Ry @ Rx`` (the rotation about x
    applied first), each a right-handed rotation of the physical (x, y, z) frame, so +90 degrees
    about z maps the x axis onto the y axis. This equals ITK's ``Euler3DTransform`` with
    ``SetComputeZYX(True)``.

    Parameters
    ----------
    angles_deg : (3,) or (K, 3) array_like
        Angles about the z, y and x axes, in degrees.

    Returns
    -------
    (3, 3) or (K, 3, 3) ndarray

    Examples
    --------
    >>> from lazyreg.transforms.affine import rotation_matrices
    >>> R = rotation_matrices([90.0, 0.0, 0.0])        # about z
    >>> (R @ [0.0, 0.0, 1.0]).round(12) + 0.0          # x -> y
    array([0., 1., 0.])
    >>> rotation_matrices([[0, 0, 0], [0, 0, 90]]).shape
    (2, 3, 3)
    """
    a = np.deg2rad(np.asarray(angles_deg, dtype=np.float64))
    single = a.ndim == 1
    a = np.atleast_2d(a)
    if a.ndim != 2 or a.shape[1] != 3:
        raise LazyregError(f"rotation: expected 3 angles (z, y, x) or (K, 3) of them, got shape {np.shape(angles_deg)}")
    c, s = np.cos(a), np.sin(a)
    k = len(a)
    rz, ry, rx = (np.zeros((k, 3, 3)) for _ in range(3))
    # in the zyx frame; about z the (y, x) plane turns x -> y for +90 degrees
    rz[:, 0, 0] = 1
    rz[:, 1, 1], rz[:, 1, 2], rz[:, 2, 1], rz[:, 2, 2] = c[:, 0], s[:, 0], -s[:, 0], c[:, 0]
    # about y the (z, x) plane: z -> x for +90 degrees
    ry[:, 1, 1] = 1
    ry[:, 0, 0], ry[:, 0, 2], ry[:, 2, 0], ry[:, 2, 2] = c[:, 1], -s[:, 1], s[:, 1], c[:, 1]
    # about x the (z, y) plane: y -> z for +90 degrees
    rx[:, 2, 2] = 1
    rx[:, 0, 0], rx[:, 0, 1], rx[:, 1, 0], rx[:, 1, 1] = c[:, 2], s[:, 2], -s[:, 2], c[:, 2]
    out = rz @ ry @ rx
    return out[0] if single else out


def _check_concrete(m: np.ndarray) -> np.ndarray:
    """Validate a concrete (4, 4) float64 matrix: finite, last row (0, 0, 0, 1)."""
    if not np.all(np.isfinite(m)):
        raise LazyregError("matrix: contains NaN or infinite values")
    if not np.allclose(m[3], _LAST_ROW, rtol=0, atol=1e-9):
        raise LazyregError(f"matrix: last row must be (0, 0, 0, 1), got {tuple(m[3].tolist())}")
    return m


def _inv(m: np.ndarray) -> np.ndarray:
    """Inverse of a (4, 4) homogeneous matrix; raises LazyregError when singular (also inside tasks)."""
    m = np.asarray(m, dtype=np.float64)
    if not np.all(np.isfinite(m)):
        raise LazyregError("matrix: contains NaN or infinite values, so it is not invertible")
    cond = affine_condition(m)
    if cond > MAX_CONDITION:
        raise LazyregError(f"matrix: the affine matrix is not invertible (linear part singular, condition {cond:.3g})")
    out = np.eye(4)
    inv3 = np.linalg.inv(m[:3, :3])
    out[:3, :3] = inv3
    out[:3, 3] = -inv3 @ m[:3, 3]
    return out


def _as_lazy(m: np.ndarray | da.Array) -> da.Array:
    return m if isinstance(m, da.Array) else da.from_array(np.asarray(m), chunks=(4, 4))


def _is_dask(x: Any) -> bool:
    return dask.is_dask_collection(x)


class Affine:
    """An affine transform ``y = M[:3, :3] @ x + M[:3, 3]`` mapping fixed to moving points (zyx).

    Parameters
    ----------
    matrix : (4, 4) array_like or dask.array.Array
        Homogeneous matrix in (z, y, x) order, physical units, stored as float64. A dask array
        makes the affine *lazy* (e.g. the not-yet-run result of an alignment): building,
        composing and inverting lazy affines computes nothing; a concrete matrix must be finite
        with last row (0, 0, 0, 1), which a lazy one is checked for by :meth:`compute`.
    report : object, optional
        What produced the transform (e.g. an alignment report; may be lazy for lazy affines).

    Attributes
    ----------
    matrix : numpy.ndarray or dask.array.Array
        The (4, 4) float64 matrix (read-only when concrete; a single chunk when lazy).
    report : object
        As given.

    Raises
    ------
    LazyregError
        If the matrix is not 4x4, or (when concrete) not finite or its last row is not (0, 0, 0, 1).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> A = lazyreg.Affine.from_translation((1.0, 2.0, 3.0))
    >>> A(np.zeros(3))
    array([1., 2., 3.])
    >>> (A @ A.inverse())(np.ones(3))
    array([1., 1., 1.])
    """

    # ``ndarray @ Affine`` must not silently turn into an ndarray through __array__.
    __array_ufunc__ = None

    def __init__(self, matrix: Any, *, report: Any = None) -> None:
        if isinstance(matrix, Affine):
            report = matrix.report if report is None else report
            matrix = matrix.matrix
        if isinstance(matrix, da.Array):
            if matrix.shape != (4, 4):
                raise LazyregError(f"matrix: expected a 4x4 homogeneous matrix, got shape {matrix.shape}")
            if not (np.issubdtype(matrix.dtype, np.number) or matrix.dtype == np.bool_) or np.issubdtype(
                matrix.dtype, np.complexfloating
            ):
                raise LazyregError(f"matrix: expected real numbers, got dtype {matrix.dtype}")
            m_lazy = matrix.astype(np.float64)
            if m_lazy.numblocks != (1, 1):
                m_lazy = m_lazy.rechunk((4, 4))
            self.matrix: np.ndarray | da.Array = m_lazy
        else:
            try:
                m = np.array(matrix, dtype=np.float64)
            except (TypeError, ValueError):
                raise LazyregError(
                    f"matrix: expected a 4x4 numeric matrix, got {type(matrix).__name__}"
                ) from None
            if m.shape != (4, 4):
                raise LazyregError(f"matrix: expected a 4x4 homogeneous matrix, got shape {m.shape}")
            _check_concrete(m)
            m[3] = _LAST_ROW
            m.setflags(write=False)
            self.matrix = m
        self.report = report

    # -- construction ------------------------------------------------------------------------
    @classmethod
    def identity(cls) -> Affine:
        """The identity transform.

        Examples
        --------
        >>> import lazyreg
        >>> lazyreg.Affine.identity()([1.0, 2.0, 3.0])
        array([1., 2., 3.])
        """
        return cls(np.eye(4))

    @classmethod
    def from_translation(cls, translation: float | Sequence[float]) -> Affine:
        """A pure shift ``y = x + t`` by ``translation`` (z, y, x), physical units.

        Examples
        --------
        >>> import lazyreg
        >>> lazyreg.Affine.from_translation((0.0, 0.0, 2.5))([1.0, 1.0, 1.0])
        array([1. , 1. , 3.5])
        """
        m = np.eye(4)
        m[:3, 3] = _vector3(translation, "translation")
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
    ) -> Affine:
        """Build an affine from rotation, scale, shear and translation about a centre.

        The transform is ``y = L @ (x - c) + c + t`` with ``L = R @ H @ S`` (all zyx): scale
        first, then shear, then rotate, about the centre ``c``; then translate by ``t``.

        * ``S = diag(scale)`` (``scale`` in z, y, x; non-zero, negative values mirror).
        * ``H`` is unit upper-triangular: ``H[0, 1], H[0, 2], H[1, 2] = shear``, i.e.
          ``z += shear[0] * y + shear[1] * x`` and ``y += shear[2] * x``.
        * ``R = Rz @ Ry @ Rx`` for ``rotation = (angle_z, angle_y, angle_x)`` in degrees: the
          rotation about x is applied first, then y, then z. Each is a right-handed rotation of
          the physical (x, y, z) frame, so rotating by +90 degrees about z maps the x axis onto
          the y axis. This equals ITK's ``Euler3DTransform`` with ``SetComputeZYX(True)`` and
          angles ``(angle_x, angle_y, angle_z)`` in radians.

        Parameters
        ----------
        rotation : float or 3 floats
            Angles (z, y, x) in degrees.
        scale : float or 3 floats
            Scale factors (z, y, x).
        shear : float or 3 floats
            Shear coefficients (zy, zx, yx).
        translation : float or 3 floats
            Translation (z, y, x), physical units.
        center : float or 3 floats
            Centre of rotation, scaling and shear (z, y, x), physical units.

        Returns
        -------
        Affine

        Examples
        --------
        >>> import lazyreg
        >>> A = lazyreg.Affine.from_parameters(rotation=(90, 0, 0))   # about z: x -> y
        >>> A([0.0, 0.0, 1.0]).round(12) + 0.0
        array([0., 1., 0.])
        >>> lazyreg.Affine.from_parameters(scale=2.0, center=(1, 1, 1))([2.0, 2.0, 2.0])
        array([3., 3., 3.])
        """
        R = rotation_matrices(_vector3(rotation, "rotation"))
        s = _vector3(scale, "scale")
        if np.any(s == 0):
            raise LazyregError(f"scale: expected non-zero values, got {tuple(s.tolist())}")
        sh = _vector3(shear, "shear")
        H = np.eye(3)
        H[0, 1], H[0, 2], H[1, 2] = sh
        L = R @ H @ np.diag(s)
        c = _vector3(center, "center")
        t = _vector3(translation, "translation")
        m = np.eye(4)
        m[:3, :3] = L
        m[:3, 3] = c - L @ c + t
        return cls(m)

    @classmethod
    def from_sitk(cls, transform: sitk.Transform) -> Affine:
        """Convert a linear 3D SimpleITK transform (xyz) to an Affine (zyx).

        Accepts ``AffineTransform``, ``Euler3DTransform``, ``VersorRigid3DTransform``,
        ``Similarity3DTransform``, ``ScaleSkewVersor3DTransform``, ``ScaleVersor3DTransform``,
        ``VersorTransform``, ``ScaleTransform``, ``TranslationTransform``, the identity, a generic
        ``sitk.Transform`` wrapping one of these (as returned by ``sitk.ReadTransform``), and a
        ``CompositeTransform`` of them, composed in ITK's order (the last added is applied first).
        ITK's axes are reversed: ITK matrix ``A`` (xyz) becomes ``A[::-1, ::-1]``.

        Raises
        ------
        LazyregError
            For non-linear transforms (B-spline, displacement field, ...), or not 3D ones.

        Examples
        --------
        >>> import SimpleITK as sitk, lazyreg
        >>> lazyreg.Affine.from_sitk(sitk.TranslationTransform(3, (1.0, 2.0, 3.0)))([0.0, 0.0, 0.0])
        array([3., 2., 1.])
        """
        return cls(_sitk_to_matrix(transform))

    # -- properties --------------------------------------------------------------------------
    @property
    def is_lazy(self) -> bool:
        """Whether the matrix is a dask array, not computed yet.

        Examples
        --------
        >>> import dask.array as da, numpy as np, lazyreg
        >>> lazyreg.Affine(da.from_array(np.eye(4))).is_lazy
        True
        """
        return isinstance(self.matrix, da.Array)

    def compute(self, **kwargs: Any) -> Affine:
        """A concrete Affine (``self`` if already concrete); a lazy report is computed alongside.

        Keyword arguments are passed to :func:`dask.compute`. The computed matrix is validated
        (finite, last row (0, 0, 0, 1)).

        Examples
        --------
        >>> import dask.array as da, numpy as np, lazyreg
        >>> lazyreg.Affine(da.from_array(np.eye(4))).compute().is_lazy
        False
        """
        if not self.is_lazy:
            return self
        if _is_dask(self.report):
            m, rep = dask.compute(self.matrix, self.report, **kwargs)
        else:
            (m,), rep = dask.compute(self.matrix, **kwargs), self.report
        return Affine(np.asarray(m), report=rep)

    def persist(self, **kwargs: Any) -> Affine:
        """The affine with its matrix and report in memory, for use in further graphs.

        An affine is 16 numbers, so this is :meth:`compute`: graphs built on the result never
        run the alignment again (without it, registration results are still computed once per
        session, see :mod:`lazyreg.result_cache`). Keyword arguments go to :func:`dask.compute`.

        Examples
        --------
        >>> import dask.array as da, numpy as np, lazyreg
        >>> lazyreg.Affine(da.from_array(np.eye(4))).persist().is_lazy
        False
        """
        return self.compute(**kwargs)

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        m = np.array(self.compute().matrix, dtype=np.float64)  # always a writable copy
        return m.astype(dtype, copy=False) if dtype is not None else m

    def __repr__(self) -> str:
        if self.is_lazy:
            return f"Affine(<lazy {self.matrix.name}>)"
        body = np.array2string(self.matrix, precision=6, suppress_small=True, separator=", ", prefix="Affine(")
        return f"Affine({body})"

    # -- algebra -----------------------------------------------------------------------------
    def __matmul__(self, other: Any) -> Affine:
        """``(A @ B)(x) == A(B(x))`` (matrix product); lazy, computing nothing, if either is lazy."""
        if not isinstance(other, Affine):
            return NotImplemented  # a DisplacementField explains itself in its __rmatmul__
        if self.is_lazy or other.is_lazy:
            return Affine(da.matmul(_as_lazy(self.matrix), _as_lazy(other.matrix)))
        return Affine(self.matrix @ other.matrix)

    def inverse(self) -> Affine:
        """The inverse transform.

        A lazy affine stays lazy (its inverse is computed, and checked, with the matrix). A
        concrete singular matrix raises at once.

        Raises
        ------
        LazyregError
            ``"matrix is not invertible"`` when the linear part is singular (condition > 1e12).

        Examples
        --------
        >>> import lazyreg
        >>> lazyreg.Affine.from_parameters(scale=2.0).inverse()([2.0, 4.0, 6.0])
        array([1., 2., 3.])
        """
        if self.is_lazy:
            return Affine(self.matrix.map_blocks(_inv, dtype=np.float64))
        return Affine(_inv(self.matrix))

    def __call__(self, points: Any) -> np.ndarray:
        """Map physical points (z, y, x) of shape (N, 3) or (3,); a lazy matrix is computed.

        Examples
        --------
        >>> import lazyreg
        >>> lazyreg.Affine.from_translation(1.0)([[0.0, 0.0, 0.0]])
        array([[1., 1., 1.]])
        """
        p = check_points(points)
        m = np.asarray(self.compute().matrix)
        return p @ m[:3, :3].T + m[:3, 3]

    def allclose(self, other: Affine | Any, *, rtol: float = 1e-9, atol: float = 1e-9) -> bool:
        """Whether two matrices are equal within tolerances (lazy ones are computed).

        Examples
        --------
        >>> import lazyreg
        >>> A = lazyreg.Affine.from_parameters(rotation=(10, 20, 30))
        >>> (A @ A.inverse()).allclose(lazyreg.Affine.identity())
        True
        """
        return bool(np.allclose(np.asarray(self), np.asarray(other, dtype=np.float64), rtol=rtol, atol=atol))

    # -- SimpleITK ---------------------------------------------------------------------------
    def to_sitk(self) -> sitk.AffineTransform:
        """An equal ``sitk.AffineTransform`` (xyz, centre 0; a lazy matrix is computed).

        Examples
        --------
        >>> import lazyreg
        >>> lazyreg.Affine.from_translation((1.0, 2.0, 3.0)).to_sitk().TransformPoint((0, 0, 0))
        (3.0, 2.0, 1.0)
        """
        m = np.asarray(self.compute().matrix)
        t = sitk.AffineTransform(3)
        t.SetMatrix(m[:3, :3][::-1, ::-1].ravel().tolist())
        t.SetTranslation(m[:3, 3][::-1].tolist())
        t.SetCenter((0.0, 0.0, 0.0))
        return t


# -- SimpleITK conversion -----------------------------------------------------------------------

_SITK_LINEAR = (
    "AffineTransform, Euler3DTransform, VersorRigid3DTransform, Similarity3DTransform, "
    "ScaleSkewVersor3DTransform, ScaleVersor3DTransform, VersorTransform, ScaleTransform, "
    "TranslationTransform, identity and composites of them"
)


def _xyz_to_zyx(A: np.ndarray, offset: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = np.asarray(A, dtype=np.float64).reshape(3, 3)[::-1, ::-1]
    m[:3, 3] = np.asarray(offset, dtype=np.float64)[::-1]
    return m


def _sitk_to_matrix(transform: Any) -> np.ndarray:
    """zyx (4, 4) matrix of a linear 3D SimpleITK transform (composites in ITK's order)."""
    if not isinstance(transform, sitk.Transform):
        raise LazyregError(f"transform: expected a SimpleITK transform, got {type(transform).__name__}")
    if transform.GetDimension() != 3:
        raise LazyregError(f"transform: expected a 3D transform, got a {transform.GetDimension()}D one")
    t = transform.Downcast()
    if isinstance(t, sitk.CompositeTransform):
        m = np.eye(4)
        # ITK applies the last added transform first: T(x) = T0(T1(...Tn(x))), so M = M0 @ ... @ Mn.
        for i in range(t.GetNumberOfTransforms()):
            m = m @ _sitk_to_matrix(t.GetNthTransform(i))
        return m
    if isinstance(t, sitk.TranslationTransform):
        return _xyz_to_zyx(np.eye(3), t.GetOffset())
    if not t.IsLinear():
        kind = type(t).__name__ if type(t) is not sitk.Transform else t.GetName()
        hint = (
            "; use lazyreg.DisplacementField.from_sitk for displacement fields"
            if isinstance(t, sitk.DisplacementFieldTransform)
            else ""
        )
        raise LazyregError(f"transform: {kind} is not linear; lazyreg.Affine accepts {_SITK_LINEAR}{hint}")
    if hasattr(t, "GetMatrix") and hasattr(t, "GetCenter"):
        # ITK: y = A (x - c) + c + translation
        A = np.asarray(t.GetMatrix(), dtype=np.float64).reshape(3, 3)
        c = np.asarray(t.GetCenter(), dtype=np.float64)
        tr = np.asarray(t.GetTranslation(), dtype=np.float64) if hasattr(t, "GetTranslation") else np.zeros(3)
        return _xyz_to_zyx(A, c - A @ c + tr)
    # Another linear transform (e.g. a generic identity): probe it with the origin and unit vectors.
    p0 = np.asarray(t.TransformPoint((0.0, 0.0, 0.0)))
    A = np.stack([np.asarray(t.TransformPoint(tuple(e))) - p0 for e in np.eye(3)], axis=1)
    return _xyz_to_zyx(A, p0)


def as_matrix(value: Any, argname: str = "initial") -> np.ndarray | None:
    """A concrete (4, 4) float64 matrix from an Affine, a matrix or None (None stays None).

    A lazy Affine is computed. Used by steps for their ``initial`` argument.

    Examples
    --------
    >>> from lazyreg.transforms.affine import Affine, as_matrix
    >>> as_matrix(Affine.from_translation(1.0))[:3, 3]
    array([1., 1., 1.])
    >>> as_matrix(None) is None
    True
    """
    if value is None:
        return None
    try:
        return np.array(Affine(value).compute().matrix, dtype=np.float64)
    except LazyregError as e:
        raise LazyregError(f"{argname}: {e}") from None
