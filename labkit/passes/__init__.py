"""Graph passes, MASE-style: plain functions ``pass_name(graph, pass_args) -> (graph, info)``.

Analysis passes read the graph and attach metadata or return reports (pandas DataFrames in
``info``); transform passes return a new graph.
"""

from .flops import analyse_flops_pass, format_flops_table
from .flop_calculators import register_flop_calculator
from .metadata import (
    MaseMetadata,
    add_common_metadata_analysis_pass,
    add_software_metadata_analysis_pass,
    init_metadata_analysis_pass,
)
from .profile import profile_statistics_analysis_pass
from .quantize import (
    auto_frac_width_pass,
    auto_quantize_config,
    quantize_transform_pass,
    summarize_quantization_analysis_pass,
)
from .interface import load_node_meta_param_interface_pass, save_node_meta_param_interface_pass
from .report import (
    calculate_avg_bits_mg_analysis_pass,
    report_graph_analysis_pass,
    report_node_meta_param_analysis_pass,
    report_node_shape_analysis_pass,
    report_node_type_analysis_pass,
)
from .utils import get_mase_op, get_mase_type
from .verify import verify_metadata_analysis_pass

__all__ = [
    "MaseMetadata", "init_metadata_analysis_pass", "add_common_metadata_analysis_pass",
    "add_software_metadata_analysis_pass", "profile_statistics_analysis_pass",
    "report_graph_analysis_pass", "report_node_meta_param_analysis_pass",
    "report_node_type_analysis_pass", "report_node_shape_analysis_pass",
    "quantize_transform_pass", "summarize_quantization_analysis_pass", "auto_frac_width_pass",
    "auto_quantize_config", "analyse_flops_pass", "format_flops_table", "register_flop_calculator",
    # MASE's interface/verify/bits passes that the lab notebooks use
    "verify_metadata_analysis_pass", "calculate_avg_bits_mg_analysis_pass",
    "save_node_meta_param_interface_pass", "load_node_meta_param_interface_pass",
    # MASE's accessors for a node's op and type (chop.passes.graph.utils)
    "get_mase_op", "get_mase_type",
]
