"""Object detection: image bytes in, `[{"label", "score", "box": [x1, y1, x2, y2]}]` out, highest score first,
boxes in the original (upright) image's pixels.

Made for torchvision detection models (FCOS, RetinaNet, SSD, Faster R-CNN, ...): they take a list of CHW
float images in 0..1 of any sizes and return one `{boxes, labels, scores}` dict per image. The handler
resizes each image (shorter side to `min_size`, longer side at most `max_size`: torchvision's own rule, so
the model's internal resize becomes a no-op), runs the whole batch in one forward pass and maps the boxes
back to the original image.

Precision defaults to fp32: torchvision's CPU `nms` has no bf16/fp16 kernel (a model cast to bf16 fails in
post-processing), and box coordinates in bf16 are off by pixels (8 mantissa bits: steps of 2 px at 300 px).
When bf16/fp16 is asked for, only the backbone (nearly all the FLOPs) runs in it; its features go back to
fp32 before the heads, box decoding and NMS.

Explanations: per detection, the saliency |d score / d pixel| (summed over channels) on the image as the
model saw it: one forward pass with gradients, one backward pass per explained detection (at most
`explain_max_detections`).

Drift: per image, the per-channel mean and spread of the pixels the model sees (as the image classifier),
and of its answer the number of detections and the best score.
"""
import logging
import os

import numpy as np
import torch
from PIL import Image

from handlers.base import TskitHandler
from handlers.errors import ConfigError
from handlers.explain import checked_targets, explain_valid, heatmap_png
from handlers.image_classifier import DRIFT_FEATURES, channel_stats, read_labels, request_image

logger = logging.getLogger(__name__)

DETECTION_DRIFT_FEATURES = ["detections", "top_score"]  # output drift: per image


def fit_size(width: int, height: int, min_size: int, max_size: int) -> tuple[int, int]:
    """Shorter side to `min_size` unless the longer side would then exceed `max_size`."""
    scale = min(min_size / min(width, height), max_size / max(width, height))
    return max(1, round(width * scale)), max(1, round(height * scale))


