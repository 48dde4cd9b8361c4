"""Check: ANTs' transform list is in the reverse order of lazyreg's.

lazyreg's list ``[A, D]`` means ``moving = A(D(x))`` (the last transform is applied first to a fixed
point). This script writes a known affine ``A`` (an ITK ``.mat`` made by ANTs) and a known smooth
displacement field ``D`` (a ``.nii.gz`` vector image written by lazyreg, read by ANTs as a warp),
resamples the same moving image with ``ants.apply_transforms`` in both list orders and with
``lazyreg.apply_transform(fixed, moving, [A, D])``, and prints which ANTs order agrees. Needs
``pip install 'lazyreg[compare]'`` (antspyx). Results: ``benchmarks/results/check_ants_order.json``.

Run: ``.venv/bin/python benchmarks/check_ants_order.py``; ``--write-test-data DIR`` also keeps, for a
small pair, every file ANTs wrote or produced (inputs, transforms, both resampled outputs), which
``tests/test_interop_ants.py`` checks lazyreg against without ANTs installed.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

import lazyreg  # noqa: E402
from lazyreg.images import grid_of  # noqa: E402

SHAPE, SPACING, ORIGIN = (24, 40, 48), (2.0, 1.0, 0.75), (3.0, -5.0, 10.0)
SMALL_SHAPE = (12, 20, 24)


def main(test_data: Path | None = None) -> dict:
    import ants

    shape = SMALL_SHAPE if test_data else SHAPE
    fixed, moving, _ = lazyreg.data.synthetic_pair(shape, seed=3)
    fixed = lazyreg.image(fixed.values.astype(np.float32), SPACING, ORIGIN)
    moving = lazyreg.image(moving.values.astype(np.float32), SPACING, ORIGIN)
    A = lazyreg.Affine.from_parameters(rotation=(4.0, -3.0, 6.0), translation=(2.0, -1.5, 3.0),
                                      center=tuple(np.mean(grid_of(fixed).extent, axis=0)))
    g = grid_of(fixed)
    z, y, x = np.meshgrid(*(np.linspace(0, np.pi, n) for n in g.shape), indexing="ij")
    values = np.stack([1.5 * np.sin(y) * np.sin(x), 2.0 * np.sin(z) * np.cos(x), -1.8 * np.sin(z + y)], axis=-1)
    D = lazyreg.DisplacementField.from_array(values.astype(np.float32), SPACING, ORIGIN)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp) if test_data is None else Path(test_data)
        tmp.mkdir(parents=True, exist_ok=True)
        m = np.asarray(A.matrix)
        tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3, matrix=m[:3, :3][::-1, ::-1],
                                        translation=m[:3, 3][::-1], center=(0.0, 0.0, 0.0))
        ants.write_transform(tx, str(tmp / "affine.mat"))
        lazyreg.save_transform(D, tmp / "warp.nii.gz")
        ants.image_write(ants.image_read(str(tmp / "warp.nii.gz")), str(tmp / "warp.nii.gz"))  # written by ANTs
        # lazyreg reads both files back as what they were written from
        A_back, D_back = lazyreg.load_transform(tmp / "affine.mat"), lazyreg.load_transform(tmp / "warp.nii.gz")
        assert A_back.allclose(A, atol=1e-6) and np.allclose(D_back.values, D.values, atol=1e-5)

        def to_ants(img):
            return ants.from_numpy(np.ascontiguousarray(img.values.transpose(2, 1, 0)), origin=ORIGIN[::-1], spacing=SPACING[::-1])

        F, M = to_ants(fixed), to_ants(moving)
        results = {}
        for label, order in (("[warp, affine]", ["warp.nii.gz", "affine.mat"]), ("[affine, warp]", ["affine.mat", "warp.nii.gz"])):
            out = ants.apply_transforms(F, M, [str(tmp / n) for n in order], interpolator="linear")
            results[label] = out.numpy().transpose(2, 1, 0)
            if test_data is not None:
                ants.image_write(out, str(tmp / ("ants_" + "_".join(n.split(".")[0] for n in order) + ".nii.gz")))
        if test_data is not None:
            ants.image_write(F, str(tmp / "fixed.nii.gz"))
            ants.image_write(M, str(tmp / "moving.nii.gz"))
    ours = lazyreg.apply_transform(fixed, moving, [A, D], order=1).values
    inner = (slice(3, -3),) * 3
    scale = float(np.abs(moving.values).max())
    record = {
        "lazyreg_list": "[A, D]: moving = A(D(x))",
        "max_abs_diff_relative": {k: float(np.abs(v[inner] - ours[inner]).max() / scale) for k, v in results.items()},
        "machine": C.machine_info(),
    }
    best = min(record["max_abs_diff_relative"], key=record["max_abs_diff_relative"].get)
    record["agrees"] = best
    for k, v in record["max_abs_diff_relative"].items():
        print(f"ants.apply_transforms(F, M, {k:15s}) vs lazyreg [A, D]: max |diff| = {v:.2e} of the image's range")
    print(f"-> ANTs {best} equals lazyreg [A, D]")
    C.write_json(Path(__file__).resolve().parent / "results" / "check_ants_order.json", record)
    return record


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write-test-data", type=Path, default=None, metavar="DIR")
    main(parser.parse_args().write_test_data)
