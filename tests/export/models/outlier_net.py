"""A small CNN whose plain int8 fails the accuracy guard, as real models with outlier activations do.

One stem channel is a constant 1000 that the next convolution ignores (zero weights), so fp32 answers do not
depend on it; but it sets the range of that convolution's input, which int8 quantizes per tensor: a step of
about 4 where the informative channels hold values near 1, so plain int8 loses them. Keeping that one layer in
floating point restores the answers. Self-contained (torch only): it is the archive's model file.
"""
import torch
from torch import nn


class OutlierNet(nn.Module):
    def __init__(self, classes: int = 6, width: int = 16, features: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 5, stride=4, padding=2)
        self.conv = nn.Conv2d(width, features, 3, stride=2, padding=1)
        self.head = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        return torch.relu(self.conv(x)).mean(dim=(2, 3))
