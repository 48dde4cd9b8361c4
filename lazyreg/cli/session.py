"""One command's run: the dask scheduler it computes on, its progress, timings, peak memory and report."""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from typing import Any, Iterator

from ..errors import LazyregError
from .parser import lazyreg_version

__all__ = ["Session", "AUTO_THREADS_BYTES", "auto_scheduler", "check_dask_args", "dask_scheduler", "versions", "has_module", "show_warning"]


class Session:
    """Progress, the dask scheduler and the timings of one command, and its report.

    Parameters
    ----------
    args : argparse.Namespace
        The parsed command line (``quiet`` and ``argv`` are read; every other argument goes to
        the report's ``parameters``).

    Attributes
    ----------
    progress : lazyreg.progress.Progress
        Counts the dask tasks of the command's phases (``with session.progress.phase(...)``).
    scheduler : dict
        What :func:`dask_scheduler` ran on (kind, workers, threads, ...), for the report.

    Examples
    --------
    >>> import argparse
    >>> from lazyreg.cli.session import Session
    >>> s = Session(argparse.Namespace(command="apply", quiet=True, debug=False, argv=[], order=1))
    >>> s.say("not shown with --quiet")
    >>> s.seconds >= 0
    True
    """

    def __init__(self, args: argparse.Namespace) -> None:
        from ..progress import Progress

        self.args = args
        self.progress = Progress("off" if args.quiet else "auto")
        self.scheduler: dict = {}
        self.client: Any = None  # the dask.distributed client while dask_scheduler runs
        self.data_bytes: int | None = None  # bytes of the command's inputs (for --scheduler auto)
        self.t0 = time.perf_counter()
        self.started = time.strftime("%Y-%m-%dT%H:%M:%S%z")

    def info(self, text: str) -> None:
        """A summary line on stderr (not with --quiet)."""
        self.progress.line(text)

    def say(self, text: str) -> None:
        """A result line on stdout (not with --quiet)."""
        if not self.args.quiet:
            self.progress.line(text, file=sys.stdout)

    @property
    def seconds(self) -> float:
        """Seconds since the session started."""
        return time.perf_counter() - self.t0

    def report(self, command: str, memory: Any, **fields: Any) -> dict:
        """The JSON report of the command: arguments, versions, scheduler, ``fields``, timings, memory.

        ``memory`` is the :class:`lazyreg.progress.PeakMemory` that watched the run.
        """
        params = {k: v for k, v in vars(self.args).items() if k not in ("command", "debug", "quiet", "argv")}
        return {
            "command": command,
            "argv": list(self.args.argv),
            "started": self.started,
            "parameters": params,
            "versions": versions(),
            "scheduler": self.scheduler,
            **fields,
            "registration_results": registration_counts(self.client),
            "seconds": self.seconds,
            "phases": {k: {"seconds": v["seconds"], "tasks": v["tasks"]} for k, v in self.progress.phases.items()},
            "peak_memory": memory.result() | {"scope": self._memory_scope()},
        }

    def _memory_scope(self) -> str:
        kind = self.scheduler.get("kind")
        if kind == "address":
            return "this process only: the workers of the remote cluster are not included"
        if kind == "local-cluster":
            return "this process and its LocalCluster worker processes"
        return "this process (the dask scheduler ran in it)"


#: ``--scheduler auto`` runs inputs up to this many bytes (fixed + moving) on the threaded scheduler.
AUTO_THREADS_BYTES = 4 * 2**30


