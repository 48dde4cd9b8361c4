"""Writes that cannot lose data silently (issue 14, items 3 and 4, output path errors, a killed writer).

* One writer at a time per output (:mod:`lazyreg.io.locks`): a second writer - thread, process or
  command - fails at once naming the holder, the first one's output is intact; stale locks.
* Every chunk is written and counted (:mod:`lazyreg.io.chunk_files`): a lost chunk file is refused
  on open and listed by ``lazyreg info --check``; foreign stores say how many files exist.
* Read-only output locations, an unwritable ``--report``, an overwrite that cannot delete.
* A writer process killed with SIGKILL mid-write: refused on open, and an overwrite rerun is
  bit-identical to an uninterrupted write.

Each test failed on the code before these changes (checked by running this file against a copy of
the package as it was: ``PYTHONPATH=<old copy> pytest tests/test_io_integrity.py``).
"""

from __future__ import annotations

import builtins
import errno
import gc
import io
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import dask
import dask.threaded
import dask.array as da
import numpy as np
import pytest
import zarr

import lazyreg
from lazyreg import LazyregError
from lazyreg.cli import main
from lazyreg.io.locks import acquire_lock, lock_file

SPACING = (2.0, 1.0, 1.0)


def _values(shape=(8, 12, 12), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(1, 60000, shape).astype(np.uint16)


def _snapshot(path: Path) -> dict:
    """Every file below ``path`` with its bytes."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*")) if f.is_file()}


def _blocking_image(values: np.ndarray, chunks, started: threading.Event, go: threading.Event, at=(1, 0, 0)):
    """An image whose chunk ``at`` waits for ``go`` (after setting ``started``): a write in progress."""

    def wait(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == at:
            started.set()
            assert go.wait(60)
        return block

    arr = da.from_array(values, chunks=chunks).map_blocks(wait, dtype=values.dtype)
    return lazyreg.image(arr, SPACING)


def _in_thread(fn, *args, **kwargs) -> dict:
    """Run ``fn`` in another thread (another writer for the locks); its result or error, and seconds."""
    out: dict = {}

    def run():
        t = time.perf_counter()
        try:
            out["result"] = fn(*args, **kwargs)
        except BaseException as e:  # noqa: BLE001 - handed back to the test
            out["error"] = e
        out["seconds"] = time.perf_counter() - t

    th = threading.Thread(target=run)
    th.start()
    th.join(120)
    return out


# ------------------------------------------------------------------------------ writer locks
def test_a_second_writer_fails_at_once_and_the_first_output_is_intact(tmp_path):
    path = tmp_path / "out.ome.zarr"
    first, second = _values(seed=1), _values(seed=2)
    started, go = threading.Event(), threading.Event()
    writer = threading.Thread(
        target=lambda: lazyreg.to_zarr(_blocking_image(first, (4, 6, 6), started, go), path, overwrite=True)
    )
    writer.start()
    try:
        assert started.wait(60)
        other = _in_thread(lazyreg.to_zarr, lazyreg.image(second, SPACING), path, overwrite=True, chunks=(4, 6, 6))
    finally:
        go.set()
        writer.join(60)
    err = other.get("error")
    assert isinstance(err, LazyregError), other
    msg = str(err)
    assert str(path) in msg and "is being written by another writer" in msg
    assert f"pid {os.getpid()} (this process) on host {socket.gethostname()} since " in msg
    assert str(lock_file(path)) in msg and other["seconds"] < 5
    np.testing.assert_array_equal(lazyreg.open_image(path).values, first)
    assert not lock_file(path).exists()  # released when the write completed


def test_a_field_store_or_a_transform_file_being_written_is_not_written_twice(tmp_path):
    field = lazyreg.DisplacementField.from_array(np.ones((4, 6, 6, 3), np.float32), spacing=1.0)
    for name, transform in (("field.ome.zarr", field), ("affine.txt", lazyreg.Affine.identity()), ("field.mha", field)):
        path = tmp_path / name
        with acquire_lock(path):  # another writer, in this thread: the call below runs in another
            other = _in_thread(lazyreg.save_transform, transform, path, overwrite=True)
        assert isinstance(other.get("error"), LazyregError) and "is being written by another writer" in str(other["error"])
        assert not path.exists()
        lazyreg.save_transform(transform, path)  # free again
    assert lazyreg.load_transform(tmp_path / "field.ome.zarr").grid.shape == (4, 6, 6)


def test_a_delayed_write_holds_its_lock_until_computed_or_dropped(tmp_path):
    img = lazyreg.image(_values(), SPACING)
    path = tmp_path / "d.ome.zarr"
    write = lazyreg.to_zarr(img, path, compute=False)
    other = _in_thread(lazyreg.to_zarr, img, path, overwrite=True)
    assert "is being written by another writer" in str(other.get("error"))
    with pytest.raises(LazyregError, match=r"\(this process\)"):  # the same thread too
        lazyreg.to_zarr(img * 2, path, overwrite=True, compute=False)
    dask.compute(write)
    assert not lock_file(path).exists()
    np.testing.assert_array_equal(lazyreg.open_image(path).values, img.values)
    never = lazyreg.to_zarr(img, tmp_path / "never.ome.zarr", compute=False)
    assert lock_file(tmp_path / "never.ome.zarr").exists()
    del never
    gc.collect()
    # dropped before computing: the file stays (the graph may have been submitted), but this
    # process takes it over for its next write
    lazyreg.to_zarr(img, tmp_path / "never.ome.zarr", overwrite=True)
    assert not lock_file(tmp_path / "never.ome.zarr").exists()


def test_a_submitted_write_finishes_after_its_delayed_is_dropped(tmp_path):
    # as ``future = client.compute(to_zarr(..., compute=False))`` without keeping the delayed
    img = lazyreg.image(_values(), SPACING)
    path = tmp_path / "submitted.ome.zarr"
    write = lazyreg.to_zarr(img, path, compute=False)
    graph, key = dict(write.__dask_graph__()), write.key
    del write
    gc.collect()
    dask.threaded.get(graph, key)
    assert not lock_file(path).exists()
    np.testing.assert_array_equal(lazyreg.open_image(path).values, img.values)


def test_a_write_whose_lock_was_broken_is_not_marked_complete(tmp_path):
    path = tmp_path / "b.ome.zarr"
    write = lazyreg.to_zarr(lazyreg.image(_values(), SPACING), path, compute=False)
    lock_file(path).unlink()  # someone deleted it by hand, and another writer may have started
    with pytest.raises(LazyregError, match="was removed or taken by another writer"):
        dask.compute(write)
    with pytest.raises(LazyregError, match="incomplete"):
        lazyreg.open_image(path)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _fake_lock(target: Path, pid: int, host: str, **more) -> Path:
    f = lock_file(target)
    f.write_text(json.dumps({"pid": pid, "host": host, "since": "2026-01-01T00:00:00+00:00", "token": "x", **more}))
    return f


def test_stale_locks_are_taken_over_and_live_or_remote_ones_refused(tmp_path, caplog):
    img = lazyreg.image(_values(), SPACING)
    path = tmp_path / "s.ome.zarr"
    dead = _dead_pid()
    _fake_lock(path, dead, socket.gethostname())
    with caplog.at_level(logging.WARNING, logger="lazyreg"):
        lazyreg.to_zarr(img, path)
    assert any("took over the stale write lock" in r.getMessage() and f"pid {dead}" in r.getMessage() for r in caplog.records)
    assert not lock_file(path).exists()
    _fake_lock(path, os.getppid(), socket.gethostname(), boot="a boot before this one")  # alive, but a reused pid
    with caplog.at_level(logging.WARNING, logger="lazyreg"):
        lazyreg.to_zarr(img, path, overwrite=True)
    assert not lock_file(path).exists()
    here = socket.gethostname()
    live, remote, container = (os.getppid(), here, {}), (dead, "another-host.example", {}), (dead, here, {"pidns": "pid:[1]"})
    for pid, host, more in (live, remote, container):  # refused: alive, or not judged from here
        f = _fake_lock(path, pid, host, **more)
        with pytest.raises(LazyregError) as e:
            lazyreg.to_zarr(img, path, overwrite=True)
        assert f"pid {pid} on host {host} since 2026-01-01" in str(e.value)
        assert f"if that writer is no longer running, delete {f}" in str(e.value)
        f.unlink()
    np.testing.assert_array_equal(lazyreg.open_image(path).values, img.values)


def _stores(tmp_path) -> tuple[Path, Path, Path]:
    img = lazyreg.image(_values(), SPACING)
    fix, mov = lazyreg.to_zarr(img, tmp_path / "fix.ome.zarr"), lazyreg.to_zarr(img, tmp_path / "mov.ome.zarr")
    t = lazyreg.save_transform(lazyreg.Affine.identity(), tmp_path / "identity.txt")
    return fix, mov, t


def test_a_second_command_writing_the_same_output_fails_and_deletes_nothing(tmp_path, capsys):
    fix, mov, t = _stores(tmp_path)
    out = tmp_path / "out.ome.zarr"
    apply = ["apply", str(fix), str(mov), "-t", str(t), "-o", str(out), "--scheduler", "threads", "--quiet"]
    with acquire_lock(out):  # a first command, still writing (in this thread; main runs in another)
        out.mkdir()
        (out / "zarr.json").write_text("{}")
        before = _snapshot(out)
        for extra in ([], ["--overwrite"]):
            code = _in_thread(main, apply + extra)["result"]
            assert code == 2 and _snapshot(out) == before
    assert "is being written by another writer" in capsys.readouterr().err
    assert main(apply + ["--overwrite"]) == 0
    np.testing.assert_array_equal(lazyreg.open_image(out).values, lazyreg.open_image(fix).values)


# ----------------------------------------------------------------------- chunk completeness
def test_every_chunk_is_written_and_a_lost_one_is_refused_on_open(tmp_path):
    mostly_empty = np.zeros((8, 12, 12), np.uint16)
    mostly_empty[:4, :6, :6] = 7
    path = lazyreg.to_zarr(lazyreg.image(mostly_empty, SPACING), tmp_path / "e.ome.zarr", chunks=(4, 6, 6))
    chunk_files = sorted(f.relative_to(path).as_posix() for f in (path / "0" / "c").rglob("*") if f.is_file())
    assert len(chunk_files) == 8  # the 7 empty chunks too
    (path / "0/c/1/1/0").unlink()
    with pytest.raises(LazyregError) as e:
        lazyreg.open_image(path)
    assert f"{path} is missing 1 of its 8 chunk files (0/c/1/1/0); they would read as zeros" in str(e.value)
    with pytest.raises(LazyregError, match="missing 1 of its 8 chunk files"):
        lazyreg.open_image(path / "0")
    with dask.config.set({"lazyreg.verify-chunks": False}):  # read a damaged store anyway
        assert int(lazyreg.open_image(path).values.sum()) == 7 * 4 * 6 * 6
    field = lazyreg.DisplacementField.from_array(np.zeros((4, 6, 6, 3), np.float32), spacing=1.0)
    fpath = lazyreg.save_transform(field, tmp_path / "f.ome.zarr")
    next(f for f in (fpath / "0" / "c").rglob("*") if f.is_file()).unlink()
    with pytest.raises(LazyregError, match="missing 1 of its 1 chunk files"):
        lazyreg.load_transform(fpath)


def test_info_check_lists_missing_chunk_files_by_name(tmp_path, capsys):
    path = lazyreg.to_zarr(lazyreg.image(_values(), SPACING), tmp_path / "a.ome.zarr", chunks=(4, 6, 6))
    assert main(["info", str(path), "--check"]) == 0
    assert "8 of 8 chunk files: every chunk written by lazyreg" in capsys.readouterr().out
    for key in ("0/c/0/1/1", "0/c/1/0/1"):
        (path / key).unlink()
    assert main(["info", str(path)]) == 2  # the open refuses it, naming the files
    assert "is missing 2 of its 8 chunk files (0/c/0/1/1, 0/c/1/0/1)" in capsys.readouterr().err
    assert main(["info", str(path), "--check"]) == 2
    captured = capsys.readouterr()
    assert "6 of 8 chunk files: 2 MISSING" in captured.out
    assert f"missing  {path / '0/c/0/1/1'}" in captured.out and f"missing  {path / '0/c/1/0/1'}" in captured.out
    assert "missing 2 of its 8 chunk files (listed above)" in captured.err
    assert main(["info", str(path), "--check", "--json"]) == 2
    assert json.loads(capsys.readouterr().out)["chunk_files"]["missing"] == ["c/0/1/1", "c/1/0/1"]


def _foreign_ome_zarr(path: Path, fmt: int) -> Path:
    """An OME-Zarr image written by zarr-python (0.4 on zarr v2, 0.5 on v3), which skips empty chunks."""
    ms = [{"axes": [{"name": a, "type": "space"} for a in "zyx"],
           "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0, 1.0, 1.0]}]}]}]
    attrs = {"multiscales": [{**ms[0], "version": "0.4"}]} if fmt == 2 else {"ome": {"version": "0.5", "multiscales": ms}}
    group = zarr.open_group(str(path), mode="w", zarr_format=fmt, attributes=attrs)
    a = group.create_array("0", shape=(4, 4, 4), chunks=(2, 2, 2), dtype="u1", fill_value=0)
    a[:2] = 1  # the four chunks of a[2:] hold only the fill value: not written
    return path


@pytest.mark.parametrize("fmt", [2, 3])
def test_info_counts_the_chunk_files_of_foreign_zarr_stores(tmp_path, capsys, fmt):
    path = _foreign_ome_zarr(tmp_path / "f.ome.zarr", fmt)
    assert main(["info", str(path), "--json"]) == 0
    c = json.loads(capsys.readouterr().out)["chunk_files"]
    assert (c["expected"], c["present"], c["written_whole_by_lazyreg"]) == (8, 4, False)
    assert main(["info", str(path)]) == 0
    assert "4 of 8 chunk files: 4 absent: read as the fill value" in capsys.readouterr().out
    assert main(["info", str(path), "--check"]) == 0  # an absent chunk may be an empty one: listed, not an error
    out = capsys.readouterr().out
    assert out.count("absent   ") == 4 and str(path / "0" / ("1.1.1" if fmt == 2 else "c/1/1/1")) in out


def test_info_counts_the_blocks_of_an_n5_dataset(tmp_path, capsys):
    import tensorstore as ts

    spec = {
        "driver": "n5",
        "kvstore": {"driver": "file", "path": str(tmp_path / "img.n5" / "s0")},
        "metadata": {"dimensions": [8, 8, 8], "blockSize": [4, 4, 4], "dataType": "uint8", "compression": {"type": "raw"},
                     "pixelResolution": {"dimensions": [1, 1, 1], "unit": "um"}},
    }
    (tmp_path / "img.n5").mkdir()
    (tmp_path / "img.n5" / "attributes.json").write_text('{"n5": "2.0.0"}')
    store = ts.open(spec, create=True).result()
    store[:4, :4, :4].write(np.ones((4, 4, 4), np.uint8)).result()  # one block of eight
    assert main(["info", f"{tmp_path / 'img.n5'}:s0", "--check"]) == 0
    out = capsys.readouterr().out
    assert "1 of 8 chunk files: 7 absent" in out and f"absent   {tmp_path / 'img.n5' / 's0' / '1/1/1'}" in out


# ------------------------------------------------------------------------ output path errors
@pytest.fixture()
def readonly(monkeypatch):
    """``readonly(folder)`` makes a folder read-only: its mode (what a normal user meets) and, as
    root ignores modes, the OS calls that create, rename or delete entries in it or below it fail
    with EACCES as they would for a normal user (os.access answers accordingly)."""
    frozen: list[Path] = []
    real = {n: getattr(os, n) for n in ("open", "mkdir", "rename", "replace", "unlink", "rmdir", "access")}
    real_open = builtins.open

    def under(p, dir_fd=None, itself=False) -> bool:
        if dir_fd is not None:
            p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), os.fspath(p))
        p = Path(os.path.abspath(os.fspath(p)))
        where = p if itself else p.parent
        return any(where == f or f in where.parents for f in frozen)

    def deny(p):
        raise PermissionError(errno.EACCES, "Permission denied", os.fspath(p))

    def os_open(p, flags, mode=0o777, *, dir_fd=None):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and under(p, dir_fd):
            deny(p)
        return real["open"](p, flags, mode, dir_fd=dir_fd)

    def changes(name):
        def fn(p, *args, dir_fd=None, **kw):
            if under(p, dir_fd) or (args and isinstance(args[0], (str, os.PathLike)) and under(args[0])):
                deny(p)
            return real[name](p, *args, **({"dir_fd": dir_fd} if dir_fd is not None else {}), **kw)
        return fn

    def access(p, mode, **kw):
        if mode & os.W_OK and under(p, itself=True):
            return False
        return real["access"](p, mode, **kw)

    def b_open(file, mode="r", *args, **kw):
        if isinstance(file, (str, os.PathLike)) and set(mode) & set("wax+") and under(file):
            deny(file)
        return real_open(file, mode, *args, **kw)

    monkeypatch.setattr(os, "open", os_open)
    monkeypatch.setattr(os, "access", access)
    for name in ("mkdir", "rename", "replace", "unlink", "rmdir"):
        monkeypatch.setattr(os, name, changes(name))
    monkeypatch.setattr(builtins, "open", b_open)
    monkeypatch.setattr(io, "open", b_open)

    def freeze(folder: Path) -> Path:
        folder.mkdir(exist_ok=True)
        for d, _, _ in os.walk(folder):
            os.chmod(d, 0o555)
        frozen.append(Path(os.path.abspath(folder)))
        return folder

    yield freeze
    for f in frozen:
        for d, _, _ in os.walk(f):
            os.chmod(d, 0o755)


def test_a_read_only_output_location_is_a_clear_error(tmp_path, readonly, capsys):
    ro = readonly(tmp_path / "ro")
    with pytest.raises(LazyregError) as e:
        lazyreg.to_zarr(lazyreg.image(_values(), SPACING), ro / "out.ome.zarr")
    assert f"path: cannot write {ro / 'out.ome.zarr'}: the folder {ro} is not writable" in str(e.value)
    with pytest.raises(LazyregError, match=f"cannot write {ro / 'a.txt'}"):
        lazyreg.save_transform(lazyreg.Affine.identity(), ro / "a.txt")
    fix, mov, t = _stores(tmp_path)
    assert main(["apply", str(fix), str(mov), "-t", str(t), "-o", str(ro / "out.ome.zarr"), "--scheduler", "threads"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"output: {ro / 'out.ome.zarr'}: the folder {ro} is not writable" in err


def test_an_unwritable_report_is_refused_before_the_run(tmp_path, readonly, capsys):
    fix, mov, t = _stores(tmp_path)
    ro = readonly(tmp_path / "ro")
    out = tmp_path / "out.ome.zarr"
    code = main(["apply", str(fix), str(mov), "-t", str(t), "-o", str(out), "--report", str(ro / "report.json"),
                 "--scheduler", "threads", "--quiet"])
    assert code == 2 and not out.exists()
    assert f"output: {ro / 'report.json'}: the folder {ro} is not writable" in capsys.readouterr().err


def test_an_overwrite_that_cannot_delete_the_old_store_leaves_it_whole(tmp_path, readonly):
    old = _values(seed=3)
    path = lazyreg.to_zarr(lazyreg.image(old, SPACING), tmp_path / "old.ome.zarr", chunks=(4, 6, 6))
    before = _snapshot(path)
    readonly(path / "0" / "c" / "1")
    with pytest.raises(LazyregError) as e:
        lazyreg.to_zarr(lazyreg.image(_values(seed=4), SPACING), path, overwrite=True)
    assert f"{path} cannot be overwritten: {path / '0' / 'c' / '1'} is not writable" in str(e.value)
    assert "left as it was" in str(e.value)
    assert _snapshot(path) == before
    np.testing.assert_array_equal(lazyreg.open_image(path).values, old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old.ome.zarr"]  # no lock or moved-aside copy left


# ----------------------------------------------------------------------- a killed writer
_WRITER = textwrap.dedent(
    """
    import sys, time, pathlib, dask, dask.array as da, numpy as np, lazyreg
    path, flag = sys.argv[1], pathlib.Path(sys.argv[2])
    values = np.random.default_rng(0).integers(1, 60000, (8, 12, 12)).astype(np.uint16)

    def slow(block, block_info=None):
        if tuple(block_info[0]["chunk-location"]) == (1, 0, 0):  # the first half is on disk
            flag.write_text("writing")
            time.sleep(600)
        return block

    img = lazyreg.image(da.from_array(values, chunks=(4, 6, 6)).map_blocks(slow, dtype=values.dtype), (2.0, 1.0, 1.0))
    with dask.config.set(scheduler="synchronous"):
        lazyreg.to_zarr(img, path, name="img")
    """
)


def test_a_writer_killed_mid_write_is_refused_and_an_overwrite_rerun_is_bit_identical(tmp_path, caplog):
    path, flag = tmp_path / "k.ome.zarr", tmp_path / "writing.flag"
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path), str(flag)])
    try:
        deadline = time.monotonic() + 120
        while not flag.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert flag.exists(), "the writer did not start"
        img = lazyreg.image(_values(), SPACING)  # the same values as the writer's
        with pytest.raises(LazyregError, match=f"is being written by another writer: .* pid {proc.pid} on host"):
            lazyreg.to_zarr(img, path, overwrite=True, chunks=(4, 6, 6), name="img")  # a second process: refused
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    assert any((path / "0" / "c").rglob("*"))  # chunks were written before the kill ...
    with pytest.raises(LazyregError, match=r"incomplete \(interrupted write\?\)"):
        lazyreg.open_image(path)  # ... but the store is not passed off as complete
    with caplog.at_level(logging.WARNING, logger="lazyreg"):
        lazyreg.to_zarr(img, path, overwrite=True, chunks=(4, 6, 6), name="img")
    assert any(f"pid {proc.pid}" in r.getMessage() and "stale" in r.getMessage() for r in caplog.records)
    reference = lazyreg.to_zarr(img, tmp_path / "reference.ome.zarr", chunks=(4, 6, 6), name="img")
    assert _snapshot(path) == _snapshot(reference)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.ome.zarr", "reference.ome.zarr", "writing.flag"]
