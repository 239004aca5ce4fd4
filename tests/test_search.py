"""labkit search: MASE's [search] configs, samplers, kill-and-resume, invalid configs, export."""

import contextlib
import copy
import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
import tomllib
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from labkit.cli import main
from labkit.data import load_dataset
from labkit.models import get_model
from labkit.paths import outputs_dir
from labkit.precision_search import SearchConfigError, check_search_config, finetune, search, to_toml

ROOT = Path(__file__).resolve().parent.parent
LAB3_CONFIGS = [ROOT / "configs" / "examples" / "jsc_toy_by_type.toml",  # labkit's copy of the handout's
               Path("/work/mase-src/configs/examples/jsc_toy_by_type.toml")]  # MASE's own, where it is here
ROWS = 2000


@pytest.fixture(scope="module")
def data():
    return load_dataset("jsc-synthetic", size=ROWS, progress=False)


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    """A jsc-tiny trained for a few hundred plain Adam steps (a state dict, load_type "pt")."""
    torch.manual_seed(0)
    model = get_model("jsc-tiny", data.info)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    x, y = data.split("train")
    for i in range(300):
        j = (i * 256) % (len(y) - 256)
        opt.zero_grad()
        F.cross_entropy(model(x[j:j + 256]), y[j:j + 256]).backward()
        opt.step()
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    torch.save(model.state_dict(), path)
    return path


def lab3_config(project, **setup) -> dict:
    """The shape of MASE's Lab-3 search config (jsc-tiny by name), written out here."""
    widths = {"name": ["integer"], "data_in_width": [4, 8], "data_in_frac_width": ["NA"],
              "weight_width": [2, 4, 8], "weight_frac_width": ["NA"], "bias_width": [2, 4, 8],
              "bias_frac_width": ["NA"]}
    return {
        "model": "jsc-tiny", "dataset": "jsc-synthetic", "data_size": ROWS, "project": project, "seed": 42,
        "search": {
            "search_space": {"name": "graph/quantize/mixed_precision_ptq", "setup": {"by": "name"},
                             "seed": {"default": {"config": {"name": ["NA"]}},
                                      "linear": {"config": copy.deepcopy(widths)},
                                      "seq_blocks_2": {"config": copy.deepcopy(widths)}}},
            "strategy": {"name": "optuna", "eval_mode": True,
                         "sw_runner": {"basic_evaluation": {"data_loader": "val_dataloader", "num_samples": 512}},
                         "hw_runner": {"average_bitwidth": {"compare_to": 32}},
                         "setup": {"n_jobs": 1, "n_trials": 5, "timeout": 20000, "sampler": "tpe",
                                   "sum_scaled_metrics": False, **setup},
                         "metrics": {"accuracy": {"scale": 1.0, "direction": "maximize"},
                                     "average_bitwidth": {"scale": 0.2, "direction": "minimize"}}}},
    }


def write_toml(path, config) -> Path:
    top = {k: v for k, v in config.items() if not isinstance(v, dict)}
    path.write_text(to_toml(top, {k: v for k, v in config.items() if isinstance(v, dict)}))
    return path


def test_toml_writer_round_trips(tmp_path):
    config = lab3_config("rt")
    assert tomllib.loads(write_toml(tmp_path / "c.toml", config).read_text()) == config


