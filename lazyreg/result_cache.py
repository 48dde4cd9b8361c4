"""Registration results computed at most once per session, whichever computation needs them first.

A registration task (the steps of :func:`lazyreg.align`, one block of
:func:`lazyreg.align_piecewise`, the foreground threshold of a piecewise alignment) is expensive
to run and its result is tiny. lazyreg graphs stay lazy, so the same task appears in every graph
built on top of it - a written image, a slice, a metric, ``field.compute()``. Such a task calls
:func:`cached_call` with a *token*: a deterministic name built from everything the result depends
on, the identity of the input files included (see :meth:`lazyreg.io.source.Source.token`), so a
changed input is never served stale.

* **In every process** results are kept in a bounded store (dask config
  ``lazyreg.result-cache-bytes``, default :data:`RESULT_CACHE_BYTES`). Room is made by dropping
  other computations' results, least recently used first; the blocks of one alignment never evict
  each other: when they alone exceed the bound, those that fit are kept (and reused by the next
  pass) and the rest are not, with a warning. Threads asking for the same
  token at once wait for one computation. On the threaded scheduler this is the whole story.
* **On dask.distributed** a worker that computes a result also scatters it into the cluster's
  memory and publishes it on the scheduler under its token (a dask *published dataset*); a task for the same token on another worker fetches the value from there, or, if the
  result is being computed, waits for it (a cluster-wide lock per token). The results then live
  in workers' managed memory (they may spill) until :func:`clear_cache` releases them or the
  cluster closes.

A task's expensive *inputs* must not run before the cache is consulted, so registration tasks
receive them as a :class:`Deferred` recipe that :func:`cached_call` evaluates only on a miss:
regions read from a store-backed image, or the moving region resampled through the static
transforms. Inputs that are dask graphs of their own (images neither in memory nor store-backed)
stay graph dependencies and run each time: write such images to zarr, or ``persist`` them, or
give :func:`lazyreg.align` the filter that made them as ``prepare`` (it then runs inside the task).

:func:`cache_info` counts, per kind of task, how many results were computed and how many reused,
in this process (tests use it to prove that each block runs once).
"""

from __future__ import annotations

import logging
import pickle
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Callable

import dask

from .errors import LazyregError
from .validation import config_number

log = logging.getLogger(__name__)

__all__ = ["Ref", "Deferred", "cached_call", "cache_info", "clear_cache", "result_cache_bytes", "RESULT_CACHE_BYTES", "compute_together"]

#: Default of the most bytes of registration results kept per process.
RESULT_CACHE_BYTES = 512 * 2**20
#: Prefix of the names under which results are published on a dask.distributed scheduler.
METADATA_KEY = "lazyreg-results"


@dataclass(frozen=True)
class Ref:
    """The value of the ``i``-th dependency of a task, inside a :class:`Deferred` recipe.

    Examples
    --------
    >>> Deferred([Ref(1), Ref(0)]).evaluate(["a", "b"])
    ['b', 'a']
    """

    i: int


@dataclass(frozen=True)
class Deferred:
    """A recipe run only when needed: ``(function, *args)`` tuples, nested, with :class:`Ref` args.

    dask does not look inside it, so what it computes does not run before the task that holds it
    decides to. Tuples whose first element is callable are calls; lists, tuples and dicts are
    walked; :class:`Ref` is replaced by the task's dependency values.

    Examples
    --------
    >>> import operator
    >>> Deferred((operator.add, Ref(0), (operator.mul, 2, Ref(1)))).evaluate([1, 10])
    21
    """

    spec: Any

    def evaluate(self, deps: list) -> Any:
        """Run the recipe with ``deps`` the task's dependency values."""
        return _evaluate(self.spec, deps)


def _evaluate(spec: Any, deps: list) -> Any:
    if isinstance(spec, Ref):
        return deps[spec.i]
    if isinstance(spec, tuple) and spec and callable(spec[0]):
        return spec[0](*[_evaluate(a, deps) for a in spec[1:]])
    if isinstance(spec, list):
        return [_evaluate(a, deps) for a in spec]
    if isinstance(spec, tuple):
        return tuple(_evaluate(a, deps) for a in spec)
    if isinstance(spec, dict):
        return {k: _evaluate(v, deps) for k, v in spec.items()}
    return spec


def result_cache_bytes() -> int:
    """Bytes of results a process keeps: dask config ``lazyreg.result-cache-bytes`` or the default.

    Examples
    --------
    >>> import dask
    >>> with dask.config.set({"lazyreg.result-cache-bytes": "1 GiB"}):
    ...     result_cache_bytes()
    1073741824
    """
    return config_number("lazyreg.result-cache-bytes", RESULT_CACHE_BYTES)


