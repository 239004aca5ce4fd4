"""The trainer: real Lightning runs with checkpoints and logs, same semantics as a plain loop."""

import copy
from pathlib import Path

import pandas as pd
import pytorch_lightning as pl
import pytest
import torch
import torch.nn.functional as F

from labkit.data import epoch_permutation
from labkit.models import get_model
from labkit.training import LitClassifier, checkpoint_or_train, evaluate, load_model, read_checkpoint, train
from labkit.training import test as run_test
from labkit import training


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_train_writes_checkpoints_logs_and_history(small_data):
    r = train("jsc-tiny", small_data, max_epochs=2, batch_size=256, learning_rate=1e-3,
              project="t-basic", progress=False, verbose=False)
    hist = r["history"]
    assert isinstance(hist, pd.DataFrame) and list(hist["epoch"]) == [1, 2]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr"} <= set(hist.columns)
    assert Path(r["best_ckpt"]).name == "best.ckpt" and Path(r["best_ckpt"]).is_file()
    assert Path(r["last_ckpt"]).name == "last.ckpt" and Path(r["last_ckpt"]).is_file()
    assert r["best_val_acc"] == pytest.approx(hist["val_acc"].max())
    n = small_data.sizes()["train"]
    assert r["steps"] == 2 * -(-n // 256)  # every mini-batch is one optimiser step
    logs = Path(r["output_dir"]) / "logs"
    assert list(logs.glob("csv/version_*/metrics.csv")), "CSV log missing"
    assert list(logs.glob("tensorboard/version_*/events.*")), "TensorBoard log missing"
    # learning happened: clearly above the 20% of guessing among 5 balanced classes
    assert r["best_val_acc"] > 0.35


def test_best_checkpoint_holds_the_best_epoch(small_data):
    r = train("jsc-tiny", small_data, max_epochs=3, batch_size=512, learning_rate=3e-3,
              project="t-best", progress=False, verbose=False)
    model = load_model("jsc-tiny", r["best_ckpt"])
    acc = evaluate(model, small_data, split="val")["acc"]
    assert acc == pytest.approx(r["best_val_acc"], abs=1e-6)


def test_last_checkpoint_holds_the_final_epoch_when_it_is_not_the_best(small_data):
    # A rate this large makes validation accuracy go up and down, so the best epoch is not the
    # last; Lightning 2.6's save_last=True would then leave the best epoch in last.ckpt.
    r = train("jsc-tiny", small_data, max_epochs=8, batch_size=256, learning_rate=0.05,
              project="t-last", progress=False, verbose=False)
    val = list(r["history"]["val_acc"])
    best_epoch = val.index(max(val))  # Lightning's epoch index (0-based); the first maximum is kept
    assert best_epoch != len(val) - 1, "the run must end on an epoch that is not its best"
    epoch = lambda path: torch.load(path, map_location="cpu", weights_only=True)["epoch"]  # noqa: E731
    assert epoch(r["last_ckpt"]) == len(val) - 1 and epoch(r["best_ckpt"]) == best_epoch
    final = evaluate(load_model("jsc-tiny", r["last_ckpt"]), small_data, split="val")["acc"]
    assert final == pytest.approx(val[-1], abs=1e-6)


def test_chunked_steps_equal_a_plain_pytorch_loop(small_data):
    """Same batches, same steps, same updates as the textbook loop (up to float rounding)."""
    torch.manual_seed(0)
    init = get_model("jsc-tiny", small_data.info)
    x, y = small_data.split("train")
    ref = copy.deepcopy(init)
    opt = torch.optim.Adam(ref.parameters(), lr=1e-3, fused=True)
    for epoch in range(2):
        perm = epoch_permutation(len(y), 7, epoch)
        xs, ys = x[perm], y[perm]
        for i in range(0, len(y), 128):
            loss = F.cross_entropy(ref(xs[i:i + 128]), ys[i:i + 128])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    ours = copy.deepcopy(init)
    train(ours, small_data, max_epochs=2, batch_size=128, learning_rate=1e-3, seed=7,
          project="t-equiv", progress=False, verbose=False)
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[k], v, rtol=0, atol=1e-6, msg=k)


