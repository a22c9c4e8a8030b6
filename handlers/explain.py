"""Captum attributions shared by every handler: why the model gave an answer.

`POST /explanations/{model}` reaches the handler as the request header `explain: True`. Attributions run on
an fp32 eager (or TorchScript) copy of the model, loaded from the archive on the first explanation request
only, so prediction-only workers never pay for it (reduced-precision gradients are too coarse to show
anything). Compiled formats (ONNX, AOTInductor) have no gradients: their archives explain only when they
ship the eager model beside the compiled one (`explain_model.pt` + `explain_model.py`, written by
`tskit build --explain-weights`); otherwise they answer 501. Time is bounded by `explain_steps`
(Integrated Gradients) or is one backward pass (`saliency`).
"""
import base64
import io
import os

import numpy as np
import torch
from PIL import Image

from handlers.contract import header_is_true
from handlers.errors import BadInput, ConfigError, RequestError, Unavailable
from handlers.loading import load_eager, load_torchscript

METHODS = ("integrated_gradients", "saliency")
MAX_STEPS = 1024
# Handler config keys for explanations; a handler merges these (with its own default steps) into its defaults.
EXPLAIN_CONFIG = {"explain_method": "integrated_gradients", "explain_steps": 16}
# The eager model an archive of a compiled format ships for explanations (archive root).
EXPLAIN_WEIGHTS = "explain_model.pt"
EXPLAIN_MODEL_FILE = "explain_model.py"


def is_explain(context, index: int) -> bool:
    """Request `index` came in through /explanations."""
    return header_is_true(context, index, "explain")


def check_config(config: dict) -> None:
    if config["explain_method"] not in METHODS or not 1 <= config["explain_steps"] <= MAX_STEPS:
        raise ConfigError(f"handler config: explain_method must be one of {METHODS}, "
                          f"explain_steps in 1..{MAX_STEPS}")


def unavailable(reason: str) -> Unavailable:
    return Unavailable(f"explanations unavailable: {reason}", kind="ExplanationsUnavailable")


def load_explainer(model_dir: str, serialized: str, model_file: str | None, fmt: str, device: torch.device,
                   class_name: str | None = None) -> torch.nn.Module:
    """A fresh fp32, eval-mode, differentiable model: the archive's shipped explanation model if any,
    else the archive's own eager or TorchScript model; a compiled-only archive raises a 501."""
    weights, source = os.path.join(model_dir, EXPLAIN_WEIGHTS), os.path.join(model_dir, EXPLAIN_MODEL_FILE)
    if os.path.isfile(weights) and os.path.isfile(source):
        model = load_eager(source, weights, device, class_name)
    elif fmt == "eager":
        model = load_eager(model_file, serialized, device, class_name)
    elif fmt == "torchscript":
        model = load_torchscript(serialized, device)
    else:
        raise unavailable(f"this archive's model is compiled ({fmt}) and has no gradients, and the archive ships "
                          f"no eager model for explanations; rebuild it with `tskit build --explain-weights "
                          f"WEIGHTS --explain-model-file MODEL.py` (or from an eager or TorchScript file)")
    return model.float().eval()


def requested_target(request: dict, labels) -> int | None:
    """`"target": 285` or `"target": "Egyptian cat"` in a JSON body (or a multipart field `target`); else
    None (top-1). `labels`: a list or {index: name}."""
    body = request.get("body") if isinstance(request, dict) else None
    target = body.get("target") if isinstance(body, dict) else None
    if target is None and isinstance(request, dict) and request.get("target") is not None:
        target = request["target"]  # a multipart form field arrives as bytes
        target = target.decode("utf-8", "replace") if isinstance(target, (bytes, bytearray)) else target
        target = int(target) if isinstance(target, str) and target.isdigit() else target
    if target is None:
        return None
    if isinstance(target, int) and not isinstance(target, bool) and target >= 0:
        return target
    names = labels.items() if isinstance(labels, dict) else enumerate(labels)
    by_name = {name: index for index, name in names}
    if isinstance(target, str) and target in by_name:
        return by_name[target]
    raise BadInput(f"unknown explanation target {target!r}: give a class index or a label name", kind="BadTarget")


