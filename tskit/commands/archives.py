"""Commands that make and check archives: build, build-default, bundle, new handler, export, samples, verify, keygen,
sign."""
import sys
import tempfile
from pathlib import Path

from export.formats import FORMATS
from handlers.tasks import TASKS, scaffold_bases
from export.formats import TRANSFORMER_FORMATS
from tskit.arguments import (existing_archive, existing_file, folder_to_write, hugging_face_folder, one_line,
                             python_file, shape)
from tskit.client import TorchServeClient
from tskit.commands import SERVER, arg, command


@command("build", "build a self-contained .mar with torch-model-archiver",
         arg("name"),
         arg("--serialized-file", check=existing_file,
             help="state_dict (.pt/.pth), TorchScript, ONNX, OpenVINO (.xml) or .pt2 file"),
         arg("--model-dir", check=hugging_face_folder,
             help="instead of --serialized-file, for transformer_classifier, token_classifier and sentence_embedder: "
                  "your Hugging Face folder (config.json, weights, tokenizer; a sentence-transformers folder's "
                  "pooling is kept)"),
         arg("--format", default="eager", choices=TRANSFORMER_FORMATS,
             help="with --model-dir: the format the transformer is served in (eager needs transformers in the "
                  "worker; the others only tokenizers and their engine)"),
         arg("--model-file", help="Python file defining the nn.Module (for a state_dict)"),
         arg("--handler", default="image_classifier",
             help=lambda: f"a task ({', '.join(TASKS)}) or your own handler file (my_handler.py), whose one class "
                          "subclasses a handler of this library, a TorchServe stock handler or BaseHandler"),
         arg("--labels", help="index_to_name.json"),
         arg("--config", help="model-config.yaml (batching, workers, `handler:` section)"),
         arg("--export-path", default="model_store"),
         arg("--version", default="1.0"),
         arg("--extra-files", nargs="*", default=[],
             help="more files for the archive root (vocabulary, schema); a folder keeps its name, so a package of "
                  "your own stays importable"),
         arg("--requirements", help="requirements.txt of your handler code: recorded in the manifest; a worker "
                                    "whose Python lacks one refuses to load, naming it"),
         arg("--golden", nargs="*", help="real inputs (files or folders) whose answers are stored as golden cases; "
                                         "`tskit verify` and `tskit rollout` replay them"),
         arg("--reference", help="drift reference inputs: a folder (a request per file), a .jsonl file (a JSON "
                                 "request per line) or one file; stored as tskit-reference.json"),
         arg("--explain-weights", help="eager state_dict shipped for /explanations (loaded only when one is asked "
                                       "for): what lets an ONNX or AOTInductor archive explain. With --model-dir "
                                       "and --format onnx, openvino or torchscript: the Hugging Face folder (give "
                                       "the --model-dir again), whose config and weights go in the archive's "
                                       "transformer/explain/ and are loaded with transformers on the first "
                                       "explanation; without it such an archive answers explanations 501"),
         arg("--explain-model-file", help="model file for --explain-weights (default: --model-file)"),
         arg("--sign-key", help="sign the built archive with this private key (PEM; tskit keygen)"))
