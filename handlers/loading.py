"""The one place that turns an archive's serialized file into a callable model.

Formats: `eager` (a model file defining one nn.Module, plus a state_dict loaded with weights_only=True),
`torchscript`, `onnx` (onnxruntime), `openvino` (an IR `.xml` with its `.bin` beside it, fp32 or NNCF-quantized
int8) and `aoti` (an AOTInductor `.pt2` package; a `.pt2` saved with `torch.export.save` loads as `exported`).
Every loader returns an object called as `model(batch_tensor)` (or with one tensor per input, in the order of
the model's inputs) that returns a tensor. Compiled formats fix dtype and layout at export time: their wrappers
carry `fixed_dtype`, and the handler feeds them that dtype.

A Hugging Face transformer's archive has `tskit-transformer.json` as its serialized file (`TRANSFORMER_FILE`): it
names the format, the model file inside the archive's `transformer/` folder, the model's inputs and its
tokenizer (handlers/transformer.py). Its eager format is the Hugging Face folder itself, loaded by
`transformers`; the other formats need only their engine.
"""
import importlib.util
import inspect
import logging
import os
import sys
import warnings
import zipfile

import torch

from handlers.errors import ConfigError

logger = logging.getLogger(__name__)


TRANSFORMER_FILE = "tskit-transformer.json"


def is_transformer(serialized_file: str) -> bool:
    return os.path.basename(serialized_file) == TRANSFORMER_FILE


def read_transformer(path: str) -> dict:
    """An archive's transformer description (written by export/hugging_face.py)."""
    import json

    with open(path, encoding="utf-8") as f:
        return json.load(f)


def detect_format(serialized_file: str, model_file: str | None) -> str:
    """Name the format of `serialized_file`; a model file beside it means an eager state_dict."""
    if is_transformer(serialized_file):
        return read_transformer(serialized_file)["format"]
    if model_file:
        return "eager"
    if serialized_file.endswith(".onnx"):
        return "onnx"
    if serialized_file.endswith(".xml"):
        return "openvino"
    if zipfile.is_zipfile(serialized_file):
        with zipfile.ZipFile(serialized_file) as zf:
            names = zf.namelist()
        if any("/data/aotinductor/" in n for n in names):
            return "aoti"
        if any(n.endswith("serialized_exported_program.json") or "/models/model.json" in n for n in names):
            return "exported"
        if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
            return "torchscript"
    raise ConfigError(
        f"cannot tell how to load {os.path.basename(serialized_file)!r}: give a model file (--model-file) "
        "for a state_dict, or a TorchScript (.pt), ONNX (.onnx), OpenVINO (.xml) or torch.export/AOTInductor "
        "(.pt2) file"
    )


def load_module_class(model_file: str, class_name: str | None = None) -> type:
    """Import `model_file` and return its model class: `class_name` if given, else the one nn.Module
    subclass that no other class in the file builds (so helper blocks may sit beside the model)."""
    name = os.path.splitext(os.path.basename(model_file))[0]
    spec = importlib.util.spec_from_file_location(name, model_file)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    folder = os.path.dirname(os.path.abspath(model_file))
    added = folder not in sys.path
    if added:  # files shipped beside the model file import as they would in the worker (model_dir is on its path)
        sys.path.append(folder)
    try:
        spec.loader.exec_module(module)
    finally:
        if added:
            sys.path.remove(folder)
    classes = {
        cname: obj
        for cname, obj in vars(module).items()
        if inspect.isclass(obj) and issubclass(obj, torch.nn.Module) and obj.__module__ == name
    }
    if class_name:
        if class_name not in classes:
            raise ConfigError(f"{os.path.basename(model_file)} defines no nn.Module named {class_name!r}")
        return classes[class_name]
    sources = {cname: inspect.getsource(obj) for cname, obj in classes.items()}
    top_level = [
        obj for cname, obj in classes.items()
        if not any(f"{cname}(" in src for other, src in sources.items() if other != cname)
    ]
    if len(top_level) != 1:
        raise ConfigError(
            f"{os.path.basename(model_file)} must define one top-level nn.Module, found "
            f"{[c.__name__ for c in top_level] or 'none'}: name it with `model_class` in the handler config"
        )
    return top_level[0]


