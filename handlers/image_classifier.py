"""Image classification: image bytes in, `{label: probability}` for the top-k classes out."""
import io
import json
import logging
import os
import warnings

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from handlers import jpeg
from handlers.base import TskitHandler
from handlers.errors import BadInput, ConfigError
from handlers.explain import EXPLAIN_CONFIG, attribute, explain_valid, heatmap_png, resolve_targets
from handlers.loading import CompiledModel
from handlers.payload import request_bytes
from handlers.protocol import tensor_image

logger = logging.getLogger(__name__)

DECODERS = ("pillow", "turbojpeg")
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DRIFT_FEATURES = ["red_mean", "green_mean", "blue_mean", "red_std", "green_std", "blue_std"]


def channel_stats(batch: torch.Tensor, step: int = 4) -> torch.Tensor:
    """[N, 3, H, W] images -> [N, 6]: per-channel mean, then spread (the DRIFT_FEATURES), over every `step`th pixel
    each way (4: 1 ms per batch of eight 224x224 images instead of 17 for all pixels, on one core)."""
    var, mean = torch.var_mean(batch[:, :, ::step, ::step].float(), dim=(2, 3), correction=0)
    return torch.cat([mean, var.sqrt()], dim=1)


def decode_image(data: bytes, draft_size: int = 0) -> Image.Image:
    """Bytes to an upright RGB image; every client-side problem becomes a BadInput.

    `draft_size` lets the JPEG decoder scale down by 1/2, 1/4 or 1/8 while keeping both sides at least
    that large: far cheaper than decoding full size and resizing afterwards.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image = to_rgb(ImageOps.exif_transpose(image))
            image.load()
            return image
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadInput(f"image too large to decode: {err}", status=413, kind="ImageTooLarge") from None
    except UnidentifiedImageError:
        raise BadInput("payload is not an image in a format Pillow can read", status=415,
                       kind="UnsupportedMediaType") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise BadInput(f"image could not be decoded: {err}", kind="CorruptImage") from None


def upright_size(data: bytes) -> tuple[int, int]:
    """(width, height) of the image as decoded at full size and turned upright: JPEG draft mode decodes
    smaller, and answers in the original's pixels (boxes, masks) need its size."""
    with Image.open(io.BytesIO(data)) as image:
        width, height = image.size
        if image.getexif().get(0x0112) in (5, 6, 7, 8):  # EXIF orientations that swap the axes
            width, height = height, width
    return width, height


def request_image(request: dict, draft_size: int = 0) -> tuple[Image.Image, tuple[int, int]]:
    """The request's upright RGB image (a v2 input of pixels, else its bytes decoded, drafted to `draft_size`)
    and the original's (width, height)."""
    image = tensor_image(request)
    if image is not None:
        return image, image.size
    data = request_bytes(request)
    image = decode_image(data, draft_size)
    return image, upright_size(data) if draft_size else image.size


WIDE_GRAY_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale PNG/TIFF open as one of these


def to_rgb(image: Image.Image) -> Image.Image:
    """Any mode to 8-bit RGB. 16-bit grayscale is scaled down first (Pillow's own conversion clips it to
    white); palettes go through RGBA so a transparent palette entry keeps its colour."""
    if image.mode in WIDE_GRAY_MODES:
        image = Image.fromarray((np.asarray(image, dtype=np.float32) / 257.0).clip(0, 255).astype(np.uint8))
    if image.mode == "P":
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


LONG_SIDE = 16  # resized, an image whose longer side exceeds this many times `resize` has only its crop resized


def resize_center_crop(image: Image.Image, resize: int, crop: int) -> np.ndarray:
    """Shorter side to `resize`, then the central `crop` x `crop`: HxWx3 uint8.

    An image far longer than wide has only the crop's region resized (the same sampling, within a level or two
    of the pixels): a 1 x 60000 PNG is a few hundred bytes, and all of it at `resize` 256 would be 12 GB."""
    w, h = image.size
    scale = resize / min(w, h)
    nw, nh = max(crop, round(w * scale)), max(crop, round(h * scale))
    left, top = (nw - crop) // 2, (nh - crop) // 2
    if max(nw, nh) > LONG_SIDE * resize:
        sx, sy = w / nw, h / nh
        box = (left * sx, top * sy, (left + crop) * sx, (top + crop) * sy)
        return np.array(image.resize((crop, crop), Image.BILINEAR, box=box))
    image = image.resize((nw, nh), Image.BILINEAR)
    return np.array(image.crop((left, top, left + crop, top + crop)))  # a writable copy for torch


def read_labels(path: str) -> dict[int, str]:
    """index_to_name.json as {index: name}; accepts stock TorchServe's ["n01440764", "tench"] values."""
    with open(path) as f:
        raw = json.load(f)
    return {int(k): (v[-1] if isinstance(v, list) else str(v)) for k, v in raw.items()}


