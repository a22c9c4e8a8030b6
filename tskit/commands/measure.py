"""Commands that measure: optimize, bench, cost, soak, forward, explain, accuracy."""
import json
import sys
import tempfile
from pathlib import Path

from export.optimize.candidates import DEFAULT_BUDGET_S, known_names
from tskit.arguments import candidate_names, existing_archive, fraction, positive, setting
from tskit.commands import arg, command
from tskit.commands.archives import sign_if_asked


@command("optimize", "measure engines and precisions on this machine against the accuracy guard; write the "
                     "fastest that passes as an archive of the same model",
         arg("archive", check=existing_archive,
             help="an image_classifier, transformer_classifier, token_classifier or sentence_embedder archive"),
         arg("--calibration", required=True,
             help="inputs like the ones it will serve: for an image classifier a folder of photos (a handful is "
                  "enough: views are made from them, some held out); for a transformer a text file (one text per "
                  "line) or a folder of text files, at least 30 texts"),
         arg("--export-path", default="optimized", help="where the optimized archive goes"),
         arg("--min-agreement", type=fraction, default=0.99,
             help="(a) top-1 agreement with the fp32 reference on the views it is confident about"),
         arg("--min-top5", type=fraction, default=0.99,
             help="(b) share of views with the reference's top-1 in the candidate's top 5"),
         arg("--min-overall", type=fraction, default=0.98,
             help="text classifiers: top-1 agreement with the fp32 reference on every text"),
         arg("--min-cosine", type=fraction, default=0.99,
             help="embedders: cosine to the fp32 reference's vector, for 99%% of the texts"),
         arg("--min-entities", type=fraction, default=0.98,
             help="token classifiers: entity agreement (F1 of types and spans) with the fp32 reference"),
         arg("--views", type=positive(int), default=600, help="views made from the photos (at least 500)"),
         arg("--cores", type=int, default=0, help="cores to divide among workers (default: usable cores)"),
         arg("--seconds", type=positive(float), default=2.0, help="seconds per speed measurement"),
         arg("--budget", type=positive(float), default=DEFAULT_BUDGET_S,
             help=f"seconds for the whole run (default {DEFAULT_BUDGET_S}): the search for a mixed int8 variant "
                  "stops early enough to leave the speed measurements and the build their time"),
         arg("--version", help="version of the optimized archive (default: the archive's; another one lets tskit "
                               "rollout put it beside the original)"),
         arg("--sign-key", help="sign the optimized archive with this private key (PEM; tskit keygen)"),
         arg("--only", type=candidate_names, metavar="NAMES",
             help="comma list of candidates to try, e.g. openvino-fp32,openvino-int8 (names: "
                  + ", ".join(known_names()) + ")"))
def optimize(args) -> int:
    """The fastest engine on this machine that passes the accuracy guard, written as an archive."""
    import warnings

    from export.optimize.guard import Thresholds
    from export.optimize.run import Settings, optimize_archive

    # OpenVINO 2026.4's torch frontend probes a torch._dynamo setting that torch 2.14 deprecated: noise, not news
    warnings.filterwarnings("ignore", message="torch._dynamo.config.inline_inbuilt_nn_modules", category=FutureWarning)
    settings = Settings(Thresholds(args.min_agreement, args.min_top5, args.min_overall, args.min_cosine,
                                   args.min_entities), args.views, args.cores, args.seconds,
                        args.budget, args.version, args.only)
    with tempfile.TemporaryDirectory(prefix="tskit-optimize-") as tmp:
        result = optimize_archive(args.archive, args.calibration, args.export_path, Path(tmp), settings,
                                  log=lambda message: print(message, flush=True))
    print(result.report.table())
    if result.archive is None:
        print("no candidate passes the guard: nothing written", file=sys.stderr)
        return 1
    sign_if_asked(result.archive, args.sign_key)
    print(result.archive)
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


@command("bench", "throughput/latency sweep of archives on fresh TorchServe instances; with two archives, the "
                  "second's ratio over the first",
         arg("archives", nargs="+", check=existing_archive, help="one archive, or baseline then candidate for a comparison"),
         arg("--workers", default="1", help="comma list, e.g. 1,2"),
         arg("--batch", default="8", help="comma list of batchSize values"),
         arg("--delay", default="10", help="comma list of maxBatchDelay values (ms)"),
         arg("--precision", default="", help="comma list of handler precisions to sweep (default: the archive's)"),
         arg("--concurrency", default="16", help="closed-loop concurrency levels, comma list ('' for none)"),
         arg("--rate", default="", help="open-loop offered rates in req/s, comma list"),
         arg("--generator", default="python", choices=["python", "wrk"],
             help="closed-loop load generator: Python threads, or wrk (Debian's package; its own CPU is far less, "
                  "which matters on a small machine); every row reports the client's CPU"),
         arg("--duration", type=float, default=20, help="seconds per load level"),
         arg("--warmup", type=float, default=5, help="seconds of warm-up load per server"),
         arg("--payload", nargs="*", help="request bodies (default: the sample photos as 640px JPEGs)"),
         arg("--cores", type=int, default=0, help="cores to divide among workers (default: usable cores)"),
         arg("--config", default="config.properties", help="base TorchServe config"),
         arg("--out", default="bench-results"),
         arg("--fail-on-errors", action="store_true"))
