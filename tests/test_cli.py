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
    after = float(line.split("after")[1])
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
