"""Mixed-precision search (MASE's Lab 3): ``labkit search --config FILE.toml`` / :func:`search`.

The TOML is MASE's ``[search]`` schema::

    [search.search_space]
    name = "graph/quantize/mixed_precision_ptq"
    [search.search_space.setup]
    by = "name"                                   # seeds by node name ("type": by MASE op)
    [search.search_space.seed.default.config]     # every other quantisable node
    name = ["integer"]
    data_in_width = [4, 8]
    data_in_frac_width = ["NA"]                   # "NA": width // 2
    weight_width = [2, 4, 8]
    ...
    [search.strategy]
    name = "optuna"
    [search.strategy.sw_runner.basic_evaluation]
    data_loader = "val_dataloader"
    num_samples = 512                             # rows of that split (all of it when left out)
    [search.strategy.hw_runner.average_bitwidth]
    compare_to = 32
    [search.strategy.setup]
    n_trials = 20
    n_jobs = 1                                    # worker processes evaluating trials
    sampler = "tpe"                               # tpe, nsgaii, random, bruteforce
    sum_scaled_metrics = false                    # false: multi-objective (a Pareto front)
    [search.strategy.metrics]
    accuracy.scale = 1.0
    accuracy.direction = "maximize"
    average_bitwidth.scale = 0.2
    average_bitwidth.direction = "minimize"

How a search runs: the whole config is checked against the traced float graph before any
trial (one line naming the bad key). The float graph is traced once; a trial quantises a
copy with ``quantize_transform_pass`` and evaluates it on rows already in memory. Optuna
drives the search by ask-and-tell in this process; trials are evaluated by
:func:`labkit.executor.map_unordered` (persistent worker processes when ``n_jobs > 1``).
Each finished trial is written at once, in one transaction, to the SQLite study in
``outputs/<project>/search/study.db``, so a killed search resumes where it stopped: finished
trials are never evaluated again (a configuration sampled twice reuses the first result).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import json
import math
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn
import torch.nn.functional as F

from .cache import atomic_write_text, settings_hash
from .checks import boolean, finite_number, integer, positive_float
from .paths import check_name, outputs_dir

SEARCH_SPACES = ("graph/quantize/mixed_precision_ptq",)
STRATEGIES = ("optuna",)
SAMPLERS = ("tpe", "nsgaii", "random", "bruteforce")
DIRECTIONS = ("maximize", "minimize")
DATA_LOADERS = {"train_dataloader": "train", "val_dataloader": "val", "test_dataloader": "test"}
# runner -> (its config keys with defaults, the metrics it produces)
RUNNERS = {
    "sw_runner.basic_evaluation": ({"data_loader": "val_dataloader", "num_samples": None}, ("accuracy", "loss")),
    "hw_runner.average_bitwidth": ({"compare_to": 32}, ("average_bitwidth",)),
    "hw_runner.bitops": ({}, ("bitops", "param_bits")),
}
METRIC_RUNNER = {m: r for r, (_, metrics) in RUNNERS.items() for m in metrics}
NO_QUANT = ("NA", "na", "none", "None")  # a seed `name` choice that leaves the node in float
FORMATS = ("integer",) + NO_QUANT
OPERAND_KEYS = ("data_in", "weight", "bias")
EVAL_CHUNK = 8192  # rows per forward pass: large chunks, no DataLoader


class SearchConfigError(ValueError):
    """The [search] section is invalid; the message names the key and what is allowed."""


# --- the [search] section, checked as data --------------------------------------------------------

def _table(value, key: str) -> dict:
    if not isinstance(value, dict):
        raise SearchConfigError(f"{key} must be a table, got {value!r}")
    return value


def _only(table: dict, key: str, allowed) -> None:
    unknown = [k for k in table if k not in allowed]
    if unknown:
        raise SearchConfigError(f"{key}.{unknown[0]}: unknown key; allowed: {', '.join(allowed)}")


def _choices(config: dict, key: str, where: str) -> list:
    value = config[key]
    if not isinstance(value, list):
        raise SearchConfigError(f"{where}.{key} must be a list of choices, e.g. [{value!r}], got {value!r}")
    if not value:
        raise SearchConfigError(f"{where}.{key} is an empty list; give at least one choice")
    return value


def _check_seed(name: str, seed) -> dict:
    """One ``[search.search_space.seed.<name>]``: ``{"formats": [...], "pairs": {operand: [(w, f)]}}``."""
    where = f"search.search_space.seed.{name}"
    _only(_table(seed, where), where, ("config",))
    if "config" not in seed:
        raise SearchConfigError(f"{where}: needs a [{where}.config] table of choices")
    config = _table(seed["config"], f"{where}.config")
    where += ".config"
    if "name" not in config:
        raise SearchConfigError(f"{where}.name is missing; give the formats to choose from, e.g. [\"integer\"]")
    formats = _choices(config, "name", where)
    for f in formats:
        if f not in FORMATS:
            raise SearchConfigError(f"{where}.name: {f!r} is not a format this search space knows; allowed: "
                                    f"integer, or \"NA\" (leave the node in float)")
    formats = ["integer" if f == "integer" else "NA" for f in dict.fromkeys(formats)]
    keys = [f"{o}_{k}" for o in OPERAND_KEYS for k in ("width", "frac_width")]
    _only(config, where, ["name", *keys])
    pairs = {}
    if "integer" not in formats:
        extra = [k for k in keys if k in config]
        if extra:
            raise SearchConfigError(f"{where}.{extra[0]}: the only format is \"NA\" (no quantisation), "
                                    "so widths have no meaning here; remove them or add \"integer\" to name")
        return {"formats": formats, "pairs": pairs}
    for operand in OPERAND_KEYS:
        wkey, fkey = f"{operand}_width", f"{operand}_frac_width"
        if wkey not in config:
            raise SearchConfigError(f"{where}.{wkey} is missing; give a list of bit widths, e.g. [4, 8]")
        widths = _choices(config, wkey, where)
        for w in widths:
            integer(f"{where}.{wkey} (choice {w!r})", w, 1, 32)
        fracs = _choices(config, fkey, where) if fkey in config else ["NA"]
        for f in fracs:
            if f != "NA":
                integer(f"{where}.{fkey} (choice {f!r})", f, 0, 32)
        for f in fracs:
            if f != "NA" and f > max(widths):
                raise SearchConfigError(
                    f"{where}.{fkey}: choice {f} is larger than every {wkey} choice ({', '.join(map(str, widths))}); "
                    f"a fractional width must be at most the width")
        # "NA": half the width, as MASE's configs mean it
        pairs[operand] = list(dict.fromkeys((w, w // 2 if f == "NA" else f)
                                            for w in widths for f in fracs if f == "NA" or f <= w))
    return {"formats": formats, "pairs": pairs}


def check_search_config(search) -> dict:
    """Check a ``[search]`` table (as parsed from TOML) without a model; returns it normalised.

    Raises :class:`SearchConfigError` (a ValueError) with one line naming the key."""
    try:
        return _check_search(search)
    except SearchConfigError:
        raise
    except ValueError as exc:  # a labkit.checks check: the same one line, as this module's error
        raise SearchConfigError(str(exc)) from None


def _check_search(search) -> dict:
    search = _table(search, "search")
    _only(search, "search", ("search_space", "strategy"))
    for key in ("search_space", "strategy"):
        if key not in search:
            raise SearchConfigError(f"the config has no [search.{key}] table")
    by, seeds = _check_space(search["search_space"])
    strategy = _table(search["strategy"], "search.strategy")
    _only(strategy, "search.strategy", ("name", "eval_mode", "setup", "sw_runner", "hw_runner", "metrics"))
    if strategy.get("name") not in STRATEGIES:
        raise SearchConfigError(f"search.strategy.name must be one of {', '.join(STRATEGIES)}, "
                                f"got {strategy.get('name')!r}")
    if not boolean("search.strategy.eval_mode", strategy.get("eval_mode", True)):
        raise SearchConfigError("search.strategy.eval_mode = false is not supported: post-training quantisation "
                                "is evaluated in eval mode (train mode would update BatchNorm statistics)")
    setup = _check_strategy_setup(_table(strategy.get("setup", {}), "search.strategy.setup"))
    runners = _check_runners(strategy)
    metrics = _check_metrics(_table(strategy.get("metrics", {}), "search.strategy.metrics"), runners)
    return {"by": by, "seeds": seeds, "setup": setup, "runners": runners, "metrics": metrics}


def _check_space(space) -> tuple[str, dict]:
    """``[search.search_space]``: ``(by, {seed name: checked seed})``."""
    space = _table(space, "search.search_space")
    _only(space, "search.search_space", ("name", "setup", "seed"))
    if space.get("name") not in SEARCH_SPACES:
        raise SearchConfigError(f"search.search_space.name must be one of {', '.join(SEARCH_SPACES)}, "
                                f"got {space.get('name')!r}")
    setup = _table(space.get("setup", {}), "search.search_space.setup")
    _only(setup, "search.search_space.setup", ("by", "model_parallel"))
    if setup.get("by") not in ("name", "type"):
        raise SearchConfigError(f"search.search_space.setup.by must be \"name\" or \"type\", got {setup.get('by')!r}")
    seeds = _table(space.get("seed", {}), "search.search_space.seed")
    if not seeds:
        raise SearchConfigError("search.search_space.seed is empty; add [search.search_space.seed.default.config]")
    return setup["by"], {name: _check_seed(name, seed) for name, seed in seeds.items()}


def _check_strategy_setup(st: dict) -> dict:
    """``[search.strategy.setup]`` with its defaults filled in."""
    where = "search.strategy.setup"
    _only(st, where, ("n_trials", "n_jobs", "timeout", "sampler", "sum_scaled_metrics",
                      "direction", "model_parallel", "seed"))
    sampler = st.get("sampler", "tpe")
    if not isinstance(sampler, str) or sampler.lower() not in SAMPLERS:
        raise SearchConfigError(f"{where}.sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    setup = {
        "n_trials": integer(f"{where}.n_trials", st.get("n_trials", 20), 1),
        "n_jobs": integer(f"{where}.n_jobs", st.get("n_jobs", 1), 1, 256),
        "timeout": positive_float(f"{where}.timeout", st["timeout"]) if "timeout" in st else None,
        "sampler": sampler.lower(),
        "sum_scaled_metrics": boolean(f"{where}.sum_scaled_metrics", st.get("sum_scaled_metrics", False)),
        "direction": st.get("direction", "maximize"),
        "seed": integer(f"{where}.seed", st["seed"], 0) if "seed" in st else None,
    }
    if setup["direction"] not in DIRECTIONS:
        raise SearchConfigError(f"{where}.direction must be maximize or minimize, got {setup['direction']!r}")
    return setup


def _check_runners(strategy: dict) -> dict:
    """``[search.strategy.sw_runner.*]`` and ``hw_runner.*``: ``{"sw_runner.x": {key: value}}``."""
    runners = {}
    for kind in ("sw_runner", "hw_runner"):
        table = _table(strategy.get(kind, {}), f"search.strategy.{kind}")
        for name, conf in table.items():
            full = f"{kind}.{name}"
            if full not in RUNNERS:
                known = ", ".join(r for r in RUNNERS if r.startswith(kind))
                raise SearchConfigError(f"search.strategy.{full}: unknown runner; allowed: {known}")
            defaults = RUNNERS[full][0]
            conf = _table(conf, f"search.strategy.{full}")
            _only(conf, f"search.strategy.{full}", tuple(defaults))
            runners[full] = {**defaults, **conf}
    if "sw_runner.basic_evaluation" in runners:
        ev = runners["sw_runner.basic_evaluation"]
        if ev["data_loader"] not in DATA_LOADERS:
            raise SearchConfigError(f"search.strategy.sw_runner.basic_evaluation.data_loader must be one of "
                                    f"{', '.join(DATA_LOADERS)}, got {ev['data_loader']!r}")
        if ev["num_samples"] is not None:
            integer("search.strategy.sw_runner.basic_evaluation.num_samples", ev["num_samples"], 1)
    if "hw_runner.average_bitwidth" in runners:
        integer("search.strategy.hw_runner.average_bitwidth.compare_to",
                runners["hw_runner.average_bitwidth"]["compare_to"], 1, 64)
    return runners


def _check_metrics(metrics_in: dict, runners: dict) -> dict:
    """``[search.strategy.metrics.*]``: each a known metric whose runner the config has."""
    if not metrics_in:
        raise SearchConfigError("search.strategy.metrics is empty; add e.g. accuracy.scale = 1.0 and "
                                "accuracy.direction = \"maximize\"")
    metrics = {}
    for name, m in metrics_in.items():
        key = f"search.strategy.metrics.{name}"
        if name not in METRIC_RUNNER:
            raise SearchConfigError(f"{key}: unknown metric; allowed: {', '.join(METRIC_RUNNER)}")
        if METRIC_RUNNER[name] not in runners:
            raise SearchConfigError(f"{key}: this metric comes from [search.strategy.{METRIC_RUNNER[name]}], "
                                    "which the config does not have; add that table")
        m = _table(m, key)
        _only(m, key, ("scale", "direction"))
        direction = m.get("direction")
        if direction not in DIRECTIONS:
            raise SearchConfigError(f"{key}.direction must be \"maximize\" or \"minimize\", got {direction!r}")
        metrics[name] = {"scale": finite_number(f"{key}.scale", m.get("scale", 1.0)), "direction": direction}
    return metrics


# --- the search space on a traced graph ------------------------------------------------------------

@dataclasses.dataclass
class SearchSpace:
    """Which nodes are searched and the choices of each: optuna parameters
    ``<node>/name`` (when a node may stay float) and ``<node>/<operand>`` ("w8f4": 8 bits, 4 fractional)."""
    by: str
    nodes: dict            # searchable node -> {"op", "formats", "pairs", "tied": [other nodes sharing its layer]}
    unused_seeds: list     # seeds that match nothing under `by` (MASE ignores them too)

    def distributions(self) -> dict:
        from optuna.distributions import CategoricalDistribution
        out = {}
        for node, spec in self.nodes.items():
            if len(spec["formats"]) > 1:
                out[f"{node}/name"] = CategoricalDistribution(spec["formats"])
            for operand, pairs in spec["pairs"].items():
                if len(pairs) > 1:
                    out[f"{node}/{operand}"] = CategoricalDistribution([f"w{w}f{f}" for w, f in pairs])
        return out

    def size(self) -> int:
        return math.prod(len(d.choices) for d in self.distributions().values())

    def to_pass_args(self, params: dict) -> dict:
        """A ``quantize_transform_pass`` config (by name) from sampled parameters."""
        args = {"by": "name", "default": {"config": {"name": None}}}
        for node, spec in self.nodes.items():
            fmt = params.get(f"{node}/name", spec["formats"][0])
            if fmt != "integer":
                continue
            config = {"name": "integer"}
            for operand, pairs in spec["pairs"].items():
                choice = params.get(f"{node}/{operand}")
                w, f = _parse_pair(choice) if choice is not None else pairs[0]
                config[f"{operand}_width"], config[f"{operand}_frac_width"] = w, f
            for name in [node, *spec["tied"]]:
                args[name] = {"config": dict(config)}
        return args


def _parse_pair(choice: str) -> tuple[int, int]:
    w, f = choice[1:].split("f")
    return int(w), int(f)


def build_search_space(graph, checked: dict) -> SearchSpace:
    """The searchable nodes of ``graph`` (a traced MaseGraph with metadata) and their choices.

    A seed key must be ``default``, a node name or a quantisable op (the one `by` does not use is
    ignored, as in MASE); anything else is an error naming it."""
    from .passes.quantize import QUANTIZABLE_OPS, node_mase_op, plan_quantization

    gm = graph.model
    every = {"by": "name", "default": {"config": {"name": "integer", **{
        f"{o}_{k}": 8 if k == "width" else 4 for o in OPERAND_KEYS for k in ("width", "frac_width")}}}}
    plan = plan_quantization(graph, every)  # every node the quantise pass can swap, with its op
    names = {n.name: n for n in gm.graph.nodes}
    by, seeds = checked["by"], checked["seeds"]
    unused = []
    for key in seeds:
        if key == "default":
            continue
        if key not in names and key not in QUANTIZABLE_OPS:
            raise SearchConfigError(
                f"search.search_space.seed.{key}: no node or op of that name (by = \"{by}\"); nodes: "
                f"{', '.join(plan)}; ops: {', '.join(QUANTIZABLE_OPS)}")
        if by == "name" and key in names and key not in plan:
            raise SearchConfigError(f"search.search_space.seed.{key}: node {key!r} "
                                    f"({node_mase_op(names[key], gm)[0]}) cannot be quantised; "
                                    f"quantisable nodes: {', '.join(plan)}")
        if (by == "name") != (key in names):
            unused.append(key)
    default = seeds.get("default", {"formats": ["NA"], "pairs": {}})
    nodes, first_of = {}, {}
    for name, layer in plan.layers.items():
        op = layer.op
        seed = seeds.get(name if by == "name" else op, default)
        operands = _operands(op)
        spec = {"op": op, "formats": seed["formats"],
                "pairs": {o: p for o, p in seed["pairs"].items() if o in operands}, "tied": []}
        node = names[name]
        target = node.target if node.op == "call_module" else None
        if target is not None and target in first_of:  # one layer called at several nodes: one choice
            nodes[first_of[target]]["tied"].append(name)
            continue
        if target is not None:
            first_of[target] = name
        if spec["formats"] == ["NA"]:
            continue
        nodes[name] = spec
    nodes = {k: v for k, v in nodes.items() if v["formats"] != ["NA"]}
    if not nodes:
        raise SearchConfigError("search.search_space.seed: every quantisable node gets name = [\"NA\"], so "
                                f"there is nothing to search; quantisable nodes: {', '.join(plan)}")
    return SearchSpace(by, nodes, unused)


def _operands(op: str) -> tuple:
    from .quantize.modules import QUANTIZED_OPS
    return QUANTIZED_OPS[op].operands


# --- one trial: quantise a copy, run the runners ---------------------------------------------------

class Evaluator:
    """Everything a trial needs, built once per process: the traced float graph and the rows."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, runners: dict):
        from .graph import MaseGraph
        from .passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
        t = time.perf_counter()
        model = model.cpu().eval()
        mg = MaseGraph(model=model)
        mg, _ = init_metadata_analysis_pass(mg, None)
        mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": x[:8]}})
        self.graph, self.x, self.y, self.runners = mg, x, y, runners
        self.trace_seconds = time.perf_counter() - t

    def __call__(self, pass_args: dict) -> dict:
        from .graph import deepcopy_mase_graph
        from .passes.quantize import quantize_transform_pass
        t0 = time.perf_counter()
        # the pass quantises the graph it is given (as MASE's): each trial gets a float copy
        q, _ = quantize_transform_pass(deepcopy_mase_graph(self.graph), pass_args)
        t1 = time.perf_counter()
        out = {}
        if "sw_runner.basic_evaluation" in self.runners:
            out.update(evaluate_rows(q.model, self.x, self.y))
        t2 = time.perf_counter()
        if "hw_runner.average_bitwidth" in self.runners:
            out["average_bitwidth"] = average_bitwidth(q.model, self.runners["hw_runner.average_bitwidth"]["compare_to"])
        if "hw_runner.bitops" in self.runners:
            from .passes.flops import analyse_flops_pass
            from .quantize.compare import model_size_bits
            _, info = analyse_flops_pass(q, {"print": False})
            out["bitops"] = info["totals"]["Forward bitops"]
            out["param_bits"] = float(model_size_bits(q.model))
        t3 = time.perf_counter()
        out.update(quantise_s=t1 - t0, evaluate_s=t2 - t1, hw_s=t3 - t2)
        return out


