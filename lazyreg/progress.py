"""Progress of dask computations and peak memory, for the command line.

:class:`Progress` reports the dask tasks run inside named *phases* (``with progress.phase("..."):``):
a live line ``label [#####-----] 45% 120/266 tasks | 3.2 s | ETA 3.9 s`` on a terminal, one summary
line per phase when the stream is not a terminal (a log file, a pipe), or nothing (``mode="off"``).
It counts the tasks of every computation started inside the phase, whichever scheduler runs it:

* the local schedulers (threads, synchronous) through a :class:`dask.callbacks.Callback`;
* a ``dask.distributed`` client through :meth:`Progress.distributed`, which routes the phase's
  computations through the client with the scheduler's progress feed (the feed that
  ``distributed.progress`` uses), so all tasks of the graph are counted, not only its outputs.

:class:`PeakMemory` samples the resident memory of this process and its child processes (the
workers of a ``LocalCluster``) with psutil, or reads ``resource.getrusage`` without it.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from contextlib import contextmanager
from typing import Any, Iterator, TextIO

from dask.callbacks import Callback

__all__ = ["Progress", "PeakMemory", "format_seconds"]

_MODES = ("auto", "bar", "summary", "off")
#: Seconds between progress messages from a distributed scheduler.
_FEED_INTERVAL = 0.2


def format_seconds(s: float) -> str:
    """A duration for people: ``4.2 s``, ``3 min 05 s``, ``2 h 03 min``.

    Examples
    --------
    >>> from lazyreg.progress import format_seconds
    >>> format_seconds(4.2), format_seconds(185), format_seconds(7380)
    ('4.2 s', '3 min 05 s', '2 h 03 min')
    """
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{int(s // 60)} min {int(s % 60):02d} s"
    return f"{int(s // 3600)} h {int(s % 3600 // 60):02d} min"


class _Phase:
    """Task counts of the computations in one phase (thread-safe)."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.start = time.perf_counter()
        self._lock = threading.Lock()
        self._closed_done = 0
        self._closed_total = 0
        self._open: dict[int, tuple[int, int]] = {}  # compute id -> (done, total)
        self._next = 0

    def begin(self) -> int:
        with self._lock:
            self._next += 1
            self._open[self._next] = (0, 0)
            return self._next

    def update(self, ident: int, done: int, total: int) -> None:
        with self._lock:
            if ident in self._open:
                self._open[ident] = (done, total)

    def add_done(self, ident: int, n: int = 1) -> None:
        with self._lock:
            if ident in self._open:
                d, t = self._open[ident]
                self._open[ident] = (d + n, t)

    def end(self, ident: int) -> None:
        with self._lock:
            _, t = self._open.pop(ident, (0, 0))
            self._closed_done += t  # a finished computation ran all its tasks
            self._closed_total += t

    def counts(self) -> tuple[int, int]:
        with self._lock:
            done = self._closed_done + sum(d for d, _ in self._open.values())
            total = self._closed_total + sum(t for _, t in self._open.values())
            return done, total

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


class _LocalCallback(Callback):
    """Counts the tasks of local-scheduler computations (threads, synchronous) into a phase."""

    def __init__(self, phase: _Phase) -> None:
        super().__init__()
        self._phase_obj = phase
        self._ids: dict[int, int] = {}

    def _start_state(self, dsk: Any, state: dict) -> None:
        ident = self._phase_obj.begin()
        self._ids[id(state)] = ident
        total = sum(len(state[k]) for k in ("ready", "waiting", "running", "finished"))
        self._phase_obj.update(ident, len(state["finished"]), total)

    def _posttask(self, key: Any, result: Any, dsk: Any, state: dict, worker_id: Any) -> None:
        ident = self._ids.get(id(state))
        if ident is not None:
            self._phase_obj.add_done(ident)

    def _finish(self, dsk: Any, state: dict, errored: bool) -> None:
        ident = self._ids.pop(id(state), None)
        if ident is not None:
            self._phase_obj.end(ident)


