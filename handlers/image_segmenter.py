"""Semantic segmentation: image bytes in, a class-index mask of the original (upright) image out.

Answer per request:

    {"mask_png": "<base64 PNG: pixel value = class index>",
     "width": W, "height": H,                  # the original image's upright size, which the mask has
     "classes": {label: share of pixels},      # every class present in the mask, largest share first
     "labels": [label of class 0, 1, ...]}     # what each pixel value means

The PNG is mode P (a palette, so it also shows in a viewer) for up to 256 classes, 16-bit grayscale beyond;
`numpy.asarray(PIL.Image.open(...))` gives the class ids either way.

Made for torchvision-style segmentation models: a normalised [N, 3, H, W] batch in, [N, C, h, w] logits or
`{"out": logits}` (torchvision's segmentation models) out. Every image is resized to `size` x `size`: one
tensor for a batch of any images, and an answer that never depends on its batch neighbours (the aspect
ratio is not kept; the mask is mapped back to the original's). Logits at a lower resolution are upsampled
bilinearly to `size`, the class of each pixel is the argmax there, and the class mask is scaled to the
original size by nearest neighbour. `collate` keeps each item's original size for `respond`.

Explanations: for each request, the `target` class (a label or an index), else the largest class other than
`background` present in the prediction. Attributions (Integrated Gradients or saliency, `explain_method`)
of the target's mean logit over the pixels predicted as the target (over the whole image if there are none)
to the input pixels: absolute, summed over channels, averaged over cells of `explain_cell` pixels, with a
heatmap and `mass_in_target`, the share of the attribution that falls on the target's predicted pixels.

Drift: per image, the per-channel mean and spread of the normalised input (as the image classifier), and of
the answer each class's share of the pixels (`share_<label>`).
"""
import base64
import io
import os
from collections.abc import Mapping

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F

from handlers.base import TskitHandler
from handlers.errors import ConfigError
from handlers.explain import EXPLAIN_CONFIG, attribute, checked_targets, explain_valid, heatmap_png
from handlers.image_classifier import (
    DRIFT_FEATURES, IMAGENET_MEAN, IMAGENET_STD, channel_stats, read_labels, request_image,
)

MAX_SIZE = 4096  # the largest square side `size` may ask for
PALETTE_CLASSES = 256  # up to this many classes the mask is a palette PNG, beyond it 16-bit grayscale


def segment_logits(outputs) -> torch.Tensor:
    """The [N, C, h, w] logits of a segmentation model's output: the tensor itself, or torchvision's
    `{"out": logits}` (its `aux` head, if any, is ignored)."""
    if isinstance(outputs, Mapping):
        outputs = outputs.get("out")
    if not isinstance(outputs, torch.Tensor) or outputs.dim() != 4:
        raise TypeError("a segmentation model must return [N, classes, H, W] logits or {'out': logits}, got "
                        f"{type(outputs).__name__} {list(getattr(outputs, 'shape', []))}")
    return outputs


def class_palette() -> list[int]:
    """256 distinct RGB colours, background (0) black: each index's bits spread over the high bits of R, G, B."""
    palette = []
    for index in range(PALETTE_CLASSES):
        rgb, bits = [0, 0, 0], index
        for shift in range(7, -1, -1):
            for channel in range(3):
                rgb[channel] |= (bits & 1) << shift
                bits >>= 1
        palette += rgb
    return palette


PALETTE = class_palette()


def mask_image(classes: np.ndarray, n_classes: int) -> Image.Image:
    """A class-index array as the image the answer encodes: palette mode, or 16-bit for many classes."""
    if n_classes <= PALETTE_CLASSES:
        image = Image.fromarray(classes.astype(np.uint8), "P")
        image.putpalette(PALETTE)
        return image
    return Image.fromarray(classes.astype(np.uint16))  # mode I;16


def png_base64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def unique_names(labels: dict, n_classes: int) -> list[str]:
    """The label of every class index, `str(index)` without one; a repeated name gets its index appended."""
    names, seen = [], set()
    for index in range(n_classes):
        name = labels.get(index, str(index))
        names.append(name if name not in seen else f"{name} ({index})")
        seen.add(name)
    return names