def cast_floats(value, dtype: torch.dtype):
    """`value` (a tensor, or a dict/list/tuple of them) with its floating tensors in `dtype`."""
    if isinstance(value, torch.Tensor):
        return value.to(dtype) if value.is_floating_point() else value
    if isinstance(value, dict):
        return type(value)((k, cast_floats(v, dtype)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(cast_floats(v, dtype) for v in value)
    return value


def run_detector(model, images: list) -> list[dict]:
    detections = model(images)
    return detections[1] if isinstance(detections, tuple) else detections  # scripted ones: (losses, detections)


def set_postprocess_limits(model, score_threshold: float, max_detections: int) -> None:
    """Let the model drop what the handler would drop anyway (same result: NMS only lets a higher score
    suppress a lower one), wherever torchvision keeps these settings."""
    for part in (model, getattr(model, "roi_heads", None)):
        if part is not None and hasattr(part, "score_thresh"):
            part.score_thresh = score_threshold
        if part is not None and hasattr(part, "detections_per_img"):
            part.detections_per_img = max_detections


class ObjectDetector(TskitHandler):
    config_defaults = {
        "precision": "fp32",  # see the module docstring
        "min_size": 800,  # torchvision's defaults; an archive sets what its model was trained at
        "max_size": 1333,
        "score_threshold": 0.5,
        "max_detections": 100,
        "fast_decode": True,  # JPEG draft mode (reduced-DCT decoding)
        "explain_max_detections": 5,  # saliency maps per image, best first: one backward pass each
        "explain_cell": 8,  # the returned saliency grid averages cells of this many input pixels
    }

    def setup(self, model_dir: str) -> None:
        cfg = self.config
        if not 0 < cfg["min_size"] <= cfg["max_size"]:
            raise ConfigError(f"handler config: need 0 < min_size ({cfg['min_size']}) <= max_size ({cfg['max_size']})")
        if not 0.0 <= cfg["score_threshold"] <= 1.0:
            raise ConfigError(f"handler config: score_threshold must be in 0..1, got {cfg['score_threshold']}")
        if cfg["max_detections"] < 1:
            raise ConfigError(f"handler config: max_detections must be >= 1, got {cfg['max_detections']}")
        if cfg["explain_max_detections"] < 1 or cfg["explain_cell"] < 1:
            raise ConfigError("handler config: explain_max_detections and explain_cell must be >= 1")
        self.prepare_explainer(self.model)
        self.reduce_backbone_precision()
        labels_path = os.path.join(model_dir, "index_to_name.json")
        self.labels = read_labels(labels_path) if os.path.exists(labels_path) else {}

    def prepare_explainer(self, model):
        """The handler's sizes and limits, set on the serving model and on the explanation model alike."""
        cfg = self.config
        transform = getattr(model, "transform", None)
        if transform is not None and hasattr(transform, "min_size"):
            transform.min_size, transform.max_size = (cfg["min_size"],), cfg["max_size"]
        set_postprocess_limits(model, cfg["score_threshold"], cfg["max_detections"])
        return model

    def reduce_backbone_precision(self) -> None:
        """The base class cast the whole model to `self.dtype`; keep that only for the backbone. The rest goes
        back to fp32 (its weights keep the bf16/fp16 rounding, far below a pixel; its arithmetic is fp32)."""
        if self.dtype == torch.float32:
            return
        self.model.float()
        backbone = getattr(self.model, "backbone", None)
        if not isinstance(backbone, torch.nn.Module):
            logger.warning("precision %s: the model has no `backbone` to run in it; using fp32", self.precision)
            self.precision, self.dtype = "fp32", torch.float32
            return
        dtype = self.dtype
        backbone.to(dtype)
        backbone.register_forward_pre_hook(lambda _module, args: cast_floats(args, dtype))
        backbone.register_forward_hook(lambda _module, _args, output: cast_floats(output, torch.float32))
        logger.info("precision %s for the backbone; heads, box decoding and NMS in fp32", self.precision)

    def decode(self, request: dict) -> tuple[torch.Tensor, tuple[int, int]]:
        """One request to (resized HxWx3 uint8 image, original (width, height))."""
        cfg = self.config
        # draft to twice the target, as the image classifier does: the DCT-scaled decode still gets an
        # antialiased resize afterwards
        image, original = request_image(request, 2 * cfg["min_size"] if cfg["fast_decode"] else 0)
        size = fit_size(*original, cfg["min_size"], cfg["max_size"])
        if size != original:
            image = image.resize(size, Image.BILINEAR)
        return torch.from_numpy(np.array(image)), original

    def collate(self, items: list) -> tuple[list[torch.Tensor], list[tuple[int, int]]]:
        """Detection models take a list of CHW images of any sizes (they pad the batch themselves)."""
        images = [self.to_device(pixels).permute(2, 0, 1).float().div_(255)
                  for pixels, _ in items]
        return images, [original for _, original in items]

    def forward(self, batch):
        images, originals = batch
        with torch.inference_mode():
            detections = run_detector(self.model, images)
        return [(det, image.shape[-1], image.shape[-2], original)
                for det, image, original in zip(detections, images, originals)]

    def respond(self, outputs: list) -> list[list[dict]]:
        return [self.detections(*output) for output in outputs]

    def ranked(self, det: dict) -> torch.Tensor:
        """Indices of one image's detections above the threshold, best first, at most `max_detections`."""
        scores = det["scores"].detach().float().cpu()
        kept = torch.nonzero(scores >= self.config["score_threshold"]).flatten()
        return kept[scores[kept].argsort(descending=True, stable=True)][: self.config["max_detections"]]

    def detections(self, det: dict, width: int, height: int, original: tuple[int, int],
                   order: torch.Tensor | None = None) -> list[dict]:
        """One image's detections (`order`, else all ranked), best first, in the original image's pixels."""
        ow, oh = original
        order = self.ranked(det) if order is None else order
        scores = det["scores"].detach().float().cpu()[order]
        boxes = det["boxes"].detach().float().cpu()[order] * torch.tensor([ow / width, oh / height] * 2)
        boxes = torch.minimum(boxes.clamp(min=0), torch.tensor([ow, oh, ow, oh], dtype=torch.float32))
        labels = det["labels"].cpu()[order].tolist()
        return [
            {"label": self.labels.get(label, str(label)), "score": round(score, 4),
             "box": [round(v, 1) for v in box]}
            for label, score, box in zip(labels, scores.tolist(), boxes.tolist())
        ]

    def drift_features(self, batch) -> tuple[list[str], torch.Tensor]:
        """Per-channel mean and spread of each image (0..1) as the model sees it, whatever its size."""
        images, _ = batch
        return DRIFT_FEATURES, torch.cat([channel_stats(image[None]) for image in images])

    def drift_output_features(self, outputs: list) -> tuple[list[str], torch.Tensor]:
        """Per image: how many detections it answers with, and the best score (0 without any)."""
        rows = []
        for det, *_ in outputs:
            scores = det["scores"].detach().float().cpu()[self.ranked(det)]
            rows.append([float(len(scores)), float(scores.max()) if len(scores) else 0.0])
        return DETECTION_DRIFT_FEATURES, torch.tensor(rows, dtype=torch.float32)

    def explain_items(self, items: list, requests: list[dict]) -> list[dict]:
        """Per image, its best detections (of the requested label, else any; at most `explain_max_detections`),
        each with a saliency map: |d score / d pixel| summed over channels, on the image as the model saw it.
        `mass_in_box` is the share of that saliency inside the detection's box."""
        model = self.explainer()
        classes = max(self.labels) + 1 if self.labels else 1 << 30  # without labels any index may be asked for
        wanted = checked_targets(requests, self.labels, classes)  # a label to explain, or None for any

        def explain(ok: list[int], labels: list) -> list[dict]:
            images = [image.requires_grad_() for image in self.collate([items[i] for i in ok])[0]]
            with torch.enable_grad():
                found = run_detector(model, images)
                return [self.saliency(image, det, label, items[i][0].numpy(), items[i][1])
                        for i, image, det, label in zip(ok, images, found, labels)]

        return explain_valid(wanted, explain)

    def saliency(self, image: torch.Tensor, det: dict, label: int | None, pixels, original) -> dict:
        cfg = self.config
        order = self.ranked(det)
        if label is not None:
            order = order[det["labels"].cpu()[order] == label]
        order = order[: cfg["explain_max_detections"]]
        height, width = image.shape[-2:]
        answers = self.detections(det, width, height, original, order)
        cell = cfg["explain_cell"]
        for answer, k in zip(answers, order.tolist()):
            (grad,) = torch.autograd.grad(det["scores"][k], image, retain_graph=True)
            saliency = grad.abs().sum(dim=0).cpu()
            x1, y1, x2, y2 = det["boxes"][k].detach().cpu().round().int().tolist()
            inside = saliency[max(y1, 0):y2, max(x1, 0):x2].sum()
            answer["mass_in_box"] = round(float(inside / saliency.sum().clamp_min(1e-12)), 4)
            grid = torch.nn.functional.avg_pool2d(saliency[None, None], cell, ceil_mode=True)[0, 0]
            answer["saliency"] = np.round(grid.numpy(), 8).tolist()
            answer["heatmap_png"] = heatmap_png(pixels, saliency.numpy())
        return {"method": "saliency", "input_size": [width, height], "cell": cell, "detections": answers}

    def example_items(self, n: int) -> list:
        side = self.config["min_size"]
        return [(torch.zeros(side, side, 3, dtype=torch.uint8), (side, side)) for _ in range(n)]
