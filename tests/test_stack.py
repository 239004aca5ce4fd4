"""The stacked trainer (labkit.stack): K runs as one batched model, each the run it would be alone."""

import copy
import json
from pathlib import Path

import pandas as pd
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import labkit.sweep as sw
from labkit.data import load_dataset
from labkit.models import MODELS, get_model, register_model
from labkit.prefix import compute_seconds
from labkit.schedule import WORKER_START_S, balance, makespan
from labkit.stack import _losses, _Stack, feature_major, stackable, train_stacked
from labkit.training import TrainingDiverged, evaluate, load_model, read_checkpoint, train

from conftest import sweep_entries

ATOL = 1e-5


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=2000, progress=False)


def _alone(model, data, root, k, run, **common):
    kw = {**common, **run}
    return train(model, data, data=data, project=root / f"alone{k}", progress=False, verbose=False, **kw)


def _close_checkpoints(a, b):
    ra, rb = read_checkpoint(a)["raw"], read_checkpoint(b)["raw"]
    assert ra.keys() == rb.keys()
    for key in ("epoch", "global_step", "hyper_parameters", "hparams_name", "lr_schedulers"):
        assert ra[key] == rb[key], key
    assert ra["callbacks"].keys() == rb["callbacks"].keys()
    assert list(ra["state_dict"]) == list(rb["state_dict"])  # same names, same order
    for k in ra["state_dict"]:
        torch.testing.assert_close(ra["state_dict"][k], rb["state_dict"][k], atol=ATOL, rtol=0)
    oa, ob = ra["optimizer_states"][0], rb["optimizer_states"][0]
    assert oa["param_groups"] == ob["param_groups"]
    for i in oa["state"]:
        assert oa["state"][i].keys() == ob["state"][i].keys()
        for k in oa["state"][i]:
            torch.testing.assert_close(oa["state"][i][k], ob["state"][i][k], atol=ATOL, rtol=0)


def _same_run(stacked, alone, root):
    for k in ("epochs", "steps", "stopped_early", "max_epochs", "learning_rate", "seed"):
        assert stacked[k] == alone[k], k
    assert stacked["best_val_acc"] == pytest.approx(alone["best_val_acc"], abs=ATOL)
    hs, ha = stacked["history"], alone["history"]
    assert list(hs.columns) == list(ha.columns) and hs["epoch"].equals(ha["epoch"])
    pd.testing.assert_frame_equal(hs, ha, check_exact=False, atol=ATOL, rtol=0)
    for which in ("best_ckpt", "last_ckpt"):
        _close_checkpoints(stacked[which], alone[which])
    _same_logs(Path(stacked["output_dir"]), Path(alone["output_dir"]))


def _same_logs(a: Path, b: Path):
    """The CSV logs hold the same epoch rows (epoch, step, metrics); both wrote TensorBoard logs."""
    def metrics(out):
        versions = sorted((out / "logs" / "csv").glob("version_*"), key=lambda p: int(p.name.split("_")[1]))
        return pd.read_csv(versions[-1] / "metrics.csv")
    ma, mb = metrics(a), metrics(b)
    cols = ["epoch", "step", "train_acc", "train_loss", "val_acc", "val_loss"]
    assert set(cols) <= set(ma.columns) and set(cols) <= set(mb.columns)
    mb = mb[mb[["train_acc", "val_acc"]].notna().any(axis=1)]  # epoch rows only (not per-step losses)
    pd.testing.assert_frame_equal(ma[cols].reset_index(drop=True), mb[cols].reset_index(drop=True),
                                  check_exact=False, atol=ATOL, rtol=0)
    for out in (a, b):
        assert list((out / "logs" / "tensorboard").glob("version_*/events.out.tfevents.*"))


RUNS = [  # learning rates, a seed (its own data order), weight decay, a shorter run, early stopping
    {"learning_rate": 1e-3},
    {"learning_rate": 1e-2, "seed": 7},
    {"learning_rate": 3e-3, "weight_decay": 1e-2},
    {"learning_rate": 1e-2, "max_epochs": 2},
    {"learning_rate": 1e-1, "early_stopping": 1},
]


def test_each_stacked_run_is_the_run_trained_alone(data, tmp_path):
    common = {"max_epochs": 4, "batch_size": 64}
    stacked = train_stacked("jsc-tiny", data, RUNS, data=data, projects=[tmp_path / f"s{k}" for k in range(5)],
                            **common)
    for k, run in enumerate(RUNS):
        _same_run(stacked[k], _alone("jsc-tiny", data, tmp_path, k, run, **common), tmp_path)
    assert [r["epochs"] for r in stacked][3] == 2


