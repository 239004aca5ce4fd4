"""Shared prefixes: runs of a sweep that differ only in ``max_epochs`` are one training.

With no schedule that reads ``max_epochs`` (no LR scheduler, no time limit), epoch ``e`` of a
run does the same thing whatever ``max_epochs`` is: the shuffle order is a function of (seed,
epoch), the weights and optimiser state come from epoch ``e - 1``, and early stopping looks
only at the epochs so far. So a run to 10 epochs is the first 10 epochs of a run to 200.

:func:`share` groups a sweep's missing runs that way; the longest run of each group trains
(the *lead*) and :class:`Snapshots`, a callback in that training, saves each shorter run's
checkpoints as the lead passes its last epoch:

* ``last.ckpt``: the lead's last checkpoint at that epoch;
* ``best.ckpt``: the lead's best checkpoint at that epoch (the best within the prefix: the
  best-so-far only ever moves forward, so it is the one the shorter run would have kept);

each rewritten for the shorter run (its ``max_epochs``, its own folder), into that run's own
folder. Its history is the prefix, its test accuracy is measured on its own best checkpoint,
and it goes into the sweep cache under its own key: the same entry, and bit for bit the same
weights on the CPU, as training it alone (``tests/test_prefix.py`` checks that).

A lead that stops early at epoch ``s`` (early stopping) or diverges there stops every run of
``max_epochs >= s`` at the same epoch in the same way, so those take the lead's final state.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path

import torch
from pytorch_lightning.callbacks import Callback

from .cache import atomic_write
from .checkpoints import archive_previous, project_dir

PREFIXES = "shared_prefixes"  # the lead's settings entry listing its shorter runs (not a train() setting)


def shareable(settings: dict) -> bool:
    """Can this run be the prefix of a longer one? Not when anything depends on ``max_epochs``
    (a scheduler: cosine anneals over it) or on the clock (``max_time``)."""
    return settings.get("scheduler") is None and settings.get("max_time") is None


def groups(runs, missing) -> list[list[int]]:
    """The ``missing`` run indices grouped by everything but ``max_epochs`` (``runs``: a
    sweep's ``(shown, settings, key)`` triples), each group longest run first, in the order
    of ``missing`` (by their lead)."""
    by_key, order = {}, []
    for i in missing:
        settings, key = runs[i][1], runs[i][2]
        if shareable(settings):
            rest = json.dumps({k: v for k, v in key.items() if k != "max_epochs"}, sort_keys=True, default=str)
        else:
            rest = ("alone", i)
        if rest not in by_key:
            by_key[rest] = []
            order.append(rest)
        by_key[rest].append(i)
    # Longest first; among equal max_epochs (cannot happen in one grid) the first listed.
    return [sorted(by_key[k], key=lambda i: -runs[i][1]["max_epochs"]) for k in order]


def share(runs, missing, project, *, enabled: bool = True, name: str = "", show: bool = True) -> list[int]:
    """Plan the sweep: return the runs that really train (each group's lead, in ``missing``'s
    order), having added to each lead's settings the shorter runs it carries (index,
    ``max_epochs``, their folder from ``project(i)``). Prints the plan when any run is shared."""
    if not isinstance(enabled, bool):
        raise TypeError(f"share_prefixes must be True or False, got {enabled!r}")
    if not enabled:
        return list(missing)
    planned = groups(runs, missing)
    for members in planned:
        lead, shorter = members[0], members[1:]
        if shorter:
            shown, settings, key = runs[lead]
            carried = [(j, runs[j][1]["max_epochs"], str(project(j))) for j in sorted(shorter, key=lambda j: runs[j][1]["max_epochs"])]
            runs[lead] = (shown, {**settings, PREFIXES: carried}, key)
    if show and any(len(m) > 1 for m in planned):
        print(plan_table(runs, planned, name), file=sys.stderr, flush=True)
    return [m[0] for m in planned]


def plan_table(runs, planned, name: str = "") -> str:
    """The plan in a few lines: one row per shared training, then the runs trained alone."""
    epochs = lambda i: runs[i][1]["max_epochs"]  # noqa: E731
    alone = [m[0] for m in planned if len(m) == 1]
    asked = sum(epochs(i) for m in planned for i in m)
    trained = sum(epochs(m[0]) for m in planned)
    lines = [f"[labkit] sweep {name}: {sum(map(len, planned))} runs as {len(planned)} trainings "
             f"(shared prefixes), {trained} of {asked} epochs trained",
             f"  {'group':>5}  {'runs':>4}  {'epochs':>6}  max_epochs derived from it"]
    for g, m in enumerate((m for m in planned if len(m) > 1), 1):
        lines.append(f"  {g:>5}  {len(m):>4}  {epochs(m[0]):>6}  "
                     f"{', '.join(str(epochs(i)) for i in sorted(m, key=epochs))}")
    if alone:
        lines.append(f"  {'alone':>5}  {len(alone):>4}  {sum(map(epochs, alone)):>6}  (each trained on its own)")
    return "\n".join(lines)


def split(i: int, result: dict):
    """``(index, result)`` for a finished run and every shorter run it carried."""
    result = dict(result)
    carried = result.pop(PREFIXES, None) or []
    yield i, result
    yield from ((j, r) for j, r in carried)


# -- in the training process -------------------------------------------------------------------


def _repath(value, old: str, new: str):
    """``value`` with every string path under ``old`` moved under ``new``."""
    if isinstance(value, str):
        return new + value[len(old):] if value == old or value.startswith(old + "/") else value
    if isinstance(value, dict):
        return {_repath(k, old, new): _repath(v, old, new) for k, v in value.items()}  # keys too
    if isinstance(value, (list, tuple)):
        return type(value)(_repath(v, old, new) for v in value)
    return value


def copy_checkpoint(src: Path, dst: Path, max_epochs: int):
    """Write the lead's checkpoint ``src`` as the shorter run's ``dst``: its own ``max_epochs``
    in the hyperparameters and its own folder in the callbacks' state; weights, optimiser
    state, epoch and step count unchanged."""
    ckpt = torch.load(src, map_location="cpu", weights_only=True)
    hp = ckpt.get("hyper_parameters")
    if isinstance(hp, dict) and "max_epochs" in hp:
        hp["max_epochs"] = max_epochs
    if "callbacks" in ckpt:
        ckpt["callbacks"] = _repath(ckpt["callbacks"], str(src.parent), str(dst.parent))
    atomic_write(dst, lambda tmp: torch.save(ckpt, tmp))


class Snapshots(Callback):
    """In the lead's training: at the end of each shorter run's last epoch, copy the lead's
    best and last checkpoints into that run's folder and note its best score, steps and time.

    The copy is taken when the next epoch starts (by then every checkpoint callback has
    written the finished epoch's files, and nothing of the next epoch has run yet)."""

    def __init__(self, settings: dict, project):
        self.carried = list(settings.get(PREFIXES) or [])  # (index, max_epochs, folder)
        self.lead_dir = project_dir(Path(project)) / "training_ckpts"
        self.taken = {}  # index -> {"best_ckpt", "last_ckpt", "best_val_acc", "steps", "wall_time_s"}
        self.start = None

    def callbacks(self) -> list:
        return [self] if self.carried else []

    def on_train_start(self, trainer, lit):
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer, lit):
        for j, k, folder in self.carried:
            if k == trainer.current_epoch:  # epoch k has just finished
                self.taken[j] = self._take(trainer, k, folder)

    def _take(self, trainer, k: int, folder: str) -> dict:
        score = trainer.checkpoint_callback.best_model_score if trainer.checkpoint_callback else None
        return {**self._copy(k, folder),
                "best_val_acc": float(score) if score is not None else float("nan"),
                "steps": int(trainer.global_step), "wall_time_s": time.perf_counter() - self.start}

    def _copy(self, k: int, folder: str) -> dict:
        ckpt_dir = project_dir(Path(folder)) / "training_ckpts"
        archive_previous(ckpt_dir)  # as train() does: an earlier run's files are moved aside
        out = {}
        for which in ("best", "last"):
            src = self.lead_dir / f"{which}.ckpt"
            if src.is_file():
                copy_checkpoint(src, ckpt_dir / src.name, k)
            out[f"{which}_ckpt"] = str(ckpt_dir / src.name) if src.is_file() else None
        return out

    def derive(self, lead: dict, test_acc) -> dict:
        """The lead's result with each shorter run's result under :data:`PREFIXES`;
        ``test_acc(best_ckpt)`` measures a checkpoint's test accuracy as for any run."""
        if not self.carried:
            return lead
        history, out = lead["history"], []
        for j, k, folder in self.carried:
            if j in self.taken:  # the lead went past epoch k
                r = {**self.taken[j], "history": copy.deepcopy(history[:k]), "diverged": None}
                last = r["history"][-1]
                r.update(final_val_acc=last.get("val_acc", math.nan), final_train_acc=last.get("train_acc", math.nan),
                         epochs=k, stopped_early=False)
                r["test_acc"] = test_acc(r["best_ckpt"]) if r["best_ckpt"] else math.nan
            else:  # the lead stopped (early, or diverged) by epoch k: so would this run, the same way
                old = str(self.lead_dir)
                files = self._copy(k, folder)  # what the lead left on disk, as this run would have
                r = copy.deepcopy(lead)
                if not r.get("diverged"):  # a diverged run's result names no checkpoint, as for any
                    r.update(files)
                r["stopped_early"] = r["epochs"] < k
                if r.get("diverged"):
                    r["diverged"] = r["diverged"].replace(old, str(project_dir(Path(folder)) / "training_ckpts"))
                elif r.get("best_ckpt"):
                    r["test_acc"] = test_acc(r["best_ckpt"])
            # Provenance only (no table column reads it): this run's time was spent inside the
            # longer run's, so summing wall_time_s over a sweep counts that prefix again.
            r["prefix_of"] = self.lead_dir.parent.parent.name
            out.append((j, r))
        return {**lead, PREFIXES: out}


