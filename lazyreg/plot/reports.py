"""A piecewise alignment's per-block report: its summary (counts, reasons grouped by kind) and its map."""

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
from ..registration.block_report import reason_kind
from .figures import check_path, check_title, finish, new_figure, require_matplotlib

if TYPE_CHECKING:  # matplotlib is optional: imported only inside the functions
    from matplotlib.figure import Figure

__all__ = ["block_map"]

_STATUSES = ("ok", "unchanged", "skipped", "failed")
#: Colours of the blocks that show no metric change (None: absent from the report). "unchanged"
#: is yellow: outside the diverging colormap of the ok blocks, so a gain near 0 is not mistaken for it.
_COLOURS = {"unchanged": "#f2d649", "skipped": "#c8c8c8", "failed": "black", None: "white"}
_FAILED_MARK = "#ff2a2a"  # the cross over failed blocks
#: With at most this many z block-rows, ``block_map`` draws them all; else the worst one.
MAX_PANELS = 8
# a number in a reason (not part of a word): 3, -0.25, 1e-05, 45%, nan, inf


# -- the summary of a report -----------------------------------------------------------------


# -- the map ---------------------------------------------------------------------------------
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

    Each z block-row is a panel, a grid of squares with x blocks across and y blocks down.
    ``ok`` blocks are coloured by ``metric_after - metric_before`` (diverging colormap centred at
    0, one colorbar for all panels), ``unchanged`` blocks (no step improved them: they keep the
    static transforms) yellow, ``skipped`` blocks light grey, ``failed`` blocks black with a red
    cross, and blocks absent from the report white. Every z block-row is drawn when there are at
    most ``MAX_PANELS`` (8), in a grid of panels; beyond that, the row with the most failed or
    unchanged blocks (its panel title says so). Statuses do not project over z, hence rows.

    Parameters
    ----------
    report : sequence of dict, or DisplacementField
        One dict per block with keys ``"index"`` (``(iz, iy, ix)`` block indices), ``"status"``
        (``"ok"``, ``"unchanged"``, ``"skipped"`` or ``"failed"``), ``"reason"`` (str or None) and
        ``"metric_before"``, ``"metric_after"`` (numbers or None). A field whose ``report`` is
        such a list is accepted too (compute a lazy field first).
    iz : int, optional
        Draw this z block-row only.
    title : str, optional
        Title of the figure, above the counts of all blocks by status.
    path : str or pathlib.Path, optional
        Also save the figure as a PNG there.
    overwrite : bool
        Replace an existing file at ``path``.
    annotate : bool, optional
        Write the metric change (3 decimals, 2 when the squares are small) or the status in
        each square; default when the text fits in the squares.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per drawn row (titled ``"z block-row {iz} of {nz}..."``), a colorbar, a legend
        of the statuses and the most frequent kinds of reasons (see :func:`lazyreg.registration.block_report.block_summary`) in the
        drawn rows.

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
    ...     {"index": (z, 0, x), "status": s, "reason": r, "metric_before": 0.2, "metric_after": a}
    ...     for z, x, s, r, a in [(0, 0, "ok", None, 0.8), (0, 1, "skipped", "empty block", None),
    ...                           (1, 0, "unchanged", "no step improved it", 0.2), (1, 1, "failed", "error", None)]
    ... ]
    >>> fig = lazyreg.plot.block_map(report)
    >>> [ax.get_title().splitlines()[0] for ax in fig.axes if ax.get_title()]
    ['z block-row 0 of 2', 'z block-row 1 of 2']
    >>> [t.get_text() for t in fig.axes[0].texts]
    ['+0.600', 'skip']
    """
    require_matplotlib()
    check_title(title)
    blocks = _parse_report(report)
    out = check_path(path, overwrite)
    nz, ny, nx = (max(idx[i] for idx in blocks) + 1 for i in range(3))
    drawn, note = _rows_to_draw(blocks, nz, iz)
    rows = {z: _block_row(blocks, z, ny, nx) for z in drawn}

    ncols = min(len(drawn), max(1, round(math.sqrt(len(drawn) * 2.5 * ny / nx))))
    ncols = math.ceil(len(drawn) / math.ceil(len(drawn) / ncols))  # balanced: no near-empty last line
    nrows = math.ceil(len(drawn) / ncols)
    cell = max(0.08, min(0.6, 9.0 / (ncols * nx), 7.5 / (nrows * ny)))  # inches per block
    fig = new_figure((ncols * (nx * cell + 1.0) + 5.0, max(nrows * (ny * cell + 1.0) + 0.8, 3.4)))
    decimals, size = _text_fit(cell)
    if annotate is None:
        annotate = decimals > 0
    norm = _change_norm(list(rows.values()))
    axes = []
    for n, z in enumerate(drawn):
        ax = fig.add_subplot(nrows, ncols, n + 1)
        im = _draw_row(ax, rows[z], norm, annotate and (max(decimals, 2), max(size, 5.0)))
        ax.set_title(f"z block-row {z} of {nz}{note}\n{_counts_text(rows[z].counts)}", fontsize=8)
        axes.append(ax)
    fig.colorbar(im, ax=axes, shrink=0.9, label="metric after − before (ok blocks)")
    reasons = sum((rows[z].reasons for z in drawn), Counter())
    _legends(fig, Counter(b["status"] for b in blocks.values()), reasons, "drawn rows" if len(drawn) > 1 else f"row {drawn[0]}")
    return finish(fig, out, title)


@dataclass
class _Row:
    """What a z block-row shows, each array (ny, nx[, 4]) indexed (y block, x block)."""

    change: np.ndarray  # metric after - before of the ok blocks that have both; NaN elsewhere
    status: np.ndarray  # RGBA of the statuses; transparent where ``change`` is drawn
    texts: list[tuple[int, int, str | None]]  # (x block, y block, text or None: the metric change)
    failed: list[tuple[int, int]]  # (x block, y block) of the failed blocks
    reasons: Counter[str]  # "status: kind of reason" of the blocks not ok
    counts: Counter[str]  # blocks by status


def _check_iz(iz: Any, nz: int) -> int:
    if isinstance(iz, bool) or not isinstance(iz, (int, np.integer)) or not 0 <= iz < nz:
        raise LazyregError(f"iz: expected a z block-row index in [0, {nz}), got {iz!r}")
    return int(iz)


def _rows_to_draw(blocks: dict[tuple[int, int, int], dict[str, Any]], nz: int, iz: Any) -> tuple[list[int], str]:
    """The z block-rows to draw and a note for their titles: ``iz``, all of them, or the worst one."""
    if iz is not None:
        return [_check_iz(iz, nz)], ""
    if nz <= MAX_PANELS:
        return list(range(nz)), ""
    bad, failed = Counter(), Counter()
    for (bz, _, _), b in blocks.items():
        bad[bz] += b["status"] in ("failed", "unchanged")
        failed[bz] += b["status"] == "failed"
    worst = max(range(nz), key=lambda z: (bad[z], failed[z], -abs(z - nz // 2)))
    if not bad[worst]:
        return [worst], ": the middle one (none failed or unchanged)"
    return [worst], ": the one with most failed/unchanged blocks"


def _block_row(blocks: dict[tuple[int, int, int], dict[str, Any]], iz: int, ny: int, nx: int) -> _Row:
    from matplotlib.colors import to_rgba

    row = _Row(np.full((ny, nx), np.nan), np.zeros((ny, nx, 4)), [], [], Counter(), Counter())
    row.status[:, :] = to_rgba(_COLOURS[None])
    for (bz, by, bx), b in blocks.items():
        if bz != iz:
            continue
        st = b["status"]
        row.counts[st] += 1
        if st == "ok" and b["before"] is not None and b["after"] is not None:
            row.status[by, bx] = (0, 0, 0, 0)
            row.change[by, bx] = b["after"] - b["before"]
            row.texts.append((bx, by, None))
            continue
        row.status[by, bx] = to_rgba(_COLOURS.get(st, "white"))
        if st == "failed":  # marked by a cross, no text
            row.failed.append((bx, by))
        else:
            row.texts.append((bx, by, {"ok": "n/a", "unchanged": "unch", "skipped": "skip"}[st]))
        if st != "ok":
            row.reasons[f"{st}: {reason_kind(b['reason'])}"] += 1
    return row


def _text_fit(cell: float) -> tuple[int, float]:
    """(decimals, font size in points) of the metric change that fit a square of ``cell`` inches:
    "+0.123" at 5 to 9 points, else "+0.12"; decimals 0 when even that does not fit at 5 points."""
    for decimals in (3, 2):
        chars = decimals + 3
        size = min(9.0, 0.9 * cell * 72 / (0.62 * chars))  # a character is ~0.62 em wide
        if size >= 5.0:
            return decimals, size
    return 0, 5.0


def _change_norm(rows: list[_Row]) -> Any:
    """One colour scale for the metric change of every drawn row, centred at 0."""
    from matplotlib.colors import CenteredNorm

    finite = np.concatenate([r.change[np.isfinite(r.change)] for r in rows])
    half = float(np.max(np.abs(finite))) if finite.size else 1.0
    return CenteredNorm(vcenter=0.0, halfrange=half if half > 0 else 1.0)


def _draw_row(ax: Any, row: _Row, norm: Any, text: tuple[int, float] | bool) -> Any:
    """Draw the block grid on ``ax`` (``text``: (decimals, font size), or False for no text);
    returns the image of the metric change (for a colorbar)."""
    ny, nx = row.change.shape
    extent = (-0.5, nx - 0.5, ny - 0.5, -0.5)
    ax.imshow(row.status, extent=extent, origin="upper", interpolation="nearest", aspect="auto")
    im = ax.imshow(row.change, cmap="RdBu", norm=norm, extent=extent, origin="upper", interpolation="nearest", aspect="auto")
    ax.set_xticks(np.arange(-0.5, nx, 1.0), minor=True)
    ax.set_yticks(np.arange(-0.5, ny, 1.0), minor=True)
    ax.grid(which="minor", color="0.5", linewidth=0.5)
    ax.tick_params(which="minor", length=0)
    ax.set_xticks(np.arange(0, nx, max(1, math.ceil(nx / 15))))
    ax.set_yticks(np.arange(0, ny, max(1, math.ceil(ny / 15))))
    ax.set_xlabel("x block")
    ax.set_ylabel("y block")
    if row.failed:  # a cross over each failed block, one line with NaN breaks
        h = 0.38
        xs = [v for bx, _ in row.failed for v in (bx - h, bx + h, np.nan, bx - h, bx + h, np.nan)]
        ys = [v for _, by in row.failed for v in (by - h, by + h, np.nan, by + h, by - h, np.nan)]
        ax.plot(xs, ys, color=_FAILED_MARK, linewidth=1.5, solid_capstyle="butt", gid="failed")
        ax.set_xlim(extent[:2])
        ax.set_ylim(extent[2:])
    if text:
        decimals, size = text
        for bx, by, label in row.texts:
            change = row.change[by, bx]
            if label is None:  # the change, without a sign when it rounds to 0
                label = f"{change:+.{decimals}f}" if round(change, decimals) else f"{0:.{decimals}f}"
            dark = label is not None and np.isfinite(change) and abs(norm(change) - 0.5) > 0.35
            ax.text(bx, by, label, ha="center", va="center", fontsize=size, color="white" if dark else "black")
    return im


def _counts_text(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{counts.get(s, 0)} {s}" for s in _STATUSES if counts.get(s, 0) or s == "ok")


def _legends(fig: Figure, counts: Counter[str], reasons: Counter[str], where: str) -> None:
    """The legend of the statuses (with the counts of all blocks) and, below it, the most frequent
    kinds of reasons in the drawn rows."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    cross = Line2D([], [], color=_FAILED_MARK, marker="x", linestyle="none", markersize=8, markeredgewidth=1.5)
    what = {"ok": "colour: metric change", "unchanged": "static transforms kept", "failed": "filled from neighbours"}
    handles = [Patch(facecolor=_COLOURS.get(s, "#6f9fcf"), edgecolor="0.5") for s in _STATUSES]
    handles[_STATUSES.index("failed")] = (handles[_STATUSES.index("failed")], cross)
    labels = [f"{s}: {counts.get(s, 0)}" + (f" ({what[s]})" if s in what else "") for s in _STATUSES]
    fig.legend(
        handles=[*handles, Patch(facecolor="white", edgecolor="0.5")], labels=[*labels, "not in report"],
        title=f"all {sum(counts.values())} blocks", loc="outside right upper", fontsize=8, title_fontsize=8, frameon=False,
    )
    if reasons:
        lines = [f"{_shorten(r, 56)} ({n})" for r, n in reasons.most_common(6)]
        fig.legend(
            handles=[Patch(visible=False)] * len(lines), labels=lines, title=f"reasons in {where}", loc="outside right lower",
            fontsize=7, title_fontsize=8, frameon=False, handlelength=0, handletextpad=0,
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
