"""`tskit optimize` for the Hugging Face archives (transformer_classifier, token_classifier, sentence_embedder), step
by step:

1. texts: `--calibration` is a text file (one text per line) or a folder of them (one text per file); every third
   is held out of int8 calibration; the archive's own handler tokenizes them as it will serve them;
2. reference: the archive's fp32 model on every text, in the server's batches (padded to their longest text);
3. candidates (the rows of candidates.RECIPES but the mixed int8 search, which is the image classifier's so far),
   made from the archive's ONNX graph (exported from an eager archive): ONNX Runtime fp32, OpenVINO fp32 / bf16
   hint, NNCF int8 (transformer preset) plain and with the bf16 hint, each with dynamic batch and length; each is
   held to the task's guard (guard.py) against the reference on the same texts;
4. speed: an archive is built for every passing candidate and served in-process, `workers` processes at once per
   workers x threads split (speed.py's served job), on the calibration texts in the server's batch size, so
   tokenizing, padding and the length mix are in the figure; the fastest (candidate, split) wins, the split
   within noise going to more workers;
5. the archive: the winner's files in the source's layout, its split in model-config.yaml, the report in the
   manifest.
"""
import functools
import json
import shutil
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from export.optimize.candidates import Candidate, plan
from export.optimize.engines import missing_packages, native_bf16
from export.optimize.guard import GUARDS, Thresholds
from export.optimize.output import Source
from export.optimize.speed import choose_split, measure, served_job, split_name, worker_splits
from handlers.entities import TokenLogits

MIN_TEXTS = 30
MODEL_NAMES = ("model.onnx", "model.xml", "model.bin", "model.safetensors", "model.torchscript.pt")


def read_texts(calibration: str | Path) -> list[str]:
    """A text file's non-empty lines, or a folder's files (each one text), in name order."""
    path = Path(calibration)
    if path.is_dir():
        texts = [p.read_text(encoding="utf-8").strip() for p in sorted(path.iterdir()) if p.is_file()]
    else:
        texts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    texts = [t for t in texts if t]
    if len(texts) < MIN_TEXTS:
        raise ValueError(f"--calibration {calibration}: {len(texts)} texts; give at least {MIN_TEXTS} like the ones "
                         "it will serve (a text file, one per line, or a folder of text files)")
    return texts


@dataclass
class TextReport:
    archive: str
    cpu: dict
    batch_size: int
    cores: int
    texts: int
    held_out: int
    candidates: list[Candidate]
    thresholds: Thresholds
    budget_s: float
    served: dict = field(default_factory=dict)  # candidate -> {split: [rounds]}
    chosen: str | None = None
    split: str | None = None
    split_reason: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"archive": self.archive, "cpu": self.cpu, "batch_size": self.batch_size, "cores": self.cores,
                "texts": self.texts, "held_out": self.held_out, "budget_s": self.budget_s,
                "thresholds": vars(self.thresholds), "chosen": self.chosen, "split": self.split,
                "split_reason": self.split_reason, "seconds": round(self.seconds, 1),
                "candidates": [{"name": c.name, "engine": c.engine, "precision": c.precision, "as_built": c.as_built,
                                "verdict": c.verdict, "guard": vars(c.guard) if c.guard else None,
                                "served": {k: round(sum(v) / len(v), 1) for k, v in self.served.get(c.name, {}).items()}}
                               for c in self.candidates]}

    def table(self) -> str:
        lines = [f"{self.archive}: {self.texts} texts ({self.held_out} held out of calibration), batch "
                 f"{self.batch_size}, {self.cores} cores, {self.cpu.get('model', '?')}",
                 f"{'candidate':<26} {'served texts/s':<20} verdict (guard)"]
        for c in self.candidates:
            rates = ", ".join(f"{k} {sum(v) / len(v):.0f}" for k, v in self.served.get(c.name, {}).items())
            lines.append(f"{c.name:<26} {rates:<20} {c.verdict}" + (f" ({c.guard.summary()})" if c.guard else ""))
        if self.chosen:
            lines.append(f"chosen: {self.chosen}, {self.split} ({self.split_reason}); {self.seconds:.0f} s")
        return "\n".join(lines)