def compute_seconds(*results) -> float:
    """Seconds of training the runs of these sweeps (:class:`~labkit.sweep.SweepResult`) took,
    each shared prefix counted once: a run taken from a longer run's training adds nothing
    (its ``wall_time_s`` is the time that training took to reach its last epoch); runs stacked
    into one training (:mod:`labkit.stack`) add that training's time once, and so does a run that
    several sweeps share (:func:`labkit.sweep.sweeps` trains it once and stores it in each: the same
    checkpoint), and so does a stack whose runs belong to several of the sweeps."""
    from .cache import ResultCache
    total, seen = 0.0, set()
    stacks = {}  # stacked training -> its longest member's seconds, over all the sweeps
    for res in results:
        stored = [e["result"] for e in ResultCache(res.directory).entries() if isinstance(e.get("result"), dict)]
        taken = {r.get("best_ckpt") for r in stored if r.get("prefix_of")} - {None}
        # runs trained together as one stacked model (labkit.stack): that training counts once, as
        # long as its longest member took
        stacked = {r["best_ckpt"]: r["stacked_in"] for r in stored if r.get("stacked_in") and r.get("best_ckpt")}
        for ckpt, seconds in zip(res.table["best_ckpt"], res.table["wall_time_s"]):
            if ckpt in taken or seconds != seconds or ckpt in seen:  # a prefix taken from a longer run;
                continue  # NaN: diverged; or counted already (a run of an earlier sweep too)
            if ckpt:
                seen.add(ckpt)
            if ckpt in stacked:
                stacks[stacked[ckpt]] = max(stacks.get(stacked[ckpt], 0.0), float(seconds))
            else:
                total += float(seconds)
    return total + sum(stacks.values())


__all__ = ["compute_seconds", "share", "groups", "shareable", "split", "plan_table", "Snapshots", "copy_checkpoint", "PREFIXES"]
