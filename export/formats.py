"""Export an nn.Module to each serving format the handlers load.

| format      | file            | served through                                   |
| ----------- | --------------- | ------------------------------------------------ |
| eager       | NAME.pt + model file | the model class + `torch.load(weights_only=True)` |
| torchscript | NAME.torchscript.pt | `torch.jit.load` (deprecated in torch 2.14, still supported) |
| onnx        | NAME.onnx       | onnxruntime, dynamic batch axis                  |
| openvino    | NAME.xml + .bin | OpenVINO's CPU plugin (fp32 IR; `tskit optimize` writes int8 ones) |
| aoti        | NAME.pt2        | torch.export + AOTInductor, `aoti_load_package`  |

The first axis of every input is exported as dynamic (batch) so TorchServe's batching works.
"""
from __future__ import annotations  # torch is imported where it is used: the CLI reads FORMATS first

import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

FORMATS = ("eager", "torchscript", "onnx", "openvino", "aoti")
TRANSFORMER_FORMATS = ("eager", "torchscript", "onnx", "openvino")  # a Hugging Face folder's (export/hugging_face.py)
MAX_BATCH = 256


@dataclass
class Exported:
    format: str
    serialized_file: Path
    model_file: Path | None = None  # only the eager format needs one


def _batch_dim():
    import torch

    return torch.export.Dim("batch", min=1, max=MAX_BATCH)


def export_model(model: torch.nn.Module, example: torch.Tensor, fmt: str, out_dir: str | Path, name: str,
                 model_file: str | Path | None = None, torchscript_method: str = "trace") -> Exported:
    """Write `model` in format `fmt` under `out_dir`. `example` is one input batch (batch >= 2 keeps
    tracing from specialising on a batch of 1). The eager format needs `model_file`, the Python file
    that defines the model's class, copied beside the weights."""
    import torch

    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model = model.eval()
    if fmt == "eager":
        if not model_file:
            raise ValueError("the eager format needs the model file that defines the class (model_file=...)")
        weights = out / f"{name}.pt"
        torch.save(model.state_dict(), weights)
        target = out / Path(model_file).name
        if Path(model_file).resolve() != target.resolve():
            shutil.copy(model_file, target)
        return Exported(fmt, weights, target)
    if fmt == "torchscript":
        path = out / f"{name}.torchscript.pt"
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated in 2.14
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # shapes are fixed by the example
            if torchscript_method == "script":
                scripted = torch.jit.script(model)
            elif torchscript_method == "trace":
                scripted = torch.jit.trace(model, example)
            else:
                raise ValueError("torchscript_method must be 'trace' or 'script'")
            torch.jit.save(scripted, path)
        return Exported(fmt, path)
    dynamic = ({0: _batch_dim()},)
    if fmt == "onnx":
        path = out / f"{name}.onnx"
        torch.onnx.export(model, (example,), str(path), dynamic_shapes=dynamic, dynamo=True,
                          input_names=["input"], output_names=["output"], external_data=False, verbose=False)
        return Exported(fmt, path)
    if fmt == "openvino":
        import openvino as ov

        path = out / f"{name}.xml"
        shape = ov.PartialShape([-1, *example.shape[1:]])  # a dynamic batch axis, like the other formats
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)  # the converter traces at the example's shape
            warnings.simplefilter("ignore", FutureWarning)
            converted = ov.convert_model(model, example_input=example, input=[shape])
        ov.save_model(converted, str(path), compress_to_fp16=False)
        return Exported(fmt, path)
    from torch._inductor import aoti_compile_and_package

    program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
    path = out / f"{name}.pt2"
    aoti_compile_and_package(program, package_path=str(path))
    return Exported(fmt, path)
