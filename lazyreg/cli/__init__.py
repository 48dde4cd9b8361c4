"""The ``lazyreg`` command line (``lazyreg ...`` or ``python -m lazyreg ...``).

Commands: ``info``, ``align``, ``align-piecewise``, ``apply``, ``invert``, ``demo``; see
``lazyreg COMMAND --help``. Conventions shared by all commands:

* an input image may carry its group / dataset / level after a colon: ``fix.n5:lowres``;
* transform lists keep lazyreg's order: ``-t T1 -t T2`` means ``moving = T1(T2(x))``;
* ``--scheduler local`` (the default, but for ``demo``) starts a ``LocalCluster``, ``--scheduler
  ADDRESS`` uses a running dask.distributed scheduler, ``--scheduler threads`` the threaded
  scheduler in this process (no cluster; the default of ``demo``);
* errors are one line on stderr, exit code 2 for bad usage or input, 1 for a failed run
  (``--debug`` shows the traceback); existing outputs are never replaced without ``--overwrite``;
* progress goes to stderr: a live line on a terminal, a few summary lines otherwise, nothing with
  ``--quiet``.

Modules, by job: :mod:`.parser` (the argparse parser and argument types), :mod:`.session` (dask
scheduler or cluster, progress, peak memory, the report), :mod:`.inputs` (PATH[:GROUP], --steps,
transform files), :mod:`.outputs` (output checks, JSON, pictures), :mod:`.commands` (info, apply,
invert, demo), :mod:`.align_commands` (align, align-piecewise) and :mod:`.entry` (:func:`main`).
"""

from .entry import main

__all__ = ["main"]
