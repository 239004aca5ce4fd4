"""Statistical profiling: what do the weights and activations of chosen layers look like?

    pass_args = {
        "by": "type",                                # match nodes by mase_op ("type") or node name
        "target_weight_nodes": ["linear"],           # profile these layers' weights ...
        "target_activation_nodes": ["relu"],         # ... and these layers' inputs (data_in_0)
        "weight_statistics": {"variance_precise": {"device": "cpu", "dims": "all"}},
        "activation_statistics": {"range_quantile": {"device": "cpu", "dims": "all", "quantile": 0.97}},
        "input_generator": data_module,              # a LightningDataModule or any iterable of batches
        "num_samples": 32,                           # how many samples (rows) to run, in whole batches
    }
    mg, info = profile_statistics_analysis_pass(mg, pass_args)

As in MASE, ``num_samples`` counts samples: batches run until that many rows have been
seen (batch size 8 and num_samples 32: 4 batches), and a target weight node has every
parameter profiled (``weight`` and ``bias``). Results land where MASE puts them, as plain
floats (or nested lists when dims are kept):
``meta["mase"].parameters["software"]["args"]["weight"]["stat"]["variance_precise"]``,
``...["args"]["bias"]["stat"]...`` and ``...["args"]["data_in_0"]["stat"]["range_quantile"]``;
``info["table"]`` has them all.

Statistics (MASE's names and options): ``record`` (every value seen), ``variance_precise``
(unbiased, like ``torch.var``), ``variance_online`` (population variance in O(1) memory),
``range_min_max``, ``range_quantile`` (default quantile 0.975), ``range_n_sigma`` (mean
+- num_sigma standard deviations) and ``abs_mean``. Each reduces over every dimension
except the ``dims`` it keeps: ``"all"`` gives one number per tensor, ``[1]`` one per
channel (feature) of a ``[batch, channel]`` input.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import torch
import torch.fx as fx
from tqdm.auto import tqdm

from ..checks import boolean, one_of, positive_float, positive_int
from ..graph import get_node_actual_target
from ..runtime import available_devices
from ..registry import Registry
from .interpreter import NodeCapture, first_tensor
from .metadata import _positional_inputs
from .utils import check_pass_args, get_mase_op, graph_module, node_common

__all__ = [
    "profile_statistics_analysis_pass", "profile_activations", "STATISTICS", "Statistic", "VariancePrecise",
    "VarianceOnline", "RangeMinMax", "RangeQuantile", "RangeNSigma", "AbsMean", "Record", "make_statistic",
]

STATISTICS = Registry("statistic")


def _tolist(t: torch.Tensor):
    """A 0-d tensor as a float, anything else as (nested) lists of floats."""
    return float(t) if t.dim() == 0 else t.tolist()


_DEVICE_TYPES = ("cpu", "cuda", "mps")


def _device(device, stat_name: str) -> torch.device:
    """``device`` as a torch.device this machine has, or a ValueError naming the statistic."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"statistic {stat_name!r}: device must be one of {list(_DEVICE_TYPES)} "
                         f"(optionally with an index, 'cuda:0'), got {device!r}") from None
    if dev.type not in _DEVICE_TYPES:
        raise ValueError(f"statistic {stat_name!r}: device must be one of {list(_DEVICE_TYPES)}, got {device!r}")
    if dev.type not in available_devices():
        raise ValueError(f"statistic {stat_name!r}: device {device!r} is not available on this machine; use 'cpu'")
    return dev


