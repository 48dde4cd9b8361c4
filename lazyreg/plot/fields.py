"""Figures of displacement fields: magnitude on the mid-planes, and optionally the Jacobian determinant."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ..images import grid_of, validate_image
from ..transforms.field import DisplacementField
from .figures import (
    Plane,
    axes_grid,
    check_path,
    check_title,
    figure_size,
    finish,
    label_plane,
    mid_planes,
    new_figure,
    plane_views,
    read_planes,
    require_matplotlib,
    show_plane,
    unit_symbol,
)

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = ["field_slices"]


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
    require_matplotlib()
    check_title(title)
    if not isinstance(field, DisplacementField):
        field = DisplacementField(field)
    if jacobian is not None:
        validate_image(jacobian, "jacobian")
    out = check_path(path, overwrite)
    planes = mid_planes(field.grid)
    mags = [np.sqrt((v * v).sum("vector")) for v in plane_views(field.data, planes)]
    if jacobian is not None:
        jplanes = mid_planes(grid_of(jacobian, "jacobian"))
        values = read_planes(mags + plane_views(jacobian, jplanes))
        mag_slices, jac_slices = values[:3], values[3:]
    else:
        mag_slices, jac_slices = read_planes(mags), []
    units = unit_symbol(field.data)

    nrows = 2 if jacobian is not None else 1
    fig = new_figure(figure_size(planes, nrows))
    axes = axes_grid(fig, planes, nrows)
    top = max(float(np.nanmax(s)) if np.isfinite(s).any() else 0.0 for s in mag_slices)
    for ax, plane, s in zip(axes[0], planes, mag_slices):
        im = show_plane(ax, s, plane, cmap="magma", vmin=0.0, vmax=top if top > 0 else 1.0)
        label_plane(ax, plane, units, "|d|")
    fig.colorbar(im, ax=axes[0], shrink=0.8, label=f"displacement ({units})")
    if jacobian is not None:
        _jacobian_row(fig, axes[1], jplanes, jac_slices, unit_symbol(jacobian))
    return finish(fig, out, title)


def _jacobian_row(fig: Figure, axes: list[Any], planes: list[Plane], slices: list[np.ndarray], units: str) -> None:
    """Draw determinants on ``axes``: diverging colours centred at 1, symmetric over what is shown."""
    from matplotlib.colors import CenteredNorm

    dev = max((float(np.nanmax(np.abs(s - 1.0))) if np.isfinite(s).any() else 0.0 for s in slices), default=0.0)
    norm = CenteredNorm(vcenter=1.0, halfrange=dev if dev > 0 else 0.1)
    low = min(float(np.nanmin(s)) if np.isfinite(s).any() else np.inf for s in slices)
    for ax, plane, s in zip(axes, planes, slices):
        im = show_plane(ax, s, plane, cmap="RdBu_r", norm=norm)
        label_plane(ax, plane, units, "det J")
    fig.colorbar(im, ax=axes, shrink=0.8, label=f"Jacobian determinant (min shown {low:.3g})")
