"""A sweep's plan: which of its missing runs train together, on how many workers, in what order.

:func:`plan` is what :func:`labkit.sweep.grid_sweep` calls before training anything:

1. runs that differ only in ``max_epochs`` share one training (:mod:`labkit.prefix`);
2. of the trainings left, those of one architecture and batch size that differ only in
   learning rate, weight decay, seed, ``max_epochs`` or early stopping become one *stack*
   (:mod:`labkit.stack`: K models per step), unless the model cannot be stacked (then each
   trains alone, with the same results as without stacking);
3. every training gets an estimated time: seconds per mini-batch step from a tiny timed probe
   in this process (a few steps of the model at its batch size on random rows, stacked K
   times, K = 1 for a run alone; validation and checkpoints not counted) times its steps;
4. trainings go to the workers longest first (as before); a stack is split in two when that
   shortens the estimated wall time on the workers (two half stacks on two cores beat one
   stack on one core and an idle one);
5. the plan is printed as one short table, before training.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time

import torch
import torch.nn as nn

from . import prefix
from .fused import FusedStep
from .models import get_model
from .runtime import torch_threads
from .stack import STACKED, VARY, _Stack, feature_major, stackable

MAX_STACK = 16  # models per stack: beyond this the batched step is compute-bound anyway
PROBE_STEPS = 12  # timed steps per probe (after 3 warm-up steps)
# Starting a worker process (it imports torch and Lightning, then loads the data): a rough figure,
# not measured per sweep. `python -c "import torch, pytorch_lightning, labkit.sweep"` took 12 s on
# this project's 2-core machine under a load average of 6 (a few seconds when quiet).
WORKER_START_S = 10.0


def _epochs(runs, i) -> int:
    return runs[i][1]["max_epochs"]


def planned_epochs(settings: dict) -> int:
    """Epochs a training reports as it goes (a stack: all its models'; a shared prefix: the lead's)."""
    return settings["max_epochs"] + sum(s["max_epochs"] for _, s, _ in settings.get(STACKED) or [])


def stack_groups(runs, missing, info, device: str) -> list[list[int]]:
    """The ``missing`` trainings grouped into stacks (lists of run indices; a list of one: alone)."""
    if device != "cpu":
        return [[i] for i in missing]
    by_key, order, fits = {}, [], {}
    for i in missing:
        settings, key = runs[i][1], runs[i][2]
        ok = (settings.get("scheduler") is None and settings.get("max_time") is None
              and not settings.get(prefix.PREFIXES))  # a prefix lead trains alone (it copies snapshots)
        rest = json.dumps({k: v for k, v in key.items() if k not in VARY}, sort_keys=True, default=str) if ok \
            else ("alone", i)
        if rest not in by_key:
            by_key[rest] = []
            order.append(rest)
        by_key[rest].append(i)
    out = []
    for rest in order:
        members = by_key[rest]
        if len(members) > 1:
            model = runs[members[0]][1]["model"]
            mkey = id(model) if isinstance(model, nn.Module) else model
            if mkey not in fits:
                fits[mkey] = stackable(_template(model, info))
            if not fits[mkey]:
                out.extend([i] for i in members)
                continue
            members = sorted(members, key=lambda i: -_epochs(runs, i))  # the longest leads
            out.extend(members[c:c + MAX_STACK] for c in range(0, len(members), MAX_STACK))
        else:
            out.append(members)
    return out


def _template(model, info) -> nn.Module:
    with torch.random.fork_rng():  # building a model draws random numbers: leave the caller's alone
        return copy.deepcopy(model) if isinstance(model, nn.Module) else get_model(model, info)


class Estimator:
    """Seconds per mini-batch step for (model, batch size, K), timed once each in this process."""

    def __init__(self, data):
        self.data = data
        self.n_train = len(data.y_train)
        self.seen = {}

    def step_seconds(self, model, batch_size: int, k: int) -> float:
        key = (id(model) if isinstance(model, nn.Module) else model, batch_size, k)
        if key not in self.seen:
            self.seen[key] = self._probe(model, batch_size, k)
        return self.seen[key]

    def _probe(self, model, batch_size: int, k: int) -> float:
        """Time a few steps of ``k`` stacked copies (k = 1 costs about what a run alone costs per step).
        The probe never runs the user's own forward in training mode (it may do more than compute:
        log, count, write files); a model the stacker cannot run is timed as jsc-tiny, so its
        estimate is only its number of steps in jsc-tiny's time."""
        info = self.data.info
        with torch.random.fork_rng(), torch_threads(1):
            torch.manual_seed(0)
            x = torch.randn(batch_size, info.num_features)
            y = torch.randint(0, info.num_classes, (batch_size,))
            net = _template(model, info)
            if not stackable(net):
                net = get_model("jsc-tiny", info)
            if k == 1:  # a run alone trains with the hand-written step (labkit.fused), ~2x a stack of one
                alone = copy.deepcopy(net).train()
                fused = FusedStep.build(alone, torch.optim.Adam(alone.parameters(), lr=1e-3, fused=True))
                if fused is not None:
                    return _timed(lambda: fused(x, y))
            stack = _Stack([copy.deepcopy(net) for _ in range(k)], [1e-3] * k, [0.0] * k)
            gens = [torch.Generator().manual_seed(j) for j in range(k)]
            xw, yk = feature_major(x, k), y.unsqueeze(1).expand(-1, k)

            def step():
                stack.step(xw, yk, gens)
            return _timed(step)

    def seconds(self, runs, members) -> float:
        """Estimated training time of one training (a run, a prefix lead or a stack)."""
        settings = runs[members[0]][1]
        steps = math.ceil(self.n_train / settings["batch_size"]) * max(_epochs(runs, i) for i in members)
        return steps * self.step_seconds(settings["model"], settings["batch_size"], len(members))