def test_dropout_draws_each_models_own_masks(data, tmp_path):
    # jsc-custom: BatchNorm after Linear and Dropout, two seeds. Weight decay on, because a Linear
    # bias right before a BatchNorm has a true gradient of zero: Adam turns its rounding noise
    # into steps of size lr, so two computations that round differently (a batched matmul vs
    # a single one) drift apart on those biases; weight decay gives them a real gradient.
    runs = [{"seed": 0}, {"seed": 1, "learning_rate": 3e-3}]
    common = {"max_epochs": 2, "batch_size": 128, "weight_decay": 1e-2}
    stacked = train_stacked("jsc-custom", data, runs, data=data, projects=[tmp_path / "s0", tmp_path / "s1"],
                            **common)
    for k, run in enumerate(runs):
        _same_run(stacked[k], _alone("jsc-custom", data, tmp_path, k, run, **common), tmp_path)


def test_models_never_share_state():
    """lr 0: that model stays at its initial weights bit for bit while the others move; and one
    model's gradients do not change when another model's weights do."""
    torch.manual_seed(0)
    nets = [get_model("jsc-toy") for _ in range(3)]
    x, y = torch.randn(32, 16), torch.randint(0, 5, (32,))
    stack = _Stack(nets, [0.0, 1e-2, 1e-3], [0.0, 1e-2, 0.0])
    start = [p.detach().clone() for p in stack.params]
    for _ in range(3):
        logits = stack.forward(feature_major(x, 3), True, None).permute(2, 0, 1)  # [rows, K, classes]
        loss = F.cross_entropy(logits.reshape(96, 5), y.repeat_interleave(3), reduction="none").view(32, 3).mean(0)
        stack.grad_flat.zero_()
        loss.sum().backward()
        stack.adam_step()
    for p, p0 in zip(stack.params, start):
        assert torch.equal(p[0], p0[0])  # never moved
        assert not torch.equal(p[1], p0[1]) or p0[1].numel() == 0
    assert any(not torch.equal(p[2], p0[2]) for p, p0 in zip(stack.params, start))

    def grads_of_model0(other_scale):
        s = _Stack([copy.deepcopy(n) for n in nets], [1e-3] * 3, [0.0] * 3)
        with torch.no_grad():
            for p in s.params:
                p[1:].mul_(other_scale)
        out = s.forward(feature_major(x, 3), True, None).permute(2, 0, 1)
        F.cross_entropy(out.reshape(96, 5), y.repeat_interleave(3), reduction="none").view(32, 3).mean(0).sum().backward()
        return [p.grad[0].clone() for p in s.params]

    for a, b in zip(grads_of_model0(1.0), grads_of_model0(-3.0)):
        assert torch.equal(a, b)


def _steps(stack, manual: bool, batches, gens):
    out = []
    for x, y in batches:
        if manual:
            losses, preds = stack.step(x, y, gens)
        else:  # the autograd step the trainer ran before _Stack.step
            per_row, preds = _losses(stack.forward(x, True, gens), y)
            losses = per_row.mean(1)
            stack.grad_flat.zero_()
            losses.sum().backward()
            stack.adam_step()
        out.append((losses.detach(), preds))
    return out


def _trained(nets, manual: bool, rows: int):
    """Six steps of three stacked models, then the first and last go on alone for three more."""
    g = torch.Generator().manual_seed(3)
    gens = [torch.Generator().manual_seed(10 + k) for k in range(3)]
    batch = lambda K: (torch.randn(K, 16, rows, generator=g), torch.randint(0, 5, (rows, K), generator=g))  # noqa: E731
    stack = _Stack([copy.deepcopy(n) for n in nets], [1e-2, 3e-2, 1e-3], [0.0, 1e-2, 1e-3])
    out = _steps(stack, manual, [batch(3) for _ in range(6)], gens)
    stack = stack.keep([0, 2], [1e-2, 1e-3], [0.0, 1e-3])
    out += _steps(stack, manual, [batch(2) for _ in range(3)], [gens[0], gens[2]])
    return stack, out, [gen.get_state() for gen in gens]