class ImageSegmenter(TskitHandler):
    config_defaults = {
        "size": 520,  # the square side the model runs at (torchvision's segmentation weights use 520)
        "mean": IMAGENET_MEAN,
        "std": IMAGENET_STD,
        "fast_decode": True,  # JPEG draft mode (reduced-DCT decoding), down to twice `size`
        "channels_last": True,
        "background": 0,  # the background class index (not a default explanation target); -1: none
        **EXPLAIN_CONFIG,  # explain_method, explain_steps (Integrated Gradients: one forward+backward per step)
        "explain_method": "saliency",  # one backward pass; integrated_gradients costs explain_steps of them
        "explain_cell": 8,  # the returned attribution grid averages cells of this many input pixels
    }

    # ---- setup -------------------------------------------------------------------------------------
    def setup(self, model_dir: str) -> None:
        cfg = self.config
        if not 16 <= cfg["size"] <= MAX_SIZE:
            raise ConfigError(f"handler config: size is the square side the model runs at, 16..{MAX_SIZE}; "
                              f"got {cfg['size']}")
        if len(cfg["mean"]) != 3 or len(cfg["std"]) != 3 or min(cfg["std"]) <= 0:
            raise ConfigError("handler config: mean and std need 3 values each (RGB, in 0..1 units), std > 0")
        if cfg["explain_cell"] < 1:
            raise ConfigError(f"handler config: explain_cell must be >= 1, got {cfg['explain_cell']}")
        labels_path = os.path.join(model_dir, "index_to_name.json")
        self.labels = read_labels(labels_path) if os.path.exists(labels_path) else {}
        if cfg["background"] < -1 or (self.labels and cfg["background"] >= len(self.labels)):
            raise ConfigError(f"handler config: background must be a class index (0..{len(self.labels) - 1} in "
                              f"index_to_name.json) or -1 for none, got {cfg['background']}")
        self.mean = torch.tensor(cfg["mean"], device=self.device).view(1, 3, 1, 1) * 255
        self.std = torch.tensor(cfg["std"], device=self.device).view(1, 3, 1, 1) * 255
        self.collated_sizes: list[tuple[int, int]] = []

    # ---- requests to a batch -----------------------------------------------------------------------
    def decode(self, request: dict) -> tuple[torch.Tensor, tuple[int, int]]:
        """One request to (size x size x 3 uint8 pixels, original upright (width, height))."""
        cfg = self.config
        image, original = request_image(request, 2 * cfg["size"] if cfg["fast_decode"] else 0)
        side = cfg["size"]
        return torch.from_numpy(np.array(image.resize((side, side), Image.BILINEAR))), original

    def normalised(self, items: list) -> torch.Tensor:
        """Decoded items to a normalised fp32 NCHW batch on the device."""
        batch = self.to_device(torch.stack([pixels for pixels, _ in items])).permute(0, 3, 1, 2).float()
        return (batch - self.mean) / self.std

    def collate(self, items: list) -> torch.Tensor:
        # `respond` gets only the model's output: the original sizes of this batch wait here for it
        self.collated_sizes = [original for _, original in items]
        return self.to_model_input(self.normalised(items))

    # ---- answers -----------------------------------------------------------------------------------
    def class_masks(self, logits: torch.Tensor) -> list[np.ndarray]:
        """Per image, the argmax class of every pixel at the model's input resolution (size x size)."""
        side = self.config["size"]
        masks = []
        for row in logits.detach().float():  # one image at a time: upsampled logits of a batch can be large
            if row.shape[-2:] != (side, side):
                row = F.interpolate(row[None], size=(side, side), mode="bilinear", align_corners=False)[0]
            masks.append(row.argmax(0).cpu().numpy())
        return masks

    def respond(self, outputs) -> list[dict]:
        logits = segment_logits(outputs)
        sizes = self.collated_sizes
        if len(sizes) != len(logits):
            raise RuntimeError(f"{len(logits)} outputs for a batch of {len(sizes)} collated images")
        names = unique_names(self.labels, logits.shape[1])
        return [self.answer(mask, size, names) for mask, size in zip(self.class_masks(logits), sizes)]

    def answer(self, classes: np.ndarray, original: tuple[int, int], names: list[str]) -> dict:
        image = mask_image(classes, len(names))
        if image.size != original:
            image = image.resize(original, Image.NEAREST)
        width, height = original
        counts = np.bincount(np.asarray(image).ravel(), minlength=len(names))
        present = [(count / (width * height), names[i]) for i, count in enumerate(counts) if count]
        present.sort(key=lambda pair: -pair[0])  # stable: ties keep class order
        return {"mask_png": png_base64(image), "width": width, "height": height,
                "classes": {name: round(float(share), 6) for share, name in present}, "labels": names}

    # ---- explanations ------------------------------------------------------------------------------
    def default_target(self, predicted: torch.Tensor, n_classes: int) -> int:
        """The class with the most predicted pixels, background aside (background if nothing else is there)."""
        counts = torch.bincount(predicted.flatten(), minlength=n_classes)
        background = self.config["background"]
        if 0 <= background < n_classes and counts.sum() > counts[background]:
            counts[background] = -1
        return int(counts.argmax())

    def explain_items(self, items: list, requests: list[dict]) -> list:
        method, steps, cell = self.config["explain_method"], self.config["explain_steps"], self.config["explain_cell"]
        model = self.explainer()
        batch = self.normalised(items)  # fp32 whatever the serving precision; `collate` is left to predictions
        with torch.inference_mode():
            logits = segment_logits(model(batch))
        n_classes, predicted = logits.shape[1], logits.float().argmax(1)  # [n, h, w] at the model's output size
        targets = [self.default_target(p, n_classes) if t is None else t  # a BadInput target answers its request
                   for t, p in zip(checked_targets(requests, self.labels, n_classes), predicted)]

        def forward(inputs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
            """[n, classes]: each class's mean logit over each image's region (the target's pixels)."""
            logits = segment_logits(model(inputs)).float()
            return (logits * regions[:, None]).sum((2, 3)) / regions.sum((1, 2)).clamp_min(1)[:, None]

        def explain(ok: list[int], chosen: list[int]) -> list[dict]:
            regions = torch.stack([(predicted[i] == t).float() for i, t in zip(ok, chosen)])
            shares = regions.mean((1, 2))
            regions[shares == 0] = 1.0  # a target predicted nowhere: its mean logit over the whole image
            maps = attribute(forward, batch[ok], chosen, method, steps, forward_args=(regions,)).abs().sum(dim=1)
            inside = F.interpolate(regions[:, None], size=maps.shape[-2:], mode="nearest")[:, 0]
            grids = F.avg_pool2d(maps[:, None], cell, ceil_mode=True)[:, 0]
            names = unique_names(self.labels, n_classes)
            return [{"target": names[t], "target_index": t, "method": method, "target_share": round(float(share), 6),
                     "mass_in_target": round(float((m * r).sum() / m.sum().clamp_min(1e-12)), 4),
                     "input_size": [m.shape[1], m.shape[0]], "cell": cell,
                     "attributions": np.round(grid.cpu().numpy(), 8).tolist(),
                     "heatmap_png": heatmap_png(items[i][0].numpy(), m.cpu().numpy())}
                    for i, t, share, m, r, grid in zip(ok, chosen, shares.tolist(), maps, inside, grids)]

        return explain_valid(targets, explain)

    # ---- drift and warm-up -------------------------------------------------------------------------
    def drift_features(self, batch: torch.Tensor) -> tuple[list[str], torch.Tensor]:
        """Per-channel mean and spread of the normalised input (brightness, tint, contrast)."""
        return DRIFT_FEATURES, channel_stats(batch)

    def drift_output_features(self, outputs) -> tuple[list[str], torch.Tensor]:
        """Per image, each class's share of the predicted pixels (at the model's output resolution). Not the
        model's confidence: against a reference of training images, on which a model is surer than on any
        new image, it drifts without any change in the inputs (measured: PSI 0.21 for new scenes of the
        training kind, above the default threshold)."""
        logits = segment_logits(outputs).detach()
        n_classes = logits.shape[1]
        predicted = logits.float().argmax(dim=1)
        shares = torch.stack([torch.bincount(p.flatten(), minlength=n_classes) for p in predicted]).float()
        return [f"share_{name}" for name in unique_names(self.labels, n_classes)], shares / predicted[0].numel()

    def example_items(self, n: int) -> list:
        side = self.config["size"]
        return [(torch.zeros(side, side, 3, dtype=torch.uint8), (side, side)) for _ in range(n)]
