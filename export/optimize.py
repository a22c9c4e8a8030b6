"""`tskit optimize`: the fastest engine and precision on this machine that keeps what users see, as an archive.

The reference is the archive's fp32 model (eager or TorchScript: its own, or the eager weights it ships for
explanations) behind full-size decoding. Candidates run behind the archive's own preprocessing (JPEG draft
decoding included: every shortcut answers to the same guard):

    as built                    the archive's own engine and config
    onnxruntime fp32            ONNX exported from the reference
    openvino fp32               OpenVINO IR converted from the reference
    openvino bf16               the same IR with OpenVINO's bf16 inference-precision hint (CPUs with native bf16)
    openvino int8               NNCF post-training quantization, calibrated on views of the calibration photos
    openvino int8 (accuracy control)   NNCF's quantize_with_accuracy_control, tried when plain int8 fails

The guard (`guard`) runs every candidate on views of the photos (export/views.py; some photos are held out of
calibration) against the reference: (a) top-1 agreement on the views where the reference is confident (top-1
probability >= 0.5) at least `min_confident`, and (b) the reference's top-1 inside the candidate's top-5 on at
least `min_top5` of all views. Speed is the forward pass at the archive's batch size, measured here for each
split of the cores into workers x threads (never more than the cores), since that is what a server runs.
The winner becomes an archive of the same model name (`model-config.yaml` with its precision, threads and
workers), sealed with golden answers from the new engine and the whole report in its manifest.
"""
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from export.views import make_views, read_photos

logger = logging.getLogger(__name__)

CONFIDENT = 0.5  # the reference's top-1 probability above which a view counts as confident
CHUNK = 8  # views per forward pass while judging accuracy (eager Lite0: 40 images/s at 8, 19 at 32, 2 threads)


class NotSupported(ValueError):
    pass


@dataclass
class GuardResult:
    views: int
    confident_views: int
    overall: float  # top-1 agreement on all views
    confident: float  # (a) top-1 agreement where the reference is confident
    top5: float  # (b) the reference's top-1 in the candidate's top 5
    held_out_confident: float  # (a) on the photos calibration never saw

    def refusal(self, min_confident: float, min_top5: float) -> str | None:
        if self.confident < min_confident:
            return f"confident agreement {self.confident:.1%} < {min_confident:.1%}"
        if self.top5 < min_top5:
            return f"top-5 containment {self.top5:.1%} < {min_top5:.1%}"
        return None


def guard(reference: torch.Tensor, candidate: torch.Tensor, held_out: np.ndarray) -> GuardResult:
    """Compare [N, classes] logits of a candidate with the reference's on the same views."""
    probs = torch.softmax(reference.float(), dim=1)
    top_p, ref_top1 = probs.max(dim=1)
    agree = candidate.float().argmax(dim=1) == ref_top1
    in_top5 = (candidate.float().topk(5, dim=1).indices == ref_top1[:, None]).any(dim=1)
    confident = top_p >= CONFIDENT
    held = torch.from_numpy(held_out) & confident

    def share(mask: torch.Tensor, where: torch.Tensor) -> float:
        return float(mask[where].float().mean()) if where.any() else 1.0

    everywhere = torch.ones_like(agree)
    return GuardResult(len(agree), int(confident.sum()), share(agree, everywhere), share(agree, confident),
                       share(in_top5, everywhere), share(agree, held))


@dataclass
class Candidate:
    name: str
    engine: str  # the archive format that serves it
    precision: str  # what the worker computes in: fp32, bf16, int8
    files: list[str] = field(default_factory=list)  # serialized file first (an IR's .bin after it)
    guard: GuardResult | None = None
    rates: dict[str, float] = field(default_factory=dict)  # "workers x threads" -> images/s, all workers
    verdict: str = ""
    bf16_hint: bool = False  # OpenVINO computes what is not int8 in bf16

    @property
    def pixels(self) -> bool:
        """Takes uint8 NHWC pixels (every OpenVINO IR written here), not normalised fp32."""
        return self.engine == "openvino"

    @property
    def best(self) -> tuple[str, float] | None:
        return max(self.rates.items(), key=lambda kv: kv[1]) if self.rates else None


