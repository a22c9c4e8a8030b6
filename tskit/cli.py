"""`tskit`: build, export and verify archives; serve, inspect, scale and benchmark TorchServe."""
import argparse
import json
import sys
import tempfile
import zipfile
from pathlib import Path

from export.formats import FORMATS
from export.optimize.candidates import DEFAULT_BUDGET_S, known_names
from handlers.tasks import TASKS, scaffold_bases
from tskit.arguments import archive_file, candidate_names, fraction, one_line, out_folder, positive, setting, shape
from tskit.client import ServerError, TorchServeClient
from tskit.properties import read_properties




def cmd_build(args) -> int:
    from export.archive import ArchiveSpec, build_archive, read_config
    from export.golden import inputs_from_files
    from export.reference import read_reference_inputs

    spec = ArchiveSpec(
        name=args.name, serialized_file=args.serialized_file, handler=args.handler,
        model_file=args.model_file, labels=args.labels, config=read_config(args.config),
        export_path=args.export_path, version=args.version, extra_files=args.extra_files,
        golden_inputs=inputs_from_files(args.golden or []),
        reference_inputs=read_reference_inputs(args.reference) if args.reference else [],
        explain_weights=args.explain_weights, explain_model_file=args.explain_model_file,
        requirements=args.requirements,
    )
    mar = build_archive(spec)
    sign_if_asked(mar, args.sign_key)
    print(mar)
    return 0


def sign_if_asked(mar: Path, private_key: str | None) -> None:
    if private_key:
        from export.signing import sign_archive

        sign_archive(mar, private_key)
        print(f"signed {mar} with {private_key}", file=sys.stderr)


def cmd_keygen(args) -> int:
    from export.signing import generate_key_pair

    private, public = generate_key_pair(args.out, args.name)
    print(f"private key (sign with it; keep it secret): {private}\npublic key (trust it where you serve): {public}")
    return 0


def cmd_sign(args) -> int:
    from export.signing import sign_archive, signature_problems

    for archive in args.archives:
        if not Path(archive).is_file():
            raise FileNotFoundError(f"archive not found: {archive}")
        sign_archive(archive, args.key)
        print(f"signed {archive}")
        if args.check:
            check = signature_problems(archive, [args.check])
            print(check)
            if not check.trusted:
                return 1
    return 0


def cmd_bundle(args) -> int:
    """The folder to hand plain torch-model-archiver as `--extra-files`: this library's `handlers` package and
    your own packages, each under its own name (the archiver copies a folder's contents, not the folder)."""
    from export.archive import bundle_library, copy_extra
    from export.user_handler import check_names

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    check_names(Path(args.handler or "handler.py"), args.add)
    print(bundle_library(out))
    for extra in args.add:
        copy_extra(extra, out)
        print(out / Path(extra).name)
    return 0


def cmd_new(args) -> int:
    from tskit.scaffold import new_handler

    for path in new_handler(args.name, args.base, args.out):
        print(path)
    print(f"next: pytest {Path(args.out) / f'test_{args.name}.py'}")
    return 0


def cmd_build_default(args) -> int:
    out_folder(args.export_path, "--export-path")  # before the imports and the export, not after
    from export.archive import build_archive
    from export.zoo import default_spec

    if args.stock:
        from export.stock import build_stock_archive

        print(build_stock_archive(args.export_path))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        spec = default_spec(args.export_path, Path(tmp), args.format, not args.no_explain_weights)
        spec.name = args.name or spec.name
        print(build_archive(spec))
    return 0


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x]


def cmd_bench(args) -> int:
    from tskit import bench
    from handlers.runtime import usable_cores

    archives = [Path(a).resolve() for a in args.archives]
    for archive in archives:
        if not archive.is_file():
            raise FileNotFoundError(f"archive not found: {archive}")
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


