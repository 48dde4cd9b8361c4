"""Figures of images: orthogonal mid-slices of one image, overlay and checkerboard of two."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import Grid, grid_of, validate_image
from .figures import (
    PERCENTILES,
    Plane,
    axes_grid,
    check_path,
    check_title,
    figure_size,
    finish,
    label_plane,
    mid_planes,
    new_figure,
    normalise,
    plane_views,
    read_planes,
    require_matplotlib,
    robust_range,
    show_plane,
    unit_symbol,
)

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = ["orthoslices", "overlay", "checkerboard"]


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
    >>> import numpy as np, lazyreg, lazyreg.plot
    >>> img = lazyreg.image(np.random.default_rng(0).random((8, 16, 16)), 1.0)
    >>> fig = lazyreg.plot.orthoslices(img, title="noise")
    >>> len(fig.axes)  # three panels and a colorbar
    4
    """
    require_matplotlib()
    validate_image(img, "img")
    check_title(title)
    limits = None if clim is None else _check_clim(clim)
    out = check_path(path, overwrite)
    planes = mid_planes(grid_of(img, "img"))
    slices = read_planes(plane_views(img, planes))
    lo, hi = limits if limits is not None else robust_range(slices)
    units = unit_symbol(img)

    fig = new_figure(figure_size(planes, 1))
    axes = axes_grid(fig, planes, 1)[0]
    for ax, plane, s in zip(axes, planes, slices):
        im = show_plane(ax, s, plane, cmap=cmap, vmin=lo, vmax=hi)
        label_plane(ax, plane, units)
    fig.colorbar(im, ax=axes, shrink=0.8, label=str(img.name) if img.name is not None else "intensity")
    return finish(fig, out, title)


def overlay(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    percentiles: tuple[float, float] = PERCENTILES,
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
    >>> import numpy as np, lazyreg, lazyreg.plot
    >>> rng = np.random.default_rng(0)
    >>> fixed, moving = (lazyreg.image(rng.random((8, 16, 16)), 1.0) for _ in range(2))
    >>> fig = lazyreg.plot.overlay(fixed, moving, title="before alignment")
    >>> len(fig.axes)
    3
    """
    require_matplotlib()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    check_title(title)
    pct = _check_percentiles(percentiles)
    g = _same_grid(fixed, moving)
    out = check_path(path, overwrite)
    planes, f_slices, m_slices = _read_normalised(fixed, moving, g, pct)
    units = unit_symbol(fixed)

    fig, axes = _panel_row(planes)
    for ax, plane, f, m in zip(axes, planes, f_slices, m_slices):
        show_plane(ax, np.stack([f, m, f], axis=-1), plane)
        label_plane(ax, plane, units)
    _channel_legend(axes[-1], ("fixed", "#ff00ff"), ("moving", "#00ff00"))
    return finish(fig, out, title)


def checkerboard(
    fixed: xr.DataArray,
    moving: xr.DataArray,
    *,
    squares: int = 8,
    title: str | None = None,
    path: str | Path | None = None,
    overwrite: bool = False,
    percentiles: tuple[float, float] = PERCENTILES,
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
    >>> import numpy as np, lazyreg, lazyreg.plot
    >>> rng = np.random.default_rng(0)
    >>> fixed, moving = (lazyreg.image(rng.random((8, 16, 16)), 1.0) for _ in range(2))
    >>> fig = lazyreg.plot.checkerboard(fixed, moving, squares=4)
    >>> len(fig.axes)
    3
    """
    require_matplotlib()
    validate_image(fixed, "fixed")
    validate_image(moving, "moving")
    check_title(title)
    if isinstance(squares, bool) or not isinstance(squares, (int, np.integer)) or squares < 1:
        raise LazyregError(f"squares: expected a positive integer, got {squares!r}")
    pct = _check_percentiles(percentiles)
    g = _same_grid(fixed, moving)
    out = check_path(path, overwrite)
    planes, f_slices, m_slices = _read_normalised(fixed, moving, g, pct)
    units = unit_symbol(fixed)

    fig, axes = _panel_row(planes)
    for ax, plane, f, m in zip(axes, planes, f_slices, m_slices):
        mixed = np.where(_from_fixed(plane, f.shape, int(squares)), f, m)
        show_plane(ax, mixed, plane, cmap=cmap, vmin=0.0, vmax=1.0)
        label_plane(ax, plane, units)
    return finish(fig, out, title)


# -- helpers ---------------------------------------------------------------------------------
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


def _two_numbers(value: Any, argname: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise LazyregError(f"{argname}: expected two numbers (low, high), got {value!r}") from None
    return lo, hi


def _check_clim(clim: Any) -> tuple[float, float]:
    lo, hi = _two_numbers(clim, "clim")
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise LazyregError(f"clim: expected finite numbers with low < high, got {clim!r}")
    return lo, hi


def _check_percentiles(percentiles: Any) -> tuple[float, float]:
    lo, hi = _two_numbers(percentiles, "percentiles")
    if not 0.0 <= lo < hi <= 100.0:
        raise LazyregError(f"percentiles: expected 0 <= low < high <= 100, got {percentiles!r}")
    return lo, hi


def _read_normalised(
    fixed: xr.DataArray, moving: xr.DataArray, g: Grid, pct: tuple[float, float]
) -> tuple[list[Plane], list[np.ndarray], list[np.ndarray]]:
    """The mid-planes of ``g`` and both images' slices (read together), each scaled to [0, 1]."""
    planes = mid_planes(g)
    both = read_planes(plane_views(fixed, planes) + plane_views(moving, planes))
    f_slices, m_slices = both[:3], both[3:]
    f_range, m_range = robust_range(f_slices, pct), robust_range(m_slices, pct)
    return planes, [normalise(f, *f_range) for f in f_slices], [normalise(m, *m_range) for m in m_slices]


def _panel_row(planes: list[Plane]) -> tuple[Figure, list[Any]]:
    """A figure with one row of three panels, for a pair of images (no colorbar)."""
    fig = new_figure(figure_size(planes, 1, width=10.0))
    return fig, axes_grid(fig, planes, 1)[0]


def _from_fixed(plane: Plane, shape: tuple[int, ...], squares: int) -> np.ndarray:
    """Where a checkerboard of ``plane`` (pixels ``shape``) shows fixed: physical squares, first is fixed."""
    side = max(plane.width, plane.height) / squares
    rows = np.floor((np.arange(shape[0]) + 0.5) * plane.height / shape[0] / side).astype(int)
    cols = np.floor((np.arange(shape[1]) + 0.5) * plane.width / shape[1] / side).astype(int)
    return (rows[:, None] + cols[None, :]) % 2 == 0


def _channel_legend(ax: Any, *channels: tuple[str, str]) -> None:
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=colour, label=name) for name, colour in channels]
    handles.append(Patch(facecolor="white", edgecolor="0.5", label="both"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8, frameon=False)
