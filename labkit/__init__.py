"""labkit: a lab workbook for the MASE deep-learning-systems labs on Jet Substructure Classification."""

from .models import MODELS, count_parameters, get_model, model_zoo, register_model
from .data import DatasetInfo, JSCData, JSCDataModule, load_dataset, register_dataset

__version__ = "0.1.0"
