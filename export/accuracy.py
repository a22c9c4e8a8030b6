"""The accuracy guard: a fast serving path must keep top-1 agreement with the fp32 reference pipeline.

Reference: the eager model in fp32 with full-size JPEG decoding and PIL resizing. Candidate: any image
classifier archive with its own config (reduced precision, JPEG draft decoding, ONNX Runtime, ...).
Both run in-process through the image classifier handler on the same real photos.
"""
from dataclasses import dataclass, field
from pathlib import Path

from handlers.image_classifier import ImageClassifier
from export.inprocess import load_handler, run_batch, unpack_archive

REFERENCE_CONFIG = {"precision": "fp32", "fast_decode": False}


@dataclass
class Agreement:
    total: int = 0
    agree: int = 0
    disagreements: list[str] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.agree / self.total if self.total else 0.0


def top1s(handler, images: dict[str, bytes], batch: int = 8) -> dict[str, str]:
    names, out = sorted(images), {}
    for i in range(0, len(names), batch):
        chunk = names[i:i + batch]
        for name, (status, body) in zip(chunk, run_batch(handler, [{"body": images[n]} for n in chunk])):
            out[name] = next(iter(body)) if status == 200 else f"<{status}>"
    return out


def agreement(candidate_mar: Path, reference_mar: Path, images: dict[str, bytes], work: Path,
              candidate_config: dict | None = None) -> tuple[Agreement, dict]:
    reference = load_handler(ImageClassifier, unpack_archive(reference_mar, work / "reference"),
                             yaml_overrides={"handler": REFERENCE_CONFIG})
    ref = top1s(reference, images)
    candidate = load_handler(ImageClassifier, unpack_archive(candidate_mar, work / "candidate"),
                             yaml_overrides={"handler": candidate_config or {}})
    cand = top1s(candidate, images)
    result = Agreement(total=len(images))
    for name in sorted(images):
        if cand[name] == ref[name]:
            result.agree += 1
        else:
            result.disagreements.append(f"{name}: {cand[name]!r} vs reference {ref[name]!r}")
    info = {"candidate_format": candidate.model_format, "candidate_precision": candidate.precision,
            "candidate_config": {k: candidate.config[k] for k in ("precision", "fast_decode", "channels_last")}}
    return result, info
