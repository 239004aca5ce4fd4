"""The lab report's own code, run against labkit with only `ch`/`che` -> `labkit` and imports changed.

The report uses the real `jsc` dataset. There is no internet here, so `LABKIT_JSC_SOURCE` points
`jsc` at a small file in the real OpenML ARFF format written by labkit's synthetic writer; the
file carries the stand-in mark, so everything made from it is still labelled SYNTHETIC.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from labkit.data.synthetic import write_source_files

LABKIT = str(Path(sys.executable).parent / "labkit")

# The report's batch-size script, verbatim except `$MASE/machop/ch` -> `labkit`.
SWEEP_SCRIPT = """\
#!/usr/bin/env bash
batch_sizes=(64 128 256 512 1024 2048)
for batch_size in "${batch_sizes[@]}"
do
    echo "Training with batch size: $batch_size"
    labkit train jsc-tiny jsc --max-epochs 10 --batch-size $batch_size --project "lab-1_jsc-tiny_varying-batch-size"
done
echo "Training complete for all batch sizes."
"""

# The report's transform config, verbatim (its load_name included).
SPEC_TOML = """\
# Basic parameters to do with the model and config
model = "jsc-custom"
dataset = "jsc"
task = "cls"
accelerator = "cpu"
project = "lab-2_transform"
seed = 42
log_every_n_steps = 5
load_name = "./mase_output/lab-1_jsc-custom/software/training_ckpts/best.ckpt"
load_type = "pl"

# General training params, not for the transform
max_epochs = 50 
batch_size = 256
learning_rate = 1e-3

# Transform params
[passes.quantize]
by = "type"
[passes.quantize.default.config]
name = "NA"
[passes.quantize.linear.config]
name = "integer"
"data_in_width" = 8
"data_in_frac_width" = 4
"weight_width" = 8
"weight_frac_width" = 4
"bias_width" = 8
"bias_frac_width" = 4
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A working folder laid out like the report's: `jsc` served from a local stand-in file,
    outputs written to ./mase_output so the report's load_name resolves as written."""
    root = tmp_path_factory.mktemp("lab")
    files = write_source_files(root / "source", size=3000, seed=5)
    env = {**os.environ, "LABKIT_JSC_SOURCE": str(files["arff"]), "LABKIT_DATA_DIR": str(root / "data"),
           "LABKIT_OUTPUT_DIR": str(root / "mase_output")}
    return root, env


def _run(cmd, root, env, timeout=600):
    out = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_the_batch_size_script(lab):
    root, env = lab
    script = root / "sweep.sh"
    script.write_text(SWEEP_SCRIPT.replace("labkit train", f"{LABKIT} train"))
    out = _run(["bash", str(script)], root, env)
    assert out.count("Training with batch size:") == 6 and "Training complete for all batch sizes." in out
    assert out.count("best.ckpt:") == 6 and "SYNTHETIC" in out
    software = root / "mase_output" / "lab-1_jsc-tiny_varying-batch-size" / "software"
    assert (software / "training_ckpts" / "best.ckpt").is_file()
    # each rerun into the same project kept the previous run's checkpoints
    assert len(list((software / "archive").iterdir())) == 5


def test_train_jsc_custom_then_transform_with_the_reports_toml(lab):
    root, env = lab
    out = _run([LABKIT, "train", "jsc-custom", "jsc", "--max-epochs", "20", "--batch-size", "128",
                "--learning-rate", "0.0001", "--project", "lab-1_jsc-custom"], root, env)
    assert "jsc-custom" in out and "val_acc" in out
    assert (root / "mase_output/lab-1_jsc-custom/software/training_ckpts/best.ckpt").is_file()
    (root / "transform.toml").write_text(SPEC_TOML)
    out = _run([LABKIT, "transform", "--config", "transform.toml"], root, env)
    assert "| Linear          | linear       |       3 |         3 |           0 |" in out
    assert "| BatchNorm1d     | batch_norm1d |       4 |         0 |           4 |" in out