def _group(token: str) -> str:
    """The computation a token belongs to: ``"block:<alignment>:<index>"`` tokens of one
    alignment form one group; any other token is a group of its own.

    Examples
    --------
    >>> _group("block:lazyreg-block-ab12:(0, 1, 2)"), _group("align:cd34")
    ('block:lazyreg-block-ab12', 'align:cd34')
    """
    head, sep, _ = token.rpartition(":")
    return head if sep and ":" in head else token


def _nbytes(value: Any) -> int:
    try:
        return len(pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL))
    except Exception:  # pragma: no cover - results are plain data
        return 1 << 20


class _Store:
    """A thread-safe, bounded store of results by token (see :meth:`put`), with one computation per
    token at a time."""

    def __init__(self) -> None:
        self.items: OrderedDict = OrderedDict()  # token -> (value, nbytes)
        self.nbytes = 0
        self.lock = threading.Lock()
        self.running: dict = {}  # token -> Event set when the computing thread is done
        self.counts: dict = {}  # kind -> {"computed": n, "reused": n, "fetched": n}
        self.dropped: dict = {}  # group -> results not kept for want of room

    def count(self, kind: str, what: str) -> None:
        with self.lock:
            c = self.counts.setdefault(kind, {"computed": 0, "reused": 0, "fetched": 0})
            c[what] += 1

    def claim(self, token: str) -> tuple[bool, Any]:
        """``(True, value)`` if cached; else ``(False, None)`` once this thread may compute it."""
        while True:
            with self.lock:
                if token in self.items:
                    self.items.move_to_end(token)
                    return True, self.items[token][0]
                busy = self.running.get(token)
                if busy is None:
                    self.running[token] = threading.Event()
                    return False, None
            busy.wait()

    def release(self, token: str) -> None:
        with self.lock:
            ev = self.running.pop(token, None)
        if ev is not None:
            ev.set()

    def put(self, token: str, value: Any, limit: int) -> bool:
        """Keep ``value`` if it fits (see :func:`cached_call`); whether it was kept."""
        n = _nbytes(value)
        group = _group(token)
        with self.lock:
            if token in self.items:
                self.nbytes -= self.items.pop(token)[1]
            # make room from other computations' results, least recently used first; a
            # computation's own results are never evicted for each other: when they alone exceed
            # the limit, a later pass over them reuses those kept (LRU would evict each one
            # before the pass came back to it, and the whole computation would run again)
            for t in [t for t in self.items if _group(t) != group]:
                if self.nbytes + n <= limit:
                    break
                self.nbytes -= self.items.pop(t)[1]
            if self.nbytes + n > limit:
                first = group not in self.dropped
                self.dropped[group] = self.dropped.get(group, 0) + 1
                if first:
                    log.warning(
                        "lazyreg: registration results exceed the result cache (%.0f MiB held): "
                        "later computations will compute the results not kept again; raise dask config "
                        "lazyreg.result-cache-bytes, or compute the outputs together "
                        "(lazyreg.result_cache.compute_together)", self.nbytes / 2**20,
                    )
                return False
            self.items[token] = (value, n)
            self.nbytes += n
            return True


_STORE = _Store()
#: Futures of the task keys whose results this worker process computed (dask.distributed).
_HELD: dict = {}


def _worker_client() -> Any:
    """The worker's client when running inside a dask.distributed task, else None."""
    try:
        from distributed import get_client, get_worker

        get_worker()
    except (ImportError, ValueError):
        return None
    try:
        return get_client()
    except Exception:  # pragma: no cover - a worker without a scheduler connection
        return None


def _as_key(key: Any) -> Any:
    return tuple(_as_key(k) for k in key) if isinstance(key, list) else key


def _cluster_get(client: Any, token: str) -> tuple[bool, Any]:
    """The value the cluster holds for ``token`` (any worker), if any."""
    try:
        fut = client.get_dataset(_dataset_name(token), default=None)
        if fut is None:
            return False, None
        if not client.who_has([fut]).get(fut.key):
            return False, None  # released, or lost with its worker
        return True, fut.result(timeout=600)
    except Exception:
        return False, None  # a lost or released result: compute it again


def _dataset_name(token: str) -> str:
    return f"{METADATA_KEY}:{token}"