class Statistic:
    """Accumulates one statistic over a stream of tensors (batches).

    ``update(x)`` folds in one tensor, ``compute()`` returns a dict of plain floats/lists.
    Internally each tensor is viewed as ``[K, N]``: K positions of the kept ``dims``
    (K = 1 for ``"all"``) by N values reduced over. Sums run in float64.
    """

    name = "statistic"
    options: dict = {}

    def __init__(self, dims="all", device="cpu", **options):
        unknown = sorted(set(options) - set(self.options))
        if unknown:
            raise ValueError(f"statistic {self.name!r}: unknown options {unknown}; "
                             f"allowed: ['device', 'dims'{''.join(', ' + repr(o) for o in self.options)}]")
        if dims != "all" and not (isinstance(dims, (list, tuple)) and all(isinstance(d, int) for d in dims)):
            raise ValueError(f"statistic {self.name!r}: dims must be 'all' or a list of ints to keep, got {dims!r}")
        self.dims = dims
        self.device = _device(device, self.name)
        for key, default in self.options.items():
            setattr(self, key, options.get(key, default))
        self.kept_shape = None

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(self.device, torch.float64)
        if self.dims == "all":
            kept = []
        else:
            kept = []
            for d in self.dims:
                if not -x.dim() <= d < x.dim():
                    raise ValueError(f"statistic {self.name!r}: dim {d} is out of range for a "
                                     f"{x.dim()}-d tensor of shape {list(x.shape)}")
                kept.append(d % x.dim())
            kept = sorted(set(kept))
        shape = [x.shape[d] for d in kept]
        if self.kept_shape is None:
            self.kept_shape = shape
        elif shape != self.kept_shape:
            raise ValueError(f"statistic {self.name!r}: kept dims {self.dims} have sizes {shape} here but "
                             f"{self.kept_shape} before (keep dims whose size is fixed, not the batch dim)")
        rest = [d for d in range(x.dim()) if d not in kept]
        return x.permute(*kept, *rest).reshape(math.prod(shape), -1)

    def _out(self, t: torch.Tensor):
        return _tolist(t.reshape(self.kept_shape) if self.kept_shape else t.reshape(()))

    def update(self, x: torch.Tensor) -> None:
        raise NotImplementedError

    def compute(self) -> dict:
        raise NotImplementedError

    def _check_seen(self):
        if self.kept_shape is None:
            raise ValueError(f"statistic {self.name!r} has seen no data")


@STATISTICS.register("record")
class Record(Statistic):
    """Every value seen, kept (MASE's ``record``): ``data`` (float32, as nested lists), ``count``
    (samples: the rows of each activation batch; a weight is one sample) and ``size_in_bytes``.

    Samples are concatenated along dim 0; ``add_new_dim_before_concat=True`` first gives
    each sample a new leading dim of size 1, as MASE does.
    """

    name = "record"
    options = {"add_new_dim_before_concat": False}

    def __init__(self, **kw):
        super().__init__(**kw)
        boolean("record: add_new_dim_before_concat", self.add_new_dim_before_concat)
        self.chunks, self.count = [], 0

    def update(self, x, samples: int | None = None):
        """``samples``: x is a batch of that many samples along dim 0 (None: x is one sample)."""
        x = x.detach().to(self.device, torch.float32).clone()
        if self.add_new_dim_before_concat:
            x = x.unsqueeze(1) if samples is not None else x.unsqueeze(0)
        self.chunks.append(x)
        self.count += 1 if samples is None else samples
        self.kept_shape = list(x.shape[1:])

    def compute(self):
        self._check_seen()
        data = torch.cat(self.chunks, dim=0)
        return {"data": data.tolist(), "count": self.count, "size_in_bytes": float(data.element_size() * data.nelement())}


@STATISTICS.register("variance_precise")
class VariancePrecise(Statistic):
    """Mean and variance of every value seen, computed in one go at the end.

    The variance is the unbiased estimator (divides by N - 1), as ``torch.var`` and MASE's
    ``variance_precise``; it is NaN for a single value.
    """

    name = "variance_precise"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.chunks = []

    def update(self, x):
        self.chunks.append(self._rows(x))

    def compute(self):
        self._check_seen()
        allx = torch.cat(self.chunks, dim=1)
        n = allx.shape[1]
        mean = allx.mean(1)
        var = ((allx - mean[:, None]) ** 2).sum(1) / (n - 1) if n > 1 else torch.full_like(mean, math.nan)
        return {"mean": self._out(mean), "variance": self._out(var), "count": n}


