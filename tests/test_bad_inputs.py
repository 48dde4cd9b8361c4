"""Bad inputs x public entry points (issue 14): each row must be a LazyregError naming what is wrong.

Three tables. Files and metadata: one table for the library (``API_CASES``: a call that must raise a :class:`LazyregError` whose
message matches a pattern naming the argument, file or field) and one for the command line
(``CLI_CASES``: argv for :func:`lazyreg.cli.main` that must exit with code 2 and print one line
naming it). Every input file is built here, in ``tmp_path``: truncated and inconsistent TIFFs,
malformed OME-Zarr and N5 metadata, corrupt chunks, transform files. Rows marked ``# fixed`` failed
before issue 14 (raw KeyError / AttributeError / JSONDecodeError / RuntimeError, or no error at all);
the others pin checks that existed already. Arguments of resampling and registration (``CASES``,
at the end): entry point, bad arguments, expected error or warning type, words the message must
contain; the entry point runs the whole call (``compute`` included when the check needs voxel
values), so a row states what a user sees.
"""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path
from typing import Any, Callable

import dask
import dask.array as da
import numpy as np
import pytest
import tifffile
import xarray as xr
import zarr

import lazyreg
from lazyreg import Affine, LazyregError, LazyregWarning
from lazyreg.cli import main
from lazyreg.io.zarr_read import read_ome_zarr

ZYX = {"spacing": 3.0, "unit": "um", "axes": "ZYX"}


# ----------------------------------------------------------------------------------- data builders
def _values(shape=(20, 16, 24), dtype=np.uint16) -> np.ndarray:
    return np.random.default_rng(0).integers(1, 60000, shape).astype(dtype)


def imagej_tiff(tmp: Path, name: str = "stack.tif", cut: int | None = None, planes: str | None = None) -> Path:
    """A 20-plane ImageJ stack (15 KiB of data); ``cut`` keeps only that many bytes, ``planes`` rewrites
    its metadata's plane count."""
    path = tmp / name
    tifffile.imwrite(path, _values(), imagej=True, resolution=(2.0, 2.0), metadata=ZYX)
    data = path.read_bytes()
    if planes is not None:  # same length: images=20 -> images=30
        data = data.replace(b"images=20\nslices=20", f"images={planes}\nslices={planes}".encode())
    path.write_bytes(data if cut is None else data[:cut])
    return path


def ome_tiff(tmp: Path, size_z: int = 20, cut: int | None = None) -> Path:
    """A 20-page OME-TIFF (15 KiB of data) whose OME-XML says ``SizeZ=size_z``; ``cut`` keeps only that many bytes."""
    path = tmp / "stack.ome.tif"
    meta = {"axes": "ZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeY": 0.5, "PhysicalSizeX": 0.5}
    tifffile.imwrite(path, _values(), ome=True, metadata=meta)
    if size_z != 20:
        with tifffile.TiffFile(path) as t:
            xml = t.ome_metadata.replace('SizeZ="20"', f'SizeZ="{size_z}"')
        tifffile.imwrite(path, _values(), description=xml, metadata=None)
    if cut is not None:
        path.write_bytes(path.read_bytes()[:cut])
    return path


def tiled_tiff_with_bad_tile(tmp: Path) -> Path:
    """A zlib-tiled TIFF whose tile 3 of page 2 is overwritten with zeros."""
    path = tmp / "tiles.tif"
    tifffile.imwrite(path, _values((4, 40, 50)), tile=(16, 16), compression="zlib", photometric="minisblack")
    with tifffile.TiffFile(path) as t:
        offset, n = t.pages[2].dataoffsets[3], t.pages[2].databytecounts[3]
    data = bytearray(path.read_bytes())
    data[offset : offset + n] = bytes(n)
    path.write_bytes(bytes(data))
    return path


def ome_zarr(tmp: Path, change: Callable[[dict], Any] | None = None, name: str = "img.ome.zarr", replace: Callable[[dict], Any] | None = None) -> Path:
    """An OME-Zarr 0.5 image written by lazyreg; ``change(multiscale)`` edits its metadata in place,
    ``replace(multiscale)`` returns a new value for the whole ``multiscales``."""
    path = lazyreg.to_zarr(lazyreg.image(_values((8, 16, 16)), spacing=(2, 1, 1)), tmp / name, chunks=(4, 8, 8))
    meta = json.loads((path / "zarr.json").read_text())
    ome = meta["attributes"]["ome"]
    if change is not None:
        change(ome["multiscales"][0])
    if replace is not None:
        ome["multiscales"] = replace(ome["multiscales"][0])
    (path / "zarr.json").write_text(json.dumps(meta))
    return path


def _dataset(ms: dict) -> dict:
    return ms["datasets"][0]


def set_scale(value: Any) -> Callable[[dict], None]:
    def change(ms: dict) -> None:
        _dataset(ms)["coordinateTransformations"][0]["scale"] = value

    return change


def corrupt_chunk(store: Path) -> Path:
    """Overwrite the first chunk file below ``store`` (not metadata) with bytes no codec decodes."""
    chunk = next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs", ".zgroup", "attributes.json"))
    chunk.write_bytes(b"\x00\x00\x00\x03not a chunk")
    return chunk


def v2_array(tmp: Path, *, bad_zarray: bool = False, bad_chunk: bool = False) -> Path:
    path = tmp / "plain2.zarr"
    zarr.create_array(str(path), data=_values((8, 16, 16)), chunks=(4, 8, 8), zarr_format=2)
    if bad_zarray:
        (path / ".zarray").write_text("{not json")
    if bad_chunk:
        (path / "0.1.0").write_bytes(b"garbage")
    return path


