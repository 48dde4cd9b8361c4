"""What every plot shares: matplotlib on demand, figures and PNG files, mid-planes and display ranges."""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import dask
import numpy as np
import xarray as xr

from ..errors import LazyregError
from ..images import DIMS, Grid

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = [
    "PERCENTILES",
    "require_matplotlib",
    "new_figure",
    "png_bytes",
    "check_path",
    "check_title",
    "finish",
    "Plane",
    "mid_planes",
    "plane_views",
    "read_planes",
    "robust_range",
    "normalise",
    "unit_symbol",
    "figure_size",
    "axes_grid",
    "label_plane",
    "show_plane",
]

#: Robust display range of a channel: these percentiles of its slices.
PERCENTILES = (1.0, 99.5)
#: A displayed slice longer than this along an axis is subsampled by an integer stride.
_MAX_SIDE = 2048
_DPI = 120
# (cut dim, row dim, column dim) of the three mid-planes
_ORIENTATIONS = (("z", "y", "x"), ("y", "z", "x"), ("x", "z", "y"))
_UNIT_SYMBOLS = {"micrometer": "µm", "nanometer": "nm", "millimeter": "mm", "meter": "m", "angstrom": "Å"}
_MISSING_MPL = "lazyreg.plot needs matplotlib: pip install 'lazyreg[plot]'"


# -- matplotlib, figures and files ------------------------------------------------------------
def require_matplotlib() -> None:
    """Fail early, with the install hint, when the optional matplotlib is missing.

    Raises
    ------
    LazyregError
        If matplotlib (with its Agg backend) cannot be imported.

    Examples
    --------
    >>> require_matplotlib()  # matplotlib is installed: nothing happens
    """
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401
        from matplotlib.figure import Figure  # noqa: F401
    except ImportError:
        raise LazyregError(_MISSING_MPL) from None


def new_figure(figsize: tuple[float, float]) -> Figure:
    """A Figure drawn by Agg, outside pyplot (no GUI, nothing to close), shown by Jupyter.

    Examples
    --------
    >>> fig = new_figure((4.0, 3.0))
    >>> fig.get_size_inches().tolist(), fig._repr_png_()[:4]
    ([4.0, 3.0], b'\\x89PNG')
    """
    require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    # IPython looks for _repr_png_ on the instance: the figure displays as a cell result even
    # without `%matplotlib inline` (a pyplot-free Figure has no PNG formatter otherwise).
    fig._repr_png_ = lambda: png_bytes(fig)
    return fig