def _timed(step) -> float:
    """Seconds per call of ``step``: 3 warm-up calls, then the mean of PROBE_STEPS."""
    for _ in range(3):
        step()
    start = time.perf_counter()
    for _ in range(PROBE_STEPS):
        step()
    return (time.perf_counter() - start) / PROBE_STEPS


def makespan(costs, workers: int) -> float:
    """Wall time of ``costs`` on ``workers``, longest first, each to the least-loaded worker."""
    loads = [0.0] * max(1, workers)
    for c in sorted(costs, reverse=True):
        loads[loads.index(min(loads))] += c
    return max(loads)


def wall(tasks, cost, workers: int) -> float:
    """Estimated wall time: the makespan, plus starting worker processes when there are several
    trainings to run at once (one training runs in the sweep's own process)."""
    parallel = workers > 1 and len(tasks) > 1
    return makespan([cost(t) for t in tasks], workers) + (WORKER_START_S if parallel else 0.0)


def balance(tasks, cost, workers: int):
    """Split stacks in two while that shortens the estimated wall time on ``workers``."""
    while workers > 1:
        now = wall(tasks, cost, workers)
        big = max((t for t in tasks if len(t) > 1), key=cost, default=None)
        if big is None:
            return tasks
        halves = [big[0::2], big[1::2]]  # alternate: both halves get long and short runs
        trial = [t for t in tasks if t is not big] + halves
        if wall(trial, cost, workers) >= 0.95 * now:
            return tasks
        tasks = trial
    return tasks


def check_flags(**flags):
    """``share_prefixes`` and ``stack_runs`` must be True or False (checked before anything runs)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be True or False, got {value!r}")


def plan(runs, missing, project, *, data, device: str, workers: int, share_prefixes: bool = True,
         stack_runs: bool = True, name: str = "", show: bool = True) -> list[int]:
    """Plan a sweep's ``missing`` runs (``runs``: its ``(shown, settings, key)`` triples; settings
    of the runs that lead a shared prefix or a stack are extended with what they carry). Returns
    the runs that really train, longest first; prints the plan when ``show``."""
    check_flags(share_prefixes=share_prefixes, stack_runs=stack_runs)
    leads = prefix.share(runs, missing, project, enabled=share_prefixes, name=name, show=False)
    tasks = stack_groups(runs, leads, data.info, device) if stack_runs else [[i] for i in leads]
    if not tasks:
        return []
    est = Estimator(data)
    seconds = {}

    def cost(t):
        if tuple(t) not in seconds:
            seconds[tuple(t)] = est.seconds(runs, t)
        return seconds[tuple(t)]

    tasks = balance(tasks, cost, workers)
    for members in tasks:
        if len(members) > 1:
            lead = max(members, key=lambda i: _epochs(runs, i))
            shown, settings, key = runs[lead]
            others = [(j, runs[j][1], str(project(j))) for j in members if j != lead]
            runs[lead] = (shown, {**settings, STACKED: others}, key)
            members.remove(lead)
            members.insert(0, lead)
    tasks.sort(key=lambda t: -cost(t))
    if show:
        print(plan_table(runs, tasks, [cost(t) for t in tasks], workers, name, wall(tasks, cost, workers)),
              file=sys.stderr, flush=True)
    return [t[0] for t in tasks]


def _what(runs, members) -> str:
    from .sweep import label_of
    carried = runs[members[0]][1].get(prefix.PREFIXES) or []
    if carried:
        return f"{label_of(runs[members[0]][0])}; max_epochs {', '.join(str(k) for _, k, _ in carried)} from it"
    # a stack: each setting once, with the values its runs take ("learning_rate=1e-05, 0.001")
    shown = [runs[i][0] for i in members]
    parts = []
    for k in shown[0]:
        values = list(dict.fromkeys(label_of({k: s[k]}).split("=", 1)[1] for s in shown))
        parts.append(f"{k}={', '.join(values)}")
    text = "; ".join(parts)
    return text if len(text) <= 70 else text[:67] + "..."


def plan_table(runs, tasks, costs, workers: int, name: str = "", total: float | None = None) -> str:
    """One line per training: kind, runs, epochs it trains, estimated seconds, what it is."""
    n_runs = sum(len(t) + len(runs[t[0]][1].get(prefix.PREFIXES) or []) for t in tasks)
    trained = sum(planned_epochs(runs[t[0]][1]) for t in tasks)
    lines = [f"[labkit] sweep {name}: {n_runs} runs as {len(tasks)} trainings, {trained} epochs trained, "
             f"est. {makespan(costs, workers) if total is None else total:.1f} s on {min(workers, len(tasks))} "
             f"process(es) (a timed probe of {PROBE_STEPS} training steps per kind; validation not counted"
             f"{'' if total is None or workers < 2 or len(tasks) < 2 else f', {WORKER_START_S:.0f} s to start workers'})",
             f"  {'#':>2}  {'kind':<6}  {'runs':>4}  {'epochs':>6}  {'est. s':>7}  runs"]
    for n, (t, c) in enumerate(zip(tasks, costs), 1):
        carried = runs[t[0]][1].get(prefix.PREFIXES) or []
        kind = "stack" if len(t) > 1 else "prefix" if carried else "alone"
        lines.append(f"  {n:>2}  {kind:<6}  {len(t) + len(carried):>4}  {planned_epochs(runs[t[0]][1]):>6}  "
                     f"{c:>7.1f}  {_what(runs, t)}")
    return "\n".join(lines)


__all__ = ["plan", "check_flags", "wall", "WORKER_START_S", "plan_table", "stack_groups", "balance", "makespan", "Estimator", "planned_epochs", "MAX_STACK"]
