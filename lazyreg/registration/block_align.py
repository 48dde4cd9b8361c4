"""The work of one piecewise block: is it worth aligning, align it, check the result.

A block task receives the block's fixed region, its moving region resampled onto the same grid
through the static transforms, and optionally its mask. It decides whether the block holds enough
foreground and maps inside the moving volume, runs the steps, and accepts the result only if it
made the block's correlation better. It returns a small dict: the local transform (a matrix and
an optional field on the block's field grid) and a report row.
"""

from __future__ import annotations

import logging
from collections import Counter
import math
import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from scipy import ndimage as ndi

from ..errors import LazyregError
from ..images import Grid, image
from ..metrics import pearson_arrays
from ..interpolation import resample_array
from ..transforms.affine import Affine
from ..transforms.field import DisplacementField
from ..transforms.jacobian import determinant_values
from ..transforms.points import transform_points
from .step_memory import measure_peak
from .steps import StepCall, run_steps, step_profile

__all__ = ["BlockTask", "align_block", "report_rows", "regular_field", "compact_field", "coarse_crop", "REPORT_KEYS", "COARSE_CROP_MARGIN"]

log = logging.getLogger(__name__)

#: A block is aligned only if at least this fraction of its region maps inside the moving volume.
MIN_INSIDE = 0.5


#: Automatic foreground: voxels (after a Gaussian of ``FOREGROUND_SIGMA`` voxels) brighter than the
#: 1st percentile of fixed plus this fraction of its 1st-99th percentile range. On the tutorial
#: light-sheet pair this keeps tissue (91% of the volume) and drops only the empty margin.
FOREGROUND_LEVEL = 0.05


FOREGROUND_SIGMA = 2.0


#: Lattice step (voxels) of the test of which block voxels map inside the moving volume.
_INSIDE_STEP = 4

#: A block's own deformation is scaled down until its Jacobian determinant is at least this
#: everywhere on its grid (so no block folds, and blending rarely can).
BLOCK_DET_MIN = 0.2
#: Scales tried, largest first (0: the deformation is dropped, the step's affine part kept).
FIELD_SCALES = (1.0, 0.75, 0.5, 0.25, 0.0)

#: The keys of a block's report row.
REPORT_KEYS = (
    "index", "status", "reason", "foreground", "inside", "start", "metric_before", "metric_after", "inliers", "steps",
    "seconds", "seconds_inputs", "peak_mib", "peak_rss_mib",
)
#: A block's crop of the coarse field reaches this fraction of its region's side beyond the
#: region (points its own transform moves stay inside; beyond, the crop's edge values are used).
COARSE_CROP_MARGIN = 0.25
#: Block fields whose largest displacement is at most this many voxels are kept as float16
#: (:func:`compact_field`).
HALF_PRECISION_VOXELS = 20.0
#: A step's result is checked (moving warped by it, Pearson before and after) on every
#: ``CHECK_STRIDE``-th voxel of the block per axis: an eighth of the voxels (over 100,000 in a
#: 128^3 block's foreground), for a decision between two correlations. Measured on the default
#: steps (real pair; stride 1 -> 2): Pearson 0.8735 -> 0.8733, wall 162 -> 153 s.
CHECK_STRIDE = 2
#: Block statuses: aligned, no step improved it (static transforms kept), not worth aligning,
#: failed (every step raised an error, or, decided when blending, an outlier among its neighbours).
STATUSES = ("ok", "unchanged", "skipped", "failed")



@dataclass(frozen=True)
class BlockTask:
    """What a block task needs to know besides its images (small, pickled into the graph).

    Examples
    --------
    >>> from lazyreg import Grid
    >>> g = Grid((16, 16, 16), 1.0)
    >>> BlockTask((0, 0, 0), g, (), None, (np.zeros(3), np.full(3, 15.0)), (), 0.5, 0, False).index
    (0, 0, 0)
    """

    index: tuple[int, int, int]
    region: Grid
    steps: tuple
    field_grid: Grid | None
    moving_extent: tuple[np.ndarray, np.ndarray]
    static_kinds: tuple  # per static transform: "affine" (matrix follows), "field" (object), "skip"
    foreground_fraction: float
    seed: int
    has_mask: bool
    coarse_grid: Grid | None = None  # the coarse stage's field grid (its values come last in static args)


