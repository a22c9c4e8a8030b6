"""Making each candidate's serialized file (ONNX export, OpenVINO IR, NNCF int8) and loading it as a worker does."""
import importlib
import json
from pathlib import Path

import torch

CALIBRATION_SUBSET = 300  # NNCF's own default: statistics on more views cost time and moved nothing here


def missing_packages(names=("onnx", "onnxruntime", "openvino", "nncf")) -> dict[str, str | None]:
    """{package: why it cannot be used here, or None}: rows that need an absent one are skipped with that line."""
    out = {}
    for name in names:
        try:
            importlib.import_module(name)
            out[name] = None
        except ImportError as err:
            extra = " (pip install 'torchserve-kit[optimize]')" if name == "nncf" else ""
            out[name] = f"{name} not installed ({err.name}){extra}"
    return out


def native_bf16() -> bool:
    import openvino as ov

    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def export_onnx(module, example: torch.Tensor, work: Path, name: str) -> Path:
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


def quantize_int8(ir: Path, calibration: list, path: Path, transformer: bool = False) -> Path:
    """NNCF post-training quantization of an IR, calibrated on `calibration` (model inputs, batch 1 each: an array,
    or {input name: array}; at most CALIBRATION_SUBSET of them), with NNCF's transformer preset for a
    `transformer`; the IR's rt_info (the pixel normalisation) carries over."""
    import nncf
    import openvino as ov

    model = ov.Core().read_model(str(ir))
    preset = {"model_type": nncf.ModelType.TRANSFORMER} if transformer else {}
    quantized = nncf.quantize(model, nncf.Dataset(calibration), subset_size=min(len(calibration), CALIBRATION_SUBSET),
                              **preset)
    ov.save_model(quantized, str(path), compress_to_fp16=False)
    return path


def load(candidate, threads: int, root: Path, batch_size: int):
    """A model for `candidate` on `threads` threads, loaded as a worker loads it: batch -> logits (OpenVINO
    candidates take uint8 pixels, the others normalised fp32)."""
    from handlers.loading import OnnxModel, OpenVinoModel

    if not candidate.as_built and candidate.engine == "onnxruntime":
        return OnnxModel(candidate.files[0], torch.device("cpu"), threads)
    if not candidate.as_built and candidate.engine == "openvino":
        return OpenVinoModel(candidate.files[0], threads, "bf16" if candidate.bf16_hint else "fp32")
    from export.optimize.inputs import archive_handler

    handler = archive_handler(root, batch_size, threads=threads)  # the archive's own engine and config
    return lambda batch: handler.forward(handler.to_model_input(batch))