def bench(args) -> int:
    from tskit import bench
    from handlers.runtime import usable_cores

    archives = [Path(a).resolve() for a in args.archives]
    if args.payload:
        payloads = [Path(p).read_bytes() for p in args.payload]
    else:
        from export.zoo import golden_photos

        payloads = [g.payload for g in golden_photos(max_side=640)]
    loads = bench.parse_loads(_ints(args.concurrency), [float(r) for r in args.rate.split(",") if r])
    with tempfile.TemporaryDirectory(prefix="tskit-bench-") as tmp:
        precisions = [p for p in args.precision.split(",") if p] or [None]
        rows = bench.sweep(archives, _ints(args.workers), _ints(args.batch), _ints(args.delay), payloads, loads,
                           args.duration, args.warmup, Path(tmp), Path(args.config).resolve(),
                           args.cores or usable_cores(), precisions, bench.stderr_progress, args.generator)
    extra = {"command": "tskit " + " ".join(sys.argv[1:])}
    if len(archives) == 2:
        extra["compare"] = bench.compare_summary(rows, archives[0].stem, archives[1].stem)
    paths = bench.write_reports(rows, Path(args.out), extra)
    for archive in archives:
        best = bench.best_per_archive(rows).get(archive.stem)
        if best:
            path = Path(args.out) / f"recommended-{archive.stem}.yaml"
            path.write_text(bench.recommended_config(archive, best))
            paths[f"recommended {archive.stem}"] = path
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 1 if any(r["errors"] for r in rows) and args.fail_on_errors else 0


@command("cost", "memory per worker and frontend, load and scale time, first-request latency of archives on a real "
                 "TorchServe",
         arg("archives", nargs="+", check=existing_archive),
         arg("--workers", default="1,2,4", help="worker counts to scale through, comma list"),
         arg("--requests", type=positive(int), default=20, help="requests per worker before memory is read"),
         arg("--payload", help="request body (default: each archive's first golden input)"),
         arg("--config", default="config.properties", help="base TorchServe config"),
         arg("--out", default="cost-results"))
def cost(args) -> int:
    """What an archive's workers cost (tskit/cost.py)."""
    from tskit import cost as costs
    from tskit.bench import stderr_progress

    reports = []
    with tempfile.TemporaryDirectory(prefix="tskit-cost-") as tmp:
        for archive in (Path(a).resolve() for a in args.archives):
            payload, content_type = ((Path(args.payload).read_bytes(), "application/octet-stream") if args.payload
                                     else costs.golden_request(archive))
            reports.append(costs.cost_archive(archive, _ints(args.workers), payload, content_type, args.requests,
                                              Path(tmp), Path(args.config).resolve(), stderr_progress))
    paths = costs.write_reports(reports, Path(args.out), {"command": "tskit " + " ".join(sys.argv[1:])})
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


@command("soak", "a fixed-length run at a steady rate, good and bad requests mixed, with every worker's memory "
                 "sampled: growth after the warm-up is a leak",
         arg("archive", check=existing_archive),
         arg("--minutes", type=positive(float), default=20, help="length of the run"),
         arg("--rate", type=positive(float), default=20, help="requests per second, sent whatever the server does"),
         arg("--bad-share", type=fraction, default=0.2,
             help="share of bad requests (empty, not UTF-8, cut-off JSON, random bytes) among the archive's golden "
                  "inputs"),
         arg("--sample", type=positive(float), default=10, help="seconds between memory readings"),
         arg("--workers", type=positive(int), help="worker count (default: the archive's)"),
         arg("--config", default="config.properties", help="base TorchServe config"),
         arg("--out", default="soak-results"))
def soak(args) -> int:
    """Leak hunting (tskit/soak.py)."""
    from tskit import soak as soaks
    from tskit.bench import stderr_progress

    with tempfile.TemporaryDirectory(prefix="tskit-soak-") as tmp:
        report = soaks.soak(Path(args.archive).resolve(), args.minutes * 60, args.rate, args.bad_share, args.sample,
                            args.workers, Path(tmp), Path(args.config).resolve(), stderr_progress)
    paths = soaks.write_reports(report, Path(args.out), {"command": "tskit " + " ".join(sys.argv[1:])})
    print(paths["markdown"].read_text())
    print("wrote " + ", ".join(str(p) for p in paths.values()))
    return 0


