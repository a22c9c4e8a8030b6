"""The views as the archive's own handler prepares them, and running a model over all of them."""
import time
from functools import cached_property
from pathlib import Path

import torch

CHUNK = 8  # views per forward pass while judging accuracy (eager Lite0: 40 images/s at 8, 19 at 32, 2 threads)


def archive_handler(root: Path, batch_size: int, **handler_config):
    """The archive's image classifier, loaded as a worker loads it, with `handler_config` over its config."""
    from export.inprocess import load_handler
    from handlers.image_classifier import ImageClassifier

    return load_handler(ImageClassifier, root, batch_size=batch_size,
                        yaml_overrides={"handler": {"warmup": False, **handler_config}})


def preprocessed(handler, payloads: list[bytes]) -> tuple[torch.Tensor, float]:
    """(the batches `preprocess` makes of request bodies as one fp32 tensor, ms per body); every view must be
    accepted."""
    start = time.perf_counter()
    out = []
    for i in range(0, len(payloads), CHUNK):
        chunk = payloads[i:i + CHUNK]
        state = handler.begin_batch(len(chunk))
        batch = handler.preprocess([{"body": p} for p in chunk])
        refused = [answer for _, answer in state.answered_early()]
        if refused:
            raise ValueError(f"a calibration view was refused: {refused[0]}")
        out.append(batch.float().contiguous())
    return torch.cat(out), (time.perf_counter() - start) * 1000 / max(1, len(payloads))


def forward_all(model, tensors: torch.Tensor, chunk: int = CHUNK) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for i in range(0, len(tensors), chunk):
            outs.append(torch.as_tensor(model(tensors[i:i + chunk])).float())
    return torch.cat(outs)


class Inputs:
    """Every view as a handler with the archive's preprocessing (and `decoder`) makes it: normalised fp32 batches
    for torch and ONNX Runtime, the decoded uint8 pixels for OpenVINO IRs (which normalise themselves); each made
    on first use, so a run without OpenVINO candidates never decodes the views twice."""

    def __init__(self, handler, payloads: list[bytes]):
        self.handler = handler
        self.payloads = payloads

    @cached_property
    def normalised(self) -> torch.Tensor:
        return preprocessed(self.handler, self.payloads)[0]

    @cached_property
    def pixels(self) -> torch.Tensor:
        return torch.stack([self.handler.decode({"body": p}) for p in self.payloads])

    def of(self, candidate) -> torch.Tensor:
        return self.pixels if candidate.pixels else self.normalised

    def ms_per_image(self, sample: int = 64) -> float:
        """decode + resize + crop + normalise per image, on one core (a worker's share)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return preprocessed(self.handler, self.payloads[:sample])[1]
        finally:
            torch.set_num_threads(threads)