def test_chunk_size_does_not_change_the_result(small_data):
    runs = []
    for chunk in (1, 64):
        torch.manual_seed(0)
        model = get_model("jsc-tiny", small_data.info)
        train(model, small_data, max_epochs=1, batch_size=256, learning_rate=1e-3, chunk=chunk,
              project=f"t-chunk{chunk}", progress=False, verbose=False)
        runs.append(_weights(model))
    for k in runs[0]:
        torch.testing.assert_close(runs[0][k], runs[1][k], rtol=0, atol=0, msg=k)


def test_same_seed_same_run(small_data):
    a = train("jsc-custom", small_data, max_epochs=1, batch_size=256, learning_rate=1e-3, seed=3,
              project="t-det-a", progress=False, verbose=False)
    b = train("jsc-custom", small_data, max_epochs=1, batch_size=256, learning_rate=1e-3, seed=3,
              project="t-det-b", progress=False, verbose=False)
    pd.testing.assert_frame_equal(a["history"], b["history"])
    wa, wb = read_checkpoint(a["last_ckpt"])["state_dict"], read_checkpoint(b["last_ckpt"])["state_dict"]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k


def test_metrics_are_separate_objects():
    from torchmetrics import MeanMetric
    lit = LitClassifier(get_model("jsc-tiny"))
    assert len({id(lit.train_acc), id(lit.val_acc), id(lit.test_acc)}) == 3
    losses = [lit.train_loss, lit.val_loss, lit.test_loss]  # torchmetrics means, not hand-kept sums
    assert len(set(map(id, losses))) == 3 and all(isinstance(m, MeanMetric) for m in losses)


def test_history_rows_are_the_logged_epoch_metrics_and_the_rate_each_epoch_used(small_data):
    r = train("jsc-tiny", small_data, max_epochs=3, batch_size=256, learning_rate=1e-2, scheduler="cosine",
              project="t-history-cb", progress=False, verbose=False)
    h = r["history"]
    assert list(h.columns) == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert list(h["epoch"]) == [1, 2, 3] and h["lr"].iloc[0] == pytest.approx(1e-2) and h["lr"].is_monotonic_decreasing
    best = h.loc[h["val_acc"].idxmax()]  # the epoch whose weights best.ckpt holds
    plain = evaluate(load_model("jsc-tiny", r["best_ckpt"]), small_data, "val")
    assert best["val_loss"] == pytest.approx(plain["loss"], rel=1e-5)  # the logged means are the plain ones
    assert best["val_acc"] == pytest.approx(plain["acc"], abs=1e-6)


def test_test_matches_plain_evaluation(small_data):
    r = train("jsc-tiny", small_data, max_epochs=1, batch_size=256, learning_rate=1e-3,
              project="t-test", progress=False, verbose=False)
    t = run_test("jsc-tiny", small_data, load=r["best_ckpt"], verbose=False)
    e = evaluate(load_model("jsc-tiny", r["best_ckpt"]), small_data, split="test")
    assert t["test_acc"] == pytest.approx(e["acc"], abs=1e-6)
    assert t["test_loss"] == pytest.approx(e["loss"], rel=1e-5)
    assert t["n"] == small_data.sizes()["test"]


def test_rerun_keeps_the_previous_checkpoints(small_data):
    first = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-rerun",
                  progress=False, verbose=False)
    before = Path(first["best_ckpt"]).read_bytes()
    second = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-rerun",
                   progress=False, verbose=False)
    archived = Path(second["archived_previous"])
    assert (archived / "best.ckpt").read_bytes() == before
    assert Path(second["best_ckpt"]).is_file()


def test_time_limit_stops_training(small_data):
    r = train("jsc-tiny", small_data, max_epochs=50, batch_size=64, max_time=1.0,
              project="t-time", progress=False, verbose=False)
    assert r["stopped_early"] and r["epochs"] < 50


def test_pt_state_dict_round_trip(tmp_path, small_data):
    model = get_model("jsc-custom")
    torch.save(model.state_dict(), tmp_path / "m.pt")
    loaded = load_model("jsc-custom", tmp_path / "m.pt", load_type="pt")
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)