def coarse_crop(values: np.ndarray, grid: Grid, region: Grid) -> tuple[np.ndarray, Grid]:
    """The part of a coarse field (``values`` on ``grid``) that a block's local map reaches:
    ``region`` plus :data:`COARSE_CROP_MARGIN` of its side, kept as :func:`compact_field` keeps fields.

    Examples
    --------
    >>> v = np.zeros((20, 20, 20, 3), np.float32)
    >>> crop, g = coarse_crop(v, Grid((20, 20, 20), 4.0), Grid((16, 16, 16), 1.0, origin=(20.0, 20.0, 20.0)))
    >>> crop.shape, g.origin
    ((8, 8, 8, 3), (12.0, 12.0, 12.0))
    """
    lo, hi = (np.asarray(e, dtype=float) for e in region.extent)
    reach = COARSE_CROP_MARGIN * (hi - lo) + np.asarray(region.spacing)
    sp, origin = np.asarray(grid.spacing), np.asarray(grid.origin)
    i0 = np.clip(np.floor((lo - reach - origin) / sp).astype(int), 0, np.asarray(grid.shape) - 1)
    i1 = np.clip(np.ceil((hi + reach - origin) / sp).astype(int) + 1, i0 + 1, np.asarray(grid.shape))
    crop = np.ascontiguousarray(values[i0[0]:i1[0], i0[1]:i1[1], i0[2]:i1[2]])
    g = Grid(tuple(int(n) for n in i1 - i0), tuple(sp), tuple(origin + i0 * sp))
    return compact_field((crop, g))


def _inside_mask(task: BlockTask, static_args: Sequence[Any]) -> np.ndarray:
    """Voxels of the block whose static mapping lands inside the moving volume (block shape, bool).

    Evaluated on a lattice every ``_INSIDE_STEP`` voxels (always including the last voxel) and
    spread to the block by nearest lattice point: the static transforms are smooth.
    """
    g = task.region
    axes = [np.unique(np.r_[np.arange(0, n, _INSIDE_STEP), n - 1]) for n in g.shape]
    pts = g.to_physical(np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3).astype(float))
    ts = []
    it = iter(static_args)
    for kind in task.static_kinds:
        if kind == "affine":
            ts.append(Affine(np.asarray(next(it), dtype=float)))
        elif kind == "field":
            ts.append(next(it))
    mapped = transform_points(pts, ts) if ts else pts
    lo, hi = task.moving_extent
    lattice = np.all((mapped >= lo) & (mapped <= hi), axis=1).reshape([len(a) for a in axes])
    nearest = [np.abs(np.arange(n)[:, None] - a[None, :]).argmin(1) for n, a in zip(g.shape, axes)]
    return lattice[np.ix_(*nearest)]


def _warped(moving: np.ndarray, g: Grid, matrix: np.ndarray, field: tuple | None, out: Grid) -> np.ndarray:
    """``moving`` (on ``g``) through ``matrix`` and ``field``, on the grid ``out``."""
    steps = [("affine", matrix, None)]
    if field is not None:
        steps.append(("field", field[0], field[1]))
    # NaN where the block's own transform leaves the block's moving region: not data, not compared
    return resample_array(moving, g, out, steps, order=1, fill_value=np.nan, dtype=np.dtype(np.float32))


def _checked(a: np.ndarray | None) -> np.ndarray | None:
    """The voxels of a block array that results are checked on (every ``CHECK_STRIDE``-th)."""
    return None if a is None else a[::CHECK_STRIDE, ::CHECK_STRIDE, ::CHECK_STRIDE]


