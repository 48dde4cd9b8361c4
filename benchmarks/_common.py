"""Shared helpers for the benchmarks: peak-RSS sampling, timing, machine info, JSON results, tables.

Peak memory is measured two ways:

* :class:`RSSSampler` samples, in a background thread, the resident set size (RSS) of this process
  and of all its descendants (recursively: dask.distributed nannies and workers, subprocesses) with
  psutil, and keeps the peak of the *sum* and the peak of each process. Sampling can miss spikes
  shorter than the interval (default 50 ms); RSS counts shared pages once per process, so the sum
  over-estimates slightly when processes share libraries.
* :func:`self_maxrss` is the kernel's high-water mark of this process (``getrusage``), exact but for
  this process only (used when a case runs in its own subprocess).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import platform
import resource
import statistics
import sys
import threading
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterable, Sequence

import psutil

GiB = 2**30
MiB = 2**20

PACKAGES = (
    "lazyreg",
    "numpy",
    "dask",
    "distributed",
    "dask-image",
    "scipy",
    "SimpleITK",
    "zarr",
    "numcodecs",
    "xarray",
    "tensorstore",
    "psutil",
)


# ----------------------------------------------------------------------------------------- memory


def _tree(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return [proc] + proc.children(recursive=True)
    except psutil.Error:
        return [proc]


def tree_rss(pid: int | None = None) -> tuple[int, dict[int, tuple[str, int]]]:
    """RSS in bytes of a process and all its descendants: (sum, {pid: (name, rss)})."""
    root = psutil.Process(pid or os.getpid())
    per: dict[int, tuple[str, int]] = {}
    for p in _tree(root):
        try:
            per[p.pid] = (" ".join(p.cmdline()[:3])[-60:] or p.name(), p.memory_info().rss)
        except psutil.Error:  # exited between listing and reading
            continue
    return sum(r for _, r in per.values()), per


class RSSSampler:
    """Background thread sampling the summed RSS of this process + descendants.

    Use as a context manager; afterwards ``peak`` (bytes, summed over processes at one instant),
    ``cpu_seconds`` (CPU time of all sampled processes during sampling),
    ``peak_self`` (this process), ``peak_children`` (sum of descendants at the instant of their own
    peak), ``per_process`` ({pid: (cmdline, peak rss)}), ``start`` (sum when sampling began) and
    ``samples`` (number of samples taken).
    """

    def __init__(self, interval: float = 0.05, pid: int | None = None) -> None:
        self.interval = interval
        self.pid = pid or os.getpid()
        self.peak = 0
        self.peak_self = 0
        self.peak_children = 0
        self.start = 0
        self.samples = 0
        self.per_process: dict[int, tuple[str, int]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._names: dict[int, str] = {}
        self._cpu_first: dict[int, float] = {}
        self._cpu_last: dict[int, float] = {}

    def _sample(self) -> None:
        root = psutil.Process(self.pid)
        total = own = kids = 0
        for p in _tree(root):
            try:
                rss = p.memory_info().rss
                if p.pid not in self._names:
                    self._names[p.pid] = " ".join(p.cmdline()[:4])[-80:] or p.name()
            except psutil.Error:
                continue
            try:
                ct = p.cpu_times()
                cpu = ct.user + ct.system
            except psutil.Error:
                cpu = None
            if cpu is not None:
                first = self._cpu_first.setdefault(p.pid, cpu)
                self._cpu_last[p.pid] = cpu
                del first
            total += rss
            if p.pid == self.pid:
                own = rss
            else:
                kids += rss
            name, prev = self.per_process.get(p.pid, (self._names[p.pid], 0))
            if rss > prev:
                self.per_process[p.pid] = (name, rss)
        self.samples += 1
        self.peak = max(self.peak, total)
        self.peak_self = max(self.peak_self, own)
        self.peak_children = max(self.peak_children, kids)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> "RSSSampler":
        self.start = tree_rss(self.pid)[0]
        self._sample()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()

    @property
    def cpu_seconds(self) -> float:
        """CPU time (user + system) used by the sampled processes while sampling, summed."""
        return sum(self._cpu_last[p] - self._cpu_first[p] for p in self._cpu_last)

    def as_dict(self) -> dict:
        return {
            "cpu_seconds_all_processes": self.cpu_seconds,
            "peak_rss_total_bytes": self.peak,
            "peak_rss_self_bytes": self.peak_self,
            "peak_rss_children_bytes": self.peak_children,
            "rss_at_start_bytes": self.start,
            "samples": self.samples,
            "interval_s": self.interval,
        }


class SchedulerMemory:
    """Polls a dask.distributed scheduler's view of worker memory, summed over the workers: dask-managed
    data in memory, spilled to disk, unmanaged, process; keeps the peaks (``peaks``, bytes) and, at
    the peak of data held (in memory + spilled), the task groups holding most (``held_by_group_at_peak``).

    Tells whether the workers' RSS is data dask holds (e.g. chunks read ahead of the tasks that use
    them, possibly on both workers after a transfer) or memory the tasks allocate (unmanaged).
    ``with SchedulerMemory(cluster.scheduler) as watch: ...`` (same process as the scheduler).
    """

    def __init__(self, scheduler: Any, interval: float = 0.25) -> None:
        self.scheduler, self.interval = scheduler, interval
        self.peaks = {"managed_bytes": 0, "spilled_bytes": 0, "unmanaged_bytes": 0, "process_bytes": 0, "tasks_in_memory": 0}
        self.held_by_group_at_peak: dict = {}
        self._peak_held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scheduler-memory", daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                ws = list(self.scheduler.workers.values())
                mem = [w.memory for w in ws]
                now = {
                    "managed_bytes": sum(m.managed for m in mem),
                    "spilled_bytes": sum(m.spilled for m in mem),
                    "unmanaged_bytes": sum(m.unmanaged for m in mem),
                    "process_bytes": sum(m.process for m in mem),
                    "tasks_in_memory": sum(len(w.has_what) for w in ws),
                }
                if now["managed_bytes"] + now["spilled_bytes"] > self._peak_held:
                    # which task groups hold the data (in memory or spilled), at the peak
                    self._peak_held = now["managed_bytes"] + now["spilled_bytes"]
                    by: dict[str, list[int]] = {}
                    for w in ws:
                        for ts in w.has_what:
                            e = by.setdefault(ts.group_key, [0, 0])
                            e[0] += 1
                            e[1] += int(ts.nbytes or 0)
                    self.held_by_group_at_peak = {k: {"keys": n, "bytes": b} for k, (n, b) in sorted(by.items(), key=lambda kv: -kv[1][1])[:8]}
                for k, v in now.items():
                    self.peaks[k] = max(self.peaks[k], int(v))
            except Exception:  # state changing under us: skip this sample
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> "SchedulerMemory":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def self_maxrss() -> int:
    """Peak RSS of this process so far, in bytes (kernel high-water mark, Linux reports KiB)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


