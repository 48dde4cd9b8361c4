"""Exclusive writer locks on output paths: one writer at a time per store, file or folder.

A lock is a small JSON file (``pid``, ``host``, ``since``, ``token``, ``command``; on Linux also
the boot id and pid namespace, ``boot`` and ``pidns``) created atomically with
``os.open(O_CREAT | O_EXCL)``: beside the output (``.NAME.lazyreg-lock`` in its parent folder) for
stores and files, or inside an output folder (``OUT/.lazyreg-lock``, see ``inside``). A second writer fails at once with a :class:`~lazyreg.errors.LazyregError` naming the
path, the holder and the lock file.

Stale locks: a lock whose holder ran on this host (same host name and pid namespace) and is no
longer alive (``os.kill(pid, 0)`` fails with "no such process"; e.g. a writer killed with
``kill -9``), or that dates from before the host's last boot, is taken over, logged as a warning on
the ``lazyreg`` logger. The take-over renames the lock aside and checks that it moved the very
lock it found dead, so two writers taking over at once cannot both win. A lock held on
another host is never taken over: the error says how to remove it by hand.

A lock taken with ``reentrant=True`` may be taken again by the thread that holds it (the command
line locks its output for the whole run, then :func:`lazyreg.to_zarr` writes it); any other taker,
another thread or the same thread for a lock taken without it, is refused like another process.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import sys
import threading
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import LazyregError

__all__ = ["WriteLock", "acquire_lock", "lock_file", "read_lock", "check_writable", "LOCK_SUFFIX"]

LOCK_SUFFIX = ".lazyreg-lock"
_log = logging.getLogger("lazyreg")
#: Locks held by this process: lock file -> (holding thread id, lock).
_HELD: dict[str, tuple[int, WriteLock]] = {}
_HELD_GUARD = threading.Lock()


def lock_file(target: str | os.PathLike, *, inside: bool = False) -> Path:
    """The lock file of an output: ``PARENT/.NAME.lazyreg-lock``, or ``TARGET/.lazyreg-lock`` (``inside``).

    Examples
    --------
    >>> from lazyreg.io.locks import lock_file
    >>> lock_file("/data/out.ome.zarr").as_posix(), lock_file("/data/run1", inside=True).as_posix()
    ('/data/.out.ome.zarr.lazyreg-lock', '/data/run1/.lazyreg-lock')
    """
    t = Path(os.path.abspath(os.fspath(target)))
    return t / LOCK_SUFFIX if inside else t.parent / f".{t.name}{LOCK_SUFFIX}"


def read_lock(file: str | os.PathLike) -> dict | None:
    """What a lock file says (``pid``, ``host``, ``since``, ``token``, ...); None if it does not exist.

    An unreadable or empty lock (being created, or damaged) gives ``{}`` after a few short retries.

    Examples
    --------
    >>> import tempfile
    >>> from lazyreg.io.locks import acquire_lock, read_lock
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with acquire_lock(d + "/out.ome.zarr") as lock:
    ...         info = read_lock(lock.file)
    ...     info["pid"] == __import__("os").getpid(), read_lock(lock.file)
    (True, None)
    """
    for attempt in range(5):
        try:
            text = Path(file).read_text()
        except FileNotFoundError:
            return None
        except OSError:
            text = ""
        try:
            info = json.loads(text)
            if isinstance(info, dict):
                return info
        except ValueError:
            pass
        time.sleep(0.02 * (attempt + 1))  # a writer between O_EXCL and its JSON
    return {}


@dataclasses.dataclass
class WriteLock:
    """A held lock (from :func:`acquire_lock`): release it, or use it as a context manager.

    Picklable: a write's last task (on any worker) can check that it still holds the lock and
    release it. ``nested`` locks were taken again by the thread holding them and release nothing.

    Parameters
    ----------
    target : Path
        The output the lock protects.
    file : Path
        The lock file.
    token : str
        Unique id written into the lock file.
    nested : bool
        Whether the lock was already held by this thread (releasing it then does nothing).
    reentrant : bool
        Whether the holding thread may take the lock again (as a nested lock).

    Examples
    --------
    >>> import tempfile
    >>> from lazyreg.io.locks import acquire_lock
    >>> with tempfile.TemporaryDirectory() as d:
    ...     lock = acquire_lock(d + "/out.ome.zarr", reentrant=True)
    ...     again = acquire_lock(d + "/out.ome.zarr")   # the same thread: nested, releases nothing
    ...     again.nested, lock.owned(), again.release(), lock.owned(), lock.release(), lock.owned()
    (True, True, None, True, None, False)
    """

    target: Path
    file: Path
    token: str
    nested: bool = False
    reentrant: bool = False

    def owned(self) -> bool:
        """Whether the lock file still holds this lock's token."""
        info = read_lock(self.file)
        return bool(info) and info.get("token") == self.token

    def check(self) -> None:
        """Raise :class:`~lazyreg.errors.LazyregError` if the lock was removed or taken by another writer."""
        if not self.owned():
            raise LazyregError(
                f"path: the write lock of {self.target} ({self.file}) was removed or taken by another writer "
                f"during the write ({_holder(read_lock(self.file))}); the output is left marked incomplete: write it again"
            )

    def release(self) -> None:
        """Remove the lock file if it is still this lock's (idempotent; nested locks do nothing)."""
        if self.nested:
            return
        with _HELD_GUARD:
            held = _HELD.get(str(self.file))
            if held is not None and held[1].token == self.token:
                del _HELD[str(self.file)]
        if self.owned():
            try:
                self.file.unlink()
            except FileNotFoundError:
                pass

    def abandon(self) -> None:
        """Forget the lock in this process but keep its file: the write it protects may still run
        (e.g. ``client.compute`` of a dropped ``compute=False`` write, whose last task releases it).

        The file then counts as stale for this process (a later write here takes it over) and as
        held for other processes while this one lives.
        """
        with _HELD_GUARD:
            held = _HELD.get(str(self.file))
            if held is not None and held[1].token == self.token:
                del _HELD[str(self.file)]

    def __enter__(self) -> WriteLock:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True  # another user's process (or a pid we cannot test): assume alive
    return True


