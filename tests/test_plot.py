"""Tests for lazyreg.plot: figures are written, not blank, lazy inputs read only their mid-planes."""

from __future__ import annotations

import importlib
import sys

import dask.array as da
import numpy as np
import pytest

import lazyreg
import lazyreg.data
from lazyreg import LazyregError
from lazyreg.testing import counting_image

pytest.importorskip("matplotlib")
import matplotlib.image  # noqa: E402

from lazyreg import plot  # noqa: E402

SHAPE = (16, 32, 32)
SPACING = (2.0, 1.0, 1.0)


@pytest.fixture(scope="module")
def pair():
    fixed, moving, _ = lazyreg.data.synthetic_pair(SHAPE, SPACING, seed=2)
    return fixed, moving


@pytest.fixture(scope="module")
def field():
    zz, yy, xx = np.meshgrid(*[np.arange(n, dtype=float) for n in SHAPE], indexing="ij")
    d = np.stack([np.cos(xx / 6), np.zeros_like(xx), 3 * np.sin(yy / 5)], axis=-1)
    jac = lazyreg.image(1.0 + 0.3 * np.sin(yy / 5) * np.cos(xx / 4), SPACING)
    return lazyreg.DisplacementField.from_array(d, SPACING), jac


def _report(nz=3, ny=4, nx=5):
    rng = np.random.default_rng(0)
    out = []
    for idx in np.ndindex(nz, ny, nx):
        status = ("ok", "ok", "unchanged", "skipped", "failed")[int(rng.integers(5))]
        before = float(rng.uniform(0, 0.5)) if status in ("ok", "unchanged") else None
        out.append(
            {
                "index": idx,
                "status": status,
                "reason": {"ok": None, "unchanged": "no step improved it", "skipped": "empty block", "failed": "optimizer diverged"}[status],
                "metric_before": before,
                "metric_after": before if status == "unchanged" else None if before is None else before + float(rng.normal(0.2, 0.2)),
            }
        )
    return out


def _panels(fig):
    """The block-row panels of a block map (not its colorbar), in order."""
    return [ax for ax in fig.axes if ax.get_title().startswith("z block-row")]


def _pixel(fig, ax, x, y):
    """RGB (0-1) of the rendered figure at data point (x, y) of ``ax``."""
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    px, py = ax.transData.transform((x, y))
    return rgba[int(round(rgba.shape[0] - py)), int(round(px)), :3] / 255.0


def _assert_png_not_blank(path):
    png = matplotlib.image.imread(str(path))[..., :3]
    assert png.shape[0] > 100 and png.shape[1] > 100
    assert png.std() > 0.1, "the figure is (nearly) uniform"
    # plenty of pixels are neither white background nor text: the data were drawn
    inked = (png.max(axis=-1) < 0.9).mean()
    assert inked > 0.05, f"only {inked:.1%} of the pixels carry data"


def _drawn_rgb(fig):
    """The RGB pixels drawn on every axes of ``fig``, one row per pixel."""
    return np.concatenate([ax.get_images()[0].get_array().reshape(-1, 3) for ax in fig.axes])


