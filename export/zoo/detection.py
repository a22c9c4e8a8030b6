"""A real object detector for the `object_detector` handler, trained at build time (about 20-25 s on 2 cores).

The model is torchvision's FCOS on EfficientNet-Lite0's ImageNet-pretrained convolutional trunk (frozen),
with a small trainable FPN and head. It learns six objects cut from real photos that installed packages
ship (scikit-image's cat, coffee cup, rocket, astronaut, motorcycle and horse silhouette), pasted at random
positions and scales onto real textures and photos (grass, gravel, brick, the Hubble deep field, ...), so
every box is known exactly. Held-out scenes come from a different seed and two backgrounds training never
sees (the objects are the same six photos, in new crops, sizes, tints and places). The trunk's features for
the training scenes are computed once; only the FPN and head train, for 10 epochs over 256 scenes.

This file is also the archive's `--model-file`: it imports only torch, torchvision and what they depend on
(numpy, Pillow) at the top, plus the Lite0 blocks from `efficientnet_lite0.py`, which the archive ships beside
it; `SceneDetector` is its one top-level nn.Module (built with no arguments).
"""
import functools
import importlib.util
import io
import json
import logging
import time
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import nn
from torch.nn import functional as F
from torchvision.models.detection import FCOS
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

try:  # as export.zoo.detection: training, tests
    from .efficientnet_lite0 import STAGES as LITE0_STAGES, MBConv, SameConv2d
except ImportError:  # as an archive's model file, which ships efficientnet_lite0.py beside it
    from efficientnet_lite0 import STAGES as LITE0_STAGES, MBConv, SameConv2d

logger = logging.getLogger(__name__)
LITE0_FILE = Path(__file__).resolve().with_name("efficientnet_lite0.py")  # the blocks' source, for the archive

CLASSES = ["cat", "coffee", "rocket", "astronaut", "motorcycle", "horse"]
SCENE_SIZE = 256  # training scenes are square; the handler resizes the shorter side to this
MAX_SIZE = 448  # ... unless the longer side would exceed this
LITE0_MEAN, LITE0_STD = [127 / 255] * 3, [128 / 255] * 3  # EfficientNet-Lite was trained on (x - 127) / 128
FPN_CHANNELS = 64

C4_BLOCK = 10  # the last block at stride 16


class LiteTrunk(nn.Module):
    """EfficientNet-Lite0 up to its last 1x1 conv (no pooling, no classifier): returns C4 (stride 16,
    112 channels) and C5 (stride 32, 1280 channels). Module names match the ImageNet checkpoint."""

    def __init__(self):
        super().__init__()
        self._conv_stem = SameConv2d(3, 32, 3, stride=2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, eps=1e-3)
        self._blocks = nn.Sequential(*[
            MBConv(kernel, stride if i == 0 else 1, expand, cin if i == 0 else cout, cout)
            for repeats, kernel, stride, expand, cin, cout in LITE0_STAGES for i in range(repeats)
        ])
        self._conv_head = SameConv2d(320, 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, eps=1e-3)

    def forward(self, x: torch.Tensor) -> OrderedDict:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = c4 = self._blocks[: C4_BLOCK + 1](x)
        x = self._blocks[C4_BLOCK + 1:](x)
        return OrderedDict(c4=c4, c5=F.relu6(self._bn1(self._conv_head(x))))


class LiteFPN(nn.Module):
    """Trunk + feature pyramid (P4, P5 and a max-pooled P6): what FCOS calls the backbone."""

    out_channels = FPN_CHANNELS

    def __init__(self):
        super().__init__()
        self.trunk = LiteTrunk()
        self.fpn = FeaturePyramidNetwork([112, 1280], FPN_CHANNELS, extra_blocks=LastLevelMaxPool())

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
            score_thresh=0.2, nms_thresh=0.5, detections_per_img=50,
        )


