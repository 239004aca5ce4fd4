"""One way to watch a graph run: torch.fx's ``ShapeProp`` recipe, shared by every pass that
needs the values flowing between layers.

:class:`NodeCapture` is a ``torch.fx.Interpreter`` that runs a GraphModule node by node and
hands each watched node's inputs to ``before`` (*before* the node runs: ``ReLU(inplace=True)``
would overwrite them) and its output to ``after``. Three users share it:

- ``add_common_metadata_analysis_pass`` (shapes, types and values of every node),
- ``profile_activations`` (statistics of each profiled node's first input; it also serves
  ``auto_frac_width_pass``'s calibration run in the quantisation walk-through),
- ``plots.layer_values`` (weights and input activations for the Lab 2 plots).

Every run is in eval mode under ``torch.no_grad()``, through :func:`labkit.runtime.eval_mode`,
which gives each submodule its own training flag back afterwards: a BatchNorm frozen in eval
mode inside a training model stays frozen, and no running statistics are updated.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.fx as fx

from ..runtime import eval_mode

__all__ = ["NodeCapture", "first_tensor"]


class NodeCapture(fx.Interpreter):
    """Run ``gm`` and report each node's inputs and output.

    ``before(node, args, kwargs)`` is called with the node's evaluated inputs just before it
    runs; whatever it returns is handed to ``after(node, state, result)`` once it has run.
    ``nodes`` limits both to those nodes (default: every node). ``on_error(node, args, exc)``
    may turn a failing node into a clearer exception; by default the error propagates as is.
    """

    def __init__(self, gm: fx.GraphModule, *, before: Callable | None = None, after: Callable | None = None,
                 nodes=None, on_error: Callable | None = None):
        super().__init__(gm, garbage_collect_values=True)
        self.before, self.after, self.on_error = before, after, on_error
        self.nodes = None if nodes is None else set(nodes)
        if on_error is not None:
            self.extra_traceback = False  # the handler's own message says which node failed

    def run(self, *args, **kwargs):
        # the one eval-mode helper: each submodule gets its own mode back, not the model's
        with eval_mode(self.module), torch.no_grad():
            return super().run(*args, **kwargs)

    def run_node(self, n: fx.Node):
        if self.nodes is not None and n not in self.nodes:
            return super().run_node(n)
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        state = self.before(n, args, kwargs) if self.before is not None else None
        try:
            result = super().run_node(n)
        except Exception as exc:
            if self.on_error is None:
                raise
            self.on_error(n, args, exc)
            raise  # (a handler that returns leaves the error as it was)
        if self.after is not None:
            self.after(n, state, result)
        return result


def first_tensor(node: fx.Node, args, message: str) -> torch.Tensor:
    """The first tensor among a node's evaluated ``args`` (a layer's ``data_in_0``);
    ValueError ``message`` when the node has none."""
    x = next((a for a in args if isinstance(a, torch.Tensor)), None)
    if x is None:
        raise ValueError(message)
    return x
