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
import importlib.util
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
    core (at most one per task when ``tasks`` has a length); ``n`` that many processes.
    ``cluster``: see the module doc; when it names one, ``workers`` is ignored; when neither
    is given, ``$LABKIT_CLUSTER`` names it (:func:`choose_cluster`). ``initializer(*initargs)``
    runs once in every worker before its first task (for ``workers`` 0/1: once, here).

    ``tasks`` is read lazily, a few ahead of the workers (two per worker), so a generator may
    make each task from the results before it (ask-and-tell searches do). Stop iterating
    early (or let an exception through) and the workers are stopped at once.
    """
    _check_workers(workers)
    if initializer is not None and not callable(initializer):
        raise TypeError(f"initializer must be callable or None, got {initializer!r}")
    target = choose_cluster(cluster, workers)
    if target is not None:
        return _dask_map(fn, tasks, target, initializer, tuple(initargs))
    n = workers if workers is not None else cpu_count()
    if hasattr(tasks, "__len__"):
        n = min(n, len(tasks))
    if n <= 1:
        return _in_process(fn, tasks, initializer, tuple(initargs))
    return _pool_map(fn, tasks, n, initializer, tuple(initargs))


_DONE = object()


def _in_process(fn, tasks, initializer, initargs):
    ready = initializer is None
    for task in tasks:
        if not ready:
            initializer(*initargs)
            ready = True
        yield task, fn(task)


# -- local worker processes ------------------------------------------------------------------


def _pool_init(initializer, initargs):
    from .runtime import exit_with_parent
    exit_with_parent()  # a parent killed with kill -9 (or a crashed kernel) takes its workers with it
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's job: it stops us
    if initializer is not None:
        initializer(*initargs)


def _stop_pool(pool):
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        p.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _pool_map(fn, tasks, n, initializer, initargs):
    source = iter(tasks)
    retry = []  # tasks that were running in a pool whose worker died
    restarts = 0
    while True:
        ctx = mp.get_context("spawn")  # safe with threads, notebooks and CUDA; workers import labkit
        pool = cf.ProcessPoolExecutor(n, mp_context=ctx, initializer=_pool_init, initargs=(initializer, initargs))
        clean = False
        try:
            broken = yield from _drain_pool(pool, fn, source, retry, n)
            if not broken:
                clean = True
                return
            restarts += 1
            if restarts > MAX_RESTARTS:
                raise RuntimeError(f"local worker processes died {restarts} times (killed, or out of memory?); "
                                   f"{len(retry)} task(s) unfinished, first: {describe(retry[0])}")
        finally:
            # Normal end: wait for the idle workers to exit. Otherwise (Ctrl-C, a failed task,
            # the caller stopped iterating, a broken pool): stop every worker now.
            if clean:
                pool.shutdown(wait=True)
            else:
                _stop_pool(pool)


def _drain_pool(pool, fn, source, retry: list, n: int):
    """Run the ``retry`` tasks, then ``source``'s, on ``pool`` (one queued per worker beyond the
    running ones), yielding ``(task, result)`` as each finishes. Returns True when a worker
    died: finished results are handed back, what was running or queued is put in ``retry``."""
    pending = {}

    def fill():
        while len(pending) < 2 * n:
            task = retry.pop(0) if retry else next(source, _DONE)
            if task is _DONE:
                return
            pending[pool.submit(fn, task)] = task

    fill()
    while pending:
        done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
        broken = False
        for fut in done:
            task = pending.pop(fut)
            try:
                result = fut.result()
            except cf.process.BrokenProcessPool:
                retry.append(task)
                broken = True
                continue
            yield task, result
        if broken:
            for fut, task in list(pending.items()):
                if fut.done() and fut.exception() is None:
                    yield task, fut.result()
                else:
                    retry.append(task)
            return True
        fill()
    return False


# -- a Dask cluster --------------------------------------------------------------------------

# In each Dask worker process: the token of the initializer that last ran, and a lock so that
# one task runs at a time (trainings seed process-wide random generators).
_RUN_LOCK = threading.Lock()
_INITIALIZED: list = [None]


def _dask_run(payload: bytes, token: str, init: bytes | None):
    # Unpickled here, inside the task, not by Dask on arrival: a class the worker cannot
    # import then fails this task with ModuleNotFoundError instead of the worker's connection.
    import cloudpickle
    with _RUN_LOCK:
        if init is not None and _INITIALIZED[0] != token:
            initializer, initargs = cloudpickle.loads(init)
            initializer(*initargs)  # once per worker process and call (the data arrive scattered)
            _INITIALIZED[0] = token
        fn, task = cloudpickle.loads(payload)
        return fn(task)


def describe(task, limit: int = 160) -> str:
    """A task as one short line, for messages (its ``repr``, whitespace folded, cut at ``limit``)."""
    text = " ".join(repr(task).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _lost_message(task, exc) -> str:
    return (f"run {describe(task)} failed on the Dask cluster: {type(exc).__name__}: {describe(exc)}; its "
            f"worker died each time it ran it (see distributed.scheduler.allowed-failures). Finished runs are kept.")


def _import_message(task, exc) -> str:
    return (f"a Dask worker cannot import {exc.name!r}, needed by run {describe(task)}: install that module on "
            f"the workers (or `client.upload_file('<file>.py')`), or define the model in the notebook so that "
            f"it is sent by value")


def _dask_map(fn, tasks, cluster, initializer, initargs):
    client, owned = connect(cluster)  # connect now: an unreachable address fails before any work
    return _dask_iter(client, owned, fn, tasks, initializer, initargs)


def _dask_iter(client, owned, fn, tasks, initializer, initargs):
    import cloudpickle
    from distributed import as_completed

    pending = {}
    try:
        window = 2 * max(1, _announce(client))  # one queued task per worker thread beyond the running ones
        token = uuid.uuid4().hex
        # Sent once to every worker, held there for the whole call (not once per task).
        init = None
        if initializer is not None:
            init = client.scatter(cloudpickle.dumps((initializer, initargs)), broadcast=True, hash=False)
        source, count = iter(tasks), 0
        running = as_completed([], loop=client.loop)

        def fill():
            nonlocal count
            while len(pending) < window:
                task = next(source, _DONE)
                if task is _DONE:
                    return
                fut = client.submit(_dask_run, cloudpickle.dumps((fn, task)), token, init, pure=False,
                                    key=f"labkit-{token[:8]}-{count}")
                count += 1
                pending[fut] = task
                running.add(fut)

        fill()
        for fut in running:
            task = pending.pop(fut)
            result = _dask_result(fut, task)
            fut.release()
            yield task, result
            fill()
    finally:
        if pending:  # stopped early or failed: drop what is still queued or running
            client.cancel(list(pending), force=True)
        if owned:
            client.close()


def _announce(client) -> int:
    """Print the cluster's address, worker count and dashboard; returns its worker threads."""
    workers = client.scheduler_info().get("workers", {})
    board = client.dashboard_link or "none"
    if importlib.util.find_spec("bokeh") is None:  # the page needs bokeh (an optional extra)
        board += " (its pages need bokeh: pip install bokeh)"
    print(f"Dask cluster {client.scheduler.address}: {len(workers)} worker(s); dashboard: {board}", flush=True)
    return sum(w.get("nthreads", 1) for w in workers.values())


def _dask_result(fut, task):
    """A finished task's result, or a RuntimeError saying in one line why the cluster lost it."""
    from concurrent.futures import CancelledError

    from distributed.scheduler import KilledWorker
    try:
        return fut.result()
    except KilledWorker as e:
        raise RuntimeError(_lost_message(task, e)) from None
    except ModuleNotFoundError as e:
        raise RuntimeError(_import_message(task, e)) from e
    except CancelledError as e:  # the scheduler dropped it (restarted, or the client was cut off)
        raise RuntimeError(f"run {describe(task)} was cancelled on the Dask cluster: {e}; finished runs "
                           f"are kept") from None


__all__ = ["map_unordered", "connect", "cluster_from_env", "choose_cluster", "uses_cluster",
           "ClusterUnavailableError", "cpu_count", "describe", "CLUSTER_ENV"]
