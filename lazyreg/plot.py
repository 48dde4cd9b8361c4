"""Quality-control figures: orthogonal mid-slices, overlays, checkerboards, block maps, fields."""

from __future__ import annotations

import io
import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import dask
import numpy as np
import xarray as xr

from .errors import LazyregError
from .images import DIMS, Grid, grid_of, validate_image
from .transforms.field import DisplacementField

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = ["orthoslices", "overlay", "checkerboard", "block_map", "field_slices"]

#: A displayed slice longer than this along an axis is subsampled by an integer stride.
_MAX_SIDE = 2048
#: Robust display range of a channel: these percentiles of its slices.
_PERCENTILES = (1.0, 99.5)
_DPI = 120
_STATUSES = ("ok", "skipped", "failed")
# (cut dim, row dim, column dim) of the three mid-planes
_ORIENTATIONS = (("z", "y", "x"), ("y", "z", "x"), ("x", "z", "y"))
_UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "meter": "m", "angstrom": "Å"}
_MISSING_MPL = "lazyreg.plot needs matplotlib: pip install 'lazyreg[plot]'"


# -- matplotlib, figures and files ------------------------------------------------------------
def _matplotlib() -> None:
    """Fail early, with the install hint, when the optional matplotlib is missing."""
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise LazyregError(_MISSING_MPL) from None


