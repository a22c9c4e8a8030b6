"""The sequence of `tskit optimize` (the package docstring says what each step does and where)."""
import logging
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from export.optimize.candidates import DEFAULT_BUDGET_S, Candidate, plan
from export.optimize.decoders import judge_decoders
from export.optimize.engines import export_onnx, load, missing_packages, native_bf16, openvino_ir, quantize_int8
from export.optimize.guard import GUARDS, Thresholds
from export.optimize.inputs import Inputs, archive_handler, forward_all, preprocessed
from export.optimize.output import Source, write_archive
from export.optimize.report import Report
from export.optimize.speed import choose_split, forward_job, measure, served_job, split_name, worker_splits

logger = logging.getLogger(__name__)

SERVED_REQUESTS = 64  # distinct JPEG views the served-split measurement cycles through


class NotSupported(ValueError):
    pass


@dataclass
class Settings:
    thresholds: Thresholds = field(default_factory=Thresholds)
    views: int = 600
    cores: int = 0  # 0: the usable cores
    seconds: float = 2.0  # per speed measurement
    budget_s: float = DEFAULT_BUDGET_S
    version: str | None = None
    only: list[str] | None = None


@dataclass
class Optimized:
    report: Report
    archive: Path | None


class Clock:
    """Elapsed time on every progress line, and the deadline the elastic stage (the int8 search) stops at."""

    def __init__(self, budget_s: float, log):
        self.budget_s = budget_s
        self.start = time.monotonic()
        self._log = log

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def deadline(self, reserve_s: float) -> float:
        """The time.monotonic() by which a stage must end to leave `reserve_s` of the budget to what follows."""
        return self.start + self.budget_s - reserve_s

    def log(self, message: str) -> None:
        self._log(f"[{self.elapsed():6.1f}s] {message}")


class Artifacts:
    """The files candidates are made of, each made once on first use: the ONNX export, the fp32 OpenVINO IR that
    takes pixels, and its NNCF int8 quantization."""

    def __init__(self, source: Source, reference, inputs: Inputs, held_out: np.ndarray, work: Path, clock: Clock):
        self.source, self.reference, self.inputs, self.held_out = source, reference, inputs, held_out
        self.work, self.clock = work, clock
        self.onnx_error = None

    @cached_property
    def example(self) -> torch.Tensor:
        return self.inputs.normalised[:2]

    @cached_property
    def onnx(self) -> Path | None:
        try:
            return export_onnx(self.reference, self.example, self.work, self.source.name)
        except Exception as err:  # an exporter that cannot take this model: the OpenVINO rows convert the module
            self.onnx_error = f"ONNX export failed ({' '.join(str(err).split())[:300]})"
            return None

    @cached_property
    def ir(self) -> Path:
        config = self.inputs.handler.config
        path = openvino_ir(self.onnx or self.reference, self.example, config["mean"], config["std"],
                           self.work / f"{self.source.name}.xml")
        self.clock.log("converted to an OpenVINO IR that takes pixels")
        return path

    @cached_property
    def int8(self) -> Path:
        start = time.monotonic()
        calibration = [self.inputs.pixels[i:i + 1].numpy() for i in np.flatnonzero(~self.held_out)]
        path = quantize_int8(self.ir, calibration, self.work / f"{self.source.name}-int8.xml")
        self.clock.log(f"NNCF post-training quantization on {len(calibration)} views: {time.monotonic() - start:.0f} s")
        return path