@pytest.mark.parametrize("name", ["jsc-tiny", "jsc-custom", "no-bias", "dropout-1"])
def test_the_hand_written_step_is_the_autograd_step_bit_for_bit(name):
    torch.manual_seed(0)
    make = {"no-bias": lambda: nn.Sequential(nn.Linear(16, 12, bias=False), nn.Dropout(0.5), nn.ReLU(),
                                             nn.BatchNorm1d(12, momentum=0.3, eps=1e-3), nn.Linear(12, 5),
                                             nn.Dropout(0.0)),
            "dropout-1": lambda: nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Dropout(1.0), nn.Linear(8, 5))}
    nets = [make[name]() if name in make else get_model(name) for _ in range(3)]  # three different inits
    (a, out_a, gens_a), (b, out_b, gens_b) = _trained(nets, False, 33), _trained(nets, True, 33)
    for which in ("flat", "grad_flat", "m", "v"):
        assert torch.equal(getattr(a, which), getattr(b, which)), which
    assert a.buffers.keys() == b.buffers.keys() and all(torch.equal(a.buffers[k], b.buffers[k]) for k in a.buffers)
    for (la, pa), (lb, pb) in zip(out_a, out_b):
        assert torch.equal(la, lb) and torch.equal(pa, pb)
    assert all(torch.equal(x, y) for x, y in zip(gens_a, gens_b))  # the same dropout masks drawn
    assert not torch.equal(a.flat, _Stack([nets[0], nets[2]], [0.0, 0.0], [0.0, 0.0]).flat)  # it trained


def test_one_row_with_batchnorm_raises_as_autograd_does():
    stack = _Stack([get_model("jsc-tiny") for _ in range(2)], [1e-3] * 2, [0.0] * 2)
    before = stack.buffers["seq_blocks.0.running_mean"].clone()
    x, y = torch.randn(2, 16, 1), torch.zeros(1, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="more than 1 value per channel") as autograd:
        stack.forward(x, True, None)
    with pytest.raises(ValueError, match="more than 1 value per channel") as manual:
        stack.step(x, y, None)
    assert str(manual.value) == str(autograd.value)
    assert torch.equal(stack.buffers["seq_blocks.0.running_mean"], before) and stack.steps == 0


def test_checkpoints_load_like_any_run(data, tmp_path, capsys):
    from labkit.cli import main
    r = train_stacked("jsc-tiny", data, [{"learning_rate": 1e-3}, {"learning_rate": 1e-2}], data=data,
                      projects=[tmp_path / "a", tmp_path / "b"], max_epochs=1, batch_size=256)
    for res in r:
        net = load_model("jsc-tiny", res["best_ckpt"], info=data.info)
        assert isinstance(net, nn.Module)
    code = main(["test", "jsc-tiny", "jsc-synthetic", "--load", r[1]["best_ckpt"], "--load-type", "pl",
                 "--data-size", "2000"])
    assert code == 0 and "acc" in capsys.readouterr().out


def test_a_diverged_run_ends_as_alone_and_the_others_go_on(data, tmp_path):
    runs = [{"learning_rate": 1e308}, {"learning_rate": 1e-3}]
    common = {"max_epochs": 2, "batch_size": 256}
    stacked = train_stacked("jsc-tiny", data, runs, data=data, projects=[tmp_path / "s0", tmp_path / "s1"], **common)
    with pytest.raises(TrainingDiverged) as alone:
        _alone("jsc-tiny", data, tmp_path, 0, runs[0], **common)
    assert isinstance(stacked[0], TrainingDiverged)
    assert str(stacked[0]).replace(str(tmp_path / "s0"), "X") == str(alone.value).replace(str(tmp_path / "alone0"), "X")
    assert stacked[0].result["epochs"] == alone.value.result["epochs"]
    _same_run(stacked[1], _alone("jsc-tiny", data, tmp_path, 1, runs[1], **common), tmp_path)


class _Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(16, 5), nn.Linear(16, 5)

    def forward(self, x):  # not its layers in order
        return self.a(x) * torch.sigmoid(self.b(x))


