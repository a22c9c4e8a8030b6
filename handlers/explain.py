"""Captum attributions for the image classifier: why the model gave a class.

`POST /explanations/{model}` reaches the handler as the request header `explain: True`. The attribution
runs on an fp32 copy of the model (reduced-precision gradients are too coarse to show anything) and is
bounded by `explain_steps` (Integrated Gradients) or is a single backward pass (`saliency`). Compiled
formats (ONNX, AOTInductor) have no gradients: their archives answer 501.
"""
import base64
import copy
import io

import numpy as np
import torch
from PIL import Image

from handlers.errors import BadInput

METHODS = ("integrated_gradients", "saliency")


def is_explain(context, index: int) -> bool:
    value = context.get_request_header(index, "explain") if context is not None else None
    return str(value).lower() == "true"


def differentiable_copy(model) -> torch.nn.Module:
    if getattr(model, "fixed_dtype", None) is not None:
        raise BadInput("explanations need an eager or TorchScript archive; this one is compiled (ONNX or "
                       "AOTInductor) and has no gradients", status=501, kind="ExplanationsUnavailable")
    return copy.deepcopy(model).float().to(memory_format=torch.contiguous_format).eval()


def attribute(model, batch: torch.Tensor, targets: list[int], method: str, steps: int) -> torch.Tensor:
    """Per-pixel attributions, NxHxW (absolute values summed over channels)."""
    from captum.attr import IntegratedGradients, Saliency

    batch = batch.float().contiguous().requires_grad_(True)
    with torch.enable_grad():
        if method == "saliency":
            attributions = Saliency(model).attribute(batch, target=targets)
        else:
            attributions = IntegratedGradients(model).attribute(batch, target=targets, n_steps=steps,
                                                                internal_batch_size=batch.shape[0] * steps)
    return attributions.detach().abs().sum(dim=1)


def heatmap_png(pixels: np.ndarray, attribution: np.ndarray) -> str:
    """The crop with the attribution in red on top, as base64 PNG: something a person can look at."""
    scaled = attribution / (attribution.max() or 1.0)
    heat = np.zeros_like(pixels, dtype=np.float32)
    heat[..., 0] = 255 * np.clip(scaled * 3, 0, 1)  # the top third of the attribution saturates
    overlay = (0.5 * pixels.astype(np.float32) + 0.5 * heat).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def requested_target(request: dict, labels: dict[int, str]) -> int | None:
    """`{"data": ..., "target": 285}` or `"target": "Egyptian cat"` in a JSON body; else None (top-1)."""
    body = request.get("body") if isinstance(request, dict) else None
    target = body.get("target") if isinstance(body, dict) else None
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return target
    by_name = {name: index for index, name in labels.items()}
    if isinstance(target, str) and target in by_name:
        return by_name[target]
    raise BadInput(f"unknown explanation target {target!r}: give a class index or a label name")
