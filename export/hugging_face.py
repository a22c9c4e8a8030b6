"""A user's Hugging Face folder to what a transformer archive carries (`tskit build --model-dir`).

Any folder `AutoTokenizer` (a fast one) and the task's `AutoModelFor...` load: the tokenizer is written as one
`tokenizer.json` that the `tokenizers` package reads in the worker (WordPiece, byte-level BPE and SentencePiece
Unigram are tested). The model goes into the archive's `transformer/` folder in the format asked for:

| format      | file in transformer/      | the worker needs            |
| ----------- | ------------------------- | --------------------------- |
| eager       | config.json + model.safetensors (the Hugging Face folder) | transformers, tokenizers |
| torchscript | model.torchscript.pt      | tokenizers                  |
| onnx        | model.onnx                | onnxruntime, tokenizers     |
| openvino    | model.xml + model.bin     | openvino, tokenizers        |

Every exported format takes (batch, sequence) dynamic inputs, so a batch is padded to its own longest text.
`tskit-transformer.json` (handlers/loading.py: TRANSFORMER_FILE) is the archive's serialized file: it names the
format, the inputs in order, the labels and the longest input the model takes.
"""
import dataclasses
import inspect
import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from export.formats import TRANSFORMER_FORMATS
from handlers.loading import TRANSFORMER_FILE, HuggingFaceModel

FOLDER = "transformer"
# task: (the transformers class that loads its folder, the output the handler reads)
TASK_MODELS = {"transformer_classifier": ("AutoModelForSequenceClassification", "logits"),
               "sentence_embedder": ("AutoModel", "last_hidden_state"),
               "token_classifier": ("AutoModelForTokenClassification", "logits")}
PER_TOKEN_TASKS = ("token_classifier",)  # an output row per token: the exported graph's sequence axis is dynamic
INPUT_ORDER = ("input_ids", "attention_mask", "token_type_ids")
ENGINE_PACKAGES = {"eager": ["transformers"], "onnx": ["onnxruntime"], "openvino": ["openvino"]}
MODEL_FILES = {"eager": "model.safetensors", "torchscript": "model.torchscript.pt", "onnx": "model.onnx",
               "openvino": "model.xml"}


@dataclass
class TransformerFiles:
    serialized_file: Path  # tskit-transformer.json
    folder: Path  # transformer/, an extra folder of the archive
    requirements: Path  # what the worker needs, for the manifest
    description: dict


def prepare_transformer(model_dir: str | Path, task: str, fmt: str, work: str | Path) -> TransformerFiles:
    """Write the archive files for the Hugging Face folder `model_dir` served by `task` in format `fmt`."""
    if task not in TASK_MODELS:
        raise ValueError(f"--model-dir is for the Hugging Face tasks ({', '.join(TASK_MODELS)}), not {task!r}")
    if fmt not in TRANSFORMER_FORMATS:
        raise ValueError(f"a transformer is served in one of {', '.join(TRANSFORMER_FORMATS)}, not {fmt!r}")
    tokenizer, model = load_folder(Path(model_dir), TASK_MODELS[task][0], fmt)
    out = Path(work) / "transformer-files"
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(folder)
    tokenizer.backend_tokenizer.save(str(folder / "tokenizer.json"))
    model.config.save_pretrained(folder)
    names = input_names(tokenizer, model)
    description = {
        "task": task,
        "format": fmt,
        "model": f"{FOLDER}/{MODEL_FILES[fmt]}",
        "tokenizer": f"{FOLDER}/tokenizer.json",
        "auto_class": TASK_MODELS[task][0],
        "output": TASK_MODELS[task][1],
        "inputs": names,
        "max_length": max_length(tokenizer, model),
        "pad_id": tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
        "architecture": type(model).__name__,
        "per_token": task in PER_TOKEN_TASKS,
    }
    if task == "sentence_embedder":
        description.update(sentence_transformers_config(Path(model_dir), folder, description["max_length"]))
        if "attention_mask" not in names:
            raise ValueError("pooling over the tokens needs the tokenizer's attention_mask")
    else:
        description.update(labels=[model.config.id2label[i] for i in range(model.config.num_labels)],
                           problem_type=model.config.problem_type or "single_label_classification")
    wrapped = HuggingFaceModel(model, names, description["output"], description.get("pooling"),
                               description.get("normalize", False)).eval()
    check_longest_input(wrapped, description)
    write_model(wrapped, fmt, folder, example_inputs(tokenizer, names), description["per_token"])
    serialized = out / TRANSFORMER_FILE
    serialized.write_text(json.dumps(description, indent=1))
    requirements = write_worker_requirements(fmt, out / "requirements.txt")
    return TransformerFiles(serialized, folder, requirements, description)


def write_worker_requirements(fmt: str, path: Path) -> Path:
    """What a worker serving a transformer in format `fmt` needs, pinned to this Python's versions."""
    from handlers.requirements import pinned

    path.write_text("".join(f"{line}\n" for line in pinned(ENGINE_PACKAGES.get(fmt, []) + ["tokenizers"])))
    return path