def load_eager(model_file: str, weights_file: str, device: torch.device, class_name: str | None = None):
    model = load_module_class(model_file, class_name)()
    state = torch.load(weights_file, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    model.load_state_dict(state, strict=True)
    return model.to(device).eval()


def load_torchscript(path: str, device: torch.device) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; users still have such files
        return torch.jit.load(path, map_location=device).eval()


POOLINGS = ("mean", "cls", "max", "mean_sqrt_len")


def pool_tokens(hidden: torch.Tensor, mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """[N, L, H] token vectors to [N, H] over the real tokens (`mask` 1), as sentence-transformers' Pooling does."""
    if pooling == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling == "max":
        return hidden.masked_fill(weights == 0, -1e9).amax(dim=1)
    total, count = (hidden * weights).sum(dim=1), weights.sum(dim=1).clamp_min(1e-9)
    return total / (count if pooling == "mean" else count.sqrt())


class HuggingFaceModel(torch.nn.Module):
    """A `transformers` model called with its input tensors in order, returning one output tensor (`logits`,
    `last_hidden_state`...), pooled over the tokens and normalised where `pooling` says: how every format of a
    transformer is called, and what the others are exported from."""

    def __init__(self, model: torch.nn.Module, input_names: list[str], output: str, pooling: str | None = None,
                 normalize: bool = False):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output = output
        self.pooling, self.normalize = pooling, normalize

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        named = dict(zip(self.input_names, inputs))
        out = getattr(self.model(**named), self.output)
        if self.pooling:
            out = pool_tokens(out, named["attention_mask"], self.pooling)
        return torch.nn.functional.normalize(out, dim=-1) if self.normalize else out


def load_hugging_face(folder: str, description: dict, device: torch.device) -> HuggingFaceModel:
    """The eager format of a transformer archive: its Hugging Face folder, through `transformers`."""
    try:
        import transformers
    except ImportError:
        raise ConfigError("this archive's eager format loads its model with `transformers`, which this worker's "
                          "Python lacks: pip install transformers, or build the archive --format onnx, openvino "
                          "or torchscript, which need only `tokenizers`") from None
    auto = getattr(transformers, description["auto_class"])
    model = auto.from_pretrained(folder)
    return HuggingFaceModel(model, description["inputs"], description["output"], description.get("pooling"),
                            description.get("normalize", False)).to(device).eval()


def load_transformer(path: str, device: torch.device, threads: int, precision: str):
    """A transformer archive's (model, format) (`path`: its TRANSFORMER_FILE)."""
    description = read_transformer(path)
    fmt, model_path = description["format"], os.path.join(os.path.dirname(path), description["model"])
    if fmt == "eager":
        return load_hugging_face(os.path.dirname(model_path), description, device), fmt
    if fmt == "torchscript":
        return load_torchscript(model_path, device), fmt
    if fmt == "onnx":
        return OnnxModel(model_path, device, threads), fmt
    if fmt == "openvino":
        return OpenVinoModel(model_path, threads, precision), fmt
    raise ConfigError(f"{TRANSFORMER_FILE}: format {fmt!r} is not one a transformer is served in "
                      "(eager, torchscript, onnx, openvino)")


class CompiledModel:
    """A model whose graph, dtype and layout were fixed at export: `.to()`/`.eval()` are no-ops. It takes
    `fixed_dtype` inputs and computes in `precision` (what the worker reports)."""

    fixed_dtype = torch.float32
    precision = "fp32"
    hint: str | None = None  # OpenVINO's inference-precision hint, where one applies
    takes_pixels = False  # takes uint8 NHWC pixels and normalises them itself (an IR `tskit optimize` wrote)
    input_shape = None  # the input shape the engine declares, where it declares one

    def to(self, *args, **kwargs):
        return self

    def eval(self):
        return self


ONNX_TYPES = {"tensor(float)": torch.float32, "tensor(int64)": torch.int64, "tensor(int32)": torch.int32,
              "tensor(uint8)": torch.uint8}


class OnnxModel(CompiledModel):
    """An onnxruntime session called like a module, with its threads set like torch's."""

    def __init__(self, path: str, device: torch.device, threads: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        providers = ["CPUExecutionProvider"]
        if device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, ("CUDAExecutionProvider", {"device_id": device.index or 0}))
        self.session = ort.InferenceSession(path, sess_options=options, providers=providers)
        release_free_memory()  # the graph's parsing buffers, freed but kept by the allocator: 45 -> 20 MiB measured
        self.inputs = [(i.name, ONNX_TYPES.get(i.type, torch.float32)) for i in self.session.get_inputs()]
        self.input_shape = self.session.get_inputs()[0].shape  # names for dynamic sizes ("batch")

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        feeds = {name: tensor.detach().to("cpu", dtype).contiguous().numpy()
                 for (name, dtype), tensor in zip(self.inputs, batch)}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def release_free_memory() -> None:
    """Hand the memory glibc's allocator keeps after frees back to the system (`malloc_trim`); a no-op elsewhere."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("c")
    libc = ctypes.CDLL(name) if name else None
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


OPENVINO_TYPES = {"f32": torch.float32, "i64": torch.int64, "i32": torch.int32, "u8": torch.uint8}


class OpenVinoModel(CompiledModel):
    """An OpenVINO IR compiled for the CPU with this worker's threads, one stream. `precision` bf16 becomes
    OpenVINO's bf16 inference-precision hint where the CPU has native bf16, else f32 (logged); an int8 IR
    (NNCF post-training quantization) runs its int8 kernels on every CPU, the rest of it in the hint.

    An IR whose input is uint8 (`tskit optimize` writes them) takes NHWC pixels and normalises them itself, with
    the mean and std (0..1 units) recorded in its rt_info under tskit/mean and tskit/std: `takes_pixels`.
    `source` is the `.xml` path, or a model already in memory (`tskit optimize` compiles its edits of one)."""

    def __init__(self, source, threads: int, precision: str = "fp32"):
        import json

        import openvino as ov

        core = ov.Core()
        model = core.read_model(source) if isinstance(source, (str, os.PathLike)) else source
        bf16 = precision == "bf16"
        if bf16 and "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
            logger.warning("OpenVINO: bf16 asked for, but this CPU has no native bf16; running in f32")
            bf16 = False
        int8 = any(op.get_type_name() == "FakeQuantize" for op in model.get_ops())
        self.takes_pixels = model.inputs[0].get_element_type() == ov.Type.u8
        self.input_shape = str(model.inputs[0].get_partial_shape())  # "?" for a dynamic size
        # a batch's rows padded to batch_bucket(n) where only the batch size varies (images); not where another
        # dimension does (a text's length: a batch split into length groups would compute their padding)
        self.fixed_item_shape = all(i.get_partial_shape()[1:].is_static for i in model.inputs)
        self.pixel_mean = self.pixel_std = None
        if self.takes_pixels:
            self.fixed_dtype = torch.uint8
            self.pixel_mean, self.pixel_std = (json.loads(model.get_rt_info(["tskit", key]).astype(str))
                                               if model.has_rt_info(["tskit", key]) else None for key in ("mean", "std"))
        # no CPU pinning: OpenVINO pins each process's thread to the same core by default, and two workers on
        # 2 cores then share one (measured: 2 x 120 images/s instead of 2 x 238 for the int8 default model)
        self.compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": threads, "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
            "ENABLE_CPU_PINNING": False, "INFERENCE_PRECISION_HINT": "bf16" if bf16 else "f32"})
        self.request = self.compiled.create_infer_request()
        self.precision = "int8" if int8 else "bf16" if bf16 else "fp32"
        self.hint = "bf16" if bf16 else "f32"
        self.input_dtypes = [OPENVINO_TYPES.get(i.get_element_type().get_type_name(), torch.float32)
                             for i in model.inputs]

    def __call__(self, *batch: torch.Tensor) -> torch.Tensor:
        n = batch[0].shape[0]
        rows = batch_bucket(n) if self.fixed_item_shape else n
        if rows != n:  # the last row repeated: a valid input whose answer is dropped
            batch = tuple(torch.cat([t, t[-1:].expand(rows - n, *t.shape[1:])]) for t in batch)
        self.request.infer({i: tensor.detach().to("cpu", dtype).contiguous().numpy()
                            for i, (dtype, tensor) in enumerate(zip(self.input_dtypes, batch))})
        return torch.from_numpy(self.request.get_output_tensor(0).data[:n].copy())


def batch_bucket(n: int) -> int:
    """The batch size OpenVINO runs `n` rows of a fixed-size input at: the next power of two. Its CPU plugin keeps
    memory for every input shape it has run (measured: 6 to 9 MiB per batch size for the default image model), so
    a worker that has seen batches of 1 to 8 holds four shapes instead of eight (-38 MiB), at the price of computing
    a few repeated rows for the sizes between. Not for texts: MiniLM's length groups ran 29% slower per batch with
    it (served, 8 texts a batch)."""
    return 1 << (n - 1).bit_length() if n > 0 else n


class AotiModel(CompiledModel):
    """An AOTInductor package: compiled ahead of time for one device type (here the build's)."""

    def __init__(self, path: str, device: torch.device):
        from torch._inductor import aoti_load_package

        self.runner = aoti_load_package(path, device_index=device.index if device.type == "cuda" else -1)

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        return self.runner(batch.contiguous())


def load_model(serialized_file: str, model_file: str | None, device: torch.device,
               class_name: str | None = None, threads: int = 1, precision: str = "fp32"):
    """Returns (model, format). `precision` is the worker's resolved precision (OpenVINO's hint)."""
    if is_transformer(serialized_file):
        return load_transformer(serialized_file, device, threads, precision)
    fmt = detect_format(serialized_file, model_file)
    if fmt == "openvino":
        return OpenVinoModel(serialized_file, threads, precision), fmt
    if fmt == "eager":
        return load_eager(model_file, serialized_file, device, class_name), fmt
    if fmt == "onnx":
        return OnnxModel(serialized_file, device, threads), fmt
    if fmt == "aoti":
        return AotiModel(serialized_file, device), fmt
    if fmt == "exported":
        return torch.export.load(serialized_file).module().to(device), fmt
    return load_torchscript(serialized_file, device), fmt