@pytest.mark.parametrize("path", LAB3_CONFIGS, ids=["labkit-copy", "mase-src"])
def test_mase_lab3_config_as_written_runs(path, capsys):
    if not path.is_file():
        pytest.skip(f"{path} is not on this machine")
    # the file unchanged; only the dataset (offline) and the size are given on the command line
    rc = main(["search", "jsc-tiny", "jsc-synthetic", "--config", str(path), "--data-size", str(ROWS),
               "--no-progress", "--project", f"lab3-{path.parent.parent.name}"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "Pareto front" in out
    study = outputs_dir() / f"lab3-{path.parent.parent.name}" / "search"
    assert (study / "study.db").is_file() and (study / "best_config.toml").is_file()
    trials = (study / "trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 5  # header + MASE's n_trials = 5


def test_lab3_config_runs_a_few_trials(data):
    r = search(lab3_config("lab3"), data=data, progress=False, verbose=False)
    assert len(r.trials) == 5
    # by name: "linear" is an op, not a node, so (as in MASE) only seq_blocks_2 is searched
    assert list(r.space.nodes) == ["seq_blocks_2"] and r.space.unused_seeds == ["linear"]
    assert r.trials["accuracy"].between(0, 1).all()
    assert set(r.trials["average_bitwidth"]) <= {2.0, 4.0, 8.0}  # jsc-tiny's one Linear, its weight width
    assert r.pareto["pareto"].all() and len(r.pareto) >= 1


def test_labkit_config_parses():
    config = tomllib.loads((ROOT / "configs" / "lab3_search_jsc_custom.toml").read_text())
    checked = check_search_config(config["search"])
    assert checked["setup"]["n_jobs"] == 1 and set(checked["metrics"]) == {"accuracy", "bitops"}


@pytest.mark.parametrize("sampler", ["tpe", "nsgaii", "random", "bruteforce"])
def test_each_sampler_runs(data, sampler):
    config = lab3_config(f"s-{sampler}", sampler=sampler, n_trials=8)
    config["search"]["strategy"]["hw_runner"]["bitops"] = {}
    r = search(config, data=data, progress=False, verbose=False)
    assert len(r.trials) == 8
    assert r.trials[["accuracy", "loss", "average_bitwidth", "bitops", "param_bits"]].notna().all().all()
    evaluated = r.trials[r.trials["evaluated"]]
    choice_cols = [c for c in r.trials if c.startswith("seq_blocks_2.")]
    assert not evaluated.duplicated(choice_cols).any()  # a configuration is evaluated once
    if sampler == "bruteforce":
        assert r.trials["evaluated"].all()  # the grid never repeats itself


def test_bruteforce_stops_at_the_end_of_the_grid(data):
    config = lab3_config("grid", sampler="bruteforce", n_trials=100)
    seed = config["search"]["search_space"]["seed"]["seq_blocks_2"]["config"]
    seed.update(weight_width=[2, 8], bias_width=[8], data_in_width=[8])
    r = search(config, data=data, progress=False, verbose=False)
    assert len(r.trials) == 2 and set(r.trials["seq_blocks_2.weight_width"]) == {2, 8}


def test_single_objective_sums_signed_scaled_metrics(data):
    config = lab3_config("single", sum_scaled_metrics=True, direction="maximize", n_trials=6)
    r = search(config, data=data, progress=False, verbose=False)
    score = r.trials["accuracy"] - 0.2 * r.trials["average_bitwidth"]
    assert r.best["trial"] == r.trials.loc[score.idxmax(), "trial"]
    assert score[r.trials["trial"] == r.best["trial"]].item() == pytest.approx(score.max())


def test_rerun_resumes_and_evaluates_nothing_twice(data):
    config = lab3_config("resume", n_trials=4)
    first = search(config, data=data, progress=False, verbose=False)
    again = search(config, data=data, progress=False, verbose=False)
    assert again.stats["evaluated"] == 0 and len(again.trials) == 4
    config["search"]["strategy"]["setup"]["n_trials"] = 7
    more = search(config, data=data, progress=False, verbose=False)
    assert len(more.trials) == 7 and more.stats["evaluated"] + more.stats["reused"] == 3
    assert more.trials.iloc[:4][["accuracy", "average_bitwidth"]].equals(first.trials[["accuracy", "average_bitwidth"]])


KILL_SCRIPT = textwrap.dedent("""
    import json, sys
    from labkit.precision_search import search
    search(json.loads(sys.argv[1]), progress=False, verbose=False)
""")


def _stored(study_dir):
    import optuna
    storage = f"sqlite:///{study_dir / 'study.db'}"
    summaries = optuna.get_all_study_summaries(storage)
    if not summaries:
        return []
    study = optuna.load_study(study_name=summaries[0].study_name, storage=storage)
    return study.get_trials(deepcopy=False)


def _count_stored(study_dir) -> int:
    # read-only through sqlite3 itself: optuna's reader creates the schema when it finds none, and
    # doing that while the search creates it fails the search ("table ... already exists")
    path = study_dir / "study.db"
    if not path.is_file():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)) as db:
            return db.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.Error:  # the file is being created: no trials table yet
        return 0


def test_killed_search_resumes_without_losing_or_repeating_trials(data, tmp_path):
    # a search of every node of jsc-tiny, by name: far more trials asked for than it gets
    # to before the kill; the resumed search then asks for 20 more than were stored
    config = lab3_config("killed", n_trials=100_000, sampler="random")
    config["search"]["search_space"]["seed"] = {"default": {"config": {
        "name": ["integer"], "data_in_width": [2, 3, 4, 5, 6, 8], "data_in_frac_width": ["NA"],
        "weight_width": [2, 3, 4, 5, 6, 8], "weight_frac_width": ["NA"], "bias_width": [4, 8],
        "bias_frac_width": ["NA"]}}}
    config["search"]["strategy"]["hw_runner"]["bitops"] = {}
    study_dir = outputs_dir() / "killed" / "search"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, json.dumps(config)], env=env)
    try:
        deadline = time.time() + 180
        while time.time() < deadline and proc.poll() is None and _count_stored(study_dir) < 10:
            time.sleep(0.2)
        assert proc.poll() is None, "the search stopped before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    before = {t.number: (t.params, t.values, t.user_attrs) for t in _stored(study_dir)}
    assert len(before) >= 10

    config["search"]["strategy"]["setup"]["n_trials"] = len(before) + 20  # the same study, 20 more trials
    r = search(config, data=data, progress=False, verbose=False)
    after = {t.number: (t.params, t.values, t.user_attrs) for t in _stored(study_dir)}
    assert len(after) == len(r.trials) == len(before) + 20
    assert all(after[n] == before[n] for n in before)  # nothing lost, nothing rewritten
    assert r.stats["evaluated"] + r.stats["reused"] == 20
    keys = [json.dumps(p, sort_keys=True) for p, _, a in after.values() if "duplicate_of" not in a]
    assert len(keys) == len(set(keys))  # no configuration evaluated twice, across the kill


