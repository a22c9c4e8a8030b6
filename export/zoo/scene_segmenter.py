"""A semantic segmenter for the `image_segmenter` handler: EfficientNet-Lite0's ImageNet trunk (frozen) with a
small trainable feature-pyramid head.

The trunk is the detector's `LiteTrunk` (export/zoo/detection.py), read at three strides: 8 (40 channels),
16 (112) and 32 (1280). The head projects each to `HEAD_CHANNELS`, adds them top-down (each level upsampled
to the next finer one), mixes the stride-8 sum with a separable 3x3 convolution and classifies every cell;
the logits are upsampled bilinearly to the input's size. Like torchvision's segmentation models, the model takes a
normalised [N, 3, H, W] batch and returns `{"out": [N, classes, H, W] logits}`.

This file is also the archive's `--model-file`: it imports torch and the detector's module (which imports
torchvision and the Lite0 blocks of `efficientnet_lite0.py`); the archive ships both files beside it.
`SceneSegmenter` is its one top-level nn.Module, built with no arguments.
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

try:  # as export.zoo.scene_segmenter: training, tests
    from .detection import C4_BLOCK, CLASSES as OBJECT_CLASSES, LiteTrunk
except ImportError:  # as an archive's model file, which ships detection.py and efficientnet_lite0.py beside it
    from detection import C4_BLOCK, CLASSES as OBJECT_CLASSES, LiteTrunk

SEGMENT_CLASSES = ["background", *OBJECT_CLASSES]  # pixel value = index here
C3_BLOCK = 4  # the last block at stride 8
HEAD_CHANNELS = 64


class StridedTrunk(LiteTrunk):
    """The Lite0 trunk returning C3 (stride 8), C4 (stride 16) and C5 (stride 32). Same modules, same
    checkpoint names as `LiteTrunk`; only what the forward pass hands out differs."""

    def forward(self, x: torch.Tensor) -> OrderedDict:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = c3 = self._blocks[: C3_BLOCK + 1](x)
        x = c4 = self._blocks[C3_BLOCK + 1: C4_BLOCK + 1](x)
        x = self._blocks[C4_BLOCK + 1:](x)
        return OrderedDict(c3=c3, c4=c4, c5=F.relu6(self._bn1(self._conv_head(x))))


class PyramidHead(nn.Module):
    """Top-down sum of the three projected levels, a separable 3x3 mix, a 1x1 classifier: logits at stride 8."""

    def __init__(self, classes: int = len(SEGMENT_CLASSES), width: int = HEAD_CHANNELS):
        super().__init__()
        self.lateral = nn.ModuleDict({"c3": nn.Conv2d(40, width, 1), "c4": nn.Conv2d(112, width, 1),
                                      "c5": nn.Conv2d(1280, width, 1)})
        self.mix = nn.Sequential(  # depthwise 3x3 + pointwise: a fraction of a full 3x3's cost, and held-out
            nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False), nn.BatchNorm2d(width),  # scenes
            nn.ReLU(inplace=True), nn.Conv2d(width, width, 1), nn.ReLU(inplace=True))  # scored better with it
        self.classifier = nn.Conv2d(width, classes, 1)

    def forward(self, features: dict) -> torch.Tensor:
        x = self.lateral["c5"](features["c5"])
        for level in ("c4", "c3"):
            lateral = self.lateral[level](features[level])
            x = lateral + F.interpolate(x, size=lateral.shape[-2:], mode="bilinear", align_corners=False)
        return self.classifier(self.mix(x))


class SceneSegmenter(nn.Module):
    """Normalised [N, 3, H, W] in, {"out": [N, len(SEGMENT_CLASSES), H, W] logits} out."""

    def __init__(self):
        super().__init__()
        self.trunk = StridedTrunk()
        self.head = PyramidHead()

    def forward(self, x: torch.Tensor) -> dict:
        logits = self.head(self.trunk(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}
