"""labkit: a lab workbook for the MASE deep-learning-systems labs on Jet Substructure Classification.

Everything the notebooks and the lab report's snippets use is importable from here. Names
load on first use (``from labkit import train`` imports torch and Lightning at that moment),
so ``import labkit`` and ``labkit --help`` stay quick.
"""

import importlib
import sys

__version__ = "0.1.0"

# submodule -> the names it gives the top level
_EXPORTS_BY_MODULE = {
    "models": ["MODELS", "count_parameters", "get_model", "model_zoo", "register_model"],
    "data": ["CLASS_NAMES", "DATASETS", "FEATURE_NAMES", "BatchIterator", "DataUnavailableError", "DatasetInfo",
             "JSCData", "JSCDataModule", "choose_dataset", "epoch_permutation", "load_dataset", "raw_frame",
             "register_dataset"],
    "settings": ["TrainSettings"],
    "lit": ["LitClassifier"],
    "training": ["checkpoint_or_train", "evaluate", "load_model", "test", "train"],
    "graph": ["GraphTraceError", "MaseGraph", "deepcopy_mase_graph", "get_node_actual_target"],
    "passes": [  # every pass, MASE names (labkit.passes.__all__)
        "MaseMetadata", "init_metadata_analysis_pass", "add_common_metadata_analysis_pass",
        "add_software_metadata_analysis_pass", "profile_statistics_analysis_pass",
        "report_graph_analysis_pass", "report_node_meta_param_analysis_pass",
        "report_node_type_analysis_pass", "report_node_shape_analysis_pass",
        "quantize_transform_pass", "summarize_quantization_analysis_pass", "auto_frac_width_pass",
        "auto_quantize_config", "analyse_flops_pass", "format_flops_table", "register_flop_calculator",
        "verify_metadata_analysis_pass", "calculate_avg_bits_mg_analysis_pass",
        "save_node_meta_param_interface_pass", "load_node_meta_param_interface_pass",
        "get_mase_op", "get_mase_type",
    ],
    "quantize": ["QUANTIZERS", "BatchNorm1dInteger", "Conv1dInteger", "Conv2dInteger", "LinearInteger",
                 "LinearMinifloat", "Quantizer", "ReLUInteger", "compare_quantization", "model_size_bits",
                 "plot_accuracy_vs_bits", "quantize_module", "quantized_class", "register_quantizer"],
    "transform": ["load_transformed", "run_transform"],
    "precision_search": ["search", "SearchResult", "SearchConfigError", "check_search_config", "compare_with_uniform"],
    "plots": ["data_banner", "save_figure", "titled"],
    "executor": ["map_unordered", "ClusterUnavailableError"],
    "lab1": ["lab1_checkpoints", "lab1_settings"],  # the Lab-2 notebooks' shared set-up
    "stack": ["train_stacked"],  # issue 13: many runs per step
    "sweep": ["sweeps"],  # issue 13: several one-setting sweeps planned as one
}
_EXPORTS = {name: module for module, names in _EXPORTS_BY_MODULE.items() for name in names}
_SUBMODULES = ("cache", "cli", "config", "data", "exercises", "findings", "graph", "models", "notebooks", "passes",
               "paths", "plots", "progress", "quantize", "registry", "runtime", "sweep", "training", "transform",
               "widgets")
_SUBMODULES += ("executor", "precision_search")  # issue 11
_SUBMODULES += ("lab1",)
_SUBMODULES += ("settings", "lit", "checkpoints")
_SUBMODULES += ("stack", "prefix")  # issue 13

__all__ = list(_EXPORTS)
# No submodule shares a name with a function exported here (train lives in labkit.training, search in
# labkit.precision_search): importing a submodule sets the package attribute of its name, which would
# otherwise replace the function.


def __getattr__(name):
    """Import what ``name`` needs the first time it is asked for (PEP 562)."""
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name in _SUBMODULES:
        value = importlib.import_module(f".{name}", __name__)
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    setattr(sys.modules[__name__], name, value)  # later look-ups find it directly
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))