def n5(tmp: Path, **attrs: Any) -> Path:
    """An N5 dataset ``c.n5/raw`` (8 x 16 x 16 zyx, blocks 4 x 8 x 8) written by tensorstore; ``attrs`` then
    replace (or, as None, delete) keys of its attributes.json."""
    import tensorstore as ts

    meta = {"dimensions": [16, 16, 8], "blockSize": [8, 8, 4], "dataType": "uint16", "compression": {"type": "gzip"},
            "pixelResolution": [0.5, 0.5, 2.0]}
    store = ts.open({"driver": "n5", "kvstore": f"file://{tmp}/c.n5/raw", "metadata": meta}, create=True).result()
    store.T.write(_values((8, 16, 16))).result()
    f = tmp / "c.n5" / "raw" / "attributes.json"
    a = json.loads(f.read_text())
    for k, v in attrs.items():
        if v is None:
            a.pop(k, None)
        else:
            a[k] = v
    f.write_text(json.dumps(a))
    return tmp / "c.n5" / "raw"


def field_store(tmp: Path) -> Path:
    field = lazyreg.DisplacementField.from_array(np.ones((4, 8, 8, 3), np.float32), spacing=1.0)
    return lazyreg.save_transform(field, tmp / "field.ome.zarr")


def bigstream_mat(tmp: Path, matrix: Any = None) -> Path:
    """An affine saved exactly as bigstream does: ``np.savetxt("affine.mat", affine)``."""
    m = np.array([[0.94, -0.024, 0.008, 7.028], [0.012, 1.021, -0.042, -15.2], [0.007, 0.029, 0.994, -82.9], [0, 0, 0, 1.0]])
    np.savetxt(tmp / "affine.mat", m if matrix is None else matrix)
    return tmp / "affine.mat"


def small(values: Any = None, spacing: Any = 1.0) -> Any:
    return lazyreg.image(np.random.default_rng(1).random((8, 12, 12)).astype(np.float32) if values is None else values, spacing)


def _nan_image() -> Any:
    v = np.random.default_rng(1).random((8, 12, 12)).astype(np.float32)
    v[2, 3, 4] = np.nan
    return small(v)


def _opens(path_fn: Callable[[Path], Path], **kw: Any) -> Callable[[Path], Any]:
    return lambda tmp: lazyreg.open_image(path_fn(tmp), **kw)


def _reads(path_fn: Callable[[Path], Path], **kw: Any) -> Callable[[Path], Any]:
    """Open lazily (must succeed: nothing is read) and compute: the error arises inside a dask task."""
    return lambda tmp: lazyreg.open_image(path_fn(tmp), **kw).values


def _written(path: Path) -> Path:
    return path


