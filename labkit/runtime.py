"""How torch runs while labkit works: CPU threads, the device, eval mode, global flags, and how
Lightning talks (its log lines, its answer to Ctrl-C).

Small helpers that change one piece of process-wide state for a while and always put it back.
Only torch is imported here (not Lightning), so passes can use them cheaply.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import warnings

import torch
import torch.nn as nn


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run torch on ``n`` CPU threads for a while (``None``: leave it), then restore.

    A tiny MLP's ops are far too small to split across threads: extra threads only add
    synchronisation, and on a busy machine they make training many times slower (17x
    measured on 2 loaded cores), so :func:`train` uses one thread on the CPU by default."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def available_devices() -> tuple[str, ...]:
    """The torch device types this machine can compute on now: ``"cpu"``, then ``"cuda"`` and
    ``"mps"`` when torch finds them. The one place labkit asks torch what hardware it has."""
    found = ["cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return tuple(found)


def usable_accelerators() -> tuple[str, ...]:
    """The accelerator settings this machine can train with now."""
    found = available_devices()
    return ("auto", "cpu") + (("gpu", "cuda") if "cuda" in found else ()) + (("mps",) if "mps" in found else ())


def check_usable(accelerator: str) -> str:
    """``accelerator`` (an allowed value, see :class:`labkit.settings.TrainSettings`) if this
    machine has the hardware it asks for; else a ValueError saying what to use instead."""
    usable = usable_accelerators()
    if accelerator not in usable:
        need = "an Apple-silicon GPU (MPS)" if accelerator == "mps" else "a CUDA GPU"
        raise ValueError(f"accelerator {accelerator!r} needs {need}, and torch finds none here; "
                         f"use one of {', '.join(usable)}")
    return accelerator


def device_kind(accelerator: str) -> str:
    """Where a run with this ``accelerator`` setting computes on this machine: ``"cpu"``,
    ``"gpu"`` (CUDA) or ``"mps"``. ``"auto"`` chooses as Lightning does (MPS, else CUDA, else the
    CPU). CPU runs get one thread, and sweeps and comparisons put it in their cache keys (GPU
    and CPU round differently)."""
    if accelerator in ("gpu", "cuda"):
        return "gpu"
    if accelerator in ("cpu", "mps"):
        return accelerator
    if accelerator == "auto":
        found = available_devices()
        return "mps" if "mps" in found else "gpu" if "cuda" in found else "cpu"
    raise ValueError(f"accelerator must be one of auto, cpu, gpu, cuda, mps, got {accelerator!r}")


def lightning_accelerator(accelerator: str) -> str:
    """The name Lightning's ``Trainer`` takes for an accelerator setting (it has no ``"cuda"``)."""
    return "gpu" if accelerator == "cuda" else accelerator


def cpu_threads(accelerator: str, num_threads: int | None) -> int | None:
    """CPU threads for a run: as asked, else one on the CPU (see :func:`torch_threads`)."""
    return num_threads or (1 if device_kind(accelerator) == "cpu" else None)


def model_device(model: nn.Module) -> torch.device:
    """The device ``model``'s parameters are on (the CPU for a model without parameters)."""
    return next(iter(model.parameters()), torch.zeros(())).device


_TORCH_DEVICE = {"cpu": "cpu", "gpu": "cuda", "mps": "mps"}  # device_kind -> torch's device type


@contextlib.contextmanager
def on_device(model: nn.Module, accelerator: str):
    """Move ``model`` to the device ``accelerator`` names (:func:`device_kind`) for a while, then
    back to where it was."""
    before = model_device(model)
    model.to(_TORCH_DEVICE[device_kind(accelerator)])
    try:
        yield model
    finally:
        model.to(before)


@contextlib.contextmanager
def eval_mode(model: nn.Module):
    """Put ``model`` in eval mode for a while, then give every submodule back its own mode
    (``model.train(was)`` would flatten them: a BatchNorm kept in eval mode would train again)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


@contextlib.contextmanager
def torch_flags_restored():
    """Let Lightning set torch's global flags for one run, then put the process's own back.

    ``Trainer(deterministic=True)`` calls ``torch.use_deterministic_algorithms(True)``, turns
    off cuDNN benchmarking and sets ``CUBLAS_WORKSPACE_CONFIG``, all for good: later code in
    the same notebook would then fail on ops without a deterministic kernel."""
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    benchmark = torch.backends.cudnn.benchmark
    cublas = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(deterministic, warn_only=warn_only)
        torch.backends.cudnn.benchmark = benchmark
        if cublas is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = cublas


def exit_with_parent(parent_pid: int | None = None, interval: float = 0.5) -> None:
    """Make this (worker) process exit within ``interval`` seconds once its parent is gone.

    A sweep's worker processes must not outlive a sweep killed with ``kill -9`` (or a crashed
    kernel): they would go on training, holding CPU cores and writing into the outputs. A
    daemon thread polls the parent PID: when the parent dies the worker is re-parented
    (``getppid()`` changes) and exits at once. (Linux's ``prctl(PR_SET_PDEATHSIG)`` is not used:
    it fires when the parent *thread* that started the worker ends, and pool executors may
    start workers from short-lived threads.) ``parent_pid`` defaults to the parent this
    process was started by (``multiprocessing``), else its current parent.
    """
    import multiprocessing
    import threading
    import time

    if parent_pid is None:
        parent = multiprocessing.parent_process()
        parent_pid = parent.pid if parent is not None else os.getppid()

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(interval)
        os._exit(1)  # nothing to clean up that the OS does not: checkpoints are written atomically

    threading.Thread(target=watch, name="labkit-exit-with-parent", daemon=True).start()


_NOISE = (".*does not have many workers.*", ".*smaller than the logging interval.*", ".*LeafSpec.*",
          ".*treespec.*", ".*GPU available but not used.*")


def quiet_lightning():
    """Keep Lightning's banner and advice out of the way (once per process)."""
    for name in ("pytorch_lightning", "lightning.pytorch", "lightning_fabric", "lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    known = {f[1].pattern for f in warnings.filters if f[0] == "ignore" and f[1] is not None}
    for pattern in _NOISE:
        if pattern not in known:
            warnings.filterwarnings("ignore", message=pattern)


def _lightning_exit(exc: SystemExit) -> bool:
    """Was this the ``sys.exit(1)`` Lightning raises after catching Ctrl-C?"""
    tb = exc.__traceback__
    while tb.tb_next is not None:
        tb = tb.tb_next
    return exc.code == 1 and "lightning" in tb.tb_frame.f_code.co_filename


@contextlib.contextmanager
def interruptible():
    """Make Ctrl-C during a Lightning fit a plain ``KeyboardInterrupt``.

    Lightning answers Ctrl-C by calling ``sys.exit(1)`` (having ignored SIGINT meanwhile):
    fine for a script, but in a notebook it ends the cell with ``SystemExit`` instead of an
    interrupt. We turn it back into KeyboardInterrupt, with the SIGINT handler as before.
    """
    main = threading.current_thread() is threading.main_thread()
    handler = signal.getsignal(signal.SIGINT) if main else None
    try:
        yield
    except SystemExit as exc:
        if not _lightning_exit(exc):
            raise
        if main and signal.getsignal(signal.SIGINT) is not handler and handler is not None:
            signal.signal(signal.SIGINT, handler)
        raise KeyboardInterrupt("training interrupted") from None