@STATISTICS.register("variance_online")
class VarianceOnline(Statistic):
    """Mean and population variance (M2 / N) in O(1) memory: Welford's update, batch by batch.

    Each batch contributes its own count n_b, mean m_b and sum of squared deviations M2_b;
    Chan et al.'s rule merges them: d = m_b - m, m += d n_b / n, M2 += M2_b + d^2 n n_b / (n + n_b).
    The result is exact (the same as ``variance_precise`` times (N - 1) / N). MASE's version
    adds the batch's *unbiased* variance times n_b as M2_b but divides by N at the end, so
    its answer depends on how the data was split into batches; ours does not.
    """

    name = "variance_online"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.count, self.mean, self.m2 = 0, None, None

    def update(self, x):
        rows = self._rows(x)
        n_b = rows.shape[1]
        if n_b == 0:
            return
        mean_b = rows.mean(1)
        m2_b = ((rows - mean_b[:, None]) ** 2).sum(1)
        if self.count == 0:
            self.count, self.mean, self.m2 = n_b, mean_b, m2_b
            return
        n = self.count + n_b
        delta = mean_b - self.mean
        self.mean = self.mean + delta * n_b / n
        self.m2 = self.m2 + m2_b + delta ** 2 * self.count * n_b / n
        self.count = n

    def compute(self):
        self._check_seen()
        return {"mean": self._out(self.mean), "variance": self._out(self.m2 / self.count), "count": self.count}


@STATISTICS.register("range_min_max")
class RangeMinMax(Statistic):
    """Smallest and largest value seen (of |x| with ``abs=True``)."""

    name = "range_min_max"
    options = {"abs": False}

    def __init__(self, **kw):
        super().__init__(**kw)
        self.min, self.max = None, None

    def update(self, x):
        rows = self._rows(x.abs() if self.abs else x)
        lo, hi = rows.min(1).values, rows.max(1).values
        self.min = lo if self.min is None else torch.minimum(self.min, lo)
        self.max = hi if self.max is None else torch.maximum(self.max, hi)

    def compute(self):
        self._check_seen()
        return {"min": self._out(self.min), "max": self._out(self.max), "range": self._out(self.max - self.min)}


@STATISTICS.register("range_n_sigma")
class RangeNSigma(Statistic):
    """A range from the spread, assuming roughly normal data: mean +- ``num_sigma`` standard
    deviations (MASE's ``range_n_sigma``). ``var_mode``: "online" (population variance,
    O(1) memory, the default as in MASE) or "precise" (unbiased); ``abs``: of |x|."""

    name = "range_n_sigma"
    options = {"abs": False, "var_mode": "online", "num_sigma": 3}

    def __init__(self, dims="all", device="cpu", **options):
        super().__init__(dims=dims, device=device, **options)
        if self.var_mode not in ("online", "precise"):
            raise ValueError(f"range_n_sigma: var_mode must be 'online' or 'precise', got {self.var_mode!r}")
        positive_float("range_n_sigma: num_sigma", self.num_sigma)
        cls = VarianceOnline if self.var_mode == "online" else VariancePrecise
        self.variance = cls(dims=dims, device=device)

    def update(self, x):
        self.variance.update(x.abs() if self.abs else x)
        self.kept_shape = self.variance.kept_shape

    def compute(self):
        self._check_seen()
        v = self.variance.compute()
        mean, sigma = torch.tensor(v["mean"], dtype=torch.float64), torch.tensor(v["variance"], dtype=torch.float64).sqrt()
        lo, hi = mean - self.num_sigma * sigma, mean + self.num_sigma * sigma
        return {"min": _tolist(lo), "max": _tolist(hi), "range": _tolist(hi - lo), "count": v["count"]}


