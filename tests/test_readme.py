"""README.md's Python snippets, run as a user would run them, on the real tutorial volumes.

Users follow the README literally, so every snippet must run as written and be right: here each
``python`` block is executed in order in one namespace (paths pointed at ../shared), and what it
computes is checked - including that registration results are computed once.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

import lazyreg
from lazyreg.result_cache import cache_info

README = Path(__file__).resolve().parents[1] / "README.md"


def _snippets() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_the_snippets_this_test_runs():
    blocks = _snippets()
    assert len(blocks) >= 3
    assert "lazyreg.align(" in blocks[0] and "lazyreg.align_piecewise(" in blocks[1]


@pytest.mark.slow
@pytest.mark.shared_data
def test_readme_snippets_run_as_written(tutorial_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    try:
        for code in _snippets():
            code = code.replace('"fix.n5"', repr(str(tutorial_dir / "fix.n5"))).replace('"mov.n5"', repr(str(tutorial_dir / "mov.n5")))
            exec(compile(code, str(README), "exec"), ns)
    finally:
        lazyreg.registration.steps.STEPS.pop("shift_x", None)
    capsys.readouterr()
    A, field = ns["A"], ns["field"]
    # snippet 1: the global alignment (tutorial: Pearson 0.06 unaligned, >= 0.45 aligned)
    assert not A.is_lazy and [r["step"] for r in A.report] == ["ransac", "affine"]
    assert (tmp_path / "aligned.ome.zarr").is_dir() and (tmp_path / "affine.tfm").is_file()
    aligned = lazyreg.open_image(tmp_path / "aligned.ome.zarr")
    assert lazyreg.metrics.pearson(ns["fixed"], aligned) >= 0.45
    # snippet 2: the local alignment, without folds, few failed blocks, better than the affine
    statuses = [r["status"] for r in field.report]
    assert statuses.count("failed") <= len(statuses) / 10, field.report
    assert float(ns["det"].min()) > 0
    local = lazyreg.open_image(tmp_path / "aligned_local.ome.zarr")
    assert lazyreg.metrics.pearson(ns["fixed"], local) > lazyreg.metrics.pearson(ns["fixed"], aligned)
    # each registration ran once although every line after the first computes on top of it
    info = cache_info()
    assert info["align"]["computed"] == 1, info
    assert info["block"]["computed"] == len(field.report), info
    # the series snippet reused the global alignment (align computed once, above) and reports per round
    assert [(r["round"], r["step"]) for r in ns["rows"]] == [("round2", "ransac"), ("round2", "affine")]
    assert ns["aligned2"].shape == ns["fixed"].shape
    # the custom-step snippet registered a step that runs in align
    assert np.asarray(ns["shift_x"](ns["fixed"], ns["moving"], initial=lazyreg.Affine.identity()).matrix)[2, 3] == 1.0
