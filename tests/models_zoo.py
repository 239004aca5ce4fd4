"""Small models beyond the labs' MLPs, shared by the graph, quantisation and FLOPs tests.

Every model takes a JSC-shaped batch ``[B, 16]`` so the same dummy input works for all;
the conv models reshape it to ``[B, 1, 16]`` or ``[B, 1, 4, 4]`` first.

    from models_zoo import EXTRA_MODELS, dummy_input
    for name, build in EXTRA_MODELS.items():
        model = build()
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

IN_FEATURES, NUM_CLASSES = 16, 5


def dummy_input(batch: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, IN_FEATURES, generator=torch.Generator().manual_seed(seed))


class FunctionalMLP(nn.Module):
    """Activations and flatten as free functions: ``F.relu``, ``torch.flatten`` (call_function)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, 8)
        self.fc2 = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = torch.flatten(x, 1)
        return self.fc2(F.relu(self.fc1(x)))


class ResidualMLP(nn.Module):
    """A skip connection: ``x + block(x)`` (an ``operator.add`` call_function)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, IN_FEATURES)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x):
        h = x + self.act(self.fc1(x))
        return self.fc2(h)


class MethodMLP(nn.Module):
    """Tensor methods: ``x.view(...)``, ``x.relu()`` (call_method)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, 8)
        self.fc2 = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = x.view(-1, IN_FEATURES)
        return self.fc2(self.fc1(x).relu())


class ScaledMLP(nn.Module):
    """A bare ``nn.Parameter`` read with get_attr, used by ``torch.matmul`` and ``*``."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Parameter(torch.randn(IN_FEATURES, 8) * 0.1)
        self.scale = nn.Parameter(torch.ones(8))
        self.head = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        h = torch.matmul(x, self.proj) * self.scale
        return self.head(h)


class Conv1dNet(nn.Module):
    """Conv1d + MaxPool1d over the 16 features as a 1-channel sequence."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(1, 4, kernel_size=3, padding=1)
        self.bn = nn.BatchNorm1d(4)
        self.relu = nn.ReLU()
        self.pool = nn.MaxPool1d(2)
        self.fc = nn.Linear(4 * 8, NUM_CLASSES)

    def forward(self, x):
        x = x.unsqueeze(1)                       # [B, 1, 16]
        x = self.pool(self.relu(self.bn(self.conv(x))))  # [B, 4, 8]
        return self.fc(x.flatten(1))


class Conv2dNet(nn.Module):
    """Conv2d + BatchNorm2d + MaxPool2d + AdaptiveAvgPool2d on the features as a 4x4 image."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, kernel_size=3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 8, kernel_size=1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, NUM_CLASSES)

    def forward(self, x):
        x = x.view(x.size(0), 1, 4, 4)           # [B, 1, 4, 4]
        x = self.pool(F.relu(self.bn1(self.conv1(x))))  # [B, 4, 2, 2]
        x = self.gap(self.conv2(x))              # [B, 8, 1, 1]
        return self.fc(torch.flatten(x, 1))


class BranchyMLP(nn.Module):
    """NOT traceable: an ``if`` on a tensor value (data-dependent control flow)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(IN_FEATURES, NUM_CLASSES)

    def forward(self, x):
        if x.sum() > 0:
            return self.fc(x)
        return -self.fc(x)


EXTRA_MODELS = {
    "functional": FunctionalMLP,
    "residual": ResidualMLP,
    "method": MethodMLP,
    "get_attr": ScaledMLP,
    "conv1d": Conv1dNet,
    "conv2d": Conv2dNet,
}