def _holder(info: dict | None) -> str:
    if not info:
        return "held by an unknown writer (the lock file is empty or unreadable)"
    me = " (this process)" if info.get("pid") == os.getpid() and info.get("host") == socket.gethostname() else ""
    return f"held by pid {info.get('pid')}{me} on host {info.get('host')} since {info.get('since')}"


def _system() -> dict:
    """This machine's boot and pid namespace (Linux), so that a pid is only judged where it means something."""
    out = {}
    for name, read in (("boot", lambda: Path("/proc/sys/kernel/random/boot_id").read_text().strip()),
                       ("pidns", lambda: os.readlink("/proc/self/ns/pid"))):
        try:
            out[name] = read()
        except OSError:
            pass
    return out


def _is_stale(info: dict | None) -> bool:
    """Provably dead: written on this host by a pid that is gone (or by this process, but not held now).

    A lock from another pid namespace of this host (a container) is never judged by pid; one from
    before this machine's last boot is stale whatever its pid.
    """
    if not info or info.get("host") != socket.gethostname() or not isinstance(info.get("pid"), int):
        return False
    here = _system()
    if info.get("boot") and here.get("boot") and info["boot"] != here["boot"]:
        return True
    if info.get("pidns") and info.get("pidns") != here.get("pidns"):
        return False
    if info["pid"] == os.getpid():
        with _HELD_GUARD:
            return not any(lock.token == info.get("token") for _, lock in _HELD.values())
    return not _alive(info["pid"])