def test_what_cannot_be_stacked(data, tmp_path):
    assert stackable(get_model("jsc-s")) and stackable(get_model("jsc-trt"))
    assert not stackable(_Gated())
    assert not stackable(nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 5)))
    with pytest.raises(ValueError, match="cannot be stacked"):
        train_stacked(nn.Sequential(nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 5)), data, [{}], data=data,
                      projects=[tmp_path / "x"])
    with pytest.raises(TypeError, match="batch_size"):
        train_stacked("jsc-tiny", data, [{"batch_size": 64}], data=data)
    with pytest.raises(ValueError, match="learning_rate"):
        train_stacked("jsc-tiny", data, [{"learning_rate": -1.0}], data=data)
    with pytest.raises(ValueError, match="CPU"):
        train_stacked("jsc-tiny", data, [{}], data=data, accelerator="gpu")


# -- in a sweep (labkit.schedule plans it) ---------------------------------------------------------------

@pytest.fixture
def trainings(count_trainings):
    return count_trainings("learning_rate")


def _entries(directory: Path) -> dict:
    return sweep_entries(directory, "learning_rate")


def _same_entries(a: Path, b: Path, exact: bool):
    ea, eb = _entries(a), _entries(b)
    assert sorted(ea) == sorted(eb)
    for lr in ea:
        assert ea[lr]["settings"] == eb[lr]["settings"]  # the same cache key: indistinguishable entries
        ra, rb = ea[lr]["result"], eb[lr]["result"]
        for k in ("epochs", "steps", "stopped_early", "diverged"):
            assert ra[k] == rb[k], k
        for k in ("best_val_acc", "final_val_acc", "final_train_acc", "test_acc"):
            assert ra[k] == (rb[k] if exact else pytest.approx(rb[k], abs=ATOL)), k
        ha, hb = pd.DataFrame(ra["history"]), pd.DataFrame(rb["history"])
        pd.testing.assert_frame_equal(ha, hb, check_exact=exact, atol=None if exact else ATOL, rtol=None if exact else 0)


def test_a_learning_rate_sweep_is_one_stacked_training(data, tmp_path, trainings, capsys):
    lrs = [1e-3, 1e-2, 1e-1]
    kw = dict(max_epochs=2, batch_size=128, workers=1)
    stacked = sw.sweep("jsc-tiny", data, "learning_rate", lrs, cache_dir=tmp_path / "stacked", **kw)
    err = capsys.readouterr().err
    assert trainings == []  # no run trained alone
    assert "3 runs as 1 trainings" in err and "stack" in err and "est." in err  # the plan, before training
    alone = sw.sweep("jsc-tiny", data, "learning_rate", lrs, cache_dir=tmp_path / "alone", stack_runs=False, **kw)
    assert trainings == lrs
    _same_entries(tmp_path / "stacked", tmp_path / "alone", exact=False)
    for row in stacked.table.itertuples():  # the checkpoints are the runs' own, and tested as any
        assert tmp_path / "stacked" in Path(row.best_ckpt).parents
        net = load_model("jsc-tiny", row.best_ckpt, info=data.info)
        assert row.test_acc == evaluate(net, data, "test")["acc"]
    # one training: its time counts once
    assert compute_seconds(stacked) == pytest.approx(stacked.table["wall_time_s"].max())
    assert compute_seconds(alone) == pytest.approx(alone.table["wall_time_s"].sum())
    again = sw.sweep("jsc-tiny", data, "learning_rate", lrs, cache_dir=tmp_path / "stacked", **kw)
    assert again.table["cached"].all() and len(trainings) == 3