def align_block(task: BlockTask, fixed: np.ndarray, moving: Any, mask: Any, threshold: float, *static_args) -> dict:
    """Align one block; returns its row: status, reason, figures, and ``matrix``/``field`` if ok.

    ``fixed`` and ``moving`` are the block's regions on the same grid (``task.region``; moving
    resampled through the static transforms), ``mask`` its foreground mask (if ``task.has_mask``),
    ``threshold`` the foreground intensity threshold, ``static_args`` the static transforms'
    values (see ``task.static_kinds``). The steps run one at a time, each kept only if it raised
    the block's Pearson correlation (``row["steps"]`` says which).

    With a coarse stage (``task.coarse_grid``; :mod:`lazyreg.registration.coarse`), ``moving`` is
    a pair: the region through the static transforms, and through them and the coarse field
    (whose values are the last of ``static_args``). The first step runs from both starts and the
    block goes on from the better result (``row["start"]``: "static" or "coarse"); a block that
    keeps the coarse start holds the crop of the coarse field it needs (``row["coarse"]``), so its
    local map is the coarse field after its own transform. Status "ok" (some step kept),
    "unchanged" (the steps ran, none improved the block: its local transform is the identity),
    "skipped" (not worth aligning: little foreground, mostly outside moving) or "failed" (every
    step raised an error; the block is filled from its neighbours).

    Cost: ``seconds`` (the block's work once its inputs are read), ``peak_mib`` (the largest resident memory
    of the process above its level when the block started, MiB) and ``peak_rss_mib`` (that
    largest resident memory); each step's row has the same three figures for the step and its
    check. Resident memory is process-wide, sampled every few milliseconds
    (:mod:`lazyreg.registration.step_memory`): blocks running at the same time in other threads
    are counted too; on one-thread workers the figure is the block's own.

    Examples
    --------
    >>> import numpy as np, lazyreg
    >>> from lazyreg.images import Grid
    >>> g = Grid((16, 16, 16), 1.0)
    >>> task = BlockTask((0, 0, 0), g, (), None, (np.zeros(3), np.full(3, 15.0)), (), 0.5, 0, False)
    >>> align_block(task, np.zeros(g.shape), np.zeros(g.shape), None, 1.0)["status"]
    'skipped'
    """
    with measure_peak() as peak:
        row = _aligned_block(task, fixed, moving, mask, threshold, static_args)
    row.update(peak.figures())
    return row


def _aligned_block(task: BlockTask, fixed: np.ndarray, moving: Any, mask: Any, threshold: float, static_args: tuple) -> dict:
    t0 = time.perf_counter()
    row: dict[str, Any] = dict.fromkeys(REPORT_KEYS)
    row.update(index=task.index, status="ok", matrix=None, field=None, coarse=None)
    starts = list(moving) if isinstance(moving, (list, tuple)) else [moving]
    moving = starts[0]
    if task.coarse_grid is not None:
        *static_args, coarse_values = static_args
        # until the block chooses its start, it falls back on the coarse field (no own result, no neighbour)
        row["coarse"] = coarse_crop(np.asarray(coarse_values), task.coarse_grid, task.region)

    def done(status: str | None = None, reason: str | None = None) -> dict:
        if status is not None:
            row["status"], row["reason"] = status, reason
            log.warning("align_piecewise block %s %s: %s", task.index, status, reason)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        return row

    if task.has_mask:
        fg = np.asarray(mask, dtype=bool)
    else:
        fg = ndi.gaussian_filter(np.asarray(fixed, dtype=np.float32), FOREGROUND_SIGMA) > threshold
    row["foreground"] = round(float(fg.mean()), 4)
    if row["foreground"] < task.foreground_fraction:
        return done(
            "skipped",
            f"foreground {row['foreground']:.0%} of the block is below foreground_fraction {task.foreground_fraction:.0%}",
        )
    inside = _inside_mask(task, static_args)
    row["inside"] = round(float(inside.mean()), 4)
    if row["inside"] < MIN_INSIDE:
        return done("skipped", f"only {row['inside']:.0%} of the block maps inside the moving volume")
    partial = not inside.all()
    # voxels mapping outside moving hold fill values, not data: leave them out of every metric
    compare = inside if partial else None
    g = task.region
    fixed_f = np.asarray(fixed, dtype=np.float32)
    moving_f = np.asarray(moving, dtype=np.float32)
    row["metric_before"] = _figure(pearson_arrays(fixed_f, moving_f, compare))
    if row["metric_before"] is None:
        return done("skipped", "the fixed or the moving block is constant")
    fm = image(fg & inside if partial else fg, g.spacing, g.origin) if (task.has_mask or partial) else None
    # the moving block is on the same grid: its voxels outside ``inside`` are fill (and its edge)
    mm = image(inside, g.spacing, g.origin) if partial else None
    run = _StepRunner(task, fixed_f, moving_f, fm, mm, compare)
    first = 0
    if len(starts) > 1 and task.steps:
        from_coarse = _StepRunner(task, fixed_f, np.asarray(starts[1], dtype=np.float32), fm, mm, compare)
        from_coarse.coarse_start = True
        run = _better_start([run, from_coarse], task.steps[0], compare)
        first = 1
        row["start"] = "coarse" if run.coarse_start else "static"
        if run.coarse_start:
            moving_f = run.moving
            row["metric_before"] = _figure(pearson_arrays(fixed_f, moving_f, compare))
        else:
            row["coarse"] = None
    for i, call in enumerate(task.steps[first:], start=first):
        run.step(i, call)
    row["steps"] = run.rows
    row["inliers"] = run.inliers
    if not any(r["kept"] for r in run.rows):
        errors = [r["reason"] for r in run.rows if r["reason"] and r["metric"] is None]
        if len(errors) == len(run.rows):
            return done("failed", errors[-1])
        # the steps ran and none made the block better: its best transform is the static one
        row["matrix"], row["field"] = np.eye(4), None
        row["metric_after"] = row["metric_before"]
        kept = "the static transforms and the coarse field" if row["coarse"] is not None else "the static transforms"
        return done("unchanged", f"no step improved the block's correlation; it keeps {kept}")
    # before and after on the same voxels: those the kept transform maps inside the block
    valid = np.isfinite(run.current) if compare is None else np.isfinite(run.current) & run.check_compare
    row["metric_before"] = _figure(pearson_arrays(run.check_fixed, _checked(moving_f), valid))
    row["metric_after"] = _figure(pearson_arrays(run.check_fixed, np.nan_to_num(run.current), valid))
    row["matrix"], row["field"] = run.matrix, compact_field(run.field)
    return done()