class Progress:
    """Reports dask task progress per phase on a stream (default ``sys.stderr``).

    Parameters
    ----------
    mode : {"auto", "bar", "summary", "off"}
        ``"bar"``: a live line redrawn in place (for terminals), then the phase's summary line;
        ``"summary"``: only one line per phase, at its end; ``"off"``: nothing. ``"auto"`` is
        ``"bar"`` when the stream is a terminal, ``"summary"`` otherwise.
    stream : file, optional
        Where to write; default ``sys.stderr`` (looked up when writing).
    interval : float
        Seconds between redraws of the live line.

    Examples
    --------
    >>> import io, dask.array as da
    >>> from lazyreg.progress import Progress
    >>> out = io.StringIO()
    >>> p = Progress("summary", stream=out)
    >>> with p.phase("sum"):
    ...     _ = da.ones(10, chunks=5).sum().compute(scheduler="threads")
    >>> out.getvalue().startswith("sum: ")
    True
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None, interval: float = 0.2) -> None:
        if mode not in _MODES:
            raise ValueError(f"mode: expected one of {_MODES}, got {mode!r}")
        self._stream = stream
        if mode == "auto":
            mode = "bar" if _isatty(self.stream) else "summary"
        self.mode = mode
        self.interval = float(interval)
        self._phase: _Phase | None = None
        self._client: Any = None
        self._write_lock = threading.Lock()
        self._drawn = False
        self._feed_closed = 0.0
        self.phases: dict[str, dict] = {}

    @property
    def stream(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stderr

    # -- output -----------------------------------------------------------------------------
    def _clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[2K")
            self._drawn = False

    def line(self, text: str, file: TextIO | None = None) -> None:
        """Print a line (to ``file``, default the progress stream), keeping a live bar intact."""
        if self.mode == "off" and file is None:
            return
        with self._write_lock:
            self._clear()
            self.stream.flush()
            out = file if file is not None else self.stream
            out.write(text + "\n")
            out.flush()

    def _draw(self, phase: _Phase) -> None:
        done, total = phase.counts()
        elapsed = phase.elapsed
        frac = done / total if total else 0.0
        width = 20
        bar = "#" * int(width * frac) + "-" * (width - int(width * frac))
        text = f"{phase.label} [{bar}] {int(100 * frac):3d}% {done}/{total} tasks | {format_seconds(elapsed)}"
        if total > done:  # ETA of the tasks known so far
            text += f" | ETA {format_seconds(elapsed * (total - done) / done) if done else '?'}"
        cols = shutil.get_terminal_size((100, 20)).columns
        with self._write_lock:
            self.stream.write("\r\033[2K" + text[: max(cols - 1, 20)])
            self.stream.flush()
            self._drawn = True

    # -- phases -----------------------------------------------------------------------------
    @contextmanager
    def phase(self, label: str) -> Iterator[_Phase]:
        """Count and show the tasks of every dask computation started inside the block."""
        ph = _Phase(label)
        previous, self._phase = self._phase, ph
        cb = _LocalCallback(ph)
        cb.register()
        stop = threading.Event()
        drawer = None
        if self.mode == "bar":
            def redraw() -> None:
                self._draw(ph)
                while not stop.wait(self.interval):
                    self._draw(ph)

            drawer = threading.Thread(target=redraw, name="lazyreg-progress", daemon=True)
            drawer.start()
        ok = False
        try:
            yield ph
            ok = True
        finally:
            stop.set()
            if drawer is not None:
                drawer.join()
            cb.unregister()
            self._phase = previous
            done, total = ph.counts()
            self.phases[label] = {"seconds": ph.elapsed, "tasks": total, "done": done}
            if self.mode != "off":
                status = "" if ok else " (stopped by an error)"
                self.line(f"{label}: {done}/{total} tasks in {format_seconds(ph.elapsed)}{status}")

    # -- dask.distributed ------------------------------------------------------------------
    @contextmanager
    def distributed(self, client: Any) -> Iterator[None]:
        """Route computations through ``client`` with progress counted from the scheduler.

        Inside the block, ``dask.compute`` (and everything built on it) submits to ``client``
        as usual; while the results are gathered, a listener on the scheduler's progress feed
        reports every task of the graph to the current phase.
        """
        import dask

        def get(dsk: Any, keys: Any, **kwargs: Any) -> Any:
            return self._client_get(client, dsk, keys, **kwargs)

        try:
            with dask.config.set(scheduler=get):
                yield
        finally:
            # The scheduler ends a progress feed at its next write after the listener closed it
            # (within the feed interval); leave it that time so that closing a cluster right after
            # does not cancel feeds mid-sleep (which the scheduler logs as errors).
            wait = self._feed_closed + _FEED_INTERVAL + 0.1 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)

    def _client_get(self, client: Any, dsk: Any, keys: Any, **kwargs: Any) -> Any:
        from dask.core import flatten

        phase = self._phase
        packed = client.get(dsk, keys, sync=False, **kwargs)
        futures = [f for f in flatten(packed) if hasattr(f, "key") and hasattr(f, "done")]
        ident = phase.begin() if phase is not None else None
        watcher = None
        if phase is not None and futures:
            watcher = threading.Thread(
                target=_watch_distributed, args=(client, futures, phase, ident), name="lazyreg-progress-feed", daemon=True
            )
            watcher.start()
        try:
            return client.gather(packed)
        finally:
            for f in futures:
                f.release()
            if watcher is not None:
                watcher.join(timeout=2 * _FEED_INTERVAL + 1.0)
                self._feed_closed = time.perf_counter()
            if phase is not None:
                phase.end(ident)


def _watch_distributed(client: Any, futures: list, phase: _Phase, ident: int) -> None:
    """Feed ``phase`` with (done, total) from the scheduler; fall back to counting the futures."""
    try:
        from distributed.diagnostics.progressbar import ProgressBar

        class _Feed(ProgressBar):
            def _draw_bar(self, remaining: int, all: int, **kwargs: Any) -> None:  # noqa: A002
                phase.update(ident, all - remaining, all)

        from distributed.utils import sync

        bar = _Feed(futures, scheduler=client.scheduler.address, interval=_FEED_INTERVAL, complete=True)
        sync(client.loop, bar.listen)  # returns when the scheduler reports "finished" or "error"
        return
    except Exception:  # e.g. a scheduler that refuses pickled feed functions: count outputs
        pass
    n = len(futures)
    while True:
        done = sum(f.done() for f in futures)
        phase.update(ident, done, n)
        if done >= n:
            return
        time.sleep(_FEED_INTERVAL)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


class PeakMemory:
    """Peak resident memory of this process and its child processes while running.

    With psutil, a background thread samples the resident set size (RSS) of this process plus
    all its descendants (e.g. ``LocalCluster`` workers) every ``interval`` seconds and keeps the
    largest sum; the process's own peak (``getrusage``) is reported beside it. Without psutil,
    ``resource.getrusage`` gives this process's peak and the largest peak of finished children.

    Examples
    --------
    >>> from lazyreg.progress import PeakMemory
    >>> with PeakMemory() as pm:
    ...     _ = bytearray(10)
    >>> pm.result()["bytes"] > 0
    True
    """

    def __init__(self, interval: float = 0.25) -> None:
        self.interval = float(interval)
        self._peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        try:
            import psutil  # noqa: F401

            self.method = "psutil"
        except ImportError:
            self.method = "getrusage"

    def _sample(self) -> int:
        import psutil

        try:
            me = psutil.Process(os.getpid())
            total = me.memory_info().rss
            for child in me.children(recursive=True):
                try:
                    total += child.memory_info().rss
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
            return total
        except Exception:
            return 0

    def _run(self) -> None:
        while True:
            self._peak = max(self._peak, self._sample())
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> PeakMemory:
        if self.method == "psutil":
            self._peak = self._sample()
            self._thread = threading.Thread(target=self._run, name="lazyreg-peak-memory", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._peak = max(self._peak, self._sample())

    def result(self) -> dict:
        """``bytes`` (the peak), ``process_bytes`` (this process alone), ``method``, ``scope``."""
        own = _rusage_peak("self")
        if self.method == "psutil":
            return {
                "bytes": int(max(self._peak, own)),
                "process_bytes": int(own),
                "method": f"psutil: largest sum of RSS over this process and its child processes, sampled every {self.interval} s",
            }
        children = _rusage_peak("children")
        return {
            "bytes": int(own + children),
            "process_bytes": int(own),
            "method": "resource.getrusage: peak RSS of this process plus the largest peak of its finished child processes",
        }


def _rusage_peak(who: str) -> int:
    try:
        import resource
    except ImportError:  # Windows
        return 0
    r = resource.getrusage(resource.RUSAGE_SELF if who == "self" else resource.RUSAGE_CHILDREN)
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return int(r.ru_maxrss) * scale
