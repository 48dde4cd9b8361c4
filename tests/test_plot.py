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
        status = ("ok", "ok", "skipped", "failed")[int(rng.integers(4))]
        before = float(rng.uniform(0, 0.5)) if status == "ok" else None
        out.append(
            {
                "index": idx,
                "status": status,
                "reason": {"ok": None, "skipped": "empty block", "failed": "optimizer diverged"}[status],
                "metric_before": before,
                "metric_after": None if before is None else before + float(rng.normal(0.2, 0.2)),
            }
        )
    return out


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
    report = _report()
    report = [b for b in report if b["index"] != (1, 0, 0)]  # a block missing from the report
    fig = plot.block_map(report)
    ax = fig.axes[0]
    status_img, change_img = ax.get_images()
    status, change = np.asarray(status_img.get_array()), change_img.get_array()
    assert status.shape[:2] == change.shape == (4, 5)
    row = {b["index"][1:]: b for b in report if b["index"][0] == 1}
    for (iy, ix), b in row.items():
        if b["status"] == "ok":
            assert change[iy, ix] == pytest.approx(b["metric_after"] - b["metric_before"])
        else:
            assert np.ma.is_masked(change[iy, ix]) or np.isnan(change[iy, ix])
        if b["status"] == "failed":
            np.testing.assert_allclose(status[iy, ix], [0, 0, 0, 1])
    np.testing.assert_allclose(status[0, 0], [1, 1, 1, 1])  # not in the report: white
    texts = [t.get_text() for t in ax.texts]
    assert "fail" in texts and "skip" in texts
    assert "z block-row 1 of 3" in ax.get_title()
    assert plot.block_map(report, iz=0).axes[0].get_title().startswith("z block-row 0 of 3")


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
