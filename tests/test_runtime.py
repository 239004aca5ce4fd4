"""labkit.runtime: eval_mode gives every submodule its own mode back, even after an error."""

import pytest
import torch.nn as nn

from labkit.runtime import eval_mode


def test_eval_mode_restores_each_submodules_own_mode():
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Dropout(0.5))
    model.train()
    model[1].eval()  # a BatchNorm frozen inside a training model
    with pytest.raises(RuntimeError, match="inside"):
        with eval_mode(model) as m:
            assert m is model
            assert not any(sub.training for sub in model.modules())
            raise RuntimeError("inside")
    assert [sub.training for sub in model.modules()] == [True, True, False, True]