def build(args) -> int:
    from export.archive import ArchiveSpec, build_archive, read_config
    from export.golden import inputs_from_files
    from export.reference import read_reference_inputs

    if args.format != "eager" and not args.model_dir:
        raise ValueError("--format is for --model-dir (a Hugging Face folder); export other models with "
                         "`tskit export` first and pass the file as --serialized-file")
    spec = ArchiveSpec(
        name=args.name, serialized_file=args.serialized_file, handler=args.handler,
        model_file=args.model_file, labels=args.labels, config=read_config(args.config),
        export_path=args.export_path, version=args.version, extra_files=args.extra_files,
        golden_inputs=inputs_from_files(args.golden or []),
        reference_inputs=read_reference_inputs(args.reference) if args.reference else [],
        explain_weights=args.explain_weights, explain_model_file=args.explain_model_file,
        requirements=args.requirements, model_dir=args.model_dir, model_format=args.format,
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


@command("build-default", "build the default EfficientNet-Lite0 archive",
         arg("--export-path", default="model_store", check=folder_to_write),
         arg("--stock", action="store_true", help="instead, the same weights behind TorchServe's stock handler"),
         arg("--format", default="eager", choices=FORMATS),
         arg("--name", help="archive name (default efficientnet_lite0)"),
         arg("--no-explain-weights", action="store_true",
             help="ONNX/AOTInductor: leave out the eager weights that /explanations runs on (then 501)"))
def build_default(args) -> int:
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


@command("bundle", "lay out the folder to give plain torch-model-archiver as --extra-files: this library's "
                   "handlers package and your own packages",
         arg("out", help="folder to write (created if missing)"),
         arg("--add", nargs="*", default=[], help="your own packages or files to put beside it"),
         arg("--handler", help="your handler file, checked for a name that clashes with the library"))
def bundle(args) -> int:
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


@command("new handler", "a handler of your own on one of this library's handlers",
         arg("name", help="module name of the handler file (NAME.py)"),
         arg("--from", dest="base", required=True, choices=lambda: list(scaffold_bases()),
             help="the handler to build on (base: TskitHandler itself, for a new task)"),
         arg("--out", default=".", help="folder to write into (default: here)"))
def new_handler(args) -> int:
    from tskit.scaffold import new_handler

    for path in new_handler(args.name, args.base, args.out):
        print(path)
    print(f"next: pytest {Path(args.out) / f'test_{args.name}.py'}")
    return 0


@command("export", "export a model to eager / torchscript / onnx / aoti files",
         arg("name"),
         arg("--model-file", required=True, check=python_file, help="Python file defining the nn.Module"),
         arg("--model-class", help="which class of the model file, when it defines several"),
         arg("--weights", required=True, check=existing_file,
             help="state_dict or training checkpoint (Lightning .ckpt too)"),
         arg("--strip-prefix", help="key prefix to drop, e.g. 'model.' for a LightningModule attribute"),
         arg("--format", nargs="+", default=["eager"], choices=FORMATS),
         arg("--example-shape", type=shape, default="2,3,224,224", help="example input shape, batch first"),
         arg("--torchscript-method", default="trace", choices=["trace", "script"]),
         arg("--out", default="exported", check=folder_to_write))
def export(args) -> int:
    model_file, weights = Path(args.model_file), Path(args.weights)
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


@command("samples", "copy the real sample photos shipped in installed packages",
         arg("--out", default="samples", check=folder_to_write),
         arg("--calibration", metavar="DIR", check=folder_to_write,
             help="also write 16 real photos for tskit optimize --calibration"),
         arg("--model", metavar="DIR", check=folder_to_write,
             help="also write the default model's files here (weights, model file, labels, model-config.yaml), as "
                  "`tskit build` takes them"))
def samples(args) -> int:
    out = Path(args.out)
    model = Path(args.model) if args.model else None
    calibration = Path(args.calibration) if args.calibration else None
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


@command("verify", "check an archive's hashes and golden outputs, in-process and live",
         *SERVER,
         arg("archive", check=existing_archive),
         arg("--url", help="inference address of a TorchServe serving this archive, e.g. http://127.0.0.1:8080"),
         arg("--key", action="append", metavar="PUBLIC.pem",
             help="also check the archive's signature against this trusted public key (repeatable)"))
def verify(args) -> int:
    from export.verify import verify_archive

    client = None
    if args.url:  # verify only uses the inference API
        client = TorchServeClient(args.url, args.url, args.url, key_file=Path(args.workdir) / "key_file.json")
    report = verify_archive(args.archive, client, trusted_keys=args.key or [])
    print(report)
    return 0 if report.passed else 1


@command("keygen", "write a new elliptic-curve key pair for signing archives",
         arg("--out", default="keys", help="folder for NAME.key.pem (private) and NAME.pub.pem (public)"),
         arg("--name", default="tskit-signing"))
def keygen(args) -> int:
    from export.signing import generate_key_pair

    private, public = generate_key_pair(args.out, args.name)
    print(f"private key (sign with it; keep it secret): {private}\npublic key (trust it where you serve): {public}")
    return 0


@command("sign", "sign archives' manifests with a private key (OpenSSF model-signing)",
         arg("archives", nargs="+", metavar="archive", check=existing_archive),
         arg("--key", required=True, metavar="PRIVATE.pem", help="elliptic-curve private key (tskit keygen)"),
         arg("--check", metavar="PUBLIC.pem", help="then verify each with this public key"))
def sign(args) -> int:
    from export.signing import sign_archive, signature_problems

    for archive in args.archives:
        sign_archive(archive, args.key)
        print(f"signed {archive}")
        if args.check:
            check = signature_problems(archive, [args.check])
            print(check)
            if not check.trusted:
                return 1
    return 0