# --------------------------------------------------------------------------------------- API table
F = r"[^ ]*"  # a path in a message
API_CASES = [
    # TIFF pages vs metadata (fixed)
    pytest.param(_opens(lambda t: imagej_tiff(t, cut=8000)), r"stack\.tif is truncated .*ImageJ metadata \(images=20, slices=20\) declare 20 planes, but the file holds 1", id="tiff-imagej-cut-mid-data"),
    pytest.param(_opens(lambda t: imagej_tiff(t, cut=1000)), r"stack\.tif is truncated .*declare 20 planes, but the file holds 1", id="tiff-imagej-cut-in-first-plane"),
    pytest.param(_opens(lambda t: imagej_tiff(t, planes="30")), r"stack\.tif is truncated .*\(images=30, slices=30\) declare 30 planes, but the file holds 20", id="tiff-imagej-metadata-says-more"),
    pytest.param(_opens(lambda t: ome_tiff(t, size_z=30)), r"stack\.ome\.tif is truncated .*OME-XML metadata \(SizeZ=30, SizeC=1, SizeT=1\) declare 30 planes, but the file holds 20", id="tiff-ome-pages-missing"),
    pytest.param(_opens(lambda t: ome_tiff(t, cut=8000), spacing=1.0), r"stack\.ome\.tif is truncated .*page 0 points to a next page at byte \d+, past the end of the file \(8000 bytes\)", id="tiff-ome-cut"),
    pytest.param(_opens(lambda t: (t / "p.tif", tifffile.imwrite(t / "p.tif", _values((3, 8, 9)), photometric="minisblack"))[0]), r"^path: voxel spacing is unknown for .*p\.tif.*pass spacing=", id="tiff-uncalibrated"),
    pytest.param(_reads(tiled_tiff_with_bad_tile, spacing=1.0), r"^path: cannot read .*tiles\.tif: page 2 \(tile 0, 3\) is corrupt or unreadable", id="tiff-corrupt-tile"),  # fixed
    # OME-Zarr metadata (fixed)
    pytest.param(_opens(lambda t: ome_zarr(t, lambda ms: _dataset(ms).pop("path"))), r"img\.ome\.zarr/zarr\.json: 'ome\.multiscales\[0\]\.datasets\[0\]' needs a 'path'", id="omezarr-dataset-without-path"),
    pytest.param(_opens(lambda t: ome_zarr(t, replace=lambda ms: ms)), r"img\.ome\.zarr/zarr\.json: 'ome\.multiscales' must be a list of objects, got dict", id="omezarr-multiscales-dict"),
    pytest.param(_opens(lambda t: ome_zarr(t, replace=lambda ms: "0")), r"zarr\.json: 'ome\.multiscales' must be a list of objects, got str", id="omezarr-multiscales-string"),
    pytest.param(_opens(lambda t: ome_zarr(t, replace=lambda ms: [{"datasets": []}])), r"zarr\.json: 'ome\.multiscales\[0\]\.datasets' must be a non-empty list", id="omezarr-no-datasets"),
    pytest.param(_opens(lambda t: ome_zarr(t, set_scale(["2", "1", "1"]))), r"zarr\.json: datasets\[0\] \('0'\): 'scale' must be a list of 3 numbers, got \['2', '1', '1'\]", id="omezarr-scale-strings"),
    pytest.param(_opens(lambda t: ome_zarr(t, set_scale("2,1,1"))), r"zarr\.json: datasets\[0\] \('0'\): 'scale' must be a list of 3 numbers", id="omezarr-scale-one-string"),
    pytest.param(_opens(lambda t: ome_zarr(t, set_scale([2.0, 1.0]))), r"zarr\.json: datasets\[0\] \('0'\) has a scale of 2 values for 3 axes", id="omezarr-scale-wrong-length"),
    pytest.param(_opens(lambda t: ome_zarr(t, lambda ms: _dataset(ms).pop("coordinateTransformations"))), r"^path: voxel spacing is unknown for .*img\.ome\.zarr: zarr\.json has no 'scale' .*datasets\[0\].*pass spacing=\(z, y, x\)", id="omezarr-no-scale"),
    pytest.param(_opens(lambda t: ome_zarr(t, lambda ms: _dataset(ms).update(coordinateTransformations={"type": "scale"}))), r"'ome\.multiscales\[0\]\.datasets\[0\]\.coordinateTransformations' must be a list", id="omezarr-transforms-dict"),
    pytest.param(_opens(lambda t: ome_zarr(t, lambda ms: ms.update(axes="zyx"))), r"'ome\.multiscales\[0\]\.axes' must be a list", id="omezarr-axes-string"),
    pytest.param(_opens(lambda t: ome_zarr(t, set_scale([2.0, 0.0, 1.0]))), r"non-positive scale", id="omezarr-scale-zero"),
    pytest.param(_opens(lambda t: ((p := ome_zarr(t)) / "0" / "zarr.json").write_text("{not json") and p), r"^path: .*img\.ome\.zarr/0/zarr\.json is not valid JSON", id="omezarr-array-json-broken"),
    pytest.param(_opens(lambda t: ((p := ome_zarr(t)) / "zarr.json").write_text("[1, 2") and p), r"^path: .*img\.ome\.zarr/zarr\.json is not valid JSON", id="omezarr-group-json-broken"),
    pytest.param(_opens(lambda t: v2_array(t, bad_zarray=True), spacing=1.0), r"^path: .*plain2\.zarr/\.zarray is not valid JSON", id="zarr-v2-zarray-broken"),
    pytest.param(lambda t: read_ome_zarr(ome_zarr(t, lambda ms: _dataset(ms).pop("path"))), r"needs a 'path'", id="read_ome_zarr-dataset-without-path"),
    pytest.param(lambda t: read_ome_zarr(ome_zarr(t, lambda ms: _dataset(ms).pop("coordinateTransformations"))), r"zarr\.json has no 'scale' .*spacing is unknown", id="read_ome_zarr-no-scale"),
    pytest.param(_opens(lambda t: (t / "p.zarr", zarr.create_array(str(t / "p.zarr"), data=_values((2, 3, 4))))[0]), r"^path: voxel spacing is unknown for .*p\.zarr.*pass spacing=", id="zarr-plain-needs-spacing"),
    # corrupt chunks, found inside a dask task (fixed)
    pytest.param(_reads(lambda t: (corrupt_chunk(p := ome_zarr(t)), p)[1]), rf"^path: cannot read {F}img\.ome\.zarr/0: chunk 'c/0/0/0' \(file {F}img\.ome\.zarr/0/c/0/0/0\) is corrupt or unreadable \(RuntimeError", id="chunk-zarr-v3"),
    pytest.param(_reads(lambda t: v2_array(t, bad_chunk=True), spacing=1.0), rf"^path: cannot read {F}plain2\.zarr: chunk '0\.1\.0' \(file {F}plain2\.zarr/0\.1\.0\) is corrupt", id="chunk-zarr-v2"),
    pytest.param(_reads(lambda t: (corrupt_chunk(p := n5(t)), p)[1]), rf"^path: cannot read {F}c\.n5/raw: block '0/0/0' \(file {F}c\.n5/raw/0/0/0\) is corrupt", id="chunk-n5"),
    pytest.param(lambda t: lazyreg.load_transform((corrupt_chunk(p := field_store(t)), p)[1]).data.values, r"^path: cannot read .*field\.ome\.zarr/0: chunk 'c/0/0/0/0' .* is corrupt", id="chunk-field-store"),
    # N5 attributes (fixed)
    pytest.param(_opens(lambda t: n5(t, dimensions=["16", "16", "8"])), r"c\.n5/raw/attributes\.json: 'dimensions' must be a list of finite numbers", id="n5-dimensions-strings"),
    pytest.param(_opens(lambda t: n5(t, dimensions=16)), r"attributes\.json: 'dimensions' must be a list", id="n5-dimensions-number"),
    pytest.param(_opens(lambda t: n5(t, blockSize=[8, 8])), r"attributes\.json: 'blockSize' must be a list of 3 finite positive numbers", id="n5-blocksize-length"),
    pytest.param(_opens(lambda t: n5(t, pixelResolution=["0.5", "0.5", "2"])), r"attributes\.json: 'pixelResolution' must be a list of 3 finite positive numbers", id="n5-resolution-strings"),
    pytest.param(_opens(lambda t: n5(t, pixelResolution={"unit": "um", "dimensions": [1, 1]})), r"'pixelResolution\.dimensions' must be a list of 3", id="n5-resolution-dict-length"),
    pytest.param(_opens(lambda t: n5(t, downsamplingFactors=[2, 0, 2])), r"'downsamplingFactors' must be a list of 3 finite positive numbers", id="n5-factors-zero"),
    pytest.param(_opens(lambda t: n5(t, offset="0,0,0")), r"attributes\.json: 'offset' must be a list of 3", id="n5-offset-string"),
    pytest.param(_opens(lambda t: n5(t, transform={"axes": ["z", "y", "c"], "scale": [1, 1, 1]})), r"'transform\.axes' must name x, y and z", id="n5-cosem-axes"),
    pytest.param(_opens(lambda t: n5(t, transform={"axes": ["z", "y", "x"], "scale": ["a", 1, 1]})), r"'transform\.scale' must be a list of 3", id="n5-cosem-scale"),
    pytest.param(_opens(lambda t: n5(t, pixelResolution=None)), r"^path: voxel spacing is unknown for .*raw.*pass spacing=", id="n5-no-resolution"),
    pytest.param(_opens(lambda t: n5(t, dataType="complex256x")), r"unsupported dataType 'complex256x'", id="n5-datatype"),
    pytest.param(_opens(lambda t: ((p := n5(t)) / "attributes.json").write_text("{oops") and p), r"raw/attributes\.json is not valid JSON", id="n5-attributes-json-broken"),
    # open_image arguments
    pytest.param(lambda t: lazyreg.open_image(3), r"^path: expected a str or path", id="open-path-type"),
    pytest.param(lambda t: lazyreg.open_image(t / "missing.zarr"), r"^path: .*missing\.zarr does not exist", id="open-missing"),
    pytest.param(lambda t: lazyreg.open_image(ome_zarr(t), level=-1), r"^level: expected a non-negative integer", id="open-level"),
    pytest.param(lambda t: lazyreg.open_image(ome_zarr(t), group=1), r"^group: expected a str", id="open-group-type"),
    pytest.param(lambda t: lazyreg.open_image(ome_zarr(t), spacing=(1, 2)), r"^spacing: expected a number or 3 numbers", id="open-spacing-length"),
    pytest.param(lambda t: lazyreg.open_image(ome_zarr(t), spacing=0), r"^spacing: voxel spacing must be positive", id="open-spacing-zero"),
    pytest.param(lambda t: lazyreg.open_image((t / "x.bin", (t / "x.bin").write_bytes(b"12345678"))[0]), r"^path: .*x\.bin is not a format lazyreg reads", id="open-unknown-format"),
    # images
    pytest.param(lambda t: lazyreg.image(np.zeros((4, 4, 4)), spacing=(1, 2)), r"^spacing: ", id="image-spacing-length"),
    pytest.param(lambda t: lazyreg.image(np.zeros((4, 4)), spacing=1.0), r"shape", id="image-2d"),
    pytest.param(lambda t: lazyreg.image(np.zeros((0, 4, 4)), spacing=1.0), r"image is empty", id="image-empty"),
    # to_zarr
    pytest.param(lambda t: lazyreg.to_zarr(np.zeros((4, 4, 4)), t / "o.ome.zarr"), r"^img: expected an xarray\.DataArray", id="to_zarr-numpy"),
    pytest.param(lambda t: lazyreg.to_zarr(small(), _written(ome_zarr(t))), r"^path: .*img\.ome\.zarr exists; pass overwrite=True", id="to_zarr-exists"),
    pytest.param(lambda t: lazyreg.to_zarr(small(), t / "o.ome.zarr", chunks=((3, 7), 12, 12)), r"chunks", id="to_zarr-chunks"),
    # apply_transform
    pytest.param(lambda t: lazyreg.apply_transform(small(), small(), [Affine.identity()], order=2), r"^order: ", id="apply-order"),
    pytest.param(lambda t: lazyreg.apply_transform(small(), small(), [np.eye(4)]), r"^transforms", id="apply-raw-matrix"),
    pytest.param(lambda t: lazyreg.apply_transform(small(), np.zeros((8, 12, 12)), []), r"^moving: expected an xarray\.DataArray", id="apply-moving-numpy"),
    pytest.param(lambda t: lazyreg.apply_transform(small().transpose("x", "y", "z"), small(), []), r"^fixed: dims are \('x', 'y', 'z'\)", id="apply-fixed-dims"),
    # align
    pytest.param(lambda t: lazyreg.align(small(), small(), "afine"), r"unknown step 'afine' \(did you mean 'affine'\?\)", id="align-unknown-step"),
    pytest.param(lambda t: lazyreg.align(small(), small(), [("affine", {"metric": "nope"})]), r"steps\[0\] \('affine'\): .*metric", id="align-bad-option"),
    pytest.param(lambda t: lazyreg.align(small(), small(), [("affine", {"shfit": 1})]), r"unknown option 'shfit'", id="align-unknown-option"),
    pytest.param(lambda t: lazyreg.align(_nan_image(), small(), "affine").compute(), r"^fixed: image contains NaN", id="align-nan"),
    pytest.param(lambda t: lazyreg.align(small(np.zeros((8, 12, 12), np.float32)), small(), "affine").compute(), r"^fixed: image is all zero", id="align-constant"),
    pytest.param(lambda t: lazyreg.align(small(), small(), "affine", fixed_mask=small(np.ones((8, 12, 10), bool))), r"^fixed_mask: ", id="align-mask-grid"),
    # align_piecewise
    pytest.param(lambda t: lazyreg.align_piecewise(small(), small(), ["affine"], blocksize=4), r"^blocksize: every size must be at least 8", id="piecewise-blocksize"),
    pytest.param(lambda t: lazyreg.align_piecewise(small(), small(), ["affine"], blocksize=8, overlap=1.0), r"^overlap: expected a fraction", id="piecewise-overlap"),
    pytest.param(lambda t: lazyreg.align_piecewise(small(), small(), ["afine"], blocksize=8), r"unknown step 'afine'", id="piecewise-unknown-step"),
    pytest.param(lambda t: lazyreg.align_piecewise(small(), small(), ["affine"], blocksize=8, static_transforms=[np.eye(4)]), r"static_transforms\[0\]: expected an Affine", id="piecewise-static-raw"),
    # transform files
    pytest.param(lambda t: lazyreg.load_transform(t / "none.txt"), r"^path: no such file .*none\.txt", id="load-missing"),
    pytest.param(lambda t: lazyreg.load_transform((t / "m.txt", (t / "m.txt").write_text("1 2 3\n"))[0]), r"^path: expected a 4x4 homogeneous matrix in .*m\.txt', got shape \(1, 3\)", id="load-not-4x4"),
    pytest.param(lambda t: lazyreg.load_transform(bigstream_mat(t, np.eye(3))), r"^path: expected a 4x4 homogeneous matrix in .*affine\.mat', got shape \(3, 3\)", id="load-text-mat-3x3"),  # fixed
    pytest.param(lambda t: lazyreg.load_transform((t / "j.mat", (t / "j.mat").write_text("hello\n"))[0]), r"^path: could not read a 4x4 matrix from .*j\.mat' \(neither an ITK transform file nor a text matrix\)", id="load-text-mat-junk"),  # fixed
    pytest.param(lambda t: lazyreg.load_transform((t / "b.mat", (t / "b.mat").write_bytes(b"\x00\x01binary"))[0]), r"^path: SimpleITK could not read a transform from .*b\.mat", id="load-binary-mat-junk"),
    pytest.param(lambda t: lazyreg.save_transform(np.eye(4), t / "a.txt"), r"^transform: expected a lazyreg\.Affine", id="save-raw-matrix"),
    pytest.param(lambda t: lazyreg.save_transform(Affine.identity(), bigstream_mat(t)), r"^path: .*affine\.mat' already exists; pass overwrite=True", id="save-exists"),
    pytest.param(lambda t: lazyreg.save_transform(lazyreg.DisplacementField.from_array(np.zeros((2, 3, 4, 3)), spacing=1.0), t / "f.txt"), r"^path: a DisplacementField is written to", id="save-field-as-text"),
]


