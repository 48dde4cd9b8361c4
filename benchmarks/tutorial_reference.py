"""Slow, careful alignment of the tutorial lowres pair: the reference the fast pipeline is tested against.

Run once (minutes); writes ``tests/data/tutorial_reference_affine.json`` with the matrix, the
options used, the Pearson correlation and the seconds it took. The test
``tests/test_registration_real.py`` checks that the default fast pipeline lands within 2 voxels
(mean mapped-point error over the fixed grid) of this matrix.

How the reference is obtained: feature-point RANSAC with five times the default number of spots,
then an affine ImageRegistrationMethod refinement sampling 20% of the voxels (about 650 times the
default 5,000 samples per level) on a 4-level pyramid with up to 300 iterations per level and a
tight gradient tolerance, and finally a refinement with Mattes mutual information on the two
finest levels started from that result; the result with the higher Pearson correlation is kept.

Usage: ``python benchmarks/tutorial_reference.py [path/to/shared/data/tutorial]``
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

import lazyreg
from lazyreg.metrics import pearson

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "tests" / "data" / "tutorial_reference_affine.json"


def main(tutorial: Path) -> None:
    fix = lazyreg.open_image(tutorial / "fix.n5", group="lowres").compute()
    mov = lazyreg.open_image(tutorial / "mov.n5", group="lowres").compute()
    t0 = time.perf_counter()
    ransac = ("ransac", {"blob_sizes": [6, 20], "nspots": 5000})
    careful = {
        "sampling": "random",
        "sampling_percentage": 0.2,
        "shrink_factors": [8, 4, 2, 1],
        "smooth_sigmas": [4, 2, 1, 0],
        "optimizer_args": {"numberOfIterations": 300, "gradientMagnitudeTolerance": 1e-8},
    }
    candidates = {}
    A = lazyreg.align(fix, mov, [ransac, ("affine", careful)]).compute()
    candidates["correlation"] = A
    B = lazyreg.align(
        fix, mov, [("affine", dict(careful, metric="mattes_mi", shrink_factors=[2, 1], smooth_sigmas=[1, 0]))],
        initial=A,
    ).compute()
    candidates["correlation+mattes_mi"] = B
    scores = {}
    for name, T in candidates.items():
        res = lazyreg.apply_transform(fix, mov, [T]).compute()
        scores[name] = float(pearson(fix, res))
        print(f"{name}: Pearson {scores[name]:.4f}")
    best = max(scores, key=scores.get)
    seconds = time.perf_counter() - t0
    record = {
        "matrix": np.asarray(candidates[best].matrix).tolist(),
        "pearson": scores[best],
        "candidates": scores,
        "chosen": best,
        "seconds": round(seconds, 1),
        "steps": [ransac, ("affine", careful), ("affine (mattes_mi refinement)", {"metric": "mattes_mi"})],
        "lazyreg": lazyreg.__version__,
        "how": __doc__.split("\n\n")[2].replace("\n", " "),
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"chosen {best}; wrote {OUT} ({seconds:.0f} s)")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "tutorial")