def sentence_transformers_config(model_dir: Path, folder: Path, longest: int) -> dict:
    """Pooling, normalisation and the longest input as the folder's sentence-transformers files say (copied into
    the archive beside the model); mean pooling without normalisation for a folder without them, as
    sentence-transformers does."""
    import shutil

    from handlers.loading import POOLINGS

    modules = json.loads((model_dir / "modules.json").read_text()) if (model_dir / "modules.json").is_file() else []
    pooling, normalize = "mean", False
    for module in modules:
        kind = module.get("type", "").rsplit(".", 1)[-1]
        if kind == "Pooling":
            config = json.loads((model_dir / module["path"] / "config.json").read_text())
            modes = [mode for mode in POOLINGS if config.get(f"pooling_mode_{mode}_token" if mode == "cls" else
                                                             f"pooling_mode_{mode}_tokens")]
            if len(modes) != 1:
                raise ValueError(f"{module['path']}/config.json: one pooling mode of {', '.join(POOLINGS)} is "
                                 f"served, not {modes or 'none'}")
            pooling = modes[0]
            shutil.copytree(model_dir / module["path"], folder / module["path"], dirs_exist_ok=True)
        elif kind == "Normalize":
            normalize = True
        elif kind not in ("Transformer", ""):
            raise ValueError(f"modules.json: a {kind} module is not served (Transformer, Pooling, Normalize are)")
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, folder / name)
    settings = model_dir / "sentence_bert_config.json"
    seq = json.loads(settings.read_text()).get("max_seq_length") if settings.is_file() else None
    return {"pooling": pooling, "normalize": normalize, "max_length": min(longest, int(seq or longest))}


def transformer_spec(spec, work: Path):
    """`spec` (export.archive.ArchiveSpec) with its `model_dir` turned into the files the archive carries, the
    worker's packages added to the user's requirements."""
    from packaging.requirements import Requirement

    from handlers.requirements import parse_requirements

    if spec.serialized_file or spec.model_file:
        raise ValueError("--model-dir replaces --serialized-file and --model-file: give one or the other")
    if spec.explain_model_file:
        raise ValueError("--explain-model-file is for an eager state_dict; with --model-dir, --explain-weights is the "
                         "Hugging Face folder itself")
    explain_files = (explain_weight_files(Path(spec.explain_weights), spec.model_format, Path(spec.model_dir))
                     if spec.explain_weights else [])  # checked before the export, which takes a while
    files = prepare_transformer(spec.model_dir, task_of(spec.handler), spec.model_format, work)
    if explain_files:
        copy_explain_weights(explain_files, files.folder)
    requirements = files.requirements
    if spec.requirements:
        users = parse_requirements(Path(spec.requirements).read_text(), spec.requirements)
        ours = parse_requirements(files.requirements.read_text())
        named = {Requirement(line).name for line in users}
        requirements = work / "requirements-all.txt"
        requirements.write_text("".join(f"{r}\n" for r in users + [r for r in ours if Requirement(r).name not in named]))
    return dataclasses.replace(spec, serialized_file=str(files.serialized_file), model_dir=None, explain_weights=None,
                               extra_files=[*spec.extra_files, str(files.folder)], requirements=str(requirements))


def explain_weight_files(folder: Path, fmt: str, model_dir: Path) -> list[Path]:
    """The files of `--explain-weights` (a Hugging Face folder) that a compiled format's archive ships for
    explanations (handlers/transformer_explain.py): its config and weights, checked to answer with the labels of
    the served model."""
    import json

    if fmt == "eager":
        raise ValueError("an eager transformer archive explains with its own Hugging Face folder: drop "
                         "--explain-weights")
    weights = sorted(folder.glob("*.safetensors")) + sorted(folder.glob("pytorch_model*.bin"))
    if not (folder / "config.json").is_file() or not weights:
        raise ValueError(f"--explain-weights {folder}: give the Hugging Face folder (config.json and its weights) "
                         "the transformer's explanations run on, usually the --model-dir again")
    labels = [json.loads((f / "config.json").read_text()).get("id2label") for f in (folder, model_dir)]
    if labels[0] != labels[1]:
        raise ValueError(f"--explain-weights {folder} has other labels than --model-dir {model_dir} "
                         f"({labels[0]} vs {labels[1]}): give the folder of the model the archive serves")
    return [folder / "config.json", *weights, *sorted(folder.glob("*.index.json"))]


def copy_explain_weights(files: list[Path], archive_folder: Path) -> None:
    """`files` (explain_weight_files) into the archive's transformer/explain/."""
    import shutil

    from handlers.transformer_explain import EXPLAIN_FOLDER

    target = archive_folder / EXPLAIN_FOLDER
    target.mkdir(parents=True, exist_ok=True)
    for path in files:
        shutil.copy(path, target / path.name)