@pytest.mark.parametrize("call, match", API_CASES)
def test_bad_input_is_a_lazyreg_error_naming_it(tmp_path, call, match):
    with pytest.raises(LazyregError) as info:
        call(tmp_path)
    assert re.search(match, str(info.value)), f"{info.value!s} does not match {match!r}"


# --------------------------------------------------------------------------------------- CLI table
def _pair(tmp: Path) -> tuple[str, str]:
    """Fixed and moving OME-Zarr images (8 x 12 x 12), written once per test."""
    fix, mov = tmp / "fix.ome.zarr", tmp / "mov.ome.zarr"
    if not fix.exists():
        lazyreg.to_zarr(small(), fix)
        lazyreg.to_zarr(small(), mov)
    return str(fix), str(mov)


def _plain(tmp: Path) -> str:
    path = tmp / "plain.zarr"
    zarr.create_array(str(path), data=np.random.default_rng(2).random((8, 12, 12)).astype(np.float32), chunks=(4, 12, 12))
    return str(path)


CLI_CASES = [
    # --spacing: the error names the flag, and every command that opens images has it (fixed)
    pytest.param(lambda t: ["info", _plain(t)], r"^path: voxel spacing is unknown for .*plain\.zarr .*pass --spacing Z,Y,X$", id="info-needs-spacing"),
    pytest.param(lambda t: ["apply", _plain(t), _pair(t)[1], "-o", str(t / "o.ome.zarr")], r"^fixed: voxel spacing is unknown .*pass --fixed-spacing Z,Y,X \(or --spacing for both images\)", id="apply-needs-fixed-spacing"),
    pytest.param(lambda t: ["apply", _pair(t)[0], _plain(t), "-o", str(t / "o.ome.zarr"), "--fixed-spacing", "1"], r"^moving: .*pass --moving-spacing Z,Y,X", id="apply-needs-moving-spacing"),
    pytest.param(lambda t: ["align", _plain(t), _pair(t)[1], "-o", str(t / "o")], r"^fixed: .*pass --fixed-spacing", id="align-needs-spacing"),
    pytest.param(lambda t: ["align-piecewise", _pair(t)[0], _plain(t), "-o", str(t / "o"), "--steps", "affine"], r"^moving: .*pass --moving-spacing", id="piecewise-needs-spacing"),
    pytest.param(lambda t: ["info", _plain(t), "--spacing", "0"], r"^path: spacing \(--spacing\): voxel spacing must be positive", id="info-spacing-zero"),
    pytest.param(lambda t: ["apply", *_pair(t), "-o", str(t / "o.ome.zarr"), "--spacing", "1,2"], r"argument --spacing: expected one number or three", id="apply-spacing-two-numbers"),
    pytest.param(lambda t: ["info", str(ome_zarr(t, lambda ms: _dataset(ms).pop("coordinateTransformations")))], r"^path: voxel spacing is unknown .*no 'scale'.*pass --spacing Z,Y,X", id="info-omezarr-no-scale"),
    # malformed metadata and files: exit 2, not 1 (fixed)
    pytest.param(lambda t: ["info", str(ome_zarr(t, lambda ms: _dataset(ms).pop("path")))], r"^path: .*zarr\.json: 'ome\.multiscales\[0\]\.datasets\[0\]' needs a 'path'", id="info-omezarr-no-path"),
    pytest.param(lambda t: ["info", str(ome_zarr(t, replace=lambda ms: ms))], r"'ome\.multiscales' must be a list", id="info-omezarr-multiscales-dict"),
    pytest.param(lambda t: ["info", str(((p := ome_zarr(t)) / "0" / "zarr.json").write_text("nope") and p)], r"0/zarr\.json is not valid JSON", id="info-array-json-broken"),
    pytest.param(lambda t: ["info", str(n5(t, pixelResolution=["a", "b", "c"]).parent) + ":raw"], r"attributes\.json: 'pixelResolution' must be a list", id="info-n5-resolution"),
    pytest.param(lambda t: ["info", str(imagej_tiff(t, cut=8000))], r"stack\.tif is truncated .*declare 20 planes, but the file holds 1", id="info-truncated-tiff"),
    pytest.param(lambda t: ["apply", _pair(t)[0], str(corrupt_chunk(m := Path(_pair(t)[1])) and m), "-o", str(t / "o.ome.zarr"), "--scheduler", "threads"],
                 r"^moving: |^path: cannot read .*mov\.ome\.zarr/0: chunk 'c/0/0/0' .* is corrupt or unreadable", id="apply-corrupt-chunk"),
    pytest.param(lambda t: ["apply", *_pair(t), "-t", str((t / "j.mat", (t / "j.mat").write_text("x y\n"))[0]), "-o", str(t / "o.ome.zarr")], r"^-t: could not read a 4x4 matrix from .*j\.mat", id="apply-junk-mat"),
    pytest.param(lambda t: ["align-piecewise", *_pair(t), "-o", str(t / "o"), "--steps", "affine", "--static", str(bigstream_mat(t, np.eye(3)))], r"^--static: expected a 4x4", id="piecewise-static-3x3"),
    pytest.param(lambda t: ["invert", str(bigstream_mat(t)), "-o", str(t / "inv.ome.zarr")], r"not one displacement field", id="invert-affine"),
    # existing checks
    pytest.param(lambda t: ["align", *_pair(t), "-o", str(t / "o"), "--steps", "afine"], r"unknown step 'afine'", id="align-unknown-step"),
    pytest.param(lambda t: ["align-piecewise", *_pair(t), "-o", str(t / "o"), "--steps", "affine", "--blocksize", "4"], r"blocksize: ", id="piecewise-blocksize"),
    pytest.param(lambda t: ["apply", *_pair(t), "-t", str(t / "none.txt"), "-o", str(t / "o.ome.zarr")], r"^-t: .*none\.txt does not exist", id="apply-missing-transform"),
    pytest.param(lambda t: ["info", str(t / "nothing.zarr")], r"^path: .*nothing\.zarr does not exist", id="info-missing"),
]


