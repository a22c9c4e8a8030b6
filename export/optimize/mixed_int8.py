"""Mixed int8: when plain int8 fails the guard, find the fewest layers to keep in floating point so that it passes,
within a deadline.

The unit is an activation quantizer (a FakeQuantize of the NNCF-quantized IR): bypassing it leaves the layers it
feeds in floating point (their int8 weights are dequantized when the model compiles), everything else int8.

1. Rank: each quantizer bypassed alone, scored by how close the outputs come to the reference (KL divergence)
   on the views where plain int8 strays most. Ranking gets at most half the time left; quantizers it did not
   reach go last, in graph order.
2. Search: keep the top k in floating point, judged by the guard itself on every view, k doubling (1, 2, 4...)
   until it passes, then bisected down to the smallest k that passes. Each step is one batched pass over the
   views; the search stops at `max_steps` or when the next step would overrun the deadline, with the smallest
   passing k found, or none.

NNCF's own `quantize_with_accuracy_control` aims at a metric within `max_drop` of fp32 and validates view by view;
on a model whose plain int8 missed a 99% overall-agreement target it had not finished after 30 minutes.
"""
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from export.optimize.guard import GuardResult, Thresholds, divergence
from export.optimize.inputs import forward_all

RANKING_VIEWS = 64  # views the ranking scores each quantizer on: those plain int8 gets most wrong
MAX_STEPS = 12  # guard passes over every view: log2 of a few hundred quantizers, doubling and bisecting
BATCH = 32  # views per call while judging


@dataclass
class Step:
    kept: int  # quantizers bypassed (layers kept in floating point)
    seconds: float
    passes: bool
    guard: dict


@dataclass
class SearchOutcome:
    quantizers: int  # activation quantizers in the plain int8 model
    ranked: int  # how many of them the ranking scored before its share of the time ran out
    kept: list[str] = field(default_factory=list)  # the bypassed quantizers of the smallest passing step
    steps: list[Step] = field(default_factory=list)
    seconds: float = 0.0
    stopped: str = ""  # why it ended: passed, deadline, step limit, nothing left to keep
    model: object = None  # the passing ov.Model (not serialised into the report)

    @property
    def passed(self) -> bool:
        return self.model is not None

    def best(self) -> Step | None:
        return max(self.steps, key=lambda s: (s.passes, -s.kept if s.passes else s.guard["confident"]), default=None)

    def to_dict(self) -> dict:
        out = asdict(self)
        out.pop("model")
        return out


def activation_quantizers(model) -> list[str]:
    """Friendly names of the FakeQuantize ops on activations, in graph order (a weight's FakeQuantize, where NNCF
    left one instead of compressing the weight to int8, starts from a Constant)."""
    names = []
    for op in model.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.input_value(0).get_node().get_type_name() != "Constant":
            names.append(op.get_friendly_name())
    return names


def bypassed(model, names: list[str]):
    """A copy of `model` with the FakeQuantize ops `names` taken out: their consumers read the input directly."""
    copy = model.clone()
    wanted = set(names)
    for op in copy.get_ordered_ops():
        if op.get_type_name() == "FakeQuantize" and op.get_friendly_name() in wanted:
            source = op.input_value(0)
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(source)
    copy.validate_nodes_and_infer_types()
    return copy


def search(model, views: torch.Tensor, reference: torch.Tensor, held_out: np.ndarray, guard, thresholds: Thresholds,
           threads: int, deadline: float, log, max_steps: int = MAX_STEPS,
           ranking_views: int = RANKING_VIEWS) -> SearchOutcome:
    """The fewest quantizers of `model` (NNCF int8, an ov.Model) to bypass so that `guard` (the task's, from
    export/optimize/guard.py) passes on `views` (its uint8 inputs) against `reference` (fp32 outputs), by `deadline`
    (time.monotonic())."""
    from handlers.loading import OpenVinoModel

    start = time.monotonic()
    names = activation_quantizers(model)
    outcome = SearchOutcome(len(names), 0)
    if not names:
        outcome.stopped = "no activation quantizer to keep in floating point"
        return outcome

    def run(candidate, subset=None) -> torch.Tensor:
        compiled = OpenVinoModel(candidate, threads, "fp32")
        return forward_all(compiled, views if subset is None else views[subset], BATCH)

    plain = run(model)
    judged_once = time.monotonic() - start
    if guard(reference, plain, held_out).refusal(thresholds) is None:
        outcome.model, outcome.stopped = model, "plain int8 passes"
        return outcome
    worst = torch.argsort(divergence(reference, plain), descending=True)[:ranking_views]
    ranking_deadline = time.monotonic() + (deadline - time.monotonic()) / 2
    scores, last_log = {}, time.monotonic()
    log(f"ranking {len(names)} quantized layers on the {len(worst)} views plain int8 strays most on")
    for name in names:
        if time.monotonic() > ranking_deadline:
            break
        scores[name] = float(divergence(reference[worst], run(bypassed(model, [name]), worst)).mean())
        if time.monotonic() - last_log > 15:
            last_log = time.monotonic()
            log(f"ranked {len(scores)}/{len(names)} layers")
    outcome.ranked = len(scores)
    order = sorted(scores, key=scores.get) + [n for n in names if n not in scores]
    log(f"ranked {len(scores)}/{len(names)} layers in {time.monotonic() - start:.0f} s; most sensitive: "
        + ", ".join(order[:3]))

    step_seconds = judged_once

    def judge(k: int) -> bool:
        nonlocal step_seconds
        began = time.monotonic()
        candidate = bypassed(model, order[:k])
        result: GuardResult = guard(reference, run(candidate), held_out)
        passes = result.refusal(thresholds) is None
        step_seconds = time.monotonic() - began
        outcome.steps.append(Step(k, round(step_seconds, 1), passes, asdict(result)))
        log(f"{k} of {len(names)} layers in floating point: {result.summary()}: {'passes' if passes else 'refused'}")
        if passes and (not outcome.passed or k < len(outcome.kept)):
            outcome.kept, outcome.model = order[:k], candidate
        return passes

    def limit() -> str:
        """Why no further step may run, or ""."""
        if len(outcome.steps) >= max_steps:
            return f"step limit ({max_steps})"
        if time.monotonic() + step_seconds > deadline:
            return "deadline"
        return ""

    failing, k = 0, 1
    while not limit():  # doubling: the first k that passes
        if judge(k):
            break
        failing = k
        if k == len(names):
            outcome.stopped = "every layer in floating point and still refused"
            break
        k = min(2 * k, len(names))
    if outcome.passed:
        passing = len(outcome.kept)
        while passing - failing > 1 and not limit():  # bisecting: fewer layers in floating point
            middle = (failing + passing) // 2
            if judge(middle):
                passing = middle
            else:
                failing = middle
        cut = limit() if passing - failing > 1 else ""
        outcome.stopped = "passed" + (f" (bisection cut short: {cut})" if cut else "")
    else:
        outcome.stopped = outcome.stopped or limit()
    outcome.seconds = round(time.monotonic() - start, 1)
    return outcome


def save(model, path: Path) -> Path:
    import openvino as ov

    ov.save_model(model, str(path), compress_to_fp16=False)
    return path