def task_of(handler: str) -> str:
    """The transformer task of `--handler`: a task's name, or the one a user's handler file subclasses."""
    from export.user_handler import is_handler_file
    from handlers.tasks import TASKS

    if not is_handler_file(handler):
        return handler
    source = Path(handler).read_text(encoding="utf-8") if Path(handler).is_file() else ""
    found = [name for name in TASK_MODELS if re.search(rf"\b{TASKS[name].class_name}\b", source)]
    if len(found) != 1:
        raise ValueError(f"--model-dir needs a handler on one of {', '.join(TASK_MODELS)}: {handler} subclasses "
                         f"{'none' if not found else 'several'} of their classes")
    return found[0]


def quiet_transformers():
    """`transformers`, without its progress bars and notes on every load (a build prints what it built)."""
    import transformers

    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    return transformers


def load_folder(model_dir: Path, auto_class: str, fmt: str):
    """The folder's tokenizer (a fast one: it becomes tokenizer.json) and model, in fp32. Exported formats are
    traced through the plain attention code, which every exporter follows; eager keeps the folder's default."""
    try:
        transformers = quiet_transformers()
    except ImportError:
        raise ValueError("--model-dir reads a Hugging Face folder with `transformers`, which this Python lacks: "
                         "pip install 'torchserve-kit[hf]' (transformers, tokenizers)") from None

    if not (model_dir / "config.json").is_file():
        raise FileNotFoundError(f"{model_dir} is not a Hugging Face model folder (no config.json)")
    tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir)
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{model_dir}: its tokenizer has no fast (`tokenizers`) version, which the worker runs")
    options = {} if fmt == "eager" else {"attn_implementation": "eager"}
    model = getattr(transformers, auto_class).from_pretrained(model_dir, dtype=torch.float32, **options)
    return tokenizer, model.eval()


def input_names(tokenizer, model) -> list[str]:
    """The tokenizer's outputs that the model's forward takes, in a fixed order."""
    takes = inspect.signature(model.forward).parameters
    names = [n for n in INPUT_ORDER if n in tokenizer.model_input_names and n in takes]
    if "input_ids" not in names:
        raise ValueError(f"{type(model).__name__} does not take the tokenizer's input_ids")
    return names


def max_length(tokenizer, model) -> int:
    """The longest input in tokens: the tokenizer's model_max_length where it sets a real one, never more than the
    position embeddings hold (RoBERTa-like models count positions from their padding index + 1)."""
    config = model.config
    limit = getattr(config, "max_position_embeddings", None) or 512
    embeddings = getattr(model.base_model, "embeddings", None)
    padding_idx = getattr(embeddings, "padding_idx", None)
    if padding_idx is not None:
        limit -= padding_idx + 1
    declared = getattr(tokenizer, "model_max_length", None)
    return int(min(limit, declared)) if declared and declared < 1_000_000 else int(limit)


def example_inputs(tokenizer, names: list[str]) -> tuple[torch.Tensor, ...]:
    """Two texts of different lengths, padded: a batch > 1 with padding keeps tracing general."""
    encoded = tokenizer(["a short text", "a longer text, with a few more words in it than the first"],
                        padding=True, return_tensors="pt")
    return tuple(encoded[n] for n in names)


def check_longest_input(model: HuggingFaceModel, description: dict) -> None:
    """Run the model once on an input of `max_length` tokens, so a limit it cannot take fails the build."""
    ids = torch.full((1, description["max_length"]), description["pad_id"], dtype=torch.long)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    try:
        with torch.inference_mode():
            model(*(inputs[n] for n in description["inputs"]))
    except (IndexError, RuntimeError) as err:
        raise ValueError(f"the model cannot take {description['max_length']} tokens, the longest input its "
                         f"tokenizer and config allow: {str(err).splitlines()[0]}") from None


def export_folder_onnx(folder: Path, description: dict, out: Path) -> Path:
    """The ONNX graph of an eager transformer archive's Hugging Face folder (`tskit optimize` starts from it)."""
    tokenizer, model = load_folder(Path(folder), description["auto_class"], "onnx")
    wrapped = HuggingFaceModel(model, description["inputs"], description["output"], description.get("pooling"),
                               description.get("normalize", False)).eval()
    out.mkdir(parents=True, exist_ok=True)
    return write_model(wrapped, "onnx", out, example_inputs(tokenizer, description["inputs"]),
                       description.get("per_token", False))


def write_model(model: HuggingFaceModel, fmt: str, folder: Path, example: tuple[torch.Tensor, ...],
                per_token: bool = False) -> Path:
    path = folder / MODEL_FILES[fmt]
    names = model.input_names
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer and deprecation warnings: the outputs are compared in tests
        if fmt == "eager":
            model.model.save_pretrained(folder)
        elif fmt == "torchscript":
            torch.jit.save(torch.jit.trace(model, example), str(path))
        else:
            onnx = path if fmt == "onnx" else folder.parent / "model.onnx"
            axes = {n: {0: "batch", 1: "sequence"} for n in names}
            axes[model.output] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}
            torch.onnx.export(model, example, str(onnx), dynamo=False, input_names=names,
                              output_names=[model.output], dynamic_axes=axes,
                              opset_version=17)
            if fmt == "openvino":
                import openvino as ov

                ov.save_model(ov.convert_model(str(onnx)), str(path), compress_to_fp16=False)
                onnx.unlink()
    return path
