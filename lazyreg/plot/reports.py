"""Figure of a piecewise alignment's per-block report: status and metric change of each block."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import dask
import numpy as np

from ..errors import LazyregError
from ..transforms.field import DisplacementField
from .figures import check_path, check_title, finish, new_figure, require_matplotlib

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = ["block_map"]

_STATUSES = ("ok", "skipped", "failed")
#: Colours of the blocks that show no metric change (None: absent from the report).
_COLOURS = {"skipped": "#c8c8c8", "failed": "black", None: "white"}


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
    require_matplotlib()
    check_title(title)
    blocks = _parse_report(report)
    out = check_path(path, overwrite)
    nz, ny, nx = (max(idx[i] for idx in blocks) + 1 for i in range(3))
    iz = _check_iz(iz, nz)
    if annotate is None:
        annotate = ny * nx <= 400
    row = _block_row(blocks, iz, ny, nx)

    cell = min(0.6, 9.0 / nx, 8.0 / ny)  # inches per block
    fig = new_figure((nx * cell + 6.0, max(ny * cell + 1.4, 3.2)))
    ax = fig.add_subplot()
    im = _draw_row(ax, row, annotate)
    fig.colorbar(im, ax=ax, shrink=0.9, label="metric after − before")
    _legends(fig, row.reasons, iz)
    counts = Counter(b["status"] for b in blocks.values())
    summary = ", ".join(f"{counts.get(s, 0)} {s}" for s in _STATUSES)
    ax.set_title(f"z block-row {iz} of {nz} (all blocks: {summary})", fontsize=9)
    return finish(fig, out, title)


# -- one z block-row, drawn ------------------------------------------------------------------
@dataclass
class _Row:
    """What a z block-row shows, each array (ny, nx[, 4]) indexed (y block, x block)."""

    change: np.ndarray  # metric after - before of the ok blocks that have both; NaN elsewhere
    status: np.ndarray  # RGBA of the statuses; transparent where ``change`` is drawn
    texts: list[tuple[int, int, str, str]]  # (x block, y block, text, text colour)
    reasons: Counter[str]  # "status: reason" of the skipped and failed blocks


def _check_iz(iz: Any, nz: int) -> int:
    if iz is None:
        iz = nz // 2
    if isinstance(iz, bool) or not isinstance(iz, (int, np.integer)) or not 0 <= iz < nz:
        raise LazyregError(f"iz: expected a z block-row index in [0, {nz}), got {iz!r}")
    return int(iz)


def _block_row(blocks: dict[tuple[int, int, int], dict[str, Any]], iz: int, ny: int, nx: int) -> _Row:
    from matplotlib.colors import to_rgba

    row = _Row(np.full((ny, nx), np.nan), np.zeros((ny, nx, 4)), [], Counter())
    row.status[:, :] = to_rgba(_COLOURS[None])
    for (bz, by, bx), b in blocks.items():
        if bz != iz:
            continue
        st = b["status"]
        if st == "ok":
            row.status[by, bx] = (0, 0, 0, 0)
            if b["before"] is not None and b["after"] is not None:
                row.change[by, bx] = b["after"] - b["before"]
                row.texts.append((bx, by, f"{row.change[by, bx]:+.2g}", "black"))
            else:
                row.status[by, bx] = to_rgba("white")
                row.texts.append((bx, by, "n/a", "black"))
        else:
            row.status[by, bx] = to_rgba(_COLOURS[st])
            row.texts.append((bx, by, "skip" if st == "skipped" else "fail", "black" if st == "skipped" else "white"))
            if b["reason"]:
                row.reasons[f"{st}: {b['reason']}"] += 1
    return row


def _draw_row(ax: Any, row: _Row, annotate: bool) -> Any:
    """Draw the block grid on ``ax``; returns the image of the metric change (for a colorbar)."""
    from matplotlib.colors import CenteredNorm

    ny, nx = row.change.shape
    extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)
    finite = row.change[np.isfinite(row.change)]
    half = float(np.max(np.abs(finite))) if finite.size else 1.0
    norm = CenteredNorm(vcenter=0.0, halfrange=half if half > 0 else 1.0)
    ax.imshow(row.status, extent=extent, origin="upper", interpolation="nearest")
    im = ax.imshow(row.change, cmap="RdBu", norm=norm, extent=extent, origin="upper", interpolation="nearest")
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
        for bx, by, text, colour in row.texts:
            ax.text(bx, by, text, ha="center", va="center", fontsize=size, color=colour)
    return im


def _legends(fig: Figure, reasons: Counter[str], iz: int) -> None:
    """The legend of the statuses and, below it, the most frequent reasons in the row."""
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="#6f9fcf", edgecolor="0.5", label="ok (colour: metric change)"),
        Patch(facecolor=_COLOURS["skipped"], edgecolor="0.5", label="skipped"),
        Patch(facecolor=_COLOURS["failed"], edgecolor="0.5", label="failed"),
        Patch(facecolor=_COLOURS[None], edgecolor="0.5", label="not in report"),
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


def _shorten(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# -- the report ------------------------------------------------------------------------------
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
        key = _block_index(entry["index"], where)
        if key in blocks:
            raise LazyregError(f"report: {where}: block index {key} appears more than once")
        status = entry["status"]
        if status not in _STATUSES:
            raise LazyregError(f"report: {where}: unknown status {status!r}; expected one of {list(_STATUSES)}")
        reason = entry.get("reason")
        blocks[key] = {
            "status": status,
            "reason": None if reason is None else str(reason),
            "before": _metric(entry.get("metric_before"), "metric_before", where),
            "after": _metric(entry.get("metric_after"), "metric_after", where),
        }
    return blocks


def _block_index(idx: Any, where: str) -> tuple[int, int, int]:
    """An entry's ``index`` as 3 ints (a tuple, a JSON list or an array)."""
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
    iz, iy, ix = (int(i) for i in idx)
    return iz, iy, ix


def _metric(value: Any, key: str, where: str) -> float | None:
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise LazyregError(f"report: {where}: {key!r} must be a number or None, got {value!r}")
    v = float(value)
    return v if math.isfinite(v) else None
