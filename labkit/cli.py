"""The ``labkit`` command line: the lab's ``ch train / test / transform`` actions.

    labkit train jsc-tiny jsc-synthetic --max-epochs 10 --batch-size 256
    labkit test jsc-tiny jsc-synthetic --load outputs/.../best.ckpt --load-type pl
    labkit transform --config configs/lab2_transform_jsc_custom.toml
    labkit search --config configs/lab3_search_jsc_custom.toml
    labkit ls                     # models and datasets
    labkit notebooks --quick      # execute every notebook with papermill
    labkit notebooks --student    # write the student copies (exercises without solutions)

Every error ends the program with exit status 2 and one line that names the bad value and
what is allowed; nothing already computed (data caches, checkpoints) is touched.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from tabulate import tabulate

from . import config as cfg
from .settings import FIELDS as SETTING_FIELDS, TrainSettings

# the train action's flags: every training setting, and the project (in the order the settings table shows)
TRAIN_FLAGS = ("max_epochs", "batch_size", "learning_rate", "project", "seed", "accelerator",
               "weight_decay", "scheduler", "early_stopping", "max_time", "num_threads",
               "log_every_n_steps")
COMMON_SETTINGS = ("accelerator", "batch_size", "seed")  # flags every action with a model takes


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="labkit", description="labkit: the MASE JSC labs from the command line.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = p.add_subparsers(dest="action", metavar="ACTION")

    tr = _model_action(sub, "train", "train a model", cmd_train)
    for name in TRAIN_FLAGS:
        if name in SETTING_FIELDS and name not in COMMON_SETTINGS:
            _setting_flag(tr, name)
    tr.add_argument("--no-progress", dest="progress", action="store_false")

    _model_action(sub, "test", "test a trained model on the test split", cmd_test,
                  batch_help=f"evaluation batch size (default {cfg.TEST_BATCH_SIZE}); "
                             f"it groups the test rows and does not change the results")
    _model_action(sub, "transform", "load a checkpoint and run transform passes (quantisation)", cmd_transform)

    se = _model_action(sub, "search", "mixed-precision search ([search] in the --config TOML, MASE's schema)",
                       cmd_search)
    se.add_argument("--n-trials", dest="n_trials", type=int, default=None, help="overrides search.strategy.setup")
    se.add_argument("--n-jobs", dest="n_jobs", type=int, default=None, help="worker processes evaluating trials")
    se.add_argument("--sampler", default=None, help="tpe, nsgaii, random or bruteforce")
    se.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    se.add_argument("--no-progress", dest="progress", action="store_false")
    _cluster_flag(se)

    sub.add_parser("ls", help="list models and datasets").set_defaults(func=cmd_ls)

    nb = sub.add_parser("notebooks", help="execute the notebooks with papermill")
    nb.set_defaults(func=cmd_notebooks)
    nb.add_argument("--quick", action="store_true", help="small data and few epochs (what the tests run)")
    nb.add_argument("--dataset", default="auto", help="auto (real if available, else synthetic), jsc, jsc-synthetic")
    nb.add_argument("--only", nargs="*", default=None, help="notebook name prefixes, e.g. 01 02")
    nb.add_argument("--output-dir", default=None, help="where executed notebooks go (default notebooks/executed)")
    nb.add_argument("--student", action="store_true",
                    help="do not execute: write the student build (solutions replaced by stubs and hints) "
                         "to notebooks/student/ (or --output-dir)")
    _cluster_flag(nb)
    return p


def _model_action(sub, action: str, help: str, func, batch_help: str | None = None):
    """An action on a model and a dataset (train, test, transform, search) with the flags they
    share: --config, --data-size, the common settings, --project, MASE's flags, --load."""
    sp = sub.add_parser(action, help=help)
    sp.set_defaults(func=func)
    sp.add_argument("model", nargs="?", help="model name (see `labkit ls`)")
    sp.add_argument("dataset", nargs="?", help="dataset name: jsc or jsc-synthetic")
    sp.add_argument("--config", help="TOML file with the same keys (flags override it)")
    sp.add_argument("--data-size", dest="data_size", type=int, default=None,
                    help=f"use only this many rows of the dataset (quick runs; at least {cfg.MIN_DATA_SIZE})")
    for name in COMMON_SETTINGS:
        _setting_flag(sp, name, help=batch_help if name == "batch_size" else None)
    sp.add_argument("--project", default=None,
                    help="output folder name under outputs/ (letters, digits, . _ -; at most 64)")
    mase_flags(sp)
    sp.add_argument("--load", dest="load_name", default=None, metavar="PATH",
                    help="checkpoint to load (relative paths may also be relative to the project root)")
    sp.add_argument("--load-type", dest="load_type", choices=cfg.LOAD_TYPES, default=None,
                    help="pl: Lightning .ckpt, pt: torch state dict")
    return sp


