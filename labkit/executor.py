"""Run many independent jobs (trainings, evaluations) and hand back each result as it finishes.

One call, three places to run::

    for task, result in map_unordered(fn, tasks, initializer=init, initargs=(data,)):
        cache.put(key_of(task), result)       # stored the moment it arrives

* in this process (``workers=1`` or ``0``): one task after another;
* worker processes on this machine (the default): ``workers`` of them (default one per
  core, at most one per task), each started with ``initializer(*initargs)`` once;
* a Dask distributed cluster (``cluster="tcp://host:8786"``, a ``distributed.Client`` or a
  ``LocalCluster``, or the ``LABKIT_CLUSTER`` environment variable): ``initargs`` are
  scattered once to every worker and ``initializer`` runs once per worker process before
  its first task. Functions and models defined in a notebook travel by value (cloudpickle).

A run never splits: what scales is how many run at the same time. Each Dask worker process
runs one task at a time (a lock: training seeds process-wide random generators), so start
workers with ``--nthreads 1`` and as many processes as cores (``--nworkers N``).

Faults: a local worker process that dies breaks the pool; the unfinished tasks then go to a
fresh pool, at most ``MAX_RESTARTS`` times. A Dask worker that dies has its running task
rescheduled elsewhere by the scheduler (``distributed.scheduler.allowed-failures``, 3 by
default); after that the task fails with one line naming it. Results already handed back are
never recomputed. An unreachable scheduler is a :class:`ClusterUnavailableError` (a
``ConnectionError``) naming the address after ``CONNECT_TIMEOUT_S`` seconds.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal
import threading
import uuid

CLUSTER_ENV = "LABKIT_CLUSTER"
CONNECT_TIMEOUT_S = 5.0  # a scheduler that answers at all answers well within this
MAX_RESTARTS = 2  # fresh local pools after a worker process died, per call


class ClusterUnavailableError(ConnectionError):
    """The Dask scheduler named by ``cluster`` / ``LABKIT_CLUSTER`` could not be reached."""


def cpu_count() -> int:
    """CPU cores this process may use (a container or ``taskset`` may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on every platform
        return os.cpu_count() or 1


def _check_workers(workers):
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int) or workers < 0):
        raise ValueError(f"workers must be None or an integer >= 0 (0 or 1: in this process), got {workers!r}")


def cluster_from_env(cluster=None):
    """What ``cluster`` means: the argument when given, else ``$LABKIT_CLUSTER``, else ``None``.

    ``False`` or ``""`` means "no cluster" even when the variable is set."""
    if cluster is None:
        cluster = os.environ.get(CLUSTER_ENV, "").strip() or None
    return cluster or None


def choose_cluster(cluster=None, workers=None):
    """Where a sweep's runs go, as a caller with both arguments decides it: an explicit
    ``cluster`` wins; an explicit ``workers`` means this machine; with neither,
    ``$LABKIT_CLUSTER`` when set. Returns the cluster (address checked, not yet contacted)
    or ``None`` for this machine."""
    if cluster is None and workers is not None:
        return None
    target = cluster_from_env(cluster)
    if target is None:
        return None
    if isinstance(target, bool):
        raise TypeError(f"cluster must be a Dask scheduler address, a distributed.Client or None, got {target!r}")
    if isinstance(target, str):
        return _check_address(target.strip())
    if not hasattr(target, "scheduler_address") and type(target).__name__ != "Client":
        raise TypeError(f"cluster must be a Dask scheduler address (str), a distributed.Client or a "
                        f"LocalCluster, got {type(target).__name__}")
    return target


def uses_cluster(cluster=None) -> bool:
    """Would :func:`map_unordered` with this ``cluster`` argument run on a Dask cluster?"""
    return cluster_from_env(cluster) is not None


def _check_address(address: str) -> str:
    scheme, sep, rest = address.partition("://")
    host, colon, port = (rest if sep else address).rpartition(":")
    if (sep and scheme not in ("tcp", "tls", "inproc", "ws", "wss")) or not colon or not host \
            or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"cluster must be a Dask scheduler address like 'tcp://host:8786' (or a "
                         f"distributed.Client), got {address!r}")
    return address if sep else f"tcp://{address}"


def connect(cluster, timeout: float = CONNECT_TIMEOUT_S):
    """A ``distributed.Client`` for ``cluster`` and whether we opened it (then we close it).

    ``cluster``: a scheduler address (``"tcp://host:8786"``), a ``Client``, or anything with a
    ``scheduler_address`` (a ``LocalCluster``)."""
    try:
        from distributed import Client
    except ImportError as e:  # pragma: no cover - pinned in requirements.txt
        raise ImportError("running on a Dask cluster needs `pip install dask distributed`") from e
    if isinstance(cluster, Client):
        return cluster, False
    address = getattr(cluster, "scheduler_address", cluster)
    if not isinstance(address, str):
        raise TypeError(f"cluster must be a scheduler address (str), a distributed.Client or a LocalCluster, "
                        f"got {type(cluster).__name__}")
    address = _check_address(address.strip())
    try:
        client = Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as e:
        raise ClusterUnavailableError(
            f"cannot reach the Dask scheduler at {address} (no answer within {timeout:g} s); start one with "
            f"`dask scheduler`, or unset {CLUSTER_ENV} / pass cluster=None to run locally") from e
    return client, True