def checked_target(request: dict, labels, classes: int) -> int | None:
    """The requested class index, checked against the model's `classes` outputs; None for the top-1."""
    target = requested_target(request, labels)
    if target is not None and target >= classes:
        raise BadInput(f"explanation target {target} out of range: the model has {classes} classes",
                       kind="BadTarget")
    return target


def checked_targets(requests: list, labels, classes: int) -> list:
    """Per request: its checked target, None (no target asked for), or its BadInput, so it fails alone."""
    out = []
    for request in requests:
        try:
            out.append(checked_target(request, labels, classes))
        except RequestError as err:
            out.append(err)
    return out


def resolve_targets(requests: list, labels, scores: torch.Tensor) -> list:
    """Per request: the requested class index, else the top-1 of `scores` ([n, classes]), or its BadInput."""
    targets = checked_targets(requests, labels, scores.shape[-1])
    return [int(row.argmax()) if t is None else t for t, row in zip(targets, scores)]


def explain_valid(targets: list, explain) -> list:
    """Answers in request order: a BadInput target answers its own request, the rest are explained together
    by `explain(indices, targets)`, which returns one answer per index."""
    ok = [i for i, t in enumerate(targets) if not isinstance(t, RequestError)]
    answers = list(targets)
    if ok:
        for i, answer in zip(ok, explain(ok, [targets[i] for i in ok])):
            answers[i] = answer
    return answers


def attribute(forward, inputs: torch.Tensor, targets: list, method: str, steps: int, baselines=None,
              forward_args=None, delta: bool = False, internal_batch_size: int | None = None):
    """Captum attributions of `forward(inputs, *forward_args)[i, targets[i]]` to `inputs`, same shape as
    `inputs` (signed for Integrated Gradients, absolute gradients for saliency). With `delta`, also IG's
    convergence delta per example (sum of attributions minus f(input) - f(baseline)). Integrated Gradients
    runs all its steps in one pass unless `internal_batch_size` (rows per pass, at least 2 per example)
    bounds its memory."""
    from captum.attr import IntegratedGradients, Saliency

    inputs = inputs.detach().float().contiguous().requires_grad_(True)
    with torch.enable_grad():
        if method == "saliency":
            out = Saliency(forward).attribute(inputs, target=targets, additional_forward_args=forward_args,
                                              abs=True)
            return (out.detach(), None) if delta else out.detach()
        out = IntegratedGradients(forward).attribute(
            inputs, baselines=baselines, target=targets, n_steps=steps, additional_forward_args=forward_args,
            internal_batch_size=internal_batch_size or inputs.shape[0] * steps, return_convergence_delta=delta)
    if delta:
        return out[0].detach(), out[1].detach()
    return out.detach()


def find_embedding(model: torch.nn.Module, name: str = "") -> torch.nn.Module:
    """The model's token embedding: the module called `name`, else its one nn.Embedding."""
    if name:
        module = dict(model.named_modules()).get(name)
        if module is None:
            raise ConfigError(f"explain_layer {name!r} is not a module of the model")
        return module
    found = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
    if len(found) != 1:
        raise unavailable(f"the model has {len(found)} nn.Embedding layers (TorchScript hides them); "
                          "name the token embedding with `explain_layer` in the handler config")
    return found[0]


def embedding_forward(model: torch.nn.Module, layer: torch.nn.Module):
    """`forward(embeddings, ids)`: the model run on `ids` with `layer`'s output replaced by `embeddings`.

    Attributions then move along the embeddings (from an all-zero baseline: a token that is not there)
    while the model still sees the ids, so its padding mask stays the real one."""
    def forward(embeddings: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        handle = layer.register_forward_hook(lambda _module, _args, _output: embeddings)
        try:
            return model(ids)
        finally:
            handle.remove()
    return forward


def heatmap_png(pixels: np.ndarray, attribution: np.ndarray) -> str:
    """The image with the attribution in red on top, as base64 PNG: something a person can look at."""
    scaled = attribution / (attribution.max() or 1.0)
    heat = np.zeros_like(pixels, dtype=np.float32)
    heat[..., 0] = 255 * np.clip(scaled * 3, 0, 1)  # the top third of the attribution saturates
    overlay = (0.5 * pixels.astype(np.float32) + 0.5 * heat).clip(0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()