def cmd_optimize(args) -> int:
    """The fastest engine on this machine that passes the accuracy guard, written as an archive."""
    import warnings

    from export.optimize.guard import Thresholds
    from export.optimize.run import Settings, optimize_archive

    # OpenVINO 2026.4's torch frontend probes a torch._dynamo setting that torch 2.14 deprecated: noise, not news
    warnings.filterwarnings("ignore", message="torch._dynamo.config.inline_inbuilt_nn_modules", category=FutureWarning)
    settings = Settings(Thresholds(args.min_agreement, args.min_top5), args.views, args.cores, args.seconds,
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


def cmd_samples(args) -> int:
    out = out_folder(args.out, "--out")
    model = out_folder(args.model, "--model") if args.model else None
    calibration = out_folder(args.calibration, "--calibration") if args.calibration else None
    import shutil

    from export.zoo import CONFIG_DIR, DEFAULT_NAME, ZOO_DIR, efficientnet_lite0_weights, guard_photos, \
        sample_photos, write_imagenet_labels

    photos = sample_photos()
    if not photos:
        raise RuntimeError("no sample photos in the installed packages: scikit-image and matplotlib ship them "
                           "(make install)")
    out.mkdir(parents=True, exist_ok=True)
    for name, path in photos.items():
        shutil.copy(path, out / name)
        print(out / name)
    if model:  # what `tskit build` takes for the default model: to practise on before bringing your own
        model.mkdir(parents=True, exist_ok=True)
        for source, target in ((efficientnet_lite0_weights(), f"{DEFAULT_NAME}.pth"),
                               (ZOO_DIR / f"{DEFAULT_NAME}.py", f"{DEFAULT_NAME}.py"),
                               (CONFIG_DIR / f"{DEFAULT_NAME}.yaml", "model-config.yaml")):
            shutil.copy(source, model / target)
            print(model / target)
        print(write_imagenet_labels(model / "index_to_name.json"))
    if calibration:  # photos for `tskit optimize --calibration`
        calibration.mkdir(parents=True, exist_ok=True)
        for name, path in guard_photos().items():
            shutil.copy(path, calibration / name)
            print(calibration / name)
    return 0


def cmd_export(args) -> int:
    model_file, weights = Path(args.model_file), Path(args.weights)
    for option, path in (("model file", model_file), ("weights", weights)):
        if not path.is_file():
            raise FileNotFoundError(f"{option} not found: {path}" + (" (that is a folder)" if path.is_dir() else ""))
    if model_file.suffix != ".py":
        raise ValueError(f"--model-file {model_file} is not a Python file (.py) defining the nn.Module")
    out_folder(args.out, "--out")
    import pickle

    import torch

    from export.checkpoint import read_state_dict
    from export.formats import export_model
    from handlers.loading import load_module_class

    try:
        model_class = load_module_class(str(model_file), args.model_class)
    except (SyntaxError, ImportError) as err:
        raise ValueError(f"--model-file {model_file} does not import: {type(err).__name__}: {err}") from None
    try:
        model = model_class()
    except TypeError as err:
        raise ValueError(f"{model_class.__name__}() cannot be built without arguments, as tskit export and the "
                         f"worker build it: {err}") from None
    try:
        state = read_state_dict(str(weights), prefix=args.strip_prefix)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as err:
        raise ValueError(f"--weights {weights} is not a state_dict or training checkpoint torch.load can read "
                         f"({type(err).__name__})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueError(f"--weights {weights} do not fit {model_class.__name__}: {one_line(err)}") from None
    example = torch.randn(*args.example_shape)
    if set(args.format) - {"eager"}:  # the others run the model on the example: say so if it cannot
        try:
            with torch.no_grad():
                model.eval()(example)
        except Exception as err:  # a shape error from any layer
            raise ValueError(f"{model_class.__name__} does not run on an input of shape {tuple(example.shape)} "
                             f"(--example-shape): {one_line(err)}") from None
    for fmt in args.format:
        exported = export_model(model, example, fmt, args.out, args.name, model_file=args.model_file,
                                torchscript_method=args.torchscript_method)
        print(f"{fmt}: {exported.serialized_file}" + (f" (+ {exported.model_file})" if exported.model_file else ""))
    return 0


def cmd_verify(args) -> int:
    from export.verify import verify_archive

    if not Path(args.archive).is_file():
        raise FileNotFoundError(f"archive not found: {args.archive}")
    client = None
    if args.url:  # verify only uses the inference API
        client = TorchServeClient(args.url, args.url, args.url, key_file=Path(args.workdir) / "key_file.json")
    report = verify_archive(args.archive, client, trusted_keys=args.key or [])
    print(report)
    return 0 if report.passed else 1


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


def cmd_forward(args) -> int:
    """In-process forward-only throughput: the ceiling the served throughput is compared against."""
    import os
    import time

    archive_file(args.archive)
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


def cmd_explain(args) -> int:
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


def cmd_accuracy(args) -> int:
    archive_file(args.archive)
    archive_file(args.reference, "--reference archive")
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


def client_for(args) -> TorchServeClient:
    return TorchServeClient.from_config(args.config, args.workdir)


def cmd_serve(args) -> int:
    from tskit.properties import resolved_properties
    from tskit.server import start_background
    from tskit.serving_config import archive_settings, configured_settings, disagreements, loaded_archives

    client = client_for(args)
    if client.ping():
        print("TorchServe is already running; `tskit stop` (or `make stop`) first", file=sys.stderr)
        return 1
    props = resolved_properties(args.config)
    models = loaded_archives(props)
    if not models:
        raise ValueError(f"{args.config} loads no archive at start: its load_models ({props.get('load_models')!r}) "
                         f"names none in {props.get('model_store')}")
    if not store_is_trusted(args):
        return 1
    code = start_background(args.config, args.workdir)
    if code != 0:
        print(f"torchserve --start failed ({code}); see logs/torchserve.out", file=sys.stderr)
        return code
    try:
        for model, mar in models.items():
            registered = client.wait_registered(model, timeout=args.timeout)
            for line in disagreements(model, configured_settings(props, model), archive_settings(mar), registered):
                print(line)
            client.wait_served(model, timeout=args.timeout)
            print(f"{model}: {registered['minWorkers']} worker(s) READY, batch size {registered['batchSize']}, "
                  f"max batch delay {registered['maxBatchDelay']} ms (as TorchServe registered it)")
    except ServerError as err:
        print(f"{err}\nsee logs/model_log.log", file=sys.stderr)
        return 1
    key_file = Path(args.workdir) / "key_file.json"
    for model in models:
        print("\nTry it:\n"
              f"  curl -H \"Authorization: Bearer $(python3 -c 'import json;print(json.load(open(\"{key_file}\"))"
              f"[\"inference\"][\"key\"])')\" {client.inference_url}/predictions/{model} -T {args.sample}")
    return 0


def store_is_trusted(args) -> bool:
    """Check every archive of the config's model store against the trusted keys before TorchServe starts:
    a bad signature or a file that differs from a signed manifest always stops it, an unsigned archive
    with --require-signed."""
    from export.signing import check_store, refusals
    from tskit.properties import resolved_properties

    if not args.key:
        if args.require_signed:
            raise ValueError("--require-signed needs the public key(s) you trust: --key PUBLIC.pem")
        return True
    store = resolved_properties(args.config).get("model_store", "model_store")
    checks = check_store(store, args.key)
    for check in checks:
        print(check)
    refused = refusals(checks, args.require_signed)
    if refused:
        names = ", ".join(Path(c.archive).name for c in refused)
        print(f"tskit serve: not starting TorchServe: {names} in {store} "
              f"{'is' if len(refused) == 1 else 'are'} not signed by a trusted key", file=sys.stderr)
        return False
    if not checks:
        print(f"tskit serve: no archive in {store}", file=sys.stderr)
    return True


def cmd_stop(args) -> int:
    from tskit.server import stop_background

    result = stop_background(args.workdir)
    print((result.stdout + result.stderr).strip())
    return result.returncode


def cmd_status(args) -> int:
    from tskit.diagnose import no_ready_worker_report
    from tskit.rollout import default_version

    client = client_for(args)
    if not client.ping():
        print("TorchServe is not answering on", client.inference_url)
        return 1
    for entry in client.models():
        name = entry["modelName"]
        default = default_version(client, name)["modelVersion"]
        for version in client.describe_all(name):
            workers = version.get("workers", [])
            states = ", ".join(f"{w['id']}:{w['status']}" for w in workers) or "no workers"
            mark = " (default)" if version["modelVersion"] == default else ""
            print(f"{name} {version['modelVersion']}{mark} batch={version.get('batchSize')} "
                  f"delay={version.get('maxBatchDelay')}ms workers=[{states}]")
            if not any(w.get("status") == "READY" for w in workers):
                print("\n".join(no_ready_worker_report(args.workdir, name, version["modelVersion"])))
    return 0


def cmd_scale(args) -> int:
    client = client_for(args)
    client.scale(args.model, args.min, args.max)
    print(f"{args.model}: {client.ready_workers(args.model)} worker(s) READY")
    return 0


def model_store_of(args) -> Path:
    """The server's model store: config.properties' `model_store`, relative to where TorchServe starts."""
    store = Path(read_properties(args.config).get("model_store", "model_store"))
    return store if store.is_absolute() else Path(args.workdir) / store


def cmd_register(args) -> int:
    from tskit.rollout import register

    model, version = register(client_for(args), args.archive, model_store_of(args), args.workers)
    print(f"{model} {version} registered, {args.workers} worker(s) READY")
    return 0


def cmd_unregister(args) -> int:
    from tskit.rollout import unregister

    unregister(client_for(args), args.model, args.version)
    print(f"{args.model} {args.version or '(default version)'} unregistered")
    return 0


def cmd_rollout(args) -> int:
    from export.golden import inputs_from_files
    from tskit.rollout import rollout

    samples = inputs_from_files(args.samples) if args.samples else None
    result = rollout(client_for(args), args.archive, model_store_of(args), args.workdir, samples,
                     args.min_agreement, args.max_latency_ratio, args.rounds)
    print(result.report.summary())
    for line in result.report.disagreements[:10]:
        print("  " + line)
    if not result.promoted:
        print(f"refused, {result.report.new} unregistered; {result.report.old} still serves:")
        for reason in result.reasons:
            print("  - " + reason)
        return 1
    print(f"promoted: {result.report.model} now serves {result.report.new} "
          f"(`tskit rollback {result.report.model}` goes back to {result.report.old})")
    return 0


def cmd_rollback(args) -> int:
    from tskit.rollout import rollback

    before, after = rollback(client_for(args), args.model, args.workdir, args.to)
    print(f"{args.model}: default version {before} -> {after}")
    return 0


def cmd_predict(args) -> int:
    data = Path(args.file).read_bytes()
    if not args.grpc:
        response = client_for(args).predict(args.model, data, version=args.version)
        try:
            print(json.dumps(response.json(), indent=2))
        except ValueError:
            print(response.text)
        return 0 if response.ok else 1

    import grpc

    from tskit.grpc_client import GrpcClient, handler_error

    try:
        with GrpcClient.from_config(args.config, args.workdir) as client:
            body = client.predict(args.model, data, version=args.version, input_name=args.input_name)
    except grpc.RpcError as err:
        print(f"tskit predict: gRPC {err.code().name}: {' '.join(str(err.details()).split())}", file=sys.stderr)
        return 1
    try:
        print(json.dumps(json.loads(body), indent=2))
    except ValueError:
        print(body.decode(errors="replace"))
    # TorchServe 0.12 answers Predictions with gRPC status OK whatever status the handler set: a rejected
    # request shows only as the handler's JSON error ({"code": 4xx, "type": ..., "message": ...}) in the body
    error = handler_error(body)
    if error:
        message = " ".join(f"{error.get('type', 'error')}: {error.get('message', '')}".split())
        print(f"tskit predict: {args.model} answered {error['code']} ({message})", file=sys.stderr)
        return 1
    return 0


def cmd_k8s(args) -> int:
    from tskit.k8s import K8sSpec, write_layout

    archive = Path(args.archive or Path(args.export_path) / f"{args.name}.mar")
    if not archive.is_file():
        raise FileNotFoundError(f"archive not found: {archive} (tskit build {args.name} first, or --archive)")
    spec = K8sSpec(args.name, archive, Path(args.out or Path("k8s") / args.name), args.protocol, args.storage_uri,
                   args.min_replicas, args.max_replicas, args.cpu, args.memory, args.canary, args.image,
                   args.namespace, tuple(Path(k) for k in args.key or ()),
                   Path(args.sign_key) if args.sign_key else None)
    from tskit.schemas import schema_errors

    failed = False
    paths, documents = write_layout(spec)
    for what, path in paths.items():
        manifest = what in documents
        errors = schema_errors(documents[what]) if manifest else []
        print(f"{what:>16}  {path}" + ("  (valid against config/schemas)" if manifest and not errors else ""))
        for error in errors:
            print(f"{'':>16}  invalid: {error}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="tskit", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    b = sub.add_parser("build", help="build a self-contained .mar with torch-model-archiver")
    b.add_argument("name")
    b.add_argument("--serialized-file", required=True, help="state_dict (.pt/.pth) or TorchScript file")
    b.add_argument("--model-file", help="Python file defining the nn.Module (for a state_dict)")
    b.add_argument("--handler", default="image_classifier",
                   help=f"a task ({', '.join(TASKS)}) or your own handler file (my_handler.py), whose one class "
                        "subclasses a handler of this library, a TorchServe stock handler or BaseHandler")
    b.add_argument("--labels", help="index_to_name.json")
    b.add_argument("--config", help="model-config.yaml (batching, workers, `handler:` section)")
    b.add_argument("--export-path", default="model_store")
    b.add_argument("--version", default="1.0")
    b.add_argument("--extra-files", nargs="*", default=[],
                   help="more files for the archive root (vocabulary, schema); a folder keeps its name, so a "
                        "package of your own stays importable")
    b.add_argument("--requirements", help="requirements.txt of your handler code: recorded in the manifest; a "
                                          "worker whose Python lacks one refuses to load, naming it")
    b.add_argument("--golden", nargs="*", help="real inputs (files or folders) whose answers are stored as golden "
                                              "cases; `tskit verify` and `tskit rollout` replay them")
    b.add_argument("--reference", help="drift reference inputs: a folder (a request per file), a .jsonl file "
                                       "(a JSON request per line) or one file; stored as tskit-reference.json")
    b.add_argument("--explain-weights", help="eager state_dict shipped for /explanations (loaded only when one "
                                             "is asked for): what lets an ONNX or AOTInductor archive explain")
    b.add_argument("--explain-model-file", help="model file for --explain-weights (default: --model-file)")
    b.add_argument("--sign-key", help="sign the built archive with this private key (PEM; tskit keygen)")
    b.set_defaults(func=cmd_build)

    bu = sub.add_parser("bundle", help="lay out the folder to give plain torch-model-archiver as --extra-files: "
                                       "this library's handlers package and your own packages")
    bu.add_argument("out", help="folder to write (created if missing)")
    bu.add_argument("--add", nargs="*", default=[], help="your own packages or files to put beside it")
    bu.add_argument("--handler", help="your handler file, checked for a name that clashes with the library")
    bu.set_defaults(func=cmd_bundle)

    nw = sub.add_parser("new", help="write a new handler file, its model-config.yaml and a passing test")
    nw_sub = nw.add_subparsers(dest="what", required=True)
    nh = nw_sub.add_parser("handler", help="a handler of your own on one of this library's handlers")
    nh.add_argument("name", help="module name of the handler file (NAME.py)")
    nh.add_argument("--from", dest="base", required=True,
                    choices=list(scaffold_bases()),
                    help="the handler to build on (base: TskitHandler itself, for a new task)")
    nh.add_argument("--out", default=".", help="folder to write into (default: here)")
    nh.set_defaults(func=cmd_new)

    d = sub.add_parser("build-default", help="build the default EfficientNet-Lite0 archive")
    d.add_argument("--export-path", default="model_store")
    d.add_argument("--stock", action="store_true", help="instead, the same weights behind TorchServe's stock handler")
    d.add_argument("--format", default="eager", choices=FORMATS)
    d.add_argument("--name", help="archive name (default efficientnet_lite0)")
    d.add_argument("--no-explain-weights", action="store_true",
                   help="ONNX/AOTInductor: leave out the eager weights that /explanations runs on (then 501)")
    d.set_defaults(func=cmd_build_default)

    op = sub.add_parser("optimize", help="measure engines and precisions on this machine against the accuracy "
                                         "guard; write the fastest that passes as an archive of the same model")
    op.add_argument("archive", help="an image classifier archive (tskit build ... --handler image_classifier)")
    op.add_argument("--calibration", required=True, help="a folder of photos like the ones it will serve (a "
                                                         "handful is enough: views are made from them, some held out)")
    op.add_argument("--export-path", default="optimized", help="where the optimized archive goes")
    op.add_argument("--min-agreement", type=fraction, default=0.99,
                    help="(a) top-1 agreement with the fp32 reference on the views it is confident about")
    op.add_argument("--min-top5", type=fraction, default=0.99, help="(b) share of views with the reference's top-1 "
                                                                     "in the candidate's top 5")
    op.add_argument("--views", type=positive(int), default=600, help="views made from the photos (at least 500)")
    op.add_argument("--cores", type=int, default=0, help="cores to divide among workers (default: usable cores)")
    op.add_argument("--seconds", type=positive(float), default=2.0, help="seconds per speed measurement")
    op.add_argument("--budget", type=positive(float), default=DEFAULT_BUDGET_S,
                    help=f"seconds for the whole run (default {DEFAULT_BUDGET_S}): the search for a mixed int8 "
                         "variant stops early enough to leave the speed measurements and the build their time")
    op.add_argument("--version", help="version of the optimized archive (default: the archive's; another one lets "
                                      "tskit rollout put it beside the original)")
    op.add_argument("--sign-key", help="sign the optimized archive with this private key (PEM; tskit keygen)")
    op.add_argument("--only", type=candidate_names, metavar="NAMES",
                    help="comma list of candidates to try, e.g. openvino-fp32,openvino-int8 (names: "
                         + ", ".join(known_names()) + ")")
    op.set_defaults(func=cmd_optimize)

    sa = sub.add_parser("samples", help="copy the real sample photos shipped in installed packages")
    sa.add_argument("--out", default="samples")
    sa.add_argument("--calibration", metavar="DIR", help="also write 16 real photos for tskit optimize --calibration")
    sa.add_argument("--model", metavar="DIR", help="also write the default model's files here (weights, model file, "
                                                   "labels, model-config.yaml), as `tskit build` takes them")
    sa.set_defaults(func=cmd_samples)

    e = sub.add_parser("export", help="export a model to eager / torchscript / onnx / aoti files")
    e.add_argument("name")
    e.add_argument("--model-file", required=True, help="Python file defining the nn.Module")
    e.add_argument("--model-class", help="which class of the model file, when it defines several")
    e.add_argument("--weights", required=True, help="state_dict or training checkpoint (Lightning .ckpt too)")
    e.add_argument("--strip-prefix", help="key prefix to drop, e.g. 'model.' for a LightningModule attribute")
    e.add_argument("--format", nargs="+", default=["eager"], choices=FORMATS)
    e.add_argument("--example-shape", type=shape, default="2,3,224,224", help="example input shape, batch first")
    e.add_argument("--torchscript-method", default="trace", choices=["trace", "script"])
    e.add_argument("--out", default="exported")
    e.set_defaults(func=cmd_export)

    be = sub.add_parser("bench", help="throughput/latency sweep of archives on fresh TorchServe instances; "
                                       "with two archives, the second's ratio over the first")
    be.add_argument("archives", nargs="+", help="one archive, or baseline then candidate for a comparison")
    be.add_argument("--workers", default="1", help="comma list, e.g. 1,2")
    be.add_argument("--batch", default="8", help="comma list of batchSize values")
    be.add_argument("--delay", default="10", help="comma list of maxBatchDelay values (ms)")
    be.add_argument("--precision", default="", help="comma list of handler precisions to sweep (default: the archive's)")
    be.add_argument("--concurrency", default="16", help="closed-loop concurrency levels, comma list ('' for none)")
    be.add_argument("--rate", default="", help="open-loop offered rates in req/s, comma list")
    be.add_argument("--generator", default="python", choices=["python", "wrk"],
                    help="closed-loop load generator: Python threads, or wrk (Debian's package; its own CPU is far "
                         "less, which matters on a small machine); every row reports the client's CPU")
    be.add_argument("--duration", type=float, default=20, help="seconds per load level")
    be.add_argument("--warmup", type=float, default=5, help="seconds of warm-up load per server")
    be.add_argument("--payload", nargs="*", help="request bodies (default: the sample photos as 640px JPEGs)")
    be.add_argument("--cores", type=int, default=0, help="cores to divide among workers (default: usable cores)")
    be.add_argument("--config", default="config.properties", help="base TorchServe config")
    be.add_argument("--out", default="bench-results")
    be.add_argument("--fail-on-errors", action="store_true")
    be.set_defaults(func=cmd_bench)

    fw = sub.add_parser("forward", help="in-process forward-only throughput of an archive's model")
    fw.add_argument("archive")
    fw.add_argument("--batch", type=positive(int), default=8)
    fw.add_argument("--threads", type=positive(int), default=1, help="torch/onnxruntime threads")
    fw.add_argument("--seconds", type=positive(float), default=10)
    fw.add_argument("--set", nargs="*", type=setting,
                    help="handler config overrides, e.g. precision=bf16 channels_last=false")
    fw.set_defaults(func=cmd_forward)

    ex = sub.add_parser("explain", help="explain files in-process with an archive's handler and time it")
    ex.add_argument("archive")
    ex.add_argument("files", nargs="+", help="request bodies: files or folders")
    ex.add_argument("--set", nargs="*", help="handler config overrides, e.g. explain_method=saliency explain_steps=8")
    ex.add_argument("--out", default="explanations", help="where each answer (and heatmap PNG) is written")
    ex.set_defaults(func=cmd_explain)

    ac = sub.add_parser("accuracy", help="accuracy guard: top-1 agreement with the fp32 reference pipeline on "
                                         "real photos")
    ac.add_argument("archive", help="image classifier archive to check, with its own config")
    ac.add_argument("--reference", required=True, help="eager archive of the same weights (run in fp32, full decode)")
    ac.add_argument("--set", nargs="*", type=setting,
                    help="handler config overrides for the candidate, e.g. precision=bf16")
    ac.add_argument("--threshold", type=fraction, default=0.99, help="top-1 agreement needed (0-1)")
    ac.set_defaults(func=cmd_accuracy)

    def server_args(sp):
        sp.add_argument("--config", default="config.properties")
        sp.add_argument("--workdir", default=".", help="where TorchServe starts (and writes key_file.json)")

    s = sub.add_parser("serve", help="start TorchServe in the background and wait until models are READY")
    server_args(s)
    s.add_argument("--timeout", type=float, default=300)
    s.add_argument("--key", action="append", metavar="PUBLIC.pem",
                   help="trusted public key: every archive of the model store is checked against it before "
                        "TorchServe starts (repeat for several keys)")
    s.add_argument("--require-signed", action="store_true",
                   help="refuse to start when any archive of the model store is unsigned (with --key)")
    s.add_argument("--sample", default="<image.jpg>", help="image path to show in the example curl")
    s.set_defaults(func=cmd_serve)

    st = sub.add_parser("stop", help="stop the background TorchServe")
    server_args(st)
    st.set_defaults(func=cmd_stop)

    stat = sub.add_parser("status", help="models, versions and worker states")
    server_args(stat)
    stat.set_defaults(func=cmd_status)

    sc = sub.add_parser("scale", help="set a model's worker count (synchronous)")
    server_args(sc)
    sc.add_argument("model")
    sc.add_argument("--min", type=int, required=True)
    sc.add_argument("--max", type=int)
    sc.set_defaults(func=cmd_scale)

    rg = sub.add_parser("register", help="register an archive (needs enable_model_api=true)")
    server_args(rg)
    rg.add_argument("archive")
    rg.add_argument("--workers", type=int, default=1)
    rg.set_defaults(func=cmd_register)

    ur = sub.add_parser("unregister", help="unregister a model version (needs enable_model_api=true)")
    server_args(ur)
    ur.add_argument("model")
    ur.add_argument("version", nargs="?", help="default: the default version")
    ur.set_defaults(func=cmd_unregister)

    ro = sub.add_parser("rollout", help="register NEW.mar beside the serving version, replay samples through "
                                        "both, promote it with set-default only if it passes")
    server_args(ro)
    ro.add_argument("archive")
    ro.add_argument("--samples", nargs="*", help="request bodies, files or folders (default: the archive's "
                                                 "golden inputs)")
    ro.add_argument("--min-agreement", type=float, default=0.99, help="top-1 agreement needed (0-1)")
    ro.add_argument("--max-latency-ratio", type=float, default=1.5, help="new p50 / serving p50 allowed")
    ro.add_argument("--rounds", type=int, default=3, help="times each sample is sent to each version")
    ro.set_defaults(func=cmd_rollout)

    rb = sub.add_parser("rollback", help="make the previously served version the default again")
    server_args(rb)
    rb.add_argument("model")
    rb.add_argument("--to", help="version to go back to (default: the one served before the current)")
    rb.set_defaults(func=cmd_rollback)

    v = sub.add_parser("verify", help="check an archive's hashes and golden outputs, in-process and live")
    server_args(v)
    v.add_argument("archive")
    v.add_argument("--url", help="inference address of a TorchServe serving this archive, e.g. http://127.0.0.1:8080")
    v.add_argument("--key", action="append", metavar="PUBLIC.pem",
                   help="also check the archive's signature against this trusted public key (repeatable)")
    v.set_defaults(func=cmd_verify)

    kg = sub.add_parser("keygen", help="write a new elliptic-curve key pair for signing archives")
    kg.add_argument("--out", default="keys", help="folder for NAME.key.pem (private) and NAME.pub.pem (public)")
    kg.add_argument("--name", default="tskit-signing")
    kg.set_defaults(func=cmd_keygen)

    sg = sub.add_parser("sign", help="sign archives' manifests with a private key (OpenSSF model-signing)")
    sg.add_argument("archives", nargs="+", metavar="archive")
    sg.add_argument("--key", required=True, metavar="PRIVATE.pem", help="elliptic-curve private key (tskit keygen)")
    sg.add_argument("--check", metavar="PUBLIC.pem", help="then verify each with this public key")
    sg.set_defaults(func=cmd_sign)

    pr = sub.add_parser("predict", help="send a file to a model and print the answer")
    server_args(pr)
    pr.add_argument("model")
    pr.add_argument("file")
    pr.add_argument("--version", help="model version (default: the default version)")
    pr.add_argument("--grpc", action="store_true",
                    help="send through TorchServe's gRPC inference API (grpc_inference_port of --config, default "
                         "7070) instead of HTTP; exits 1 when the body is a handler error (code >= 400), since "
                         "TorchServe 0.12 answers gRPC OK whatever status the handler set")
    pr.add_argument("--input-name", default="data", help="with --grpc: the input field the file is sent as")
    pr.set_defaults(func=cmd_predict)

    k = sub.add_parser("k8s", help="KServe on Kubernetes: model-store/, config/config.properties, a Dockerfile and "
                                   "an InferenceService (with storage credentials) for an archive")
    k.add_argument("name", help="the model name (the archive is EXPORT_PATH/NAME.mar unless --archive)")
    k.add_argument("--archive")
    k.add_argument("--export-path", default="model_store")
    k.add_argument("--out", help="output folder (default k8s/NAME)")
    k.add_argument("--protocol", default="v2", choices=["v1", "v2"], help="KServe v1 or Open Inference Protocol v2")
    k.add_argument("--storage-uri", default="", help="where the folder is uploaded (default s3://models/NAME)")
    k.add_argument("--min-replicas", type=int, default=1)
    k.add_argument("--max-replicas", type=int, default=3)
    k.add_argument("--cpu", default="1", help="CPU request and limit per replica")
    k.add_argument("--memory", default="2Gi", help="memory request and limit per replica")
    k.add_argument("--canary", type=int, help="canaryTrafficPercent: the share of traffic a new storageUri gets")
    k.add_argument("--image", default="", help="run this image (built from the Dockerfile) instead of KServe's "
                                               "PyTorch runtime")
    k.add_argument("--namespace", default="")
    k.add_argument("--key", action="append", metavar="PUBLIC.pem",
                   help="trusted public key: the archive must verify with it here, and the image checks every "
                        "archive against it before TorchServe starts (needs --image and --sign-key; repeatable)")
    k.add_argument("--sign-key", metavar="PRIVATE.pem", help="signs the derived archive (batchSize 1) for the pod")
    k.set_defaults(func=cmd_k8s)
    return p


def main(argv=None) -> int:
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except (ServerError, FileNotFoundError, ValueError, RuntimeError) as err:
        print(f"tskit {args.command}: {err}", file=sys.stderr)
        return 1
    except zipfile.BadZipFile as err:  # a .mar is a zip: `tskit verify README.md`, say
        named = getattr(args, "archive", None) or " or ".join(getattr(args, "archives", None) or ["a file given"])
        print(f"tskit {args.command}: {named} is not a .mar archive ({err})", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