def optimize_archive(mar: str | Path, calibration: str | Path, export_path: str | Path, work: str | Path,
                     settings: Settings | None = None, log=logger.info) -> Optimized:
    """Measure every candidate for the image classifier archive `mar` on this machine, and write the fastest
    that passes the guard as `{export_path}/{name}.mar`."""
    from export.views import make_views, read_photos
    from handlers.explain import load_explainer
    from handlers.tasks import TASKS, task_of_handler_file
    from handlers.runtime import cpu_info, usable_cores

    settings = settings or Settings()
    clock = Clock(settings.budget_s, log)
    work = Path(work)
    if is_transformer_archive(mar):
        from export.optimize.text import optimize_transformer_archive

        return optimize_transformer_archive(mar, calibration, export_path, work, settings, clock)
    source = Source.open(mar, work)
    task = task_of_handler_file(source.archiver["handler"])
    if task is None or task.guard is None:
        supported = [t.name for t in TASKS.values() if t.guard]
        raise NotSupported(f"tskit optimize has an accuracy guard for {', '.join(supported)} archives so far; "
                           f"{Path(mar).name} is served by {source.archiver['handler']}: not supported yet")
    guard = GUARDS[task.guard]
    cores, cpu, batch_size, root = settings.cores or usable_cores(), cpu_info(), source.batch_size, source.root
    thresholds = settings.thresholds
    clock.log(f"{Path(mar).name}: {source.name} {source.archiver['modelVersion']}, batch {batch_size}, {cores} cores, "
              f"{cpu['model']}; budget {settings.budget_s:.0f} s")

    # 1. views and reference
    photos = read_photos(calibration)
    views = make_views(photos, settings.views)
    held_out = np.array([v.held_out for v in views])
    payloads = [v.payload for v in views]
    held_out_photos = len({v.photo for v in views if v.held_out})
    clock.log(f"{len(views)} views of {len(photos)} photos, {held_out_photos} held out of calibration")
    torch.set_num_threads(cores)
    reference_pre = archive_handler(root, batch_size, precision="fp32", fast_decode=False)
    fmt = reference_pre.model_format
    reference = load_explainer(str(root), str(source.serialized_file),
                               str(source.model_file) if source.model_file else None, fmt, torch.device("cpu"),
                               reference_pre.config["model_class"] or None)
    reference_logits = forward_all(reference, preprocessed(reference_pre, payloads)[0])
    clock.log("reference answers computed (fp32, full decoding)")
    inputs = Inputs(archive_handler(root, batch_size, precision="fp32"), payloads)
    built = archive_handler(root, batch_size)
    missing = missing_packages()
    candidates = plan(fmt, built.precision, str(source.serialized_file), settings.only, missing,
                      None if missing["openvino"] else native_bf16())
    report = Report(Path(mar).name, cpu, batch_size, cores, len(photos), len(views), held_out_photos, candidates,
                    thresholds, settings.budget_s)
    artifacts = Artifacts(source, reference, inputs, held_out, work, clock)
    splits = worker_splits(cores)
    judge_seconds = [0.0]

    def judge(candidate: Candidate) -> None:
        began = time.monotonic()
        model = load(candidate, cores, root, batch_size)
        candidate.guard = guard(reference_logits, forward_all(model, inputs.of(candidate)), held_out)
        refusal = candidate.guard.refusal(thresholds)
        candidate.verdict = f"refused: {refusal}" if refusal else "passes"
        judge_seconds[0] = max(judge_seconds[0], time.monotonic() - began)
        clock.log(f"{candidate.name}: {candidate.guard.summary()}: {candidate.verdict}")

    def reserve() -> float:
        """What the stages after judging need: forward speed of the passing rows, decoders, two builds, the
        served split; from this run's own judging time where it helps."""
        passing = sum(c.verdict == "passes" for c in candidates) + 2
        speed = len(splits) * (passing * (settings.seconds + 2) + 6)
        served = len(splits) * (2 * settings.seconds + 10)
        return speed + served + 3 * judge_seconds[0] + 60

    # 2. and 3. judge each candidate; the mixed int8 rows only where no plain int8 passes
    for candidate in candidates:
        if not candidate.open:
            continue
        if clock.elapsed() > settings.budget_s - reserve() and not candidate.as_built:
            candidate.verdict = f"skipped: the {settings.budget_s:.0f} s budget is spent"
            continue
        if candidate.engine == "onnxruntime" and not candidate.as_built:
            if artifacts.onnx is None:
                candidate.verdict = f"skipped: {artifacts.onnx_error}"
                continue
            candidate.files = [str(artifacts.onnx)]
        elif candidate.quantize == "plain":
            candidate.files = [str(artifacts.int8)]
        elif candidate.quantize == "mixed":
            if not mixed_int8_row(candidate, candidates, artifacts, reference_logits, held_out, guard, thresholds,
                                  cores, clock.deadline(reserve()), clock, settings.budget_s):
                clock.log(f"{candidate.name}: {candidate.verdict}")
                continue
        elif candidate.engine == "openvino":
            candidate.files = [str(artifacts.ir)]
        judge(candidate)

    # 4. forward speed of every passing candidate, every split
    passing = [c for c in candidates if c.verdict == "passes"]
    batches = {}
    for kind in {"pixels" if c.pixels else "normalised" for c in passing}:
        batches[kind] = work / f"rate-{kind}.pt"
        torch.save(getattr(inputs, kind)[:batch_size].clone(), batches[kind])
    for workers, threads in splits:
        jobs = [forward_job(c, root, batch_size, batches["pixels" if c.pixels else "normalised"]) for c in passing]
        for candidate, rates in zip(passing, measure(jobs, workers, threads, settings.seconds, work)):
            candidate.rates[split_name(workers, threads)] = rates[0]
    for candidate in passing:
        clock.log(f"{candidate.name}: forward " + ", ".join(f"{k} {v:.0f}/s" for k, v in candidate.rates.items()))
    if not passing:
        report.seconds = clock.elapsed()
        return Optimized(report, None)
    winner = max(passing, key=lambda c: c.best[1])
    winner.verdict = "chosen"
    for c in passing:
        if c is not winner:
            c.verdict = f"passes, slower ({c.best[1]:.0f} vs {winner.best[1]:.0f} images/s)"
    report.chosen = winner.name

    # 5. decoder
    report.decoders = judge_decoders(winner, inputs, reference_logits, held_out, root, batch_size, cores, guard,
                                     thresholds, clock.log)
    report.decoder = next(d.name for d in report.decoders if d.verdict == "chosen")

    # 6. and 7. the archive (first in the work folder), then the split its own handler serves best
    first = winner.best[0]
    provisional = write_archive(source, winner, report.decoder, int(first.split("x")[0]), fmt, report.to_dict(),
                                work / "provisional", settings.version, work)
    clock.log("measuring the archive served, per split (decoding included)")
    served = {}
    for workers, threads in splits:
        job = served_job(provisional, payloads[:SERVED_REQUESTS], batch_size, work)
        served[split_name(workers, threads)] = measure([job], workers, threads, settings.seconds, work, rounds=2)[0]
    choice = choose_split(served)
    report.served, report.split, report.split_reason = choice.rates, choice.split, choice.reason
    clock.log(f"{choice.split} chosen: {choice.reason}")
    report.seconds = clock.elapsed()
    archive = write_archive(source, winner, report.decoder, int(choice.split.split("x")[0]), fmt, report.to_dict(),
                            export_path, settings.version, work)
    clock.log(f"wrote {archive}")
    report.seconds = clock.elapsed()
    return Optimized(report, archive)