def _setting_flag(sp, name: str, help: str | None = None):
    """A training setting's flag (``--batch-size`` for ``batch_size``): type, choices and help
    from its :class:`~labkit.settings.TrainSettings` field. Unset flags stay None: not given."""
    f = SETTING_FIELDS[name]
    default = "" if f.default is None else f" (default {f.default})"
    sp.add_argument("--" + name.replace("_", "-"), dest=name, default=None,
                    help=help or f.metadata["help"] + default, **f.metadata["flag"])


def _cluster_flag(sp):
    sp.add_argument("--cluster", default=None, metavar="ADDRESS",
                    help="run sweeps and comparisons on this Dask scheduler (tcp://host:8786); "
                         "default: $LABKIT_CLUSTER, else worker processes on this machine")


def _use_cluster(args):
    """--cluster: checked and reached now (one line naming the address if not), then handed to
    everything this command runs (notebook kernels too) as $LABKIT_CLUSTER."""
    if args.cluster is None:
        return
    import os
    from .executor import CLUSTER_ENV, choose_cluster, connect
    address = choose_cluster(args.cluster)
    client, _ = connect(address)
    client.close()
    os.environ[CLUSTER_ENV] = address


def mase_flags(sp):
    """MASE's own `ch` flags, so its commands run as written (``--task cls --cpu=0``)."""
    sp.add_argument("--task", default=None, help="cls (classification); the only task of the JSC labs")
    sp.add_argument("--cpu", "--num-workers", dest="num_workers", type=int, default=None, metavar="N",
                    help=cfg.KEYS["num_workers"][2])
    sp.add_argument("--gpu", "--num-devices", dest="num_devices", type=int, default=None, metavar="N",
                    help=cfg.KEYS["num_devices"][2])


MASE_FLAGS = ("task", "num_workers", "num_devices")


def _overrides(args) -> dict:
    names = TRAIN_FLAGS + MASE_FLAGS + ("model", "dataset", "data_size", "load_name", "load_type")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def _settings(args, keys, defaults: dict | None = None) -> dict:
    """defaults (labkit's, updated with this action's) < --config file < flags; prints how each
    setting was decided and returns the effective settings."""
    file_config = cfg.load_config(args.config) if args.config else None
    overrides = cfg.validate(_overrides(args), source="command line")
    base = {**cfg.defaults(), **(defaults or {})}
    keys = [*keys, *(k for k in MASE_FLAGS if k not in keys)]
    effective = cfg.resolve(file_config, overrides, base)
    if not effective.get("project") and effective.get("model") and effective.get("dataset"):
        effective["project"] = cfg.default_project(effective["model"], effective["dataset"])
    table = cfg.settings_table(file_config, overrides, keys, effective=effective, base=base)
    print(tabulate(table, headers="keys", tablefmt="pretty", showindex=False))
    if file_config and "passes" in file_config:
        effective["passes"] = file_config["passes"]
    for key in ("model", "dataset"):
        if not effective.get(key):
            raise cfg.ConfigError(f"no {key} given: pass it as an argument or set `{key} = ...` in a --config file")
    return effective


def _check(s, keys) -> TrainSettings:
    """Names, training settings and the accelerator's hardware checked before any data is loaded."""
    from .data import DATASETS
    from .models import MODELS
    from .runtime import check_usable
    MODELS.get(s["model"])  # raises ValueError listing the known ones
    DATASETS.get(s["dataset"])
    settings = TrainSettings(**{k: s[k] for k in keys})
    check_usable(settings.accelerator)
    return settings


def _load_data(s):
    from .data import load_dataset
    kwargs = {"size": s["data_size"]} if s.get("data_size") else {}
    return load_dataset(s["dataset"], **kwargs)


def cmd_train(args):
    s = _settings(args, ["model", "dataset", "data_size", *TRAIN_FLAGS])
    settings = _check(s, SETTING_FIELDS)
    from .paths import outputs_dir
    outputs_dir()  # an unusable outputs folder is one line now, not after loading the data
    from .training import load_model, read_checkpoint, train
    from .transform import resolve_checkpoint
    ckpt = resolve_checkpoint(s["load_name"]) if s.get("load_name") else None
    if ckpt:
        read_checkpoint(ckpt, s["load_type"])  # a missing or unreadable file stops before the data load
    data = _load_data(s)
    # MASE's `ch train --load`: training starts from the checkpoint's weights
    model = load_model(s["model"], ckpt, s["load_type"], info=data.info) if ckpt else s["model"]
    result = train(model, data, settings=settings, project=s["project"], progress=args.progress)
    # metrics to 4 decimals; the learning rate to 4 significant digits (1e-05, not 0.0000)
    print(result["history"].to_string(index=False, float_format=lambda v: f"{v:.4f}",
                                      formatters={"lr": lambda v: f"{v:.4g}"}))
    print(f"best.ckpt: {result['best_ckpt']}\nlast.ckpt: {result['last_ckpt']}")


