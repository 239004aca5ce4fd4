"""Notebooks 01-03: count parameters, choose a learning rate, design and train a network.

01: ``count_params(model)``, checked on the zoo and on models built to catch the usual slips
    (biases forgotten, BatchNorm's running statistics counted, frozen weights counted).
02: a learning rate for a batch size, chosen from the notebook's grid, justified by the
    accuracy it measured.
03: a ``JSC_Custom`` of your own under a parameter budget, then trained and tested.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn as nn

from ..models import JSC_INFO, count_parameters, get_model
from .verdict import NotYet, call_student, check, ok


# --- 01: counting parameters --------------------------------------------------------------


def _frozen_model() -> nn.Module:
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))
    model[0].requires_grad_(False)  # a frozen layer: not trained, so not counted
    return model


def _cases() -> list[tuple[str, nn.Module]]:
    return [("nn.Linear(16, 5)", nn.Linear(16, 5)),
            ("nn.BatchNorm1d(16)", nn.BatchNorm1d(16)),
            ("jsc-tiny", get_model("jsc-tiny", JSC_INFO)),
            ("jsc-custom", get_model("jsc-custom", JSC_INFO)),
            ("a model whose first Linear(16, 8) is frozen", _frozen_model())]


@check("count the trainable parameters")
def check_count_params(count_params):
    """``count_params(model) -> int`` must equal the number of trainable parameter values."""
    for name, model in _cases():
        got = call_student(count_params, model, what=f"count_params({name})")
        want = count_parameters(model)
        if isinstance(got, torch.Tensor) and got.numel() == 1:
            got = got.item()
        if not isinstance(got, (int, float)) or isinstance(got, bool):
            raise NotYet(f"count_params should return a number, but for {name} it returned {got!r:.60}.")
        if got == want:
            continue
        tensors = sum(1 for p in model.parameters())
        weights_only = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad and n.endswith("weight"))
        with_buffers = sum(v.numel() for v in model.state_dict().values())
        every = sum(p.numel() for p in model.parameters())
        if got == tensors:
            why = f"that is the number of parameter tensors ({tensors}); count their values (`p.numel()`)"
        elif got == weights_only:
            why = "that counts the weights but forgets the biases (and BatchNorm's shifts)"
        elif got == with_buffers and any(True for _ in model.buffers()):
            why = ("that includes BatchNorm's running mean and variance (and its batch counter), which are buffers "
                   "in the state dict, not trained parameters: use `model.parameters()`")
        elif got == every:
            why = "that includes the frozen layer's values; count only parameters with `p.requires_grad`"
        else:
            why = "walk `model.parameters()` and add up `p.numel()` of those with `p.requires_grad`"
        raise NotYet(f"for {name} you counted {got:,}, the model has {want:,} trainable parameter values: {why}.")
    return ok("your counts match on every model, including jsc-tiny's 117 (32 BatchNorm + 80 weights + 5 biases) "
              "and the frozen layer left out.")


# --- 02: a learning rate for a batch size ---------------------------------------------------


def grid_table(grid) -> pd.DataFrame:
    """Final validation accuracy, learning rates as rows and batch sizes as columns."""
    table = grid.table if hasattr(grid, "table") else grid
    if {"learning_rate", "batch_size", "final_val_acc"} <= set(table.columns):
        table = table.pivot(index="learning_rate", columns="batch_size", values="final_val_acc")
    return table


def _close(a: float, b: float) -> bool:
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


@check("a learning rate for a batch size")
def check_lr_choice(grid, batch_size, learning_rate, evidence, tolerance: float = 0.0005):
    """Is ``learning_rate`` the grid's best for ``batch_size``, and is ``evidence`` the accuracy it measured?

    ``evidence`` must be the final validation accuracy of that cell, to ``tolerance`` (rounding to
    3 decimals is fine). A rate within ``tolerance`` of the best counts as a tie.
    """
    table = grid_table(grid)
    batches, rates = list(table.columns), list(table.index)
    if batch_size is None or learning_rate is None or evidence is None:
        missing = [n for n, v in (("batch_size", batch_size), ("learning_rate", learning_rate),
                                  ("evidence", evidence)) if v is None]
        raise NotYet(f"set {', '.join(missing)} in the cell above (a batch size from {batches}, "
                     "a learning rate from the grid and the accuracy that justifies it).")
    if batch_size not in batches:
        raise NotYet(f"batch size {batch_size!r} is not in the grid; pick one of {batches}.")
    match = [r for r in rates if _close(r, learning_rate)]
    if not match:
        raise NotYet(f"learning rate {learning_rate!r} is not in the grid; pick one of "
                     f"{', '.join(f'{r:g}' for r in rates)} (choose from what was measured).")
    column = table[batch_size]
    chosen, best = match[0], column.idxmax()
    if pd.isna(column[chosen]):
        raise NotYet(f"the run at batch {batch_size}, lr {chosen:g} has no accuracy (it diverged or failed); "
                     f"lr {best:g} reached {column[best]:.4f}.")
    if column[chosen] < column[best] - tolerance:
        raise NotYet(f"at batch {batch_size}, lr {chosen:g} reached {column[chosen]:.4f}, but lr {best:g} reached "
                     f"{column[best]:.4f}: pick the rate the measurements favour.")
    try:
        evidence = float(evidence)
    except (TypeError, ValueError):
        raise NotYet(f"evidence should be a number (the accuracy you read from the grid), not {evidence!r:.40}.")
    if abs(evidence - column[chosen]) > tolerance:
        raise NotYet(f"the grid measured {column[chosen]:.4f} for batch {batch_size} at lr {chosen:g}; your "
                     f"number {evidence:g} is not that (a value from another cell, or a percentage?).")
    runner_up = column.drop(index=chosen).max()
    return ok(f"lr {chosen:g} is the best rate for batch {batch_size} in this grid ({column[chosen]:.4f} final "
              f"validation accuracy, {100 * (column[chosen] - runner_up):+.2f} points on the next best).")


# --- 03: a network of your own, under a budget ------------------------------------------------


def _build(cls, info):
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise NotYet(f"pass the class itself (a subclass of nn.Module), not {cls!r:.60}.")
    return call_student(cls, info, what=f"{cls.__name__}(info)")


@check("a network under a parameter budget")
def check_network(cls, info, budget: int, more_than: int = 117):
    """``cls(info)`` builds, maps (batch, 16) to (batch, 5), uses every layer, and fits the budget."""
    model = _build(cls, info)
    n = count_parameters(model)
    if n == 0:
        raise NotYet(f"{cls.__name__} has no parameters yet: add layers in __init__ (nn.Linear, nn.BatchNorm1d, ...).")
    if n > budget:
        raise NotYet(f"{cls.__name__} has {n:,} parameters, over the budget of {budget:,}: narrow a layer "
                     "(a Linear(a, b) costs a*b + b).")
    if n <= more_than:
        raise NotYet(f"{cls.__name__} has {n:,} parameters, no more than jsc-tiny's {more_than}: the task is a "
                     "larger network than jsc-tiny.")
    model.train()
    x = torch.randn(8, info.num_features)
    out = call_student(model, x, what=f"{cls.__name__}(info)(x)")
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (8, info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise NotYet(f"for a batch of 8 rows of {info.num_features} features forward should return "
                     f"(8, {info.num_classes}) class scores, but it returned {shape}.")
    out.float().sum().backward()
    unused = [name for name, p in model.named_parameters() if p.requires_grad and p.grad is None]
    if unused:
        raise NotYet(f"forward never uses {', '.join(unused[:3])}: those parameters count against the budget "
                     "but get no gradient. Call every layer in forward (or drop it).")
    return ok(f"{cls.__name__} has {n:,} parameters (budget {budget:,}; jsc-tiny {more_than}) and maps "
              f"(8, {info.num_features}) to (8, {info.num_classes}).")


@check("train your network")
def check_trained(cls, data, budget: int, baseline: float | None = None, margin: float = 0.05, **recipe):
    """Train ``cls`` with ``recipe`` (labkit's ``train``) and test its best checkpoint.

    Passes when the test accuracy beats always predicting the most common class by ``margin``;
    the message compares it with ``baseline`` (jsc-tiny with the same recipe) when given.
    """
    from ..training import evaluate, load_model, train
    first = check_network(cls, data.info, budget)
    if not first:
        raise NotYet(f"fix the network first ({first.message})")
    result = train(_build(cls, data.info), data, progress=False, verbose=False,
                   project=recipe.pop("project", "lab-1_my-network"), **recipe)
    model = load_model(_build(cls, data.info), result["best_ckpt"], info=data.info)
    acc = evaluate(model.eval(), data)["acc"]
    majority = float(data.y_test.bincount().max()) / len(data.y_test)
    versus = "" if baseline is None else f", {100 * (acc - baseline):+.2f} points against jsc-tiny ({baseline:.4f})"
    if acc < majority + margin:
        raise NotYet(f"after {result['epochs']} epochs the test accuracy is {acc:.4f}, not clearly above always "
                     f"guessing the most common class ({majority:.4f}): check that forward returns the last "
                     "layer's scores (no softmax or argmax; the loss applies log-softmax itself) and the learning rate.")
    return ok(f"trained for {result['epochs']} epochs: test accuracy {acc:.4f} (best checkpoint){versus}; "
              f"always guessing the most common class scores {majority:.4f}.")
