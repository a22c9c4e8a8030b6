"""A model that takes as long as its input asks: each row's first feature is seconds to sleep in forward.

Bundled as the `--model-file` of the fault tests' archive (torch only, self-contained): a row asking for
an hour hangs its worker far past `responseTimeout`; rows asking for a second make an overload cheap to
reproduce on two cores. Rows with a first feature of 0 answer at once.
"""
import time

import torch
from torch import nn

FEATURES = 4


class SlowModel(nn.Module):
    def __init__(self, features: int = FEATURES, classes: int = 2):
        super().__init__()
        self.linear = nn.Linear(features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        delay = float(x[:, 0].max()) if x.numel() else 0.0
        if delay > 0:
            time.sleep(delay)
        return self.linear(x)
