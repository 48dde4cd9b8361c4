"""``lazyreg align-series``: rounds registered to one fixed round (or chained), one folder each, one report."""

import json

import numpy as np
import pytest

import lazyreg
from lazyreg.cli import main
from lazyreg.testing import assert_transforms_allclose

SHAPE, SPACING = (24, 48, 48), (2.0, 1.0, 1.0)
CENTRE = tuple((n - 1) * s / 2 for n, s in zip(SHAPE, SPACING))


def _truth(k):
    return lazyreg.Affine.from_parameters(rotation=(0.0, 0.0, 1.5 * k), translation=(1.0 * k, -1.0 * k, 1.5 * k), center=CENTRE)


@pytest.fixture(scope="module")
def rounds(tmp_path_factory):
    d = tmp_path_factory.mktemp("series")
    for k in (1, 2):
        fixed, moving, _ = lazyreg.data.synthetic_pair(SHAPE, SPACING, matrix=_truth(k).matrix, seed=2)
        lazyreg.to_zarr(moving, d / f"round{k + 1}.ome.zarr")
    lazyreg.to_zarr(fixed, d / "round1.ome.zarr")
    return d


@pytest.mark.parametrize("chain", [False, True])
def test_align_series_writes_a_folder_per_round_and_one_report(rounds, tmp_path, capsys, chain):
    out = tmp_path / "out"
    argv = ["align-series", str(rounds / "round1.ome.zarr"), str(rounds / "round2.ome.zarr"), str(rounds / "round3.ome.zarr"),
            "-o", str(out), "--steps", "affine", "--scheduler", "threads"] + (["--chain"] if chain else [])
    assert main(argv) == 0, capsys.readouterr().err
    stdout = capsys.readouterr().out
    assert "registered 2 rounds" in stdout and "round3" in stdout
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "align-series"
    assert [(r["round"], r["kind"], r["step"]) for r in report["table"]] == [("round2", "step", "affine"), ("round3", "step", "affine")]
    r3 = report["rounds"]["round3"]
    assert r3["reference"] == ("round2" if chain else "fixed")
    assert r3["transforms"] == (["round3/affine.txt", "round2/affine.txt"] if chain else ["round3/affine.txt"])
    g = lazyreg.Grid(SHAPE, SPACING)
    for k, name in ((1, "round2"), (2, "round3")):
        ts = [lazyreg.load_transform(out / f) for f in report["rounds"][name]["transforms"]]
        # the files, in the report's order, map fixed points into the round (chained: composed)
        assert_transforms_allclose(ts, [_truth(k)], grid=g, atol=0.5, step=4)
        assert report["rounds"][name]["pearson_after"] > 0.9
        assert lazyreg.open_image(out / name / "aligned.ome.zarr").shape == SHAPE


def test_align_series_arguments_are_checked_before_anything_runs(rounds, tmp_path, capsys):
    base = ["align-series", str(rounds / "round1.ome.zarr"), str(rounds / "round2.ome.zarr"), "-o", str(tmp_path / "o")]
    assert main(base + ["--blocksize", "32"]) == 2
    assert "--blocksize applies with --piecewise" in capsys.readouterr().err
    assert main(base + ["--quality", "fast"]) == 2
    assert "--quality applies with --piecewise" in capsys.readouterr().err
    assert main(base + ["--steps", "affine,afine"]) == 2
    assert "unknown step 'afine'" in capsys.readouterr().err
    assert main(base[:2] + ["-o", str(tmp_path / "o")]) == 2  # no MOVING
    assert not (tmp_path / "o").exists()


def test_info_and_apply_take_a_multichannel_store(tmp_path, capsys):
    import xarray as xr

    f = lazyreg.image(np.arange(8 * 16 * 16, dtype=np.uint16).reshape(8, 16, 16), (2.0, 1.0, 1.0))
    m = xr.DataArray(np.stack([f.values, f.values // 2]), dims=("c", "z", "y", "x"), coords={"c": ["dapi", "gfp"], **f.coords}, attrs=f.attrs)
    lazyreg.to_zarr(f, tmp_path / "f.ome.zarr")
    lazyreg.to_zarr(m, tmp_path / "m.ome.zarr")
    assert main(["info", str(tmp_path / "m.ome.zarr")]) == 0
    out = capsys.readouterr().out
    assert "('c', 'z', 'y', 'x')" in out and "['dapi', 'gfp']" in out
    lazyreg.save_transform(lazyreg.Affine.from_translation((0.0, 0.0, 1.0)), tmp_path / "a.txt")
    argv = ["apply", str(tmp_path / "f.ome.zarr"), str(tmp_path / "m.ome.zarr"), "-t", str(tmp_path / "a.txt"),
            "-o", str(tmp_path / "o.ome.zarr"), "--scheduler", "threads"]
    assert main(argv) == 0
    got = lazyreg.open_image(tmp_path / "o.ome.zarr")
    assert got.dims == ("c", "z", "y", "x") and list(got.c.values) == ["dapi", "gfp"]
    np.testing.assert_array_equal(got.sel(c="gfp").values[:, :, :-1], m.sel(c="gfp").values[:, :, 1:])


def test_align_series_piecewise_quality_chooses_the_block_steps(rounds, tmp_path):
    out = tmp_path / "out"
    argv = ["align-series", str(rounds / "round1.ome.zarr"), str(rounds / "round2.ome.zarr"), "-o", str(out),
            "--steps", "affine", "--piecewise", "--quality", "fast", "--blocksize", "24", "--no-image", "--scheduler", "threads"]
    assert main(argv) == 0
    report = json.loads((out / "report.json").read_text())
    blocks = [r for r in report["table"] if r["kind"] == "block"]
    assert len(blocks) == 4 and all([s["step"] for s in b["steps"] or []] in ([], ["demons"]) for b in blocks)
    assert any(b["steps"] for b in blocks)
    assert (out / "round2" / "field.ome.zarr").exists()
