"""A small MLP classifier for tabular rows, standardising raw features itself.

Self-contained (torch only): it is the `--model-file` bundled into the tabular archive. The feature
means and standard deviations are buffers, so they travel in the state_dict and the served model takes
raw, unscaled features.
"""
import torch
from torch import nn

FEATURES = 30  # scikit-learn's breast cancer data set
CLASSES = 2
HIDDEN = 32


class TabularMLP(nn.Module):
    def __init__(self, features: int = FEATURES, classes: int = CLASSES, hidden: int = HIDDEN):
        super().__init__()
        self.register_buffer("mean", torch.zeros(features))
        self.register_buffer("std", torch.ones(features))
        self.net = nn.Sequential(
            nn.Linear(features, hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(hidden, classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)
