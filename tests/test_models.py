"""The model zoo and its registry."""

import pytest
import torch
import torch.nn as nn

from labkit.models import MODELS, count_parameters, get_model, model_zoo, register_model
from labkit.data import DatasetInfo


def test_jsc_tiny_has_exactly_117_parameters():
    model = get_model("jsc-tiny")
    assert count_parameters(model) == 117
    assert [type(m).__name__ for m in model.seq_blocks] == ["BatchNorm1d", "ReLU", "Linear", "ReLU"]


def test_jsc_custom_has_about_1300_parameters():
    assert 1200 <= count_parameters(get_model("jsc-custom")) <= 1400


@pytest.mark.parametrize("name", sorted(MODELS.names()))
def test_every_model_maps_16_features_to_5_classes(name):
    model = get_model(name, DatasetInfo("jsc-synthetic")).eval()
    assert model(torch.randn(8, 16)).shape == (8, 5)


def test_info_can_be_a_dict_or_any_object_with_the_attributes():
    from types import SimpleNamespace
    for info in ({"num_features": 16, "num_classes": 5}, SimpleNamespace(num_features=16, num_classes=5)):
        assert get_model("jsc-custom", info)(torch.randn(4, 16)).shape == (4, 5)


def test_register_a_model_in_a_notebook_cell():
    @register_model("test-wide")
    class Wide(nn.Module):
        def __init__(self, info):
            super().__init__()
            self.fc = nn.Linear(info.num_features, info.num_classes)

        def forward(self, x):
            return self.fc(x)

    try:
        assert isinstance(get_model("test-wide"), Wide)
        assert "test-wide" in model_zoo().index
        assert model_zoo().loc["jsc-tiny", "parameters"] == 117
    finally:
        MODELS._entries.pop("test-wide")


def test_unknown_model_names_the_known_ones():
    with pytest.raises(ValueError) as e:
        get_model("jsc-tinyy")
    msg = str(e.value)
    assert "unknown model 'jsc-tinyy'" in msg and "jsc-custom" in msg and "Did you mean 'jsc-tiny'" in msg


def test_a_builder_must_return_a_module():
    register_model("test-bad")(lambda info: "not a module")
    try:
        with pytest.raises(TypeError, match="expected an nn.Module"):
            get_model("test-bad")
    finally:
        MODELS._entries.pop("test-bad")
