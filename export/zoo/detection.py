"""A real object detector for the `object_detector` handler, trained at build time in well under a minute.

The model is torchvision's FCOS on EfficientNet-Lite0's ImageNet-pretrained convolutional trunk (frozen),
with a small trainable FPN and head. It learns six objects cut from real photos that installed packages
ship (scikit-image's cat, coffee cup, rocket, astronaut, motorcycle and horse silhouette), pasted at random
positions and scales onto real textures and photos (grass, gravel, brick, the Hubble deep field, ...), so
every box is known exactly. Held-out scenes come from a different seed and two backgrounds training never
sees.

This file is also the archive's `--model-file`: everything above the "Build time" line needs only torch
and torchvision, and `SceneDetector` is its one top-level nn.Module (built with no arguments).
"""
from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

CLASSES = ["cat", "coffee", "rocket", "astronaut", "motorcycle", "horse"]
SCENE_SIZE = 256  # training scenes are square; the handler resizes the shorter side to this
MAX_SIZE = 448  # ... unless the longer side would exceed this
LITE0_MEAN, LITE0_STD = [127 / 255] * 3, [128 / 255] * 3  # EfficientNet-Lite was trained on (x - 127) / 128
FPN_CHANNELS = 64

# EfficientNet-Lite0's stages (repeats, kernel, stride, expand, in, out), as in efficientnet_lite0.py.
LITE0_STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
                (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
C4_BLOCK = 10  # last block at stride 16 (112 channels); the trunk ends at stride 32 (320 channels)


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow's SAME padding (the Lite0 checkpoint was ported from TensorFlow)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ih, iw = x.shape[-2:]
        (kh, kw), (sh, sw) = self.weight.shape[-2:], self.stride
        pad_h = max((ih + sh - 1) // sh * sh - sh + kh - ih, 0)
        pad_w = max((iw + sw - 1) // sw * sw - sw + kw - iw, 0)
        if pad_h or pad_w:
            x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Lite0's inverted residual block; module names match the checkpoint."""

    def __init__(self, kernel: int, stride: int, expand: int, cin: int, cout: int):
        super().__init__()
        mid = cin * expand
        self.has_expand = expand != 1
        if self.has_expand:
            self._expand_conv = SameConv2d(cin, mid, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(mid, eps=1e-3)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride=stride, groups=mid, bias=False)
        self._bn1 = nn.BatchNorm2d(mid, eps=1e-3)
        self._project_conv = SameConv2d(mid, cout, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(cout, eps=1e-3)
        self.skip = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self._bn0(self._expand_conv(x))) if self.has_expand else x
        y = self._bn2(self._project_conv(F.relu6(self._bn1(self._depthwise_conv(y)))))
        return y + x if self.skip else y


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0 without its classifier: returns the stride-16 and stride-32 feature maps."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.Sequential(*[
            MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout)
            for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES for i in range(repeats)
        ])

    def forward(self, x: torch.Tensor) -> OrderedDict:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = c4 = self._blocks[: C4_BLOCK + 1](x)
        return OrderedDict(c4=c4, c5=self._blocks[C4_BLOCK + 1:](x))


class LiteFPN(nn.Module):
    """Trunk + feature pyramid (P4, P5 and a max-pooled P6): what FCOS calls the backbone."""

    out_channels = FPN_CHANNELS

    def __init__(self):
        super().__init__()
        self.trunk = LiteTrunk()
        self.fpn = FeaturePyramidNetwork([112, 320], FPN_CHANNELS, extra_blocks=LastLevelMaxPool())

    def forward(self, x: torch.Tensor) -> OrderedDict:
        return self.fpn(self.trunk(x))


class SceneDetector(FCOS):
    """FCOS over LiteFPN; labels are indices into CLASSES. Takes a list of CHW float images in 0..1."""

    def __init__(self):
        super().__init__(
            LiteFPN(), num_classes=len(CLASSES), min_size=SCENE_SIZE, max_size=MAX_SIZE,
            image_mean=LITE0_MEAN, image_std=LITE0_STD,
            anchor_generator=AnchorGenerator(((16,), (32,), (64,)), ((1.0,),) * 3),
            head=FCOSHead(FPN_CHANNELS, 1, len(CLASSES), num_convs=1),
            score_thresh=0.2, detections_per_img=50,
        )


# ---- Build time: scenes, training, archive (imports beyond torch stay inside the functions) -----------
# Objects: source photo -> the object's region in it, as fractions (x1, y1, x2, y2); None = the alpha mask.
OBJECTS = {
    "cat": ("chelsea.png", (0.0, 0.0, 1.0, 1.0)),
    "coffee": ("coffee.png", (0.12, 0.04, 0.80, 0.97)),
    "rocket": ("rocket.jpg", (0.45, 0.28, 0.56, 0.97)),
    "astronaut": ("astronaut.png", (0.02, 0.03, 0.75, 1.0)),
    "motorcycle": ("motorcycle_left.png", (0.12, 0.15, 0.93, 0.92)),
    "horse": ("horse.png", None),
}
TRAIN_BACKGROUNDS = ("grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
                     "text.png", "cell.png")
