"""A stand-in object detector: torchvision's FCOS over a two-level convolutional backbone, 3 classes. Takes a list
of CHW float images in 0..1, returns one {boxes, labels, scores} per image, as torchvision's detectors do."""
from collections import OrderedDict

import torch
from torch import nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead

CLASSES = 3
CHANNELS = 32  # FCOSHead normalises with GroupNorm(32 groups)


class TinyBackbone(nn.Module):
    out_channels = CHANNELS

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, CHANNELS, 3, stride=8, padding=1), nn.ReLU())
        self.down = nn.Sequential(nn.Conv2d(CHANNELS, CHANNELS, 3, stride=2, padding=1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> OrderedDict:
        p3 = self.stem(x)
        return OrderedDict(p3=p3, p4=self.down(p3))


class TinyFCOS(FCOS):
    def __init__(self):
        super().__init__(TinyBackbone(), num_classes=CLASSES, min_size=128, max_size=256,
                         anchor_generator=AnchorGenerator(((32,), (64,)), ((1.0,),) * 2),
                         head=FCOSHead(CHANNELS, 1, CLASSES, num_convs=1), score_thresh=0.05, detections_per_img=20)