@pytest.mark.parametrize("kwargs, match", [
    ({"batch_size": 0}, "batch_size must be a positive integer, got 0"),
    ({"batch_size": -8}, "batch_size must be a positive integer, got -8"),
    ({"learning_rate": 0}, "learning_rate must be a finite number > 0, got 0"),
    ({"learning_rate": -1e-3}, "learning_rate must be a finite number > 0, got -0.001"),
    ({"max_epochs": 0}, "max_epochs must be a positive integer"),
    ({"accelerator": "tpu"}, "accelerator must be one of 'auto', 'cpu', 'gpu', 'cuda', 'mps', got 'tpu'"),
    ({"scheduler": "step"}, "scheduler must be one of None, 'none', 'cosine', got 'step'"),
    ({"max_time": float("inf")}, r"max_time \(seconds; None: no limit\) must be a finite number > 0, got inf"),
    ({"learning_rate": float("nan")}, "learning_rate must be a finite number > 0, got nan"),
    ({"seed": -1}, r"seed must be an integer in \[0, 2\*\*32\), got -1"),
    ({"seed": 2**32}, r"seed must be an integer in \[0, 2\*\*32\)"),
    ({"weight_decay": float("inf")}, "weight_decay must be a finite number >= 0, got inf"),
    ({"early_stopping": 0}, "early_stopping .* must be a positive integer, got 0"),
])
def test_bad_settings_fail_before_training(small_data, kwargs, match):
    with pytest.raises(ValueError, match=match):
        train("jsc-tiny", small_data, **{"max_epochs": 1, **kwargs}, progress=False, verbose=False)


def test_unknown_model_lists_known_ones(small_data):
    with pytest.raises(ValueError, match="unknown model 'jsc-tyni'.*jsc-tiny"):
        train("jsc-tyni", small_data, max_epochs=1, progress=False, verbose=False)


def test_checkpoint_errors(tmp_path, small_data):
    r = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-ckpt-err",
              progress=False, verbose=False)
    with pytest.raises(ValueError, match="trained for model 'jsc-tiny', not 'jsc-custom'"):
        load_model("jsc-custom", r["best_ckpt"])
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_model("jsc-tiny", tmp_path / "nope.ckpt")
    bad = tmp_path / "bad.ckpt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="could not read checkpoint") as e:
        load_model("jsc-tiny", bad)
    assert "not a torch checkpoint" in str(e.value) and "weights_only" not in str(e.value)
    with pytest.raises(ValueError, match="load_type must be one of pl, pt"):
        load_model("jsc-tiny", r["best_ckpt"], load_type="pkl")
    torch.save(get_model("jsc-custom").state_dict(), tmp_path / "other.pt")
    with pytest.raises(ValueError, match="does not fit model 'jsc-tiny'"):
        load_model("jsc-tiny", tmp_path / "other.pt", load_type="pt")
    assert Path(r["best_ckpt"]).is_file()  # errors never touch existing checkpoints


def test_checkpoint_or_train_reuses_a_matching_checkpoint(small_data):
    first = checkpoint_or_train("jsc-tiny", small_data, "t-reuse", max_epochs=1, batch_size=512,
                                progress=False, verbose=False)
    assert first["trained_now"] and Path(first["best_ckpt"]).is_file()
    again = checkpoint_or_train("jsc-tiny", small_data, "t-reuse", max_epochs=1, batch_size=512,
                                progress=False, verbose=False)
    assert not again["trained_now"] and again["best_ckpt"] == first["best_ckpt"]
    other = checkpoint_or_train("jsc-custom", small_data, "t-reuse", max_epochs=1, batch_size=512,
                                progress=False, verbose=False)
    assert other["trained_now"]  # a checkpoint of another model is not reused


def test_cpu_training_runs_on_one_thread_and_restores_the_setting(small_data):
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_start(self, trainer, lit):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train("jsc-tiny", small_data, max_epochs=1, batch_size=512, accelerator="cpu", callbacks=[Spy()],
              project="t-threads", progress=False, verbose=False)
        assert seen == [1] and torch.get_num_threads() == 2
        seen.clear()
        train("jsc-tiny", small_data, max_epochs=1, batch_size=512, accelerator="cpu", callbacks=[Spy()],
              num_threads=2, project="t-threads", progress=False, verbose=False)
        assert seen == [2]
    finally:
        torch.set_num_threads(before)