HELDOUT_BACKGROUNDS = ("coins.png", "retina.jpg")  # never seen in training
TRAIN_SEED, HELDOUT_SEED = 0, 1


def skimage_data_dir():
    """scikit-image's data folder, found without importing scikit-image."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed: its photos are the detector's training data")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_sources():
    """{class: RGBA object crop} and {background name: RGB image}, from the real photos."""
    from PIL import Image

    data = skimage_data_dir()
    objects = {}
    for name, (file, region) in OBJECTS.items():
        image = Image.open(data / file)
        if region is None:  # a silhouette: its alpha channel is the mask, its box the mask's extent
            image = image.convert("RGBA")
            objects[name] = image.crop(image.getchannel("A").point(lambda a: 255 if a > 127 else 0).getbbox())
        else:
            w, h = image.size
            x1, y1, x2, y2 = region
            objects[name] = image.convert("RGB").crop((round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)))
    backgrounds = {name: Image.open(data / name).convert("RGB")
                   for name in TRAIN_BACKGROUNDS + HELDOUT_BACKGROUNDS}
    return objects, backgrounds


_SOURCES = None


def sources():
    global _SOURCES
    if _SOURCES is None:
        _SOURCES = _load_sources()
    return _SOURCES


def _background(rng, image, size: int):
    """A random crop of `image`, resized to size x size, tinted and brightened at random."""
    import numpy as np
    from PIL import Image

    w, h = image.size
    side = int(rng.uniform(0.4, 1.0) * min(w, h))
    x, y = rng.integers(0, w - side + 1), rng.integers(0, h - side + 1)
    crop = np.asarray(image.crop((x, y, x + side, y + side)).resize((size, size), Image.BILINEAR), np.float32)
    crop = crop * rng.uniform(0.6, 1.2, size=3) + rng.uniform(-20, 20)
    return Image.fromarray(crop.clip(0, 255).astype(np.uint8))


def _overlap(box, boxes) -> bool:
    """True when `box` would hide more than a quarter of an earlier box (or an earlier box hides it)."""
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw > 0 and ih > 0:
            inter = iw * ih
            smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
            if inter > 0.25 * smaller:
                return True
    return False


def make_scene(rng, backgrounds: tuple, size: int = SCENE_SIZE):
    """One scene: (RGB PIL image, boxes [[x1, y1, x2, y2]] in pixels, labels [class index])."""
    import numpy as np
    from PIL import Image, ImageOps

    objects, images = sources()
    scene = _background(rng, images[backgrounds[rng.integers(len(backgrounds))]], size)
    boxes, labels = [], []
    for _ in range(rng.integers(1, 4)):
        label = int(rng.integers(len(CLASSES)))
        obj = objects[CLASSES[label]]
        w, h = obj.size
        # a slightly different crop, scale, aspect, mirror and exposure every time
        dx1, dx2, dy1, dy2 = rng.uniform(0, 0.06, size=4)
        obj = obj.crop((round(dx1 * w), round(dy1 * h), round(w - dx2 * w), round(h - dy2 * h)))
        longest = size * np.exp(rng.uniform(np.log(0.18), np.log(0.9)))
        aspect = obj.size[0] / obj.size[1] * np.exp(rng.uniform(-0.2, 0.2))
        ow, oh = (longest, longest / aspect) if aspect >= 1 else (longest * aspect, longest)
        ow, oh = max(8, min(size, round(ow))), max(8, min(size, round(oh)))
        obj = obj.resize((ow, oh), Image.BILINEAR)
        if rng.random() < 0.5:
            obj = ImageOps.mirror(obj)
        for _ in range(20):
            x, y = int(rng.integers(0, size - ow + 1)), int(rng.integers(0, size - oh + 1))
            box = [x, y, x + ow, y + oh]
            if not _overlap(box, boxes):
                break
        else:
            continue
        if obj.mode == "RGBA":  # a silhouette takes a random dark colour
            colour = tuple(int(c) for c in rng.integers(0, 90, size=3))
            scene.paste(Image.new("RGB", obj.size, colour), (x, y), obj.getchannel("A"))
        else:
            gain = rng.uniform(0.75, 1.25)
            scene.paste(obj.point(lambda v: min(255, int(v * gain))), (x, y))
        boxes.append(box)
        labels.append(label)
    return scene, boxes, labels


def make_scenes(n: int, seed: int, backgrounds: tuple) -> list:
    import numpy as np

    rng = np.random.default_rng(seed)
    return [make_scene(rng, backgrounds) for _ in range(n)]


def heldout_scenes(n: int = 40) -> list:
    """Scenes the detector never trains on: another seed, and backgrounds training never sees."""
    return make_scenes(n, HELDOUT_SEED, HELDOUT_BACKGROUNDS)
