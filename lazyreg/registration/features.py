"""Global alignment by feature points: blobs, rotation-invariant descriptors, matching and RANSAC.

The pipeline of :func:`align_features`, eager; in-memory images are used whole, dask-backed
images of more than one chunk are never loaded whole (:mod:`.blob_chunks`: blobs detected tile by
tile, descriptors read around the blobs only), with the same result:

1. **Blobs** (:mod:`.blobs`) in both images, sub-voxel, strongest first.
2. **Descriptors** (:mod:`.descriptors`) of each blob's neighbourhood: rotation-invariant
   spherical shells, and coarse patches.
3. **Global matching** (:mod:`.matching`): for each descriptor kind, all fixed against all moving
   blobs; mutually best pairs above a correlation threshold that pass a ratio test. The union of
   both kinds goes to RANSAC.
4. **RANSAC** (:mod:`.ransac`) finds an affine among the matches.
5. **Guided matching** (twice): with the affine found, patches are compared again - the moving
   patch grid now mapped by the affine's linear part, so rotation, scale and shear are undone -
   but only against moving blobs within a small radius of where the affine predicts them. These
   matches are more numerous and reliable; RANSAC on them gives the result.

All point coordinates are physical (z, y, x); matrices map fixed points to moving points.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from ..transforms.affine import Affine, as_matrix
from ..validation import check_int, check_number, check_seed
from .blob_chunks import LazyPyramid, is_chunked, lazy_mask
from .blobs import Pyramid, as_volume, blob_sigmas, check_blob_sizes
from .descriptors import Describer
from .matching import match_all, match_guided
from .ransac import check_point_array, ransac_affine

__all__ = ["align_features", "validate_options"]


def validate_options(name: str, opts: dict) -> None:
    """Check the options of an ``align_features`` step without reading any data.

    Called by :func:`lazyreg.registration.steps.parse_steps` so that a bad option fails before any work.

    Parameters
    ----------
    name : str
        The step name (used only in messages).
    opts : dict
        Keyword arguments meant for :func:`align_features`.

    Raises
    ------
    LazyregError
        Naming the first bad option.

    Examples
    --------
    >>> from lazyreg.registration.features import validate_options
    >>> validate_options("ransac", {"blob_sizes": (4, 12), "match_threshold": 0.6})
    """
    if "blob_sizes" in opts:
        check_blob_sizes(opts["blob_sizes"])
    if "nspots" in opts:
        check_int(opts["nspots"], "nspots", minimum=4)
    if "num_sigma_max" in opts:
        check_int(opts["num_sigma_max"], "num_sigma_max", minimum=1)
    if "max_iterations" in opts:
        check_int(opts["max_iterations"], "max_iterations", minimum=1)
    if "match_threshold" in opts:
        check_number(opts["match_threshold"], "match_threshold", -1.0, 1.0, lo_open=True)
    if "match_ratio" in opts:
        check_number(opts["match_ratio"], "match_ratio", 0.0, 1.0, lo_open=True)
    for key in ("align_threshold", "context_radius"):
        if opts.get(key) is not None:
            check_number(opts[key], key, 0.0, lo_open=True)
    if opts.get("diagonal_constraint") is not None:
        check_number(opts["diagonal_constraint"], "diagonal_constraint", 0.0)
    if opts.get("threshold") is not None:
        check_number(opts["threshold"], "threshold")
    if "seed" in opts:
        check_seed(opts["seed"])
    if "fallback" in opts and opts["fallback"] not in (None, "identity"):
        raise LazyregError(
            f"fallback: expected None (raise an error) or 'identity', got {opts['fallback']!r}"
        )


def _mask_values(mask: Any, shape: tuple, name: str) -> np.ndarray | None:
    if mask is None:
        return None
    m = mask.data if isinstance(mask, xr.DataArray) else mask
    if hasattr(m, "compute") and not isinstance(m, np.ndarray):
        m = m.compute()
    m = np.asarray(m)
    if m.shape != tuple(shape):
        raise LazyregError(f"{name}: shape {m.shape} differs from its image's shape {tuple(shape)}")
    m = m.astype(bool)
    if not m.any():
        raise LazyregError(f"{name}: the mask is empty (no True voxel); pass {name}=None or a larger mask")
    return m


def _user_points(points: Any, g: Grid, name: str, nspots: int, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """User points inside the image (physical); a seeded subset of ``nspots`` when there are more."""
    p = check_point_array(points, name)
    idx = g.to_index(p)
    inside = np.all((idx >= -0.5) & (idx <= np.asarray(g.shape) - 0.5), axis=1)
    if not inside.any():
        lo, hi = g.extent
        raise LazyregError(
            f"{name}: none of the {len(p)} points lies inside the image (physical extent "
            f"{tuple(np.round(lo, 3))} to {tuple(np.round(hi, 3))}); pass physical (z, y, x) coordinates"
        )
    p = p[inside]
    if len(p) > nspots:
        p = p[np.sort(rng.choice(len(p), nspots, replace=False))]
    return p, int((~inside).sum())


def align_features(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    blob_sizes: tuple[float, float] = (6, 20),
    nspots: int = 2000,
    num_sigma_max: int = 6,
    threshold: float | None = None,
    context_radius: float | None = None,
    match_threshold: float = 0.5,
    match_ratio: float = 0.95,
    align_threshold: float | None = None,
    diagonal_constraint: float | None = None,
    fixed_points: np.ndarray | None = None,
    moving_points: np.ndarray | None = None,
    fixed_mask: Any = None,
    moving_mask: Any = None,
    initial: Affine | np.ndarray | None = None,
    fallback: str | None = None,
    seed: int = 0,
    max_iterations: int = 20000,
) -> Affine:
    """Global affine from matched blobs: detection, neighbourhood descriptors and RANSAC.

    Blobs are detected in both images (:func:`detect_blobs`), described by rotation-invariant
    spherical-shell statistics and by coarse patches of their neighbourhood, and matched by
    correlation; RANSAC (:func:`ransac_affine`) finds an affine. Then patches aligned by that
    affine are matched among nearby blobs only, and RANSAC on these reliable matches gives the
    result. See the module docstring for the design. Handles rotations of any angle in
    principle and 10% scale changes (tested: 40 degrees on synthetic data, 20 degrees with 8%
    scale on the tutorial data).

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images. In memory, or dask-backed: an image of one chunk is computed here; one of several
        chunks is never loaded whole (blobs are detected tile by tile and descriptors read around
        the blobs; :mod:`lazyreg.registration.blob_chunks`), with the same result.
    blob_sizes : (float, float)
        Smallest and largest blob radius in voxels of the fixed image's smallest spacing; the
        same physical sizes are used in both images.
    nspots : int
        Most blobs kept per image, strongest first.
    num_sigma_max : int
        Most scale levels in blob detection.
    threshold : float, optional
        Smallest DoG response of a blob (see :func:`detect_blobs`).
    context_radius : float, optional
        Radius of the neighbourhood described around each blob, physical units; default
        ``2 * sqrt(blob_sizes[0] * blob_sizes[1])`` voxels (about 4 typical blob radii).
    match_threshold : float
        Smallest descriptor correlation of a match in (-1, 1]; lower it when too few matches
        are found, raise it when RANSAC drowns in false matches.
    match_ratio : float
        Ratio test in (0, 1]: the best candidate's descriptor distance must be below this
        fraction of the second best's (1 disables the test).
    align_threshold : float, optional
        Largest inlier residual in RANSAC, physical units; default twice the geometric mean of
        the fixed image's spacing.
    diagonal_constraint : float, optional
        Reject candidate affines whose diagonal deviates from 1 by more than this.
    fixed_points, moving_points : (N, 3) arrays, optional
        Physical (z, y, x) positions to use instead of detected blobs (e.g. centroids of a
        segmentation); points outside the image are dropped, at most ``nspots`` are used.
    fixed_mask, moving_mask : boolean images or arrays, optional
        Keep only detected blobs inside the masks (same shape as their images); not applied to
        user points. Useful when one field of view is much larger than the other, since only
        the ``nspots`` strongest blobs of each image are used.
    initial : Affine or (4, 4) array, optional
        Starting transform fixed -> moving. Blobs are detected in both images as they are; the
        moving neighbourhoods are sampled on the shells mapped by ``initial``'s linear part
        (ellipsoids matching the fixed spheres), so any scale or shear in ``initial`` is undone
        before descriptors are compared (rotations need no help). When the global matches give no
        consistent affine, patches are matched among moving blobs within ``context_radius`` of
        where ``initial`` maps the fixed blobs instead, so a rough ``initial`` (e.g. from a random
        search) rescues images whose descriptors are ambiguous. The returned matrix is the
        complete fixed -> moving transform (not a correction to compose with ``initial``).
    fallback : {None, "identity"}
        What to do when too few blobs, matches or inliers are found: ``None`` raises a
        :class:`LazyregError`; ``"identity"`` leaves the transform unchanged - it returns
        ``initial`` (or the identity) and records the reason in ``report["fallback"]``.
    seed : int
        Random seed for RANSAC and point subsets; results are deterministic for a seed.
    max_iterations : int
        Most RANSAC samples per RANSAC run.

    Returns
    -------
    Affine
        The fixed -> moving affine (zyx, physical). Its ``report`` (a dict) holds ``fixed_blobs``, ``moving_blobs`` (blobs or user points used), ``matches`` (global
        descriptor matches; ``matches_shells``, ``matches_patches`` by kind), ``global_inliers``
        (RANSAC inliers among them), ``guided_matches``, ``inliers`` (final RANSAC inliers),
        ``residual`` (mean inlier residual, physical), ``start`` (what the guided matching started
        from), ``context_radius``, ``align_threshold``, ``seconds_detect``, ``seconds_describe``,
        ``seconds_match``, ``seconds_ransac``, ``seconds``, ``fallback`` (None or the reason).

    Raises
    ------
    LazyregError
        Bad images or options (before any work), or too few blobs / matches / inliers without
        a ``fallback``; the message gives the counts and the option to change.

    Examples
    --------
    >>> import lazyreg.data
    >>> from lazyreg.registration.features import align_features
    >>> fixed, moving, truth = lazyreg.data.synthetic_pair((48, 96, 96), seed=0)
    >>> A = align_features(fixed, moving, blob_sizes=(2, 8))
    >>> bool(abs(A.matrix - truth)[:3, :3].max() < 0.05)
    True
    """
    t_start = time.perf_counter()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    validate_options(
        "ransac",
        dict(
            blob_sizes=blob_sizes, nspots=nspots, num_sigma_max=num_sigma_max, threshold=threshold,
            context_radius=context_radius, match_threshold=match_threshold, match_ratio=match_ratio,
            align_threshold=align_threshold, diagonal_constraint=diagonal_constraint, fallback=fallback,
            max_iterations=max_iterations, seed=seed,
        ),
    )
    b = check_blob_sizes(blob_sizes)
    init = _check_initial(initial)
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    unit = float(min(gf.spacing))
    _check_extent(gf, gm, b, unit)
    pyrs, masks = _inputs((fixed, moving), (gf, gm), (fixed_mask, moving_mask))
    radius = float(context_radius) if context_radius is not None else 2.0 * math.sqrt(b[0] * b[1]) * unit
    thr = float(align_threshold) if align_threshold is not None else 2.0 * float(np.prod(gf.spacing)) ** (1 / 3)
    rng = np.random.default_rng(int(seed))
    start = np.eye(4) if init is None else init
    report: dict[str, Any] = {
        "step": "ransac", "fixed_blobs": 0, "moving_blobs": 0, "matches": 0, "guided_matches": 0,
        "inliers": 0, "residual": None, "context_radius": radius, "align_threshold": thr, "fallback": None,
    }

    def fail(message: str) -> Affine:
        if fallback is None:
            raise LazyregError(message)
        report["fallback"] = message
        report["seconds"] = time.perf_counter() - t_start
        return Affine(start, report=report)

    fpts, mpts = _points(pyrs, (fixed_points, moving_points), masks, b, unit, num_sigma_max, nspots, threshold, rng, report)
    counts = f"{len(fpts)} blobs in fixed and {len(mpts)} in moving"
    if min(len(fpts), len(mpts)) < 4:
        return fail(
            f"blob_sizes: found only {counts} (at least 4 each are needed); widen blob_sizes={b}, "
            "raise nspots, lower threshold or check the masks"
        )
    fdesc, mdesc = Describer(pyrs[0], radius), Describer(pyrs[1], radius)
    fpat, ia, ib = _global_matches(fdesc, mdesc, fpts, mpts, start, match_threshold, match_ratio, report)
    t0 = time.perf_counter()
    m1, inl1 = None, np.zeros(len(ia), bool)
    if len(ia) >= 4:
        try:
            m1, inl1 = ransac_affine(
                fpts[ia], mpts[ib], align_threshold=thr, max_iterations=max_iterations,
                seed=int(rng.integers(2**31)), diagonal_constraint=diagonal_constraint,
            )
        except LazyregError:
            m1, inl1 = None, np.zeros(len(ia), bool)
    report["seconds_ransac"] = time.perf_counter() - t0
    report["global_inliers"] = int(inl1.sum())
    guide = dict(
        fpts=fpts, mpts=mpts, fpat=fpat, mdesc=mdesc, thr=thr, match_threshold=match_threshold,
        max_iterations=max_iterations, diagonal_constraint=diagonal_constraint, rng=rng, report=report,
    )
    # chance agreements among wrong matches: a few points, growing with the number of matches
    needed = max(8, int(math.ceil(0.05 * len(ia))))
    if m1 is not None and inl1.sum() >= needed:
        report["start"] = "global matches"
        matrix, inliers, gi, gj = _guided(m1, inl1, ia, ib, gate=max(2.0 * thr, 2.0 * fdesc.step), **guide)
    else:
        # the descriptors found no consistent set: try patches aligned by the starting transform,
        # among blobs within the context radius of where it maps the fixed blobs
        report["start"] = "initial" if init is not None else "identity"
        none = np.zeros(0, bool)
        matrix, inliers, gi, gj = _guided(start, none, none, none, gate=max(2.0 * thr, radius), **guide)
        # matches gated near the start are already roughly consistent: demand far more agreement
        if inliers.sum() < max(20, int(math.ceil(0.3 * report["guided_matches"]))):
            return fail(_no_consensus(len(ia), int(inl1.sum()), needed, counts, thr, match_threshold))
    res = np.linalg.norm(fpts[gi] @ matrix[:3, :3].T + matrix[:3, 3] - mpts[gj], axis=1)
    report["inliers"] = int(inliers.sum())
    report["residual"] = float(res[inliers].mean())
    report["seconds"] = time.perf_counter() - t_start
    return Affine(matrix, report=report)


def _inputs(images: tuple, grids: tuple, masks: tuple) -> tuple[tuple, tuple]:
    """Each image in memory, or lazy when it is dask-backed with several chunks; masks to match."""
    pyrs, ms = [], []
    for img, g, name in zip(images, grids, ("fixed", "moving")):
        pyrs.append(LazyPyramid(img.data, g, name) if is_chunked(img) else Pyramid(as_volume(img, name), g))
    for pyr, mask, name in zip(pyrs, masks, ("fixed", "moving")):
        check = lazy_mask if isinstance(pyr, LazyPyramid) else _mask_values
        ms.append(check(mask, pyr.g.shape, f"{name}_mask"))
    return tuple(pyrs), tuple(ms)


def _check_initial(initial: Any) -> np.ndarray | None:
    m = as_matrix(initial, "initial")
    if m is not None and abs(np.linalg.det(m[:3, :3])) < 1e-12:
        raise LazyregError("initial: the matrix's linear part is singular")
    return m


def _check_extent(gf: Grid, gm: Grid, b: tuple[float, float], unit: float) -> None:
    for name, g in (("fixed", gf), ("moving", gm)):
        ext = np.asarray(g.shape) * np.asarray(g.spacing)
        if np.any(ext < 2 * b[0] * unit):
            raise LazyregError(
                f"{name}: the image ({g.shape} voxels, {tuple(np.round(ext, 3))} physical) is smaller than "
                f"the smallest blob diameter {2 * b[0] * unit:g}; lower blob_sizes or pass a finer level"
            )


def _points(pyrs, users, masks, b, unit, num_sigma_max, nspots, threshold, rng, report) -> tuple[np.ndarray, np.ndarray]:
    """Physical points of each image: the user's (inside the image), or detected blobs."""
    t0 = time.perf_counter()
    sigmas, k = blob_sigmas(b, unit, num_sigma_max)
    pts = []
    for name, pyr, mask, user in zip(("fixed", "moving"), pyrs, masks, users):
        if user is not None:
            if isinstance(pyr, LazyPyramid):
                pyr.check()  # as as_volume: NaN or constant images are refused
            p, dropped = _user_points(user, pyr.g, f"{name}_points", nspots, rng)
            report[f"{name}_points_outside"] = dropped
        else:
            p = pyr.g.to_physical(pyr.blobs(sigmas, k, nspots, threshold, mask)[:, :3])
        report[f"{name}_blobs"] = len(p)
        pts.append(p)
    report["seconds_detect"] = time.perf_counter() - t0
    return pts[0], pts[1]


