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

    Register it on a cluster with ``client.register_plugin(ItkThreads(), name="lazyreg-itk-threads")``
    (tests/test_cli.py checks it on a LocalCluster of 1-thread workers).

    Examples
    --------
    What a worker with one thread runs when it starts:

    >>> import SimpleITK as sitk
    >>> from types import SimpleNamespace
    >>> before = sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    >>> ItkThreads().setup(SimpleNamespace(state=SimpleNamespace(nthreads=1)))
    >>> sitk.ProcessObject.GetGlobalDefaultNumberOfThreads()
    1
    >>> sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(before)
    """

    def setup(self, worker: Any) -> None:
        import SimpleITK as sitk

        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(max(1, int(worker.state.nthreads)))
