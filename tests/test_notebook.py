"""The tutorial notebook: it executes end to end on the real tutorial volumes, and the copy in git
is executed, error-free and small enough to read on a repository page."""

from __future__ import annotations

import json
import shutil
import sys
import time
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

import lazyreg

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "tutorial.ipynb"
#: Seconds per cell before nbclient gives up (the whole notebook takes ~2-3 minutes on 2 cores).
CELL_TIMEOUT = 600
MAX_BYTES = 3 * 2**20


def _summary(nb: nbformat.NotebookNode) -> dict:
    """The ``SUMMARY {...}`` line that the notebook's last cell prints."""
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                for line in out.get("text", "").splitlines():
                    if line.startswith("SUMMARY "):
                        return json.loads(line[len("SUMMARY "):])
    raise AssertionError("the notebook printed no SUMMARY line")


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells)
        for out in cell.get("outputs", [])
        if out.get("output_type") == "error"
    ]


@pytest.fixture
def kernel_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A kernelspec running this very interpreter, whatever kernels are (not) installed."""
    spec = tmp_path / "jupyter" / "kernels" / "lazyreg-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": "lazyreg tests",
                "language": "python",
            }
        )
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return "lazyreg-test"


@pytest.mark.slow
@pytest.mark.shared_data
def test_tutorial_executes(tutorial_dir: Path, tmp_path: Path, kernel_name: str, monkeypatch: pytest.MonkeyPatch):
    work = tmp_path / "run"
    work.mkdir()
    copy = work / NOTEBOOK.name
    shutil.copy(NOTEBOOK, copy)
    out = tmp_path / "outputs"
    monkeypatch.setenv("LAZYREG_TUTORIAL_DATA", str(tutorial_dir))
    monkeypatch.setenv("LAZYREG_TUTORIAL_OUT", str(out))
    monkeypatch.setenv("MPLBACKEND", "Agg")

    nb = nbformat.read(copy, as_version=4)
    # after the tutorial: what the registration tasks computed and reused in the kernel
    nb.cells.append(nbformat.v4.new_code_cell(
        "import json, lazyreg.result_cache\nprint('CACHE ' + json.dumps(lazyreg.result_cache.cache_info()))"
    ))
    client = NotebookClient(
        nb, timeout=CELL_TIMEOUT, kernel_name=kernel_name, resources={"metadata": {"path": str(work)}}
    )
    t0 = time.perf_counter()
    client.execute()  # raises CellExecutionError, with the cell's traceback, on the first error
    seconds = time.perf_counter() - t0
    nbformat.write(nb, copy)  # kept in tmp_path for a look after a failure
    assert not _errors(nb)

    cache = json.loads(next(
        line[len("CACHE "):] for o in nb.cells[-1].outputs for line in o.get("text", "").splitlines() if line.startswith("CACHE ")
    ))
    s = _summary(nb)
    print(f"notebook: {seconds:.0f} s wall; summary {s}")
    # global alignment (../shared/data/README.md: ~0.06 unaligned, a good affine > 0.45)
    assert s["pearson_before"] < 0.15
    assert s["pearson_affine"] >= 0.45
    assert s["pearson_affine_overlap"] >= 0.8
    # piecewise: some blocks aligned, the field improves on the affine and does not fold
    assert s["blocks"].get("ok", 0) >= 1
    # every block ran exactly once, though the notebook writes, computes, plots and checks the field
    assert cache["block"]["computed"] == sum(s["blocks"].values()), cache
    # the global alignment once, plus round 3 of the series (its round 2 is the same alignment, reused)
    assert cache["align"]["computed"] == 2, cache
    # measured: 0.838 -> 0.871 where both images have data; whole volume 0.460 -> 0.474
    assert s["pearson_piecewise_overlap"] > s["pearson_affine_overlap2"] + 0.01
    assert s["pearson_piecewise"] > s["pearson_affine"]
    assert s["jacobian_min"] > 0
    assert s["jacobian_fraction_folded"] == 0
    # spots: the inverse round-trips, and carried spots land on fixed blobs
    assert s["roundtrip_error_max_um"] < 0.1
    assert s["spots_inside_fixed"] >= 6
    assert s["spot_to_fixed_blob_median_um"] < 4.0
    # channels: each resampled through the same transforms; rounds: the chained round 3 recovered
    assert s["channel_equals_single"] is True
    assert s["round3_error_voxels"] < 0.5

    # the outputs are where the notebook says, and viewers get the physical grid
    aligned = lazyreg.open_image(out / "aligned.ome.zarr")
    fixed = lazyreg.open_image(tutorial_dir / "fix.n5", group="lowres")
    assert aligned.shape == fixed.shape
    assert lazyreg.spacing(aligned) == pytest.approx(lazyreg.spacing(fixed))
    assert lazyreg.origin(aligned) == pytest.approx(lazyreg.origin(fixed))
    assert lazyreg.load_transform(out / "affine.txt").matrix.shape == (4, 4)
    assert (out / "field.ome.zarr").is_dir() and (out / "fixed.ome.zarr").is_dir()


def test_committed_notebook_is_executed_and_small():
    """The copy in git reads well on a repository page: executed, no errors, figures, < 3 MiB."""
    assert NOTEBOOK.stat().st_size < MAX_BYTES, f"{NOTEBOOK.name} is {NOTEBOOK.stat().st_size / 2**20:.1f} MiB"
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.get("execution_count") for c in code), "re-execute the notebook (notebooks/README.md)"
    counts = [c["execution_count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), "cells were executed out of order"
    assert not _errors(nb)
    pngs = sum("image/png" in out.get("data", {}) for c in code for out in c.get("outputs", []))
    assert pngs >= 6
    s = _summary(nb)
    assert s["pearson_affine"] >= 0.45
