"""Commands on a running TorchServe: serve, stop, status, scale, register, unregister, rollout, rollback, predict."""
import json
import sys
from pathlib import Path

from tskit.arguments import existing_archive, existing_file, fraction, positive
from tskit.client import ServerError, TorchServeClient
from tskit.commands import SERVER, arg, command
from tskit.properties import read_properties


def client_for(args) -> TorchServeClient:
    return TorchServeClient.from_config(args.config, args.workdir)


def model_store_of(args) -> Path:
    """The server's model store: config.properties' `model_store`, relative to where TorchServe starts."""
    store = Path(read_properties(args.config).get("model_store", "model_store"))
    return store if store.is_absolute() else Path(args.workdir) / store


SAMPLE_TEXT = "WINNER! Claim your free prize now, call 0800 123 456"


@command("serve", "start TorchServe in the background and wait until models are READY",
         *SERVER,
         arg("--timeout", type=float, default=300),
         arg("--key", action="append", metavar="PUBLIC.pem",
             help="trusted public key: every archive of the model store is checked against it before TorchServe "
                  "starts (repeat for several keys)"),
         arg("--require-signed", action="store_true",
             help="refuse to start when any archive of the model store is unsigned (with --key)"),
         arg("--sample", default="<image.jpg>", help="image path to show in the example curl"))
def serve(args) -> int:
    from tskit.properties import resolved_properties
    from tskit.server import start_background
    from tskit.serving_config import (archive_settings, archive_takes_text, configured_settings, disagreements,
                                      loaded_archives)

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
    for model, mar in models.items():
        body = (f"-H 'Content-Type: text/plain' --data-binary '{SAMPLE_TEXT}'" if archive_takes_text(mar)
                else f"-T {args.sample}")
        print("\nTry it:\n"
              f"  curl -H \"Authorization: Bearer $(python3 -c 'import json;print(json.load(open(\"{key_file}\"))"
              f"[\"inference\"][\"key\"])')\" {client.inference_url}/predictions/{model} {body}")
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


@command("stop", "stop the background TorchServe", *SERVER)
def stop(args) -> int:
    from tskit.server import stop_background

    result = stop_background(args.workdir)
    print((result.stdout + result.stderr).strip())
    return result.returncode


@command("status", "models, versions and worker states", *SERVER)
def status(args) -> int:
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


@command("scale", "set a model's worker count (synchronous)",
         *SERVER, arg("model"), arg("--min", type=int, required=True), arg("--max", type=int))
def scale(args) -> int:
    client = client_for(args)
    client.scale(args.model, args.min, args.max)
    print(f"{args.model}: {client.ready_workers(args.model)} worker(s) READY")
    return 0


@command("register", "register an archive (needs enable_model_api=true)",
         *SERVER, arg("archive", check=existing_archive), arg("--workers", type=int, default=1))
def register(args) -> int:
    from tskit.rollout import register

    model, version = register(client_for(args), args.archive, model_store_of(args), args.workers)
    print(f"{model} {version} registered, {args.workers} worker(s) READY")
    return 0


@command("unregister", "unregister a model version (needs enable_model_api=true)",
         *SERVER, arg("model"), arg("version", nargs="?", help="default: the default version"))
def unregister(args) -> int:
    from tskit.rollout import unregister

    unregister(client_for(args), args.model, args.version)
    print(f"{args.model} {args.version or '(default version)'} unregistered")
    return 0


@command("rollout", "register NEW.mar beside the serving version, replay samples through both, promote it with "
                    "set-default only if it passes",
         *SERVER,
         arg("archive", check=existing_archive),
         arg("--samples", nargs="*", help="request bodies, files or folders (default: the archive's golden inputs)"),
         arg("--min-agreement", type=fraction, default=0.99, help="top-1 agreement needed (0-1)"),
         arg("--max-latency-ratio", type=positive(float), default=1.5, help="new p50 / serving p50 allowed"),
         arg("--rounds", type=positive(int), default=3, help="times each sample is sent to each version"))
def rollout(args) -> int:
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


@command("rollback", "make the previously served version the default again",
         *SERVER, arg("model"), arg("--to", help="version to go back to (default: the one served before the current)"))
def rollback(args) -> int:
    from tskit.rollout import rollback

    before, after = rollback(client_for(args), args.model, args.workdir, args.to)
    print(f"{args.model}: default version {before} -> {after}")
    return 0


@command("predict", "send a file to a model and print the answer",
         *SERVER,
         arg("model"),
         arg("file", check=existing_file),
         arg("--version", help="model version (default: the default version)"),
         arg("--grpc", action="store_true",
             help="send through TorchServe's gRPC inference API (grpc_inference_port of --config, default 7070) "
                  "instead of HTTP; exits 1 when the body is a handler error (code >= 400), since TorchServe 0.12 "
                  "answers gRPC OK whatever status the handler set"),
         arg("--input-name", default="data", help="with --grpc: the input field the file is sent as"))
def predict(args) -> int:
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