def _assert_read_only_mid_planes(log, shape):
    """Every region in ``log`` (a ReadLog) was read once and crosses a mid-plane of ``shape``."""
    mid = [n // 2 for n in shape]
    for region in log.reads:
        assert any(s.start <= m < s.stop for s, m in zip(region, mid)), f"read {region} that no mid-plane crosses"
    assert len(set(map(str, log.reads))) == len(log.reads), "a region was read twice"


# -- the figures -----------------------------------------------------------------------------
def test_orthoslices_physical_extent_and_units():
    img = lazyreg.data.phantom(SHAPE, spacing=(3.0, 1.0, 0.5), origin=(10.0, -5.0, 2.0), seed=1)
    img.attrs["units"] = "nanometer"
    fig = plot.orthoslices(img, title="phantom")
    zplane, yplane, xplane = fig.axes[:3]
    # voxel edges: origin - spacing / 2 to last centre + spacing / 2; rows (y, z) go down
    np.testing.assert_allclose(zplane.get_images()[0].get_extent(), [1.75, 17.75, 26.5, -5.5])
    np.testing.assert_allclose(yplane.get_images()[0].get_extent(), [1.75, 17.75, 56.5, 8.5])
    np.testing.assert_allclose(xplane.get_images()[0].get_extent(), [-5.5, 26.5, 56.5, 8.5])
    assert zplane.get_xlabel() == "x (nm)" and zplane.get_ylabel() == "y (nm)"
    assert xplane.get_xlabel() == "y (nm)" and xplane.get_ylabel() == "z (nm)"
    np.testing.assert_array_equal(zplane.get_images()[0].get_array(), img.values[8])
    np.testing.assert_array_equal(xplane.get_images()[0].get_array(), img.values[:, :, 16])


def test_orthoslices_clim():
    img = lazyreg.data.phantom(SHAPE, SPACING, seed=1)
    fig = plot.orthoslices(img, clim=(0, 100))
    assert fig.axes[0].get_images()[0].get_clim() == (0, 100)
    with pytest.raises(LazyregError, match="clim"):
        plot.orthoslices(img, clim=(5, 1))


def test_overlay_aligned_is_grey_misaligned_is_coloured(pair, tmp_path):
    fixed, moving = pair
    aligned, misaligned = tmp_path / "aligned.png", tmp_path / "misaligned.png"
    fig_a = plot.overlay(fixed, fixed)
    aligned.write_bytes(fig_a._repr_png_())  # what Jupyter shows
    fig_m = plot.overlay(fixed, moving, path=misaligned)
    _assert_png_not_blank(aligned)
    _assert_png_not_blank(misaligned)
    with pytest.raises(LazyregError, match="misaligned.png.*overwrite=True"):
        plot.overlay(fixed, moving, path=misaligned)
    # the drawn RGB arrays: magenta (R = B = fixed) and green (G = moving) coincide when aligned
    rgb_a, rgb_m = _drawn_rgb(fig_a), _drawn_rgb(fig_m)
    assert np.array_equal(rgb_a[:, 0], rgb_a[:, 1]) and np.array_equal(rgb_a[:, 0], rgb_a[:, 2])
    assert np.abs(rgb_m[:, 0] - rgb_m[:, 1]).max() > 0.5

    def colourfulness(path):
        png = matplotlib.image.imread(str(path))[..., :3]
        lit = (png.max(axis=-1) > 0.15) & (png.min(axis=-1) < 0.95)  # not dark, not background
        return np.abs(png[..., 0] - png[..., 1])[lit].mean()

    assert colourfulness(misaligned) > 3 * colourfulness(aligned) + 0.05


def test_overlay_normalises_each_channel(pair):
    fixed, _ = pair
    dim = fixed.astype(np.float32) * 0.01  # same structure, 100x darker: still grey
    fig = plot.overlay(fixed, dim)
    rgb = _drawn_rgb(fig)
    np.testing.assert_allclose(rgb[:, 0], rgb[:, 1], atol=1e-3)


def test_checkerboard_alternates_fixed_and_moving():
    bright = lazyreg.image(np.random.default_rng(0).uniform(1, 2, SHAPE), SPACING)
    dark = lazyreg.image(np.zeros(SHAPE), SPACING)
    fig = plot.checkerboard(bright, dark, squares=4)

    def from_fixed(plane, tile):
        values = np.asarray(plane)[tile]
        return (values > 0).mean() > 0.9 if (values > 0).any() else False

    zplane = fig.axes[0].get_images()[0].get_array()  # 32 x 32 um: squares of 8 um = 8 voxels
    assert from_fixed(zplane, np.s_[:8, :8]) and from_fixed(zplane, np.s_[8:16, 8:16])
    assert not from_fixed(zplane, np.s_[:8, 8:16]) and not from_fixed(zplane, np.s_[8:16, :8])
    yplane = fig.axes[1].get_images()[0].get_array()  # z: 32 um = 16 voxels of 2 um: 4 per square
    assert from_fixed(yplane, np.s_[:4, :8]) and not from_fixed(yplane, np.s_[4:8, :8])
    assert not from_fixed(yplane, np.s_[:4, 8:16]) and from_fixed(yplane, np.s_[4:8, 8:16])
    with pytest.raises(LazyregError, match="squares"):
        plot.checkerboard(bright, dark, squares=0)


def test_block_map_colours_status_and_metric_change():
    from matplotlib.colors import to_rgba

    report = _report()
    report = [b for b in report if b["index"] != (1, 0, 0)]  # a block missing from the report
    fig = plot.block_map(report)
    ax = _panels(fig)[1]  # every z row is drawn (3 rows): the panel of row 1
    status_img, change_img = ax.get_images()
    status, change = np.asarray(status_img.get_array()), change_img.get_array()
    assert status.shape[:2] == change.shape == (4, 5)
    row = {b["index"][1:]: b for b in report if b["index"][0] == 1}
    colours = {st: to_rgba(np.asarray(status[iy, ix])) for (iy, ix), b in row.items() if (st := b["status"]) != "ok"}
    for (iy, ix), b in row.items():
        if b["status"] == "ok":
            assert change[iy, ix] == pytest.approx(b["metric_after"] - b["metric_before"])
        else:  # unchanged blocks (gain 0) are not drawn on the colormap of the ok blocks
            assert np.ma.is_masked(change[iy, ix]) or np.isnan(change[iy, ix])
            assert to_rgba(np.asarray(status[iy, ix])) == colours[b["status"]]  # one colour per status
        if b["status"] == "failed":
            np.testing.assert_allclose(status[iy, ix], [0, 0, 0, 1])
    assert len(set(colours.values())) == len(colours) == 3, "unchanged, skipped and failed look alike"
    np.testing.assert_allclose(status[0, 0], [1, 1, 1, 1])  # not in the report: white
    texts = [t.get_text() for t in ax.texts]
    assert "unch" in texts and "skip" in texts
    assert ax.get_title().startswith("z block-row 1 of 3")
    assert _panels(plot.block_map(report, iz=0))[0].get_title().startswith("z block-row 0 of 3")


def test_block_map_draws_one_panel_per_z_row():
    for nz in (1, 2, 5, 8):
        fig = plot.block_map(_report(nz, 3, 4))
        panels = _panels(fig)
        assert len(panels) == nz
        assert [ax.get_title().split("\n")[0] for ax in panels] == [f"z block-row {z} of {nz}" for z in range(nz)]
        assert all(len(ax.get_images()) == 2 for ax in panels)
    # iz= still draws one row
    assert [ax.get_title().split("\n")[0] for ax in _panels(plot.block_map(_report(5, 3, 4), iz=3))] == ["z block-row 3 of 5"]


def test_block_map_with_many_rows_draws_the_worst_one():
    def rows(bad: dict[int, tuple[int, int]], nz=12, ny=3, nx=4):
        """All ok but ``bad[z] = (failed, unchanged)`` blocks in row z."""
        out = []
        for iz, iy, ix in np.ndindex(nz, ny, nx):
            f, u = bad.get(iz, (0, 0))
            k = iy * nx + ix
            status = "failed" if k < f else "unchanged" if k < f + u else "ok"
            out.append({"index": (iz, iy, ix), "status": status, "reason": "x", "metric_before": 0.5, "metric_after": 0.6})
        return out

    for bad, worst in [({3: (2, 0), 7: (1, 3), 9: (0, 2)}, 7), ({2: (0, 4), 10: (2, 2)}, 10), ({}, 6)]:
        (panel,) = _panels(plot.block_map(rows(bad)))
        title = panel.get_title()
        assert title.startswith(f"z block-row {worst} of 12: the "), (bad, title)
        assert ("most failed/unchanged" in title) == bool(bad)
        failed, unchanged = bad.get(worst, (0, 0))
        assert f"{failed} failed" in title or not failed
        assert f"{unchanged} unchanged" in title or not unchanged
    assert len(_panels(plot.block_map(rows({}, nz=9)))) == 1
    assert _panels(plot.block_map(rows({7: (3, 0)}), iz=2))[0].get_title() .startswith("z block-row 2 of 12\n")


def test_block_map_marks_failed_blocks_with_a_cross():
    report = _report(2, 4, 5)
    fig = plot.block_map(report)
    for iz, ax in enumerate(_panels(fig)):
        failed = {b["index"][:0:-1] for b in report if b["index"][0] == iz and b["status"] == "failed"}
        crosses = [ln for ln in ax.get_lines() if ln.get_gid() == "failed"]
        if not failed:
            assert not crosses
            continue
        (cross,) = crosses
        xs, ys = np.asarray(cross.get_xdata(), float), np.asarray(cross.get_ydata(), float)
        # two strokes per failed block, crossing at its centre
        centres = {(round(float(x)), round(float(y))) for x, y in zip(xs[np.isfinite(xs)], ys[np.isfinite(ys)])}
        assert centres == failed and np.isfinite(xs).sum() == 4 * len(failed)
        # rendered: the centre carries the (red) mark; the rest of the square is black
        ix, iy = sorted(failed)[0]
        centre, side = _pixel(fig, ax, ix, iy), _pixel(fig, ax, ix + 0.3, iy)
        assert centre[0] > 0.8 and centre[1:].max() < 0.4, centre
        assert side.max() < 0.15, side
    unchanged = next(b["index"] for b in report if b["status"] == "unchanged")
    ax = _panels(fig)[unchanged[0]]
    colour = _pixel(fig, ax, unchanged[2] + 0.3, unchanged[1] + 0.35)  # clear of the text
    assert colour[0] > 0.8 and colour[1] > 0.7 and colour[2] < 0.5, colour  # yellow: not grey, not on RdBu


def test_block_map_text_rounds_the_metric_change():
    report = _report(1, 4, 5)
    ax = _panels(plot.block_map(report))[0]
    texts = {(round(t.get_position()[0]), round(t.get_position()[1])): t.get_text() for t in ax.texts}
    for b in report:
        _, iy, ix = b["index"]
        expected = {"unchanged": "unch", "skipped": "skip"}.get(b["status"])
        if b["status"] == "ok":
            expected = f"{b['metric_after'] - b['metric_before']:+.3f}"
        if b["status"] == "failed":
            assert (ix, iy) not in texts  # the cross says it
        else:
            assert texts[ix, iy] == expected
    # small squares: 2 decimals, never more
    many = [t.get_text() for ax in _panels(plot.block_map(_report(2, 30, 30), annotate=True)) for t in ax.texts]
    assert many and all(len(t.split(".")[1]) == 2 for t in many if "." in t)


def test_block_summary_groups_reasons_by_kind():
    from lazyreg.registration.block_report import block_summary

    def row(i, status, reason=None, before=None, after=None, steps=None):
        return {"index": [0, 0, i], "status": status, "reason": reason, "metric_before": before, "metric_after": after, "steps": steps}

    err = "LazyregError: align_threshold: RANSAC found no affine with at least 5 of {} correspondences within {} (best: {}); raise it"
    report = [
        row(0, "ok", before=0.5, after=0.75, steps=[{"step": "ransac", "kept": True}, {"step": "deform", "kept": False}]),
        row(1, "ok", before=0.25, after=0.5, steps=[{"step": "ransac", "kept": True}, {"step": "deform", "kept": True}]),
        row(2, "unchanged", "no step improved the block's correlation; it keeps the static transforms", 0.9, 0.9),
        row(3, "unchanged", "no step improved the block's correlation; it keeps the static transforms", 0.1, 0.1),
    ]
    report += [row(4 + k, "skipped", f"foreground {p}% of the block is below foreground_fraction 10%") for k, p in enumerate((3, 7, 0))]
    report += [row(7, "skipped", "only 41% of the block maps inside the moving volume")]
    report += [
        row(8 + k, "failed", err.format(n, thr, best), steps=[{"step": "ransac", "kept": False, "reason": err.format(n, thr, best)}])
        for k, (n, thr, best) in enumerate([(12, 2.5, 3), (40, 0.123456789, 4)])
    ]
    report += [row(10, "failed", "RuntimeError: Exception thrown in SimpleITK: ITK ERROR: 1234 samples map outside")]
    s = block_summary(report)
    assert s["blocks"] == 11
    assert s["by_status"] == {"ok": 2, "unchanged": 2, "skipped": 4, "failed": 3}
    groups = {(g["status"], g["kind"]): g["count"] for g in s["by_kind"]}
    assert groups == {
        ("unchanged", "no step improved the block's correlation"): 2,
        ("skipped", "foreground …% of the block is below foreground_fraction …%"): 3,
        ("skipped", "only …% of the block maps inside the moving volume"): 1,
        ("failed", "ransac: align_threshold: RANSAC found no affine with at least … of … correspondences within … (best: …)"): 2,
        ("failed", "RuntimeError: Exception thrown in SimpleITK: ITK ERROR: … samples map outside"): 1,
    }
    fg = next(g for g in s["by_kind"] if g["kind"].startswith("foreground"))
    assert fg["blocks"] == [[0, 0, 4], [0, 0, 5], [0, 0, 6]] and fg["example"] == report[4]["reason"]
    assert s["mean_gain"] == pytest.approx(0.25) and s["gain_blocks"] == 2 and s["unchanged"] == 2
    assert {k: (t["ran"], t["kept"]) for k, t in s["steps"].items()} == {"ransac": (4, 2), "deform": (2, 1)}
    assert s["steps"]["ransac"]["not_kept"] == {"align_threshold: RANSAC found no affine with at least … of … correspondences within … (best: …)": 2}
    # the same from JSON (index lists), and no ok block: no gain
    import json

    assert block_summary(json.loads(json.dumps(report[2:])))["mean_gain"] is None


def test_summary_lines_round_floats_and_count_the_gain_over_ok_blocks():
    import re

    from lazyreg.registration.block_report import block_summary, summary_lines

    report = [
        {"index": (0, 0, 0), "status": "ok", "reason": None, "metric_before": 0.1234567, "metric_after": 0.87654321},
        {"index": (0, 0, 1), "status": "ok", "reason": None, "metric_before": 0.5, "metric_after": 0.60000001},
        {"index": (0, 0, 2), "status": "unchanged", "reason": "no step improved it", "metric_before": 0.7, "metric_after": 0.7},
        {"index": (0, 0, 3), "status": "failed", "reason": "ValueError: Pearson 0.88549999 -> 0.87981234567 and 1.5"},
    ]
    lines = summary_lines(block_summary(report))
    text = "\n".join(lines)
    assert not re.search(r"\d\.\d{4,}", text), text
    assert lines[0] == "4 blocks: 2 ok, 1 unchanged, 1 failed"
    assert "  1 failed: ValueError: Pearson … -> … and … (block (0, 0, 3))" in lines
    gain = (0.87654321 - 0.1234567 + 0.10000001) / 2
    assert f"mean block Pearson gain {gain:+.3f} over the 2 ok blocks (the 1 unchanged block: gain 0, not counted)" in lines


def test_block_map_accepts_a_field_with_a_report_and_json_indices():
    report = [dict(b, index=list(b["index"])) for b in _report(1, 2, 2)]
    D = lazyreg.DisplacementField.from_array(np.zeros((2, 2, 2, 3)), 1.0, report=report)
    assert plot.block_map(D).axes[0].get_xlabel() == "x block"


def test_field_slices_magnitude_and_jacobian(field):
    D, jac = field
    fig = plot.field_slices(D, jacobian=jac, title="field")
    assert len(fig.axes) == 8  # 2 x 3 panels and 2 colorbars
    mag = np.linalg.norm(D.values[8], axis=-1)
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), mag)
    jimg = fig.axes[3].get_images()[0]
    assert jimg.norm.vcenter == 1.0
    np.testing.assert_allclose(jimg.get_array(), jac.values[8])
    # a DataArray with a trailing vector dim works too; without a Jacobian there is one row
    assert len(plot.field_slices(D.data).axes) == 4