@pytest.mark.parametrize("argv, expected", CLI_CASES)
def test_cli_bad_input_exits_2_with_one_line_naming_it(tmp_path, capsys, argv, expected):
    args = argv(tmp_path)
    capsys.readouterr()
    assert main(args + ["--quiet"]) == 2, args
    err = capsys.readouterr().err
    assert err.startswith("lazyreg: error: ") and err.count("\n") == 1, err
    message = err[len("lazyreg: error: ") :].strip()
    assert re.search(expected, message), f"{message!r} does not match {expected!r}"
    assert not any((tmp_path / n).exists() for n in ("o", "o.ome.zarr", "inv.ome.zarr"))  # nothing written


# ----------------------------------------------------------------------- what the fixes make work
def test_bigstream_savetxt_mat_is_read_as_its_zyx_physical_matrix(tmp_path):
    m = np.array([[0.94, -0.024, 0.008, 7.028], [0.012, 1.021, -0.042, -15.2], [0.007, 0.029, 0.994, -82.9], [0, 0, 0, 1.0]])
    np.savetxt(tmp_path / "affine.mat", m)  # exactly what bigstream's tutorial does
    A = lazyreg.load_transform(tmp_path / "affine.mat")
    assert isinstance(A, Affine)
    np.testing.assert_array_equal(A.matrix, m)  # the same fixed -> moving physical zyx matrix
    # an ITK binary .mat (what lazyreg and ITK write) is still read as ITK
    itk = lazyreg.save_transform(Affine.from_translation((1.0, 2.0, 3.0)), tmp_path / "itk.mat")
    np.testing.assert_allclose(lazyreg.load_transform(itk)([0.0, 0.0, 0.0]), [1.0, 2.0, 3.0])
    # and the command line takes it as -t
    fix, mov = _pair(tmp_path)
    out = tmp_path / "a.ome.zarr"
    assert main(["apply", fix, mov, "-t", str(tmp_path / "affine.mat"), "-o", str(out), "--scheduler", "threads", "-q"]) == 0
    expected = lazyreg.apply_transform(lazyreg.open_image(fix), lazyreg.open_image(mov), [Affine(m)])
    np.testing.assert_array_equal(lazyreg.open_image(out).values, expected.values)