def regular_field(values: np.ndarray, grid: Grid) -> tuple[np.ndarray, float, float]:
    """``values`` scaled by the largest of :data:`FIELD_SCALES` whose Jacobian determinant is at
    least :data:`BLOCK_DET_MIN` everywhere; returns the values, the scale and that minimum.

    Examples
    --------
    >>> from lazyreg.images import Grid
    >>> u = np.zeros((8, 8, 8, 3)); u[..., 2] = -1.5 * np.arange(8.0)   # dx/dx = -1.5: folds
    >>> _, scale, det_min = regular_field(u, Grid((8, 8, 8), 1.0))
    >>> scale, round(det_min, 3)
    (0.5, 0.25)
    """
    for scale in FIELD_SCALES:
        v = values if scale == 1.0 else (values * np.float32(scale)).astype(values.dtype)
        det_min = float(determinant_values(v, grid.spacing).min())
        if det_min >= BLOCK_DET_MIN:
            return v, scale, round(det_min, 4)
    return v, 0.0, round(det_min, 4)  # pragma: no cover - scale 0 has det 1


def compact_field(field: tuple | None) -> tuple | None:
    """A block's field ``(values, grid)`` as it is kept (and cached): float16 when its largest
    displacement is at most :data:`HALF_PRECISION_VOXELS` voxels, else float32.

    float16 rounds to within 2**-11 of the value (relative): at most 0.01 voxel at 20 voxels,
    0.0025 at 5, and halves what the block results hold (about 2 bytes per fixed voxel at the
    default overlap and field grid, instead of 4.5; docs/design.md, "Computed once").

    Examples
    --------
    >>> g = Grid((2, 2, 2), 1.0)
    >>> compact_field((np.full((2, 2, 2, 3), 1.5, np.float32), g))[0].dtype
    dtype('float16')
    >>> compact_field((np.full((2, 2, 2, 3), 25.0, np.float32), g))[0].dtype
    dtype('float32')
    """
    if field is None:
        return None
    values, grid = field
    if np.abs(values).max(initial=0.0) <= HALF_PRECISION_VOXELS * min(grid.spacing):
        return values.astype(np.float16), grid
    return values, grid


def _figure(value: float) -> float | None:
    return None if math.isnan(value) else round(float(value), 6)