def _overrides(items) -> dict:
    """`key=value` pairs for a handler config, each value read as YAML would read it in model-config.yaml
    (4 -> int, true -> bool, [0.5, 0.5] -> list, fp32 -> str)."""
    import yaml

    out = {}
    for item in items or []:
        key, _, value = item.partition("=")
        out[key] = yaml.safe_load(value)
    return out


def in_process_handler(archive: str, tmp: str, batch_size: int, overrides):
    """An archive's own handler, initialised in this process as a worker would (its folder on sys.path)."""
    from tskit.testing import load_archive_handler

    return load_archive_handler(archive, Path(tmp) / "archive", batch_size=batch_size,
                                yaml_overrides={"handler": _overrides(overrides)})


@command("forward", "in-process forward-only throughput of an archive's model",
         arg("archive", check=existing_archive),
         arg("--batch", type=positive(int), default=8),
         arg("--threads", type=positive(int), default=1, help="torch/onnxruntime threads"),
         arg("--seconds", type=positive(float), default=10),
         arg("--set", nargs="*", type=setting, help="handler config overrides, e.g. precision=bf16 channels_last=false"))
def forward(args) -> int:
    """In-process forward-only throughput: the ceiling the served throughput is compared against."""
    import os
    import time

    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="tskit-forward-") as tmp:
        handler = in_process_handler(args.archive, tmp, args.batch, args.set)
        if not hasattr(handler, "example_items"):  # a stock TorchServe handler: no inputs of its own to time
            raise ValueError(f"{args.archive}: its handler {type(handler).__name__} is not built on this library's "
                             "handlers, whose example inputs tskit forward times")
        batch = handler.collate(handler.example_items(args.batch))
        handler.forward(batch)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < args.seconds:
            handler.forward(batch)
            done += args.batch
        rate = done / (time.perf_counter() - start)
    print(f"{args.archive}: {handler.model_format} {handler.precision}, batch {args.batch}, {handler.threads} thread(s): "
          f"{rate:.1f} items/s forward only")
    return 0


@command("explain", "explain files in-process with an archive's handler and time it",
         arg("archive", check=existing_archive),
         arg("files", nargs="+", help="request bodies: files or folders"),
         arg("--set", nargs="*", type=setting,
             help="handler config overrides, e.g. explain_method=saliency explain_steps=8"),
         arg("--out", default="explanations", help="where each answer (and heatmap PNG) is written"))
def explain(args) -> int:
    """Explain files in-process with the archive's own handler, as one batch (what a worker does for
    /explanations), and report the time: the first batch loads the explanation model, the second is timed."""
    import base64
    import time

    from export.golden import as_request, inputs_from_files
    from tskit.testing import run_batch

    inputs = inputs_from_files(args.files)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="tskit-explain-") as tmp:
        handler = in_process_handler(args.archive, tmp, len(inputs), args.set)
        requests = [as_request(i.payload, i.content_type) for i in inputs]
        headers = [{"explain": "True"}] * len(inputs)
        run_batch(handler, requests[:1], headers[:1])  # loads the explanation model
        start = time.perf_counter()
        results = run_batch(handler, requests, headers)
        seconds = time.perf_counter() - start
    for item, (status, body) in zip(inputs, results):
        stem = Path(item.name).stem
        (out / f"{stem}.json").write_text(json.dumps(body))
        heatmap = body.get("heatmap_png") if isinstance(body, dict) else None
        if heatmap:
            (out / f"{stem}_heatmap.png").write_bytes(base64.b64decode(heatmap))
        target = body.get("target") if isinstance(body, dict) else f"{len(body)} answers"
        print(f"{item.name}: {status} target={target} -> {out / stem}.json")
    print(f"{len(inputs)} explanation(s) in one batch: {seconds:.2f} s ({handler.config.get('explain_method')}, "
          f"{handler.config.get('explain_steps')} steps)")
    return 0 if all(status == 200 for status, _ in results) else 1


@command("accuracy", "accuracy guard: top-1 agreement with the fp32 reference pipeline on real photos",
         arg("archive", check=existing_archive, help="image classifier archive to check, with its own config"),
         arg("--reference", required=True, check=existing_archive,
             help="eager archive of the same weights (run in fp32, full decode)"),
         arg("--set", nargs="*", type=setting, help="handler config overrides for the candidate, e.g. precision=bf16"),
         arg("--threshold", type=fraction, default=0.99, help="top-1 agreement needed (0-1)"))
def accuracy(args) -> int:
    from export.accuracy import agreement
    from export.zoo import guard_images

    overrides = _overrides(args.set)
    images = guard_images()
    with tempfile.TemporaryDirectory(prefix="tskit-accuracy-") as tmp:
        result, info = agreement(Path(args.archive), Path(args.reference), images, Path(tmp), overrides)
    print(f"{args.archive} {info}: top-1 agreement with the fp32 reference {result.agree}/{result.total} "
          f"= {result.rate:.2%} (threshold {args.threshold:.0%})")
    for line in result.disagreements:
        print("  " + line)
    return 0 if result.rate >= args.threshold else 1