def evaluate_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict:
    """Accuracy and mean cross-entropy of ``model`` on in-memory rows (chunks of 8192, no autograd)."""
    correct, loss = 0, 0.0
    with torch.inference_mode():
        for i in range(0, len(y), EVAL_CHUNK):
            logits = model(x[i:i + EVAL_CHUNK])
            yb = y[i:i + EVAL_CHUNK]
            loss += float(F.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
    n = max(1, len(y))
    return {"accuracy": correct / n, "loss": loss / n}


def average_bitwidth(model: nn.Module, compare_to: int = 32) -> float:
    """Bits per weight of the linear/conv layers, weighted by their weight counts (MASE's
    measure); a layer left in float counts at ``compare_to`` bits (MASE leaves it out)."""
    from .quantize.modules import QuantizedMixin
    bits = count = 0
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            n = m.weight.numel()
            q = m.quantizers().get("weight") if isinstance(m, QuantizedMixin) and not m.bypass else None
            bits += n * (q.bits if q is not None else compare_to)
            count += n
    return bits / count if count else float(compare_to)


_WORKER: Evaluator | None = None


def _init_worker(model, x, y, runners):
    global _WORKER
    torch.set_num_threads(1)  # tiny ops: one thread per process is fastest
    # private copies: tensors arrive in shared memory, which is slower to compute on
    _WORKER = Evaluator(model, x.clone(), y.clone(), runners)
    from .passes import flops  # noqa: F401  (imported now, not inside the first trial)
    from .quantize import compare  # noqa: F401


def _run_trial(task):
    number, pass_args = task
    return _WORKER(pass_args)


# --- the study ------------------------------------------------------------------------------------

def _sampler(name: str, seed: int | None):
    import warnings

    import optuna

    class GridSampler(optuna.samplers.BruteForceSampler):
        # Its after_trial() calls study.stop() once the grid is covered, which only works inside
        # study.optimize(); ask-and-tell stops by itself after min(n_trials, grid size) trials.
        def after_trial(self, study, trial, state, values):
            pass

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return {"tpe": lambda: optuna.samplers.TPESampler(seed=seed),
                "nsgaii": lambda: optuna.samplers.NSGAIISampler(seed=seed),
                "random": lambda: optuna.samplers.RandomSampler(seed=seed),
                "bruteforce": lambda: GridSampler(seed=seed)}[name]()


def _sqlite_storage(path: Path):
    """An SQLite study store whose commits are cheap (WAL, no fsync per commit: a crash of
    the machine may lose the last trials, a killed process loses nothing)."""
    import optuna
    from sqlalchemy import event

    storage = optuna.storages.RDBStorage(f"sqlite:///{path}", skip_compatibility_check=False)

    @event.listens_for(storage.engine, "connect")
    def _pragmas(conn, _record):
        cur = conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    storage.engine.dispose()  # connections made from here on get the pragmas
    return storage


def _values(metrics: dict, checked: dict) -> list[float]:
    """The objective(s): each metric times its scale; summed (signed by direction) when
    ``sum_scaled_metrics``."""
    names = list(checked["metrics"])
    scaled = [metrics[m] * checked["metrics"][m]["scale"] for m in names]
    if not checked["setup"]["sum_scaled_metrics"]:
        return scaled
    want = checked["setup"]["direction"]
    return [sum(v if checked["metrics"][m]["direction"] == want else -v for m, v in zip(names, scaled))]


def _directions(checked: dict) -> list[str]:
    if checked["setup"]["sum_scaled_metrics"]:
        return [checked["setup"]["direction"]]
    return [m["direction"] for m in checked["metrics"].values()]


@dataclasses.dataclass
class SearchResult:
    """What a search found. ``trials``: one row per finished trial (choices, metrics, times);
    ``pareto``: the non-dominated trials; ``best``: the chosen trial's row; ``best_config``:
    its ``[passes.quantize]`` table; ``files``: what was written under ``directory``."""
    name: str
    trials: pd.DataFrame
    pareto: pd.DataFrame
    best: pd.Series
    best_config: dict
    metrics: dict
    space: SearchSpace
    directory: Path
    files: dict
    stats: dict
    evaluator: "Evaluator | None" = dataclasses.field(default=None, repr=False)

    def _repr_html_(self):
        return self.trials._repr_html_()

    def evaluate(self, pass_args: dict) -> dict:
        """The search's metrics for any quantise config, on the same rows as the trials."""
        return self.evaluator(pass_args)

    def uniform(self, widths=(8, 6, 4, 3, 2)) -> pd.DataFrame:
        """Every searched node at one width for all its operands (fractional width: half, as
        "NA" means in the seeds), evaluated like a trial: the baseline mixed precision must beat."""
        rows = []
        for w in widths:
            params = {}
            for node, spec in self.space.nodes.items():
                if len(spec["formats"]) > 1:
                    params[f"{node}/name"] = "integer"
                for operand in spec["pairs"]:
                    params[f"{node}/{operand}"] = f"w{w}f{w // 2}"
            rows.append({"width": w, **self.evaluate(self.space.to_pass_args(params))})
        return pd.DataFrame(rows)

    def plot_pareto(self, x: str = "bitops", y: str = "accuracy", ax=None, label: str = "trials"):
        """Every trial as a dot, the Pareto front (of the search's objectives) as a line."""
        import matplotlib.pyplot as plt
        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.scatter(self.trials[x], self.trials[y], s=12, alpha=0.4, label=label)
        front = self.pareto.sort_values(x)
        ax.plot(front[x], front[y], "o-", color="C3", label="Pareto front")
        ax.set_xlabel(x)
        ax.set_ylabel(y)
        ax.legend()
        return ax


def _trials_frame(trials, space: SearchSpace) -> pd.DataFrame:
    rows = []
    for t in trials:
        args = space.to_pass_args(t.params)
        row = {"trial": t.number}
        for node in space.nodes:
            config = args.get(node, {}).get("config", {})
            for o in _operands(space.nodes[node]["op"]):
                row[f"{node}.{o}_width"] = config.get(f"{o}_width", 32)
                row[f"{node}.{o}_frac_width"] = config.get(f"{o}_frac_width")
        row.update(t.user_attrs.get("metrics", {}))
        row["evaluated"] = t.user_attrs.get("duplicate_of") is None
        rows.append(row)
    return pd.DataFrame(rows)


def _pareto_mask(values: list[list[float]], directions: list[str]) -> list[bool]:
    sign = [1 if d == "maximize" else -1 for d in directions]
    pts = [[s * v for s, v in zip(sign, vals)] for vals in values]

    def dominates(a, b):
        return all(x >= y for x, y in zip(a, b)) and any(x > y for x, y in zip(a, b))
    return [not any(dominates(q, p) for q in pts) for p in pts]


def search(config, *, data=None, model=None, overrides: dict | None = None, workers: int | None = None,
           progress: bool = True, verbose: bool = True, cluster=None) -> SearchResult:
    """Run (or resume) the search a TOML config (path or dict) describes.

    ``overrides`` replace top-level keys (``dataset``, ``load_name``, ``project``, ``data_size`` ...)
    and ``search.strategy.setup`` keys (``n_trials``, ``n_jobs``, ``sampler``, ``timeout``).
    ``data`` (a JSCData) replaces loading ``dataset``; ``model`` (an nn.Module, already loaded)
    replaces building ``model`` and loading ``load_name``. ``workers`` overrides ``n_jobs``.
    ``cluster``: a Dask scheduler address or ``Client`` to evaluate trials on (default:
    ``$LABKIT_CLUSTER`` when ``workers`` is not given); see :mod:`labkit.executor`.
    """
    config, checked = _search_config(config, overrides, workers)
    setup = checked["setup"]
    from .executor import choose_cluster
    target = choose_cluster(cluster, workers)  # the address checked now, contacted when trials run

    # the model and the rows, then the space on the traced graph: all checked before any trial
    model, model_name, ckpt, data = _search_model(config, model, data, progress, verbose)
    project = check_name(config.get("project") or f"{model_name}_{data.info.name}", "project")
    split, x, y = _evaluation_rows(checked, data)
    local = Evaluator(model, x, y, checked["runners"])  # traces once; checks the graph
    space = build_search_space(local.graph, checked)
    distributions = space.distributions()

    # the study: one per (space, objectives, data, weights), in one SQLite file per project
    directions = _directions(checked)
    from .data.base import tensor_digest
    identity = {"space": {k: d.choices for k, d in distributions.items()}, "metrics": checked["metrics"],
                "sum": setup["sum_scaled_metrics"], "direction": setup["direction"], "runners": checked["runners"],
                "data": data.fingerprint() if hasattr(data, "fingerprint") else data.info.name, "split": split,
                "n": len(y), "weights": tensor_digest(model.state_dict().values()), "model": model_name}
    study_name = f"{project}-{settings_hash(identity)[:12]}"
    out = outputs_dir() / project / "search"
    with _study_lock(out):
        stored, mem, seen = _open_study(out, study_name, directions, setup, config)
        stats = _run(mem, stored, space, distributions, checked, seen, local, model, x, y, progress, verbose,
                     target)
        trials = stored.get_trials(deepcopy=False, states=(_complete(),))
        if not trials:
            raise RuntimeError(f"no trial finished within timeout = {setup['timeout']} s; allow more time")
        result = _results(trials, space, checked, directions, config, project, model_name, ckpt, data, out,
                          study_name, stats)
        result.evaluator = local
    if verbose:
        print(f"[labkit] search {study_name}: {len(result.trials)} trials ({stats['evaluated']} evaluated now, "
              f"{stats['reused']} reused) in {stats['seconds']:.1f} s; Pareto front {len(result.pareto)}; "
              f"best: trial {int(result.best['trial'])} "
              + ", ".join(f"{m} {result.best[m]:.4g}" for m in checked["metrics"]))
        print(f"[labkit] outputs: {out}")
    return result


def _search_config(config, overrides: dict | None, workers) -> tuple[dict, dict]:
    """The config (a TOML path or a dict, never changed) with ``overrides`` applied, and its
    ``[search]`` section checked."""
    from .config import load_config, validate

    if isinstance(config, (str, Path)):
        config = load_config(config)
    elif isinstance(config, dict):
        config = copy.deepcopy(config)
    else:
        raise TypeError(f"search needs a config dict or a TOML path, got {type(config).__name__}")
    overrides = dict(overrides or {})
    setup_over = {k: overrides.pop(k) for k in ("n_trials", "n_jobs", "sampler", "timeout") if k in overrides}
    config.update({k: v for k, v in overrides.items() if v is not None})
    validate({k: v for k, v in config.items() if k != "search"}, source="search config")
    if "search" not in config:
        raise SearchConfigError("the config has no [search] section; see configs/lab3_search_jsc_custom.toml")
    raw = copy.deepcopy(config["search"])
    raw.setdefault("strategy", {}).setdefault("setup", {}).update(
        {k: v for k, v in setup_over.items() if v is not None})
    checked = check_search_config(raw)
    if workers is not None:
        checked["setup"]["n_jobs"] = integer("workers", workers, 1, 256)
    return config, checked


def _search_model(config: dict, model, data, progress: bool, verbose: bool):
    """``(model in eval mode on the CPU, its name, its checkpoint or None, data)``: the given
    ones, or those the config names (an untrained model when it names no checkpoint)."""
    from .data import load_dataset

    if data is None:
        if not config.get("dataset"):
            raise SearchConfigError("the search config needs dataset = \"...\"")
        data = load_dataset(config["dataset"], **({"size": config["data_size"]} if config.get("data_size") else {}),
                            progress=progress)
    model_name = config.get("model") or (type(model).__name__ if model is not None else None)
    if not model_name:
        raise SearchConfigError("the search config needs model = \"...\"")
    ckpt = None
    if model is None:
        from .models import get_model
        from .training import load_model
        from .transform import resolve_checkpoint
        if config.get("load_name"):
            ckpt = resolve_checkpoint(config["load_name"])
            model = load_model(model_name, ckpt, config.get("load_type") or "pl", info=data.info)
        else:
            torch.manual_seed(int(config.get("seed") or 0))
            model = get_model(model_name, data.info)
            if verbose:
                print(f"[labkit] search: no load_name given, searching an UNTRAINED {model_name} "
                      "(pass --load best.ckpt for a trained one)")
    return model.cpu().eval(), model_name, ckpt, data


def _evaluation_rows(checked: dict, data) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The split and the rows every trial is evaluated on (``num_samples`` of them, if set)."""
    ev = checked["runners"].get("sw_runner.basic_evaluation", {"data_loader": "val_dataloader", "num_samples": None})
    split = DATA_LOADERS[ev["data_loader"]]
    x, y = data.split(split)
    n = len(y) if ev["num_samples"] is None else min(ev["num_samples"], len(y))
    return split, x[:n].contiguous(), y[:n].contiguous()


@contextlib.contextmanager
def _study_lock(out: Path):
    """One search at a time on a project's study file (a second one fails at once)."""
    out.mkdir(parents=True, exist_ok=True)
    lock = open(out / "study.lock", "w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise OSError(f"another search is running on {out / 'study.db'}; wait for it to finish or use "
                      "another project") from None
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def _complete():
    import optuna
    return optuna.trial.TrialState.COMPLETE


def _open_study(out: Path, study_name: str, directions: list, setup: dict, config: dict):
    """``(stored study, study in memory, seen)``: the sampler works on a study in memory (fast),
    holding the stored one's finished trials; finished trials are copied to SQLite.
    ``seen``: params key -> (trial number, metrics) of each stored trial."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    stored = optuna.create_study(storage=_sqlite_storage(out / "study.db"), study_name=study_name,
                                 directions=directions, load_if_exists=True)
    done = stored.get_trials(deepcopy=False, states=(_complete(),))
    seed = setup["seed"] if setup["seed"] is not None else int(config.get("seed") or 0)
    mem = optuna.create_study(directions=directions, sampler=_sampler(setup["sampler"], seed + len(done)))
    mem.add_trials(done)
    return stored, mem, {_key(t.params): (t.number, t.user_attrs["metrics"]) for t in done}


def _key(params: dict) -> str:
    return json.dumps(params, sort_keys=True)


class _Trials:
    """The ask/tell bookkeeping of one search run: which trials are asked, reused from an
    earlier identical one, waiting for an evaluation under way, or stored.

    ``seen``: params key -> (stored trial number, metrics) of every finished trial."""

    def __init__(self, mem, stored, distributions, space, checked, seen, target, deadline, bar):
        self.mem, self.stored, self.distributions, self.space = mem, stored, distributions, space
        self.checked, self.seen, self.target, self.deadline, self.bar = checked, seen, target, deadline, bar
        self.asked = len(seen)
        self.n_stored = len(stored.get_trials(deepcopy=False))
        self.evaluated = self.reused = 0
        self.times = []    # each evaluation's metrics (with its timings)
        self.busy = {}     # params key -> trials waiting for the evaluation already under way
        self.pending = {}  # task number -> (trial, params key) being evaluated

    def finish(self, trial, metrics, duplicate_of=None) -> int:
        """Tell the sampler and store the trial; returns its number in the stored study."""
        frozen = copy.copy(self.mem.tell(trial, _values(metrics, self.checked)))
        attrs = {"metrics": metrics}
        if duplicate_of is not None:
            attrs["duplicate_of"] = duplicate_of
        frozen.user_attrs = attrs
        self.stored.add_trial(frozen)  # one transaction: the trial is safe on disk from here on
        self.n_stored += 1
        self.bar.update()
        return self.n_stored - 1

    def tasks(self):
        """``(task number, pass_args)`` of each configuration not evaluated yet, asked until
        n_trials are asked or the time is up."""
        i = 0
        while self.asked < self.target and (self.deadline is None or time.perf_counter() < self.deadline):
            trial = self.mem.ask(self.distributions)
            key = _key(trial.params)
            self.asked += 1
            if key in self.seen:  # sampled before: reuse the result, evaluate nothing
                self.finish(trial, self.seen[key][1], self.seen[key][0])
                self.reused += 1
            elif key in self.busy:  # being evaluated right now: take its result when it comes
                self.busy[key].append(trial)
            else:
                self.busy[key] = []
                self.pending[i] = (trial, key)
                yield i, self.space.to_pass_args(trial.params)
                i += 1

    def record(self, i: int, metrics: dict) -> None:
        """Task ``i`` is evaluated: store it, and every trial that waited for the same configuration."""
        trial, key = self.pending.pop(i)
        number = self.finish(trial, metrics)
        self.evaluated += 1
        self.times.append(metrics)
        self.seen[key] = (number, metrics)
        for waiting in self.busy.pop(key):
            self.finish(waiting, metrics, number)
            self.reused += 1


def _trial_workers(workers: int, cluster, model, verbose: bool) -> int:
    """Worker processes for the trials; 1 when the model cannot be rebuilt in one."""
    from .sweep import _importable, _spawn_works

    if cluster is None and workers > 1 and not (_importable(type(model)) and _spawn_works()):
        if verbose:
            print(f"[labkit] search: {type(model).__name__} cannot be rebuilt in a worker process "
                  "(defined in a notebook or script?); evaluating in this process")
        return 1
    return workers


def _evaluations(tasks, workers: int, cluster, local, model, x, y, runners):
    """``((task number, pass_args), metrics)`` as each evaluation finishes: on a Dask cluster
    (the model and rows sent once per worker), here, or in worker processes."""
    from .executor import map_unordered

    if cluster is not None:
        return map_unordered(_run_trial, tasks, cluster=cluster, initializer=_init_worker,
                             initargs=(model, x, y, runners))
    if workers <= 1:
        return map_unordered(local_trial(local), tasks, workers=0)
    return map_unordered(_run_trial, tasks, workers=workers, initializer=_init_worker,
                         initargs=(model, x, y, runners))


def _run(mem, stored, space, distributions, checked, seen, local, model, x, y, progress, verbose,
         cluster=None) -> dict:
    """Ask, evaluate (in worker processes when n_jobs > 1), tell and store until n_trials are done.

    ``seen``: params key -> (stored trial number, metrics) of every finished trial."""
    from tqdm.auto import tqdm

    setup = checked["setup"]
    target = setup["n_trials"]
    if setup["sampler"] == "bruteforce":
        target = min(target, space.size())  # the grid has no more to give
    start = time.perf_counter()
    deadline = start + setup["timeout"] if setup["timeout"] else None
    workers = _trial_workers(setup["n_jobs"], cluster, model, verbose)
    with tqdm(total=target, initial=len(seen), desc="search", unit="trial", disable=not progress) as bar:
        trials = _Trials(mem, stored, distributions, space, checked, seen, target, deadline, bar)
        for (i, _args), metrics in _evaluations(trials.tasks(), workers, cluster, local, model, x, y,
                                                checked["runners"]):
            trials.record(i, metrics)
    share = {k: sum(t[k] for t in trials.times) for k in ("quantise_s", "evaluate_s", "hw_s")}
    return {"evaluated": trials.evaluated, "reused": trials.reused, "seconds": time.perf_counter() - start,
            "trace_s": local.trace_seconds, "trial_seconds": share, "workers": workers}


def local_trial(evaluator: Evaluator):
    def run(task):
        return evaluator(task[1])
    return run


def _results(trials, space, checked, directions, config, project, model_name, ckpt, data, out, study_name,
             stats) -> SearchResult:
    from .transform import check_passes
    frame = _trials_frame(trials, space)
    metric_names = list(checked["metrics"])
    values = [t.values for t in trials]
    mask = _pareto_mask(values, directions)
    frame["pareto"] = mask
    pareto = frame[frame["pareto"] & frame["evaluated"]].reset_index(drop=True)
    # the best: the trial with the highest direction-signed sum of scaled metrics (the single
    # objective itself when sum_scaled_metrics), taken from the Pareto front
    signed = [sum((1 if checked["metrics"][m]["direction"] == "maximize" else -1)
                  * t.user_attrs["metrics"][m] * checked["metrics"][m]["scale"] for m in metric_names)
              for t in trials]
    best_i = max((i for i in range(len(trials)) if mask[i]), key=lambda i: (signed[i], -trials[i].number))
    best = frame.iloc[best_i]
    best_args = space.to_pass_args(trials[best_i].params)
    check_passes({"quantize": best_args})
    files = {"study": out / "study.db", "trials": out / "trials.csv", "pareto": out / "pareto.csv",
             "best_config": out / "best_config.toml"}
    atomic_write_text(files["trials"], frame.to_csv(index=False))
    atomic_write_text(files["pareto"], pareto.to_csv(index=False))
    top = {"model": model_name, "dataset": data.info.name, "project": f"{project[:59]}_best"}
    if ckpt is not None:
        top.update(load_name=str(ckpt), load_type=config.get("load_type") or "pl")
    if config.get("data_size"):
        top["data_size"] = config["data_size"]
    comment = (f"# best trial {int(best['trial'])} of search {study_name}: "
               + ", ".join(f"{m} = {best[m]:.6g}" for m in metric_names))
    atomic_write_text(files["best_config"], comment + "\n" + to_toml(top, {"passes": {"quantize": best_args}}))
    return SearchResult(study_name, frame, pareto, best, best_args, checked["metrics"], space, out, files, stats)


def compare_with_uniform(trials: pd.DataFrame, uniform: pd.DataFrame, cost: str = "bitops",
                         quality: str = "accuracy") -> pd.DataFrame:
    """For each uniform-width point: the best ``quality`` any trial reached at no more ``cost``,
    and by how much it beats (> 0) or trails the uniform point."""
    rows = []
    for u in uniform.itertuples(index=False):
        u = u._asdict()
        cheaper = trials[trials[cost] <= u[cost]]
        best = cheaper.loc[cheaper[quality].idxmax()] if len(cheaper) else None
        rows.append({"width": u["width"], f"uniform {cost}": u[cost], f"uniform {quality}": u[quality],
                     f"searched {quality}": None if best is None else best[quality],
                     f"searched {cost}": None if best is None else best[cost],
                     "trial": None if best is None else int(best["trial"]),
                     "gain": None if best is None else best[quality] - u[quality]})
    return pd.DataFrame(rows)


# --- a small TOML writer (configs are plain data: strings, numbers, booleans, tables) ----------

def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(f"cannot write {v!r} to TOML")


def to_toml(top: dict, tables: dict) -> str:
    """TOML text: ``top``'s keys, then nested ``tables`` as [a.b.c] headers. A ``None`` value
    (the quantise pass's "leave alone") is written as the string "NA", which it reads the same."""
    lines = [f"{k} = {_toml_value(v)}" for k, v in top.items()]

    def emit(prefix, table):
        scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
        if scalars or not table:
            lines.append(f"\n[{prefix}]")
            lines.extend(f"{k} = {_toml_value('NA' if v is None else v)}" for k, v in scalars.items())
        for k, v in table.items():
            if isinstance(v, dict):
                emit(f"{prefix}.{k}", v)
    for k, v in tables.items():
        emit(k, v)
    return "\n".join(lines) + "\n"


# --- after the search: a few epochs of quantisation-aware training ----------------------------

def finetune(result: SearchResult, data, model: nn.Module, *, epochs: int = 3, learning_rate: float = 1e-4,
             batch_size: int = 256, seed: int = 0, project: str | None = None) -> dict:
    """Quantise ``model`` (the float model searched) with the best config and train it for a few
    epochs through the quantisers (QAT, as notebook 05 does); returns val accuracy before and after."""
    from .graph import MaseGraph
    from .passes.metadata import add_common_metadata_analysis_pass, init_metadata_analysis_pass
    from .passes.quantize import quantize_transform_pass
    from .training import evaluate, train
    mg = MaseGraph(model=copy.deepcopy(model).cpu().eval())
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": {"x": data.x_train[:8]}})
    q, _ = quantize_transform_pass(mg, result.best_config)
    before = evaluate(q.model, data, "val")["acc"]
    q.model.train()  # the searched copy was in eval mode; QAT trains BatchNorm statistics too
    r = train(q.model, data, max_epochs=epochs, batch_size=batch_size, learning_rate=learning_rate, seed=seed,
              project=project or f"{result.directory.parent.name}_qat", progress=False, verbose=False)
    after = evaluate(q.model, data, "val")["acc"]
    return {"val_acc_ptq": before, "val_acc_qat": after, "epochs": epochs, "best_val_acc": r["best_val_acc"],
            "graph": q}