def map_unordered(fn, tasks, *, workers=None, cluster=None, initializer=None, initargs=()):
    """Yield ``(task, fn(task))`` for every task, in the order they finish.

    ``workers``: 0 or 1 runs here, one after another; ``None`` (default) one process per CPU
    core (at most one per task); ``n`` that many processes. ``cluster``: see the module doc;
    when it (or ``$LABKIT_CLUSTER``) names one, ``workers`` is ignored. ``initializer(*initargs)``
    runs once in every worker (here, once, for ``workers`` 0/1) before its first task.

    Stop iterating early (or let an exception through) and the workers are stopped at once.
    """
    _check_workers(workers)
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable or None, got {initializer!r}")
    tasks = list(tasks)
    target = cluster_from_env(cluster)
    if target is not None:
        return _dask_map(fn, tasks, target, initializer, tuple(initargs))
    n = min(workers if workers is not None else cpu_count(), len(tasks))
    if n <= 1:
        return _in_process(fn, tasks, initializer, tuple(initargs))
    return _pool_map(fn, tasks, n, initializer, tuple(initargs))


# -- in this process -------------------------------------------------------------------------


def _in_process(fn, tasks, initializer, initargs):
    if initializer is not None and tasks:
        initializer(*initargs)
    for task in tasks:
        yield task, fn(task)


# -- local worker processes ------------------------------------------------------------------


def _pool_init(initializer, initargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's job: it stops us
    if initializer is not None:
        initializer(*initargs)


def _stop_pool(pool):
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _pool_map(fn, tasks, n, initializer, initargs):
    pending = list(range(len(tasks)))
    restarts = 0
    while pending:
        ctx = mp.get_context("spawn")  # safe with threads, notebooks and CUDA; workers import labkit
        pool = cf.ProcessPoolExecutor(min(n, len(pending)), mp_context=ctx, initializer=_pool_init,
                                      initargs=(initializer, initargs))
        clean = False
        try:
            futures = {pool.submit(fn, tasks[i]): i for i in pending}
            try:
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    result = fut.result()
                    pending.remove(i)
                    yield tasks[i], result
            except cf.process.BrokenProcessPool:
                # A worker died (killed, out of memory): finished results are already handed
                # back; the unfinished tasks go to a fresh pool, a bounded number of times.
                restarts += 1
                if restarts > MAX_RESTARTS:
                    raise RuntimeError(f"worker processes died {restarts} times; {len(pending)} task(s) "
                                       f"unfinished, first: {tasks[pending[0]]!r}") from None
                continue
            clean = True
        finally:
            # Normal end: wait for the idle workers to exit. Otherwise (Ctrl-C, a failed task,
            # the caller stopped iterating, a broken pool): stop every worker now.
            if clean:
                pool.shutdown(wait=True)
            else:
                _stop_pool(pool)


# -- a Dask cluster --------------------------------------------------------------------------

# In each Dask worker process: the token of the initializer that last ran, and a lock so that
# one task runs at a time (trainings seed process-wide random generators).
_RUN_LOCK = threading.Lock()
_INITIALIZED: list = [None]


def _dask_run(fn, task, initializer, token, *initargs):
    with _RUN_LOCK:
        if initializer is not None and _INITIALIZED[0] != token:
            initializer(*initargs)  # once per worker process and call (the data arrive scattered)
            _INITIALIZED[0] = token
        return fn(task)


def _lost_message(task, exc) -> str:
    return (f"run {task!r} failed on the Dask cluster: {type(exc).__name__}: {exc}; its worker died "
            f"each time it ran it (see distributed.scheduler.allowed-failures). Finished runs are kept.")


def _import_message(task, exc) -> str:
    return (f"a Dask worker cannot import {exc.name!r}, needed by run {task!r}: install that module on the "
            f"workers (or `client.upload_file('<file>.py')`), or define the model in the notebook so that it "
            f"is sent by value")


def _dask_map(fn, tasks, cluster, initializer, initargs):
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    client, owned = connect(cluster)  # connect now: an unreachable address fails before any work
    return _dask_iter(client, owned, fn, tasks, initializer, initargs, as_completed, KilledWorker)


def _dask_iter(client, owned, fn, tasks, initializer, initargs, as_completed, KilledWorker):
    futures = {}
    try:
        if not tasks:
            return
        info = client.scheduler_info()
        n = len(info.get("workers", {}))
        # The dashboard exists only where the scheduler has bokeh (an optional extra).
        board = client.dashboard_link if "dashboard" in info.get("services", {}) else "none (pip install bokeh)"
        print(f"Dask cluster {client.scheduler.address}: {n} worker(s); dashboard: {board}", flush=True)
        token = uuid.uuid4().hex
        # Sent once to every worker, held there for the whole call (not once per task).
        init_futs = client.scatter(list(initargs), broadcast=True, hash=False) if initargs else []
        for i, task in enumerate(tasks):
            fut = client.submit(_dask_run, fn, task, initializer, token, *init_futs, pure=False,
                                key=f"labkit-{token[:8]}-{i}")
            futures[fut] = i
        for fut in as_completed(list(futures), loop=client.loop):
            i = futures.pop(fut)
            try:
                result = fut.result()
            except KilledWorker as e:
                raise RuntimeError(_lost_message(tasks[i], e)) from None
            except ModuleNotFoundError as e:
                raise RuntimeError(_import_message(tasks[i], e)) from e
            fut.release()
            yield tasks[i], result
    finally:
        if futures:  # stopped early or failed: drop what is still queued or running
            client.cancel(list(futures), force=True)
        if owned:
            client.close()


__all__ = ["map_unordered", "connect", "cluster_from_env", "choose_cluster", "uses_cluster", "ClusterUnavailableError",
           "cpu_count", "CLUSTER_ENV"]
