"""Set-up of the worker processes of the LocalCluster the command line starts."""

from __future__ import annotations

from typing import Any

from distributed import WorkerPlugin

__all__ = ["ItkThreads"]


class ItkThreads(WorkerPlugin):
    """ITK's process-wide default thread count set to the worker's number of threads.

    Runs when a worker starts, before it runs tasks. Block tasks ask ITK for one thread, but the
    filters the demons build inside themselves take this process-wide default (all cores
    otherwise), so each worker thread kept several cores busy (docs/from-bigstream.md, section 6).

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> with LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, Client(cluster) as client:
    ...     _ = client.register_plugin(ItkThreads(), name="lazyreg-itk-threads")
    ...     threads = client.run(lambda: __import__("SimpleITK").ProcessObject.GetGlobalDefaultNumberOfThreads())
    >>> list(threads.values())
    [1]
    """

    def setup(self, worker: Any) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(worker.state.nthreads)))