def _new_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure drawn by Agg, outside pyplot (no GUI, nothing to close), shown by Jupyter."""
    _matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    # IPython looks for _repr_png_ on the instance: the figure displays as a cell result even
    # without `%matplotlib inline` (a pyplot-free Figure has no PNG formatter otherwise).
    fig._repr_png_ = lambda: _png_bytes(fig)
    return fig


def _png_bytes(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _check_path(path: str | Path | None, overwrite: bool) -> Path | None:
    """Refuse a bad output path before any data is read."""
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != ".png":
        raise LazyregError(f"path: expected a .png file, got {str(p)!r}")
    if p.exists() and not overwrite:
        raise LazyregError(f"path: {str(p)!r} already exists; pass overwrite=True to replace it")
    if p.exists() and not p.is_file():
        raise LazyregError(f"path: {str(p)!r} exists and is not a file")
    if not p.parent.is_dir():
        raise LazyregError(f"path: folder {str(p.parent)!r} does not exist")
    return p


def _finish(fig: Figure, path: Path | None) -> Figure:
    if path is not None:
        fig.savefig(path, format="png", dpi=_DPI)
    return fig


# -- mid-planes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Plane:
    """One mid-plane of a grid: which voxels to read and where they sit (physical)."""

    cut: str
    index: int
    position: float
    rows: str
    cols: str
    selection: dict[str, Any]
    extent: tuple[float, float, float, float]  # left, right, bottom, top (imshow, origin="upper")
    width: float
    height: float


def _planes(g: Grid) -> list[_Plane]:
    """The z, y and x mid-planes of ``g``; long axes subsampled to at most ``_MAX_SIDE`` pixels."""
    planes = []
    for cut, rows, cols in _ORIENTATIONS:
        sel: dict[str, Any] = {}
        lo_hi = {}
        for d in (rows, cols):
            i = DIMS.index(d)
            stride = max(1, math.ceil(g.shape[i] / _MAX_SIDE))
            sel[d] = slice(None, None, stride)
            step = g.spacing[i] * stride
            last = g.origin[i] + ((g.shape[i] - 1) // stride) * step
            lo_hi[d] = (g.origin[i] - step / 2, last + step / 2)
        k = g.shape[DIMS.index(cut)] // 2
        sel[cut] = k
        (c0, c1), (r0, r1) = lo_hi[cols], lo_hi[rows]
        position = g.origin[DIMS.index(cut)] + k * g.spacing[DIMS.index(cut)]
        planes.append(_Plane(cut, k, position, rows, cols, sel, (c0, c1, r1, r0), c1 - c0, r1 - r0))
    return planes


def _views(arr: xr.DataArray, planes: list[_Plane]) -> list[xr.DataArray]:
    """The (lazy) mid-plane selections of ``arr``; dims (rows, cols, ...)."""
    return [arr.isel(p.selection) for p in planes]


def _read(views: list[xr.DataArray]) -> list[np.ndarray]:
    """Compute plane selections together: a dask graph reads only the chunks they touch."""
    values = dask.compute(*[v.data for v in views])
    return [np.asarray(v, dtype=np.float64) for v in values]


def _robust_range(slices: Sequence[np.ndarray], percentiles: Sequence[float] = _PERCENTILES) -> tuple[float, float]:
    finite = np.concatenate([s[np.isfinite(s)].ravel() for s in slices])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:  # constant slices: shown at the bottom of the range (black)
        hi = lo + 1.0
    return lo, hi


def _normalise(s: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return np.clip(np.nan_to_num((s - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def _units(arr: xr.DataArray) -> str:
    u = str(arr.attrs.get("units") or "micrometer")
    return _UNIT_SYMBOLS.get(u, u)


def _figsize(planes: list[_Plane], nrows: int, width: float = 11.0) -> tuple[float, float]:
    total = sum(p.width for p in planes)
    scale = (width - 1.5) / total  # inches per physical unit, leaving room for a colorbar
    row = min(max(max(p.height for p in planes) * scale + 0.9, 2.4), 8.0)
    return width, row * nrows + 0.4


def _axes_row(fig: Figure, planes: list[_Plane], nrows: int) -> list[list[Any]]:
    gs = fig.add_gridspec(nrows, 3, width_ratios=[p.width for p in planes])
    return [[fig.add_subplot(gs[r, c]) for c in range(3)] for r in range(nrows)]


def _label(ax: Any, plane: _Plane, units: str, what: str = "") -> None:
    ax.set_xlabel(f"{plane.cols} ({units})")
    ax.set_ylabel(f"{plane.rows} ({units})")
    head = f"{what}, " if what else ""
    ax.set_title(f"{head}{plane.cut} = {plane.position:.4g} {units} (index {plane.index})", fontsize=9)


def _show(ax: Any, values: np.ndarray, plane: _Plane, **kwargs: Any) -> Any:
    return ax.imshow(values, extent=plane.extent, origin="upper", aspect="equal", interpolation="nearest", **kwargs)


def _same_grid(fixed: xr.DataArray, moving: xr.DataArray) -> Grid:
    gf, gm = grid_of(fixed, "fixed"), grid_of(moving, "moving")
    tol = 1e-6 * min(gf.spacing)
    same = (
        gf.shape == gm.shape
        and np.allclose(gf.spacing, gm.spacing, rtol=1e-6, atol=0)
        and np.allclose(gf.origin, gm.origin, rtol=0, atol=tol)
    )
    if not same:
        raise LazyregError(
            f"moving: its grid (shape {gm.shape}, spacing {gm.spacing}, origin {gm.origin}) differs from "
            f"fixed's (shape {gf.shape}, spacing {gf.spacing}, origin {gf.origin}); resample it onto the "
            "fixed grid first with lazyreg.apply_transform(fixed, moving, transforms)"
        )
    return gf


def _check_title(title: Any) -> None:
    if title is not None and not isinstance(title, str):
        raise LazyregError(f"title: expected a str or None, got {type(title).__name__}")


# -- public functions ------------------------------------------------------------------------
def orthoslices(
    img: xr.DataArray,
    *,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    clim: tuple[float, float] | None = None,
    cmap: str = "gray",
) -> Figure:
    """Orthogonal mid-slices of an image (z, y and x mid-planes) in physical proportions.

    Parameters
    ----------
    img : xarray.DataArray
        A lazyreg image, in memory or lazy (dask-backed).
    title : str, optional
        Title of the figure.
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there (checked before any data is read).
    overwrite : bool
        Replace an existing file at ``path``; by default an existing file is an error.
    clim : (float, float), optional
        Display range (low, high); default the 1st and 99.5th percentiles of the three slices.
    cmap : str
        Matplotlib colormap name.

    Returns
    -------
    matplotlib.figure.Figure
        Three panels: the z mid-plane (y down, x across), the y mid-plane (z down, x across) and
        the x mid-plane (z down, y across), axes in the image's physical units
        (``attrs["units"]``, default micrometer), with a shared colorbar.

    Raises
    ------
    LazyregError
        If ``img`` is not a valid image, ``clim`` is not two increasing finite numbers, ``path``
        is not a ``.png`` path in an existing folder, or it exists and ``overwrite`` is False;
        also if matplotlib is not installed.

    Notes
    -----
    Only the three slices are computed (all three in one :func:`dask.compute`): with a dask-backed
    image, only the chunks that the mid-planes cross are read, never the whole volume. Slices
    longer than 2048 pixels along an axis are subsampled by an integer stride for display.
    The figure is drawn with matplotlib's Agg backend outside pyplot: nothing is shown, nothing
    needs closing, and Jupyter displays it as a cell result.

    Examples
    --------
    >>> import lazyreg, lazyreg.data, lazyreg.plot
    >>> img = lazyreg.data.phantom((16, 32, 32), seed=0)
    >>> fig = lazyreg.plot.orthoslices(img, title="phantom")
    >>> len(fig.axes)  # three panels and a colorbar
    4
    """
    _matplotlib()
    validate_image(img, "img")
    _check_title(title)
    limits = None if clim is None else _check_clim(clim)
    out = _check_path(path, overwrite)
    planes = _planes(grid_of(img, "img"))
    slices = _read(_views(img, planes))
    lo, hi = limits if limits is not None else _robust_range(slices)
    units = _units(img)

    fig = _new_figure(_figsize(planes, 1))
    axes = _axes_row(fig, planes, 1)[0]
    for ax, plane, s in zip(axes, planes, slices):
        im = _show(ax, s, plane, cmap=cmap, vmin=lo, vmax=hi)
        _label(ax, plane, units)
    fig.colorbar(im, ax=axes, shrink=0.8, label=str(img.name) if img.name is not None else "intensity")
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def overlay(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    percentiles: tuple[float, float] = _PERCENTILES,
) -> Figure:
    """Magenta/green overlay of two images on the same grid: fixed magenta, moving green.

    Where both images are bright the overlay is grey to white; magenta or green shows structure
    present in only one of them (misalignment).

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images on the same grid (shape, spacing and origin); resample ``moving`` first with
        :func:`lazyreg.apply_transform`. Lazy images are read only on the three mid-planes.
    title : str, optional
        Title of the figure.
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there.
    overwrite : bool
        Replace an existing file at ``path``.
    percentiles : (float, float)
        Each channel is scaled linearly from these percentiles of its own three slices (to 0
        and 1), so that images of different brightness compare.

    Returns
    -------
    matplotlib.figure.Figure
        The z, y and x mid-planes as RGB images ``(fixed, moving, fixed)``.

    Raises
    ------
    LazyregError
        If either image is invalid, the grids differ, or ``path`` is refused (see
        :func:`orthoslices`).

    Examples
    --------
    >>> import lazyreg, lazyreg.data, lazyreg.plot
    >>> fixed, moving, A = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> fig = lazyreg.plot.overlay(fixed, moving, title="before alignment")
    >>> len(fig.axes)
    3
    """
    _matplotlib()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    _check_title(title)
    pct = _check_percentiles(percentiles)
    g = _same_grid(fixed, moving)
    out = _check_path(path, overwrite)
    planes = _planes(g)
    both = _read(_views(fixed, planes) + _views(moving, planes))
    f_slices, m_slices = both[:3], both[3:]
    f_range, m_range = _robust_range(f_slices, pct), _robust_range(m_slices, pct)
    units = _units(fixed)

    fig = _new_figure(_figsize(planes, 1, width=10.0))
    axes = _axes_row(fig, planes, 1)[0]
    for ax, plane, f, m in zip(axes, planes, f_slices, m_slices):
        fn, mn = _normalise(f, *f_range), _normalise(m, *m_range)
        _show(ax, np.stack([fn, mn, fn], axis=-1), plane)
        _label(ax, plane, units)
    _channel_legend(axes[-1], ("fixed", "#ff00ff"), ("moving", "#00ff00"))
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def checkerboard(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    squares: int = 8,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    percentiles: tuple[float, float] = _PERCENTILES,
    cmap: str = "gray",
) -> Figure:
    """Checkerboard of two images on the same grid: alternate squares from fixed and moving.

    Edges that continue straight across the squares' borders show good alignment.

    Parameters
    ----------
    fixed, moving : xarray.DataArray
        Images on the same grid (shape, spacing and origin). Lazy images are read only on the
        three mid-planes.
    squares : int
        Number of squares along the longer side of each panel. Squares are square in physical
        units, so a thin panel (few z slices) may have a single row of them.
    title : str, optional
        Title of the figure.
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there.
    overwrite : bool
        Replace an existing file at ``path``.
    percentiles : (float, float)
        Each image is scaled from these percentiles of its own slices to [0, 1] before mixing.
    cmap : str
        Matplotlib colormap name.

    Returns
    -------
    matplotlib.figure.Figure
        The z, y and x mid-planes; the square holding the first voxel shows ``fixed``.

    Raises
    ------
    LazyregError
        If an image is invalid, the grids differ, ``squares`` is not a positive integer, or
        ``path`` is refused (see :func:`orthoslices`).

    Examples
    --------
    >>> import lazyreg, lazyreg.data, lazyreg.plot
    >>> fixed, moving, A = lazyreg.data.synthetic_pair((16, 32, 32), seed=0)
    >>> fig = lazyreg.plot.checkerboard(fixed, moving, squares=4)
    >>> len(fig.axes)
    3
    """
    _matplotlib()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    _check_title(title)
    if isinstance(squares, bool) or not isinstance(squares, (int, np.integer)) or squares < 1:
        raise LazyregError(f"squares: expected a positive integer, got {squares!r}")
    pct = _check_percentiles(percentiles)
    g = _same_grid(fixed, moving)
    out = _check_path(path, overwrite)
    planes = _planes(g)
    both = _read(_views(fixed, planes) + _views(moving, planes))
    f_slices, m_slices = both[:3], both[3:]
    f_range, m_range = _robust_range(f_slices, pct), _robust_range(m_slices, pct)
    units = _units(fixed)

    fig = _new_figure(_figsize(planes, 1, width=10.0))
    axes = _axes_row(fig, planes, 1)[0]
    for ax, plane, f, m in zip(axes, planes, f_slices, m_slices):
        side = max(plane.width, plane.height) / int(squares)
        left, _, _, top = plane.extent
        rows = np.floor((np.arange(f.shape[0]) + 0.5) * plane.height / f.shape[0] / side).astype(int)
        cols = np.floor((np.arange(f.shape[1]) + 0.5) * plane.width / f.shape[1] / side).astype(int)
        take_fixed = (rows[:, None] + cols[None, :]) % 2 == 0
        mixed = np.where(take_fixed, _normalise(f, *f_range), _normalise(m, *m_range))
        _show(ax, mixed, plane, cmap=cmap, vmin=0.0, vmax=1.0)
        _label(ax, plane, units)
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def block_map(
    report: Sequence[Mapping[str, Any]] | DisplacementField,
    *,
    iz: int | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    annotate: bool | None = None,
) -> Figure:
    """Map of a piecewise alignment's per-block report: status and metric change of each block.

    One z block-row is drawn (the middle one by default) as a grid of squares, x blocks across
    and y blocks down: ``ok`` blocks are coloured by ``metric_after - metric_before`` (diverging
    colormap centred at 0, with a colorbar), ``skipped`` blocks light grey, ``failed`` blocks
    black, and blocks absent from the report white. A single z block-row is shown rather than a
    projection over z because statuses do not project meaningfully; draw others with ``iz``.

    Parameters
    ----------
    report : sequence of dict, or DisplacementField
        One dict per block with keys ``"index"`` (``(iz, iy, ix)`` block indices), ``"status"``
        (``"ok"``, ``"skipped"`` or ``"failed"``), ``"reason"`` (str or None) and
        ``"metric_before"``, ``"metric_after"`` (numbers or None). A field whose ``report`` is
        such a list is accepted too (compute a lazy field first).
    iz : int, optional
        The z block-row to draw; default the middle one (``nz // 2``).
    title : str, optional
        Title of the figure (the axes title always names the row and counts all statuses).
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there.
    overwrite : bool
        Replace an existing file at ``path``.
    annotate : bool, optional
        Write the metric change (or the status) in each square; default when the row has at
        most 400 blocks.

    Returns
    -------
    matplotlib.figure.Figure
        The block grid, a legend of the statuses and the most frequent reasons in the row.

    Raises
    ------
    LazyregError
        If the report is empty or an entry is malformed (missing key, bad index, unknown status,
        non-numeric metric, repeated index), ``iz`` is out of range, or ``path`` is refused.

    Notes
    -----
    The sign convention is the metric's: for a similarity such as a correlation a positive
    change is an improvement; for a distance, a negative one is.

    Examples
    --------
    >>> import lazyreg.plot
    >>> report = [
    ...     {"index": (0, 0, 0), "status": "ok", "reason": None, "metric_before": 0.2, "metric_after": 0.8},
    ...     {"index": (0, 0, 1), "status": "skipped", "reason": "empty block",
    ...      "metric_before": None, "metric_after": None},
    ... ]
    >>> fig = lazyreg.plot.block_map(report)
    >>> fig.axes[0].get_xlabel()
    'x block'
    """
    _matplotlib()
    _check_title(title)
    blocks = _parse_report(report)
    out = _check_path(path, overwrite)
    shape = tuple(max(idx[i] for idx in blocks) + 1 for i in range(3))
    nz, ny, nx = shape
    if iz is None:
        iz = nz // 2
    if isinstance(iz, bool) or not isinstance(iz, (int, np.integer)) or not 0 <= iz < nz:
        raise LazyregError(f"iz: expected a z block-row index in [0, {nz}), got {iz!r}")
    iz = int(iz)
    if annotate is None:
        annotate = ny * nx <= 400

    from matplotlib.colors import CenteredNorm, to_rgba
    from matplotlib.patches import Patch

    change = np.full((ny, nx), np.nan)
    status_rgba = np.zeros((ny, nx, 4))
    colours = {"skipped": to_rgba("#c8c8c8"), "failed": to_rgba("black"), None: to_rgba("white")}
    status_rgba[:, :] = colours[None]
    reasons: Counter[str] = Counter()
    texts = []
    for (bz, by, bx), b in blocks.items():
        if bz != iz:
            continue
        st = b["status"]
        if st == "ok":
            status_rgba[by, bx] = (0, 0, 0, 0)
            if b["before"] is not None and b["after"] is not None:
                change[by, bx] = b["after"] - b["before"]
                texts.append((bx, by, f"{change[by, bx]:+.2g}", "black"))
            else:
                status_rgba[by, bx] = to_rgba("white")
                texts.append((bx, by, "n/a", "black"))
        else:
            status_rgba[by, bx] = colours[st]
            texts.append((bx, by, "skip" if st == "skipped" else "fail", "black" if st == "skipped" else "white"))
            if b["reason"]:
                reasons[f"{st}: {b['reason']}"] += 1

    cell = min(0.6, 9.0 / nx, 8.0 / ny)  # inches per block
    fig = _new_figure((nx * cell + 6.0, max(ny * cell + 1.4, 3.2)))
    ax = fig.add_subplot()
    extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)
    finite = change[np.isfinite(change)]
    half = float(np.max(np.abs(finite))) if finite.size else 1.0
    norm = CenteredNorm(vcenter=0.0, halfrange=half if half > 0 else 1.0)
    ax.imshow(status_rgba, extent=extent, origin="upper", interpolation="nearest")
    im = ax.imshow(change, cmap="RdBu", norm=norm, extent=extent, origin="upper", interpolation="nearest")
    ax.set_xticks(np.arange(-0.5, nx, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, ny, 1.0), minor=True)
    ax.grid(which="minor", color="0.5", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(np.arange(0, nx, max(1, math.ceil(nx / 15))))
    ax.set_yticks(np.arange(0, ny, max(1, math.ceil(ny / 15))))
    ax.set_xlabel("x block")
    ax.set_ylabel("y block")
    if annotate:
        size = max(5.0, min(9.0, 120.0 / max(nx, ny)))
        for bx, by, text, colour in texts:
            ax.text(bx, by, text, ha="center", va="center", fontsize=size, color=colour)
    fig.colorbar(im, ax=ax, shrink=0.9, label="metric after − before")
    handles = [
        Patch(facecolor=to_rgba("#6f9fcf"), edgecolor="0.5", label="ok (colour: metric change)"),
        Patch(facecolor=colours["skipped"], edgecolor="0.5", label="skipped"),
        Patch(facecolor=colours["failed"], edgecolor="0.5", label="failed"),
        Patch(facecolor=colours[None], edgecolor="0.5", label="not in report"),
    ]
    fig.legend(handles=handles, loc="outside right upper", fontsize=8, frameon=False)
    if reasons:
        lines = [f"{_shorten(r, 50)} ({n})" for r, n in reasons.most_common(5)]
        fig.legend(
            handles=[Patch(visible=False)] * len(lines),
            labels=lines,
            title=f"reasons in row {iz}",
            loc="outside right lower",
            fontsize=7,
            title_fontsize=8,
            frameon=False,
            handlelength=0,
            handletextpad=0,
        )
    counts = Counter(b["status"] for b in blocks.values())
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in _STATUSES)
    ax.set_title(f"z block-row {iz} of {nz} (all blocks: {summary})", fontsize=9)
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


def field_slices(
    field: DisplacementField | xr.DataArray,
    *,
    jacobian: xr.DataArray | None = None,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
) -> Figure:
    """Displacement magnitude on the mid-planes of a field, and optionally its Jacobian determinant.

    Parameters
    ----------
    field : DisplacementField or xarray.DataArray
        A field, or a DataArray with dims ``("z", "y", "x", "vector")`` holding (dz, dy, dx) in
        physical units. Lazy fields are read only on the three mid-planes.
    jacobian : xarray.DataArray, optional
        Jacobian determinants as an image (dims ``("z", "y", "x")``), e.g. on the field's grid.
        Drawn as a second row, on its own mid-planes, with a diverging colormap centred at 1:
        red expands, blue compresses; values <= 0 (folding) are the darkest blue.
    title : str, optional
        Title of the figure.
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there.
    overwrite : bool
        Replace an existing file at ``path``.

    Returns
    -------
    matplotlib.figure.Figure
        Row 1: ``|d|`` on the z, y and x mid-planes (0 to the largest magnitude shown). Row 2
        (with ``jacobian``): the determinant, its colour range symmetric about 1.

    Raises
    ------
    LazyregError
        If ``field`` is not a valid displacement field, ``jacobian`` is not a valid image, or
        ``path`` is refused.

    Examples
    --------
    >>> import numpy as np, lazyreg, lazyreg.plot
    >>> d = np.zeros((8, 16, 16, 3)); d[..., 2] = np.linspace(0, 3, 16)   # dx grows along x
    >>> D = lazyreg.DisplacementField.from_array(d, spacing=(2.0, 1.0, 1.0))
    >>> jac = lazyreg.image(np.full((8, 16, 16), 1.2), spacing=(2.0, 1.0, 1.0))
    >>> fig = lazyreg.plot.field_slices(D, jacobian=jac)
    >>> len(fig.axes)  # 2 rows of 3 panels, 2 colorbars
    8
    """
    _matplotlib()
    _check_title(title)
    if not isinstance(field, DisplacementField):
        field = DisplacementField(field)
    if jacobian is not None:
        validate_image(jacobian, "jacobian")
    out = _check_path(path, overwrite)
    planes = _planes(field.grid)
    mags = [np.sqrt((v * v).sum("vector")) for v in _views(field.data, planes)]
    if jacobian is not None:
        jplanes = _planes(grid_of(jacobian, "jacobian"))
        values = _read(mags + _views(jacobian, jplanes))
        mag_slices, jac_slices = values[:3], values[3:]
    else:
        mag_slices, jac_slices = _read(mags), []
    units = _units(field.data)

    nrows = 2 if jacobian is not None else 1
    fig = _new_figure(_figsize(planes, nrows))
    axes = _axes_row(fig, planes, nrows)
    top = max(float(np.nanmax(s)) if np.isfinite(s).any() else 0.0 for s in mag_slices)
    for ax, plane, s in zip(axes[0], planes, mag_slices):
        im = _show(ax, s, plane, cmap="magma", vmin=0.0, vmax=top if top > 0 else 1.0)
        _label(ax, plane, units, "|d|")
    fig.colorbar(im, ax=axes[0], shrink=0.8, label=f"displacement ({units})")
    if jacobian is not None:
        from matplotlib.colors import CenteredNorm

        dev = max(
            (float(np.nanmax(np.abs(s - 1.0))) if np.isfinite(s).any() else 0.0 for s in jac_slices), default=0.0
        )
        norm = CenteredNorm(vcenter=1.0, halfrange=dev if dev > 0 else 0.1)
        junits = _units(jacobian)
        low = min(float(np.nanmin(s)) if np.isfinite(s).any() else np.inf for s in jac_slices)
        for ax, plane, s in zip(axes[1], jplanes, jac_slices):
            im = _show(ax, s, plane, cmap="RdBu_r", norm=norm)
            _label(ax, plane, junits, "det J")
        fig.colorbar(im, ax=axes[1], shrink=0.8, label=f"Jacobian determinant (min shown {low:.3g})")
    if title:
        fig.suptitle(title)
    return _finish(fig, out)


# -- helpers of the public functions ---------------------------------------------------------
def _check_clim(clim: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in clim)
    except (TypeError, ValueError):
        raise LazyregError(f"clim: expected two numbers (low, high), got {clim!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LazyregError(f"clim: expected finite numbers with low < high, got {clim!r}")
    return lo, hi


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in percentiles)
    except (TypeError, ValueError):
        raise LazyregError(f"percentiles: expected two numbers (low, high), got {percentiles!r}") from None
    if not 0.0 <= lo < hi <= 100.0:
        raise LazyregError(f"percentiles: expected 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def _channel_legend(ax: Any, *channels: tuple[str, str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, label=name) for name, colour in channels]
    handles.append(Patch(facecolor="white", edgecolor="0.5", label="both"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)


def _shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _metric(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LazyregError(f"report: {where}: {key!r} must be a number or None, got {value!r}")
    v = float(value)
    return v if math.isfinite(v) else None


def _parse_report(report: Any) -> dict[tuple[int, int, int], dict[str, Any]]:
    """Validate a per-block report; returns {(iz, iy, ix): {"status", "reason", "before", "after"}}."""
    if isinstance(report, DisplacementField):
        report = report.report
        if dask.is_dask_collection(report):
            raise LazyregError("report: the field's report is lazy; call field.compute() first")
        if report is None:
            raise LazyregError("report: the field has no per-block report")
    if isinstance(report, (str, bytes, Mapping)) or not isinstance(report, Sequence):
        raise LazyregError(
            f"report: expected a list of dicts (one per block), got {type(report).__name__}"
        )
    if len(report) == 0:
        raise LazyregError("report: empty, there are no blocks to draw")
    blocks: dict[tuple[int, int, int], dict[str, Any]] = {}
    for n, entry in enumerate(report):
        where = f"entry {n}"
        if not isinstance(entry, Mapping):
            raise LazyregError(f"report: {where}: expected a dict, got {type(entry).__name__}")
        missing = [k for k in ("index", "status") if k not in entry]
        if missing:
            raise LazyregError(f"report: {where}: missing key(s) {missing}")
        idx = entry["index"]
        if isinstance(idx, np.ndarray):
            idx = idx.tolist()
        ok_index = (
            isinstance(idx, Sequence)
            and not isinstance(idx, str)
            and len(idx) == 3
            and all(isinstance(i, (int, np.integer)) and not isinstance(i, bool) and i >= 0 for i in idx)
        )
        if not ok_index:
            raise LazyregError(f"report: {where}: 'index' must be 3 non-negative integers (iz, iy, ix), got {idx!r}")
        key = tuple(int(i) for i in idx)
        if key in blocks:
            raise LazyregError(f"report: {where}: block index {key} appears more than once")
        status = entry["status"]
        if status not in _STATUSES:
            raise LazyregError(f"report: {where}: unknown status {status!r}; expected one of {list(_STATUSES)}")
        reason = entry.get("reason")
        blocks[key] = {  # type: ignore[index]
            "status": status,
            "reason": None if reason is None else str(reason),
            "before": _metric(entry.get("metric_before"), "metric_before", where),
            "after": _metric(entry.get("metric_after"), "metric_after", where),
        }
    return blocks  # type: ignore[return-value]
