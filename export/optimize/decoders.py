"""Which JPEG decoding the chosen engine is served behind: the fastest that still passes the guard."""
from pathlib import Path

import numpy as np
import torch

from export.optimize.engines import load
from export.optimize.guard import Thresholds
from export.optimize.inputs import Inputs, archive_handler, forward_all
from export.optimize.report import Decoder

DECODERS = ("pillow", "turbojpeg")


def judge_decoders(winner, inputs: Inputs, reference: torch.Tensor, held_out: np.ndarray, root: Path,
                   batch_size: int, cores: int, guard, thresholds: Thresholds, log) -> list[Decoder]:
    """The archive's own decoding and the faster ones, each through the chosen engine against the same `guard`;
    the fastest that passes is chosen (the archive's own always passes: the engine was judged with it)."""
    from handlers import jpeg

    own = inputs.handler.config["decoder"]
    rows = [Decoder(own, inputs.ms_per_image(), winner.guard, "passes")]
    for name in DECODERS:
        if name == own:
            continue
        if name == "turbojpeg" and not jpeg.available():
            rows.append(Decoder(name, verdict="skipped: simplejpeg or opencv-python-headless not installed"))
            continue
        other = Inputs(archive_handler(root, batch_size, precision="fp32", decoder=name), inputs.payloads)
        model = load(winner, cores, root, batch_size)
        row = Decoder(name, other.ms_per_image(), guard(reference, forward_all(model, other.of(winner)), held_out))
        refusal = row.guard.refusal(thresholds)
        row.verdict = f"refused: {refusal}" if refusal else "passes"
        rows.append(row)
    best = min((r for r in rows if r.verdict == "passes"), key=lambda r: r.ms_per_image)
    for r in rows:
        if r.verdict == "passes":
            r.verdict = "chosen" if r is best else f"passes, slower ({r.ms_per_image:.2f} vs {best.ms_per_image:.2f} ms)"
        log(f"decoder {r.name}: {r.ms_per_image:.2f} ms/image, {r.verdict}")
    return rows