def cmd_test(args):
    s = _settings(args, ["model", "dataset", "data_size", "load_name", "load_type", "batch_size", "accelerator"],
                  defaults={"batch_size": cfg.TEST_BATCH_SIZE})
    _check(s, ["batch_size", "accelerator"])
    if not s.get("load_name"):
        raise cfg.ConfigError("test needs a checkpoint: --load PATH (and --load-type pl|pt)")
    from .training import test
    from .transform import resolve_checkpoint  # as `labkit transform` finds load_name
    test(s["model"], _load_data(s), load=resolve_checkpoint(s["load_name"]), load_type=s["load_type"],
         batch_size=s["batch_size"], accelerator=s["accelerator"])


def cmd_transform(args):
    s = _settings(args, ["model", "dataset", "data_size", "load_name", "load_type", "project", "seed",
                         "accelerator"])
    _check(s, ["seed", "accelerator"])
    from .paths import outputs_dir
    outputs_dir()  # an unusable outputs folder is one line now, not after quantising
    from .transform import run_transform
    run_transform(s)


def cmd_search(args):
    s = _settings(args, ["model", "dataset", "data_size", "load_name", "load_type", "project", "seed"])
    _check(s, ["seed"])
    if not s.get("search"):
        raise cfg.ConfigError("labkit search needs a --config TOML with a [search] section "
                              "(see configs/lab3_search_jsc_custom.toml)")
    _use_cluster(args)
    from .precision_search import search
    setup = {k: getattr(args, k) for k in ("n_trials", "n_jobs", "sampler", "timeout") if getattr(args, k) is not None}
    config = {k: v for k, v in s.items() if k in cfg.KEYS and v is not None}
    result = search(config, overrides=setup, progress=args.progress)
    cols = ["trial", *result.metrics]
    print("Pareto front:" if len(result.metrics) > 1 else "Best trial:")
    print(tabulate(result.pareto[cols], headers="keys", tablefmt="github", showindex=False, floatfmt=".4g"))
    print(f"best config: {result.files['best_config']}  (labkit transform --config {result.files['best_config']})")


def cmd_ls(args):
    from .data import DATASETS
    from .models import model_zoo
    print(tabulate(model_zoo(), headers="keys", tablefmt="github"))
    print("\ndatasets: " + ", ".join(DATASETS.names()))


def cmd_notebooks(args):
    if args.student:
        from .exercises.student import write_student_build
        for path in write_student_build(args.output_dir, only=args.only):
            print(f"[labkit] student copy: {path}")
        return
    _use_cluster(args)
    from .notebooks import run_notebooks
    run_notebooks(quick=args.quick, dataset=args.dataset, only=args.only, output_dir=args.output_dir)


def _describe_os_error(e: OSError) -> str:
    """One line naming the path and what to do (never a traceback)."""
    from .paths import PathUnusableError, env_for, unusable
    if isinstance(e, PathUnusableError) or not e.filename:
        return " ".join(str(e).split())
    return str(unusable(e.filename, e, env_for(e.filename)))


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not args.action:
        parser.print_help()
        return 0
    try:
        # Inside the try: this import loads torch, seconds in which a Ctrl-C must still end cleanly.
        from .data import DataUnavailableError
        from .lock import ProjectBusyError
        errors = (ValueError, TypeError, FileNotFoundError, ConnectionError, cfg.ConfigError,
                  DataUnavailableError, ProjectBusyError)
        try:
            args.func(args)
        except errors as e:
            print(f"labkit {args.action}: error: {e}", file=sys.stderr)
            return 2
        except OSError as e:  # the environment (a folder not writable, a file in the way): status 1
            print(f"labkit {args.action}: error: {_describe_os_error(e)}", file=sys.stderr)
            return 1
    except KeyboardInterrupt as e:
        where = str(e) or "finished checkpoints and caches are kept"
        print(f"labkit {args.action}: interrupted: {where}", file=sys.stderr)
        return 130
    return 0


def program():
    """The ``labkit`` command (and ``python -m labkit``): :func:`main`, then exit with its status.

    Once main has returned, the work is finished or has failed cleanly; what is left is the
    interpreter's shut-down (logger threads flushing, atexit hooks), which takes a moment. A
    Ctrl-C landing there would end a finished run by the signal, with no message, so it is
    ignored from here on. (Not in main itself: tests and notebooks call main in-process.)

    After an interrupt the status is set with ``os._exit``: a Ctrl-C that lands while torch is
    importing can hit Python code that a C extension runs (pybind11's exec), and CPython then
    marks the interrupt as unhandled and ends the process by SIGINT at exit, whatever status we
    asked for, although main caught it. Nothing is lost: the run has already stopped and
    written what it keeps."""
    code = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if code == 130:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130)
    sys.exit(code)


if __name__ == "__main__":
    program()