def test_spacing_flags_open_images_without_metadata(tmp_path, capsys):
    plain = _plain(tmp_path)
    assert main(["info", plain, "--spacing", "2,1,0.5", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["spacing"] == [2.0, 1.0, 0.5]
    out = tmp_path / "a.ome.zarr"
    argv = ["apply", plain, plain, "-o", str(out), "--scheduler", "threads", "-q"]
    assert main(argv + ["--spacing", "2", "--moving-spacing", "1,1,1"]) == 0
    img = lazyreg.open_image(out)
    assert lazyreg.spacing(img) == (2.0, 2.0, 2.0)  # the output grid is FIXED's: --spacing
    moving = lazyreg.image(zarr.open_array(plain, mode="r")[:], spacing=1.0)
    np.testing.assert_array_equal(img.values, lazyreg.apply_transform(lazyreg.image(moving.values, 2.0), moving, []).values)


def test_omezarr_without_scale_opens_with_spacing_and_good_files_still_open(tmp_path):
    path = ome_zarr(tmp_path, lambda ms: _dataset(ms).pop("coordinateTransformations"))
    img = lazyreg.open_image(path, spacing=(2, 1, 1))
    assert lazyreg.spacing(img) == (2.0, 1.0, 1.0) and img.shape == (8, 16, 16)
    full = imagej_tiff(tmp_path, "full.tif")
    assert lazyreg.open_image(full).shape == (20, 16, 24)
    assert lazyreg.open_image(ome_tiff(tmp_path)).shape == (20, 16, 24)


@pytest.mark.slow
def test_a_corrupt_chunk_is_named_on_a_distributed_worker_too(tmp_path, local_cluster):
    from distributed import Client

    path = ome_zarr(tmp_path)
    corrupt_chunk(path)
    img = lazyreg.open_image(path)
    with Client(local_cluster) as client:
        with pytest.raises(LazyregError, match=r"^path: cannot read .*img\.ome\.zarr/0: chunk 'c/0/0/0'"):
            client.compute(img.data.sum()).result()


# ------------------------------------------------------------ arguments of resampling and registration


def _img(values, spacing=1.0, dask_chunks=None):
    values = np.asarray(values)
    data = da.from_array(values, chunks=dask_chunks) if dask_chunks else values
    return lazyreg.image(data, spacing)


def _smooth(shape, seed=0, dtype=np.float32):
    from scipy import ndimage

    v = ndimage.gaussian_filter(np.random.default_rng(seed).random(shape), 2.0)
    return ((v - v.min()) / (v.max() - v.min()) * 100).astype(dtype)


# ---------------------------------------------------------------------------- entry points


def apply(moving, fixed=None, transforms=(), compute=False, **kw):
    out = lazyreg.apply_transform(moving if fixed is None else fixed, moving, list(transforms), **kw)
    return out.compute(scheduler="threads") if compute else out


def piecewise(fixed, moving, **kw):
    field = lazyreg.align_piecewise(fixed, moving, [("affine", {"shrink_factors": (1,)})], blocksize=16, **kw)
    return field.compute(scheduler="threads")


def align(fixed, moving, step="affine", **options):
    return lazyreg.align(fixed, moving, [(step, options)]).compute(scheduler="threads")


def region_bound(fn, nbytes="1 MiB"):
    with dask.config.set({"lazyreg.max-region-bytes": nbytes}):
        return fn()


# ---------------------------------------------------------------------------- bad inputs


def _with(values, index, value):
    v = np.array(values, dtype=np.float32)
    v[index] = value
    return v


SMOOTH = _smooth((16, 32, 32))
U8 = _img(SMOOTH.astype(np.uint8))
F32 = _img(SMOOTH)
INF = _with(SMOOTH, (3, 4, 5), np.inf)
NAN = _with(SMOOTH, (3, 4, 5), np.nan)
SINGULAR = Affine(np.diag([0.0, 1.0, 1.0, 1.0]))
NEAR_SINGULAR = Affine(np.diag([1e-13, 1.0, 1.0, 1.0]))
BIG_MOVING = lazyreg.image(da.zeros((128, 128, 128), dtype=np.uint16, chunks=64), 1.0)  # 4 MiB, never read
COARSE = lazyreg.grid((4, 4, 4), 32.0)
LAZY_EYE = Affine(da.from_array(np.eye(4), chunks=(4, 4)))
NAN_BLOCK = _img(_with(SMOOTH, (slice(2, 6), slice(2, 6), slice(2, 6)), np.nan))
NAN_COLUMN = _img(_with(SMOOTH, (slice(None), slice(None), 3), np.nan))

CASES = [
    # fill_value that the output dtype cannot hold (was: RuntimeWarning from the cast, then garbage)
    ("fill-nan-uint8", lambda: apply(U8, fill_value=np.nan), LazyregError, ["fill_value", "nan", "uint8", "float32"]),
    ("fill-inf-int16", lambda: apply(_img(SMOOTH.astype(np.int16)), fill_value=-np.inf), LazyregError, ["fill_value", "int16", "finite"]),
    ("fill-overflow-float32", lambda: apply(F32, fill_value=1e39), LazyregError, ["fill_value", "float32", "overflows"]),
    # infinite moving values (was: silently clamped to 3.4e38, neighbours NaN), lazy and in memory
    ("inf-dask", lambda: apply(_img(INF, dask_chunks=8), compute=True), LazyregError, ["moving", "infinite", "moving voxels z"]),
    ("inf-numpy-order0", lambda: apply(_img(INF), compute=True, order=0), LazyregError, ["moving", "infinite"]),
    # NaN under cubic interpolation spreads over each task's region (chunk-dependent result)
    ("nan-cubic", lambda: apply(_img(NAN, dask_chunks=8), compute=True, order=3), LazyregError, ["moving", "NaN", "order=3", "order=1"]),
    # singular affines: a warning when applied, an error when inverted
    ("apply-singular", lambda: apply(F32, transforms=[SINGULAR]), LazyregWarning, ["transforms[0]", "singular", "condition number"]),
    ("apply-near-singular", lambda: apply(F32, transforms=[Affine.identity(), NEAR_SINGULAR]), LazyregWarning, ["transforms[1]", "singular", "1e+13"]),
    ("already: invert-singular", lambda: SINGULAR.inverse(), LazyregError, ["matrix", "not invertible", "condition"]),
    ("already: invert-near-singular", lambda: NEAR_SINGULAR.inverse(), LazyregError, ["not invertible"]),
    # spacing and origin that SimpleITK / float64 coordinates cannot handle (was: raw SimpleITK error)
    ("spacing-1e-300", lambda: lazyreg.image(SMOOTH, 1e-300), LazyregError, ["spacing", "1e-300", "outside"]),
    ("spacing-1e300", lambda: lazyreg.grid((4, 4, 4), (1.0, 1.0, 1e300)), LazyregError, ["spacing", "1e+300"]),
    ("coords-spacing-1e-300", lambda: apply(xr.DataArray(SMOOTH, dims=("z", "y", "x"), coords={d: np.arange(n) * 1e-300 for d, n in zip("zyx", SMOOTH.shape)})), LazyregError, ["fixed", "spacing", "'z'"]),
    ("origin-1e30", lambda: lazyreg.image(SMOOTH, 1.0, origin=(0.0, 0.0, 1e30)), LazyregError, ["origin", "voxels from 0", "along x"]),
    # output chunking of many tiny chunks (chunks=1: 196,608 tasks, 60 s to build)
    ("chunks-1", lambda: apply(_img(np.zeros((24, 24, 24), np.float32)), chunks=1), LazyregError, ["chunks", "13,824", "10,000", "64.00 kiB"]),
    # a coarse fixed grid: one task needs a huge moving region (was: KilledWorker)
    ("coarse-grid", lambda: region_bound(lambda: apply(BIG_MOVING, fixed=COARSE)), LazyregError, ["moving", "max-region-bytes", "level=", "coarsen(", "1.80 MiB", "1.00 MiB"]),
    # NaN in align_piecewise input (was: blocks skipped as "foreground 0%")
    ("piecewise-nan-fixed", lambda: piecewise(NAN_BLOCK, F32, foreground_threshold=1.0), LazyregError, ["fixed", "NaN", "block (0, 0, 0)", "align_piecewise"]),
    ("piecewise-nan-fixed-threshold", lambda: piecewise(NAN_BLOCK, F32), LazyregError, ["fixed", "NaN", "foreground threshold"]),
    ("piecewise-nan-moving", lambda: piecewise(F32, NAN_COLUMN, foreground_threshold=1.0), LazyregError, ["moving", "NaN", "static_transforms"]),
    # shrink_factors advice that can be followed on thin images
    ("shrink-thin", lambda: align(_img(_smooth((3, 32, 32))), _img(_smooth((3, 32, 32))), shrink_factors=(4, 2, 1)), LazyregError, ["shrink_factors", "axis z", "at least 2", "shrink_factors=(1,)"]),
    ("shrink-1-voxel", lambda: align(_img(_smooth((1, 32, 32))), _img(_smooth((1, 32, 32))), shrink_factors=(2, 1)), LazyregError, ["shrink_factors", "axis z", "(1, 32, 32)", "largest factor fixed allows is 1"]),
]


@pytest.mark.parametrize("call, kind, words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_gives_a_clear_error_or_warning(call, kind, words):
    if issubclass(kind, Warning):
        with pytest.warns(kind) as record:
            call()
        message = " ".join(str(w.message) for w in record if issubclass(w.category, kind))
    else:
        with pytest.raises(kind) as info:
            call()
        message = str(info.value)
    missing = [w for w in words if w not in message]
    assert not missing, f"{missing} not in: {message}"


def test_the_table_counts_its_cases():
    assert len(CASES) == 21
    assert len({c[0] for c in CASES}) == len(CASES)


# ---------------------------------------------------------------------------- what stays allowed


def test_advice_that_is_given_works():
    """The errors' advice, followed, runs: a float copy takes a NaN fill; a 1-voxel-thick pair
    registers with shrink_factors=(1,) or automatic ones (factor 1 was refused on a 1-voxel axis);
    the suggested chunks are accepted; a raised region bound lets the coarse grid through."""
    out = apply(_img(SMOOTH.astype(np.float32)), transforms=[Affine.from_translation(100.0)], fill_value=np.nan, compute=True)
    assert np.isnan(out.values).all()
    f, m = _smooth((1, 48, 48), 1), None
    m = np.roll(f, 2, axis=2)
    for options in ({"shrink_factors": (1,)}, {}):
        A = align(_img(f), _img(m), "rigid", **options)
        assert abs(A.matrix[2, 3] - 2.0) < 0.3, A.matrix
    assert apply(_img(np.zeros((24, 24, 24), np.float32)), chunks=(24, 24, 24)).data.npartitions == 1
    assert region_bound(lambda: apply(BIG_MOVING, fixed=COARSE), "8 MiB").shape == (4, 4, 4)


def test_the_default_chunking_does_not_follow_many_tiny_moving_chunks():
    """Default output chunks follow moving's, except when that makes more than 10,000 tiny tasks:
    then chunks of about 4 MiB (no error for an argument the user did not give)."""
    moving = lazyreg.image(da.zeros((48, 64, 64), dtype=np.float32, chunks=2), 1.0)  # 24,576 chunks of 32 B
    out = lazyreg.apply_transform(moving, moving)
    assert out.data.chunks == ((48,), (64,), (64,))


def test_nan_with_linear_interpolation_stays_local_and_chunk_independent():
    """NaN as "no data" keeps working for orders 0 and 1: it reaches only the output voxels next to it."""
    img = _img(NAN, dask_chunks=8)
    shift = [Affine.from_translation(0.3)]
    whole = apply(img, transforms=shift, compute=True).values
    chunked = apply(img, transforms=shift, compute=True, chunks=4).values
    np.testing.assert_array_equal(np.isnan(whole), np.isnan(chunked))
    np.testing.assert_allclose(whole, chunked, rtol=1e-6)
    assert 1 <= np.isnan(whole).sum() <= 8


def test_large_finite_moving_values_are_not_taken_for_infinite():
    """The check for infinite values sums each region (one pass); a sum that overflows float32
    must not make finite values an error."""
    big = np.full((8, 8, 8), 3e38, np.float32)
    out = apply(_img(big), transforms=[Affine.from_translation(0.5)], compute=True).values
    assert np.isfinite(out).all() and out.max() == pytest.approx(3e38, rel=1e-6)


def test_a_store_backed_moving_image_with_a_lazy_affine_checks_its_region_in_the_task(tmp_path):
    """With a lazy transform the region is known only in the task: it is checked before reading."""
    lazyreg.to_zarr(lazyreg.image(np.zeros((64, 64, 64), np.uint16), 1.0), tmp_path / "m.ome.zarr")
    moving = lazyreg.open_image(tmp_path / "m.ome.zarr")
    out = region_bound(lambda: apply(moving, fixed=lazyreg.grid((2, 2, 2), 32.0), transforms=[LAZY_EYE]), "64 KiB")
    with pytest.raises(LazyregError, match="max-region-bytes"):
        out.compute(scheduler="threads")


def test_more_than_a_million_tasks_warns():
    from lazyreg.resample_checks import MANY_TASKS, check_output_chunks

    with pytest.warns(LazyregWarning, match="1,010,000 output tasks"):
        check_output_chunks(((64,) * 100, (64,) * 100, (64,) * 101), np.dtype(np.uint16), 64)
    assert MANY_TASKS == 1_000_000


def test_the_cli_gives_exit_code_2_for_a_nan_fill_of_an_integer_image(tmp_path, capsys):
    img = lazyreg.image(SMOOTH.astype(np.uint16), 1.0)
    lazyreg.to_zarr(img, tmp_path / "a.ome.zarr")
    argv = ["apply", str(tmp_path / "a.ome.zarr"), str(tmp_path / "a.ome.zarr"), "-o", str(tmp_path / "o.ome.zarr"),
            "--fill-value", "nan", "--scheduler", "threads"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "fill_value" in err and "uint16" in err
    assert not (tmp_path / "o.ome.zarr").exists()
