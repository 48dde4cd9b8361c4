"""The command line, end to end through subprocess."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lazyreg", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


@pytest.mark.slow
def test_demo_runs_end_to_end_under_a_minute(tmp_path):
    out = tmp_path / "demo"
    t0 = time.perf_counter()
    r = run("demo", "-o", str(out))
    seconds = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr
    assert seconds < 60
    for name in ("fixed.ome.zarr", "moving.ome.zarr", "aligned.ome.zarr"):
        assert (out / name / "zarr.json").exists()
    line = next(l for l in r.stdout.splitlines() if "Pearson(fixed" in l)
    before = float(line.split("before")[1].split(",")[0])
    after = float(line.split("after")[1].split("(")[0])
    assert before < 0.3 and after > 0.9
    # a second run into the same folder is refused, and the outputs are untouched
    stamp = (out / "aligned.ome.zarr" / "zarr.json").stat().st_mtime_ns
    r2 = run("demo", "-o", str(out))
    assert r2.returncode == 2
    assert r2.stderr.strip().count("\n") == 0 and "--overwrite" in r2.stderr
    assert (out / "aligned.ome.zarr" / "zarr.json").stat().st_mtime_ns == stamp


def test_info_on_tutorial_data(tutorial_dir):
    r = run("info", str(tutorial_dir / "fix.n5"), "--group", "lowres")
    assert r.returncode == 0, r.stderr
    assert "(149, 241, 456)" in r.stdout
    assert "(1.68, 1.84, 1.84)" in r.stdout


def test_errors_are_one_line_with_exit_code_2(tmp_path):
    r = run("info", str(tmp_path / "missing.zarr"))
    assert r.returncode == 2
    assert r.stderr.startswith("lazyreg: error: path:") and r.stderr.strip().count("\n") == 0
    assert "Traceback" not in r.stderr
    r = run("nonsense")
    assert r.returncode == 2


@pytest.mark.slow
def test_align_writes_transform_image_and_report(tmp_path):
    import json

    import numpy as np

    import lazyreg

    fixed, moving, truth = lazyreg.data.synthetic_pair((48, 96, 96), (2.0, 1.0, 1.0), seed=1)
    lazyreg.to_zarr(fixed, tmp_path / "fix.ome.zarr")
    lazyreg.to_zarr(moving, tmp_path / "mov.ome.zarr")
    steps = tmp_path / "steps.json"
    steps.write_text(json.dumps([["ransac", {"blob_sizes": [2, 8]}], ["affine", {}]]))
    out = tmp_path / "out"
    r = run("align", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "mov.ome.zarr"), "-o", str(out), "--steps", str(steps))
    assert r.returncode == 0, r.stderr
    A = lazyreg.load_transform(out / "affine.txt")
    B = lazyreg.load_transform(out / "affine.tfm")
    assert A.allclose(B, atol=1e-9)
    p = np.array([[40.0, 50.0, 45.0], [10.0, 20.0, 80.0]])
    assert np.abs(A(p) - lazyreg.Affine(truth)(p)).max() < 1.0
    report = json.loads((out / "report.json").read_text())
    assert report["pearson_after"] > report["pearson_before"] + 0.5
    assert [s["step"] for s in report["report"]] == ["ransac", "affine"]
    assert lazyreg.open_image(out / "aligned.ome.zarr").shape == fixed.shape
    # existing output refused; bad step names and files give one line and exit code 2
    r = run("align", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "mov.ome.zarr"), "-o", str(out))
    assert r.returncode == 2 and "--overwrite" in r.stderr
    bad = tmp_path / "bad.json"
    bad.write_text("[[\"afine\", {}]")
    r = run("align", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "mov.ome.zarr"), "-o", str(tmp_path / "o2"), "--steps", str(bad))
    assert r.returncode == 2 and r.stderr.startswith("lazyreg: error: --steps") and r.stderr.strip().count("\n") == 0
    r = run("align", str(tmp_path / "fix.ome.zarr"), str(tmp_path / "mov.ome.zarr"), "-o", str(tmp_path / "o3"), "--steps", "ransac,afine")
    assert r.returncode == 2 and "unknown step 'afine'" in r.stderr
