"""The command line, end to end through subprocess on small synthetic data.

Each command runs once through ``python -m lazyreg`` (a real process: exit codes, stdout, stderr,
files); variations that fail before any computation (bad paths, bad step files, refused outputs)
run in-process through :func:`lazyreg.cli.main`, which is what the console script calls.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

import lazyreg
from lazyreg.cli import main

SHAPE = (24, 48, 48)
SPACING = (2.0, 1.0, 1.0)


def run(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "lazyreg", *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def one_line(stderr: str) -> bool:
    return stderr.strip() != "" and stderr.strip().count("\n") == 0 and "Traceback" not in stderr


def not_blank(png: Path) -> bool:
    from matplotlib.image import imread

    img = imread(png)
    return img.ndim == 3 and float(img[..., :3].std()) > 0.01


@pytest.fixture(scope="module")
def pair(tmp_path_factory) -> SimpleNamespace:
    """A warped pair on disk (OME-Zarr), its true affine (text) and deformation (OME-Zarr), step files."""
    d = tmp_path_factory.mktemp("cli")
    fixed, moving, A, disp = lazyreg.data.warped_pair(SHAPE, SPACING, seed=1, amplitude=3.0)
    lazyreg.to_zarr(fixed, d / "fix.ome.zarr", chunks=(24, 24, 24))
    lazyreg.to_zarr(moving, d / "mov.ome.zarr", chunks=(24, 24, 24))
    lazyreg.save_transform(lazyreg.Affine(A), d / "affine.txt")
    field = lazyreg.DisplacementField.from_array(disp.astype(np.float32), SPACING)
    lazyreg.save_transform(field, d / "field.ome.zarr")
    (d / "steps.json").write_text(json.dumps([["ransac", {"blob_sizes": [2, 8]}], ["affine", {}]]))
    (d / "steps.yaml").write_text("# global steps\n- ransac: {blob_sizes: [2, 8]}\n- affine\n")
    (d / "blocks.json").write_text(json.dumps([["affine", {}]]))
    return SimpleNamespace(
        dir=d, fix=d / "fix.ome.zarr", mov=d / "mov.ome.zarr", affine=d / "affine.txt", field=d / "field.ome.zarr",
        field_values=disp, matrix=A,
    )


# ------------------------------------------------------------------------------- help and info
def test_help_documents_commands_and_conventions(capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    for command in ("info", "align", "align-piecewise", "apply", "invert", "demo"):
        assert command in text
    assert main(["align-piecewise", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("PATH[:GROUP]", "fix.n5:lowres", "--blocksize", "--overlap", "--static", "--field-spacing",
                 "--scheduler auto|local|ADDRESS|threads|synchronous", "--workers", "--threads", "--memory-limit",
                 "--overwrite", "--quiet", "--debug", "tcp://", "T1(T2(x))", "exit codes"):
        assert flag in text, flag
    assert main(["--version"]) == 0
    assert lazyreg.__version__ in capsys.readouterr().out


def test_info_shows_the_grid_chunks_and_size_on_disk(pair, capsys):
    r = run("info", pair.fix)
    assert r.returncode == 0, r.stderr
    for expected in ("('z', 'y', 'x')", "(24, 48, 48)", "uint16", "(2.0, 1.0, 1.0) micrometer", "(0.0, 0.0, 0.0)",
                     "(24, 24, 24)", "on disk"):
        assert expected in r.stdout, expected
    # PATH:GROUP and --group select the same level; --json for scripts
    assert main(["info", f"{pair.fix}:0", "--json"]) == 0
    a = json.loads(capsys.readouterr().out)
    assert main(["info", str(pair.fix), "--group", "0", "--json"]) == 0
    b = json.loads(capsys.readouterr().out)
    assert a == b
    assert a["group"] == "0" and a["shape"] == [24, 48, 48] and a["spacing"] == [2.0, 1.0, 1.0]
    assert a["chunks"] == [24, 24, 24] and a["dims"] == ["z", "y", "x"]
    assert 0 < a["size_on_disk_bytes"] < a["uncompressed_bytes"] and a["files"] == 5  # 0/zarr.json and 2 x 2 chunks


def test_info_on_tutorial_data(tutorial_dir):
    r = run("info", str(tutorial_dir / "fix.n5"), "--group", "lowres")
    assert r.returncode == 0, r.stderr
    assert "(149, 241, 456)" in r.stdout
    assert "(1.68, 1.84, 1.84)" in r.stdout


# ---------------------------------------------------------------------------------------- align
@pytest.mark.slow
def test_align_writes_transforms_image_report_and_pictures(pair, capsys):
    steps = "steps.yaml" if _has_yaml() else "steps.json"
    out = pair.dir / "global"
    r = run("align", pair.fix, pair.mov, "-o", out, "--steps", pair.dir / steps, "--scheduler", "threads")
    assert r.returncode == 0, r.stderr
    # stderr is not a terminal here: a few summary lines, no progress bar
    lines = r.stderr.strip().splitlines()
    assert 2 <= len(lines) <= 6 and "\r" not in r.stderr, r.stderr
    assert lines[0].startswith("dask: threads scheduler") and any(l.startswith("global alignment: ") for l in lines)
    assert "Pearson(fixed, moving) before" in r.stdout

    A = lazyreg.load_transform(out / "affine.txt")
    assert A.allclose(lazyreg.load_transform(out / "affine.tfm"), atol=1e-9)
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "align"
    assert report["steps"] == [["ransac", {"blob_sizes": [2, 8]}], ["affine", {}]]
    (ransac, given), (_, affine) = report["steps_in_effect"]
    assert given["blob_sizes"] == [2, 8] and given["nspots"] == 2000 and affine["metric"] == "correlation"
    assert [s["step"] for s in report["step_reports"]] == ["ransac", "affine"]
    assert np.allclose(report["affine"], np.asarray(A))
    assert report["pearson_after"] > report["pearson_before"] + 0.3
    assert {"lazyreg", "python", "dask", "distributed", "SimpleITK", "numpy"} <= set(report["versions"])
    assert report["versions"]["lazyreg"] == lazyreg.__version__
    assert report["seconds"] > 0 and report["alignment_seconds"] > 0
    assert report["peak_memory"]["bytes"] > 10 * 2**20 and report["peak_memory"]["method"]
    assert report["scheduler"]["kind"] == "threads"
    assert set(report["phases"]) == {"global alignment", "aligned image", "quality control"}
    assert report["parameters"]["fixed"] == str(pair.fix)
    assert report["fixed"]["shape"] == list(SHAPE)
    for name in ("affine.txt", "affine.tfm", "aligned.ome.zarr", "overlay_before.png", "overlay_after.png", "report.json"):
        assert name in report["outputs"] and (out / name).exists(), name
    assert lazyreg.open_image(out / "aligned.ome.zarr").shape == SHAPE
    assert not_blank(out / "overlay_before.png") and not_blank(out / "overlay_after.png")

    # an existing, non-empty OUT is refused before anything runs, and left untouched
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert main(["align", str(pair.fix), str(pair.mov), "-o", str(out), "--steps", "affine", "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "--overwrite" in err
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamps


@pytest.mark.slow
def test_align_piecewise_writes_field_block_report_and_pictures(pair):
    out = pair.dir / "piecewise"
    r = run(
        "align-piecewise", pair.fix, pair.mov, "-o", out, "--steps", pair.dir / "blocks.json", "--static", pair.affine,
        "--blocksize", "24", "--overlap", "0.25", "--foreground-fraction", "0.1", "--scheduler", "threads", "--coarse",
    )
    assert r.returncode == 0, r.stderr
    assert re.search(r"piecewise alignment in [\d.]+ s; 4 blocks: \d+ ok", r.stdout), r.stdout
    assert "mean block Pearson gain" in r.stdout and not re.search(r"\d\.\d{4,}", r.stdout), r.stdout
    field = lazyreg.load_transform(out / "field.ome.zarr")
    # by default the field is written every 2 fixed voxels (covering the fixed grid), not on every voxel
    assert isinstance(field, lazyreg.DisplacementField) and field.grid.spacing == tuple(2 * s for s in SPACING)
    assert field.grid.shape == (13, 25, 25) and field.grid.origin == (0.0, 0.0, 0.0)
    report = json.loads((out / "report.json").read_text())
    assert report["command"] == "align-piecewise" and report["static"] == [str(pair.affine)]
    # every option in effect is recorded, defaults included
    assert report["parameters"]["field_spacing"] == [2 * s for s in SPACING]
    assert report["parameters"]["coarse"] is True  # asked for; left out here: 24 slices are too few for it
    [(name, options)] = report["steps_in_effect"]
    assert name == "affine" and options["metric"] == "correlation" and "shrink_factors" in options
    assert len(report["blocks"]) == 4  # 1 x 2 x 2 blocks of 24 voxels
    # every block ran exactly once, though the field, its report, the image and the checks use them
    assert report["registration_results"]["block"]["computed"] == 4, report["registration_results"]
    assert {b["status"] for b in report["blocks"]} <= {"ok", "unchanged", "skipped", "failed"}
    assert report["block_counts"].get("ok", 0) >= 2
    summary = report["block_summary"]
    assert summary["blocks"] == 4 and sum(summary["by_status"].values()) == 4
    assert sum(g["count"] for g in summary["by_kind"]) == 4 - summary["by_status"]["ok"]
    assert summary["mean_gain"] == report["mean_block_gain"] and summary["gain_blocks"] == summary["by_status"]["ok"]
    assert set(report["jacobian"]) == {"min", "max", "folded_fraction"} and report["jacobian"]["min"] > 0
    # the static affine alone leaves the known deformation; the blocks recover part of it
    assert report["pearson_after"] > report["pearson_before"]
    assert set(report["phases"]) == {"piecewise alignment", "aligned image", "quality control"}
    for name in ("field.ome.zarr", "aligned.ome.zarr", "overlay_before.png", "overlay_after.png", "block_map.png"):
        assert (out / name).exists() and name in report["outputs"], name
    assert not_blank(out / "block_map.png") and not_blank(out / "overlay_after.png")


def test_align_piecewise_quality_chooses_the_block_steps(pair):
    from lazyreg.cli.parser import QUALITY_CHOICES
    from lazyreg.registration.piecewise import QUALITIES

    assert QUALITY_CHOICES == tuple(QUALITIES)
    out = pair.dir / "piecewise_fast"
    common = ("--static", pair.affine, "--blocksize", "24", "--foreground-fraction", "0.1", "--scheduler", "threads")
    r = run("align-piecewise", pair.fix, pair.mov, "-o", out, "--quality", "fast", *common)
    assert r.returncode == 0, r.stderr
    report = json.loads((out / "report.json").read_text())
    assert [name for name, _ in report["steps_in_effect"]] == ["demons"]
    assert report["steps_in_effect"][0][1]["variant"] == "fast_symmetric"
    assert all([s["step"] for s in b["steps"]] == ["demons"] for b in report["blocks"] if b["steps"])
    r = run("align-piecewise", pair.fix, pair.mov, "-o", pair.dir / "both", "--quality", "fast", "--steps", "demons", *common)
    assert r.returncode != 0 and one_line(r.stderr) and "give steps or quality, not both" in r.stderr, r.stderr
    r = run("align-piecewise", pair.fix, pair.mov, "-o", pair.dir / "bad", "--quality", "quick", *common)
    assert r.returncode != 0 and "invalid choice: 'quick'" in r.stderr, r.stderr


def _block_rows() -> list[dict]:
    """A piecewise report: 16 blocks, reasons of a few kinds with varied numbers, long floats."""
    err = "LazyregError: align_threshold: RANSAC found no affine with at least 5 of {} correspondences within {} (best: {})"
    rows = []
    for k, idx in enumerate(np.ndindex(2, 2, 4)):
        before = 0.5 + k / 97
        row = {"index": idx, "status": "ok", "reason": None, "metric_before": before, "metric_after": before + 0.0123456789 * (k % 3 + 1),
               "steps": [{"step": "ransac", "kept": True, "reason": None}, {"step": "deform", "kept": k % 2 == 0, "reason": None}]}
        if k in (1, 6):
            row.update(status="unchanged", reason="no step improved the block's correlation; it keeps the static transforms", metric_after=before)
            row["steps"] = [{"step": "ransac", "kept": False, "reason": f"Pearson {before:.3f} -> {before - 0.0012345:.3f}: not kept"}]
        if k in (3, 9, 12):
            reason = f"foreground {k}% of the block is below foreground_fraction 20%"
            row.update(status="skipped", reason=reason, metric_before=None, metric_after=None, steps=None)
        if k in (14, 15):
            reason = err.format(6 + k, 2.0 + k / 7, k - 12)
            row.update(status="failed", reason=reason, metric_before=None, metric_after=None)
            row["steps"] = [{"step": "ransac", "kept": False, "reason": reason}]
        rows.append(row)
    return rows


def test_piecewise_summary_groups_reasons_by_kind_and_rounds(capsys):
    from lazyreg.cli.align_commands import _block_summary, _say_piecewise

    blocks = _block_rows()
    said, info = [], []
    session = SimpleNamespace(say=said.append, info=info.append)
    quality = {"before": 0.612345678, "after": 0.7012345678, "jacobian": {"folded_fraction": 0.0}}
    _say_piecewise(session, blocks, 12.3456, quality)
    text = "\n".join(said)
    assert said[0] == "piecewise alignment in 12.3 s; 16 blocks: 9 ok, 2 unchanged, 3 skipped, 2 failed"
    # one line per kind of reason, with its count: 3 different "foreground N%" reasons make one group
    kinds = [line for line in said if re.match(r"  \d+ (unchanged|skipped|failed): ", line)]
    assert kinds == [
        "  2 unchanged: no step improved the block's correlation (blocks (0, 0, 1), (0, 1, 2))",
        "  3 skipped: foreground …% of the block is below foreground_fraction …% (blocks (0, 0, 3), (1, 0, 1), (1, 1, 0))",
        "  2 failed: ransac: align_threshold: RANSAC found no affine with at least … of … correspondences within … (best: …) "
        "(blocks (1, 1, 2), (1, 1, 3))",
    ]
    assert not re.search(r"\d\.\d{4,}", text), text  # every float at 3 decimals at most
    gains = [b["metric_after"] - b["metric_before"] for b in blocks if b["status"] == "ok"]
    assert f"mean block Pearson gain {np.mean(gains):+.3f} over the 9 ok blocks (the 2 unchanged blocks: gain 0, not counted)" in text
    assert "step ransac kept in 9 of the 13 blocks where it ran; not kept: 2 Pearson … -> …: not kept, 2 align_threshold:" in text
    assert "step deform kept in 5 of the 9 blocks where it ran; not kept: 4 no reason given" in text
    assert "before 0.612 (static transforms only), after 0.701" in text
    assert not info
    # report.json: full precision, counts by status and by kind
    fields = json.loads(json.dumps(_block_summary(blocks)))
    assert fields["block_counts"] == {"ok": 9, "unchanged": 2, "skipped": 3, "failed": 2}
    assert fields["mean_block_gain"] == pytest.approx(np.mean(gains), abs=0, rel=1e-12)
    summary = fields["block_summary"]
    assert summary["by_status"] == fields["block_counts"] and summary["unchanged"] == 2
    assert [(g["status"], g["count"]) for g in summary["by_kind"]] == [("unchanged", 2), ("skipped", 3), ("failed", 2)]
    assert summary["by_kind"][2]["example"] == blocks[14]["reason"]  # the reason as it was, not rounded
    # no ok block: a warning
    _say_piecewise(session, [dict(b, status="unchanged") for b in blocks[:2]], 1.0, quality)
    assert info and "no block was aligned" in info[-1]


# ---------------------------------------------------------------------------------- apply, invert
def test_apply_without_scheduler_runs_small_inputs_on_threads_and_says_so(pair, tmp_path, monkeypatch):
    out = tmp_path / "applied.ome.zarr"
    r = run("apply", pair.fix, pair.mov, "-t", pair.affine, "-o", out, "--report", tmp_path / "apply.json")
    assert r.returncode == 0, r.stderr
    assert "dask: --scheduler auto chose 'threads' for inputs of 0 MiB" in r.stderr
    assert json.loads((tmp_path / "apply.json").read_text())["scheduler"]["kind"] == "threads"
    # above the bound (made tiny here), the same command starts a LocalCluster
    from lazyreg.cli import session

    monkeypatch.setattr(session, "AUTO_THREADS_BYTES", 1024)
    assert session.auto_scheduler(2048) == "local" and session.auto_scheduler(1024) == "threads"


@pytest.mark.slow
def test_apply_on_a_running_scheduler_matches_apply_transform(pair, tmp_path, capsys, monkeypatch, local_cluster):
    out = tmp_path / "applied.ome.zarr"
    address = local_cluster.scheduler_address  # the session's cluster: 2 worker processes x 1 thread
    r = run("apply", pair.fix, pair.mov, "-t", pair.affine, "-t", pair.field, "-o", out,
            "--scheduler", address, "--report", tmp_path / "apply.json")
    assert r.returncode == 0, r.stderr
    assert f"dask: scheduler {address}, 2 workers, 2 threads" in r.stderr
    assert "resampling: " in r.stderr
    fixed, moving = lazyreg.open_image(pair.fix), lazyreg.open_image(pair.mov)
    transforms = [lazyreg.load_transform(pair.affine), lazyreg.load_transform(pair.field)]
    expected = lazyreg.apply_transform(fixed, moving, transforms).values
    got = lazyreg.open_image(out)
    assert got.shape == SHAPE and lazyreg.spacing(got) == SPACING
    np.testing.assert_array_equal(got.values, expected)
    report = json.loads((tmp_path / "apply.json").read_text())
    assert report["scheduler"]["kind"] == "address" and report["transforms"] == [str(pair.affine), str(pair.field)]
    assert "not included" in report["peak_memory"]["scope"]

    # an existing output is refused (untouched); --overwrite replaces it. On a terminal the
    # progress is a live line with tasks done / total, elapsed time and ETA; --quiet says nothing.
    stamp = (out / "zarr.json").stat().st_mtime_ns
    args = ["apply", str(pair.fix), str(pair.mov), "-t", str(pair.affine), "-o", str(out), "--scheduler", "threads"]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "exists; pass --overwrite" in err
    assert (out / "zarr.json").stat().st_mtime_ns == stamp
    tty = _TTY()
    monkeypatch.setattr(sys, "stderr", tty)
    assert main(args + ["--overwrite", "--order", "0"]) == 0
    monkeypatch.undo()
    assert "\r" in tty.getvalue() and "tasks" in tty.getvalue() and "resampling: " in tty.getvalue()
    only_affine = lazyreg.apply_transform(fixed, moving, transforms[:1], order=0).values
    np.testing.assert_array_equal(lazyreg.open_image(out).values, only_affine)
    capsys.readouterr()
    assert main(args + ["--overwrite", "--quiet"]) == 0
    assert capsys.readouterr() == ("", "")


@pytest.mark.slow
def test_invert_on_a_local_cluster_gives_the_inverse_field(pair, tmp_path):
    out = tmp_path / "inverse.ome.zarr"
    r = run("invert", pair.field, "-o", out, "--max-displacement", "4", "--workers", "1", "--threads", "1",
            "--memory-limit", "1GiB", "--report", tmp_path / "invert.json")
    assert r.returncode == 0, r.stderr
    assert "converged True" in r.stdout
    assert "dask: LocalCluster, 1 workers, 1 threads, 1.0 GiB memory limit each" in r.stderr
    inverse = lazyreg.load_transform(out)
    field = lazyreg.DisplacementField.from_array(pair.field_values, SPACING)
    assert inverse.grid == field.grid
    # interior points (away from the band where the preimage leaves the field): D(inverse(y)) == y
    g = field.grid
    idx = np.stack(np.meshgrid(np.arange(4, 20, 3), np.arange(6, 42, 5), np.arange(6, 42, 5), indexing="ij"), -1).reshape(-1, 3)
    y = g.to_physical(idx)
    err = np.abs(field(inverse(y)) - y) / np.asarray(SPACING)
    assert err.max() < 0.1
    report = json.loads((tmp_path / "invert.json").read_text())
    assert report["inversion"]["converged"] is True and report["scheduler"]["kind"] == "local-cluster"
    assert report["scheduler"]["workers"] == 1 and "LocalCluster worker" in report["peak_memory"]["scope"]


@pytest.mark.slow
def test_local_cluster_workers_give_itk_their_own_thread_count():
    """The LocalCluster of --scheduler local sets ITK's process-wide default thread count in each
    worker to the worker's threads: the filters the demons build inside themselves take that
    default, and with all cores each 1-thread worker kept 1.6 cores busy (benchmarks/README.md)."""
    import argparse

    import SimpleITK as sitk

    from lazyreg.cli.session import Session, dask_scheduler

    before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    s = Session(argparse.Namespace(quiet=True, debug=False, argv=[], scheduler="local", workers=2, threads=1, memory_limit="1GiB"))
    with dask_scheduler(s):
        got = s.client.run(lambda: __import__("SimpleITK").ProcessObject.GetGlobalDefaultNumberOfThreads())
    assert sorted(got.values()) == [1, 1]
    assert sitk.ProcessObject.GetGlobalDefaultNumberOfThreads() == before  # this process: untouched


# ---------------------------------------------------------------------------------------- errors
def test_a_bad_step_file_gives_one_line_and_exit_code_2(pair, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[["afine", {}]')
    r = run("align", pair.fix, pair.mov, "-o", tmp_path / "o", "--steps", bad)
    assert r.returncode == 2 and one_line(r.stderr)
    assert r.stderr.startswith("lazyreg: error: --steps:") and "not valid JSON" in r.stderr
    assert not (tmp_path / "o").exists()


def _cases(d: Path, tmp: Path) -> list:
    fix, mov = str(d / "fix.ome.zarr"), str(d / "mov.ome.zarr")
    (tmp / "unknown.json").write_text('[["afine", {}]]')
    (tmp / "option.json").write_text('[["affine", {"metric": "nope"}]]')
    (tmp / "empty.json").write_text("[]")
    (tmp / "bad.yaml").write_text("- ransac: {blob_sizes: [2, 8]\n")
    (tmp / "matrix.txt").write_text("1 2 3\n")
    (tmp / "full").mkdir()
    (tmp / "full" / "x").write_text("")
    o = str(tmp / "out")
    return [
        (["info", str(tmp / "missing.zarr")], "path: " + str(tmp / "missing.zarr") + " does not exist"),
        (["info", f"{fix}:nolevel"], "path: group: 'nolevel'"),
        (["info", str(tmp / "nothing.n5") + ":lowres"], "path: " + str(tmp / "nothing.n5") + " does not exist"),
        (["align", fix, str(tmp / "nomov.zarr"), "-o", o], "moving: "),
        (["align", fix, mov, "-o", o, "--steps", str(tmp / "unknown.json")], "unknown step 'afine' (did you mean 'affine'?)"),
        (["align", fix, mov, "-o", o, "--steps", "ransac,afine"], "--steps: 'ransac,afine': steps[1]: unknown step"),
        (["align", fix, mov, "-o", o, "--steps", str(tmp / "option.json")], "metric: unknown value 'nope'"),
        (["align", fix, mov, "-o", o, "--steps", str(tmp / "empty.json")], "--steps: "),
        (["align", fix, mov, "-o", o, "--steps", str(tmp / "missing.yaml")], "missing.yaml does not exist"),
        (["align", fix, mov, "-o", o, "--steps", str(tmp / "bad.yaml")] if _has_yaml() else ["nonsense"],
         "not valid YAML" if _has_yaml() else "invalid choice"),
        (["align", fix, mov, "-o", str(tmp / "full")], "exists and is not empty; pass --overwrite"),
        (["align", fix, mov], "required: -o/--output"),
        (["align-piecewise", fix, mov, "-o", o, "--steps", "affine", "--blocksize", "1,2"], "argument --blocksize"),
        (["align-piecewise", fix, mov, "-o", o, "--steps", "affine", "--blocksize", "4"], "blocksize: "),
        (["align-piecewise", fix, mov, "-o", o, "--steps", "affine", "--static", str(tmp / "none.txt")], "--static: "),
        (["apply", fix, mov, "-t", str(tmp / "matrix.txt"), "-o", o + ".ome.zarr"], "-t: expected a 4x4"),
        (["apply", fix, mov, "-t", str(tmp / "none.tfm"), "-o", o + ".ome.zarr"], "-t: "),
        (["apply", fix, mov, "-o", fix, "--overwrite", "--scheduler", "threads"], "output: "),
        (["apply", fix, mov, "-o", o + ".ome.zarr", "--scheduler", "threads", "--workers", "2"], "--workers applies to --scheduler local"),
        (["apply", fix, mov, "-o", o + ".ome.zarr", "--memory-limit", "lots"], "--memory-limit: "),
        (["invert", str(d / "affine.txt"), "-o", o + ".ome.zarr"], "not one displacement field"),
        (["invert", str(d / "field.ome.zarr"), "-o", o + ".txt"], "output: expected a field file name"),
        (["nonsense"], "invalid choice: 'nonsense'"),
    ]


def test_usage_and_input_errors_are_one_line_with_exit_code_2(pair, tmp_path, capsys):
    for argv, expected in _cases(pair.dir, tmp_path):
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("lazyreg: error: ") and one_line(err), (argv, err)
        assert expected in err, (argv, err)
    assert not (tmp_path / "out").exists() and not (tmp_path / "out.ome.zarr").exists()
    # --debug adds the traceback
    assert main(["info", str(tmp_path / "missing.zarr"), "--debug"]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_yaml_steps_without_pyyaml_suggest_json(pair, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml raises ImportError
    assert main(["align", str(pair.fix), str(pair.mov), "-o", str(tmp_path / "o"), "--steps", str(pair.dir / "steps.yaml")]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "PyYAML" in err and "JSON" in err
    # JSON step files and comma-separated names never need it
    from lazyreg.cli.inputs import read_steps

    assert read_steps(str(pair.dir / "steps.json")) == [("ransac", {"blob_sizes": [2, 8]}), ("affine", {})]
    assert read_steps("ransac, affine") == [("ransac", {}), ("affine", {})]


def test_a_failed_run_is_exit_code_1_and_leaves_no_output(pair, tmp_path, capsys, monkeypatch):
    # a failure that is not bad input (a corrupt chunk is bad input: exit 2, tests/test_bad_inputs.py)
    from lazyreg.io.zarr_read import ZarrSource

    def unplugged(self, index):
        raise RuntimeError("disk unplugged")

    monkeypatch.setattr(ZarrSource, "read", unplugged)
    broken = pair.mov
    out = tmp_path / "out.ome.zarr"
    assert main(["apply", str(pair.fix), str(broken), "-o", str(out), "--scheduler", "threads"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[-1].startswith("lazyreg: failed: ") and "(stopped by an error)" in err[-2]
    assert not any("Traceback" in l for l in err)
    assert not out.exists()
    assert main(["apply", str(pair.fix), str(broken), "-o", str(out), "--scheduler", "threads", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith("lazyreg: failed: ")


# -------------------------------------------------------------------------------------- progress
class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_live_line_on_a_terminal_and_one_line_otherwise():
    import dask.array as da

    from lazyreg.progress import PeakMemory, Progress

    def slow(x):
        time.sleep(0.005)
        return x

    tty = _TTY()
    bar = Progress("auto", stream=tty, interval=0.02)
    assert bar.mode == "bar"
    with bar.phase("sum"):
        da.ones((32, 32), chunks=4).map_blocks(slow).sum().compute(scheduler="threads")
    text = tty.getvalue()
    assert "\r" in text and "/" in text and "tasks" in text and "ETA" in text
    assert text.endswith("\n") and text.splitlines()[-1].split("\r")[-1].replace("\x1b[2K", "").startswith("sum: ")
    assert bar.phases["sum"]["tasks"] == bar.phases["sum"]["done"] > 64

    log = io.StringIO()
    summary = Progress("auto", stream=log)
    assert summary.mode == "summary"
    with summary.phase("first"), PeakMemory() as memory:
        da.ones(8, chunks=2).sum().compute(scheduler="threads")
        da.ones(8, chunks=4).sum().compute(scheduler="synchronous")
    lines = log.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("first: ") and "tasks in" in lines[0] and "\r" not in log.getvalue()
    assert memory.result()["bytes"] > 0
    off = io.StringIO()
    with Progress("off", stream=off).phase("x"):
        da.ones(4, chunks=2).sum().compute(scheduler="threads")
    assert off.getvalue() == ""


def test_peak_memory_without_psutil_uses_getrusage(monkeypatch):
    from lazyreg.progress import PeakMemory

    monkeypatch.setitem(sys.modules, "psutil", None)
    with PeakMemory() as memory:
        pass
    r = memory.result()
    assert memory.method == "getrusage" and r["bytes"] > 0 and "getrusage" in r["method"]


# ------------------------------------------------------------------------------------------ demo
@pytest.mark.slow
def test_demo_runs_end_to_end_in_under_a_minute_of_cpu(tmp_path, capsys):
    import resource

    out = tmp_path / "demo"
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    r = run("demo", "-o", str(out))
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    assert r.returncode == 0, r.stderr
    # CPU time rather than wall time: the limit holds on a busy machine too
    assert (after_cpu.ru_utime + after_cpu.ru_stime) - (before_cpu.ru_utime + before_cpu.ru_stime) < 60
    assert r.stderr.startswith("dask: threads scheduler") and "\r" not in r.stderr
    for name in ("fixed.ome.zarr", "moving.ome.zarr", "aligned.ome.zarr"):
        assert (out / name / "zarr.json").exists()
    line = next(l for l in r.stdout.splitlines() if "Pearson(fixed" in l)
    before = float(line.split("before")[1].split(",")[0])
    after = float(line.split("after")[1].split("(")[0])
    assert before < 0.3 and after > 0.9
    # it ends by saying how to open its outputs, and every path it names exists
    hints = r.stdout[r.stdout.index("To look at them:"):]
    named = re.findall(r"(/\S+?\.(?:ome\.zarr|txt))\b", hints)
    assert len(named) >= 4 and all(Path(p).exists() for p in named), named
    assert "lazyreg info" in hints and "napari" in hints and "File > Import > HDF5/N5/Zarr/OME-NGFF" in hints
    # a second run into the same folder is refused, and the outputs are untouched
    stamp = (out / "aligned.ome.zarr" / "zarr.json").stat().st_mtime_ns
    assert main(["demo", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and "--overwrite" in err
    assert (out / "aligned.ome.zarr" / "zarr.json").stat().st_mtime_ns == stamp


def test_make_demo_writes_where_gitignore_expects():
    root = Path(__file__).resolve().parents[1]
    recipe = (root / "Makefile").read_text().split("\ndemo:")[1].split("\n\n")[0]
    folder = re.search(r"lazyreg demo -o (\S+)", recipe).group(1)
    assert f"{folder}/" in (root / ".gitignore").read_text().split()


def _has_yaml() -> bool:
    try:
        import yaml  # noqa: F401
    except ImportError:
        return False
    return True


def test_results_computed_together_keep_their_order():
    import dask
    import dask.array as da

    from lazyreg.result_cache import compute_together

    a, b, c = da.ones(2, chunks=1), dask.delayed(list)([1, 2]), da.zeros((1, 1), chunks=1)
    x, y, z = compute_together(a, b, c)
    assert x.shape == (2,) and y == [1, 2] and z.shape == (1, 1)