def check_dask_args(args: argparse.Namespace) -> None:
    """Check the dask options together and fill in the default scheduler (before anything starts).

    Examples
    --------
    >>> import argparse
    >>> from lazyreg.cli.session import check_dask_args
    >>> args = argparse.Namespace(command="apply", scheduler=None, workers=None, threads=None, memory_limit="4GiB")
    >>> check_dask_args(args)  # --memory-limit asks for a LocalCluster
    >>> args.scheduler
    'local'
    >>> args.memory_limit = None
    >>> args.scheduler = None
    >>> check_dask_args(args)  # chosen by the size of the inputs when the command starts
    >>> args.scheduler
    'auto'
    """
    if args.scheduler is None:
        args.scheduler = "threads" if args.command == "demo" else "auto"
    s = args.scheduler = args.scheduler.strip()
    if not s:
        raise LazyregError("--scheduler: expected 'auto', 'local', an address, 'threads' or 'synchronous'")
    if s == "auto" and (args.workers is not None or args.memory_limit is not None):
        s = args.scheduler = "local"  # options of a LocalCluster: the user wants one
    if s not in ("local", "auto"):
        for flag, value in (("--workers", args.workers), ("--memory-limit", args.memory_limit)):
            if value is not None:
                raise LazyregError(f"{flag} applies to --scheduler local (a LocalCluster), not to --scheduler {s}")
        if args.threads is not None and s != "threads":
            raise LazyregError(f"--threads applies to --scheduler local or threads, not to --scheduler {s}")
    if args.memory_limit is not None and args.memory_limit.lower() not in ("auto", "0", "none"):
        from dask.utils import parse_bytes

        try:
            parse_bytes(args.memory_limit)
        except (ValueError, TypeError):
            raise LazyregError(f"--memory-limit: expected a size like 4GiB, 'auto' or 0, got {args.memory_limit!r}") from None


def auto_scheduler(data_bytes: int | None) -> str:
    """``--scheduler auto``: dask's threaded scheduler for inputs up to :data:`AUTO_THREADS_BYTES`
    (no worker processes to start, nothing sent between processes: measured 2x faster than a
    LocalCluster on the tutorial pair), a LocalCluster above that (memory limits and spilling per
    worker) or when the size is not known.

    Examples
    --------
    >>> from lazyreg.cli.session import auto_scheduler
    >>> auto_scheduler(200 * 2**20), auto_scheduler(64 * 2**30), auto_scheduler(None)
    ('threads', 'local', 'local')
    """
    return "threads" if data_bytes is not None and data_bytes <= AUTO_THREADS_BYTES else "local"


def show_warning(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
    """A warning as one line on stderr (the command line's ``warnings.showwarning``).

    Examples
    --------
    >>> import sys
    >>> from lazyreg.cli.session import show_warning
    >>> show_warning("chunks are\\n  small", UserWarning, "x.py", 1, file=sys.stdout)
    lazyreg: warning: UserWarning: chunks are small
    """
    text = " ".join(str(message).split())
    print(f"lazyreg: warning: {category.__name__}: {text}", file=sys.stderr if file is None else file)


def _worker_setup(debug: bool) -> None:
    """On LocalCluster workers: one-line warnings, and lazyreg's log kept for the report."""
    warnings.showwarning = show_warning
    if not debug:
        logging.getLogger("lazyreg").addHandler(logging.NullHandler())


@contextmanager
def dask_scheduler(session: Session) -> Iterator[dict]:
    """Run the block's dask computations on the scheduler chosen by the session's arguments.

    ``threads`` and ``synchronous`` run in this process; ``local`` starts a LocalCluster (closed
    at the end); any other value is the address of a running scheduler. Progress is counted into
    ``session.progress`` and the scheduler described in ``session.scheduler``.

    Examples
    --------
    >>> import argparse, dask.array as da
    >>> from lazyreg.cli.session import Session, dask_scheduler
    >>> s = Session(argparse.Namespace(quiet=True, argv=[], scheduler="threads", threads=2))
    >>> with dask_scheduler(s):
    ...     int(da.ones(4, chunks=2).sum().compute())
    4
    >>> s.scheduler
    {'kind': 'threads', 'threads': 2}
    """
    import dask

    args = session.args
    kind = args.scheduler
    if kind == "auto":
        kind = args.scheduler = auto_scheduler(session.data_bytes)
        size = "unknown" if session.data_bytes is None else f"{session.data_bytes / 2**20:.0f} MiB"
        session.info(f"dask: --scheduler auto chose '{kind}' for inputs of {size} "
                     f"(threads up to {AUTO_THREADS_BYTES / 2**30:.0f} GiB, else a LocalCluster)")
    if kind in ("threads", "synchronous"):
        cfg: dict = {"scheduler": kind}
        threads = 1 if kind == "synchronous" else (args.threads or os.cpu_count() or 1)
        if kind == "threads" and args.threads:
            cfg["num_workers"] = args.threads
        session.scheduler = {"kind": kind, "threads": threads}
        session.info(f"dask: {kind} scheduler in this process, {threads} thread{'s' if threads > 1 else ''}")
        with dask.config.set(cfg):
            yield session.scheduler
        return

    client, cluster = _connect(args)
    try:
        _describe_cluster(session, client, local=cluster is not None)
        session.client = client
        with session.progress.distributed(client):
            yield session.scheduler
    finally:
        session.client = None
        client.close()
        if cluster is not None:
            logging.getLogger("distributed").setLevel(logging.CRITICAL)  # no shutdown chatter
            cluster.close()


def _connect(args: argparse.Namespace) -> tuple[Any, Any]:
    """(client, LocalCluster or None): a new LocalCluster for ``local``, else the scheduler at the address."""
    from distributed import Client, LocalCluster

    from .worker_setup import ItkThreads

    kind = args.scheduler
    if kind == "local":
        limit: Any = args.memory_limit or "auto"
        if str(limit).lower() in ("0", "none"):
            limit = 0
        cluster = LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads,
            memory_limit=limit,
            processes=True,
            dashboard_address=":0",
            silence_logs=logging.ERROR,
        )
        try:
            client = Client(cluster)
            client.register_plugin(ItkThreads(), name="lazyreg-itk-threads")
            return client, cluster
        except BaseException:
            cluster.close()
            raise
    try:
        return Client(kind, timeout="10s"), None
    except (OSError, TimeoutError, ValueError, TypeError) as e:
        raise LazyregError(
            f"--scheduler: could not connect to {kind!r} ({type(e).__name__}: {' '.join(str(e).split())}); "
            "expected the address of a running dask scheduler (e.g. tcp://host:8786), 'local', 'threads' or 'synchronous'"
        ) from None