def current_rss() -> int:
    return psutil.Process().memory_info().rss


# ----------------------------------------------------------------------------------------- timing


def cpu_seconds() -> float:
    """User + system CPU time of this process so far (all its threads), in seconds."""
    t = psutil.Process().cpu_times()
    return t.user + t.system


@contextmanager
def timer(out: dict, key: str = "seconds"):
    """``with timer(d): ...`` stores the wall time in ``d[key]`` and this process's CPU time (all
    threads) in ``d[key + "_cpu"]``: on a shared machine, CPU time varies less than wall time."""
    t0, c0 = time.perf_counter(), cpu_seconds()
    try:
        yield out
    finally:
        out[key] = time.perf_counter() - t0
        out[key + "_cpu"] = cpu_seconds() - c0


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


# ----------------------------------------------------------------------------------------- machine


def _version(pkg: str) -> str | None:
    try:
        return metadata.version(pkg)
    except metadata.PackageNotFoundError:
        return None


def machine_info() -> dict:
    """CPU count, RAM, load, Python and package versions: recorded with every result."""
    vm = psutil.virtual_memory()
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    cpu_model = None
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_count": os.cpu_count(),
        "cpu_count_physical": psutil.cpu_count(logical=False),
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "cpu_model": cpu_model,
        "ram_total_bytes": vm.total,
        "ram_total_gib": round(vm.total / GiB, 1),
        "ram_available_gib_at_start": round(vm.available / GiB, 1),
        "load_average_1_5_15": load,
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "packages": {p: _version(p) for p in PACKAGES},
    }


# ----------------------------------------------------------------------------------------- output


def write_json(path: Path, record: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, default=_json_default) + "\n")
    print(f"wrote {path}")


def _json_default(o: Any) -> Any:
    try:
        import numpy as np

        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
    except ImportError:
        pass
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain-text table with right-aligned numbers."""
    cells = [[str(h) for h in header]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(c.rjust(w) if j and _numeric(c) else c.ljust(w) for c, w in zip(r, widths)))
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _numeric(s: str) -> bool:
    try:
        float(s.rstrip("x%").replace(",", ""))
        return True
    except ValueError:
        return False


def _fmt(c: Any) -> str:
    if c is None:
        return "-"
    if isinstance(c, float):
        return f"{c:.3g}" if abs(c) < 100 else f"{c:.0f}"
    return str(c)


def gib(b: float | None) -> float | None:
    return None if b is None else round(b / GiB, 3)


def mvox(v: float | None) -> float | None:
    return None if v is None else round(v / 1e6, 2)