class ImageClassifier(TskitHandler):
    config_defaults = {
        "resize": 256,
        "crop": 224,
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "topk": 5,
        "fast_decode": True,  # JPEG draft mode (reduced-DCT decoding)
        "decoder": "pillow",  # or turbojpeg: simplejpeg + OpenCV's area resize of the crop (handlers/jpeg.py)
        "channels_last": True,
        **EXPLAIN_CONFIG,  # explain_method (integrated_gradients | saliency), explain_steps (time grows with it)
    }

    def setup(self, model_dir: str) -> None:
        cfg = self.config
        if cfg["crop"] > cfg["resize"]:
            raise ConfigError(f"handler config: crop ({cfg['crop']}) must not exceed resize ({cfg['resize']})")
        if len(cfg["mean"]) != 3 or len(cfg["std"]) != 3 or min(cfg["std"]) <= 0:
            raise ConfigError("handler config: mean and std need 3 values each, std > 0")
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1) * 255
        labels_path = os.path.join(model_dir, "index_to_name.json")
        self.labels = read_labels(labels_path) if os.path.exists(labels_path) else {}
        self.turbojpeg = self.use_turbojpeg()
        self.engine_normalises = self.check_pixel_engine()

    def check_pixel_engine(self) -> bool:
        """An engine that takes uint8 pixels (an optimized OpenVINO IR) normalises them with the mean and std it
        was built with: they must be the config's, or every answer would be off without an error."""
        if not (isinstance(self.model, CompiledModel) and self.model.takes_pixels):
            return False
        built = (self.model.pixel_mean, self.model.pixel_std)
        wanted = self.config["mean"] + self.config["std"]
        if built[0] is None or any(abs(a - b) > 1e-6 for a, b in zip(built[0] + built[1], wanted)):
            raise ConfigError(f"the model normalises pixels with mean {built[0]} and std {built[1]}, the handler "
                              f"config says {self.config['mean']} and {self.config['std']}: "
                              "rebuild with tskit optimize")
        return True

    def use_turbojpeg(self) -> bool:
        decoder = self.config["decoder"]
        if decoder not in DECODERS:
            raise ConfigError(f"handler config: decoder must be one of {DECODERS}, got {decoder!r}")
        if decoder != "turbojpeg":
            return False
        if not jpeg.available():
            logger.warning("decoder turbojpeg needs simplejpeg and opencv-python-headless; decoding with Pillow")
            return False
        jpeg.limit_threads(self.threads)
        return True

    def decode(self, request: dict) -> torch.Tensor:
        cfg = self.config
        image = tensor_image(request)  # a v2 input of pixels, else None
        if image is None and self.turbojpeg:
            pixels = jpeg.jpeg_centre_crop(request_bytes(request), cfg["resize"], cfg["crop"])
            if pixels is not None:
                return torch.from_numpy(pixels)
        if image is None:
            # draft to twice the target: the DCT-scaled decode then still gets an antialiased PIL resize, which
            # keeps top-1 agreement with full decoding (tskit accuracy); photos under 2x resize decode in full
            image = decode_image(request_bytes(request), 2 * cfg["resize"] if cfg["fast_decode"] else 0)
        return torch.from_numpy(resize_center_crop(image, cfg["resize"], cfg["crop"]))

    def normalised(self, items: list) -> torch.Tensor:
        """Decoded HxWx3 uint8 crops to a normalised fp32 NCHW batch on the device."""
        batch = self.to_device(torch.stack(items)).permute(0, 3, 1, 2).float()  # uint8 over the bus
        return (batch - self.mean) / self.std

    def collate(self, items: list) -> torch.Tensor:
        if self.engine_normalises:  # uint8 NHWC pixels: the engine's graph starts with the normalisation
            return torch.stack(items)
        return self.to_model_input(self.normalised(items))

    def respond(self, logits: torch.Tensor) -> list[dict]:
        probs = torch.softmax(logits.float(), dim=1)
        k = min(self.config["topk"], probs.shape[1])
        values, indices = probs.topk(k, dim=1)
        return [self.label_scores(v.tolist(), i.tolist()) for v, i in zip(values.cpu(), indices.cpu())]

    def label_scores(self, probs: list[float], indices: list[int]) -> dict[str, float]:
        out: dict[str, float] = {}
        for p, i in zip(probs, indices):
            name = self.labels.get(i, str(i))
            out[name if name not in out else f"{name} ({i})"] = p
        return out

    def explain_items(self, items: list, requests: list[dict]) -> list:
        """Attributions for decoded images: target = the requested class, else the top-1; HxW maps (absolute
        attributions summed over channels) and a heatmap."""
        method, steps = self.config["explain_method"], self.config["explain_steps"]
        model = self.explainer()
        batch = self.normalised(items)  # fp32 whatever the serving precision
        with torch.inference_mode():
            probs = torch.softmax(model(batch).float(), dim=1).cpu()

        def explain(ok: list[int], targets: list[int]) -> list[dict]:
            maps = attribute(model, batch[ok], targets, method, steps).abs().sum(dim=1).cpu().numpy()
            return [{"target": self.labels.get(t, str(t)), "target_index": t, "probability": float(probs[i, t]),
                     "method": method, "attributions": np.round(m, 6).tolist(),
                     "heatmap_png": heatmap_png(items[i].numpy(), m)}
                    for i, t, m in zip(ok, targets, maps)]

        return explain_valid(resolve_targets(requests, self.labels, probs), explain)

    def drift_features(self, batch: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Per-channel mean and spread of the normalised input (brightness, tint, contrast)."""
        if batch.dtype == torch.uint8:  # pixels for an engine that normalises: the same statistics, from them
            return DRIFT_FEATURES, channel_stats(self.normalised(list(batch[:, ::4, ::4])), step=1)
        return DRIFT_FEATURES, channel_stats(batch)

    def example_items(self, n: int) -> list:
        crop = self.config["crop"]
        return [torch.zeros(crop, crop, 3, dtype=torch.uint8) for _ in range(n)]
