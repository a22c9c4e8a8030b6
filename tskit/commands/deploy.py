"""`tskit k8s`: an archive as a KServe InferenceService."""
import sys
from pathlib import Path

from tskit.commands import arg, command


@command("k8s", "KServe on Kubernetes: model-store/, config/config.properties, a Dockerfile and an InferenceService "
                "(with storage credentials) for an archive",
         arg("name", help="the model name (the archive is EXPORT_PATH/NAME.mar unless --archive)"),
         arg("--archive"),
         arg("--export-path", default="model_store"),
         arg("--out", help="output folder (default k8s/NAME)"),
         arg("--protocol", default="v2", choices=["v1", "v2"], help="KServe v1 or Open Inference Protocol v2"),
         arg("--storage-uri", default="", help="where the folder is uploaded (default s3://models/NAME)"),
         arg("--min-replicas", type=int, default=1),
         arg("--max-replicas", type=int, default=3),
         arg("--cpu", default="1", help="CPU request and limit per replica"),
         arg("--memory", default="2Gi", help="memory request and limit per replica"),
         arg("--canary", type=int, help="canaryTrafficPercent: the share of traffic a new storageUri gets"),
         arg("--image", default="", help="run this image (built from the Dockerfile) instead of KServe's PyTorch "
                                         "runtime"),
         arg("--namespace", default=""),
         arg("--key", action="append", metavar="PUBLIC.pem",
             help="trusted public key: the archive must verify with it here, and the image checks every archive "
                  "against it before TorchServe starts (needs --image and --sign-key; repeatable)"),
         arg("--sign-key", metavar="PRIVATE.pem", help="signs the derived archive (batchSize 1) for the pod"))
def k8s(args) -> int:
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