def png_bytes(fig: Figure) -> bytes:
    """The figure as PNG file contents, at lazyreg's resolution (120 dpi).

    Examples
    --------
    >>> png_bytes(new_figure((2.0, 1.0)))[1:4]
    b'PNG'
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def check_path(path: str | Path | None, overwrite: bool) -> Path | None:
    """Refuse a bad output path before any data is read; ``None`` (no file) passes.

    Raises
    ------
    LazyregError
        If ``path`` is not a ``.png`` file in an existing folder, or it exists and ``overwrite``
        is False (or it is not a file).

    Examples
    --------
    >>> check_path("figure.png", overwrite=False)
    PosixPath('figure.png')
    >>> check_path("figure.pdf", overwrite=False)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: path: expected a .png file, got 'figure.pdf'
    """
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


def check_title(title: Any) -> None:
    """Refuse a figure title that is neither a str nor None.

    Examples
    --------
    >>> check_title("before alignment")
    >>> check_title(3)
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: title: expected a str or None, got int
    """
    if title is not None and not isinstance(title, str):
        raise LazyregError(f"title: expected a str or None, got {type(title).__name__}")


def finish(fig: Figure, path: Path | None, title: str | None = None) -> Figure:
    """Give ``fig`` its title (if any), save it as a PNG at ``path`` (if any) and return it.

    ``path`` is one that :func:`check_path` passed, or None.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     out = pathlib.Path(folder) / "empty.png"
    ...     fig = finish(new_figure((2.0, 1.0)), out, "empty")
    ...     out.read_bytes()[1:4]
    b'PNG'
    >>> fig.get_suptitle()
    'empty'
    """
    if title:
        fig.suptitle(title)
    if path is not None:
        fig.savefig(path, format="png", dpi=_DPI)
    return fig


# -- mid-planes ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plane:
    """One mid-plane of a grid: which voxels to read and where they sit (physical).

    Attributes
    ----------
    cut, rows, cols : str
        The dim cut across, and the dims shown down and across.
    index, position : int, float
        Where the plane cuts: voxel index and physical coordinate along ``cut``.
    selection : dict
        ``isel`` arguments reading the plane (long axes subsampled by a stride).
    extent : (float, float, float, float)
        Left, right, bottom, top voxel edges, for ``imshow(origin="upper")``.
    width, height : float
        Physical size of the plane.

    Examples
    --------
    >>> import lazyreg
    >>> z = mid_planes(lazyreg.Grid((8, 16, 16), spacing=(2.0, 1.0, 1.0)))[0]
    >>> z.cut, z.index, z.position, z.extent
    ('z', 4, 8.0, (-0.5, 15.5, 15.5, -0.5))
    """

    cut: str
    index: int
    position: float
    rows: str
    cols: str
    selection: dict[str, Any]
    extent: tuple[float, float, float, float]  # left, right, bottom, top (imshow, origin="upper")
    width: float
    height: float


def mid_planes(g: Grid) -> list[Plane]:
    """The z, y and x mid-planes of ``g``; long axes subsampled to at most 2048 pixels.

    Examples
    --------
    >>> import lazyreg
    >>> [(p.cut, p.rows, p.cols) for p in mid_planes(lazyreg.Grid((8, 16, 16), spacing=1.0))]
    [('z', 'y', 'x'), ('y', 'z', 'x'), ('x', 'z', 'y')]
    """
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
        planes.append(Plane(cut, k, position, rows, cols, sel, (c0, c1, r1, r0), c1 - c0, r1 - r0))
    return planes


def plane_views(arr: xr.DataArray, planes: list[Plane]) -> list[xr.DataArray]:
    """The (lazy) mid-plane selections of ``arr``; dims (rows, cols, ...).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.zeros((8, 16, 16)), 1.0)
    >>> [v.dims for v in plane_views(img, mid_planes(lazyreg.Grid(img.shape, spacing=1.0)))]
    [('y', 'x'), ('z', 'x'), ('z', 'y')]
    """
    return [arr.isel(p.selection) for p in planes]


def read_planes(views: list[xr.DataArray]) -> list[np.ndarray]:
    """Compute plane selections together, as float64: a dask graph reads only the chunks they touch.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.ones((8, 16, 16), dtype=np.uint8), 1.0).chunk(4)
    >>> views = plane_views(img, mid_planes(lazyreg.Grid(img.shape, spacing=1.0)))
    >>> [(s.shape, s.dtype.name) for s in read_planes(views)]
    [((16, 16), 'float64'), ((8, 16), 'float64'), ((8, 16), 'float64')]
    """
    values = dask.compute(*[v.data for v in views])
    return [np.asarray(v, dtype=np.float64) for v in values]


def robust_range(slices: Sequence[np.ndarray], percentiles: Sequence[float] = PERCENTILES) -> tuple[float, float]:
    """Display range (low, high) of slices: percentiles of their finite values; never empty.

    Examples
    --------
    >>> import numpy as np
    >>> robust_range([np.arange(101.0)], (10, 90))
    (10.0, 90.0)
    >>> robust_range([np.full((2, 2), 5.0)])  # constant: shown at the bottom of the range
    (5.0, 6.0)
    """
    finite = np.concatenate([s[np.isfinite(s)].ravel() for s in slices])
    if finite.size == 0:
        return 0.0, 1.0
    lo, hi = (float(v) for v in np.percentile(finite, percentiles))
    if hi <= lo:  # constant slices: shown at the bottom of the range (black)
        hi = lo + 1.0
    return lo, hi


def normalise(s: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``s`` scaled linearly from ``[lo, hi]`` to ``[0, 1]``, clipped; NaN becomes 0.

    Examples
    --------
    >>> import numpy as np
    >>> normalise(np.array([0.0, 5.0, 20.0, np.nan]), 0.0, 10.0)
    array([0. , 0.5, 1. , 0. ])
    """
    return np.clip(np.nan_to_num((s - lo) / (hi - lo), nan=0.0), 0.0, 1.0)


