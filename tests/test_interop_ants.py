"""Files written by ANTs (antspyx 0.6.3, benchmarks/check_ants_order.py --write-test-data): lazyreg
reads ANTs' affine (.mat) and warp (.nii.gz) and, applied as ``[A, D]``, reproduces what
``ants.apply_transforms(F, M, [warp, affine])`` produced: ANTs lists transforms in the reverse of
lazyreg's order. No ANTs is needed here."""

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import lazyreg

DATA = Path(__file__).resolve().parent / "data" / "ants_order"


def _image(name: str):
    # the NIfTI reader named: no probing of every ImageIO (a segfault in ReadImage was seen twice in
    # ~30 suite runs, in a worker that had run other ITK work; SimpleITK issue #74)
    img = sitk.ReadImage(str(DATA / name), imageIO="NiftiImageIO")
    assert np.allclose(np.asarray(img.GetDirection()), np.eye(3).ravel())
    return lazyreg.image(sitk.GetArrayFromImage(img), img.GetSpacing()[::-1], img.GetOrigin()[::-1])


@pytest.fixture(scope="module")
def ants_files():
    fixed, moving = _image("fixed.nii.gz"), _image("moving.nii.gz")
    A, D = lazyreg.load_transform(DATA / "affine.mat"), lazyreg.load_transform(DATA / "warp.nii.gz")
    return fixed, moving, A, D


def test_ants_warp_then_affine_equals_lazyreg_affine_then_field(ants_files):
    fixed, moving, A, D = ants_files
    assert isinstance(A, lazyreg.Affine) and isinstance(D, lazyreg.DisplacementField)
    ours = lazyreg.apply_transform(fixed, moving, [A, D], order=1).values
    theirs = _image("ants_warp_affine.nii.gz").values
    inner = (slice(2, -2),) * 3
    scale = float(np.abs(moving.values).max())
    assert np.abs(ours[inner] - theirs[inner]).max() < 1e-4 * scale
    # the same list in lazyreg's order is not what ANTs makes of it: the test can tell the orders apart
    other = _image("ants_affine_warp.nii.gz").values
    assert np.abs(ours[inner] - other[inner]).max() > 0.1 * scale