def _better_start(runs: list, call: Any, compare: np.ndarray | None) -> "_StepRunner":
    """Run the first step from each start (without, with the coarse field); return the runner whose
    result so far correlates better with fixed, on the voxels both map inside the block.

    Measured on the real tutorial pair (default steps, 12 blocks): the start whose first step
    ended better was the start whose last step ended better in 10 blocks (the other two lost
    0.0007 and 0.0015); starting every block from the coarse field lost up to 0.02 in blocks that
    a local affine fits better.

    An affine first step with several levels runs its first level from both starts and its other
    levels from the chosen start only (one row, :meth:`_StepRunner.go_on`). Measured with the
    default steps (levels shrink 4, then 2), same run: real pair Pearson 0.8735 -> 0.8725, wall
    162 -> 139 s; tutorial and phantom known-truth errors unchanged within 0.0006 voxel.
    """
    first, rest = _split_levels(call)
    for run in runs:
        run.step(0, first)
    valid = np.isfinite(runs[0].current) & np.isfinite(runs[1].current)
    if compare is not None:
        valid &= runs[0].check_compare
    score = [pearson_arrays(runs[0].check_fixed, np.nan_to_num(r.current), valid) for r in runs]
    run = runs[1] if score[1] > score[0] else runs[0]  # NaN compares False: the static start
    if rest is not None:
        run.go_on(0, rest)
    return run


def _split_levels(call: Any) -> tuple[Any, Any]:
    """``(first, rest)``: an affine step of several given levels as its first level and the
    others (``rest`` None for any other step, or one with its own ``smooth_sigmas``).

    Examples
    --------
    >>> from lazyreg.registration.steps import parse_steps
    >>> first, rest = _split_levels(parse_steps([("affine", {"shrink_factors": (4, 2)})])[0])
    >>> first.options, rest.options
    ({'shrink_factors': (4,)}, {'shrink_factors': (2,)})
    >>> _split_levels(parse_steps(["demons"])[0])[1] is None
    True
    """
    factors = call.options.get("shrink_factors")
    if call.step.returns != "affine" or factors is None or len(factors) < 2 or call.options.get("smooth_sigmas") is not None:
        return call, None
    return (StepCall(call.step, dict(call.options, shrink_factors=tuple(factors[:1]))),
            StepCall(call.step, dict(call.options, shrink_factors=tuple(factors[1:]))))


