"""handlers/torchserve.py: TorchServe's BaseHandler without importing OpenVINO or ONNX Runtime (and no handler module
importing Captum, transformers, OpenCV or tokenizers before a request needs them: 4 to 131 MiB each), TorchServe's own
ONNX loader still reaching the real onnxruntime, and OpenVINO's torch.compile backend still found (through its entry
point) when a user asks for it."""
import subprocess
import sys

PROBE = """
import sys
from handlers.torchserve import BaseHandler
import ts.torch_handler.base_handler as ts_base
assert BaseHandler is ts_base.BaseHandler
print("openvino.torch imported:", "openvino.torch" in sys.modules)
print("engines imported:", "openvino" in sys.modules or "onnxruntime" in sys.modules)
import handlers.image_classifier, handlers.transformer_classifier, handlers.token_classifier
heavy = ("captum", "transformers", "cv2", "onnxruntime", "openvino", "openvino.torch", "tokenizers")
print("heavy modules a worker loads only when asked:", [m for m in heavy if m in sys.modules])
print("TorchServe's ONNX loader reaches onnxruntime:", ts_base.ort.InferenceSession.__module__.startswith("onnxruntime"))
import torch._dynamo
print("openvino backend:", "openvino" in torch._dynamo.list_backends())
import openvino.torch
print("real module:", hasattr(openvino.torch, "backend"))
"""


def test_base_handler_without_openvino_torch_and_the_backend_still_there():
    result = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines() == ["openvino.torch imported: False", "engines imported: False",
                                          "heavy modules a worker loads only when asked: []",
                                          "TorchServe's ONNX loader reaches onnxruntime: True",
                                          "openvino backend: True", "real module: True"]