def unit_symbol(arr: xr.DataArray) -> str:
    """Symbol of an image's physical units (``attrs["units"]``, default micrometer).

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> img = lazyreg.image(np.zeros((2, 2, 2)), 1.0)
    >>> unit_symbol(img)
    'µm'
    >>> img.attrs["units"] = "nanometer"
    >>> unit_symbol(img)
    'nm'
    """
    u = str(arr.attrs.get("units") or "micrometer")
    return _UNIT_SYMBOLS.get(u, u)


def figure_size(planes: list[Plane], nrows: int, width: float = 11.0) -> tuple[float, float]:
    """Figure size (inches) for ``nrows`` rows of the three planes in physical proportions.

    Examples
    --------
    >>> import lazyreg
    >>> width, height = figure_size(mid_planes(lazyreg.Grid((8, 16, 16), spacing=1.0)), 2)
    >>> width, round(height, 2)
    (11.0, 8.53)
    """
    total = sum(p.width for p in planes)
    scale = (width - 1.5) / total  # inches per physical unit, leaving room for a colorbar
    row = min(max(max(p.height for p in planes) * scale + 0.9, 2.4), 8.0)
    return width, row * nrows + 0.4


def axes_grid(fig: Figure, planes: list[Plane], nrows: int) -> list[list[Any]]:
    """``nrows`` rows of three axes, their widths in the planes' physical proportions.

    Examples
    --------
    >>> import lazyreg
    >>> planes = mid_planes(lazyreg.Grid((8, 16, 16), spacing=1.0))
    >>> rows = axes_grid(new_figure(figure_size(planes, 2)), planes, 2)
    >>> len(rows), len(rows[0])
    (2, 3)
    """
    gs = fig.add_gridspec(nrows, 3, width_ratios=[p.width for p in planes])
    return [[fig.add_subplot(gs[r, c]) for c in range(3)] for r in range(nrows)]


def label_plane(ax: Any, plane: Plane, units: str, what: str = "") -> None:
    """Axis labels (dims and units) and a title saying where the plane cuts.

    Examples
    --------
    >>> import lazyreg
    >>> plane = mid_planes(lazyreg.Grid((8, 16, 16), spacing=1.0))[0]
    >>> ax = new_figure((3.0, 3.0)).add_subplot()
    >>> label_plane(ax, plane, "µm", "|d|")
    >>> ax.get_xlabel(), ax.get_title()
    ('x (µm)', '|d|, z = 4 µm (index 4)')
    """
    ax.set_xlabel(f"{plane.cols} ({units})")
    ax.set_ylabel(f"{plane.rows} ({units})")
    head = f"{what}, " if what else ""
    ax.set_title(f"{head}{plane.cut} = {plane.position:.4g} {units} (index {plane.index})", fontsize=9)


def show_plane(ax: Any, values: np.ndarray, plane: Plane, **kwargs: Any) -> Any:
    """Draw a plane's values at its physical extent (equal aspect, no smoothing); the image.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> plane = mid_planes(lazyreg.Grid((8, 16, 16), spacing=1.0))[0]
    >>> im = show_plane(new_figure((3.0, 3.0)).add_subplot(), np.zeros((16, 16)), plane, cmap="gray")
    >>> im.get_extent()
    [-0.5, 15.5, 15.5, -0.5]
    """
    return ax.imshow(values, extent=plane.extent, origin="upper", aspect="equal", interpolation="nearest", **kwargs)