class Engines:
    """The files candidates are made of, each made once: the ONNX graph, its OpenVINO IR, the IR's int8."""

    def __init__(self, source: Source, description: dict, items: list, held_out: np.ndarray, work: Path, log):
        self.source, self.description, self.items, self.held_out, self.work, self.log = (
            source, description, items, held_out, work, log)

    @cached_property
    def onnx(self) -> Path:
        fmt, model = self.description["format"], self.source.root / self.description["model"]
        if fmt == "onnx":
            return model
        if fmt != "eager":
            raise ValueError(f"a {fmt} transformer archive cannot be optimized: build it --format onnx or eager")
        from export.hugging_face import export_folder_onnx

        path = export_folder_onnx(model.parent, self.description, self.work / "onnx")
        self.log("exported the eager model to ONNX (dynamic batch and length)")
        return path

    @cached_property
    def ir(self) -> Path:
        import openvino as ov

        path = self.work / "model.xml"
        ov.save_model(ov.convert_model(str(self.onnx)), str(path), compress_to_fp16=False)
        self.log("converted to an OpenVINO IR")
        return path

    @cached_property
    def int8(self) -> Path:
        from export.optimize.engines import quantize_int8
        from handlers.tokens import pad

        start = time.monotonic()
        names = self.description["inputs"]
        calibration = [{n: t.numpy() for n, t in zip(names, pad([item], self.description["pad_id"]).inputs(names))}
                       for item, held in zip(self.items, self.held_out) if not held]
        (self.work / "int8").mkdir(exist_ok=True)
        path = quantize_int8(self.ir, calibration, self.work / "int8" / "model.xml", transformer=True)
        self.log(f"NNCF int8 (transformer preset) on {len(calibration)} texts: {time.monotonic() - start:.0f} s")
        return path


def run_model(handler, model, items: list) -> torch.Tensor:
    """`model` in the handler's place, on `items` in the server's batches."""
    served, handler.model = handler.model, model
    try:
        outputs = [handler.forward(handler.collate(items[i:i + handler.batch_size]))
                   for i in range(0, len(items), handler.batch_size)]
    finally:
        handler.model = served
    if isinstance(outputs[0], TokenLogits):  # per-token rows of different lengths
        return TokenLogits.join(outputs)
    return torch.cat(outputs)


def candidate_model(candidate: Candidate, engines: Engines, threads: int):
    from handlers.loading import OnnxModel, OpenVinoModel

    if candidate.engine == "onnxruntime":
        candidate.files = [str(engines.onnx)]
        return OnnxModel(candidate.files[0], torch.device("cpu"), threads)
    ir = engines.int8 if candidate.quantize == "plain" else engines.ir
    candidate.files = [str(ir), str(ir.with_suffix(".bin"))]
    return OpenVinoModel(str(ir), threads, "bf16" if candidate.bf16_hint else "fp32")


def write_transformer_archive(source: Source, description: dict, candidate: Candidate, workers: int,
                              export_path: Path, version: str | None, work: Path, report: dict) -> Path:
    """The source archive's name, handler, tokenizer, golden texts and drift reference, served by `candidate`'s
    files with `workers` workers."""
    from export.archive import ArchiveSpec, build_archive
    from export.golden import GoldenInput
    from export.hugging_face import write_worker_requirements
    from handlers.drift import REFERENCE_NAME
    from handlers.loading import TRANSFORMER_FILE

    stage = work / f"stage-{candidate.name}-{workers}"
    shutil.rmtree(stage, ignore_errors=True)
    folder = stage / Path(description["model"]).parent.name
    shutil.copytree(source.root / Path(description["model"]).parent, folder)
    written = dict(description)
    if not candidate.as_built:
        for name in MODEL_NAMES:
            (folder / name).unlink(missing_ok=True)
        fmt = "onnx" if candidate.engine == "onnxruntime" else "openvino"
        target = "model.onnx" if fmt == "onnx" else "model.xml"
        shutil.copy(candidate.files[0], folder / target)
        if fmt == "openvino":
            shutil.copy(candidate.files[1], folder / "model.bin")
        written.update(format=fmt, model=f"{folder.name}/{target}")
    (stage / TRANSFORMER_FILE).write_text(json.dumps(written, indent=1))
    requirements = write_worker_requirements(written["format"], stage / "requirements.txt")
    handler_config = dict(source.config.get("handler") or {})
    handler_config.pop("threads", None)  # the cores divided among the workers, as each worker computes at load
    if candidate.bf16_hint:
        handler_config["precision"] = "bf16"
    config = {**source.config, "minWorkers": workers, "maxWorkers": workers, "handler": handler_config}
    golden = source.root / "golden"
    reference = source.root / REFERENCE_NAME
    return build_archive(ArchiveSpec(
        source.name, str(stage / TRANSFORMER_FILE), handler=description["task"], config=config,
        export_path=str(export_path), version=version or source.archiver["modelVersion"],
        extra_files=[str(folder)], requirements=str(requirements),
        golden_inputs=[GoldenInput(p.name, p.read_bytes()) for p in sorted(golden.iterdir())] if golden.is_dir() else [],
        reference_file=str(reference) if reference.is_file() else None, manifest_extra={"optimization": report}))