BAD = [
    (lambda s: s["search_space"]["seed"]["seq_blocks_2"]["config"].update(weight_frac_width=[3, 9]),
     "search.search_space.seed.seq_blocks_2.config.weight_frac_width"),
    (lambda s: s["search_space"]["seed"]["seq_blocks_2"]["config"].update(bias_width=[]),
     "search.search_space.seed.seq_blocks_2.config.bias_width"),
    (lambda s: s["search_space"]["seed"].update(seq_blocks_99={"config": {"name": ["NA"]}}),
     "search.search_space.seed.seq_blocks_99"),
    (lambda s: s["strategy"]["metrics"].update(latency={"scale": 1.0, "direction": "minimize"}),
     "search.strategy.metrics.latency"),
    (lambda s: s["strategy"]["setup"].update(sampler="cmaes"), "search.strategy.setup.sampler"),
    (lambda s: s["strategy"]["metrics"].update(bitops={"scale": 1.0, "direction": "minimize"}),
     "search.strategy.metrics.bitops"),  # its runner (hw_runner.bitops) is missing
    (lambda s: s["strategy"]["metrics"]["accuracy"].update(direction="up"),
     "search.strategy.metrics.accuracy.direction"),
    (lambda s: s["search_space"]["setup"].update(by="layer"), "search.search_space.setup.by"),
    (lambda s: s["strategy"]["setup"].update(n_trials=0), "search.strategy.setup.n_trials"),
    (lambda s: s["search_space"]["seed"]["seq_blocks_2"]["config"].update(weight_width=8),
     "search.search_space.seed.seq_blocks_2.config.weight_width"),
]


@pytest.mark.parametrize("mutate,key", BAD, ids=[k.rsplit(".", 1)[-1] + str(i) for i, (_, k) in enumerate(BAD)])
def test_invalid_configs_are_rejected_before_any_trial(data, mutate, key):
    config = lab3_config(f"bad{BAD.index(next(b for b in BAD if b[1] == key))}")
    mutate(config["search"])
    with pytest.raises(SearchConfigError) as err:
        search(config, data=data, progress=False, verbose=False)
    message = str(err.value)
    assert key in message and "\n" not in message
    assert not (outputs_dir() / config["project"] / "search" / "study.db").exists()