def test_checkpoint_or_train_does_not_reuse_a_checkpoint_from_other_data(small_data):
    from labkit.data import load_dataset
    smaller = load_dataset("jsc-synthetic", size=8000, progress=False)
    assert smaller.fingerprint() != small_data.fingerprint()
    first = checkpoint_or_train("jsc-tiny", smaller, "t-reuse-data", max_epochs=1, batch_size=512,
                                progress=False, verbose=False)
    assert first["trained_now"]
    other = checkpoint_or_train("jsc-tiny", small_data, "t-reuse-data", max_epochs=1, batch_size=512,
                                progress=False, verbose=False)
    assert other["trained_now"]  # same model and dataset name, different rows: not reused


def test_a_zoo_module_trained_directly_keeps_its_registry_name(small_data):
    model = get_model("jsc-tiny", small_data.info)
    assert model.labkit_name == "jsc-tiny"
    r = train(model, small_data, max_epochs=1, batch_size=512, project="t-name", progress=False, verbose=False)
    assert r["model"] == "jsc-tiny" and read_checkpoint(r["best_ckpt"])["model_name"] == "jsc-tiny"
    loaded = load_model("jsc-tiny", r["best_ckpt"])  # the name in the checkpoint matches the registry's
    for k, v in read_checkpoint(r["best_ckpt"])["state_dict"].items():
        assert torch.equal(loaded.state_dict()[k], v), k
    t = run_test(get_model("jsc-tiny"), small_data, load=r["best_ckpt"], verbose=False)
    assert t["model"] == "jsc-tiny"


def test_a_gpu_is_refused_without_one_naming_what_works(small_data, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for accelerator in ("gpu", "cuda"):
        with pytest.raises(ValueError, match=f"accelerator '{accelerator}' needs a CUDA GPU.*use one of auto, cpu"):
            train("jsc-tiny", small_data, max_epochs=1, accelerator=accelerator, progress=False, verbose=False)


@pytest.mark.parametrize("scheduler, rates", [("cosine", [1e-3, 5e-4]), ("none", [1e-3, 1e-3]), (None, [1e-3, 1e-3])])
def test_history_lr_is_the_rate_each_epoch_trained_with(small_data, scheduler, rates):
    r = train("jsc-tiny", small_data, max_epochs=2, batch_size=512, learning_rate=1e-3, scheduler=scheduler,
              project="t-lr", progress=False, verbose=False)
    assert list(r["history"]["lr"]) == pytest.approx(rates)  # cosine over 2 epochs: full rate, then half


def test_a_failed_trainer_setup_keeps_the_previous_checkpoints(small_data, monkeypatch):
    first = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-keep",
                  progress=False, verbose=False)
    before = Path(first["best_ckpt"]).read_bytes()

    def broken_trainer(*args, **kwargs):
        raise RuntimeError("no such device")

    monkeypatch.setattr(pl, "Trainer", broken_trainer)
    with pytest.raises(RuntimeError, match="no such device"):
        train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-keep", progress=False, verbose=False)
    assert Path(first["best_ckpt"]).read_bytes() == before  # still where it was, not archived
    assert not (Path(first["output_dir"]) / "archive").exists()


def test_deterministic_mode_is_on_during_training_only(small_data):
    seen = []

    class Spy(pl.Callback):
        def on_train_epoch_start(self, trainer, lit):
            seen.append(torch.are_deterministic_algorithms_enabled())

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(False)
    try:
        train("jsc-tiny", small_data, max_epochs=1, batch_size=512, accelerator="cpu", callbacks=[Spy()],
              project="t-determinism", progress=False, verbose=False)
        assert seen == [True] and not torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(before)


def test_testing_runs_on_one_cpu_thread_and_restores_the_setting(small_data, monkeypatch):
    r = train("jsc-tiny", small_data, max_epochs=1, batch_size=512, project="t-test-threads",
              progress=False, verbose=False)
    seen, real = [], training.evaluate

    def spy(*args, **kwargs):
        seen.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)  # test() is evaluate() on one thread
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_test("jsc-tiny", small_data, load=r["best_ckpt"], accelerator="cpu", verbose=False)
        assert seen == [1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