def optimize_transformer_archive(mar: str | Path, calibration: str | Path, export_path: str | Path, work: Path,
                                 settings, clock):
    """Steps 1 to 5 of the module docstring for the transformer archive `mar`; returns run.Optimized."""
    import importlib

    from export.inprocess import load_handler
    from export.optimize.run import Optimized
    from handlers.loading import read_transformer
    from handlers.runtime import cpu_info, usable_cores
    from handlers.tasks import TASKS

    source = Source.open(mar, work)
    description = read_transformer(str(source.serialized_file))
    task = TASKS[description["task"]]
    guard = GUARDS[task.guard]
    cores, batch_size, thresholds = settings.cores or usable_cores(), source.batch_size, settings.thresholds
    clock.log(f"{Path(mar).name}: {source.name} ({description['architecture']}, {description['format']}), batch "
              f"{batch_size}, {cores} cores, {cpu_info()['model']}; budget {settings.budget_s:.0f} s")

    # 1. and 2. texts, tokenized by the archive's handler, and the fp32 reference
    texts = read_texts(calibration)
    held_out = np.array([i % 3 == 2 for i in range(len(texts))])
    torch.set_num_threads(cores)
    handler_class = getattr(importlib.import_module(f"handlers.{task.module}"), task.class_name)
    handler = load_handler(handler_class, source.root, batch_size=batch_size,
                           yaml_overrides={"handler": {"precision": "fp32", "threads": cores, "warmup": False}})
    if task.guard == "entities":  # entities are grouped from the labels' names, as the handler answers them
        guard = functools.partial(guard, labels=handler.labels, ignore=tuple(handler.config["ignore_labels"]))
    items = [handler.decode({"body": text.encode("utf-8")}) for text in texts]
    reference = run_model(handler, handler.model, items)
    clock.log(f"{len(texts)} texts ({int(held_out.sum())} held out of calibration); reference answers computed")

    # 3. candidates, each judged by the task's guard
    missing = missing_packages()
    candidates = plan(description["format"], "fp32", str(source.serialized_file), settings.only, missing,
                      None if missing["openvino"] else native_bf16())
    report = TextReport(Path(mar).name, cpu_info(), batch_size, cores, len(texts), int(held_out.sum()), candidates,
                        thresholds, settings.budget_s)
    engines = Engines(source, description, items, held_out, work, clock.log)
    for candidate in candidates:
        if candidate.quantize == "mixed" and candidate.open:
            candidate.verdict = "skipped: the mixed int8 search is the image classifier's so far"
        if not candidate.open:
            continue
        if clock.elapsed() > settings.budget_s * 0.6 and not candidate.as_built:
            candidate.verdict = f"skipped: the {settings.budget_s:.0f} s budget is spent"
            continue
        try:
            model = handler.model if candidate.as_built else candidate_model(candidate, engines, cores)
        except Exception as err:  # an exporter or quantizer that cannot take this model: that row only
            candidate.verdict = f"skipped: {type(err).__name__}: {' '.join(str(err).split())[:200]}"
            clock.log(f"{candidate.name}: {candidate.verdict}")
            continue
        candidate.guard = guard(reference, run_model(handler, model, items), held_out)
        refusal = candidate.guard.refusal(thresholds)
        candidate.verdict = f"refused: {refusal}" if refusal else "passes"
        clock.log(f"{candidate.name}: {candidate.guard.summary()}: {candidate.verdict}")
    passing = [c for c in candidates if c.verdict == "passes"]
    if not passing:
        report.seconds = clock.elapsed()
        return Optimized(report, None)

    # 4. served speed of every passing candidate, every split
    payloads = [text.encode("utf-8") for text in texts]
    provisional = {c.name: write_transformer_archive(source, description, c, 1, work / "provisional" / c.name,
                                                     settings.version, work, {}) for c in passing}
    clock.log(f"measuring {len(passing)} candidates served, per split (tokenizing and padding included)")
    for workers, threads in worker_splits(cores):
        jobs = [served_job(provisional[c.name], payloads, batch_size, work) for c in passing]
        for c, rounds in zip(passing, measure(jobs, workers, threads, settings.seconds, work, rounds=2)):
            report.served.setdefault(c.name, {})[split_name(workers, threads)] = rounds
    for c in passing:
        clock.log(f"{c.name}: served " + ", ".join(f"{k} {sum(v) / len(v):.0f} texts/s"
                                                   for k, v in report.served[c.name].items()))
    best_rate = {c.name: max(sum(v) / len(v) for v in report.served[c.name].values()) for c in passing}
    winner = max(passing, key=lambda c: best_rate[c.name])
    for c in passing:
        c.verdict = "chosen" if c is winner else (f"passes, slower ({best_rate[c.name]:.0f} vs "
                                                  f"{best_rate[winner.name]:.0f} texts/s)")
    choice = choose_split(report.served[winner.name])
    report.chosen, report.split, report.split_reason = winner.name, choice.split, choice.reason
    clock.log(f"{winner.name}, {choice.split} chosen: {choice.reason}")

    # 5. the archive
    report.seconds = clock.elapsed()
    archive = write_transformer_archive(source, description, winner, int(choice.split.split("x")[0]),
                                        Path(export_path), settings.version, work, report.to_dict())
    clock.log(f"wrote {archive}")
    report.seconds = clock.elapsed()
    return Optimized(report, archive)