def _cluster_compute(client: Any, token: str, compute: Callable[[], Any]) -> tuple[str, Any]:
    """Fetch ``token``'s value from the cluster, or compute it and leave it there.

    A cluster-wide lock per token makes a second worker wait for the first one's result instead
    of computing it again (dask may run one registration task twice in a computation, e.g. once
    per collection type, or under a fused name).
    """
    from distributed import Lock

    with Lock(f"{METADATA_KEY}-{token}"):
        hit, value = _cluster_get(client, token)
        if hit:
            return "fetched", value
        value = compute()
        try:
            (fut,) = client.scatter([value], hash=False)  # a list: a dict value would be scattered item by item
            client.publish_dataset(fut, name=_dataset_name(token), override=True)
            _HELD[token] = fut
        except Exception:  # pragma: no cover - sharing is an optimisation only
            pass
        return "computed", value


def cached_call(token: str, kind: str, func: Callable[..., Any], inputs: Deferred, *deps: Any) -> Any:
    """``func(*inputs.evaluate(deps))``, computed at most once per token (per session).

    Parameters
    ----------
    token : str
        What the result depends on, deterministically (dask's ``tokenize`` of the inputs' names,
        the options and the seed).
    kind : str
        A label for :func:`cache_info` (e.g. ``"align"``, ``"block"``).
    func : callable
        Computes the result from the evaluated inputs.
    inputs : Deferred
        A recipe giving ``func``'s argument tuple; evaluated only when the result is not cached.
    *deps
        The task's dependency values, referred to by :class:`Ref` in ``inputs``.

    Examples
    --------
    >>> import operator
    >>> clear_cache()
    >>> cached_call("doc-example", "example", operator.add, Deferred([1, 2]))
    3
    >>> cached_call("doc-example", "example", operator.add, Deferred([1, 99]))   # reused
    3
    >>> cache_info()["example"]
    {'computed': 1, 'reused': 1, 'fetched': 0}
    """
    hit, value = _STORE.claim(token)
    if hit:
        _STORE.count(kind, "reused")
        return value
    try:
        client = _worker_client()
        if client is None:
            what, value = "computed", func(*inputs.evaluate(list(deps)))
        else:
            what, value = _cluster_compute(client, token, lambda: func(*inputs.evaluate(list(deps))))
        _STORE.put(token, value, result_cache_bytes())
        _STORE.count(kind, what)
        return value
    finally:
        _STORE.release(token)


def cache_info() -> dict:
    """Per kind of task: results ``computed``, ``reused`` from this process, ``fetched`` from the
    cluster, in this process since the last :func:`clear_cache`; plus ``bytes`` held here.

    On dask.distributed, sum over the workers: ``client.run(lazyreg.result_cache.cache_info)``.

    Examples
    --------
    >>> clear_cache()
    >>> cache_info()
    {'bytes': 0}
    """
    with _STORE.lock:
        out: dict = {k: dict(v) for k, v in _STORE.counts.items()}
        out["bytes"] = _STORE.nbytes
        if _STORE.dropped:
            out["not_kept"] = sum(_STORE.dropped.values())
    return out


def _clear_process() -> None:
    with _STORE.lock:
        _STORE.items.clear()
        _STORE.nbytes = 0
        _STORE.counts.clear()
        _STORE.dropped.clear()
    _HELD.clear()


def clear_cache(client: Any = None) -> None:
    """Forget every registration result of this session (they are computed again when needed).

    With a dask.distributed ``client`` (default: the current one, if any; ``False``: this process
    only), the workers' results and the scheduler's records are released too.

    Examples
    --------
    >>> clear_cache()
    >>> cache_info()["bytes"]
    0
    """
    _clear_process()
    if client is False:
        return
    if client is None:
        try:
            from distributed import default_client

            client = default_client()
        except (ImportError, ValueError):
            client = None
    if client is not None:
        client.run(_clear_process)
        for name in client.list_datasets():
            if str(name).startswith(METADATA_KEY + ":"):
                client.unpublish_dataset(name)


def _values(*values: Any) -> tuple:
    return values


def compute_together(*objs: Any, **kwargs: Any) -> tuple:
    """``dask.compute(*objs)`` in one graph (shared tasks run once), results in argument order.

    Wrapped in one delayed call: with dask 2026.8, ``dask.compute(array, delayed, array)``
    returns the results grouped by collection type, not in argument order. Keyword arguments go
    to :func:`dask.compute`.

    Examples
    --------
    >>> import dask, dask.array as da
    >>> from lazyreg.result_cache import compute_together
    >>> a, b = da.ones(2, chunks=1), dask.delayed(len)([1, 2, 3])
    >>> x, y = compute_together(a, b)
    >>> x.tolist(), y
    ([1.0, 1.0], 3)
    """
    return dask.compute(dask.delayed(_values, pure=True)(*objs), **kwargs)[0]