def test_figures_are_outside_pyplot(pair):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = plot.orthoslices(pair[0])
    assert plt.get_fignums() == before
    assert callable(fig._repr_png_)  # Jupyter shows it (rendered in the overlay test)


# -- laziness --------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["orthoslices", "overlay", "checkerboard"])
def test_lazy_images_read_only_mid_plane_chunks(pair, name):
    fixed, moving = pair
    lazy_fixed, fixed_log = counting_image(fixed, chunks=(4, 8, 8))
    lazy_moving, moving_log = counting_image(moving, chunks=(4, 8, 8))
    if name == "orthoslices":
        fig = plot.orthoslices(lazy_fixed)
        np.testing.assert_array_equal(fig.axes[1].get_images()[0].get_array(), fixed.values[:, 16, :])
    else:
        getattr(plot, name)(lazy_fixed, lazy_moving)
    # 4 x 4 x 4 chunks; the planes cross 3 * 16 - 3 * 4 + 1 = 37 of them, each read at most once
    assert 0 < len(fixed_log.reads) <= 37
    _assert_read_only_mid_planes(fixed_log, SHAPE)
    _assert_read_only_mid_planes(moving_log, SHAPE)
    assert len(moving_log.reads) == (0 if name == "orthoslices" else len(fixed_log.reads))