class _StepRunner:
    """Runs a block's steps one at a time; a step's result is kept only if it raised the block's
    Pearson correlation (on the voxels of the check grid, every :data:`CHECK_STRIDE`-th, that both
    the kept and the new transform map inside the block), so each step starts from the best
    result so far."""

    def __init__(self, task: BlockTask, fixed: np.ndarray, moving: np.ndarray, fm, mm, compare) -> None:
        self.task, self.fixed, self.moving, self.compare = task, fixed, moving, compare
        g = task.region
        self.images = (image(fixed, g.spacing, g.origin), image(moving, g.spacing, g.origin))
        self.masks = (fm, mm)
        self.matrix, self.field = np.eye(4), None
        self.coarse_start = False  # whether ``moving`` went through the coarse field
        # results are checked on every CHECK_STRIDE-th voxel (the check grid)
        self.check_fixed, self.check_compare = _checked(fixed), _checked(compare)
        self.check_grid = Grid(self.check_fixed.shape, tuple(CHECK_STRIDE * s for s in g.spacing), g.origin)
        self.current = _checked(moving)  # moving warped by the kept transform, on the check grid (NaN outside)
        self.before = self.best = None
        self.rows: list[dict] = []
        self.inliers = None

    def step(self, i: int, call: Any) -> None:
        """Run step ``i`` and check it; its row's ``peak_mib`` covers both."""
        with measure_peak() as peak:
            self._step(i, call)
        self.rows[-1].update(peak.figures())

    def go_on(self, i: int, call: Any) -> None:
        """Run the rest of step ``i`` (its later levels, as ``call``) from the kept transform and
        fold it into step ``i``'s row: seconds and check summed, levels numbered on, kept if
        either part was kept, the largest peak."""
        part1 = self.rows[-1]
        self.step(i, call)
        part2 = self.rows.pop()
        p1, p2 = part1.get("profile") or {}, part2.get("profile") or {}
        n = sum(k.startswith("level ") for k in p1)
        profile = {k: v for k, v in p1.items() if k not in ("other", "check")}
        for k, v in p2.items():
            if k.startswith("level "):
                num, _, tail = k[len("level "):].partition(" ")
                profile[f"level {int(num) + n}" + (f" {tail}" if tail else "")] = v
        for k in ("other", "check"):
            if k in p1 or k in p2:
                profile[k] = round(p1.get(k, 0.0) + p2.get(k, 0.0), 3)
        kept = bool(part1["kept"] or part2["kept"])
        part1.update(
            seconds=round((part1["seconds"] or 0.0) + (part2["seconds"] or 0.0), 3),
            metric=part2["metric"] if part2["metric"] is not None else part1["metric"],
            kept=kept, reason=None if kept else (part2["reason"] or part1["reason"]), profile=profile,
            **{k: max((r[k] for r in (part1, part2) if r.get(k) is not None), default=None) for k in ("peak_mib", "peak_rss_mib")},
        )

    def _step(self, i: int, call: Any) -> None:
        t0 = time.perf_counter()
        row = {"step": call.name, "seconds": None, "metric": None, "kept": False, "reason": None, "profile": None,
               "peak_mib": None, "peak_rss_mib": None}
        if call.step.returns == "field":
            row.update(field_scale=None, det_min=None)
        self.rows.append(row)
        try:
            state = run_steps(
                [call], *self.images, fixed_mask=self.masks[0], moving_mask=self.masks[1], initial=self.matrix,
                initial_field=None if self.field is None else DisplacementField.from_array(
                    self.field[0], self.field[1].spacing, self.field[1].origin),
                seed=self.task.seed + i, field_grid=self.task.field_grid, threads=1,
            )
        except (LazyregError, RuntimeError, ValueError, np.linalg.LinAlgError) as e:
            row["reason"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            row["seconds"] = round(time.perf_counter() - t0, 3)
            return
        rep = state["reports"][0]
        row["profile"] = step_profile(rep)
        if rep.get("inliers") is not None:
            self.inliers = rep["inliers"]
        if rep.get("intensity_map"):
            row["intensity_map"] = rep["intensity_map"]  # the demons' gain and offset in this block
        matrix = np.asarray(state["affine"].matrix, dtype=float)
        field = None if state["field"] is None else (np.asarray(state["field"].values, dtype=np.float32), self.task.field_grid)
        row["seconds"] = round(time.perf_counter() - t0, 3)
        if not np.all(np.isfinite(matrix)) or (field is not None and not np.all(np.isfinite(field[0]))):
            row["reason"] = "the registration returned NaN or infinite values"
            return
        if field is not None:
            values, row["field_scale"], row["det_min"] = regular_field(field[0], field[1])
            field = (values, field[1])
        warped = _warped(self.moving, self.task.region, matrix, field, self.check_grid)
        valid = np.isfinite(warped) & np.isfinite(self.current)
        if self.compare is not None:
            valid &= self.check_compare
        before = _figure(pearson_arrays(self.check_fixed, np.nan_to_num(self.current), valid))
        after = _figure(pearson_arrays(self.check_fixed, np.nan_to_num(warped), valid))
        row["profile"]["check"] = round(time.perf_counter() - t0 - row["seconds"], 3)
        row["metric"] = after
        if before is None or after is None:
            row["reason"] = "the result maps (almost) the whole block outside its moving region"
            return
        if self.before is None:
            self.before = before
        if after <= before:
            row["reason"] = f"Pearson {before:.3f} -> {after:.3f}: not kept"
            return
        row["kept"] = True
        self.matrix, self.field, self.current, self.best = matrix, field, warped, after


def report_rows(*results: dict) -> list[dict]:
    """The report rows of block results (their transforms dropped).

    Examples
    --------
    >>> row = dict.fromkeys(REPORT_KEYS, None) | {"index": (0, 0, 0), "status": "ok", "matrix": None}
    >>> report_rows(row)[0]["status"]
    'ok'
    """
    rows = [{k: r.get(k) for k in REPORT_KEYS} for r in results]
    if rows and not any(r["status"] in ("ok", "unchanged") for r in rows):
        log.warning(
            "align_piecewise: no block was aligned (%s): the field is zero; for sparse samples lower "
            "foreground_fraction or pass fixed_mask",
            ", ".join(f"{n} {k}" for k, n in sorted(Counter(r["status"] for r in rows).items())),
        )
    return rows