# ---- Build time: scenes, training, archive (the project's own imports stay inside the functions) --------
# Objects: source photo -> the object's region in it, as fractions (x1, y1, x2, y2); None = a silhouette
# (its dark pixels are the object).
OBJECTS = {
    "cat": ("chelsea.png", (0.0, 0.0, 1.0, 1.0)),
    "coffee": ("coffee.png", (0.12, 0.04, 0.80, 0.97)),
    "rocket": ("rocket.jpg", (0.38, 0.22, 0.62, 0.98)),  # the rocket on its pad
    "astronaut": ("astronaut.png", (0.02, 0.03, 0.75, 1.0)),
    "motorcycle": ("motorcycle_left.png", (0.12, 0.15, 0.93, 0.92)),
    "horse": ("horse.png", None),
}
TRAIN_BACKGROUNDS = ("grass.png", "gravel.png", "brick.png", "hubble_deep_field.jpg", "ihc.png", "moon.png",
                     "text.png", "cell.png")
HELDOUT_BACKGROUNDS = ("coins.png", "retina.jpg")  # never seen in training
TRAIN_SEED, HELDOUT_SEED = 0, 1
TRAIN_SCENES = 256  # train_detector's scenes (TRAIN_SEED), also the drift reference


def skimage_data_dir() -> Path:
    """scikit-image's data folder, found without importing scikit-image."""
    spec = importlib.util.find_spec("skimage")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("scikit-image is not installed: its photos are the detector's training data")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def _load_sources() -> tuple[dict, dict]:
    """{class: object crop (RGBA for the silhouette)} and {background name: RGB image}, from the photos."""
    data = skimage_data_dir()
    objects = {}
    for name, (file, region) in OBJECTS.items():
        image = Image.open(data / file)
        if region is None:  # a silhouette: the dark pixels are the mask, the mask's extent is the box
            mask = image.convert("L").point(lambda v: 255 if v < 128 else 0)
            image = image.convert("RGBA")
            image.putalpha(mask)
            objects[name] = image.crop(mask.getbbox())
        else:
            w, h = image.size
            x1, y1, x2, y2 = region
            objects[name] = image.convert("RGB").crop((round(x1 * w), round(y1 * h), round(x2 * w), round(y2 * h)))
    backgrounds = {name: Image.open(data / name).convert("RGB")
                   for name in TRAIN_BACKGROUNDS + HELDOUT_BACKGROUNDS}
    return objects, backgrounds


@functools.lru_cache(maxsize=1)
def sources():
    return _load_sources()


def _background(rng, image, size: int):
    """A random crop of `image`, resized to size x size, tinted and brightened at random."""
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


def make_scene(rng, backgrounds: tuple, size: int = SCENE_SIZE, with_mask: bool = False):
    """One scene: (RGB PIL image, boxes [[x1, y1, x2, y2]] in pixels, labels [class index]).

    With `with_mask`, also its [size, size] uint8 class mask (0 = background, else class index + 1: a photo
    crop covers its rectangle, the silhouette its opaque pixels, a later paste covers earlier ones). The mask
    draws nothing from `rng`: the scene, boxes and labels are the same either way."""
    objects, images = sources()
    scene = _background(rng, images[backgrounds[rng.integers(len(backgrounds))]], size)
    boxes, labels = [], []
    mask = np.zeros((size, size), np.uint8) if with_mask else None
    for _ in range(rng.integers(1, 5)):
        label = int(rng.integers(len(CLASSES)))
        obj = objects[CLASSES[label]]
        w, h = obj.size
        # a slightly different crop, scale, aspect, mirror and exposure every time
        dx1, dx2, dy1, dy2 = rng.uniform(0, 0.06, size=4)
        obj = obj.crop((round(dx1 * w), round(dy1 * h), round(w - dx2 * w), round(h - dy2 * h)))
        longest = size * np.exp(rng.uniform(np.log(0.2), np.log(1.0)))
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
            if mask is not None:  # pixels at least half covered by the silhouette
                mask[y:y + oh, x:x + ow][np.asarray(obj.getchannel("A")) >= 128] = label + 1
        else:
            gain = rng.uniform(0.75, 1.25)
            scene.paste(obj.point(lambda v: min(255, int(v * gain))), (x, y))
            if mask is not None:
                mask[y:y + oh, x:x + ow] = label + 1
        boxes.append(box)
        labels.append(label)
    return (scene, boxes, labels, mask) if with_mask else (scene, boxes, labels)