def is_transformer_archive(mar: str | Path) -> bool:
    from export.variants import archiver_model
    from handlers.loading import is_transformer

    return is_transformer(archiver_model(mar).get("serializedFile", ""))


def mixed_int8_row(candidate: Candidate, candidates: list[Candidate], artifacts: Artifacts, reference: torch.Tensor,
                   held_out: np.ndarray, guard, thresholds: Thresholds, cores: int, deadline: float, clock: Clock,
                   budget_s: float) -> bool:
    """Prepare an openvino-int8-mixed row: skipped where a plain int8 row passes; else the search runs (once, for
    both mixed rows) and its passing model becomes the row's IR. False when the row is settled without judging."""
    from export.optimize import mixed_int8

    plain = [c for c in candidates if c.quantize == "plain" and c.guard is not None]
    if any(c.verdict == "passes" for c in plain):
        candidate.verdict = "skipped: plain int8 passes the guard"
        return False
    path = artifacts.work / f"{artifacts.source.name}-int8-mixed.xml"
    found = next((c for c in candidates if c.quantize == "mixed" and c.search is not None), None)
    if found is None:
        import openvino as ov

        clock.log(f"{candidate.name}: searching for the layers to keep in floating point, until "
                  f"{deadline - clock.start:.0f} s into the run")
        model = ov.Core().read_model(str(artifacts.int8))
        outcome = mixed_int8.search(model, artifacts.inputs.pixels, reference, held_out, guard, thresholds, cores,
                                    deadline, lambda message: clock.log(f"{candidate.name}: {message}"))
        if outcome.passed:
            mixed_int8.save(outcome.model, path)
        candidate.search = outcome.to_dict()
    else:
        candidate.search = found.search
    if not candidate.search["kept"] and not path.exists():
        best = max(candidate.search["steps"], key=lambda s: s["guard"]["confident"], default=None)
        figures = f"; best: {best['kept']} layers kept, confident {best['guard']['confident']:.1%}" if best else ""
        candidate.verdict = (f"refused: no int8 variant passed the guard within {budget_s:.0f} s "
                             f"({candidate.search['stopped']}{figures})")
        return False
    candidate.files = [str(path)]
    return True