def _take_over(file: Path, seen: bytes) -> bool:
    """Remove the stale lock whose bytes are ``seen``; False if another writer changed it meanwhile."""
    aside = file.with_name(f"{file.name}.stale-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(file, aside)
    except FileNotFoundError:
        return False
    if aside.read_bytes() == seen:
        aside.unlink()
        return True
    try:  # a live lock replaced the stale one between our read and the rename: put it back
        os.link(aside, file)
    except OSError:
        pass
    aside.unlink()
    return False


def _create(file: Path, target: Path, reentrant: bool) -> WriteLock | None:
    """Create the lock file (O_EXCL); None if it exists. Errors of the folder become LazyregError."""
    token = uuid.uuid4().hex
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": datetime.now().astimezone().isoformat(timespec="seconds"),
        "token": token,
        **_system(),
        "path": str(target),
        "command": " ".join(sys.argv)[:300],
    }
    try:
        fd = os.open(file, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    except FileNotFoundError:
        raise LazyregError(f"path: cannot write {target}: the folder {file.parent} does not exist") from None
    except OSError as e:
        raise LazyregError(
            f"path: cannot write {target}: the folder {file.parent} is not writable ({e.strerror or e}); "
            "choose another output location"
        ) from None
    try:
        os.write(fd, json.dumps(info).encode())
    finally:
        os.close(fd)
    return WriteLock(target, file, token, reentrant=reentrant)


def acquire_lock(target: str | os.PathLike, *, inside: bool = False, reentrant: bool = False) -> WriteLock:
    """Take the exclusive writer lock of an output, or fail at once if another writer holds it.

    Parameters
    ----------
    target : str or path-like
        The output (store, file or folder) about to be written.
    inside : bool
        Put the lock inside ``target`` (an existing folder) instead of beside it.
    reentrant : bool
        Let this thread take the lock again while it holds it (then a nested lock, which releases
        nothing): for a caller that holds an output for a whole run and writes it with lazyreg.

    Returns
    -------
    WriteLock
        Release it (or leave its ``with`` block) when the output is complete.

    Raises
    ------
    LazyregError
        Another writer holds the lock (the message names the holder's pid, host and start time and
        the lock file), or the folder of the lock does not exist or is not writable.

    Examples
    --------
    >>> import tempfile, threading
    >>> from lazyreg.io.locks import acquire_lock
    >>> errors = []
    >>> def second_writer(path):
    ...     try:
    ...         acquire_lock(path)
    ...     except Exception as e:
    ...         errors.append(str(e))
    >>> with tempfile.TemporaryDirectory() as d:
    ...     with acquire_lock(d + "/out.ome.zarr"):
    ...         t = threading.Thread(target=second_writer, args=(d + "/out.ome.zarr",))
    ...         t.start(); t.join()
    ...     acquire_lock(d + "/out.ome.zarr").release()  # free again
    >>> "is being written by another writer" in errors[0]
    True
    """
    t = Path(os.path.abspath(os.fspath(target)))
    file = lock_file(t, inside=inside)
    me = threading.get_ident()
    with _HELD_GUARD:
        held = _HELD.get(str(file))
    if held is not None and held[0] == me and held[1].reentrant and held[1].owned():
        return dataclasses.replace(held[1], nested=True, reentrant=False)
    for _ in range(3):
        lock = _create(file, t, reentrant)
        if lock is not None:
            with _HELD_GUARD:
                _HELD[str(file)] = (me, lock)
            return lock
        try:
            seen = file.read_bytes()
        except FileNotFoundError:
            continue  # released meanwhile: try again
        info = read_lock(file)
        if not _is_stale(info):
            raise LazyregError(
                f"path: {t} is being written by another writer: its lock {file} is {_holder(info)}; "
                f"wait for it to finish, or if that writer is no longer running, delete {file}"
            )
        if _take_over(file, seen):
            _log.warning("took over the stale write lock %s of %s (%s, no longer running)", file, t, _holder(info))
    raise LazyregError(f"path: could not take the write lock {file} of {t} (other writers keep taking it); try again")


def check_writable(folder: str | os.PathLike, what: str) -> None:
    """Check that files can be created in ``folder`` (by creating and removing one), else LazyregError.

    Parameters
    ----------
    folder : str or path-like
        The folder that will receive an output.
    what : str
        How to name the output in the message, e.g. ``"output: report.json"``.

    Raises
    ------
    LazyregError
        ``folder`` does not exist or is not writable.

    Examples
    --------
    >>> import tempfile
    >>> from lazyreg.io.locks import check_writable
    >>> with tempfile.TemporaryDirectory() as d:
    ...     check_writable(d, "output: out.ome.zarr")
    >>> check_writable("/no/such/folder", "output: out.ome.zarr")
    Traceback (most recent call last):
    ...
    lazyreg.errors.LazyregError: output: out.ome.zarr: the folder /no/such/folder does not exist
    """
    probe = Path(folder) / f".lazyreg-probe-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileNotFoundError:
        raise LazyregError(f"{what}: the folder {folder} does not exist") from None
    except OSError as e:
        raise LazyregError(f"{what}: the folder {folder} is not writable ({e.strerror or e})") from None
    os.close(fd)
    os.unlink(probe)