@dataclass
class Decoder:
    name: str  # the image classifier's `decoder` setting
    ms_per_image: float = 0.0  # decode + resize + crop + collate, one core
    guard: GuardResult | None = None
    verdict: str = ""


ACCURACY_COLUMNS = "overall | (a) confident | held-out (a) | (b) top-5 | chosen or why not |"


def accuracy_cells(g: "GuardResult | None") -> list[str]:
    if g is None:
        return ["-"] * 4
    return [f"{g.overall:.1%}", f"{g.confident:.1%} of {g.confident_views}", f"{g.held_out_confident:.1%}",
            f"{g.top5:.1%}"]


@dataclass
class Report:
    archive: str
    cpu: dict
    batch_size: int
    cores: int
    photos: int
    held_out_photos: int
    candidates: list[Candidate]
    chosen: str | None = None
    min_confident: float = 0.99
    min_top5: float = 0.99
    decoders: list["Decoder"] = field(default_factory=list)
    decoder: str | None = None  # the chosen one

    def table(self) -> str:
        flags = ", ".join(self.cpu["flags"]) or "no AVX-512/AMX"
        views = self.candidates[0].guard.views if self.candidates and self.candidates[0].guard else 0
        lines = [f"tskit optimize {self.archive} on {self.cpu['model']} ({self.cores} cores; {flags})",
                 f"guard: {views} views of {self.photos} photos ({self.held_out_photos} held out of calibration); "
                 f"(a) confident top-1 agreement >= {self.min_confident:.0%}, (b) reference top-1 in top-5 >= "
                 f"{self.min_top5:.0%}",
                 f"| candidate | forward images/s, batch {self.batch_size} (workers x threads) | " + ACCURACY_COLUMNS,
                 "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in self.candidates:
            best = c.best
            others = "".join(f"; {k}: {v:.0f}" for k, v in c.rates.items() if best and k != best[0])
            speed = f"{best[1]:.0f} ({best[0]}){others}" if best else "-"
            lines.append(f"| {c.name} | {speed} | " + " | ".join(accuracy_cells(c.guard)) + f" | {c.verdict} |")
        if self.decoders:
            lines += ["", f"| preprocessing, with {self.chosen} | ms per image (one core) | " + ACCURACY_COLUMNS,
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            for d in self.decoders:
                cells = " | ".join(accuracy_cells(d.guard))
                lines.append(f"| decoder {d.name} | {d.ms_per_image:.2f} | {cells} | {d.verdict} |")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return asdict(self)


def forward_all(model, tensors: torch.Tensor) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for i in range(0, len(tensors), CHUNK):
            outs.append(torch.as_tensor(model(tensors[i:i + CHUNK])).float())
    return torch.cat(outs)


def forward_rate(model, batch: torch.Tensor, seconds: float) -> float:
    """Images/s of `model` on `batch`, after one warm-up call."""
    with torch.inference_mode():
        model(batch)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            model(batch)
            done += len(batch)
    return done / (time.perf_counter() - start)


def parallel_rates(candidates: list["Candidate"], workers: int, threads: int, root: Path, batch_size: int,
                   batches: dict[str, Path], seconds: float, work: Path) -> list[float]:
    """Images/s of each candidate run by `workers` processes at once, each loading it on `threads` threads as a
    worker does: what a server with that split gets (one process alone hides interference: OpenVINO pins every
    process's thread to the same core by default, which halved two workers' throughput here). The processes
    load one candidate at a time (two compiled engines in one process slow each other), then measure it, in
    step."""
    import subprocess
    import sys

    spec = work / f"rate-{workers}x{threads}.json"
    spec.write_text(json.dumps({"candidates": [asdict(c) for c in candidates], "threads": threads,
                                "root": str(root), "batch_size": batch_size, "seconds": seconds,
                                "batches": {k: str(v) for k, v in batches.items()}}))
    procs = [subprocess.Popen([sys.executable, "-m", "export.optimize", str(spec)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(workers)]
    def ask(command: str) -> list[str]:
        for proc in procs:
            proc.stdin.write(command + "\n")
            proc.stdin.flush()
        answers = [proc.stdout.readline().strip() for proc in procs]
        if not all(answers):
            raise RuntimeError(f"measuring speed failed:\n{procs[0].stderr.read()[-2000:]}")
        return answers

    rates = []
    try:
        for index in range(len(candidates)):
            ask(f"load {index}")  # every process has it loaded before any measures
            rates.append(sum(float(answer) for answer in ask("run")))
    finally:
        for proc in procs:
            proc.stdin.close()
            proc.wait()
    return rates


def _rate_main(spec_file: str) -> None:
    """One worker-like process of `parallel_rates`: `load I` loads candidate I (dropping the one before) and
    answers "loaded"; `run` measures it and answers its images/s; until stdin closes."""
    import sys

    spec = json.loads(Path(spec_file).read_text())
    keep = ("name", "engine", "precision", "files", "bf16_hint")
    candidates = [Candidate(**{k: v for k, v in c.items() if k in keep}) for c in spec["candidates"]]
    batches = {k: torch.load(v) for k, v in spec["batches"].items()}
    model = candidate = None
    for line in sys.stdin:
        if line.startswith("load "):
            model = None
            candidate = candidates[int(line.split()[1])]
            model = engine(candidate, spec["threads"], Path(spec["root"]), spec["batch_size"])
            print("loaded", flush=True)
        else:
            batch = batches["pixels" if candidate.pixels else "normalised"]
            print(forward_rate(model, batch, spec["seconds"]), flush=True)


# ---- candidates ---------------------------------------------------------------------------------------
def worker_splits(cores: int) -> list[tuple[int, int]]:
    """(workers, threads each) with workers x threads = the cores: every way a server can use them."""
    return [(w, cores // w) for w in range(cores, 0, -1) if cores % w == 0]


def openvino_available() -> str | None:
    """None when OpenVINO (and NNCF) import, else why not."""
    try:
        import openvino  # noqa: F401
    except ImportError as err:
        return f"openvino not installed ({err.name})"
    return None


def native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_onnx(module: torch.nn.Module, example: torch.Tensor, work: Path, name: str) -> Path:
    from export.formats import export_model

    if isinstance(module, torch.jit.ScriptModule):  # the dynamo exporter does not take TorchScript
        path = work / f"{name}.onnx"
        torch.onnx.export(module, (example,), str(path), input_names=["input"], output_names=["output"],
                          dynamic_axes={"input": {0: "batch"}}, dynamo=False)
        return path
    return export_model(module, example, "onnx", work, name).serialized_file


def openvino_ir(source, example: torch.Tensor, mean: list[float], std: list[float], path: Path) -> Path:
    """An fp32 IR from an ONNX file or a torch module that takes uint8 NHWC pixels (any batch) and normalises
    them itself with `mean` and `std` (0..1 units, recorded in its rt_info): the worker then skips its own
    normalisation pass (9% of a worker's time in a profile of the served int8 model)."""
    import openvino as ov
    from openvino.preprocess import PrePostProcessor

    if isinstance(source, Path):
        model = ov.convert_model(str(source))
        model.reshape(ov.PartialShape([-1, *example.shape[1:]]))
    else:
        model = ov.convert_model(source, example_input=example, input=[ov.PartialShape([-1, *example.shape[1:]])])
    ppp = PrePostProcessor(model)
    ppp.input().tensor().set_element_type(ov.Type.u8).set_layout(ov.Layout("NHWC"))
    ppp.input().preprocess().convert_element_type(ov.Type.f32).mean([m * 255 for m in mean]) \
        .scale([s * 255 for s in std])
    ppp.input().model().set_layout(ov.Layout("NCHW"))
    model = ppp.build()
    model.set_rt_info(json.dumps(mean), ["tskit", "mean"])
    model.set_rt_info(json.dumps(std), ["tskit", "std"])
    ov.save_model(model, str(path), compress_to_fp16=False)
    return path


def quantize_int8(ir: Path, calibration: list[np.ndarray], path: Path) -> Path:
    """NNCF post-training quantization of an IR, calibrated on `calibration` (model inputs, batch 1 each);
    the IR's rt_info (the pixel normalisation) carries over."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ir))
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=len(calibration))
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def quantize_int8_controlled(ir: Path, calibration: list[np.ndarray], labels: np.ndarray, max_drop: float,
                             path: Path) -> Path:
    """NNCF's accuracy-controlled quantization: layers go back to fp32, most harmful first, until top-1
    agreement with the reference labels on the calibration views drops at most `max_drop`."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ir))
    items = list(zip(calibration, labels))

    def agreement(compiled, data) -> float:
        output = compiled.outputs[0]
        return float(np.mean([int(np.argmax(compiled(x)[output])) == y for x, y in data]))

    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(calibration), nncf.Dataset(items, lambda item: item[0]), agreement,
        max_drop=max_drop, drop_type=nncf.DropType.ABSOLUTE, subset_size=len(calibration))
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def engine(candidate: Candidate, threads: int, root: Path, batch_size: int):
    """A model for `candidate` on `threads` threads, loaded as a worker loads it: batch -> logits (OpenVINO
    candidates take uint8 pixels, the others normalised fp32)."""
    from handlers.loading import OnnxModel, OpenVinoModel

    if candidate.engine == "onnx":
        return OnnxModel(candidate.files[0], torch.device("cpu"), threads)
    if candidate.engine == "openvino":
        return OpenVinoModel(candidate.files[0], threads, "bf16" if candidate.bf16_hint else "fp32")
    handler = archive_handler(root, batch_size, threads=threads)  # as built: the archive's own engine and config
    return lambda batch: handler.forward(handler.to_model_input(batch))


def archive_handler(root: Path, batch_size: int, **handler_config):
    from export.inprocess import load_handler
    from handlers.image_classifier import ImageClassifier

    return load_handler(ImageClassifier, root, batch_size=batch_size,
                        yaml_overrides={"handler": {"warmup": False, **handler_config}})


def preprocessed(handler, payloads: list[bytes]) -> torch.Tensor:
    """The batches `preprocess` makes of request bodies, as fp32 tensors (every view must be accepted); the
    handler's `preprocess_ms` is set to the time per body."""
    start = time.perf_counter()
    out = []
    for i in range(0, len(payloads), CHUNK):
        chunk = payloads[i:i + CHUNK]
        state = handler.begin_batch(len(chunk))
        batch = handler.preprocess([{"body": p} for p in chunk])
        refused = [state.answers[k] for k in range(len(chunk)) if state.answered[k]]
        if refused:
            raise ValueError(f"a calibration view was refused: {refused[0]}")
        out.append(batch.float().contiguous())
    handler.preprocess_ms = (time.perf_counter() - start) * 1000 / max(1, len(payloads))
    return torch.cat(out)


def eager_weights(root: Path, archiver: dict, fmt: str) -> tuple[str | None, str | None]:
    """(state_dict, model file) an optimized archive ships for explanations: the ones the archive ships, else its
    own eager model; a TorchScript or compiled-only archive has none to give (its explanations answer 501)."""
    from handlers.explain import EXPLAIN_MODEL_FILE, EXPLAIN_WEIGHTS

    if (root / EXPLAIN_WEIGHTS).is_file() and (root / EXPLAIN_MODEL_FILE).is_file():
        return str(root / EXPLAIN_WEIGHTS), str(root / EXPLAIN_MODEL_FILE)
    if fmt == "eager":
        return str(root / archiver["serializedFile"]), str(root / archiver["modelFile"])
    return None, None


def judge_decoders(winner: Candidate, inputs: "Inputs", reference_logits: torch.Tensor, held_out: np.ndarray,
                   payloads: list[bytes], root: Path, batch_size: int, cores: int, min_confident: float,
                   min_top5: float, log) -> list[Decoder]:
    """The archive's own decoding and the faster ones, each through the chosen engine against the same guard;
    the fastest that passes is chosen (the archive's own always passes: the engine was judged with it)."""
    from handlers import jpeg

    own = inputs.handler.config["decoder"]
    rows = [Decoder(own, inputs.ms_per_image(payloads), winner.guard, "passes")]
    for name in ("pillow", "turbojpeg"):
        if name == own:
            continue
        if name == "turbojpeg" and not jpeg.available():
            rows.append(Decoder(name, verdict="skipped: simplejpeg or opencv-python-headless not installed"))
            continue
        other = Inputs(archive_handler(root, batch_size, precision="fp32", decoder=name), payloads)
        model = engine(winner, cores, root, batch_size)
        row = Decoder(name, other.ms_per_image(payloads),
                      guard(reference_logits, forward_all(model, other.of(winner)), held_out))
        refusal = row.guard.refusal(min_confident, min_top5)
        row.verdict = f"refused: {refusal}" if refusal else "passes"
        rows.append(row)
    best = min((r for r in rows if r.verdict == "passes"), key=lambda r: r.ms_per_image)
    for r in rows:
        if r.verdict == "passes":
            slower = f"passes, slower ({r.ms_per_image:.2f} vs {best.ms_per_image:.2f} ms)"
            r.verdict = "chosen" if r is best else slower
    for r in rows:
        log(f"decoder {r.name}: {r.ms_per_image:.2f} ms/image, {r.verdict}")
    return rows


class Inputs:
    """Every view as a handler with the archive's preprocessing (and `decoder`) makes it: normalised fp32 batches
    for torch and ONNX Runtime, the decoded uint8 pixels for OpenVINO IRs (which normalise themselves); each made
    on first use, so a run without OpenVINO candidates never decodes the views twice."""

    def __init__(self, handler, payloads: list[bytes]):
        self.handler = handler
        self.payloads = payloads

    @cached_property
    def normalised(self) -> torch.Tensor:
        return preprocessed(self.handler, self.payloads)

    @cached_property
    def pixels(self) -> torch.Tensor:
        return torch.stack([self.handler.decode({"body": p}) for p in self.payloads])

    def of(self, candidate: Candidate) -> torch.Tensor:
        return self.pixels if candidate.pixels else self.normalised

    def ms_per_image(self, payloads: list[bytes], sample: int = 64) -> float:
        """decode + resize + crop + normalise per image, on one core (a worker's share)."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            preprocessed(self.handler, payloads[:sample])
        finally:
            torch.set_num_threads(threads)
        return self.handler.preprocess_ms


# ---- the whole run ------------------------------------------------------------------------------------
@dataclass
class Optimized:
    report: Report
    archive: Path | None


def optimize_archive(mar: str | Path, calibration: str | Path, export_path: str | Path, work: str | Path,
                     min_confident: float = 0.99, min_top5: float = 0.99, views: int = 600, cores: int = 0,
                     seconds: float = 2.0, version: str | None = None, only: list[str] | None = None,
                     log=logger.info) -> Optimized:
    """Measure every candidate for the image classifier archive `mar` on this machine, and write the fastest
    that passes the guard as `{export_path}/{name}.mar`. `only`: candidate names to try (others skipped)."""
    from export.archive import ArchiveSpec, build_archive
    from export.golden import GoldenInput
    from export.inprocess import unpack_archive
    from export.variants import CONFIG_NAME
    from handlers.drift import REFERENCE_NAME
    from handlers.explain import load_explainer
    from handlers.integrity import read_manifest
    from handlers.runtime import cpu_info, usable_cores

    import yaml

    work = Path(work)
    root = unpack_archive(mar, work / "archive").resolve()
    manifest = read_manifest(root)
    archiver = json.loads((root / "MAR-INF" / "MANIFEST.json").read_text())["model"]
    if archiver["handler"] != "image_classifier.py":
        raise NotSupported(f"tskit optimize handles image classifier archives (--handler image_classifier) so "
                           f"far; {Path(mar).name} is served by {archiver['handler']}: not supported yet")
    config = yaml.safe_load((root / CONFIG_NAME).read_text()) or {}
    batch_size = int(config.get("batchSize", 1))
    cores = cores or usable_cores()
    cpu = cpu_info()
    log(f"{Path(mar).name}: {archiver['modelName']} {archiver['modelVersion']}, batch {batch_size}, {cores} cores, "
        f"{cpu['model']}")

    photos = read_photos(calibration)
    all_views = make_views(photos, views)
    held_out = np.array([v.held_out for v in all_views])
    payloads = [v.payload for v in all_views]
    held_out_photos = len({v.photo for v in all_views if v.held_out})
    log(f"{len(all_views)} views of {len(photos)} photos, {held_out_photos} held out of calibration")

    torch.set_num_threads(cores)
    reference_pre = archive_handler(root, batch_size, precision="fp32", fast_decode=False)
    reference = load_explainer(str(root), str(root / archiver["serializedFile"]),
                               str(root / archiver["modelFile"]) if archiver.get("modelFile") else None,
                               reference_pre.model_format, torch.device("cpu"),
                               reference_pre.config["model_class"] or None)
    reference_logits = forward_all(reference, preprocessed(reference_pre, payloads))
    log("reference answers computed (fp32, full decoding)")
    inputs = Inputs(archive_handler(root, batch_size, precision="fp32"), payloads)
    example = inputs.normalised[:2]
    mean, std = inputs.handler.config["mean"], inputs.handler.config["std"]

    built = archive_handler(root, batch_size)
    candidates = [Candidate(f"as built ({built.model_format} {built.precision})", "as built", built.precision,
                            [str(root / archiver["serializedFile"])])]
    name = archiver["modelName"]
    missing = openvino_available()
    try:
        onnx = export_onnx(reference, example, work, name)
        candidates.append(Candidate("onnxruntime fp32", "onnx", "fp32", [str(onnx)]))
    except Exception as err:  # an exporter that cannot take this model: the others still run
        onnx = None
        candidates.append(Candidate("onnxruntime fp32", "onnx", "fp32", verdict=f"skipped: ONNX export failed ({err})"))
    openvino_names = ("openvino fp32", "openvino bf16", "openvino int8", "openvino int8, bf16 hint",
                      "openvino int8 (accuracy control)")
    if missing:
        candidates += [Candidate(n, "openvino", "-", verdict=f"skipped: {missing}") for n in openvino_names[:-1]]
    else:
        ir = openvino_ir(onnx if onnx is not None else reference, example, mean, std, work / f"{name}.xml")
        log("exported to ONNX and OpenVINO IR")
        bf16 = native_bf16()
        no_bf16 = "" if bf16 else "skipped: this CPU has no native bf16"
        candidates += [Candidate("openvino fp32", "openvino", "fp32", [str(ir)]),
                       Candidate("openvino bf16", "openvino", "bf16", [str(ir)], verdict=no_bf16, bf16_hint=True),
                       Candidate("openvino int8", "openvino", "int8"),
                       Candidate("openvino int8, bf16 hint", "openvino", "int8", verdict=no_bf16, bf16_hint=True)]
    if only:
        for c in candidates:
            if c.name not in only and not c.verdict:
                c.verdict = "skipped: not asked for (--only)"

    def judge(candidate: Candidate) -> None:
        model = engine(candidate, cores, root, batch_size)
        candidate.guard = guard(reference_logits, forward_all(model, inputs.of(candidate)), held_out)
        refusal = candidate.guard.refusal(min_confident, min_top5)
        candidate.verdict = f"refused: {refusal}" if refusal else "passes"
        log(f"{candidate.name}: overall {candidate.guard.overall:.1%}, confident {candidate.guard.confident:.1%} "
            f"of {candidate.guard.confident_views}, top-5 {candidate.guard.top5:.1%}: {candidate.verdict}")

    int8_ir = calibration = None
    for candidate in list(candidates):
        if candidate.verdict:
            continue
        if candidate.precision == "int8":
            if int8_ir is None:
                start = time.perf_counter()
                calibration = [inputs.pixels[i:i + 1].numpy() for i in range(len(payloads)) if not held_out[i]]
                int8_ir = quantize_int8(ir, calibration, work / f"{name}-int8.xml")
                log(f"NNCF post-training quantization on {len(calibration)} views: {time.perf_counter() - start:.0f} s")
            candidate.files = [str(int8_ir)]
        judge(candidate)
    plain_int8 = [c for c in candidates if c.precision == "int8" and c.guard is not None]
    if plain_int8 and not any(c.verdict == "passes" for c in plain_int8) and \
            (not only or "openvino int8 (accuracy control)" in only):
        start = time.perf_counter()
        labels = reference_logits.argmax(1).numpy()[~held_out]
        path = quantize_int8_controlled(ir, calibration, labels, 1 - min_confident, work / f"{name}-int8ac.xml")
        log(f"NNCF accuracy-controlled quantization: {time.perf_counter() - start:.0f} s")
        controlled = Candidate("openvino int8 (accuracy control)", "openvino", "int8", [str(path)],
                               bf16_hint=plain_int8[-1].bf16_hint)
        candidates.append(controlled)
        judge(controlled)

    passing = [c for c in candidates if c.verdict == "passes"]
    batches = {}
    for kind in {"pixels" if c.pixels else "normalised" for c in passing}:
        batches[kind] = work / f"rate-{kind}.pt"
        torch.save(getattr(inputs, kind)[:batch_size].clone(), batches[kind])
    for workers, threads in worker_splits(cores):
        for candidate, rate in zip(passing, parallel_rates(passing, workers, threads, root, batch_size, batches,
                                                           seconds, work)):
            candidate.rates[f"{workers}x{threads}"] = rate
    for candidate in passing:
        log(f"{candidate.name}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in candidate.rates.items()))

    report = Report(Path(mar).name, cpu, batch_size, cores, len(photos), held_out_photos, candidates, None,
                    min_confident, min_top5)
    if not passing:
        return Optimized(report, None)
    winner = max(passing, key=lambda c: c.best[1])
    winner.verdict = "chosen"
    for c in passing:
        if c is not winner:
            c.verdict = f"passes, slower ({c.best[1]:.0f} vs {winner.best[1]:.0f} images/s)"
    report.chosen = winner.name
    workers, threads = (int(x) for x in winner.best[0].split("x"))
    report.decoders = judge_decoders(winner, inputs, reference_logits, held_out, payloads, root, batch_size, cores,
                                     min_confident, min_top5, log)
    report.decoder = next(d.name for d in report.decoders if d.verdict == "chosen")

    handler_config = dict(config.get("handler") or {})
    handler_config.update(precision="bf16" if winner.bf16_hint or winner.precision == "bf16" else "fp32",
                          threads=0, decoder=report.decoder)
    new_config = {**config, "minWorkers": workers, "maxWorkers": workers, "handler": handler_config}
    golden = [GoldenInput(Path(c["input"]).name, (root / c["input"]).read_bytes(), c["content_type"])
              for c in (manifest or {}).get("golden", {}).get("cases", [])]
    as_built = winner.engine == "as built"
    model_file = str(root / archiver["modelFile"]) if as_built and archiver.get("modelFile") else None
    explain = (None, None) if model_file else eager_weights(root, archiver, reference_pre.model_format)
    labels = root / "index_to_name.json"
    # a worker without the engine (or the decoder's packages) refuses to load, naming them (handlers/requirements.py)
    runtime = {"onnx": "onnxruntime", "openvino": "openvino"}.get(winner.engine)
    packages = [runtime] if runtime else []
    if report.decoder == "turbojpeg":
        packages += ["simplejpeg", "opencv-python-headless"]
    requirements = None
    if packages:
        from importlib import metadata

        requirements = work / "requirements.txt"
        requirements.write_text("".join(f"{p}=={metadata.version(p)}\n" for p in packages))
    spec = ArchiveSpec(
        name=name, serialized_file=winner.files[0], model_file=model_file, handler="image_classifier",
        labels=str(labels) if labels.is_file() else None, config=new_config, export_path=str(export_path),
        version=version or archiver["modelVersion"], golden_inputs=golden,
        explain_weights=explain[0], explain_model_file=explain[1],
        reference_file=str(root / REFERENCE_NAME) if (root / REFERENCE_NAME).is_file() else None,
        requirements=str(requirements) if requirements else None, manifest_extra={"optimization": report.to_dict()})
    return Optimized(report, build_archive(spec))


if __name__ == "__main__":  # python -m export.optimize RATE_SPEC.json: one process of parallel_rate
    import sys

    logging.disable(logging.WARNING)
    _rate_main(sys.argv[1])
