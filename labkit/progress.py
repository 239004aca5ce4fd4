"""Progress that crosses processes: epochs done across all runs of a sweep, while they run.

A sweep trains in worker processes, so a bar that only moves when a whole run finishes sits
still for minutes. Here every finished *epoch* is counted instead:

* In each process that trains, :func:`install` a sink (a callable, or a queue from the parent)
  and add :func:`epoch_callback` to the trainer; it calls :func:`report` after every epoch.
* In the parent, an :class:`EpochCounter` owns the bar: ``counter.sink()`` is what to install
  in this process, ``counter.worker_sink(ctx)`` a queue to hand to worker processes through
  the pool's ``initializer``/``initargs`` (so :func:`labkit.executor.map_unordered` passes it
  through unchanged); a thread drains the queue into the bar.

When ``LABKIT_PROGRESS_STREAM=1`` is set (``labkit notebooks`` / ``make run`` set it for the
kernels they start), the counter also writes a plain line now and then to the process's real
stderr, which is the terminal of ``make run``: notebook kernels otherwise show progress only
inside the notebook.
"""

from __future__ import annotations

import os
import queue as queue_module
import sys
import threading
import time

from tqdm.auto import tqdm

STREAM_ENV = "LABKIT_PROGRESS_STREAM"
_SINK = None  # where report() sends epoch counts in this process


def install(sink) -> None:
    """Send this process's epoch reports to ``sink``: a callable ``sink(n)``, an object with
    ``put(n)`` (a multiprocessing queue), or ``None`` to stop reporting."""
    global _SINK
    if sink is not None and not callable(sink) and not hasattr(sink, "put"):
        raise TypeError(f"sink must be a callable, a queue (with put) or None, got {type(sink).__name__}")
    _SINK = sink


def report(n: int = 1) -> None:
    """``n`` more epochs are done (nothing happens when no sink is installed)."""
    sink = _SINK
    if sink is None:
        return
    try:
        sink.put(n) if hasattr(sink, "put") else sink(n)
    except (OSError, ValueError):  # the parent went away (its queue closed): training goes on
        pass


def epoch_callback():
    """A Lightning callback that calls :func:`report` after every training epoch
    (:class:`labkit.lit.ReportEpochs`; imported here on use: this module does not load Lightning)."""
    from .lit import ReportEpochs
    return ReportEpochs()


class EpochCounter:
    """The parent's bar: ``total`` epochs planned, moved by reports from any process."""

    def __init__(self, total: int, desc: str = "epochs", *, disable: bool = False, stream=None,
                 every_s: float = 10.0):
        self.total = int(total)
        self.done = 0
        self.bar = tqdm(total=self.total, desc=desc, unit="epoch", disable=disable)
        self.desc = desc
        self.stream = stream if stream is not None else (
            sys.__stderr__ if os.environ.get(STREAM_ENV) == "1" and not disable else None)
        self.every_s, self._last_line = every_s, 0.0
        self._lock = threading.Lock()
        self._queue = None
        self._thread = None

    def add(self, n: int = 1) -> None:
        with self._lock:
            self.done += n
            self.bar.update(n)
            self._line()

    def run_finished(self, planned: int, done: int) -> None:
        """A run stopped after ``done`` of ``planned`` epochs (early stopping, a time limit):
        its remaining epochs will never come, so drop them from the total."""
        if done < planned:
            with self._lock:
                self.total -= planned - done
                self.bar.total = self.total
                self.bar.refresh()

    def _line(self, force: bool = False) -> None:
        now = time.monotonic()
        if self.stream is None or (not force and now - self._last_line < self.every_s):
            return
        self._last_line = now
        print(f"[labkit] {self.desc}: {self.done}/{self.total} epochs", file=self.stream, flush=True)

    def sink(self):
        """What to :func:`install` in this process (in-process training)."""
        return self.add

    def worker_sink(self, ctx):
        """A queue (from multiprocessing context ``ctx``) for worker processes to report to."""
        if self._queue is None:
            self._queue = ctx.Queue()
            self._thread = threading.Thread(target=self._drain, daemon=True, name="labkit-progress")
            self._thread.start()
        return self._queue

    def _drain(self):
        while True:
            try:
                n = self._queue.get(timeout=0.2)
            except queue_module.Empty:
                continue
            except (EOFError, OSError, ValueError):
                return
            if n is None:
                return
            self.add(n)

    def close(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout=5)
            self._thread = None
        self._line(force=True)
        self.bar.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


__all__ = ["install", "report", "epoch_callback", "EpochCounter", "STREAM_ENV"]