def test_the_reports_python_snippets(capsys):
    """JSC_Custom as written, then the Lab-2 code in the report's order."""
    from torch import nn
    from labkit import (MaseGraph, add_common_metadata_analysis_pass, analyse_flops_pass,
                        get_node_actual_target, init_metadata_analysis_pass, quantize_transform_pass,
                        register_model, get_model, summarize_quantization_analysis_pass)

    class JSC_Custom(nn.Module):
        def __init__(self, info):
            super(JSC_Custom, self).__init__()
            in_features = info.num_features
            num_classes = info.num_classes
            self.seq_blocks = nn.Sequential(
                # 1st LogicNets Layer
                nn.BatchNorm1d(in_features),  # input_quant       # 0
                nn.ReLU(in_features),                             # 1
                nn.Linear(in_features, 32),  # linear             # 2
                nn.BatchNorm1d(32),  # output_quant      # 3
                nn.ReLU(32),                             # 4
                nn.Dropout(0.2),                         # 5
                nn.Linear(32, 16),  # linear             # 2
                nn.BatchNorm1d(16),  # output_quant      # 7
                nn.ReLU(16),                             # 8
                nn.Dropout(0.2),                         # 5
                nn.Linear(16, num_classes),  # linear              # 10
                nn.BatchNorm1d(num_classes),  # output_quant       # 11
                nn.ReLU(num_classes),                              # 12
            )

        def forward(self, x):
            return self.seq_blocks(x)

    register_model("jsc-custom-report")(JSC_Custom)
    model = get_model("jsc-custom-report")
    assert 1200 <= sum(p.numel() for p in model.parameters()) <= 1400
    dummy_in = {"x": torch.randn(8, 16)}

    pass_args = {
        "by": "type",
        "default": {"config": {"name": None}},
        "linear": {
            "config": {
                "name": "integer",
                # data
                "data_in_width": 2,
                "data_in_frac_width": 2,
                # weight
                "weight_width": 2,
                "weight_frac_width": 2,
                # bias
                "bias_width": 2,
                "bias_frac_width": 2,
            }
        },
        "relu": {
            "config": {
                "name": "integer",
                # data
                "data_in_width": 8,
                "data_in_frac_width": 4,
            }
        },
    }

    # ... model loaded from trained checkpoint
    mg = MaseGraph(model=model)
    mg, _ = init_metadata_analysis_pass(mg, None)
    mg, _ = add_common_metadata_analysis_pass(mg, {"dummy_in": dummy_in})
    # the report does not show where its ori_mg came from; this is the MASE handout's way (the
    # pass quantises mg itself, as MASE's does, so `ori_mg = mg` would compare mg with itself)
    ori_mg = MaseGraph(model=model)
    ori_mg, _ = init_metadata_analysis_pass(ori_mg, None)
    ori_mg, _ = add_common_metadata_analysis_pass(ori_mg, {"dummy_in": dummy_in})
    mg, _ = quantize_transform_pass(mg, pass_args)
    _, info = summarize_quantization_analysis_pass(mg, {"original_graph": ori_mg, "save_dir": None})

    for og_node, node in zip(ori_mg.fx_graph.nodes, mg.fx_graph.nodes):
        print("----------------------------------------------")
        print(f"original {og_node.name}: {get_node_actual_target(og_node)}")
        print(f"transformed {node.name}: {get_node_actual_target(node)}")
    print("----------------------------------------------")

    mg, _ = analyse_flops_pass(mg)

    out = capsys.readouterr().out
    assert "transformed seq_blocks_2: LinearInteger(in_features=16, out_features=32, bias=True)" in out
    assert "original seq_blocks_2: Linear(in_features=16, out_features=32, bias=True)" in out
    assert "Computations summary:" in out
    summary = info["summary"].set_index("Original type")
    assert summary.loc["Linear", "Changed"] == 3 and summary.loc["ReLU", "Changed"] == 4
    assert summary.loc["BatchNorm1d", "Unchanged"] == 4 and summary.loc["Dropout", "Unchanged"] == 2
    # module.w_quantizer(module.weight): the weights the forward pass really uses
    module = mg.modules["seq_blocks.2"]
    q = module.w_quantizer(module.weight)
    assert set(torch.unique(q).tolist()) <= {-0.5, -0.25, 0.0, 0.25}