def test_invalid_config_is_one_line_and_exit_2_in_the_cli(tmp_path, capsys):
    config = lab3_config("badcli")
    config["search"]["search_space"]["seed"]["seq_blocks_2"]["config"]["data_in_frac_width"] = [4, 9]
    path = write_toml(tmp_path / "bad.toml", config)
    assert main(["search", "--config", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data_in_frac_width: choice 9 is larger than every data_in_width" in err[0]


def test_bad_project_name_is_rejected(data):
    with pytest.raises(ValueError, match=r"project '\.\./x' is not allowed"):
        search(lab3_config("../x"), data=data, progress=False, verbose=False)


def test_exported_best_config_reproduces_the_trial_through_transform(data, checkpoint, capsys):
    from labkit.precision_search import evaluate_rows
    from labkit.transform import load_transformed
    config = lab3_config("export", n_trials=6)
    config.update(load_name=str(checkpoint), load_type="pt")
    r = search(config, data=data, progress=False, verbose=False)
    assert r.trials["accuracy"].max() > 0.4  # a trained model: the check below means something
    best_toml = r.files["best_config"]
    exported = tomllib.loads(best_toml.read_text())
    assert exported["passes"]["quantize"]["by"] == "name"
    assert main(["transform", "--config", str(best_toml)]) == 0
    capsys.readouterr()
    mg = load_transformed(outputs_dir() / exported["project"] / "transform" / "transformed.pt")
    x, y = data.split("val")
    again = evaluate_rows(mg.model, x[:512], y[:512])
    assert again["accuracy"] == r.best["accuracy"]
    assert again["loss"] == pytest.approx(r.best["loss"], rel=1e-6)


def test_parallel_workers_give_the_same_results(data):
    config = lab3_config("par", sampler="random", n_trials=6)  # seeded: both runs ask the same configs
    serial = search(config, data=data, progress=False, verbose=False)
    config["project"] = "par2"
    parallel = search(config, data=data, workers=2, progress=False, verbose=False)
    assert parallel.stats["workers"] == 2
    cols = [c for c in serial.trials if c.startswith("seq_blocks_2.")] + ["accuracy", "loss", "average_bitwidth"]
    key = lambda df: df[cols].sort_values(cols).reset_index(drop=True)  # noqa: E731
    assert key(serial.trials).equals(key(parallel.trials))


def test_pareto_exercise_check():
    from labkit.exercises import check_pareto
    from labkit.precision_search import _pareto_mask

    assert check_pareto(lambda v, d: _pareto_mask([list(x) for x in v], d)).passed
    wrong = {
        "everything on the front": lambda v, d: [True] * len(v),
        "directions ignored": lambda v, d: _pareto_mask([list(x) for x in v], ["maximize"] * len(d)),
        "one value short": lambda v, d: _pareto_mask([list(x) for x in v], d)[:-1],
    }
    for name, fn in wrong.items():
        verdict = check_pareto(fn)
        assert not verdict.passed and "\n" not in str(verdict), name


def test_compare_with_uniform_and_finetune(data, checkpoint):
    from labkit.precision_search import compare_with_uniform
    from labkit.training import load_model
    config = lab3_config("uniform", n_trials=6)
    config["search"]["strategy"]["hw_runner"]["bitops"] = {}
    config.update(load_name=str(checkpoint), load_type="pt")
    r = search(config, data=data, progress=False, verbose=False)
    uniform = r.uniform(widths=(8, 2))
    assert list(uniform["average_bitwidth"]) == [8.0, 2.0] and uniform["bitops"].iloc[0] > uniform["bitops"].iloc[1]
    versus = compare_with_uniform(r.trials, uniform)
    for _, row in versus.dropna(subset=["gain"]).iterrows():
        assert row["searched bitops"] <= row["uniform bitops"]
        assert row["gain"] == pytest.approx(row["searched accuracy"] - row["uniform accuracy"])
    model = load_model("jsc-tiny", checkpoint, "pt", info=data.info)
    qat = finetune(r, data, model, epochs=1)
    assert 0 <= qat["val_acc_ptq"] <= 1 and 0 <= qat["val_acc_qat"] <= 1 and qat["epochs"] == 1
    # the fine-tuned layers are the exported config's: the same nodes, quantised
    assert set(qat["graph"].model.state_dict()) == set(model.state_dict())