def _global_matches(fdesc, mdesc, fpts, mpts, start, match_threshold, match_ratio, report):
    """Fixed patches and the union of shell and patch matches (fixed, moving indices)."""
    t0 = time.perf_counter()
    eye = np.eye(3)
    fsh = fdesc.shells(fpts, eye)
    msh = mdesc.shells(mpts, start[:3, :3])
    fpat = fdesc.patches(fpts, eye)
    mpat0 = mdesc.patches(mpts, start[:3, :3])
    report["seconds_describe"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    # union of the matches by both descriptors: shells are rotation invariant, patches are more
    # distinctive up to ~20 degrees; RANSAC sorts out the wrong ones
    sa, sb, _ = match_all(fsh, msh, match_threshold, match_ratio)
    pa, pb, _ = match_all(fpat, mpat0, match_threshold, match_ratio)
    pair = np.unique(np.concatenate([sa * len(mpts) + sb, pa * len(mpts) + pb]))
    ia, ib = pair // len(mpts), pair % len(mpts)
    report["matches"] = len(ia)
    report["matches_shells"], report["matches_patches"] = len(sa), len(pa)
    report["seconds_match"] = time.perf_counter() - t0
    return fpat, ia, ib


def _no_consensus(matches: int, inliers: int, needed: int, counts: str, thr: float, match_threshold: float) -> str:
    if matches < 4:
        return (
            f"match_threshold: {matches} matches with correlation >= {match_threshold:g} among "
            f"{counts} (at least 4 are needed); lower match_threshold, raise match_ratio, widen "
            "blob_sizes, raise nspots, change context_radius or pass a rough initial (e.g. from "
            "a 'random' step)"
        )
    return (
        f"match_threshold: RANSAC found {inliers} inliers within align_threshold={thr:g} "
        f"among {matches} matches of {counts} (at least {needed} are needed); lower match_threshold, "
        "raise align_threshold, widen blob_sizes, raise nspots or pass a rough initial (e.g. "
        "from a 'random' step)"
    )


def _guided(
    matrix: np.ndarray,
    inliers: np.ndarray,
    gi: np.ndarray,
    gj: np.ndarray,
    *,
    gate: float,
    fpts: np.ndarray,
    mpts: np.ndarray,
    fpat: np.ndarray,
    mdesc: Describer,
    thr: float,
    match_threshold: float,
    max_iterations: int,
    diagonal_constraint: float | None,
    rng: np.random.Generator,
    report: dict,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Two rounds of patch matching guided by ``matrix`` and RANSAC; keeps the best result."""
    for _ in range(2):
        t0 = time.perf_counter()
        mpat = mdesc.patches(mpts, matrix[:3, :3])
        pred = fpts @ matrix[:3, :3].T + matrix[:3, 3]
        gi_new, gj_new, _ = match_guided(fpat, mpat, pred, mpts, gate, match_threshold)
        report["seconds_match"] += time.perf_counter() - t0
        if len(gi_new) < max(6, inliers.sum() // 2):
            break
        t0 = time.perf_counter()
        try:
            m2, inl2 = ransac_affine(
                fpts[gi_new], mpts[gj_new], align_threshold=thr, max_iterations=max_iterations,
                seed=int(rng.integers(2**31)), diagonal_constraint=diagonal_constraint,
            )
        except LazyregError:
            break
        finally:
            report["seconds_ransac"] += time.perf_counter() - t0
        if inl2.sum() < inliers.sum():
            break
        matrix, inliers, gi, gj = m2, inl2, gi_new, gj_new
        report["guided_matches"] = len(gi)
        gate = max(1.5 * thr, mdesc.step)
    return matrix, inliers, gi, gj
