"""Run one function over many tasks on the local cores: ``map_unordered``.

    for task, result in map_unordered(fn, tasks, workers=2, initializer=setup, initargs=(...)):
        ...                                  # results arrive as they finish, not in task order

``workers`` 0 or 1 runs everything in this process (``initializer`` first); more starts that
many spawned worker processes once, each running ``initializer(*initargs)`` once, and keeps
them for every task. ``tasks`` is read lazily, a few tasks ahead of the workers, so a
generator may make each task from the results before it (ask-and-tell searches do).

(The minimal version: the issue-12 executor, with clusters, replaces it.)
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing as mp
import os
import signal


def cpu_count() -> int:
    """CPU cores this process may use (a container or ``taskset`` may allow fewer than exist)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _init(initializer, initargs):
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's job: it stops us
    if initializer is not None:
        initializer(*initargs)


def map_unordered(fn, tasks, *, workers=None, cluster=None, initializer=None, initargs=()):
    """Yield ``(task, fn(task))`` for every task, in the order they finish."""
    if cluster is not None:
        raise ValueError("map_unordered: cluster is not supported by this executor; use workers=N")
    workers = cpu_count() if workers is None else workers
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 0:
        raise ValueError(f"map_unordered: workers must be an integer >= 0, got {workers!r}")
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        for task in tasks:
            yield task, fn(task)
        return

    pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                  initargs=(initializer, initargs))
    tasks = iter(tasks)
    pending: dict = {}
    try:
        def submit() -> bool:
            task = next(tasks, _DONE)
            if task is _DONE:
                return False
            pending[pool.submit(fn, task)] = task
            return True

        # one queued task per worker beyond the running ones keeps every worker busy
        while len(pending) < 2 * workers and submit():
            pass
        while pending:
            done, _ = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
            for fut in done:
                task = pending.pop(fut)
                yield task, fut.result()
            while len(pending) < 2 * workers and submit():
                pass
    except BaseException:
        # Ctrl-C, a failed task or the caller stopping early: stop the busy workers now
        for p in list(getattr(pool, "_processes", {}).values()):
            p.terminate()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


_DONE = object()
