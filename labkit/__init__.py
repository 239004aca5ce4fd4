"""labkit: a lab workbook for the MASE deep-learning-systems labs on Jet Substructure Classification.

Everything the notebooks and the lab report's snippets use is importable from here.
"""

from .models import MODELS, count_parameters, get_model, model_zoo, register_model
from .data import (
    CLASS_NAMES, DATASETS, FEATURE_NAMES, BatchIterator, DataUnavailableError, DatasetInfo, JSCData,
    JSCDataModule, choose_dataset, epoch_permutation, load_dataset, raw_frame, register_dataset,
)
from .train import LitClassifier, checkpoint_or_train, evaluate, load_model, test, train
from .graph import GraphTraceError, MaseGraph, deepcopy_mase_graph, get_node_actual_target
from .passes import *  # noqa: F401,F403  (every pass, MASE names)
from .passes import __all__ as _passes_all
from .quantize import (
    QUANTIZERS, BatchNorm1dInteger, Conv1dInteger, Conv2dInteger, LinearInteger, LinearMinifloat,
    Quantizer, ReLUInteger, compare_quantization, model_size_bits, plot_accuracy_vs_bits,
    quantize_module, quantized_class, register_quantizer,
)
from .transform import load_transformed, run_transform
from .plots import data_banner, save_figure, titled

__version__ = "0.1.0"