def _describe_cluster(session: Session, client: Any, local: bool) -> None:
    """Fill ``session.scheduler`` from the client's workers; set up LocalCluster workers; say so."""
    workers = client.scheduler_info(n_workers=-1)["workers"] if _accepts_n_workers(client) else client.scheduler_info()["workers"]
    nthreads = sum(w.get("nthreads", 0) for w in workers.values())
    limits = sorted({int(w.get("memory_limit") or 0) for w in workers.values()})
    session.scheduler = {
        "kind": "local-cluster" if local else "address",
        "address": client.scheduler.address,
        "workers": len(workers),
        "threads": nthreads,
        "memory_limit_per_worker": limits[0] if len(limits) == 1 else limits,
    }
    if local:
        client.run(_worker_setup, bool(session.args.debug))
    mem = f", {limits[0] / 2**30:.1f} GiB memory limit each" if len(limits) == 1 and limits[0] else ""
    where = "LocalCluster" if local else f"scheduler {client.scheduler.address}"
    link = ""
    if has_module("bokeh"):
        link = f"; dashboard {client.dashboard_link}"
    session.info(f"dask: {where}, {len(workers)} workers, {nthreads} threads{mem}{link}")


def _accepts_n_workers(client: Any) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


def has_module(name: str) -> bool:
    """Whether ``name`` can be imported (without importing it).

    Examples
    --------
    >>> from lazyreg.cli.session import has_module
    >>> has_module("json"), has_module("no_such_module_here")
    (True, False)
    """
    return importlib.util.find_spec(name) is not None


def versions() -> dict:
    """Versions of lazyreg, Python and the libraries that shape a run (None: not installed).

    Examples
    --------
    >>> from lazyreg.cli.session import versions
    >>> {"lazyreg", "python", "dask", "numpy"} <= set(versions())
    True
    """
    import platform
    from importlib import metadata

    out = {"lazyreg": lazyreg_version(), "python": platform.python_version()}
    for dist in ("dask", "distributed", "numpy", "xarray", "zarr", "SimpleITK", "matplotlib", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


def registration_counts(client: Any = None) -> dict:
    """Registration results computed, reused and fetched, per kind of task, in this process or
    summed over a cluster's workers (:func:`lazyreg.result_cache.cache_info`).

    Examples
    --------
    >>> from lazyreg.result_cache import clear_cache
    >>> clear_cache(client=False)
    >>> registration_counts()
    {}
    """
    from ..result_cache import cache_info

    infos = [cache_info()] if client is None else list(client.run(cache_info).values())
    out: dict = {}
    for info in infos:
        for kind, counts in info.items():
            if kind == "bytes":
                continue
            total = out.setdefault(kind, {"computed": 0, "reused": 0, "fetched": 0})
            for k, v in counts.items():
                total[k] += v
    return out