@STATISTICS.register("range_quantile")
class RangeQuantile(Statistic):
    """A range that ignores outliers: ``max`` = the q-quantile, ``min`` = the (1 - q)-quantile.

    Exact (linear interpolation, like ``np.quantile``) over every value seen. The default
    quantile is MASE's, 0.975.
    """

    name = "range_quantile"
    options = {"quantile": 0.975, "abs": False}

    def __init__(self, **kw):
        super().__init__(**kw)
        if not isinstance(self.quantile, (int, float)) or not 0.5 <= self.quantile <= 1:
            raise ValueError(f"range_quantile: quantile must be a number in [0.5, 1], got {self.quantile!r}")
        self.chunks = []

    def update(self, x):
        self.chunks.append(self._rows(x.abs() if self.abs else x).cpu())

    def compute(self):
        self._check_seen()
        allx = torch.cat(self.chunks, dim=1).numpy()
        hi = torch.from_numpy(np.quantile(allx, self.quantile, axis=1))
        lo = torch.from_numpy(np.quantile(allx, 1 - self.quantile, axis=1))
        return {"min": self._out(lo), "max": self._out(hi), "range": self._out(hi - lo)}


@STATISTICS.register("abs_mean")
class AbsMean(Statistic):
    """Mean magnitude, mean(|x|): a quick sense of scale."""

    name = "abs_mean"

    def __init__(self, **kw):
        super().__init__(**kw)
        self.total, self.count = None, 0

    def update(self, x):
        rows = self._rows(x).abs()
        s = rows.sum(1)
        self.total = s if self.total is None else self.total + s
        self.count += rows.shape[1]

    def compute(self):
        self._check_seen()
        return {"abs_mean": self._out(self.total / self.count), "count": self.count}


def make_statistic(name: str, config: dict | None = None) -> Statistic:
    """Build statistic ``name`` from its config dict (``{"device": ..., "dims": ..., ...}``)."""
    if config is None:
        config = {}
    if not isinstance(config, dict):
        raise TypeError(f"config of statistic {name!r} must be a dict, got {type(config).__name__}")
    return STATISTICS.get(name)(**config)


# --- the pass --------------------------------------------------------------------------------

_DEFAULTS = {
    "by": "type", "target_weight_nodes": [], "target_activation_nodes": [],
    "weight_statistics": {}, "activation_statistics": {},
    "input_generator": None, "num_samples": 1, "split": "train", "progress": True,
}


def _match(graph_nodes, targets, by, what):
    """Nodes whose mase_op (by="type") or name (by="name") is in ``targets`` (None: no nodes)."""
    if targets is None:
        return []
    if isinstance(targets, str):
        targets = [targets]
    if not isinstance(targets, (list, tuple, set)) or not all(isinstance(t, str) for t in targets):
        raise TypeError(f"profile_statistics_analysis_pass: {what} must be a list of "
                        f"{'mase ops' if by == 'type' else 'node names'}, got {targets!r}")
    key = (lambda n: get_mase_op(n, pass_name="profile_statistics_analysis_pass")) if by == "type" \
        else (lambda n: n.name)
    found = {key(n) for n in graph_nodes}
    missing = [t for t in targets if t not in found]
    if missing:
        raise ValueError(f"profile_statistics_analysis_pass: {what} {missing} match no node by {by}; "
                         f"this graph has: {sorted(found)}")
    return [n for n in graph_nodes if key(n) in targets]


def _stat_slot(node: fx.Node, arg: str) -> dict:
    sw = node.meta["mase"].parameters["software"]
    return sw.setdefault("args", {}).setdefault(arg, {}).setdefault("stat", {})


def _batches(source, split: str):
    """Iterate the batches of a LightningDataModule (its ``split`` loader) or of any iterable."""
    if hasattr(source, "train_dataloader") and hasattr(source, "val_dataloader"):
        loaders = {"train": "train_dataloader", "val": "val_dataloader", "test": "test_dataloader"}
        if split not in loaders:
            raise ValueError(f"split must be one of {list(loaders)}, got {split!r}")
        make = getattr(source, loaders[split])
        try:
            source = make()
        except Exception:  # a DataModule that loads its data in setup()
            source.setup("fit" if split != "test" else "test")
            source = make()
    if isinstance(source, torch.Tensor):
        raise TypeError("input_generator must yield batches; wrap a single tensor as [tensor]")
    try:
        return iter(source)
    except TypeError:
        raise TypeError("input_generator must be a LightningDataModule or an iterable of batches, "
                        f"got {type(source).__name__}") from None


