"""Reading a piecewise alignment's per-block report: counts by status, reasons by kind, gains.

:func:`block_summary` condenses the rows of ``field.report`` (:func:`lazyreg.align_piecewise`);
:func:`summary_lines` prints it with every figure rounded to 3 decimals. Reasons that differ only
by their numbers ("foreground 3% ...", "foreground 7% ...") are one *kind* (:func:`reason_kind`).
The cost is told too: median and largest seconds and peak memory of the blocks and of each step.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any, Mapping, Sequence

import numpy as np

from .block_align import STATUSES

__all__ = ["block_summary", "summary_lines", "reason_kind", "round_floats"]

_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|(?<![\w.])[-+]?\b(?:nan|inf)\b")


_LONG_FLOAT = re.compile(r"(\d+\.\d{4,})([eE][-+]?\d+)?")


_ERROR = re.compile(r"^(?P<type>[A-Za-z_]\w*(?:Error|Exception|Warning)): (?P<rest>.*)$", re.S)


_OPTION = re.compile(r"^(?P<name>[A-Za-z_][\w.]*(?:\[\d+\])?): ")


def block_summary(report: Sequence[Mapping[str, Any]]) -> dict:
    """Counts of a piecewise report's blocks by status and, for the blocks not ok, by kind of reason.

    The kind of a reason is its text with the numbers elided and the advice after ``"; "``
    dropped, so that reasons differing only by their figures ("foreground 3% ...", "foreground
    7% ...") make one group; an error (``"SomeError: option: message"``) is known by the option
    it names (and the step that raised it, when the row's ``steps`` say).

    Parameters
    ----------
    report : sequence of dict
        The rows of ``align_piecewise(...).report`` (``index``, ``status``, ``reason``,
        ``metric_before``, ``metric_after`` and optionally ``steps``), or the same read from JSON.

    Returns
    -------
    dict
        ``blocks`` (how many); ``by_status`` (status -> count, every status listed); ``by_kind``
        (one dict per status and kind of reason: ``status``, ``kind``, ``count``, ``blocks``
        (their indices), ``example`` (one full reason)); ``mean_gain`` (mean ``metric_after -
        metric_before`` of the ok blocks that have both, or None) and ``gain_blocks`` (how many);
        ``unchanged`` (blocks that kept the static transforms: gain 0, not in the mean);
        ``steps`` (step name -> ``{"ran": blocks, "kept": blocks, "not_kept": {kind: blocks}}`` and
        its cost: ``seconds_median``, ``seconds_max`` and ``peak_mib``, the largest ``peak_mib``
        of its rows); ``cost``: the same figures over the blocks whose steps ran (``blocks``
        says how many) plus ``seconds_inputs_median``; ``starts``: with a coarse stage
        (``align_piecewise(coarse=True)``), how many blocks went on from each start ("static",
        "coarse"), else empty. Figures missing from the rows are None.

    Examples
    --------
    >>> rows = [
    ...     {"index": (0, 0, 0), "status": "ok", "reason": None, "metric_before": 0.5, "metric_after": 0.75},
    ...     {"index": (0, 0, 1), "status": "skipped", "reason": "foreground 3% of the block is low"},
    ...     {"index": (0, 1, 0), "status": "skipped", "reason": "foreground 7% of the block is low"},
    ...     {"index": (0, 1, 1), "status": "failed", "reason": "LazyregError: match_threshold: 3 matches; lower it"},
    ... ]
    >>> s = block_summary(rows)
    >>> s["by_status"], s["mean_gain"], s["unchanged"]
    ({'ok': 1, 'unchanged': 0, 'skipped': 2, 'failed': 1}, 0.25, 0)
    >>> [(g["status"], g["kind"], g["count"]) for g in s["by_kind"]]
    [('skipped', 'foreground …% of the block is low', 2), ('failed', 'match_threshold: … matches', 1)]
    >>> s["cost"]
    {'blocks': 0, 'seconds_median': None, 'seconds_max': None, 'peak_mib': None, 'seconds_inputs_median': None}
    >>> block_summary([dict(rows[0], start="coarse"), dict(rows[0], start="static"), dict(rows[0], start="coarse")])["starts"]
    {'coarse': 2, 'static': 1}
    """
    by_status = dict.fromkeys(STATUSES, 0)
    groups: dict[tuple[str, str], dict] = {}
    gains: list[float] = []
    steps: dict[str, dict[str, Any]] = {}
    costs: dict[str | None, list] = {}  # step name (None: the block) -> rows
    starts: dict[str, int] = {}
    for row in report:
        status = row["status"]
        by_status[status] = by_status.get(status, 0) + 1
        if row.get("start") is not None:
            starts[row["start"]] = starts.get(row["start"], 0) + 1
        if row.get("steps"):
            costs.setdefault(None, []).append(row)
        for st in row.get("steps") or ():
            tally = steps.setdefault(str(st["step"]), {"ran": 0, "kept": 0, "not_kept": {}})
            costs.setdefault(str(st["step"]), []).append(st)
            tally["ran"] += 1
            tally["kept"] += bool(st.get("kept"))
            if not st.get("kept"):
                why = reason_kind(st.get("reason"))
                tally["not_kept"][why] = tally["not_kept"].get(why, 0) + 1
        if status == "ok":
            before, after = row.get("metric_before"), row.get("metric_after")
            if before is not None and after is not None and math.isfinite(after - before):
                gains.append(float(after) - float(before))
            continue
        kind = reason_kind(row.get("reason"), _failing_step(row) if status == "failed" else None)
        group = groups.setdefault((status, kind), {"status": status, "kind": kind, "count": 0, "blocks": [], "example": row.get("reason")})
        group["count"] += 1
        group["blocks"].append([int(i) for i in row["index"]])
    order = {s: n for n, s in enumerate(STATUSES)}
    return {
        "blocks": sum(by_status.values()),
        "by_status": by_status,
        "by_kind": sorted(groups.values(), key=lambda g: (order.get(g["status"], len(order)), -g["count"], g["kind"])),
        "mean_gain": float(np.mean(gains)) if gains else None,
        "gain_blocks": len(gains),
        "unchanged": by_status.get("unchanged", 0),
        "steps": {name: t | _cost(costs[name]) for name, t in steps.items()},
        "cost": {"blocks": len(costs.get(None, ())), **_cost(costs.get(None, ()), "seconds_inputs")},
        "starts": dict(sorted(starts.items())),
    }


def summary_lines(summary: Mapping[str, Any], *, shown: int = 3) -> list[str]:
    """The lines that tell a :func:`block_summary`: counts, one line per kind of reason, the gain.

    Every float is rounded to 3 decimals; a kind's line names up to ``shown`` of its blocks.

    Examples
    --------
    >>> rows = [
    ...     {"index": (0, 0, 0), "status": "ok", "reason": None, "metric_before": 0.5, "metric_after": 0.7512345},
    ...     {"index": (0, 0, 1), "status": "unchanged", "reason": "no step improved the block"},
    ...     {"index": (0, 1, 0), "status": "failed", "reason": "LazyregError: align_threshold: 3 inliers within 2.12",
    ...      "steps": [{"step": "ransac", "kept": False, "reason": "LazyregError: align_threshold: 3 inliers within 2.12"}]},
    ... ]
    >>> print("\\n".join(summary_lines(block_summary(rows))))
    3 blocks: 1 ok, 1 unchanged, 1 failed
      1 unchanged: no step improved the block (block (0, 0, 1))
      1 failed: ransac: align_threshold: … inliers within … (block (0, 1, 0))
    mean block Pearson gain +0.251 over the 1 ok block (the 1 unchanged block: gain 0, not counted)
    step ransac kept in 0 of the 1 blocks where it ran; not kept: 1 align_threshold: … inliers within …

    With the cost figures of the rows (``seconds`` and ``peak_mib`` of the blocks and of their
    steps), one more line for the blocks and one per step:

    >>> rows[2] |= {"seconds": 4.5, "peak_mib": 310.0, "seconds_inputs": 0.25}
    >>> rows[2]["steps"][0] |= {"seconds": 4.0, "peak_mib": 180.4}
    >>> print("\\n".join(summary_lines(block_summary(rows))[-2:]))
    cost of the 1 block that ran steps: 4.5 s median, 4.5 s max, 310 MiB peak (reading inputs: 0.25 s median)
    step ransac: 4.0 s median, 4.0 s max, 180 MiB peak
    """
    told = ", ".join(f"{n} {s}" for s, n in summary["by_status"].items() if n or s == "ok")
    lines = [f"{summary['blocks']} blocks: {told}"]
    for g in summary["by_kind"]:
        where = ", ".join(str(tuple(b)) for b in g["blocks"][:shown])
        more = f" and {len(g['blocks']) - shown} more" if len(g["blocks"]) > shown else ""
        lines.append(f"  {g['count']} {g['status']}: {g['kind']} (block{'s' if g['count'] > 1 else ''} {where}{more})")
    n, u = summary["gain_blocks"], summary["unchanged"]
    gain = "n/a" if summary["mean_gain"] is None else f"{summary['mean_gain']:+.3f}"
    unchanged = f" (the {u} unchanged block{'s' if u > 1 else ''}: gain 0, not counted)" if u else ""
    lines.append(f"mean block Pearson gain {gain} over the {n} ok block{'s' if n != 1 else ''}{unchanged}")
    starts = summary.get("starts") or {}
    if starts:
        lines.append(f"blocks went on from the coarse field in {starts.get('coarse', 0)}, from the static transforms "
                     f"in {starts.get('static', 0)} (whichever their first step fitted better)")
    for name, t in summary["steps"].items():
        why = sorted(t.get("not_kept", {}).items(), key=lambda kv: -kv[1])[:2]
        why = "; not kept: " + ", ".join(f"{n} {_shorten(kind, 72)}" for kind, n in why) if why else ""
        lines.append(f"step {name} kept in {t['kept']} of the {t['ran']} blocks where it ran{why}")
    cost = summary.get("cost") or {}
    if cost.get("seconds_median") is not None:
        n = cost["blocks"]
        inputs = cost.get("seconds_inputs_median")
        inputs = f" (reading inputs: {_seconds(inputs)} median)" if inputs is not None else ""
        lines.append(f"cost of the {n} block{'s' if n != 1 else ''} that ran steps: {_cost_text(cost)}{inputs}")
    lines += [f"step {name}: {_cost_text(t)}" for name, t in summary["steps"].items() if t.get("seconds_median") is not None]
    return [round_floats(line) for line in lines]


def reason_kind(reason: str | None, step: str | None = None) -> str:
    """The kind of a reason (see :func:`block_summary`), ``step: `` in front when given.

    >>> reason_kind("Pearson 0.873 -> 0.869: not kept"), reason_kind("LazyregError: x: 3 of 9; raise x", "ransac")
    ('Pearson … -> …: not kept', 'ransac: x: … of …')
    """
    if not reason:
        return "no reason given"
    text = " ".join(str(reason).split())
    error = _ERROR.match(text)
    if error:  # "SomeError: option: message" -> "option: message"
        option = _OPTION.match(error["rest"])
        text = error["rest"] if option else f"{error['type']}: {error['rest']}"
    kind = _shorten(_NUMBER.sub("…", text).split("; ")[0].rstrip(" .:,"), 120)
    return f"{step}: {kind}" if step else kind


def round_floats(text: str, decimals: int = 3) -> str:
    """``text`` with every number of more than ``decimals`` decimals rounded (exponents kept).

    >>> round_floats("Pearson 0.8850012 -> 0.87981234, step 2 of 3, 1.234567e-05 s")
    'Pearson 0.885 -> 0.880, step 2 of 3, 1.235e-05 s'
    """
    return _LONG_FLOAT.sub(lambda m: f"{float(m[1]):.{decimals}f}{m[2] or ''}", str(text))


def _failing_step(row: Mapping[str, Any]) -> str | None:
    """The name of the step whose error is the row's reason (the last one that raised it)."""
    for st in reversed(row.get("steps") or ()):
        if st.get("reason") == row.get("reason"):
            return str(st["step"])
    return None


def _cost(rows: Sequence[Mapping[str, Any]], *also: str) -> dict:
    """Median and largest ``seconds``, largest ``peak_mib`` (and the median of each of ``also``)
    of ``rows``; None where no row has the figure."""
    def values(key: str) -> list[float]:
        return [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]

    seconds, peaks = values("seconds"), values("peak_mib")
    out = {
        "seconds_median": float(np.median(seconds)) if seconds else None,
        "seconds_max": max(seconds) if seconds else None,
        "peak_mib": max(peaks) if peaks else None,
    }
    for key in also:
        v = values(key)
        out[f"{key}_median"] = float(np.median(v)) if v else None
    return out


def _seconds(s: float) -> str:
    return f"{s:.2f} s" if s < 1 else f"{s:.1f} s"


def _cost_text(cost: Mapping[str, Any]) -> str:
    """``2.1 s median, 4.0 s max, 180 MiB peak`` (the peak left out when unknown)."""
    text = f"{_seconds(cost['seconds_median'])} median, {_seconds(cost['seconds_max'])} max"
    return text + (f", {cost['peak_mib']:.0f} MiB peak" if cost.get("peak_mib") is not None else "")


def _shorten(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"