def test_a_model_that_cannot_be_stacked_trains_run_by_run_with_the_same_results(data, tmp_path, trainings):
    @register_model("t-stack-tanh")
    class TanhNet(nn.Module):
        def __init__(self, info):
            super().__init__()
            self.seq = nn.Sequential(nn.Linear(info.num_features, 8), nn.Tanh(), nn.Linear(8, info.num_classes))

        def forward(self, x):
            return self.seq(x)

    try:
        kw = dict(max_epochs=1, batch_size=256, workers=1, progress=False)
        sw.sweep("t-stack-tanh", data, "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path / "a", **kw)
        assert trainings == [1e-3, 1e-2]  # each trained alone
        sw.sweep("t-stack-tanh", data, "learning_rate", [1e-3, 1e-2], cache_dir=tmp_path / "b", stack_runs=False, **kw)
        _same_entries(tmp_path / "a", tmp_path / "b", exact=True)
    finally:
        MODELS._entries.pop("t-stack-tanh", None)


def test_stacks_in_worker_processes(data, tmp_path):
    grid = {"batch_size": [256, 512], "learning_rate": [1e-3, 1e-2]}
    kw = dict(max_epochs=1, progress=False)
    sw.grid_sweep("jsc-tiny", data, grid, workers=2, cache_dir=tmp_path / "stacked", **kw)
    sw.grid_sweep("jsc-tiny", data, grid, workers=1, cache_dir=tmp_path / "alone", stack_runs=False, **kw)
    a = {(e["settings"]["batch_size"], e["settings"]["learning_rate"]): e for e in
         (json.loads(p.read_text()) for p in (tmp_path / "stacked").glob("*.json"))}
    b = {(e["settings"]["batch_size"], e["settings"]["learning_rate"]): e for e in
         (json.loads(p.read_text()) for p in (tmp_path / "alone").glob("*.json"))}
    assert sorted(a) == sorted(b) and len(a) == 4
    for k in a:
        assert a[k]["settings"] == b[k]["settings"]
        assert a[k]["result"]["stacked_in"] and "stacked_in" not in b[k]["result"]
        pd.testing.assert_frame_equal(pd.DataFrame(a[k]["result"]["history"]), pd.DataFrame(b[k]["result"]["history"]),
                                      check_exact=False, atol=ATOL, rtol=0)


def test_the_plan_splits_a_stack_when_that_shortens_the_wall_time():
    cost = lambda t: 100.0 + 20.0 * len(t)  # noqa: E731  (a stack of K: ~100 s + 20 s per model)
    assert makespan([5, 4, 3, 3], 2) == 8
    assert balance([[0, 1, 2, 3, 4, 5]], cost, 1) == [[0, 1, 2, 3, 4, 5]]  # one worker: never split
    # 160 s + starting the workers on 2 of them, not 220 s on one
    assert sorted(balance([[0, 1, 2, 3, 4, 5]], cost, 2)) == [[0, 2, 4], [1, 3, 5]]
    assert balance([[0, 1], [2], [3]], cost, 2) == [[0, 1], [2], [3]]  # both workers busy already
    small = lambda t: WORKER_START_S / 10 * len(t)  # noqa: E731  (short: starting workers costs more than it saves)
    assert balance([[0, 1, 2, 3]], small, 2) == [[0, 1, 2, 3]]
    with pytest.raises(TypeError, match="stack_runs"):
        sw.sweep("jsc-tiny", "jsc-synthetic", "learning_rate", [1e-3], stack_runs="yes", progress=False)


class CountingNet(nn.Module):
    """Counts forwards in training mode: the plan's timing probe must never run one."""

    trained = 0

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 5))

    def forward(self, x):
        if self.training:
            type(self).trained += 1
        return self.body(x)


def test_the_plan_never_runs_a_users_forward_to_time_it(data, tmp_path):
    CountingNet.trained = 0
    sw.sweep(CountingNet(), data, "batch_size", [512, 1024], max_epochs=1, workers=1, progress=True, cache_dir=tmp_path)
    n_train = len(data.y_train)
    assert CountingNet.trained == -(-n_train // 512) + -(-n_train // 1024)  # the two runs' steps, nothing more


def test_the_probe_times_a_run_alone_with_the_step_train_uses(data, monkeypatch):
    """k = 1 is timed with the hand-written step (labkit.fused) a run alone trains with; k > 1 and
    a model it cannot run are timed as stacks."""
    import labkit.schedule as schedule
    calls = []
    real = schedule.FusedStep.build
    monkeypatch.setattr(schedule.FusedStep, "build", lambda m, o: calls.append(m) or real(m, o))
    est = schedule.Estimator(data)
    assert est.step_seconds("jsc-tiny", 64, 1) > 0 and len(calls) == 1
    assert est.step_seconds("jsc-tiny", 64, 3) > 0 and len(calls) == 1
    monkeypatch.setattr(schedule.FusedStep, "build", lambda m, o: None)  # (e.g. a model it cannot run)
    assert est.step_seconds("jsc-custom", 64, 1) > 0


def test_the_epoch_bar_counts_every_stacked_models_epochs(data, tmp_path, counters):
    made = counters
    # early stopping on: a run that stops early drops its remaining epochs from the total
    res = sw.grid_sweep("jsc-tiny", data, {"learning_rate": [1e-3, 1e-2, 1e-1]}, max_epochs=3, batch_size=512,
                        early_stopping=1, workers=1, progress=False, cache_dir=tmp_path)
    assert [(c.total, c.done) for c in made] == [(int(res.table["epochs"].sum()),) * 2]