def test_lazy_field_reads_only_mid_plane_chunks(field):
    D, jac = field
    values = D.values
    mid = [n // 2 for n in values.shape[:3]]

    def block(block_info=None):
        loc = block_info[None]["array-location"]
        assert any(lo <= m < hi for (lo, hi), m in zip(loc[:3], mid)), f"read chunk {loc}"
        return values[tuple(slice(lo, hi) for lo, hi in loc)]

    chunks = da.core.normalize_chunks((4, 8, 8, 3), values.shape)
    lazy = lazyreg.DisplacementField.from_array(da.map_blocks(block, chunks=chunks, dtype=values.dtype), SPACING)
    lazy_jac, jac_log = counting_image(jac, chunks=(4, 8, 8))
    fig = plot.field_slices(lazy, jacobian=lazy_jac)
    np.testing.assert_allclose(fig.axes[0].get_images()[0].get_array(), np.linalg.norm(values[8], axis=-1))
    assert jac_log.reads
    _assert_read_only_mid_planes(jac_log, SHAPE)


# -- output files ----------------------------------------------------------------------------
@pytest.fixture
def builders(pair, field):
    """Each figure function, with valid inputs bound: name -> function(**options)."""
    fixed, moving = pair
    D, jac = field
    return {
        "orthoslices": lambda **kw: plot.orthoslices(fixed, **kw),
        "overlay": lambda **kw: plot.overlay(fixed, moving, **kw),
        "checkerboard": lambda **kw: plot.checkerboard(fixed, moving, **kw),
        "block_map": lambda **kw: plot.block_map(_report(), **kw),
        "field_slices": lambda **kw: plot.field_slices(D, jacobian=jac, **kw),
    }


# (overlay: written and refused in test_overlay_aligned_is_grey_misaligned_is_coloured)
@pytest.mark.parametrize("name", ["orthoslices", "checkerboard", "block_map", "field_slices"])
def test_written_png_is_not_blank_and_existing_file_is_refused(builders, tmp_path, name):
    build = builders[name]
    out = tmp_path / "exists.png"
    out.write_bytes(b"keep me")
    with pytest.raises(LazyregError, match="exists.png.*overwrite=True"):
        build(path=out)
    assert out.read_bytes() == b"keep me"
    build(path=str(out), overwrite=True)
    _assert_png_not_blank(out)


def test_existing_file_is_refused_before_reading_data(pair, tmp_path):
    def explode(block_info=None):
        raise AssertionError("data were read")

    lazy = lazyreg.image(da.map_blocks(explode, chunks=((16,), (32,), (32,)), dtype=np.float32), SPACING)
    out = tmp_path / "exists.png"
    out.touch()
    with pytest.raises(LazyregError, match="overwrite"):
        plot.orthoslices(lazy, path=out)


def test_bad_paths(pair, tmp_path):
    with pytest.raises(LazyregError, match="png"):
        plot.orthoslices(pair[0], path=tmp_path / "figure.pdf")
    with pytest.raises(LazyregError, match="does not exist"):
        plot.orthoslices(pair[0], path=tmp_path / "missing" / "figure.png")


# -- bad inputs ------------------------------------------------------------------------------
def test_bad_images_raise(pair):
    fixed, moving = pair
    with pytest.raises(LazyregError, match="img: dims are .*transpose"):
        plot.orthoslices(fixed.transpose("x", "y", "z"))
    with pytest.raises(LazyregError, match="img: expected an xarray.DataArray"):
        plot.orthoslices(np.zeros(SHAPE))
    with pytest.raises(LazyregError, match="img: expected 3 dims"):
        plot.orthoslices(fixed[0])
    with pytest.raises(LazyregError, match="moving: expected an xarray.DataArray"):
        plot.overlay(fixed, moving.values)
    with pytest.raises(LazyregError, match="title"):
        plot.orthoslices(fixed, title=3)


@pytest.mark.parametrize("name", ["overlay", "checkerboard"])
def test_pairs_on_different_grids_raise(pair, name):
    fixed, moving = pair
    shifted = lazyreg.image(moving.values, SPACING, origin=(0.0, 0.0, 1.0))
    with pytest.raises(LazyregError, match="moving: its grid .* differs from fixed.*apply_transform"):
        getattr(plot, name)(fixed, shifted)
    with pytest.raises(LazyregError, match="differs from fixed"):
        getattr(plot, name)(fixed, moving[:, :, :-1])
    with pytest.raises(LazyregError, match="differs from fixed"):
        getattr(plot, name)(fixed, lazyreg.image(moving.values, (2.0, 1.0, 1.5)))


@pytest.mark.parametrize(
    "change, match",
    [
        ({"status": "done"}, "unknown status 'done'"),
        ({"index": (0, 1)}, "'index' must be 3 non-negative integers"),
        ({"index": (0, -1, 0)}, "'index' must be 3 non-negative integers"),
        ({"metric_after": "high"}, "'metric_after' must be a number or None"),
    ],
)
def test_block_map_bad_entries_raise(change, match):
    report = _report(1, 2, 2)
    report[1] = {**report[1], **change}
    with pytest.raises(LazyregError, match=f"entry 1: {match}"):
        plot.block_map(report)


def test_block_map_bad_reports_raise():
    report = _report(2, 2, 2)
    with pytest.raises(LazyregError, match="empty"):
        plot.block_map([])
    with pytest.raises(LazyregError, match="list of dicts"):
        plot.block_map(report[0])
    with pytest.raises(LazyregError, match="missing key"):
        plot.block_map([{"index": (0, 0, 0)}])
    with pytest.raises(LazyregError, match=r"\(0, 0, 0\) appears more than once"):
        plot.block_map([report[0], report[0]])
    with pytest.raises(LazyregError, match="iz"):
        plot.block_map(report, iz=2)
    with pytest.raises(LazyregError, match="no per-block report"):
        plot.block_map(lazyreg.DisplacementField.from_array(np.zeros((2, 2, 2, 3)), 1.0))


def test_field_slices_bad_inputs_raise(field):
    D, jac = field
    with pytest.raises(LazyregError, match="field: dims"):
        plot.field_slices(D.data.transpose("vector", "z", "y", "x"))
    with pytest.raises(LazyregError, match="jacobian: expected 3 dims"):
        plot.field_slices(D, jacobian=D.data)


def test_missing_matplotlib_is_a_clear_error(pair, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(LazyregError, match=r"needs matplotlib: pip install 'lazyreg\[plot\]'"):
        plot.orthoslices(pair[0])
    # the package and its modules import without matplotlib (the originals come back afterwards)
    for name in [m for m in sys.modules if m == "lazyreg.plot" or m.startswith("lazyreg.plot.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(lazyreg, "plot", plot)
    fresh = importlib.import_module("lazyreg.plot")
    assert {"figures", "images", "fields", "reports"} <= set(vars(fresh))
    assert fresh is not plot
    with pytest.raises(LazyregError, match="needs matplotlib"):
        fresh.block_map(_report(1, 1, 1))