def _batch_inputs(batch, names):
    """The model inputs in one batch: a tensor, ``(x, y)``, or ``{"x": x, ...}``."""
    if isinstance(batch, dict):
        picked = {k: v for k, v in batch.items() if k in names}
        if not picked:
            raise ValueError(f"batch dict has keys {sorted(batch)}, none of the model inputs {names}")
        return picked
    if isinstance(batch, (list, tuple)):
        return batch[0] if len(names) == 1 else tuple(batch[:len(names)])
    if isinstance(batch, torch.Tensor):
        return batch
    raise TypeError(f"cannot read model inputs from a batch of type {type(batch).__name__}")


def _feed(stats_by_node: dict):
    """A NodeCapture ``before`` hook: feed each profiled node's first input to its statistics."""

    def before(n, args, kwargs):
        x = first_tensor(n, args, f"node {n.name!r} has no tensor input to profile")
        for s in stats_by_node[n].values():  # before the node runs: ReLU(inplace=True) rewrites its input
            if isinstance(s, Record):
                s.update(x, samples=x.shape[0] if x.dim() else None)
            else:
                s.update(x)

    return before


def _num_rows(inputs) -> int:
    """The samples in one batch of model inputs: the first dim of its first tensor."""
    first = next(iter(inputs.values())) if isinstance(inputs, dict) else \
        inputs[0] if isinstance(inputs, (list, tuple)) else inputs
    return int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1


def profile_activations(gm: fx.GraphModule, nodes, statistics: dict, batches, num_samples: int = 1,
                        progress: bool = False) -> tuple[dict, int]:
    """Run whole batches through ``gm`` (eval mode, no grad) until ``num_samples`` samples
    (rows) have been seen, and compute ``statistics`` (``{stat name: config}``) of each
    node's first tensor input. As MASE: batch size 8 and num_samples 32 run 4 batches.

    ``batches`` is an iterator of batches (a tensor, ``(x, y)`` or ``{"x": x}``). Returns
    ``({node name: {stat name: values}}, batches run)``; nothing is written to the graph.
    :func:`profile_statistics_analysis_pass` stores what this returns, and
    ``auto_frac_width_pass`` uses it for activation ranges it was not given.
    """

    stats_by_node = {n: {name: make_statistic(name, cfg) for name, cfg in statistics.items()} for n in nodes}
    names = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    profiler = NodeCapture(gm, before=_feed(stats_by_node), nodes=[n for n, stats in stats_by_node.items() if stats])
    num_batches = seen = 0
    with tqdm(total=num_samples, desc="profiling", disable=not progress) as bar:
        for batch in batches:
            inputs = _batch_inputs(batch, names)
            profiler.run(*_positional_inputs(gm, inputs))
            rows = _num_rows(inputs)
            num_batches, seen = num_batches + 1, seen + rows
            bar.update(rows)
            if seen >= num_samples:
                break
    if num_batches == 0:
        return {}, 0
    return {n.name: {name: stat.compute() for name, stat in stats.items()}
            for n, stats in stats_by_node.items()}, num_batches