def make_scenes(n: int, seed: int, backgrounds: tuple, with_mask: bool = False) -> list:
    rng = np.random.default_rng(seed)
    return [make_scene(rng, backgrounds, with_mask=with_mask) for _ in range(n)]


def heldout_scenes(n: int = 40) -> list:
    """Scenes the detector never trains on: another seed, and backgrounds training never sees."""
    return make_scenes(n, HELDOUT_SEED, HELDOUT_BACKGROUNDS)


def scene_tensor(image) -> torch.Tensor:
    """PIL RGB -> CHW float in 0..1 (what the handler feeds the model)."""
    return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1).float().div(255)


def pretrained_detector() -> SceneDetector:
    """A SceneDetector whose trunk holds EfficientNet-Lite0's ImageNet weights (the FPN and head are new)."""
    from export.zoo import efficientnet_lite0_weights

    model = SceneDetector()
    state = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    trunk_state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    model.backbone.trunk.load_state_dict(trunk_state, strict=True)
    return model


def trunk_features(model: SceneDetector, scenes: list, chunk: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen trunk's (C4, C5) for every scene, computed once: training then only runs FPN and head."""
    trunk = model.backbone.trunk.eval().to(memory_format=torch.channels_last)
    c4s, c5s = [], []
    with torch.inference_mode():
        for i in range(0, len(scenes), chunk):
            images = torch.stack([scene_tensor(image) for image, _, _ in scenes[i:i + chunk]])
            images = model.transform.normalize(images).contiguous(memory_format=torch.channels_last)
            features = trunk(images)
            c4s.append(features["c4"].contiguous())
            c5s.append(features["c5"].contiguous())
    trunk.to(memory_format=torch.contiguous_format)
    return torch.cat(c4s), torch.cat(c5s)


def train_detector(n_scenes: int = TRAIN_SCENES, epochs: int = 10, batch: int = 16, seed: int = TRAIN_SEED,
                   log=logger.info) -> SceneDetector:
    """Train FPN + head on cached trunk features of `n_scenes` generated scenes; returns the model in eval mode."""
    start = time.perf_counter()
    torch.manual_seed(seed)
    model = pretrained_detector()
    scenes = make_scenes(n_scenes, seed, TRAIN_BACKGROUNDS)
    c4, c5 = trunk_features(model, scenes)
    targets = [{"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)}
               for _, boxes, labels in scenes]
    log(f"detector: {n_scenes} scenes and their trunk features in {time.perf_counter() - start:.1f}s")

    for p in model.backbone.trunk.parameters():
        p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    steps = epochs * ((n_scenes + batch - 1) // batch)
    optimizer = torch.optim.AdamW(params, lr=3e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    generator = torch.Generator().manual_seed(seed)
    model.backbone.fpn.train()
    model.head.train()
    for epoch in range(epochs):
        total = 0.0
        for idx in torch.randperm(n_scenes, generator=generator).split(batch):
            features = list(model.backbone.fpn(OrderedDict(c4=c4[idx], c5=c5[idx])).values())
            size = (SCENE_SIZE, SCENE_SIZE)
            anchors = model.anchor_generator(ImageList(torch.empty(len(idx), 3, *size), [size] * len(idx)), features)
            losses = model.compute_loss([targets[i] for i in idx], model.head(features), anchors,
                                        [f.shape[2] * f.shape[3] for f in features])
            loss = sum(losses.values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(idx)
        log(f"detector: epoch {epoch + 1}/{epochs} loss {total / n_scenes:.3f} ({time.perf_counter() - start:.1f}s)")
    return model.eval()


def box_iou(a, b) -> float:
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def detection_quality(answers: list[list[dict]], scenes: list, iou: float = 0.5) -> dict:
    """Recall and precision at `iou` of handler-style answers ({label, score, box}) against the scenes' truth.

    A true positive is a detection with the object's label and IoU >= `iou`, each object matched at most once.
    """
    found = objects = false = 0
    for detections, (_, boxes, labels) in zip(answers, scenes):
        unmatched = list(zip(boxes, (CLASSES[i] for i in labels)))
        objects += len(unmatched)
        for det in detections:  # highest score first
            hit = next((t for t in unmatched if t[1] == det["label"] and box_iou(t[0], det["box"]) >= iou), None)
            if hit is None:
                false += 1
            else:
                unmatched.remove(hit)
                found += 1
    detected = found + false
    return {"objects": objects, "found": found, "false": false,
            "recall": found / max(objects, 1), "precision": found / max(detected, 1)}


def model_answers(model: SceneDetector, scenes: list, threshold: float = 0.5) -> list[list[dict]]:
    """The model's detections on scenes, shaped like the handler's answers (for build-time reports)."""
    with torch.inference_mode():
        outputs = model([scene_tensor(image) for image, _, _ in scenes])
    return [[{"label": CLASSES[int(l)], "score": float(s), "box": b.tolist()}
             for b, l, s in zip(o["boxes"], o["labels"], o["scores"]) if s >= threshold] for o in outputs]


# ---- The archive --------------------------------------------------------------------------------------
DETECTOR_NAME = "scene_detector"
DETECTOR_CONFIG = {
    "minWorkers": 1, "maxWorkers": 1, "batchSize": 4, "maxBatchDelay": 10, "responseTimeout": 120,
    "handler": {"min_size": SCENE_SIZE, "max_size": MAX_SIZE, "score_threshold": 0.5, "max_detections": 20},
}


@functools.lru_cache(maxsize=1)
def trained_state() -> dict:
    """The trained detector's state_dict; trained once per process (about 20 s on 2 cores)."""
    return train_detector().state_dict()


def write_detector_files(work_dir: str | Path) -> dict[str, str]:
    """What `tskit build` takes, written into `work_dir`: weights, labels and model-config.yaml."""
    import yaml

    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    files = {"serialized_file": work_dir / f"{DETECTOR_NAME}.pt", "labels": work_dir / "index_to_name.json",
             "config": work_dir / "model-config.yaml"}
    torch.save(trained_state(), files["serialized_file"])
    files["labels"].write_text(json.dumps({str(i): name for i, name in enumerate(CLASSES)}))
    files["config"].write_text(yaml.safe_dump(DETECTOR_CONFIG, sort_keys=False))
    return {"model_file": str(Path(__file__).resolve()), "extra_files": str(LITE0_FILE),
            **{k: str(v) for k, v in files.items()}}


def reference_scenes(n: int = TRAIN_SCENES) -> list:
    """The drift reference: the training scenes (the first `n` of them)."""
    return make_scenes(n, TRAIN_SEED, TRAIN_BACKGROUNDS)


def scene_png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def scene_inputs(scenes: list, prefix: str) -> list:
    """Scenes as PNG request bodies, for golden cases and drift references."""
    from export.golden import GoldenInput

    return [GoldenInput(f"{prefix}-{i}.png", scene_png(image), "image/png") for i, (image, *_) in enumerate(scenes)]


def detector_spec(export_path: str | Path, work_dir: str | Path):
    from export.archive import ArchiveSpec

    files = write_detector_files(work_dir)
    return ArchiveSpec(name=DETECTOR_NAME, handler="object_detector", serialized_file=files["serialized_file"],
                       model_file=files["model_file"], labels=files["labels"], config=dict(DETECTOR_CONFIG),
                       export_path=str(export_path), golden_inputs=scene_inputs(heldout_scenes(3), "scene"),
                       reference_inputs=scene_inputs(reference_scenes(), "reference"),
                       extra_files=[files["extra_files"]])


def build_detector_archive(export_path: str | Path, work_dir: str | Path) -> Path:
    """Train the detector (once per process) and write `{export_path}/scene_detector.mar`."""
    from export.archive import build_archive

    return build_archive(detector_spec(export_path, work_dir))


if __name__ == "__main__":  # python -m export.zoo.detection: train, report held-out quality, build the archive
    import sys
    import tempfile

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = SceneDetector()
    model.load_state_dict(trained_state())
    scenes = heldout_scenes(100)
    print("held-out scenes (model, score >= 0.5):", detection_quality(model_answers(model.eval(), scenes), scenes))
    with tempfile.TemporaryDirectory() as tmp:
        print(build_detector_archive(sys.argv[1] if len(sys.argv) > 1 else "model_store", tmp))