def profile_statistics_analysis_pass(graph, pass_args=None):
    """Profile weights (once) and activations (over ``num_samples`` samples) of the target nodes.

    Weights: every parameter (``weight``, ``bias``, ...) of each targeted call_module node,
    as MASE does. Activations: each targeted node's first tensor input (``data_in_0``),
    gathered while whole batches from ``input_generator`` run through the graph until
    ``num_samples`` samples (rows) have been seen. The graph runs in eval mode with no grad
    and every layer's training flag is restored afterwards: unlike MASE's pass, profiling a
    train-mode model does not update its BatchNorm running statistics. For a DataModule the
    ``"split"`` loader is used ("train" by default). info: ``table`` (one row per node,
    tensor, statistic and value), ``stats`` (the same, nested) and ``num_batches``.
    """
    args = check_pass_args(pass_args, _DEFAULTS, "profile_statistics_analysis_pass")
    one_of("profile_statistics_analysis_pass: by", args["by"], ("type", "name"))
    gm = graph_module(graph, "profile_statistics_analysis_pass")
    nodes = list(gm.graph.nodes)
    for n in nodes:
        node_common(n, "profile_statistics_analysis_pass")
    for key in ("weight_statistics", "activation_statistics"):
        if not isinstance(args[key], dict):
            raise TypeError(f"{key} must be a dict {{stat name: config}}, got {type(args[key]).__name__}")

    results = {}  # node name -> tensor name -> stat name -> values
    _profile_weights(_match(nodes, args["target_weight_nodes"], args["by"], "target_weight_nodes"), args, results)
    act_nodes = _match(nodes, args["target_activation_nodes"], args["by"], "target_activation_nodes")
    num_batches = _profile_inputs(gm, act_nodes, args, results) if act_nodes else 0
    ops = {n.name: get_mase_op(n) for n in nodes}
    rows = [{"node": node, "mase_op": ops[node], "tensor": tensor, "statistic": stat, "key": key, "value": value}
            for node, tensors in results.items() for tensor, stats in tensors.items()
            for stat, values in stats.items() for key, value in values.items()]
    table = pd.DataFrame(rows, columns=["node", "mase_op", "tensor", "statistic", "key", "value"])
    return graph, {"table": table, "stats": results, "num_batches": num_batches}


def _store(node: fx.Node, arg: str, name: str, value, results: dict) -> None:
    """One statistic of one tensor: on the node's software metadata and in the pass's results."""
    _stat_slot(node, arg)[name] = value
    results.setdefault(node.name, {}).setdefault(arg, {})[name] = value


def _profile_weights(weight_nodes: list, args: dict, results: dict) -> None:
    """Weights: straight from the modules, no data needed."""
    if weight_nodes and not args["weight_statistics"]:
        raise ValueError("profile_statistics_analysis_pass: target_weight_nodes given but no weight_statistics")
    no_weight = [n.name for n in weight_nodes if n.op != "call_module"
                 or not any(True for _ in get_node_actual_target(n).parameters())]
    if no_weight:
        raise ValueError(f"profile_statistics_analysis_pass: target_weight_nodes matched nodes without a "
                         f"weight: {no_weight} (they have no parameters)")
    for n in weight_nodes:
        for pname, param in get_node_actual_target(n).named_parameters():  # weight and bias, as MASE
            arg = pname.replace(".", "_")  # the name add_common_metadata_analysis_pass gives it
            for name, cfg in args["weight_statistics"].items():
                stat = make_statistic(name, cfg)
                stat.update(param)
                _store(n, arg, name, stat.compute(), results)


def _profile_inputs(gm: fx.GraphModule, act_nodes: list, args: dict, results: dict) -> int:
    """Activations: run batches through the graph; returns the number of batches run."""
    if not args["activation_statistics"]:
        raise ValueError("profile_statistics_analysis_pass: target_activation_nodes given but no "
                         "activation_statistics")
    if args["input_generator"] is None:
        raise ValueError("profile_statistics_analysis_pass: activation profiling needs an "
                         "input_generator (a LightningDataModule or an iterable of batches)")
    num_samples = positive_int("num_samples", args["num_samples"])  # samples, run in whole batches
    for name, cfg in args["activation_statistics"].items():
        make_statistic(name, cfg)  # a bad config fails here, before any batch runs
    stats, num_batches = profile_activations(
        gm, act_nodes, args["activation_statistics"], _batches(args["input_generator"], args["split"]),
        num_samples, progress=args["progress"])
    if num_batches == 0:
        raise ValueError("profile_statistics_analysis_pass: input_generator yielded no batches")
    for n in act_nodes:
        for name, value in stats[n.name].items():
            _store(n, "data_in_0", name, value, results)
    return num_batches
